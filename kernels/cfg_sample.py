r"""Classifier-free guidance, top-k / top-p filtering and a Gumbel-max draw: one launch per scale.

Given the logits of the conditional rows (first ``B`` of ``N = 2B``) and of their unconditional
twins (last ``B``) for the ``l`` tokens of one scale, every token gets one code:

.. math::

    z &= (1 + t)\, z^{c} - t\, z^{u}                                  && \text{(guidance)} \\
    z_v &\leftarrow -\infty \text{ unless } z_v \ge z_{(k)}            && \text{(top-k: the k-th largest)} \\
    z_v &\leftarrow -\infty \text{ if } \textstyle\sum_{w:\, z_w \le z_v} \mathrm{softmax}(z)_w \le 1 - p
        \text{ (except the largest)}                                   && \text{(top-p)} \\
    k &= \arg\max_v \big( z_v + g_v \big), \quad g_v = -\log(-\log u_v)  && \text{(Gumbel-max)}

The Gumbel-max trick draws exactly from ``softmax(z)``. The uniforms ``u`` come from the
counter-based Philox generator Triton uses in ``tl.rand``: ``u = philox(seed, counter)`` with
counter ``(b * l + i) * V + v``, so a draw depends only on the explicit integer ``seed`` (and
not on the order in which programs run). The reference implements the same Philox-4x32-10
in integer PyTorch ops, so both backends draw the same code for the same seed.

The model's sampler (``hart_edu.ar_transformer.sample_indices``) draws with
``torch.multinomial(softmax(z), 1, generator=g)``, which for one sample computes
``argmax_v softmax(z)_v / q_v`` with ``q = empty_like(probs).exponential_(generator=g)``
(an exponential race, Gumbel-max in disguise). :func:`cfg_multinomial` runs the same kernel
with that draw instead of Philox: the caller draws ``q`` from its generator with
:func:`multinomial_noise` (the very numbers ``torch.multinomial`` would draw, so the generator
ends in the same state) and the kernel fuses guidance, filtering, softmax and the race. Given
``q = None`` it returns the argmax (greedy). Its indices equal the eager sampler's except
where two codes' ``p_v / q_v`` lie within float32 rounding of each other (the kernel's
``exp`` and sum are not bit-identical to PyTorch's softmax).

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

# Philox-4x32 constants (Salmon et al. 2011; as in Triton's tl.rand and cuRAND)
PHILOX_ROUND_A, PHILOX_ROUND_B = 0xD2511F53, 0xCD9E8D57
PHILOX_KEY_A, PHILOX_KEY_B = 0x9E3779B9, 0xBB67AE85
PHILOX_ROUNDS = 10
INT31_TO_UNIT = 4.6566127342e-10  # largest scale with (2^31 - 1) * scale < 1 in float32 (Triton's)


class CFGSample(NamedTuple):
    idx_Bl: torch.Tensor  # (B, l) int64 drawn codes
    filtered_BlV: torch.Tensor | None  # (B, l, V) float32 guided, filtered logits (if asked for)
    guided_BlV: torch.Tensor | None = None  # (B, l, V) float32 guided logits before filtering (if asked for)


def _check(logits_NlV: torch.Tensor, top_k: int, top_p: float, seed: int) -> None:
    if logits_NlV.dim() != 3 or logits_NlV.shape[0] % 2:
        raise ValueError(f"logits must be (2B, l, V): B conditional rows then their B unconditional twins, "
                         f"got {tuple(logits_NlV.shape)}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2^63), got {seed}")
    if top_k < 0 or not 0.0 <= top_p <= 1.0:
        raise ValueError(f"need top_k >= 0 and 0 <= top_p <= 1, got top_k={top_k}, top_p={top_p}")


# --------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------


def filter_top_k_top_p(logits_BlV: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """-inf outside the top-k (>= the k-th largest; k = 0 or k >= V: off) and outside the top-p
    nucleus (sort ascending, drop where the cumulative probability is <= 1 - p, keep the last;
    p = 0: off). The same rule as ``hart_edu.ar_transformer.filter_top_k_top_p``."""
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


def _mul_hi_lo(a: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of a * x (a, x < 2^32) with int64 ops that cannot overflow."""
    p_hi, p_lo = a * (x >> 16), a * (x & 0xFFFF)  # a x = p_hi 2^16 + p_lo, each < 2^48
    return (p_hi + (p_lo >> 16)) >> 16, (((p_hi & 0xFFFF) << 16) + p_lo) & 0xFFFFFFFF


def philox_uniform(seed: int, counter: torch.Tensor) -> torch.Tensor:
    """U[0, 1) float32 per int64 ``counter``: Philox-4x32-10 keyed by ``seed`` (= Triton's tl.rand)."""
    M = 0xFFFFFFFF
    c0, c1 = counter & M, (counter >> 32) & M
    c2, c3 = torch.zeros_like(counter), torch.zeros_like(counter)
    k0, k1 = seed & M, (seed >> 32) & M
    for _ in range(PHILOX_ROUNDS):
        hi_b, lo_b = _mul_hi_lo(PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + PHILOX_KEY_A) & M, (k1 + PHILOX_KEY_B) & M
    r = torch.where(c0 >= 2**31, c0 - 2**32, c0)  # the 32 bits as a signed int32
    r = torch.where(r < 0, -r - 1, r)  # ~r: fold the negative half onto [0, 2^31)
    return r.float() * torch.tensor(INT31_TO_UNIT, dtype=torch.float32)


def cfg_sample_reference(logits_NlV: torch.Tensor, guidance: float, top_k: int, top_p: float, seed: int,
                         keep_filtered: bool = False) -> CFGSample:
    """(1 + t) cond - t uncond, top-k / top-p, Gumbel-max with Philox(seed) -> idx_Bl (int64).

    ``keep_filtered``: also return the guided, filtered logits (e.g. for a Gumbel-softmax)."""
    _check(logits_NlV, top_k, top_p, seed)
    B, l, V = logits_NlV.shape[0] // 2, logits_NlV.shape[1], logits_NlV.shape[2]
    logits_BlV = (1 + guidance) * logits_NlV[:B].float() - guidance * logits_NlV[B:].float()
    filtered_BlV = filter_top_k_top_p(logits_BlV, top_k, top_p)
    counter_BlV = torch.arange(B * l * V, dtype=torch.int64, device=logits_NlV.device).view(B, l, V)
    gumbel_BlV = -torch.log(-torch.log(philox_uniform(seed, counter_BlV)))
    idx_Bl = (filtered_BlV + gumbel_BlV).argmax(dim=-1)
    return CFGSample(idx_Bl, filtered_BlV if keep_filtered else None)


def multinomial_noise(shape_BlV: tuple[int, int, int], dtype: torch.dtype, device: torch.device,
                      generator: torch.Generator) -> torch.Tensor:
    """q ~ Exp(1), (B, l, V): the numbers ``torch.multinomial(probs (B*l, V), 1, generator=g)``
    draws (``probs`` of ``dtype`` on ``device``), drawn from ``generator`` in the same order."""
    B, l, V = shape_BlV
    return torch.empty((B * l, V), dtype=dtype, device=device).exponential_(generator=generator).view(B, l, V)


def _check_noise(logits_NlV: torch.Tensor, exponential_BlV: torch.Tensor | None) -> None:
    N, l, V = logits_NlV.shape
    if exponential_BlV is not None and exponential_BlV.shape != (N // 2, l, V):
        raise ValueError(f"exponential noise must be {(N // 2, l, V)}, got {tuple(exponential_BlV.shape)}")


def cfg_multinomial_reference(logits_NlV: torch.Tensor, guidance: float, top_k: int, top_p: float,
                              exponential_BlV: torch.Tensor | None, keep_guided: bool = False,
                              keep_filtered: bool = False) -> CFGSample:
    """(1 + t) cond - t uncond, top-k / top-p, then argmax_v softmax(z)_v / q_v with the Exp(1)
    noise ``q`` of :func:`multinomial_noise` (= ``torch.multinomial``'s draw); ``q = None``:
    argmax_v z_v (greedy). Arithmetic in float32."""
    _check(logits_NlV, top_k, top_p, 0)
    _check_noise(logits_NlV, exponential_BlV)
    B = logits_NlV.shape[0] // 2
    guided_BlV = (1 + guidance) * logits_NlV[:B].float() - guidance * logits_NlV[B:].float()
    filtered_BlV = filter_top_k_top_p(guided_BlV, top_k, top_p)
    if exponential_BlV is None:
        idx_Bl = filtered_BlV.argmax(dim=-1)
    else:
        idx_Bl = (filtered_BlV.softmax(dim=-1) / exponential_BlV.float()).argmax(dim=-1)  # exponential race
    return CFGSample(idx_Bl, filtered_BlV if keep_filtered else None, guided_BlV if keep_guided else None)


# --------------------------------------------------------------------------------------
# Triton
# --------------------------------------------------------------------------------------

DRAW_GREEDY, DRAW_PHILOX_GUMBEL, DRAW_EXPONENTIAL = 0, 1, 2


@jit
def _sortable_key(x):
    """int32 keys in the order of the float32 values: flip the magnitude bits of negatives."""
    bits = x.to(tl.int32, bitcast=True)
    return tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)


@jit
def _cfg_sample_kernel(logits_ptr, noise_ptr, idx_ptr, guided_ptr, filtered_ptr, R, V, one_plus_t, t,
                       top_k, drop_mass, seed, DRAW: tl.constexpr, TOP_K: tl.constexpr, TOP_P: tl.constexpr,
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
    elif DRAW == 1:  # Gumbel-max with Philox uniforms at counter r * V + v
        u_RV = tl.rand(seed, offs_RV)
        score_RV = z_RV - tl.log(-tl.log(u_RV))
    else:  # torch.multinomial's exponential race: softmax(z) / q, q ~ Exp(1) given
        p_RV = tl.exp(z_RV - tl.max(z_RV, axis=1)[:, None])
        p_RV = p_RV * (1.0 / tl.sum(p_RV, axis=1))[:, None]  # as PyTorch's softmax: times the reciprocal sum
        q_RV = tl.load(noise_ptr + offs_RV, mask=in_RV, other=1.0).to(tl.float32)
        score_RV = tl.where(in_V[None, :], p_RV / q_RV, -1.0)
    tl.store(idx_ptr + r_R, tl.argmax(score_RV, axis=1, tie_break_left=True).to(tl.int64), mask=in_R)


def _launch(logits_NlV: torch.Tensor, guidance: float, top_k: int, top_p: float, seed: int, draw: int,
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
        1.0 + guidance, guidance, top_k, 1.0 - top_p, seed,
        DRAW=draw, TOP_K=0 < top_k < V, TOP_P=top_p > 0, KEEP_GUIDED=keep_guided, KEEP_FILTERED=keep_filtered,
        BLOCK_R=BLOCK_R, BLOCK_V=BLOCK_V)
    return CFGSample(idx_Bl, filtered_BlV, guided_BlV)


def cfg_sample_triton(logits_NlV: torch.Tensor, guidance: float, top_k: int, top_p: float, seed: int,
                      keep_filtered: bool = False) -> CFGSample:
    """The fused Triton kernel: one program per token, the whole vocabulary in registers."""
    _check(logits_NlV, top_k, top_p, seed)
    require_triton(logits_NlV)
    return _launch(logits_NlV, guidance, top_k, top_p, seed, DRAW_PHILOX_GUMBEL, None, False, keep_filtered)


def cfg_sample(logits_NlV: torch.Tensor, guidance: float, top_k: int, top_p: float, seed: int,
               keep_filtered: bool = False) -> CFGSample:
    """Guided, filtered Gumbel-max sample with the backend chosen by ``backend.use_backend``."""
    return dispatch(cfg_sample_reference, cfg_sample_triton)(logits_NlV, guidance, top_k, top_p, seed, keep_filtered)


def cfg_multinomial_triton(logits_NlV: torch.Tensor, guidance: float, top_k: int, top_p: float,
                           exponential_BlV: torch.Tensor | None, keep_guided: bool = False,
                           keep_filtered: bool = False) -> CFGSample:
    """The same kernel with ``torch.multinomial``'s exponential race (or argmax for ``None``)."""
    _check(logits_NlV, top_k, top_p, 0)
    _check_noise(logits_NlV, exponential_BlV)
    require_triton(*(t for t in (logits_NlV, exponential_BlV) if t is not None))
    noise_BlV = None if exponential_BlV is None else exponential_BlV.contiguous()
    draw = DRAW_GREEDY if noise_BlV is None else DRAW_EXPONENTIAL
    return _launch(logits_NlV, guidance, top_k, top_p, 0, draw, noise_BlV, keep_guided, keep_filtered)


def cfg_multinomial(logits_NlV: torch.Tensor, guidance: float, top_k: int, top_p: float,
                    exponential_BlV: torch.Tensor | None, keep_guided: bool = False,
                    keep_filtered: bool = False) -> CFGSample:
    """Guided, filtered multinomial (or greedy) pick with the backend chosen by ``backend.use_backend``."""
    return dispatch(cfg_multinomial_reference, cfg_multinomial_triton)(
        logits_NlV, guidance, top_k, top_p, exponential_BlV, keep_guided, keep_filtered)
