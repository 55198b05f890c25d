"""Adaptive search rows (pure): the `search` cell, a trial's run key and parameters, how
many trials a pass asks for, what a finished run tells its trial, and the Optimisation
summary every surface reads.

A row with `search = tpe(val_loss, 60)` is an adaptive row: its runs are not a grid but the
trials nero asks Optuna for (`search.py`, Optuna's home), up to the budget (60), as slots
free up. The cell is `SAMPLER(METRIC, BUDGET)` or `SAMPLER(min|max METRIC, BUDGET)`: the
goal is the metric's (`metrics.default_goal`, the Metrics sheet's) unless the cell names one.
Trial `n` is the run `experiment[trial=n]` (Optuna's trial number), with the row's scalars
fixed and each search dimension (a list, `range`/`linspace`/`logspace`, `uniform`,
`loguniform`, `randint`, `choice`) set to the value Optuna chose.

What a trial is told, once its run has ended for good (`outcome`): the metric's last
value (`shown.run_values`, what every surface shows as last) for a completed run
(`complete`; a run without a finite value is `fail`), `pruned` for a run a rule terminated,
`fail` for a failed, lost, timed-out or preempted run that has no retry left. A cancelled
run tells nothing (its row may start it again).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .metrics import better, default_goal
from .model import (
    Experiment,
    Optimisation,
    Problem,
    RunRecord,
    RunState,
    Scalar,
    Search,
    TrialRow,
    Variation,
)
from .shown import run_values
from .space import Distribution, parse_distribution
from .spec import run_key
from .tokens import number, scan

__all__ = [
    "SAMPLERS", "TRIAL", "Trial", "dimension", "dimensions", "outcome", "optimisation",
    "parse_search", "search_problems",
    "search_goal", "stand_in", "to_ask", "trial_key", "trial_params",
]

SAMPLERS = {
    "tpe": "Tree-structured Parzen Estimator (Optuna's TPESampler)",
    "random": "random search (Optuna's RandomSampler)",
    "cmaes": "CMA-ES (Optuna's CmaEsSampler; the package cmaes comes with the search extra)",
    "gp": "Gaussian process (Optuna's GPSampler; needs torch and scipy)",
}
TRIAL = "trial"  # the name of a trial's number in its run key
MAX_BUDGET = 100_000
_GOALS = ("min", "max")


@dataclass(frozen=True)
class Trial:
    """A trial nero asked for, as its state keeps it: the chosen values of the search
    dimensions, and what it was told ("" while not told: `running`)."""

    experiment: str
    number: int
    params: tuple[tuple[str, Scalar], ...]
    told: str = ""  # complete | fail | pruned
    value: float | None = None


def parse_search(text: str) -> Search:
    """`tpe(val_loss, 60)`, `random(max accuracy, 20)` → Search; ValueError says what is wrong."""
    example = "write e.g. tpe(val_loss, 60): a sampler (" + ", ".join(SAMPLERS) + "), the metric and the number of trials"
    tokens = [t for t in scan(text) if t.kind != "end"]
    words = [t.text for t in tokens]
    if len(words) < 6 or words[1] != "(" or words[-1] != ")" or "," not in words:
        raise ValueError(f"{text!r} is not a search; {example}")
    sampler = words[0].lower()
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {words[0]!r}; use one of {', '.join(SAMPLERS)} ({example})")
    comma = max(t.pos for t in tokens if t.text == ",")
    named = text[tokens[1].stop:comma].split()  # a metric name may hold / or . (train/loss)
    goal = ""
    if len(named) == 2 and named[0].lower() in _GOALS:
        goal, named = named[0].lower(), named[1:]
    if len(named) != 1:
        raise ValueError(f"{text!r}: name one metric (optionally after min or max); {example}")
    n = number(text[comma + 1:tokens[-1].pos])
    if n is None or not n.is_integer() or not 1 <= n <= MAX_BUDGET:
        raise ValueError(f"{text!r}: the number of trials must be a whole number from 1 to {MAX_BUDGET:,}; {example}")
    return Search(sampler, named[0], int(n), goal, text.strip())


def search_goal(search: Search, goals: Mapping[str, str]) -> str:
    """The goal a search optimises: its cell's, else the metric's (`metrics.default_goal`)."""
    return search.goal or default_goal(search.metric, goals)


def trial_key(experiment: str, number: int) -> str:
    """The run key of trial `number`: `experiment[trial=number]`."""
    return run_key(experiment, ((TRIAL, number),))


def dimension(value: object) -> Distribution | tuple[Scalar, ...] | None:
    """A cell of an adaptive row as a search dimension: a distribution, the values of a
    list or `range`/`linspace`/`logspace` (categorical), or None for a fixed value."""
    if isinstance(value, Variation):
        return value.values
    if isinstance(value, Distribution):
        return value
    return parse_distribution(value) if isinstance(value, str) else None


def dimensions(exp: Experiment) -> list[str]:
    """The names of an adaptive row's search dimensions (its cells that are not one value)."""
    return [n for n, v in exp.params if dimension(v) is not None]


def search_problems(exp: Experiment) -> list[Problem]:
    """What keeps an adaptive row from being searched, each at its cell: no dimension (every
    cell one value), or `normal(…)` (Optuna has no normal distribution)."""
    out = []
    for name, v in exp.params:
        try:
            d = dimension(v)
        except ValueError:
            continue  # the sheet reports the cell itself
        if isinstance(d, Distribution) and d.kind == "normal":
            out.append(Problem(exp.cell(name) or f"Experiments row {exp.row}",
                               f"{name}: normal(…) cannot be searched (Optuna has no normal distribution); in a row "
                               "with search write uniform(a, b) or loguniform(a, b) over the range you mean"))
    if not any(dimension(v) is not None for _, v in exp.params if not _unreadable(v)):
        out.append(Problem(exp.cell("search") or exp.cell("id"),
                           "this row searches nothing: give at least one parameter a range to search, e.g. "
                           "uniform(0, 1), loguniform(1e-5, 1e-1), randint(1, 8), choice(adam, sgd) or [16, 32, 64]"))
    return out


def _unreadable(v: object) -> bool:
    try:
        dimension(v)
    except ValueError:
        return True
    return False


def stand_in(exp: Experiment) -> dict[str, Scalar]:
    """Values of an adaptive row's dimensions to render its job with before any trial is
    asked (each dimension's first value, a range's lower end)."""
    out: dict[str, Scalar] = {}
    for name, v in exp.params:
        d = dimension(v)
        if d is not None:
            out[name] = d[0] if isinstance(d, tuple) else d.args[0]
    return out


def trial_params(exp: Experiment, chosen: Mapping[str, Scalar]) -> tuple[tuple[str, Scalar], ...]:
    """A trial's parameters in column order: its row's scalars, each dimension as chosen."""
    dims = set(dimensions(exp))
    return tuple((n, chosen[n] if n in dims else v) for n, v in exp.params)  # type: ignore[misc]


def to_ask(search: Search, trials: int, waiting: int, free: int) -> int:
    """How many new trials a pass asks for: the budget left, at most the free slots of the
    row's clusters not already taken by its trials waiting to be submitted."""
    return max(0, min(search.budget - trials, free - waiting))


def outcome(rec: RunRecord, retries: int, metric: str, history: Mapping[str, Sequence] | None,
            goals: Mapping[str, str]) -> tuple[str, float | None] | None:
    """What a run's trial is told (see the module), or None while the run may go on."""
    if rec.intent or not rec.state.finished:
        return None
    if rec.state is RunState.COMPLETED:
        shown = run_values(rec, history, goals, names=[metric]).get(metric)
        value = shown.last if shown is not None else None
        if value is None or not math.isfinite(value):
            return "fail", None
        return "complete", float(value)
    if rec.state is RunState.TERMINATED:
        return "pruned", None
    if rec.state is RunState.CANCELLED or rec.retry < retries:
        return None
    return "fail", None


def optimisation(exp: Experiment, trials: Iterable[Trial], goals: Mapping[str, str],
                 importances: Iterable[tuple[str, float]] = ()) -> Optimisation:
    """The Optimisation of an adaptive row from its trials (in trial order)."""
    assert exp.search is not None
    goal = search_goal(exp.search, goals)
    rows: list[TrialRow] = []
    best: TrialRow | None = None
    for t in sorted(trials, key=lambda t: t.number):
        state = t.told or "running"
        row = TrialRow(t.number, trial_key(exp.id, t.number), t.params, state, t.value, None)
        if state == "complete" and t.value is not None and (best is None or better(goal, t.value, best.value)):
            best = row
        rows.append(TrialRow(row.number, row.key, row.params, row.state, row.value, best.value if best else None))
        if best is row:
            best = rows[-1]
    return Optimisation(exp.id, exp.search.sampler, exp.search.metric, goal, exp.search.budget, tuple(rows), best,
                        tuple(importances))
