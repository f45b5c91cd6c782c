"""Sampling defaults that belong to the weights: ``ROOT/generation_config.json``.

In the spirit of transformers' ``generation_config.json``: a HART tree (``tokenizer/``,
``llm/``, ...) may carry the sampling settings its model was tuned for. A
:class:`~hart_edu.sampler.HARTPipeline` loaded from the tree uses them whenever a call leaves
an argument out; an explicit argument always wins. A tree without the file (the released
official model) gets :class:`GenerationConfig`'s defaults, which are sample.py's.

The file is one JSON object; every key is optional (a missing one keeps the official default)::

    {
      "cfg": 4.5,                    # guidance scale, a number in [0, MAX_CFG]
      "top_k": null,                 # null or 0: off; else a positive integer
      "top_p": null,                 # null or 0: off; else in (0, 1]
      "more_smooth": true,           # Gumbel-softmax blends of codes
      "greedy": false,               # argmax codes
      "residual": true,              # the diffusion head's continuous residual
      "diffusion_temperature": 1.0,  # a positive finite number
      "note": "...",                 # free text: where the values came from
      "chosen_on": "..."             # free text: what they were chosen on (data, date)
    }

(JSON has no comments: they are here for the reader.) A ``top_k`` here is still replaced by
the official 600/300 while the quirk ``OfficialQuirks.top_k_override`` is on (the pipeline's
warning says so). Reading is strict: an unknown key, a
wrong type or an out-of-range value is a ValueError naming the key and the file. The checks
of ``cfg``, ``top_k``, ``top_p`` and ``diffusion_temperature`` are the ones the pipeline runs
on call arguments (:func:`hart_edu.sampler.check_sample_request` uses them too).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "GENERATION_CONFIG",
    "NOTE_KEYS",
    "MAX_CFG",
    "GenerationConfig",
    "read_generation_config",
    "write_generation_config",
    "check_cfg",
    "check_top_k",
    "check_top_p",
    "check_flag",
    "check_diffusion_temperature",
]

GENERATION_CONFIG = "generation_config.json"  # its name in a weights tree
NOTE_KEYS = ("note", "chosen_on")  # the only other keys the file may hold: free text
MAX_CFG = 50.0  # a sanity bound: sample.py uses 4.5; far beyond, guidance only amplifies noise


# --------------------------------------------------------------------------------------
# One check per setting (shared by the file, the pipeline's call and the command line)
# --------------------------------------------------------------------------------------


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_cfg(cfg: Any) -> float:
    """A finite guidance scale in [0, MAX_CFG]."""
    if not _is_real(cfg) or not math.isfinite(cfg):
        raise ValueError(f"cfg={cfg!r} must be a finite number in [0, {MAX_CFG:g}]")
    if not 0.0 <= cfg <= MAX_CFG:
        raise ValueError(f"cfg={cfg!r} is out of range: use a value in [0, {MAX_CFG:g}] (sample.py uses 4.5)")
    return float(cfg)


def check_top_k(top_k: Any) -> int:
    """None or 0 (off) or a positive integer -> the int (0 = off, SamplingSettings' convention)."""
    if top_k is not None and (not _is_int(top_k) or top_k < 0):
        raise ValueError(f"top_k={top_k!r} must be None, 0 (off) or a positive integer")
    return int(top_k or 0)


def check_top_p(top_p: Any) -> float:
    """None or 0 (off) or a number in (0, 1] -> the float (0.0 = off)."""
    if top_p is not None and (not _is_real(top_p) or not 0.0 <= top_p <= 1.0):
        raise ValueError(f"top_p={top_p!r} must be None or 0 (off), or in (0, 1]")
    return float(top_p or 0.0)


def check_flag(value: Any, name: str) -> bool:
    """True or False, nothing else (not 0/1, not "true")."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be True or False")
    return value


def check_diffusion_temperature(temperature: Any) -> float:
    """A positive finite number."""
    if not _is_real(temperature) or not 0 < temperature < math.inf:
        raise ValueError(f"diffusion_temperature={temperature!r} must be a positive finite number")
    return float(temperature)


# --------------------------------------------------------------------------------------
# The settings
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationConfig:
    """The sampling defaults of a weights tree; ``GenerationConfig()`` is sample.py's (the
    official model's). Validated on construction; "off" is stored as None for ``top_k`` and
    ``top_p`` (0 is accepted and becomes None), numbers as floats."""

    cfg: float = 4.5
    top_k: int | None = None
    top_p: float | None = None
    more_smooth: bool = True
    greedy: bool = False
    residual: bool = True
    diffusion_temperature: float = 1.0

    def __post_init__(self) -> None:
        normalised = {
            "cfg": check_cfg(self.cfg),
            "top_k": check_top_k(self.top_k) or None,
            "top_p": check_top_p(self.top_p) or None,
            "more_smooth": check_flag(self.more_smooth, "more_smooth"),
            "greedy": check_flag(self.greedy, "greedy"),
            "residual": check_flag(self.residual, "residual"),
            "diffusion_temperature": check_diffusion_temperature(self.diffusion_temperature),
        }
        for name, value in normalised.items():
            object.__setattr__(self, name, value)

    def override(self, **explicit: Any) -> "GenerationConfig":
        """A copy with every argument that is not None put in (None: keep this config's value).
        Unknown names are a TypeError, as for a function call."""
        unknown = sorted(set(explicit) - set(_FIELDS))
        if unknown:
            raise TypeError(f"GenerationConfig has no field(s) {', '.join(unknown)}")
        return dataclasses.replace(self, **{k: v for k, v in explicit.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = tuple(f.name for f in dataclasses.fields(GenerationConfig))


# --------------------------------------------------------------------------------------
# The file
# --------------------------------------------------------------------------------------


def read_generation_config(root: str | Path) -> GenerationConfig:
    """``root/generation_config.json`` as a :class:`GenerationConfig`, or the official
    defaults when the tree has no such file. A bad file is a ValueError naming the file and
    the key."""
    path = Path(root) / GENERATION_CONFIG
    if not path.is_file():
        return GenerationConfig()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid UTF-8 JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold one JSON object (key: value), not a {type(data).__name__}")
    unknown = sorted(set(data) - set(_FIELDS) - set(NOTE_KEYS))
    if unknown:
        raise ValueError(
            f"{path} has unknown key(s) {', '.join(map(repr, unknown))}: allowed are "
            f"{', '.join(_FIELDS + NOTE_KEYS)}"
        )
    for key in NOTE_KEYS:
        if key in data and not isinstance(data[key], str):
            raise ValueError(f"{path}: {key}={data[key]!r} must be a string (free text)")
    values = {k: v for k, v in data.items() if k in _FIELDS}
    for key, value in values.items():  # one at a time, so the message names the key
        try:
            GenerationConfig(**{key: value})
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    return GenerationConfig(**values)


def write_generation_config(root: str | Path, config: GenerationConfig, note: str | None = None,
                            chosen_on: str | None = None) -> Path:
    """Write ``config`` (every field) and the optional free-text ``note`` / ``chosen_on`` to
    ``root/generation_config.json`` (sorted keys, indent 2, a trailing newline; replaced in one
    step). Returns the file's path."""
    if not isinstance(config, GenerationConfig):
        raise ValueError(f"config must be a GenerationConfig, got {type(config).__name__}")
    data = config.to_dict()
    for key, text in (("note", note), ("chosen_on", chosen_on)):
        if text is not None:
            if not isinstance(text, str):
                raise ValueError(f"{key}={text!r} must be a string (free text)")
            data[key] = text
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"weights folder not found: {root}")
    path = root / GENERATION_CONFIG
    tmp = root / f".{GENERATION_CONFIG}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(data, sort_keys=True, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
