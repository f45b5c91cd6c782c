"""``hart-edu profile``: the whole command on the tiny architecture on the CPU (every phase for
every backend and batch in the JSON), the released architecture against the manifest, the
random-weight builder, and bad requests (one line, exit 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from golden_fixtures import GOLDEN_DIR, needs_golden

from hart_edu import cli
from hart_edu import profile as P
from hart_edu.timing import phase_names

REPO = Path(__file__).resolve().parents[1]
TINY = ["profile", "--size", "tiny", "--device", "cpu", "--warmup", "0", "--repeats", "2"]


def run(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)


def check_report(data: dict, backends: list[str], batches: list[int]) -> None:
    """Every (backend, batch) is there with every phase; the figures are consistent."""
    phases = phase_names(P.ARCHITECTURES["tiny"].patch_nums)
    assert data["phases"] == phases and len(phases) == 2 + 6 + 2 + 1
    assert [(r["backend"], r["batch"]) for r in data["results"]] == [(k, b) for b in batches for k in backends]
    for r in data["results"]:
        assert list(r["phases_ms"]) == phases
        assert all(v > 0 for v in r["phases_ms"].values()), r["phases_ms"]
        assert len(r["runs_ms"]) == data["repeats"]
        totals = sorted(sum(run.values()) for run in r["runs_ms"])
        assert r["total_ms"] == pytest.approx((totals[0] + totals[-1]) / 2 if len(totals) == 2 else totals[len(totals) // 2])
        assert r["images_per_s"] == pytest.approx(r["batch"] / (r["total_ms"] / 1e3))
    assert data["device_type"] == "cpu" and data["dtype"] == "bfloat16" and data["size"] == "tiny"


def test_tiny_profile_on_cpu_writes_every_phase(tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert run(TINY + ["--backends", "reference", "--batch-sizes", "1,3", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    for line in ("text encoding", "scale 8x8", "residual diffusion", "VAE decode", "latency at batch 1",
                 "throughput at batch 3"):
        assert line in table
    check_report(json.loads(out.read_text()), ["reference"], [1, 3])


def test_both_backends_in_the_triton_interpreter(tmp_path):
    """A fresh process with TRITON_INTERPRET=1 (it must be set before the kernels are imported).
    Interpreted kernels are slow (seconds per run once the models call them): one timed run."""
    out = tmp_path / "profile.json"
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "hart_edu", *TINY, "--repeats", "1", "--batch-sizes", "1",
                           "--backends", "reference,triton", "--json", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    check_report(data, ["reference", "triton"], [1])
    ref, tri = data["results"]
    assert ref["triton_launches"] is None and isinstance(tri["triton_launches"], dict)  # counted under triton only
    if not tri["triton_launches"]:  # the models do not call the kernels (yet): the table must say so
        assert "measured the reference code path" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where Triton cannot run")
def test_triton_without_cuda_or_interpreter_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    out = tmp_path / "profile.json"
    assert run(TINY + ["--backends", "reference,triton", "--json", str(out)]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--backends triton" in err and "TRITON_INTERPRET" in err
    assert not out.exists()


@pytest.mark.parametrize("argv, needle", [
    (["--backends", "reference,cuda"], "unknown backend"),
    (["--backends", "reference,reference"], "name each backend once"),
    (["--batch-sizes", "1,0", "--backends", "reference"], "--batch-sizes"),
    (["--batch-sizes", "one", "--backends", "reference"], "--batch-sizes"),
    (["--repeats", "0", "--backends", "reference"], "--repeats"),
    (["--system-tokens", "17", "--backends", "reference"], "--system-tokens 17"),
    (["--json", "/nonexistent-folder/p.json", "--backends", "reference"], "does not exist"),
])
def test_bad_requests(argv, needle, capsys):
    assert run(TINY + argv) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a CUDA device")
def test_cuda_device_without_cuda(capsys):
    assert run(["profile", "--size", "tiny", "--backends", "reference"]) == cli.EXIT_BAD_INPUT
    assert "--device cuda" in capsys.readouterr().err


def test_random_weights_are_seeded_and_shaped():
    arch = P.ARCHITECTURES["tiny"]
    a = P.build_models(arch, torch.device("cpu"), torch.bfloat16, seed=3)
    b = P.build_models(arch, torch.device("cpu"), torch.bfloat16, seed=3)
    c = P.build_models(arch, torch.device("cpu"), torch.bfloat16, seed=4)
    for name, p in a.transformer.named_parameters():
        assert p.device.type == "cpu" and p.dtype == torch.bfloat16, name
        assert torch.equal(p, dict(b.transformer.named_parameters())[name]), name
    gain = a.transformer.blocks[0].ln_wo_grad.weight
    assert torch.all(gain == 1) and torch.all(a.transformer.head.bias == 0)
    w = a.transformer.head.weight.float()
    assert abs(w.std().item() - P.WEIGHT_STD) < 0.1 * P.WEIGHT_STD
    assert not torch.equal(a.transformer.head.weight, c.transformer.head.weight)
    # buffers and schedules were computed, not left empty
    assert torch.equal(a.transformer.lvl_1L[0, :16], torch.zeros(16, dtype=torch.int64))
    assert a.transformer.lvl_1L.max().item() == len(arch.patch_nums) - 1
    assert a.text_model.rotary_emb.inv_freq.device.type == "cpu"
    assert torch.isfinite(a.text_model.rotary_emb.inv_freq).all()


def test_triton_launches_are_counted_and_the_kernels_restored():
    """The counter sees launches made through the kernel modules' own wrappers (interpreter)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    code = ("import torch\n"
            "from hart_edu import profile as P\n"
            "from hart_edu.kernels import swiglu as S\n"
            "from hart_edu.kernels.backend import use_backend\n"
            "kernel = S._forward_kernel\n"
            "a = torch.randn(3, 5)\n"
            "with use_backend('triton'), P.count_triton_launches() as n:\n"
            "    S.swiglu(a, a); S.swiglu(a, a); S.swiglu_reference(a, a)\n"
            "assert S._forward_kernel is kernel\n"
            "print(dict(n))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "{'swiglu.forward_kernel': 2}"


def test_parameters_on_meta_is_undone():
    with P.parameters_on_meta():
        lin = torch.nn.Linear(3, 4)
    assert lin.weight.device.type == "meta"
    assert torch.nn.Linear(3, 4).weight.device.type == "cpu"


@needs_golden
@pytest.mark.parametrize("size, section", [("1024px", "transformer_llm"), ("1024px-depth24", "transformer_llm_alt")])
def test_released_architecture_matches_the_manifest(size, section):
    """The 1024px configs are the manifest's, and build to its parameter counts (meta device)."""
    from hart_edu.ar_transformer import HARTTransformer, TransformerConfig
    from hart_edu.hybrid_tokenizer import HybridTokenizer, TokenizerConfig

    manifest = json.loads((GOLDEN_DIR / "manifest-hart-0.7b-1024px.json").read_text())
    arch = P.ARCHITECTURES[size]
    for key, value in arch.transformer.items():
        expected = manifest[section]["config_used"][key]
        assert (list(value) if isinstance(value, tuple) else value) == expected, key
    for key, value in arch.tokenizer.items():
        expected = manifest["tokenizer"]["config_used"][key]
        assert (list(value) if isinstance(value, tuple) else value) == expected, key
    with P.parameters_on_meta():
        transformer = HARTTransformer(TransformerConfig(**arch.transformer), vocab_size=4096, vae_channels=32)
        tokenizer = HybridTokenizer(TokenizerConfig(**arch.tokenizer))
    assert sum(p.numel() for p in transformer.parameters()) == manifest[section]["total_params"]
    assert sum(p.numel() for p in tokenizer.parameters()) == manifest["tokenizer"]["total_params_without_disc"]
    assert arch.text_encoder["hidden_size"] == arch.transformer["context_dim"]


def test_phase_timer_cuts_one_pipeline_call_into_consecutive_phases():
    from hart_edu.timing import Clock, PhaseTimer

    pipe = P.random_release_pipeline("tiny", dtype=torch.float32, seed=0, prompts=("a red cat",))
    hooked = (pipe.transformer.blocks[0], pipe.text_encoder.model, pipe.tokenizer.decoder)
    with PhaseTimer(pipe, Clock(pipe.device)) as timer:
        pipe(["a red cat"], seed=1, progress=False)
    phases = timer.phases()
    assert list(phases) == phase_names(pipe.transformer.config.patch_nums)
    spans = list(phases.values())
    assert spans[0][0] == 0 and spans[-1][1] == len(timer.marks) - 1
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(spans, spans[1:]))  # back to back, none empty
    assert sum(timer.seconds().values()) == pytest.approx(timer.marks[-1].stamp - timer.marks[0].stamp)
    assert timer.diffusion_calls == 4  # the tiny head's 4 denoising steps
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in hooked)  # removed after the block
    assert not any(m._forward_pre_hooks for m in pipe.transformer.diffloss.modules())
