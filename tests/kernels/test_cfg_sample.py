"""cfg_sample: the reference's filter equals the model's, its Philox stream equals Triton's
tl.rand, and the one-launch kernel gives the same filtered logits and the same codes."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import randn

from hart_edu import ar_transformer
from hart_edu.kernels.backend import jit, tl
from hart_edu.kernels.cfg_sample import (
    cfg_multinomial,
    cfg_multinomial_reference,
    cfg_multinomial_triton,
    cfg_sample,
    cfg_sample_reference,
    cfg_sample_triton,
    filter_top_k_top_p,
    multinomial_noise,
    philox_uniform,
)

SETTINGS = [(0, 0.0), (50, 0.0), (0, 0.8), (20, 0.9), (600, 0.95), (1, 0.0), (7, 1.0)]  # (top_k, top_p)


@pytest.mark.parametrize("top_k, top_p", SETTINGS)
def test_filter_equals_the_model(generator, top_k, top_p):
    logits = randn(generator, 2, 5, 61, device="cpu", scale=3.0)
    assert torch.equal(filter_top_k_top_p(logits, top_k, top_p), ar_transformer.filter_top_k_top_p(logits, top_k, top_p))


@jit
def _uniforms(out_ptr, seed, first, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    tl.store(out_ptr + i, tl.rand(seed, first + i.to(tl.int64)), mask=i < n)


@pytest.mark.parametrize("seed, first", [(0, 0), (12345, 2**33 - 100), (2**40 + 7, 5)])
def test_philox_equals_triton_rand(device, seed, first):
    got = torch.empty(300, device=device)
    _uniforms[(1,)](got, seed, first, 300, BLOCK=512)
    want = philox_uniform(seed, torch.arange(first, first + 300, dtype=torch.int64, device=device))
    assert torch.equal(got, want)


@pytest.mark.parametrize("top_k, top_p", SETTINGS)
def test_kernel_matches_reference(generator, device, top_k, top_p):
    B, l, V = 2, 3, 301  # V: not a power of two
    logits = randn(generator, 2 * B, l, V, device=device, scale=3.0)
    got = cfg_sample_triton(logits, 1.5, top_k, top_p, seed=1234, keep_filtered=True)
    want = cfg_sample_reference(logits, 1.5, top_k, top_p, seed=1234, keep_filtered=True)
    assert torch.equal(torch.isinf(got.filtered_BlV), torch.isinf(want.filtered_BlV))  # the same codes kept
    torch.testing.assert_close(got.filtered_BlV, want.filtered_BlV, rtol=1e-6, atol=1e-5)
    assert got.idx_Bl.dtype == torch.int64 and torch.equal(got.idx_Bl, want.idx_Bl)
    kept = torch.gather(want.filtered_BlV, -1, got.idx_Bl.unsqueeze(-1))
    assert torch.isfinite(kept).all()  # a drawn code is never a filtered-out one


def test_half_precision_logits(generator, device):
    logits = randn(generator, 2, 2, 100, device=device, dtype=torch.bfloat16, scale=3.0)
    got, want = cfg_sample_triton(logits, 2.0, 10, 0.9, seed=7), cfg_sample_reference(logits, 2.0, 10, 0.9, seed=7)
    assert got.filtered_BlV is None and torch.equal(got.idx_Bl, want.idx_Bl)


def test_seed_decides_the_draw(generator):
    logits = randn(generator, 2, 4, 50, device="cpu")
    a, b = cfg_sample(logits, 1.0, 0, 0.0, seed=1).idx_Bl, cfg_sample(logits, 1.0, 0, 0.0, seed=1).idx_Bl
    assert torch.equal(a, b) and not torch.equal(a, cfg_sample(logits, 1.0, 0, 0.0, seed=2).idx_Bl)


def test_gumbel_max_draws_from_the_softmax(generator):
    """Reference over many tokens (counter offsets): code frequencies follow softmax(z)."""
    V, l = 4, 20000
    z_V = torch.tensor([0.0, 1.0, 2.0, -1.0])
    logits = torch.cat((z_V.expand(1, l, V), torch.zeros(1, l, V)))  # t = 0: the conditional logits
    idx = cfg_sample_reference(logits, 0.0, 0, 0.0, seed=99).idx_Bl
    freq = torch.bincount(idx.flatten(), minlength=V).float() / l
    torch.testing.assert_close(freq, z_V.softmax(0), atol=0.015, rtol=0)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"\(2B, l, V\)"):
        cfg_sample_reference(torch.zeros(3, 2, 5), 1.0, 0, 0.0, seed=0)
    with pytest.raises(ValueError, match="seed must be"):
        cfg_sample_triton(torch.zeros(2, 2, 5), 1.0, 0, 0.0, seed=-1)
    with pytest.raises(ValueError, match="top_p"):
        cfg_sample(torch.zeros(2, 2, 5), 1.0, 0, 1.5, seed=0)


# -- cfg_multinomial: the model's torch.multinomial draw, fused -----------------------------


def _model_draw(logits, t, top_k, top_p, generator, greedy=False):
    """What hart_edu.ar_transformer's eager sampling step computes."""
    B = logits.shape[0] // 2
    guided = (1 + t) * logits[:B] - t * logits[B:]
    filtered = ar_transformer.filter_top_k_top_p(guided, top_k, top_p)
    return ar_transformer.sample_indices(filtered, generator, greedy)


@pytest.mark.parametrize("top_k, top_p", SETTINGS)
def test_multinomial_reference_is_the_models_draw(generator, top_k, top_p):
    """The same indices as torch.multinomial, and the generator left in the same state."""
    logits = randn(generator, 4, 5, 61, device="cpu", scale=3.0)
    g_model, g_ours = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    want = _model_draw(logits, 1.5, top_k, top_p, g_model)
    q = multinomial_noise((2, 5, 61), torch.float32, torch.device("cpu"), g_ours)
    assert torch.equal(cfg_multinomial_reference(logits, 1.5, top_k, top_p, q).idx_Bl, want)
    assert torch.equal(g_model.get_state(), g_ours.get_state())
    greedy = cfg_multinomial_reference(logits, 1.5, top_k, top_p, None).idx_Bl
    assert torch.equal(greedy, _model_draw(logits, 1.5, top_k, top_p, None, greedy=True))


@pytest.mark.parametrize("top_k, top_p", SETTINGS)
def test_multinomial_kernel_matches_reference(generator, device, top_k, top_p):
    B, l, V = 2, 3, 301
    logits = randn(generator, 2 * B, l, V, device=device, scale=3.0)
    q = multinomial_noise((B, l, V), torch.float32, torch.device("cpu"), generator).to(device)
    for noise in (q, None):  # the exponential race, then greedy
        got = cfg_multinomial_triton(logits, 1.5, top_k, top_p, noise, keep_guided=True, keep_filtered=True)
        want = cfg_multinomial_reference(logits, 1.5, top_k, top_p, noise, keep_guided=True, keep_filtered=True)
        torch.testing.assert_close(got.guided_BlV, want.guided_BlV, rtol=1e-6, atol=1e-5)
        assert torch.equal(torch.isinf(got.filtered_BlV), torch.isinf(want.filtered_BlV))
        assert got.idx_Bl.dtype == torch.int64 and torch.equal(got.idx_Bl, want.idx_Bl)


def test_multinomial_dispatch_and_noise_shape(generator):
    logits = randn(generator, 2, 4, 50, device="cpu")
    out = cfg_multinomial(logits, 1.0, 0, 0.0, None)
    assert out.filtered_BlV is None and out.guided_BlV is None
    with pytest.raises(ValueError, match="exponential noise must be"):
        cfg_multinomial(logits, 1.0, 0, 0.0, torch.ones(1, 4, 49))
