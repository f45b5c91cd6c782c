"""Training scripts: the tiny tokenizer (:mod:`.tokenizer`) and the tiny HART (:mod:`.transformer`).

Each script keeps its knobs in a ``TrainSettings`` dataclass; :func:`add_settings_arguments`
turns the fields into command-line flags (booleans get ``--x/--no-x``) and
:func:`settings_from_args` reads them back, so a field added to the dataclass is a flag at once.
Both scripts follow the learning-rate schedule :func:`warmup_cosine_lr` and write their reports
with :func:`write_report`.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import fields
from pathlib import Path
from typing import TypeVar

S = TypeVar("S")


def add_settings_arguments(parser: argparse.ArgumentParser, settings_cls: type) -> None:
    """One ``--field-name`` flag per dataclass field, with the field's default and type."""
    for f in fields(settings_cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            parser.add_argument(flag, type=type(default), default=default)


def settings_from_args(settings_cls: type[S], args: argparse.Namespace) -> S:
    return settings_cls(**{f.name: getattr(args, f.name) for f in fields(settings_cls)})


def warmup_cosine_lr(step: int, lr: float, warmup: int, steps: int) -> float:
    """The learning rate at ``step`` (0-based) of a ``steps``-step run: a linear warm-up over
    ``warmup`` steps, then a cosine decay to 10% of ``lr``::

        lr_t = lr * (t + 1) / W                                  for t < W
        lr_t = lr * (0.1 + 0.9 * (1 + cos(pi * p)) / 2),  p = (t - W) / max(1, T - W)   after
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def write_report(folder: Path, name: str, report: dict, history: list[dict]) -> None:
    """``folder/{name}_report.json`` (the run's summary) and ``folder/{name}_history.json`` (one
    entry per logged step), the files the README tables and the notebooks read."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}_report.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / f"{name}_history.json").write_text(json.dumps(history) + "\n")
