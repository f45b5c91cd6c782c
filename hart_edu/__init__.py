"""hart_edu: learn, run and hack on HART, the Hybrid Autoregressive Transformer.

Module map. Every module reads top to bottom; the teaching core is the model, chapter by
chapter (the order of the notebooks), and everything else is a tool around it.

The teaching core
-----------------

* :mod:`hart_edu.vq`                  vector quantization up to VAR's multi-scale residual quantizer
* :mod:`hart_edu.hybrid_tokenizer`    the VAE and HART's hybrid (discrete + continuous) tokenizer
* :mod:`hart_edu.text_encoder`        the official prompt encoding around a frozen language model
* :mod:`hart_edu.ar_transformer`      the network: attention, blocks, one forward over a scale,
                                      teacher forcing
* :mod:`hart_edu.kv_cache`            the per-block key/value cache the stages attend through
* :mod:`hart_edu.generation`          the scale-by-scale generation loop: CFG, sampling, the
                                      MaskGIT last stage, the official quirks
* :mod:`hart_edu.diffusion_schedule`  the head's noise schedules: cosine betas, respacing, the
                                      per-step arrays (IDDPM)
* :mod:`hart_edu.residual_diffusion`  the MLP denoiser of the continuous residual: one reverse
                                      step, the sampling loop, the training loss (MAR's DiffLoss)
* :mod:`hart_edu.sampler`             ``HARTPipeline``: text -> codes + residual -> one decode -> images
* :mod:`hart_edu.kernels`             each fused operation's readable reference beside its Triton
                                      kernel, chosen with one explicit switch

The tools around it
-------------------

* commands: :mod:`~hart_edu.cli` (``hart-edu``), :mod:`~hart_edu.app` (gradio),
  :mod:`~hart_edu.demo`, :mod:`~hart_edu.eval` (a miniature GenEval)
* measuring: :mod:`~hart_edu.profile` (latency by phase, per backend),
  :mod:`~hart_edu.run_real` (the released model on a CPU), :mod:`~hart_edu.timing` (the phase
  timer both use), :mod:`~hart_edu.memory`, :mod:`~hart_edu.cpu_dtype`, :mod:`~hart_edu.quantize`
* the released weights: :mod:`~hart_edu.download`, :mod:`~hart_edu.convert`,
  :mod:`~hart_edu.checkpoint` (safe, strict loading)
* requests: :mod:`~hart_edu.limits`, :mod:`~hart_edu.safety` (the optional prompt check)
* correctness: :mod:`~hart_edu.parity` (recompute the official golden tensors and compare)
* training: :mod:`~hart_edu.train` (the tiny tokenizer and the tiny HART),
  :mod:`~hart_edu.data` (captioned scenes with an automatic checker)
* shared helpers: :mod:`~hart_edu.images`, :mod:`~hart_edu.paths`
"""

__version__ = "0.1.0"
