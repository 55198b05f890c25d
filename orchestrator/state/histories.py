"""The metric histories a Store keeps between reads, and how metric rows merge into them.

Pure Python over the rows the store reads (no connection here): `merge` folds rows
(key, attempt, name, step, value, source rank), in the order they were logged, into the
compact Series of each run's current attempt, one point per step (metrics.supersedes).
`EarlierHistories` keeps those of the attempts before each run's current one, apart, so
that reading them costs the current attempts' path nothing; it runs its queries through
the `execute` its Store hands it, inside the Store's read transaction.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence

from ..metrics import SOURCE_RANK, supersedes
from ..series import Series

__all__ = ["METRIC_ROWS", "Curve", "EarlierHistories", "RunHistories", "merge"]

# each point's source rank (metrics.source_rank), computed by SQLite as the rows are read
_RANK_SQL = "CASE source " + " ".join(f"WHEN '{s}' THEN {r}" for s, r in SOURCE_RANK.items()) + " ELSE 0 END"
METRIC_ROWS = f"SELECT key, attempt, name, step, value, {_RANK_SQL} FROM metrics"
_NEAR = 8  # a step logged again is looked for among this many latest points first


class Curve:
    """One metric's history while it is merged (see `merge`): the arrays of its Series,
    the source rank of each point and the largest step so far, so that a point with a new,
    larger step (nearly every point) costs three appends.

    `series` is the Series last handed out over these arrays. A handed-out Series never
    changes: `own` copies the arrays before the first change after that."""

    __slots__ = ("steps", "values", "ranks", "top", "ordered", "series")

    def __init__(self) -> None:
        self.steps, self.values, self.ranks = array("d"), array("d"), bytearray()
        self.top: float = -math.inf
        self.ordered = True  # every step given, ascending (see Series.ordered)
        self.series: Series | None = None

    def own(self) -> None:
        if self.series is not None:
            self.steps, self.values, self.series = self.steps[:], self.values[:], None

    def place(self, step: float | None, value: float, rank: int) -> None:
        """A point that is not simply appended: one without a step, or whose step is not
        larger than every step so far (logged again, or out of order)."""
        if step is not None:
            i = self.find(step)
            if i >= 0:
                if supersedes(rank, self.ranks[i]):
                    self.values[i] = value
                    self.ranks[i] = rank
                return
        self.ordered = False
        self.steps.append(math.nan if step is None else step)
        self.values.append(value)
        self.ranks.append(rank)

    def find(self, step: float) -> int:
        """The index of the point with this step, -1 if none: the latest points first (a
        step logged twice nearly always is one of them), then the others, both at C speed."""
        steps = self.steps
        n = len(steps)
        near = max(0, n - _NEAR)
        for lo, hi in ((near, n), (0, near)):
            try:
                return steps.index(step, lo, hi)
            except ValueError:
                pass
        return -1

    def view(self) -> Series:
        if self.series is None:
            self.series = Series(self.steps, self.values, self.ordered)
        return self.series


class RunHistories:
    """The histories of one attempt of a run, as a Store keeps them between reads."""

    __slots__ = ("attempt", "curves")

    def __init__(self, attempt: int) -> None:
        self.attempt = attempt
        self.curves: dict[str, Curve] = {}  # in the order the metrics first appeared

    def curve(self, name: str) -> Curve:
        """The curve of a metric, ready to change."""
        curve = self.curves.get(name)
        if curve is None:
            curve = self.curves[name] = Curve()
        else:
            curve.own()
        return curve

    def view(self) -> dict[str, Series]:
        return {name: curve.view() for name, curve in self.curves.items()}


def merge(rows: Iterable[Sequence], runs: Mapping[str, RunHistories]) -> None:
    """Merge metric rows (key, attempt, name, step, value, source rank), in the order they
    were logged, into the histories of `runs`; rows of other runs or attempts are skipped.

    One point per step: a program that prints `loss=…` and also logs it through
    `orchestrator.track` reports each value twice; the point of the higher source rank
    wins, of equal rank the later one (metrics.supersedes: track, then stdout, then
    stderr), and it keeps the position where its step first appeared. Points without a step are kept in the order they came. A missing value
    (NULL) is NaN."""
    nan = math.nan
    sinks: dict[str, tuple[int | None, dict[str, tuple]]] = {}  # key -> (attempt, name -> sink)
    last_key, wanted, names = None, None, {}
    for key, attempt, name, step, value, rank in rows:
        if key != last_key:  # a pass writes each run's points together
            run = sinks.get(key)
            if run is None:
                cached = runs.get(key)
                run = sinks[key] = (None if cached is None else cached.attempt, {})
            last_key, (wanted, names) = key, run
        if attempt != wanted:
            continue
        sink = names.get(name)
        if sink is None:
            curve = runs[key].curve(name)
            sink = names[name] = (curve, curve.steps.append, curve.values.append, curve.ranks.append)
        curve, add_step, add_value, add_rank = sink
        if value is None:
            value = nan
        if step is not None and step > curve.top:  # the usual case, inlined for speed
            curve.top = step
            add_step(step)
            add_value(value)
            add_rank(rank)
        else:
            curve.place(step, value, rank)


# the earlier attempts, by run number then attempt
_EARLIER_ATTEMPTS = ("SELECT a.key, a.attempt FROM runs r JOIN attempts a ON a.key = r.key AND a.attempt < r.attempt "
                     "ORDER BY r.number, a.attempt")


class EarlierHistories:
    """The histories of the attempts before each run's current one, by (run key, attempt),
    as a Store keeps them between reads.

    An earlier attempt no longer grows, nearly: its job was cancelled or had ended when the
    run moved on, and only output read after that (the last lines of a cancelled job) adds
    points to it. So each attempt is read once by its index, when it is first asked for,
    and again, whole, only if the metric rows added since the last refresh hold points of
    it; a Series that did not change is the same object as last time. `version` is the
    Store's version of the database as of the last refresh."""

    __slots__ = ("runs", "read_to", "rewrites", "version")

    def __init__(self) -> None:
        self.runs: dict[tuple[str, int], RunHistories] = {}
        self.read_to: int | None = None  # the largest metric rowid read
        self.rewrites: str | None = None  # the metrics table's rewrite count as of the last refresh
        self.version: object = None

    def refresh(self, execute: Callable[..., Iterable[Sequence]], rewrites: str | None, version: object) -> None:
        """Bring the kept histories up to date, through `execute` (the Store's, inside one
        read transaction); `rewrites` is the count of metric rows changed or deleted (any
        change reads every attempt afresh)."""
        if rewrites != self.rewrites:
            self.runs, self.read_to, self.rewrites = {}, None, rewrites
        wanted = list(execute(_EARLIER_ATTEMPTS))
        ((top,),) = execute("SELECT COALESCE(MAX(rowid), 0) FROM metrics")
        grown: set[tuple[str, int]] = set()
        if self.read_to is not None and top > self.read_to:
            grown = set(execute("SELECT DISTINCT key, attempt FROM metrics WHERE rowid > ? AND rowid <= ?",
                                (self.read_to, top)))
        runs: dict[tuple[str, int], RunHistories] = {}
        for key, attempt in wanted:
            run = self.runs.get((key, attempt))
            if run is None or (key, attempt) in grown:
                run = RunHistories(attempt)
                merge(execute(METRIC_ROWS + " WHERE key=? AND attempt=? AND rowid <= ? ORDER BY rowid",
                              (key, attempt, top)), {key: run})
            runs[(key, attempt)] = run
        self.runs, self.read_to, self.version = runs, top, version

    def view(self) -> dict[tuple[str, int], dict[str, Series]]:
        return {pair: run.view() for pair, run in self.runs.items() if run.curves}
