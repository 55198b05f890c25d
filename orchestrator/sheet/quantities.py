"""Durations, memory sizes, the pass interval and the digest schedule as cells: the
converters for a row's time and mem, and the Settings interval, digest and min_free_disk.

A duration is a bare number (minutes for time, seconds for interval), [D-]HH:MM:SS, or
units such as 90m / 2h / 1d; a size is megabytes or 4G / 500M.
"""

from __future__ import annotations

import math
import re
from datetime import time as clock_time
from datetime import timedelta

from .cells import NUMBER as _NUMBER
from .cells import number as _number
from .cells import show as _show
from .cells import text as _text

__all__: list[str] = []  # no public names: experiments and settings import the converters below

_CLOCK = re.compile(r"^(?:(\d+)-)?(\d+):([0-5]\d):([0-5]\d)$")
_UNIT = r"(\d+(?:\.\d+)?)\s*(days?|d|hours?|hrs?|h|minutes?|mins?|m|seconds?|secs?|s)"
_UNITS = re.compile(rf"^(?:\s*{_UNIT}\s*)+$", re.I)
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$", re.I)
_SIZE_MB = {"": 1, "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}
_DIGEST_EVERY = re.compile(r"^every\s+(\d+)\s+(minute|hour)s?$")
_DIGEST_DAILY = re.compile(r"^daily\s+at\s+([01]?\d|2[0-3]):([0-5]\d)$")


def _seconds(text: str, bare_unit: float) -> float | None:
    """A duration in seconds: a bare number (× bare_unit), [D-]HH:MM:SS, or 1h30m-style units."""
    t = text.strip().lower()
    if _NUMBER.match(t):
        return float(t) * bare_unit
    m = _CLOCK.match(t)
    if m:
        d, h, mi, s = (int(x or 0) for x in m.groups())
        return d * 86400 + h * 3600 + mi * 60 + s
    if _UNITS.match(t):
        return sum(float(n) * _UNIT_SECONDS[u[0]] for n, u in re.findall(_UNIT, t, re.I))
    return None


def _minutes(value: object, column: str) -> int:
    """A wall-time limit in whole minutes (rounded up)."""
    seconds: float | None
    if isinstance(value, bool):
        seconds = None
    elif isinstance(value, int | float):
        seconds = float(value) * 60
    elif isinstance(value, clock_time):  # Excel turned 02:00:00 into a time of day
        seconds = value.hour * 3600 + value.minute * 60 + value.second
    elif isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str):
        seconds = _seconds(value, 60)
    else:
        seconds = None
    if seconds is None or not seconds > 0:
        raise ValueError(f"{_show(value)} is not a duration for {column}; write minutes (90), HH:MM:SS "
                         "(01:30:00), D-HH:MM:SS (2-00:00:00) or 90m / 2h / 1d")
    return math.ceil(seconds / 60 - 1e-9)


def _megabytes(value: object, column: str) -> int:
    n = _number(value)
    if n is None and isinstance(value, str):
        m = _SIZE.match(value.strip())
        n = float(m.group(1)) * _SIZE_MB[m.group(2).lower()] if m else None
    if n is None or not n > 0:
        raise ValueError(f"{_show(value)} is not a memory size for {column}; write megabytes (4000) or 4G / 500M")
    return math.ceil(n)


def _size_text(value: object, column: str) -> str:
    _megabytes(value, column)
    return _text(value)


def _interval(value: object, column: str) -> float:
    seconds = _number(value) if not isinstance(value, str) else _seconds(value, 1)
    if seconds is None or not seconds > 0:
        raise ValueError(f"{_show(value)} is not a valid interval; write seconds between passes (30) or 30s / 5m")
    return float(seconds)


def _digest(value: object, column: str) -> str:
    text = re.sub(r"\s+", " ", _text(value).lower())
    every, daily = _DIGEST_EVERY.match(text), _DIGEST_DAILY.match(text)
    if text == "off":
        return text
    if every and int(every.group(1)) >= 1:
        n = int(every.group(1))
        return f"every {n} {every.group(2)}{'s' if n != 1 else ''}"
    if daily:
        return f"daily at {int(daily.group(1)):02d}:{daily.group(2)}"
    raise ValueError(f"{_show(value)} is not a digest schedule; write every 6 hours, every 30 minutes, "
                     "daily at 08:00, or off")
