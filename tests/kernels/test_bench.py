"""The benchmark: a clear message and exit status 0 without a GPU; its cases run (untimed)."""

from __future__ import annotations

import pytest
import torch

from hart_edu.kernels import bench


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed without a CUDA device")
def test_cpu_prints_that_a_gpu_is_needed(capsys):
    assert bench.main([]) == 0
    out = capsys.readouterr().out
    assert "needs a CUDA GPU" in out and "nothing was timed" in out and "GB/s" not in out


def test_released_sizes():
    sizes = bench.BenchSizes()
    assert sizes.train_tokens == 300 + 9450 and sizes.last_stage_tokens == 4096


def test_cases_run_and_agree_at_tiny_sizes(device):
    """Each case once, untimed, at tiny sizes: the benchmark code paths work and compare like for like."""
    tiny = bench.BenchSizes(batch=2, embed_dim=16, num_heads=2, mlp_hidden=24, context_tokens=3,
                            patch_nums=(1, 2, 3), vocab_size=40, vae_channels=16, images_quantised=1)
    cases = bench.make_cases(tiny, device, torch.float32, torch.Generator().manual_seed(0))
    assert len(cases) == 8
    for case in cases:
        assert case.bytes_moved > 0
        ref, tri = case.reference(), case.triton()
        if ref is not None:  # forward cases return outputs; fwd+bwd cases return None
            if not isinstance(ref, torch.Tensor):  # a named tuple of outputs
                ref, tri = [torch.cat([t.flatten().float() for t in out if t is not None]) for out in (ref, tri)]
            torch.testing.assert_close(tri, ref, rtol=1e-4, atol=1e-4, msg=lambda m, n=case.name: f"{n}: {m}")
