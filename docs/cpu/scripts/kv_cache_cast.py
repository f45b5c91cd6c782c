"""What a bfloat16 KV cache costs in time (``--quantize int8``): one block's attention at the
64x64 scale of the 1024px model (2 CFG rows x 24 heads x 4096 queries over 9750 keys of 64),
with the float32 cache against the bfloat16 cache cast back to float32 (what
``hart_edu.ar_transformer.LlamaAttention`` does), side by side in one process, alternating,
3 rounds each. Run from the repository root on an idle machine:

    .venv/bin/python docs/cpu/scripts/kv_cache_cast.py --json docs/cpu/kv-cache-bf16-avx2.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F

from hart_edu.cpu_dtype import cpu_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    N, H, L, K, d = 2, 24, 4096, 9750, 64
    q = torch.randn(N, H, L, d, generator=g)
    k32, v32 = torch.randn(N, H, K, d, generator=g), torch.randn(N, H, K, d, generator=g)
    k16, v16 = k32.bfloat16(), v32.bfloat16()
    runs = {
        "float32 cache": lambda: F.scaled_dot_product_attention(q, k32, v32, scale=0.03),
        "bfloat16 cache, cast to float32": lambda: F.scaled_dot_product_attention(
            q, k16.to(torch.float32), v16.to(torch.float32), scale=0.03),
        "the cast alone": lambda: (k16.to(torch.float32), v16.to(torch.float32)),
    }
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    load_before = list(os.getloadavg())
    with torch.no_grad():
        for _ in range(3):
            for name, fn in runs.items():
                t = time.perf_counter()
                fn()
                seconds[name].append(round(time.perf_counter() - t, 3))
    best = {name: min(s) for name, s in seconds.items()}
    record = {"about": __doc__.splitlines()[0], "cpu": cpu_features().as_dict(), "torch": torch.__version__,
              "threads": args.threads, "load average before": load_before, "seconds (3 rounds)": seconds,
              "ratio bfloat16 cache / float32 cache (best of 3)":
                  round(best["bfloat16 cache, cast to float32"] / best["float32 cache"], 3),
              "cache bytes per block (float32, bfloat16)": [2 * k32.numel() * 4, 2 * k16.numel() * 2]}
    with open(args.json, "w", encoding="utf-8") as f:
        f.write(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "cpu"}, indent=1))


if __name__ == "__main__":
    main()
