"""Your own images: a folder of pictures with captions, in the conventions users already know.

    python -m hart_edu.train.tokenizer   --data my_pictures ...
    python -m hart_edu.train.transformer --data my_pictures ...

Two layouts; the first that applies is used:

1. ``metadata.jsonl`` at the folder's root, as in Hugging Face's ImageFolder: one JSON object per
   line, ``{"file_name": "cats/001.png", "text": "a cat asleep on a red sofa"}``, ``file_name``
   relative to the root. An image the file does not list has no caption.
2. Otherwise a caption file beside each image, as many fine-tuning scripts read it:
   ``cats/001.png`` and ``cats/001.txt`` (the text file's content, stripped).

Images (``.png .jpg .jpeg .webp .bmp``) are found in the folder and its subfolders, sorted by
path, so every machine of a run sees them in the same order. Each is decoded once when the
dataset is built: an unreadable image (not an image, truncated, listed but missing) or one
without a caption (no ``.txt``, an empty one, no ``text`` in its metadata line) is skipped, and
all of them are counted in one line (:meth:`ImageFolder.summary`)::

    image folder my_pictures: 98 images with captions; skipped 1 unreadable (broken.png), 1 without a caption (nocap.png)

so a bad file costs one line at the start, never a crash halfway through an epoch.

Item i is ``(image_3HW, caption)``: the image as RGB, its central square cropped and resized
to ``size`` x ``size`` (Lanczos; :func:`hart_edu.images.load_image`, the convention of the
whole package), values in [-1, 1] (``rgb / 127.5 - 1``), what the tokenizer encodes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import torch
from torch.utils.data import Dataset

from hart_edu.images import load_image

__all__ = ["IMAGE_SUFFIXES", "METADATA_FILE", "ImageSample", "ImageFolder"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
METADATA_FILE = "metadata.jsonl"


class ImageSample(NamedTuple):
    image_3HW: torch.Tensor  # (3, size, size) in [-1, 1]
    caption: str


def _readable(path: Path) -> bool:
    """Does the whole image decode? (``Image.load`` reads every pixel: a truncated file fails.)"""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
        return True
    except Exception:  # noqa: BLE001 - PIL raises OSError, SyntaxError, DecompressionBombError...: all mean unreadable
        return False


def _metadata_captions(root: Path) -> dict[Path, str]:
    """``{image path: caption}`` from ``root/metadata.jsonl`` (an empty caption stays empty)."""
    captions = {}
    for number, line in enumerate((root / METADATA_FILE).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name = row["file_name"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{root / METADATA_FILE} line {number}: expected a JSON object with "
                             f"\"file_name\" and \"text\" ({err!r})") from err
        captions[root / name] = str(row.get("text") or "").strip()
    return captions


def _caption_beside(image: Path) -> str:
    """The stripped text of ``image``'s ``.txt`` twin; "" when there is none (or it is not UTF-8)."""
    try:
        return image.with_suffix(".txt").read_text(encoding="utf-8").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return ""


class ImageFolder(Dataset):
    """The captioned images of ``root`` at ``size`` x ``size`` (see the module docstring)."""

    def __init__(self, root: str | Path, size: int):
        self.root, self.size = Path(root), size
        if not self.root.is_dir():
            raise FileNotFoundError(f"--data {self.root}: no such folder")
        files = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if (self.root / METADATA_FILE).is_file():
            listed = _metadata_captions(self.root)
            files = sorted(set(files) | set(listed))  # a listed file that is missing counts as unreadable
            caption_of = lambda path: listed.get(path, "")  # noqa: E731
        else:
            caption_of = _caption_beside
        self.items: list[tuple[Path, str]] = []
        self.unreadable: list[str] = []
        self.uncaptioned: list[str] = []
        for path in files:
            name = path.relative_to(self.root).as_posix()
            caption = caption_of(path)
            if not caption:
                self.uncaptioned.append(name)
            elif not _readable(path):
                self.unreadable.append(name)
            else:
                self.items.append((path, caption))
        if not self.items:
            raise ValueError(f"{self.summary()}: nothing to train on")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> ImageSample:
        path, caption = self.items[index]
        return ImageSample(load_image(path, self.size), caption)

    def summary(self) -> str:
        """One line: how many images are used, how many were skipped and why (a few names)."""

        def some(names: list[str]) -> str:
            return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")

        line = f"image folder {self.root}: {len(self.items)} images with captions"
        reasons = ((self.unreadable, "unreadable"), (self.uncaptioned, "without a caption"))
        skipped = [f"{len(names)} {why} ({some(names)})" for names, why in reasons if names]
        return line + ("; skipped " + ", ".join(skipped) if skipped else "")

    def fingerprint(self) -> str:
        """A digest of what training reads (paths, sizes, modification times, captions): the
        cached encodings are reused while it stays the same."""
        h = hashlib.sha256(str(self.size).encode())
        for path, caption in self.items:
            stat = path.stat()
            name = path.relative_to(self.root).as_posix()
            h.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\0{caption}\0".encode())
        return h.hexdigest()[:16]
