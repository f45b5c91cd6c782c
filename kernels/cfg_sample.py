r"""Classifier-free guidance, top-k / top-p filtering and the draw of one code per token: one
launch per scale.

Given the logits of the conditional rows (first ``B`` of ``N = 2B``) and of their unconditional
twins (last ``B``) for the ``l`` tokens of one scale, every token gets one code:

.. math::

    z &= (1 + t)\, z^{c} - t\, z^{u}                                  && \text{(guidance)} \\
    z_v &\leftarrow -\infty \text{ unless } z_v \ge z_{(k)}            && \text{(top-k: the k-th largest)} \\
    z_v &\leftarrow -\infty \text{ if } \textstyle\sum_{w:\, z_w \le z_v} \mathrm{softmax}(z)_w \le 1 - p
        \text{ (except the largest)}                                   && \text{(top-p)} \\
    k &= \arg\max_v \frac{\mathrm{softmax}(z)_v}{q_v}, \quad q_v \sim \mathrm{Exp}(1)
                                                                       && \text{(the draw)}

The draw is ``torch.multinomial(softmax(z), 1, generator=g)``'s own: for one sample it computes
``argmax_v softmax(z)_v / q_v`` with ``q = empty_like(probs).exponential_(generator=g)`` (an
exponential race, Gumbel-max in disguise: it picks ``v`` with probability ``softmax(z)_v``).
The caller draws ``q`` from its generator with :func:`multinomial_noise` (the very numbers
``torch.multinomial`` would draw, so the generator ends in the same state) and both backends
run the race on it; ``q = None`` picks the argmax (greedy). This is the sampling step of
``hart_edu.ar_transformer`` under either backend.

The reference is eager PyTorch in the logits' dtype (as the official sampler). The Triton
kernel computes in float32 and fuses guidance, filtering, softmax and the race; its indices
equal the reference's for float32 logits except where two codes' ``p_v / q_v`` lie within
float32 rounding of each other (the kernel's ``exp`` and sum are not bit-identical to
PyTorch's softmax).

The Triton kernel gives each program whole rows of V logits (one token's for HART's
V = 4096; filters that are off are compiled out). The top-k threshold and the top-p cut are
found without sorting, by bisection over the 2^32 float32 values (as
order-preserving int32 keys): 32 steps of "how many logits are >= T" for top-k, 33 steps of
"how much probability lies at or below T" for top-p. On inputs without ties this is exactly
the sort-based filter of the reference; with tied logits the reference's sort order decides
which of the tied values a cut keeps, the kernel keeps or drops them together.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .backend import cdiv, dispatch, jit, next_power_of_2, require_triton, tl

class CFGSample(NamedTuple):
    idx_Bl: torch.Tensor  # (B, l) int64 drawn codes
    filtered_BlV: torch.Tensor | None  # (B, l, V) float32 guided, filtered logits (if asked for)
    guided_BlV: torch.Tensor | None = None  # (B, l, V) float32 guided logits before filtering (if asked for)


def _check(logits_NlV: torch.Tensor, top_k: int, top_p: float, exponential_BlV: torch.Tensor | None) -> None:
    if logits_NlV.dim() != 3 or logits_NlV.shape[0] % 2:
        raise ValueError(f"logits must be (2B, l, V): B conditional rows then their B unconditional twins, "
                         f"got {tuple(logits_NlV.shape)}")
    if top_k < 0 or not 0.0 <= top_p <= 1.0:
        raise ValueError(f"need top_k >= 0 and 0 <= top_p <= 1, got top_k={top_k}, top_p={top_p}")
    N, l, V = logits_NlV.shape
    if exponential_BlV is not None and exponential_BlV.shape != (N // 2, l, V):
        raise ValueError(f"exponential noise must be {(N // 2, l, V)}, got {tuple(exponential_BlV.shape)}")


# --------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------


def filter_top_k_top_p(logits_BlV: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the top-p nucleus (a new tensor).

    top-k keeps logits >= the k-th largest (ties kept; k = 0 or k >= V: off). top-p sorts
    ascending and drops the codes whose cumulative probability is <= 1 - p, always keeping the
    most likely one (p = 0: off)."""
    V = logits_BlV.shape[-1]
    out = logits_BlV.clone()
    if 0 < top_k < V:
        kth_Bl1 = out.topk(top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth_Bl1, float("-inf"))
    if top_p > 0:
        sorted_BlV, order_BlV = out.sort(dim=-1)
        drop_sorted_BlV = sorted_BlV.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        drop_sorted_BlV[..., -1] = False  # always keep the most likely code
        out = out.masked_fill(drop_sorted_BlV.scatter(-1, order_BlV, drop_sorted_BlV), float("-inf"))
    return out


def multinomial_noise(shape_BlV: tuple[int, int, int], dtype: torch.dtype, device: torch.device,
                      generator: torch.Generator) -> torch.Tensor:
    """q ~ Exp(1), (B, l, V): the numbers ``torch.multinomial(probs (B*l, V), 1, generator=g)``
    draws (``probs`` of ``dtype`` on ``device``), drawn from ``generator`` in the same order."""
    B, l, V = shape_BlV
    return torch.empty((B * l, V), dtype=dtype, device=device).exponential_(generator=generator).view(B, l, V)


def cfg_sample_reference(logits_NlV: torch.Tensor, guidance: float, top_k: int, top_p: float,
                         exponential_BlV: torch.Tensor | None, keep_guided: bool = False,
                         keep_filtered: bool = False) -> CFGSample:
    """(1 + t) cond - t uncond, top-k / top-p, then argmax_v softmax(z)_v / q_v with the Exp(1)
    noise ``q`` of :func:`multinomial_noise` (= ``torch.multinomial``'s draw); ``q = None``:
    argmax_v z_v (greedy). Eager PyTorch in the logits' dtype.

    ``keep_guided`` / ``keep_filtered``: also return the guided logits before / after the filters."""
    _check(logits_NlV, top_k, top_p, exponential_BlV)
    B = logits_NlV.shape[0] // 2
    guided_BlV = (1 + guidance) * logits_NlV[:B] - guidance * logits_NlV[B:]
    filtered_BlV = filter_top_k_top_p(guided_BlV, top_k, top_p)
    if exponential_BlV is None:
        idx_Bl = filtered_BlV.argmax(dim=-1)
    else:
        idx_Bl = (filtered_BlV.softmax(dim=-1) / exponential_BlV).argmax(dim=-1)  # the exponential race
    return CFGSample(idx_Bl, filtered_BlV if keep_filtered else None, guided_BlV if keep_guided else None)


# --------------------------------------------------------------------------------------
# Triton
# --------------------------------------------------------------------------------------

DRAW_GREEDY, DRAW_EXPONENTIAL = 0, 1


@jit
def _sortable_key(x):
    """int32 keys in the order of the float32 values: flip the magnitude bits of negatives."""
    bits = x.to(tl.int32, bitcast=True)
    return tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)


@jit
def _cfg_sample_kernel(logits_ptr, noise_ptr, idx_ptr, guided_ptr, filtered_ptr, R, V, one_plus_t, t,
                       top_k, drop_mass, DRAW: tl.constexpr, TOP_K: tl.constexpr, TOP_P: tl.constexpr,
                       KEEP_GUIDED: tl.constexpr, KEEP_FILTERED: tl.constexpr,
                       BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr):
    # rows r = b * l + i of the conditional half; the unconditional twin is row R + r
    r_R = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)  # int64: B l V may exceed 2^31
    v_V = tl.arange(0, BLOCK_V)
    in_R, in_V = r_R < R, v_V < V
    in_RV = in_R[:, None] & in_V[None, :]
    offs_RV = r_R[:, None] * V + v_V[None, :]
    cond_RV = tl.load(logits_ptr + offs_RV, mask=in_RV, other=0.0).to(tl.float32)
    uncond_RV = tl.load(logits_ptr + R * V + offs_RV, mask=in_RV, other=0.0).to(tl.float32)
    z_RV = one_plus_t * cond_RV - t * uncond_RV + 0.0  # (1 + t) z_c - t z_u  (+0.0 turns -0.0 into +0.0)
    z_RV = tl.where(in_V[None, :], z_RV, float("-inf"))  # (rows past R: zeros, never stored)
    if KEEP_GUIDED:
        tl.store(guided_ptr + offs_RV, z_RV, mask=in_RV)

    if TOP_K:  # the largest key T with #{v : key_v >= T} >= k is the k-th largest logit's key
        key_RV = tl.where(in_V[None, :], _sortable_key(z_RV), -2147483648)
        lo_R = tl.full((BLOCK_R,), -2147483648, tl.int64)
        hi_R = tl.full((BLOCK_R,), 2147483647, tl.int64)
        for _ in range(32):
            mid_R = (lo_R + hi_R + 1) // 2
            enough_R = tl.sum(((key_RV >= mid_R[:, None]) & in_V[None, :]).to(tl.int32), axis=1) >= top_k
            lo_R = tl.where(enough_R, mid_R, lo_R)
            hi_R = tl.where(enough_R, hi_R, mid_R - 1)
        z_RV = tl.where(key_RV >= lo_R[:, None], z_RV, float("-inf"))

    if TOP_P:  # the largest key T whose probability at or below it is <= 1 - p; drop keys <= T
        p_RV = tl.exp(z_RV - tl.max(z_RV, axis=1)[:, None])
        p_RV = p_RV / tl.sum(p_RV, axis=1)[:, None]
        key_RV = tl.where(in_V[None, :], _sortable_key(z_RV), -2147483648)
        lo_R = tl.full((BLOCK_R,), -2147483649, tl.int64)  # below every key: drop nothing
        hi_R = tl.full((BLOCK_R,), 2147483647, tl.int64)
        for _ in range(33):
            mid_R = (lo_R + hi_R + 1) // 2
            small_R = tl.sum(tl.where(key_RV <= mid_R[:, None], p_RV, 0.0), axis=1) <= drop_mass
            lo_R = tl.where(small_R, mid_R, lo_R)
            hi_R = tl.where(small_R, hi_R, mid_R - 1)
        top_R = tl.max(key_RV, axis=1)  # the most likely code always stays
        drop_RV = (key_RV <= lo_R[:, None]) & (key_RV < top_R[:, None])
        z_RV = tl.where(drop_RV | ~in_V[None, :], float("-inf"), z_RV)
    if KEEP_FILTERED:
        tl.store(filtered_ptr + offs_RV, z_RV, mask=in_RV)

    if DRAW == 0:  # greedy: the most likely code
        score_RV = z_RV
    else:  # torch.multinomial's exponential race: softmax(z) / q, q ~ Exp(1) given
        p_RV = tl.exp(z_RV - tl.max(z_RV, axis=1)[:, None])
        p_RV = p_RV * (1.0 / tl.sum(p_RV, axis=1))[:, None]  # as PyTorch's softmax: times the reciprocal sum
        q_RV = tl.load(noise_ptr + offs_RV, mask=in_RV, other=1.0).to(tl.float32)
        score_RV = tl.where(in_V[None, :], p_RV / q_RV, -1.0)
    tl.store(idx_ptr + r_R, tl.argmax(score_RV, axis=1, tie_break_left=True).to(tl.int64), mask=in_R)


# 8 warps share a program's tile of about 4096 logits (16 a thread): with top-k and top-p on,
# 4 warps needed 167 registers a thread on sm_90 (12 resident warps per SM), 8 need 109 (16 warps).
# Every variant's figures: docs/kernel_resources.md (python -m hart_edu.kernels.resources).
NUM_WARPS = 8


def _launch(logits_NlV: torch.Tensor, guidance: float, top_k: int, top_p: float, draw: int,
            noise_BlV: torch.Tensor | None, keep_guided: bool, keep_filtered: bool) -> CFGSample:
    """Each program takes BLOCK_R tokens with their whole vocabulary (about 4096 logits per
    tile: one token per program for HART's V = 4096); the filters that are off are compiled out."""
    N, l, V = logits_NlV.shape
    B = N // 2
    logits_NlV = logits_NlV.contiguous()
    idx_Bl = torch.empty((B, l), dtype=torch.int64, device=logits_NlV.device)
    guided_BlV, filtered_BlV = (torch.empty((B, l, V), dtype=torch.float32, device=logits_NlV.device) if keep else None
                                for keep in (keep_guided, keep_filtered))
    unused = idx_Bl  # any pointer will do where an output or the noise is off: the kernel never touches it

    def pointer(t: torch.Tensor | None) -> torch.Tensor:
        return unused if t is None else t

    BLOCK_V = next_power_of_2(V)
    BLOCK_R = max(1, min(next_power_of_2(B * l), 4096 // BLOCK_V))
    _cfg_sample_kernel[(cdiv(B * l, BLOCK_R),)](
        logits_NlV, pointer(noise_BlV), idx_Bl, pointer(guided_BlV), pointer(filtered_BlV), B * l, V,
        1.0 + guidance, guidance, top_k, 1.0 - top_p,
        DRAW=draw, TOP_K=0 < top_k < V, TOP_P=top_p > 0, KEEP_GUIDED=keep_guided, KEEP_FILTERED=keep_filtered,
        BLOCK_R=BLOCK_R, BLOCK_V=BLOCK_V, num_warps=NUM_WARPS)
    return CFGSample(idx_Bl, filtered_BlV, guided_BlV)


def cfg_sample_triton(logits_NlV: torch.Tensor, guidance: float, top_k: int, top_p: float,
                      exponential_BlV: torch.Tensor | None, keep_guided: bool = False,
                      keep_filtered: bool = False) -> CFGSample:
    """The fused Triton kernel (float32): one program per token, the whole vocabulary in registers."""
    _check(logits_NlV, top_k, top_p, exponential_BlV)
    require_triton(*(t for t in (logits_NlV, exponential_BlV) if t is not None))
    noise_BlV = None if exponential_BlV is None else exponential_BlV.contiguous()
    draw = DRAW_GREEDY if noise_BlV is None else DRAW_EXPONENTIAL
    return _launch(logits_NlV, guidance, top_k, top_p, draw, noise_BlV, keep_guided, keep_filtered)


def cfg_sample(logits_NlV: torch.Tensor, guidance: float, top_k: int, top_p: float,
               exponential_BlV: torch.Tensor | None, keep_guided: bool = False,
               keep_filtered: bool = False) -> CFGSample:
    """Guided, filtered multinomial (or greedy) pick with the backend chosen by ``backend.use_backend``."""
    return dispatch(cfg_sample_reference, cfg_sample_triton)(
        logits_NlV, guidance, top_k, top_p, exponential_BlV, keep_guided, keep_filtered)
