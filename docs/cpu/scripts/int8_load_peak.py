"""The peak memory of loading the released text encoder for ``--quantize int8`` (issue 16).

``HARTPipeline.from_pretrained(..., quantize="int8")`` reads a text encoder stored in bfloat16
(Qwen2-VL-1.5B ships so) in bfloat16 and quantizes it layer by layer from the exact float32
values; before, it was read in float32 and quantized afterwards. Both give the same layers
(tests/test_cpu_dtype.py); this measures their peak resident memory, each in a fresh process,
on a random model of the released architecture saved in bfloat16 (hart_edu.profile's
RELEASED_TEXT_ENCODER; 1.54B parameters, 2.9 GB of safetensors). Run from the repository root:

    .venv/bin/python docs/cpu/scripts/int8_load_peak.py --folder /tmp/qwen_bf16 --json docs/cpu/int8-load-peak.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import sys, torch
from pathlib import Path
from hart_edu.text_encoder import load_text_model
from hart_edu.quantize import quantize_text_model_int8_
from hart_edu.memory import map_large_blocks
map_large_blocks()
way, folder = sys.argv[1], sys.argv[2]
model = load_text_model(folder, torch.float32 if way == "float32" else torch.bfloat16)
quantize_text_model_int8_(model)
hwm = [int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM")][0]
rss = [int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS")][0]
print(hwm * 1024, rss * 1024)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True, help="where the random bfloat16 model is (made if missing)")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    if not (args.folder / "config.json").is_file():
        import torch
        import transformers

        from hart_edu.profile import RELEASED_TEXT_ENCODER

        config = transformers.Qwen2Config(**RELEASED_TEXT_ENCODER)
        torch.manual_seed(0)  # a script's random model: the numbers do not matter, only the shapes
        transformers.Qwen2Model(config).to(torch.bfloat16).save_pretrained(args.folder)
    gib = 1024**3
    record = {"about": __doc__.splitlines()[0], "folder bytes": sum(p.stat().st_size for p in args.folder.iterdir())}
    for way in ("float32", "bfloat16"):
        out = subprocess.run([sys.executable, "-c", CHILD, way, str(args.folder)], capture_output=True, text=True,
                             check=True)
        peak, rss = map(int, out.stdout.split()[-2:])
        record[f"read in {way}, then int8: peak RSS (GiB)"] = round(peak / gib, 3)
        record[f"read in {way}, then int8: RSS after (GiB)"] = round(rss / gib, 3)
        print(way, round(peak / gib, 2), round(rss / gib, 2), flush=True)
    args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
