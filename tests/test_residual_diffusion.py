"""Residual diffusion head: golden parity, schedules, determinism, replay, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from hart_edu.checkpoint import CheckpointError
from hart_edu.diffusion_schedule import DiffusionSchedule, cosine_betas, space_timesteps
from hart_edu.residual_diffusion import DiffusionHeadConfig, ResidualDiffusion

from golden_fixtures import GOLDEN_DIR, needs_golden  # noqa: E402


def tiny_head(seed: int = 0, **overrides) -> ResidualDiffusion:
    """A small randomly initialised head (the init zeroes the output layers, so perturb them)."""
    torch.manual_seed(seed)  # test-only: makes the random weights reproducible
    config = dict(token_channels=4, z_channels=12, width=16, depth=2, num_sampling_steps="5")
    config.update(overrides)
    head = ResidualDiffusion(DiffusionHeadConfig(**config)).eval()
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return head


# ---- parity with the official code ------------------------------------------------------


@pytest.fixture(scope="module")
def golden_run():
    from hart_edu.parity import Golden
    from hart_edu.parity.diffusion import produce

    golden = Golden.load(GOLDEN_DIR)
    return golden, produce(golden)


@needs_golden
def test_every_diff_and_sched_tensor_matches(golden_run):
    from hart_edu.parity import compare

    golden, produced = golden_run
    wanted = golden.names("diff.") + golden.names("sched.")
    covered = set(produced) | golden.inputs_used
    assert sorted(set(wanted) - covered) == []
    bad = [c for c in (compare(n, golden.tensors[n], produced[n]) for n in produced) if not c.ok]
    assert bad == [], bad


@needs_golden
def test_schedule_arrays_are_float64_and_exact(golden_run):
    golden, produced = golden_run
    for name in golden.names("sched."):
        assert produced[name].dtype == golden.tensors[name].dtype, name
        assert torch.equal(produced[name], golden.tensors[name]), name


@needs_golden
def test_sampler_reproduces_the_pipeline_call_of_the_t2i_final0_run(golden_run):
    """The head alone, fed the z and draws recorded inside the full HART run (cfg 3.6)."""
    from hart_edu.parity import compare
    from hart_edu.parity.diffusion import load_head

    golden, _ = golden_run
    run = "t2i.ema.final0."
    prefix = run + "noise."
    names = sorted(golden.names(prefix), key=lambda n: int(n[len(prefix):]))
    head = load_head(golden)
    out = head.sample(
        golden.tensors[run + "diff_z"], cfg=golden.info["t2i_final0_diff_cfg"],
        noises=[golden.tensors[n] for n in names],
    )
    check = compare(run + "diff_out", golden.tensors[run + "diff_out"], out.tokens_NC)
    assert check.ok, check


@needs_golden
def test_head_keys_are_the_released_official_keys():
    manifest = json.loads((GOLDEN_DIR / "manifest-hart-0.7b-1024px.json").read_text())["transformer_llm"]
    official = {k[len("diffloss."):]: tuple(v["shape"]) for k, v in manifest["state_dict"].items()
                if k.startswith("diffloss.")}
    raw = manifest["config_used"]
    with torch.device("meta"):
        head = ResidualDiffusion.from_config(raw, token_channels=official["net.input_proj.weight"][1])
    ours = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert ours == official
    assert sum(p.numel() for p in head.parameters()) == manifest["diffloss_params"]


# ---- schedules --------------------------------------------------------------------------


def test_respacing_examples():
    assert space_timesteps(1000, "4") == [0, 333, 666, 999]
    assert space_timesteps(300, "10,15,20")[:3] == [0, 11, 22]
    assert len(space_timesteps(300, "10,15,20")) == 45
    assert space_timesteps(1000, "ddim10") == list(range(0, 1000, 100))
    with pytest.raises(ValueError, match="cannot divide"):
        space_timesteps(10, "11")


def test_respaced_schedule_keeps_alpha_bar():
    base = cosine_betas(1000)
    full = DiffusionSchedule.from_betas(base)
    sched = DiffusionSchedule.respaced(base, "7")
    kept = sched.timestep_map
    torch.testing.assert_close(sched.alphas_cumprod, full.alphas_cumprod[kept], rtol=1e-12, atol=1e-15)


# ---- the network and one step -----------------------------------------------------------


def test_cfg_mixes_only_eps_and_uses_cond_half_of_x():
    head = tiny_head()
    x, c = torch.randn(6, 4), torch.randn(6, 12)
    t = torch.tensor([0, 5, 999, 0, 5, 999])
    out = head.net.forward_with_cfg(x, t, c, cfg_scale=2.0)
    x_cond = torch.cat([x[:3], x[:3]])
    plain = head.net(x_cond, t, c)
    eps_guided = 3.0 * plain[:3, :4] - 2.0 * plain[3:, :4]
    torch.testing.assert_close(out[:, :4], torch.cat([eps_guided, eps_guided]))
    torch.testing.assert_close(out[:, 4:], plain[:, 4:])  # the variance channels stay per row
    # the unconditional half of x is ignored
    x_other = torch.cat([x[:3], torch.randn(3, 4)])
    assert torch.equal(head.net.forward_with_cfg(x_other, t, c, 2.0), out)


def test_temperature_scales_only_the_noise_and_t0_adds_none():
    head = tiny_head()
    x, c, noise = torch.randn(4, 4), torch.randn(4, 12), torch.randn(4, 4)
    t = torch.tensor([0, 1, 2, 4])
    pmv = head.p_mean_variance(x, t, c)
    hot = head.p_sample(x, t, c, temperature=1.0, noise=noise).sample
    cold = head.p_sample(x, t, c, temperature=0.5, noise=noise).sample
    torch.testing.assert_close(hot - pmv.mean, 2 * (cold - pmv.mean))
    assert torch.equal(hot[0], pmv.mean[0])


# ---- sampling: determinism and replay ---------------------------------------------------


def test_same_generator_seed_is_bit_identical():
    head = tiny_head()
    z = torch.randn(10, 12)
    a = head.sample(z, cfg=3.0, generator=torch.Generator().manual_seed(7))
    b = head.sample(z, cfg=3.0, generator=torch.Generator().manual_seed(7))
    c = head.sample(z, cfg=3.0, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.tokens_NC, b.tokens_NC)
    assert not torch.equal(a.tokens_NC, c.tokens_NC)


def test_noises_follow_the_official_order_and_replay_exactly():
    head = tiny_head()
    z = torch.randn(10, 12)
    run = head.sample(z, cfg=3.0, temperature=0.9, generator=torch.Generator().manual_seed(1), return_steps=True)
    assert [tuple(n.shape) for n in run.noises] == [(5, 4)] + [(10, 4)] * 5
    assert [s.t for s in run.steps] == [4, 3, 2, 1, 0]
    assert [s.t_original for s in run.steps] == head.gen_schedule.timestep_map.flip(0).tolist()
    # the draws are those of a CPU generator with the same seed, in call order
    g = torch.Generator().manual_seed(1)
    expected = [torch.randn(5, 4, generator=g)] + [torch.randn(10, 4, generator=g) for _ in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(run.noises, expected))
    replay = head.sample(z, cfg=3.0, temperature=0.9, noises=run.noises)
    assert torch.equal(replay.tokens_NC, run.tokens_NC)
    assert torch.equal(run.tokens_NC, run.x0_NC * 0.6)
    # the unconditional half's step noises never reach the conditional half
    altered = [run.noises[0]] + [torch.cat([n[:5], torch.randn(5, 4)]) for n in run.noises[1:]]
    other = head.sample(z, cfg=3.0, temperature=0.9, noises=altered)
    assert torch.equal(other.tokens_NC[:5], run.tokens_NC[:5])
    assert not torch.equal(other.tokens_NC[5:], run.tokens_NC[5:])


def test_cfg_one_switches_guidance_off_like_the_official_code():
    head = tiny_head()
    z = torch.randn(5, 12)  # an odd count is fine without guidance
    run = head.sample(z, cfg=1.0, generator=torch.Generator().manual_seed(0))
    assert tuple(run.noises[0].shape) == (5, 4)


# ---- loading and errors -----------------------------------------------------------------


def test_strict_loading_names_the_bad_keys():
    head = tiny_head()
    state = head.state_dict()
    state.pop("net.cond_embed.bias")
    state["net.input_proj.weight"] = torch.zeros(16, 5)
    with pytest.raises(CheckpointError, match=r"net\.cond_embed\.bias(.|\n)*net\.input_proj\.weight"):
        tiny_head().load_official_state_dict(state, source="test")


def test_clear_errors_for_bad_input():
    head = tiny_head()
    z = torch.randn(6, 12)
    with pytest.raises(ValueError, match="exactly one of generator"):
        head.sample(z, cfg=2.0)
    with pytest.raises(ValueError, match="exactly one of generator"):
        head.sample(z, cfg=2.0, generator=torch.Generator(), noises=[])
    with pytest.raises(ValueError, match="generator"):
        head.p_sample(torch.randn(6, 4), torch.zeros(6, dtype=torch.long), z)
    with pytest.raises(ValueError, match=r"z must be \(N, 12\)"):
        head.sample(torch.randn(6, 11), cfg=2.0, generator=torch.Generator())
    with pytest.raises(ValueError, match="even"):
        head.sample(torch.randn(5, 12), cfg=2.0, generator=torch.Generator())
    with pytest.raises(ValueError, match="noises must be 6 tensors"):
        head.sample(z, cfg=2.0, noises=[torch.randn(6, 4)] * 6)
    with pytest.raises(ValueError, match=r"t holds respaced step indices, 0\.\.4"):
        head.p_sample(torch.randn(6, 4), torch.full((6,), 5), z, noise=torch.randn(6, 4))
    with pytest.raises(ValueError, match=r"x must be \(N, 4\)"):
        head.p_mean_variance(torch.randn(6, 3), torch.zeros(6, dtype=torch.long), z)
    with pytest.raises(ValueError, match="sampler"):
        DiffusionHeadConfig(token_channels=4, z_channels=8, sampler="ddim")
    with pytest.raises(ValueError, match="num_sampling_steps"):
        DiffusionHeadConfig(token_channels=4, z_channels=8, num_sampling_steps=8)


class _PerfectNet(torch.nn.Module):
    """Returns the true noise and v = -1 (variance = the true posterior variance)."""

    def __init__(self, eps_NC):
        super().__init__()
        self.eps_NC = eps_NC

    def forward(self, x_NC, t_N, c_ND):
        return torch.cat([self.eps_NC, -torch.ones_like(self.eps_NC)], dim=1)


def test_training_loss_vanishes_for_the_true_noise_and_posterior():
    head = ResidualDiffusion(DiffusionHeadConfig(token_channels=4, z_channels=8, width=16, depth=1))
    g = torch.Generator().manual_seed(0)
    target, z = torch.randn(64, 4, generator=g) * 0.3, torch.randn(64, 8, generator=g)
    t_N, eps = torch.randint(1, 1000, (64,), generator=g), torch.randn(64, 4, generator=g)
    head.net = _PerfectNet(eps)
    out = head.training_loss(target, z, None, t_N=t_N, noise_NC=eps)
    assert float(out.mse) == 0.0
    assert abs(float(out.vb)) < 1e-3, float(out.vb)
    # a wrong noise prediction costs both terms
    head.net = _PerfectNet(eps + 0.5)
    worse = head.training_loss(target, z, None, t_N=t_N, noise_NC=eps)
    assert float(worse.mse) == pytest.approx(0.25, rel=1e-5) and float(worse.vb) > 0.01


def test_training_loss_draws_from_the_generator_only():
    head = ResidualDiffusion(DiffusionHeadConfig(token_channels=4, z_channels=8, width=16, depth=1))
    target, z = torch.randn(32, 4), torch.randn(32, 8)
    a = head.training_loss(target, z, torch.Generator().manual_seed(5))
    b = head.training_loss(target, z, torch.Generator().manual_seed(5))
    assert torch.equal(a.loss, b.loss)
    with pytest.raises(ValueError, match="generator"):
        head.training_loss(target, z, None)
