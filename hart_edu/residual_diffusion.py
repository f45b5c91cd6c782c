r"""HART's residual diffusion head: a small MLP denoiser that samples the continuous residual.

After the transformer has chosen the discrete code of every last-scale token, what the
discrete codebook cannot express (the *residual token*, ``Cvae`` channels per token) is
sampled by a tiny diffusion model, one token at a time, conditioned on the transformer's
hidden state ``z`` for that token. HART took this head from MAR ("DiffLoss") unchanged.

The network: an MLP with adaptive LayerNorm (``SimpleMLPAdaLN`` in the official code)
-------------------------------------------------------------------------------------

For a noisy token ``x`` (N, Cvae), an integer timestep ``t`` (N,) on the 1000-step scale
and a condition ``c`` (N, D)::

    y   = TimeMLP(sinusoid(t)) + W_c c                  (one conditioning vector per row)
    h   = W_in x
    h  <- h + gate * MLP( LN(h) * (1 + scale) + shift )  for each res block,
                                                         (shift, scale, gate) = W_k SiLU(y)
    out = W_out( LN(h) * (1 + scale) + shift ),          (shift, scale) = W_f SiLU(y)

``out`` has 2*Cvae channels: the predicted noise ``eps`` and ``v``, the learned
interpolation value of the log-variance (see below).

The Gaussian diffusion (IDDPM, Nichol & Dhariwal 2021)
-----------------------------------------------------

The schedules are plain numbers and live in :mod:`hart_edu.diffusion_schedule`: the cosine
betas over T = 1000 steps, the respaced subset of steps the sampler keeps (``timestep_map``:
respaced index -> original step) and every per-step array (alpha_bar_k, the posterior
variance ~beta_k, the posterior-mean coefficients coef1_k, coef2_k), with their formulas.
The head holds two of them: ``train_schedule`` (all T steps) and ``gen_schedule`` (respaced).

One reverse step ``p_sample`` at respaced index k (the network is shown the *original*
timestep ``map[k]``)::

    x_0^   = clamp( sqrt(1/alpha_bar_k) x_t - sqrt(1/alpha_bar_k - 1) eps, -1, 1 )
    mean   = coef1_k x_0^ + coef2_k x_t
    log s2 = f log(beta_k) + (1 - f) log(~beta_k),   f = (v + 1) / 2   ("learned range";
             f is not clipped, so v outside [-1, 1] extrapolates)
    x_{t-1} = mean + [k != 0] * exp(log s2 / 2) * noise * temperature

Temperature scales only the noise, not the variance that is reported.

Training (:meth:`ResidualDiffusion.training_loss`, next to :meth:`~ResidualDiffusion.sample`
as in MAR's DiffLoss) uses the same p(x_{t-1} | x_t) (:meth:`~ResidualDiffusion.mean_variance`)
on the 1000-step schedule, at one random t per row::

    x_t  = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,    x_0 = target / vae_scale
    loss = |eps - eps_theta|^2 + KL( q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t) ) / ln 2

Classifier-free guidance
------------------------

With guidance the batch holds N/2 conditional rows then N/2 unconditional rows. The
network sees the *conditional half of x twice* (once with each condition) and only the
eps channels are mixed::

    eps_guided = (1 + s) eps_cond - s eps_uncond      (copied to both halves)

The variance channels are not mixed: every row keeps its own. The sampler starts both
halves from the same initial noise, but each row then gets its own step noise, so the
unconditional half drifts away and is thrown away by HART.

Official behaviour reproduced here (checked against the golden fixtures, tests/golden):

* guidance is switched on exactly when ``cfg != 1.0`` (``use_cfg`` makes this explicit);
* random draws, in order: #0 the initial noise (N/2, C) with guidance or (N, C) without,
  then one (N, C) draw per step, *including* the last step (t = 0) whose draw is unused;
* the result is multiplied by ``vae_scale = 0.6``.

With a ``torch.Generator`` on the CPU seeded like the official global seed, the draws are
the same numbers the official code draws from the global generator.

Inside ``hart_edu.kernels.backend.use_backend("triton")`` every ``LN(h) * (1 + scale) + shift``
runs as one fused kernel (``hart_edu.kernels.layernorm_modulate``, forward and backward).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from hart_edu.checkpoint import check_state_dict
from hart_edu.diffusion_schedule import DiffusionSchedule, cosine_betas, linear_betas
from hart_edu.kernels.layernorm_modulate import layernorm_modulate

__all__ = [
    "DiffusionHeadConfig",
    "timestep_embedding",
    "MLPAdaLN",
    "PMeanVariance",
    "PSample",
    "DiffusionStep",
    "DiffusionSample",
    "DiffusionLoss",
    "discretized_gaussian_log_likelihood",
    "ResidualDiffusion",
    "strip_prefix",
]

VAE_SCALE = 0.6  # DiffLoss.vae_scale: the head works on residuals divided by 0.6
TRAINING_STEPS = 1000  # create_diffusion(diffusion_steps=1000)
TIME_FREQUENCY_DIM = 256  # TimestepEmbedder(frequency_embedding_size=256)
LN_EPS = 1e-6


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiffusionHeadConfig:
    """Settings of the head (official ``DiffLoss`` arguments, with HARTForT2IConfig defaults).

    ``token_channels`` is ``Cvae`` (the tokenizer's ``z_channels``); ``z_channels`` is the
    width of the condition, the transformer's ``embed_dim``. ``num_sampling_steps`` is the
    official respacing spec: a string such as ``"8"``, ``"10,5"`` or ``"ddim8"``.
    ``noise_schedule`` and ``training_steps`` are what DiffLoss passes to create_diffusion.
    """

    token_channels: int
    z_channels: int
    width: int = 1024
    depth: int = 6
    num_sampling_steps: str = "8"
    sampler: str = "iddpm"
    noise_schedule: str = "cosine"
    training_steps: int = TRAINING_STEPS
    vae_scale: float = VAE_SCALE

    def __post_init__(self) -> None:
        for name in ("token_channels", "z_channels", "width", "depth", "training_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DiffusionHeadConfig.{name} must be a positive int, got {value!r}")
        if self.sampler != "iddpm":
            raise ValueError(
                f"sampler={self.sampler!r} is not supported: the official DiffLoss implements "
                "only 'iddpm' (it raises NotImplementedError for anything else)"
            )
        if self.noise_schedule not in ("cosine", "linear"):
            raise ValueError(f"noise_schedule={self.noise_schedule!r}: use 'cosine' or 'linear'")
        if not isinstance(self.num_sampling_steps, str):
            raise ValueError(
                f"num_sampling_steps must be a respacing string like '8', got "
                f"{self.num_sampling_steps!r} ({type(self.num_sampling_steps).__name__})"
            )

    @classmethod
    def from_transformer_config(cls, config: Any, token_channels: int) -> "DiffusionHeadConfig":
        """The head's settings from a HARTForT2I config.json dict (or a config object).

        Reads ``embed_dim``, ``diff_width``, ``diff_depth``, ``num_sampling_steps`` and
        ``sampler``; absent keys take the official class defaults. ``token_channels``
        (Cvae) is not in the transformer config: it is the tokenizer's ``z_channels``.
        """

        def get(key: str, default: Any) -> Any:
            if isinstance(config, Mapping):
                return config.get(key, default)
            return getattr(config, key, default)

        return cls(
            token_channels=token_channels,
            z_channels=get("embed_dim", 1024),
            width=get("diff_width", 1024),
            depth=get("diff_depth", 6),
            num_sampling_steps=get("num_sampling_steps", "8"),
            sampler=get("sampler", "iddpm"),
        )


# --------------------------------------------------------------------------------------
# The denoiser network (state-dict keys follow the official SimpleMLPAdaLN)
# --------------------------------------------------------------------------------------


def timestep_embedding(t_N: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (N, dim) of (possibly fractional) timesteps, float32.

    freq_j = exp(-ln(max_period) * j / (dim/2)), j < dim/2;  emb = [cos(t freq), sin(t freq)]
    (zero-padded by one column when ``dim`` is odd).
    """
    half = dim // 2
    freqs_H = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t_N.device) / half)
    args_NH = t_N[:, None].float() * freqs_H[None]
    emb_ND = torch.cat([torch.cos(args_NH), torch.sin(args_NH)], dim=-1)
    if dim % 2:
        emb_ND = torch.cat([emb_ND, torch.zeros_like(emb_ND[:, :1])], dim=-1)
    return emb_ND


def _two_layer_mlp(d_in: int, d_out: int) -> nn.Sequential:
    """Linear -> SiLU -> Linear (keys ``0.*`` and ``2.*``, as in the official checkpoints)."""
    return nn.Sequential(nn.Linear(d_in, d_out), nn.SiLU(), nn.Linear(d_out, d_out))


def _modulation(width: int, chunks: int) -> nn.Sequential:
    """SiLU -> Linear(width, chunks*width) (key ``1.*``): adaLN parameters from y."""
    return nn.Sequential(nn.SiLU(), nn.Linear(width, chunks * width))


class TimestepEmbedder(nn.Module):
    """t (N,) -> MLP(sinusoid(t)) (N, width)."""

    def __init__(self, width: int, frequency_dim: int = TIME_FREQUENCY_DIM):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = _two_layer_mlp(frequency_dim, width)

    def forward(self, t_N: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t_N, self.frequency_dim))


def layer_norm_modulate(norm: nn.LayerNorm, h_NW: torch.Tensor, scale_NW: torch.Tensor,
                        shift_NW: torch.Tensor) -> torch.Tensor:
    """adaLN: ``norm(h) * (1 + scale) + shift`` (``hart_edu.kernels.layernorm_modulate``)."""
    return layernorm_modulate(h_NW, norm.weight, norm.bias, scale_NW, shift_NW, norm.eps)


class AdaLNResBlock(nn.Module):
    """h + gate * MLP(LN(h) * (1 + scale) + shift), with (shift, scale, gate) from y."""

    def __init__(self, width: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=LN_EPS)
        self.mlp = _two_layer_mlp(width, width)
        self.adaLN_modulation = _modulation(width, 3)

    def forward(self, h_NW: torch.Tensor, y_NW: torch.Tensor) -> torch.Tensor:
        shift_NW, scale_NW, gate_NW = self.adaLN_modulation(y_NW).chunk(3, dim=-1)
        return h_NW + gate_NW * self.mlp(layer_norm_modulate(self.in_ln, h_NW, scale_NW, shift_NW))


class FinalLayer(nn.Module):
    """Linear(LN(h) * (1 + scale) + shift), a non-affine LayerNorm, (shift, scale) from y."""

    def __init__(self, width: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=LN_EPS)
        self.linear = nn.Linear(width, out_channels)
        self.adaLN_modulation = _modulation(width, 2)

    def forward(self, h_NW: torch.Tensor, y_NW: torch.Tensor) -> torch.Tensor:
        shift_NW, scale_NW = self.adaLN_modulation(y_NW).chunk(2, dim=-1)
        return self.linear(layer_norm_modulate(self.norm_final, h_NW, scale_NW, shift_NW))


class MLPAdaLN(nn.Module):
    """The denoiser: (x (N, C), t (N,), c (N, D)) -> [eps | v] (N, 2C). See the module docstring."""

    def __init__(self, token_channels: int, width: int, z_channels: int, depth: int):
        super().__init__()
        self.token_channels = token_channels
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(z_channels, width)
        self.input_proj = nn.Linear(token_channels, width)
        self.res_blocks = nn.ModuleList(AdaLNResBlock(width) for _ in range(depth))
        self.final_layer = FinalLayer(width, 2 * token_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """MAR's init: xavier Linear weights, zero biases, N(0, 0.02) time MLP, zeroed adaLN
        and output layers (so an untrained head predicts eps = 0, v = 0)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        zeroed = [b.adaLN_modulation[1] for b in self.res_blocks]
        zeroed += [self.final_layer.adaLN_modulation[1], self.final_layer.linear]
        for linear in zeroed:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, x_NC: torch.Tensor, t_N: torch.Tensor, c_ND: torch.Tensor) -> torch.Tensor:
        """[eps | v] (N, 2C); ``t_N`` is on the original 1000-step scale."""
        y_NW = self.time_embed(t_N) + self.cond_embed(c_ND)  # y = TimeMLP(t) + W_c c
        h_NW = self.input_proj(x_NC)
        for block in self.res_blocks:
            h_NW = block(h_NW, y_NW)
        return self.final_layer(h_NW, y_NW)

    def forward_with_cfg(
        self, x_NC: torch.Tensor, t_N: torch.Tensor, c_ND: torch.Tensor, cfg_scale: float
    ) -> torch.Tensor:
        """Guided [eps | v] (N, 2C): rows [0, N/2) are conditional, [N/2, N) unconditional.

        The network sees x[:N/2] twice (once per condition); eps = (1+s) eps_c - s eps_u is
        copied to both halves; v stays per row.
        """
        half = x_NC.shape[0] // 2
        x_half = x_NC[:half]
        out_N2C = self.forward(torch.cat([x_half, x_half], dim=0), t_N, c_ND)
        eps_NC, v_NC = out_N2C[:, : self.token_channels], out_N2C[:, self.token_channels:]
        eps_cond, eps_uncond = eps_NC[:half], eps_NC[half:]
        eps_guided = eps_cond * (1 + cfg_scale) - cfg_scale * eps_uncond
        return torch.cat([torch.cat([eps_guided, eps_guided], dim=0), v_NC], dim=1)


# --------------------------------------------------------------------------------------
# Named results
# --------------------------------------------------------------------------------------


class PMeanVariance(NamedTuple):
    """p(x_{t-1} | x_t) and the x_0 prediction, each (N, C) float32."""

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    pred_xstart: torch.Tensor


class PSample(NamedTuple):
    """One reverse step: the new state x_{t-1} and the (clamped) x_0 prediction, (N, C)."""

    sample: torch.Tensor
    pred_xstart: torch.Tensor


class DiffusionStep(NamedTuple):
    """State after one step of :meth:`ResidualDiffusion.sample` (for notebooks)."""

    t: int  # respaced index of the step
    t_original: int  # timestep_map[t], what the network saw
    x_NC: torch.Tensor  # x_{t-1}
    pred_xstart_NC: torch.Tensor


class DiffusionSample(NamedTuple):
    """Result of :meth:`ResidualDiffusion.sample`.

    ``tokens_NC`` = x_0 * vae_scale (what HART adds to the discrete tokens); ``x0_NC`` is the
    unscaled final state; ``noises`` the draws used, in the official order (feed them back
    as ``noises=`` to replay); ``steps`` the per-step states when asked for.
    """

    tokens_NC: torch.Tensor
    x0_NC: torch.Tensor
    noises: tuple[torch.Tensor, ...]
    steps: tuple[DiffusionStep, ...]


class DiffusionLoss(NamedTuple):
    """Result of :meth:`ResidualDiffusion.training_loss` (scalars)."""

    loss: torch.Tensor  # mean over rows of mse + vb
    mse: torch.Tensor  # mean |eps - eps_theta|^2
    vb: torch.Tensor  # mean variational-bound term (bits per channel)


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Phi(x) ~ (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) of a Gaussian integrated over a bin of width 2/255 around x (the edge bins
    at |x| > 0.999 are open): IDDPM's decoder likelihood, in nats."""
    inv_std = torch.exp(-log_scale)
    cdf_plus = approx_standard_normal_cdf(inv_std * (x - mean + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (x - mean - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


# --------------------------------------------------------------------------------------
# The head: network + schedules + sampler
# --------------------------------------------------------------------------------------


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str = "diffloss.") -> dict[str, torch.Tensor]:
    """The sub-state-dict of the keys starting with ``prefix``, prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


class ResidualDiffusion(nn.Module):
    """HART's residual diffusion head (official ``DiffLoss``); its state dict is ``net.*``.

    Holds the denoiser ``net`` and two schedules that are not parameters: the 1000-step
    ``train_schedule`` and the respaced ``gen_schedule`` used for sampling.
    """

    def __init__(self, config: DiffusionHeadConfig):
        super().__init__()
        self.config = config
        self.token_channels = config.token_channels
        self.vae_scale = config.vae_scale
        self.net = MLPAdaLN(config.token_channels, config.width, config.z_channels, config.depth)
        base_betas = (cosine_betas if config.noise_schedule == "cosine" else linear_betas)(
            config.training_steps
        )
        # The official code builds both through the respacing path; "all T steps" re-derives
        # the betas from alpha_bar, which can move them by one ulp, so we do the same.
        self.train_schedule = DiffusionSchedule.respaced(base_betas, str(config.training_steps))
        self.gen_schedule = DiffusionSchedule.respaced(base_betas, config.num_sampling_steps)

    # ---- building and loading ----------------------------------------------------------

    @classmethod
    def from_config(cls, transformer_config: Any, token_channels: int) -> "ResidualDiffusion":
        """A freshly initialised head for a HARTForT2I config (dict or object) and Cvae."""
        return cls(DiffusionHeadConfig.from_transformer_config(transformer_config, token_channels))

    def load_official_state_dict(self, state: Mapping[str, torch.Tensor], *, source: str) -> None:
        """Load the ``diffloss.*`` keys (prefix already removed, see :func:`strip_prefix`),
        strictly: any missing, unexpected or mis-shaped key raises a CheckpointError."""
        expected = {k: v.shape for k, v in self.state_dict().items()}
        check_state_dict(expected, state, source=source)
        self.load_state_dict(dict(state), strict=True)

    @classmethod
    def from_official(
        cls, transformer_config: Any, token_channels: int, state: Mapping[str, torch.Tensor], *, source: str
    ) -> "ResidualDiffusion":
        """Build from the config and load the ``diffloss.*`` sub-state-dict (prefix removed)."""
        head = cls.from_config(transformer_config, token_channels)
        head.load_official_state_dict(state, source=source)
        return head.eval()

    # ---- checks -------------------------------------------------------------------------

    def _check_x(self, x_NC: torch.Tensor, name: str = "x") -> None:
        if x_NC.dim() != 2 or x_NC.shape[1] != self.token_channels:
            raise ValueError(
                f"{name} must be (N, {self.token_channels}) tokens (Cvae channels), got {tuple(x_NC.shape)}"
            )

    def _check_c(self, c_ND: torch.Tensor, n: int, name: str = "c") -> None:
        d = self.config.z_channels
        if c_ND.dim() != 2 or c_ND.shape != (n, d):
            raise ValueError(f"{name} must be ({n}, {d}) (one embed_dim row per token), got {tuple(c_ND.shape)}")

    def _check_t(self, t_N: torch.Tensor, n: int) -> None:
        k = self.gen_schedule.num_steps
        if t_N.shape != (n,) or t_N.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"t must be an integer tensor of shape ({n},), got {tuple(t_N.shape)} {t_N.dtype}")
        if bool(((t_N < 0) | (t_N >= k)).any()):
            raise ValueError(f"t holds respaced step indices, 0..{k - 1}; got {t_N.tolist()}")

    @staticmethod
    def _check_cfg_rows(n: int) -> None:
        if n % 2:
            raise ValueError(f"with guidance the batch must be [cond; uncond] rows, an even count; got {n}")

    # ---- one reverse step ---------------------------------------------------------------

    def model_output(
        self, x_NC: torch.Tensor, t_N: torch.Tensor, c_ND: torch.Tensor, cfg_scale: float | None = None
    ) -> torch.Tensor:
        """[eps | v] (N, 2C) at respaced steps ``t_N``: the network sees timestep_map[t]."""
        t_original_N = self.gen_schedule.timestep_map.to(t_N.device)[t_N]
        if cfg_scale is None:
            return self.net(x_NC, t_original_N, c_ND)
        return self.net.forward_with_cfg(x_NC, t_original_N, c_ND, cfg_scale)

    @staticmethod
    def posterior_mean(s: DiffusionSchedule, x0_NC: torch.Tensor, x_t_NC: torch.Tensor,
                       t_N: torch.Tensor) -> torch.Tensor:
        """mu(x_0, x_t) = coef1_t x_0 + coef2_t x_t, the mean of q(x_{t-1} | x_t, x_0)."""
        return s.gather("posterior_mean_coef1", t_N) * x0_NC + s.gather("posterior_mean_coef2", t_N) * x_t_NC

    @classmethod
    def mean_variance(cls, s: DiffusionSchedule, x_NC: torch.Tensor, t_N: torch.Tensor, eps_NC: torch.Tensor,
                      v_NC: torch.Tensor, clip_denoised: bool) -> PMeanVariance:
        """p(x_{t-1} | x_t) of schedule ``s`` from the network's eps and v (sampling and training).

        log s2 = f log(beta) + (1 - f) log(~beta_clipped), f = (v + 1) / 2 (not clipped);
        x_0^ = sqrt(1/alpha_bar) x_t - sqrt(1/alpha_bar - 1) eps (clamped to [-1, 1] when
        ``clip_denoised``); mean = mu(x_0^, x_t).
        """
        min_log_N1 = s.gather("posterior_log_variance_clipped", t_N)
        max_log_N1 = s.gather("log_betas", t_N)
        frac_NC = (v_NC + 1) / 2
        log_variance_NC = frac_NC * max_log_N1 + (1 - frac_NC) * min_log_N1
        pred_xstart_NC = (
            s.gather("sqrt_recip_alphas_cumprod", t_N) * x_NC
            - s.gather("sqrt_recipm1_alphas_cumprod", t_N) * eps_NC
        )
        if clip_denoised:
            pred_xstart_NC = pred_xstart_NC.clamp(-1, 1)
        mean_NC = cls.posterior_mean(s, pred_xstart_NC, x_NC, t_N)
        return PMeanVariance(mean_NC, torch.exp(log_variance_NC), log_variance_NC, pred_xstart_NC)

    def p_mean_variance(
        self,
        x_NC: torch.Tensor,
        t_N: torch.Tensor,
        c_ND: torch.Tensor,
        cfg_scale: float | None = None,
        clip_denoised: bool = True,
    ) -> PMeanVariance:
        """Mean and learned-range variance of p(x_{t-1} | x_t) at respaced steps ``t_N``.

        ``cfg_scale=None``: no guidance; otherwise rows are [cond; uncond] (see forward_with_cfg).
        """
        self._check_x(x_NC)
        n = x_NC.shape[0]
        self._check_t(t_N, n)
        self._check_c(c_ND, n)
        if cfg_scale is not None:
            self._check_cfg_rows(n)
        out_N2C = self.model_output(x_NC, t_N, c_ND, cfg_scale)
        eps_NC, v_NC = out_N2C[:, : self.token_channels], out_N2C[:, self.token_channels:]
        return self.mean_variance(self.gen_schedule, x_NC, t_N, eps_NC, v_NC, clip_denoised)

    def p_sample(
        self,
        x_NC: torch.Tensor,
        t_N: torch.Tensor,
        c_ND: torch.Tensor,
        cfg_scale: float | None = None,
        temperature: float = 1.0,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        clip_denoised: bool = True,
    ) -> PSample:
        """x_{t-1} = mean + [t != 0] * exp(log s2 / 2) * noise * temperature.

        ``noise`` (N, C) is used as given; otherwise it is drawn from ``generator``.
        """
        pmv = self.p_mean_variance(x_NC, t_N, c_ND, cfg_scale, clip_denoised)
        if noise is None:
            noise = self._draw(tuple(x_NC.shape), x_NC, generator)
        elif noise.shape != x_NC.shape:
            raise ValueError(f"noise must have x's shape {tuple(x_NC.shape)}, got {tuple(noise.shape)}")
        nonzero_N1 = (t_N != 0).float()[:, None]  # the last step (t = 0) adds no noise
        sample_NC = pmv.mean + nonzero_N1 * torch.exp(0.5 * pmv.log_variance) * noise * temperature
        return PSample(sample_NC, pmv.pred_xstart)

    @staticmethod
    def _draw(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if generator is None:
            raise ValueError("pass generator= (a torch.Generator) or the noise explicitly; no global RNG is used")
        return torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)

    # ---- the sampling loop --------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        z_ND: torch.Tensor,
        cfg: float,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        noises: Sequence[torch.Tensor] | None = None,
        use_cfg: bool | None = None,
        return_steps: bool = False,
    ) -> DiffusionSample:
        """Sample one residual token per row of ``z_ND`` (N, embed_dim); official DiffLoss.sample.

        Guidance (``use_cfg``, default: the official rule ``cfg != 1.0``) expects
        ``z_ND = [cond; uncond]`` and uses ``cfg`` as the scale s. Random draws come from
        ``generator`` or, to replay a run, from ``noises``: K + 1 tensors in the official
        order (#0 initial noise (N/2, C) with guidance, (N, C) without; #k = step noise
        (N, C) for respaced t = K - k). Generator draws are made on the generator's device
        and moved to z's: a CPU generator seeded with s gives the numbers the official code
        draws after ``torch.manual_seed(s)`` on a CPU. Returns x_0 * vae_scale and the draws.
        """
        if z_ND.dim() != 2 or z_ND.shape[1] != self.config.z_channels:
            raise ValueError(f"z must be (N, {self.config.z_channels}), got {tuple(z_ND.shape)}")
        if use_cfg is None:
            use_cfg = cfg != 1.0
        n, c_channels, k_steps = z_ND.shape[0], self.token_channels, self.gen_schedule.num_steps
        if use_cfg:
            self._check_cfg_rows(n)
        initial_rows = n // 2 if use_cfg else n
        shapes = [(initial_rows, c_channels)] + [(n, c_channels)] * k_steps  # official draw order
        if (generator is None) == (noises is None):
            raise ValueError("pass exactly one of generator= (a torch.Generator) or noises= (recorded draws)")
        if noises is not None:
            noises = tuple(noises)
            if len(noises) != len(shapes) or any(tuple(a.shape) != s for a, s in zip(noises, shapes)):
                raise ValueError(
                    f"noises must be {k_steps + 1} tensors shaped {shapes[0]} then {k_steps} x {shapes[1]}; "
                    f"got {[tuple(a.shape) for a in noises]}"
                )
            source = iter(noises)
        else:
            source = (self._draw(shape, z_ND, generator) for shape in shapes)  # drawn lazily, in order
        used: list[torch.Tensor] = []

        def next_noise() -> torch.Tensor:
            drawn = next(source).to(z_ND.device, z_ND.dtype)
            used.append(drawn)
            return drawn

        x_NC = next_noise()
        if use_cfg:
            x_NC = torch.cat([x_NC, x_NC], dim=0)  # both halves start from the same noise
        cfg_scale = cfg if use_cfg else None
        steps: list[DiffusionStep] = []
        for t in reversed(range(k_steps)):
            t_N = torch.full((n,), t, dtype=torch.int64, device=z_ND.device)
            noise_NC = next_noise()  # drawn at every step, also at t = 0 where it is unused
            x_NC, pred_xstart_NC = self.p_sample(x_NC, t_N, z_ND, cfg_scale, temperature, noise=noise_NC)
            if return_steps:
                steps.append(DiffusionStep(t, int(self.gen_schedule.timestep_map[t]), x_NC, pred_xstart_NC))
        return DiffusionSample(x_NC * self.vae_scale, x_NC, tuple(used), tuple(steps))

    # ---- training (MAR's DiffLoss.forward) -----------------------------------------------

    def training_loss(self, target_NC: torch.Tensor, z_ND: torch.Tensor, generator: torch.Generator | None,
                      t_N: torch.Tensor | None = None, noise_NC: torch.Tensor | None = None) -> DiffusionLoss:
        """The head's loss on true residual tokens ``target_NC`` conditioned on ``z_ND``: one
        random timestep per row on the 1000-step ``train_schedule`` (IDDPM ``training_losses``
        with the learned-range variance, as MAR trains it).

        With x_0 = target / vae_scale, t ~ U{0..T-1}, eps ~ N(0, I)::

            x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps                      (q_sample)
            [eps_theta | v] = net(x_t, t, z)
            mse = mean_c (eps - eps_theta)^2
            vb  = KL( q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t) ) / ln 2   (t > 0)
                = -log p(x_0 | x_1) / ln 2 (discretised Gaussian)          (t = 0)

        p is :meth:`mean_variance`, the sampler's, with eps_theta *detached* (the variance is
        learnt through vb only, the mean through mse) and no clipping of x_0. Returns the mean
        over rows of mse + vb. ``t_N`` / ``noise_NC`` replace the draws (for tests); what is not
        given is drawn from ``generator``, t first.
        """
        s = self.train_schedule
        self._check_x(target_NC, "target")
        N, C = target_NC.shape
        self._check_c(z_ND, N, "z")
        device = target_NC.device
        x0_NC = target_NC.float() / self.vae_scale
        if (t_N is None or noise_NC is None) and generator is None:
            raise ValueError("training_loss draws t and the noise: pass generator= (or both t_N and noise_NC)")
        if t_N is None:
            t_N = torch.randint(0, s.num_steps, (N,), generator=generator, device=generator.device).to(device)
        eps_NC = noise_NC if noise_NC is not None else \
            torch.randn((N, C), generator=generator, device=generator.device).to(device)
        abar_N1 = s.gather("alphas_cumprod", t_N)
        x_t_NC = abar_N1.sqrt() * x0_NC + (1 - abar_N1).sqrt() * eps_NC  # q_sample

        out_N2C = self.net(x_t_NC, s.timestep_map.to(device)[t_N], z_ND).float()
        eps_pred_NC, v_NC = out_N2C[:, :C], out_N2C[:, C:]
        mse_N = (eps_NC - eps_pred_NC).pow(2).mean(dim=1)

        model = self.mean_variance(s, x_t_NC, t_N, eps_pred_NC.detach(), v_NC, clip_denoised=False)
        true_mean_NC = self.posterior_mean(s, x0_NC, x_t_NC, t_N)  # q(x_{t-1} | x_t, x_0)
        true_log_var_N1 = s.gather("posterior_log_variance_clipped", t_N)
        kl_NC = 0.5 * (-1.0 + model.log_variance - true_log_var_N1 + torch.exp(true_log_var_N1 - model.log_variance)
                       + (true_mean_NC - model.mean).pow(2) * torch.exp(-model.log_variance))
        nll_NC = -discretized_gaussian_log_likelihood(x0_NC, model.mean, 0.5 * model.log_variance)
        vb_N = torch.where(t_N == 0, nll_NC.mean(dim=1), kl_NC.mean(dim=1)) / math.log(2.0)
        return DiffusionLoss((mse_N + vb_N).mean(), mse_N.mean(), vb_N.mean())

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"Cvae={c.token_channels}, z={c.z_channels}, width={c.width}, depth={c.depth}, "
            f"steps={c.num_sampling_steps!r} -> timestep_map {self.gen_schedule.timestep_map.tolist()}"
        )
