"""Shared test set-up: offline mode, and the golden fixtures (see golden_fixtures.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if not torch.cuda.is_available():  # the models import the kernels: run them interpreted (see tests/kernels)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from golden_fixtures import GOLDEN_DIR, golden_available  # noqa: E402


def pytest_sessionstart(session):
    """Under HART_EDU_REQUIRE_GOLDEN=1 a missing golden folder stops the run at once (no test
    module's own skip can hide it)."""
    if os.environ.get("HART_EDU_REQUIRE_GOLDEN") == "1" and not golden_available():
        pytest.exit(f"golden fixtures required (HART_EDU_REQUIRE_GOLDEN=1) but not found at {GOLDEN_DIR}",
                    returncode=1)


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Where device-aware tests put their tensors: the CUDA device when there is one (the
    kernels then run compiled), else the CPU (the kernels run in Triton's interpreter)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not golden_available():
        pytest.skip(f"golden fixtures not found at {GOLDEN_DIR} (set HART_EDU_GOLDEN)")
    return GOLDEN_DIR
