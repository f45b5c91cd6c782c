"""Golden parity: recompute the official HART tensors with hart_edu and compare them.

``tests/golden`` holds tiny checkpoints in the official layout (``tiny-official/``) and the
tensors the official code computed from them (``tiny-golden.safetensors``, described one by
one in ``tiny-golden.json``). A *producer* (one per part of the model, in this package)
loads the checkpoints with hart_edu's public API, reads the fixture's inputs through
:meth:`Golden.input` and returns the tensors it recomputed, by golden name.

Bookkeeping, per golden tensor:

* returned by a producer      -> compared (indices exactly, floats within a tolerance);
* read with ``Golden.input``  -> an input fed in, counted as matched;
* neither                     -> "not covered".

Run ``python -m hart_edu.parity DIR``; the last line is always
``parity: M/N match, U not covered`` and the exit code is 0 only when every covered
tensor matches. ``--backend triton`` runs every producer inside
``hart_edu.kernels.backend.use_backend("triton")`` (same tolerances); where Triton cannot run
it stops with the reason instead of using the reference. On a CPU set ``TRITON_INTERPRET=1``
in the environment to run the kernels in Triton's interpreter; on a GPU pass ``--device cuda``
(every model and fed-in tensor is moved there; TF32 is switched off for the run, so float32
products stay float32 and the same tolerances apply).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hart_edu.kernels.backend import use_backend

__all__ = ["Golden", "Check", "PRODUCERS", "tolerance_for", "compare", "run_parity"]

# (name, "module:function"): each function takes a Golden and returns {golden name: tensor}.
# Producers are imported lazily so that one broken part cannot hide the others' results.
PRODUCERS: list[tuple[str, str]] = [
    ("tokenizer", "hart_edu.parity.tokenizer:produce"),
    ("text encoder", "hart_edu.parity.text:produce"),
    ("residual diffusion", "hart_edu.parity.diffusion:produce"),
    ("transformer", "hart_edu.parity.transformer:produce"),
]

FLOAT_ATOL = 1e-4
RELATIVE_NAMES = ("pmv_variance",)  # values reach ~200: compared relatively (golden README)
FLOAT_RTOL = 1e-4


@dataclass
class Golden:
    """The golden fixture folder: tensors, their descriptions, and the official checkpoints."""

    root: Path
    tensors: dict[str, torch.Tensor]
    specs: dict[str, dict[str, Any]]
    info: dict[str, Any]
    device: torch.device = torch.device("cpu")  # where producers put models and fed-in tensors
    inputs_used: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, root: str | Path, device: torch.device | str = "cpu") -> "Golden":
        from safetensors.torch import load_file

        root = Path(root)
        meta_path, data_path = root / "tiny-golden.json", root / "tiny-golden.safetensors"
        for path in (meta_path, data_path):
            if not path.is_file():
                raise FileNotFoundError(f"golden fixture file not found: {path}")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        tensors = load_file(str(data_path))
        return cls(root=root, tensors=tensors, specs=meta["tensors"], info=meta.get("info", {}),
                   device=torch.device(device))

    def official(self, folder: str) -> Path:
        """Path of a checkpoint folder under ``tiny-official/`` (``tokenizer``, ``llm``, ...)."""
        return self.root / "tiny-official" / folder

    def input(self, name: str) -> torch.Tensor:
        """A golden tensor fed to hart_edu as an input, on :attr:`device` (counts as matched once used)."""
        self.inputs_used.add(name)
        return self.tensors[name].to(self.device, copy=True)

    def names(self, prefix: str) -> list[str]:
        """Golden names starting with ``prefix``, in the fixture's order."""
        return [n for n in self.specs if n.startswith(prefix)]


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "match", "MISMATCH", "input", "not covered"
    error: float | None = None
    tolerance: str = ""
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("match", "input")


def tolerance_for(name: str, golden: torch.Tensor) -> tuple[str, float]:
    """("exact", 0) for integer and bool tensors; ("rel", 1e-4) for the learned variance;
    ("abs", 1e-4) for every other float tensor."""
    if not golden.is_floating_point():
        return "exact", 0.0
    if any(name.endswith(suffix) for suffix in RELATIVE_NAMES):
        return "rel", FLOAT_RTOL
    return "abs", FLOAT_ATOL


def compare(name: str, golden: torch.Tensor, ours: torch.Tensor) -> Check:
    """Compare one recomputed tensor with its golden value."""
    kind, tol = tolerance_for(name, golden)
    if tuple(ours.shape) != tuple(golden.shape):
        return Check(name, "MISMATCH", None, kind, f"shape {tuple(ours.shape)} != {tuple(golden.shape)}")
    if kind == "exact":
        wrong = int((ours.detach().cpu().to(golden.dtype) != golden).sum())
        return Check(name, "match" if wrong == 0 else "MISMATCH", float(wrong), "exact", f"{wrong} differ")
    diff = (ours.detach().double().cpu() - golden.double()).abs()
    if kind == "rel":
        diff = diff / golden.double().abs().clamp_min(1e-12)
    err = float(diff.max()) if diff.numel() else 0.0
    ok = math.isfinite(err) and err <= tol
    return Check(name, "match" if ok else "MISMATCH", err, f"{kind} {tol:g}")


def _load_producer(spec: str) -> Callable[[Golden], dict[str, torch.Tensor]]:
    module, func = spec.split(":")
    return getattr(importlib.import_module(module), func)


def run_parity(
    root: str | Path, producers: Iterable[tuple[str, str]] | None = None, backend: str = "reference",
    device: torch.device | str = "cpu",
) -> tuple[list[Check], list[str]]:
    """Run every producer on the fixture at ``root`` with kernel backend ``backend``, its models
    and inputs on ``device`` (on CUDA with TF32 off for the run: float32 means float32).

    Returns one :class:`Check` per golden tensor (fixture order) and a list of producer
    errors (a producer that raised leaves its tensors "not covered" and is reported).
    Raises ``RuntimeError`` (with the reason) when ``backend="triton"`` cannot run here.
    """
    golden = Golden.load(root, device)
    computed: dict[str, torch.Tensor] = {}
    errors: list[str] = []
    with use_backend(backend), _full_float32(golden.device):
        _run_producers(golden, PRODUCERS if producers is None else producers, computed, errors)

    checks = []
    for name in golden.specs:
        if name in computed:
            checks.append(compare(name, golden.tensors[name], computed[name]))
        elif name in golden.inputs_used:
            checks.append(Check(name, "input", note="fixture input, fed in"))
        else:
            checks.append(Check(name, "not covered"))
    return checks, errors


@contextlib.contextmanager
def _full_float32(device: torch.device):
    """On CUDA, switch TF32 off for matrix products and convolutions (cuDNN allows it by
    default), restoring the settings afterwards; elsewhere nothing to do."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _run_producers(golden: Golden, producers: Iterable[tuple[str, str]], computed: dict[str, torch.Tensor],
                   errors: list[str]) -> None:
    for label, spec in producers:
        try:
            out = _load_producer(spec)(golden)
        except Exception as err:  # report and go on: the other parts still get checked
            errors.append(f"{label}: {type(err).__name__}: {err}")
            continue
        unknown = sorted(set(out) - set(golden.specs))
        if unknown:
            errors.append(f"{label}: produced names the fixture does not have: {unknown}")
        computed.update({k: v for k, v in out.items() if k in golden.specs})


def summary_line(checks: list[Check]) -> str:
    matched = sum(c.ok for c in checks)
    uncovered = sum(c.status == "not covered" for c in checks)
    return f"parity: {matched}/{len(checks)} match, {uncovered} not covered"


def format_table(checks: list[Check]) -> str:
    """One table per prefix (the part of the name before the first dot)."""
    lines: list[str] = []
    width = max(len(c.name) for c in checks)
    prefix = None
    for c in checks:
        head = c.name.split(".")[0]
        if head != prefix:
            prefix = head
            group = [x for x in checks if x.name.split(".")[0] == head]
            lines.append(f"\n== {head}.*  ({sum(x.ok for x in group)}/{len(group)} ok)")
            lines.append(f"{'tensor':<{width}}  {'max error':>10}  {'tolerance':<10}  status")
        err = "" if c.error is None else f"{c.error:10.3g}"
        note = f"  ({c.note})" if c.note and c.status != "match" else ""
        lines.append(f"{c.name:<{width}}  {err:>10}  {c.tolerance:<10}  {c.status}{note}")
    return "\n".join(lines)
