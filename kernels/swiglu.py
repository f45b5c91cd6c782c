r"""The SwiGLU gate of the Llama MLP, fused, with its backward.

.. math::

    y = \mathrm{silu}(a) \odot b = a\,\sigma(a) \odot b, \qquad \sigma(a) = \frac{1}{1 + e^{-a}}

where ``a = gate_proj(u)`` and ``b = up_proj(u)`` (``LlamaMLP`` in
``hart_edu/ar_transformer.py``). Backward with ``g = dL/dy``:

.. math::

    \frac{\partial L}{\partial a} = g\, b\, \sigma(a)\big(1 + a (1 - \sigma(a))\big), \qquad
    \frac{\partial L}{\partial b} = g\, \mathrm{silu}(a)

Eager PyTorch reads ``a`` and writes ``silu(a)``, then reads both again for the product; the
kernel reads ``a`` and ``b`` once and writes ``y`` once (float32 arithmetic, ``y`` rounded once
to ``a``'s dtype; eager rounds ``silu(a)`` too). Elementwise: a 1-D grid of ``BLOCK`` elements.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .backend import cdiv, dispatch, jit, require_triton, tl


def _check(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"swiglu wants a and b of one shape and dtype, got {tuple(a.shape)} {a.dtype} "
                         f"and {tuple(b.shape)} {b.dtype}")


def swiglu_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """silu(a) * b (eager PyTorch, as in the model)."""
    _check(a, b)
    return F.silu(a) * b


@jit
def _forward_kernel(a_ptr, b_ptr, y_ptr, numel, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = i < numel
    a = tl.load(a_ptr + i, mask=inside, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + i, mask=inside, other=0.0).to(tl.float32)
    y = a * tl.sigmoid(a) * b  # silu(a) b
    tl.store(y_ptr + i, y.to(y_ptr.dtype.element_ty), mask=inside)


@jit
def _backward_kernel(g_ptr, a_ptr, b_ptr, da_ptr, db_ptr, numel, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = i < numel
    g = tl.load(g_ptr + i, mask=inside, other=0.0).to(tl.float32)
    a = tl.load(a_ptr + i, mask=inside, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + i, mask=inside, other=0.0).to(tl.float32)
    sig = tl.sigmoid(a)
    da = g * b * sig * (1.0 + a * (1.0 - sig))  # d silu(a) / da = sigma (1 + a (1 - sigma))
    db = g * a * sig  # silu(a)
    tl.store(da_ptr + i, da.to(da_ptr.dtype.element_ty), mask=inside)
    tl.store(db_ptr + i, db.to(db_ptr.dtype.element_ty), mask=inside)


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, block):
        a, b = a.contiguous(), b.contiguous()
        y = torch.empty_like(a)
        _forward_kernel[(cdiv(a.numel(), block),)](a, b, y, a.numel(), BLOCK=block)
        ctx.save_for_backward(a, b)
        ctx.block = block
        return y

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        g = g.contiguous()
        da, db = torch.empty_like(a), torch.empty_like(b)
        _backward_kernel[(cdiv(a.numel(), ctx.block),)](g, a, b, da, db, a.numel(), BLOCK=ctx.block)
        return da, db, None


def swiglu_triton(a: torch.Tensor, b: torch.Tensor, *, block: int = 4096) -> torch.Tensor:
    """The fused Triton kernel (differentiable in a and b); ``block``: elements per program."""
    _check(a, b)
    require_triton(a, b)
    return _SwiGLU.apply(a, b, block)


def swiglu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """silu(a) * b with the backend chosen by ``backend.use_backend``."""
    return dispatch(swiglu_reference, swiglu_triton)(a, b)
