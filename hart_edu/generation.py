r"""HART's scale-by-scale generation (official ``autoregressive_infer_cfg``): the loop over the
scales, classifier-free guidance, sampling, the MaskGIT last stage and the residual diffusion.

The network itself (blocks, one forward over a scale, teacher forcing) is
:class:`hart_edu.ar_transformer.HARTTransformer`; this module drives it. What flows, for B
prompts and S scales ``p_0 < ... < p_{S-1}``::

    text (B, T, D) --+-- stage 0: the context tokens -> scale 0's code (1x1)
                     |
    f_hat = 0  ------+-- for si = 1 .. S-1:
                     |     f_hat <- f_hat + Phi_{si-1}(up(h_{si-1}))            (quantizer)
                     |     x_si   = word_embed(area_down(f_hat, p_si)) + lvl(si)
                     |     logits = network(x_si | everything before)  -> codes idx_si, h_si
                     +-- last scale: f_hat <- f_hat + h_{S-1} (+ the diffusion head's residual)

:func:`generate` takes the quantizer (code embeddings and the f_hat composition), not the whole
tokenizer, and returns the codes and the latents: ``f_discrete`` (the codes alone), ``residual``
(the diffusion head's continuous part) and ``f_hat`` (their token-wise sum, what the decoder
gets). Decoding is the caller's (:class:`hart_edu.sampler.HARTPipeline` decodes once).

Classifier-free guidance
------------------------

The batch is doubled: rows ``[0, B)`` are conditional, rows ``[B, 2B)`` unconditional
(:meth:`HARTTransformer.unconditional_context`: an all-zero context, position ids 0 and a mask
with only position 0 set). The sampled logits are::

    logits = (1 + t) * logits_cond - t * logits_uncond,   t = cfg * r(si),  r(si) = si / (S - 1)

so guidance grows from 0 at stage 0 to ``cfg * (S-2)/(S-1)`` at the second-to-last stage;
the official code computes the ratio ``r`` inside the loop over all but the last stage and
then *reuses the stale value* at the last stage and in the residual diffusion
(:func:`guidance_ratio`).

The last stage (MaskGIT fill, hybrid residual)
----------------------------------------------

The last scale is filled in ``num_maskgit_iters`` rounds (official MaskGIT loop; with one
round it is a plain fill of all positions). Every round feeds the *same* input tokens (those
derived from stage S-2); rounds differ only in which positions they predict, and the KV
cache keeps the positions of earlier rounds visible. With ``residual=True`` (the official
``final_stage=0``) each predicted token also gets a continuous residual from the diffusion
head (:mod:`hart_edu.residual_diffusion`), conditioned per token on
:meth:`HARTTransformer.diffusion_condition`::

    z = decoder_norm( h_last + word_embed(embedding[idx_last]) )

where ``h_last`` is the raw output of the last block (before ``head_nm``).

Official behaviours kept on purpose
-----------------------------------

Default settings reproduce the official images; each quirk is a field of
:class:`OfficialQuirks` that a learner can switch off.

The sampling step (guidance, top-k / top-p and the draw) is
:func:`hart_edu.kernels.cfg_sample.cfg_sample`: its reference or its fused Triton kernel,
whichever ``hart_edu.kernels.backend.use_backend`` chose, consuming the generator's numbers
exactly as ``torch.multinomial`` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from hart_edu.ar_transformer import HARTTransformer
from hart_edu.kernels.cfg_sample import cfg_sample, multinomial_noise

__all__ = [
    "OfficialQuirks",
    "OFFICIAL",
    "SamplingSettings",
    "GenerationResult",
    "generate",
    "guidance_ratio",
    "official_top_k",
    "gumbel_softmax",
    "check_given_indices",
]


# --------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OfficialQuirks:
    """Official behaviours that look accidental; all on by default (= official images).

    * ``cfg_ramp``: guidance ratio ``t = cfg * si/(S-1)`` (off: ``t = cfg`` at every stage);
    * ``stale_last_stage_cfg``: the last stage and the diffusion head reuse the ratio of the
      stage before, ``cfg*(S-2)/(S-1)`` (off: the ramp's own value ``cfg``);
    * ``top_k_override``: the caller's ``top_k`` is ignored and 600 (stages < 7) / 300 (later)
      is used; for a vocabulary smaller than k this keeps every code (the official code
      would crash there);
    * ``attend_to_padding``: padded context positions take part in attention (off: they are
      masked out of every stage's keys);
    * ``stage0_reads_last_position``: scale 0 is predicted from the last context position,
      a PAD position for a right-padded prompt (off: each row's last valid position).

    The last two are the network's (:meth:`HARTTransformer.begin` and
    :meth:`HARTTransformer.forward_context` take them; teacher forcing too).
    """

    cfg_ramp: bool = True
    stale_last_stage_cfg: bool = True
    top_k_override: bool = True
    attend_to_padding: bool = True
    stage0_reads_last_position: bool = True


OFFICIAL = OfficialQuirks()


@dataclass(frozen=True)
class SamplingSettings:
    """How code indices are drawn from the guided logits.

    ``greedy``: argmax (== top_k=1; what the parity fixtures use). Otherwise top-k / top-p
    filtering then a multinomial draw from ``generator``. ``more_smooth``: the official
    Gumbel-softmax blend of code embeddings instead of the sampled code (visualisation only).
    ``residual``: the diffusion head's continuous residual on the last scale (the official
    ``final_stage=0``; False = ``final_stage=1``, discrete tokens only).
    """

    cfg: float = 1.5
    top_k: int = 0
    top_p: float = 0.0
    greedy: bool = False
    more_smooth: bool = False
    num_maskgit_iters: int = 1
    residual: bool = True
    diffusion_temperature: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.residual, bool):
            raise ValueError(f"residual={self.residual!r} must be True (with residual diffusion) or False")
        if self.num_maskgit_iters < 1:
            raise ValueError(f"num_maskgit_iters={self.num_maskgit_iters} must be >= 1")
        if self.top_k < 0 or not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 and top_p={self.top_p} in [0, 1]")


def official_top_k(si: int) -> int:
    """The top-k the official inference hard-codes: 600 for stages 0..6, 300 after."""
    return 600 if si < 7 else 300


def guidance_ratio(si: int, num_stages: int, quirks: OfficialQuirks = OFFICIAL) -> float:
    """The guidance ratio r of stage ``si`` (the guidance is t = cfg * r; see :class:`OfficialQuirks`)."""
    last = num_stages - 1
    if quirks.stale_last_stage_cfg and si == last:
        si = last - 1  # the value left over from the loop over the earlier stages
    return si / last if quirks.cfg_ramp else 1.0


def gumbel_softmax(logits: torch.Tensor, tau: float, generator: torch.Generator) -> torch.Tensor:
    """softmax((logits + g) / tau), g = -log(Exp(1)) drawn from ``generator`` (soft, not hard)."""
    gumbels = -torch.empty_like(logits).exponential_(generator=generator).log()
    return ((logits + gumbels) / tau).softmax(dim=-1)


def check_given_indices(given_indices: Sequence[torch.Tensor], patch_nums: Sequence[int], B: int,
                        vocab_size: int) -> list[torch.Tensor]:
    """``given_indices`` as a list, checked: at most S-1 scales (the last one is always
    generated), scale si an int64 tensor (B, p_si^2) of codes in [0, vocab_size)."""
    if not isinstance(given_indices, (list, tuple)):
        raise ValueError(f"given_indices must be a list of per-scale code tensors, got {type(given_indices).__name__}")
    given = list(given_indices)
    if len(given) >= len(patch_nums):
        raise ValueError(f"given_indices holds {len(given)} scales: at most {len(patch_nums) - 1} "
                         f"(the last scale is always generated)")
    for si, idx in enumerate(given):
        want = (B, patch_nums[si] ** 2)
        if not isinstance(idx, torch.Tensor) or idx.dtype != torch.int64 or tuple(idx.shape) != want:
            got = f"{idx.dtype} {tuple(idx.shape)}" if isinstance(idx, torch.Tensor) else type(idx).__name__
            raise ValueError(f"given_indices[{si}] must be int64 of shape {want}, got {got}")
        if idx.numel() and not (0 <= int(idx.min()) and int(idx.max()) < vocab_size):
            raise ValueError(f"given_indices[{si}] holds codes outside [0, {vocab_size})")
    return given


# --------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------


@dataclass
class GenerationResult:
    """What :func:`generate` returns (B images, last scale p = p_{S-1}, l = p^2 tokens).

    ``indices[si]`` (B, p_si^2) per stage. The latents (B, Cvae, p, p): ``f_discrete_BChw``
    from the codes alone; ``residual_BChw`` the diffusion head's continuous residual (None
    without it); ``f_hat_BChw`` what the decoder gets, the codes' and the residual's last-scale
    tokens added *before* they join f_hat (so it equals f_discrete + residual up to float
    rounding; exactly f_discrete without the residual). With the residual: ``diffusion_z``
    (2B*l, C) the head's condition, ``diffusion_out`` (2B*l, Cvae) its output for every row
    (the unconditional half is discarded) and ``diffusion_noises`` its draws (the last MaskGIT
    round's). With ``capture=True``: ``context_normed`` (2B, T, Dctx), ``cond_BD`` (2B, T, C),
    ``raw_logits[si]`` (2B, l, V, before guidance), ``cfg_logits[si]`` (B, l, V, handed to
    the sampler), ``block_outputs[si][i]`` (2B, l, C) and ``guidance[si]`` (the guidance
    t = cfg * r of each stage).
    """

    indices: list[torch.Tensor]
    f_hat_BChw: torch.Tensor
    f_discrete_BChw: torch.Tensor
    residual_BChw: torch.Tensor | None = None
    diffusion_z: torch.Tensor | None = None
    diffusion_out: torch.Tensor | None = None
    diffusion_noises: tuple[torch.Tensor, ...] | None = None
    context_normed: torch.Tensor | None = None
    cond_BD: torch.Tensor | None = None
    raw_logits: list[torch.Tensor] = field(default_factory=list)
    cfg_logits: list[torch.Tensor] = field(default_factory=list)
    block_outputs: list[list[torch.Tensor]] = field(default_factory=list)
    guidance: list[float] = field(default_factory=list)


class _Pick(NamedTuple):
    idx_Bl: torch.Tensor  # (B, l) code indices
    h_BlC: torch.Tensor  # (B, l, Cvae) what is added to f_hat
    ratio: float  # the guidance ratio r of this stage


class _LastScale(NamedTuple):
    tokens_BlC: torch.Tensor  # discrete + residual, added to f_hat
    discrete_BlC: torch.Tensor
    residual_BlC: torch.Tensor | None


# --------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------


@torch.no_grad()
def generate(
    model: HARTTransformer,
    quantizer: nn.Module,
    context_BTD: torch.Tensor,
    context_mask_BT: torch.Tensor,
    context_position_ids_BT: torch.Tensor,
    settings: SamplingSettings = SamplingSettings(),
    generator: torch.Generator | None = None,
    quirks: OfficialQuirks = OFFICIAL,
    diffusion_noises: Sequence[torch.Tensor] | None = None,
    capture: bool = False,
    on_stage_end: Callable[[int], None] | None = None,
    given_indices: Sequence[torch.Tensor] = (),
    kv_cache_dtype: torch.dtype | None = None,
) -> GenerationResult:
    """Generate the codes and latents of B images from text-encoder outputs.

    ``quantizer``: the tokenizer's :class:`hart_edu.vq.MultiScaleResidualQuantizer` (code
    embeddings and the f_hat composition). ``context_*``: (B, T, Dctx) float, (B, T) bool mask,
    (B, T) int position ids. ``generator`` drives every random draw (sampling, Gumbel, MaskGIT
    order, diffusion noise); ``diffusion_noises`` replays recorded diffusion draws (see
    :meth:`hart_edu.residual_diffusion.ResidualDiffusion.sample`; one MaskGIT round only).
    ``on_stage_end(si)`` is called after each stage's codes are chosen (a progress hook).

    ``given_indices``: the codes of the first k < S scales, (B, p_si^2) int64 each, taken
    instead of sampled (no draw for them); the later scales are generated on top. An image
    completed from a given coarse layout, and a diagnostic: which scale loses what the prompt
    asked for (``python -m hart_edu.eval --given-scales``).

    ``kv_cache_dtype``: the KV cache's storage dtype (None: the model's); bfloat16 under a
    float32 model halves the cache (1.79 of 3.57 GiB at 1024px) and keeps float32 attention
    (:class:`hart_edu.kv_cache.KVCache`; ``--quantize int8`` uses it).
    """
    run = _Generation(model, quantizer, context_BTD, context_mask_BT, context_position_ids_BT, settings,
                      generator, quirks, diffusion_noises, capture, given_indices, kv_cache_dtype)
    return run.scales(on_stage_end or (lambda si: None))


class _Generation:
    """One :func:`generate` call: its inputs checked, the doubled batch, the network's
    :class:`~hart_edu.ar_transformer.ScalePass` and what is collected, all set up here.

    Rows ``[0, B)`` are conditional, rows ``[B, 2B)`` unconditional (N = 2B).
    """

    def __init__(self, model: HARTTransformer, quantizer: nn.Module, context_BTD: torch.Tensor,
                 mask_BT: torch.Tensor, position_ids_BT: torch.Tensor, settings: SamplingSettings,
                 generator: torch.Generator | None, quirks: OfficialQuirks,
                 diffusion_noises: Sequence[torch.Tensor] | None, capture: bool,
                 given_indices: Sequence[torch.Tensor], kv_cache_dtype: torch.dtype | None):
        config = model.config
        if tuple(quantizer.patch_nums) != tuple(config.patch_nums):
            raise ValueError(f"tokenizer scales {tuple(quantizer.patch_nums)} != transformer patch_nums "
                             f"{tuple(config.patch_nums)}")
        if (quantizer.vocab_size, quantizer.channels) != (model.vocab_size, model.vae_channels):
            raise ValueError("tokenizer (vocab_size, z_channels) do not match the transformer's")
        T, D = config.context_token, config.context_dim
        if context_BTD.dim() != 3 or context_BTD.shape[1:] != (T, D):
            raise ValueError(f"context must be (B, {T}, {D}), got {tuple(context_BTD.shape)}")
        B = context_BTD.shape[0]
        if mask_BT.shape != (B, T) or position_ids_BT.shape != (B, T):
            raise ValueError(f"context_mask {tuple(mask_BT.shape)} and context_position_ids "
                             f"{tuple(position_ids_BT.shape)} must both be (B, T) = {(B, T)}")
        if given_indices and capture:
            raise ValueError("capture=True records every scale's sampling: use it without given_indices")
        if settings.num_maskgit_iters > 1 and diffusion_noises is not None and settings.residual:
            raise ValueError("diffusion_noises replays one diffusion call: use it with num_maskgit_iters=1")
        self.given = check_given_indices(given_indices, config.patch_nums, B, model.vocab_size)
        self.model, self.quantizer, self.B = model, quantizer, B
        self.settings, self.quirks, self.generator = settings, quirks, generator
        self.diffusion_noises, self.capture = diffusion_noises, capture

        uncond = model.unconditional_context(context_BTD, mask_BT, position_ids_BT)
        self.scale_pass = model.begin(
            torch.cat((context_BTD, uncond.context_BTD)), torch.cat((mask_BT.bool(), uncond.mask_BT)),
            torch.cat((position_ids_BT, uncond.position_ids_BT)), attend_to_padding=quirks.attend_to_padding,
            cache_capacity=config.sequence_length, cache_dtype=kv_cache_dtype, record_blocks=capture,
        )
        p = config.patch_nums[-1]
        self.f_zero_BChw = context_BTD.new_zeros(B, model.vae_channels, p, p)  # f_hat before scale 0
        self.result = GenerationResult(indices=[], f_hat_BChw=None, f_discrete_BChw=None)  # type: ignore[arg-type]
        if capture:
            self.result.context_normed = self.scale_pass.context_normed_NTD
            self.result.cond_BD = self.scale_pass.cond_NTC
            self.result.block_outputs = self.scale_pass.block_outputs

    def scales(self, on_stage_end: Callable[[int], None]) -> GenerationResult:
        """Stage 0, then every scale; the latents of the result."""
        model, quantizer, S = self.model, self.quantizer, self.model.config.num_stages

        # Stage 0: the context tokens; scale 0's single code comes from one context position.
        stage0 = model.forward_context(self.scale_pass, self.quirks.stage0_reads_last_position)
        h_BlC = self.predict(0, stage0.logits_NTV, stage0.logits_N1V).h_BlC
        on_stage_end(0)

        f_hat_BChw = self.f_zero_BChw
        for si in range(1, S):
            # f_hat += Phi(upsample(h_{si-1})); this stage's input = f_hat area-downsampled to p_si
            f_hat_BChw, next_BChw = quantizer.next_autoregressive_input(si - 1, f_hat_BChw, _latent(h_BlC))
            x_NlC = model.embed_scale(si, next_BChw.flatten(2).transpose(1, 2)).repeat(2, 1, 1)
            positions_Nl2 = model.image_token_positions(si, self.scale_pass.image_offset_N)
            if si < S - 1:
                _, logits_NlV = model.forward_scale(self.scale_pass, x_NlC, positions_Nl2)
                h_BlC = self.predict(si, logits_NlV, logits_NlV).h_BlC
            else:
                last = self.last_stage(x_NlC, positions_Nl2)
            on_stage_end(si)
        self.scale_pass.caches.clear()  # the KV cache (1.8 GiB at 1024px in bf16) is not needed any more

        # The last scale is added without Phi (hybrid tokenizer): once with the residual (what
        # the decoder gets), once without (the discrete latent).
        self.result.f_hat_BChw, _ = quantizer.next_autoregressive_input(S - 1, f_hat_BChw, _latent(last.tokens_BlC))
        if last.residual_BlC is None:
            self.result.f_discrete_BChw = self.result.f_hat_BChw
        else:
            self.result.f_discrete_BChw, _ = quantizer.next_autoregressive_input(
                S - 1, f_hat_BChw, _latent(last.discrete_BlC))
            self.result.residual_BChw = _latent(last.residual_BlC)
        return self.result

    # -- the last stage ----------------------------------------------------------------------

    def last_stage(self, x_NlC: torch.Tensor, positions_Nl2: torch.Tensor) -> _LastScale:
        """MaskGIT fill of the last scale (+ residual diffusion).

        With R rounds, round r predicts the still-masked positions except the
        ``max(1, min(#masked - 1, floor(l * cos(pi/2 * (r+1)/R))))`` first ones (in a random
        order) that stay masked for later rounds; the last round predicts all the rest.
        Every round feeds the *same* inputs ``x_NlC`` (official); the KV cache makes the
        positions of earlier rounds visible to later ones.
        """
        N, l, C = x_NlC.shape
        B, S, Cvae = self.B, self.model.config.num_stages, self.model.vae_channels
        rounds = self.settings.num_maskgit_iters
        masked_Bl = torch.ones(B, l, dtype=torch.bool, device=x_NlC.device)
        tokens_BlC, discrete_BlC = x_NlC.new_zeros(B, l, Cvae), x_NlC.new_zeros(B, l, Cvae)
        residual_BlC = None
        idx_Bl = torch.full((B, l), -1, dtype=torch.int64, device=x_NlC.device)
        if rounds > 1:
            if self.generator is None:
                raise ValueError("num_maskgit_iters > 1 draws a random order: pass generator=")
            order_Bl = torch.stack(
                [torch.randperm(l, generator=self.generator, device=self.generator.device) for _ in range(B)]
            ).to(x_NlC.device)
        for r in range(rounds):
            if r == rounds - 1:
                predict_Bl = masked_Bl
            else:
                keep = math.floor(l * math.cos(math.pi / 2 * (r + 1) / rounds))
                keep = max(1, min(int(masked_Bl[0].sum()) - 1, keep))
                still_masked_Bl = torch.zeros_like(masked_Bl).scatter(1, order_Bl[:, :keep], True)
                predict_Bl, masked_Bl = masked_Bl & ~still_masked_Bl, still_masked_Bl
            predict_Nl = predict_Bl.repeat(2, 1)
            x_NkC = x_NlC[predict_Nl].view(N, -1, C)
            positions_Nk2 = positions_Nl2[predict_Nl].view(N, -1, 2)
            h_last_NkC, logits_NkV = self.model.forward_scale(self.scale_pass, x_NkC, positions_Nk2)
            pick = self.predict(S - 1, logits_NkV, logits_NkV, record_indices=False)
            idx_Bl[predict_Bl] = pick.idx_Bl.reshape(-1)
            h_BkC = pick.h_BlC
            discrete_BlC[predict_Bl] = h_BkC.reshape(-1, Cvae).to(discrete_BlC.dtype)
            if self.settings.residual:
                r_BkC = self.residual(h_last_NkC, pick.idx_Bl, self.settings.cfg * pick.ratio)
                residual_BlC = r_BkC.new_zeros(B, l, Cvae) if residual_BlC is None else residual_BlC
                residual_BlC[predict_Bl] = r_BkC.reshape(-1, Cvae)
                h_BkC = h_BkC + r_BkC
            tokens_BlC[predict_Bl] = h_BkC.reshape(-1, Cvae).to(tokens_BlC.dtype)
        self.result.indices.append(idx_Bl)
        return _LastScale(tokens_BlC, discrete_BlC, residual_BlC)

    def residual(self, h_last_NkC: torch.Tensor, idx_Bk: torch.Tensor, t: float) -> torch.Tensor:
        """Continuous residual tokens (B, k, Cvae) from the diffusion head, conditioned on
        z = decoder_norm(h_last + word_embed(embedding[idx])) for all 2B rows (the
        unconditional rows reuse the conditional indices); guidance scale t (the stale one)."""
        N, k, C = h_last_NkC.shape
        z_MC = self.model.diffusion_condition(h_last_NkC, self.quantizer.embedding(idx_Bk)).reshape(N * k, C)
        out = self.model.diffloss.sample(
            z_MC, cfg=t, temperature=self.settings.diffusion_temperature,
            generator=None if self.diffusion_noises is not None else self.generator,
            noises=self.diffusion_noises,
        )
        self.result.diffusion_z, self.result.diffusion_out = z_MC, out.tokens_NC
        self.result.diffusion_noises = out.noises
        return out.tokens_NC.view(N, k, -1)[: N // 2]  # the unconditional half is discarded

    # -- one stage's codes -------------------------------------------------------------------

    def predict(self, si: int, raw_logits_NLV: torch.Tensor, logits_NlV: torch.Tensor,
                record_indices: bool = True) -> _Pick:
        """Guide, filter and sample one stage's codes.

        logits = (1 + t) cond - t uncond, t = cfg * r(si); then top-k / top-p and a draw (or
        argmax); h = embedding[idx] (or the Gumbel-softmax blend of all codes, more_smooth).
        A given scale (``given_indices``) takes its codes as they are, nothing drawn, and always
        the hard embedding h = embedding[idx], as in teacher forcing, also with more_smooth.
        """
        B, s, q = self.B, self.settings, self.quirks
        ratio = guidance_ratio(si, self.model.config.num_stages, q)
        if si < len(self.given):  # a given scale: its codes are taken as they are, nothing drawn
            idx_Bl = self.given[si].to(logits_NlV.device)
            self.result.indices.append(idx_Bl)
            return _Pick(idx_Bl, self.quantizer.embedding(idx_Bl), ratio)
        t = s.cfg * ratio
        top_k = official_top_k(si) if q.top_k_override else s.top_k
        noise_BlV = None  # greedy: no draw
        if not s.greedy:  # the Exp(1) numbers torch.multinomial would draw (see hart_edu.kernels.cfg_sample)
            if self.generator is None:
                raise ValueError("sampling needs generator= (a torch.Generator); hart_edu never uses the global RNG")
            l, V = logits_NlV.shape[1], logits_NlV.shape[2]
            probs_dtype = logits_NlV[:1, :1, :1].softmax(dim=-1).dtype  # eager's (autocast may promote softmax)
            noise_BlV = multinomial_noise((B, l, V), probs_dtype, logits_NlV.device, self.generator)
        out = cfg_sample(logits_NlV, t, top_k, s.top_p, noise_BlV, keep_guided=self.capture,
                         keep_filtered=s.more_smooth)
        if self.capture:
            self.result.raw_logits.append(raw_logits_NLV)
            self.result.cfg_logits.append(out.guided_BlV)
            self.result.guidance.append(t)
        if record_indices:
            self.result.indices.append(out.idx_Bl)
        if not s.more_smooth:
            return _Pick(out.idx_Bl, self.quantizer.embedding(out.idx_Bl), ratio)
        if self.generator is None:
            raise ValueError("more_smooth=True draws Gumbel noise: pass generator=")
        tau = max(0.27 * (1 - ratio * 0.95), 0.005)  # MaskGIT-style temperature (official)
        soft_BlV = gumbel_softmax(out.filtered_BlV * (1 + ratio), tau, self.generator)
        return _Pick(out.idx_Bl, soft_BlV @ self.quantizer.embedding.weight.unsqueeze(0), ratio)


def _latent(h_BlC: torch.Tensor) -> torch.Tensor:
    """Tokens (B, p*p, C) as a latent (B, C, p, p) (row-major positions)."""
    B, l, C = h_BlC.shape
    p = math.isqrt(l)
    return h_BlC.transpose(1, 2).reshape(B, C, p, p)
