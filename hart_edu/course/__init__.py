"""The course's exercise checkers: the learner writes a function, a checker compares it with
the package's own implementation and says "passed", or what is wrong and a hint.

How an exercise looks in a notebook (the committed notebooks are the instructor's, with the
solutions; ``make student`` writes the learner's copies, see :mod:`hart_edu.course.student`)::

    ### Exercise 1.1: the nearest code                   <- a markdown cell: the task
    def nearest_code(z_NC, codebook_VC):                  <- a self-contained code cell
        import torch                                         (imports inside, no notebook state)
        # BEGIN SOLUTION
        return torch.cdist(z_NC, codebook_VC).argmin(-1)
        # END SOLUTION
    check_nearest_code(nearest_code)                      <- the next code cell: one checker call

The student copy keeps everything but the lines between the markers, which become
``raise NotImplementedError("Exercise 1.1")``; the checker then fails with "not written yet".

Every checker takes the learner's callable, runs it on random and edge-case inputs drawn from
its own seeded ``torch.Generator``, and raises :class:`ExerciseFailed` (an ``AssertionError``,
so nbval and pytest see a failure) with the first difference and a hint; on success it prints
one line and returns the number of cases checked. ``tests/test_course.py`` runs every exercise
both ways: the solution passes its checker, the stub and a deliberately wrong answer fail it.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = ["ExerciseFailed", "compare", "passed", "call"]


class ExerciseFailed(AssertionError):
    """A learner's answer is wrong (or not written yet); the message says how, with a hint."""


def call(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, with a stub's ``NotImplementedError`` and any crash turned into
    :class:`ExerciseFailed` naming the exercise."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as err:
        raise ExerciseFailed(f"{name}: not written yet ({err or 'the stub is still there'})") from None
    except ExerciseFailed:
        raise
    except Exception as err:  # the learner's code crashed: say where, keep it short
        raise ExerciseFailed(f"{name}: your function raised {type(err).__name__}: {err}") from None


def compare(name: str, got: Any, want: Any, case: str, hint: str, atol: float = 1e-5, rtol: float = 1e-5,
            exact: bool = False) -> None:
    """Raise :class:`ExerciseFailed` unless ``got`` matches ``want`` (a tensor, or a tuple/list of
    them, or a plain value): same shape and dtype kind, values within tolerance (or equal with
    ``exact``)."""
    if isinstance(want, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            raise ExerciseFailed(f"{name} ({case}): expected {len(want)} outputs, got {_describe(got)}. Hint: {hint}")
        for i, (g, w) in enumerate(zip(got, want)):
            compare(name, g, w, f"{case}, output {i}", hint, atol, rtol, exact)
        return
    if not isinstance(want, torch.Tensor):
        if got != want:
            raise ExerciseFailed(f"{name} ({case}): expected {want!r}, got {got!r}. Hint: {hint}")
        return
    if not isinstance(got, torch.Tensor):
        raise ExerciseFailed(f"{name} ({case}): expected a tensor, got {_describe(got)}. Hint: {hint}")
    if tuple(got.shape) != tuple(want.shape):
        raise ExerciseFailed(f"{name} ({case}): expected shape {tuple(want.shape)}, got {tuple(got.shape)}. "
                             f"Hint: {hint}")
    if want.is_floating_point() != got.is_floating_point() or (want.dtype == torch.bool) != (got.dtype == torch.bool):
        raise ExerciseFailed(f"{name} ({case}): expected dtype {want.dtype}, got {got.dtype}. Hint: {hint}")
    if exact or not want.is_floating_point():
        ok = torch.equal(got.to(want.dtype), want)
    else:
        ok = torch.allclose(got.to(want.dtype), want, atol=atol, rtol=rtol, equal_nan=True)
    if not ok:
        diff = (got.to(torch.float64) - want.to(torch.float64)).abs()
        where = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0]) if diff.numel() else ()
        raise ExerciseFailed(f"{name} ({case}): values differ, largest difference {float(diff.max()):.3g} at index "
                             f"{where} (yours {float(got.flatten()[_flat(where, got.shape)]):.6g}, expected "
                             f"{float(want.flatten()[_flat(where, want.shape)]):.6g}). Hint: {hint}")


def passed(name: str, cases: int) -> int:
    """Print the one line of success; returns ``cases``."""
    print(f"PASSED {name}: {cases} cases match the package's implementation")
    return cases


def _flat(index: tuple[int, ...], shape: torch.Size) -> int:
    flat = 0
    for i, n in zip(index, shape):
        flat = flat * n + i
    return flat


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"{type(value).__name__} {value!r}"
