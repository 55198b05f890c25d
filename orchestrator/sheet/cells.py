"""Cell values: the converters that turn one cell into text, a number, a choice or a list,
each raising ValueError with a message that says what to write instead.

A converter takes (value, column) so its message can name the column; `Row.get` turns the
ValueError into a problem at the cell.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from .. import spec

__all__ = [
    "NUMBER",
    "choice",
    "identifier",
    "names",
    "number",
    "one_of",
    "show",
    "text",
    "whole",
]

NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def show(value: object) -> str:
    """A cell value quoted for a message."""
    return repr(value) if isinstance(value, str) else repr(text(value))


def text(value: object, column: str = "") -> str:
    """The cell as text: whole floats without .0, numbers as the spec writes them, times in ISO."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return spec.format_value(value)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    return str(value).strip()


def number(value: object) -> float | None:
    """A number cell, or text that is one; None otherwise (booleans too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and NUMBER.match(value.strip()):
        return float(value)
    return None


def whole(minimum: int, example: int, maximum: int | None = None) -> Callable[[Any, str], int]:
    """A converter to a whole number within [minimum, maximum]."""
    def convert(value: object, column: str) -> int:
        n = number(value)
        if n is None or not n.is_integer():
            raise ValueError(f"{show(value)} is not a whole number for {column}; write a number such as {example}")
        if n < minimum or (maximum is not None and n > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise ValueError(f"{column} must be at least {minimum}{upper}, not {int(n)}; write e.g. {example}")
        return int(n)

    return convert


def choice(options: Sequence[str]) -> Callable[[Any, str], str]:
    """A converter to one of `options` (lower case)."""
    def convert(value: object, column: str) -> str:
        chosen = text(value).lower()
        if chosen not in options:
            raise ValueError(f"{show(value)} is not a valid {column}; write one of: {', '.join(options)}")
        return chosen

    return convert


def names(value: object, column: str = "") -> tuple[str, ...]:
    """A comma (or semicolon) separated list, blanks dropped."""
    return tuple(n.strip() for n in re.split(r"[,;]", text(value)) if n.strip())


def one_of(options: Sequence[str], what: str) -> Callable[[Any, str], tuple[str, ...]]:
    """A converter to a list of `options` (lower case), each a `what`."""
    def convert(value: object, column: str) -> tuple[str, ...]:
        chosen = tuple(n.lower() for n in names(value))
        bad = [n for n in chosen if n not in options]
        if bad:
            listing = ", ".join(options)
            raise ValueError(f"unknown {what} {', '.join(map(repr, bad))} in {column}; valid: {listing}")
        return chosen

    return convert


def identifier(value: object, column: str) -> str:
    """An id or a name: a letter or digit first, then letters, digits, _ . -."""
    name = text(value)
    if not _ID.match(name):
        raise ValueError(f"{name!r} is not a valid {column}: start with a letter or digit and use only "
                         "letters, digits, _ . - (e.g. lr-sweep_2)")
    return name
