"""Tokenizer training: the loss falls, a run resumes exactly, the output loads; the shipped weights."""

from __future__ import annotations

import json

import pytest
import torch

from hart_edu.hybrid_tokenizer import HybridTokenizer, TokenizerConfig
from hart_edu.paths import TINY_WEIGHTS
from hart_edu.train.tokenizer import TrainSettings, evaluate, train

SMALL = TokenizerConfig(vocab_size=32, z_channels=4, ch=32, ch_mult=(1, 2), v_patch_nums=(1, 2, 4, 8),
                        quantizer_type="var_hybrid", hybrid=True, freeze_codebook_for_hybrid=False)


def settings(steps: int, examples: int = 64) -> TrainSettings:
    return TrainSettings(steps=steps, batch_size=4, lr=3e-3, warmup=2, restart_every=5,
                         image_size=16, train_examples=examples, bf16=False)


def test_loss_falls_and_output_loads(tmp_path):
    # one fixed batch of 4 scenes, seen again and again: the loss must fall
    report = train(tmp_path / "tok", tmp_path / "run", settings(60, examples=4), config=SMALL)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    first = sum(h["recon_mse"] for h in history[:6]) / 6
    last = sum(h["recon_mse"] for h in history[-6:]) / 6
    assert last < 0.5 * first, (first, last)
    tok = HybridTokenizer.from_pretrained(tmp_path / "tok")
    assert tok.config == SMALL
    assert report["psnr_hybrid_db"] > report["psnr_discrete_db"]


def test_resume_continues_exactly(tmp_path):
    train(tmp_path / "a", tmp_path / "run_a", settings(6), config=SMALL)
    train(tmp_path / "b", tmp_path / "run_b", settings(3), config=SMALL)
    train(tmp_path / "b", tmp_path / "run_b", settings(6), config=SMALL, resume=True)
    a = HybridTokenizer.from_pretrained(tmp_path / "a").state_dict()
    b = HybridTokenizer.from_pretrained(tmp_path / "b").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_config_and_settings_must_agree(tmp_path):
    with pytest.raises(ValueError, match="16px"):
        train(tmp_path / "x", tmp_path / "r", TrainSettings(steps=1, image_size=64), config=SMALL)


@pytest.mark.skipif(not (TINY_WEIGHTS / "tokenizer").is_dir(), reason="weights/tiny not built")
def test_shipped_tokenizer_meets_its_targets():
    """The committed weights: hybrid at least 3 dB above discrete-only, codebook well used."""
    tok = HybridTokenizer.from_pretrained(TINY_WEIGHTS / "tokenizer")
    report = evaluate(tok, n=64, seed=5)
    assert report["psnr_hybrid_db"] - report["psnr_discrete_db"] >= 3.0, report
    assert report["codebook_used_fraction"] >= 0.5, report


def test_warmup_cosine_lr_shared_by_both_training_scripts():
    import hart_edu.train.tokenizer as tok_train
    import hart_edu.train.transformer as tf_train
    from hart_edu.train import warmup_cosine_lr

    lr = [warmup_cosine_lr(t, 1e-3, 4, 20) for t in range(20)]
    assert lr[:4] == [2.5e-4, 5e-4, 7.5e-4, 1e-3]  # linear warm-up
    assert lr[4] == 1e-3 and all(a > b for a, b in zip(lr[4:], lr[5:]))  # then decays
    assert warmup_cosine_lr(20, 1e-3, 4, 20) == pytest.approx(1e-4)  # to 10%
    assert tok_train.warmup_cosine_lr is tf_train.warmup_cosine_lr is warmup_cosine_lr


def test_training_on_the_device(tmp_path, device):
    """--device: the model, the images and the code restarts on the device (the CPU without one)."""
    report = train(tmp_path / "tok", tmp_path / "run", settings(6), config=SMALL, device=device, progress=False)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history) == 6 and all(torch.isfinite(torch.tensor([h["loss"] for h in history])))
    assert report["psnr_hybrid_db"] > 0 and HybridTokenizer.from_pretrained(tmp_path / "tok").config == SMALL
