"""Checkers of notebook 06 (the Triton kernels): the RMSNorm reference with the model's
roundings, the tile and launch grid of ``rmsnorm_modulate``, and two small Triton kernels run
in Triton's interpreter (SwiGLU, element by element; RMSNorm, one row per program).

The references are the package's own (:mod:`hart_edu.kernels.rmsnorm_modulate`,
:mod:`hart_edu.kernels.swiglu`). :func:`triton_interpreter` lets a learner's kernel run on a
CPU: ``@triton.jit`` decides when it decorates a function whether it builds a GPU kernel or an
interpreted one, reading ``TRITON_INTERPRET`` then.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import torch

from hart_edu.course import ExerciseFailed, call, compare, passed
from hart_edu.kernels.backend import cdiv
from hart_edu.kernels.rmsnorm_modulate import _tile, rms_norm
from hart_edu.kernels.swiglu import swiglu_reference

__all__ = ["triton_interpreter", "check_rms_norm", "check_tile_and_grid", "check_swiglu_kernel",
           "check_rms_norm_kernel"]


@contextlib.contextmanager
def triton_interpreter() -> Iterator[None]:
    """Define *and launch* a learner's Triton kernel inside this block to run it in Triton's
    interpreter, on the CPU, one program instance after the other.

    ``@triton.jit`` reads ``TRITON_INTERPRET`` when it decorates a function: it is ``1`` inside
    the block (the previous value is restored after). Triton's own library functions
    (``tl.sum``, ``tl.max``, ``tl.sigmoid``, ...) are decorated when Triton is first imported;
    in a process that imported Triton without the interpreter (a model imported before
    ``TRITON_INTERPRET`` was set, as in a test run), the block lets the interpreter call them
    too, by interpreting their Python source, and undoes that when it ends.
    """
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    compiled_call = JITFunction.__call__
    interpreted: dict[int, InterpretedFunction] = {}

    def call_interpreted(self: JITFunction, *args: Any, **kwargs: Any) -> Any:
        if id(self) not in interpreted:
            interpreted[id(self)] = InterpretedFunction(self.fn)
        return interpreted[id(self)](*args, **kwargs)

    JITFunction.__call__ = call_interpreted
    try:
        yield
    finally:
        JITFunction.__call__ = compiled_call
        if before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = before


def _unwrap_interpreter_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with the interpreter's wrapping undone where it hides a stub: Triton's interpreter
    reports any exception raised inside a kernel as an ``InterpreterError``, so a stub's
    ``NotImplementedError`` in a kernel body would read as a crash."""
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            stub = re.search(r"NotImplementedError\((['\"])(.*?)\1\)", repr(err))
            if stub is not None:
                raise NotImplementedError(stub.group(2)) from None  # "Exercise 6.3: write this part"
            if "outside of the scope of a kernel" in str(err):
                raise ExerciseFailed(
                    f"{getattr(fn, '__name__', 'kernel')}: a Triton function was called outside the interpreter. "
                    "Hint: define and launch the kernel inside the `with triton_interpreter():` block") from None
            raise
    return run


def check_rms_norm(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> int:
    """``fn(x, weight_C, eps)`` -> ``x / sqrt(mean(x^2) + eps) * w`` over the last dimension,
    computed in float32 and returned in x's dtype (the package's ``rms_norm``)."""
    name = "rms_norm"
    g = torch.Generator().manual_seed(61)
    cases = []  # (x, w, eps, what)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        cases.append((torch.randn(2, 7, 24, generator=g).to(dtype), torch.randn(24, generator=g).to(dtype), 1e-6,
                      f"x (2, 7, 24) in {dtype}"))
    cases.append((torch.zeros(1, 3, 8), torch.ones(8), 1e-6, "an all-zero row (eps keeps it finite)"))
    cases.append((torch.randn(4, 1, generator=g), torch.randn(1, generator=g), 1e-5, "one channel"))
    cases.append(((torch.randn(2, 16, generator=g) * 400).to(torch.float16), torch.ones(16, dtype=torch.float16), 1e-6,
                  "float16 rows with values near 1000 (their squares overflow float16)"))
    for x, w, eps, what in cases:
        want = rms_norm(x, w, eps)
        got = call(name, fn, x.clone(), w.clone(), eps)
        if isinstance(got, torch.Tensor) and got.dtype != want.dtype:
            raise ExerciseFailed(f"{name} ({what}): returned {got.dtype}, expected x's dtype {want.dtype}. "
                                 "Hint: compute in float32, then .to(x.dtype) at the end")
        tol = 1e-5 if x.dtype == torch.float32 else 1e-2  # half precision: one unit in the last place
        compare(name, got, want, what, "r = rsqrt(mean(x**2, last dim, keepdim) + eps) on x.float(); "
                "y = x * r * w in float32, rounded once to x's dtype", atol=tol, rtol=tol)
    return passed(name, len(cases))


def check_tile_and_grid(fn: Callable[[int, int, int], tuple]) -> int:
    """``fn(N, L, C)`` -> ``(BLOCK_L, BLOCK_C, grid)`` of the ``rmsnorm_modulate`` forward kernel:
    BLOCK_C the next power of two >= C (whole rows), BLOCK_L the largest power of two with
    BLOCK_L * BLOCK_C <= 4096 (at least 1, at most what L needs), grid (N, ceil(L / BLOCK_L))."""
    name = "tile_and_grid"
    cases = [(2, 37, 200), (1, 1, 1), (2, 9750, 1536), (16, 4096, 1536), (1, 5, 96), (3, 100, 1024),
             (1, 3, 64), (2, 10, 8192), (4, 1000, 4096)]
    for N, L, C in cases:
        BLOCK_L, BLOCK_C = _tile(L, C)
        want = (BLOCK_L, BLOCK_C, (N, cdiv(L, BLOCK_L)))
        got = call(name, fn, N, L, C)
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            raise ExerciseFailed(f"{name}: return a tuple (BLOCK_L, BLOCK_C, grid), got {got!r}")
        got = (got[0], got[1], tuple(got[2]) if isinstance(got[2], (tuple, list)) else got[2])
        compare(name, got, want, f"N={N}, L={L}, C={C}",
                "BLOCK_C = next power of two >= C; BLOCK_L = max(1, min(next power of two >= L, 4096 // BLOCK_C)); "
                "grid = (N, ceil(L / BLOCK_L))", exact=True)
    return passed(name, len(cases))


def check_swiglu_kernel(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> int:
    """``fn(a_N, b_N)`` -> ``silu(a) * b`` (1-D float32) from a Triton kernel; compared with the
    package's ``swiglu_reference``. Sizes that are not multiples of the block test the masks."""
    name = "swiglu_kernel"
    run = _unwrap_interpreter_errors(fn)
    g = torch.Generator().manual_seed(63)
    cases = [(torch.randn(n, generator=g) * 3, torch.randn(n, generator=g), f"{n} elements") for n in (1, 16, 37, 100)]
    cases.append((torch.tensor([-60.0, -5.0, 0.0, 5.0, 60.0]), torch.ones(5), "large |a| (sigmoid saturates)"))
    for a_N, b_N, what in cases:
        got = call(name, run, a_N.clone(), b_N.clone())
        compare(name, got, swiglu_reference(a_N, b_N), what,
                "i = program_id * BLOCK + arange(BLOCK); load a and b with mask=i < n; store a * sigmoid(a) * b "
                "(sigmoid(a) = 1 / (1 + exp(-a))) with the same mask", atol=1e-5, rtol=1e-5)
    return passed(name, len(cases))


def check_rms_norm_kernel(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> int:
    """``fn(x_NC, weight_C, eps)`` -> the RMSNorm of every row (float32) from a Triton kernel with
    one program per row; compared with the package's ``rms_norm``."""
    name = "rms_norm_kernel"
    run = _unwrap_interpreter_errors(fn)
    g = torch.Generator().manual_seed(64)
    cases = [(torch.randn(N, C, generator=g), torch.randn(C, generator=g), f"x ({N}, {C})")
             for N, C in ((1, 1), (3, 5), (2, 16), (2, 100))]
    cases.append((torch.zeros(2, 8), torch.ones(8), "all-zero rows (eps keeps them finite)"))
    for x_NC, w_C, what in cases:
        got = call(name, run, x_NC.clone(), w_C.clone(), 1e-6)
        compare(name, got, rms_norm(x_NC, w_C, 1e-6), what,
                "one program per row n: load the row with mask c < C and other=0.0 (masked lanes add nothing "
                "to the sum), r = 1 / sqrt(sum(x * x) / C + eps), store x * r * w", atol=1e-5, rtol=1e-5)
    return passed(name, len(cases))
