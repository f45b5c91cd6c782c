"""int8's cost in prompt-following on the shipped tiny model (issue 16 item 2).

The held-out prompt-following table of ``python -m hart_edu.eval --captions 200`` (the shipped
sampling settings of weights/tiny/generation_config.json, seed 0), once with the float32
pipeline and once with ``--quantize int8`` (hart_edu.quantize.quantize_pipeline_int8_: the text
encoder weight-only, the transformer dynamic int8, the KV cache in bfloat16; the same generator
seed), plus how far the two runs' images are apart. Run from the repository root:

    .venv/bin/python docs/cpu/scripts/int8_fidelity_tiny.py --json docs/cpu/int8-fidelity-tiny.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from hart_edu.eval import ATTRIBUTES, evaluate, heldout_scenes, pipeline_generator
from hart_edu.generation_config import read_generation_config
from hart_edu.paths import TINY_WEIGHTS
from hart_edu.quantize import quantize_pipeline_int8_
from hart_edu.sampler import HARTPipeline


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    scenes = heldout_scenes(args.n, seed=0)
    results, images = {}, {}
    for label in ("float32", "int8"):
        pipe = HARTPipeline.from_pretrained(TINY_WEIGHTS)
        if label == "int8":
            print(quantize_pipeline_int8_(pipe).line())
        settings = read_generation_config(TINY_WEIGHTS)  # the shipped sampling settings, as hart-edu eval
        gen = pipeline_generator(pipe, settings, torch.Generator().manual_seed(args.seed))
        t0 = time.perf_counter()
        with torch.no_grad():
            r = evaluate(gen, scenes, 50)
        results[label] = {"scores": r.scores, "seconds": round(time.perf_counter() - t0, 2), "settings": settings.to_dict()}
        images[label] = r.images_B3HW
        print(f"{label}: " + " ".join(f"{k}={r.scores[k]:.3f}" for k in ATTRIBUTES + ("overall",)))
    diff = (images["float32"] - images["int8"]).abs()  # model range [-1, 1]
    per_image = diff.flatten(1).amax(1)
    results["images"] = {"n": args.n, "mean |difference| (model range [-1, 1])": round(diff.mean().item(), 4),
                         "images identical": int((per_image == 0).sum()),
                         "images differing by more than 0.1 somewhere": int((per_image > 0.1).sum())}
    print(results["images"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
