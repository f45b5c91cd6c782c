r"""RMSNorm followed by the adaLN modulation, fused, with its backward.

Each row ``x`` (length C) of token ``l`` in batch row ``n`` becomes

.. math::

    r = \frac{1}{\sqrt{\tfrac1C \sum_c x_c^2 + \epsilon}}, \qquad
    \hat x = x\, r, \qquad
    y = \hat x \odot w \odot (1 + s_n) + b_n

with the norm weight ``w`` (C), and the scale ``s_n`` and shift ``b_n`` (C) of batch row ``n``,
shared by all its tokens. This is ``RMSNorm(x) * (1 + scale) + shift`` of the adaLN blocks in
``hart_edu/ar_transformer.py`` (whose ``RMSNorm`` module is :func:`rms_norm`).

Precision: the reference computes the norm in float32 and rounds ``x w r`` to ``x``'s dtype
*before* the modulation, which then runs in that dtype: what the official model does (its fused
RMSNorm returns the input's dtype, the modulation is eager PyTorch). The Triton kernel keeps
everything in float32 and rounds ``y`` once. For float32 inputs (the golden parity, the tiny
model) both are the same computation; in bf16 they differ by that one rounding.

Backward, with ``g = dL/dy`` and ``m = w (1 + s_n)``:

.. math::

    \frac{\partial L}{\partial b_n} = \sum_l g, \quad
    \frac{\partial L}{\partial s_n} = \sum_l g\, \hat x\, w, \quad
    \frac{\partial L}{\partial w} = \sum_{n,l} g\, \hat x\, (1 + s_n), \quad
    \frac{\partial L}{\partial x} = r \Big( g\,m - \hat x\, \tfrac1C \sum_c g_c m_c \hat x_c \Big)

The Triton forward gives each program a tile of ``BLOCK_L`` tokens of one batch row (so the
row's scale and shift are loaded once). The backward gives each program a chunk of tokens of one
batch row; it writes ``dx`` directly and keeps float32 partial sums of ``dw``, ``ds`` and ``db``
in registers, written once per program and summed by PyTorch afterwards.
"""

from __future__ import annotations

import torch

from .backend import cdiv, dispatch, jit, next_power_of_2, require_triton, tl

# --------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------


def _check(x_NLC: torch.Tensor, weight_C: torch.Tensor, scale_N1C: torch.Tensor, shift_N1C: torch.Tensor) -> None:
    if x_NLC.dim() != 3:
        raise ValueError(f"x must be (N, L, C), got {tuple(x_NLC.shape)}")
    N, _, C = x_NLC.shape
    if weight_C.shape != (C,):
        raise ValueError(f"weight must be ({C},), got {tuple(weight_C.shape)}")
    for name, t in (("scale", scale_N1C), ("shift", shift_N1C)):
        if t.shape != (N, 1, C):
            raise ValueError(f"{name} must be ({N}, 1, {C}) (one row per batch row), got {tuple(t.shape)}")


def rms_norm(x: torch.Tensor, weight_C: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm alone: x / sqrt(mean(x^2) + eps) * w over the last dimension, computed in float32
    and returned in x's dtype (the official fused RMSNorm)."""
    x32 = x.float()
    rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)  # r = 1 / sqrt(mean x^2 + eps)
    return (x32 * rstd * weight_C.float()).to(x.dtype)


def rmsnorm_modulate_reference(x_NLC: torch.Tensor, weight_C: torch.Tensor, scale_N1C: torch.Tensor,
                               shift_N1C: torch.Tensor, eps: float) -> torch.Tensor:
    """y = rms_norm(x) * (1 + scale) + shift: the norm in float32, the modulation in x's dtype."""
    _check(x_NLC, weight_C, scale_N1C, shift_N1C)
    return rms_norm(x_NLC, weight_C, eps) * (1 + scale_N1C) + shift_N1C


# --------------------------------------------------------------------------------------
# Triton
# --------------------------------------------------------------------------------------


@jit
def _forward_kernel(x_ptr, w_ptr, scale_ptr, shift_ptr, y_ptr, rstd_ptr, L, C, eps,
                    BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    n = tl.program_id(0)  # batch row
    l_L = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)  # token indices of this tile
    c_C = tl.arange(0, BLOCK_C)
    in_L, in_C = l_L < L, c_C < C
    in_LC = in_L[:, None] & in_C[None, :]

    # per-column factors, loaded once per tile: m = w (1 + s_n), and the shift b_n
    w_C = tl.load(w_ptr + c_C, mask=in_C, other=0.0).to(tl.float32)
    s_C = tl.load(scale_ptr + n * C + c_C, mask=in_C, other=0.0).to(tl.float32)
    b_C = tl.load(shift_ptr + n * C + c_C, mask=in_C, other=0.0).to(tl.float32)

    offs_LC = (n * L + l_L).to(tl.int64)[:, None] * C + c_C[None, :]  # int64: > 2^31 elements
    x_LC = tl.load(x_ptr + offs_LC, mask=in_LC, other=0.0).to(tl.float32)
    rstd_L = 1.0 / tl.sqrt(tl.sum(x_LC * x_LC, axis=1) / C + eps)  # r = 1 / sqrt(mean x^2 + eps)
    y_LC = x_LC * rstd_L[:, None] * (w_C * (1.0 + s_C))[None, :] + b_C[None, :]
    tl.store(y_ptr + offs_LC, y_LC.to(y_ptr.dtype.element_ty), mask=in_LC)
    tl.store(rstd_ptr + n * L + l_L, rstd_L, mask=in_L)


@jit
def _backward_kernel(g_ptr, x_ptr, w_ptr, scale_ptr, rstd_ptr, dx_ptr, dw_ptr, ds_ptr, db_ptr,
                     L, C, TOKENS_PER_PROGRAM, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    n = tl.program_id(0)  # batch row
    chunk = tl.program_id(1)  # this program's chunk of tokens of row n
    c_C = tl.arange(0, BLOCK_C)
    in_C = c_C < C
    w_C = tl.load(w_ptr + c_C, mask=in_C, other=0.0).to(tl.float32)
    s_C = tl.load(scale_ptr + n * C + c_C, mask=in_C, other=0.0).to(tl.float32)
    m_C = w_C * (1.0 + s_C)  # m = w (1 + s_n)

    dw_C = tl.zeros((BLOCK_C,), dtype=tl.float32)  # partial sums over this chunk's tokens
    ds_C = tl.zeros((BLOCK_C,), dtype=tl.float32)
    db_C = tl.zeros((BLOCK_C,), dtype=tl.float32)
    first = chunk * TOKENS_PER_PROGRAM
    for start in range(first, first + TOKENS_PER_PROGRAM, BLOCK_L):
        l_L = start + tl.arange(0, BLOCK_L)
        in_L = (l_L < L) & (l_L < first + TOKENS_PER_PROGRAM)
        in_LC = in_L[:, None] & in_C[None, :]
        offs_LC = (n * L + l_L).to(tl.int64)[:, None] * C + c_C[None, :]
        g_LC = tl.load(g_ptr + offs_LC, mask=in_LC, other=0.0).to(tl.float32)
        x_LC = tl.load(x_ptr + offs_LC, mask=in_LC, other=0.0).to(tl.float32)
        rstd_L = tl.load(rstd_ptr + n * L + l_L, mask=in_L, other=0.0)
        xhat_LC = x_LC * rstd_L[:, None]

        db_C += tl.sum(g_LC, axis=0)  # dL/db_n = sum_l g
        ds_C += tl.sum(g_LC * xhat_LC, axis=0) * w_C  # dL/ds_n = sum_l g xhat w
        dw_C += tl.sum(g_LC * xhat_LC, axis=0) * (1.0 + s_C)  # dL/dw = sum g xhat (1 + s_n)
        gm_LC = g_LC * m_C[None, :]
        mean_L = tl.sum(gm_LC * xhat_LC, axis=1) / C  # (1/C) sum_c g m xhat
        dx_LC = rstd_L[:, None] * (gm_LC - xhat_LC * mean_L[:, None])
        tl.store(dx_ptr + offs_LC, dx_LC.to(dx_ptr.dtype.element_ty), mask=in_LC)

    partial = (n * tl.num_programs(1) + chunk) * C + c_C
    tl.store(dw_ptr + partial, dw_C, mask=in_C)
    tl.store(ds_ptr + partial, ds_C, mask=in_C)
    tl.store(db_ptr + partial, db_C, mask=in_C)


# The backward's tile (about 4096 elements, with three float32 partial sums of C) is shared by
# 8 warps: with 4 it needed 237 registers a thread on sm_90 (8 resident warps per SM), with 8
# it needs 128 (16 warps). Every variant's figures: docs/kernel_resources.md.
BACKWARD_WARPS = 8


def _tile(L: int, C: int) -> tuple[int, int]:
    """(BLOCK_L, BLOCK_C): whole rows, about 4096 elements per tile."""
    BLOCK_C = next_power_of_2(C)
    return max(1, min(next_power_of_2(L), 4096 // BLOCK_C)), BLOCK_C


class _RMSNormModulate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_NLC, weight_C, scale_N1C, shift_N1C, eps, backward_programs_per_row):
        N, L, C = x_NLC.shape
        x_NLC, weight_C = x_NLC.contiguous(), weight_C.contiguous()
        scale_N1C, shift_N1C = scale_N1C.contiguous(), shift_N1C.contiguous()
        y_NLC = torch.empty_like(x_NLC)
        rstd_NL = torch.empty((N, L), dtype=torch.float32, device=x_NLC.device)
        BLOCK_L, BLOCK_C = _tile(L, C)
        grid = (N, cdiv(L, BLOCK_L))
        _forward_kernel[grid](x_NLC, weight_C, scale_N1C, shift_N1C, y_NLC, rstd_NL, L, C, eps,
                              BLOCK_L=BLOCK_L, BLOCK_C=BLOCK_C)
        ctx.save_for_backward(x_NLC, weight_C, scale_N1C, rstd_NL)
        ctx.shift_dtype = shift_N1C.dtype
        ctx.backward_programs_per_row = backward_programs_per_row
        return y_NLC

    @staticmethod
    def backward(ctx, g_NLC):
        x_NLC, weight_C, scale_N1C, rstd_NL = ctx.saved_tensors
        N, L, C = x_NLC.shape
        g_NLC = g_NLC.contiguous()
        BLOCK_L, BLOCK_C = _tile(L, C)
        programs = max(1, min(ctx.backward_programs_per_row, cdiv(L, BLOCK_L)))
        tokens_per_program = cdiv(L, programs)
        dx_NLC = torch.empty_like(x_NLC)
        dw_NPC, ds_NPC, db_NPC = torch.empty((3, N, programs, C), dtype=torch.float32, device=x_NLC.device)
        _backward_kernel[(N, programs)](g_NLC, x_NLC, weight_C, scale_N1C, rstd_NL, dx_NLC, dw_NPC, ds_NPC, db_NPC,
                                        L, C, tokens_per_program, BLOCK_L=BLOCK_L, BLOCK_C=BLOCK_C,
                                        num_warps=BACKWARD_WARPS)
        dw_C = dw_NPC.sum((0, 1)).to(weight_C.dtype)
        ds_N1C = ds_NPC.sum(1, keepdim=True).to(scale_N1C.dtype)
        db_N1C = db_NPC.sum(1, keepdim=True).to(ctx.shift_dtype)
        return dx_NLC, dw_C, ds_N1C, db_N1C, None, None


def rmsnorm_modulate_triton(x_NLC: torch.Tensor, weight_C: torch.Tensor, scale_N1C: torch.Tensor,
                            shift_N1C: torch.Tensor, eps: float, *,
                            backward_programs_per_row: int | None = None) -> torch.Tensor:
    """The fused Triton kernel (differentiable in x, weight, scale and shift).

    ``backward_programs_per_row``: how many programs share one batch row's tokens in the
    backward (more: more parallelism, more partial sums to add up). Default: about four
    programs per multiprocessor on a CUDA device, one in the interpreter."""
    _check(x_NLC, weight_C, scale_N1C, shift_N1C)
    mode = require_triton(x_NLC, weight_C, scale_N1C, shift_N1C)
    if backward_programs_per_row is None:
        backward_programs_per_row = 1
        if mode == "cuda":
            sm_count = torch.cuda.get_device_properties(x_NLC.device).multi_processor_count
            backward_programs_per_row = max(1, 4 * sm_count // x_NLC.shape[0])
    return _RMSNormModulate.apply(x_NLC, weight_C, scale_N1C, shift_N1C, float(eps), backward_programs_per_row)


def rmsnorm_modulate(x_NLC: torch.Tensor, weight_C: torch.Tensor, scale_N1C: torch.Tensor,
                     shift_N1C: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm(x) * w * (1 + scale) + shift with the backend chosen by ``backend.use_backend``."""
    return dispatch(rmsnorm_modulate_reference, rmsnorm_modulate_triton)(x_NLC, weight_C, scale_N1C, shift_N1C, eps)
