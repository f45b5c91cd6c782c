"""Image helpers shared by the demo, the training scripts and the notebooks.

Two value ranges, each with one job:

* **model range [-1, 1]**: what the tokenizer encodes and decodes, the scenes are drawn in,
  and the checker and PSNR read (``load_image``, ``to_pil``, ``psnr``, ``hart_edu.data.scenes``);
* **output range [0, 1]**: what :class:`hart_edu.sampler.HARTPipeline` returns
  (``image_B3HW``), as the official ``sample.py`` does before saving pixels.

:func:`to_output_range` and :func:`to_model_range` are the only conversions between them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def to_output_range(image_B3HW: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]: ``(x + 1) / 2`` (the decoder's output as the pipeline returns it)."""
    return (image_B3HW + 1) * 0.5


def to_model_range(image_B3HW: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]: ``2 x - 1`` (a pipeline image as the checker and the tokenizer read it)."""
    return image_B3HW * 2 - 1


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """An image file as (3, size, size) in [-1, 1]: centre crop to a square, then resize."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    img = Image.open(path).convert("RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 127.5 - 1


def to_pil(img_3HW: torch.Tensor, scale: int = 1):
    """A [-1, 1] image tensor as a PIL image, optionally enlarged (nearest) for viewing."""
    from PIL import Image

    img_3HW = img_3HW.detach().float().cpu()
    if scale > 1:
        img_3HW = F.interpolate(img_3HW[None], scale_factor=scale, mode="nearest")[0]
    arr = ((img_3HW.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(arr)


def psnr(a_B3HW: torch.Tensor, b_B3HW: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [-1, 1] (peak-to-peak 2): ``10 log10(4 / MSE)``."""
    mse_B = (a_B3HW.detach() - b_B3HW.detach()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse_B.clamp_min(1e-12))
