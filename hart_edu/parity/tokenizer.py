"""Parity producer for the ``tok.*`` golden tensors (the hybrid tokenizer).

Every tensor is recomputed through hart_edu's public API from the fixture's input image and
the official-layout checkpoint in ``tiny-official/tokenizer``. Scale counts, sizes and the
stage of the ``gnai`` check are read from the configs and the tensor names.
"""

from __future__ import annotations

import re

import torch

from hart_edu.hybrid_tokenizer import HybridTokenizer
from hart_edu.parity import Golden
from hart_edu.vq import MultiScaleResidualQuantizer


def _var_reference_fhat(q: MultiScaleResidualQuantizer, f_BChw: torch.Tensor) -> torch.Tensor:
    """VAR's composition (Phi on every scale, the last included), for ``tok.var_fhat_last``:
    the same quantizer with its hybrid switch off."""
    hybrid = q.hybrid
    try:
        q.hybrid = False
        return q.encode(f_BChw).fhat_discrete_BChw
    finally:
        q.hybrid = hybrid


@torch.no_grad()
def produce(golden: Golden) -> dict[str, torch.Tensor]:
    tok = HybridTokenizer.from_pretrained(golden.official("tokenizer")).to(golden.device)
    q = tok.quantizer
    img_B3HW = golden.input("tok.input_img")

    out: dict[str, torch.Tensor] = {}
    out["tok.encoder_out"] = tok.encoder(img_B3HW)
    enc = tok.encode(img_B3HW)
    out["tok.f"] = enc.f_BChw
    for si, idx_Bl in enumerate(enc.idx_Bl):
        out[f"tok.idx.s{si}"] = idx_Bl
    codes = q.encode(enc.f_BChw)
    out["tok.frest_before_last"] = codes.rest_before_last_BChw.flatten(2).transpose(1, 2)
    out["tok.fhat_discrete"] = tok.indices_to_fhat(enc.idx_Bl)
    out["tok.resid_continuous"] = enc.residual_BChw
    out["tok.fhat_full"] = enc.fhat_full_BChw
    out["tok.img_discrete"] = tok.decode(enc.fhat_discrete_BChw)
    out["tok.img_full"] = tok.decode(enc.fhat_full_BChw)
    out["tok.img_from_f"] = tok.decode(enc.f_BChw)
    out["tok.var_fhat_last"] = _var_reference_fhat(q, enc.f_BChw)

    # One inference step, at whichever stage the fixture recorded (tok.gnai.s<k>.*).
    for name in golden.names("tok.gnai."):
        m = re.fullmatch(r"tok\.gnai\.s(\d+)\.fhat_in", name)
        if m:
            si = int(m.group(1))
            step = q.next_autoregressive_input(
                si, golden.input(name), golden.input(f"tok.gnai.s{si}.h_BChw"))
            out[f"tok.gnai.s{si}.fhat_out"] = step.fhat_BChw
            out[f"tok.gnai.s{si}.next_map"] = step.next_BChw
    return out
