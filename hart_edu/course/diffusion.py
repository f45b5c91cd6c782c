"""Checkers of notebook 04 (residual diffusion): the cosine noise schedule, its respacing, the
prediction of x_0 from the noise and one reverse step ``p_sample``.

Each compares the learner's function with the package's own (:mod:`hart_edu.diffusion_schedule`,
:class:`hart_edu.residual_diffusion.ResidualDiffusion`) on random and edge-case inputs drawn
from a seeded generator of its own.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from hart_edu.course import ExerciseFailed, call, compare, passed
from hart_edu.diffusion_schedule import DiffusionSchedule, cosine_betas, linear_betas, space_timesteps
from hart_edu.residual_diffusion import DiffusionHeadConfig, ResidualDiffusion

__all__ = ["check_cosine_betas", "check_respace_betas", "check_predict_x0", "check_p_sample_step"]


def check_cosine_betas(fn: Callable[[int], torch.Tensor]) -> int:
    """``fn(T)`` -> the (T,) betas of the IDDPM cosine schedule, clipped at 0.999
    (``hart_edu.diffusion_schedule.cosine_betas``)."""
    name = "cosine_betas"
    hint = ("alpha_bar(s) = cos^2((s + 0.008) / 1.008 * pi / 2); beta_i = min(1 - alpha_bar((i + 1) / T) / "
            "alpha_bar(i / T), 0.999) for i = 0 .. T-1")
    steps = [1, 2, 10, 1000]
    for T in steps:
        case = f"T={T}" + (" (one step: alpha_bar(1) = 0, so the 0.999 clip decides)" if T == 1 else "")
        compare(name, call(name, fn, T), cosine_betas(T), case, hint, atol=1e-6, rtol=1e-4)
    return passed(name, len(steps))


def check_respace_betas(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> int:
    """``fn(base_betas, timestep_map)`` -> the (K,) betas of the respaced chain that keeps only
    the steps of ``timestep_map`` with their alpha_bar (``DiffusionSchedule.respaced``)."""
    name = "respace_betas"
    hint = ("alpha_bar = cumprod(1 - base_betas) (float64); beta'_k = 1 - alpha_bar[m_k] / alpha_bar[m_(k-1)], "
            "with alpha_bar 1 before the first kept step")
    cases = [("cosine", cosine_betas(1000), spec) for spec in ("8", "4", "25", "ddim10", "10,5", "1")]
    cases += [("linear", linear_betas(1000), "8"), ("cosine", cosine_betas(10), "10")]
    for kind, base, spec in cases:
        timestep_map = torch.tensor(space_timesteps(len(base), spec))
        want = DiffusionSchedule.respaced(base, spec).betas
        case = f"{kind} betas over {len(base)} steps, spec {spec!r}: keeps {len(timestep_map)} steps" + \
            (" (all of them: the betas stay the same)" if len(timestep_map) == len(base) else "")
        compare(name, call(name, fn, base.clone(), timestep_map.clone()), want, case, hint, atol=1e-7, rtol=1e-6)
    return passed(name, len(cases))


def _schedules() -> list[tuple[str, DiffusionSchedule]]:
    base = cosine_betas(1000)
    return [(f"cosine, respaced {spec!r}", DiffusionSchedule.respaced(base, spec)) for spec in ("8", "4")] + \
        [("cosine, all 1000 steps", DiffusionSchedule.from_betas(base))]


def _noisy_inputs(s: DiffusionSchedule, t_N: torch.Tensor, g: torch.Generator, C: int) -> tuple[torch.Tensor, ...]:
    """x_t, eps for rows at respaced steps t_N: x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps with x_0 in
    [-1, 1] where 1/alpha_bar is moderate, an independent x_t where it is huge (no cancellation
    that float32 rounding would decide)."""
    N = len(t_N)
    x0_NC, eps_NC = torch.rand(N, C, generator=g) * 2 - 1, torch.randn(N, C, generator=g)
    abar_N1 = s.gather("alphas_cumprod", t_N)
    x_t_NC = abar_N1.sqrt() * x0_NC + (1 - abar_N1).sqrt() * eps_NC
    far_N = s.gather("sqrt_recipm1_alphas_cumprod", t_N)[:, 0] > 20
    x_t_NC[far_N] = torch.randn(int(far_N.sum()), C, generator=g)
    eps_NC = eps_NC + 0.3 * torch.randn(N, C, generator=g)  # a network's guess is not the true noise
    return x_t_NC, eps_NC


def check_predict_x0(fn: Callable[[DiffusionSchedule, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> int:
    """``fn(s, x_t_NC, t_N, eps_NC)`` -> the clamped prediction of x_0 from the predicted noise
    (``ResidualDiffusion.mean_variance(...).pred_xstart``, as ``p_sample`` uses it)."""
    name = "predict_x0"
    hint = ("x_0 = sqrt(1 / alpha_bar_t) x_t - sqrt(1 / alpha_bar_t - 1) eps, clamped to [-1, 1]; s.gather(name, t_N) "
            "reads a schedule array at the rows' steps as float32 (N, 1)")
    g = torch.Generator().manual_seed(401)
    cases = 0
    for label, s in _schedules():
        K = s.num_steps
        t_N = torch.cat([torch.arange(K), torch.randint(0, K, (12,), generator=g)]) if K < 50 else \
            torch.cat([torch.tensor([0, 1, K // 2, K - 1]), torch.randint(0, K, (12,), generator=g)])
        x_t_NC, eps_NC = _noisy_inputs(s, t_N, g, C=4)
        v_NC = torch.zeros_like(x_t_NC)
        want = ResidualDiffusion.mean_variance(s, x_t_NC, t_N, eps_NC, v_NC, clip_denoised=True).pred_xstart
        compare(name, call(name, fn, s, x_t_NC.clone(), t_N.clone(), eps_NC.clone()), want,
                f"{label}, steps {t_N.tolist()}", hint, atol=1e-4, rtol=1e-4)
        cases += 1
    return passed(name, cases)


class _FixedOutput(nn.Module):
    """Stands in for the head's network: returns a given [eps | v] whatever it is asked."""

    def __init__(self, out_N2C: torch.Tensor):
        super().__init__()
        self.out_N2C = out_N2C

    def forward(self, x_NC: torch.Tensor, t_N: torch.Tensor, c_ND: torch.Tensor) -> torch.Tensor:
        return self.out_N2C


def _head(spec: str, C: int) -> ResidualDiffusion:
    with torch.random.fork_rng(devices=[]):  # the network's init must not move the global RNG
        return ResidualDiffusion(DiffusionHeadConfig(token_channels=C, z_channels=2, width=4, depth=1,
                                                     num_sampling_steps=spec)).eval()


def check_p_sample_step(fn: Callable[..., torch.Tensor]) -> int:
    """``fn(s, x_t_NC, t_N, eps_NC, v_NC, noise_NC, temperature)`` -> x_(t-1): one reverse step
    of the head with the network's output (eps, v) given (``ResidualDiffusion.p_sample``, run on
    the package's head with a network that returns exactly that output)."""
    name = "p_sample_step"
    hint = ("x_0 as in predict_x0 (clamped); mean = coef1 x_0 + coef2 x_t (posterior_mean_coef1/2); log var = "
            "f log(beta) + (1 - f) posterior_log_variance_clipped with f = (v + 1) / 2; x_(t-1) = mean + "
            "[t != 0] exp(log var / 2) noise temperature")
    g = torch.Generator().manual_seed(402)
    C, cases = 4, 0
    for spec, temperature in [("8", 1.0), ("8", 0.5), ("4", 1.0), ("8", 0.0), ("ddim10", 1.3)]:
        head = _head(spec, C)
        s = head.gen_schedule
        K = s.num_steps
        t_N = torch.cat([torch.arange(K), torch.randint(0, K, (6,), generator=g)])
        x_t_NC, eps_NC = _noisy_inputs(s, t_N, g, C)
        v_NC = torch.rand(len(t_N), C, generator=g) * 3 - 1.5  # the interpolation value, also outside [-1, 1]
        noise_NC = torch.randn(len(t_N), C, generator=g)
        head.net = _FixedOutput(torch.cat([eps_NC, v_NC], dim=1))
        with torch.no_grad():
            want = head.p_sample(x_t_NC, t_N, torch.zeros(len(t_N), 2), temperature=temperature,
                                 noise=noise_NC).sample
        got = call(name, fn, s, x_t_NC.clone(), t_N.clone(), eps_NC.clone(), v_NC.clone(), noise_NC.clone(),
                   temperature)
        case = f"{K} steps (spec {spec!r}), temperature {temperature:g}, steps {t_N.tolist()}"
        if isinstance(got, torch.Tensor) and got.shape == want.shape:
            last = t_N == 0
            if bool(last.any()) and not torch.allclose(got[last], want[last], atol=1e-4, rtol=1e-4):
                raise ExerciseFailed(f"{name} ({case}): the rows at t = 0 are wrong. Hint: the last step adds no "
                                     f"noise: x_(t-1) is the mean there")
        compare(name, got, want, case, hint, atol=1e-4, rtol=1e-4)
        cases += 1
    return passed(name, cases)
