"""Time each Triton kernel against its eager PyTorch reference and ``torch.compile`` of it.

Run on a machine with a CUDA device::

    python -m hart_edu.kernels.bench            # HART 0.7B 1024px sizes, bfloat16 activations
    python -m hart_edu.kernels.bench --dtype float16

For each case it prints the time (ms, median of ``triton.testing.do_bench``), the bandwidth
the Triton kernel reaches (GB/s: bytes it must read and write, divided by its time), that as a
fraction of the device's peak when PyTorch reports the memory clock and bus width, and the
speed-up over eager and over ``torch.compile``. The sizes are those of the released HART 0.7B
1024px model (C = 1536, 24 heads of 64, SwiGLU width 4096, V = 4096 codes of 32 channels,
L = 300 context + 9450 image tokens in a training sequence, 4096 tokens in the last stage,
batch 2 = one prompt with its CFG twin); change them in :class:`BenchSizes`.
(``cfg_sample``'s eager reference draws its Philox uniforms with integer PyTorch ops, so its
ratio is against that reference, not against the model's ``torch.multinomial`` sampling.)

Without a CUDA device it prints that the benchmark needs one and exits with status 0: timings
from the Triton interpreter would measure Python, not the kernels.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import backend
from .cfg_sample import cfg_sample_reference, cfg_sample_triton
from .nearest_code import nearest_code_reference, nearest_code_triton
from .rmsnorm_modulate import rmsnorm_modulate_reference, rmsnorm_modulate_triton
from .rope import rope_reference, rope_triton
from .swiglu import swiglu_reference, swiglu_triton


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
    """One benchmark: the same computation as reference and Triton, and the bytes it moves."""

    name: str
    reference: Callable[[], object]
    triton: Callable[[], object]
    bytes_moved: int  # the least a kernel must read + write
    grad_inputs: tuple[torch.Tensor, ...] = ()  # leaves whose .grad is reset between runs


def _forward_backward(fn: Callable[..., torch.Tensor], args: tuple, grad_out: torch.Tensor) -> Callable[[], object]:
    return lambda: fn(*args).backward(grad_out)


def make_cases(sizes: BenchSizes, device: torch.device, dtype: torch.dtype, generator: torch.Generator,
               compile_reference: Callable[[Callable], Callable] | None = None) -> list[Case]:
    """The benchmark cases at ``sizes`` (inputs drawn with ``generator`` on ``device``).

    ``compile_reference`` (e.g. ``torch.compile``) wraps each reference function; None: eager."""
    wrap = compile_reference or (lambda f: f)
    B, C, H = sizes.batch, sizes.embed_dim, sizes.num_heads
    d, esize = C // H, torch.finfo(dtype).bits // 8

    def randn(*shape, dt=dtype, grad=False):
        return torch.randn(*shape, generator=generator, dtype=torch.float32, device="cpu").to(device, dt).requires_grad_(grad)

    cases = []
    for L, what in ((sizes.train_tokens, "train seq"), (sizes.last_stage_tokens, "last stage")):
        x, w, s, b = randn(B, L, C), randn(C), randn(B, 1, C), randn(B, 1, C)
        args = (x, w, s, b, 1e-6)
        cases.append(Case(f"rmsnorm_modulate fwd ({what}, L={L})", lambda a=args: wrap(rmsnorm_modulate_reference)(*a),
                          lambda a=args: rmsnorm_modulate_triton(*a), 2 * x.numel() * esize))
    L = sizes.train_tokens
    leaves = (randn(B, L, C, grad=True), randn(C, grad=True), randn(B, 1, C, grad=True), randn(B, 1, C, grad=True))
    g = randn(B, L, C)
    cases.append(Case(f"rmsnorm_modulate fwd+bwd (train seq, L={L})",
                      _forward_backward(wrap(rmsnorm_modulate_reference), (*leaves, 1e-6), g),
                      _forward_backward(rmsnorm_modulate_triton, (*leaves, 1e-6), g),
                      (2 + 3) * g.numel() * esize, leaves))

    qkv = randn(B, L, 3, H, d)
    q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # strided views, as in the attention layer
    pos = (torch.rand(B, L, 2, generator=generator) * sizes.patch_nums[-1]).to(device)
    cases.append(Case(f"rope 2-D q+k (train seq, L={L})", lambda: wrap(rope_reference)(q, k, pos),
                      lambda: rope_triton(q, k, pos), 4 * q.numel() * esize + pos.numel() * 4))

    a, bb = randn(B, L, sizes.mlp_hidden), randn(B, L, sizes.mlp_hidden)
    cases.append(Case(f"swiglu fwd (train seq, L={L})", lambda: wrap(swiglu_reference)(a, bb),
                      lambda: swiglu_triton(a, bb), 3 * a.numel() * esize))
    ga, gb, gy = randn(B, L, sizes.mlp_hidden, grad=True), randn(B, L, sizes.mlp_hidden, grad=True), randn(B, L, sizes.mlp_hidden)
    cases.append(Case(f"swiglu fwd+bwd (train seq, L={L})", _forward_backward(wrap(swiglu_reference), (ga, gb), gy),
                      _forward_backward(swiglu_triton, (ga, gb), gy), (3 + 5) * ga.numel() * esize, (ga, gb)))

    rows = sizes.images_quantised * sum(p * p for p in sizes.patch_nums)
    z, e = randn(rows, sizes.vae_channels, dt=torch.float32), randn(sizes.vocab_size, sizes.vae_channels, dt=torch.float32)
    cases.append(Case(f"nearest_code fp32 (N={rows}, V={sizes.vocab_size}, C={sizes.vae_channels})",
                      lambda: wrap(nearest_code_reference)(z, e), lambda: nearest_code_triton(z, e),
                      (z.numel() + e.numel()) * 4 + rows * 8))

    l, V = sizes.last_stage_tokens, sizes.vocab_size
    logits = randn(B, l, V, dt=torch.float32)  # B = 2: one prompt's conditional and unconditional rows
    cases.append(Case(f"cfg_sample top-k 300 top-p 0.95 (last stage, l={l}, V={V})",
                      lambda: wrap(cfg_sample_reference)(logits, 4.5, 300, 0.95, 0),
                      lambda: cfg_sample_triton(logits, 4.5, 300, 0.95, 0), logits.numel() * 4 + l * 8))
    return cases


def peak_bandwidth_gbs(device: torch.device) -> float | None:
    """2 x memory clock x bus width (double data rate), when PyTorch reports both; else None."""
    props = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", None), getattr(props, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hart_edu.kernels.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16",
                        help="activation dtype (nearest_code always runs in float32)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    args = parser.parse_args(argv)

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
    generator = torch.Generator().manual_seed(0)
    peak = peak_bandwidth_gbs(device)
    print(f"device: {torch.cuda.get_device_name(device)}; activations {args.dtype}; "
          f"peak memory bandwidth {'%.0f GB/s' % peak if peak else 'not reported'}")
    eager_cases = make_cases(BenchSizes(), device, dtype, generator)
    compiled_cases = (None if args.no_compile else
                      make_cases(BenchSizes(), device, dtype, torch.Generator().manual_seed(0), torch.compile))

    header = f"{'case':58s} {'eager ms':>9s} {'compile ms':>10s} {'triton ms':>9s} {'triton GB/s':>11s} " \
             f"{'of peak':>7s} {'eager/triton':>12s} {'compile/triton':>14s}"
    print(header)
    print("-" * len(header))
    for i, case in enumerate(eager_cases):
        reset = list(case.grad_inputs) or None
        eager_ms = do_bench(case.reference, grad_to_none=reset)
        triton_ms = do_bench(case.triton, grad_to_none=reset)
        compile_ms = None
        if compiled_cases is not None:
            try:
                compiled = compiled_cases[i]
                compile_ms = do_bench(compiled.reference, grad_to_none=list(compiled.grad_inputs) or None)
            except Exception as err:  # a compile failure is reported, never replaced by a number
                print(f"  torch.compile failed for {case.name}: {type(err).__name__}: {err}", file=sys.stderr)
        gbs = case.bytes_moved / triton_ms / 1e6
        print(f"{case.name:58s} {eager_ms:9.3f} {'-' if compile_ms is None else f'{compile_ms:.3f}':>10s} "
              f"{triton_ms:9.3f} {gbs:11.0f} {'-' if peak is None else f'{gbs / peak:.0%}':>7s} "
              f"{eager_ms / triton_ms:12.2f} {'-' if compile_ms is None else f'{compile_ms / triton_ms:.2f}':>14s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
