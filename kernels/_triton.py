"""Triton and the helpers to define kernels with it; imported on first use (see :mod:`.backend`).

``@triton.jit`` decides when it decorates a function whether it builds a GPU kernel or an
interpreted one (``TRITON_INTERPRET=1``), so this module is imported only when the Triton
backend is first used or a kernel module is imported, never by ``import hart_edu``.
"""

from __future__ import annotations

from typing import Any

try:  # Triton is an optional dependency (pip install "hart-edu[triton]").
    import triton
    import triton.language as tl
except ImportError:  # the reference backend needs no Triton; asking for "triton" says why not
    triton = None
    tl = None


class _MissingTriton:
    """Stands in for a ``@triton.jit`` kernel when Triton is not installed."""

    def __init__(self, fn: Any):
        self.fn = fn

    def __getitem__(self, grid: Any) -> Any:
        from .backend import triton_status

        raise RuntimeError(f"cannot launch {self.fn.__name__}: {triton_status().reason}")


def jit(fn: Any) -> Any:
    """``triton.jit`` when Triton is installed, a stub that raises a clear error otherwise."""
    return triton.jit(fn) if triton is not None else _MissingTriton(fn)


def _interpreted_function_type() -> type:
    from triton.runtime.interpreter import InterpretedFunction

    return InterpretedFunction


@jit
def _probe(x_ptr):
    """Never launched: its type tells whether kernels defined now are interpreted."""
    tl.store(x_ptr, 0)
