"""int8's cost on the released architecture with random weights (issue 16 item 2): the largest
difference of the first scales' logits, and of the text encoder's output, against float32.

* transformer: hart-0.7b-1024px with seeded random weights (float32), one prompt, the codes of
  the first K scales given (random, the same for both runs, so each scale's logits see the same
  history); the logits of those K scales are recorded, then the same model's linear layers are
  quantized in place (hart_edu.quantize.quantize_int8_) and the run repeated. The KV cache stays
  float32 here: this measures the int8 layers alone (``--quantize int8`` also stores the cache in
  bfloat16, whose rounding tests/test_cpu_dtype.py bounds). The text context
  comes from a 1-layer random text encoder of the released width (the same for both runs).
* text encoder: Qwen2-VL-1.5B's language model at its released size, random weights, 300 random
  token ids; float32, then int8 in place: dynamic int8, and (rebuilt, the same numbers)
  weight-only int8, what ``--quantize int8`` uses for the text encoder.

Also the wall time of the K scales in both runs (same process, one after the other; on a busy
machine read the ratio, not the seconds). Run from the repository root:

    .venv/bin/python docs/cpu/scripts/int8_fidelity_release.py --json docs/cpu/int8-fidelity-1024px.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from hart_edu.profile import ARCHITECTURES, RELEASED_TEXT_ENCODER, materialise_random, parameters_on_meta
from hart_edu.profile import random_release_pipeline
from hart_edu.quantize import quantize_int8_


class Enough(Exception):
    """Raised by the logits hook once K scales are recorded."""


def scale_logits(pipe, K: int, given: list[torch.Tensor]) -> tuple[list[torch.Tensor], float]:
    logits: list[torch.Tensor] = []

    def hook(_module, _inputs, out):
        logits.append(out.detach().float().clone())
        if len(logits) == K:
            raise Enough

    handle = pipe.transformer.head.register_forward_hook(hook)
    t0 = time.perf_counter()
    try:
        pipe(["a red cat on a mat"], seed=1, progress=False, given_indices=given)
    except Enough:
        pass
    finally:
        handle.remove()
    return logits, time.perf_counter() - t0


def compare(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    d = (a - b).abs()
    return {"max |difference|": round(d.max().item(), 5), "max |float32 value|": round(a.abs().max().item(), 5),
            "relative (max diff / max value)": round((d.max() / a.abs().max()).item(), 5),
            "mean |difference|": round(d.mean().item(), 6)}


def transformer_part(K: int) -> dict:
    base = ARCHITECTURES["1024px"]
    small_text = {**RELEASED_TEXT_ENCODER, "num_hidden_layers": 1, "vocab_size": 1024}
    arch = dataclasses.replace(base, name="1024px, 1-layer text encoder", text_encoder=small_text)
    pipe = random_release_pipeline(arch, dtype=torch.float32, seed=0, prompts=("a red cat on a mat",))
    g = torch.Generator().manual_seed(5)
    pns = pipe.transformer.config.patch_nums
    given = [torch.randint(0, pipe.transformer.vocab_size, (1, p * p), generator=g) for p in pns[:K]]
    f32, t_f32 = scale_logits(pipe, K, given)
    summary = quantize_int8_(pipe.transformer)
    q, t_q = scale_logits(pipe, K, given)
    rows = []
    for si, (a, b) in enumerate(zip(f32, q)):
        same_argmax = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
        rows.append({"scale": f"{pns[si]}x{pns[si]}", **compare(a, b), "same argmax": round(same_argmax, 4)})
    return {"int8": summary.line(), "scales": rows, "seconds for these scales": {
        "float32": round(t_f32, 2), "int8": round(t_q, 2), "float32 / int8": round(t_f32 / t_q, 3)}}


def text_encoder_part(weight_only: bool) -> dict:
    import transformers

    config = transformers.Qwen2Config(**RELEASED_TEXT_ENCODER, attn_implementation="sdpa")
    with parameters_on_meta():
        model = transformers.Qwen2Model(config)
    materialise_random(model, torch.device("cpu"), torch.float32, torch.Generator().manual_seed(0))
    ids = torch.randint(0, config.vocab_size, (1, 300), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        t0 = time.perf_counter()
        a = model(input_ids=ids).last_hidden_state
        t_f32 = time.perf_counter() - t0
        summary = quantize_int8_(model, keep_float=(), weight_only=weight_only)
        t0 = time.perf_counter()
        b = model(input_ids=ids).last_hidden_state
        t_q = time.perf_counter() - t0
    return {"int8": summary.line(), "output (1, 300, 1536)": compare(a, b),
            "seconds": {"float32": round(t_f32, 2), "int8": round(t_q, 2), "float32 / int8": round(t_f32 / t_q, 3)}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scales", type=int, default=10, help="K: how many first scales (default 10: up to 27x27)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--parts", default="transformer,text dynamic,text weight-only")
    p.add_argument("--json", type=Path, default=None, help="written, or updated part by part when it exists")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    report = json.loads(args.json.read_text()) if args.json and args.json.exists() else {}
    parts = {"transformer": lambda: transformer_part(args.scales),
             "text dynamic": lambda: text_encoder_part(weight_only=False),
             "text weight-only": lambda: text_encoder_part(weight_only=True)}
    for name in args.parts.split(","):
        load = os.getloadavg()
        report[name] = {**parts[name](), "load average before": load, "torch threads": args.threads}
        print(name, json.dumps(report[name], indent=1), flush=True)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
