"""Kernel tests: run the Triton kernels in Triton's interpreter when there is no CUDA device.

``TRITON_INTERPRET=1`` must be in the environment before ``hart_edu.kernels`` is imported
(``@triton.jit`` picks GPU or interpreter when the kernels are defined), so it is set here,
before any test module of this folder is imported, and only when no CUDA device is present: on
a GPU machine the same tests check the compiled kernels. Interpreted programs cost milliseconds
each, so the tests use small shapes covered by one or two programs.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)
