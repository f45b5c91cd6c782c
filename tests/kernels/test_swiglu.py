"""swiglu: Triton forward and backward against silu(a) * b."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import DTYPES, TOLERANCES, randn

from hart_edu.kernels.swiglu import swiglu, swiglu_reference, swiglu_triton

# The reference rounds silu(a) to the dtype before the product, the kernel rounds once: two
# roundings apart, so the half-precision tolerances are twice the one-rounding ones.
FWD_TOLERANCES = {dt: {k: v * (1 if dt == torch.float32 else 2) for k, v in tol.items()} for dt, tol in TOLERANCES.items()}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(3, 50, 70), (1, 1, 13)], ids=str)
def test_forward_matches_reference(generator, device, shape, dtype):
    a, b = randn(generator, *shape, device=device, dtype=dtype, scale=3.0), randn(generator, *shape, device=device, dtype=dtype)
    y = swiglu_triton(a, b, block=4096)  # 3 programs for the first shape, the last one partial
    assert y.dtype == dtype and y.shape == shape
    torch.testing.assert_close(y, swiglu_reference(a, b), **FWD_TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_matches_reference(generator, device, dtype):
    shape = (2, 30, 70)
    a = randn(generator, *shape, device=device, dtype=dtype, scale=3.0).requires_grad_()
    b = randn(generator, *shape, device=device, dtype=dtype).requires_grad_()
    g = randn(generator, *shape, device=device, dtype=dtype)
    got = torch.autograd.grad(swiglu_triton(a, b), (a, b), g)
    # the exact gradient, in float64
    a64, b64 = a.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    want = torch.autograd.grad(swiglu_reference(a64, b64), (a64, b64), g.double())
    for name, x, w in zip(("da", "db"), got, want):
        assert x.dtype == dtype
        torch.testing.assert_close(x.double(), w, **FWD_TOLERANCES[dtype], msg=lambda m, n=name: f"{n}: {m}")


def test_non_contiguous_inputs(generator, device):
    a, b = randn(generator, 40, 30, device=device).T, randn(generator, 40, 30, device=device).T
    torch.testing.assert_close(swiglu_triton(a, b), swiglu_reference(a, b), rtol=1e-5, atol=1e-5)


def test_mismatched_inputs_are_refused(device):
    with pytest.raises(ValueError, match="one shape and dtype"):
        swiglu(torch.zeros(3, device=device), torch.zeros(4, device=device))
