"""Limits on what one ``hart-edu generate`` run or one app request may ask for.

:func:`hart_edu.sampler.check_sample_request` checks that the arguments make sense (types,
cfg in [0, 50], top-p in (0, 1], ...); this module adds the bounds a command line or a web
form needs on top, so that absurd input is refused in one line before a model is loaded:

* a prompt must hold some text (an empty or blank prompt is refused) and be valid UTF-8;
* prompt length: the text encoder reads at most ``max_length`` tokens (the transformer's
  ``context_token``: 300 for the released model, 20 for the tiny one). A longer prompt is
  *cut* to its first ``max_length`` tokens, as the official code does, and a warning says
  so. Far beyond any useful length (:data:`MAX_PROMPT_CHARS` characters) it is refused;
* one run makes at most :data:`MAX_IMAGES` images (prompts x images per prompt): the
  pipeline generates them as one batch;
* a prompt file is at most :data:`MAX_PROMPT_FILE_BYTES` bytes;
* ``--threads`` is between 1 and :func:`max_threads` (this machine's logical CPUs): more
  intra-op threads than CPUs only make them wait for each other, and a huge count made
  OpenMP crash (``run-real --threads 100000`` ended in a segmentation fault).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

__all__ = [
    "MAX_PROMPT_CHARS", "MAX_IMAGES", "MAX_PROMPT_FILE_BYTES", "check_prompt_texts", "check_image_count",
    "max_threads", "thread_count",
]

MAX_PROMPT_CHARS = 10_000  # ~8x what survives the released model's 300-token cut
MAX_IMAGES = 256  # images in one batch
MAX_PROMPT_FILE_BYTES = 1 << 20  # 1 MiB


def check_prompt_texts(prompts: Sequence[str]) -> list[str]:
    """Raise a ValueError naming the first empty, blank, over-long or not-UTF-8 prompt.

    Not UTF-8: a command-line argument whose bytes are not UTF-8 reaches Python with each bad
    byte as a lone surrogate (``surrogateescape``, e.g. byte 0xE9 as U+DCE9); the tokenizer
    would fail on it only after the models have loaded."""
    for i, prompt in enumerate(prompts):
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as err:
            bad = prompt[err.start]
            byte = f"byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"U+{ord(bad):04X}"
            raise ValueError(f"prompt {i} is not valid UTF-8 text ({byte} at character {err.start}): "
                             f"write it in UTF-8 (check the terminal's encoding)") from None
        if not prompt.strip():
            raise ValueError(f"prompt {i} is empty: describe the image to generate")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ValueError(
                f"prompt {i} has {len(prompt):,} characters, more than the limit of {MAX_PROMPT_CHARS:,} "
                f"(the text encoder reads only its first tokens anyway)")
    return list(prompts)


def check_image_count(num_prompts: int, num_images_per_prompt: int) -> int:
    """The number of images of one run; a ValueError when it is over :data:`MAX_IMAGES`."""
    total = num_prompts * num_images_per_prompt
    if total > MAX_IMAGES:
        raise ValueError(
            f"{num_prompts} prompt(s) x {num_images_per_prompt} image(s) = {total:,} images, more than "
            f"{MAX_IMAGES} in one run: ask for fewer")
    return total


def max_threads() -> int:
    """The most torch intra-op threads a command accepts: this machine's logical CPUs."""
    return os.cpu_count() or 1


def thread_count(text: str) -> int:
    """argparse ``type=`` for ``--threads``: an integer in [1, :func:`max_threads`], else one
    argparse error line (exit status 2) before anything is loaded."""
    try:
        threads = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not 1 <= threads <= max_threads():
        raise argparse.ArgumentTypeError(
            f"{threads} threads: use 1 to {max_threads()} (this machine's logical CPUs)")
    return threads
