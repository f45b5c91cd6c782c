"""HARTPipeline: end-to-end parity from strings, outputs, determinism, residual, errors.

The tiny HART tree is built in a temporary folder from the golden fixtures' official-layout
checkpoints (tokenizer/, llm/ with ema_model.bin, text_encoder/) plus a locally built
word-level tokenizer for the tiny Qwen2 text encoder, which ships without one ("w<i>" is
token id i).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hart_edu.generation import OfficialQuirks, SamplingSettings, generate
from hart_edu.sampler import (
    HARTPipeline,
    check_sample_request,
    grid_to_uint8,
    image_grid,
    images_to_uint8,
)
from hart_edu.text_encoder import TextEncoder

# The tiny text encoder's special ids (golden README): pad 127; 126 is used for <unk>.
PAD_ID, UNK_ID, VOCAB = 127, 126, 128
TREE_PARTS = ("tokenizer", "llm", "text_encoder")


def word_level_tokenizer():
    """A whitespace tokenizer over the tiny text encoder's 128 ids: "w<i>" is id i."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB) if i not in (UNK_ID, PAD_ID)}
    vocab["<unk>"], vocab["<pad>"] = UNK_ID, PAD_ID
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>")


def build_tiny_tree(golden_dir: Path, root: Path, parts=TREE_PARTS) -> Path:
    """root/{tokenizer,llm,text_encoder} from tiny-official, and root/text_tokenizer.

    The tokenizer gets its own folder: beside the Qwen2 config.json, transformers 5's
    AutoTokenizer would build a Qwen2Tokenizer instead of the word-level one."""
    root.mkdir(parents=True, exist_ok=True)
    for part in parts:
        shutil.copytree(golden_dir / "tiny-official" / part, root / part)
    word_level_tokenizer().save_pretrained(str(root / "text_tokenizer"))
    return root


def words(ids) -> str:
    return " ".join(f"w{int(i)}" for i in ids)


@pytest.fixture(scope="module")
def tree(golden_dir, tmp_path_factory) -> Path:
    return build_tiny_tree(golden_dir, tmp_path_factory.mktemp("hart_tree"))


@pytest.fixture(scope="module")
def pipe(tree) -> HARTPipeline:
    with pytest.warns(UserWarning, match="system prompt has .* tokens"):  # 111 words > T = 8
        return HARTPipeline.from_pretrained(tree)


@pytest.fixture(scope="module")
def default_run(pipe):
    """The default call (sample.py's settings, seed 1) on two prompts."""
    return pipe(["w1 w2 w3", "w9"], progress=False)


# ---------------------------------------------------------------------------------- parity


def test_end_to_end_from_strings_matches_official(golden_dir, tree):
    """Strings -> tokenizer -> text encoder -> EMA transformer (greedy, discrete only) -> image:
    the golden e2e.* run of the official code, whose inputs were these token ids."""
    from hart_edu.parity import Golden

    golden = Golden.load(golden_dir)
    system = words(golden.tensors["text.system_ids"])
    prompts = [words(row[row != PAD_ID]) for row in golden.tensors["text.sys.context_tokens"]]
    pipe = HARTPipeline.from_pretrained(tree, system_prompt=system)
    out = pipe(prompts, cfg=4.5, greedy=True, more_smooth=False, residual=False, progress=False)

    assert torch.equal(out.text.tokens_BT, golden.tensors["text.sys.context_tokens"])
    for si, idx_Bl in enumerate(out.indices):
        assert torch.equal(idx_Bl, golden.tensors[f"e2e.ema.final1.idx.s{si}"]), f"scale {si}"
    torch.testing.assert_close(out.image_B3HW, golden.tensors["e2e.ema.final1.img"], atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------- outputs


def test_output_fields_shapes_and_types(pipe):
    from PIL import Image

    cfg_t, tok_cfg = pipe.transformer.config, pipe.tokenizer.config
    out = pipe(["w1 w2 w3", "w4"], num_images_per_prompt=2, seed=0, more_smooth=False, progress=False)
    B, p, Cvae, size = 4, cfg_t.patch_nums[-1], tok_cfg.z_channels, tok_cfg.image_size

    assert out.prompts == ["w1 w2 w3", "w1 w2 w3", "w4", "w4"] and out.seed == 0
    assert len(out.images) == B and all(isinstance(im, Image.Image) for im in out.images)
    assert {(im.mode, im.size) for im in out.images} == {("RGB", (size, size))}
    assert out.image_B3HW.shape == (B, 3, size, size)
    assert 0 <= out.image_B3HW.min() and out.image_B3HW.max() <= 1
    pixels = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in out.images])
    assert torch.equal(pixels, images_to_uint8(out.image_B3HW))

    assert [tuple(i.shape) for i in out.indices] == [(B, pn * pn) for pn in cfg_t.patch_nums]
    assert all(i.dtype == torch.int64 and 0 <= i.min() and i.max() < tok_cfg.vocab_size for i in out.indices)
    assert [tuple(m.shape) for m in out.index_maps()] == [(B, pn, pn) for pn in cfg_t.patch_nums]
    for name in ("f_hat_BChw", "f_discrete_BChw", "residual_BChw"):
        assert getattr(out, name).shape == (B, Cvae, p, p), name
    assert out.residual_BChw.abs().mean() > 1e-3
    # Without more_smooth, the discrete part is exactly the composition of the codes.
    torch.testing.assert_close(out.f_discrete_BChw, pipe.tokenizer.indices_to_fhat(out.indices), atol=1e-5, rtol=0)
    torch.testing.assert_close(pipe.decode(out.f_hat_BChw), out.image_B3HW, atol=1e-6, rtol=0)
    # One text row per distinct prompt; the images of a prompt share it.
    assert out.text.context_BTD.shape == (2, cfg_t.context_token, cfg_t.context_dim)


def test_progress_hook_sees_every_scale(pipe):
    enc = pipe.text_encoder(["w5 w6"])
    calls = []
    generate(
        pipe.transformer, pipe.tokenizer.quantizer, enc.context_BTD, enc.mask_BT, enc.position_ids_BT,
        SamplingSettings(greedy=True, residual=False), on_stage_end=calls.append,
    )
    assert calls == list(range(len(pipe.transformer.config.patch_nums)))


# ---------------------------------------------------------------------------- determinism


def test_same_seed_same_images_other_seed_differs(pipe, default_run):
    prompts = ["w1 w2 w3", "w9"]
    again = pipe(prompts, seed=1, progress=False)  # seed 1 is also the default
    assert torch.equal(again.image_B3HW, default_run.image_B3HW)
    assert [im.tobytes() for im in again.images] == [im.tobytes() for im in default_run.images]
    via_generator = pipe(prompts, generator=torch.Generator().manual_seed(1), progress=False)
    assert torch.equal(via_generator.image_B3HW, default_run.image_B3HW) and via_generator.seed is None
    other = pipe(prompts, seed=2, progress=False)
    assert (other.image_B3HW - default_run.image_B3HW).abs().max() > 1e-2


def test_residual_off_changes_only_the_continuous_part(pipe, default_run):
    """The diffusion head draws after every code is chosen: the codes stay, the image changes."""
    off = pipe(["w1 w2 w3", "w9"], seed=1, residual=False, progress=False)
    assert off.residual_BChw is None and torch.equal(off.f_discrete_BChw, off.f_hat_BChw)
    assert all(torch.equal(a, b) for a, b in zip(off.indices, default_run.indices))
    torch.testing.assert_close(off.f_hat_BChw, default_run.f_discrete_BChw, atol=1e-5, rtol=0)
    assert (off.image_B3HW - default_run.image_B3HW).abs().max() > 1e-2


# ------------------------------------------------------------------------------- warnings


def test_over_long_prompt_is_truncated_with_a_warning_at_the_call_site(pipe):
    with pytest.warns(UserWarning, match="prompt 0 has 10 tokens, more than max_length=8") as record:
        out = pipe([words(range(1, 11))], greedy=True, residual=False, progress=False)
    assert any(Path(w.filename) == Path(__file__) for w in record)
    assert out.text.tokens_BT.tolist() == [list(range(1, 9))]


def test_ignored_top_k_is_announced(pipe, recwarn):
    with pytest.warns(UserWarning, match="top_k=5 is ignored"):
        pipe(["w1"], top_k=5, greedy=True, residual=False, progress=False)
    no_override = OfficialQuirks(top_k_override=False)
    pipe(["w1"], top_k=5, quirks=no_override, residual=False, progress=False)
    assert not [w for w in recwarn if "top_k" in str(w.message)]


# ---------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompts=[]), "empty"),
        (dict(prompts=["w1", 3]), "prompt 1 is a int"),
        (dict(prompts=[None]), "prompt 0 is a NoneType"),
        (dict(prompts=42), "list of strings"),
        (dict(cfg=-0.5), "cfg"),
        (dict(cfg=50.5), "cfg"),
        (dict(cfg=float("nan")), "cfg"),
        (dict(cfg=float("inf")), "cfg"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_p=-0.1), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(top_k=2.5), "top_k"),
        (dict(num_images_per_prompt=0), "num_images_per_prompt"),
        (dict(seed=-1), "seed"),
        (dict(seed=1, generator=torch.Generator()), "not both"),
        (dict(diffusion_temperature=0.0), "diffusion_temperature"),
        (dict(more_smooth=1), "more_smooth"),
        (dict(greedy="yes"), "greedy"),
    ],
)
def test_bad_arguments_are_clear_value_errors(pipe, kwargs, match):
    kwargs = {"prompts": ["w1"], **kwargs}
    with pytest.raises(ValueError, match=match):
        pipe(progress=False, **kwargs)


def test_valid_edge_values_are_accepted():
    request = check_sample_request("w1", cfg=0, top_k=0, top_p=1.0, num_images_per_prompt=1)
    assert request.prompts == ["w1"] and (request.top_k, request.top_p) == (0, 1.0)
    off = check_sample_request("w1", 4.5, 0, 0.0, 1)  # 0 is "off", said explicitly
    assert (off.top_k, off.top_p) == (0, 0.0)
    assert check_sample_request(["a"], 50, None, None, 3).num_images_per_prompt == 3


@pytest.mark.parametrize(
    "missing, match", [("tokenizer", "no tokenizer/ folder"), ("llm", "no llm/ folder"), ("text_encoder", "no text encoder")]
)
def test_tree_without_a_part_names_it(golden_dir, tmp_path, missing, match):
    root = tmp_path / "tree"
    root.mkdir()
    for part in TREE_PARTS:
        if part != missing:
            (root / part).symlink_to(golden_dir / "tiny-official" / part)
    with pytest.raises(FileNotFoundError, match=match):
        HARTPipeline.from_pretrained(root)


def test_missing_root_and_missing_ema_are_errors(golden_dir, tmp_path):
    from hart_edu.checkpoint import CheckpointError

    with pytest.raises(FileNotFoundError, match="not found"):
        HARTPipeline.from_pretrained(tmp_path / "nowhere")
    root = tmp_path / "tree"
    (root / "llm").mkdir(parents=True)
    (root / "llm" / "config.json").symlink_to(golden_dir / "tiny-official" / "llm" / "config.json")
    (root / "llm" / "pytorch_model.bin").symlink_to(golden_dir / "tiny-official" / "llm" / "pytorch_model.bin")
    for part in ("tokenizer", "text_encoder"):
        (root / part).symlink_to(golden_dir / "tiny-official" / part)
    with pytest.raises(CheckpointError, match="ema_model.bin"):
        HARTPipeline.from_pretrained(root)


def test_text_encoder_with_another_length_is_refused(pipe):
    encoder = pipe.text_encoder
    other = TextEncoder(encoder.model, encoder.tokenizer, max_length=5, system_prompt=None)
    with pytest.raises(ValueError, match="max_length=5.*context_token=8"):
        HARTPipeline(other, pipe.transformer, pipe.tokenizer)


# ------------------------------------------------------------------------------ pixels


def test_pixels_truncate_like_sample_py():
    image = torch.tensor([0.0, 0.5, 0.999, 1.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    assert images_to_uint8(image)[0, 0, 0].tolist() == [0, 127, 254, 255]
    # The grid goes through float16 first: 0.999 becomes 0.999023..., still 254; 0.0019 -> 0.
    assert grid_to_uint8(image[0])[0, 0].tolist() == [0, 127, 254, 255]


def test_grid_layout_is_make_grids():
    B, H, W = 13, 2, 3
    image_B3HW = torch.arange(1, B + 1).float().view(B, 1, 1, 1).expand(B, 3, H, W) / B
    grid = image_grid(image_B3HW)  # 12 columns, 2 rows, padding 2
    assert grid.shape == (3, 2 * (H + 2) + 2, 12 * (W + 2) + 2)
    assert grid[:, :2].eq(0).all() and grid[:, :, :2].eq(0).all()
    assert torch.equal(grid[:, 2 : 2 + H, 2 : 2 + W], image_B3HW[0])
    assert torch.equal(grid[:, 2 + H + 2 : 2 + 2 * H + 2, 2 : 2 + W], image_B3HW[12])
    assert grid[:, 2 + H + 2 :, 2 + W + 2 :].eq(0).all()  # the empty cells of the last row
    one = image_grid(image_B3HW[:1])
    assert one.shape == (3, H + 4, W + 4)


# --------------------------------------------------------------------------------------
# Given scales: the first codes taken, the rest generated
# --------------------------------------------------------------------------------------


def test_given_indices_are_taken_and_the_rest_is_generated_as_before():
    from hart_edu.profile import random_release_pipeline

    pipe = random_release_pipeline("tiny", dtype=torch.float32, seed=0, prompts=("a red cat",))
    kw = dict(greedy=True, residual=False, more_smooth=False, cfg=2.0, progress=False)  # no draws at all
    full = pipe(["a red cat", "a red cat"], **kw)
    S = len(full.indices)
    for k in (1, S - 1):
        part = pipe(["a red cat", "a red cat"], given_indices=full.indices[:k], **kw)
        for a, b in zip(part.indices, full.indices):
            assert torch.equal(a, b)
        assert torch.equal(part.image_B3HW, full.image_B3HW)
    # other codes at the first scales change what follows
    other = [(full.indices[0] + 1) % pipe.transformer.vocab_size]
    moved = pipe(["a red cat", "a red cat"], given_indices=other, **kw)
    assert torch.equal(moved.indices[0], other[0]) and not torch.equal(moved.image_B3HW, full.image_B3HW)


def test_given_indices_bad_input():
    from hart_edu.profile import random_release_pipeline

    pipe = random_release_pipeline("tiny", dtype=torch.float32, seed=0, prompts=("a red cat",))
    pns = pipe.transformer.config.patch_nums
    ok = [torch.zeros(1, p * p, dtype=torch.int64) for p in pns]
    with pytest.raises(ValueError, match=f"holds {len(pns)} scales: at most {len(pns) - 1}"):
        pipe(["a red cat"], given_indices=ok, progress=False)
    with pytest.raises(ValueError, match=r"given_indices\[1\] must be int64 of shape \(1, 4\)"):
        pipe(["a red cat"], given_indices=[ok[0], torch.zeros(1, 5, dtype=torch.int64)], progress=False)
    with pytest.raises(ValueError, match=r"given_indices\[0\] must be int64"):
        pipe(["a red cat"], given_indices=[ok[0].float()], progress=False)
    with pytest.raises(ValueError, match=r"given_indices\[0\] holds codes outside"):
        pipe(["a red cat"], given_indices=[ok[0] - 1], progress=False)
    with pytest.raises(ValueError, match="given_indices must be a list of per-scale code tensors, got Tensor"):
        pipe(["a red cat"], given_indices=ok[0], progress=False)
    # rows = prompts x images per prompt
    with pytest.raises(ValueError, match=r"given_indices\[0\] must be int64 of shape \(4, 1\)"):
        pipe(["a red cat", "a cat"], num_images_per_prompt=2, given_indices=ok[:1], progress=False)
    # checked before the text encoder runs: a single-use pipeline survives a bad argument
    once = random_release_pipeline("tiny", dtype=torch.float32, seed=0, prompts=("a red cat",),
                                   release_text_encoder=True)
    with pytest.raises(ValueError, match="given_indices"):
        once(["a red cat"], given_indices=[ok[0].float()], progress=False)
    assert not once.text_encoder_released
    once(["a red cat"], given_indices=ok[:2], progress=False)
