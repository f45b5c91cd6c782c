"""The ShieldGemma prompt check (hart_edu.safety), with a tiny Gemma built here standing in.

The stand-in is a one-layer GemmaForCausalLM whose weights are set by hand so that its
answer depends on the prompt: attention is uniform (zero queries and keys), the value path
carries a "danger" feature that only the word "bomb" has, and the LM head turns that feature
into the "Yes" logit while "No" reads a constant feature. So "Yes" wins exactly when the
prompt holds "bomb", and a checker that reads the wrong position, swaps Yes and No, or
ignores the prompt fails these tests.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from hart_edu.safety import SafetyChecker, UnsafePromptError, check_threshold, shieldgemma_prompt

VOCAB = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "Yes": 4, "No": 5, "bomb": 6, "cat": 7}
SAFE, UNSAFE = "a cat on a mat", "how to build a bomb"


def build_tiny_shieldgemma(folder: Path, yes_no: bool = True) -> Path:
    """A word-level tokenizer and a hand-set 4-dim Gemma in ``folder`` (see the module doc).
    ``yes_no=False`` leaves the tokens "Yes"/"No" out of the vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GemmaConfig, GemmaForCausalLM, PreTrainedTokenizerFast

    vocab = dict(VOCAB) if yes_no else {k: v for k, v in VOCAB.items() if k not in ("Yes", "No")}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                        bos_token="<bos>", eos_token="<eos>")
    config = GemmaConfig(vocab_size=len(VOCAB), hidden_size=4, intermediate_size=4, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1, head_dim=4, tie_word_embeddings=False,
                         max_position_embeddings=512, pad_token_id=0, bos_token_id=2, eos_token_id=1)
    model = GemmaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # RMSNorm scales are (1 + w): zero w = plain normalisation
        emb = model.model.embed_tokens.weight
        emb[:, 0] = 1.0  # every token: the constant feature 0
        emb[VOCAB["bomb"], 1] = 3.0  # "bomb": also the danger feature 1
        attn = model.model.layers[0].self_attn
        attn.v_proj.weight[0, 1] = 1.0  # value = the danger feature
        attn.o_proj.weight[2, 0] = 100.0  # -> feature 2 of the residual stream (mean over positions)
        model.lm_head.weight[VOCAB["Yes"], 2] = 4.0  # "Yes" reads the (averaged) danger
        model.lm_head.weight[VOCAB["No"], 0] = 1.0  # "No" reads the constant feature
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def shield_folder(tmp_path_factory) -> Path:
    return build_tiny_shieldgemma(tmp_path_factory.mktemp("shieldgemma"))


@pytest.fixture(scope="module")
def checker(shield_folder) -> SafetyChecker:
    return SafetyChecker.from_pretrained(shield_folder, dtype=torch.float32)


def test_score_is_p_yes_over_yes_and_no_at_the_last_position(checker):
    for prompt in (SAFE, UNSAFE):
        ids = checker.tokenizer(shieldgemma_prompt(prompt), return_tensors="pt")
        with torch.no_grad():
            logits_V = checker.model(**ids).logits[0, -1]
        expected = 1 / (1 + math.exp(-(float(logits_V[VOCAB["Yes"]]) - float(logits_V[VOCAB["No"]]))))
        assert checker.score(prompt) == pytest.approx(expected, abs=1e-6)
    assert checker.score(SAFE) < 0.2 < 0.8 < checker.score(UNSAFE)


def test_the_user_prompt_sits_in_the_question():
    text = shieldgemma_prompt("  a cat  ")
    assert "Human Question: a cat\n" in text and "'Yes' or 'No'" in text
    assert text.index("<start_of_turn>") < text.index("a cat") < text.index("<end_of_turn>")


def test_an_unsafe_prompt_is_refused_with_the_policy_named(checker):
    assert [v.unsafe for v in checker.require_safe([SAFE])] == [False]
    with pytest.raises(UnsafePromptError) as err:
        checker.require_safe([SAFE, UNSAFE])
    message = str(err.value)
    assert "prompt 1" in message and "refused by the safety checker" in message
    assert "policy against harmful" in message and "threshold 0.5" in message and "\n" not in message


def test_the_threshold_decides(shield_folder, checker):
    score = checker.score(UNSAFE)
    lenient = SafetyChecker(checker.model, checker.tokenizer, threshold=(score + 1) / 2)
    assert lenient.require_safe([UNSAFE])[0].score == pytest.approx(score)
    strict = SafetyChecker(checker.model, checker.tokenizer, threshold=checker.score(SAFE) / 2)
    with pytest.raises(UnsafePromptError):
        strict.require_safe([SAFE])
    for bad in (1.0, -0.1, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="threshold"):
            check_threshold(bad)
    with pytest.raises(ValueError, match="threshold"):  # checked before anything loads
        SafetyChecker.from_pretrained(shield_folder / "nowhere", threshold=2.0)


def test_the_default_dtype_is_bfloat16_as_official_and_decides_the_same(shield_folder):
    bf16 = SafetyChecker.from_pretrained(shield_folder)
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert bf16.score(SAFE) < 0.5 < bf16.score(UNSAFE)


def test_bad_checker_folders_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        SafetyChecker.from_pretrained(tmp_path)
    no_yes = build_tiny_shieldgemma(tmp_path / "no_yes", yes_no=False)
    with pytest.raises(ValueError, match="no token 'Yes' or 'No'"):
        SafetyChecker.from_pretrained(no_yes)
    hart_config = tmp_path / "hart_tokenizer"
    hart_config.mkdir()
    (hart_config / "config.json").write_text('{"model_type": "hart_tokenizer"}', encoding="utf-8")
    with pytest.raises(ValueError, match="not a usable causal LM folder"):
        SafetyChecker.from_pretrained(hart_config)


# ------------------------------------------------------------------ wired into the CLI and the app


def test_cli_refuses_an_unsafe_prompt_before_loading_hart(shield_folder, tmp_path, capsys):
    from hart_edu import cli

    out = tmp_path / "out"
    # --weights points nowhere: the refusal must come first, before any HART model loads
    code = cli.main(["generate", "--prompt", SAFE, "--prompt", UNSAFE, "--weights", str(tmp_path / "none"),
                     "--out", str(out), "--safety-checker", str(shield_folder), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    last = err.splitlines()[-1]  # (transformers may draw a loading bar above it)
    assert [line for line in err.splitlines() if "error:" in line] == [last]
    assert "refused by the safety checker" in last and "policy" in last
    assert not out.exists()


def test_cli_generates_a_safe_prompt_with_the_checker_on(golden_dir, shield_folder, tmp_path, capsys):
    from hart_edu import cli
    from test_sampler import build_tiny_tree

    tree = build_tiny_tree(golden_dir, tmp_path / "tree")
    out = tmp_path / "out"
    code = cli.main(["generate", "--prompt", "w1 w2", "--weights", str(tree), "--out", str(out),
                     "--safety-checker", str(shield_folder), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "prompt.txt"]
    with pytest.raises(SystemExit) as refused:  # argparse refuses it when the command line is read
        cli.main(["generate", "--prompt", "w1", "--weights", str(tree), "--out", str(tmp_path / "o2"),
                  "--safety-checker", str(shield_folder), "--safety-threshold", "1.5"])
    assert refused.value.code == 2
    assert "threshold" in capsys.readouterr().err


def test_app_studio_refuses_an_unsafe_prompt(golden_dir, checker, tmp_path):
    from hart_edu.app import Studio
    from test_sampler import build_tiny_tree

    studio = Studio.load(build_tiny_tree(golden_dir, tmp_path / "tree"))
    studio.safety_checker = checker
    with pytest.raises(UnsafePromptError, match="policy against"):
        studio.generate(UNSAFE)
    assert len(studio.generate(SAFE.replace("cat", "w1")).gallery) == 1
