r"""Text to image with HART in one call: :class:`HARTPipeline` (the official ``sample.py`` path).

The three models and what flows between them, for B images (T = ``context_token`` text
positions, S scales ``p_0 < ... < p_{S-1}``)::

    prompts ──TextEncoder──> context_BTD, mask_BT, position_ids_BT         (text_encoder.py)
            ──generation.generate──>   idx_si (B, p_si^2) for every scale,
                                       latents f_discrete, r, f_hat (B, Cvae, p, p)   (generation.py)
            ──HybridTokenizer.decode──>   image_B3HW in [0, 1]             (hybrid_tokenizer.py)

Generation runs the transformer (:mod:`hart_edu.ar_transformer`) scale by scale with the
tokenizer's quantizer; the pipeline then decodes once. The latent handed to the decoder is the
discrete scales plus the continuous residual that the diffusion head predicts for the last
scale (p = p_{S-1}, the hybrid tokenizer adds the last scale without a Phi convolution)::

    f_hat = f_discrete + r,     f_discrete = sum_{si < S-1} Phi_si(up(e(idx_si))) + e(idx_{S-1})

(``f_hat`` adds r to the last scale's tokens before they join the sum, so it equals
``f_discrete + r`` up to float rounding). With ``more_smooth`` the discrete scales add
Gumbel-softmax blends of code embeddings instead of single codes, so ``f_discrete`` is then
not the composition of the indices alone (``HybridTokenizer.indices_to_fhat``).

The defaults are sample.py's: EMA weights, the official system prompt, a text length equal
to the config's ``context_token`` (sample.py's ``--max_token_length`` 300 is the released
model's context_token), ``cfg=4.5``, ``more_smooth=True``, seed 1, no top-k/top-p from the
caller (and the official top-k override, see :class:`~hart_edu.generation.OfficialQuirks`),
one MaskGIT round and the residual diffusion on. A weights tree may carry its own sampling
defaults in ``generation_config.json`` (:mod:`hart_edu.generation_config`):
:meth:`HARTPipeline.from_pretrained` reads them into :attr:`HARTPipeline.generation_config`,
and a call uses them for every sampling argument it leaves out (an explicit argument wins). A
tree without the file, like the released model's, keeps sample.py's values above.

Pixels are made as sample.py saves them: ``uint8(255 x)`` truncates (numpy ``astype``), it
does not round; the grid is torchvision's ``make_grid(nrow=12, padding=2)`` converted to
float16 *before* the multiplication by 255 (so a grid pixel can differ by one level from
the same pixel saved alone).

Differences from sample.py, on purpose:

* Randomness: the official code seeds its own generator for the code sampling, but the
  diffusion head draws from the global CUDA RNG, so the same seed gives different images.
  Here one ``torch.Generator`` drives every draw: the same seed gives bit-identical images.
* Precision: float32 by default (sample.py runs under float16 autocast on CUDA), so images
  are close to, not bit-equal with, a GPU run of sample.py; ``dtype=torch.bfloat16`` stores
  the weights in bf16 and runs under bf16 autocast (the released model on a CPU).
* Kernels: ``backend="triton"`` runs the fused kernels of :mod:`hart_edu.kernels` (same
  numbers within float32 rounding; the sampling step consumes the same generator draws).
* No ShieldGemma safety check and no random default prompts: prompts are used as given.

Low memory: the text encoder (Qwen2-VL-1.5B, 2.9 GiB in bf16: two thirds of the released
model's weights) is only needed to encode the prompts, not during the scales or the decoder.
``HARTPipeline(..., release_text_encoder=True)`` (also a ``from_pretrained`` argument) frees its
weights as soon as the first call has encoded its prompts, which lowers the peak memory of
that call by their size. The pipeline then serves that one call: any later call raises a
``RuntimeError`` saying the text encoder was released (nothing is reloaded behind your back;
build a new pipeline for more prompts, or pass all prompts in one call). Right after the release
the pipeline asks the C allocator to hand the freed memory back to the operating system
(:func:`hart_edu.memory.return_free_memory`), and once more after the scales, before the
decoder; ``hart-edu run-real`` also maps large blocks on their own
(:func:`hart_edu.memory.map_large_blocks`) so the 1024px scales do not leave their freed
temporaries in the heap.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hart_edu.ar_transformer import HARTTransformer
from hart_edu.generation_config import (
    MAX_CFG,
    GenerationConfig,
    check_cfg,
    check_top_k,
    check_top_p,
    read_generation_config,
)
from hart_edu.generation import (
    OFFICIAL,
    GenerationResult,
    OfficialQuirks,
    SamplingSettings,
    check_given_indices,
    generate,
)
from hart_edu.hybrid_tokenizer import HybridTokenizer
from hart_edu.images import to_output_range
from hart_edu.kernels import backend as kernel_backend
from hart_edu.memory import return_free_memory
from hart_edu.text_encoder import (
    HART_SYSTEM_PROMPT,
    TEXT_ENCODER_POINTER,
    TextEncoder,
    TextEncoding,
    check_prompts,
    read_text_encoder_pointer,
    stored_float_dtypes,
)


class _TreeDefault:
    """The type of :data:`TREE_DEFAULT`."""

    def __repr__(self) -> str:
        return "TREE_DEFAULT"


# "whatever the weights tree says" (for the system prompt: see HARTPipeline.from_pretrained)
TREE_DEFAULT = _TreeDefault()

__all__ = [
    "HARTPipeline",
    "HARTPipelineOutput",
    "SampleRequest",
    "check_sample_request",
    "check_seed",
    "check_dtype",
    "images_to_uint8",
    "image_grid",
    "grid_to_uint8",
    "uint8_to_pil",
    "MAX_CFG",
    "DEFAULT_SEED",
    "GRID_COLUMNS",
]

DEFAULT_SEED = 1  # sample.py's --seed default
GRID_COLUMNS = 12  # sample.py's make_grid(nrow=12)
GRID_PADDING = 2  # torchvision make_grid's default padding (black)


# --------------------------------------------------------------------------------------
# Checking what the caller asked for (shared with the command line, which checks before
# loading anything)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleRequest:
    """The validated, normalised arguments of one pipeline call."""

    prompts: list[str]
    cfg: float
    top_k: int  # 0 = off (SamplingSettings' convention)
    top_p: float  # 0.0 = off
    num_images_per_prompt: int


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def check_sample_request(
    prompts: str | Sequence[str],
    cfg: float,
    top_k: int | None,
    top_p: float | None,
    num_images_per_prompt: int,
) -> SampleRequest:
    """Raise a ValueError naming the bad argument, or return the normalised request.

    ``prompts``: one string or a non-empty sequence of strings. ``cfg`` finite, in
    [0, MAX_CFG]. ``top_k``: None or 0 (off) or a positive int. ``top_p``: None or 0 (off) or
    in (0, 1]. ``num_images_per_prompt`` >= 1. (The checks of cfg, top_k and top_p are
    :mod:`hart_edu.generation_config`'s, the same that a ``generation_config.json`` gets.)
    """
    prompts = check_prompts([prompts] if isinstance(prompts, str) else prompts)
    cfg, top_k, top_p = check_cfg(cfg), check_top_k(top_k), check_top_p(top_p)
    if not _is_int(num_images_per_prompt) or num_images_per_prompt < 1:
        raise ValueError(f"num_images_per_prompt={num_images_per_prompt!r} must be a positive integer")
    return SampleRequest(
        prompts=prompts, cfg=cfg, top_k=top_k, top_p=top_p, num_images_per_prompt=int(num_images_per_prompt)
    )


def check_seed(seed: int) -> int:
    """A seed for ``torch.Generator.manual_seed``: an integer in [0, 2**64)."""
    if not _is_int(seed) or not 0 <= seed < 2**64:
        raise ValueError(f"seed={seed!r} must be an integer in [0, 2**64)")
    return int(seed)


DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_dtype(dtype: torch.dtype) -> torch.dtype:
    """One of :data:`DTYPES` (a clear error for anything else)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported: use one of {', '.join(map(str, DTYPES))}")
    return dtype


def _generator_from(seed: int | None, generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    """The one source of randomness: ``generator``, or a fresh one seeded with ``seed``
    (sample.py's default seed when neither is given)."""
    if generator is not None and seed is not None:
        raise ValueError("pass seed= or generator=, not both")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator
    seed = check_seed(DEFAULT_SEED if seed is None else seed)
    return torch.Generator(device=device).manual_seed(seed)


# --------------------------------------------------------------------------------------
# Pixels, the way sample.py saves them
# --------------------------------------------------------------------------------------


def images_to_uint8(image_B3HW: torch.Tensor) -> torch.Tensor:
    """[0, 1] float images -> uint8 (B, 3, H, W): ``uint8(255 x)``, truncated like numpy's astype."""
    return (image_B3HW.detach().float().cpu().clamp(0, 1) * 255).to(torch.uint8)


def image_grid(image_B3HW: torch.Tensor, columns: int = GRID_COLUMNS, padding: int = GRID_PADDING) -> torch.Tensor:
    """torchvision's ``make_grid``: rows of ``min(columns, B)`` images, black ``padding`` around
    and between them -> (3, rows (H + pad) + pad, cols (W + pad) + pad)."""
    B, C, H, W = image_B3HW.shape
    cols = min(columns, B)
    rows = math.ceil(B / cols)
    grid_3HW = image_B3HW.new_zeros(C, rows * (H + padding) + padding, cols * (W + padding) + padding)
    for b in range(B):
        top, left = (b // cols) * (H + padding) + padding, (b % cols) * (W + padding) + padding
        grid_3HW[:, top : top + H, left : left + W] = image_B3HW[b]
    return grid_3HW


def grid_to_uint8(grid_3HW: torch.Tensor) -> torch.Tensor:
    """sample.py's grid conversion: float16 first, then ``uint8(255 x)`` (truncated)."""
    return (grid_3HW.detach().cpu().clamp(0, 1).to(torch.float16) * 255).to(torch.uint8)


def uint8_to_pil(pixels_3HW: torch.Tensor):
    """A uint8 (3, H, W) tensor as an RGB PIL image."""
    from PIL import Image

    return Image.fromarray(pixels_3HW.permute(1, 2, 0).contiguous().numpy(), mode="RGB")


# --------------------------------------------------------------------------------------
# The output
# --------------------------------------------------------------------------------------


@dataclass
class HARTPipelineOutput:
    """What one :class:`HARTPipeline` call returns (B = prompts x num_images_per_prompt images,
    in the order p0, p0, ..., p1, p1, ...).

    ``images``: PIL images (as sample.py saves them). ``prompts``: the prompt of each image.
    ``image_B3HW``: float images in [0, 1]. ``indices[si]``: (B, p_si^2) codes of scale si
    (row-major; see :meth:`index_maps`). ``f_hat_BChw``: the decoded latent;
    ``f_discrete_BChw``: its discrete part; ``residual_BChw``: the diffusion head's continuous
    residual at the last scale (None with ``residual=False``, where ``f_hat == f_discrete``).
    ``text``: the text encoding of the distinct prompts (one row per prompt).
    ``generation``: the transformer's full result. ``seed``: the seed used, when the pipeline
    made the generator.
    """

    images: list[Any]
    prompts: list[str]
    image_B3HW: torch.Tensor
    indices: list[torch.Tensor]
    f_hat_BChw: torch.Tensor
    f_discrete_BChw: torch.Tensor
    residual_BChw: torch.Tensor | None
    text: TextEncoding
    generation: GenerationResult
    seed: int | None

    def index_maps(self) -> list[torch.Tensor]:
        """The codes of every scale as (B, p_si, p_si) maps."""
        return [idx_Bl.view(idx_Bl.shape[0], math.isqrt(idx_Bl.shape[1]), -1) for idx_Bl in self.indices]


# --------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------


class HARTPipeline:
    """Text encoder + HART transformer + hybrid tokenizer, in the spirit of diffusers.

    >>> pipe = HARTPipeline.from_pretrained("hart-0.7b-1024px",                # doctest: +SKIP
    ...                                     text_encoder="Qwen2-VL-1.5B-Instruct")
    >>> out = pipe(["A cat sleeping"], seed=1)                                # doctest: +SKIP
    >>> out.images[0].save("cat.png")                                         # doctest: +SKIP
    """

    def __init__(self, text_encoder: TextEncoder, transformer: HARTTransformer, tokenizer: HybridTokenizer,
                 *, backend: str = "reference", release_text_encoder: bool = False,
                 generation_config: GenerationConfig | None = None, kv_cache_dtype: torch.dtype | None = None):
        """``backend``: the kernel backend every call runs with (see :attr:`backend`).
        ``release_text_encoder``: free the text encoder's weights once the first call has
        encoded its prompts (see the module's "Low memory"; later calls raise).
        ``generation_config``: the sampling defaults of the calls (see
        :attr:`generation_config`; None: the official ones, ``GenerationConfig()``).
        ``kv_cache_dtype``: the KV cache's storage dtype (see :attr:`kv_cache_dtype`; bfloat16
        under float32 halves the cache, see :func:`hart_edu.generation.generate`)."""
        T, D = transformer.config.context_token, transformer.config.context_dim
        if text_encoder.max_length != T:
            raise ValueError(
                f"the text encoder pads to max_length={text_encoder.max_length}, but the transformer "
                f"takes context_token={T} text positions: build the TextEncoder with max_length={T}"
            )
        hidden = getattr(getattr(text_encoder.model, "config", None), "hidden_size", None)
        if hidden is not None and hidden != D:
            raise ValueError(
                f"the text encoder's hidden size is {hidden}, but the transformer's context_dim is {D}: "
                f"this text encoder does not belong to this HART model"
            )
        if not isinstance(release_text_encoder, bool):
            raise ValueError(f"release_text_encoder={release_text_encoder!r} must be True or False")
        if generation_config is None:
            generation_config = GenerationConfig()
        if not isinstance(generation_config, GenerationConfig):
            raise ValueError(f"generation_config must be a GenerationConfig, got {type(generation_config).__name__}")
        # What a call uses for each sampling argument it leaves out (or passes as None):
        # the tree's generation_config.json with from_pretrained, else the official defaults.
        self.generation_config = generation_config
        self.text_encoder, self.transformer, self.tokenizer = text_encoder, transformer, tokenizer
        self.backend = backend
        self.release_text_encoder = release_text_encoder
        self.kv_cache_dtype = kv_cache_dtype
        self.text_encoder_released = False  # True once its weights are freed (then calls raise)
        self.memory_returned = False  # True once the allocator was asked to give it back to the OS
        self._set_conv_layout()

    def _set_conv_layout(self) -> None:
        """Below float32 the tokenizer's convolutions use the channels_last memory layout: the
        same computation, but oneDNN's bf16 convolutions run about 2x faster in it (measured:
        the 1024px VAE decode on a CPU). The float32 path keeps the default layout."""
        if self.dtype != torch.float32:
            self.tokenizer.to(memory_format=torch.channels_last)

    @property
    def kv_cache_dtype(self) -> torch.dtype | None:
        """The KV cache's storage dtype in calls (None: the dtype the keys are computed in;
        ``--quantize int8`` sets bfloat16, see :func:`hart_edu.quantize.quantize_pipeline_int8_`)."""
        return self._kv_cache_dtype

    @kv_cache_dtype.setter
    def kv_cache_dtype(self, dtype: torch.dtype | None) -> None:
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"kv_cache_dtype={dtype!r} must be None or a floating torch.dtype")
        self._kv_cache_dtype = dtype

    @property
    def backend(self) -> str:
        """The kernel backend calls run with: "reference" (PyTorch) or "triton" (the fused kernels
        of :mod:`hart_edu.kernels`, entered with ``use_backend`` around each call). Choosing
        "triton" where it cannot run raises at once, with the reason; nothing falls back."""
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        if name not in kernel_backend.BACKENDS:
            raise ValueError(f"backend={name!r}: choose one of {kernel_backend.BACKENDS}")
        if name == "triton":
            kernel_backend.require_triton()
        self._backend = name

    @classmethod
    def from_pretrained(
        cls,
        root: str | Path,
        text_encoder: str | Path | None = None,
        ema: bool = True,
        *,
        text_tokenizer: str | Path | None = None,
        system_prompt: str | None | _TreeDefault = TREE_DEFAULT,
        dtype: torch.dtype = torch.float32,
        backend: str = "reference",
        release_text_encoder: bool = False,
        quantize: str = "none",
    ) -> "HARTPipeline":
        """Load a HART tree: ``root/tokenizer``, ``root/llm`` (``ema_model.bin`` with ``ema``)
        and a text encoder (``text_encoder``, default ``root/text_encoder``; the released
        model's is the separate repository mit-han-lab/Qwen2-VL-1.5B-Instruct).

        The text encoder's tokenizer files are read from ``text_tokenizer``, else from
        ``root/text_tokenizer`` when that folder exists, else from the text encoder folder.
        A tree whose text encoder ships as a pip package (the tiny HART's) names it in
        ``root/text_encoder.json`` (see :func:`hart_edu.text_encoder.read_text_encoder_pointer`):
        it is used when there is no ``root/text_encoder/`` and no ``text_encoder`` argument.
        ``system_prompt``: by default the tree's (the official one, or what
        ``text_encoder.json`` says the model was trained with); None switches it off.
        Every load is strict.
        ``dtype``: the weights' dtype (see :attr:`dtype`; torch.bfloat16 halves the memory
        and runs on a CPU with AMX several times faster than float32).
        ``backend``: "reference" or "triton" (see :attr:`backend`).
        ``release_text_encoder``: free the text encoder after the first call's prompts are
        encoded (one call per pipeline, a lower peak; see the module's "Low memory").
        ``quantize``: "int8" (float32 only) makes each model's linear layers int8 as soon as it
        is loaded, the transformer before the text encoder is read, so their float32 weights
        are never in memory together, and stores the KV cache in bfloat16 (the layers and
        numbers of :func:`hart_edu.quantize.quantize_pipeline_int8_`).
        The tree's ``generation_config.json``, when there is one, becomes
        :attr:`generation_config`: the calls' sampling defaults (else the official ones; see
        :mod:`hart_edu.generation_config`). It is read, strictly, before any weights load.
        """
        from hart_edu.quantize import (INT8_KV_CACHE_DTYPE, check_quantize, quantize_text_model_int8_,
                                       quantize_transformer_int8_)

        check_dtype(dtype)
        int8 = check_quantize(quantize, dtype) == "int8"
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"HART weights folder not found: {root}")
        generation_config = read_generation_config(root)
        for part in ("tokenizer", "llm"):
            if not (root / part / "config.json").is_file():
                raise FileNotFoundError(
                    f"{root} has no {part}/ folder with a config.json: a HART tree holds tokenizer/, llm/ "
                    f"(and text_encoder/ unless you pass one)"
                )
        text_folder = Path(text_encoder) if text_encoder is not None else root / "text_encoder"
        tree_system_prompt = HART_SYSTEM_PROMPT
        pointer = root / TEXT_ENCODER_POINTER
        if text_encoder is None and not (text_folder / "config.json").is_file() and pointer.is_file():
            spec = read_text_encoder_pointer(pointer)
            text_folder, tree_system_prompt = spec.folder, spec.system_prompt
        if isinstance(system_prompt, _TreeDefault):
            system_prompt = tree_system_prompt
        if not (text_folder / "config.json").is_file():
            raise FileNotFoundError(
                f"no text encoder at {text_folder} (config.json missing): pass text_encoder=PATH "
                f"(the released model's is the separate repository mit-han-lab/Qwen2-VL-1.5B-Instruct)"
            )
        if text_tokenizer is None:
            text_tokenizer = root / "text_tokenizer" if (root / "text_tokenizer").is_dir() else text_folder

        tokenizer = HybridTokenizer.from_pretrained(root / "tokenizer").to(dtype)
        transformer = HARTTransformer.from_pretrained(root / "llm", ema=ema, tokenizer_folder=root / "tokenizer")
        transformer.to(dtype)
        text_dtype = dtype
        if int8:  # before the text encoder is read
            quantize_transformer_int8_(transformer)
            if stored_float_dtypes(text_folder) == {torch.bfloat16}:  # e.g. Qwen2-VL: read as it is stored
                text_dtype = torch.bfloat16  # (half of float32's memory; quantized from the same numbers)
        encoder = TextEncoder.from_pretrained(
            text_folder,
            max_length=transformer.config.context_token,
            system_prompt=system_prompt,
            tokenizer_folder=text_tokenizer,
            dtype=text_dtype,
        )
        if int8:
            quantize_text_model_int8_(encoder.model)
        return cls(encoder, transformer, tokenizer, backend=backend, release_text_encoder=release_text_encoder,
                   generation_config=generation_config, kv_cache_dtype=INT8_KV_CACHE_DTYPE if int8 else None)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype. Below float32 every call runs under ``torch.autocast`` in it
        (as sample.py runs under float16 autocast): matrix products and convolutions in that
        dtype, norms, softmax and the diffusion schedule in float32."""
        return next(self.transformer.parameters()).dtype

    def autocast(self) -> torch.autocast:
        """The autocast context of :attr:`dtype` on the pipeline's device (off for float32)."""
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def to(self, device: torch.device | str | torch.dtype) -> "HARTPipeline":
        """Move all three models to a device, or cast them to a dtype (explicitly; nothing
        moves by itself). A released text encoder stays released."""
        if not self.text_encoder_released:
            self.text_encoder.to(device)
        self.transformer.to(device)
        self.tokenizer.to(device)
        self._set_conv_layout()
        return self

    def __call__(
        self,
        prompts: str | Sequence[str],
        cfg: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        more_smooth: bool | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        residual: bool | None = None,
        num_images_per_prompt: int = 1,
        quirks: OfficialQuirks = OFFICIAL,
        greedy: bool | None = None,
        diffusion_temperature: float | None = None,
        progress: bool = True,
        given_indices: Sequence[torch.Tensor] = (),
    ) -> HARTPipelineOutput:
        """Generate ``num_images_per_prompt`` images for each prompt.

        The sampling arguments ``cfg``, ``top_k``, ``top_p``, ``more_smooth``, ``residual``,
        ``greedy`` and ``diffusion_temperature`` default to None: the pipeline's
        :attr:`generation_config` (the tree's ``generation_config.json``, else the official
        values cfg 4.5, top-k and top-p off, more_smooth and residual on, greedy off,
        temperature 1); a value passed here wins.

        ``cfg``: guidance scale (ramped over the scales, see :mod:`hart_edu.generation`). ``top_k`` /
        ``top_p``: filtering of the code distribution; 0 switches it off whatever the
        generation_config says; with the official quirk
        ``top_k_override`` on, the official 600/300 replaces ``top_k`` (a warning says so).
        ``more_smooth``: Gumbel-softmax blends of codes (sample.py's default). ``residual``:
        the diffusion head's continuous residual (False: discrete tokens only, the official
        ``final_stage=1``; ``SamplingSettings.residual``). ``greedy``: argmax codes.
        ``diffusion_temperature``: of the diffusion head's sampling. Randomness
        comes only from ``generator``, or from a fresh generator seeded with ``seed`` (default 1).
        ``given_indices``: codes of the first scales, one int64 tensor (len(prompts) *
        num_images_per_prompt, p^2) per scale, rows prompt-major (a prompt's images together),
        taken instead of sampled (see :func:`hart_edu.generation.generate`).
        With ``release_text_encoder`` the text encoder is freed right after the prompts
        are encoded, and a second call raises.
        """
        if self.text_encoder_released:
            raise RuntimeError(
                "the text encoder was released after the first call (release_text_encoder=True): "
                "build a new pipeline to encode more prompts, or pass them all in one call"
            )
        chosen = self.generation_config.override(  # None: the generation_config's; checked here
            cfg=cfg, top_k=top_k, top_p=top_p, more_smooth=more_smooth, greedy=greedy, residual=residual,
            diffusion_temperature=diffusion_temperature,
        )
        request = check_sample_request(prompts, chosen.cfg, chosen.top_k, chosen.top_p, num_images_per_prompt)
        given_indices = check_given_indices(  # before the text encoder runs (and is maybe released)
            given_indices, self.transformer.config.patch_nums,
            len(request.prompts) * request.num_images_per_prompt, self.transformer.vocab_size)
        rng = _generator_from(seed, generator, self.device)
        used_seed = None if generator is not None else (DEFAULT_SEED if seed is None else int(seed))
        if chosen.residual and not self.tokenizer.config.is_hybrid:
            raise ValueError("residual=True needs a hybrid tokenizer (quantizer_type 'var_hybrid')")
        if request.top_k and quirks.top_k_override:
            warnings.warn(
                f"top_k={request.top_k} is ignored: the official code overrides it with 600/300 "
                f"(pass quirks=OfficialQuirks(top_k_override=False) to use it)",
                stacklevel=2,
            )
        settings = SamplingSettings(
            cfg=request.cfg, top_k=request.top_k, top_p=request.top_p, greedy=chosen.greedy,
            more_smooth=chosen.more_smooth, num_maskgit_iters=1, residual=chosen.residual,
            diffusion_temperature=chosen.diffusion_temperature,
        )

        # Each distinct prompt is encoded once; its rows are repeated for its images. The
        # encoder's truncation warnings are re-issued here so they point at the caller.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            text = self.text_encoder(request.prompts)
        for w in caught:
            warnings.warn(w.message, w.category, stacklevel=2)
        if self.release_text_encoder:
            self._release_text_encoder()
        n = request.num_images_per_prompt
        context_BTD, mask_BT, position_ids_BT = (
            t.repeat_interleave(n, dim=0) for t in (text.context_BTD, text.mask_BT, text.position_ids_BT)
        )

        with torch.no_grad(), self.autocast(), kernel_backend.use_backend(self.backend):
            result = self._generate(context_BTD, mask_BT, position_ids_BT, settings, rng, quirks, progress,
                                    given_indices)
            if self.release_text_encoder:  # low memory: what the scales freed goes back before the decoder
                self.memory_returned = return_free_memory()
            image_B3HW = to_output_range(self.tokenizer.decode(result.f_hat_BChw))  # the one decode
        images = [uint8_to_pil(px) for px in images_to_uint8(image_B3HW)]
        return HARTPipelineOutput(
            images=images,
            prompts=[prompt for prompt in request.prompts for _ in range(n)],
            image_B3HW=image_B3HW,
            indices=result.indices,
            f_hat_BChw=result.f_hat_BChw,
            f_discrete_BChw=result.f_discrete_BChw,
            residual_BChw=result.residual_BChw,
            text=text,
            generation=result,
            seed=used_seed,
        )

    def _release_text_encoder(self) -> None:
        """Free the text encoder's weights: its model moves to the meta device (shapes kept, no
        storage), so the memory goes even where someone else still holds the module."""
        self.text_encoder.model.to("meta")
        self.text_encoder_released = True
        self.memory_returned = return_free_memory()

    def _generate(self, context_BTD, mask_BT, position_ids_BT, settings, rng, quirks, progress,
                  given_indices=()) -> GenerationResult:
        """The transformer's scale-by-scale generation, with a progress bar over the scales."""
        from tqdm.auto import tqdm

        pns = self.transformer.config.patch_nums
        with tqdm(total=len(pns), desc="HART scales", unit="scale", disable=not progress, leave=False) as bar:

            def stage_done(si: int) -> None:
                bar.set_postfix_str(f"{pns[si]}x{pns[si]}")
                bar.update(1)

            return generate(
                self.transformer, self.tokenizer.quantizer, context_BTD, mask_BT, position_ids_BT,
                settings=settings, generator=rng, quirks=quirks, on_stage_end=stage_done,
                given_indices=given_indices, kv_cache_dtype=self.kv_cache_dtype,
            )

    @torch.no_grad()
    def decode(self, f_hat_BChw: torch.Tensor) -> torch.Tensor:
        """Any latent (e.g. an output's ``f_discrete_BChw``) -> images in [0, 1], as a call does."""
        with self.autocast(), kernel_backend.use_backend(self.backend):
            return to_output_range(self.tokenizer.decode(f_hat_BChw))
