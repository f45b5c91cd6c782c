"""The key/value cache of one transformer block, stage after stage.

HART's transformer runs one forward call per stage (the context, then each image scale); a
stage's queries attend to its own keys and to those of every earlier stage, which the cache
holds. :class:`hart_edu.ar_transformer.HARTTransformer` keeps one cache per block in its
:class:`~hart_edu.ar_transformer.ScalePass`, and each block's attention appends to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["KVCache"]


@dataclass
class KVCache:
    """Keys and values of every token seen so far in one block, (N, H, L_seen, d_head).

    ``valid_NK`` marks which cached keys may be attended to (only used when padding is
    masked, ``attend_to_padding=False``, see :meth:`hart_edu.ar_transformer.HARTTransformer.begin`).

    Two ways to grow, the same numbers:

    * ``capacity=0`` (training): every stage concatenates, so gradients flow through the
      cache into earlier stages.
    * ``capacity=K`` (generation, which knows its total length up front): the first stage
      allocates (N, H, K, d) buffers and every stage writes its keys and values into the next
      slice; the cache is a view of the filled part. Concatenating would copy the whole cache
      at every stage and free the shorter copy, and at 1024px (1.8 GiB of cache in bf16) those
      freed copies stay behind as holes in the C heap: measured on a 2-core CPU, the process
      peaked at 6.75 GiB with concatenation and 5.98 GiB with the buffer (docs/cpu/README.md).

    ``storage_dtype`` (buffers only): keep the keys and values in another dtype than the model
    computes in, e.g. bfloat16 under a float32 model (``--quantize int8``): half the memory of
    the cache (3.57 -> 1.79 GiB at 1024px), and the attention still runs in float32, since
    :class:`~hart_edu.ar_transformer.LlamaAttention` casts what it reads back to its queries'
    dtype. Each key and value is rounded to bfloat16's 8 significant bits once, when it is written.
    """

    k_NHKd: torch.Tensor | None = None
    v_NHKd: torch.Tensor | None = None
    valid_NK: torch.Tensor | None = None
    capacity: int = 0
    storage_dtype: torch.dtype | None = None
    _buffers: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.storage_dtype is not None and not self.capacity:
            raise ValueError("a KV cache with a storage_dtype needs a capacity (its buffers)")

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
            dtype = k_NHLd.dtype if self.storage_dtype is None else self.storage_dtype
            self._buffers = (k_NHLd.new_empty(N, H, self.capacity, d, dtype=dtype),
                             v_NHLd.new_empty(N, H, self.capacity, d, dtype=dtype),
                             valid_NL.new_empty(N, self.capacity))
        k_buf, v_buf, valid_buf = self._buffers
        # torch.cat would promote mixed dtypes; a buffer casts, which only a storage_dtype asks for
        if self.storage_dtype is None and (k_NHLd.dtype, v_NHLd.dtype) != (k_buf.dtype, v_buf.dtype):
            raise ValueError(f"KV cache holds {k_buf.dtype}/{v_buf.dtype}, got {k_NHLd.dtype}/{v_NHLd.dtype}")
        k_buf[:, :, start:start + L] = k_NHLd
        v_buf[:, :, start:start + L] = v_NHLd
        valid_buf[:, start:start + L] = valid_NL
        self.k_NHKd, self.v_NHKd = k_buf[:, :, :start + L], v_buf[:, :, :start + L]
        self.valid_NK = valid_buf[:, :start + L]
