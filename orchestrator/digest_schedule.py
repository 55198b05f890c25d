"""When the digest mail goes out: the Settings `digest` schedule, read once for all (pure).

    digest := "every" N ("minute" | "minutes" | "hour" | "hours")   # N ≥ 1
            | "daily" "at" H:MM                                   # 00:00 … 23:59
            | "off"

Case and spacing do not matter; the text is read as the tokens of `orchestrator.tokens`. The
workbook validator (`read_digest`: None for text that is no schedule) and the mail loop
(`parse_digest`: anything unreadable is off) both read it here; `digest_overdue` says whether a
digest was missed while nero was not running.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .tokens import adjacent, tokenize

__all__ = ["DigestSchedule", "digest_overdue", "parse_digest", "read_digest"]

_UNITS = {"minute": 60, "minutes": 60, "hour": 3600, "hours": 3600}


@dataclass(frozen=True)
class DigestSchedule:
    """A parsed Settings `digest`: every N minutes/hours, daily at HH:MM, or off."""

    every_s: float | None = None
    daily_at: str = ""
    text: str = "off"
    unit: str = field(default="", compare=False)
    n: int = field(default=0, compare=False)

    @property
    def off(self) -> bool:
        return self.every_s is None and not self.daily_at

    @property
    def setting(self) -> str:
        """The schedule as the workbook shows it: `every 6 hours`, `every 1 hour`,
        `daily at 08:00` or `off`."""
        if self.every_s is not None:
            return f"every {self.n} {self.unit[:-1]}{'s' if self.n != 1 else ''}"
        return f"daily at {self.daily_at}" if self.daily_at else "off"


def read_digest(text: str) -> DigestSchedule | None:
    """The schedule `text` writes, or None when it is none (see the module docstring)."""
    tokens = tokenize(text.lower())[:-1]
    words = [t.text for t in tokens]
    normal = " ".join(text.lower().split())
    if words == ["off"]:
        return DigestSchedule()
    if len(tokens) == 3 and words[0] == "every" and words[1].isdigit() and words[2] in _UNITS:
        n = int(words[1])
        if n >= 1:
            unit = words[2].rstrip("s") + "s"
            return DigestSchedule(every_s=n * _UNITS[words[2]], text=normal, unit=unit, n=n)
    if len(tokens) == 5 and words[:2] == ["daily", "at"] and words[3] == ":" and adjacent(tokens[2:]):
        hour, minute = words[2], words[4]
        if (hour.isdigit() and len(hour) <= 2 and int(hour) < 24
                and minute.isdigit() and len(minute) == 2 and int(minute) < 60):
            return DigestSchedule(daily_at=f"{int(hour):02d}:{minute}", text=normal)
    return None


def parse_digest(text: str) -> DigestSchedule:
    """The schedule `text` writes; empty or unreadable text is off."""
    return read_digest(text or "off") or DigestSchedule()


def digest_overdue(schedule: DigestSchedule, last: float | None, now: float) -> bool:
    """Whether a digest was missed while nero was not watching (checked when a loop starts):
    the period passed since the last one, or today's time of day passed after it. Never
    before a first digest: that one comes on schedule."""
    if schedule.off or last is None:
        return False
    if schedule.every_s is not None:
        return now - last >= schedule.every_s
    hour, minute = (int(x) for x in schedule.daily_at.split(":"))
    lt = time.localtime(now)
    today = time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday, hour, minute, 0, 0, 0, -1))
    due = today if today <= now else today - 86400
    return last < due
