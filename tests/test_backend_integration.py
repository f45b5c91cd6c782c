"""The kernel backend switch inside the models: one ``use_backend`` changes every module.

``@triton.jit`` picks GPU kernels or the interpreter when the kernel modules are first
imported, and other test modules of a session may import them first, so every check that runs
Triton runs in a fresh Python process (``TRITON_INTERPRET=1`` when there is no CUDA device):
the ``child_*`` functions below, started by :func:`run_child`. The checks that Triton is
*refused* where it cannot run stay in this process.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from golden_fixtures import GOLDEN_DIR, needs_golden

from hart_edu.kernels import backend

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def run_child(function: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``child_<function>(*args)`` of this module in a fresh process that can run Triton."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_backend_integration as t; "
            f"t.child_{function}(*{args!r})")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def assert_child_passes(function: str, *args: str) -> None:
    proc = run_child(function, *args)
    assert proc.returncode == 0, f"child_{function} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"


# ------------------------------------------------------------------ refused where it cannot run


@pytest.fixture
def no_triton_here(monkeypatch):
    """No CUDA device and no interpreter: the Triton backend cannot run."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_triton_where_it_cannot_run_raises(no_triton_here):
    with pytest.raises(RuntimeError, match="cannot run here: no CUDA device"):
        with backend.use_backend("triton"):
            pass
    assert backend.get_backend() == "reference"


def test_pipeline_backend_is_checked(no_triton_here):
    from hart_edu.sampler import HARTPipeline

    pipe = HARTPipeline.__new__(HARTPipeline)  # the setter alone: no models needed
    pipe.backend = "reference"
    with pytest.raises(RuntimeError, match="cannot run here"):
        pipe.backend = "triton"
    with pytest.raises(ValueError, match="backend='cuda'"):
        pipe.backend = "cuda"
    assert pipe.backend == "reference"


def test_generate_cli_refuses_triton(no_triton_here, tmp_path, capsys):
    from hart_edu import cli

    code = cli.main(["generate", "--prompt", "w1", "--backend", "triton", "--weights", str(tmp_path),
                     "--out", str(tmp_path / "out")])
    assert code == 2
    assert "--backend triton cannot run here" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@needs_golden
def test_parity_runner_refuses_triton_without_a_way_to_run_it():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run([sys.executable, "-m", "hart_edu.parity", str(GOLDEN_DIR), "--backend", "triton"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert "the Triton kernel backend cannot run here" in proc.stderr
    assert "parity:" not in proc.stdout  # nothing ran with the reference instead


# ------------------------------------------------------------------ modules: triton == reference


def _both(fn):
    """fn() under each backend -> (reference, triton)."""
    with backend.use_backend("reference"):
        want = fn()
    with backend.use_backend("triton"):
        got = fn()
    return want, got


def _assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal up to float32 rounding: sums of many terms (the weight gradients) differ by
    ~1e-7 of the tensor's largest value, so the absolute tolerance scales with it."""
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * max(1.0, float(want.abs().max())))


def _randomize(module: torch.nn.Module, generator: torch.Generator, scale: float = 0.3) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * scale)


def child_modules() -> None:
    """Block (RMSNorm+modulate, RoPE, SwiGLU), the head's adaLN, the diffusion MLP (LayerNorm +
    modulate) and the nearest code: forward and parameter gradients under both backends."""
    from hart_edu.ar_transformer import AdaLNBeforeHead, Block, TransformerConfig
    from hart_edu.kernels.nearest_code import nearest_code
    from hart_edu.kv_cache import KVCache
    from hart_edu.residual_diffusion import MLPAdaLN

    g = torch.Generator().manual_seed(0)
    config = TransformerConfig(attn_type="llama", mlp_type="llama", embed_dim=48, num_heads=3, depth=1,
                               context_token=5, context_dim=16, patch_nums=(1, 2, 3))
    block, head_nm = Block(config), AdaLNBeforeHead(48, 1e-6)
    _randomize(block, g)
    _randomize(head_nm, g)
    cond_NTC, mask_NT = torch.randn(2, 5, 48, generator=g), torch.ones(2, 5, dtype=torch.bool)
    x_NLC = torch.randn(2, 9, 48, generator=g)
    for positions in (torch.rand(2, 9, 2, generator=g) * 8, torch.arange(9).expand(2, 9)):  # 2-D, then 1-D RoPE
        def transformer_step(positions=positions):
            block.zero_grad()
            out = block(x_NLC, block.modulation(cond_NTC, mask_NT), positions, KVCache(), mask_NT[:, :1].expand(2, 9),
                        False)
            logits_in = head_nm(out, cond_NTC)
            (logits_in.square().mean() + out.square().mean()).backward()
            return [logits_in.detach()] + [p.grad.clone() for p in block.parameters() if p.grad is not None]

        want, got = _both(transformer_step)
        assert len(want) == len(got) > 10
        for w, o in zip(want, got):
            _assert_close(o, w)

    head = MLPAdaLN(token_channels=4, width=40, z_channels=48, depth=2)
    _randomize(head, g)
    x_NC, t_N, c_ND = torch.randn(7, 4, generator=g), torch.randint(0, 1000, (7,), generator=g), torch.randn(7, 48, generator=g)

    def diffusion_step():
        head.zero_grad()
        out = head(x_NC, t_N, c_ND)
        out.square().mean().backward()
        return [out.detach()] + [p.grad.clone() for p in head.parameters()]

    for w, o in zip(*_both(diffusion_step)):
        _assert_close(o, w)

    z_NC, codebook_VC = torch.randn(50, 8, generator=g), torch.randn(37, 8, generator=g)
    want, got = _both(lambda: nearest_code(z_NC, codebook_VC))
    assert torch.equal(want, got)
    print("modules: triton == reference")


def test_modules_under_triton_equal_the_reference():
    assert_child_passes("modules")


# ------------------------------------------------------------------ the pipeline with a generator


def child_pipeline(golden_dir: str) -> None:
    """The tiny HART pipeline, sampled (top-k, top-p, Gumbel-softmax blends, residual diffusion)
    with a seeded generator: the same codes at every scale under both backends."""
    import warnings

    from test_sampler import build_tiny_tree

    from hart_edu.generation import OfficialQuirks
    from hart_edu.sampler import HARTPipeline

    with tempfile.TemporaryDirectory() as tmp:
        tree = build_tiny_tree(Path(golden_dir), Path(tmp) / "tree")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the long system prompt is truncated (test_sampler checks it)
            pipes = {name: HARTPipeline.from_pretrained(tree, backend=name) for name in backend.BACKENDS}
        quirks = OfficialQuirks(top_k_override=False)
        for kwargs in ({"top_k": 20, "top_p": 0.9, "more_smooth": False}, {"more_smooth": True}):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                want, got = (pipes[name](["w1 w2 w3", "w9"], seed=5, quirks=quirks, progress=False, **kwargs)
                             for name in backend.BACKENDS)
            assert len(want.indices) == len(got.indices) == 6
            for si, (w, o) in enumerate(zip(want.indices, got.indices)):
                assert torch.equal(w, o), f"scale {si}: {kwargs}"
            torch.testing.assert_close(got.residual_BChw, want.residual_BChw, rtol=0, atol=1e-4)
            torch.testing.assert_close(got.image_B3HW, want.image_B3HW, rtol=0, atol=1e-4)

        # bfloat16 weights under autocast: every kernel runs; the kernel's float32 guidance
        # may pick other codes than eager bf16 arithmetic, but the generator stays in step
        generators = {name: torch.Generator().manual_seed(5) for name in backend.BACKENDS}
        for name in backend.BACKENDS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pipe = HARTPipeline.from_pretrained(tree, backend=name, dtype=torch.bfloat16)
                out = pipe(["w1 w2 w3"], generator=generators[name], progress=False)
            assert torch.isfinite(out.image_B3HW).all()
        assert torch.equal(generators["reference"].get_state(), generators["triton"].get_state())
    print("pipeline: triton == reference")


@needs_golden
def test_pipeline_sampling_with_a_generator_draws_the_same_codes():
    assert_child_passes("pipeline", str(GOLDEN_DIR))


# ------------------------------------------------------------------ the golden parity, on Triton


@needs_golden
def test_parity_runner_with_triton_matches_everything():
    """``python -m hart_edu.parity GOLDEN --backend triton``: every golden tensor, same tolerances
    (about 15 s of CPU in the interpreter)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, "-m", "hart_edu.parity", str(GOLDEN_DIR), "--backend", "triton"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    found = re.fullmatch(r"parity: (\d+)/(\d+) match, 0 not covered", last)
    assert proc.returncode == 0 and found and found.group(1) == found.group(2), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert int(found.group(2)) > 100
