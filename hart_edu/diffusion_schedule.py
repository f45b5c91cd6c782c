r"""The noise schedules of the residual diffusion head: IDDPM's betas, respacing, and every
per-step array that follows from them.

HART's diffusion head (:mod:`hart_edu.residual_diffusion`) is MAR's DiffLoss, and DiffLoss runs
on the Gaussian diffusion of IDDPM (Nichol & Dhariwal 2021). This module is the IDDPM half:
numbers that depend on no network. The head holds two schedules built here, the 1000-step one
it is trained on and the respaced one it samples with.

The forward process
-------------------

Over T = 1000 steps with the cosine schedule::

    alpha_bar(s) = cos^2( (s + 0.008) / 1.008 * pi/2 ),   s in [0, 1]
    beta_i       = min(1 - alpha_bar((i+1)/T) / alpha_bar(i/T), 0.999)

(:func:`linear_betas` is DDPM's linear alternative.)

Respacing
---------

A respaced schedule keeps only a few of the 1000 steps (``timestep_map``: respaced index ->
original step, chosen by :func:`space_timesteps`) and recomputes betas so that the kept steps
have the same alpha_bar::

    beta'_k = 1 - alpha_bar[map[k]] / alpha_bar[map[k-1]]

The per-step arrays
-------------------

From any betas every other array of :class:`DiffusionSchedule` follows (all in float64, as in
the official numpy code)::

    alpha_bar_k      = prod_{j<=k} (1 - beta_j),      alpha_bar_prev_k = alpha_bar_{k-1} (1 at k=0)
    posterior var    ~beta_k = beta_k (1 - alpha_bar_prev_k) / (1 - alpha_bar_k)
    posterior mean   mu(x_0, x_t) = coef1_k x_0 + coef2_k x_t,
                     coef1_k = beta_k sqrt(alpha_bar_prev_k) / (1 - alpha_bar_k)
                     coef2_k = (1 - alpha_bar_prev_k) sqrt(1 - beta_k) / (1 - alpha_bar_k)
    x_0 from eps     x_0 = sqrt(1/alpha_bar_k) x_t - sqrt(1/alpha_bar_k - 1) eps

How the head uses them in one reverse step and in its loss is in
:mod:`hart_edu.residual_diffusion`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["cosine_betas", "linear_betas", "space_timesteps", "DiffusionSchedule"]


def cosine_betas(num_steps: int, max_beta: float = 0.999) -> torch.Tensor:
    """IDDPM cosine schedule, (T,) float64.

    beta_i = min(1 - alpha_bar((i+1)/T) / alpha_bar(i/T), max_beta),
    alpha_bar(s) = cos^2((s + 0.008) / 1.008 * pi / 2). Computed in Python floats, as the
    official code does, so the values are bit-identical to it.
    """

    def alpha_bar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta)
        for i in range(num_steps)
    ]
    return torch.tensor(betas, dtype=torch.float64, device="cpu")


def linear_betas(num_steps: int) -> torch.Tensor:
    """DDPM linear schedule rescaled to ``num_steps``: linspace(1e-4, 0.02) * 1000 / T, float64."""
    scale = 1000 / num_steps
    return torch.linspace(scale * 0.0001, scale * 0.02, num_steps, dtype=torch.float64, device="cpu")


def space_timesteps(num_steps: int, spec: str) -> list[int]:
    """Which of the ``num_steps`` original steps a respaced schedule keeps (sorted).

    ``spec`` is ``"ddimN"`` (the first integer stride giving exactly N steps) or a
    comma-separated list of counts, one per equal section of the original steps. Inside a
    section of ``size`` steps, ``count`` steps are taken at ``round(j * stride)``,
    ``stride = (size - 1) / (count - 1)``, accumulated in floats and rounded half-to-even
    exactly like the official loop. E.g. 1000 steps, "4" -> [0, 333, 666, 999].
    """
    if spec.startswith("ddim"):
        wanted = int(spec[len("ddim"):])
        for stride in range(1, num_steps):
            if len(range(0, num_steps, stride)) == wanted:
                return list(range(0, num_steps, stride))
        raise ValueError(f"cannot take exactly {wanted} of {num_steps} steps with an integer stride")
    try:
        counts = [int(part) for part in spec.split(",")]
    except ValueError:
        raise ValueError(
            f"num_sampling_steps={spec!r} is not a respacing spec ('8', '10,5' or 'ddim8')"
        ) from None
    size_per, extra = divmod(num_steps, len(counts))
    start, kept = 0, set()
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.add(start + round(position))
            position += stride
        start += size
    return sorted(kept)


@dataclass(frozen=True)
class DiffusionSchedule:
    """Every per-step array of one (possibly respaced) Gaussian diffusion, (K,) float64 each.

    ``timestep_map[k]`` is the original (1000-step) timestep of respaced step k; the
    network is always called with it. The arrays live on the CPU in float64; a step
    gathers its coefficients with :meth:`gather`, which casts them to float32 (as the
    official ``_extract_into_tensor`` does).
    """

    timestep_map: torch.Tensor  # (K,) int64
    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    log_betas: torch.Tensor

    @property
    def num_steps(self) -> int:
        return int(self.betas.shape[0])

    @classmethod
    def from_betas(cls, betas: torch.Tensor, timestep_map: torch.Tensor | None = None) -> "DiffusionSchedule":
        """All arrays from ``betas`` (K,) float64 (the formulas are in the module docstring)."""
        betas = betas.to(torch.float64)
        if betas.dim() != 1 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must be a 1-D tensor with values in (0, 1]")
        if timestep_map is None:
            timestep_map = torch.arange(betas.shape[0], dtype=torch.int64, device=betas.device)
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)                         # alpha_bar_k
        alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        # ~beta_k = beta_k (1 - alpha_bar_{k-1}) / (1 - alpha_bar_k); it is 0 at k=0, so its
        # log is "clipped" by repeating the value of step 1 at step 0.
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        if betas.shape[0] > 1:
            clipped = torch.cat([posterior_variance[1:2], posterior_variance[1:]])
            posterior_log_variance_clipped = torch.log(clipped)
        else:
            posterior_log_variance_clipped = betas.new_empty(0)
        return cls(
            timestep_map=timestep_map.to(torch.int64),
            betas=betas,
            alphas_cumprod=alphas_cumprod,
            alphas_cumprod_prev=alphas_cumprod_prev,
            posterior_variance=posterior_variance,
            posterior_log_variance_clipped=posterior_log_variance_clipped,
            # mu = coef1 x_0 + coef2 x_t
            posterior_mean_coef1=betas * torch.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * torch.sqrt(alphas) / (1.0 - alphas_cumprod),
            # x_0 = sqrt(1/alpha_bar) x_t - sqrt(1/alpha_bar - 1) eps
            sqrt_recip_alphas_cumprod=torch.sqrt(1.0 / alphas_cumprod),
            sqrt_recipm1_alphas_cumprod=torch.sqrt(1.0 / alphas_cumprod - 1),
            log_betas=torch.log(betas),
        )

    @classmethod
    def respaced(cls, base_betas: torch.Tensor, spec: str) -> "DiffusionSchedule":
        """Keep the steps :func:`space_timesteps` picks; beta'_k = 1 - alpha_bar[m_k] / alpha_bar[m_{k-1}]."""
        kept = space_timesteps(int(base_betas.shape[0]), spec)
        base_alphas_cumprod = torch.cumprod(1.0 - base_betas.to("cpu", torch.float64), dim=0)
        new_betas, last = [], 1.0
        for step in kept:
            alpha_bar = float(base_alphas_cumprod[step])
            new_betas.append(1 - alpha_bar / last)
            last = alpha_bar
        return cls.from_betas(
            torch.tensor(new_betas, dtype=torch.float64, device="cpu"), torch.tensor(kept, device="cpu")
        )

    def gather(self, name: str, t_N: torch.Tensor) -> torch.Tensor:
        """``self.<name>[t]`` as float32 on ``t``'s device, shaped (N, 1) to broadcast over channels."""
        table = getattr(self, name)
        return table.to(t_N.device)[t_N].to(torch.float32)[:, None]
