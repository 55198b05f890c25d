"""What nero takes from a log, shown to a person: the report of `nero metrics test`.

`capture_report(data, defs)` runs the reconciler's own parser (`monitor.trace_output`,
the same code as `monitor.parse_output`) over a whole log and adds what someone checking
their Metrics patterns asks next: per metric, how many points, the first and last step
and the last value; and which patterns took nothing, with the reason (they match no
line, or they match but their value group holds no number). `file_report(path, data)`
does the same for a metric file (a TensorBoard event file, a CSV) through the reader a
pass uses on a run folder's files (`metric_files.read_sources`). Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .metric_files import CSV_SOURCE, kind_of, read_sources
from .metric_patterns import compile_metric_pattern
from .model import MetricDef, SourceChunk
from .monitor import Capture, trace_output

__all__ = ["CaptureReport", "MetricSummary", "Unmatched", "capture_report", "file_report", "json_number"]


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
    appearance), the patterns that took nothing, and the log's line count. For a metric
    file (`kind` "tensorboard" or "csv") a capture's `line` is the point's place in the
    file (1, 2, …), its `pattern` what named it (the tag or column), `lines` the points,
    and `problems` what the reader warns of (a damaged record)."""

    captures: tuple[Capture, ...]
    metrics: tuple[MetricSummary, ...]
    unmatched: tuple[Unmatched, ...]
    lines: int
    kind: str = "log"
    problems: tuple[str, ...] = ()

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
            "kind": self.kind,
            "problems": list(self.problems),
        }


def json_number(value: float) -> float | str:
    """A value for JSON: the number, or "nan", "inf", "-inf" (which JSON cannot hold)."""
    return value if math.isfinite(value) else str(value)


def capture_report(data: bytes, defs: Sequence[MetricDef] = ()) -> CaptureReport:
    """What `nero reconcile` would record from the whole log `data` with the Metrics
    definitions `defs` (none: the default capture only). Raises ValueError for a
    pattern that breaks the rule (see metric_patterns.py)."""
    captures = trace_output(data, defs)
    groups = _groups(captures)
    metrics = _summaries(groups)
    text = data.decode("utf-8", "replace")
    unmatched = tuple(Unmatched(d.name, d.pattern, _why_nothing(text, d.pattern))
                      for d in defs if d.pattern and d.name not in groups)
    lines = text.count("\n") + (1 if text and not text.endswith("\n") else 0)
    return CaptureReport(tuple(captures), metrics, unmatched, lines)


def file_report(path: str, data: bytes, kind: str | None = None) -> CaptureReport:
    """What a pass would record from the whole metric file `data`, found in a run folder
    as `path` (its folders name some series: `metric_files.metric_name`): every point in
    the file's order, as `tag` / `column` took it. `kind` ("tensorboard", "csv") reads the
    file as that whatever its name says (a run folder's file is told by its name)."""
    if kind is not None and kind_of(path) != kind:
        folder, _, name = path.rpartition("/")
        name = f"events.out.tfevents.{name}" if kind != CSV_SOURCE else name.replace("tfevents", "csv")
        path = f"{folder}/{name}" if folder else name
    kind = kind_of(path)
    read = read_sources([SourceChunk(path, 0, data, len(data))], (), None, final=True)
    what = "column" if kind == CSV_SOURCE else "tag"
    captures = [Capture(i, p, f"{what} {p.name}") for i, p in enumerate(read.points, 1)]
    return CaptureReport(tuple(captures), _summaries(_groups(captures)), (), len(captures), kind,
                         tuple(read.problems))


def _groups(captures: Sequence[Capture]) -> dict[str, list[Capture]]:
    groups: dict[str, list[Capture]] = {}
    for c in captures:
        groups.setdefault(c.point.name, []).append(c)
    return groups


def _summaries(groups: dict[str, list[Capture]]) -> tuple[MetricSummary, ...]:
    return tuple(MetricSummary(name, len(cs), cs[0].point.step, cs[-1].point.step, cs[-1].point.value,
                               cs[0].pattern) for name, cs in groups.items())


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
