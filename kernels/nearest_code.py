r"""Nearest codebook entry (vector quantisation), distance and argmin fused.

For each row ``z_n`` (C) and a codebook ``e`` (V, C):

.. math::

    k_n = \arg\min_k \lVert z_n - e_k \rVert^2
        = \arg\min_k \big( \lVert z_n\rVert^2 + \lVert e_k\rVert^2 - 2\, z_n \cdot e_k \big)

(the lookup of ``hart_edu.vq``'s quantizers). With ``cosine`` (the official ``using_znorm``)
both sides are L2-normalised first and the largest dot product wins, which is the same argmin
since then ``||z - e||^2 = 2 - 2 z.e``.

The reference builds the (N, V) distance matrix in float32 with the expanded form, one matmul,
as the official code does (so ties and near-ties resolve as there). The Triton kernel never does: a program takes
``BLOCK_N`` rows, walks the codebook in blocks of ``BLOCK_V`` codes (and C in chunks of
``BLOCK_C``), and keeps a running minimum and its index:

.. math::

    d_{nk} = \lVert e_k\rVert^2 - 2\, z_n\cdot e_k, \qquad
    (\text{best}_n, k_n) \leftarrow (d_{nk^*}, k^*) \text{ if } d_{nk^*} < \text{best}_n

(``||z_n||^2`` is the same for every code and left out.) A strict ``<`` across blocks and the
first index within a block keep the *first* minimum, like ``torch.argmin``. All arithmetic is
float32 (``tl.dot`` with ``input_precision="ieee"``, no TF32), so indices agree with the
reference except on near-ties (distances within float32 rounding of each other).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .backend import cdiv, dispatch, jit, next_power_of_2, require_triton, tl


def _check(z_NC: torch.Tensor, codebook_VC: torch.Tensor) -> None:
    if z_NC.dim() != 2 or codebook_VC.dim() != 2 or z_NC.shape[1] != codebook_VC.shape[1]:
        raise ValueError(f"nearest_code wants (N, C) and (V, C), got {tuple(z_NC.shape)} and "
                         f"{tuple(codebook_VC.shape)}")


# --------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------


def nearest_code_reference(z_NC: torch.Tensor, codebook_VC: torch.Tensor, cosine: bool = False) -> torch.Tensor:
    """argmin_k ||z_n - e_k||^2 (float32) -> idx_N (int64); ``cosine``: argmax_k z_n.e_k / (|z_n| |e_k|)."""
    _check(z_NC, codebook_VC)
    z_NC, e_VC = z_NC.float(), codebook_VC.float()
    if cosine:
        return (F.normalize(z_NC, dim=1) @ F.normalize(e_VC, dim=1).T).argmax(dim=1)
    dist_NV = z_NC.square().sum(1, keepdim=True) + e_VC.square().sum(1)  # ||z||^2 + ||e||^2
    dist_NV = dist_NV.addmm(z_NC, e_VC.T, alpha=-2.0)  # - 2 z e^T
    return dist_NV.argmin(dim=1)


# --------------------------------------------------------------------------------------
# Triton
# --------------------------------------------------------------------------------------


@jit
def _nearest_code_kernel(z_ptr, e_ptr, idx_ptr, N, V, C,
                         BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_C: tl.constexpr):
    n_N = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_N = n_N < N
    best_N = tl.full((BLOCK_N,), float("inf"), dtype=tl.float32)
    best_idx_N = tl.zeros((BLOCK_N,), dtype=tl.int64)
    for v0 in range(0, V, BLOCK_V):
        v_V = v0 + tl.arange(0, BLOCK_V)
        in_V = v_V < V
        dot_NV = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)  # z . e
        sq_V = tl.zeros((BLOCK_V,), dtype=tl.float32)  # ||e||^2
        for c0 in range(0, C, BLOCK_C):
            c_C = c0 + tl.arange(0, BLOCK_C)
            in_C = c_C < C
            z_NC = tl.load(z_ptr + n_N[:, None] * C + c_C[None, :], mask=in_N[:, None] & in_C[None, :],
                           other=0.0).to(tl.float32)
            e_VC = tl.load(e_ptr + v_V[:, None] * C + c_C[None, :], mask=in_V[:, None] & in_C[None, :],
                           other=0.0).to(tl.float32)
            dot_NV += tl.dot(z_NC, tl.trans(e_VC), input_precision="ieee")
            sq_V += tl.sum(e_VC * e_VC, axis=1)
        dist_NV = sq_V[None, :] - 2.0 * dot_NV  # ||e||^2 - 2 z.e  (+ ||z||^2, the same for all k)
        dist_NV = tl.where(in_V[None, :], dist_NV, float("inf"))
        block_best_N = tl.min(dist_NV, axis=1)
        block_idx_N = tl.argmin(dist_NV, axis=1, tie_break_left=True) + v0
        better_N = block_best_N < best_N  # strict: an earlier block wins a tie, as torch.argmin
        best_idx_N = tl.where(better_N, block_idx_N.to(tl.int64), best_idx_N)
        best_N = tl.where(better_N, block_best_N, best_N)
    tl.store(idx_ptr + n_N, best_idx_N, mask=in_N)


# 8 warps share the (BLOCK_N, BLOCK_V) float32 dot products: with 4, the default tile needed 255
# registers a thread on sm_80 and spilled 32 bytes; with 8, at most 254 on sm_80 and 128 on
# sm_90, no spills. Every variant's figures: docs/kernel_resources.md.
NUM_WARPS = 8


def nearest_code_triton(z_NC: torch.Tensor, codebook_VC: torch.Tensor, cosine: bool = False, *,
                        block_n: int = 64, block_v: int = 64, block_c: int = 32) -> torch.Tensor:
    """The fused Triton kernel: idx_N (int64) without an (N, V) distance matrix.

    ``block_*``: tile sizes (powers of two, at least 16 for ``tl.dot``); ``block_c`` is capped
    at C rounded up to a power of two."""
    _check(z_NC, codebook_VC)
    require_triton(z_NC, codebook_VC)
    if cosine:  # argmax of the cosine = argmin of ||z/|z| - e/|e| ||^2
        z_NC, codebook_VC = F.normalize(z_NC.float(), dim=1), F.normalize(codebook_VC.float(), dim=1)
    z_NC, e_VC = z_NC.contiguous(), codebook_VC.contiguous()
    (N, C), V = z_NC.shape, e_VC.shape[0]
    idx_N = torch.empty(N, dtype=torch.int64, device=z_NC.device)
    BLOCK_C = max(16, min(block_c, next_power_of_2(C)))
    _nearest_code_kernel[(cdiv(N, block_n),)](z_NC, e_VC, idx_N, N, V, C,
                                               BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_C=BLOCK_C,
                                               num_warps=NUM_WARPS)
    return idx_N


def nearest_code(z_NC: torch.Tensor, codebook_VC: torch.Tensor, cosine: bool = False) -> torch.Tensor:
    """Index of the nearest code per row with the backend chosen by ``backend.use_backend``."""
    return dispatch(nearest_code_reference, nearest_code_triton)(z_NC, codebook_VC, cosine)
