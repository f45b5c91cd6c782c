"""hart_edu: learn, run and hack on HART, the Hybrid Autoregressive Transformer.

Modules, each readable top to bottom:

* :mod:`hart_edu.vq`                 vector quantization and VAR's multi-scale residual quantizer
* :mod:`hart_edu.hybrid_tokenizer`   the VAE and HART's hybrid (discrete + continuous) tokenizer
* :mod:`hart_edu.checkpoint`         safe, strict loading of official checkpoint folders
* :mod:`hart_edu.parity`             recompute the official golden tensors and compare
"""

__version__ = "0.1.0"
