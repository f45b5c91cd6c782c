"""Where the golden parity fixtures live, for every test module (import this, not conftest).

The folder is ``$HART_EDU_GOLDEN`` or ``<repo>/../shared/golden``. Tests marked
``@needs_golden`` are skipped with a reason when it is absent, except under
``HART_EDU_REQUIRE_GOLDEN=1`` (set by ``make test``), where tests/conftest.py stops the whole
session instead: CI must never pass by skipping parity.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GOLDEN_DIR = Path(os.environ.get("HART_EDU_GOLDEN", REPO.parent / "shared" / "golden"))


def golden_available() -> bool:
    return (GOLDEN_DIR / "tiny-golden.json").is_file()


needs_golden = pytest.mark.skipif(not golden_available(),
                                  reason=f"golden fixtures not found at {GOLDEN_DIR} (set HART_EDU_GOLDEN)")
