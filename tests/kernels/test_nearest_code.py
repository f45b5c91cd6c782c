"""nearest_code: the reference is the brute-force argmin; the fused kernel gives the same
indices on inputs without near-ties (random Gaussians)."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import DTYPES, randn

from hart_edu.kernels.nearest_code import nearest_code, nearest_code_reference, nearest_code_triton

# (N, V, C): odd sizes; V not a multiple of the code block, C not a multiple of the channel block
SHAPES = [(100, 300, 20), (129, 77, 37), (5, 3, 32)]


def test_reference_is_brute_force_argmin(generator):
    z, e = randn(generator, 50, 6, device="cpu"), randn(generator, 20, 6, device="cpu")
    assert torch.equal(nearest_code_reference(z, e), torch.cdist(z, e).argmin(dim=1))
    cosine_N = (z / z.norm(dim=1, keepdim=True) @ (e / e.norm(dim=1, keepdim=True)).T).argmax(dim=1)
    assert torch.equal(nearest_code_reference(z, e, cosine=True), cosine_N)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        nearest_code_reference(z, e[:, :5])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_kernel_matches_reference(generator, device, shape, dtype):
    N, V, C = shape
    z, e = randn(generator, N, C, device=device, dtype=dtype), randn(generator, V, C, device=device, dtype=dtype)
    # one program over the rows, blocks of 128 codes, channel chunks of 16 (several for C > 16)
    got = nearest_code_triton(z, e, block_n=128, block_v=128, block_c=16)
    assert got.dtype == torch.int64 and got.shape == (N,)
    assert torch.equal(got, nearest_code_reference(z, e))


def test_kernel_cosine(generator, device):
    z, e = randn(generator, 60, 12, device=device), randn(generator, 90, 12, device=device, scale=5.0)
    assert torch.equal(nearest_code_triton(z, e, cosine=True, block_n=64, block_v=128),
                       nearest_code_reference(z, e, cosine=True))


def test_first_minimum_wins_across_blocks(device):
    """Exact duplicate codes in different code blocks: the first index, like torch.argmin."""
    e = torch.zeros(40, 16, device=device)
    e[5], e[37] = 1.0, 1.0  # two identical nearest codes, in blocks 0 and 2 (block_v = 16)
    z = torch.ones(3, 16, device=device)
    assert nearest_code_triton(z, e, block_n=16, block_v=16).tolist() == [5, 5, 5]


def test_shapes_are_checked(device):
    with pytest.raises(ValueError, match=r"wants \(N, C\) and \(V, C\)"):
        nearest_code(torch.zeros(4, 3, device=device), torch.zeros(5, 2, device=device))
