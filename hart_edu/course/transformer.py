"""Checkers of notebook 03 (the autoregressive transformer): the stage of every position of the
sequence, the block-causal mask, HART's 2-D rotary embedding and the adaLN modulation.

Each compares the learner's function with the package's own (:mod:`hart_edu.ar_transformer`,
``hart_edu.kernels.rope``) on random and edge-case inputs drawn from a seeded generator of its own.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from hart_edu.ar_transformer import HARTTransformer, RMSNorm, TransformerConfig, grid_positions, norm_modulate
from hart_edu.course import call, compare, passed
from hart_edu.kernels.rope import rope_reference
from hart_edu.profile import ARCHITECTURES

__all__ = ["check_stage_levels", "check_block_causal_mask", "check_rope_2d", "check_adaln_modulate"]

# (T context tokens, patch_nums): the smallest, the tiny HART's, a schedule without 6, the released 1024px
SEQUENCES = [(1, (1, 2)), (20, (1, 2, 3, 4, 6, 8)), (5, (1, 3, 5, 9)), (300, ARCHITECTURES["1024px"].patch_nums)]


def package_levels(T: int, patch_nums: Sequence[int]) -> torch.Tensor:
    """``lvl_L``: the model's own ``lvl_1L`` buffer, from a minimal HARTTransformer for this
    sequence (the stage of each position: T zeros for the context, then si for scale si's tokens)."""
    config = TransformerConfig(context_token=T, context_dim=8, depth=1, embed_dim=8, num_heads=2,
                               patch_nums=tuple(patch_nums), attn_type="llama", mlp_type="llama",
                               diff_width=8, diff_depth=1)
    with torch.random.fork_rng(devices=[]):  # building the layers must not move the global RNG
        model = HARTTransformer(config, vocab_size=4, vae_channels=4)
    return model.lvl_1L[0]


def check_stage_levels(fn: Callable[[int, Sequence[int]], torch.Tensor]) -> int:
    """``fn(T, patch_nums)`` -> ``lvl_L`` (int64, L = T + sum of p*p after scale 0): the stage of
    every position of the training sequence (``HARTTransformer.lvl_1L``)."""
    name = "stage_levels"
    for T, pns in SEQUENCES:
        compare(name, call(name, fn, T, tuple(pns)), package_levels(T, pns), f"T={T}, patch_nums={tuple(pns)}",
                "T zeros (stage 0: the context, which also predicts the 1x1 scale), then p*p copies of si for "
                "every scale si >= 1 (scale 0 has no input token of its own)", exact=True)
    return passed(name, len(SEQUENCES))


def check_block_causal_mask(fn: Callable[[torch.Tensor], torch.Tensor]) -> int:
    """``fn(lvl_L)`` -> ``mask_LL`` (bool): query a may attend to key b iff lvl[b] <= lvl[a].

    The package never builds this mask: ``HARTTransformer.forward_teacher_forcing`` obtains it by
    running the stages one after another through the KV cache (its docstring states the rule,
    the official ``attn_bias_for_masking``; ``tests/test_train_transformer.py`` checks that
    teacher forcing equals scale-by-scale inference). So the expected mask here is that rule,
    applied to the model's own levels (``lvl_1L``)."""
    name = "block_causal_mask"
    for T, pns in SEQUENCES[:3]:
        lvl_L = package_levels(T, pns)
        want = lvl_L[None, :] <= lvl_L[:, None]  # rows: queries, columns: keys
        compare(name, call(name, fn, lvl_L.clone()), want, f"levels of T={T}, patch_nums={tuple(pns)}",
                "mask[a, b] is True when the key's stage lvl[b] is at most the query's stage lvl[a]: "
                "bidirectional inside a stage, causal across stages; rows are queries", exact=True)
    return passed(name, 3)


def check_rope_2d(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> int:
    """``fn(x_NHLd, positions_NL2)`` -> ``x`` rotated by HART's 2-D RoPE at float (row, col)
    positions (``hart_edu.kernels.rope.rope_reference``)."""
    name = "rope_2d"
    hint = ("f_j = 10000^(-4j/d) for j < d/4; theta = [r f, r f, c f, c f] (d/4 entries each); "
            "x * cos(theta) + rotate_half(x) * sin(theta) with rotate_half([x1, x2]) = [-x2, x1]")
    g = torch.Generator().manual_seed(301)
    cases = []
    for N, H, pn, largest, d, offset in [(1, 1, 2, 8, 4, 0), (2, 3, 3, 8, 8, 14), (1, 2, 8, 8, 32, 19),
                                         (2, 2, 4, 64, 16, 299)]:
        pos_Nl2 = grid_positions(pn, largest)[None].repeat(N, 1, 1) + torch.arange(N).view(N, 1, 1) + offset
        cases.append((f"a {pn}x{pn} scale of a {largest}x{largest} grid, offset {offset}, head size {d}",
                      torch.randn(N, H, pn * pn, d, generator=g), pos_Nl2))
    cases.append(("random float positions", torch.randn(3, 2, 5, 12, generator=g),
                  torch.rand(3, 5, 2, generator=g) * 50))
    cases.append(("position (0, 0): no rotation", torch.randn(1, 1, 3, 8, generator=g), torch.zeros(1, 3, 2)))
    for case, x_NHLd, pos_NL2 in cases:
        want = rope_reference(x_NHLd, x_NHLd, pos_NL2).q_NHLd
        compare(name, call(name, fn, x_NHLd.clone(), pos_NL2.clone()), want, case, hint, atol=1e-4, rtol=1e-4)
    return passed(name, len(cases))


def check_adaln_modulate(fn: Callable[..., torch.Tensor]) -> int:
    """``fn(x_NLC, weight_C, scale_N1C, shift_N1C, eps)`` -> ``RMSNorm(x) * (1 + scale) + shift``
    (``hart_edu.ar_transformer.norm_modulate``, what every block and the head compute)."""
    name = "adaln_modulate"
    hint = "RMSNorm: x / sqrt(mean(x^2 over C) + eps) * weight; then * (1 + scale) + shift, broadcast over L"
    g = torch.Generator().manual_seed(302)
    cases = [("random", (2, 5, 8), 1e-6, False), ("one token, one channel", (1, 1, 1), 1e-6, False),
             ("a large eps (it goes inside the square root)", (3, 4, 6), 0.5, False),
             ("x = 0 (only eps keeps the norm finite)", (2, 3, 4), 1e-6, True)]
    for case, (N, L, C), eps, zero in cases:
        x_NLC = torch.zeros(N, L, C) if zero else torch.randn(N, L, C, generator=g) * 3
        weight_C = 1 + 0.5 * torch.randn(C, generator=g)
        scale_N1C, shift_N1C = torch.randn(N, 1, C, generator=g), torch.randn(N, 1, C, generator=g)
        norm = RMSNorm(C, eps)
        with torch.no_grad():
            norm.weight.copy_(weight_C)
            want = norm_modulate(norm, x_NLC, scale_N1C, shift_N1C)
        got = call(name, fn, x_NLC.clone(), weight_C.clone(), scale_N1C.clone(), shift_N1C.clone(), eps)
        compare(name, got, want, f"{case}, x of shape {(N, L, C)}, eps={eps:g}", hint, atol=1e-5, rtol=1e-5)
    return passed(name, len(cases))
