"""Which dtype runs fast on *this* CPU: bfloat16 only where the CPU computes it natively.

bfloat16 halves the weights' memory, but whether it is also fast depends on the CPU:

* with AMX (Intel Xeon from Sapphire Rapids on: ``amx_bf16``) or AVX-512 BF16
  (``avx512_bf16``: Cooper Lake, AMD Zen 4 and later) oneDNN multiplies bfloat16 matrices in
  hardware; the released 1024px HART made one image in 52.5 s in bfloat16 on 2 cores of an
  AMX Xeon (docs/cpu);
* without them (AVX2 CPUs without those extensions, e.g. AMD EPYC before Zen 4) every bfloat16 product is
  converted to float32 and back inside the kernel. Measured on a 2-core AMD EPYC (AVX2): a
  1536 x 4096 linear layer ran 6-7x slower in bfloat16 than in float32
  (docs/cpu/component-ratios-avx2.json), and the released model's text encoder took 54.9 s
  instead of 11.9 s (issue 16's table).

:func:`choose_cpu_dtype` turns a requested dtype ("auto" or a name) into a
:class:`DtypeChoice`: "auto" is bfloat16 where it is native and float32 otherwise; an explicit
dtype is always obeyed, with a warning (:attr:`DtypeChoice.warning`) when it is slow here.
The callers print :meth:`DtypeChoice.line` (one line: the dtype and why) and record it.

float16 is native only with AMX-FP16 or AVX-512 FP16 (``amx_fp16`` / ``avx512_fp16``); auto
never picks it on a CPU (bfloat16 keeps float32's exponent range; float16 runs of the released
model are not measured here).

The CPU's features come from torch (``torch.cpu._is_amx_tile_supported`` and its siblings,
what oneDNN itself checks: the instructions *and* the operating system's permission to use
them) and, for the record, from the flags of ``/proc/cpuinfo`` (Linux).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = [
    "CpuFeatures",
    "DtypeChoice",
    "DTYPE_NAMES",
    "DTYPE_CHOICES",
    "cpu_features",
    "choose_cpu_dtype",
    "add_cpu_arguments",
    "print_choice",
]

DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DTYPE_CHOICES: tuple[str, ...] = ("auto", *DTYPE_NAMES)  # what --dtype accepts

# /proc/cpuinfo flags that matter here, in the order they are reported
_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")


def _torch_cpu_check(name: str) -> bool | None:
    """``torch.cpu._is_<name>_supported()``, None where this torch has no such check."""
    check = getattr(torch.cpu, f"_is_{name}_supported", None)
    return bool(check()) if check is not None else None


def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first processor in /proc/cpuinfo; ("", {}) elsewhere."""
    model, flags = "", frozenset()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        if model and flags:
            break
    return model, flags


@dataclass(frozen=True)
class CpuFeatures:
    """What this CPU offers for matrix products in reduced precision.

    ``capability``: ``torch.backends.cpu.get_cpu_capability()`` (the vector ISA ATen's own
    kernels use: "AVX2", "AVX512", ...). ``amx_bf16`` / ``avx512_bf16`` / ``fp16``: native
    bfloat16 / float16 matrix products (torch's check where it has one, else the cpuinfo
    flag). ``flags``: the relevant /proc/cpuinfo flags present (for the record)."""

    model: str
    capability: str
    cores: int
    amx_bf16: bool
    avx512_bf16: bool
    fp16: bool
    flags: tuple[str, ...] = field(default=())

    @property
    def native_bf16(self) -> bool:
        return self.amx_bf16 or self.avx512_bf16

    @property
    def kind(self) -> str:
        """The machine kind docs/cpu records runs by: "AMX", "AVX-512 BF16", else the capability."""
        if self.amx_bf16:
            return "AMX"
        if self.avx512_bf16:
            return "AVX-512 BF16"
        return self.capability

    def describe(self) -> str:
        """One line: model, kind, capability, cores, flags."""
        flags = " ".join(self.flags) or "none of " + "/".join(_FLAGS)
        return (f"{self.model or 'unknown CPU'}: {self.kind} (torch capability {self.capability}), "
                f"{self.cores} logical cores, flags: {flags}")

    def as_dict(self) -> dict[str, object]:
        return {"model": self.model, "kind": self.kind, "torch capability": self.capability,
                "logical cores": self.cores, "native bfloat16": self.native_bf16,
                "native float16": self.fp16, "cpuinfo flags": list(self.flags)}


def cpu_features() -> CpuFeatures:
    """This machine's :class:`CpuFeatures`."""
    model, flags = _cpuinfo()

    def native(torch_name: str, *cpuinfo_flags: str) -> bool:
        from_torch = _torch_cpu_check(torch_name)
        return from_torch if from_torch is not None else all(f in flags for f in cpuinfo_flags)

    amx = native("amx_tile", "amx_tile", "amx_bf16")
    return CpuFeatures(
        model=model or platform.processor() or platform.machine(),
        capability=torch.backends.cpu.get_cpu_capability(),
        cores=os.cpu_count() or 1,
        amx_bf16=amx,
        avx512_bf16=native("avx512_bf16", "avx512_bf16"),
        fp16=native("amx_fp16", "amx_fp16") or "avx512_fp16" in flags,
        flags=tuple(f for f in _FLAGS if f in flags),
    )


@dataclass(frozen=True)
class DtypeChoice:
    """The dtype a CPU run uses, why, and (for an explicit dtype that is slow here) a warning."""

    dtype: torch.dtype
    reason: str
    requested: str
    warning: str | None = None

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def line(self) -> str:
        """One line for the terminal and the reports: ``dtype float32 (auto): <reason>``."""
        return f"dtype {self.name} ({self.requested}): {self.reason}"


def choose_cpu_dtype(requested: str | torch.dtype = "auto", features: CpuFeatures | None = None,
                     quantize: str | None = None) -> DtypeChoice:
    """The dtype for a CPU run. ``requested``: "auto", a name of :data:`DTYPE_NAMES` or a
    torch dtype; ``features``: default :func:`cpu_features` (pass one to ask about another CPU).

    "auto": bfloat16 where the CPU multiplies it natively (AMX or AVX-512 BF16), else float32;
    float32 with ``quantize="int8"`` (int8 layers take float32 activations; an explicit other
    dtype with int8 is an error). An explicit dtype is obeyed; :attr:`DtypeChoice.warning`
    says when it is slow here."""
    if isinstance(requested, torch.dtype):
        names = {v: k for k, v in DTYPE_NAMES.items()}
        if requested not in names:
            raise ValueError(f"dtype={requested!r} is not supported: use one of {', '.join(DTYPE_CHOICES)}")
        requested = names[requested]
    if requested not in DTYPE_CHOICES:
        raise ValueError(f"dtype={requested!r} is not supported: use one of {', '.join(DTYPE_CHOICES)}")
    from hart_edu.quantize import check_quantize

    if check_quantize(quantize, torch.float32) == "int8":  # (a clear error for an unknown name)
        if requested == "auto":
            return DtypeChoice(torch.float32, "int8 layers (--quantize int8) take float32 activations", requested)
        check_quantize(quantize, DTYPE_NAMES[requested])  # raises unless float32
        return DtypeChoice(torch.float32, "asked for (int8 layers take float32 activations)", requested)
    cpu = cpu_features() if features is None else features
    native = "AMX" if cpu.amx_bf16 else "AVX-512 BF16"
    if requested == "auto":
        if cpu.native_bf16:
            return DtypeChoice(torch.bfloat16, f"this CPU multiplies bfloat16 natively ({native}): half the "
                                               f"memory of float32 and faster", requested)
        return DtypeChoice(torch.float32, f"this CPU ({cpu.kind}) has no native bfloat16 (no AMX, no AVX-512 "
                                          f"BF16): bfloat16 would be converted in every product, several "
                                          f"times slower than float32", requested)
    dtype = DTYPE_NAMES[requested]
    if dtype == torch.bfloat16 and not cpu.native_bf16:
        return DtypeChoice(dtype, "asked for", requested,
                           warning=f"bfloat16 is slow on this CPU ({cpu.kind}, no AMX or AVX-512 BF16): "
                                   f"expect several times the float32 time (--dtype auto picks float32 here)")
    if dtype == torch.float16 and not cpu.fp16:
        return DtypeChoice(dtype, "asked for", requested,
                           warning=f"float16 is slow on this CPU ({cpu.kind}, no AMX-FP16 or AVX-512 FP16): "
                                   f"expect several times the float32 time (--dtype auto picks "
                                   f"{'bfloat16' if cpu.native_bf16 else 'float32'} here)")
    if dtype == torch.float32 and cpu.native_bf16:
        return DtypeChoice(dtype, "asked for", requested,
                           warning=f"this CPU multiplies bfloat16 natively ({native}): --dtype auto (bfloat16) "
                                   f"would be faster and take half the memory")
    return DtypeChoice(dtype, "asked for", requested)


def add_cpu_arguments(parser) -> None:
    """``--dtype`` / ``--quantize`` on an argparse parser (``hart-edu generate`` and ``run-real``):
    what :func:`choose_cpu_dtype` is asked for."""
    from hart_edu.quantize import QUANTIZE_CHOICES

    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                        help="weights dtype; auto: bfloat16 where this CPU multiplies it natively (AMX, AVX-512 "
                             "BF16), else float32; the choice and its reason are printed (see "
                             "hart_edu.cpu_dtype; default: auto)")
    parser.add_argument("--quantize", default="none", choices=QUANTIZE_CHOICES,
                        help="int8: the text encoder's and the transformer's linear layers in int8 and the KV "
                             "cache stored in bfloat16, float32 activations and attention (less memory, faster on "
                             "a CPU, slightly different images; see hart_edu.quantize; default: none)")


def print_choice(program: str, choice: DtypeChoice) -> None:
    """A command's one line on stderr saying the dtype and why, and its warning if slow here."""
    import sys

    print(f"{program}: {choice.line()}", file=sys.stderr)
    if choice.warning:
        print(f"{program}: warning: {choice.warning}", file=sys.stderr)
