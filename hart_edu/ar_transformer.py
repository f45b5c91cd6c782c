r"""HART's autoregressive transformer (official ``HARTForT2I``): the network.

The scale-by-scale generation loop that drives it (guidance, sampling, the MaskGIT last
stage, the residual diffusion and the official quirks) is :mod:`hart_edu.generation`.

What it computes
----------------

The image latent ``f`` (Cvae channels, ``p_K x p_K`` positions) is built from ``S`` scales
``p_0 < p_1 < ... < p_{S-1}`` (``patch_nums``). At scale ``si`` the transformer predicts one
code index per position of a ``p_si x p_si`` grid, *all positions of a scale at once*,
conditioned on the text and on everything predicted at earlier scales (VAR's "next-scale
prediction"). The running latent after scale ``si`` is::

    f_hat <- f_hat + Phi_si( upsample_bicubic( embedding[idx_si] ) )      (tokenizer)

and the next scale's input tokens are ``word_embed(area_downsample(f_hat, p_{si+1}))``.

The sequence the transformer sees (one row per image)::

    [ T context tokens | p_1^2 tokens | p_2^2 tokens | ... | p_{S-1}^2 tokens ]
      stage 0            stage 1        stage 2              last stage

* stage 0: the T text tokens ``context_embed(context_norm(ctx)) + lvl(0)``; the logits of
  the *last* context position give the single 1x1 code of scale 0;
* stage si >= 1: ``word_embed(f_hat downsampled to p_si) + lvl(si)``.

Attention is bidirectional inside a stage and sees all earlier stages through a KV cache
(:class:`hart_edu.kv_cache.KVCache`; no causal mask is needed at inference: each stage is one
forward call). A pass over the scales, in training and in generation alike, is
:meth:`HARTTransformer.begin` (condition, adaLN parameters, caches),
:meth:`HARTTransformer.forward_context` (stage 0) and :meth:`HARTTransformer.forward_scale`
(each image stage).

One block (Llama flavour, adaLN-modulated by a pooled text condition ``c``)::

    (g1, g2, s1, s2, b1, b2) = Linear(SiLU(pool(c)))                 (6 chunks of C)
    x <- x + g1 * Attn( RMSNorm(x) * (1 + s1) + b1 )
    x <- x + g2 * MLP ( RMSNorm(x) * (1 + s2) + b2 )
    MLP(u) = W_down( SiLU(W_gate u) * (W_up u) )                     (SwiGLU)
    Attn:  q, k, v = u W_qkv + (b_q, 0, b_v);  q, k <- RoPE(q), RoPE(k)
           softmax( q k^T * 0.25 / sqrt(d_head) ) v                  (note the 0.25)

``pool`` is max-pooling over the context tokens (default) or a masked average. The head::

    (s, b) = Linear(SiLU(maxpool(c)));  logits = W_head( RMSNorm(x) * (1 + s) + b )

Rotary position embeddings
--------------------------

* context tokens: ordinary 1-D RoPE on ``context_position_ids`` (base 10000,
  ``inv_freq_j = 10000^{-2j/d}``, angle = pos * inv_freq, duplicated over both halves);
* image tokens: a "2-D" RoPE whose positions are *float* grid coordinates scaled to the
  largest grid, offset by the last context position id::

      (r, c) = (i, j) * p_{S-1} / p_si + context_position_ids[:, -1]

  With ``inv_freq_j = 10000^{-4j/d}`` (d/4 frequencies) the angle vector is
  ``[r f, r f, c f, c f]`` (d/4 each) and the usual ``rotate_half`` pairs dimension
  ``j`` with ``j + d/2``: a row angle is paired with a column angle (this is not the usual
  axial 2-D RoPE, and we reproduce it as is).

Classifier-free guidance and the diffusion condition
----------------------------------------------------

Guidance doubles the batch with :meth:`HARTTransformer.unconditional_context` (an all-zero
context, position ids 0 and a mask with only position 0 set); training replaces dropped
prompts by the same rows. The residual diffusion head is conditioned per last-scale token on
:meth:`HARTTransformer.diffusion_condition`::

    z = decoder_norm( h_last + word_embed(embedding[idx_last]) )

where ``h_last`` is the raw output of the last block (before ``head_nm``).

Official behaviours kept on purpose
-----------------------------------

Two official quirks belong to the network and are switches of :meth:`HARTTransformer.begin`
(``attend_to_padding``) and :meth:`HARTTransformer.forward_context`
(``stage0_reads_last_position``); :class:`hart_edu.generation.OfficialQuirks` lists them with
the sampling ones. Others are structural and only documented here:

* the "non-affine" norms (``ln_wo_grad``, ``head_nm.ln_wo_grad``, ``context_norm``) are
  affine RMS norms with a stored weight (the official fused RMSNorm ignores
  ``elementwise_affine=False`` and ``scale=``), so ``context_norm_scale`` has no effect;
* ``attn_bias_for_masking`` (a (1,1,L,L) training mask, 380 MB at 1024px) and
  ``zero_k_bias`` are saved in every checkpoint; we accept them when loading but never
  build the mask.

Kernels
-------

The operations themselves live in :mod:`hart_edu.kernels`, one readable PyTorch reference each
beside its fused Triton kernel, and this module calls their dispatchers: the adaLN
``RMSNorm(x) * (1 + s) + b`` (``rmsnorm_modulate``, and ``rms_norm`` alone), RoPE on q and k
(``rope``) and the SwiGLU gate (``swiglu``); the sampling step is :mod:`hart_edu.generation`'s.
Which one runs is chosen with ``hart_edu.kernels.backend.use_backend`` (the reference by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from hart_edu.checkpoint import (
    EMA_WEIGHT_FILES,
    CheckpointError,
    check_state_dict,
    config_from_dict,
    find_weight_file,
    load_weight_file,
    read_config,
)
from hart_edu.kernels.rmsnorm_modulate import rms_norm, rmsnorm_modulate
from hart_edu.kernels.rope import rope
from hart_edu.kernels.swiglu import swiglu
from hart_edu.kv_cache import KVCache
from hart_edu.residual_diffusion import ResidualDiffusion, TimestepEmbedder

__all__ = [
    "MODEL_TYPE",
    "TransformerConfig",
    "TextContext",
    "ScalePass",
    "ContextOutput",
    "TeacherForcingOutput",
    "HARTTransformer",
    "tokenizer_folder_for",
]

MODEL_TYPE = "hart_transformer_t2i"
TRAINING_ONLY_MASK_KEY = "attn_bias_for_masking"


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransformerConfig:
    """Every option of the official ``HARTForT2IConfig``, with the official class defaults.

    Note the class defaults are *not* the released model's values (e.g. ``attn_type`` is
    "gpt2" here, "llama" in the released config.json); a config.json that leaves a key out
    gets the class default, as with the official loader.

    Training-only options (dropouts, ``cond_drop_rate``, ``diffusion_batch_mul``) and
    kernel-selection flags (``flash_if_available``, ``fused_if_available``) are accepted and
    do not change inference.
    """

    vae_path: str | None = None
    context_token: int = 77
    context_dim: int = 768
    depth: int = 16
    embed_dim: int = 1024
    num_heads: int = 16
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    norm_eps: float = 1e-6
    shared_aln: bool = False
    cond_drop_rate: float = 0.1
    attn_l2_norm: bool = False
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    flash_if_available: bool = True
    fused_if_available: bool = True
    mlp_type: str = "gpt2"
    attn_type: str = "gpt2"
    disable_aln: bool = False
    use_timestep_embed: bool = False
    sep_aln_pooling_mode: str = "max"
    use_cross_attn: bool = False
    diff_width: int = 1024
    diff_depth: int = 6
    num_sampling_steps: str = "8"
    diffusion_batch_mul: int = 4
    sampler: str = "iddpm"
    use_context_norm: bool = False
    context_norm_scale: float = 1.0
    diffusion_head_repeats: int = 1

    def __post_init__(self) -> None:
        if self.attn_type != "llama":
            raise ValueError(
                f"attn_type={self.attn_type!r} is not supported: hart_edu implements 'llama' "
                "attention (RMSNorm + RoPE). The official 'gpt2' attention cannot run HARTForT2I "
                "inference either (its SelfAttention.forward has no m_maskgit argument)."
            )
        if self.mlp_type not in ("llama", "gpt2"):
            raise ValueError(f"mlp_type={self.mlp_type!r} is not supported: use 'llama' or 'gpt2'")
        if self.use_cross_attn:
            raise ValueError(
                "use_cross_attn=True is not supported (the official cross-attention needs xformers "
                "and is unused by the released model)"
            )
        if self.sep_aln_pooling_mode not in ("max", "avg"):
            raise ValueError(
                f"sep_aln_pooling_mode={self.sep_aln_pooling_mode!r} is not supported: use 'max' or 'avg'"
            )
        if self.context_token < 1:
            raise ValueError(
                f"context_token={self.context_token}: hart_edu implements text-to-image (context_token >= 1); "
                "the class-conditional variant (context_token 0) is not supported"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} must be divisible by num_heads={self.num_heads}")
        if (self.embed_dim // self.num_heads) % 4:
            raise ValueError(
                f"head dim {self.embed_dim // self.num_heads} must be a multiple of 4 (2-D RoPE uses d/4 frequencies)"
            )
        pns = tuple(self.patch_nums)
        if len(pns) < 2 or list(pns) != sorted(set(pns)) or pns[0] != 1:
            raise ValueError(
                f"patch_nums={pns} must be strictly increasing, start at 1 and have at least 2 scales"
            )

    # -- sizes that follow from the options ------------------------------------------------

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def num_stages(self) -> int:
        return len(self.patch_nums)

    @property
    def mlp_hidden(self) -> int:
        """SwiGLU width: 2/3 of mlp_ratio * C, rounded up to a multiple of 256 (official rule);
        the GPT-2 MLP uses round(mlp_ratio * C)."""
        if self.mlp_type == "llama":
            return int((self.embed_dim * self.mlp_ratio * 2) / 3 + 255) // 256 * 256
        return round(self.embed_dim * self.mlp_ratio)

    @property
    def sequence_length(self) -> int:
        """Training sequence length: T context tokens + every image token after scale 0."""
        return self.context_token + sum(p * p for p in self.patch_nums[1:])


def tokenizer_folder_for(llm_folder: str | Path, config: TransformerConfig) -> Path:
    """Where the official code finds the tokenizer: ``vae_path``, or ``<llm>/../tokenizer``."""
    if config.vae_path is not None:
        return Path(config.vae_path)
    return Path(llm_folder).resolve().parent / "tokenizer"


# --------------------------------------------------------------------------------------
# Small building blocks
# --------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """y = w * x / sqrt(mean(x^2) + eps), computed in float32 (official fused kernel).

    Always affine: this is also what the official ``LlamaRMSNormFused`` does when asked for
    ``elementwise_affine=False`` or a ``scale``.
    """

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def pool_context(cond_NTC: torch.Tensor, mask_NT: torch.Tensor, mode: str) -> torch.Tensor:
    """One condition vector per row: ``max_T c`` or the masked mean ``sum_T m c / max(sum m, 1)``.

    (Official order of operations: divide each term, then sum.)
    """
    if mode == "max":
        return cond_NTC.max(dim=1).values
    m_NT1 = mask_NT.unsqueeze(-1).to(cond_NTC.dtype)
    count_N11 = m_NT1.sum(1).clamp(min=1).unsqueeze(1)
    return (cond_NTC * m_NT1 / count_N11).sum(1)


def grid_positions(pn: int, largest: int, device: torch.device | None = None) -> torch.Tensor:
    """(pn*pn, 2) float (row, col) coordinates of a pn x pn grid in the largest grid's units:
    (i, j) / pn * largest (row-major, the order of the flattened tokens)."""
    ar = torch.arange(pn, device=device)
    ij_pp2 = torch.stack(torch.meshgrid(ar, ar, indexing="ij"), dim=-1)
    return (ij_pp2 / pn * largest).reshape(-1, 2)


# --------------------------------------------------------------------------------------
# Attention, MLP, block, head
# --------------------------------------------------------------------------------------


class LlamaAttention(nn.Module):
    """Multi-head self-attention with RoPE and a KV cache (official ``LlamaAttention``).

    Keys: ``qkv_proj.weight`` (3C, C) without bias; ``q_bias``, ``v_bias`` and the buffer
    ``zero_k_bias`` form the qkv bias; ``proj``. With ``attn_l2_norm`` q and k are
    L2-normalised, q is scaled by exp(min(scale_mul, log 100)) and the softmax scale is 1;
    otherwise the scale is 0.25/sqrt(d_head) (not the usual 1/sqrt(d_head)).
    """

    def __init__(self, embed_dim: int, num_heads: int, attn_l2_norm: bool):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.attn_l2_norm = attn_l2_norm
        if attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
            self.max_scale_mul = math.log(100)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.qkv_proj = nn.Linear(embed_dim, 3 * embed_dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))  # always zero; kept for the key layout
        self.proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x_NLC: torch.Tensor, positions: torch.Tensor, cache: KVCache, valid_NL: torch.Tensor,
                mask_padding: bool) -> torch.Tensor:
        """``positions``: RoPE position ids, (N, L) for context tokens, (N, L, 2) for image tokens."""
        N, L, C = x_NLC.shape
        bias_3C = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv_NL3Hd = F.linear(x_NLC, self.qkv_proj.weight, bias_3C).view(N, L, 3, self.num_heads, self.head_dim)
        q_NHLd, k_NHLd, v_NHLd = qkv_NL3Hd.permute(2, 0, 3, 1, 4).unbind(0)
        if self.attn_l2_norm:
            scale_mul_1H11 = self.scale_mul_1H11.clamp(max=self.max_scale_mul).exp()
            q_NHLd = F.normalize(q_NHLd, dim=-1).mul(scale_mul_1H11)
            k_NHLd = F.normalize(k_NHLd, dim=-1)
        q_NHLd, k_NHLd = rope(q_NHLd, k_NHLd, positions)

        cache.extend(k_NHLd, v_NHLd, valid_NL)  # this stage's tokens see themselves and all before
        bias = None
        if mask_padding:  # not official: hide padded context keys
            bias = torch.zeros(cache.valid_NK.shape, dtype=x_NLC.dtype, device=x_NLC.device)
            bias = bias.masked_fill(~cache.valid_NK, float("-inf"))[:, None, None, :]
        k_NHKd, v_NHKd = cache.k_NHKd, cache.v_NHKd
        if k_NHKd.dtype != q_NHLd.dtype:  # a cache stored in another dtype: attend in the model's
            k_NHKd, v_NHKd = k_NHKd.to(q_NHLd.dtype), v_NHKd.to(q_NHLd.dtype)
        out_NHLd = F.scaled_dot_product_attention(q_NHLd, k_NHKd, v_NHKd, attn_mask=bias, scale=self.scale)
        return self.proj(out_NHLd.transpose(1, 2).reshape(N, L, C))


class LlamaMLP(nn.Module):
    """SwiGLU: down( SiLU(gate u) * up(u) ), no biases."""

    def __init__(self, embed_dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(embed_dim, hidden, bias=False)
        self.up_proj = nn.Linear(embed_dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, embed_dim, bias=False)

    def forward(self, u_NLC: torch.Tensor) -> torch.Tensor:
        return self.down_proj(swiglu(self.gate_proj(u_NLC), self.up_proj(u_NLC)))


class GPT2MLP(nn.Module):
    """fc2( GELU_tanh( fc1 u ) ) (official ``FFN`` with mlp_type "gpt2")."""

    def __init__(self, embed_dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, hidden)
        self.fc2 = nn.Linear(hidden, embed_dim)

    def forward(self, u_NLC: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(u_NLC), approximate="tanh"))


def norm_modulate(norm: RMSNorm, x_NLC: torch.Tensor, scale_N1C: torch.Tensor, shift_N1C: torch.Tensor) -> torch.Tensor:
    """adaLN: ``norm(x) * (1 + scale) + shift`` (``hart_edu.kernels.rmsnorm_modulate``)."""
    return rmsnorm_modulate(x_NLC, norm.weight, scale_N1C, shift_N1C, norm.eps)


class Modulation(NamedTuple):
    """adaLN parameters of one block, each (N, 1, C)."""

    gamma1: torch.Tensor
    gamma2: torch.Tensor
    scale1: torch.Tensor
    scale2: torch.Tensor
    shift1: torch.Tensor
    shift2: torch.Tensor


class Block(nn.Module):
    """One transformer block (official ``AdaLNSelfAttn``), in one of three flavours:

    * adaLN (default): ``ada_lin`` = SiLU -> Linear(C, 6C) on the pooled condition; chunk
      order (gamma1, gamma2, scale1, scale2, shift1, shift2);
    * ``disable_aln`` + ``shared_aln``: a learned ``scale_shift_table`` (6, C) plus the
      masked-average condition, same chunk order;
    * ``disable_aln`` alone: plain pre-norm residual block.
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        C = config.embed_dim
        self.pooling = config.sep_aln_pooling_mode
        self.attn = LlamaAttention(C, config.num_heads, config.attn_l2_norm)
        mlp_cls = LlamaMLP if config.mlp_type == "llama" else GPT2MLP
        self.ffn = mlp_cls(C, config.mlp_hidden)
        self.ln_wo_grad = RMSNorm(C, config.norm_eps)
        self.mode = "adaln" if not config.disable_aln else ("shared" if config.shared_aln else "plain")
        if self.mode == "adaln":
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        elif self.mode == "shared":
            self.scale_shift_table = nn.Parameter(torch.randn(6, C) / C**0.5)

    def modulation(self, cond_NTC: torch.Tensor, mask_NT: torch.Tensor) -> Modulation | None:
        C = cond_NTC.shape[-1]
        if self.mode == "adaln":
            condition_NC = pool_context(cond_NTC, mask_NT, self.pooling)
            return Modulation(*self.ada_lin(condition_NC).view(-1, 1, 6, C).unbind(2))
        if self.mode == "shared":
            condition_NC = pool_context(cond_NTC, mask_NT, "avg")
            table_N6C = self.scale_shift_table[None] + condition_NC.unsqueeze(1)
            return Modulation(*table_N6C.chunk(6, dim=1))
        return None

    def forward(self, x_NLC: torch.Tensor, mod: Modulation | None, positions: torch.Tensor, cache: KVCache,
                valid_NL: torch.Tensor, mask_padding: bool) -> torch.Tensor:
        if mod is None:
            x_NLC = x_NLC + self.attn(self.ln_wo_grad(x_NLC), positions, cache, valid_NL, mask_padding)
            return x_NLC + self.ffn(self.ln_wo_grad(x_NLC))
        # x <- x + g1 * Attn(norm(x) (1 + s1) + b1);  x <- x + g2 * MLP(norm(x) (1 + s2) + b2)
        u_NLC = norm_modulate(self.ln_wo_grad, x_NLC, mod.scale1, mod.shift1)
        x_NLC = x_NLC + self.attn(u_NLC, positions, cache, valid_NL, mask_padding) * mod.gamma1
        u_NLC = norm_modulate(self.ln_wo_grad, x_NLC, mod.scale2, mod.shift2)
        return x_NLC + self.ffn(u_NLC) * mod.gamma2


class AdaLNBeforeHead(nn.Module):
    """norm(x) * (1 + scale) + shift, (scale, shift) = Linear(SiLU(max_T c)).

    Always max-pools over all context tokens, padded ones included (official)."""

    def __init__(self, embed_dim: int, eps: float):
        super().__init__()
        self.ln_wo_grad = RMSNorm(embed_dim, eps)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(embed_dim, 2 * embed_dim))

    def forward(self, x_NLC: torch.Tensor, cond_NTC: torch.Tensor) -> torch.Tensor:
        C = x_NLC.shape[-1]
        cond_N1C = cond_NTC.max(dim=1, keepdim=True).values if cond_NTC.shape[1] > 1 else cond_NTC
        scale_N1C, shift_N1C = self.ada_lin(cond_N1C).view(-1, 1, 2, C).unbind(2)
        return norm_modulate(self.ln_wo_grad, x_NLC, scale_N1C, shift_N1C)


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


class TextContext(NamedTuple):
    """The text-encoder outputs the network reads (B prompts, T positions)."""

    context_BTD: torch.Tensor  # (B, T, Dctx) float
    mask_BT: torch.Tensor  # (B, T) bool, True = a real token
    position_ids_BT: torch.Tensor  # (B, T) int, RoPE positions of the context tokens


@dataclass
class ScalePass:
    """One batch on its way through the scales (training or generation), made by
    :meth:`HARTTransformer.begin`: the text condition, each block's adaLN parameters and KV
    cache, and (when recorded) every block's output at every stage."""

    context_normed_NTD: torch.Tensor  # context_norm(ctx)
    cond_NTC: torch.Tensor  # c = context_embed(context_normed): the condition and the stage-0 tokens
    mask_NT: torch.Tensor  # (N, T) bool
    position_ids_NT: torch.Tensor  # (N, T)
    mods: list[Modulation | None]  # per block
    caches: list[KVCache]  # per block
    mask_padding: bool  # not attend_to_padding
    block_outputs: list[list[torch.Tensor]] | None  # [stage][block] (N, L, C) when recorded

    @property
    def image_offset_N(self) -> torch.Tensor:
        """Image-token RoPE positions are offset by each row's last context position id."""
        return self.position_ids_NT[:, -1]


class ContextOutput(NamedTuple):
    """Stage 0 (:meth:`HARTTransformer.forward_context`)."""

    logits_NTV: torch.Tensor  # (N, T, V) at every context position
    logits_N1V: torch.Tensor  # (N, 1, V) at the position scale 0 is read from


class TeacherForcingOutput(NamedTuple):
    """What :meth:`HARTTransformer.forward_teacher_forcing` returns."""

    logits_BLV: torch.Tensor  # (B, sum p^2, V): scale 0 then every image token
    hidden_BLC: torch.Tensor  # (B, L, C): raw last-block output of the image tokens


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------


class HARTTransformer(nn.Module):
    """HART's text-to-image transformer with the official state-dict layout.

    ``vocab_size`` and ``vae_channels`` (Cvae) belong to the tokenizer, as in the official
    code (it reads them from the tokenizer folder): pass them explicitly, or use
    :meth:`from_pretrained`, which reads the tokenizer's config.json.
    """

    def __init__(self, config: TransformerConfig, vocab_size: int, vae_channels: int):
        super().__init__()
        self.config = config
        self.vocab_size, self.vae_channels = vocab_size, vae_channels
        C, T = config.embed_dim, config.context_token

        # Level of every position of the training sequence (context = level 0). Saved in
        # official checkpoints; we check it on load (it says which patch_nums it was made for).
        lvl_1L = torch.cat(
            [torch.zeros(T, dtype=torch.int64)]
            + [torch.full((p * p,), si, dtype=torch.int64) for si, p in enumerate(config.patch_nums) if si > 0]
        ).view(1, -1)
        self.register_buffer("lvl_1L", lvl_1L)

        self.word_embed = nn.Linear(vae_channels, C)
        self.context_embed = nn.Linear(config.context_dim, C)
        self.context_norm = RMSNorm(config.context_dim, config.norm_eps) if config.use_context_norm else nn.Identity()
        self.lvl_embed = TimestepEmbedder(C) if config.use_timestep_embed else nn.Embedding(config.num_stages, C)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.head_nm = AdaLNBeforeHead(C, config.norm_eps)
        self.head = nn.Linear(C, vocab_size)
        self.decoder_norm = RMSNorm(C, config.norm_eps)
        self.diffloss = ResidualDiffusion.from_config(config, token_channels=vae_channels)

    # -- checkpoint layout -------------------------------------------------------------------

    def training_only_shapes(self) -> dict[str, tuple[int, ...]]:
        """Keys official checkpoints carry that inference never needs (accepted, not stored):
        the (1, 1, L, L) causal-by-stage training mask."""
        L = self.config.sequence_length
        return {TRAINING_ONLY_MASK_KEY: (1, 1, L, L)}

    def official_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every key of an official checkpoint with its shape (our state dict + training-only)."""
        shapes = {k: tuple(v.shape) for k, v in self.state_dict().items()}
        shapes.update(self.training_only_shapes())
        return shapes

    def load_official_state_dict(self, state: dict[str, torch.Tensor], *, source: str) -> None:
        """Strictly load an official state dict.

        Missing, unexpected or mis-shaped keys raise one CheckpointError naming them all.
        ``attn_bias_for_masking`` and ``blocks.N.attn.zero_k_bias`` may be absent; when present,
        zero_k_bias must be zero and lvl_1L must match this config's levels.
        """
        optional = set(self.training_only_shapes()) | {
            k for k in self.state_dict() if k.endswith(".attn.zero_k_bias")
        }
        check_state_dict(self.official_shapes(), state, source=source, optional=optional)
        for key in (k for k in state if k.endswith("zero_k_bias")):
            if bool(state[key].any()):
                raise CheckpointError(f"{source}: {key} must be all zeros (the key projection has no bias)")
        if not torch.equal(state["lvl_1L"].to(self.lvl_1L.device), self.lvl_1L):
            raise CheckpointError(f"{source}: lvl_1L does not match patch_nums/context_token of the config")
        ours = {k: v for k, v in state.items() if k not in self.training_only_shapes()}
        missing, _ = self.load_state_dict(ours, strict=False)
        assert set(missing) <= optional, missing  # check_state_dict already vouched for the rest

    @classmethod
    def from_pretrained(
        cls, llm_folder: str | Path, ema: bool = True, *, tokenizer_folder: str | Path | None = None
    ) -> "HARTTransformer":
        """Load an official ``llm/`` folder: config.json, then the main weights
        (model.safetensors or pytorch_model.bin), then with ``ema=True`` ``ema_model.bin`` on
        top (what sample.py uses by default). All loads are strict.

        The vocabulary size and Cvae come from the tokenizer's config.json, found with the
        official rule (``vae_path`` or ``<llm>/../tokenizer``) unless ``tokenizer_folder`` is given.
        """
        from hart_edu.hybrid_tokenizer import MODEL_TYPE as TOKENIZER_TYPE, TokenizerConfig

        llm_folder = Path(llm_folder)
        config = config_from_dict(TransformerConfig, read_config(llm_folder, MODEL_TYPE),
                                  source=str(llm_folder / "config.json"))
        tok_folder = Path(tokenizer_folder) if tokenizer_folder else tokenizer_folder_for(llm_folder, config)
        tok_config = config_from_dict(TokenizerConfig, read_config(tok_folder, TOKENIZER_TYPE),
                                      source=str(tok_folder / "config.json"))
        model = cls(config, vocab_size=tok_config.vocab_size, vae_channels=tok_config.z_channels)
        main_path = find_weight_file(llm_folder)
        model.load_official_state_dict(load_weight_file(main_path), source=str(main_path))
        if ema:
            if not any((llm_folder / name).is_file() for name in EMA_WEIGHT_FILES):
                raise CheckpointError(f"ema=True but {llm_folder} has no {' or '.join(EMA_WEIGHT_FILES)} "
                                      f"(pass ema=False for the main weights)")
            ema_path = find_weight_file(llm_folder, EMA_WEIGHT_FILES)
            model.load_official_state_dict(load_weight_file(ema_path), source=str(ema_path))
        return model.eval()

    # -- pieces of the forward pass ----------------------------------------------------------

    def level_embedding(self, si: int, device: torch.device) -> torch.Tensor:
        """lvl(si), (1, 1, C): the timestep embedder or embedding row of stage ``si``."""
        return self.lvl_embed(torch.tensor([si], device=device)).view(1, 1, -1)

    def logits(self, x_NLC: torch.Tensor, cond_NTC: torch.Tensor) -> torch.Tensor:
        """logits = head(head_nm(x, c)), (N, L, V)."""
        return self.head(self.head_nm(x_NLC, cond_NTC))

    def image_token_positions(self, si: int, offset_N: torch.Tensor) -> torch.Tensor:
        """(N, p_si^2, 2) float RoPE positions of stage ``si``'s tokens (see module docstring)."""
        pn, largest = self.config.patch_nums[si], self.config.patch_nums[-1]
        grid_l2 = grid_positions(pn, largest, device=offset_N.device)
        return grid_l2.unsqueeze(0) + offset_N.view(-1, 1, 1)

    def embed_scale(self, si: int, x_NlCvae: torch.Tensor) -> torch.Tensor:
        """Stage ``si``'s input tokens: ``word_embed(x) + lvl(si)``, (N, l, C)."""
        return self.word_embed(x_NlCvae) + self.level_embedding(si, x_NlCvae.device)

    def unconditional_context(self, context_BTD: torch.Tensor, mask_BT: torch.Tensor,
                              position_ids_BT: torch.Tensor) -> TextContext:
        """The empty prompt of classifier-free guidance for B rows (official): an all-zero
        context, position ids 0 and a mask with only position 0 set. Generation appends these
        rows; training puts them in place of the dropped prompts."""
        uncond_mask_BT = torch.zeros_like(mask_BT, dtype=torch.bool)
        uncond_mask_BT[:, 0] = True
        return TextContext(torch.zeros_like(context_BTD), uncond_mask_BT, torch.zeros_like(position_ids_BT))

    def diffusion_condition(self, h_last_NlC: torch.Tensor, code_BlCvae: torch.Tensor) -> torch.Tensor:
        """The diffusion head's condition per last-scale token, (N, l, C)::

            z = decoder_norm( h_last + word_embed(e) )

        ``h_last_NlC``: the raw last-block output; ``code_BlCvae``: the code embeddings
        ``embedding[idx]`` of the B images, repeated over the N = kB rows of ``h_last`` (with
        guidance the unconditional rows reuse the conditional codes)."""
        e_BlC = self.word_embed(code_BlCvae)
        return self.decoder_norm(h_last_NlC + e_BlC.repeat(h_last_NlC.shape[0] // e_BlC.shape[0], 1, 1))

    # -- one pass over the scales --------------------------------------------------------------

    def begin(self, context_NTD: torch.Tensor, mask_NT: torch.Tensor, position_ids_NT: torch.Tensor, *,
              attend_to_padding: bool = True, cache_capacity: int = 0, cache_dtype: torch.dtype | None = None,
              record_blocks: bool = False) -> ScalePass:
        """Start a pass: the condition ``c = context_embed(context_norm(ctx))``, each block's
        adaLN parameters from it, and empty KV caches.

        ``attend_to_padding`` (official: True): padded context keys take part in attention.
        ``cache_capacity``: 0 grows the caches by concatenation (training: gradients flow
        through them); the sequence length preallocates them (generation, see :class:`KVCache`).
        ``cache_dtype``: the caches' storage dtype (None: the dtype the keys are computed in;
        e.g. bfloat16 under a float32 model halves their memory, see :class:`KVCache`; needs
        ``cache_capacity``).
        ``record_blocks``: keep every block's output of every stage (for parity and tests).
        """
        mask_NT = mask_NT.bool()
        context_normed_NTD = self.context_norm(context_NTD)
        cond_NTC = self.context_embed(context_normed_NTD)
        return ScalePass(
            context_normed_NTD=context_normed_NTD,
            cond_NTC=cond_NTC,
            mask_NT=mask_NT,
            position_ids_NT=position_ids_NT,
            mods=[blk.modulation(cond_NTC, mask_NT) for blk in self.blocks],
            caches=[KVCache(capacity=cache_capacity, storage_dtype=cache_dtype) for _ in self.blocks],
            mask_padding=not attend_to_padding,
            block_outputs=[] if record_blocks else None,
        )

    def run_blocks(self, sp: ScalePass, x_NLC: torch.Tensor, positions: torch.Tensor,
                   valid_NL: torch.Tensor) -> torch.Tensor:
        """All blocks on one stage's tokens, appending their keys/values to the caches.
        ``positions``: RoPE position ids, (N, L) for context tokens, (N, L, 2) for image tokens."""
        # Each block's output is kept only when recorded: at 1024px the 16 outputs of the 64x64
        # scale (2 x 4096 x 1536 float32 each) would hold 0.75 GiB until the stage ends.
        record = sp.block_outputs is not None
        outs = []
        for blk, mod, cache in zip(self.blocks, sp.mods, sp.caches):
            x_NLC = blk(x_NLC, mod, positions, cache, valid_NL, sp.mask_padding)
            if record:
                outs.append(x_NLC)
        if record:
            sp.block_outputs.append(outs)
        return x_NLC

    def forward_context(self, sp: ScalePass, stage0_reads_last_position: bool = True) -> ContextOutput:
        """Stage 0: the context tokens ``c + lvl(0)`` through the blocks; scale 0's logits are
        read at one position: the last (official, a PAD position for a padded prompt) or, with
        ``stage0_reads_last_position=False``, each row's last valid one."""
        N, T = sp.mask_NT.shape
        h_NTC = self.run_blocks(sp, sp.cond_NTC + self.level_embedding(0, sp.cond_NTC.device),
                                sp.position_ids_NT, sp.mask_NT)
        logits_NTV = self.logits(h_NTC, sp.cond_NTC)
        if stage0_reads_last_position:
            read_N = torch.full((N,), T - 1, device=h_NTC.device)
        else:
            read_N = sp.mask_NT.long().sum(1) - 1
        return ContextOutput(logits_NTV, logits_NTV[torch.arange(N, device=h_NTC.device), read_N].unsqueeze(1))

    def forward_scale(self, sp: ScalePass, x_NlC: torch.Tensor,
                      positions_Nl2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One image stage: embedded tokens (N, l, C) at 2-D RoPE positions, attending to
        themselves and every earlier stage -> (raw last-block output h (N, l, C), logits (N, l, V))."""
        valid_Nl = torch.ones(x_NlC.shape[:2], dtype=torch.bool, device=x_NlC.device)
        h_NlC = self.run_blocks(sp, x_NlC, positions_Nl2, valid_Nl)
        return h_NlC, self.logits(h_NlC, sp.cond_NTC)

    # -- training ------------------------------------------------------------------------------

    def forward_teacher_forcing(
        self,
        context_BTD: torch.Tensor,
        context_mask_BT: torch.Tensor,
        context_position_ids_BT: torch.Tensor,
        x_BLC: torch.Tensor,
        *,
        attend_to_padding: bool = True,
        stage0_reads_last_position: bool = True,
    ) -> TeacherForcingOutput:
        """Training forward: every scale's logits in one pass, given the true earlier scales.

        ``x_BLC`` (B, L, Cvae), L = sum_{si >= 1} p_si^2, holds the inputs of stages 1..S-1
        built from the *ground-truth* codes (``quantizer.teacher_forcing_inputs``); no row
        is doubled for guidance (context dropout is the caller's job). The two switches are
        the network's official quirks (see :class:`hart_edu.generation.OfficialQuirks`).

        The training attention mask of VAR/HART is block-causal over stages: a query at
        level a sees a key at level b iff b <= a (the official ``attn_bias_for_masking``).
        We get exactly that mask by running the stages one after another through the
        *same* KV-cached pass as generation (:meth:`begin`, :meth:`forward_context`,
        :meth:`forward_scale`): stage si attends to itself and to the cached stages before
        it, and gradients flow through the cache. So the training graph is the inference
        graph with the sampled codes replaced by the true ones (tests check the logits are equal).

        Returns ``logits_BLV`` (B, 1 + L, V) in the order of ``cat(idx_Bl, dim=1)``: row 0
        predicts scale 0 (read at the same context position as inference), then every
        image token; and ``hidden_BLC`` (B, L, C), the raw last-block output of the image
        tokens (the diffusion head's condition is built from its last p_{S-1}^2 rows).
        """
        pns, T = self.config.patch_nums, self.config.context_token
        B, L = x_BLC.shape[0], self.config.sequence_length - T
        if context_BTD.shape != (B, T, self.config.context_dim) or x_BLC.shape != (B, L, self.vae_channels):
            raise ValueError(
                f"expected context (B, {T}, {self.config.context_dim}) and x (B, {L}, {self.vae_channels}), "
                f"got {tuple(context_BTD.shape)} and {tuple(x_BLC.shape)}"
            )
        sp = self.begin(context_BTD, context_mask_BT, context_position_ids_BT, attend_to_padding=attend_to_padding)
        logits, hidden = [self.forward_context(sp, stage0_reads_last_position).logits_N1V], []
        start = 0
        for si in range(1, len(pns)):
            l = pns[si] * pns[si]
            x_BlC = self.embed_scale(si, x_BLC[:, start:start + l])
            h_BlC, logits_BlV = self.forward_scale(sp, x_BlC, self.image_token_positions(si, sp.image_offset_N))
            hidden.append(h_BlC)
            logits.append(logits_BlV)
            start += l
        return TeacherForcingOutput(torch.cat(logits, dim=1), torch.cat(hidden, dim=1))
