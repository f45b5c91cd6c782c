"""Shared test fixtures: where the golden parity fixtures live.

The golden folder is ``$HART_EDU_GOLDEN`` or ``<repo>/../shared/golden``. Tests that need it
are skipped with a reason when it is absent, except under ``HART_EDU_REQUIRE_GOLDEN=1``
(set by ``make test``), where its absence is a failure: CI must never pass by skipping parity.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
GOLDEN_DIR = Path(os.environ.get("HART_EDU_GOLDEN", REPO.parent / "shared" / "golden"))


def golden_available() -> bool:
    return (GOLDEN_DIR / "tiny-golden.json").is_file()


# for test modules: @needs_golden skips (or, under HART_EDU_REQUIRE_GOLDEN=1, the session stops)
needs_golden = pytest.mark.skipif(not golden_available(),
                                  reason=f"golden fixtures not found at {GOLDEN_DIR} (set HART_EDU_GOLDEN)")


def pytest_sessionstart(session):
    """Under HART_EDU_REQUIRE_GOLDEN=1 a missing golden folder stops the run at once (no test
    module's own skip can hide it)."""
    if os.environ.get("HART_EDU_REQUIRE_GOLDEN") == "1" and not golden_available():
        pytest.exit(f"golden fixtures required (HART_EDU_REQUIRE_GOLDEN=1) but not found at {GOLDEN_DIR}",
                    returncode=1)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not golden_available():
        if os.environ.get("HART_EDU_REQUIRE_GOLDEN") == "1":
            pytest.fail(f"golden fixtures required but not found at {GOLDEN_DIR}")
        pytest.skip(f"golden fixtures not found at {GOLDEN_DIR} (set HART_EDU_GOLDEN)")
    return GOLDEN_DIR
