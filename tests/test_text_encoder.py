"""Text encoding: parity with the official encode_prompts, end to end from strings, errors."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from hart_edu.text_encoder import (
    HART_SYSTEM_PROMPT,
    TextEncoder,
    encode_id_lists,
    encode_token_ids,
    load_text_model,
    pad_token_ids,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from golden_fixtures import GOLDEN_DIR, needs_golden  # noqa: E402

# The tiny text encoder's special ids (golden README): bos 120, eos 121, pad 127.
PAD_ID, UNK_ID, VOCAB = 127, 126, 128


@pytest.fixture(scope="module")
def golden():
    from hart_edu.parity import Golden

    return Golden.load(GOLDEN_DIR)


@pytest.fixture(scope="module")
def text_model(golden):
    return load_text_model(golden.official("text_encoder"))


def word_level_tokenizer():
    """A whitespace tokenizer over the tiny model's 128 ids: "w<i>" is id i."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB)}
    vocab["<unk>"], vocab["<pad>"] = UNK_ID, PAD_ID
    del vocab[f"w{UNK_ID}"], vocab[f"w{PAD_ID}"]
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>")


def words(ids) -> str:
    return " ".join(f"w{int(i)}" for i in ids)


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    """A locally built tokenizer for the tiny Qwen2 text encoder (which ships without one).

    It lives in its own folder: beside a config.json with model_type "qwen2", transformers 5's
    AutoTokenizer would build a Qwen2Tokenizer instead of this word-level one."""
    folder = tmp_path_factory.mktemp("word_level_tokenizer")
    word_level_tokenizer().save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def load_encoder(golden, tokenizer_folder):
    def load(**kwargs) -> TextEncoder:
        folder = golden.official("text_encoder")
        return TextEncoder.from_pretrained(folder, tokenizer_folder=tokenizer_folder, **kwargs)

    return load


def golden_prompt_ids(golden) -> list[list[int]]:
    padded = golden.tensors["text.nosys.context_tokens"]
    return [row[row != PAD_ID].tolist() for row in padded]


def assert_matches_golden(enc, golden, tag):
    fields = ("context_tokens", "context_mask", "context_position_ids", "context_tensor")
    g = {k: golden.tensors[f"text.{tag}.{k}"] for k in fields}
    assert torch.equal(enc.tokens_BT, g["context_tokens"])
    assert enc.mask_BT.dtype == torch.bool and torch.equal(enc.mask_BT, g["context_mask"])
    assert enc.position_ids_BT.dtype == torch.int64
    assert torch.equal(enc.position_ids_BT, g["context_position_ids"])
    assert enc.context_BTD.dtype == torch.float32
    torch.testing.assert_close(enc.context_BTD, g["context_tensor"], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------- parity


@needs_golden
def test_parity_producer_matches_every_text_tensor(golden):
    from hart_edu.parity import compare
    from hart_edu.parity.text import produce

    out = produce(golden)
    names = set(golden.names("text.")) - {"text.system_ids"}  # the one pure input
    assert names <= set(out)
    bad = [c for c in (compare(n, golden.tensors[n], out[n]) for n in sorted(names)) if not c.ok]
    assert not bad, bad


@needs_golden
@pytest.mark.parametrize("tag", ["nosys", "sys"])
def test_id_lists_match_official(golden, text_model, tag):
    system_ids = golden.tensors["text.system_ids"] if tag == "sys" else None
    T = golden.tensors["text.nosys.context_tokens"].shape[1]
    ids = golden_prompt_ids(golden)
    enc = encode_id_lists(text_model, ids, pad_token_id=PAD_ID, max_length=T, system_ids=system_ids)
    assert enc.context_BTD.shape == (2, T, text_model.config.hidden_size)
    assert_matches_golden(enc, golden, tag)


@needs_golden
def test_system_prompt_changes_context_but_not_position_ids(golden, text_model):
    ids = golden_prompt_ids(golden)
    plain = encode_id_lists(text_model, ids, pad_token_id=PAD_ID, max_length=8)
    with_sys = encode_id_lists(
        text_model, ids, pad_token_id=PAD_ID, max_length=8, system_ids=[3, 15, 27]
    )
    assert torch.equal(plain.position_ids_BT, with_sys.position_ids_BT)
    assert (plain.context_BTD - with_sys.context_BTD).abs().max() > 1e-2


@needs_golden
def test_last_hidden_state_is_the_official_hidden_states_minus_one(golden, text_model):
    tokens_BT = golden.tensors["text.nosys.context_tokens"]
    with torch.no_grad():
        mask_BT = tokens_BT != PAD_ID  # official: a bool mask and output_hidden_states
        out = text_model(input_ids=tokens_BT, attention_mask=mask_BT, output_hidden_states=True)
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)


# ------------------------------------------------------------------ end to end from strings


@needs_golden
@pytest.mark.parametrize("tag", ["nosys", "sys"])
def test_from_pretrained_end_to_end_from_strings(golden, load_encoder, tag):
    system_prompt = words(golden.tensors["text.system_ids"]) if tag == "sys" else None
    encoder = load_encoder(max_length=8, system_prompt=system_prompt)
    enc = encoder([words(ids) for ids in golden_prompt_ids(golden)])
    assert_matches_golden(enc, golden, tag)


@needs_golden
def test_default_system_prompt_is_the_official_one(load_encoder):
    encoder = load_encoder(max_length=300)
    assert encoder.system_prompt == HART_SYSTEM_PROMPT and encoder.max_length == 300
    assert HART_SYSTEM_PROMPT.startswith('Given a user prompt, generate an "Enhanced prompt"')
    assert HART_SYSTEM_PROMPT.endswith("User Prompt:\n")


@needs_golden
def test_encoding_is_deterministic(load_encoder):
    encoder = load_encoder(max_length=8, system_prompt="w1 w2")
    a, b = encoder(["w4 w5 w6", "w9"]), encoder(["w4 w5 w6", "w9"])
    assert torch.equal(a.context_BTD, b.context_BTD)


@needs_golden
def test_over_long_prompt_is_truncated_with_a_warning(load_encoder):
    encoder = load_encoder(max_length=4, system_prompt=None)
    with pytest.warns(UserWarning, match="truncated"):
        enc = encoder(["w1 w2 w3 w4 w5 w6", "w7"])
    assert enc.tokens_BT.tolist() == [[1, 2, 3, 4], [7, PAD_ID, PAD_ID, PAD_ID]]
    assert enc.position_ids_BT.tolist() == [[0, 1, 2, 3], [0, 0, 0, 0]]
    # The kept ids are encoded exactly as if they had been the whole prompt (causal model).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        short = encoder(["w1 w2 w3 w4"])
    torch.testing.assert_close(enc.context_BTD[:1], short.context_BTD, atol=1e-6, rtol=0)


def test_pad_token_ids_truncates_with_a_warning():
    with pytest.warns(UserWarning, match="prompt 1 has 5 tokens"):
        tokens_BT = pad_token_ids([[1], [1, 2, 3, 4, 5]], max_length=3, pad_token_id=0)
    assert tokens_BT.tolist() == [[1, 0, 0], [1, 2, 3]]


# --------------------------------------------------------------------- any AutoModel encoder


def test_bert_like_encoder_reads_last_hidden_state_and_masks_padding(tmp_path, tokenizer_folder):
    """A bidirectional encoder: with the padding masked, the real tokens' outputs do not
    depend on how much padding follows them."""
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, pad_token_id=PAD_ID,
    )
    with torch.random.fork_rng():  # HF initializes with the global RNG; keep it isolated
        torch.manual_seed(0)
        BertModel(config).save_pretrained(str(tmp_path))

    short, long = (
        TextEncoder.from_pretrained(
            tmp_path, max_length=T, system_prompt="w3 w4", tokenizer_folder=tokenizer_folder
        )
        for T in (6, 12)
    )
    assert type(short.model).__name__ == "BertModel"
    a, b = short(["w10 w11 w12", "w13"]), long(["w10 w11 w12", "w13"])
    assert a.tokens_BT.tolist() == [[10, 11, 12, PAD_ID, PAD_ID, PAD_ID], [13] + [PAD_ID] * 5]
    assert a.context_BTD.shape == (2, 6, 16) and b.context_BTD.shape == (2, 12, 16)
    torch.testing.assert_close(a.context_BTD[0, :3], b.context_BTD[0, :3], atol=1e-5, rtol=0)
    torch.testing.assert_close(a.context_BTD[1, :1], b.context_BTD[1, :1], atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------ errors


@needs_golden
def test_empty_prompt_list_is_an_error(load_encoder):
    encoder = load_encoder(max_length=8, system_prompt=None)
    with pytest.raises(ValueError, match="empty"):
        encoder([])


@needs_golden
@pytest.mark.parametrize("prompts", [["w1", 3], [None], "w1 w2"])
def test_non_string_prompt_is_an_error(load_encoder, prompts):
    encoder = load_encoder(max_length=8, system_prompt=None)
    with pytest.raises(ValueError, match="string"):
        encoder(prompts)


@needs_golden
def test_system_prompt_longer_than_max_length_is_an_error(text_model):
    tokens_BT = torch.tensor([[1, 2, PAD_ID]])
    with pytest.raises(ValueError, match="system prompt has 4 tokens, more than max_length=3"):
        encode_token_ids(text_model, tokens_BT, tokens_BT != PAD_ID, torch.tensor([5, 6, 7, 8]))


@needs_golden
def test_long_system_prompt_string_is_truncated_like_the_official_tokenizer(load_encoder):
    with pytest.warns(UserWarning, match="system prompt has 5 tokens"):
        encoder = load_encoder(max_length=3, system_prompt="w1 w2 w3 w4 w5")
    assert encoder.system_ids == [1, 2, 3]


@needs_golden
def test_bad_token_inputs_are_errors(text_model):
    tokens_BT = torch.tensor([[1, 2, PAD_ID]])
    with pytest.raises(ValueError, match="shape"):
        encode_token_ids(text_model, tokens_BT, torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="int64"):
        encode_token_ids(text_model, tokens_BT.int(), tokens_BT != PAD_ID)
    with pytest.raises(ValueError, match="bool or integer"):
        encode_token_ids(text_model, tokens_BT, (tokens_BT != PAD_ID).float())


@needs_golden
def test_tokenizer_that_yields_no_tokens_is_an_error(load_encoder):
    encoder = load_encoder(max_length=8, system_prompt=None)
    encoder.tokenizer = type("Broken", (), {"__call__": lambda self, text, **kw: {"input_ids": []}})()
    with pytest.raises(ValueError, match="no tokens"):
        encoder(["w1 w2"])


def test_missing_text_encoder_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_text_model(tmp_path)


@needs_golden
def test_folder_without_tokenizer_is_a_clear_error(golden):
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        TextEncoder.from_pretrained(golden.official("text_encoder"), max_length=8)


@needs_golden
def test_tokenizer_without_pad_token_is_an_error(text_model):
    no_pad = type("NoPad", (), {"pad_token_id": None})()
    with pytest.raises(ValueError, match="no pad token"):
        TextEncoder(text_model, no_pad, max_length=8, system_prompt=None)



@pytest.mark.parametrize("model_type", ["qwen2", "custom_encoder"])
def test_folder_asking_for_its_own_code_never_runs_it(golden, tmp_path, monkeypatch, model_type):
    """A config with ``auto_map`` (custom modelling code) never runs that code and nothing is
    asked on stdin (transformers would ask, and "y" would run it): a known ``model_type`` loads
    transformers' own class, an unknown one is refused with one error."""
    import json
    import shutil

    from hart_edu.checkpoint import CheckpointError

    folder = tmp_path / "text_encoder"
    shutil.copytree(golden.official("text_encoder"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {"AutoConfig": "custom.CustomConfig", "AutoModel": "custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    ran = tmp_path / "ran"
    (folder / "custom.py").write_text(f"open({str(ran)!r}, 'w').close()\n")
    # transformers asks on stdin when trust_remote_code is None: record what it was given
    import transformers.models.auto.auto_factory as auto_factory
    import transformers.models.auto.configuration_auto as configuration_auto

    given = []
    for module in (auto_factory, configuration_auto):
        real = module.resolve_trust_remote_code

        def recording(trust_remote_code, *args, _real=real, **kwargs):
            given.append(trust_remote_code)
            return _real(trust_remote_code, *args, **kwargs)

        monkeypatch.setattr(module, "resolve_trust_remote_code", recording)
    if model_type == "qwen2":
        assert type(load_text_model(folder)).__module__.startswith("transformers.")
    else:
        with pytest.raises(CheckpointError, match="cannot load the text encoder"):
            load_text_model(folder)
        assert given and all(value is False for value in given), given
    assert not ran.exists()
