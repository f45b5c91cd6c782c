"""Parity producer for the text encoding (golden ``text.*``).

The fixture ran the official ``encode_prompts`` on the tiny Qwen2 text encoder with its
tokenize step replaced by fixed ids, once per ``text.<tag>.*`` group (without and with a
system prompt). We feed the same ids to :func:`hart_edu.text_encoder.encode_id_lists` with
the arguments each group's descriptions quote (``pad_token_id``, ``max_length``,
``use_llm_system_prompt``) and return every ``text.*`` tensor.

Inputs read from the fixture: ``text.nosys.context_tokens`` (the fixed prompt ids as the
stub returned them, right-padded with the pad id; we strip the padding and let hart_edu pad
again, so the returned tokens are a real round trip) and ``text.system_ids``.
"""

from __future__ import annotations

import torch

from hart_edu.parity import Golden
from hart_edu.parity.arguments import shared_argument
from hart_edu.text_encoder import encode_id_lists, load_text_model

# Golden ``text.<tag>.<output>`` -> the field of encode_id_lists' result that holds it.
OUTPUTS = {"context_tokens": "tokens_BT", "context_mask": "mask_BT",
           "context_position_ids": "position_ids_BT", "context_tensor": "context_BTD"}


def produce(golden: Golden) -> dict[str, torch.Tensor]:
    text_model = load_text_model(golden.official("text_encoder")).to(golden.device)
    padded_ids_BT = golden.input("text.nosys.context_tokens")
    system_ids_S = golden.input("text.system_ids")

    out: dict[str, torch.Tensor] = {}
    for tag in dict.fromkeys(n.split(".")[1] for n in golden.names("text.") if ".context_" in n):
        names = golden.names(f"text.{tag}.")
        descs = [golden.specs[n]["desc"] for n in names]
        pad_token_id = shared_argument(descs, "pad_token_id", int, "encode_prompts")
        use_system = shared_argument(descs, "use_llm_system_prompt", bool, "encode_prompts")
        ids_per_prompt = [row[row != pad_token_id].tolist() for row in padded_ids_BT]
        enc = encode_id_lists(
            text_model,
            ids_per_prompt,
            pad_token_id=pad_token_id,
            max_length=shared_argument(descs, "max_length", int, "encode_prompts"),
            system_ids=system_ids_S if use_system else None,
        )
        for name in names:
            out[name] = getattr(enc, OUTPUTS[name.split(".")[2]])
    return out
