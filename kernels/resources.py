r"""Every Triton kernel variant compiled for real GPUs (sm_80, sm_90) on a machine without one,
with the resources each compiled kernel needs and the memory-traffic floor it is held to.

    python -m hart_edu.kernels.resources            # compile, check, print the summary
    python -m hart_edu.kernels.resources --write    # also write docs/kernel_resources.{json,md}
                                                    # and the README's table (between its markers)

How the kernels are found (nothing typed twice)
-----------------------------------------------
1. **Capture** (a child process with ``TRITON_INTERPRET=1``): every kernel module's public
   dispatcher (``rmsnorm_modulate``, ``rope``, ... under ``use_backend("triton")``) is called,
   forward and backward, at the shapes of two models, the released hart-0.7b-1024px
   (the configs in ``tests/golden/manifest-hart-0.7b-1024px.json``) and the tiny model
   of ``weights/tiny`` (its config.json files), with empty CPU tensors of every dtype and every
   constexpr switch the dispatcher can set. Triton's launch (``InterpretedFunction.run``) is
   intercepted: nothing runs, the kernel, its bound arguments, the grid and the launch
   options are recorded as the wrapper computed them (block sizes, ``num_warps``).
2. **Compile** (a child process *without* the interpreter, so the kernels are real
   ``JITFunction`` objects): for each target, the launch's arguments go through the same
   binder and ``_pack_args`` that ``JITFunction.run`` uses on a GPU (signature, constexprs,
   divisibility specialisations, options), then ``triton.compile(ASTSource(...),
   target=GPUTarget("cuda", cc, 32))`` builds TTIR -> PTX -> cubin. Any error fails.
3. **Resources**: the PTX goes through the ``ptxas`` that Triton itself uses for that target
   (``ptxas -v``, Triton's own flags), which reports registers per thread and spill bytes
   (checked against the registers the cubin Triton built declares, ``cuobjdump -res-usage``);
   shared memory is Triton's (``metadata.shared``). Results are cached beside Triton's own
   cache entry of the kernel (``~/.triton/cache`` or ``$TRITON_CACHE_DIR``), so a second run
   takes seconds.

Occupancy by registers (per SM, both targets: a 65,536-register file, registers handed out
per warp in units of 256, at most 64 resident warps, 32 resident blocks; shared memory per SM
164 KiB on sm_80 and 228 KiB on sm_90; source: NVIDIA CUDA C++ Programming Guide, "Technical
Specifications per Compute Capability", and the CUDA occupancy calculator's allocation rules):

.. math::

    \text{regs/warp} = \lceil 32 r / 256 \rceil \cdot 256, \quad
    \text{blocks} = \min\Big(\Big\lfloor \frac{\lfloor 65536 / \text{regs/warp} \rfloor}{w} \Big\rfloor,
                     \Big\lfloor \frac{64}{w} \Big\rfloor, 32, \Big\lfloor \frac{\text{smem/SM}}{s} \Big\rfloor\Big),
    \quad \text{resident warps} = w \cdot \text{blocks}

(``r`` registers per thread, ``w`` warps per block, ``s`` shared bytes per block).

The memory floor: the bytes a launch must move at the released shapes (every distinct tensor
it is given read or written once: the sum of their sizes, a tensor passed twice counted once)
divided by the HBM bandwidth of an H100 SXM (3.35 TB/s) and of an H200 (4.8 TB/s), from
NVIDIA's H100 Tensor Core GPU datasheet and H200 product page. No kernel can be faster; the
GPU bench (``python -m hart_edu.kernels.bench``) is held against these.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

TARGETS = (80, 90)  # compute capabilities: A100 (sm_80), H100 / H200 (sm_90)


@dataclass(frozen=True)
class SMLimits:
    """Per-SM limits of a compute capability (CUDA C++ Programming Guide, Technical
    Specifications per Compute Capability; allocation units of the CUDA occupancy calculator)."""

    registers: int = 65536  # 32-bit registers per SM
    register_unit: int = 256  # registers are allocated per warp in multiples of this
    max_warps: int = 64
    max_blocks: int = 32
    shared_bytes: int = 0  # shared memory per SM usable by blocks


SM_LIMITS = {80: SMLimits(shared_bytes=164 * 1024), 90: SMLimits(shared_bytes=228 * 1024)}
LIMITS_SOURCE = ("NVIDIA CUDA C++ Programming Guide, Technical Specifications per Compute Capability "
                 "(8.0 and 9.0: 64K registers, 64 warps, 32 blocks per SM; 164 / 228 KiB shared memory per SM); "
                 "registers allocated per warp in units of 256 (CUDA occupancy calculator)")

# HBM bandwidth of the GPUs the floors are computed for, bytes per second, and where it is from.
HBM_BANDWIDTH = {
    "H100 SXM": (3.35e12, "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM, HBM3"),
    "H200": (4.8e12, "NVIDIA H200 Tensor Core GPU product page, HBM3e"),
}

# The limits for the kernels at the released shapes.
MIN_RESIDENT_WARPS = 16  # a memory-bound kernel needs warps in flight to hide HBM latency
COMPUTE_BOUND = {"nearest_code"}  # float32 dot products: held to FLOP/s, not bandwidth (see bench.py)
# Memory-bound kernels allowed below MIN_RESIDENT_WARPS by their registers, each with the reason
# (numbers in docs/kernel_resources.md). Empty: every one meets it.
REGISTER_EXCEPTIONS: dict[str, str] = {}

RELEASED, TINY = "released", "tiny"
RELEASED_MANIFEST = "manifest-hart-0.7b-1024px.json"  # in tests/golden
REPORT_STEM = Path("docs") / "kernel_resources"
README_BEGIN = "<!-- kernel_resources: generated by python -m hart_edu.kernels.resources --write -->"
README_END = "<!-- kernel_resources: end -->"


# --------------------------------------------------------------------------------------
# The shapes of the two models
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShapes:
    """The sizes the kernels see in one model (batch 2: a prompt and its CFG twin)."""

    name: str
    embed_dim: int  # C
    num_heads: int
    head_dim: int  # d
    mlp_hidden: int  # SwiGLU width
    context_tokens: int  # T
    train_tokens: int  # T + every image token after scale 0
    last_stage_tokens: int  # p_last^2
    all_stage_tokens: int  # sum of p^2 over the scales (what the quantiser looks up per image)
    vocab_size: int  # V
    vae_channels: int  # Cvae
    diffusion_width: int
    batch: int = 2


def shapes_from_configs(name: str, transformer: Any, tokenizer: Any) -> ModelShapes:
    """ModelShapes of a :class:`~hart_edu.ar_transformer.TransformerConfig` and a
    :class:`~hart_edu.hybrid_tokenizer.TokenizerConfig`."""
    pns = tuple(transformer.patch_nums)
    return ModelShapes(name, transformer.embed_dim, transformer.num_heads, transformer.head_dim,
                       transformer.mlp_hidden, transformer.context_token, transformer.sequence_length,
                       pns[-1] ** 2, sum(p * p for p in pns), tokenizer.vocab_size, tokenizer.z_channels,
                       transformer.diff_width)


def model_shapes() -> list[ModelShapes]:
    """The released hart-0.7b-1024px (the configs recorded in the golden fixtures' manifest,
    hypothesis "transformer_llm") and the tiny model of weights/tiny (its config.json files)."""
    from hart_edu import ar_transformer, hybrid_tokenizer
    from hart_edu.checkpoint import config_from_dict, read_config
    from hart_edu.paths import GOLDEN_IN_REPO, tiny_weights

    T, K = ar_transformer.TransformerConfig, hybrid_tokenizer.TokenizerConfig
    path = GOLDEN_IN_REPO / RELEASED_MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the released model's configs ship with the source checkout "
                                "(git clone), not with a wheel")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    released = shapes_from_configs(
        RELEASED, config_from_dict(T, manifest["transformer_llm"]["config_used"], source=str(path)),
        config_from_dict(K, manifest["tokenizer"]["config_used"], source=str(path)))
    llm, tok = tiny_weights("llm"), tiny_weights("tokenizer")
    tiny = shapes_from_configs(TINY, config_from_dict(T, read_config(llm, ar_transformer.MODEL_TYPE), source=str(llm)),
                               config_from_dict(K, read_config(tok, hybrid_tokenizer.MODEL_TYPE), source=str(tok)))
    return [released, tiny]


# --------------------------------------------------------------------------------------
# 1. Capture: call the dispatchers, record the launches (TRITON_INTERPRET=1 process)
# --------------------------------------------------------------------------------------

DTYPES = ("float32", "bfloat16", "float16")


def workloads(s: ModelShapes) -> Iterator[tuple[str, str, Callable[[dict[str, str]], None]]]:
    """(kernel family, variant, call) for every dtype and constexpr switch each dispatcher can
    set, at the shapes of ``s``: forward at inference sizes, backward at a training sequence.

    The calls use ``torch.empty`` CPU tensors: under capture nothing is computed. Each call
    writes "forward" / "backward" into the dict it is given before that half runs."""
    import torch

    from . import cfg_sample, layernorm_modulate, nearest_code, rmsnorm_modulate, rope, swiglu

    B, C, d, H = s.batch, s.embed_dim, s.head_dim, s.num_heads

    def empty(*shape: int, dtype: str = "float32", grad: bool = False) -> torch.Tensor:
        return torch.empty(shape, dtype=getattr(torch, dtype)).requires_grad_(grad)

    def fwd_bwd(fn: Callable[..., Any], *leaves: torch.Tensor, extra: tuple = ()) -> Callable[[], None]:
        def call(phase: dict[str, str]) -> None:
            phase["phase"] = "forward"
            out = fn(*leaves, *extra)
            outs = list(out) if isinstance(out, tuple) else [out]
            phase["phase"] = "backward"
            torch.autograd.backward(outs, [torch.empty_like(o) for o in outs])
        return call

    for dt in DTYPES:
        L = s.train_tokens  # forward and backward at a training sequence (the forward's tile is the same at any L > 1)
        yield ("rmsnorm_modulate", dt, fwd_bwd(rmsnorm_modulate.rmsnorm_modulate, empty(B, L, C, dtype=dt, grad=True),
                                                empty(C, dtype=dt, grad=True), empty(B, 1, C, dtype=dt, grad=True),
                                                empty(B, 1, C, dtype=dt, grad=True), extra=(1e-6,)))
        N, W = B * s.last_stage_tokens, s.diffusion_width
        for affine in (True, False):
            wb = (empty(W, dtype=dt, grad=True), empty(W, dtype=dt, grad=True)) if affine else (None, None)
            yield ("layernorm_modulate", f"{dt} {'affine' if affine else 'no affine'}",
                   _layernorm_call(layernorm_modulate.layernorm_modulate, empty(N, W, dtype=dt, grad=True), *wb,
                                   empty(N, W, dtype=dt, grad=True), empty(N, W, dtype=dt, grad=True)))
        for axes, L in ((1, s.context_tokens), (2, s.train_tokens)):
            pos = torch.zeros((B, L) if axes == 1 else (B, L, 2))
            yield ("rope", f"{dt} {axes}-D", fwd_bwd(rope.rope, empty(B, H, L, d, dtype=dt, grad=True),
                                                     empty(B, H, L, d, dtype=dt, grad=True), extra=(pos,)))
        yield ("swiglu", dt, fwd_bwd(swiglu.swiglu, empty(B, s.train_tokens, s.mlp_hidden, dtype=dt, grad=True),
                                     empty(B, s.train_tokens, s.mlp_hidden, dtype=dt, grad=True)))
        rows = 4 * s.all_stage_tokens  # every scale's grid of four images
        yield ("nearest_code", dt, _nearest_call(nearest_code.nearest_code, empty(rows, s.vae_channels, dtype=dt),
                                                 empty(s.vocab_size, s.vae_channels)))

    l, V = s.last_stage_tokens, s.vocab_size
    for dt in DTYPES:  # every switch in float32; the pipeline's own switches (keep_filtered) in half precision
        for draw in (True, False):
            for top_k in (0, min(300, V // 2)):
                for top_p in (0.0, 0.9):
                    keeps = ((False, False), (False, True), (True, False), (True, True)) if dt == "float32" \
                        else ((False, True),)
                    for keep_guided, keep_filtered in keeps:
                        label = (f"{dt} {'multinomial' if draw else 'greedy'} top-k {'on' if top_k else 'off'} "
                                 f"top-p {'on' if top_p else 'off'}"
                                 + (" keep guided" if keep_guided else "") + (" keep filtered" if keep_filtered else ""))
                        yield ("cfg_sample", label, _cfg_call(cfg_sample.cfg_sample, empty(B, l, V, dtype=dt),
                                                               empty(B // 2, l, V, dtype=dt) if draw else None,
                                                               top_k, top_p, keep_guided, keep_filtered))


def _nearest_call(fn, z, e) -> Callable[[dict[str, str]], None]:
    def call(phase: dict[str, str]) -> None:
        phase["phase"] = "forward"
        fn(z, e)
    return call


def _layernorm_call(fn, x, w, b, scale, shift) -> Callable[[dict[str, str]], None]:
    import torch

    def call(phase: dict[str, str]) -> None:
        phase["phase"] = "forward"
        y = fn(x, w, b, scale, shift, 1e-6)
        phase["phase"] = "backward"
        y.backward(torch.empty_like(y))
    return call


def _cfg_call(fn, logits, noise, top_k, top_p, keep_guided, keep_filtered) -> Callable[[dict[str, str]], None]:
    def call(phase: dict[str, str]) -> None:
        phase["phase"] = "forward"
        fn(logits, 4.5, top_k, top_p, noise, keep_guided=keep_guided, keep_filtered=keep_filtered)
    return call


@dataclass
class Launch:
    """One kernel launch as a dispatcher made it: the kernel, its arguments by name
    (tensors as ``{"tensor": dtype, "aligned": data_ptr % 16 == 0}``), the launch options."""

    family: str  # the kernel module (rmsnorm_modulate, ...)
    variant: str  # dtype and switches of the call
    model: str  # RELEASED or TINY
    kernel: str  # "module:function" of the @jit kernel
    arguments: dict[str, Any]
    options: dict[str, Any]  # launch keywords that are compile options (num_warps, num_stages)
    grid: list[int]
    bytes_moved: int  # sum of the sizes of the distinct tensors it is given
    constexprs: list[str]  # the names of the tl.constexpr parameters
    phase: str = "forward"  # or "backward": which half of the workload launched it

    def key(self) -> str:
        """What makes a different compiled kernel: the kernel, its constexprs, its tensors' dtypes
        and alignment, and what Triton specialises scalars on (not their values)."""
        spec = {k: (v if isinstance(v, dict) or k in self.constexprs else _scalar_class(v))
                for k, v in self.arguments.items()}
        return json.dumps([self.kernel, spec, self.options], sort_keys=True)


def _scalar_class(v: Any) -> Any:
    """The part of a scalar argument Triton specialises on (value 1, divisibility by 16, type)."""
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int):
        return "int==1" if v == 1 else f"int%16=={v % 16 == 0}"
    return type(v).__name__


def capture(shapes: list[ModelShapes]) -> list[Launch]:
    """Run every workload with Triton's launch intercepted (needs ``TRITON_INTERPRET=1``)."""
    import torch
    from triton.runtime.interpreter import InterpretedFunction

    from . import backend

    if backend.triton_status().mode != "interpreter":
        raise RuntimeError("capture() runs the dispatchers in Triton's interpreter: set TRITON_INTERPRET=1 "
                           "before importing the kernels")
    launches: list[Launch] = []
    current: dict[str, str] = {}
    original = InterpretedFunction.run

    def record(self, *args, grid, warmup, **kwargs):  # replaces InterpretedFunction.run: records, runs nothing
        names = self.arg_names
        bound = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k in names}
        options = {k: v for k, v in kwargs.items() if k not in names}
        arguments, seen, moved = {}, set(), 0
        for name, value in bound.items():
            if isinstance(value, torch.Tensor):
                arguments[name] = {"tensor": str(value.dtype).removeprefix("torch."),
                                   "aligned": value.data_ptr() % 16 == 0}
                if value.data_ptr() not in seen:
                    seen.add(value.data_ptr())
                    moved += value.numel() * value.element_size()
            else:
                arguments[name] = value
        grid = grid(bound) if callable(grid) else grid
        params = inspect.signature(self.fn).parameters
        constexprs = [n for n in names if "constexpr" in str(params[n].annotation)]
        launches.append(Launch(current["family"], current["variant"], current["model"],
                               f"{self.fn.__module__}:{self.fn.__name__}", arguments, options,
                               [int(g) for g in grid], moved, constexprs, current["phase"]))

    InterpretedFunction.run = record
    try:
        with backend.use_backend("triton"):
            for s in shapes:
                for family, variant, call in workloads(s):
                    current.update(family=family, variant=variant, model=s.name)
                    call(current)  # sets current["phase"] before its forward and its backward
    finally:
        InterpretedFunction.run = original
    return launches


def unique_launches(launches: list[Launch]) -> list[Launch]:
    """One launch per compiled kernel (the first, i.e. the released model's when both share it)."""
    seen: dict[str, Launch] = {}
    for launch in launches:
        seen.setdefault(launch.key(), launch)
    return list(seen.values())


# --------------------------------------------------------------------------------------
# 2. Compile for a target and 3. read the resources (a process without TRITON_INTERPRET)
# --------------------------------------------------------------------------------------


@dataclass
class Compiled:
    """One launch compiled for one target, with what ptxas reports."""

    launch_key: str
    target: int  # compute capability
    arch: str  # what ptxas compiled for (sm_80, sm_90a)
    name: str
    num_warps: int
    num_stages: int
    registers: int  # per thread
    spill_stores: int  # bytes per thread
    spill_loads: int
    stack_frame: int  # bytes per thread
    shared: int  # bytes per block (Triton's allocation)
    cubin_registers: int  # what the cubin Triton built declares (cuobjdump): must equal ``registers``
    seconds: float  # compile time here (0 when Triton's cache had it)
    error: str = ""


def _stand_in(value: Any) -> Any:
    """An argument with what Triton specialises on: a tensor's dtype and 16-byte alignment."""
    import torch

    if isinstance(value, dict) and "tensor" in value:
        t = torch.empty(32, dtype=getattr(torch, value["tensor"]))
        return t if value["aligned"] else t[1:]
    return value


def _jit_function(kernel: str) -> Any:
    import importlib

    module, name = kernel.split(":")
    fn = getattr(importlib.import_module(module), name)
    if type(fn).__name__ != "JITFunction":
        raise RuntimeError(f"{kernel} is a {type(fn).__name__}, not a JITFunction: compile without TRITON_INTERPRET")
    return fn


PTXAS_LINE = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
REGS_LINE = re.compile(r"Used (\d+) registers")


def ptxas_resources(ptx: str, capability: int, fp_fusion: bool) -> dict[str, int]:
    """Registers, spill and stack bytes per thread from ``ptxas -v`` (the ptxas and flags Triton
    uses for ``capability``; the cubin it writes is thrown away)."""
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        cmd = [get_ptxas(capability).path, "-lineinfo", *([] if fp_fusion else ["--fmad=false"]), "-v",
               "--regAllocOptLevel=2", f"--gpu-name={sm_arch_from_capability(capability)}", str(src),
               "-o", str(Path(tmp) / "kernel.cubin")]
        log = subprocess.run(cmd, check=True, capture_output=True, text=True).stderr
    spill, regs = PTXAS_LINE.search(log), REGS_LINE.search(log)
    if spill is None or regs is None:
        raise RuntimeError(f"could not read ptxas -v output: {log[-500:]}")
    return {"registers": int(regs.group(1)), "stack_frame": int(spill.group(1)),
            "spill_stores": int(spill.group(2)), "spill_loads": int(spill.group(3))}


def cubin_registers(cubin: bytes) -> int:
    """Registers per thread that a cubin's kernel declares (``cuobjdump -res-usage``, from Triton's wheel)."""
    import tempfile

    from triton import knobs

    tool = Path(knobs.nvidia.ptxas.path).with_name("cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(tool), "-res-usage", f.name], check=True, capture_output=True, text=True).stdout
    found = re.search(r"REG:(\d+)", out)
    if found is None:
        raise RuntimeError(f"could not read cuobjdump -res-usage output: {out[-500:]}")
    return int(found.group(1))


def compile_launch(launch: dict[str, Any], capability: int) -> dict[str, Any]:
    """Compile one captured launch for ``capability`` as ``JITFunction.run`` would on that GPU."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import sm_arch_from_capability
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.cache import get_cache_manager
    from triton.runtime.jit import create_function_from_signature

    fn = _jit_function(launch["kernel"])
    target = GPUTarget("cuda", capability, 32)
    backend = make_backend(target)
    kwargs = {name: _stand_in(v) for name, v in launch["arguments"].items()} | launch["options"]
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(**kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    start = time.perf_counter()
    kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
    seconds = time.perf_counter() - start
    cache = get_cache_manager(kernel.hash)
    cached = cache.get_file("hart_edu_resources.json")
    if cached is None:
        resources = ptxas_resources(kernel.asm["ptx"], capability, kernel.metadata.enable_fp_fusion)
        resources["cubin_registers"] = cubin_registers(kernel.asm["cubin"])
        cache.put(json.dumps(resources), "hart_edu_resources.json", binary=False)
    else:
        resources = json.loads(Path(cached).read_text())
    return asdict(Compiled(Launch(**launch).key(), capability, sm_arch_from_capability(capability),
                           kernel.metadata.name, kernel.metadata.num_warps, kernel.metadata.num_stages,
                           shared=kernel.metadata.shared, seconds=round(seconds, 3), **resources))


def _compile_one(job: tuple[dict[str, Any], int]) -> dict[str, Any]:
    launch, capability = job
    try:
        return compile_launch(launch, capability)
    except Exception as err:  # noqa: BLE001 - reported per kernel, then the whole run fails
        message = f"{type(err).__name__}: {err}".strip().splitlines()
        return {"launch_key": Launch(**launch).key(), "target": capability, "error": " ".join(message)[:2000]}


def compile_all(launches: list[dict[str, Any]], targets: tuple[int, ...] = TARGETS,
                jobs: int | None = None) -> list[dict[str, Any]]:
    """Compile every launch for every target, ``jobs`` processes at a time."""
    work = [(launch, cc) for launch in launches for cc in targets]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(work)))
    if jobs == 1:
        return [_compile_one(job) for job in work]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(_compile_one, work))


# --------------------------------------------------------------------------------------
# Running the two steps in their own processes
# --------------------------------------------------------------------------------------


def _child(step: str, interpret: bool, stdin: str = "", extra: tuple[str, ...] = ()) -> Any:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, stated (silences its warning)
    proc = subprocess.run([sys.executable, "-m", "hart_edu.kernels.resources", step, *extra], input=stdin,
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"the {step} step failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


def measure(targets: tuple[int, ...] = TARGETS, jobs: int | None = None) -> dict[str, Any]:
    """Capture every launch (interpreter child), compile each distinct one for ``targets``
    (compiler child): the report's data, ``{"launches": [...], "compiled": [...]}``."""
    launches = _child("--capture", interpret=True)
    distinct = [asdict(x) for x in unique_launches([Launch(**x) for x in launches])]
    extra = ("--targets", ",".join(map(str, targets))) + (("--jobs", str(jobs)) if jobs else ())
    compiled = _child("--compile", interpret=False, stdin=json.dumps(distinct), extra=extra)
    return {"launches": launches, "compiled": compiled}


# --------------------------------------------------------------------------------------
# Occupancy, floors, checks, the report
# --------------------------------------------------------------------------------------


def occupancy(registers: int, num_warps: int, shared: int, limits: SMLimits) -> dict[str, Any]:
    """Resident blocks and warps per SM allowed by registers, warps, blocks and shared memory,
    and which of them binds (see the module docstring)."""
    per_warp = math.ceil(registers * 32 / limits.register_unit) * limits.register_unit
    by = {"registers": (limits.registers // per_warp) // num_warps, "warps": limits.max_warps // num_warps,
          "blocks": limits.max_blocks,
          "shared memory": limits.shared_bytes // shared if shared else limits.max_blocks}
    blocks = min(by.values())
    return {"blocks": blocks, "warps": blocks * num_warps, "limited_by": min(by, key=by.get),
            "warps_by_registers": by["registers"] * num_warps}


FLOOR_VARIANTS = {  # the launches of the released model the floors table shows (the GPU bench's cases)
    "rmsnorm_modulate": "bfloat16", "layernorm_modulate": "bfloat16 affine", "rope": ("bfloat16 2-D", "bfloat16 1-D"),
    "swiglu": "bfloat16", "nearest_code": "float32",
    "cfg_sample": "float32 multinomial top-k on top-p off keep filtered",
}


def rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (launch, target): the launch, its compiled resources, occupancy and floors."""
    compiled = {(c["launch_key"], c["target"]): c for c in data["compiled"]}
    out = []
    for raw in data["launches"]:
        launch = Launch(**raw)
        for cc in sorted({c["target"] for c in data["compiled"]}):
            c = compiled[(launch.key(), cc)]
            row = {"family": launch.family, "kernel": launch.kernel.split(":")[1],
                   "variant": launch.variant + (" backward" if launch.phase == "backward" else ""),
                   "model": launch.model, "target": cc, "bytes_moved": launch.bytes_moved,
                   "constexprs": {k: launch.arguments[k] for k in launch.constexprs}, "grid": launch.grid,
                   "error": c.get("error", "")}
            if not row["error"]:
                row |= {k: c[k] for k in ("arch", "num_warps", "num_stages", "registers", "cubin_registers", "spill_stores",
                                          "spill_loads", "stack_frame", "shared")}
                row |= occupancy(c["registers"], c["num_warps"], c["shared"], SM_LIMITS[cc])
                row["floor_us"] = {gpu: launch.bytes_moved / bw * 1e6 for gpu, (bw, _) in HBM_BANDWIDTH.items()}
            out.append(row)
    return out


def violations(table: list[dict[str, Any]]) -> list[str]:
    """What breaks the limits: a compile error anywhere; at the released shapes a spill, or a
    memory-bound kernel held below MIN_RESIDENT_WARPS by its registers (unless excepted)."""
    found = []
    for r in table:
        where = f"{r['family']} {r['kernel']} [{r['variant']}] {r['model']} sm_{r['target']}"
        if r["error"]:
            found.append(f"{where}: compile error: {r['error']}")
            continue
        if r["model"] != RELEASED:
            continue
        if r["spill_stores"] or r["spill_loads"]:
            found.append(f"{where}: spills {r['spill_stores']} B stores / {r['spill_loads']} B loads per thread")
        if (r["family"] not in COMPUTE_BOUND and r["family"] not in REGISTER_EXCEPTIONS
                and r["warps_by_registers"] < MIN_RESIDENT_WARPS):
            found.append(f"{where}: {r['registers']} registers x {r['num_warps']} warps allow "
                         f"{r['warps_by_registers']} resident warps per SM (< {MIN_RESIDENT_WARPS})")
    return found


def summary(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per kernel and target over all its variants: the largest registers / spills / shared
    memory and the fewest resident warps, separately for each model's shapes."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in table:
        if not r["error"]:
            groups.setdefault((r["family"], r["kernel"], r["model"], r["target"]), []).append(r)
    out = []
    for (family, kernel, model, cc), rs in groups.items():
        worst = min(rs, key=lambda r: (r["warps"], -r["registers"]))
        out.append({"family": family, "kernel": kernel, "model": model, "target": cc, "variants": len(rs),
                    "num_warps": sorted({r["num_warps"] for r in rs}),
                    "registers": max(r["registers"] for r in rs),
                    "spill_bytes": max(r["spill_stores"] + r["spill_loads"] for r in rs),
                    "shared": max(r["shared"] for r in rs), "warps": worst["warps"], "blocks": worst["blocks"],
                    "limited_by": worst["limited_by"], "worst_variant": worst["variant"]})
    return out


def floors(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The released model's launches that the GPU bench times, with bytes and floor times."""
    out, seen = [], set()
    for r in table:
        wanted = FLOOR_VARIANTS.get(r["family"])
        wanted = (wanted,) if isinstance(wanted, str) else wanted or ()
        key = (r["family"], r["kernel"], r["variant"])
        if (r["model"] == RELEASED and r["variant"].removesuffix(" backward") in wanted and not r["error"]
                and key not in seen):
            seen.add(key)
            out.append({"family": r["family"], "kernel": r["kernel"], "variant": r["variant"], "grid": r["grid"],
                        "bytes_moved": r["bytes_moved"], "floor_us": r["floor_us"]})
    return out


def to_markdown_summary(report: dict[str, Any]) -> str:
    """The two tables the README shows (resources per kernel and target; the floors)."""
    lines = [f"Compiled for sm_80 and sm_90 without a GPU by `python -m hart_edu.kernels.resources` "
             f"(Triton {report['triton']}, ptxas of its wheel); {report['compiled_kernels']} distinct kernels "
             f"from {report['launches']} launches. Per kernel, over its variants (dtypes, switches) at the "
             f"released model's shapes: the most registers per thread and spill bytes, and the fewest resident "
             f"warps per SM they allow (of 64; the limit that binds). Full table: "
             f"[docs/kernel_resources.md](docs/kernel_resources.md).", "",
             "| kernel | variants | warps/block | sm_80 regs | sm_80 resident warps | sm_90 regs | "
             "sm_90 resident warps | spill bytes | shared bytes |",
             "|---|---|---|---|---|---|---|---|---|"]
    by = {(s["family"], s["kernel"], s["target"]): s for s in report["summary"] if s["model"] == RELEASED}
    for family, kernel in dict.fromkeys((s["family"], s["kernel"]) for s in report["summary"]):
        a, b = by.get((family, kernel, 80)), by.get((family, kernel, 90))
        if a is None or b is None:
            continue
        lines.append(f"| `{family}.{kernel}` | {a['variants']} | {'/'.join(map(str, a['num_warps']))} | "
                     f"{a['registers']} | {a['warps']} ({a['limited_by']}) | {b['registers']} | "
                     f"{b['warps']} ({b['limited_by']}) | {max(a['spill_bytes'], b['spill_bytes'])} | "
                     f"{max(a['shared'], b['shared'])} |")
    gpus = list(HBM_BANDWIDTH)
    lines += ["", "The floor each launch is held to at the released shapes: the bytes it must move "
              "(every tensor it is given read or written once) over the HBM bandwidth, "
              + " and ".join(f"{bw / 1e12:.2f} TB/s on the {g} ({src})" for g, (bw, src) in HBM_BANDWIDTH.items())
              + ". The compute-bound nearest_code is held to FLOP/s in the benchmark instead.", "",
              "| launch (released shapes) | MB moved | " + " | ".join(f"{g} floor µs" for g in gpus) + " |",
              "|---|---|" + "---|" * len(gpus)]
    for f in report["floors"]:
        lines.append(f"| `{f['family']}.{f['kernel']}` {f['variant']} | {f['bytes_moved'] / 1e6:,.1f} | " + " | ".join(f"{f['floor_us'][g]:,.1f}" for g in gpus) + " |")
    return "\n".join(lines)


def to_markdown(report: dict[str, Any]) -> str:
    """docs/kernel_resources.md: how it was made, the summary, and every launch on every target."""
    lines = ["# Triton kernels on sm_80 and sm_90: resources and memory floors", "",
             f"Generated by `python -m hart_edu.kernels.resources --write` on {report['date']} "
             f"(Triton {report['triton']}, torch {report['torch']}); do not edit by hand. How: see the docstring "
             "of `kernels/resources.py`. No GPU ran anything here: these are compiler figures.", "",
             f"Occupancy: {LIMITS_SOURCE}. Memory-bound kernels must keep at least {MIN_RESIDENT_WARPS} "
             f"resident warps per SM by their registers; compute-bound: {', '.join(sorted(COMPUTE_BOUND))}.", "",
             "## Summary", "", to_markdown_summary(report).replace("(docs/kernel_resources.md)", "(#every-launch)"),
             "", "## Every launch", "",
             "| kernel | variant | model | target | warps | regs | spill B (st/ld) | shared B | resident warps "
             "(blocks; bound) | MB moved | " + " | ".join(f"{g} µs" for g in HBM_BANDWIDTH) + " |",
             "|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(HBM_BANDWIDTH)]
    for r in report["rows"]:
        if r["error"]:
            lines.append(f"| `{r['family']}.{r['kernel']}` | {r['variant']} | {r['model']} | sm_{r['target']} | "
                         f"compile error: {r['error'][:200]} |")
            continue
        lines.append(f"| `{r['family']}.{r['kernel']}` | {r['variant']} | {r['model']} | {r['arch']} | "
                     f"{r['num_warps']} | {r['registers']} | {r['spill_stores']}/{r['spill_loads']} | {r['shared']} | "
                     f"{r['warps']} ({r['blocks']}; {r['limited_by']}) | {r['bytes_moved'] / 1e6:,.2f} | "
                     + " | ".join(f"{r['floor_us'][g]:,.2f}" for g in HBM_BANDWIDTH) + " |")
    return "\n".join(lines) + "\n"


def build_report(data: dict[str, Any], seconds: float) -> dict[str, Any]:
    import datetime

    import torch
    import triton

    table = rows(data)
    return {"tool": "python -m hart_edu.kernels.resources",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "triton": triton.__version__, "torch": torch.__version__, "seconds": round(seconds, 1),
            "targets": sorted({c["target"] for c in data["compiled"]}),
            "launches": len(data["launches"]), "compiled_kernels": len({c["launch_key"] for c in data["compiled"]}),
            "sm_limits": {str(cc): asdict(v) for cc, v in SM_LIMITS.items()}, "sm_limits_source": LIMITS_SOURCE,
            "hbm_bandwidth": {g: {"bytes_per_s": bw, "source": src} for g, (bw, src) in HBM_BANDWIDTH.items()},
            "min_resident_warps": MIN_RESIDENT_WARPS, "register_exceptions": REGISTER_EXCEPTIONS,
            "violations": violations(table), "summary": summary(table), "floors": floors(table), "rows": table}


def write_report(report: dict[str, Any], root: Path) -> list[Path]:
    """docs/kernel_resources.json and .md under ``root``, and the README's table between its markers."""
    stem = root / REPORT_STEM
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    stem.with_suffix(".md").write_text(to_markdown(report), encoding="utf-8")
    written = [stem.with_suffix(".json"), stem.with_suffix(".md")]
    readme = root / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8")
        if README_BEGIN in text and README_END in text:
            head, rest = text.split(README_BEGIN, 1)
            _, tail = rest.split(README_END, 1)
            readme.write_text(f"{head}{README_BEGIN}\n{to_markdown_summary(report)}\n{README_END}{tail}", encoding="utf-8")
            written.append(readme)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hart_edu.kernels.resources", description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true",
                        help="write docs/kernel_resources.{json,md} and the README's table (repository root)")
    parser.add_argument("--targets", default=",".join(map(str, TARGETS)), help="compute capabilities (default: 80,90)")
    parser.add_argument("--jobs", type=int, default=None, help="compiler processes (default: one per CPU)")
    parser.add_argument("--capture", action="store_true", help=argparse.SUPPRESS)  # the two child steps
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    targets = tuple(int(t) for t in args.targets.split(","))
    if args.capture:
        json.dump([asdict(x) for x in capture(model_shapes())], sys.stdout)
        return 0
    if args.compile:
        json.dump(compile_all(json.load(sys.stdin), targets, args.jobs), sys.stdout)
        return 0
    start = time.perf_counter()
    report = build_report(measure(targets, args.jobs), time.perf_counter() - start)
    print(to_markdown_summary(report))
    if args.write:
        from hart_edu.paths import REPO_ROOT

        for path in write_report(report, REPO_ROOT):
            print(f"wrote {path}")
    for v in report["violations"]:
        print(f"LIMIT: {v}", file=sys.stderr)
    return 1 if report["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
