"""The call arguments a golden fixture's descriptions quote (``cfg=4.5``, ``temperature=0.8``).

Each golden tensor's description in ``tiny-golden.json`` states the official call that made
it, arguments included, e.g. ``ema.diffloss.sample(diff.sample.z, temperature=1.0, cfg=4.5)``.
The producers read every call argument from there, never from a constant of their own, so a
fixture recorded with other arguments is replayed with those arguments.

:func:`quoted_argument` reads one ``key=VALUE`` from one description, optionally only inside
the argument list of a named call (a description can quote two calls that both have a ``cfg``);
:func:`shared_argument` reads it from the descriptions of one call's outputs, which must agree.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")

_VALUE = r"('[^']*'|\"[^\"]*\"|[^,;\s()]+)"  # a quoted string, or up to , ; ( ) or a space


def _call_arguments(desc: str, call: str) -> str:
    """The text between ``call(`` and its matching ``)`` (nested parentheses included)."""
    start = desc.find(f"{call}(")
    if start < 0:
        raise ValueError(f"the description quotes no call {call}(...): {desc!r}")
    depth, begin = 0, start + len(call)
    for i in range(begin, len(desc)):
        depth += {"(": 1, ")": -1}.get(desc[i], 0)
        if depth == 0:
            return desc[begin + 1:i]
    raise ValueError(f"unbalanced parentheses after {call}( in the description: {desc!r}")


def _convert(value: str, kind: Callable[[str], T]) -> T:
    value = value.strip("'\"")
    if kind is bool:
        if value not in ("True", "False"):
            raise ValueError(f"{value!r} is not True or False")
        return value == "True"  # type: ignore[return-value]
    return kind(value)


def quoted_argument(desc: str, key: str, kind: Callable[[str], T], call: str | None = None) -> T:
    """The value of ``key=VALUE`` in ``desc`` (inside ``call(...)`` when given), as ``kind``.

    ``kind`` is ``float``, ``int``, ``bool`` (``True``/``False``) or ``str``; quotes around the
    value are dropped (``timestep_respacing='8'`` -> 8). Raises ``ValueError`` when the key is
    not quoted, or quoted with two different values.
    """
    text = desc if call is None else _call_arguments(desc, call)
    values = set(re.findall(rf"(?<![\w.]){re.escape(key)}={_VALUE}", text))
    where = f" in {call}(...)" if call else ""
    if len(values) != 1:
        found = "no value" if not values else f"values {sorted(values)}"
        raise ValueError(f"the fixture description quotes {found} for {key}={where}: {desc!r}")
    return _convert(values.pop(), kind)


def shared_argument(descs: Iterable[str], key: str, kind: Callable[[str], T], call: str | None = None,
                    required: bool = True) -> T | None:
    """The one value of ``key=`` that the descriptions of one call's outputs quote.

    Descriptions that do not quote it (or not the call) are skipped, as the fixture states a
    call's arguments in full only in some of them; all that quote it must agree. When none
    does: ``ValueError``, or None with ``required=False`` (the call ran with its default).
    """
    descs = list(descs)
    values = set()
    for desc in descs:
        try:
            values.add(quoted_argument(desc, key, kind, call))
        except ValueError as err:
            if f"{key}=" in (desc if call is None or f"{call}(" not in desc else _call_arguments(desc, call)):
                raise err  # quoted, but not readably: never skip that
    if not values and not required:
        return None
    if len(values) != 1:
        where = f" in {call}(...)" if call else ""
        found = f"{len(values)} different values {sorted(values, key=str)}" if values else "no value"
        raise ValueError(f"the fixture's {len(descs)} descriptions quote {found} for {key}={where}")
    return values.pop()
