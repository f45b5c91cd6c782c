"""Checkers of notebook 02 (the hybrid tokenizer): what one scale adds to the latent (with the
Phi blend, none at HART's last scale), the hybrid encoding into codes plus a continuous
residual, and the transformer's teacher-forcing inputs.

Each compares the learner's function with the package's own quantizer
(:class:`hart_edu.vq.MultiScaleResidualQuantizer`) on small random quantizers, built from a
seeded generator of its own, in the layouts the official checkpoints use.
"""

from __future__ import annotations

from typing import Callable

import torch

from hart_edu.course import ExerciseFailed, call, compare, passed
from hart_edu.vq import MultiScaleResidualQuantizer

__all__ = ["check_scale_contribution", "check_hybrid_encode", "check_teacher_forcing_inputs"]

# (vocab_size, channels, patch_nums, hybrid, share_quant_resi): HART's hybrid quantizer and VAR's
# plain one, with 4 shared Phis (released), one shared Phi, or one Phi per scale.
QUANTIZERS = [
    (16, 3, (1, 2, 3, 4), True, 4),
    (32, 4, (1, 2, 4, 8), False, 4),
    (24, 2, (1, 3, 5), True, 1),
    (8, 3, (1, 2, 3, 4, 6), False, 0),
    (64, 8, (1, 2, 3, 4, 6, 8), True, 4),
]


def random_quantizer(g: torch.Generator, vocab_size: int, channels: int, patch_nums: tuple[int, ...], hybrid: bool,
                     share: int) -> MultiScaleResidualQuantizer:
    """A quantizer with random codes and random Phi convolutions (ratio 0.5, as released), drawn
    from ``g`` (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        q = MultiScaleResidualQuantizer(vocab_size, channels, patch_nums, hybrid=hybrid, quant_resi=0.5,
                                        share_quant_resi=share)
    with torch.no_grad():
        for param_name, p in q.named_parameters():
            std = 1.0 if param_name.startswith("embedding") else 0.2
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return q.eval()


def _quantizers(seed: int) -> list[tuple[str, MultiScaleResidualQuantizer]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for V, C, pns, hybrid, share in QUANTIZERS:
        label = f"{'hybrid' if hybrid else 'plain VAR'} quantizer, patch_nums {pns}, share_quant_resi {share}"
        out.append((label, random_quantizer(g, V, C, pns, hybrid, share)))
    return out


def check_scale_contribution(fn: Callable[[MultiScaleResidualQuantizer, int, torch.Tensor, int], torch.Tensor]) -> int:
    """``fn(q, si, h_BChw, size)`` -> what scale ``si`` adds to f_hat: the code map ``h``
    upsampled (bicubic) to ``size x size``, blended by the scale's Phi, except at the last scale
    of a hybrid quantizer (``MultiScaleResidualQuantizer.scale_contribution``)."""
    name = "scale_contribution"
    hint = ("F.interpolate(h, size=(size, size), mode='bicubic'), then q.phi(si) on it, except at the last scale "
            "(si == q.num_scales - 1) of a hybrid quantizer (q.hybrid), where HART applies no Phi")
    g = torch.Generator().manual_seed(202)
    cases = 0
    for label, q in _quantizers(201):
        full = q.patch_nums[-1]
        for si, pn in enumerate(q.patch_nums):
            h_BChw = torch.randn(2, q.channels, pn, pn, generator=g)
            with torch.no_grad():
                got = call(name, fn, q, si, h_BChw.clone(), full)
                want = q.scale_contribution(si, h_BChw, full)
            compare(name, got, want, f"{label}, scale {si} ({pn}x{pn})", hint, atol=1e-5)
            cases += 1
    return passed(name, cases)


def check_hybrid_encode(fn: Callable[[MultiScaleResidualQuantizer, torch.Tensor], tuple]) -> int:
    """``fn(q, f_BChw)`` -> ``(idx_Bl, fhat_discrete_BChw, residual_BChw)``: multi-scale residual
    quantization with each scale's contribution, and the continuous residual r = f - f_hat
    (``MultiScaleResidualQuantizer.encode``)."""
    name = "hybrid_encode"
    g = torch.Generator().manual_seed(203)
    cases = 0
    for label, q in _quantizers(204):
        full = q.patch_nums[-1]
        f_BChw = torch.randn(2, q.channels, full, full, generator=g)
        with torch.no_grad():
            got = call(name, fn, q, f_BChw.clone())
        want = q.encode(f_BChw)
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            compare(name, got, tuple(want[:3]), label,
                    "return three things: (idx_Bl, fhat_discrete_BChw, residual_BChw)")
        idx_Bl, fhat_BChw, residual_BChw = got
        if not isinstance(idx_Bl, (tuple, list)) or len(idx_Bl) != q.num_scales:
            raise ExerciseFailed(f"{name} ({label}): idx_Bl must be a list of {q.num_scales} index maps, one per "
                                 f"scale, got {type(idx_Bl).__name__}. Hint: append each scale's (B, p*p) codes")
        for si, (got_idx, want_idx) in enumerate(zip(idx_Bl, want.idx_Bl)):
            compare(name, got_idx, want_idx, f"{label}, codes of scale {si}",
                    "at each scale: the nearest codes of the residual area-downsampled to p x p (row-major); then "
                    "subtract the scale's contribution (bicubic up, Phi) from the residual before the next scale",
                    exact=True)
        compare(name, fhat_BChw, want.fhat_discrete_BChw, f"{label}, fhat_discrete_BChw",
                "f_hat is the sum of every scale's q.scale_contribution(si, q.embed(idx), H)")
        compare(name, residual_BChw, want.residual_BChw, f"{label}, residual_BChw",
                "the continuous residual is what the discrete scales leave: f - f_hat")
        cases += 1
    return passed(name, cases)


def check_teacher_forcing_inputs(fn: Callable[[MultiScaleResidualQuantizer, list], torch.Tensor]) -> int:
    """``fn(q, idx_Bl)`` -> ``x_BLC``, L = sum of p*p over the scales after the first: for each
    scale si >= 1, f_hat of the scales before it, area-downsampled to p_si x p_si and flattened
    row-major (``MultiScaleResidualQuantizer.teacher_forcing_inputs``)."""
    name = "teacher_forcing_inputs"
    hint = ("f_hat after scales 0..si-1 (q.running_fhat gives them all), F.interpolate(mode='area') to "
            "p_si x p_si, then (B, C, p, p) -> (B, p*p, C); concatenate the scales along dim 1")
    g = torch.Generator().manual_seed(205)
    cases = 0
    for label, q in _quantizers(206):
        for B in (1, 3):
            idx_Bl = [torch.randint(0, q.vocab_size, (B, p * p), generator=g) for p in q.patch_nums]
            with torch.no_grad():
                got = call(name, fn, q, [i.clone() for i in idx_Bl])
                want = q.teacher_forcing_inputs(idx_Bl)
            compare(name, got, want, f"{label}, batch {B}", hint)
            cases += 1
    return passed(name, cases)
