"""``hart-edu app``: a small web UI for HART (gradio), in the spirit of the official app.py.

A prompt, a seed (kept, typed, or drawn anew with "Randomize seed"), the guidance scale,
smoothing (``more_smooth``), the residual diffusion on or off and the number of images; the
gallery shows the images and, on request, how each one builds up scale by scale. The form
starts at the weights' sampling defaults (the tree's ``generation_config.json``, else the
official ones); the settings the page does not show (top-k, top-p, greedy, the diffusion
temperature) are always the weights' defaults.

The work is split in two so that it can be tested without a browser:

* :class:`Studio` holds the loaded models and turns one request into images (plain Python,
  no gradio). Bad input raises a ValueError with one line naming the offending field.
* :func:`build_ui` wraps a studio in gradio Blocks; a ValueError becomes a ``gr.Error``, so
  the page (and a gradio_client caller) gets that line, never a traceback.

gradio is an optional dependency: ``pip install 'hart-edu[app]'``.
"""

from __future__ import annotations

import math
import numbers
import secrets
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Studio", "StudioResult", "scale_progression", "build_ui", "check_listen_address", "add_parser", "run"]

MAX_SEED = 2**31 - 1  # the official app's seed range (int32)
MAX_APP_IMAGES = 8  # images per request in the app
INSTALL_HINT = "pip install 'hart-edu[app]'  (or: pip install 'gradio>=5.9' gradio_client)"


# --------------------------------------------------------------------------------------
# The models behind the page
# --------------------------------------------------------------------------------------


@dataclass
class StudioResult:
    """One request's answer: ``gallery`` holds (PIL image, caption) pairs; ``seed`` is the seed
    used; ``notes`` are one-line remarks (a truncated prompt, what the scale panels show)."""

    gallery: list[tuple[Any, str]]
    seed: int
    notes: list[str] = field(default_factory=list)


def scale_progression(pipe, out) -> list[Any]:
    """The codes of the first k scales decoded, for k = 1..S: ``S`` float image batches
    (B, 3, H, W) in [0, 1].

    f_hat_k = sum_{si < k} Phi_si(up(e(idx_si))), composed as inference does (no Phi at the
    hybrid last scale), then decoded. These are the *sampled codes*: with smoothing the model
    adds Gumbel-softmax blends of codes instead, and the residual adds the diffusion head's
    output, so only the final image shows those; without both, panel S equals the final image.
    """
    import torch

    with torch.no_grad():
        return [pipe.decode(f_hat_BChw) for f_hat_BChw in pipe.tokenizer.quantizer.running_fhat(out.indices)]


def _whole(value: Any, name: str, low: int, high: int) -> int:
    """An integer field of the form (gradio sends numbers as floats, or None when empty)."""
    if value is None or isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a whole number in [{low}, {high}], got {value!r}")
    if not math.isfinite(value) or value != int(value) or not low <= int(value) <= high:
        raise ValueError(f"{name} must be a whole number in [{low}, {high}], got {value!r}")
    return int(value)


class Studio:
    """A loaded :class:`~hart_edu.sampler.HARTPipeline` (and optionally a
    :class:`~hart_edu.safety.SafetyChecker`), answering the app's requests."""

    def __init__(self, pipe, safety_checker=None) -> None:
        self.pipe, self.safety_checker = pipe, safety_checker

    @classmethod
    def load(cls, weights: str | Path, text_encoder: str | Path | None = None,
             safety_checker: str | Path | None = None, safety_threshold: float = 0.5) -> "Studio":
        from hart_edu.sampler import HARTPipeline

        checker = None
        if safety_checker is not None:
            from hart_edu.safety import SafetyChecker

            checker = SafetyChecker.from_pretrained(safety_checker, safety_threshold)
        with warnings.catch_warnings():  # e.g. the system prompt cut to the tiny model's length
            warnings.simplefilter("ignore")
            pipe = HARTPipeline.from_pretrained(weights, text_encoder=text_encoder)
        return cls(pipe, checker)

    @property
    def image_size(self) -> int:
        return self.pipe.tokenizer.config.image_size

    def generate(self, prompt: Any, seed: Any = 1, randomize_seed: bool = False, cfg: Any = None,
                 more_smooth: bool | None = None, residual: bool | None = None, num_images: Any = 1,
                 show_scales: bool = False) -> StudioResult:
        """Images for one prompt; a ValueError with one line for any bad field. ``cfg``,
        ``more_smooth``, ``residual`` left as None: the pipeline's ``generation_config``."""
        from hart_edu.limits import check_prompt_texts
        from hart_edu.sampler import check_sample_request, images_to_uint8, uint8_to_pil

        if not isinstance(prompt, str):
            raise ValueError(f"the prompt must be text, got {type(prompt).__name__}")
        check_prompt_texts([prompt])
        n = _whole(num_images, "number of images", 1, MAX_APP_IMAGES)
        seed = secrets.randbelow(MAX_SEED + 1) if randomize_seed else _whole(seed, "seed", 0, MAX_SEED)
        defaults = self.pipe.generation_config
        cfg = defaults.cfg if cfg is None else cfg
        if isinstance(cfg, bool) or not isinstance(cfg, numbers.Real):
            raise ValueError(f"the guidance scale (CFG) must be a number, got {cfg!r}")
        more_smooth = defaults.more_smooth if more_smooth is None else bool(more_smooth)
        residual = defaults.residual if residual is None else bool(residual)
        request = check_sample_request([prompt], float(cfg), defaults.top_k, defaults.top_p, n)
        if self.safety_checker is not None:
            self.safety_checker.require_safe(request.prompts)

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = self.pipe(request.prompts, cfg=request.cfg, more_smooth=more_smooth, seed=seed,
                            residual=residual, num_images_per_prompt=n, progress=False)
        notes = list(dict.fromkeys(" ".join(str(w.message).split()) for w in caught))

        gallery: list[tuple[Any, str]] = []
        if show_scales:
            pns = self.pipe.transformer.config.patch_nums
            panels = [images_to_uint8(p) for p in scale_progression(self.pipe, out)]
            for b in range(n):
                for si, px_B3HW in enumerate(panels):
                    caption = f"image {b + 1}: scales 1-{si + 1} ({pns[si]}x{pns[si]}), codes only"
                    gallery.append((uint8_to_pil(px_B3HW[b]), caption))
                gallery.append((out.images[b], f"image {b + 1}: final"))
            notes.append("scale panels decode the sampled codes of the first k scales; smoothing "
                         "and the residual show only in the final image")
        else:
            gallery = [(image, f"image {b + 1}, seed {seed}") for b, image in enumerate(out.images)]
        return StudioResult(gallery, seed, notes)


# --------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------


def build_ui(studio: Studio):
    """gradio Blocks around ``studio``; the generate endpoint is ``/generate``."""
    import gradio as gr

    size = studio.image_size
    defaults = studio.pipe.generation_config  # the form's initial values
    description = (
        "# HART (hart_edu)\n"
        f"Text to image, {size}x{size}, on {studio.pipe.device}. Prompts are used as typed"
        + (" and checked by a safety model first: an unsafe prompt is refused, not replaced."
           if studio.safety_checker is not None else ".")
    )

    def generate(prompt, seed, randomize_seed, cfg, more_smooth, residual, num_images, show_scales):
        try:
            result = studio.generate(prompt, seed, randomize_seed, cfg, more_smooth, residual, num_images,
                                     show_scales)
        except (ValueError, OSError) as err:
            # expected input errors: the message for the page, no traceback in the server log
            raise gr.Error(" ".join(str(err).split()), print_exception=False) from None
        status = f"seed {result.seed}" + "".join(f"\n\n{note}" for note in result.notes)
        return result.gallery, result.seed, status

    with gr.Blocks(title="HART (hart_edu)") as demo:
        gr.Markdown(description)
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", placeholder="Describe an image", max_lines=3, scale=4)
            run_button = gr.Button("Generate", variant="primary", scale=1)
        gallery = gr.Gallery(label="Images", columns=4, object_fit="contain", height="auto", format="png")
        status = gr.Markdown()
        with gr.Accordion("Options", open=True):
            with gr.Row():
                seed = gr.Number(label="Seed", value=1, precision=0, minimum=0, maximum=MAX_SEED)
                randomize_seed = gr.Checkbox(label="Randomize seed", value=False)
                dice = gr.Button("New seed", scale=0)
            with gr.Row():
                cfg = gr.Slider(label="Guidance scale (CFG)", minimum=0.0, maximum=max(20.0, defaults.cfg), step=0.1,
                                value=defaults.cfg)
                num_images = gr.Slider(label="Number of images", minimum=1, maximum=MAX_APP_IMAGES, step=1,
                                       value=1)
            with gr.Row():
                more_smooth = gr.Checkbox(label="Smoothing (more_smooth)", value=defaults.more_smooth)
                residual = gr.Checkbox(label="Residual diffusion", value=defaults.residual)
                show_scales = gr.Checkbox(label="Show scale-by-scale progression", value=False)

        dice.click(lambda: secrets.randbelow(MAX_SEED + 1), inputs=None, outputs=seed, api_name="new_seed")
        gr.on(
            triggers=[run_button.click, prompt.submit],
            fn=generate,
            inputs=[prompt, seed, randomize_seed, cfg, more_smooth, residual, num_images, show_scales],
            outputs=[gallery, seed, status],
            api_name="generate",
        )
    return demo


# --------------------------------------------------------------------------------------
# hart-edu app
# --------------------------------------------------------------------------------------


def add_parser(sub) -> None:
    from hart_edu.safety import add_safety_arguments

    app = sub.add_parser("app", help="a web UI (gradio): prompt, seed, CFG, scale-by-scale gallery",
                         description="Serve a HART model in the browser (needs " + INSTALL_HINT + ").")
    app.add_argument("--weights", type=Path, default=None,
                     help="a HART tree with tokenizer/ and llm/ (default: the repository's weights/tiny)")
    app.add_argument("--text-encoder", type=Path, default=None,
                     help="the text encoder folder (default: the tree's)")
    app.add_argument("--host", default="127.0.0.1",
                     help="address to listen on: 0.0.0.0 for every network interface (checked before the "
                          "models load; default: 127.0.0.1)")
    app.add_argument("--port", type=int, default=7860, help="port, free on --host (default: 7860)")
    add_safety_arguments(app)
    app.set_defaults(run=run)


def check_listen_address(host: str, port: int) -> None:
    """Raise a ValueError with one line unless the app can listen on ``host``:``port``: the host
    must be an IP address or a name this machine resolves, be one of its own addresses, and the
    port must be free there. Checked by binding a socket once (and closing it) before any model
    loads; gradio then binds it for real (a port taken in between is still reported by gradio)."""
    import errno
    import socket

    if ":" in host:  # gradio builds http://HOST:PORT/ without brackets, and fails on an IPv6 literal
        raise ValueError(f"--host {host} is an IPv6 address, which the app (gradio) cannot serve on: use an "
                         f"IPv4 address such as 127.0.0.1 or 0.0.0.0, or a name such as localhost")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError, OSError):
        raise ValueError(f"--host {host!r} is not a valid IP address or a name this machine can resolve: use "
                         f"e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every network interface)") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            probe.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ValueError(f"--port {port} is already in use on {host}: choose another port") from None
            if err.errno == errno.EADDRNOTAVAIL:
                raise ValueError(f"--host {host} is not an address of this machine: use e.g. 127.0.0.1 "
                                 f"(this machine only) or 0.0.0.0 (every network interface)") from None
            if err.errno == errno.EACCES:
                raise ValueError(f"--port {port} on {host} needs privileges here: choose a port above 1023") from None
            raise ValueError(f"cannot listen on --host {host} --port {port}: {err.strerror or err}") from None


def run(args) -> int:
    from hart_edu.paths import TINY_WEIGHTS

    try:
        import gradio  # noqa: F401
    except ImportError:
        print(f"hart-edu app: error: the app needs gradio, which is not installed: {INSTALL_HINT}",
              file=sys.stderr)
        return 2
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port {args.port} must be in [1, 65535]")
    check_listen_address(args.host, args.port)  # before the models load
    weights = args.weights if args.weights is not None else TINY_WEIGHTS
    try:
        studio = Studio.load(weights, args.text_encoder, args.safety_checker, args.safety_threshold)
    except FileNotFoundError as err:
        if args.weights is None:
            raise FileNotFoundError(f"{err} (the default weights are {TINY_WEIGHTS}: pass --weights ROOT)") from err
        raise
    build_ui(studio).queue(max_size=20).launch(server_name=args.host, server_port=args.port)
    return 0
