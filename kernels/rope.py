r"""Rotary position embedding of queries and keys, with explicit (possibly float, 2-D) positions.

HART's transformer (``hart_edu/ar_transformer.py``) rotates q and k of every head with angles
computed from per-token position ids ``p`` with ``P`` axes: ``P = 1`` for the context tokens
(integer positions), ``P = 2`` for image tokens (float ``(row, col)`` grid coordinates). With
head size ``d`` and ``J = d / (2P)`` frequencies

.. math::

    f_j = \text{base}^{-2P j / d} \quad (j < J), \qquad
    \theta = [\,p_0 f,\; p_0 f,\; \dots,\; p_{P-1} f,\; p_{P-1} f\,] \in \mathbb R^d

(``P = 1``: ``[p f, p f]``; ``P = 2``: ``[r f, r f, c f, c f]``), and with ``x = [x_1, x_2]``
split in two halves and ``rotate_half(x) = [-x_2, x_1]``:

.. math::

    \text{rope}(x) = x \odot \cos\theta + \text{rotate\_half}(x) \odot \sin\theta

so dimension ``i < d/2`` is paired with ``i + d/2``. For ``P = 2`` the two members of a pair
get *different* angles (``r f`` and ``c f``): not a true rotation, but what the official model
computes, and reproduced here.

The Triton kernel never materialises ``cos`` / ``sin``: a program takes a tile of ``BLOCK_L``
tokens of one batch row, computes their angles once (positions times the ``f_j`` table) and
rotates q and k of every head with them.

Backward: ``rope`` is linear in ``x``; with ``theta_1`` the angle of dimension ``i < d/2`` and
``theta_2`` that of its partner ``i + d/2``, the forward is
``y_1 = x_1 cos theta_1 - x_2 sin theta_1``, ``y_2 = x_2 cos theta_2 + x_1 sin theta_2``, so
the gradient is its transpose, ``dx_1 = g_1 cos theta_1 + g_2 sin theta_2``,
``dx_2 = g_2 cos theta_2 - g_1 sin theta_1`` (the same kernel with ``TRANSPOSE``; for 1-D RoPE
this is the rotation by ``-theta``, for HART's 2-D one it is not, as the pair's angles differ).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .backend import cdiv, dispatch, jit, next_power_of_2, require_triton, tl

ROPE_BASE = 10000.0


class RotatedQK(NamedTuple):
    q_NHLd: torch.Tensor
    k_NHLd: torch.Tensor


def _check(q_NHLd: torch.Tensor, k_NHLd: torch.Tensor, position_ids: torch.Tensor) -> int:
    """Validate the shapes; return P, the number of position axes."""
    if q_NHLd.dim() != 4 or q_NHLd.shape != k_NHLd.shape:
        raise ValueError(f"q and k must both be (N, H, L, d), got {tuple(q_NHLd.shape)} and {tuple(k_NHLd.shape)}")
    N, _, L, d = q_NHLd.shape
    P = 1 if position_ids.dim() == 2 else position_ids.shape[-1]
    if position_ids.shape[:2] != (N, L) or position_ids.dim() not in (2, 3) or P not in (1, 2):
        raise ValueError(f"position_ids must be (N, L) or (N, L, 2) with N={N}, L={L}, got {tuple(position_ids.shape)}")
    if d % (2 * P):
        raise ValueError(f"head size {d} must be divisible by {2 * P} for {P}-D RoPE")
    return P


def inv_freq(head_dim: int, axes: int, base: float = ROPE_BASE) -> torch.Tensor:
    """f_j = base^{-2P j / d}, j < d / (2P), float32 (the official expression)."""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2 * axes, dtype=torch.int64).float() / head_dim))


# --------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] over the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_reference(q_NHLd: torch.Tensor, k_NHLd: torch.Tensor, position_ids: torch.Tensor,
                   base: float = ROPE_BASE) -> RotatedQK:
    """x cos(theta) + rotate_half(x) sin(theta) for q and k; ``position_ids`` (N, L) or (N, L, 2).

    The angles, cos and sin are float32 and then cast to the inputs' dtype, as the official
    rotary embedding does: half-precision q and k are rotated in half precision. (The Triton
    kernel rotates in float32 and rounds once: the same numbers for float32 inputs.)"""
    P = _check(q_NHLd, k_NHLd, position_ids)
    d = q_NHLd.shape[-1]
    pos_NLP = position_ids.float().reshape(*position_ids.shape[:2], P)
    f_J = inv_freq(d, P, base).to(position_ids.device)
    theta_NLd = torch.cat([torch.cat((pos_NLP[..., a, None] * f_J,) * 2, dim=-1) for a in range(P)], dim=-1)
    cos_N1Ld, sin_N1Ld = theta_NLd.cos().unsqueeze(1), theta_NLd.sin().unsqueeze(1)
    rotate = lambda x: x * cos_N1Ld.to(x.dtype) + rotate_half(x) * sin_N1Ld.to(x.dtype)  # noqa: E731
    return RotatedQK(rotate(q_NHLd), rotate(k_NHLd))


# --------------------------------------------------------------------------------------
# Triton
# --------------------------------------------------------------------------------------


@jit
def _rope_kernel(q_ptr, k_ptr, pos_ptr, f_ptr, q_out_ptr, k_out_ptr,
                 H, L, q_sN, q_sH, q_sL, k_sN, k_sH, k_sL,
                 P: tl.constexpr, HALF: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_HALF: tl.constexpr,
                 TRANSPOSE: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)  # int64 offsets: tensors may exceed 2^31 elements
    l_L = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    i_D = tl.arange(0, BLOCK_HALF)  # dimension i of the first half; its partner is i + d/2
    in_L, in_D = l_L < L, i_D < HALF
    in_LD = in_L[:, None] & in_D[None, :]

    # theta_i = p_{axis(i)} f_{i mod J}: each axis owns d/P dimensions, J = d / (2P)
    J = HALF // P
    i2_D = i_D + HALF
    f1_D = tl.load(f_ptr + i_D % J, mask=in_D, other=0.0)
    f2_D = tl.load(f_ptr + i2_D % J, mask=in_D, other=0.0)
    pos_offs = (n * L + l_L)[:, None] * P
    p1_LD = tl.load(pos_ptr + pos_offs + (i_D // (2 * J))[None, :], mask=in_LD, other=0.0)
    p2_LD = tl.load(pos_ptr + pos_offs + (i2_D // (2 * J))[None, :], mask=in_LD, other=0.0)
    theta1_LD, theta2_LD = p1_LD * f1_D[None, :], p2_LD * f2_D[None, :]
    cos1, sin1 = tl.cos(theta1_LD), tl.sin(theta1_LD)
    cos2, sin2 = tl.cos(theta2_LD), tl.sin(theta2_LD)
    if TRANSPOSE:  # the backward: dx_1 = g_1 cos1 + g_2 sin2, dx_2 = g_2 cos2 - g_1 sin1
        sin1, sin2 = -sin2, -sin1

    out_offs = (n * H * L + l_L)[:, None] * (2 * HALF) + i_D[None, :]  # outputs are contiguous (N, H, L, d)
    for h in range(H):
        # rope(x) = [x1 cos1 - x2 sin1, x2 cos2 + x1 sin2]
        q_offs = n * q_sN + h * q_sH + l_L[:, None] * q_sL + i_D[None, :]
        q1 = tl.load(q_ptr + q_offs, mask=in_LD, other=0.0).to(tl.float32)
        q2 = tl.load(q_ptr + q_offs + HALF, mask=in_LD, other=0.0).to(tl.float32)
        o = out_offs + h * L * (2 * HALF)
        tl.store(q_out_ptr + o, (q1 * cos1 - q2 * sin1).to(q_out_ptr.dtype.element_ty), mask=in_LD)
        tl.store(q_out_ptr + o + HALF, (q2 * cos2 + q1 * sin2).to(q_out_ptr.dtype.element_ty), mask=in_LD)
        k_offs = n * k_sN + h * k_sH + l_L[:, None] * k_sL + i_D[None, :]
        k1 = tl.load(k_ptr + k_offs, mask=in_LD, other=0.0).to(tl.float32)
        k2 = tl.load(k_ptr + k_offs + HALF, mask=in_LD, other=0.0).to(tl.float32)
        tl.store(k_out_ptr + o, (k1 * cos1 - k2 * sin1).to(k_out_ptr.dtype.element_ty), mask=in_LD)
        tl.store(k_out_ptr + o + HALF, (k2 * cos2 + k1 * sin2).to(k_out_ptr.dtype.element_ty), mask=in_LD)


# 16 warps share a tile of about 2048 half-head elements: with 4, the angles, their cos / sin and
# q, k of a head needed 139-155 registers a thread (12 resident warps per SM); with 8, about 80
# but ptxas spilled a few bytes in the float32 1-D variant on sm_90; with 16, under 60, no spills.
# Every variant's figures: docs/kernel_resources.md (python -m hart_edu.kernels.resources).
NUM_WARPS = 16


def _launch(q_NHLd: torch.Tensor, k_NHLd: torch.Tensor, pos_NLP: torch.Tensor, f_J: torch.Tensor,
            block_l: int | None, transpose: bool) -> RotatedQK:
    if q_NHLd.stride(-1) != 1 or k_NHLd.stride(-1) != 1:
        q_NHLd, k_NHLd = q_NHLd.contiguous(), k_NHLd.contiguous()
    N, H, L, d = q_NHLd.shape
    q_out = torch.empty(q_NHLd.shape, dtype=q_NHLd.dtype, device=q_NHLd.device)  # contiguous (N, H, L, d)
    k_out = torch.empty(k_NHLd.shape, dtype=k_NHLd.dtype, device=k_NHLd.device)
    BLOCK_HALF = next_power_of_2(d // 2)
    BLOCK_L = block_l or max(1, min(next_power_of_2(L), 2048 // BLOCK_HALF))
    _rope_kernel[(N, cdiv(L, BLOCK_L))](q_NHLd, k_NHLd, pos_NLP, f_J, q_out, k_out, H, L,
                                        q_NHLd.stride(0), q_NHLd.stride(1), q_NHLd.stride(2),
                                        k_NHLd.stride(0), k_NHLd.stride(1), k_NHLd.stride(2),
                                        P=pos_NLP.shape[-1], HALF=d // 2, BLOCK_L=BLOCK_L, BLOCK_HALF=BLOCK_HALF,
                                        TRANSPOSE=transpose, num_warps=NUM_WARPS)
    return RotatedQK(q_out, k_out)


class _Rope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q_NHLd, k_NHLd, pos_NLP, f_J, block_l):
        ctx.save_for_backward(pos_NLP, f_J)
        ctx.block_l = block_l
        return tuple(_launch(q_NHLd, k_NHLd, pos_NLP, f_J, block_l, transpose=False))

    @staticmethod
    def backward(ctx, dq_out, dk_out):
        pos_NLP, f_J = ctx.saved_tensors
        dq_out = torch.zeros_like(dq_out) if dq_out is None else dq_out
        dk_out = torch.zeros_like(dk_out) if dk_out is None else dk_out
        dq, dk = _launch(dq_out, dk_out, pos_NLP, f_J, ctx.block_l, transpose=True)
        return dq, dk, None, None, None


def rope_triton(q_NHLd: torch.Tensor, k_NHLd: torch.Tensor, position_ids: torch.Tensor,
                base: float = ROPE_BASE, *, block_l: int | None = None) -> RotatedQK:
    """The fused Triton kernel (differentiable in q and k). q and k may be strided views (e.g.
    of a packed qkv projection) as long as the head dimension is contiguous; outputs are
    contiguous.

    ``block_l``: tokens per program (default: about 2048 elements of a half-head per tile)."""
    P = _check(q_NHLd, k_NHLd, position_ids)
    require_triton(q_NHLd, k_NHLd, position_ids)
    N, _, L, d = q_NHLd.shape
    pos_NLP = position_ids.float().reshape(N, L, P).contiguous()
    f_J = inv_freq(d, P, base).to(q_NHLd.device)
    return RotatedQK(*_Rope.apply(q_NHLd, k_NHLd, pos_NLP, f_J, block_l))


def rope(q_NHLd: torch.Tensor, k_NHLd: torch.Tensor, position_ids: torch.Tensor,
         base: float = ROPE_BASE) -> RotatedQK:
    """Rotary embedding of q and k with the backend chosen by ``backend.use_backend``."""
    return dispatch(rope_reference, rope_triton)(q_NHLd, k_NHLd, position_ids, base)
