"""One transformer block's work at the 64x64 scale on this CPU: the five linear layers (float32, then
dynamic int8) and the attention over the 9751 cached keys (SDPA, float32). Prints seconds."""
import time, os, warnings, json, torch, torch.nn as nn, torch.nn.functional as F
warnings.simplefilter("ignore")
from hart_edu.quantize import quantize_int8_
torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
N, L, C, H, K = 2, 4096, 1536, 24, 9751
x = torch.randn(N * L, C, generator=g)
h = torch.randn(N * L, 4096, generator=g)
layers = {"qkv": nn.Linear(C, 3 * C, bias=False), "proj": nn.Linear(C, C), "gate": nn.Linear(C, 4096, bias=False),
          "up": nn.Linear(C, 4096, bias=False), "down": nn.Linear(4096, C, bias=False)}
for m in layers.values():
    nn.init.normal_(m.weight, 0, 0.02, generator=g); m.eval()
q = torch.randn(N, H, L, 64, generator=g); k = torch.randn(N, H, K, 64, generator=g); v = torch.randn(N, H, K, 64, generator=g)
res = {"load before": os.getloadavg()}
with torch.no_grad():
    def lin_time():
        t = time.perf_counter()
        for name, m in layers.items():
            m(h if name == "down" else x)
        return time.perf_counter() - t
    lin_time(); res["linear layers of one block, float32 (s)"] = round(min(lin_time() for _ in range(2)), 2)
    t = time.perf_counter(); F.scaled_dot_product_attention(q, k, v, scale=0.25 / 8); res["attention of one block (SDPA, float32) (s)"] = round(time.perf_counter() - t, 2)
    seq = nn.Sequential(*layers.values()).eval(); quantize_int8_(seq, keep_float=())
    layers = dict(zip(layers, seq))
    lin_time(); res["linear layers of one block, int8 dynamic (s)"] = round(min(lin_time() for _ in range(2)), 2)
res["load after"] = os.getloadavg()
print(json.dumps(res, indent=1))
