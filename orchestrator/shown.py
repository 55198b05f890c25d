"""What every surface shows of a run's metrics: last, best and checkpoint values (pure).

`nero status --json`, `nero export`, `Project.frames()`, the results workbook's Summary and
the digest all take these values from `run_values`, so they agree exactly. A metric's
values come from its merged history (the store's points: one per step, track over printed;
steps numbered and ascending by `curves.normalize`), by `metrics.summarize`:

* last: the value at the largest step (NaN included);
* best: the best finite value in the metric's goal (`metrics.shown_best`: ±inf and NaN
  are never a best; NaN when no value is finite, a diverged run);
* the value at each checkpoint (`metrics.value_at`; None before the run got there).

A metric with a stored last or best but no history shows the stored values (the best made
finite the same way) and no checkpoint value.

`who_shown` decides whether the tables people read (`nero status`, results.xlsx) have a
`who` column: the OS user who submitted each run's attempt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .curves import normalize
from .metrics import Summary, default_goal, shown_best, summarize
from .model import RunRecord, Series

__all__ = ["run_values", "metric_names", "signature", "who_shown"]

# Histories of finished runs do not change: the summaries of long ones are remembered
# between calls of a long-lived process (bounded), so a refresh does not sort every long
# history again. They are remembered by the history's whole content (`signature`), not a
# sample of its points: a value replaced inside a history of the same length (a printed point
# overridden by a tracked one) must not show the old best. A short history is summarised
# afresh: at 10 points that costs 2 µs, and remembering every run of a 100,000-run export
# held 45 MB; at 1,000 points, 62 µs against a 20 µs look-up.
_MEMO: dict[bytes, Summary] = {}
_MEMO_MAX = 100_000
MEMO_FROM = 256  # points: a shorter history is summarised each time


def signature(p: Sequence[Any]) -> tuple[int, bytes]:
    """A history's fingerprint: its length and a digest of every point (a sample of a few
    points missed a value replaced inside a history of the same length)."""
    h = hashlib.blake2b(digest_size=16)
    try:
        series = p if isinstance(p, Series) else Series.of(p)  # a list and a Series of the same points agree
    except TypeError:  # a value that is not a number
        h.update(repr(tuple(p)).encode("utf-8", "surrogatepass"))
    else:
        h.update(series.steps.tobytes())
        h.update(series.values.tobytes())
    return len(p), h.digest()


def _summary(key: tuple[str, int], metric: str, points: Sequence[tuple[int | None, float]], goal: str,
             checkpoints: tuple[float, ...]) -> Summary:
    if len(points) < MEMO_FROM:
        return summarize(*normalize(points), goal, checkpoints)
    n, digest = signature(points)
    memo_key = hashlib.blake2b(repr((key, metric, n, digest, goal, checkpoints)).encode(), digest_size=16).digest()
    hit = _MEMO.get(memo_key)
    if hit is not None:
        return hit
    found = summarize(*normalize(points), goal, checkpoints)
    if len(_MEMO) >= _MEMO_MAX:
        _MEMO.clear()
    _MEMO[memo_key] = found
    return found


def metric_names(record: RunRecord, history: Mapping[str, Sequence[Any]] | None) -> list[str]:
    """The metrics a run has: its stored ones, then those only its history has."""
    names = dict.fromkeys(record.last)
    names.update(dict.fromkeys(record.best))
    names.update(dict.fromkeys(m for m, p in (history or {}).items() if len(p)))
    return list(names)


def run_values(record: RunRecord, history: Mapping[str, Sequence[tuple[int | None, float]]] | None,
               goals: Mapping[str, str], checkpoints: Iterable[float] = (),
               names: Iterable[str] | None = None) -> dict[str, Summary]:
    """Per metric of the run (`names`, else `metric_names`), what every surface shows:
    last, best and the value at each of `checkpoints` (in their order). `goals` are the
    declared ones (the others default: `metrics.default_goal`)."""
    history = history or {}
    cps = tuple(checkpoints)
    out: dict[str, Summary] = {}
    for m in (metric_names(record, history) if names is None else names):
        goal = default_goal(m, goals)
        points = history.get(m)
        if points is not None and len(points):
            out[m] = _summary((record.key, record.attempt), m, points, goal, cps)
        elif m in record.last or m in record.best:
            stored = [record.best[m]] if m in record.best else []
            out[m] = Summary(record.last.get(m), shown_best(stored, goal), (None,) * len(cps))
    return out


def who_shown(names: Iterable[str]) -> bool:
    """Whether `nero status` and the results workbook show a `who` column: when more than one
    person submitted the project's attempts (`names`, as `state.tally.who_submitted` lists them), a
    project shared by several. The rows made for programs (`status --json`/`--csv`, export,
    the Python API's frames) carry `who` always."""
    return len({n for n in names if n}) > 1
