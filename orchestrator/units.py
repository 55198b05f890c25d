"""Durations, sizes and numbers: reading them from text and writing them for people (pure).

Reading (each returns None for text it cannot read; the caller says what is wrong):

- `parse_duration_literal`: the expression language's durations, a number and a unit `s`,
  `m`, `h` or `d`, repeated: `90s`, `30m`, `1.5d`, `.5h`, `2h30m`.
- `parse_duration`: a workbook cell (`time`, Settings `interval`): a bare number of
  `bare_unit` seconds (`90`), `[D-]HH:MM:SS` (`1:30:00`, `1-02:00:00`), or numbers with units
  (`2 hours`, `30 min`, `1h30m`, `1 day 2 hrs`; units d/day(s), h/hr(s)/hour(s),
  m/min(s)/minute(s), s/sec(s)/second(s)).
- `parse_size_mb`: a memory or disk size in megabytes: `4000`, `16G`, `512MB`, `1.5 TiB`
  (k, m, g, t in steps of 1024, with an optional `b` or `ib`).

All three read the tokens of `orchestrator.tokens`.

Writing: `format_number` (`0.52`, `612`, `nan`; exact when asked), `format_significant` and
`format_metric` (4 significant digits, for tables and mails), `format_duration` (`45s`,
`12m05s`, `2h03m`, `1d04h`) and `format_megabytes` (`512 MB`, `1.5 GB`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from .tokens import Token, adjacent, number, tokenize

__all__ = [
    "DURATION_UNITS",
    "format_duration",
    "format_megabytes",
    "format_metric",
    "format_number",
    "format_significant",
    "parse_duration",
    "parse_duration_literal",
    "parse_size_mb",
]

DURATION_UNITS: Mapping[str, float] = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_UNIT_WORDS: Mapping[str, float] = {
    word: DURATION_UNITS[word[0]]
    for word in ("d", "day", "days", "h", "hr", "hrs", "hour", "hours", "m", "min", "mins", "minute",
                 "minutes", "s", "sec", "secs", "second", "seconds")
}
_SIZE_MB: Mapping[str, float] = {"": 1, "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024, "p": 1024 ** 3}

_DURATION_LITERAL = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)[smhd])+")
_DURATION_LITERAL_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smhd])")
_CELL_PARTS = re.compile(r"(?:\d+(?:\.\d+)?|[a-z]+)+")  # the numbers and unit words of one token
_CELL_PART = re.compile(r"(\d+(?:\.\d+)?)|([a-z]+)")
_CLOCK_PART = re.compile(r"[0-5]\d")
_SIZE_QUANTITY = re.compile(r"(\d+(?:\.\d+)?)([a-z]*)")
_SIZE_UNIT = re.compile(r"([kmgtp]?)(?:i?b)?")


# ---------------------------------------------------------------------------------------------
# Reading


def parse_duration_literal(literal: str) -> float | None:
    """Seconds of an expression's duration literal (`2h30m`), None if it is not one."""
    if not _DURATION_LITERAL.fullmatch(literal):
        return None
    return sum(float(n) * DURATION_UNITS[u] for n, u in _DURATION_LITERAL_PART.findall(literal))


def parse_duration(text: str, bare_unit: float = 1.0) -> float | None:
    """Seconds of a workbook duration (see the module docstring), None if it is not one."""
    seconds = number(text)
    if seconds is not None:
        return seconds * bare_unit
    tokens = tokenize(text.lower())[:-1]
    clock = _clock(tokens)
    if clock is not None:
        return clock
    return _with_units(tokens)


def _clock(tokens: list[Token]) -> float | None:
    """`[D-]H:MM:SS`, written without spaces."""
    if not adjacent(tokens):
        return None
    days = 0
    if len(tokens) == 7 and tokens[1].text == "-":
        if not tokens[0].text.isdigit():
            return None
        days, tokens = int(tokens[0].text), tokens[2:]
    if len(tokens) != 5 or tokens[1].text != ":" or tokens[3].text != ":":
        return None
    hours, minutes, seconds = tokens[0].text, tokens[2].text, tokens[4].text
    if not (hours.isdigit() and _CLOCK_PART.fullmatch(minutes) and _CLOCK_PART.fullmatch(seconds)):
        return None
    return days * 86400 + int(hours) * 3600 + int(minutes) * 60 + int(seconds)


def _with_units(tokens: list[Token]) -> float | None:
    """`1h30m`, `2 hours 30 min`: numbers each followed by a unit word, spaces allowed between."""
    parts: list[tuple[str, str]] = []
    for tok in tokens:
        if tok.kind not in ("num", "quantity", "name") or not _CELL_PARTS.fullmatch(tok.text):
            return None
        parts += _CELL_PART.findall(tok.text)
    if not parts or len(parts) % 2:
        return None
    seconds = 0.0
    for (amount, _), (_, unit) in zip(parts[::2], parts[1::2], strict=True):
        if not amount or unit not in _UNIT_WORDS:
            return None
        seconds += float(amount) * _UNIT_WORDS[unit]
    return seconds


def parse_size_mb(text: str) -> float | None:
    """Megabytes of a size (`16G`, `512MB`, `4000`, `1.5 TiB`), None if it is not one."""
    tokens = tokenize(text.lower())[:-1]
    if not 1 <= len(tokens) <= 2 or tokens[0].kind not in ("num", "quantity"):
        return None
    m = _SIZE_QUANTITY.fullmatch(tokens[0].text)
    if m is None:
        return None
    number, unit = m.groups()
    if len(tokens) == 2:
        if unit or tokens[1].kind != "name":
            return None
        unit = tokens[1].text
    u = _SIZE_UNIT.fullmatch(unit)
    return None if u is None else float(number) * _SIZE_MB[u.group(1)]


# ---------------------------------------------------------------------------------------------
# Writing


def format_number(v: float, *, exact: bool = False) -> str:
    """`0.52`, `612`, `nan`, `inf`: 6 significant digits, whole numbers in full; with
    exact=True the text parses back to the same float."""
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v) if exact else f"{v:.6g}"


def format_significant(v: float, digits: int = 4) -> str:
    """`0.5234`, `1.235e+05`, `12`, `nan`: `digits` significant digits, whatever the type."""
    return f"{v:.{digits}g}"


def format_metric(v: Any) -> str:
    """A value in a mail: "" for none, floats with 4 significant digits, anything else as
    `str` (so whole numbers that are ints stay whole)."""
    if v is None:
        return ""
    if isinstance(v, float):
        return format_significant(v)
    return str(v)


def format_duration(seconds: float | None) -> str:
    """`45s`, `12m05s`, `2h03m`, `1d04h`; "" for None."""
    if seconds is None:
        return ""
    if not math.isfinite(seconds):
        return format_number(seconds)
    total = max(0, round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_megabytes(mb: float | None, missing: str = "") -> str:
    """`512 MB`, `1.5 GB` (from 1024 MB on); `missing` for None."""
    if mb is None:
        return missing
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB"
