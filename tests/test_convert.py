"""hart-edu convert on the golden tiny trees: the converted tree loads and gives identical
outputs, the dropped keys are reported, the loaders prefer the converted files, and bad
inputs get one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from golden_fixtures import GOLDEN_DIR, needs_golden
from hart_edu import cli
from hart_edu.ar_transformer import HARTTransformer
from hart_edu import generation
from hart_edu.checkpoint import EMA_WEIGHT_FILES, WEIGHT_FILES, find_weight_file, load_weight_file
from hart_edu.convert import convert_tree, training_only
from hart_edu.hybrid_tokenizer import HybridTokenizer

pytestmark = needs_golden


def official_tree(root: Path, disc: bool = False) -> Path:
    """tokenizer/ and llm/ of the golden tiny tree; with ``disc`` the tokenizer file also
    gets discriminator keys, as the released one has (the golden file left them out)."""
    for part in ("tokenizer", "llm"):
        shutil.copytree(GOLDEN_DIR / "tiny-official" / part, root / part)
    if disc:
        path = root / "tokenizer" / "pytorch_model.bin"
        state = torch.load(path, weights_only=True)
        state["disc.dino_proxy.weight"] = torch.randn(64, 3, 3, 3)
        state["disc.initialized"] = torch.tensor(1, dtype=torch.uint8)
        torch.save(state, path)
    return root


def generate(llm: Path, tok: Path) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A sampled image and its indices (seeded, with the residual diffusion) from a tree."""
    tokenizer = HybridTokenizer.from_pretrained(tok)
    model = HARTTransformer.from_pretrained(llm, tokenizer_folder=tok)
    g = torch.Generator().manual_seed(249)
    T, D = model.config.context_token, model.config.context_dim
    ctx = torch.randn(2, T, D, generator=g)
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[1, 5:] = False
    pos = (mask.long().cumsum(1) - 1).clamp(min=0)
    out = generation.generate(model, tokenizer.quantizer, ctx, mask, pos,
                              settings=generation.SamplingSettings(cfg=4.5, more_smooth=True),
                              generator=torch.Generator().manual_seed(1))
    return tokenizer.decode(out.f_hat_BChw), out.indices


def test_converted_tree_gives_identical_outputs_and_reports_dropped_keys(tmp_path):
    src = official_tree(tmp_path / "official", disc=True)
    out = tmp_path / "converted"
    converted = convert_tree(src, out)

    by_name = {c.source.relative_to(src).as_posix(): c for c in converted}
    assert sorted(by_name) == ["llm/ema_model.bin", "llm/pytorch_model.bin", "tokenizer/pytorch_model.bin"]
    for name in ("llm/ema_model.bin", "llm/pytorch_model.bin"):
        dropped = by_name[name].dropped
        L = json.loads((src / "llm" / "config.json").read_text())["context_token"] + sum(
            p * p for p in json.loads((src / "llm" / "config.json").read_text())["patch_nums"][1:])
        assert dropped["attn_bias_for_masking"] == L * L * 4  # float32 (1, 1, L, L)
        assert sorted(k for k in dropped if k != "attn_bias_for_masking") == \
            ["blocks.0.attn.zero_k_bias", "blocks.1.attn.zero_k_bias"]
        assert "attn_bias_for_masking" in by_name[name].summary()
    assert sorted(by_name["tokenizer/pytorch_model.bin"].dropped) == ["disc.dino_proxy.weight", "disc.initialized"]

    # what is kept is bit-identical; configs are copied; no .bin in the output
    for c in converted:
        original, new = load_weight_file(c.source), load_weight_file(c.target)
        assert set(new) == set(original) - set(c.dropped)
        assert all(torch.equal(new[k], original[k]) for k in new)
        assert not any(training_only(json.loads((c.target.parent / "config.json").read_text())["model_type"], k)
                       for k in new)
    assert (out / "llm" / "config.json").read_bytes() == (src / "llm" / "config.json").read_bytes()
    assert not list(out.rglob("*.bin"))

    image_a, idx_a = generate(src / "llm", src / "tokenizer")
    image_b, idx_b = generate(out / "llm", out / "tokenizer")
    assert torch.equal(image_a, image_b) and all(torch.equal(a, b) for a, b in zip(idx_a, idx_b))


def test_loaders_prefer_the_converted_files_in_place(tmp_path):
    tree = official_tree(tmp_path)
    reference = generate(tree / "llm", tree / "tokenizer")[0]
    convert_tree(tree)  # in place: .safetensors beside the .bin files
    assert find_weight_file(tree / "llm") == tree / "llm" / WEIGHT_FILES[0]
    assert find_weight_file(tree / "llm", EMA_WEIGHT_FILES) == tree / "llm" / "ema_model.safetensors"
    for path in tree.rglob("*.bin"):  # the pickles are not read any more: break them
        path.write_bytes(b"not a checkpoint")
    assert torch.equal(generate(tree / "llm", tree / "tokenizer")[0], reference)


def one_error_line(capsys, *argv: str) -> str:
    assert cli.main(["convert", *argv]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hart-edu convert: error:"), err
    return err[0]


def test_bad_inputs_get_one_line(tmp_path, capsys):
    assert "checkpoint folder not found" in one_error_line(capsys, str(tmp_path / "missing"))
    line = one_error_line(capsys, str(GOLDEN_DIR / "tiny-official" / "text_encoder"), str(tmp_path / "o1"))
    assert "not a HART checkpoint" in line and "'qwen2'" in line
    (tmp_path / "empty").mkdir()
    assert "not a HART checkpoint: it has no config.json" in one_error_line(capsys, str(tmp_path / "empty"))
    tree = official_tree(tmp_path / "t")
    (tree / "llm" / "pytorch_model.bin").write_bytes(b"truncated")
    assert "cannot read weights" in one_error_line(capsys, str(tree / "llm"), str(tmp_path / "o2"))
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()  # nothing half-done


def test_cli_reports_what_it_dropped(tmp_path, capsys):
    tree = official_tree(tmp_path / "t")
    assert cli.main(["convert", str(tree), str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert out.count("attn_bias_for_masking") == 2 and "blocks.*.attn.zero_k_bias (2 tensors" in out
    assert out.strip().splitlines()[-1].startswith("converted 3 file(s); dropped ")


@pytest.mark.parametrize("llm", ["llm", "llm-variant-ctxnorm-avgpool-lvlemb", "llm-variant-noadaln-ctxnorm"])
def test_generate_in_bfloat16_from_a_converted_official_tree(tmp_path, capsys, monkeypatch, llm):
    """``hart-edu convert`` of a tree in the official layout (float32 .bin files, the -inf
    attention mask, the variants' config options), then ``hart-edu generate --dtype bfloat16``
    on it: the models run in bfloat16 and one image is written (1 image, the tiny tree's 4
    diffusion steps)."""
    from test_sampler import build_tiny_tree

    from hart_edu.sampler import HARTPipeline

    src = tmp_path / "official"
    shutil.copytree(GOLDEN_DIR / "tiny-official" / "tokenizer", src / "tokenizer")
    shutil.copytree(GOLDEN_DIR / "tiny-official" / llm, src / "llm")
    text = build_tiny_tree(GOLDEN_DIR, tmp_path / "text", parts=("text_encoder",))  # + the word-level tokenizer
    assert cli.main(["convert", str(src), str(tmp_path / "converted")]) == 0
    loaded = []
    original = HARTPipeline.from_pretrained
    monkeypatch.setattr(HARTPipeline, "from_pretrained", lambda *a, **k: loaded.append(original(*a, **k)) or loaded[-1])
    out = tmp_path / "out"
    ema = ["--ema"] if (src / "llm" / "ema_model.bin").is_file() else ["--no-ema"]  # the variants have no EMA file
    capsys.readouterr()
    status = cli.main(["generate", "--weights", str(tmp_path / "converted"),
                       "--text-encoder", str(text / "text_encoder"), "--text-tokenizer", str(text / "text_tokenizer"),
                       "--prompt", "w1 w2", "--out", str(out), "--no-progress", "--dtype", "bfloat16", *ema])
    err = capsys.readouterr().err
    assert status == 0 and "Traceback" not in err and "generate: dtype bfloat16 (bfloat16)" in err, err
    (pipe,) = loaded
    assert {p.dtype for p in pipe.transformer.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in pipe.tokenizer.parameters() if p.is_floating_point()} == {torch.bfloat16}
    from PIL import Image

    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "prompt.txt"]
    with Image.open(out / "000000.png") as image:
        assert image.size == (32, 32) and image.mode == "RGB"
