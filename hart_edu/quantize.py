r"""int8 weights for the big linear layers (``--quantize int8``), with PyTorch's own quantization.

A linear layer ``y = x W^T + b`` (W: out x in) keeps its weight as int8, one scale per output
row (symmetric, per channel)::

    W ~= s_o * q_oi,   q_oi = round(W_oi / s_o) in [-127, 127],   s_o = max_i |W_oi| / 127

Two ways to multiply with it, both ``torch.ao`` / ATen operators (no code of our own in the
products):

* **dynamic int8** (:func:`torch.ao.nn.quantized.dynamic.Linear`, the fbgemm/x86 kernels): at
  every call the activations are quantized too, per tensor to uint8 (``x ~= a (u - z)``, a and
  z from this call's min and max; 7 bits on x86, ``reduce_range``), the product runs in
  integers (int32 sums) and is scaled back to float32. A quarter of float32's weight memory,
  and on a 2-core AVX2 EPYC 1.6-1.9x faster than the float32 product for the released
  transformer's layer sizes (docs/cpu/component-ratios-avx2.json).
* **weight-only int8** (:class:`Int8WeightLinear`): ``.weight`` is dequantized to float32 at
  each read and the product stays float32: the memory of int8, the speed of float32, and no
  rounding of the activations. Used for a layer whose owner reads ``.weight`` itself (the
  transformer's ``qkv_proj``, which :class:`~hart_edu.ar_transformer.LlamaAttention` multiplies
  with its split bias in one ``F.linear``) and for the whole text encoder
  (:func:`quantize_pipeline_int8_`).

Why the text encoder is weight-only (released Qwen2 architecture, random weights, 300 tokens,
measured on the AVX2 EPYC, docs/cpu/int8-fidelity-1024px.json): dynamic int8 moved its output
by up to 2.67 (mean 0.357; the float32 output's largest value is 4.74) for a 2.8x speed-up of a
phase that runs once per image (11.9 s of the 400.8 s float32 image); weight-only int8 moves it
by up to 0.38 (mean 0.063) at float32's speed. Its memory is the point: 4.88 GiB of float32
linear weights become 1.22 GiB.

:func:`quantize_int8_` swaps the layers of a float32 model in place; every layer except the
ones named in ``keep_float`` (the transformer's logits ``head``: a small share of the work that
the sampling reads directly). :func:`materialise_random_int8` is the same for the random-weight
build of ``hart-edu run-real``: each layer is drawn in float32 and quantized at once, so the
float32 copy of the whole model never exists (the drawn numbers are the float32 build's, in the
same order).

Activations stay float32: the int8 layers take float32 inputs (so ``--quantize int8`` runs with
``--dtype float32``). Only ``nn.Linear`` layers become int8: embeddings, norms, the attention
arithmetic (softmax(Q K^T) V, float32) and the VAE decoder's convolutions stay as they were; the
attention's cached keys and values are *stored* in bfloat16 (below).

The KV cache is the other big store: at 1024px its float32 keys and values are 3.57 GiB at the
last scale (16 blocks x 2 x 2 CFG rows x 9,750 positions x 1,536 x 4 bytes), more than the int8
weights. ``--quantize int8`` keeps it in bfloat16 (:data:`INT8_KV_CACHE_DTYPE`, see
:class:`hart_edu.kv_cache.KVCache`): 1.79 GiB, each key and value rounded once when written,
the attention itself still float32 (bfloat16 arithmetic is the slow path on a CPU without
native bfloat16; a cast is not).

``torch.ao.quantization``'s eager API prints a DeprecationWarning in torch 2.13 (its successor
is the separate ``torchao`` package); it still works, and the warning is silenced here only.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "QUANTIZE_CHOICES",
    "DEFAULT_KEEP_FLOAT",
    "Int8WeightLinear",
    "Int8Summary",
    "quantize_int8_",
    "quantize_pipeline_int8_",
    "quantize_text_model_int8_",
    "quantize_transformer_int8_",
    "INT8_KV_CACHE_DTYPE",
    "materialise_random_int8",
    "check_quantize",
    "is_int8_layer",
    "weight_bytes",
]

QUANTIZE_CHOICES: tuple[str, ...] = ("none", "int8")
DEFAULT_KEEP_FLOAT: tuple[str, ...] = ("head",)  # module names (last component) left in float32
INT8_KV_CACHE_DTYPE = torch.bfloat16  # the KV cache's storage under --quantize int8 (attention stays float32)

# (owner class name, attribute): layers whose owner reads ``.weight`` itself, not ``layer(x)``
_WEIGHT_READ_BY_OWNER: frozenset[tuple[str, str]] = frozenset({("LlamaAttention", "qkv_proj")})


def check_quantize(quantize: str | None, dtype: torch.dtype) -> str:
    """"none" or "int8" (None means "none"); int8 layers take float32 activations: a clear
    error for int8 with another dtype."""
    quantize = "none" if quantize is None else quantize
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize={quantize!r}: choose one of {', '.join(QUANTIZE_CHOICES)}")
    if quantize == "int8" and dtype != torch.float32:
        raise ValueError(f"int8 layers take float32 activations: quantize='int8' needs dtype float32, "
                         f"not {str(dtype).removeprefix('torch.')}")
    return quantize


def _int8_per_row(weight_OI: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q_OI int8, s_O float32): W ~= s_o q_oi, symmetric, one scale per output row."""
    w = weight_OI.detach().float()
    scale_O = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
    q_OI = torch.round(w / scale_O[:, None]).clamp(-127, 127).to(torch.int8)
    return q_OI, scale_O


class Int8WeightLinear(nn.Module):
    """Weight-only int8 linear layer: ``weight`` (read-only property) is ``scale_O[:, None] *
    q_OI`` in float32, rebuilt at each read; ``forward`` is ``F.linear(x, weight, bias)``."""

    def __init__(self, q_OI: torch.Tensor, scale_O: torch.Tensor, bias_O: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = q_OI.shape
        self.register_buffer("q_OI", q_OI)
        self.register_buffer("scale_O", scale_O)
        self.bias = None if bias_O is None else nn.Parameter(bias_O.detach().float(), requires_grad=False)

    @classmethod
    def from_float(cls, linear: nn.Linear) -> "Int8WeightLinear":
        q_OI, scale_O = _int8_per_row(linear.weight)
        return cls(q_OI, scale_O, linear.bias)

    @property
    def weight(self) -> torch.Tensor:
        return self.q_OI.float() * self.scale_O[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight only"


def _dynamic_int8(linear: nn.Linear) -> nn.Module:
    """torch.ao's dynamic int8 linear layer with per-channel int8 weights."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    with warnings.catch_warnings():  # torch.ao.quantization's eager API is deprecated (torchao replaces it)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_(tensor|channel).*")
        linear.qconfig = per_channel_dynamic_qconfig
        try:
            return DynamicLinear.from_float(linear)
        finally:
            del linear.qconfig


def is_int8_layer(module: nn.Module) -> bool:
    """True for a layer :func:`quantize_int8_` made."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return isinstance(module, (DynamicLinear, Int8WeightLinear))


@dataclass
class Int8Summary:
    """What :func:`quantize_int8_` changed: layer counts and the weights' bytes before and after."""

    dynamic_layers: int = 0
    weight_only_layers: int = 0
    kept_float: list[str] | None = None
    float_bytes: int = 0  # the swapped layers' float weights and biases
    int8_bytes: int = 0  # their int8 weights, scales and biases

    def line(self) -> str:
        return (f"int8: {self.dynamic_layers} dynamic + {self.weight_only_layers} weight-only linear layers, "
                f"{self.float_bytes / 2**30:.2f} -> {self.int8_bytes / 2**30:.2f} GiB; float32: "
                f"{', '.join(self.kept_float or []) or 'none'}")

    def add(self, other: "Int8Summary") -> "Int8Summary":
        return Int8Summary(self.dynamic_layers + other.dynamic_layers,
                           self.weight_only_layers + other.weight_only_layers,
                           (self.kept_float or []) + (other.kept_float or []),
                           self.float_bytes + other.float_bytes, self.int8_bytes + other.int8_bytes)


def _swap(owner: nn.Module, attr: str, linear: nn.Linear, summary: Int8Summary, weight_only: bool = False) -> None:
    """Replace ``owner.attr`` (``linear``) by its int8 layer (weight-only with ``weight_only`` or
    where the owner reads ``.weight``; else dynamic int8); count it in ``summary``."""
    if linear.weight.dtype != torch.float32:
        raise ValueError(f"int8 quantization starts from float32 weights, got {linear.weight.dtype} "
                         f"({type(owner).__name__}.{attr})")
    summary.float_bytes += sum(p.numel() * p.element_size() for p in linear.parameters())
    if weight_only or (type(owner).__name__, attr) in _WEIGHT_READ_BY_OWNER:
        new = Int8WeightLinear.from_float(linear)
        summary.weight_only_layers += 1
        summary.int8_bytes += sum(t.numel() * t.element_size() for t in (*new.buffers(), *new.parameters()))
    else:
        new = _dynamic_int8(linear)
        summary.dynamic_layers += 1
        out_f, in_f = linear.weight.shape
        summary.int8_bytes += out_f * in_f + 4 * out_f + (4 * out_f if linear.bias is not None else 0)
    setattr(owner, attr, new)


def _linears(model: nn.Module, keep_float: Sequence[str]) -> tuple[list[tuple[nn.Module, str, str]], list[str]]:
    """(owner, attribute, full name) of every nn.Linear to quantize, and the names kept float."""
    found, kept = [], []
    for owner_name, owner in model.named_modules():
        for attr, child in owner.named_children():
            if isinstance(child, nn.Linear):
                name = f"{owner_name}.{attr}" if owner_name else attr
                (kept.append(name) if attr in keep_float else found.append((owner, attr, name)))
    return found, kept


@torch.no_grad()
def quantize_int8_(model: nn.Module, keep_float: Sequence[str] = DEFAULT_KEEP_FLOAT,
                   weight_only: bool = False, from_bfloat16: bool = False) -> Int8Summary:
    """Swap every ``nn.Linear`` of the float32 ``model`` for an int8 one, in place (dynamic int8;
    weight-only with ``weight_only`` and where the owner reads ``.weight``), except layers whose
    attribute name is in ``keep_float``. Returns what changed. The model must be in eval mode
    (inference only). ``from_bfloat16``: the model is bfloat16; each layer becomes float32 (an
    exact conversion) right before it is quantized, one at a time, and the rest of the model
    (embeddings, norms) float32 at the end: the float32 model's int8 layers without its float32
    copy ever existing whole."""
    if model.training:
        raise ValueError("int8 layers are for inference: call model.eval() first")
    summary = Int8Summary()
    found, summary.kept_float = _linears(model, keep_float)
    for owner, attr, _ in found:
        linear = getattr(owner, attr)
        _swap(owner, attr, linear.float() if from_bfloat16 else linear, summary, weight_only)
    if from_bfloat16:
        model.float()
    return summary


def quantize_text_model_int8_(text_model: nn.Module) -> Int8Summary:
    """``--quantize int8`` of the text encoder: weight-only (it runs once per call, so its speed
    matters little, and its activations are not rounded: see the module's measurements). A
    model loaded in bfloat16 from a bfloat16 checkpoint (what ``HARTPipeline.from_pretrained``
    does under int8 when :func:`hart_edu.text_encoder.stored_float_dtypes` says so) gives the
    same layers as its float32 load, at half the loading memory; the model ends float32."""
    from_bfloat16 = next(text_model.parameters()).dtype == torch.bfloat16
    return quantize_int8_(text_model, keep_float=(), weight_only=True, from_bfloat16=from_bfloat16)


def quantize_transformer_int8_(transformer: nn.Module) -> Int8Summary:
    """``--quantize int8`` of the HART transformer: dynamic int8, its logits ``head`` float32."""
    return quantize_int8_(transformer)


def quantize_pipeline_int8_(pipe) -> Int8Summary:
    """``--quantize int8`` of a loaded :class:`~hart_edu.sampler.HARTPipeline`: both models'
    linear layers (:func:`quantize_text_model_int8_`, :func:`quantize_transformer_int8_`) and the
    KV cache stored in :data:`INT8_KV_CACHE_DTYPE`. (``HARTPipeline.from_pretrained(...,
    quantize="int8")`` does the same while loading, each model as soon as it is read, so that
    their float32 weights are never in memory together.)"""
    summary = quantize_text_model_int8_(pipe.text_encoder.model).add(quantize_transformer_int8_(pipe.transformer))
    pipe.kv_cache_dtype = INT8_KV_CACHE_DTYPE
    return summary


def materialise_random_int8(keep_float: Sequence[str] = DEFAULT_KEEP_FLOAT,
                            skip: Callable[[nn.Module], bool] = lambda model: False,
                            weight_only: Callable[[nn.Module], bool] = lambda model: False):
    """A ``materialise`` for :func:`hart_edu.profile.build_models`: the float32 random draw of
    :func:`hart_edu.profile.materialise_random`, module by module in the same order (so the
    same numbers as the float32 build), each ``nn.Linear`` quantized right after its weights are
    drawn: the peak memory is the int8 model plus one float32 layer. Models for which ``skip``
    is true are materialised as usual; models for which ``weight_only`` is true get weight-only
    int8 layers (see :func:`quantize_pipeline_int8_`). ``summaries`` (an attribute of the returned function)
    collects each model's :class:`Int8Summary`."""
    from hart_edu.profile import materialise_random

    summaries: list[Int8Summary] = []

    @torch.no_grad()
    def materialise(model: nn.Module, device: torch.device, dtype: torch.dtype,
                    generator: torch.Generator) -> nn.Module:
        if skip(model):
            return materialise_random(model, device, dtype, generator)
        if dtype != torch.float32:
            raise ValueError(f"int8 layers are drawn from float32 weights, not {dtype}")
        only_weights = weight_only(model)
        found, kept = _linears(model, () if only_weights else keep_float)
        to_swap = {id(getattr(owner, attr)): (owner, attr) for owner, attr, _ in found}
        summary = Int8Summary(kept_float=kept)
        # By name, one module at a time: a list of the modules would keep every swapped float32
        # layer alive until the end (measured on the released architecture: a build peak of
        # 7.70 GiB instead of 3.79 GiB, docs/cpu).
        for name in [name for name, _ in model.named_modules()]:
            module = model.get_submodule(name)
            if not module._parameters:
                continue
            shell = nn.Module()  # materialise_random draws the parameters of every module it visits:
            shell._parameters = module._parameters  # give it this module's own ones only (same dict)
            materialise_random(shell, device, dtype, generator)
            if id(module) in to_swap:
                owner, attr = to_swap.pop(id(module))
                _swap(owner, attr, module, summary, only_weights)
            del module, shell
        summaries.append(summary)
        return model.to(device).eval()

    materialise.summaries = summaries  # type: ignore[attr-defined]
    return materialise


def weight_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s weights: float parameters and buffers, and its int8 layers' packed
    weights (one byte a weight, a float32 scale per row) and biases."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    total = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    for module in model.modules():
        if isinstance(module, DynamicLinear):
            q_OI, bias_O = module._packed_params._weight_bias()
            total += q_OI.numel() + 4 * q_OI.shape[0] + (0 if bias_O is None else 4 * bias_O.numel())
    return total
