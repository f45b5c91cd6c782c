"""Where hart_edu finds its shipped files (the repository layout, for a source checkout)."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"
REPO_ROOT = PACKAGE_DIR.parent
WEIGHTS_DIR = REPO_ROOT / "weights"
TINY_WEIGHTS = WEIGHTS_DIR / "tiny"


def tiny_weights(part: str = "") -> Path:
    """``weights/tiny[/part]`` of the source checkout; a clear error when it is not there."""
    path = TINY_WEIGHTS / part
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: the tiny weights ship with the source checkout of hart_edu "
            "(git clone), not with a wheel")
    return path


def photo_path() -> Path:
    """The CC0 test photo shipped with the package (see assets/README.md)."""
    return ASSETS_DIR / "chelsea.png"
