"""Durations, memory sizes, the pass interval and the digest schedule as cells: the
converters for a row's time and mem, and the Settings interval, digest and min_free_disk.

A duration is a bare number (minutes for time, seconds for interval), [D-]HH:MM:SS, or
units such as 90m / 2h / 1d; a size is megabytes or 4G / 500M. The grammars themselves
live in `orchestrator.units` and `orchestrator.digest_schedule`; this module turns a cell
into a value or a message that says what to write.
"""

from __future__ import annotations

import math
from datetime import time as clock_time
from datetime import timedelta

from ..digest_schedule import read_digest
from ..units import parse_duration, parse_size_mb
from .cells import number, show, text

__all__ = ["digest_cell", "interval_cell", "megabytes_cell", "minutes_cell", "size_text_cell"]


def minutes_cell(value: object, column: str) -> int:
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
        seconds = parse_duration(value, bare_unit=60)
    else:
        seconds = None
    if seconds is None or not seconds > 0:
        raise ValueError(f"{show(value)} is not a duration for {column}; write minutes (90), HH:MM:SS "
                         "(01:30:00), D-HH:MM:SS (2-00:00:00) or 90m / 2h / 1d")
    return math.ceil(seconds / 60 - 1e-9)


def megabytes_cell(value: object, column: str) -> int:
    """A memory size in whole megabytes (rounded up)."""
    n = number(value)
    if n is None and isinstance(value, str):
        n = parse_size_mb(value)
    if n is None or not n > 0:
        raise ValueError(f"{show(value)} is not a memory size for {column}; write megabytes (4000) or 4G / 500M")
    return math.ceil(n)


def size_text_cell(value: object, column: str) -> str:
    """A memory size kept as written (after checking that it is one)."""
    megabytes_cell(value, column)
    return text(value)


def interval_cell(value: object, column: str) -> float:
    """Seconds between passes."""
    seconds = number(value) if not isinstance(value, str) else parse_duration(value)
    if seconds is None or not seconds > 0:
        raise ValueError(f"{show(value)} is not a valid interval; write seconds between passes (30) or 30s / 5m")
    return float(seconds)


def digest_cell(value: object, column: str) -> str:
    """A digest schedule, as the workbook's canonical text (`every 6 hours`, `off`)."""
    schedule = read_digest(text(value))
    if schedule is None:
        raise ValueError(f"{show(value)} is not a digest schedule; write every 6 hours, every 30 minutes, "
                         "daily at 08:00, or off")
    return schedule.setting
