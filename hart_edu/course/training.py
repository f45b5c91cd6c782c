"""Checkers of notebook 08 (training): the learning-rate schedule, the EMA update with its
warm-up, context dropout for classifier-free guidance, and the per-scale weights of the
cross-entropy.

They compare with the training code itself: :func:`hart_edu.train.warmup_cosine_lr`,
:func:`hart_edu.train.transformer._ema_update`, :func:`hart_edu.train.transformer.context_dropout`
and :func:`hart_edu.train.transformer.scale_weights`.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Callable

import torch
from torch import nn

from hart_edu.ar_transformer import HARTTransformer
from hart_edu.course import ExerciseFailed, call, compare, passed
from hart_edu.train import warmup_cosine_lr
from hart_edu.train.transformer import _ema_update, context_dropout, scale_weights

__all__ = ["check_warmup_cosine_lr", "check_ema_update", "check_drop_context", "check_scale_weights"]


def check_warmup_cosine_lr(fn: Callable[[int, float, int, int], float]) -> int:
    """``fn(step, lr, warmup, steps)`` -> the learning rate at 0-based ``step``: linear warm-up
    ``lr (t + 1) / W`` for t < W, then a cosine from ``lr`` down to 10% of it at ``steps``."""
    name = "warmup_cosine_lr"
    runs = [(3e-3, 5, 20), (2e-3, 100, 4000), (1.0, 0, 10), (1.0, 1, 2), (0.5, 10, 10), (1e-4, 3, 4)]
    for lr, warmup, steps in runs:
        schedule = range(0, steps + 1) if steps <= 100 else [*range(0, 120), *range(120, steps + 1, 97), steps]
        want = torch.tensor([warmup_cosine_lr(t, lr, warmup, steps) for t in schedule], dtype=torch.float64)
        got = [call(name, fn, t, lr, warmup, steps) for t in schedule]
        if not all(isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1) for v in got):
            raise ExerciseFailed(f"{name}: return one number per step, got {type(got[0]).__name__}")
        compare(name, torch.tensor([float(v) for v in got], dtype=torch.float64), want,
                f"lr={lr}, warmup={warmup}, steps={steps}, every step (index = step)",
                "t < W: lr * (t + 1) / W; after: progress p = (t - W) / max(1, T - W) and "
                "lr * (0.1 + 0.9 * (1 + cos(pi * p)) / 2)", atol=1e-12, rtol=1e-9)
    return passed(name, len(runs))


def check_ema_update(fn: Callable[[torch.Tensor, torch.Tensor, int, float], torch.Tensor]) -> int:
    """``fn(ema, theta, step, beta)`` -> the EMA of one weight after training step ``step``:
    ``decay * ema + (1 - decay) * theta`` with the warmed-up decay ``min(beta, (1 + step) / (10 + step))``."""
    name = "ema_update"
    g = torch.Generator().manual_seed(81)
    cases = [(0, 0.998), (1, 0.998), (10, 0.9), (50, 0.998), (3999, 0.998), (10**6, 0.9), (5, 0.0)]
    for step, beta in cases:
        model = nn.Linear(6, 4)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        ema = {k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
        before = {k: v.clone() for k, v in ema.items()}
        # the warm-up of the decay is written inline in hart_edu.train.transformer.train (no function
        # of its own): min(beta, (1 + step) / (10 + step)); the update itself is the package's _ema_update
        _ema_update(ema, model, min(beta, (1 + step) / (10 + step)))
        for key, theta in model.state_dict().items():
            got = call(name, fn, before[key].clone(), theta.detach().clone(), step, beta)
            compare(name, got, ema[key], f"step {step}, beta {beta}, the layer's {key}",
                    "decay = min(beta, (1 + step) / (10 + step)); new ema = decay * ema + (1 - decay) * theta",
                    atol=1e-6, rtol=1e-5)
    return passed(name, len(cases))


# context_dropout takes the model only for its unconditional_context, which reads nothing of the
# model's weights: a stand-in with HART's own method keeps the check free of building a network
_HART = SimpleNamespace(unconditional_context=lambda *args: HARTTransformer.unconditional_context(None, *args))


def check_drop_context(fn: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> int:
    """``fn(context_BTD, mask_BT, position_ids_BT, drop_B)`` -> ``(context, mask, position_ids)``
    with the rows ``drop_B`` replaced by the unconditional context (all-zero context, position
    ids 0, a mask with only position 0 set) and the other rows unchanged."""
    name = "drop_context"
    g = torch.Generator().manual_seed(82)
    cases = [([True, False, False, True, False, True], 5, 4, "some rows dropped"),
             ([False] * 4, 3, 2, "no row dropped"), ([True] * 3, 4, 2, "every row dropped"),
             ([True], 20, 8, "one row, dropped")]
    for drop, T, D, what in cases:
        drop_B, B = torch.tensor(drop), len(drop)
        context_BTD = torch.randn(B, T, D, generator=g)
        lengths_B = torch.randint(1, T + 1, (B,), generator=g)
        mask_BT = torch.arange(T)[None, :] < lengths_B[:, None]  # right-padded prompts
        position_ids_BT = torch.arange(T).repeat(B, 1)
        want = tuple(context_dropout(_HART, context_BTD, mask_BT, position_ids_BT, drop_B))
        got = call(name, fn, context_BTD.clone(), mask_BT.clone(), position_ids_BT.clone(), drop_B.clone())
        mask = got[1] if isinstance(got, (tuple, list)) and len(got) == 3 else None
        if isinstance(mask, torch.Tensor) and mask.dtype != torch.bool:
            raise ExerciseFailed(f"{name} ({what}): the mask is {got[1].dtype}, expected torch.bool")
        compare(name, got, want, f"{what} (drop_B = {drop_B.int().tolist()})",
                "for a dropped row: context all zeros, mask True only at position 0, position ids all 0; "
                "torch.where(drop_B[:, None, None], ..., ...) keeps the other rows", exact=True)
    return passed(name, len(cases))


def check_scale_weights(fn: Callable[[tuple[int, ...], float], torch.Tensor]) -> int:
    """``fn(patch_nums, scale_balance)`` -> per-token weights (sum p^2,) of the cross-entropy:
    ``(p_s^2)^(-b)`` for every token of scale s, normalised to mean 1."""
    name = "scale_weights"
    cases = [((1, 2, 3, 4, 6, 8), 0.0), ((1, 2, 3, 4, 6, 8), 0.5), ((1, 2, 3, 4, 6, 8), 1.0), ((4,), 0.7),
             ((1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64), 0.25)]
    for patch_nums, b in cases:
        got = call(name, fn, patch_nums, b)
        compare(name, got, scale_weights(patch_nums, b), f"patch_nums={patch_nums}, scale_balance={b}",
                "one weight per token: scale s has p*p tokens, each weighted (p*p) ** -b; "
                "concatenate the scales, coarse to fine, then divide by the mean", atol=1e-6, rtol=1e-5)
    return passed(name, len(cases))
