"""Checkers of notebook 00 (the overview): token counts, grid positions, tokens as a latent map."""

from __future__ import annotations

from typing import Callable

import torch

from hart_edu.ar_transformer import TransformerConfig, grid_positions
from hart_edu.course import call, compare, passed
from hart_edu.generation import _latent
from hart_edu.profile import ARCHITECTURES

SCHEDULES = [(1, 2), (1, 2, 3, 4, 6, 8), (1, 2, 4, 8, 16), ARCHITECTURES["1024px"].patch_nums]


def check_tokens_per_image(fn: Callable[[tuple[int, ...]], int]) -> int:
    """``fn(patch_nums)`` = sum of p^2: every code of every scale, one image (the package's
    ``TransformerConfig.sequence_length`` counts the same codes plus the context tokens, less
    the single scale-0 code that the context predicts)."""
    name = "tokens_per_image"
    for pns in SCHEDULES:
        want = TransformerConfig(patch_nums=tuple(pns), context_token=1, attn_type="llama",
                                 mlp_type="llama").sequence_length  # 1 context token + the codes after scale 0
        compare(name, call(name, fn, tuple(pns)), want, f"patch_nums={tuple(pns)}",
                "a p x p scale has p*p codes; add them over all scales", exact=True)
    return passed(name, len(SCHEDULES))


def check_grid_coordinates(fn: Callable[[int, int], torch.Tensor]) -> int:
    """``fn(pn, largest)``: (pn*pn, 2) float (row, col) of a pn x pn grid in the largest grid's
    units, row-major (what :func:`hart_edu.ar_transformer.grid_positions` computes)."""
    name = "grid_coordinates"
    cases = [(1, 1), (1, 64), (2, 64), (3, 8), (5, 64), (64, 64)]
    for pn, largest in cases:
        compare(name, call(name, fn, pn, largest), grid_positions(pn, largest), f"pn={pn}, largest={largest}",
                "row index i and column index j of token i*pn + j, each divided by pn and times largest")
    return passed(name, len(cases))


def check_tokens_to_latent(fn: Callable[[torch.Tensor], torch.Tensor]) -> int:
    """``fn(h_BlC)`` -> the latent map (B, C, p, p) of a scale's tokens (row-major), the layout
    the tokenizer decodes (the package's ``hart_edu.generation._latent``)."""
    name = "tokens_to_latent"
    g = torch.Generator().manual_seed(0)
    cases = [(1, 1, 4), (2, 4, 3), (3, 16, 32), (1, 64, 2)]
    for B, l, C in cases:
        h_BlC = torch.randn(B, l, C, generator=g)
        compare(name, call(name, fn, h_BlC.clone()), _latent(h_BlC), f"h_BlC of shape {(B, l, C)}",
                "(B, l, C) -> (B, C, l) with a transpose, then split l = p * p into rows and columns", exact=True)
    return passed(name, len(cases))
