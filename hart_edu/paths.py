"""Where hart_edu finds its shipped files (the repository layout, for a source checkout)."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"
REPO_ROOT = PACKAGE_DIR.parent
WEIGHTS_DIR = REPO_ROOT / "weights"
TINY_WEIGHTS = WEIGHTS_DIR / "tiny"
GOLDEN_IN_REPO = REPO_ROOT / "tests" / "golden"


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


def golden_dir() -> Path:
    """The golden parity fixtures: ``$HART_EDU_GOLDEN`` when set (``make GOLDEN=... test``),
    else the copy in the repository, ``tests/golden`` (see its README)."""
    return Path(os.environ.get("HART_EDU_GOLDEN") or GOLDEN_IN_REPO)


def display_path(path: str | os.PathLike) -> str:
    """``path`` as notebooks and reports print it, without the machine's own prefix: relative
    to the repository root when inside it, ``~/...`` when inside the home folder, else as is."""
    resolved = Path(path).expanduser().resolve()
    for root, prefix in ((REPO_ROOT, ""), (Path.home().resolve(), "~/")):
        if resolved.is_relative_to(root):
            return prefix + resolved.relative_to(root).as_posix()
    return str(path)
