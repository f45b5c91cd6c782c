"""The released HART model on *this* CPU: one 1024px image through :class:`HARTPipeline`.

``hart-edu run-real --random-weights`` builds the three models of mit-han-lab/hart-0.7b-1024px
at their released sizes with seeded random weights in a :class:`~hart_edu.sampler.HARTPipeline`
of the run's dtype (:func:`hart_edu.profile.random_release_pipeline`: parameters made on the
meta device, then drawn once) and makes one image the way a user does (``pipe([prompt])``,
with its progress bar over the scales). It reports the wall time of every phase and the
**peak resident memory** (RSS) of each phase and of the whole call, weights included: what
decides whether the model fits a laptop. (``hart-edu profile`` times the same pipeline with
the same :class:`~hart_edu.timing.PhaseTimer`, for many runs and kernel backends; on CUDA it
reports the allocator's peak, not the process's RSS.)

Random weights give the real cost: every matrix product, convolution and attention of a
real run has the same shape; only the sampled codes differ.

On a machine shared with other jobs, run it with ``OMP_WAIT_POLICY=PASSIVE`` (set before
Python starts): by default OpenMP's worker threads spin while they wait, and when the OS has
descheduled one of them every small operator waits for it; measured here with two threads
beside a training job, the small scales took 20-30x longer (5x5: 5.3 s of CPU instead of 0.26).
The report gives the CPU time of each phase beside its wall time: on a loaded machine CPU time
divided by the thread count is the better estimate of the time on an idle one.

Low memory (on by default, ``--no-low-memory`` to switch it off): the pipeline is built with
``release_text_encoder=True``, so the text encoder's weights (2.9 GiB of the 4.4 GiB in bf16)
are freed once the prompt is encoded and handed back to the operating system; the scales, the
diffusion head and the VAE decoder run without them. It also sets glibc's mmap threshold to
16 MiB before the models are built (:func:`hart_edu.memory.map_large_blocks`), so the 64x64
scale's 25 MB activations are unmapped when freed instead of piling up in the heap (the
measurements behind both settings are in :mod:`hart_edu.memory`). The report also gives the
peak while building the models (before the per-call peaks are reset): the peak of the whole
process is the larger of the two.

The text encoder's tokenizer is a stand-in (one id per whitespace-separated word: the real
Qwen2 tokenizer comes with the download); the prompt is padded to 300 tokens either way, so
only the system prompt's length (in words here, in BPE pieces there) differs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "measure_one_image",
    "PhaseReport",
    "add_parser",
    "run",
]


# --------------------------------------------------------------------------------------
# Measuring one image
# --------------------------------------------------------------------------------------


def _peak_rss_bytes() -> int:
    """Peak resident memory of this process since the last reset (VmHWM), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def _reset_peak_rss() -> bool:
    """Start a new peak (Linux: writing 5 to /proc/self/clear_refs resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@dataclass
class PhaseReport:
    """Wall time and peak resident memory of each phase of one pipeline call."""

    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # this process, all threads
    peak_bytes: dict[str, int] = field(default_factory=dict)
    stage_seconds: list[float] = field(default_factory=list)
    total_seconds: float = 0.0
    peak_total_bytes: int = 0
    per_phase_peaks: bool = True  # False where the peak could not be reset between phases
    image_shape: tuple[int, ...] = ()
    threads: int = 0
    dtype: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def format(self) -> str:
        gib = 1024**3
        cpu = sum(self.cpu_seconds.values())
        lines = [f"one {self.image_shape[-1]}px image, {self.dtype}, {self.threads} thread(s): "
                 f"{self.total_seconds:.1f} s wall ({cpu:.1f} s CPU), peak RSS {self.peak_total_bytes / gib:.2f} GiB"]
        for name, sec in self.seconds.items():
            peak = f"{self.peak_bytes[name] / gib:6.2f} GiB" if self.per_phase_peaks else ""
            lines.append(f"  {name:<14} {sec:7.2f} s wall {self.cpu_seconds[name]:7.2f} s CPU  {peak}")
        lines.append("  scales (s): " + " ".join(f"{s:.2f}" for s in self.stage_seconds))
        for key, value in self.extra.items():
            lines.append(f"  {key}: {value}")
        return "\n".join(lines)


# run-real's phases: the timer's (hart_edu.timing.phase_names), every scale in one "transformer".
REPORT_PHASES = {"before text": "before text", "text encoding": "text encoder", "residual diffusion": "diffusion",
                 "VAE decode": "VAE decoder", "after decode": "after decode"}


def measure_one_image(pipe, prompt: str, *, seed: int = 1, progress: bool = True, log=None,
                      **call_kwargs) -> PhaseReport:
    """Run ``pipe([prompt])`` once, timed by :class:`hart_edu.timing.PhaseTimer` (forward hooks
    on the pipeline's parts, no change to the code being measured): wall time, CPU time and
    peak RSS of each phase. Peak RSS is reset at every mark, so each phase gets its own peak;
    "total" is the peak of the whole call, weights included. ``log(line)``, when given, gets
    every mark as it is reached (so a run cut short still leaves its numbers)."""
    import torch

    from hart_edu.timing import Clock, PhaseTimer

    report = PhaseReport(threads=torch.get_num_threads(), dtype=str(pipe.dtype).replace("torch.", ""))
    clock = Clock(pipe.device)
    _reset_peak_rss()
    start_wall, start_cpu = time.perf_counter(), time.process_time()

    def probe(name: str) -> tuple[int, float]:
        """(peak RSS since the previous mark, CPU seconds so far), then a new peak."""
        peak, cpu = _peak_rss_bytes(), time.process_time() - start_cpu
        if log is not None:
            log(f"{name}: wall {time.perf_counter() - start_wall:.2f} s, CPU {cpu:.2f} s, "
                f"peak RSS since the last mark {peak / 1024**3:.2f} GiB")
        report.per_phase_peaks &= _reset_peak_rss()
        return peak, cpu

    timer = PhaseTimer(pipe, clock, on_mark=probe)
    with timer:
        out = pipe([prompt], seed=seed, progress=progress, **call_kwargs)
    marks, phases = timer.marks, timer.phases()
    report.total_seconds = clock.seconds(marks[0].stamp, marks[-1].stamp)
    report.peak_total_bytes = max(m.probe[0] for m in marks)
    report.image_shape = tuple(out.image_B3HW.shape)

    def span(label: str, i0: int, i1: int) -> None:  # the peak of a phase is read at its closing mark
        report.seconds[label] = clock.seconds(marks[i0].stamp, marks[i1].stamp)
        report.cpu_seconds[label] = marks[i1].probe[1] - marks[i0].probe[1]
        report.peak_bytes[label] = max(m.probe[0] for m in marks[i0 + 1 : i1 + 1])

    scales = [phases[name] for name in phases if name.startswith("scale ")]
    for name, (i0, i1) in phases.items():
        if name in REPORT_PHASES:
            span(REPORT_PHASES[name], i0, i1)
        if name == "text encoding":
            span("transformer", scales[0][0], scales[-1][1])  # every scale, up to the residual diffusion
    report.stage_seconds = [clock.seconds(marks[i0].stamp, marks[i1].stamp) for i0, i1 in scales]
    if "residual diffusion" in phases:
        report.extra["diffusion denoiser calls"] = timer.diffusion_calls
    report.extra["image finite"] = bool(torch.isfinite(out.image_B3HW).all())
    return report


def machine_info() -> dict[str, Any]:
    """Where a measurement is taken: date (UTC), CPU model, cores, torch version and threads,
    the environment variables that change the result, and the load average (other jobs, when
    read before the run)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu cores (os.cpu_count)": os.cpu_count(),
        "torch": torch.__version__,
        "torch threads": torch.get_num_threads(),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MALLOC_MMAP_THRESHOLD_",
                                           "MKL_NUM_THREADS") if k in os.environ},
        "load average (1, 5, 15 min)": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


# --------------------------------------------------------------------------------------
# hart-edu run-real
# --------------------------------------------------------------------------------------

DEFAULT_PROMPT = "An astronaut riding a horse on the moon, oil painting by Van Gogh."


def add_parser(sub) -> None:
    from hart_edu.cpu_dtype import add_cpu_arguments
    from hart_edu.limits import max_threads, thread_count

    p = sub.add_parser(
        "run-real",
        help="time one image of the released HART architecture (random weights) on this machine",
        description="Build the released HART architecture (hart-0.7b-1024px + the Qwen2-VL-1.5B text "
                    "encoder) with seeded random weights and time one 1024px image, phase by phase, "
                    "with peak memory.",
    )
    p.add_argument("--random-weights", action="store_true", required=True,
                   help="required: says that the weights are random (only the cost is real)")
    p.add_argument("--size", default="1024px", choices=["1024px", "1024px-depth24", "tiny"],
                   help="1024px: the released model (manifest hypothesis depth 16 + adaLN; default); "
                        "1024px-depth24: the other hypothesis; tiny: a test-sized model")
    add_cpu_arguments(p)
    p.add_argument("--threads", type=thread_count, default=None,
                   help=f"torch intra-op threads, 1 to {max_threads()} (this machine's logical CPUs; default: torch's)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--low-memory", action=argparse.BooleanOptionalAction, default=True,
                   help="free the text encoder's weights once the prompt is encoded (default: on; "
                        "the pipeline's release_text_encoder=True)")
    p.add_argument("--profile", action="store_true", help="also print the 20 most expensive torch ops")
    p.add_argument("--json", type=Path, default=None,
                   help="also write the report as JSON to this file, in an existing folder (checked before the run)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from hart_edu.cpu_dtype import choose_cpu_dtype, cpu_features, print_choice
    from hart_edu.cpu_records import comparison_line, memory_warning
    from hart_edu.memory import DEFAULT_MMAP_THRESHOLD, available_bytes, map_large_blocks_unless_set
    from hart_edu.quantize import is_int8_layer, weight_bytes

    from hart_edu.limits import check_prompt_texts

    from hart_edu.cli import atomic_output, check_output_file

    check_prompt_texts([args.prompt])  # before any model is built
    if args.json is not None:  # a folder that is missing or read-only is found now, not after the run
        check_output_file(args.json, "--json")
    if args.threads is not None:  # in [1, max_threads()]: hart_edu.limits.thread_count checked it
        torch.set_num_threads(args.threads)
    machine = machine_info()  # before the run: its load average is the other jobs' load
    features = cpu_features()
    choice = choose_cpu_dtype(args.dtype, features, quantize=args.quantize)
    print_choice("hart-edu run-real", choice)
    dtype = choice.dtype
    warning = memory_warning(features.kind, args.size, choice.name, args.quantize, available_bytes())
    if warning is not None:  # said before the models are built, not after the machine starts swapping
        print(f"hart-edu run-real: warning: {warning}", file=sys.stderr)
    # mallopt is process-wide and stays: run-real is a program's entry point
    large_blocks_mapped = args.low_memory and map_large_blocks_unless_set()
    t0 = time.perf_counter()
    from hart_edu.profile import random_release_pipeline

    pipe = random_release_pipeline(args.size, dtype=dtype, seed=args.seed, prompts=(args.prompt,),
                                   release_text_encoder=args.low_memory, quantize=args.quantize)
    build_s = time.perf_counter() - t0
    build_peak = _peak_rss_bytes()  # measure_one_image resets the peak: read the build's first
    n_params = {name: sum(p.numel() for p in m.parameters()) for name, m in
                (("text encoder", pipe.text_encoder.model), ("transformer", pipe.transformer),
                 ("tokenizer", pipe.tokenizer))}
    print(f"built with random weights in {build_s:.1f} s: "
          + ", ".join(f"{k} {v / 1e6:.0f}M" for k, v in n_params.items()) + f" parameters, {choice.name}",
          file=sys.stderr)
    weights = {name: weight_bytes(m) for name, m in (("text encoder", pipe.text_encoder.model),
                                                     ("transformer", pipe.transformer), ("tokenizer", pipe.tokenizer))}
    int8_layers = {name: sum(map(is_int8_layer, m.modules())) for name, m in
                   (("text encoder", pipe.text_encoder.model), ("transformer", pipe.transformer))}
    profiler = contextlib.nullcontext()
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        profiler = profile(activities=[ProfilerActivity.CPU])
    with profiler as prof:
        report = measure_one_image(pipe, args.prompt, seed=args.seed,
                                   log=lambda line: print(line, file=sys.stderr, flush=True))
    report.extra["build seconds"] = round(build_s, 2)
    report.extra["peak RSS while building (GiB)"] = round(build_peak / 1024**3, 3)
    report.extra["low memory (text encoder released after encoding)"] = args.low_memory
    report.extra["text encoder released"] = pipe.text_encoder_released
    report.extra["freed memory returned to the OS (malloc_trim)"] = pipe.memory_returned
    report.extra[f"mmap threshold set to {DEFAULT_MMAP_THRESHOLD >> 20} MiB (mallopt)"] = large_blocks_mapped
    report.extra["parameters"] = n_params  # float parameters (an int8 layer's weights are not parameters)
    report.extra["dtype choice"] = choice.line()
    report.extra["quantize"] = args.quantize
    report.extra["int8 linear layers"] = int8_layers
    report.extra["KV cache dtype"] = str(pipe.kv_cache_dtype or pipe.dtype).replace("torch.", "")
    report.extra["weights (GiB)"] = {k: round(v / 1024**3, 3) for k, v in weights.items()}
    report.extra["cpu features"] = features.as_dict()
    report.extra["machine"] = machine
    print(report.format())
    peak = max(report.peak_total_bytes, build_peak)
    print(comparison_line(report.total_seconds, peak, features.kind, args.size, choice.name, args.quantize))
    if args.profile:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    if args.json is not None:
        with atomic_output(args.json) as tmp:  # the whole report or none (also on Ctrl-C)
            tmp.write_text(json.dumps(report.__dict__, indent=2, default=str) + "\n", encoding="utf-8")
    return 0
