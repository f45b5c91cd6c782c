"""Training scripts: the tiny tokenizer (:mod:`.tokenizer`) and the tiny HART (:mod:`.transformer`).

Each script keeps its knobs in a ``TrainSettings`` dataclass; :func:`add_settings_arguments`
turns the fields into command-line flags (booleans get ``--x/--no-x``) and
:func:`settings_from_args` reads them back, so a field added to the dataclass is a flag at once.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
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
