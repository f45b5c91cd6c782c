"""layernorm_modulate: the reference against the equation in float64, and the Triton forward and
backward against the reference (computed in float32, as the kernel does)."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import DTYPES, TOLERANCES, randn

from hart_edu.kernels.layernorm_modulate import (
    layernorm_modulate,
    layernorm_modulate_reference,
    layernorm_modulate_triton,
)

# (N, W): odd, non-power-of-two sizes; (1, 7): a single row
SHAPES = [(37, 100), (1, 7), (70, 48)]
EPS = 1e-6


def make_inputs(generator, device, shape, dtype, affine=True, requires_grad=False):
    N, W = shape
    x = randn(generator, N, W, device=device, dtype=dtype, scale=3.0) + 0.5  # a non-zero mean
    w = randn(generator, W, device=device, dtype=dtype) if affine else None
    b = randn(generator, W, device=device, dtype=dtype) if affine else None
    s = randn(generator, N, W, device=device, dtype=dtype, scale=0.5)
    t = randn(generator, N, W, device=device, dtype=dtype)
    return [v if v is None else v.requires_grad_(requires_grad) for v in (x, w, b, s, t)]


def test_reference_is_the_equation(generator):
    x, w, b, s, t = make_inputs(generator, "cpu", (9, 24), torch.float32)
    x64 = x.double()
    xhat = (x64 - x64.mean(1, keepdim=True)) / (x64.var(1, unbiased=False, keepdim=True) + EPS).sqrt()
    want = (xhat * w.double() + b.double()) * (1 + s.double()) + t.double()
    torch.testing.assert_close(layernorm_modulate_reference(x, w, b, s, t, EPS), want.float(), rtol=1e-5, atol=1e-5)
    want = xhat * (1 + s.double()) + t.double()  # no affine
    torch.testing.assert_close(layernorm_modulate_reference(x, None, None, s, t, EPS), want.float(), rtol=1e-5, atol=1e-5)


def float32_reference(x, w, b, s, t):
    """The reference on float32 copies, rounded once to x's dtype: what the kernel computes."""
    up = [None if v is None else v.float() for v in (x, w, b, s, t)]
    return layernorm_modulate_reference(*up, EPS).to(x.dtype)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_matches_reference(generator, device, shape, dtype, affine):
    x, w, b, s, t = make_inputs(generator, device, shape, dtype, affine)
    y = layernorm_modulate_triton(x, w, b, s, t, EPS)
    assert y.dtype == dtype and y.shape == x.shape
    torch.testing.assert_close(y, float32_reference(x, w, b, s, t), **TOLERANCES[dtype])


# Gradients: float32 in both, rounded once to the dtype; dw and db sum over N rows, so they
# get an absolute tolerance a few units of the dtype's rounding of their size.
GRAD_TOLERANCES = {
    torch.float32: dict(rtol=1e-4, atol=1e-4),
    torch.float16: dict(rtol=4e-3, atol=1e-2),
    torch.bfloat16: dict(rtol=2e-2, atol=5e-2),
}


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("dtype", list(GRAD_TOLERANCES), ids=str)
@pytest.mark.parametrize("shape, programs", [((37, 100), 2), ((1, 7), 1), ((70, 48), 3)], ids=str)
def test_backward_matches_reference(generator, device, shape, programs, dtype, affine):
    inputs = make_inputs(generator, device, shape, dtype, affine, requires_grad=True)
    leaves = [v for v in inputs if v is not None]
    g = randn(generator, *shape, device=device, dtype=dtype)
    y = layernorm_modulate_triton(*inputs, EPS, backward_programs=programs)
    grads = torch.autograd.grad(y, leaves, g)
    inputs32 = [v if v is None else v.detach().float().requires_grad_(True) for v in inputs]  # float32, as the kernel
    leaves32 = [v for v in inputs32 if v is not None]
    expected = [e.to(dtype) for e in torch.autograd.grad(float32_reference(*inputs32), leaves32, g.float())]
    names = ("dx", "dweight", "dbias", "dscale", "dshift") if affine else ("dx", "dscale", "dshift")
    for name, got, want, leaf in zip(names, grads, expected, leaves):
        assert got.shape == leaf.shape and got.dtype == leaf.dtype, name
        torch.testing.assert_close(got, want, **GRAD_TOLERANCES[dtype], msg=lambda m, n=name: f"{n}: {m}")


def test_shapes_are_checked(generator, device):
    x, w, b, s, t = make_inputs(generator, device, (5, 8), torch.float32)
    with pytest.raises(ValueError, match="scale must be"):
        layernorm_modulate_reference(x, w, b, s[:, :4], t, EPS)
    with pytest.raises(ValueError, match="weight must be"):
        layernorm_modulate_triton(x, w[:4], b, s, t, EPS)
    with pytest.raises(ValueError, match="both LayerNorm weight and bias"):
        layernorm_modulate_triton(x, w, None, s, t, EPS)


def test_default_backend_is_the_reference(generator, device):
    x, w, b, s, t = make_inputs(generator, device, (5, 8), torch.float32)
    assert torch.equal(layernorm_modulate(x, w, b, s, t, EPS), layernorm_modulate_reference(x, w, b, s, t, EPS))
