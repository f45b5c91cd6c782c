"""Triton kernels for HART's hot spots, each beside a plain PyTorch reference.

Each module holds ``<name>_reference`` (the math, in PyTorch), ``<name>_triton`` (the fused
kernel, same signature) and ``<name>`` (the one chosen with :func:`backend.use_backend`):

* :mod:`.rmsnorm_modulate`: ``RMSNorm(x) * w * (1 + scale) + shift``, forward and backward;
* :mod:`.layernorm_modulate`: ``LayerNorm(x) * (1 + scale) + shift`` (diffusion head), forward and backward;
* :mod:`.rope`: rotary embedding of q and k from explicit (float, 1-D or 2-D) positions, forward and backward;
* :mod:`.nearest_code`: codebook argmin without the (N, V) distance matrix;
* :mod:`.swiglu`: ``silu(a) * b``, forward and backward;
* :mod:`.cfg_sample`: CFG + top-k / top-p + the draw (``torch.multinomial``'s own, from the
  caller's generator, or greedy), one launch per scale.

The models (``hart_edu.vq``, ``hart_edu.ar_transformer``, ``hart_edu.residual_diffusion``) call
only the dispatchers ``<name>``; the references are the one readable copy of each operation.
Nothing is imported here, so ``import hart_edu.kernels`` does not import Triton. To run the
kernels on a CPU (slowly, for tests) set ``TRITON_INTERPRET=1`` before importing them or a model.
``python -m hart_edu.kernels.bench`` times them on a CUDA GPU.
"""
