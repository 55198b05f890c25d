"""What nero takes from a log, shown to a person: the report of `nero metrics test`.

`capture_report(data, defs)` runs the reconciler's own parser (`monitor.trace_output`,
the same code as `monitor.parse_output`) over a whole log and adds what someone checking
their Metrics patterns asks next: per metric, how many points, the first and last step
and the last value; and which patterns took nothing, with the reason (they match no
line, or they match but their value group holds no number). Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .metric_patterns import compile_metric_pattern
from .model import MetricDef
from .monitor import Capture, trace_output

__all__ = ["CaptureReport", "MetricSummary", "Unmatched", "capture_report", "json_number"]


@dataclass(frozen=True)
class MetricSummary:
    """One metric's points in a log: how many, the first and last point's steps (None:
    the point has no step; nero numbers it one past the previous), the last value, and
    the pattern that took them ("" for the default `name=value` capture)."""

    metric: str
    count: int
    first_step: int | None
    last_step: int | None
    last_value: float
    pattern: str


@dataclass(frozen=True)
class Unmatched:
    """A Metrics pattern that took nothing from a log, and why."""

    metric: str
    pattern: str
    reason: str


@dataclass(frozen=True)
class CaptureReport:
    """Every point taken from a log (in order), a summary per metric (in order of first
    appearance), the patterns that took nothing, and the log's line count."""

    captures: tuple[Capture, ...]
    metrics: tuple[MetricSummary, ...]
    unmatched: tuple[Unmatched, ...]
    lines: int

    def as_dict(self) -> dict[str, object]:
        """The report as JSON-ready data (a value that is not finite as "nan", "inf", "-inf";
        a default capture's pattern as null)."""
        return {
            "lines": self.lines,
            "captures": [{"line": c.line, "metric": c.point.name, "step": c.point.step,
                          "value": json_number(c.point.value), "pattern": c.pattern or None}
                         for c in self.captures],
            "metrics": [{"metric": m.metric, "count": m.count, "first_step": m.first_step, "last_step": m.last_step,
                         "last_value": json_number(m.last_value), "pattern": m.pattern or None}
                        for m in self.metrics],
            "unmatched": [{"metric": u.metric, "pattern": u.pattern, "reason": u.reason} for u in self.unmatched],
        }


def json_number(value: float) -> float | str:
    """A value for JSON: the number, or "nan", "inf", "-inf" (which JSON cannot hold)."""
    return value if math.isfinite(value) else str(value)


def capture_report(data: bytes, defs: Sequence[MetricDef] = ()) -> CaptureReport:
    """What `nero reconcile` would record from the whole log `data` with the Metrics
    definitions `defs` (none: the default capture only). Raises ValueError for a
    pattern that breaks the rule (see metric_patterns.py)."""
    captures = trace_output(data, defs)
    groups: dict[str, list[Capture]] = {}
    for c in captures:
        groups.setdefault(c.point.name, []).append(c)
    metrics = tuple(MetricSummary(name, len(cs), cs[0].point.step, cs[-1].point.step, cs[-1].point.value,
                                  cs[0].pattern) for name, cs in groups.items())
    text = data.decode("utf-8", "replace")
    unmatched = tuple(Unmatched(d.name, d.pattern, _why_nothing(text, d.pattern))
                      for d in defs if d.pattern and d.name not in groups)
    lines = text.count("\n") + (1 if text and not text.endswith("\n") else 0)
    return CaptureReport(tuple(captures), metrics, unmatched, lines)


def _why_nothing(text: str, pattern: str) -> str:
    """Why a pattern took no point from `text`."""
    mp = compile_metric_pattern(pattern)
    m = mp.regex.search(text)
    if m is None:
        return "it matches no line"
    line = text.count("\n", 0, m.start()) + 1
    held = m.group(mp.value)
    what = "nothing" if held is None else repr(held)
    return f"it matches (first on line {line}), but its value group holds {what}, not a number"
