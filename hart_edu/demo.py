"""``make demo`` (``hart-edu demo``): the tiny HART draws held-out captions, timed per image.

:func:`main` generates one image per caption with ``weights/tiny`` at batch 1, times each
(after one warm-up image; the timing covers text encoding, every scale, the residual
diffusion and the VAE decode), checks each against its caption with the scenes' automatic
checker, and writes a grid whose titles are black when every attribute is right, red if not.
The captions are held out: the model never saw these compositions during training.
The sampling settings are the tree's ``generation_config.json`` (else the official defaults;
see :mod:`hart_edu.generation_config`); ``cfg`` (``--cfg``) overrides its guidance scale.

:func:`tokenizer_main` (``hart-edu demo --tokenizer``): the hybrid tokenizer on a photo and on
held-out scenes, side by side. Columns: the original, its discrete-only reconstruction (the indices alone) and its hybrid
reconstruction (indices + the continuous residual), each with its PSNR. The tokenizer is
the tiny one trained here on the captioned scenes: on held-out scenes the residual adds about
3 dB; the photo is far outside what it has seen (flat shapes only), and neither path renders
it: a tokenizer only reconstructs the kind of images it was trained on.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hart_edu.data.scenes import SceneDataset, check_image
from hart_edu.hybrid_tokenizer import HybridTokenizer
from hart_edu.images import load_image, psnr, to_pil
from hart_edu.paths import TINY_WEIGHTS, photo_path, tiny_weights

DEMO_SCENE_SEED = 11  # which held-out captions the demo draws (a fixed, arbitrary pick)


@torch.no_grad()
def reconstruction_figure(tok: HybridTokenizer, img_B3HW: torch.Tensor, labels: list[str], out: Path):
    """Save the original | discrete-only | hybrid grid as a PNG; return the PSNRs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    enc = tok.encode(img_B3HW)
    rec_d = tok.decode(enc.fhat_discrete_BChw)
    rec_h = tok.decode(enc.fhat_full_BChw)
    psnr_d, psnr_h = psnr(rec_d, img_B3HW), psnr(rec_h, img_B3HW)
    B = img_B3HW.shape[0]
    fig, axes = plt.subplots(B, 3, figsize=(7.5, 2.6 * B))
    for b in range(B):
        for c, (img, title) in enumerate([
            (img_B3HW[b], f"{labels[b]}"),
            (rec_d[b], f"discrete only: {psnr_d[b]:.1f} dB"),
            (rec_h[b], f"hybrid: {psnr_h[b]:.1f} dB"),
        ]):
            axes[b, c].imshow(to_pil(img))
            axes[b, c].set_title(title, fontsize=9)
            axes[b, c].axis("off")
    fig.suptitle("HART's hybrid tokenizer: discrete tokens + continuous residual", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return psnr_d, psnr_h


def check_png_out(out: str | Path) -> Path:
    """The demo's ``--out``: a ``.png`` file name in an existing folder, checked before any
    model loads. A folder or a name without ``.png`` is refused (matplotlib would have written
    ``NAME.png`` beside what was printed)."""
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder: give the PNG file to write, e.g. {path / 'demo.png'}")
    if path.suffix.lower() != ".png":
        raise ValueError(f"--out {path} does not end in .png: the demo writes one PNG image, e.g. {path}.png")
    if not path.parent.is_dir():
        raise ValueError(f"--out {path}: folder {path.parent} does not exist: create it first")
    from hart_edu.cli import check_writable

    check_writable(path.parent, "--out", path)
    return path


def tokenizer_main(out: str | Path = "demo.png", weights: str | Path | None = None, n_scenes: int = 3) -> int:
    out = check_png_out(out)
    tok = HybridTokenizer.from_pretrained(weights or tiny_weights("tokenizer"))
    size = tok.config.image_size
    scenes = SceneDataset("heldout", size=size, length=n_scenes, seed=7)
    imgs = [load_image(photo_path(), size)] + [scenes[i].image_3HW for i in range(n_scenes)]
    labels = ["photo (never seen)"] + [f"held-out scene {i}" for i in range(n_scenes)]
    from hart_edu.cli import atomic_output

    with atomic_output(out) as tmp:  # the whole PNG or none (also on Ctrl-C)
        psnr_d, psnr_h = reconstruction_figure(tok, torch.stack(imgs), labels, tmp)
    for label, d, h in zip(labels, psnr_d, psnr_h):
        print(f"{label:<22} PSNR discrete-only {d:5.2f} dB   hybrid {h:5.2f} dB   (+{h - d:.2f} dB)")
    print(f"wrote {out}")
    return 0


def demo_scenes(n: int) -> list:
    """The first ``n`` held-out scenes with distinct captions (seed :data:`DEMO_SCENE_SEED`)."""
    dataset = SceneDataset("heldout", length=50 * n, seed=DEMO_SCENE_SEED)
    by_caption = {}
    for i in range(len(dataset)):
        by_caption.setdefault(dataset.scene(i).caption, dataset.scene(i))
        if len(by_caption) == n:
            break
    return list(by_caption.values())


def main(out: str | Path = "demo.png", weights: str | Path | None = None, n: int = 12, seed: int = 0,
         cfg: float | None = None, record: str | Path | None = None) -> int:
    """Text to image with the tiny HART: a grid of ``n`` held-out captions, per-image time, and
    how clean each background is (:func:`hart_edu.data.scenes.clean_background_share`).
    ``cfg`` None: the guidance scale of the tree's generation_config (as every other setting).
    ``record``: also write what was measured to this JSON file (with the CPU it ran on)."""
    import json
    import time

    from hart_edu.cpu_dtype import cpu_features
    from hart_edu.data.scenes import BACKGROUND_TOLERANCE, clean_background_share

    from hart_edu.cli import atomic_output, check_output_file
    from hart_edu.eval import pipeline_generator, save_grid
    from hart_edu.generation_config import GENERATION_CONFIG
    from hart_edu.sampler import HARTPipeline

    out = check_png_out(out)
    if record is not None:
        record = check_output_file(record, "--record")
    if n < 1:
        raise ValueError(f"the demo needs at least one image, got n={n}")
    root = Path(weights if weights is not None else TINY_WEIGHTS)
    pipe = HARTPipeline.from_pretrained(root)
    scenes = demo_scenes(n)
    settings = pipe.generation_config.override(cfg=cfg)
    generate = pipeline_generator(pipe, settings, torch.Generator().manual_seed(seed))
    source = (f"{root / GENERATION_CONFIG}" if (root / GENERATION_CONFIG).is_file()
              else f"the official defaults: {root} has no {GENERATION_CONFIG}")
    print(f"sampling: cfg {settings.cfg:g}{' (--cfg)' if cfg is not None else ''}, top-k {settings.top_k or 'off'}, "
          f"top-p {settings.top_p or 'off'}, more_smooth {settings.more_smooth}, greedy {settings.greedy}, "
          f"residual {settings.residual}, diffusion temperature {settings.diffusion_temperature:g} ({source})")
    generate(scenes[:1])  # warm-up: first-call allocations are not what a user waits for
    images, seconds = [], []
    for scene in scenes:
        t0 = time.perf_counter()
        images.append(generate([scene]))
        seconds.append(time.perf_counter() - t0)
    images_B3HW = torch.cat(images)
    correct = [check_image(img, scene).correct for img, scene in zip(images_B3HW, scenes)]
    clean = [clean_background_share(img, scene) for img, scene in zip(images_B3HW, scenes)]
    with atomic_output(out) as tmp:  # the whole PNG or none (also on Ctrl-C)
        save_grid(images_B3HW, scenes, tmp, count=n, columns=min(n, 6))
    for scene, ok, t, c in zip(scenes, correct, seconds, clean):
        print(f"{'ok  ' if ok else 'MISS'} {t:5.3f} s  background {c:6.1%} clean  {scene.caption}")
    median = sorted(seconds)[len(seconds) // 2]
    threads = torch.get_num_threads()
    print(f"demo: {n} images of {images_B3HW.shape[-1]}px, batch 1, {threads} CPU thread(s): "
          f"median {median:.3f} s per image (min {min(seconds):.3f}, max {max(seconds):.3f}); "
          f"{sum(correct)}/{n} follow every word of their caption (automatic check); backgrounds "
          f"{sum(clean) / n:.1%} clean on average (worst {min(clean):.1%}: pixels within RGB distance "
          f"{BACKGROUND_TOLERANCE:g} of the named colour)")
    print(f"wrote {out}")
    if record is not None:
        measured = {
            "n": n, "seed": seed, "settings": settings.to_dict(), "correct": sum(correct),
            "median_seconds_per_image": round(median, 4), "threads": threads, "cpu": cpu_features().as_dict(),
            "clean_background_mean": sum(clean) / n, "clean_background_min": min(clean),
            "background_tolerance": BACKGROUND_TOLERANCE,
            "images": [{"caption": s.caption, "correct": ok, "clean_background": c, "seconds": round(t, 4)}
                       for s, ok, c, t in zip(scenes, correct, clean, seconds)]}
        with atomic_output(record) as tmp:
            tmp.write_text(json.dumps(measured, indent=2) + "\n")
        print(f"wrote {record}")
    return 0
