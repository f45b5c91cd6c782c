"""One transformer block's work at the 64x64 scale on this CPU: the five linear layers (float32,
then dynamic int8) and the attention over the 9751 cached keys (SDPA, float32). Prints seconds.
Random inputs of the released shapes (2 CFG rows x 4096 tokens, C = 1536, 24 heads of 64)."""

from __future__ import annotations

import json
import os
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from hart_edu.quantize import quantize_int8_

warnings.simplefilter("ignore", DeprecationWarning)
torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
N, L, C, H, K = 2, 4096, 1536, 24, 9751  # CFG rows, tokens of the scale, width, heads, cached keys
x_MC = torch.randn(N * L, C, generator=g)
h_MF = torch.randn(N * L, 4096, generator=g)
layers = {"qkv": nn.Linear(C, 3 * C, bias=False), "proj": nn.Linear(C, C), "gate": nn.Linear(C, 4096, bias=False),
          "up": nn.Linear(C, 4096, bias=False), "down": nn.Linear(4096, C, bias=False)}
for layer in layers.values():
    nn.init.normal_(layer.weight, 0, 0.02, generator=g)
    layer.eval()
q_NHLd = torch.randn(N, H, L, 64, generator=g)
k_NHKd = torch.randn(N, H, K, 64, generator=g)
v_NHKd = torch.randn(N, H, K, 64, generator=g)


def linears_seconds() -> float:
    t0 = time.perf_counter()
    for name, layer in layers.items():
        layer(h_MF if name == "down" else x_MC)
    return time.perf_counter() - t0


result = {"load before": os.getloadavg()}
with torch.no_grad():
    linears_seconds()
    result["linear layers of one block, float32 (s)"] = round(min(linears_seconds() for _ in range(2)), 2)
    t0 = time.perf_counter()
    F.scaled_dot_product_attention(q_NHLd, k_NHKd, v_NHKd, scale=0.25 / 8)
    result["attention of one block (SDPA, float32) (s)"] = round(time.perf_counter() - t0, 2)
    block = nn.Sequential(*layers.values()).eval()
    quantize_int8_(block, keep_float=())
    layers = dict(zip(layers, block))
    linears_seconds()
    result["linear layers of one block, int8 dynamic (s)"] = round(min(linears_seconds() for _ in range(2)), 2)
result["load after"] = os.getloadavg()
print(json.dumps(result, indent=1))
