"""Checkers of notebook 05 (the sampler): guided logits with the stage's ratio, top-k / top-p
filtering, and the draw of a code from given exponential noise.

Each one compares the learner's function with the package's sampling step
(:mod:`hart_edu.kernels.cfg_sample`'s reference, what :func:`hart_edu.generation.generate` runs
on the PyTorch backend) and the guidance ratio of :func:`hart_edu.generation.guidance_ratio`.
"""

from __future__ import annotations

from typing import Callable

import torch

from hart_edu.course import ExerciseFailed, call, compare, passed
from hart_edu.generation import guidance_ratio
from hart_edu.kernels.cfg_sample import cfg_sample_reference, filter_top_k_top_p, multinomial_noise

__all__ = ["check_guided_logits", "check_filter_top_k_top_p", "check_draw_codes"]


def _logits(g: torch.Generator, *shape: int, spread: float = 3.0) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * spread


def check_guided_logits(fn: Callable[[torch.Tensor, float, int, int], torch.Tensor]) -> int:
    """``fn(logits_NlV, cfg, si, num_stages)`` -> (B, l, V): ``(1 + t) cond - t uncond`` with
    ``t = cfg * r(si)``, the official ratio (a ramp ``si / (S-1)``; the last stage reuses the
    ratio of the stage before). Rows ``[0, B)`` of the logits are conditional, ``[B, 2B)``
    their unconditional twins."""
    name = "guided_logits"
    g = torch.Generator().manual_seed(5)
    # (B, l, V, cfg, si, S): every stage of a 6-scale model, the released 14-scale schedule's
    # first, middle and last stages, no guidance, one row and one token
    cases = [(2, 4, 16, 2.0, si, 6) for si in range(6)]
    cases += [(1, 9, 32, 4.5, 0, 14), (3, 16, 8, 4.5, 7, 14), (2, 64, 8, 4.5, 13, 14), (2, 4, 16, 0.0, 3, 6),
              (1, 1, 5, 1.5, 1, 2)]
    for B, l, V, cfg, si, S in cases:
        logits_NlV = _logits(g, 2 * B, l, V)
        t = cfg * guidance_ratio(si, S)
        want = cfg_sample_reference(logits_NlV, t, 0, 0.0, None, keep_guided=True).guided_BlV
        got = call(name, fn, logits_NlV.clone(), cfg, si, S)
        stale = " (the last stage: it reuses the ratio of the stage before)" if si == S - 1 else ""
        compare(name, got, want, f"B={B}, l={l}, V={V}, cfg={cfg}, stage {si} of {S}{stale}",
                "t = cfg * si / (S - 1), but at the last stage si = S - 2; the first B rows are the "
                "conditional logits, the last B the unconditional ones; (1 + t) * cond - t * uncond",
                atol=1e-4, rtol=1e-5)
    return passed(name, len(cases))


def check_filter_top_k_top_p(fn: Callable[[torch.Tensor, int, float], torch.Tensor]) -> int:
    """``fn(logits_BlV, top_k, top_p)`` -> the logits with every code outside the top-k and
    outside the top-p nucleus set to -inf (top-k first; ties at the k-th value kept; k = 0 or
    k >= V and p = 0 switch a filter off; the most likely code always stays)."""
    name = "filter_top_k_top_p"
    g = torch.Generator().manual_seed(6)
    cases = [  # (logits, top_k, top_p, what the case is about)
        (_logits(g, 2, 3, 12), 0, 0.0, "both filters off"),
        (_logits(g, 2, 3, 12), 4, 0.0, "top-k only"),
        (_logits(g, 1, 2, 12), 1, 0.0, "top-k = 1 (greedy)"),
        (_logits(g, 1, 2, 12), 12, 0.0, "top-k = V (off)"),
        (_logits(g, 1, 2, 12), 600, 0.0, "top-k > V (off; the official 600 on a small vocabulary)"),
        (torch.tensor([[[3.0, 1.0, 3.0, 2.0, 2.0, 0.0, 2.0]]]), 3, 0.0, "tied logits at the k-th value (kept)"),
        (_logits(g, 2, 3, 12), 0, 0.8, "top-p only"),
        (_logits(g, 2, 3, 12, spread=0.3), 0, 0.5, "top-p on a flat distribution"),
        (_logits(g, 1, 4, 12), 0, 0.01, "top-p so small that only the most likely code stays"),
        (_logits(g, 1, 4, 12), 0, 1.0, "top-p = 1 (keeps every code)"),
        (_logits(g, 2, 3, 16), 6, 0.7, "top-k then top-p on what is left"),
    ]
    for logits_BlV, k, p, what in cases:
        want = filter_top_k_top_p(logits_BlV, k, p)
        got = call(name, fn, logits_BlV.clone(), k, p)
        if isinstance(got, torch.Tensor) and got.shape == want.shape:
            kept_got, kept_want = torch.isfinite(got), torch.isfinite(want)
            if not torch.equal(kept_got, kept_want):
                extra = int((kept_got & ~kept_want).sum())
                raise ExerciseFailed(
                    f"{name} ({what}, top_k={k}, top_p={p}): you keep {int(kept_got.sum())} codes, the package "
                    f"{int(kept_want.sum())} ({extra} of yours are not in its set). Hint: top-k keeps the logits "
                    f">= the k-th largest; top-p works on softmax of what top-k left, sorted ascending: drop the "
                    f"codes whose cumulative probability is <= 1 - p, never the most likely one")
        compare(name, got, want, f"{what}, top_k={k}, top_p={p}",
                "keep the surviving logits as they were and set the others to -inf (not 0)", exact=True)
    return passed(name, len(cases))


def check_draw_codes(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> int:
    """``fn(logits_BlV, q_BlV)`` -> (B, l) int64: one code per token, ``argmax_v softmax(z)_v / q_v``
    with the given Exp(1) noise ``q`` (what ``torch.multinomial`` computes; the same code as the
    Gumbel-max ``argmax_v z_v - log q_v``)."""
    name = "draw_codes"
    g = torch.Generator().manual_seed(7)
    cases = []  # (logits, top-k applied first, what the case is about)
    for B, l, V in ((1, 1, 4), (2, 4, 16), (3, 9, 256)):
        cases.append((_logits(g, B, l, V), 0, f"B={B}, l={l}, V={V}"))
    cases.append((_logits(g, 2, 16, 32), 5,
                  "logits filtered to the top 5 (-inf elsewhere: those codes are never drawn)"))
    peaked_BlV = torch.zeros(1, 3, 8)
    peaked_BlV[..., 2] = 30.0
    cases.append((peaked_BlV, 0, "one code far more likely than the others"))
    for logits_BlV, top_k, what in cases:
        q_BlV = multinomial_noise(tuple(logits_BlV.shape), torch.float32, torch.device("cpu"), g)
        # the package's sampling step with guidance 0 (its guided logits are the logits) and its own top-k;
        # the learner gets the logits already filtered
        doubled_NlV = torch.cat((logits_BlV, logits_BlV))
        want = cfg_sample_reference(doubled_NlV, 0.0, top_k, 0.0, q_BlV).idx_Bl
        got = call(name, fn, filter_top_k_top_p(logits_BlV, top_k, 0.0), q_BlV.clone())
        compare(name, got, want, what, "argmax over the codes of softmax(logits) / q (q is Exp(1) noise, one "
                "number per code), or equivalently of logits - log(q); return int64 indices of shape (B, l)",
                exact=True)
    return passed(name, len(cases))
