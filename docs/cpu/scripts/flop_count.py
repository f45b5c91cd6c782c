"""How many floating-point operations one 1024px image costs (issue 16's time target, a lower bound).

The released architecture built on the meta device (shapes only, no numbers and no time), its
work counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add of every
matrix product and convolution): the transformer's context stage and 14 scales with both CFG
rows, split into the linear layers and the attention (on the meta device attention runs as its
math form, two batched products per block, so it is counted as ``bmm``), and the VAE decoder.
Run from the repository root:

    .venv/bin/python docs/cpu/scripts/flop_count.py --json docs/cpu/flops-1024px.json
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from hart_edu.ar_transformer import HARTTransformer, TransformerConfig
from hart_edu.hybrid_tokenizer import HybridTokenizer, TokenizerConfig
from hart_edu.profile import ARCHITECTURES


def count(fn) -> dict[str, int]:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return {str(op).removeprefix("aten."): int(n) for op, n in counter.get_flop_counts()["Global"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    arch = ARCHITECTURES["1024px"]
    config = TransformerConfig(**arch.transformer)
    meta = torch.device("meta")
    with meta:
        model = HARTTransformer(config, vocab_size=arch.tokenizer["vocab_size"],
                                vae_channels=arch.tokenizer["z_channels"]).eval()
        tokenizer = HybridTokenizer(TokenizerConfig(**arch.tokenizer)).eval()
    N, T = 2, config.context_token  # one image: its conditional and unconditional rows
    stages: dict[str, dict[str, int]] = {}
    with torch.no_grad():
        sp = model.begin(torch.empty(N, T, config.context_dim, device=meta), torch.ones(N, T, dtype=torch.bool, device=meta),
                         torch.arange(T, device=meta).expand(N, T), cache_capacity=config.sequence_length)
        stages["context"] = count(lambda: model.forward_context(sp))
        for si, p in enumerate(config.patch_nums[1:], start=1):
            x_NlC = torch.empty(N, p * p, config.embed_dim, device=meta)
            stages[f"{p}x{p}"] = count(lambda: model.forward_scale(sp, x_NlC, model.image_token_positions(si, sp.image_offset_N)))
        p = config.patch_nums[-1]
        vae = count(lambda: tokenizer.decode(torch.empty(1, arch.tokenizer["z_channels"], p, p, device=meta)))
    attention = {name: ops.get("bmm", 0) for name, ops in stages.items()}
    total = {name: sum(ops.values()) for name, ops in stages.items()}
    tera = lambda n: round(n / 1e12, 3)
    record = {
        "about": __doc__.splitlines()[0],
        "torch": torch.__version__,
        "transformer TFLOP": tera(sum(total.values())),
        "transformer attention TFLOP": tera(sum(attention.values())),
        "transformer linear layers TFLOP": tera(sum(total.values()) - sum(attention.values())),
        "per stage TFLOP (total, attention)": {k: [tera(total[k]), tera(attention[k])] for k in stages},
        "VAE decoder TFLOP": tera(sum(vae.values())),
    }
    with open(args.json, "w", encoding="utf-8") as f:
        f.write(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: v for k, v in record.items() if "per stage" not in k}, indent=1))


if __name__ == "__main__":
    main()
