"""Where hart_edu finds its shipped files.

Two layouts, one rule. In a source checkout (``git clone``, or ``pip install -e``) the package
sits in the repository, beside ``pyproject.toml`` and ``weights/tiny/``, which is the source of
truth for the tiny weights. An installed wheel (``pip install .`` or ``pip install hart_edu-*.whl``)
carries a copy of ``weights/tiny/`` (without ``reports/``) as ``hart_edu/_weights/tiny/``,
mapped there by ``[tool.setuptools]`` in pyproject.toml. :data:`TINY_WEIGHTS` is the checkout's
folder when running from a checkout, else the packaged copy.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"
REPO_ROOT = PACKAGE_DIR.parent  # the checkout; in an installed wheel: site-packages
# Running from a checkout: the package's parent folder is the repository (it has pyproject.toml).
IN_CHECKOUT = (REPO_ROOT / "pyproject.toml").is_file()
WEIGHTS_DIR = REPO_ROOT / "weights"
PACKAGED_TINY_WEIGHTS = PACKAGE_DIR / "_weights" / "tiny"
TINY_WEIGHTS = WEIGHTS_DIR / "tiny" if IN_CHECKOUT else PACKAGED_TINY_WEIGHTS
GOLDEN_IN_REPO = REPO_ROOT / "tests" / "golden"


def tiny_weights(part: str = "") -> Path:
    """``TINY_WEIGHTS[/part]`` (the checkout's ``weights/tiny`` or the wheel's copy); a clear
    error when it is not there."""
    path = TINY_WEIGHTS / part
    if not path.exists():
        if IN_CHECKOUT:
            fix = "they are part of the checkout: restore them with  git checkout -- weights/tiny"
        else:
            fix = "they ship inside the hart-edu package, so this install is incomplete: reinstall hart-edu"
        raise FileNotFoundError(f"{path} not found: {fix}")
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
