"""Which implementation the kernel functions run: the PyTorch reference or Triton.

Every kernel module in ``hart_edu.kernels`` holds three functions with one signature:

* ``<name>_reference``: plain PyTorch that reads like the equation (the ground truth);
* ``<name>_triton``: the fused Triton kernel behind a Python wrapper;
* ``<name>``: calls one of the two, as chosen with :func:`use_backend`.

The choice is explicit and never silently changed::

    from hart_edu.kernels import backend
    with backend.use_backend("triton"):     # RuntimeError (with the reason) if Triton cannot run
        y = rmsnorm_modulate(x, w, scale, shift, eps)

The default is ``"reference"``. The choice lives in a :class:`contextvars.ContextVar`, so it is
local to a thread / asyncio task and undone when the ``with`` block ends.

Where Triton can run
--------------------
* on a CUDA device, with ``triton`` installed (tensors must be on that device);
* on the CPU in Triton's *interpreter*: ``TRITON_INTERPRET=1`` must be in the environment
  **before** the kernel modules are imported, because ``@triton.jit`` decides at decoration
  time whether it builds a GPU kernel or an interpreted one. The interpreter is slow
  (milliseconds per program instance) and only meant for tests and for reading the kernels.

This module does not import Triton itself: Triton and the decorated kernels are imported by
:mod:`._triton` when a kernel module is imported or :func:`triton_status` is first asked. The
models call the kernel modules' dispatchers, so importing a model (``hart_edu.vq``,
``hart_edu.ar_transformer``, ``hart_edu.residual_diffusion``, or anything that imports them)
imports the kernels and fixes the interpreter choice: set ``TRITON_INTERPRET=1`` before that.
(``import hart_edu`` alone imports no model.)
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from types import ModuleType
from typing import Any, NamedTuple

import torch

BACKENDS = ("reference", "triton")

_BACKEND: contextvars.ContextVar[str] = contextvars.ContextVar("hart_edu_kernels_backend", default="reference")


class TritonStatus(NamedTuple):
    """Whether Triton kernels can run here, how, and if not, why."""

    available: bool
    mode: str | None  # "cuda", "interpreter" or None
    reason: str  # why not (empty when available)


def _interpreter_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def triton_status() -> TritonStatus:
    """Check, without running anything, whether the Triton backend can run in this process."""
    if _lazy("triton") is None:
        return TritonStatus(False, None, 'the "triton" package is not installed (pip install "hart-edu[triton]")')
    if _interpreter_requested():
        if not isinstance(_lazy("_probe"), _lazy("_interpreted_function_type")()):
            return TritonStatus(False, None, "TRITON_INTERPRET=1 was set after hart_edu.kernels was imported; "
                                             "set it in the environment before importing triton or the kernels")
        return TritonStatus(True, "interpreter", "")
    if torch.cuda.is_available():
        return TritonStatus(True, "cuda", "")
    return TritonStatus(False, None, "no CUDA device is available and TRITON_INTERPRET=1 is not set "
                                     "(set it before importing the kernels to run them, slowly, on the CPU)")


def triton_available() -> bool:
    """True when :func:`use_backend` ("triton") would succeed."""
    return triton_status().available


def get_backend() -> str:
    """The backend the dispatching kernel functions use now: "reference" or "triton"."""
    return _BACKEND.get()


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Run the kernel functions with backend ``name`` inside the ``with`` block.

    Raises ``ValueError`` for an unknown name and ``RuntimeError`` (saying why) when
    "triton" cannot run here; there is no fallback to the other backend.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {BACKENDS}")
    if name == "triton":
        require_triton()
    token = _BACKEND.set(name)
    try:
        yield name
    finally:
        _BACKEND.reset(token)


def require_triton(*tensors: torch.Tensor) -> str:
    """Raise ``RuntimeError`` unless the Triton kernels can run on ``tensors``; return the mode."""
    status = triton_status()
    if not status.available:
        raise RuntimeError(f"the Triton kernel backend cannot run here: {status.reason}")
    for t in tensors:
        if status.mode == "cuda" and t.device.type != "cuda":
            raise RuntimeError(f"Triton kernels run on CUDA tensors; got a tensor on {t.device} "
                               "(move the inputs with .to('cuda') yourself, or use the reference backend)")
    return status.mode


def dispatch(reference: Any, triton_impl: Any) -> Any:
    """The implementation chosen by the current backend (used by each kernel module)."""
    return triton_impl if get_backend() == "triton" else reference


# -- Triton itself, imported on first use ---------------------------------------------------

_FROM_TRITON_MODULE = ("triton", "tl", "jit", "_probe", "_MissingTriton", "_interpreted_function_type")


def _triton_module() -> ModuleType:
    from . import _triton

    return _triton


def _lazy(name: str) -> Any:
    """``name`` from :mod:`._triton`, unless it was set on this module (tests replace them)."""
    return globals()[name] if name in globals() else getattr(_triton_module(), name)


def __getattr__(name: str) -> Any:  # backend.tl, backend.jit, ...: imported on first access
    if name in _FROM_TRITON_MODULE:
        return getattr(_triton_module(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for positive integers (number of blocks)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (Triton block sizes must be powers of two)."""
    return 1 << max(0, (int(n) - 1).bit_length())
