"""rope: the reference equals the model's own RoPE; the Triton kernel matches the reference."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import DTYPES, TOLERANCES, randn

from hart_edu.ar_transformer import rope_1d, rope_2d
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


@pytest.mark.parametrize("d", [24, 64])
def test_reference_equals_the_model(generator, d):
    q, k = qk_views(generator, "cpu", 2, 3, 11, d)
    for make_pos, model_rope in ((positions_2d, rope_2d), (positions_1d, rope_1d)):
        pos = make_pos(generator, "cpu", 2, 11)
        model = model_rope(pos, d)
        out = rope_reference(q, k, pos)
        assert torch.equal(out.q_NHLd, model.apply(q)) and torch.equal(out.k_NHLd, model.apply(k))


# (N, H, L, d): d = 20 gives half = 10 and d/4 = 5 frequencies (not powers of two)
SHAPES = [(2, 3, 29, 24), (1, 2, 7, 20), (3, 1, 1, 8)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("axes", [2, 1])
def test_kernel_matches_reference(generator, device, shape, axes, dtype):
    N, H, L, d = shape
    q, k = qk_views(generator, device, N, H, L, d, dtype)
    pos = (positions_2d if axes == 2 else positions_1d)(generator, device, N, L)
    got, want = rope_triton(q, k, pos), rope_reference(q, k, pos)
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
    (want,) = torch.autograd.grad(rope_reference(q, k, pos), qkv, (g_q, g_k))
    tol = dict(rtol=1e-5, atol=2e-5) if dtype == torch.float32 else TOLERANCES[dtype]
    torch.testing.assert_close(got, want, **tol)
    assert not got[:, :, 2].any()  # v is not touched
