"""rope: the reference rotates as RoPE should; the Triton kernel matches the reference."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import DTYPES, TOLERANCES, randn

from hart_edu.kernels.rope import rope, rope_reference, rope_triton


def qk_views(generator, device, N, H, L, d, dtype=torch.float32):
    """q, k as the attention layer makes them: strided views of one packed (N, L, 3, H, d) tensor."""
    qkv = randn(generator, N, L, 3, H, d, device=device, dtype=dtype)
    q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return q, k


def positions_2d(generator, device, N, L):
    """Float (row, col) coordinates, like image tokens' grid positions plus a context offset."""
    return (torch.rand(N, L, 2, generator=generator) * 60).to(device)


def positions_1d(generator, device, N, L):
    return torch.randint(0, 300, (N, L), generator=generator).to(device)


def test_reference_is_a_rotation(generator):
    """Position 0 leaves q, k as they are; 1-D RoPE rotates each pair (i, i + d/2), keeping its
    length, and q . k depends only on the distance between the two positions."""
    q, k = qk_views(generator, "cpu", 1, 2, 5, 16)
    out = rope_reference(q, k, torch.zeros(1, 5))
    assert torch.equal(out.q_NHLd, q) and torch.equal(out.k_NHLd, k)
    out = rope_reference(q, k, torch.zeros(1, 5, 2))
    assert torch.equal(out.q_NHLd, q) and torch.equal(out.k_NHLd, k)
    pos = torch.arange(5).view(1, 5)
    rotated = rope_reference(q, k, pos).q_NHLd
    pair_length = lambda x: x[..., :8] ** 2 + x[..., 8:] ** 2  # noqa: E731
    torch.testing.assert_close(pair_length(rotated), pair_length(q))
    shifted = rope_reference(q, k, pos + 37)
    unshifted = rope_reference(q, k, pos)
    torch.testing.assert_close(shifted.q_NHLd @ shifted.k_NHLd.transpose(-1, -2),
                               unshifted.q_NHLd @ unshifted.k_NHLd.transpose(-1, -2), rtol=1e-4, atol=1e-4)


def float32_reference(q, k, pos):
    """The reference on float32 copies, rounded once to the inputs' dtype: what the kernel computes."""
    out = rope_reference(q.float(), k.float(), pos)
    return type(out)(out.q_NHLd.to(q.dtype), out.k_NHLd.to(k.dtype))


# (N, H, L, d): d = 20 gives half = 10 and d/4 = 5 frequencies (not powers of two)
SHAPES = [(2, 3, 29, 24), (1, 2, 7, 20), (3, 1, 1, 8)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("axes", [2, 1])
def test_kernel_matches_reference(generator, device, shape, axes, dtype):
    N, H, L, d = shape
    q, k = qk_views(generator, device, N, H, L, d, dtype)
    pos = (positions_2d if axes == 2 else positions_1d)(generator, device, N, L)
    got, want = rope_triton(q, k, pos), float32_reference(q, k, pos)
    for name in ("q_NHLd", "k_NHLd"):
        g, w = getattr(got, name), getattr(want, name)
        assert g.dtype == dtype and g.shape == (N, H, L, d)
        # float32: angles up to ~3000 rad, whose sin/cos differ between libraries by ~1e-6
        tol = dict(rtol=1e-5, atol=2e-5) if dtype == torch.float32 else TOLERANCES[dtype]
        torch.testing.assert_close(g, w, **tol, msg=lambda m, n=name: f"{n}: {m}")


def test_several_programs_along_tokens(generator, device):
    q, k = qk_views(generator, device, 1, 2, 21, 16)
    pos = positions_2d(generator, device, 1, 21)
    got, want = rope_triton(q, k, pos, block_l=8), rope_reference(q, k, pos)  # 3 programs, last one partial
    torch.testing.assert_close(got.q_NHLd, want.q_NHLd, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(got.k_NHLd, want.k_NHLd, rtol=1e-5, atol=2e-5)


def test_shapes_are_checked(generator, device):
    q, k = qk_views(generator, device, 2, 2, 5, 12)
    with pytest.raises(ValueError, match="position_ids must be"):
        rope_reference(q, k, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="divisible by 4"):
        rope_triton(q[..., :10], k[..., :10], torch.zeros(2, 5, 2))
    with pytest.raises(ValueError, match="q and k must both be"):
        rope(q, k[:1], torch.zeros(2, 5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("axes", [2, 1])
def test_backward_matches_reference(generator, device, axes, dtype):
    """The transposed kernel: gradients of q and k (strided views of one packed qkv) as autograd's."""
    N, H, L, d = 2, 3, 13, 20
    qkv = randn(generator, N, L, 3, H, d, device=device, dtype=dtype).requires_grad_(True)
    q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    pos = (positions_2d if axes == 2 else positions_1d)(generator, device, N, L)
    g_q, g_k = (randn(generator, N, H, L, d, device=device, dtype=dtype) for _ in range(2))
    (got,) = torch.autograd.grad(rope_triton(q, k, pos, block_l=8), qkv, (g_q, g_k))
    qkv32 = qkv.detach().float().requires_grad_(True)  # the kernel computes in float32
    q32, k32, _ = qkv32.permute(2, 0, 3, 1, 4).unbind(0)
    (want,) = torch.autograd.grad(rope_reference(q32, k32, pos), qkv32, (g_q.float(), g_k.float()))
    want = want.to(dtype)
    tol = dict(rtol=1e-5, atol=2e-5) if dtype == torch.float32 else TOLERANCES[dtype]
    torch.testing.assert_close(got, want, **tol)
    assert not got[:, :, 2].any()  # v is not touched
