"""The CPU bfloat16 path of the pipeline and the run-real measurement, on small models (the
1024px measurement itself is `hart-edu run-real --random-weights`, minutes of CPU)."""

from __future__ import annotations

import pytest
import torch

from golden_fixtures import GOLDEN_DIR, needs_golden
from hart_edu import cli
from hart_edu.run_real import measure_one_image, random_release_pipeline
from hart_edu.sampler import HARTPipeline, check_dtype


def test_random_release_pipeline_runs_in_bf16_and_reports_every_phase():
    pipe = random_release_pipeline("tiny", dtype=torch.bfloat16, seed=0, prompts=("a red cat",))
    assert pipe.dtype == torch.bfloat16 and pipe.text_encoder.model.dtype == torch.bfloat16
    assert {p.dtype for p in pipe.tokenizer.parameters()} == {torch.bfloat16}
    lines: list[str] = []
    report = measure_one_image(pipe, "a red cat", progress=False, log=lines.append)
    S = len(pipe.transformer.config.patch_nums)
    assert list(report.seconds) == ["before text", "text encoder", "transformer", "diffusion", "VAE decoder",
                                    "after decode"]
    assert len(report.stage_seconds) == S and all(s >= 0 for s in report.stage_seconds)
    assert abs(sum(report.seconds.values()) - report.total_seconds) < 0.05
    assert report.extra["image finite"] and report.image_shape == (1, 3, 32, 32)
    assert report.extra["diffusion denoiser calls"] == 4  # the tiny head's 4 steps
    assert report.peak_total_bytes > 0 and sum(line.startswith("scale end") for line in lines) == S


def test_run_real_cli_on_the_tiny_architecture(capsys):
    assert cli.main(["run-real", "--random-weights", "--size", "tiny", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("one 32px image, bfloat16, 1 thread(s):") and "VAE decoder" in out


@needs_golden
def test_pipeline_dtype_on_the_golden_tree():
    import tempfile
    from pathlib import Path

    from test_sampler import build_tiny_tree  # the golden tree with a text tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        root = build_tiny_tree(GOLDEN_DIR, Path(tmp) / "tree")
        f32 = HARTPipeline.from_pretrained(root)
        bf16 = HARTPipeline.from_pretrained(root, dtype=torch.bfloat16)
        assert f32.dtype == torch.float32 and bf16.dtype == torch.bfloat16
        a = f32(["w3 w4"], seed=1, progress=False, greedy=True, more_smooth=False)
        b = bf16(["w3 w4"], seed=1, progress=False, greedy=True, more_smooth=False)
        assert b.image_B3HW.dtype == torch.bfloat16 and a.image_B3HW.dtype == torch.float32
        # greedy codes of the first scales agree; bf16 rounding may flip near-ties later
        assert torch.equal(a.indices[0], b.indices[0])
        assert (a.image_B3HW - b.image_B3HW.float()).abs().mean() < 0.1


def test_check_dtype():
    assert check_dtype(torch.bfloat16) is torch.bfloat16
    with pytest.raises(ValueError, match="dtype=torch.int8 is not supported"):
        check_dtype(torch.int8)
