"""Tests of hart_edu.ar_transformer: golden parity, strict loading, options, the KV cache."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from hart_edu.ar_transformer import HARTTransformer, TransformerConfig, tokenizer_folder_for
from hart_edu.checkpoint import CheckpointError, config_from_dict, load_weight_file, read_config

from golden_fixtures import GOLDEN_DIR as GOLDEN, needs_golden  # noqa: E402


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden():
    from hart_edu.parity import Golden

    return Golden.load(GOLDEN)


def _fresh(golden) -> tuple[HARTTransformer, dict[str, torch.Tensor]]:
    """An unloaded tiny model and the main-weights state dict of tiny-official/llm."""
    folder = golden.official("llm")
    config = config_from_dict(TransformerConfig, read_config(folder, "hart_transformer_t2i"), source="test")
    state = load_weight_file(folder / "pytorch_model.bin")
    vocab, cvae = state["head.bias"].shape[0], state["word_embed.weight"].shape[1]
    return HARTTransformer(config, vocab_size=vocab, vae_channels=cvae), state


# --------------------------------------------------------------------------------------
# Golden parity (every t2i.*, var.*, e2e.* tensor)
# --------------------------------------------------------------------------------------


@needs_golden
def test_golden_parity_all_transformer_tensors(golden):
    from hart_edu.parity import compare
    from hart_edu.parity.transformer import produce

    out = produce(golden)
    wanted = [n for n in golden.specs if n.split(".")[0] in ("t2i", "var", "e2e")]
    fed = golden.inputs_used
    uncovered = [n for n in wanted if n not in out and n not in fed]
    assert not uncovered, f"not produced: {uncovered}"
    bad = [c for c in (compare(n, golden.tensors[n], out[n]) for n in out) if not c.ok]
    assert not bad, "\n".join(f"{c.name}: {c.error} ({c.note})" for c in bad)
    # logits (not only indices) are compared: the quirks only show there
    assert any(".raw_logits." in n for n in out) and any(".block1.out." in n for n in out)


# --------------------------------------------------------------------------------------
# Strict loading and configuration
# --------------------------------------------------------------------------------------


@needs_golden
def test_strict_loading_names_bad_keys(golden):
    model, state = _fresh(golden)
    broken = dict(state)
    del broken["head.weight"]
    broken["blocks.0.attn.extra"] = torch.zeros(1)
    broken["word_embed.bias"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as err:
        model.load_official_state_dict(broken, source="broken.bin")
    msg = str(err.value)
    assert "head.weight" in msg and "blocks.0.attn.extra" in msg and "word_embed.bias" in msg


@needs_golden
def test_training_only_buffers_are_optional(golden):
    model, state = _fresh(golden)
    assert "attn_bias_for_masking" in state and "attn_bias_for_masking" not in model.state_dict()
    slim = {k: v for k, v in state.items() if k != "attn_bias_for_masking" and not k.endswith("zero_k_bias")}
    model.load_official_state_dict(slim, source="slim")
    assert torch.equal(model.head.weight, state["head.weight"])
    nonzero = dict(state)
    nonzero["blocks.0.attn.zero_k_bias"] = torch.ones_like(state["blocks.0.attn.zero_k_bias"])
    with pytest.raises(CheckpointError, match="zero_k_bias"):
        model.load_official_state_dict(nonzero, source="nonzero")


@needs_golden
def test_ema_weights_load_on_top_and_differ(golden):
    main = HARTTransformer.from_pretrained(golden.official("llm"), ema=False)
    ema = HARTTransformer.from_pretrained(golden.official("llm"), ema=True)
    assert not torch.equal(main.head.weight, ema.head.weight)
    with pytest.raises(CheckpointError, match="ema_model.bin"):
        HARTTransformer.from_pretrained(golden.official("llm-variant-noadaln-ctxnorm"), ema=True)


@needs_golden
def test_tokenizer_folder_rule(golden):
    config = TransformerConfig(attn_type="llama", mlp_type="llama")
    assert tokenizer_folder_for(golden.official("llm"), config) == golden.official("tokenizer").resolve()
    assert tokenizer_folder_for("x/llm", dataclasses.replace(config, vae_path="/v")) == Path("/v")


def test_class_defaults_and_unsupported_options():
    with pytest.raises(ValueError, match="attn_type='gpt2'"):
        TransformerConfig()  # the official class default attention is not implemented
    with pytest.raises(ValueError, match="use_cross_attn"):
        TransformerConfig(attn_type="llama", use_cross_attn=True)
    with pytest.raises(ValueError, match="sep_aln_pooling_mode"):
        TransformerConfig(attn_type="llama", sep_aln_pooling_mode="mean")
    with pytest.raises(CheckpointError, match="not_an_option"):
        config_from_dict(TransformerConfig, {"attn_type": "llama", "not_an_option": 1}, source="cfg")
    c = TransformerConfig(attn_type="llama", mlp_type="llama", embed_dim=1536)
    assert c.mlp_hidden == 4096 and c.patch_nums == (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def test_variants_build_with_expected_keys():
    base = dict(attn_type="llama", mlp_type="llama", embed_dim=32, num_heads=2, depth=1,
                context_token=4, context_dim=8, patch_nums=(1, 2), diff_width=16, diff_depth=1)
    shared = HARTTransformer(TransformerConfig(**base, disable_aln=True, shared_aln=True), 16, 4)
    keys = shared.state_dict()
    assert "blocks.0.scale_shift_table" in keys and "blocks.0.ada_lin.1.weight" not in keys
    l2 = HARTTransformer(TransformerConfig(**base, attn_l2_norm=True), 16, 4)
    assert "blocks.0.attn.scale_mul_1H11" in l2.state_dict()
    gpt = HARTTransformer(TransformerConfig(**{**base, "mlp_type": "gpt2"}), 16, 4)
    assert "blocks.0.ffn.fc1.weight" in gpt.state_dict()
    lvl = HARTTransformer(TransformerConfig(**base, use_timestep_embed=False), 16, 4)
    assert tuple(lvl.state_dict()["lvl_embed.weight"].shape) == (2, 32)


# --------------------------------------------------------------------------------------
# Released architecture
# --------------------------------------------------------------------------------------


@needs_golden
@pytest.mark.parametrize("section", ["transformer_llm", "transformer_llm_alt"])
def test_manifest_hypotheses(section):
    from hart_edu.parity.transformer import check_manifest_part

    manifest = json.loads((GOLDEN / "manifest-hart-0.7b-1024px.json").read_text())
    result = check_manifest_part(manifest[section])
    assert result.ok, result
    assert result.params_ours == manifest[section]["total_params"]


def test_kv_cache_buffer_holds_what_concatenation_holds():
    """Generation writes into a buffer of the whole length; training concatenates: same cache."""
    from hart_edu.kv_cache import KVCache

    g = torch.Generator().manual_seed(0)
    growing, buffered = KVCache(), KVCache(capacity=16)
    for L in (3, 4, 9):
        k, v = torch.randn(2, 3, L, 5, generator=g), torch.randn(2, 3, L, 5, generator=g)
        valid = torch.rand(2, L, generator=g) < 0.7
        growing.extend(k, v, valid)
        buffered.extend(k.transpose(1, 2).contiguous().transpose(1, 2), v, valid)  # strided input too
        assert buffered.length == growing.length
        assert torch.equal(buffered.k_NHKd, growing.k_NHKd) and torch.equal(buffered.v_NHKd, growing.v_NHKd)
        assert torch.equal(buffered.valid_NK, growing.valid_NK)
    with pytest.raises(ValueError, match="capacity 16 cannot take 1 more keys after 16"):
        buffered.extend(k[:, :, :1], v[:, :, :1], valid[:, :1])


def test_kv_cache_storage_dtype_rounds_once_and_attention_stays_in_the_model_dtype():
    """A bfloat16 cache under a float32 model holds the bfloat16-rounded keys; the attention
    reads them back in float32, so its output is float32 attention over the rounded keys."""
    from hart_edu.ar_transformer import LlamaAttention
    from hart_edu.kv_cache import KVCache

    g = torch.Generator().manual_seed(1)
    k, v = torch.randn(2, 3, 5, 4, generator=g), torch.randn(2, 3, 5, 4, generator=g)
    cache = KVCache(capacity=8, storage_dtype=torch.bfloat16)
    cache.extend(k, v, torch.ones(2, 5, dtype=torch.bool))
    assert cache.k_NHKd.dtype == torch.bfloat16 and torch.equal(cache.k_NHKd, k.bfloat16())
    assert torch.equal(cache.v_NHKd, v.bfloat16())
    with pytest.raises(ValueError, match="needs a capacity"):
        KVCache(storage_dtype=torch.bfloat16).extend(k, v, torch.ones(2, 5, dtype=torch.bool))

    attn = LlamaAttention(embed_dim=12, num_heads=3, attn_l2_norm=False).eval()
    x_NLC, pos_NL = torch.randn(2, 5, 12, generator=g), torch.arange(5).expand(2, 5)
    valid = torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        exact = attn(x_NLC, pos_NL, KVCache(capacity=8), valid, False)
        compact = attn(x_NLC, pos_NL, KVCache(capacity=8, storage_dtype=torch.bfloat16), valid, False)
    assert compact.dtype == torch.float32
    assert 0 < (compact - exact).abs().max() < 1e-2 * exact.abs().max()  # bfloat16 rounding, nothing more
