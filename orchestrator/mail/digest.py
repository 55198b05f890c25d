"""What a digest shows of the runs, learnt a batch of runs at a time: counts by state, the
leaderboard, resources by cluster, when each row was last active and which metrics its runs
logged (`Digested`), for every audience in one pass (`digest_runs`). A project of 100,000
runs is never held whole (its records and histories held 265 MiB); the runs of an
experiment whose curves the digest plots are read when it plots them (`DigestRuns`).

A whole `ResultsInput` is one batch (`DigestRuns.of`): the surfaces that compare with the
digest (`leaderboard`) read it so, by the same rules.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..metrics import default_goal, rank_key, ranked_metric
from ..model import FINISHED_STATES, ResultsInput, RunRecord
from ..shown import Summary, metric_names, run_values

__all__ = ["DIGEST_TOP", "Audience", "DigestRuns", "Digested", "digest_runs", "drawn_runs"]

DIGEST_TOP = 10

# runs, and the histories of their current attempts by run key
RunsBatch = tuple[Sequence[RunRecord], Mapping[str, Mapping[str, Any]]]


@dataclass(frozen=True)
class Audience:
    """Who gets one digest, and of which rows (`experiments`; None: all of them)."""

    recipients: tuple[str, ...]
    experiments: frozenset[str] | None = None
    person: str = ""


@dataclass(frozen=True)
class DigestRuns:
    """Where a digest reads the runs: every run a batch at a time (each call a new pass),
    and the runs of one experiment with their histories, a batch at a time (its plot)."""

    batches: Callable[[], Iterable[RunsBatch]]
    experiment: Callable[[str], Iterable[RunsBatch]]

    @classmethod
    def of(cls, data: ResultsInput) -> DigestRuns:
        """The runs of a whole ResultsInput, as one batch."""
        runs = tuple(sorted(data.runs, key=lambda r: r.number))

        def experiment(name: str) -> Iterable[RunsBatch]:
            return (([r for r in runs if r.experiment == name], data.histories),)

        return cls(lambda: ((runs, data.histories),), experiment)


def drawn_runs(runs: DigestRuns, experiment: str, metric: str, goals: Mapping[str, str],
               limit: int) -> tuple[list[RunRecord], dict[str, dict[str, Any]], int]:
    """The runs of `experiment` a plot of `metric` draws, at most `limit`: those with a
    finite best, the best first (the leaderboard's order: the value every surface shows,
    `rank_key`, ties by number), then those with points but none finite, by number; with
    the histories of `metric` of those alone, and how many runs the experiment has. Read a
    batch at a time: an experiment of 10,000 runs is never held with its histories (a
    digest that drew every run of such rows took 76 s and 783 MB at 100,000 runs)."""
    goal = default_goal(metric, goals)
    ranked: list[tuple[tuple[Any, ...], int, RunRecord, Any]] = []
    rest: list[tuple[int, RunRecord, Any]] = []
    total = 0
    for batch, histories in runs.experiment(experiment):
        for r in batch:
            total += 1
            points = (histories.get(r.key) or {}).get(metric)
            if points is None or not len(points):
                continue
            shown = run_values(r, {metric: points}, goals, (), (metric,)).get(metric)
            if shown is not None and shown.best is not None and math.isfinite(shown.best):
                ranked.append((rank_key(goal, shown.best), r.number, r, points))
            elif len(rest) < limit:  # the runs come by number: the first `limit`
                rest.append((r.number, r, points))
        ranked = heapq.nsmallest(limit, ranked, key=lambda x: x[:2])  # a batch's worth held besides, at most
    chosen = [(r, p) for _, _, r, p in ranked] + [(r, p) for _, r, p in rest][:limit - len(ranked)]
    return [r for r, _ in chosen], {r.key: {metric: p} for r, p in chosen}, total


@dataclass
class _Cluster:
    runs: int = 0
    live: int = 0
    runtime: float = 0.0
    rss: float | None = None
    gpu: float | None = None
    disk: float | None = None


@dataclass
class Digested:
    """What one audience's digest shows of its runs, learnt a batch at a time (`add`)."""

    data: ResultsInput  # the input without its runs: settings, goals, the queue
    metric: str = ""  # what the leaderboard ranks: primary_metric, a goal's, else the first any run has
    counts: Counter[str] = field(default_factory=Counter)
    total: int = 0
    live: int = 0
    finished: int = 0
    queued: set[str] = field(default_factory=set)  # the queue's runs of this audience …
    unfinished: set[str] = field(default_factory=set)  # … that have not finished
    clusters: dict[str, _Cluster] = field(default_factory=dict)
    last_seen: dict[str, float] = field(default_factory=dict)  # experiment -> its latest activity
    names: dict[str, set[str]] = field(default_factory=dict)  # experiment -> metrics its runs have points of
    _ranked: list[tuple[tuple[Any, ...], int, RunRecord, Summary]] = field(default_factory=list)
    _hungry: list[tuple[float, int, RunRecord]] = field(default_factory=list)
    _seen: int = 0

    def __post_init__(self) -> None:
        self.metric = ranked_metric(self.data.settings.primary_metric, self.data.goals, "", "")
        self._queue = {k for k, _ in self.data.queue}
        self._checkpoints = tuple(sorted({int(c) for c in self.data.settings.checkpoints}))

    def add(self, r: RunRecord, history: Mapping[str, Any] | None) -> None:
        """One run (by number) and the history of its current attempt."""
        self._seen += 1
        self.counts[r.state.value] += 1
        self.total += 1
        self.live += r.state.live
        self.finished += r.state in FINISHED_STATES
        if r.key in self._queue:
            self.queued.add(r.key)
            if not r.state.finished:
                self.unfinished.add(r.key)
        c = self.clusters.setdefault(r.cluster or "?", _Cluster())
        c.runs += 1
        c.live += r.state.live
        c.runtime += r.runtime(self.data.now) or 0.0
        if r.peak_rss_mb is not None:
            c.rss = r.peak_rss_mb if c.rss is None else max(c.rss, r.peak_rss_mb)
            self._hungry.append((-r.peak_rss_mb, self._seen, r))
        if r.peak_gpu_mem_mb is not None:
            c.gpu = r.peak_gpu_mem_mb if c.gpu is None else max(c.gpu, r.peak_gpu_mem_mb)
        if r.min_disk_free_mb is not None:
            c.disk = r.min_disk_free_mb if c.disk is None else min(c.disk, r.min_disk_free_mb)
        t = max(x for x in (r.ended_at, r.heartbeat_at, r.started_at, r.submitted_at, 0.0) if x is not None)
        self.last_seen[r.experiment] = max(self.last_seen.get(r.experiment, 0.0), t)
        names = self.names.setdefault(r.experiment, set())
        names.update(m for m, pts in (history or {}).items() if len(pts))
        if self.metric:
            shown = run_values(r, history, self.data.goals, self._checkpoints, (self.metric,)).get(self.metric)
            if shown is not None and shown.best is not None and math.isfinite(shown.best):
                self._ranked.append((rank_key(self.goal, shown.best), self._seen, r, shown))
        if len(self._ranked) > 4 * DIGEST_TOP:
            self._ranked = sorted(self._ranked, key=lambda x: x[:2])[:DIGEST_TOP]
        if len(self._hungry) > 12:
            self._hungry = sorted(self._hungry, key=lambda x: x[:2])[:3]

    @property
    def goal(self) -> str:
        return default_goal(self.metric, self.data.goals)

    def waiting(self, every_row: bool) -> int:
        """The queue's runs that have not started (held, or waiting for a slot or for `after`):
        with `every_row`, the sheet's runs never started too."""
        return len((self._queue if every_row else self.queued) - self.unfinished)

    def leaders(self) -> list[dict[str, Any]]:
        """The DIGEST_TOP runs with a finite best of `metric`, the best first (ties: by `#`),
        with the values every surface shows (`orchestrator.shown`)."""
        ranked = sorted(self._ranked, key=lambda x: x[:2])[:DIGEST_TOP]
        cps = self._checkpoints
        return [{"rank": i + 1, "key": r.key, "state": r.state.value, "best": v.best, "last": v.last,
                 "at": dict(zip(cps, v.at, strict=True)), "step": r.step, "runtime": r.runtime(self.data.now)}
                for i, (_, _, r, v) in enumerate(ranked)]

    def hungry(self) -> list[RunRecord]:
        """The three runs with the highest peak memory."""
        return [r for _, _, r in sorted(self._hungry, key=lambda x: x[:2])[:3]]


def digest_runs(head: ResultsInput, runs: DigestRuns,
                audiences: Sequence[Audience]) -> list[tuple[ResultsInput, Digested]]:
    """Each audience's input (the events, queue and earlier attempts of its rows) and what
    its digest shows of its runs, learnt in one pass over every run."""
    wanted = {e.key for e in head.events} | {k for k, _ in head.queue} | {a.key for a in head.attempts}
    experiment_of: dict[str, str] = {}
    shown = [(a, Digested(head if a.experiments is None else _rows_of(head, a, None))) for a in audiences]
    _first_metrics([d for _, d in shown if not d.metric], runs)
    for batch, histories in runs.batches():
        for r in batch:
            if r.key in wanted:
                experiment_of[r.key] = r.experiment
            h = histories.get(r.key)
            for a, d in shown:
                if a.experiments is None or r.experiment in a.experiments:
                    d.add(r, h)
    return [(head if a.experiments is None else _rows_of(head, a, experiment_of), d) for a, d in shown]


def _first_metrics(undecided: Sequence[Digested], runs: DigestRuns) -> None:
    """The metric `undecided` rank (no primary_metric, no goal declared: `metrics.ranked_metric`),
    for every row alike. A pass of its own: the leaderboards are ranked in the next one."""
    if not undecided:
        return
    first_last = first_any = ""
    for batch, histories in runs.batches():
        for r in batch:
            if not first_last and r.last:
                first_last = next(iter(r.last))
                break
            if not first_any and (names := metric_names(r, histories.get(r.key))):
                first_any = names[0]
        if first_last:
            break
    for d in undecided:
        d.metric = ranked_metric("", (), first_last, first_any)


def _rows_of(head: ResultsInput, audience: Audience, experiment_of: Mapping[str, str] | None) -> ResultsInput:
    """`head` with the events, queue and earlier attempts of `audience`'s rows (`experiment_of`:
    each run's experiment; None: the queue's runs are told apart later, by `Digested`)."""
    rows = audience.experiments or frozenset()
    if experiment_of is None:
        return replace(head, events=(), attempts=(), attempt_histories={})
    ours = {k for k, e in experiment_of.items() if e in rows}
    return replace(head, events=tuple(e for e in head.events if e.key in ours),
                   queue=tuple(q for q in head.queue if q[0] in ours),
                   attempts=tuple(a for a in head.attempts if a.key in ours),
                   attempt_histories={k: v for k, v in head.attempt_histories.items() if k[0] in ours})
