"""Checkers of notebook 01 (vector quantization): the nearest code, the straight-through
estimator, the perplexity of a codebook, and one step of multi-scale residual quantization.

Each compares the learner's function with the package's own (:mod:`hart_edu.vq` and
``hart_edu.kernels.nearest_code``) on random and edge-case inputs drawn from a seeded
generator of its own.
"""

from __future__ import annotations

from typing import Callable

import torch

from hart_edu.course import ExerciseFailed, call, compare, passed
from hart_edu.kernels.nearest_code import nearest_code_reference
from hart_edu.vq import MultiScaleResidualQuantizer, codebook_usage, straight_through

__all__ = ["check_nearest_code", "check_straight_through", "check_perplexity", "check_residual_step"]


def _squared_distances(z_NC: torch.Tensor, codebook_VC: torch.Tensor) -> torch.Tensor:
    """||z_n - e_k||^2 in float64 (N, V): used only to tell a near-tie from a wrong code."""
    return (z_NC.double()[:, None, :] - codebook_VC.double()[None, :, :]).pow(2).sum(-1)


def _compare_codes(name: str, got: torch.Tensor, z_NC: torch.Tensor, codebook_VC: torch.Tensor, case: str,
                   hint: str, exact_ties: bool) -> None:
    """Codes must equal the package's; where they differ, the learner's code may only be as near
    as the package's (a near-tie that float32 rounding can resolve either way), unless
    ``exact_ties`` (duplicated codes: the first one wins, as ``argmin`` does)."""
    want = nearest_code_reference(z_NC, codebook_VC)
    if not isinstance(got, torch.Tensor) or got.is_floating_point() or tuple(got.shape) != tuple(want.shape):
        compare(name, got, want, case, hint)  # raises with what is wrong with the shape or dtype
    V = codebook_VC.shape[0]
    if bool(((got < 0) | (got >= V)).any()):
        raise ExerciseFailed(f"{name} ({case}): indices must lie in [0, {V}), got values from {int(got.min())} to "
                             f"{int(got.max())}. Hint: {hint}")
    if exact_ties:
        compare(name, got, want, case, hint + "; on a tie (two equal codes) take the first, as argmin does")
        return
    d_NV = _squared_distances(z_NC, codebook_VC)
    rows = torch.arange(len(want))
    d_got, d_want = d_NV[rows, got.long()], d_NV[rows, want]
    wrong = d_got > d_want + 1e-5 * (1 + d_want)
    if bool(wrong.any()):
        n = int(wrong.nonzero()[0])
        raise ExerciseFailed(f"{name} ({case}): row {n} gets code {int(got[n])} at squared distance "
                             f"{float(d_got[n]):.4g}, but code {int(want[n])} is nearer ({float(d_want[n]):.4g}). "
                             f"Hint: {hint}")


def check_nearest_code(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> int:
    """``fn(z_NC, codebook_VC)`` -> ``idx_N`` (int64): the index of the nearest code of each row
    (``hart_edu.kernels.nearest_code``'s reference)."""
    name = "nearest_code"
    hint = "k_n = argmin_k ||z_n - e_k||^2 over the rows of the codebook; one index per row of z"
    g = torch.Generator().manual_seed(101)
    cases = 0
    for N, C, V in [(1, 2, 1), (7, 2, 12), (64, 8, 32), (300, 16, 256)]:
        z_NC, e_VC = torch.randn(N, C, generator=g), torch.randn(V, C, generator=g)
        _compare_codes(name, call(name, fn, z_NC.clone(), e_VC.clone()), z_NC, e_VC, f"z {N}x{C}, codebook {V}x{C}",
                       hint, exact_ties=False)
        cases += 1
    e_VC = torch.randn(10, 3, generator=g)
    z_NC = e_VC[[4, 0, 9]] * 1.0  # every row sits exactly on a code
    _compare_codes(name, call(name, fn, z_NC.clone(), e_VC.clone()), z_NC, e_VC, "z equal to codes", hint,
                   exact_ties=True)
    e_VC = torch.cat([e_VC[:5], e_VC[:5]])  # every code twice: ties
    z_NC = torch.randn(20, 3, generator=g)
    _compare_codes(name, call(name, fn, z_NC.clone(), e_VC.clone()), z_NC, e_VC, "a codebook with duplicated codes",
                   hint, exact_ties=True)
    return passed(name, cases + 2)


def check_straight_through(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> int:
    """``fn(z, z_q)``: the value of ``z_q``, the gradient of the identity with respect to ``z`` and
    no gradient to ``z_q`` (``hart_edu.vq.straight_through``)."""
    name = "straight_through"
    g = torch.Generator().manual_seed(102)
    shapes = [(1, 2), (5, 3), (2, 4, 3, 3)]
    for i, shape in enumerate(shapes + [(4, 2)]):
        z0 = torch.randn(shape, generator=g)
        zq0 = z0.clone() if i == len(shapes) else torch.randn(shape, generator=g)  # last case: z already a code
        upstream = torch.randn(shape, generator=g)
        case = f"shape {shape}" + (", z_q == z" if i == len(shapes) else "")
        grads = []
        for f in (fn, straight_through):
            z, z_q = z0.clone().requires_grad_(True), zq0.clone().requires_grad_(True)
            out = call(name, f, z, z_q) if f is fn else f(z, z_q)
            if f is fn:
                compare(name, out.detach() if isinstance(out, torch.Tensor) else out, straight_through(z0, zq0), case,
                        "the forward value must be z_q, the quantized vector", atol=1e-6)
                if not out.requires_grad:
                    raise ExerciseFailed(f"{name} ({case}): the output carries no gradient (it is detached from z). "
                                         f"Hint: write z + (z_q - z).detach(): the detached part adds the difference "
                                         f"without a gradient")
            dz, dzq = torch.autograd.grad(out, (z, z_q), upstream, allow_unused=True)
            grads.append((dz if dz is not None else torch.zeros(shape), dzq if dzq is not None else torch.zeros(shape)))
        compare(name, grads[0][0], grads[1][0], case + ", gradient with respect to z",
                "the gradient must pass straight through: d out / d z is the identity")
        compare(name, grads[0][1], grads[1][1], case + ", gradient with respect to z_q",
                "no gradient may reach z_q through the straight-through output (detach it); the codebook "
                "learns from its own loss")
    return passed(name, len(shapes) + 1)


def check_perplexity(fn: Callable[[torch.Tensor, int], float]) -> int:
    """``fn(idx, vocab_size)`` -> the perplexity exp(H) of the code histogram of ``idx`` (any
    shape), as a float (``hart_edu.vq.codebook_usage(...).perplexity``)."""
    name = "perplexity"
    hint = ("count each code (torch.bincount with minlength), p = counts / total, H = -sum p log p over p > 0, "
            "return exp(H)")
    g = torch.Generator().manual_seed(103)
    cases = [("random codes, 8 of 8 used", torch.randint(0, 8, (500,), generator=g), 8),
             ("random codes of a (B, h, w) map, 64 possible", torch.randint(0, 40, (2, 6, 6), generator=g), 64),
             ("every code equally often (perplexity V)", torch.arange(16).repeat(3), 16),
             ("one code only (a collapsed codebook)", torch.full((50,), 3), 32),
             ("two codes, skewed", torch.tensor([0] * 9 + [5]), 6)]
    for case, idx, V in cases:
        got = call(name, fn, idx.clone(), V)
        try:
            got_t = torch.tensor(float(got), dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise ExerciseFailed(f"{name} ({case}): expected one number, got {type(got).__name__}. "
                                 f"Hint: {hint}") from None
        compare(name, got_t, torch.tensor(codebook_usage(idx, V).perplexity, dtype=torch.float64), case, hint,
                atol=1e-5, rtol=1e-4)
    return passed(name, len(cases))


def _package_residual_step(rest_BChw: torch.Tensor, codebook_VC: torch.Tensor, pn: int) -> tuple[torch.Tensor, ...]:
    """One scale of ``MultiScaleResidualQuantizer`` without Phi (``quant_resi=0``): its codes, the
    scale's contribution h and the residual left, read from the package's quantizer."""
    V, C = codebook_VC.shape
    H = rest_BChw.shape[-1]
    pns = (pn, H) if pn < H else (H,)
    with torch.random.fork_rng(devices=[]):  # the layer's init must not move the global RNG
        q = MultiScaleResidualQuantizer(V, C, pns, quant_resi=0.0, hybrid=False)
    with torch.no_grad():
        q.embedding.weight.copy_(codebook_VC)
        codes = q.encode(rest_BChw)
        h_BChw = q.running_fhat(codes.idx_Bl[:1])[0]
    rest_after = codes.rest_before_last_BChw if len(pns) == 2 else codes.residual_BChw
    return codes.idx_Bl[0], h_BChw, rest_after


def check_residual_step(fn: Callable[[torch.Tensor, torch.Tensor, int], tuple]) -> int:
    """``fn(rest_BChw, codebook_VC, pn)`` -> ``(idx_Bl, h_BChw, rest_BChw)``: one scale of VAR's
    residual quantization without Phi (``hart_edu.vq.MultiScaleResidualQuantizer`` with
    ``quant_resi=0``)."""
    name = "residual_step"
    g = torch.Generator().manual_seed(104)
    cases = [(1, 3, 8, 1, 16), (2, 3, 8, 3, 16), (2, 4, 16, 5, 32), (1, 2, 6, 6, 8), (3, 8, 12, 7, 64)]
    for B, C, H, pn, V in cases:
        rest_BChw, e_VC = torch.randn(B, C, H, H, generator=g), torch.randn(V, C, generator=g)
        got = call(name, fn, rest_BChw.clone(), e_VC.clone(), pn)
        want = _package_residual_step(rest_BChw, e_VC, pn)
        case = f"rest {(B, C, H, H)}, pn={pn}, V={V}"
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            compare(name, got, want, case, "return three things: (idx_Bl, h_BChw, rest_BChw)")
        compare(name, got[0], want[0], case + ", idx_Bl",
                "area-downsample the residual to pn x pn (F.interpolate mode='area'), then the nearest code of each "
                "of its pn*pn vectors, row-major, shape (B, pn*pn)", exact=True)
        compare(name, got[1], want[1], case + ", h_BChw",
                "the codes as a (B, C, pn, pn) map, upsampled to H x H with F.interpolate(mode='bicubic')")
        compare(name, got[2], want[2], case + ", rest_BChw", "what is left: the residual minus h")
    return passed(name, len(cases))
