"""rmsnorm_modulate: the reference against the equation in float64, and the Triton forward and
backward against the reference (computed in float32, as the kernel does)."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import DTYPES, TOLERANCES, randn

from hart_edu.kernels.rmsnorm_modulate import (
    rms_norm,
    rmsnorm_modulate,
    rmsnorm_modulate_reference,
    rmsnorm_modulate_triton,
)

# (N, L, C): odd, non-power-of-two sizes; (3, 1, 7) has one token per batch row
SHAPES = [(2, 37, 100), (3, 1, 7), (1, 70, 48)]
EPS = 1e-6


def make_inputs(generator, device, shape, dtype, requires_grad=False):
    N, L, C = shape
    x = randn(generator, N, L, C, device=device, dtype=dtype, scale=3.0)
    w = randn(generator, C, device=device, dtype=dtype)
    s = randn(generator, N, 1, C, device=device, dtype=dtype, scale=0.5)
    b = randn(generator, N, 1, C, device=device, dtype=dtype)
    return [t.requires_grad_(requires_grad) for t in (x, w, s, b)]


def test_reference_is_the_equation(generator):
    x, w, s, b = make_inputs(generator, "cpu", (2, 9, 24), torch.float32)
    x64 = x.double()
    want = x64 / (x64.pow(2).mean(-1, keepdim=True) + EPS).sqrt() * w.double() * (1 + s.double()) + b.double()
    torch.testing.assert_close(rmsnorm_modulate_reference(x, w, s, b, EPS), want.float(), rtol=1e-5, atol=1e-5)


def test_half_precision_rounds_the_norm_first(generator):
    """In bf16 the reference rounds RMSNorm(x) to bf16, then modulates in bf16 (the official
    order); the kernel rounds once at the end, so the two differ by a rounding or two."""
    x, w, s, b = make_inputs(generator, "cpu", (2, 9, 24), torch.bfloat16)
    x32 = x.float()
    norm = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + EPS) * w.float()).to(torch.bfloat16)
    assert torch.equal(rms_norm(x, w, EPS), norm)
    assert torch.equal(rmsnorm_modulate_reference(x, w, s, b, EPS), norm * (1 + s) + b)


def float32_reference(x, w, s, b):
    """The reference on float32 copies, rounded once to x's dtype: what the kernel computes."""
    return rmsnorm_modulate_reference(x.float(), w.float(), s.float(), b.float(), EPS).to(x.dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_matches_reference(generator, device, shape, dtype):
    x, w, s, b = make_inputs(generator, device, shape, dtype)
    y = rmsnorm_modulate_triton(x, w, s, b, EPS)
    assert y.dtype == dtype and y.shape == x.shape
    torch.testing.assert_close(y, float32_reference(x, w, s, b), **TOLERANCES[dtype])


# Gradients: float32 sums in both, so the tolerance is the output dtype's rounding of the
# gradient (relative to its size: dw sums over N * L rows).
GRAD_TOLERANCES = {
    torch.float32: dict(rtol=1e-4, atol=1e-4),
    torch.float16: dict(rtol=4e-3, atol=1e-2),
    torch.bfloat16: dict(rtol=2e-2, atol=5e-2),
}


@pytest.mark.parametrize("dtype", list(GRAD_TOLERANCES), ids=str)
@pytest.mark.parametrize("shape, programs", [((2, 37, 100), 2), ((3, 1, 7), 1), ((1, 70, 48), 3)], ids=str)
def test_backward_matches_reference(generator, device, shape, programs, dtype):
    inputs = make_inputs(generator, device, shape, dtype, requires_grad=True)
    g = randn(generator, *shape, device=device, dtype=dtype)
    y = rmsnorm_modulate_triton(*inputs, EPS, backward_programs_per_row=programs)
    grads = torch.autograd.grad(y, inputs, g)
    inputs32 = [t.detach().float().requires_grad_(True) for t in inputs]  # the kernel computes in float32
    expected = [e.to(dtype) for e in torch.autograd.grad(float32_reference(*inputs32), inputs32, g.float())]
    for name, got, want, leaf in zip(("dx", "dw", "dscale", "dshift"), grads, expected, inputs):
        assert got.shape == leaf.shape and got.dtype == leaf.dtype, name
        torch.testing.assert_close(got, want, **GRAD_TOLERANCES[dtype], msg=lambda m, n=name: f"{n}: {m}")


def test_shapes_are_checked(generator, device):
    x, w, s, b = make_inputs(generator, device, (2, 5, 8), torch.float32)
    with pytest.raises(ValueError, match="scale must be"):
        rmsnorm_modulate_reference(x, w, s[:, 0], b, EPS)
    with pytest.raises(ValueError, match="weight must be"):
        rmsnorm_modulate_triton(x, w[:4], s, b, EPS)


def test_default_backend_is_the_reference(generator, device):
    x, w, s, b = make_inputs(generator, device, (2, 5, 8), torch.float32)
    assert torch.equal(rmsnorm_modulate(x, w, s, b, EPS), rmsnorm_modulate_reference(x, w, s, b, EPS))
