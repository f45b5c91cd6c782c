"""Triton kernels for HART's hot spots, each beside a plain PyTorch reference.

Each module holds ``<name>_reference`` (the math, in PyTorch), ``<name>_triton`` (the fused
kernel, same signature) and ``<name>`` (the one chosen with :func:`backend.use_backend`):

* :mod:`.rmsnorm_modulate`: ``RMSNorm(x) * w * (1 + scale) + shift``, forward and backward;
* :mod:`.layernorm_modulate`: ``LayerNorm(x) * (1 + scale) + shift`` (diffusion head), forward and backward;
* :mod:`.rope`: rotary embedding of q and k from explicit (float, 1-D or 2-D) positions, forward and backward;
* :mod:`.nearest_code`: codebook argmin without the (N, V) distance matrix;
* :mod:`.swiglu`: ``silu(a) * b``, forward and backward;
* :mod:`.cfg_sample`: CFG + top-k / top-p + a draw (Philox Gumbel-max from a seed, or
  ``torch.multinomial``'s from a generator, or greedy), one launch per scale.

Nothing is imported here, so ``import hart_edu.kernels`` does not import Triton. To run the
kernels on a CPU (slowly, for tests) set ``TRITON_INTERPRET=1`` before importing them.
``python -m hart_edu.kernels.bench`` times them on a CUDA GPU.
"""
