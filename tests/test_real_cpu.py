"""The CPU bfloat16 path of the pipeline and the run-real measurement, on small models (the
1024px measurement itself is `hart-edu run-real --random-weights`, minutes of CPU)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
import torch

from golden_fixtures import GOLDEN_DIR, needs_golden
from hart_edu import cli
from hart_edu.profile import random_release_pipeline
from hart_edu.run_real import measure_one_image
from hart_edu.sampler import HARTPipeline, check_dtype

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"  # malloc_trim / mallopt


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
    assert report.peak_total_bytes > 0 and sum(line.startswith("scale start") for line in lines) == S
    assert sum(report.stage_seconds) == pytest.approx(report.seconds["transformer"])


def test_run_real_cli_on_the_tiny_architecture(capsys, tmp_path):
    path = tmp_path / "report.json"
    argv = ["run-real", "--random-weights", "--size", "tiny", "--threads", "1", "--dtype", "bfloat16"]
    assert cli.main([*argv, "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("one 32px image, bfloat16, 1 thread(s):") and "VAE decoder" in out
    extra = json.loads(path.read_text())["extra"]
    assert extra["low memory (text encoder released after encoding)"] is True  # the default
    assert extra["text encoder released"] is True
    assert extra["freed memory returned to the OS (malloc_trim)"] is GLIBC
    assert extra["mmap threshold set to 16 MiB (mallopt)"] is (GLIBC and "MALLOC_MMAP_THRESHOLD_" not in os.environ)
    assert extra["machine"]["torch"] == torch.__version__ and extra["machine"]["torch threads"] == 1
    assert extra["peak RSS while building (GiB)"] > 0


def test_run_real_cli_no_low_memory_keeps_the_text_encoder(tmp_path):
    path = tmp_path / "report.json"
    argv = ["run-real", "--random-weights", "--size", "tiny", "--threads", "1", "--no-low-memory"]
    assert cli.main([*argv, "--json", str(path)]) == 0
    extra = json.loads(path.read_text())["extra"]
    assert extra["low memory (text encoder released after encoding)"] is False
    assert extra["text encoder released"] is False
    assert extra["freed memory returned to the OS (malloc_trim)"] is False
    assert extra["mmap threshold set to 16 MiB (mallopt)"] is False


def test_release_text_encoder_frees_its_weights_and_keeps_the_image():
    kept = random_release_pipeline("tiny", seed=0, prompts=("a red cat",))
    freed = random_release_pipeline("tiny", seed=0, prompts=("a red cat",), release_text_encoder=True)
    a = kept(["a red cat"], seed=3, progress=False)
    b = freed(["a red cat"], seed=3, progress=False)
    assert torch.equal(a.image_B3HW, b.image_B3HW)  # releasing after encoding changes nothing
    assert torch.equal(a.text.context_BTD, b.text.context_BTD)
    assert freed.text_encoder_released and not kept.text_encoder_released
    assert freed.memory_returned is GLIBC and not kept.memory_returned  # malloc_trim after the release
    assert all(p.is_meta for p in freed.text_encoder.model.parameters())  # no storage left
    assert not any(p.is_meta for p in kept.text_encoder.model.parameters())
    assert all(not p.is_meta for p in freed.transformer.parameters())
    kept(["a red cat"], seed=3, progress=False)  # without the option the pipeline serves many calls
    with pytest.raises(RuntimeError, match="text encoder was released after the first call"):
        freed(["a red cat"], seed=3, progress=False)
    freed.to(torch.bfloat16)  # casting the rest still works; the released encoder stays released
    assert freed.text_encoder_released and freed.dtype == torch.bfloat16


def test_release_text_encoder_bad_value():
    pipe = random_release_pipeline("tiny", seed=0)
    with pytest.raises(ValueError, match="release_text_encoder='yes' must be True or False"):
        HARTPipeline(pipe.text_encoder, pipe.transformer, pipe.tokenizer, release_text_encoder="yes")


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


def test_memory_settings_report_whether_they_ran():
    """In a child process: mallopt changes the allocator of the whole process for good."""
    code = ("from hart_edu.memory import map_large_blocks, return_free_memory\n"
            "print(return_free_memory(), map_large_blocks(), map_large_blocks(32 << 20))\n"
            "for bad in (64 << 20, 0, True, 1.5):\n"
            "    try:\n"
            "        map_large_blocks(bad)\n"
            "    except ValueError as e:\n"
            "        print('refused', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[0] == f"{GLIBC} {GLIBC} {GLIBC}"
    assert len(lines) == 5 and all(line.startswith("refused threshold_bytes=") for line in lines[1:])
    assert "must be an int in (0, 32 MiB]" in lines[1]
