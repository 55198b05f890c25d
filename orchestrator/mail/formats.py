"""The short texts e-mails show besides numbers, sizes and durations (those come from
`orchestrator.units`): times of day and one-line summaries."""

from __future__ import annotations

import time

__all__ = ["local_time", "one_line", "short_time"]


def local_time(t: float | None) -> str:
    """The date and time of day, to the second ("" for None)."""
    return "" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def short_time(t: float | None) -> str:
    """Month, day, hour and minute ("" for None)."""
    return "" if t is None else time.strftime("%m-%d %H:%M", time.localtime(t))


def one_line(text: str, limit: int = 80) -> str:
    """`text` on one line, whitespace runs as one space, cut to `limit` characters with "…"."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
