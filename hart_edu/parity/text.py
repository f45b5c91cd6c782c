"""Parity producer for the text encoding (golden ``text.*``).

The fixture ran the official ``encode_prompts`` on the tiny Qwen2 text encoder with its
tokenize step replaced by fixed ids, once without and once with a system prompt
(max_length = the golden tensors' width). We feed the same ids to
:func:`hart_edu.text_encoder.encode_id_lists` and return every ``text.*`` tensor.

Inputs read from the fixture: ``text.nosys.context_tokens`` (the fixed prompt ids as the
stub returned them, right-padded with the pad id; we strip the padding and let hart_edu pad
again, so the returned tokens are a real round trip) and ``text.system_ids``.
"""

from __future__ import annotations

import torch

from hart_edu.parity import Golden
from hart_edu.text_encoder import encode_id_lists, load_text_model


def produce(golden: Golden) -> dict[str, torch.Tensor]:
    text_model = load_text_model(golden.official("text_encoder"))
    # The stub tokenizer used pad id 127, which is also the tiny Qwen2 config's pad_token_id.
    pad_token_id = text_model.config.pad_token_id

    padded_ids_BT = golden.input("text.nosys.context_tokens")
    system_ids_S = golden.input("text.system_ids")
    max_length = padded_ids_BT.shape[1]
    ids_per_prompt = [row[row != pad_token_id].tolist() for row in padded_ids_BT]

    out: dict[str, torch.Tensor] = {}
    for tag, system_ids in (("nosys", None), ("sys", system_ids_S)):
        enc = encode_id_lists(
            text_model,
            ids_per_prompt,
            pad_token_id=pad_token_id,
            max_length=max_length,
            system_ids=system_ids,
        )
        out[f"text.{tag}.context_tokens"] = enc.tokens_BT
        out[f"text.{tag}.context_mask"] = enc.mask_BT
        out[f"text.{tag}.context_position_ids"] = enc.position_ids_BT
        out[f"text.{tag}.context_tensor"] = enc.context_BTD
    return out
