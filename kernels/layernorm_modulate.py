r"""LayerNorm followed by the adaLN modulation of the diffusion head, fused, with its backward.

Each row ``x`` (length W) of the residual diffusion MLP (``hart_edu/residual_diffusion.py``,
MAR's ``SimpleMLPAdaLN``) becomes

.. math::

    \mu = \tfrac1W \sum_c x_c, \quad
    r = \frac{1}{\sqrt{\tfrac1W \sum_c (x_c - \mu)^2 + \epsilon}}, \quad
    \hat x = (x - \mu)\, r, \quad
    a = \hat x \odot w + b, \quad
    y = a \odot (1 + s) + t

with an optional LayerNorm affine ``w``, ``b`` (W; the res blocks' ``in_ln`` has one, the final
layer's ``norm_final`` has none: then ``a = x̂``) and a scale ``s`` and shift ``t`` *per row*
(N, W): every row is a different token at its own diffusion timestep, so unlike the
transformer's adaLN (one scale per image) they are as large as ``x``. All arithmetic is
float32 in the Triton kernel (``y`` rounded once to ``x``'s dtype); the reference is the
head's eager PyTorch, the same numbers for float32 inputs.

Why this op and not more: per denoising step the head runs ``depth + 1`` of these
(``LN -> modulate`` before every MLP and before the output layer). The head's SiLUs are not
next to them: one sits between the MLP's two Linear layers and one before each adaLN Linear,
so fusing a SiLU means a matmul epilogue, not a row kernel. Eager PyTorch reads and writes
the (N, W) activations three times here (norm, ``* (1 + s)``, ``+ t``); the kernel once.

Backward, with ``g = dL/dy`` and ``m = 1 + s``:

.. math::

    \frac{\partial L}{\partial t} = g, \quad
    \frac{\partial L}{\partial s} = g\, a, \quad
    \frac{\partial L}{\partial b} = \sum_n g\, m, \quad
    \frac{\partial L}{\partial w} = \sum_n g\, m\, \hat x, \quad
    \frac{\partial L}{\partial x} = r \Big( d - \overline{d} - \hat x\, \overline{d\, \hat x} \Big),
    \; d = g\, m\, w

(bars: means over the row). The forward gives each program ``BLOCK_N`` whole rows; the
backward gives each program a chunk of rows, writes ``dx``, ``ds``, ``dt`` directly and keeps
float32 partial sums of ``dw`` and ``db``, written once per program and summed by PyTorch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .backend import cdiv, dispatch, jit, next_power_of_2, require_triton, tl


def _check(x_NW: torch.Tensor, weight_W: torch.Tensor | None, bias_W: torch.Tensor | None,
           scale_NW: torch.Tensor, shift_NW: torch.Tensor) -> None:
    if x_NW.dim() != 2:
        raise ValueError(f"x must be (N, W), got {tuple(x_NW.shape)}")
    W = x_NW.shape[1]
    for name, t in (("weight", weight_W), ("bias", bias_W)):
        if t is not None and t.shape != (W,):
            raise ValueError(f"{name} must be ({W},) or None, got {tuple(t.shape)}")
    if (weight_W is None) != (bias_W is None):
        raise ValueError("give both LayerNorm weight and bias, or neither")
    for name, t in (("scale", scale_NW), ("shift", shift_NW)):
        if t.shape != x_NW.shape:
            raise ValueError(f"{name} must be {tuple(x_NW.shape)} (one row per row of x), got {tuple(t.shape)}")


# --------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------


def layernorm_modulate_reference(x_NW: torch.Tensor, weight_W: torch.Tensor | None, bias_W: torch.Tensor | None,
                                 scale_NW: torch.Tensor, shift_NW: torch.Tensor, eps: float) -> torch.Tensor:
    """y = LayerNorm(x; w, b, eps) * (1 + scale) + shift, eager PyTorch in the inputs' dtypes
    (as MAR's head computes it; the Triton kernel computes in float32 and rounds once)."""
    _check(x_NW, weight_W, bias_W, scale_NW, shift_NW)
    a_NW = F.layer_norm(x_NW, (x_NW.shape[1],), weight_W, bias_W, eps)  # (x - mu) r w + b
    return a_NW * (1 + scale_NW) + shift_NW


# --------------------------------------------------------------------------------------
# Triton
# --------------------------------------------------------------------------------------


@jit
def _forward_kernel(x_ptr, w_ptr, b_ptr, scale_ptr, shift_ptr, y_ptr, mean_ptr, rstd_ptr, N, W, eps,
                    AFFINE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr):
    n_N = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # rows of this tile
    c_W = tl.arange(0, BLOCK_W)
    in_N, in_W = n_N < N, c_W < W
    in_NW = in_N[:, None] & in_W[None, :]
    offs_NW = n_N.to(tl.int64)[:, None] * W + c_W[None, :]  # int64: > 2^31 elements

    x_NW = tl.load(x_ptr + offs_NW, mask=in_NW, other=0.0).to(tl.float32)
    mean_N = tl.sum(x_NW, axis=1) / W  # mu
    xc_NW = tl.where(in_NW, x_NW - mean_N[:, None], 0.0)
    rstd_N = 1.0 / tl.sqrt(tl.sum(xc_NW * xc_NW, axis=1) / W + eps)  # r = 1 / sqrt(var + eps)
    a_NW = xc_NW * rstd_N[:, None]  # x^
    if AFFINE:
        w_W = tl.load(w_ptr + c_W, mask=in_W, other=0.0).to(tl.float32)
        b_W = tl.load(b_ptr + c_W, mask=in_W, other=0.0).to(tl.float32)
        a_NW = a_NW * w_W[None, :] + b_W[None, :]  # a = x^ w + b
    s_NW = tl.load(scale_ptr + offs_NW, mask=in_NW, other=0.0).to(tl.float32)
    t_NW = tl.load(shift_ptr + offs_NW, mask=in_NW, other=0.0).to(tl.float32)
    y_NW = a_NW * (1.0 + s_NW) + t_NW  # y = a (1 + s) + t
    tl.store(y_ptr + offs_NW, y_NW.to(y_ptr.dtype.element_ty), mask=in_NW)
    tl.store(mean_ptr + n_N, mean_N, mask=in_N)
    tl.store(rstd_ptr + n_N, rstd_N, mask=in_N)


@jit
def _backward_kernel(g_ptr, x_ptr, w_ptr, b_ptr, scale_ptr, mean_ptr, rstd_ptr,
                     dx_ptr, ds_ptr, dt_ptr, dw_ptr, db_ptr, N, W, ROWS_PER_PROGRAM,
                     AFFINE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr):
    chunk = tl.program_id(0)
    c_W = tl.arange(0, BLOCK_W)
    in_W = c_W < W
    w_W = tl.full((BLOCK_W,), 1.0, tl.float32)
    b_W = tl.zeros((BLOCK_W,), dtype=tl.float32)
    if AFFINE:
        w_W = tl.load(w_ptr + c_W, mask=in_W, other=0.0).to(tl.float32)
        b_W = tl.load(b_ptr + c_W, mask=in_W, other=0.0).to(tl.float32)
    dw_W = tl.zeros((BLOCK_W,), dtype=tl.float32)  # partial sums over this chunk's rows
    db_W = tl.zeros((BLOCK_W,), dtype=tl.float32)
    first = chunk * ROWS_PER_PROGRAM
    for start in range(first, first + ROWS_PER_PROGRAM, BLOCK_N):
        n_N = start + tl.arange(0, BLOCK_N)
        in_N = (n_N < N) & (n_N < first + ROWS_PER_PROGRAM)
        in_NW = in_N[:, None] & in_W[None, :]
        offs_NW = n_N.to(tl.int64)[:, None] * W + c_W[None, :]
        g_NW = tl.load(g_ptr + offs_NW, mask=in_NW, other=0.0).to(tl.float32)
        x_NW = tl.load(x_ptr + offs_NW, mask=in_NW, other=0.0).to(tl.float32)
        s_NW = tl.load(scale_ptr + offs_NW, mask=in_NW, other=0.0).to(tl.float32)
        mean_N = tl.load(mean_ptr + n_N, mask=in_N, other=0.0)
        rstd_N = tl.load(rstd_ptr + n_N, mask=in_N, other=0.0)
        xhat_NW = tl.where(in_NW, (x_NW - mean_N[:, None]) * rstd_N[:, None], 0.0)

        gm_NW = g_NW * (1.0 + s_NW)  # dL/da = g (1 + s)
        tl.store(dt_ptr + offs_NW, g_NW.to(dt_ptr.dtype.element_ty), mask=in_NW)  # dL/dt = g
        a_NW = xhat_NW * w_W[None, :] + b_W[None, :]
        tl.store(ds_ptr + offs_NW, (g_NW * a_NW).to(ds_ptr.dtype.element_ty), mask=in_NW)  # dL/ds = g a
        dw_W += tl.sum(gm_NW * xhat_NW, axis=0)  # dL/dw = sum_n g m x^
        db_W += tl.sum(gm_NW, axis=0)  # dL/db = sum_n g m
        d_NW = gm_NW * w_W[None, :]  # dL/dx^
        mean_d_N = tl.sum(d_NW, axis=1) / W
        mean_dx_N = tl.sum(d_NW * xhat_NW, axis=1) / W
        dx_NW = rstd_N[:, None] * (d_NW - mean_d_N[:, None] - xhat_NW * mean_dx_N[:, None])
        tl.store(dx_ptr + offs_NW, dx_NW.to(dx_ptr.dtype.element_ty), mask=in_NW)

    if AFFINE:
        tl.store(dw_ptr + chunk * W + c_W, dw_W, mask=in_W)
        tl.store(db_ptr + chunk * W + c_W, db_W, mask=in_W)


# The backward's tile (about 4096 elements, with two float32 partial sums of W) is shared by
# 8 warps: with 4 it needed 177 registers a thread on sm_90 (8 resident warps per SM), with 8
# it needs 101 (16 warps). Every variant's figures: docs/kernel_resources.md.
BACKWARD_WARPS = 8


def _tile(N: int, W: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_W): whole rows, about 4096 elements per tile."""
    BLOCK_W = next_power_of_2(W)
    return max(1, min(next_power_of_2(N), 4096 // BLOCK_W)), BLOCK_W


class _LayerNormModulate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_NW, weight_W, bias_W, scale_NW, shift_NW, eps, backward_programs):
        N, W = x_NW.shape
        affine = weight_W is not None
        x_NW, scale_NW, shift_NW = x_NW.contiguous(), scale_NW.contiguous(), shift_NW.contiguous()
        if affine:
            weight_W, bias_W = weight_W.contiguous(), bias_W.contiguous()
        y_NW = torch.empty_like(x_NW)
        mean_N, rstd_N = torch.empty((2, N), dtype=torch.float32, device=x_NW.device)
        BLOCK_N, BLOCK_W = _tile(N, W)
        unused = mean_N  # any pointer will do where AFFINE is off: the kernel never reads it
        _forward_kernel[(cdiv(N, BLOCK_N),)](x_NW, weight_W if affine else unused, bias_W if affine else unused,
                                             scale_NW, shift_NW, y_NW, mean_N, rstd_N, N, W, eps,
                                             AFFINE=affine, BLOCK_N=BLOCK_N, BLOCK_W=BLOCK_W)
        ctx.save_for_backward(x_NW, weight_W, bias_W, scale_NW, mean_N, rstd_N)
        ctx.shift_dtype, ctx.backward_programs = shift_NW.dtype, backward_programs
        return y_NW

    @staticmethod
    def backward(ctx, g_NW):
        x_NW, weight_W, bias_W, scale_NW, mean_N, rstd_N = ctx.saved_tensors
        N, W = x_NW.shape
        affine = weight_W is not None
        g_NW = g_NW.contiguous()
        BLOCK_N, BLOCK_W = _tile(N, W)
        programs = max(1, min(ctx.backward_programs, cdiv(N, BLOCK_N)))
        rows_per_program = cdiv(N, programs)
        dx_NW, ds_NW = torch.empty_like(x_NW), torch.empty_like(scale_NW)
        dt_NW = torch.empty(x_NW.shape, dtype=ctx.shift_dtype, device=x_NW.device)
        dw_PW, db_PW = torch.empty((2, programs, W), dtype=torch.float32, device=x_NW.device)
        _backward_kernel[(programs,)](g_NW, x_NW, weight_W if affine else mean_N, bias_W if affine else mean_N,
                                      scale_NW, mean_N, rstd_N, dx_NW, ds_NW, dt_NW, dw_PW, db_PW,
                                      N, W, rows_per_program, AFFINE=affine, BLOCK_N=BLOCK_N, BLOCK_W=BLOCK_W,
                                      num_warps=BACKWARD_WARPS)
        dw_W = dw_PW.sum(0).to(weight_W.dtype) if affine else None
        db_W = db_PW.sum(0).to(bias_W.dtype) if affine else None
        return dx_NW, dw_W, db_W, ds_NW, dt_NW, None, None


def layernorm_modulate_triton(x_NW: torch.Tensor, weight_W: torch.Tensor | None, bias_W: torch.Tensor | None,
                              scale_NW: torch.Tensor, shift_NW: torch.Tensor, eps: float, *,
                              backward_programs: int | None = None) -> torch.Tensor:
    """The fused Triton kernel (differentiable in x, weight, bias, scale and shift).

    ``backward_programs``: how many programs share the rows in the backward (more: more
    parallelism, more partial sums of dw, db). Default: four per multiprocessor on a CUDA
    device, one in the interpreter."""
    _check(x_NW, weight_W, bias_W, scale_NW, shift_NW)
    mode = require_triton(*(t for t in (x_NW, weight_W, bias_W, scale_NW, shift_NW) if t is not None))
    if backward_programs is None:
        backward_programs = 1
        if mode == "cuda":
            backward_programs = 4 * torch.cuda.get_device_properties(x_NW.device).multi_processor_count
    return _LayerNormModulate.apply(x_NW, weight_W, bias_W, scale_NW, shift_NW, float(eps), backward_programs)


def layernorm_modulate(x_NW: torch.Tensor, weight_W: torch.Tensor | None, bias_W: torch.Tensor | None,
                       scale_NW: torch.Tensor, shift_NW: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm(x) * (1 + scale) + shift with the backend chosen by ``backend.use_backend``."""
    return dispatch(layernorm_modulate_reference, layernorm_modulate_triton)(
        x_NW, weight_W, bias_W, scale_NW, shift_NW, eps)
