"""The digest schedule: Settings `digest` parsed (every N minutes/hours, daily at HH:MM,
or off), and whether a digest was missed while nero was not watching."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

__all__ = ["DigestSchedule", "digest_overdue", "parse_digest"]


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


def parse_digest(text: str) -> DigestSchedule:
    t = " ".join((text or "off").lower().split())
    m = re.fullmatch(r"every (\d+) (minute|hour)s?", t)
    if m and int(m.group(1)) >= 1:
        n = int(m.group(1))
        return DigestSchedule(every_s=n * (60 if m.group(2) == "minute" else 3600), text=t, unit=m.group(2) + "s", n=n)
    m = re.fullmatch(r"daily at (\d{1,2}):(\d{2})", t)
    if m and int(m.group(1)) < 24 and int(m.group(2)) < 60:
        return DigestSchedule(daily_at=f"{int(m.group(1)):02d}:{m.group(2)}", text=t)
    return DigestSchedule()


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
