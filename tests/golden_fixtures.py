"""Where the golden parity fixtures live, for every test module (import this, not conftest).

The folder is ``$HART_EDU_GOLDEN`` when set, else the copy committed in the repository,
``tests/golden`` (see its README), so a plain clone has them. Tests marked ``@needs_golden``
are skipped with a reason when the folder is incomplete, except under
``HART_EDU_REQUIRE_GOLDEN=1`` (set by ``make test``), where tests/conftest.py stops the whole
session instead: CI must never pass by skipping parity.
"""

from __future__ import annotations

import pytest

from hart_edu.paths import golden_dir

GOLDEN_DIR = golden_dir()
REQUIRED = ("tiny-golden.json", "tiny-golden.safetensors", "manifest-hart-0.7b-1024px.json",
            "tiny-official/llm/config.json", "tiny-official/tokenizer/config.json",
            "tiny-official/text_encoder/config.json")


def golden_available() -> bool:
    """True when every file the parity tests read at the top level is in GOLDEN_DIR."""
    return all((GOLDEN_DIR / name).is_file() for name in REQUIRED)


needs_golden = pytest.mark.skipif(not golden_available(),
                                  reason=f"golden fixtures not found at {GOLDEN_DIR} (set HART_EDU_GOLDEN)")
