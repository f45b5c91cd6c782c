"""Checkers of notebook 07 (the real HART at 1024px): the memory of the KV cache, and int8
weights (per-row quantization, and the weight-only int8 linear layer).

The KV cache is measured on the package's :class:`hart_edu.kv_cache.KVCache`, allocated on
PyTorch's ``meta`` device (shapes and dtypes, no memory), so the released model's gigabytes cost
nothing to check. The int8 layers are :mod:`hart_edu.quantize`'s.
"""

from __future__ import annotations

from typing import Callable

import torch

from hart_edu.course import ExerciseFailed, call, compare, passed
from hart_edu.kv_cache import KVCache
from hart_edu.profile import ARCHITECTURES
from hart_edu.quantize import Int8WeightLinear, _int8_per_row

__all__ = ["check_kv_cache_bytes", "check_quantize_rows", "check_int8_linear"]


def _kv_bytes_of_the_package(depth: int, rows: int, heads: int, head_dim: int, length: int, dtype: torch.dtype) -> int:
    """Bytes of the key and value buffers that ``depth`` of the package's generation caches
    allocate (``KVCache(capacity=length)``, filled by a first stage of one token)."""
    total = 0
    for _ in range(depth):
        cache = KVCache(capacity=length)
        k_NHLd = torch.empty(rows, heads, 1, head_dim, dtype=dtype, device="meta")
        cache.extend(k_NHLd, torch.empty_like(k_NHLd), torch.empty(rows, 1, dtype=torch.bool, device="meta"))
        k_buf, v_buf, _valid = cache._buffers
        total += k_buf.numel() * k_buf.element_size() + v_buf.numel() * v_buf.element_size()
    return total


def check_kv_cache_bytes(fn: Callable[[int, int, int, int, int, torch.dtype], int]) -> int:
    """``fn(depth, rows, num_heads, head_dim, length, dtype)`` -> the bytes of the keys and
    values that generation caches: every block keeps (rows, heads, length, head_dim) keys and as
    many values."""
    name = "kv_cache_bytes"
    release = ARCHITECTURES["1024px"].transformer
    depth, heads, C = release["depth"], release["num_heads"], release["embed_dim"]
    length = release["context_token"] + sum(p * p for p in release["patch_nums"][1:])
    cases = [  # (depth, rows, heads, head_dim, length, dtype, what)
        (depth, 2, heads, C // heads, length, torch.bfloat16,
         "the released 1024px model, one image with CFG, bfloat16"),
        (depth, 2, heads, C // heads, length, torch.float32, "the same in float32"),
        (depth, 16, heads, C // heads, length, torch.float16, "a batch of 8 images with CFG, float16"),
        (4, 2, 6, 32, 20 + 129, torch.float32, "the tiny HART (depth 4, width 192, 6 heads)"),
        (1, 1, 1, 1, 1, torch.float32, "one block, one row, one head of width 1, one token"),
    ]
    for d, N, H, hd, L, dtype, what in cases:
        got = call(name, fn, d, N, H, hd, L, dtype)
        compare(name, got, _kv_bytes_of_the_package(d, N, H, hd, L, dtype), what,
                "keys and values: 2 tensors of rows * heads * length * head_dim numbers per block, times the "
                "bytes of one number (torch.empty((), dtype=dtype).element_size()), times depth", exact=True)
    return passed(name, len(cases))


def check_quantize_rows(fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]) -> int:
    """``fn(weight_OI)`` -> ``(q_OI, scale_O)``: symmetric int8 with one float32 scale per output
    row, ``scale_o = max_i |W_oi| / 127`` (a zero row gets the smallest positive float32) and
    ``q_oi = round(W_oi / scale_o)`` clamped to [-127, 127], as int8."""
    name = "quantize_rows"
    g = torch.Generator().manual_seed(71)
    outlier_OI = torch.randn(3, 16, generator=g) * 0.02
    outlier_OI[1, 5] = 2.0  # one large weight: its row's other weights round to few levels
    zero_row_OI = torch.randn(3, 8, generator=g)
    zero_row_OI[2] = 0.0
    cases = [
        (torch.randn(8, 32, generator=g) * 0.05, "a random (8, 32) weight"),
        (outlier_OI, "a row with one outlier"),
        (-torch.rand(2, 6, generator=g), "rows of negative weights (the scale comes from |W|)"),
        (zero_row_OI, "a row of zeros (no division by zero)"),
        (torch.randn(4, 12, generator=g).to(torch.bfloat16), "a bfloat16 weight (scales stay float32)"),
        (torch.randn(1, 1, generator=g), "a (1, 1) weight"),
    ]
    for W_OI, what in cases:
        want_q, want_s = _int8_per_row(W_OI)
        got = call(name, fn, W_OI.clone())
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise ExerciseFailed(f"{name} ({what}): return (q_OI, scale_O), got {type(got).__name__}")
        q, s = got
        for t, want_dtype, label in ((q, torch.int8, "q_OI"), (s, torch.float32, "scale_O")):
            if isinstance(t, torch.Tensor) and t.dtype != want_dtype:
                raise ExerciseFailed(f"{name} ({what}): {label} is {t.dtype}, expected {want_dtype}. "
                                     "Hint: q as torch.int8, the scales as float32 (compute on W.float())")
        compare(name, s, want_s, f"{what}, scale_O", "scale_o = max over the row of |W| / 127, at least "
                "torch.finfo(torch.float32).tiny", atol=0.0, rtol=1e-6)
        compare(name, q, want_q, f"{what}, q_OI", "q = round(W / scale[:, None]) clamped to [-127, 127], "
                "then .to(torch.int8)", exact=True)
    return passed(name, len(cases))


def check_int8_linear(fn: Callable[..., torch.Tensor]) -> int:
    """``fn(x_NI, q_OI, scale_O, bias_O)`` -> ``x W^T + b`` with ``W = scale_O[:, None] * q_OI``
    in float32 (``bias_O`` may be None): the package's weight-only int8 layer,
    :class:`hart_edu.quantize.Int8WeightLinear`."""
    name = "int8_linear"
    g = torch.Generator().manual_seed(72)
    cases = []
    for N, I, O, bias, what in ((4, 16, 8, True, "(4, 16) inputs, 8 outputs"), (1, 3, 2, False, "no bias"),
                                (2, 32, 32, True, "a square layer")):
        q_OI, scale_O = _int8_per_row(torch.randn(O, I, generator=g) * 0.1)
        bias_O = torch.randn(O, generator=g) if bias else None
        cases.append((torch.randn(N, I, generator=g), q_OI, scale_O, bias_O, what))
    x_BLI = torch.randn(2, 5, 16, generator=g)  # a batch of token sequences: the layer acts on the last dim
    q_OI, scale_O = _int8_per_row(torch.randn(8, 16, generator=g))
    cases.append((x_BLI, q_OI, scale_O, torch.zeros(8), "x of shape (2, 5, 16): tokens of two sequences"))
    for x, q_OI, scale_O, bias_O, what in cases:
        want = Int8WeightLinear(q_OI, scale_O, bias_O)(x)
        got = call(name, fn, x.clone(), q_OI.clone(), scale_O.clone(), None if bias_O is None else bias_O.clone())
        compare(name, got, want, what, "dequantize: W = q.float() * scale[:, None] (O, I); then x @ W.T, "
                "plus the bias when there is one", atol=1e-5, rtol=1e-5)
    return passed(name, len(cases))
