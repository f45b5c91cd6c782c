"""cfg_sample: the reference's filter keeps what it should, its draw is torch.multinomial's own
(same codes, generator left in the same state), and the one-launch kernel gives the same
guided and filtered logits and the same codes."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import randn

from hart_edu.kernels.cfg_sample import (
    cfg_sample,
    cfg_sample_reference,
    cfg_sample_triton,
    filter_top_k_top_p,
    multinomial_noise,
)

SETTINGS = [(0, 0.0), (50, 0.0), (0, 0.8), (20, 0.9), (600, 0.95), (1, 0.0), (7, 1.0)]  # (top_k, top_p)


def test_filter_top_k_top_p():
    logits = torch.tensor([[[0.0, 1.0, 2.0, 3.0, 4.0]]])
    k2 = filter_top_k_top_p(logits, top_k=2, top_p=0.0)
    assert torch.isfinite(k2).tolist() == [[[False, False, False, True, True]]]
    assert torch.equal(filter_top_k_top_p(logits, top_k=50, top_p=0.0), logits)  # k >= V keeps all
    p = logits.softmax(-1)[0, 0]  # ~ [.01, .03, .09, .24, .64]
    nucleus = filter_top_k_top_p(logits, top_k=0, top_p=0.5)
    assert torch.isfinite(nucleus).tolist() == [[[False, False, False, False, True]]] and p[-1] > 0.5
    nucleus = filter_top_k_top_p(logits, top_k=0, top_p=0.8)
    assert torch.isfinite(nucleus).sum() == 2
    ties = torch.tensor([[[1.0, 3.0, 3.0, 0.0]]])
    assert torch.isfinite(filter_top_k_top_p(ties, top_k=1, top_p=0.0)).tolist() == [[[False, True, True, False]]]


@pytest.mark.parametrize("top_k, top_p", SETTINGS)
def test_reference_draw_is_torch_multinomial(generator, top_k, top_p):
    """The same codes as torch.multinomial on the filtered softmax, and the generator left in
    the same state (so every later draw of a run is unchanged)."""
    B, l, V = 2, 5, 61
    logits = randn(generator, 2 * B, l, V, device="cpu", scale=3.0)
    g_multinomial, g_ours = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    filtered = filter_top_k_top_p((1 + 1.5) * logits[:B] - 1.5 * logits[B:], top_k, top_p)
    want = torch.multinomial(filtered.softmax(-1).view(-1, V), 1, generator=g_multinomial).view(B, l)
    q = multinomial_noise((B, l, V), torch.float32, torch.device("cpu"), g_ours)
    assert torch.equal(cfg_sample_reference(logits, 1.5, top_k, top_p, q).idx_Bl, want)
    assert torch.equal(g_multinomial.get_state(), g_ours.get_state())
    greedy = cfg_sample_reference(logits, 1.5, top_k, top_p, None).idx_Bl
    assert torch.equal(greedy, filtered.argmax(-1))


def test_draws_follow_the_softmax():
    """Over many tokens the code frequencies follow softmax(z)."""
    V, l = 4, 20000
    z_V = torch.tensor([0.0, 1.0, 2.0, -1.0])
    logits = torch.cat((z_V.expand(1, l, V), torch.zeros(1, l, V)))  # t = 0: the conditional logits
    q = multinomial_noise((1, l, V), torch.float32, torch.device("cpu"), torch.Generator().manual_seed(99))
    idx = cfg_sample_reference(logits, 0.0, 0, 0.0, q).idx_Bl
    freq = torch.bincount(idx.flatten(), minlength=V).float() / l
    torch.testing.assert_close(freq, z_V.softmax(0), atol=0.015, rtol=0)


@pytest.mark.parametrize("top_k, top_p", SETTINGS)
def test_kernel_matches_reference(generator, device, top_k, top_p):
    B, l, V = 2, 3, 301  # V: not a power of two
    logits = randn(generator, 2 * B, l, V, device=device, scale=3.0)
    q = multinomial_noise((B, l, V), torch.float32, torch.device("cpu"), generator).to(device)
    for noise in (q, None):  # the exponential race, then greedy
        got = cfg_sample_triton(logits, 1.5, top_k, top_p, noise, keep_guided=True, keep_filtered=True)
        want = cfg_sample_reference(logits, 1.5, top_k, top_p, noise, keep_guided=True, keep_filtered=True)
        torch.testing.assert_close(got.guided_BlV, want.guided_BlV, rtol=1e-6, atol=1e-5)
        assert torch.equal(torch.isinf(got.filtered_BlV), torch.isinf(want.filtered_BlV))  # the same codes kept
        torch.testing.assert_close(got.filtered_BlV, want.filtered_BlV, rtol=1e-6, atol=1e-5)
        assert got.idx_Bl.dtype == torch.int64 and torch.equal(got.idx_Bl, want.idx_Bl)
        kept = torch.gather(want.filtered_BlV, -1, got.idx_Bl.unsqueeze(-1))
        assert torch.isfinite(kept).all()  # a drawn code is never a filtered-out one


def test_half_precision_logits_are_computed_in_float32(generator, device):
    """The kernel reads bf16 logits and computes in float32: the reference on the float32 values."""
    B, l, V = 1, 2, 100
    logits = randn(generator, 2 * B, l, V, device=device, dtype=torch.bfloat16, scale=3.0)
    q = multinomial_noise((B, l, V), torch.float32, torch.device("cpu"), generator).to(device)
    got = cfg_sample_triton(logits, 2.0, 10, 0.9, q)
    assert got.filtered_BlV is None and got.guided_BlV is None
    assert torch.equal(got.idx_Bl, cfg_sample_reference(logits.float(), 2.0, 10, 0.9, q).idx_Bl)


def test_dispatch_and_bad_arguments(generator):
    logits = randn(generator, 2, 4, 50, device="cpu")
    out = cfg_sample(logits, 1.0, 0, 0.0, None)
    assert out.filtered_BlV is None and out.guided_BlV is None
    assert torch.equal(out.idx_Bl, (2 * logits[:1] - logits[1:]).argmax(-1))  # t = 1, no filter, greedy
    with pytest.raises(ValueError, match="exponential noise must be"):
        cfg_sample(logits, 1.0, 0, 0.0, torch.ones(1, 4, 49))
    with pytest.raises(ValueError, match=r"\(2B, l, V\)"):
        cfg_sample_reference(torch.zeros(3, 2, 5), 1.0, 0, 0.0, None)
    with pytest.raises(ValueError, match="top_p"):
        cfg_sample(torch.zeros(2, 2, 5), 1.0, 0, 1.5, None)
