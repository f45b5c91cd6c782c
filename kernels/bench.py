r"""Time each Triton kernel beside the eager reference, ``torch.compile`` of it and Liger-Kernel.

Run on a machine with a CUDA device::

    python -m hart_edu.kernels.bench                          # HART 0.7B 1024px sizes, bfloat16
    python -m hart_edu.kernels.bench --json docs/gpu/bench-h100.json
    python -m hart_edu.kernels.bench --dtype float16 --no-compile

For every case (one kernel at one size) and every implementation it prints the time (ms,
median of ``triton.testing.do_bench``), the rate it reaches and that rate as a fraction of
the GPU's peak:

* memory-bound kernels: achieved bandwidth = bytes the operation must read and write (each
  input read once, each output written once) / time, against the peak memory bandwidth
  (2 x memory clock x bus width, from PyTorch, or ``--peak-gbs``);
* ``nearest_code`` (float32 dot products, no TF32): achieved FLOP/s = 2 N V C / time, against
  the float32 (non-tensor-core) peak of the GPU's datasheet (a small table below, or
  ``--peak-tflops``).

The implementations: ``eager`` (the ``<name>_reference`` function), ``torch.compile`` of
it, ``liger`` (Liger-Kernel's function for the *same* operation where it has one; otherwise
the reason, e.g. "not installed"), and ``triton`` (ours). The targets of the issue are
checked per memory-bound case: the Triton kernel at 80% of peak bandwidth or more, and never
slower than ``torch.compile`` or Liger. ``--json FILE`` records everything with the GPU's
name and the date.

The sizes are those of the released HART 0.7B 1024px model (C = 1536, 24 heads of 64,
SwiGLU width 4096, V = 4096 codes of 32 channels, L = 300 context + 9450 image tokens in a
training sequence, 4096 tokens in the last stage, batch 2 = one prompt with its CFG twin;
the diffusion head: width 1024 on 2 x 4096 tokens); change them in :class:`BenchSizes`.
``cfg_sample`` is timed as the pipeline calls it at the last stage with its defaults (cfg 4.5,
the official top-k 300, no top-p, ``more_smooth``: the filtered logits kept): on the Exp(1)
noise of ``torch.multinomial``, drawn once beforehand (the pipeline draws it from its
generator for either backend, so that draw is not part of the comparison).

Without a CUDA device it prints that the benchmark needs one and exits with status 0: timings
from the Triton interpreter would measure Python, not the kernels.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import backend
from .cfg_sample import cfg_sample_reference, cfg_sample_triton, multinomial_noise
from .layernorm_modulate import layernorm_modulate_reference, layernorm_modulate_triton
from .nearest_code import nearest_code_reference, nearest_code_triton
from .rmsnorm_modulate import rmsnorm_modulate_reference, rmsnorm_modulate_triton
from .rope import inv_freq, rope_reference, rope_triton
from .swiglu import swiglu_reference, swiglu_triton

IMPLEMENTATIONS = ("eager", "torch.compile", "liger", "triton")
TARGET_FRACTION_OF_PEAK = 0.80  # memory-bound Triton kernels (the target)

# Float32 (CUDA-core, non-tensor) peak TFLOP/s from NVIDIA's datasheets, by a piece of the
# name torch.cuda.get_device_name reports (the first match wins; override with --peak-tflops).
DATASHEET_FP32_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 51.2), ("H100 NVL", 60.0), ("H100", 66.9), ("H200", 66.9), ("A100", 19.5),
)


@dataclass(frozen=True)
class BenchSizes:
    """Problem sizes (defaults: the released HART 0.7B 1024px configuration)."""

    batch: int = 2  # one prompt and its unconditional CFG twin (even)
    embed_dim: int = 1536
    num_heads: int = 24
    mlp_hidden: int = 4096
    context_tokens: int = 300
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64)
    vocab_size: int = 4096
    vae_channels: int = 32
    images_quantised: int = 4  # nearest_code: every scale's grid of this many images
    diffusion_width: int = 1024  # the residual diffusion head's MLP width

    def __post_init__(self) -> None:
        if self.batch % 2:
            raise ValueError(f"batch={self.batch} must be even: conditional rows and their CFG twins")

    @property
    def train_tokens(self) -> int:
        """Tokens of one training sequence: context + every image token after scale 0."""
        return self.context_tokens + sum(p * p for p in self.patch_nums[1:])

    @property
    def last_stage_tokens(self) -> int:
        return self.patch_nums[-1] ** 2


@dataclass
class Case:
    """One benchmark: the same computation as reference, Triton (and maybe Liger), with the
    least traffic (bytes read + written) and arithmetic (FLOPs) any implementation needs."""

    name: str
    reference: Callable[[], object]
    triton: Callable[[], object]
    bytes_moved: int  # the least a kernel must read + write
    grad_inputs: tuple[torch.Tensor, ...] = ()  # leaves whose .grad is reset between runs
    flops: int = 0  # counted for compute-bound cases
    bound: str = "memory"  # "memory": rate = GB/s against peak bandwidth; "compute": TFLOP/s
    liger: Callable[[], object] | None = None
    liger_note: str = "Liger-Kernel has no fused kernel for this operation"


def _forward_backward(fn: Callable[..., torch.Tensor], args: tuple, grad_out: torch.Tensor) -> Callable[[], object]:
    return lambda: fn(*args).backward(grad_out)


def liger_functions() -> tuple[dict[str, Callable] | None, str]:
    """Liger-Kernel's ops that compute what ours compute, or (None, why not)."""
    try:
        from liger_kernel.ops.rope import LigerRopeFunction
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction
    except ImportError as err:
        return None, f"not installed (pip install liger-kernel; {type(err).__name__})"
    return {"swiglu": LigerSiLUMulFunction.apply, "rope": LigerRopeFunction.apply}, ""


def make_cases(sizes: BenchSizes, device: torch.device, dtype: torch.dtype, generator: torch.Generator,
               compile_reference: Callable[[Callable], Callable] | None = None,
               liger: dict[str, Callable] | None = None, liger_missing: str = "not installed") -> list[Case]:
    """The benchmark cases at ``sizes``: inputs drawn on the CPU with ``generator`` (a CPU
    generator: the same numbers whatever the device), then moved to ``device``.

    ``compile_reference`` (e.g. ``torch.compile``) wraps each reference function; None: eager.
    ``liger``: :func:`liger_functions`' table (None: every Liger entry says ``liger_missing``)."""
    wrap = compile_reference or (lambda f: f)
    B, C, H = sizes.batch, sizes.embed_dim, sizes.num_heads
    d, esize = C // H, torch.finfo(dtype).bits // 8

    def randn(*shape, dt=dtype, grad=False):
        return torch.randn(*shape, generator=generator, dtype=torch.float32, device="cpu").to(device, dt).requires_grad_(grad)

    def from_liger(name: str, make: Callable[[Callable], Callable[[], object]]) -> dict[str, Any]:
        if liger is None:
            return {"liger_note": liger_missing}
        return {"liger": make(liger[name]), "liger_note": ""}

    cases = []
    # adaLN RMSNorm + modulation (transformer blocks): read x, write y
    for L, what in ((sizes.train_tokens, "train seq"), (sizes.last_stage_tokens, "last stage")):
        x, w, s, b = randn(B, L, C), randn(C), randn(B, 1, C), randn(B, 1, C)
        args = (x, w, s, b, 1e-6)
        cases.append(Case(f"rmsnorm_modulate fwd ({what}, L={L})", lambda a=args, f=wrap(rmsnorm_modulate_reference): f(*a),
                          lambda a=args: rmsnorm_modulate_triton(*a), 2 * x.numel() * esize,
                          liger_note="no fused RMSNorm + adaLN modulation in Liger-Kernel (its RMSNorm "
                                     "has no per-row scale/shift)"))
    L = sizes.train_tokens
    leaves = (randn(B, L, C, grad=True), randn(C, grad=True), randn(B, 1, C, grad=True), randn(B, 1, C, grad=True))
    g = randn(B, L, C)
    cases.append(Case(f"rmsnorm_modulate fwd+bwd (train seq, L={L})",
                      _forward_backward(wrap(rmsnorm_modulate_reference), (*leaves, 1e-6), g),
                      _forward_backward(rmsnorm_modulate_triton, (*leaves, 1e-6), g),
                      (2 + 3) * g.numel() * esize, leaves,
                      liger_note="no fused RMSNorm + adaLN modulation in Liger-Kernel"))

    # RoPE: read q, k, write them rotated (+ the positions)
    qkv = randn(B, L, 3, H, d)
    q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # strided views, as in the attention layer
    pos = (torch.rand(B, L, 2, generator=generator) * sizes.patch_nums[-1]).to(device)
    cases.append(Case(f"rope 2-D q+k (train seq, L={L})", lambda f=wrap(rope_reference): f(q, k, pos),
                      lambda: rope_triton(q, k, pos), 4 * q.numel() * esize + pos.numel() * 4,
                      liger_note="not the same operation: Liger's RoPE gives dimensions i and i + d/2 one "
                                 "angle, HART's 2-D RoPE gives them different ones"))
    T = sizes.context_tokens
    qc, kc = randn(B, H, T, d), randn(B, H, T, d)
    pos_1d = torch.arange(T, device=device).expand(B, T)
    angles_BTd = (pos_1d.float()[..., None] * inv_freq(d, 1).to(device)).repeat(1, 1, 2)  # [p f, p f]
    cos_BTd, sin_BTd = angles_BTd.cos().to(dtype), angles_BTd.sin().to(dtype)
    cases.append(Case(f"rope 1-D q+k (context, L={T})", lambda f=wrap(rope_reference): f(qc, kc, pos_1d),
                      lambda: rope_triton(qc, kc, pos_1d), 4 * qc.numel() * esize + pos_1d.numel() * 8,
                      **from_liger("rope", lambda f: lambda: f(qc, kc, cos_BTd, sin_BTd))))

    # SwiGLU gate of the MLP: read a, b, write y (backward: read g, a, b, write da, db)
    a, bb = randn(B, L, sizes.mlp_hidden), randn(B, L, sizes.mlp_hidden)
    cases.append(Case(f"swiglu fwd (train seq, L={L})", lambda f=wrap(swiglu_reference): f(a, bb),
                      lambda: swiglu_triton(a, bb), 3 * a.numel() * esize,
                      **from_liger("swiglu", lambda f: lambda: f(a, bb))))
    ga, gb, gy = randn(B, L, sizes.mlp_hidden, grad=True), randn(B, L, sizes.mlp_hidden, grad=True), randn(B, L, sizes.mlp_hidden)
    cases.append(Case(f"swiglu fwd+bwd (train seq, L={L})", _forward_backward(wrap(swiglu_reference), (ga, gb), gy),
                      _forward_backward(swiglu_triton, (ga, gb), gy), (3 + 5) * ga.numel() * esize, (ga, gb),
                      **from_liger("swiglu", lambda f: _forward_backward(f, (ga, gb), gy))))

    # LayerNorm + modulate of the diffusion head: read x, scale, shift (per row), write y
    Nd, W = B * sizes.last_stage_tokens, sizes.diffusion_width
    xd, wd, bd, sd, td = randn(Nd, W), randn(W), randn(W), randn(Nd, W), randn(Nd, W)
    cases.append(Case(f"layernorm_modulate fwd (diffusion head, N={Nd}, W={W})",
                      lambda f=wrap(layernorm_modulate_reference): f(xd, wd, bd, sd, td, 1e-6),
                      lambda: layernorm_modulate_triton(xd, wd, bd, sd, td, 1e-6), 4 * xd.numel() * esize,
                      liger_note="no fused LayerNorm + per-row modulation in Liger-Kernel"))

    # Nearest code: compute-bound dot products, float32
    rows = sizes.images_quantised * sum(p * p for p in sizes.patch_nums)
    V, Cv = sizes.vocab_size, sizes.vae_channels
    z, e = randn(rows, Cv, dt=torch.float32), randn(V, Cv, dt=torch.float32)
    cases.append(Case(f"nearest_code fp32 (N={rows}, V={V}, C={Cv})",
                      lambda f=wrap(nearest_code_reference): f(z, e), lambda: nearest_code_triton(z, e),
                      (z.numel() + e.numel()) * 4 + rows * 8, flops=2 * rows * V * Cv, bound="compute",
                      liger_note="no nearest-code kernel in Liger-Kernel"))

    # CFG + top-k + torch.multinomial's draw over the last stage's logits, as the pipeline calls it:
    # read the logits and the noise once, write the filtered logits (more_smooth) and the codes
    l = sizes.last_stage_tokens
    logits = randn(B, l, V, dt=torch.float32)  # B = 2: one prompt's conditional and unconditional rows
    noise = multinomial_noise((B // 2, l, V), torch.float32, torch.device("cpu"), generator).to(device)
    cases.append(Case(f"cfg_sample top-k 300 multinomial (last stage, l={l}, V={V})",
                      lambda f=wrap(cfg_sample_reference): f(logits, 4.5, 300, 0.0, noise, keep_filtered=True),
                      lambda: cfg_sample_triton(logits, 4.5, 300, 0.0, noise, keep_filtered=True),
                      (logits.numel() + 2 * noise.numel()) * 4 + l * 8,
                      liger_note="no sampling kernel in Liger-Kernel"))
    return cases


# --------------------------------------------------------------------------------------
# Accounting: rates and peaks
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peaks:
    """The GPU's peaks, each with where it came from (None: unknown)."""

    bandwidth_gbs: float | None
    bandwidth_source: str
    fp32_tflops: float | None
    fp32_source: str


def peak_bandwidth_gbs(device: torch.device) -> float | None:
    """2 x memory clock x bus width (double data rate), when PyTorch reports both; else None."""
    props = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", None), getattr(props, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9


def datasheet_fp32_tflops(gpu_name: str) -> float | None:
    """The float32 peak of the first :data:`DATASHEET_FP32_TFLOPS` entry in ``gpu_name``."""
    for piece, tflops in DATASHEET_FP32_TFLOPS:
        if piece.lower() in gpu_name.lower():
            return tflops
    return None


def find_peaks(device: torch.device, gpu_name: str, peak_gbs: float | None = None,
               peak_tflops: float | None = None) -> Peaks:
    """Peaks from the command line if given, else from PyTorch (bandwidth) and the datasheet table."""
    if peak_gbs is not None:
        bw, bw_source = peak_gbs, "--peak-gbs"
    else:
        bw = peak_bandwidth_gbs(device)
        bw_source = "2 x memory clock x bus width (torch.cuda.get_device_properties)" if bw else "not reported"
    if peak_tflops is not None:
        fl, fl_source = peak_tflops, "--peak-tflops"
    else:
        fl = datasheet_fp32_tflops(gpu_name)
        fl_source = "NVIDIA datasheet (float32, no tensor cores)" if fl else "unknown GPU: pass --peak-tflops"
    return Peaks(bw, bw_source, fl, fl_source)


@dataclass
class Timing:
    """One implementation of one case: its time and rates, or why there is none."""

    ms: float | None = None
    status: str = "ok"  # "ok", or why not timed ("not installed", "not the same operation", an error)
    gbs: float | None = None
    tflops: float | None = None
    fraction_of_peak: float | None = None


def rates(case: Case, ms: float, peaks: Peaks) -> Timing:
    """Achieved GB/s (bytes / time), TFLOP/s (FLOPs / time) and the fraction of the peak that
    bounds the case (bandwidth for "memory", float32 FLOP/s for "compute")."""
    if not ms > 0:
        raise ValueError(f"{case.name}: a time must be positive, got {ms} ms")
    gbs = case.bytes_moved / (ms * 1e-3) / 1e9
    tflops = case.flops / (ms * 1e-3) / 1e12 if case.flops else None
    if case.bound == "memory":
        fraction = gbs / peaks.bandwidth_gbs if peaks.bandwidth_gbs else None
    else:
        fraction = tflops / peaks.fp32_tflops if tflops is not None and peaks.fp32_tflops else None
    return Timing(ms, "ok", gbs, tflops, fraction)


@dataclass
class CaseResult:
    case: Case
    timings: dict[str, Timing] = field(default_factory=dict)  # by implementation

    def target(self) -> str:
        """The issue's targets for memory-bound kernels: >= 80% of peak and never slower than
        torch.compile or Liger. "met", "missed (...)", or "-" (compute-bound / untimed)."""
        tri = self.timings.get("triton")
        if self.case.bound != "memory" or tri is None or tri.ms is None:
            return "-"
        misses = []
        if tri.fraction_of_peak is None:
            misses.append("peak bandwidth unknown")
        elif tri.fraction_of_peak < TARGET_FRACTION_OF_PEAK:
            misses.append(f"{tri.fraction_of_peak:.0%} of peak < {TARGET_FRACTION_OF_PEAK:.0%}")
        for other in ("torch.compile", "liger"):
            t = self.timings.get(other)
            if t is not None and t.ms is not None and t.ms < tri.ms:
                misses.append(f"slower than {other}")
        return "met" if not misses else "missed (" + "; ".join(misses) + ")"


def measure(eager_cases: list[Case], compiled_cases: list[Case] | None, bench: Callable[..., float],
            peaks: Peaks) -> list[CaseResult]:
    """Time every implementation of every case with ``bench(fn, grad_to_none=...) -> ms``.

    A failure of torch.compile or Liger is recorded as that implementation's status (never
    replaced by a number); a failure of eager or Triton propagates."""
    results = []
    for i, case in enumerate(eager_cases):
        reset = list(case.grad_inputs) or None
        result = CaseResult(case)
        result.timings["eager"] = rates(case, bench(case.reference, grad_to_none=reset), peaks)
        if compiled_cases is None:
            result.timings["torch.compile"] = Timing(status="skipped (--no-compile)")
        else:
            compiled = compiled_cases[i]
            try:
                ms = bench(compiled.reference, grad_to_none=list(compiled.grad_inputs) or None)
                result.timings["torch.compile"] = rates(case, ms, peaks)
            except Exception as err:  # noqa: BLE001 - reported, never replaced by a number
                result.timings["torch.compile"] = Timing(status=f"failed: {type(err).__name__}: {err}".split("\n")[0])
        if case.liger is None:
            result.timings["liger"] = Timing(status=case.liger_note)
        else:
            try:
                result.timings["liger"] = rates(case, bench(case.liger, grad_to_none=reset), peaks)
            except Exception as err:  # noqa: BLE001
                result.timings["liger"] = Timing(status=f"failed: {type(err).__name__}: {err}".split("\n")[0])
        result.timings["triton"] = rates(case, bench(case.triton, grad_to_none=reset), peaks)
        results.append(result)
    return results


# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------


def format_table(results: list[CaseResult], gpu_name: str, dtype_name: str, peaks: Peaks) -> str:
    bw = f"{peaks.bandwidth_gbs:.0f} GB/s" if peaks.bandwidth_gbs else "unknown"
    fl = f"{peaks.fp32_tflops:.1f} TFLOP/s" if peaks.fp32_tflops else "unknown"
    lines = [(f"device: {gpu_name}; activations {dtype_name}; peak bandwidth {bw} ({peaks.bandwidth_source}); "
              f"peak float32 {fl} ({peaks.fp32_source})"),
             f"{'implementation':<15} {'ms':>9} {'rate':>14} {'of peak':>8} {'x triton time':>13}"]
    for r in results:
        unit = "MB moved" if r.case.bound == "memory" else "GFLOP"
        amount = r.case.bytes_moved / 1e6 if r.case.bound == "memory" else r.case.flops / 1e9
        lines.append("")
        lines.append(f"{r.case.name}  [{r.case.bound}-bound, {amount:,.1f} {unit}; target: {r.target()}]")
        tri_ms = r.timings["triton"].ms if "triton" in r.timings else None
        for impl in IMPLEMENTATIONS:
            t = r.timings.get(impl)
            if t is None:
                continue
            if t.ms is None:
                lines.append(f"  {impl:<13} {t.status}")
                continue
            rate = f"{t.gbs:,.0f} GB/s" if r.case.bound == "memory" else f"{t.tflops:.2f} TFLOP/s"
            frac = f"{t.fraction_of_peak:.0%}" if t.fraction_of_peak is not None else "-"
            ratio = f"{t.ms / tri_ms:.2f}" if tri_ms else "-"
            lines.append(f"  {impl:<13} {t.ms:9.3f} {rate:>14} {frac:>8} {ratio:>13}")
    return "\n".join(lines)


def to_json(results: list[CaseResult], gpu_name: str, dtype_name: str, peaks: Peaks,
            sizes: BenchSizes, date: str | None = None) -> dict[str, Any]:
    """Everything printed, as data: the GPU, the date, versions, peaks and every timing."""
    def timing(t: Timing) -> dict[str, Any]:
        return {"ms": t.ms, "status": t.status, "gbs": t.gbs, "tflops": t.tflops, "fraction_of_peak": t.fraction_of_peak}

    return {
        "tool": "python -m hart_edu.kernels.bench",
        "date": date or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "gpu": gpu_name,
        "torch": torch.__version__,
        "triton": getattr(backend.triton, "__version__", None),
        "dtype": dtype_name,
        "timer": "median of triton.testing.do_bench",
        "peaks": {"bandwidth_gbs": peaks.bandwidth_gbs, "bandwidth_source": peaks.bandwidth_source,
                  "fp32_tflops": peaks.fp32_tflops, "fp32_source": peaks.fp32_source},
        "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(sizes).items()},
        "target_fraction_of_peak": TARGET_FRACTION_OF_PEAK,
        "cases": [{"name": r.case.name, "bound": r.case.bound, "bytes_moved": r.case.bytes_moved,
                   "flops": r.case.flops, "target": r.target(),
                   "implementations": {impl: timing(t) for impl, t in r.timings.items()}}
                  for r in results],
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file beside it, then a rename)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"--json {path}: folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hart_edu.kernels.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16",
                        help="activation dtype (nearest_code and cfg_sample always run in float32)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    parser.add_argument("--json", type=Path, default=None, help="also write the results (GPU name, date) to this file")
    parser.add_argument("--peak-gbs", type=float, default=None, help="peak memory bandwidth, GB/s (default: from PyTorch)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak float32 TFLOP/s (default: the datasheet table in this module)")
    args = parser.parse_args(argv)
    if args.json is not None and not args.json.parent.is_dir():
        parser.error(f"--json {args.json}: folder {args.json.parent} does not exist")

    if not torch.cuda.is_available():
        print("hart_edu.kernels.bench needs a CUDA GPU: no CUDA device is available here, so nothing was "
              "timed (the Triton interpreter on the CPU would time Python, not the kernels). "
              "The kernels' correctness tests run on the CPU: pytest tests/kernels")
        return 0
    status = backend.triton_status()
    if status.mode != "cuda":
        print(f"hart_edu.kernels.bench times compiled GPU kernels; the Triton backend here is "
              f"{status.mode or 'unavailable'} ({status.reason or 'unset TRITON_INTERPRET to time the GPU'}). "
              "Nothing was timed.")
        return 0
    from triton.testing import do_bench

    device = torch.device("cuda")
    dtype = getattr(torch, args.dtype)
    gpu_name = torch.cuda.get_device_name(device)
    peaks = find_peaks(device, gpu_name, args.peak_gbs, args.peak_tflops)
    liger, liger_missing = liger_functions()
    sizes = BenchSizes()
    eager_cases = make_cases(sizes, device, dtype, torch.Generator().manual_seed(0), liger=liger,
                             liger_missing=liger_missing)
    compiled_cases = (None if args.no_compile else
                      make_cases(sizes, device, dtype, torch.Generator().manual_seed(0), torch.compile))
    bench = lambda fn, grad_to_none=None: do_bench(fn, grad_to_none=grad_to_none, return_mode="median")
    results = measure(eager_cases, compiled_cases, bench, peaks)
    print(format_table(results, gpu_name, args.dtype, peaks))
    if args.json is not None:
        write_json(args.json, to_json(results, gpu_name, args.dtype, peaks, sizes))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
