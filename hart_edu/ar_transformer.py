r"""HART's autoregressive transformer (official ``HARTForT2I``) and its scale-by-scale inference.

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
(no causal mask is needed at inference: each stage is one forward call).

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

Classifier-free guidance
------------------------

The batch is doubled: rows ``[0, B)`` are conditional, rows ``[B, 2B)`` unconditional, with an
all-zero context, position ids 0 and a mask with only position 0 set. The sampled logits are::

    logits = (1 + t) * logits_cond - t * logits_uncond,   t = cfg * si / (S - 1)

so guidance grows from 0 at stage 0 to ``cfg * (S-2)/(S-1)`` at the second-to-last stage;
the official code computes the ratio inside the loop over all but the last stage and then
*reuses the stale value* at the last stage and in the residual diffusion.

The last stage (MaskGIT fill, hybrid residual)
----------------------------------------------

The last scale is filled in ``num_maskgit_iters`` rounds (official MaskGIT loop; with one
round it is a plain fill of all positions). Every round feeds the *same* input tokens (those
derived from stage S-2); rounds differ only in which positions they predict, and the KV
cache keeps the positions of earlier rounds visible. With ``final_stage=0`` each predicted
token also gets a continuous residual from the diffusion head (:mod:`hart_edu.residual_diffusion`),
conditioned per token on::

    z = decoder_norm( h_last + word_embed(embedding[idx_last]) )

where ``h_last`` is the raw output of the last block (before ``head_nm``).

Official behaviours kept on purpose
-----------------------------------

Default settings reproduce the official images; each quirk is a field of
:class:`OfficialQuirks` that a learner can switch off. Others are structural and only
documented here:

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
(``rope``), the SwiGLU gate (``swiglu``) and the sampling step (``cfg_sample``: guidance,
top-k / top-p and ``torch.multinomial``'s own draw from the generator). Which one runs is
chosen with ``hart_edu.kernels.backend.use_backend`` (the reference by default).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

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
from hart_edu.kernels.cfg_sample import cfg_sample, multinomial_noise
from hart_edu.kernels.rmsnorm_modulate import rms_norm, rmsnorm_modulate
from hart_edu.kernels.rope import rope
from hart_edu.kernels.swiglu import swiglu
from hart_edu.residual_diffusion import ResidualDiffusion, TimestepEmbedder

__all__ = [
    "MODEL_TYPE",
    "TransformerConfig",
    "OfficialQuirks",
    "SamplingSettings",
    "GenerationResult",
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
    """

    cfg: float = 1.5
    top_k: int = 0
    top_p: float = 0.0
    greedy: bool = False
    more_smooth: bool = False
    num_maskgit_iters: int = 1
    final_stage: int = 0  # 0: hybrid (discrete + diffusion residual); 1: discrete only
    diffusion_temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.final_stage not in (0, 1):
            raise ValueError(f"final_stage={self.final_stage}: 0 (with residual diffusion) or 1 (discrete only)")
        if self.num_maskgit_iters < 1:
            raise ValueError(f"num_maskgit_iters={self.num_maskgit_iters} must be >= 1")
        if self.top_k < 0 or not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 and top_p={self.top_p} in [0, 1]")


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


@dataclass
class KVCache:
    """Keys and values of every token seen so far in one block, (N, H, L_seen, d_head).

    ``valid_NK`` marks which cached keys may be attended to (only used when padding is
    masked, see :class:`OfficialQuirks`).

    Two ways to grow, the same numbers:

    * ``capacity=0`` (training): every stage concatenates, so gradients flow through the
      cache into earlier stages.
    * ``capacity=K`` (generation, which knows its total length up front): the first stage
      allocates (N, H, K, d) buffers and every stage writes its keys and values into the next
      slice; the cache is a view of the filled part. Concatenating would copy the whole cache
      at every stage and free the shorter copy, and at 1024px (1.8 GiB of cache in bf16) those
      freed copies stay behind as holes in the C heap: measured on a 2-core CPU, the process
      peaked at 6.75 GiB with concatenation and 5.98 GiB with the buffer (docs/cpu/README.md).
    """

    k_NHKd: torch.Tensor | None = None
    v_NHKd: torch.Tensor | None = None
    valid_NK: torch.Tensor | None = None
    capacity: int = 0
    _buffers: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = field(default=None, init=False, repr=False)

    @property
    def length(self) -> int:
        return 0 if self.k_NHKd is None else self.k_NHKd.shape[2]

    def extend(self, k_NHLd: torch.Tensor, v_NHLd: torch.Tensor, valid_NL: torch.Tensor) -> None:
        if not self.capacity:
            if self.k_NHKd is None:
                self.k_NHKd, self.v_NHKd, self.valid_NK = k_NHLd, v_NHLd, valid_NL
            else:
                self.k_NHKd = torch.cat((self.k_NHKd, k_NHLd), dim=2)
                self.v_NHKd = torch.cat((self.v_NHKd, v_NHLd), dim=2)
                self.valid_NK = torch.cat((self.valid_NK, valid_NL), dim=1)
            return
        start, L = self.length, k_NHLd.shape[2]
        if start + L > self.capacity:
            raise ValueError(f"KV cache of capacity {self.capacity} cannot take {L} more keys after {start}")
        if self._buffers is None:
            N, H, _, d = k_NHLd.shape
            self._buffers = (k_NHLd.new_empty(N, H, self.capacity, d), v_NHLd.new_empty(N, H, self.capacity, d),
                             valid_NL.new_empty(N, self.capacity))
        k_buf, v_buf, valid_buf = self._buffers
        if (k_NHLd.dtype, v_NHLd.dtype) != (k_buf.dtype, v_buf.dtype):  # torch.cat would promote; a buffer cannot
            raise ValueError(f"KV cache holds {k_buf.dtype}/{v_buf.dtype}, got {k_NHLd.dtype}/{v_NHLd.dtype}")
        k_buf[:, :, start:start + L] = k_NHLd
        v_buf[:, :, start:start + L] = v_NHLd
        valid_buf[:, start:start + L] = valid_NL
        self.k_NHKd, self.v_NHKd = k_buf[:, :, :start + L], v_buf[:, :, :start + L]
        self.valid_NK = valid_buf[:, :start + L]


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
        out_NHLd = F.scaled_dot_product_attention(
            q_NHLd, cache.k_NHKd, cache.v_NHKd, attn_mask=bias, scale=self.scale
        )
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
# Sampling
# --------------------------------------------------------------------------------------


def official_top_k(si: int) -> int:
    """The top-k the official inference hard-codes: 600 for stages 0..6, 300 after."""
    return 600 if si < 7 else 300


def gumbel_softmax(logits: torch.Tensor, tau: float, generator: torch.Generator) -> torch.Tensor:
    """softmax((logits + g) / tau), g = -log(Exp(1)) drawn from ``generator`` (soft, not hard)."""
    gumbels = -torch.empty_like(logits).exponential_(generator=generator).log()
    return ((logits + gumbels) / tau).softmax(dim=-1)


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


@dataclass
class GenerationResult:
    """What :meth:`HARTTransformer.generate` returns.

    ``indices[si]`` (B, p_si^2) per stage; ``f_hat_BChw`` the final latent;
    ``image_B3HW`` in [0, 1] (official output). ``diffusion_z`` (2B*l, C) and
    ``diffusion_out`` (2B*l, Cvae) when the residual diffusion ran. With ``capture=True``:
    ``context_normed`` (2B, T, Dctx), ``cond_BD`` (2B, T, C), ``raw_logits[si]`` (2B, l, V, before
    guidance), ``cfg_logits[si]`` (B, l, V, handed to the sampler), ``block_outputs[si][i]``
    (2B, l, C) and ``cfg_ratio[si]`` (the guidance t of each stage).
    """

    indices: list[torch.Tensor]
    f_hat_BChw: torch.Tensor
    image_B3HW: torch.Tensor
    diffusion_z: torch.Tensor | None = None
    diffusion_out: torch.Tensor | None = None
    diffusion_noises: tuple[torch.Tensor, ...] | None = None
    context_normed: torch.Tensor | None = None
    cond_BD: torch.Tensor | None = None
    raw_logits: list[torch.Tensor] = field(default_factory=list)
    cfg_logits: list[torch.Tensor] = field(default_factory=list)
    block_outputs: list[list[torch.Tensor]] = field(default_factory=list)
    cfg_ratio: list[float] = field(default_factory=list)


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


    # -- training ------------------------------------------------------------------------------

    def forward_teacher_forcing(
        self,
        context_BTD: torch.Tensor,
        context_mask_BT: torch.Tensor,
        context_position_ids_BT: torch.Tensor,
        x_BLC: torch.Tensor,
        quirks: OfficialQuirks = OFFICIAL,
    ) -> "TeacherForcingOutput":
        """Training forward: every scale's logits in one pass, given the true earlier scales.

        ``x_BLC`` (B, L, Cvae), L = sum_{si >= 1} p_si^2, holds the inputs of stages 1..S-1
        built from the *ground-truth* codes (``quantizer.teacher_forcing_inputs``); no row
        is doubled for guidance (context dropout is the caller's job).

        The training attention mask of VAR/HART is block-causal over stages: a query at
        level a sees a key at level b iff b <= a (the official ``attn_bias_for_masking``).
        We get exactly that mask by running the stages one after another through the
        *same* KV-cached blocks as :meth:`generate`: stage si attends to itself and to the
        cached stages before it, and gradients flow through the cache. So the training
        graph is the inference graph with the sampled codes replaced by the true ones
        (tests check the logits are equal).

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
        mask_BT = context_mask_BT.bool()
        cond_BTC = self.context_embed(self.context_norm(context_BTD))
        mods = [blk.modulation(cond_BTC, mask_BT) for blk in self.blocks]
        caches = [KVCache() for _ in self.blocks]
        mask_padding = not quirks.attend_to_padding

        def run_blocks(x_BlC: torch.Tensor, positions: torch.Tensor, valid_Bl: torch.Tensor) -> torch.Tensor:
            for blk, mod, cache in zip(self.blocks, mods, caches):
                x_BlC = blk(x_BlC, mod, positions, cache, valid_Bl, mask_padding)
            return x_BlC

        # stage 0: the context tokens; scale 0 is read at one context position
        h_BTC = run_blocks(cond_BTC + self.level_embedding(0, cond_BTC.device), context_position_ids_BT, mask_BT)
        logits_BTV = self.logits(h_BTC, cond_BTC)
        rows_B = torch.arange(B, device=h_BTC.device)
        read_B = torch.full((B,), T - 1, device=h_BTC.device) if quirks.stage0_reads_last_position \
            else mask_BT.long().sum(1) - 1
        logits, hidden = [logits_BTV[rows_B, read_B].unsqueeze(1)], []

        # stages 1..S-1: word_embed(input) + lvl(si), 2-D RoPE, attending to all earlier stages
        offset_B, start = context_position_ids_BT[:, -1], 0
        for si in range(1, len(pns)):
            l = pns[si] * pns[si]
            x_BlC = self.word_embed(x_BLC[:, start:start + l]) + self.level_embedding(si, x_BLC.device)
            h_BlC = run_blocks(x_BlC, self.image_token_positions(si, offset_B),
                               torch.ones(B, l, dtype=torch.bool, device=x_BLC.device))
            hidden.append(h_BlC)
            logits.append(self.logits(h_BlC, cond_BTC))
            start += l
        return TeacherForcingOutput(torch.cat(logits, dim=1), torch.cat(hidden, dim=1))

    # -- inference -----------------------------------------------------------------------------

    def cfg_ratio(self, si: int, quirks: OfficialQuirks = OFFICIAL) -> float:
        """The guidance ratio r (t = cfg * r) used at stage ``si`` (see :class:`OfficialQuirks`)."""
        last = self.config.num_stages - 1
        if quirks.stale_last_stage_cfg and si == last:
            si = last - 1  # the value left over from the loop over the earlier stages
        return si / last if quirks.cfg_ramp else 1.0

    @torch.no_grad()
    def generate(
        self,
        tokenizer: Any,
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
    ) -> GenerationResult:
        """Generate B images from text-encoder outputs (official ``autoregressive_infer_cfg``).

        ``tokenizer``: a :class:`hart_edu.hybrid_tokenizer.HybridTokenizer` (code embeddings,
        f_hat composition, decoder). ``context_*``: (B, T, Dctx) float, (B, T) bool mask,
        (B, T) int position ids. ``generator`` drives every random draw (sampling, Gumbel,
        MaskGIT order, diffusion noise); ``diffusion_noises`` replays recorded diffusion draws
        (see :meth:`hart_edu.residual_diffusion.ResidualDiffusion.sample`; one MaskGIT round
        only). With several rounds the result's ``diffusion_*`` fields hold the last round's.
        ``on_stage_end(si)`` is called after each stage's codes are chosen (a progress hook).

        ``given_indices``: the codes of the first k < S scales, (B, p_si^2) int64 each, taken
        instead of sampled (no draw for them); the later scales are generated on top. An
        image completed from a given coarse layout, and a diagnostic: which scale loses what
        the prompt asked for (``python -m hart_edu.eval --given-scales``).
        """
        on_stage_end = on_stage_end or (lambda si: None)
        run = _Run(self, tokenizer, settings, quirks, generator, diffusion_noises, capture)
        run.check_inputs(context_BTD, context_mask_BT, context_position_ids_BT)
        run.given = run.check_given(given_indices, context_BTD.shape[0])
        pns, S, Cvae = self.config.patch_nums, self.config.num_stages, self.vae_channels
        B = context_BTD.shape[0]

        # Stage 0: the context tokens; scale 0's single code comes from one context position.
        offset_N = run.start(context_BTD, context_mask_BT, context_position_ids_BT)
        h_BlC = run.stage0()
        on_stage_end(0)

        f_hat_BChw = context_BTD.new_zeros(B, Cvae, pns[-1], pns[-1])
        for si in range(1, S):
            # f_hat += Phi(upsample(h_{si-1})); this stage's input = f_hat area-downsampled to p_si
            prev = pns[si - 1]
            h_BChw = h_BlC.transpose(1, 2).reshape(B, Cvae, prev, prev)
            f_hat_BChw, next_BChw = run.quantizer.next_autoregressive_input(si - 1, f_hat_BChw, h_BChw)
            x_BlC = self.word_embed(next_BChw.flatten(2).transpose(1, 2)) + self.level_embedding(si, next_BChw.device)
            positions_Nl2 = self.image_token_positions(si, offset_N)
            if si < S - 1:
                h_BlC = run.image_stage(si, x_BlC.repeat(2, 1, 1), positions_Nl2)
            else:
                h_BlC = run.last_stage(x_BlC.repeat(2, 1, 1), positions_Nl2)
            on_stage_end(si)

        # The last scale is added without Phi (hybrid tokenizer), then decoded.
        h_BChw = h_BlC.transpose(1, 2).reshape(B, Cvae, pns[-1], pns[-1])
        f_hat_BChw, _ = run.quantizer.next_autoregressive_input(S - 1, f_hat_BChw, h_BChw)
        run.result.f_hat_BChw = f_hat_BChw
        run.caches.clear()  # the KV cache (1.8 GiB at 1024px in bf16) is not needed to decode
        run.result.image_B3HW = (tokenizer.decode(f_hat_BChw) + 1) * 0.5  # [-1, 1] -> [0, 1]
        return run.result


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


class _Run:
    """State of one :meth:`HARTTransformer.generate` call: the doubled batch, its condition,
    the per-block adaLN parameters and KV caches, and what is being collected.

    Rows ``[0, B)`` are conditional, rows ``[B, 2B)`` unconditional (N = 2B).
    """

    def __init__(self, model: HARTTransformer, tokenizer: Any, settings: SamplingSettings,
                 quirks: OfficialQuirks, generator: torch.Generator | None,
                 diffusion_noises: Sequence[torch.Tensor] | None, capture: bool):
        self.model, self.config = model, model.config
        self.tokenizer, self.quantizer = tokenizer, tokenizer.quantizer
        self.settings, self.quirks, self.generator = settings, quirks, generator
        self.diffusion_noises, self.capture = diffusion_noises, capture
        self.result = GenerationResult(indices=[], f_hat_BChw=None, image_B3HW=None)  # type: ignore[arg-type]
        self.given: list[torch.Tensor] = []  # codes of the first scales, taken instead of sampled
        if tuple(tokenizer.config.v_patch_nums) != tuple(self.config.patch_nums):
            raise ValueError(
                f"tokenizer scales {tuple(tokenizer.config.v_patch_nums)} != transformer patch_nums "
                f"{tuple(self.config.patch_nums)}"
            )
        if tokenizer.config.z_channels != model.vae_channels or tokenizer.config.vocab_size != model.vocab_size:
            raise ValueError("tokenizer (vocab_size, z_channels) do not match the transformer's")

    def check_inputs(self, context_BTD: torch.Tensor, mask_BT: torch.Tensor, pos_BT: torch.Tensor) -> None:
        T, D = self.config.context_token, self.config.context_dim
        if context_BTD.dim() != 3 or context_BTD.shape[1:] != (T, D):
            raise ValueError(f"context must be (B, {T}, {D}), got {tuple(context_BTD.shape)}")
        B = context_BTD.shape[0]
        if mask_BT.shape != (B, T) or pos_BT.shape != (B, T):
            raise ValueError(
                f"context_mask {tuple(mask_BT.shape)} and context_position_ids {tuple(pos_BT.shape)} "
                f"must both be (B, T) = {(B, T)}"
            )

    def check_given(self, given_indices: Sequence[torch.Tensor], B: int) -> list[torch.Tensor]:
        if given_indices and self.capture:
            raise ValueError("capture=True records every scale's sampling: use it without given_indices")
        return check_given_indices(given_indices, self.config.patch_nums, B, self.model.vocab_size)

    # -- stage 0 -----------------------------------------------------------------------------

    def start(self, context_BTD: torch.Tensor, mask_BT: torch.Tensor, pos_BT: torch.Tensor) -> torch.Tensor:
        """Build the doubled batch and its condition; return the image-position offsets (N,).

        Unconditional rows: zero context, position ids 0, a mask with only position 0 set.
        """
        self.B = B = context_BTD.shape[0]
        self.ctx_NTD = torch.cat((context_BTD, torch.zeros_like(context_BTD)))
        self.pos_ids_NT = torch.cat((pos_BT, torch.zeros_like(pos_BT)))
        self.mask_NT = torch.cat((mask_BT.bool(), torch.zeros_like(mask_BT, dtype=torch.bool)))
        self.mask_NT[B:, 0] = True

        ctx_normed_NTD = self.model.context_norm(self.ctx_NTD)
        self.cond_NTC = self.model.context_embed(ctx_normed_NTD)  # the condition c and the stage-0 tokens
        self.mods = [blk.modulation(self.cond_NTC, self.mask_NT) for blk in self.model.blocks]
        total = self.mask_NT.shape[1] + sum(p * p for p in self.config.patch_nums[1:])  # every token
        self.caches = [KVCache(capacity=total) for _ in self.model.blocks]
        if self.capture:
            self.result.context_normed, self.result.cond_BD = ctx_normed_NTD, self.cond_NTC
        return self.pos_ids_NT[:, -1]  # image positions are offset by the last context position id

    def stage0(self) -> torch.Tensor:
        """Run the context tokens; pick scale 0's code; return its embedding (B, 1, Cvae)."""
        N, T = self.mask_NT.shape
        x_NTC = self.cond_NTC + self.model.level_embedding(0, self.cond_NTC.device)
        x_NTC = self.blocks(x_NTC, self.pos_ids_NT, self.mask_NT)
        logits_NTV = self.model.logits(x_NTC, self.cond_NTC)
        if self.quirks.stage0_reads_last_position:
            read_N = torch.full((N,), T - 1, device=x_NTC.device)
        else:
            read_N = self.mask_NT.long().sum(1) - 1  # each row's last valid position
        logits_N1V = logits_NTV[torch.arange(N, device=x_NTC.device), read_N].unsqueeze(1)
        return self.predict(0, logits_NTV, logits_N1V).h_BlC

    # -- stages 1 .. S-2 ---------------------------------------------------------------------

    def image_stage(self, si: int, x_NlC: torch.Tensor, positions_Nl2: torch.Tensor) -> torch.Tensor:
        valid_Nl = torch.ones(x_NlC.shape[:2], dtype=torch.bool, device=x_NlC.device)
        x_NlC = self.blocks(x_NlC, positions_Nl2, valid_Nl)
        logits_NlV = self.model.logits(x_NlC, self.cond_NTC)
        return self.predict(si, logits_NlV, logits_NlV).h_BlC

    # -- the last stage ----------------------------------------------------------------------

    def last_stage(self, x_NlC: torch.Tensor, positions_Nl2: torch.Tensor) -> torch.Tensor:
        """MaskGIT fill of the last scale (+ residual diffusion); returns tokens (B, l, Cvae).

        With R rounds, round r predicts the still-masked positions except the
        ``max(1, min(#masked - 1, floor(l * cos(pi/2 * (r+1)/R))))`` first ones (in a random
        order) that stay masked for later rounds; the last round predicts all the rest.
        Every round feeds the *same* inputs ``x_NlC`` (official); the KV cache makes the
        positions of earlier rounds visible to later ones.
        """
        N, l, C = x_NlC.shape
        B, S, Cvae = self.B, self.config.num_stages, self.model.vae_channels
        rounds = self.settings.num_maskgit_iters
        masked_Bl = torch.ones(B, l, dtype=torch.bool, device=x_NlC.device)
        tokens_BlC = x_NlC.new_zeros(B, l, Cvae)
        idx_Bl = torch.full((B, l), -1, dtype=torch.int64, device=x_NlC.device)
        if rounds > 1 and self.diffusion_noises is not None and self.settings.final_stage == 0:
            raise ValueError("diffusion_noises replays one diffusion call: use it with num_maskgit_iters=1")
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
            valid_Nk = torch.ones(x_NkC.shape[:2], dtype=torch.bool, device=x_NlC.device)
            h_last_NkC = self.blocks(x_NkC, positions_Nk2, valid_Nk)  # raw last-block output: the diffusion's z
            logits_NkV = self.model.logits(h_last_NkC, self.cond_NTC)
            pick = self.predict(S - 1, logits_NkV, logits_NkV, record_indices=False)
            idx_Bl[predict_Bl] = pick.idx_Bl.reshape(-1)
            h_BkC = pick.h_BlC
            if self.settings.final_stage == 0:
                h_BkC = h_BkC + self.residual(h_last_NkC, pick.idx_Bl, self.settings.cfg * pick.ratio)
            tokens_BlC[predict_Bl] = h_BkC.reshape(-1, Cvae).to(tokens_BlC.dtype)
        self.result.indices.append(idx_Bl)
        return tokens_BlC

    def residual(self, h_last_NkC: torch.Tensor, idx_Bk: torch.Tensor, t: float) -> torch.Tensor:
        """Continuous residual tokens (B, k, Cvae) from the diffusion head.

        z = decoder_norm(h_last + word_embed(embedding[idx])) for all 2B rows (the
        unconditional rows reuse the conditional indices); guidance scale t (the stale one).
        """
        N, k, C = h_last_NkC.shape
        discrete_BkC = self.model.word_embed(self.quantizer.embedding(idx_Bk))
        z_MC = self.model.decoder_norm(h_last_NkC + discrete_BkC.repeat(2, 1, 1)).reshape(N * k, C)
        out = self.model.diffloss.sample(
            z_MC, cfg=t, temperature=self.settings.diffusion_temperature,
            generator=None if self.diffusion_noises is not None else self.generator,
            noises=self.diffusion_noises,
        )
        self.result.diffusion_z, self.result.diffusion_out = z_MC, out.tokens_NC
        self.result.diffusion_noises = out.noises
        return out.tokens_NC.view(N, k, -1)[: N // 2]  # the unconditional half is discarded

    # -- shared steps ------------------------------------------------------------------------

    def blocks(self, x_NLC: torch.Tensor, positions: torch.Tensor, valid_NL: torch.Tensor) -> torch.Tensor:
        """All blocks on this stage's tokens (appending their keys/values to the caches)."""
        mask_padding = not self.quirks.attend_to_padding
        outs = []
        for blk, mod, cache in zip(self.model.blocks, self.mods, self.caches):
            x_NLC = blk(x_NLC, mod, positions, cache, valid_NL, mask_padding)
            outs.append(x_NLC)
        if self.capture:
            self.result.block_outputs.append(outs)
        return x_NLC

    def predict(self, si: int, raw_logits_NLV: torch.Tensor, logits_NlV: torch.Tensor,
                record_indices: bool = True) -> "_Pick":
        """Guide, filter and sample one stage's codes.

        logits = (1 + t) cond - t uncond, t = cfg * r(si); then top-k / top-p and a draw (or
        argmax); h = embedding[idx] (or the Gumbel-softmax blend of all codes, more_smooth).
        A given scale (``given_indices``) takes its codes as they are, nothing drawn, and always
        the hard embedding h = embedding[idx], as in teacher forcing, also with more_smooth.
        """
        B, s, q = self.B, self.settings, self.quirks
        ratio = self.model.cfg_ratio(si, q)
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
        logits_BlV, filtered_BlV, idx_Bl = out.guided_BlV, out.filtered_BlV, out.idx_Bl
        if self.capture:
            self.result.raw_logits.append(raw_logits_NLV)
            self.result.cfg_logits.append(logits_BlV)
            self.result.cfg_ratio.append(t)
        if record_indices:
            self.result.indices.append(idx_Bl)
        if not s.more_smooth:
            return _Pick(idx_Bl, self.quantizer.embedding(idx_Bl), ratio)
        if self.generator is None:
            raise ValueError("more_smooth=True draws Gumbel noise: pass generator=")
        tau = max(0.27 * (1 - ratio * 0.95), 0.005)  # MaskGIT-style temperature (official)
        soft_BlV = gumbel_softmax(filtered_BlV * (1 + ratio), tau, self.generator)
        return _Pick(idx_Bl, soft_BlV @ self.quantizer.embedding.weight.unsqueeze(0), ratio)


class _Pick(NamedTuple):
    idx_Bl: torch.Tensor  # (B, l) code indices
    h_BlC: torch.Tensor  # (B, l, Cvae) what is added to f_hat
    ratio: float  # the guidance ratio r of this stage
