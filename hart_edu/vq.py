r"""Vector quantization, from one codebook lookup to VAR's multi-scale residual quantizer.

**1. Nearest code.** A codebook holds :math:`V` vectors :math:`e_1..e_V \in \mathbb{R}^C`.
A latent vector :math:`z` is replaced by its nearest code,

.. math::  k^* = \arg\min_k \lVert z - e_k \rVert^2
              = \arg\min_k \left( \lVert z\rVert^2 + \lVert e_k\rVert^2 - 2\, z\cdot e_k \right),

the expanded form being one matrix product for all :math:`N` vectors at once.

**2. Straight-through.** ``argmin`` has no gradient. The quantized output is written
:math:`z + \mathrm{sg}(e_{k^*} - z)`: its value is :math:`e_{k^*}`, its gradient w.r.t. :math:`z`
is the identity, so the encoder still learns.

**3. Losses.** The codebook is pulled to the encoder outputs and the encoder is held near its
codes: :math:`\mathcal{L} = \lVert \mathrm{sg}(z) - e\rVert^2 + \beta\,\lVert z - \mathrm{sg}(e)\rVert^2`.

**4. Multi-scale residual quantization (VAR).** For scales :math:`p_1 < \dots < p_S` (``patch_nums``),
starting from the residual :math:`r = f`:

.. math::  r_s = \mathrm{area}(r, p_s),\quad k_s = \mathrm{NN}(r_s),\quad
           h_s = \phi_s(\mathrm{bicubic}(e_{k_s}, H)),\quad \hat f \mathrel{+}= h_s,\quad r \mathrel{-}= h_s

where :math:`\phi(h) = (1-\rho)\,h + \rho\,\mathrm{conv}_{3\times3}(h)` blends each upsampled map
(``quant_resi`` :math:`\rho = 0.5`). :math:`K` convolutions are shared by all scales: scale
:math:`s` takes the one whose tick is nearest to :math:`s/(S-1)`.

**5. HART's hybrid twist.** At the last scale (full resolution) no :math:`\phi` is applied, and
what is left after the last discrete code, :math:`f - \hat f`, is kept as a *continuous residual*
token that a small diffusion model learns to generate.

Names carry shapes: ``f_BChw`` (batch, channels, height, width), ``idx_Bl`` (batch, tokens of
one scale, row-major), ``z_NC`` (flattened vectors).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from hart_edu.kernels.nearest_code import nearest_code

__all__ = [
    "straight_through",
    "vq_losses",
    "codebook_usage",
    "VQResult",
    "VectorQuantizer",
    "Phi",
    "phi_ticks",
    "phi_index",
    "make_phi_bank",
    "MultiScaleCodes",
    "ARStep",
    "QuantizerOutput",
    "MultiScaleResidualQuantizer",
]


# ----------------------------------------------------------------------------------------------
# 1-3. One codebook
# ----------------------------------------------------------------------------------------------

# The nearest code (1.) is ``hart_edu.kernels.nearest_code.nearest_code``: its PyTorch reference
# is the expanded form above, one matmul, as the official code computes it (with ``cosine``, the
# official ``using_znorm``, both sides L2-normalised and the largest dot product wins); under
# ``use_backend("triton")`` one kernel keeps a running argmin instead of the (N, V) distances.


def straight_through(z: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """Value of ``z_q``, gradient of the identity w.r.t. ``z``: ``z + sg(z_q - z)``."""
    return z + (z_q - z).detach()


class VQLosses(NamedTuple):
    codebook: torch.Tensor  #: ||sg(z) - e||^2: moves the codes
    commitment: torch.Tensor  #: ||z - sg(e)||^2: keeps the encoder near its codes


def vq_losses(z: torch.Tensor, z_q: torch.Tensor) -> VQLosses:
    """The two VQ-VAE terms (mean squared errors); weight the commitment by ``beta``."""
    return VQLosses(F.mse_loss(z_q, z.detach()), F.mse_loss(z, z_q.detach()))


class Usage(NamedTuple):
    fraction_used: float  #: share of the V codes picked at least once
    perplexity: float  #: exp(entropy) of the code histogram: V when uniform, 1 when collapsed


def codebook_usage(idx: torch.Tensor, vocab_size: int) -> Usage:
    """How well a batch of indices uses the codebook."""
    counts_V = torch.bincount(idx.flatten(), minlength=vocab_size).double()
    p_V = counts_V / counts_V.sum().clamp_min(1)
    entropy = -(p_V[p_V > 0] * p_V[p_V > 0].log()).sum()
    return Usage(float((counts_V > 0).double().mean()), float(entropy.exp()))


class VQResult(NamedTuple):
    quantized_BChw: torch.Tensor  #: straight-through quantized latent
    idx_Bhw: torch.Tensor  #: chosen code per position
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor


class VectorQuantizer(nn.Module):
    """A single-scale VQ layer (VQ-VAE), the building block of everything below."""

    def __init__(self, vocab_size: int, dim: int, beta: float = 0.25):
        super().__init__()
        self.beta = beta
        self.embedding = nn.Embedding(vocab_size, dim)

    def forward(self, z_BChw: torch.Tensor) -> VQResult:
        B, C, h, w = z_BChw.shape
        z_NC = z_BChw.permute(0, 2, 3, 1).reshape(-1, C)
        idx_N = nearest_code(z_NC.detach(), self.embedding.weight.detach())
        z_q_BChw = self.embedding(idx_N).view(B, h, w, C).permute(0, 3, 1, 2)
        losses = vq_losses(z_BChw, z_q_BChw)
        return VQResult(straight_through(z_BChw, z_q_BChw), idx_N.view(B, h, w), *losses)


# ----------------------------------------------------------------------------------------------
# 4. The shared Phi blends
# ----------------------------------------------------------------------------------------------


class Phi(nn.Conv2d):
    """``phi(h) = (1 - r) h + r conv3x3(h)``: a learned 3x3 blur/sharpen, mixed in with ratio r."""

    def __init__(self, channels: int, ratio: float):
        super().__init__(channels, channels, kernel_size=3, padding=1)
        self.ratio = abs(ratio)

    def forward(self, h_BChw: torch.Tensor) -> torch.Tensor:
        return h_BChw * (1 - self.ratio) + super().forward(h_BChw) * self.ratio


def phi_ticks(K: int) -> torch.Tensor:
    """Positions in [0, 1] of ``K`` shared Phi convolutions (float64, as the official numpy).

    ``K == 4`` (the released setting) uses ``linspace(1/(3K), 1 - 1/(3K), K)``; any other K
    the evenly centred ``linspace(1/(2K), 1 - 1/(2K), K)``.
    """
    margin = 1 / (3 * K) if K == 4 else 1 / (2 * K)
    return torch.linspace(margin, 1 - margin, K, dtype=torch.float64)


def phi_index(si: int, num_scales: int, K: int) -> int:
    """Which of ``K`` Phis scale ``si`` of ``num_scales`` uses: the tick nearest to si/(S-1)."""
    at = si / (num_scales - 1) if num_scales > 1 else 0.0
    return int((phi_ticks(K) - at).abs().argmin())  # first minimum on ties, like numpy


class _NonSharedPhis(nn.ModuleList):
    """share_quant_resi == 0: one Phi per scale (keys ``quant_resi.{k}.*``)."""


class _SharedPhi(nn.Module):
    """share_quant_resi == 1: a single Phi for every scale (keys ``quant_resi.qresi.*``)."""

    def __init__(self, phi: nn.Module):
        super().__init__()
        self.qresi = phi


class _PartiallySharedPhis(nn.Module):
    """share_quant_resi == K > 1: K Phis spread over the scales (keys ``quant_resi.qresi_ls.{k}.*``)."""

    def __init__(self, phis: list[nn.Module]):
        super().__init__()
        self.qresi_ls = nn.ModuleList(phis)


def make_phi_bank(channels: int, ratio: float, share: int, num_scales: int, count: int = 0) -> nn.Module:
    """The official three layouts of Phi convolutions (they differ in their state-dict keys).

    A ratio of (almost) zero means no blending at all: identity maps without parameters.
    """
    def one() -> nn.Module:
        return Phi(channels, ratio) if abs(ratio) > 1e-6 else nn.Identity()

    if share == 0:
        return _NonSharedPhis([one() for _ in range(count or num_scales)])
    if share == 1:
        return _SharedPhi(one())
    return _PartiallySharedPhis([one() for _ in range(share)])


def _phi_list(bank: nn.Module) -> list[nn.Module]:
    if isinstance(bank, _SharedPhi):
        return [bank.qresi]
    if isinstance(bank, _PartiallySharedPhis):
        return list(bank.qresi_ls)
    return list(bank)


# ----------------------------------------------------------------------------------------------
# 4-5. The multi-scale residual quantizer (VAR), with HART's hybrid last scale
# ----------------------------------------------------------------------------------------------


class MultiScaleCodes(NamedTuple):
    """What :meth:`MultiScaleResidualQuantizer.encode` finds for a latent ``f``."""

    idx_Bl: list[torch.Tensor]  #: per scale, (B, p*p) int64, row-major
    fhat_discrete_BChw: torch.Tensor  #: sum of the scales' contributions (as inference composes it)
    residual_BChw: torch.Tensor  #: f - fhat_discrete: the continuous token (zeros-free only if hybrid)
    rest_before_last_BChw: torch.Tensor  #: residual left *before* the last discrete scale


class ARStep(NamedTuple):
    fhat_BChw: torch.Tensor  #: running sum after adding this scale
    next_BChw: torch.Tensor | None  #: f_hat area-downsampled to the next scale (None after the last)


class QuantizerOutput(NamedTuple):
    fhat_BChw: torch.Tensor  #: quantized latent, straight-through (gradients reach the encoder)
    idx_Bl: list[torch.Tensor]
    vq_loss: torch.Tensor  #: mean over scales of (beta * ||sg(fhat) - f||^2 + ||fhat - sg(f)||^2)
    fraction_used: float  #: share of the V codes hit at least once over all scales (as Usage)


def _resize(x_BChw: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Resize to size x size; a no-op at the same size (area and bicubic are exact identities there)."""
    if x_BChw.shape[-2:] == (size, size):
        return x_BChw
    return F.interpolate(x_BChw, size=(size, size), mode=mode)


class MultiScaleResidualQuantizer(nn.Module):
    """VAR's residual quantizer over ``patch_nums`` scales, optionally hybrid (HART).

    State-dict keys follow the official ``quantize.*`` layout: ``embedding.weight``,
    ``quant_resi.*`` and the training statistic ``ema_vocab_hit_SV`` (kept so checkpoints
    round-trip; inference never reads it).
    """

    def __init__(
        self,
        vocab_size: int,
        channels: int,
        patch_nums: tuple[int, ...],
        *,
        hybrid: bool = True,
        quant_resi: float = 0.5,
        share_quant_resi: int = 4,
        default_qresi_counts: int = 0,
        beta: float = 0.25,
        using_znorm: bool = False,
    ):
        super().__init__()
        if list(patch_nums) != sorted(set(patch_nums)) or patch_nums[0] < 1:
            raise ValueError(f"patch_nums must be increasing positive ints, got {patch_nums}")
        self.vocab_size, self.channels = vocab_size, channels
        self.patch_nums = tuple(patch_nums)
        self.hybrid, self.beta, self.using_znorm = hybrid, beta, using_znorm
        self.quant_resi = make_phi_bank(channels, quant_resi, share_quant_resi, len(patch_nums),
                                        default_qresi_counts)
        self.embedding = nn.Embedding(vocab_size, channels)
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(patch_nums), vocab_size))

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    def phi(self, si: int) -> nn.Module:
        """The Phi blend used at scale ``si``."""
        phis = _phi_list(self.quant_resi)
        return phis[phi_index(si, self.num_scales, len(phis))]

    def uses_phi(self, si: int) -> bool:
        """HART skips Phi at the last scale; VAR applies it everywhere."""
        return not (self.hybrid and si == self.num_scales - 1)

    def embed(self, idx_Bl: torch.Tensor) -> torch.Tensor:
        """Code vectors of a square index map: (B, p*p) -> ``h_BChw`` (B, C, p, p)."""
        B, L = idx_Bl.shape
        p = round(L ** 0.5)
        if p * p != L:
            raise ValueError(f"an index map must be square, got {L} tokens")
        return self.embedding(idx_Bl).transpose(1, 2).reshape(B, self.channels, p, p)

    def scale_contribution(self, si: int, h_BChw: torch.Tensor, size: int) -> torch.Tensor:
        """What scale ``si`` adds to f_hat: ``phi_si(bicubic(h, size))`` (no Phi at HART's last)."""
        up_BChw = _resize(h_BChw, size, "bicubic")
        return self.phi(si)(up_BChw) if self.uses_phi(si) else up_BChw

    def _nearest(self, rest_BChw: torch.Tensor) -> torch.Tensor:
        B, C, p, _ = rest_BChw.shape
        z_NC = rest_BChw.permute(0, 2, 3, 1).reshape(-1, C)
        return nearest_code(z_NC, self.embedding.weight.detach(), cosine=self.using_znorm).view(B, p * p)

    def _check_latent(self, f_BChw: torch.Tensor) -> None:
        full = self.patch_nums[-1]
        if f_BChw.dim() != 4 or f_BChw.shape[1] != self.channels or f_BChw.shape[-2:] != (full, full):
            raise ValueError(f"expected a latent (B, {self.channels}, {full}, {full}) for patch_nums "
                             f"{self.patch_nums}, got {tuple(f_BChw.shape)}")

    def _residual_steps(self, f_BChw: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Residual quantization of ``f``, scale by scale: yields ``(idx_Bl, fhat_BChw, rest_BChw)``
        after each scale (r_s = area(r, p_s), k_s = NN(r_s), h_s = phi_s(bicubic(e_k, H)),
        f_hat += h_s, r -= h_s). f_hat keeps the gradient of the Phi convolutions; r does not."""
        H = f_BChw.shape[-1]
        rest_BChw = f_BChw.detach().clone()
        fhat_BChw = torch.zeros_like(rest_BChw)
        for si, pn in enumerate(self.patch_nums):
            idx_Bl = self._nearest(_resize(rest_BChw, pn, "area"))
            h_BChw = self.scale_contribution(si, self.embed(idx_Bl), H)
            fhat_BChw = fhat_BChw + h_BChw
            rest_BChw = rest_BChw - h_BChw.detach()
            yield idx_Bl, fhat_BChw, rest_BChw

    @torch.no_grad()
    def encode(self, f_BChw: torch.Tensor) -> MultiScaleCodes:
        """Residual quantization of ``f`` over all scales (the official ``f_to_idxBl_and_frest``)."""
        self._check_latent(f_BChw)
        idx_Bl, rests = [], [f_BChw.float()]
        for idx, fhat_BChw, rest_BChw in self._residual_steps(f_BChw.float()):
            idx_Bl.append(idx)
            rests.append(rest_BChw)
        return MultiScaleCodes(idx_Bl, fhat_BChw, rests[-1], rests[-2])

    def next_autoregressive_input(self, si: int, fhat_BChw: torch.Tensor, h_BChw: torch.Tensor) -> ARStep:
        """One step of inference (official ``get_next_autoregressive_input``), not in place.

        Adds scale ``si``'s contribution to f_hat and returns the next scale's input: f_hat
        area-downsampled to ``patch_nums[si+1]`` (None after the last scale).
        """
        fhat_BChw = fhat_BChw + self.scale_contribution(si, h_BChw, self.patch_nums[-1])
        if si == self.num_scales - 1:
            return ARStep(fhat_BChw, None)
        return ARStep(fhat_BChw, _resize(fhat_BChw, self.patch_nums[si + 1], "area"))

    def running_fhat(self, idx_Bl: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """f_hat after each of the given first scales (VAR's ``embed_to_fhat``), composed exactly as
        inference does: ``f_hat_s = sum_{j <= s} phi_j(bicubic(e[idx_j], H))`` (discrete only; no
        Phi at HART's last scale). ``idx_Bl``: the codes of scales 0, 1, ... (at most all S)."""
        if not 0 < len(idx_Bl) <= self.num_scales:
            raise ValueError(f"expected 1 to {self.num_scales} index maps, got {len(idx_Bl)}")
        B, full = idx_Bl[0].shape[0], self.patch_nums[-1]
        fhat_BChw = self.embedding.weight.new_zeros(B, self.channels, full, full)
        fhats = []
        for si, idx in enumerate(idx_Bl):
            fhat_BChw = self.next_autoregressive_input(si, fhat_BChw, self.embed(idx)).fhat_BChw
            fhats.append(fhat_BChw)
        return fhats

    def indices_to_fhat(self, idx_Bl: Sequence[torch.Tensor]) -> torch.Tensor:
        """f_hat of all S scales' indices, as inference composes it (discrete only)."""
        if len(idx_Bl) != self.num_scales:
            raise ValueError(f"expected {self.num_scales} index maps, got {len(idx_Bl)}")
        return self.running_fhat(idx_Bl)[-1]

    def teacher_forcing_inputs(self, idx_Bl: Sequence[torch.Tensor]) -> torch.Tensor:
        """Transformer inputs for training: for each scale after the first, the f_hat built from
        the earlier scales, area-downsampled to that scale, flattened and concatenated:
        ``x_BLC`` with L = sum(p*p for p in patch_nums[1:])."""
        fhats = self.running_fhat(idx_Bl[: self.num_scales - 1])
        return torch.cat([_resize(fhat_BChw, self.patch_nums[si + 1], "area").flatten(2).transpose(1, 2)
                          for si, fhat_BChw in enumerate(fhats)], dim=1)

    def forward(self, f_BChw: torch.Tensor, keep_residual: bool = True) -> QuantizerOutput:
        """Training pass: quantize, VQ loss, straight-through output.

        In hybrid mode the continuous residual is added back when ``keep_residual`` (so the
        decoder learns to use it); with ``keep_residual=False`` the decoder sees the discrete
        latent only. Training alternates both so the same decoder serves both. The
        composition is the one inference uses (no Phi at the hybrid last scale); the official
        training code differs here by also applying Phi at the last scale.
        """
        self._check_latent(f_BChw)
        f_BChw = f_BChw.float()
        idx_Bl, vq_loss = [], f_BChw.new_zeros(())
        for idx, fhat_BChw, _ in self._residual_steps(f_BChw):
            idx_Bl.append(idx)
            vq_loss = vq_loss + self.beta * F.mse_loss(fhat_BChw.detach(), f_BChw) \
                + F.mse_loss(fhat_BChw, f_BChw.detach())
        if self.hybrid and keep_residual:
            fhat_BChw = fhat_BChw + (f_BChw.detach() - fhat_BChw).detach()
        hits_V = torch.bincount(torch.cat([i.flatten() for i in idx_Bl]), minlength=self.vocab_size)
        fraction_used = float((hits_V > 0).float().mean())
        return QuantizerOutput(straight_through(f_BChw, fhat_BChw), idx_Bl, vq_loss / self.num_scales, fraction_used)
