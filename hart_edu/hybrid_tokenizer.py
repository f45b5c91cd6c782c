r"""HART's hybrid tokenizer: a convolutional VAE whose latent is split into discrete + continuous.

::

    image (B,3,H,W) in [-1,1]
      --encoder--> --quant_conv-->  f (B,Cvae,h,w),  h = H / 2^(len(ch_mult)-1)
      --multi-scale residual VQ (vq.py)-->  indices per scale  +  continuous residual r
      f_hat = sum of the scales' contributions  (+ r for the hybrid reconstruction)
      --post_quant_conv--> --decoder-->  image

The VAE is the Stable-Diffusion/VQGAN design used by VAR: per resolution level ``ch * ch_mult[i]``
channels, 2 residual blocks per level in the encoder and 3 in the decoder, single-head
self-attention only at the lowest resolution and in the middle, GroupNorm(32, eps 1e-6),
SiLU, stride-2 convolutions (zero-padded right/bottom) to go down, nearest 2x + conv to go up.

Loading follows the official ``tokenizer/`` folder: ``config.json`` (model_type
``hart_autoencoder_with_disc``) and ``pytorch_model.bin`` or ``model.safetensors`` with keys
``vae.*``; the discriminator's ``disc.*`` keys are training-only and ignored with a notice.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from hart_edu.checkpoint import (
    check_state_dict,
    config_from_dict,
    config_to_dict,
    find_weight_file,
    load_weight_file,
    read_config,
)
from hart_edu.vq import MultiScaleCodes, MultiScaleResidualQuantizer

logger = logging.getLogger(__name__)

__all__ = ["TokenizerConfig", "HybridTokenizer", "TokenizerEncoding", "MODEL_TYPE"]

MODEL_TYPE = "hart_autoencoder_with_disc"
ARCHITECTURE = "HARTAutoEncoderWithDisc"


@dataclass(frozen=True)
class TokenizerConfig:
    """Every option of the official ``HARTAutoEncoderConfig``, with its class defaults."""

    vocab_size: int = 4096
    z_channels: int = 32  #: Cvae, channels of the latent and of each code
    ch: int = 160
    dropout: float = 0.0
    beta: float = 0.25  #: commitment weight
    using_znorm: bool = False  #: cosine instead of L2 nearest code
    quant_conv_ks: int = 3
    quant_resi: float = 0.5  #: Phi blend ratio
    share_quant_resi: int = 4  #: number of shared Phi convolutions (0: one per scale, 1: one)
    default_qresi_counts: int = 0
    v_patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    test_mode: bool = False
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    levels: tuple[int, ...] = (8, 8, 8, 6, 5)  #: FSQ levels; unused by the VAR quantizers
    quantizer_type: str = "var"  #: "var" (Phi on every scale) or "var_hybrid" (HART)
    hybrid: bool = False
    disable_quant_resi: bool = False  #: read by no official code path
    freeze_codebook_for_hybrid: bool = True  #: training only
    double_decoder: bool = False

    def __post_init__(self):
        if self.quantizer_type not in ("var", "var_hybrid"):
            raise ValueError(f"quantizer_type {self.quantizer_type!r} is not supported "
                             "(hart_edu implements 'var' and 'var_hybrid')")
        if self.double_decoder:
            raise ValueError("double_decoder=True is not supported: official inference never "
                             "uses the second decoder")
        if self.ch % 32:
            raise ValueError(f"ch={self.ch} must be a multiple of 32 (GroupNorm with 32 groups)")
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            raise ValueError(f"ch_mult must be positive ints, got {self.ch_mult}")
        if list(self.v_patch_nums) != sorted(set(self.v_patch_nums)):
            raise ValueError(f"v_patch_nums must be strictly increasing, got {self.v_patch_nums}")

    @property
    def is_hybrid(self) -> bool:
        return self.quantizer_type == "var_hybrid"

    @property
    def downsample(self) -> int:
        """Image pixels per latent position along each side."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def image_size(self) -> int:
        """The image size whose latent is the last (largest) scale."""
        return self.v_patch_nums[-1] * self.downsample


# ----------------------------------------------------------------------------------------------
# VAE building blocks (key names follow the official checkpoint)
# ----------------------------------------------------------------------------------------------


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """x + conv(SiLU(GN(conv(SiLU(GN(x)))))), with a 1x1 shortcut when channels change."""

    def __init__(self, c_in: int, c_out: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _group_norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = _group_norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        # SiLU in place on the fresh norm outputs and the shortcut added into conv2's output:
        # the same numbers with fewer full-size tensors alive at once (at the 1024px decoder's
        # top level one tensor is 160 x 1024 x 1024 x 4 bytes = 0.63 GiB). Autograd allows both:
        # GroupNorm's backward reads its input, a convolution's its input and weight.
        h_BChw = self.conv1(F.silu(self.norm1(x_BChw), inplace=True))
        h_BChw = F.silu(self.norm2(h_BChw), inplace=True)  # rebinding frees conv1's output (inference)
        h_BChw = self.conv2(self.dropout(h_BChw))
        shortcut_BChw = self.nin_shortcut(x_BChw)
        if h_BChw.dtype != shortcut_BChw.dtype:  # e.g. a float32 input under bf16 autocast: + promotes
            return shortcut_BChw + h_BChw
        return h_BChw.add_(shortcut_BChw)


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions: x + proj(softmax(q k^T / sqrt(C)) v)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        B, C, h, w = x_BChw.shape
        qkv_B3CL = self.qkv(self.norm(x_BChw)).view(B, 3, C, h * w)
        q_B1LC, k_B1LC, v_B1LC = (t.transpose(1, 2).unsqueeze(1) for t in qkv_B3CL.unbind(1))
        out_B1LC = F.scaled_dot_product_attention(q_B1LC, k_B1LC, v_B1LC)  # scale C^-1/2
        return x_BChw + self.proj_out(out_B1LC.squeeze(1).transpose(1, 2).reshape(B, C, h, w))


class Downsample2x(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x_BChw, (0, 1, 0, 1)))  # pad right and bottom only


class Upsample2x(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x_BChw, scale_factor=2, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: residual blocks, attention after each (lowest level only), resample."""

    def __init__(self, blocks: list[ResnetBlock], attn: bool, resample: nn.Module | None, name: str):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList([AttnBlock(b.conv2.out_channels) for b in blocks] if attn else [])
        if resample is not None:
            setattr(self, name, resample)
        self._resample_name = name if resample is not None else None

    def forward(self, h_BChw: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h_BChw = block(h_BChw)
            if len(self.attn):
                h_BChw = self.attn[i](h_BChw)
        if self._resample_name is not None:
            h_BChw = getattr(self, self._resample_name)(h_BChw)
        return h_BChw


class _Middle(nn.Module):
    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h_BChw: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h_BChw)))


class Encoder(nn.Module):
    """Image (B,3,H,W) -> latent (B,Cvae,H/d,W/d) with d = 2^(levels-1)."""

    def __init__(self, ch: int, ch_mult: tuple[int, ...], z_channels: int, dropout: float,
                 blocks_per_level: int = 2):
        super().__init__()
        n = len(ch_mult)
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        levels, c_in = [], ch
        for i, mult in enumerate(ch_mult):
            c_out = ch * mult
            blocks = [ResnetBlock(c_in if j == 0 else c_out, c_out, dropout) for j in range(blocks_per_level)]
            last = i == n - 1
            levels.append(_Level(blocks, attn=last, resample=None if last else Downsample2x(c_out),
                                 name="downsample"))
            c_in = c_out
        self.down = nn.ModuleList(levels)
        self.mid = _Middle(c_in, dropout)
        self.norm_out = _group_norm(c_in)
        self.conv_out = nn.Conv2d(c_in, z_channels, 3, padding=1)

    def forward(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        h_BChw = self.conv_in(x_B3HW)
        for level in self.down:
            h_BChw = level(h_BChw)
        return self.conv_out(F.silu(self.norm_out(self.mid(h_BChw))))


class Decoder(nn.Module):
    """Latent (B,Cvae,h,w) -> image (B,3,h*d,w*d); levels run from the lowest resolution up."""

    def __init__(self, ch: int, ch_mult: tuple[int, ...], z_channels: int, dropout: float,
                 blocks_per_level: int = 3):
        super().__init__()
        n = len(ch_mult)
        c_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, c_in, 3, padding=1)
        self.mid = _Middle(c_in, dropout)
        levels: list[_Level] = [None] * n  # type: ignore[list-item]
        for i in reversed(range(n)):  # official key order: up.0 is the highest resolution
            c_out = ch * ch_mult[i]
            blocks = [ResnetBlock(c_in if j == 0 else c_out, c_out, dropout) for j in range(blocks_per_level)]
            levels[i] = _Level(blocks, attn=i == n - 1, resample=Upsample2x(c_out) if i else None,
                               name="upsample")
            c_in = c_out
        self.up = nn.ModuleList(levels)
        self.norm_out = _group_norm(c_in)
        self.conv_out = nn.Conv2d(c_in, 3, 3, padding=1)

    def forward(self, z_BChw: torch.Tensor) -> torch.Tensor:
        h_BChw = self.mid(self.conv_in(z_BChw))
        for level in reversed(self.up):
            h_BChw = level(h_BChw)
        return self.conv_out(F.silu(self.norm_out(h_BChw), inplace=True))


# ----------------------------------------------------------------------------------------------
# The tokenizer
# ----------------------------------------------------------------------------------------------


class TokenizerEncoding(NamedTuple):
    """An image batch as HART sees it."""

    idx_Bl: list[torch.Tensor]  #: discrete indices per scale, (B, p*p) each
    fhat_discrete_BChw: torch.Tensor  #: latent rebuilt from the indices alone
    residual_BChw: torch.Tensor  #: continuous residual f - fhat_discrete (what diffusion learns)
    f_BChw: torch.Tensor  #: the unquantized latent quant_conv(encoder(img))

    @property
    def fhat_full_BChw(self) -> torch.Tensor:
        """Discrete + continuous: the hybrid latent (equals f up to float rounding)."""
        return self.fhat_discrete_BChw + self.residual_BChw


def _official_key(key: str) -> str:
    """Our state-dict key -> the official checkpoint's (``vae.`` prefix, ``quantize`` module)."""
    if key.startswith("quantizer."):
        key = "quantize." + key[len("quantizer."):]
    return "vae." + key


class HybridTokenizer(nn.Module):
    """VAE + multi-scale (hybrid) quantizer, loadable from an official ``tokenizer/`` folder."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config.ch, config.ch_mult, config.z_channels, config.dropout)
        self.decoder = Decoder(config.ch, config.ch_mult, config.z_channels, config.dropout)
        ks = config.quant_conv_ks
        self.quant_conv = nn.Conv2d(config.z_channels, config.z_channels, ks, padding=ks // 2)
        self.post_quant_conv = nn.Conv2d(config.z_channels, config.z_channels, ks, padding=ks // 2)
        self.quantizer = MultiScaleResidualQuantizer(
            config.vocab_size, config.z_channels, config.v_patch_nums,
            hybrid=config.is_hybrid, quant_resi=config.quant_resi,
            share_quant_resi=config.share_quant_resi, default_qresi_counts=config.default_qresi_counts,
            beta=config.beta, using_znorm=config.using_znorm,
        )

    # -- loading and saving ---------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "HybridTokenizer":
        """Load an official-layout ``tokenizer/`` folder (strict; the training-only ``disc.*``
        keys are ignored, which the ``hart_edu.hybrid_tokenizer`` logger reports at INFO)."""
        folder = Path(folder)
        config = config_from_dict(TokenizerConfig, read_config(folder, MODEL_TYPE),
                                  source=str(folder / "config.json"))
        path = find_weight_file(folder)
        state = load_weight_file(path)
        disc = [k for k in state if k.startswith("disc.")]
        if disc:
            logger.info("ignoring %d training-only discriminator keys (disc.*) in %s", len(disc), path.name)
        model = cls(config)
        expected = {_official_key(k): v.shape for k, v in model.state_dict().items()}
        vae_state = {k: v for k, v in state.items() if not k.startswith("disc.")}
        check_state_dict(expected, vae_state, source=str(path))
        ours = {k: vae_state[_official_key(k)] for k in model.state_dict()}
        model.load_state_dict(ours, strict=True)
        return model.eval()

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """Our state dict under the official key names (``vae.*``, ``vae.quantize.*``)."""
        return {_official_key(k): v for k, v in self.state_dict().items()}

    def save_pretrained(self, folder: str | Path) -> None:
        """Write config.json + model.safetensors in the official layout (keys ``vae.*``)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.official_state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))
        config = config_to_dict(self.config, MODEL_TYPE, ARCHITECTURE)
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    # -- the public calls -----------------------------------------------------------------

    def _check_image(self, img_B3HW: torch.Tensor) -> None:
        size, d = self.config.image_size, self.config.downsample
        if img_B3HW.dim() != 4 or img_B3HW.shape[1] != 3:
            raise ValueError(f"expected an image batch (B, 3, H, W), got {tuple(img_B3HW.shape)}")
        H, W = img_B3HW.shape[-2:]
        if H % d or W % d:
            raise ValueError(f"image size {H}x{W} is not divisible by the downsampling factor {d}")
        if (H, W) != (size, size):
            raise ValueError(f"this tokenizer's scales {self.config.v_patch_nums} end at "
                             f"{self.config.v_patch_nums[-1]}x{self.config.v_patch_nums[-1]}, so it "
                             f"takes {size}x{size} images, got {H}x{W}")

    def encode_latent(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """``f = quant_conv(encoder(img))`` for images in [-1, 1]."""
        self._check_image(img_B3HW)
        return self.quant_conv(self.encoder(img_B3HW))

    @torch.no_grad()
    def encode(self, img_B3HW: torch.Tensor) -> TokenizerEncoding:
        """Images in [-1, 1] -> per-scale indices + continuous residual."""
        f_BChw = self.encode_latent(img_B3HW)
        codes: MultiScaleCodes = self.quantizer.encode(f_BChw)
        return TokenizerEncoding(codes.idx_Bl, codes.fhat_discrete_BChw, codes.residual_BChw, f_BChw)

    def indices_to_fhat(self, idx_Bl: list[torch.Tensor]) -> torch.Tensor:
        """Discrete latent from indices, composed as HART inference does (no Phi at the last scale)."""
        return self.quantizer.indices_to_fhat(idx_Bl)

    def decode(self, fhat_BChw: torch.Tensor) -> torch.Tensor:
        """Latent -> image in [-1, 1] (``decoder(post_quant_conv(f_hat)).clamp(-1, 1)``)."""
        c = self.config.z_channels
        if fhat_BChw.dim() != 4 or fhat_BChw.shape[1] != c:
            raise ValueError(f"expected a latent (B, {c}, h, w), got {tuple(fhat_BChw.shape)}")
        return self.decoder(self.post_quant_conv(fhat_BChw)).clamp(-1, 1)

    @torch.no_grad()
    def reconstruct(self, img_B3HW: torch.Tensor, residual: bool = True) -> torch.Tensor:
        """Encode and decode: discrete-only (``residual=False``) or hybrid (``residual=True``)."""
        enc = self.encode(img_B3HW)
        return self.decode(enc.fhat_full_BChw if residual else enc.fhat_discrete_BChw)
