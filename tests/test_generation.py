"""Tests of hart_edu.generation: guidance and the quirks, sampling with an explicit generator,
MaskGIT rounds, the latents it returns, clear errors."""

from __future__ import annotations

import pytest
import torch

from hart_edu.ar_transformer import HARTTransformer
from hart_edu.generation import OfficialQuirks, SamplingSettings, generate, guidance_ratio

from golden_fixtures import GOLDEN_DIR as GOLDEN, needs_golden  # noqa: E402


@pytest.fixture(scope="module")
def golden():
    from hart_edu.parity import Golden

    return Golden.load(GOLDEN)


@pytest.fixture(scope="module")
def tokenizer(golden):
    from hart_edu.hybrid_tokenizer import HybridTokenizer

    return HybridTokenizer.from_pretrained(golden.official("tokenizer"))


@pytest.fixture(scope="module")
def model(golden):
    return HARTTransformer.from_pretrained(golden.official("llm"), ema=True)


@pytest.fixture(scope="module")
def context(golden):
    return tuple(golden.tensors[n].clone() for n in ("t2i.context", "t2i.context_mask", "t2i.context_position_ids"))


@needs_golden
def test_stage_logits_shapes_and_guidance(model, tokenizer, context):
    r = generate(model, tokenizer.quantizer, *context, SamplingSettings(cfg=4.5, greedy=True, residual=False), capture=True)
    S, B, V = model.config.num_stages, context[0].shape[0], model.vocab_size
    assert [tuple(i.shape) for i in r.indices] == [(B, p * p) for p in model.config.patch_nums]
    assert r.raw_logits[0].shape == (2 * B, model.config.context_token, V)
    assert r.cfg_logits[0].shape == (B, 1, V)
    assert r.residual_BChw is None and r.f_discrete_BChw is r.f_hat_BChw
    torch.testing.assert_close(r.f_hat_BChw, tokenizer.quantizer.indices_to_fhat(r.indices), rtol=0, atol=1e-5)
    # ramp cfg*si/(S-1), and the last stage reuses the stage-before value
    expected = [4.5 * si / (S - 1) for si in range(S - 1)] + [4.5 * (S - 2) / (S - 1)]
    assert r.guidance == pytest.approx(expected)
    fixed = OfficialQuirks(stale_last_stage_cfg=False)
    assert guidance_ratio(S - 1, S, fixed) == 1.0 and guidance_ratio(S - 1, S) == pytest.approx((S - 2) / (S - 1))


@needs_golden
def test_quirk_switches_change_what_they_should(model, tokenizer, context):
    settings = SamplingSettings(cfg=4.5, greedy=True, residual=False)
    ref = generate(model, tokenizer.quantizer, *context, settings, capture=True)
    # padding masked: row 0 (no padding, stage-0 ratio 0 -> cond logits only) is unchanged, row 1 is not
    masked = generate(model, tokenizer.quantizer, *context, settings, quirks=OfficialQuirks(attend_to_padding=False), capture=True)
    assert torch.equal(masked.cfg_logits[0][0], ref.cfg_logits[0][0])
    assert (masked.cfg_logits[0][1] - ref.cfg_logits[0][1]).abs().max() > 1e-3
    # non-stale ratio at the last stage: only the last stage's guided logits move
    fresh = generate(model, tokenizer.quantizer, *context, settings,
                           quirks=OfficialQuirks(stale_last_stage_cfg=False), capture=True)
    assert torch.allclose(fresh.cfg_logits[-2], ref.cfg_logits[-2])
    assert (fresh.cfg_logits[-1] - ref.cfg_logits[-1]).abs().max() > 1e-3
    # stage 0 from each row's last valid position (row 1 is right-padded)
    valid = generate(model, tokenizer.quantizer, *context, settings,
                           quirks=OfficialQuirks(stage0_reads_last_position=False), capture=True)
    last_valid = int(context[1][1].sum()) - 1
    assert torch.allclose(valid.cfg_logits[0][1, 0], ref.raw_logits[0][1, last_valid])


# --------------------------------------------------------------------------------------
# Sampling with an explicit generator
# --------------------------------------------------------------------------------------


@needs_golden
def test_sampling_is_deterministic_per_generator(model, tokenizer, context):
    s = SamplingSettings(cfg=2.0, top_k=8, top_p=0.9, residual=True)
    quirks = OfficialQuirks(top_k_override=False)

    def run(seed):
        return generate(model, tokenizer.quantizer, *context, s, generator=torch.Generator().manual_seed(seed), quirks=quirks)

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(x, y) for x, y in zip(a.indices, b.indices))
    assert torch.equal(a.f_hat_BChw, b.f_hat_BChw)
    assert not all(torch.equal(x, y) for x, y in zip(a.indices, c.indices))


@needs_golden
def test_sampled_codes_stay_in_the_top_k(model, tokenizer, context):
    s = SamplingSettings(cfg=2.0, top_k=3, residual=False)
    r = generate(model, tokenizer.quantizer, *context, s, generator=torch.Generator().manual_seed(3),
                       quirks=OfficialQuirks(top_k_override=False), capture=True)
    for idx_Bl, logits_BlV in zip(r.indices, r.cfg_logits):
        top3 = logits_BlV.topk(3, dim=-1).indices
        assert bool((top3 == idx_Bl.unsqueeze(-1)).any(-1).all())


@needs_golden
def test_more_smooth_and_maskgit_rounds_run_deterministically(model, tokenizer, context):
    s = SamplingSettings(cfg=4.5, more_smooth=True, num_maskgit_iters=3, residual=True)
    a = generate(model, tokenizer.quantizer, *context, s, generator=torch.Generator().manual_seed(5))
    b = generate(model, tokenizer.quantizer, *context, s, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.f_hat_BChw, b.f_hat_BChw)
    assert int((a.indices[-1] < 0).sum()) == 0  # every last-scale position was predicted once


@needs_golden
def test_sampling_without_generator_is_an_error(model, tokenizer, context):
    with pytest.raises(ValueError, match="generator"):
        generate(model, tokenizer.quantizer, *context, SamplingSettings(residual=False))


@needs_golden
def test_bad_context_shape_is_an_error(model, tokenizer, context):
    ctx, mask, pos = context
    with pytest.raises(ValueError, match="context must be"):
        generate(model, tokenizer.quantizer, ctx[:, :-1], mask, pos, SamplingSettings(greedy=True, residual=False))


@needs_golden
def test_latents_with_the_residual(model, tokenizer, context):
    s = SamplingSettings(cfg=4.5, greedy=True, residual=True)
    r = generate(model, tokenizer.quantizer, *context, s, generator=torch.Generator().manual_seed(0))
    p, Cvae = model.config.patch_nums[-1], model.vae_channels
    assert r.residual_BChw.shape == r.f_discrete_BChw.shape == r.f_hat_BChw.shape == (context[0].shape[0], Cvae, p, p)
    assert r.residual_BChw.abs().mean() > 1e-3
    # the discrete latent is the codes' composition; f_hat adds the residual (up to rounding)
    torch.testing.assert_close(r.f_discrete_BChw, tokenizer.quantizer.indices_to_fhat(r.indices), rtol=0, atol=1e-5)
    torch.testing.assert_close(r.f_hat_BChw, r.f_discrete_BChw + r.residual_BChw, rtol=0, atol=1e-5)
    # the residual is the conditional half of what the head returned, as a latent
    B, l = context[0].shape[0], p * p
    rows_BlC = r.diffusion_out[: B * l].view(B, l, Cvae)
    assert torch.equal(r.residual_BChw, rows_BlC.transpose(1, 2).reshape(B, Cvae, p, p))


def test_settings_take_residual_as_a_bool():
    with pytest.raises(ValueError, match="residual"):
        SamplingSettings(residual=0)
