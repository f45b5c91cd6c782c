"""Parity producer for the autoregressive transformer (golden ``t2i.*``, ``var.*``, ``e2e.*``).

Every golden name of these groups reads ``<run>.<tensor>``, where ``<run>`` ends with
``final0`` / ``final1`` (the official ``final_stage``: 0 = with residual diffusion):

* ``t2i.<ema|main>.finalF``  the primary model ``tiny-official/llm`` (EMA or main weights);
* ``var.<TAG>.finalF``       the variant ``tiny-official/llm-variant-<TAG>`` (main weights);
* ``e2e.<ema|main>.finalF``  the primary model on the text encoder's outputs ``text.sys.*``.

For each run we call :func:`hart_edu.generation.generate` once, greedy (every description says
the fixture's sampler was greedy argmax; a sampled run could not be replayed), with the
arguments of its ``autoregressive_infer_cfg(...)`` call (``cfg``, ``more_smooth``,
``num_maskgit_iters``), ``final_stage`` (``residual = final_stage == 0``) and the diffusion ``temperature`` of its
``diffloss.sample(...)`` call read from the tensors' descriptions
(:mod:`hart_edu.parity.arguments`), capture everything, and return what the fixture lists. Inputs read from the
fixture: the context, its mask and position ids, and the recorded diffusion noises
``<run>.noise.k`` (the official sampler drew them from the global RNG).

Also here: :func:`check_manifest_part`, the released-architecture check for the
``transformer_llm`` and ``transformer_llm_alt`` manifest sections.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import torch

from hart_edu.ar_transformer import HARTTransformer, TransformerConfig
from hart_edu.generation import SamplingSettings, generate
from hart_edu.images import to_output_range
from hart_edu.checkpoint import config_from_dict
from hart_edu.hybrid_tokenizer import HybridTokenizer
from hart_edu.parity import Golden
from hart_edu.parity.arguments import shared_argument
from hart_edu.parity.manifest import ManifestResult, compare_shapes

GROUPS = ("t2i.", "var.", "e2e.")
# Where each group takes its context from (the fixture's protocol, see tiny-golden.json).
CONTEXT_INPUTS = {
    "t2i": ("t2i.context", "t2i.context_mask", "t2i.context_position_ids"),
    "var": ("t2i.context", "t2i.context_mask", "t2i.context_position_ids"),
    "e2e": ("text.sys.context_tensor", "text.sys.context_mask", "text.sys.context_position_ids"),
}
RUN_RE = re.compile(r"^(?P<run>(?P<group>t2i|var|e2e)\.(?P<who>[^.]+)\.final(?P<final>[01]))\.(?P<key>.+)$")


def _settings(run: str, descs: list[str]) -> SamplingSettings:
    """The run's sampling settings, every one read from its tensors' descriptions (an argument
    they never quote ran with its official default)."""
    if not all("greedy" in desc for desc in descs):
        raise ValueError(f"{run}: the fixture does not say its sampler was greedy; only greedy runs replay")
    final_stage = shared_argument(descs, "final_stage", int)
    # The official autoregressive_infer_cfg calls diffloss.sample(z, temperature=..., cfg=...)
    # itself; some runs record that inner call too.
    quoted = {"diffusion_temperature": shared_argument(descs, "temperature", float, "diffloss.sample",
                                                       required=False)}
    for key, kind in (("cfg", float), ("more_smooth", bool), ("num_maskgit_iters", int)):
        quoted[key] = shared_argument(descs, key, kind, "autoregressive_infer_cfg", required=key == "cfg")
    # An argument no description quotes ran with its official default, which SamplingSettings' is.
    given = {key: value for key, value in quoted.items() if value is not None}
    return SamplingSettings(greedy=True, residual=final_stage == 0, **given)


def _model_source(group: str, who: str) -> tuple[str, bool]:
    """(checkpoint folder under tiny-official/, use EMA weights?) of a run."""
    if group == "var":
        return f"llm-variant-{who}", False
    if who not in ("ema", "main"):
        raise ValueError(f"unknown weights {who!r} in a {group}.* run name")
    return "llm", who == "ema"


def _pick(result: Any, image_B3HW: torch.Tensor, key: str) -> torch.Tensor | None:
    """The captured tensor a golden ``<tensor>`` suffix names (None: an input or unknown)."""
    simple = {
        "ctx_norm": result.context_normed,
        "cond_BD": result.cond_BD,
        "fhat": result.f_hat_BChw,
        "img": image_B3HW,
        "diff_z": result.diffusion_z,
        "diff_out": result.diffusion_out,
    }
    if key in simple:
        return simple[key]
    per_stage = re.fullmatch(r"(raw_logits|logits_cfg|idx)\.s(\d+)", key)
    if per_stage:
        lists = {"raw_logits": result.raw_logits, "logits_cfg": result.cfg_logits, "idx": result.indices}
        return lists[per_stage.group(1)][int(per_stage.group(2))]
    block = re.fullmatch(r"block(\d+)\.out\.s(\d+)", key)
    if block:
        return result.block_outputs[int(block.group(2))][int(block.group(1))]
    return None


def produce(golden: Golden) -> dict[str, torch.Tensor]:
    runs: dict[str, list[str]] = defaultdict(list)
    for name in golden.specs:
        match = RUN_RE.match(name)
        if match:
            runs[match.group("run")].append(name)

    tokenizer = HybridTokenizer.from_pretrained(golden.official("tokenizer")).to(golden.device)
    models: dict[tuple[str, bool], HARTTransformer] = {}
    out: dict[str, torch.Tensor] = {}
    for run, names in runs.items():
        match = RUN_RE.match(names[0])
        group, who = match.group("group"), match.group("who")
        source = _model_source(group, who)
        if source not in models:
            models[source] = HARTTransformer.from_pretrained(golden.official(source[0]), ema=source[1]).to(golden.device)
        settings = _settings(run, [golden.specs[n]["desc"] for n in names])
        if settings.residual != (match.group("final") == "0"):
            raise ValueError(f"{run}: the descriptions quote final_stage={0 if settings.residual else 1}")
        noise_names = sorted((n for n in names if re.search(r"\.noise\.\d+$", n)),
                             key=lambda n: int(n.rsplit(".", 1)[1]))
        noises = [golden.input(n) for n in noise_names] if settings.residual else None
        context, mask, position_ids = (golden.input(n) for n in CONTEXT_INPUTS[group])
        result = generate(models[source], tokenizer.quantizer, context, mask, position_ids, settings,
                          diffusion_noises=noises, capture=True)
        with torch.no_grad():
            image_B3HW = to_output_range(tokenizer.decode(result.f_hat_BChw))
        for name in names:
            tensor = _pick(result, image_B3HW, RUN_RE.match(name).group("key"))
            if tensor is not None:
                out[name] = tensor
    return out


# --------------------------------------------------------------------------------------
# Released architecture (manifest)
# --------------------------------------------------------------------------------------


def check_manifest_part(section: dict[str, Any]) -> ManifestResult:
    """Build HARTTransformer from a manifest section's config on the meta device and compare
    every key (including the training-only ``attn_bias_for_masking``), shape and the
    parameter count.

    The vocabulary size and Cvae belong to the tokenizer (the official code reads them from
    the tokenizer folder); the section does not carry the tokenizer config, so they are read
    off the two keys whose shapes they set: ``head.bias`` (V) and ``word_embed.weight`` (C, Cvae).
    """
    config = config_from_dict(TransformerConfig, section["config_used"], source="manifest transformer")
    expected = section["state_dict"]
    vocab_size = expected["head.bias"]["shape"][0]
    vae_channels = expected["word_embed.weight"]["shape"][1]
    with torch.device("meta"):
        model = HARTTransformer(config, vocab_size=vocab_size, vae_channels=vae_channels)
    params = sum(p.numel() for p in model.parameters())
    label = f"transformer (depth {config.depth}, {'no adaLN' if config.disable_aln else 'adaLN'})"
    return compare_shapes(label, expected, model.official_shapes(), section["total_params"], params)
