"""Timing one :class:`~hart_edu.sampler.HARTPipeline` call phase by phase: the one mechanism
behind ``hart-edu profile`` (many runs, per kernel backend, CUDA events) and ``hart-edu
run-real`` (one 1024px image on a CPU, with CPU time and peak memory per phase).

Nothing in the measured code changes: :class:`PhaseTimer` registers forward hooks on the
pipeline's public parts for the length of a ``with`` block and records a *mark* at each
boundary it sees::

    mark            hook
    call start      entering the block
    text start/end  pipe.text_encoder.model, before / after its forward
    scale start     pipe.transformer.blocks[0], before its forward: a scale's tokens enter
                    the first block (once per scale; the first S calls)
    diffusion start the first forward inside pipe.transformer.diffloss (residual only)
    decode start/end pipe.tokenizer.decoder, before / after its forward
    call end        leaving the block

and :meth:`PhaseTimer.phases` cuts the call into consecutive phases that add up to it::

    before text         the request's checks, the prompts' tokenization
    text encoding       the text encoder
    scale pxp           one transformer stage: blocks, logits, guidance, the draw and the
                        f_hat update that makes the next scale's input (scale 1x1 also
                        builds the condition; the last scale runs up to the diffusion)
    residual diffusion  the diffusion head's denoising steps on the last scale's tokens
    VAE decode          the tokenizer's decoder
    after decode        the images as uint8 / PIL, the output

A mark's time stamp comes from a :class:`Clock`: CUDA events recorded on the stream (no
synchronisation inside the call, so the phases do not perturb each other) or
``time.perf_counter``. ``on_mark(name)``, when given, runs at every mark and its return value
is kept with the mark (run-real reads and resets the peak resident memory there).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Clock", "Mark", "PhaseTimer", "phase_names"]


class Clock:
    """Time stamps on ``device``'s timeline: CUDA events on the current stream, or
    ``time.perf_counter`` on the CPU. ``seconds(a, b)`` is valid after :meth:`finish`."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def finish(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def seconds(self, a: Any, b: Any) -> float:
        return a.elapsed_time(b) / 1e3 if self.cuda else b - a


def phase_names(patch_nums: tuple[int, ...] | list[int], residual: bool = True) -> list[str]:
    """The phases of one pipeline call, in order (see the module docstring)."""
    return (["before text", "text encoding"] + [f"scale {p}x{p}" for p in patch_nums]
            + (["residual diffusion"] if residual else []) + ["VAE decode", "after decode"])


@dataclass(frozen=True)
class Mark:
    name: str
    stamp: Any  # the clock's time stamp
    probe: Any = None  # what on_mark(name) returned


class PhaseTimer:
    """``with PhaseTimer(pipe, clock) as timer: pipe(...)``, then ``timer.seconds()``."""

    def __init__(self, pipe: Any, clock: Clock, on_mark: Callable[[str], Any] | None = None):
        self.pipe, self.clock, self.on_mark = pipe, clock, on_mark
        self.marks: list[Mark] = []
        self.diffusion_calls = 0  # calls of the diffusion head's first module: its denoiser steps
        self._hooks: list[Any] = []

    def mark(self, name: str) -> None:
        stamp = self.clock.mark()
        self.marks.append(Mark(name, stamp, None if self.on_mark is None else self.on_mark(name)))

    def __enter__(self) -> "PhaseTimer":
        pipe, scales = self.pipe, len(self.pipe.transformer.config.patch_nums)
        self.marks, self.diffusion_calls = [], 0
        first_diffusion_module: list[torch.nn.Module] = []

        def scale_start(*_):
            if sum(m.name == "scale start" for m in self.marks) < scales:
                self.mark("scale start")

        def diffusion_pre(module, *_):
            if not first_diffusion_module:
                first_diffusion_module.append(module)
                self.mark("diffusion start")
            if module is first_diffusion_module[0]:
                self.diffusion_calls += 1

        text, decoder = pipe.text_encoder.model, pipe.tokenizer.decoder
        self._hooks = [
            text.register_forward_pre_hook(lambda *_: self.mark("text start")),
            text.register_forward_hook(lambda *_: self.mark("text end")),
            pipe.transformer.blocks[0].register_forward_pre_hook(scale_start),
            decoder.register_forward_pre_hook(lambda *_: self.mark("decode start")),
            decoder.register_forward_hook(lambda *_: self.mark("decode end")),
        ]
        self._hooks += [m.register_forward_pre_hook(diffusion_pre) for m in pipe.transformer.diffloss.modules()]
        self.clock.start()
        self.mark("call start")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.mark("call end")
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self.clock.finish()

    def phases(self) -> dict[str, tuple[int, int]]:
        """Phase name -> (index of its opening mark, index of its closing mark) in :attr:`marks`."""
        names = [m.name for m in self.marks]
        scales = self.pipe.transformer.config.patch_nums
        starts = [i for i, n in enumerate(names) if n == "scale start"]
        need = ("call start", "text start", "text end", "decode start", "decode end", "call end")
        if len(starts) != len(scales) or any(n not in names for n in need):
            raise RuntimeError(f"expected {len(scales)} scale starts and one text encoding and VAE decode, "
                               f"saw the marks {names}")
        residual = "diffusion start" in names
        after_scales = names.index("diffusion start" if residual else "decode start")
        bounds = [names.index("text end")] + starts[1:] + [after_scales]
        out = {"before text": (0, names.index("text start")),
               "text encoding": (names.index("text start"), names.index("text end"))}
        for si, p in enumerate(scales):
            out[f"scale {p}x{p}"] = (bounds[si], bounds[si + 1])
        if residual:
            out["residual diffusion"] = (after_scales, names.index("decode start"))
        out["VAE decode"] = (names.index("decode start"), names.index("decode end"))
        out["after decode"] = (names.index("decode end"), len(names) - 1)
        return out

    def seconds(self) -> dict[str, float]:
        """Seconds per phase (in order; they add up to the call). After the block."""
        return {name: self.clock.seconds(self.marks[i].stamp, self.marks[j].stamp)
                for name, (i, j) in self.phases().items()}
