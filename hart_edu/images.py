"""Image helpers shared by the demo, the training scripts and the notebooks.

Convention everywhere in hart_edu: an image is a float tensor (3, H, W) in [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


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
