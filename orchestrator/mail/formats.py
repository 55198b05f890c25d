"""The short texts e-mails show: numbers, sizes, durations, times of day, and one-line
summaries (the template filters and the wording of warnings)."""

from __future__ import annotations

import math
import time
from typing import Any

__all__ = ["local_time", "one_line", "short_time"]


def _num(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.4g}"
    return str(v)


def local_time(t: float | None) -> str:
    """The date and time of day, to the second ("" for None)."""
    return "" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def short_time(t: float | None) -> str:
    """Month, day, hour and minute ("" for None)."""
    return "" if t is None else time.strftime("%m-%d %H:%M", time.localtime(t))


def _duration(seconds: float | None) -> str:
    from ..expr import format_duration

    return "" if seconds is None else format_duration(seconds)


def _mb(v: float | None) -> str:
    if v is None:
        return ""
    return f"{v / 1024:.1f} GB" if v >= 1024 else f"{v:.0f} MB"


def one_line(text: str, limit: int = 80) -> str:
    """`text` on one line, whitespace runs as one space, cut to `limit` characters with "…"."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
