"""Component-level ratios on this CPU, each set measured side by side in one process (issue 16
item 3): on a shared machine read the ratios, not the seconds. Run from the repository root:

    .venv/bin/python docs/cpu/scripts/component_ratios.py --json docs/cpu/component-ratios-avx2.json

* linear layers of the released transformer's widths: float32 vs torch.ao dynamic int8 vs bfloat16;
* attention at the 64x64 scale (a slice of its 4096 queries against all 9751 keys, 24 heads of
  64, the two CFG rows): SDPA's default CPU kernel vs its math kernel;
* the VAE decoder (released tokenizer, random weights) on a small latent: contiguous vs
  channels-last, float32;
* torch.compile (Inductor, freezing) of one SwiGLU MLP of the released width vs eager float32.
Each entry: the minimum over repeats, alternating the variants.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

warnings.simplefilter("ignore", DeprecationWarning)


def race(fns: dict, repeats: int) -> dict[str, float]:
    """min seconds of each function, the variants alternating, after one warm-up call each."""
    with torch.no_grad():
        for f in fns.values():
            f()
        times = {k: [] for k in fns}
        for _ in range(repeats):
            for k, f in fns.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    return {k: round(min(v), 4) for k, v in times.items()}


def with_ratio(times: dict[str, float], base: str) -> dict:
    return {"seconds (min)": times, f"speed-up over {base}": {k: round(times[base] / v, 3) for k, v in times.items()}}


def linears(repeats: int) -> dict:
    from hart_edu.quantize import quantize_int8_

    out = {}
    g = torch.Generator().manual_seed(0)
    for cin, cout in ((1536, 4096), (4096, 1536), (1536, 1536)):
        lin = nn.Linear(cin, cout, bias=False).eval()
        nn.init.normal_(lin.weight, 0, 0.02, generator=g)
        x = torch.randn(1024, cin, generator=g)
        bf = nn.Linear(cin, cout, bias=False).to(torch.bfloat16).eval()
        bf.weight.data.copy_(lin.weight.data)
        q = nn.Sequential(nn.Linear(cin, cout, bias=False)).eval()
        q[0].weight.data.copy_(lin.weight.data)
        quantize_int8_(q)
        xb = x.bfloat16()
        out[f"{cin}->{cout}, 1024 tokens"] = with_ratio(
            race({"float32": lambda: lin(x), "int8 dynamic": lambda: q(x), "bfloat16": lambda: bf(xb)}, repeats),
            "float32")
    return out


def attention(repeats: int) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 24, 256, 64, generator=g)
    k = torch.randn(2, 24, 9751, 64, generator=g)
    v = torch.randn(2, 24, 9751, 64, generator=g)
    scale = 0.25 / 8

    def default():
        return F.scaled_dot_product_attention(q, k, v, scale=scale)

    def math():
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, scale=scale)

    def flash():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, scale=scale)

    diff = (default() - math()).abs().max().item()
    return {"256 of 4096 queries x 9751 keys": with_ratio(race({"default": default, "flash": flash, "math": math},
                                                               repeats), "default"),
            "max |default - math|": diff}


def vae(repeats: int) -> dict:
    from hart_edu.hybrid_tokenizer import HybridTokenizer, TokenizerConfig
    from hart_edu.profile import RELEASED_TOKENIZER, materialise_random, parameters_on_meta

    with parameters_on_meta():
        tok = HybridTokenizer(TokenizerConfig(**RELEASED_TOKENIZER))
    materialise_random(tok, torch.device("cpu"), torch.float32, torch.Generator().manual_seed(0))
    dec = tok.decoder
    z = torch.randn(1, 32, 16, 16, generator=torch.Generator().manual_seed(1))  # 256px image
    plain = dec(z)
    import copy

    cl = copy.deepcopy(dec).to(memory_format=torch.channels_last)
    zc = z.contiguous(memory_format=torch.channels_last)
    diff = (cl(zc) - plain).abs().max().item()
    return {"decoder, 16x16 latent (256px)": with_ratio(race({"float32": lambda: dec(z), "float32 channels-last":
                                                              lambda: cl(zc)}, repeats), "float32"),
            "max |channels-last - contiguous|": diff}


def compiled_mlp(repeats: int) -> dict:
    from hart_edu.ar_transformer import LlamaMLP

    g = torch.Generator().manual_seed(0)
    mlp = LlamaMLP(1536, 4096).eval()
    for p in mlp.parameters():
        nn.init.normal_(p, 0, 0.02, generator=g)
    x = torch.randn(1, 1024, 1536, generator=g)
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    t0 = time.perf_counter()
    compiled = torch.compile(mlp)
    with torch.no_grad():
        compiled(x)
    compile_s = time.perf_counter() - t0
    diff = (compiled(x) - mlp(x)).abs().max().item()
    return {"SwiGLU MLP 1536-4096, 1024 tokens": with_ratio(race({"eager": lambda: mlp(x), "inductor (freezing)":
                                                                  lambda: compiled(x)}, repeats), "eager"),
            "compile seconds (first call)": round(compile_s, 1), "max |compiled - eager|": diff}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default="linears,attention,vae,compile")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    report = {"torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability(),
              "threads": args.threads}
    parts = {"linears": linears, "attention": attention, "vae": vae, "compile": compiled_mlp}
    for name in args.only.split(","):
        load = os.getloadavg()
        report[name] = parts[name](args.repeats)
        report[name]["load average (1, 5, 15 min) before"] = load
        print(name, json.dumps(report[name], indent=1), flush=True)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
