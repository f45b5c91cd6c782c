"""Helpers shared by the kernel tests (imported after conftest.py has set TRITON_INTERPRET)."""

from __future__ import annotations

import torch


def randn(generator: torch.Generator, *shape: int, device: torch.device, dtype: torch.dtype = torch.float32,
          scale: float = 1.0) -> torch.Tensor:
    """Standard normal numbers drawn on the CPU with ``generator`` (device independent), then moved."""
    return (torch.randn(*shape, generator=generator) * scale).to(device=device, dtype=dtype)


# Tolerances for a kernel and a reference that both compute in float32 and round the result
# once to the dtype: they may differ by float32 rounding, i.e. about one unit in the last place
# of the output dtype after rounding.
TOLERANCES = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}
DTYPES = list(TOLERANCES)
