"""What an expression means for one run: the `Facts` it is evaluated against and the
evaluation itself, with the values it looked at for messages (pure).

A name is, in this order: `runtime` (seconds, None before the run starts), `step`, `state`,
`cluster`, `experiment` or `id` (the experiment id), `key` (the run key) — see
`BUILTIN_NAMES` — then the run's latest value of that metric, then its parameter.
`best(m)` is the best value so far in the metric's goal direction (`goal_of`), `min(m)` and
`max(m)` the smallest and largest; `plateau(m, n[, delta])` holds when the metric has at least
n+1 evaluations and the best of the last n does not improve on the best before them by more
than delta in its goal direction (default: 0.01 % of that best, so a run creeping forward by
rounding noise counts as stalled).

Missing data never makes a condition true: a comparison involving a name the run does not have
(yet) is *unknown*; `not`, `and`, `or` follow three-valued logic (unknown `and` false is false,
unknown `or` true is true, `not` unknown is unknown) and an unknown result counts as false.
Comparisons follow IEEE 754: every comparison with NaN is false except `!=` (use `isnan`).
Ordering compares two numbers or two strings; values of different types are never equal.
Arithmetic on a non-number is unknown; division by zero gives ±inf or nan.

The selector-only conditions are never unknown: `Numbers` holds when the run's short number
is in its range, `States` when its state is one the word stands for, `Glob` when the pattern
matches the whole run key or the whole experiment id.
"""

from __future__ import annotations

import fnmatch
import math
import re
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ..metrics import number_steps
from ..model import MAX_GOAL_NAMES, RunRecord, Series
from ..units import format_duration, format_number
from .tree import (
    BUILTIN_NAMES,
    STATE_WORDS,
    Arith,
    Call,
    Compare,
    Expr,
    Glob,
    Literal,
    Logic,
    Name,
    Neg,
    Not,
    Numbers,
    States,
)

__all__ = [
    "PLATEAU_RELATIVE_DELTA",
    "Explanation",
    "Facts",
    "Value",
    "evaluate",
    "explain",
    "format_value",
    "goal_of",
    "truth",
]

PLATEAU_RELATIVE_DELTA = 1e-4  # plateau(m, n) without delta: smaller gains do not count

Value = float | str | bool | None  # None: the run has no such value (yet)


def goal_of(metric: str, goals: Mapping[str, str]) -> str:
    """The goal direction of a metric: the Metrics sheet's, else the same default as
    `Workbook.goal` (`max` for accuracy-like names, `min` otherwise)."""
    goal = goals.get(metric)
    if goal in ("min", "max"):
        return goal
    return "max" if metric.split("@")[0].lower() in MAX_GOAL_NAMES else "min"


def _latest(s: Series) -> float:
    """A history's value at its largest step (a point without one numbered one past the
    previous: metrics.number_steps; of equal steps the later)."""
    if s.ordered:
        return s.values[-1]
    steps = number_steps(s.steps)
    return s.values[max(range(len(steps)), key=lambda k: (steps[k], k))]


@dataclass(frozen=True)
class Facts:
    """What an expression may know about one run. `metrics` holds the latest values,
    `history` every value of a metric in step order (the latest included)."""

    key: str
    number: int = 0
    experiment: str = ""
    state: str = "pending"
    cluster: str = ""
    runtime: float | None = None  # seconds
    step: int | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    history: Mapping[str, Sequence[float]] = field(default_factory=dict)
    goals: Mapping[str, str] = field(default_factory=dict)  # metric -> "min" | "max"
    params: Mapping[str, object] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        record: RunRecord,
        now: float,
        history: Mapping[str, Sequence[float] | Sequence[tuple[int | None, float]]] | None = None,
        goals: Mapping[str, str] | None = None,
    ) -> Facts:
        """The facts of a stored run at time `now`; `history` may hold plain values, the
        `(step, value)` points of `ResultsInput.histories` or their Series (whose values
        are used as they are). A metric's latest value is its Series' at its largest step
        where there is one (the store's history: of two sources at a step the higher-ranked,
        so a point that arrives late from a metric file, or at an earlier step, does not
        replace it), else the stored last value."""
        hist: dict[str, Sequence[float]] = {}
        latest = dict(record.last)
        for name, points in (history or {}).items():
            if isinstance(points, Series):
                hist[name] = points.values
                if len(points.values):
                    latest[name] = _latest(points)
            else:
                hist[name] = tuple(p[1] if isinstance(p, tuple) else p for p in points)
        return cls(
            key=record.key,
            number=record.number,
            experiment=record.experiment,
            state=str(record.state),
            cluster=record.cluster,
            runtime=record.runtime(now),
            step=record.step,
            metrics=latest,
            history=hist,
            goals=dict(goals or {}),
            params=dict(record.params),
        )

    def goal(self, metric: str) -> str:
        return goal_of(metric, self.goals)

    def series(self, metric: str) -> tuple[float, ...]:
        """Every value of a metric so far (the latest alone when no history was given)."""
        values = self.history.get(metric)
        if values:
            if isinstance(values, array):  # a Series' values: floats already
                return tuple(values)
            return tuple(_as_number(v) for v in values)
        if metric in self.metrics:
            return (_as_number(self.metrics[metric]),)
        return ()

    def lookup(self, name: str) -> tuple[Value, str]:
        """A name's value and where it came from: "builtin", "metric", "param" or "" (none)."""
        if name in BUILTIN_NAMES:
            raw: object = {
                "runtime": self.runtime,
                "step": self.step,
                "state": None if self.state is None else str(self.state),
                "cluster": self.cluster,
                "experiment": self.experiment,
                "id": self.experiment,
                "key": self.key,
            }[name]
            return _coerce(raw), "builtin"
        if name in self.metrics:
            return _coerce(self.metrics[name]), "metric"
        values = self.history.get(name)
        if values:
            return _coerce(values[-1]), "metric"
        if name in self.params:
            return _coerce(self.params[name]), "param"
        return None, ""


def _as_number(v: object) -> float:
    value = _coerce(v)
    return value if isinstance(value, float) else math.nan


def _coerce(v: object) -> Value:
    """Only numbers (as floats), strings and booleans are values; anything else is missing."""
    if v is None or isinstance(v, bool | str):
        return v  # type: ignore[return-value]
    if isinstance(v, int):
        try:
            return float(v)
        except OverflowError:
            return math.inf if v > 0 else -math.inf
    if isinstance(v, float):
        return v
    return None

def _is_number(v: Value) -> bool:
    return isinstance(v, float)


def _type(v: Value) -> str:
    return "bool" if isinstance(v, bool) else "number" if isinstance(v, float) else "str"


def _equal(a: Value, b: Value) -> bool:
    return _type(a) == _type(b) and a == b


def _compare(op: str, a: Value, b: Value) -> bool | None:
    if a is None or b is None:
        return None
    if op == "==":
        return _equal(a, b)
    if op == "!=":
        return not _equal(a, b)
    if not ((_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str))):
        return False
    if op == "<":
        return a < b  # type: ignore[operator]
    if op == "<=":
        return a <= b  # type: ignore[operator]
    if op == ">":
        return a > b  # type: ignore[operator]
    return a >= b  # type: ignore[operator]


def _all(values: list[bool | None]) -> bool | None:
    if any(v is False for v in values):
        return False
    return None if any(v is None for v in values) else True


def _any(values: list[bool | None]) -> bool | None:
    if any(v is True for v in values):
        return True
    return None if any(v is None for v in values) else False


def _divide(a: float, b: float) -> float:
    if b != 0:
        return a / b
    if a == 0 or math.isnan(a):
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


def _best(values: Sequence[float], goal: str) -> float | None:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return None
    return max(finite) if goal == "max" else min(finite)


@lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern.replace("[", "[[]")))


def _condition(v: Value) -> bool | None:
    return v if isinstance(v, bool) else None


@dataclass(frozen=True)
class Explanation:
    """An evaluation with the values it looked at, for messages."""

    result: bool | None  # None: unknown (missing data), which counts as false
    values: tuple[tuple[str, str], ...]  # (name, formatted value) in order of appearance
    notes: tuple[str, ...]
    uses_metrics: bool


class _Evaluator:
    def __init__(self, facts: Facts):
        self.facts = facts
        self.values: dict[str, str] = {}
        self.notes: list[str] = []
        self.uses_metrics = False

    def note_name(self, name: str, value: Value, origin: str) -> None:
        if origin == "metric":
            self.uses_metrics = True
        if value is not None and name not in self.values:
            self.values[name] = format_value(value, name)

    def value(self, node: Expr) -> Value:
        if isinstance(node, Literal):
            return node.value
        if isinstance(node, Name):
            value, origin = self.facts.lookup(node.name)
            self.note_name(node.name, value, origin)
            return value
        if isinstance(node, Neg):
            v = self.value(node.operand)
            return -v if isinstance(v, float) else None
        if isinstance(node, Not):
            c = _condition(self.value(node.operand))
            return None if c is None else not c
        if isinstance(node, Arith):
            a, b = self.value(node.left), self.value(node.right)
            if not (isinstance(a, float) and isinstance(b, float)):
                return None
            if node.op == "+":
                return a + b
            if node.op == "-":
                return a - b
            if node.op == "*":
                return a * b
            return _divide(a, b)
        if isinstance(node, Compare):
            values = [self.value(o) for o in node.operands]
            return _all([_compare(op, values[k], values[k + 1]) for k, op in enumerate(node.ops)])
        if isinstance(node, Logic):
            results = [_condition(self.value(o)) for o in node.operands]
            return _all(results) if node.op == "and" else _any(results)
        if isinstance(node, Call):
            return self.call(node)
        if isinstance(node, Numbers):
            return node.low <= self.facts.number <= node.high
        if isinstance(node, States):
            return str(self.facts.state) in STATE_WORDS[node.word]
        if isinstance(node, Glob):
            regex = _glob_regex(node.pattern)
            return bool(regex.match(self.facts.key) or regex.match(self.facts.experiment))
        raise TypeError(f"not an expression node: {node!r}")

    def call(self, node: Call) -> Value:
        func = node.func
        if func in ("isnan", "isinf", "abs"):
            v = self.value(node.args[0])
            if v is None:
                return None
            if func == "abs":
                return abs(v) if isinstance(v, float) else None
            if not isinstance(v, float):
                return False
            return math.isnan(v) if func == "isnan" else math.isinf(v)
        metric = node.args[0]
        assert isinstance(metric, Name)
        m = metric.name
        latest, origin = self.facts.lookup(m)
        series = self.facts.series(m)
        self.uses_metrics = True
        if func != "plateau":
            label = f"{func}({m})"
            if not series:
                return None
            goal = self.facts.goal(m) if func == "best" else func
            best = _best(series, goal)
            result = math.nan if best is None else best
            self.values.setdefault(label, format_value(result, m))
            return result
        self.note_name(m, latest, "metric")
        n = int(node.args[1].value)  # type: ignore[attr-defined]
        if len(series) < n + 1:
            return None
        goal = self.facts.goal(m)
        before, recent = _best(series[:-n], goal), _best(series[-n:], goal)
        if len(node.args) == 3:
            delta = node.args[2].value  # type: ignore[attr-defined]
        else:  # improvements below 0.01 % of the best are noise, not progress
            delta = PLATEAU_RELATIVE_DELTA * abs(before) if before is not None and math.isfinite(before) else 0.0
        if recent is None:
            improved = False
        elif before is None:
            improved = True
        else:
            improved = recent < before - delta if goal == "min" else recent > before + delta
        shown_recent = "nan" if recent is None else format_number(recent)
        shown_before = "nan" if before is None else format_number(before)
        evaluations = "evaluation" if n == 1 else f"{n} evaluations"
        self.notes.append(f"best {shown_recent} in the last {evaluations} vs {shown_before} before")
        return not improved


def truth(expr: Expr, facts: Facts) -> bool | None:
    """Three-valued result: True, False, or None when missing data leaves it unknown."""
    return _condition(_Evaluator(facts).value(expr))


def evaluate(expr: Expr, facts: Facts) -> bool:
    """Whether the condition holds for the run; unknown (missing data) is False."""
    return truth(expr, facts) is True


def explain(expr: Expr, facts: Facts) -> Explanation:
    """The evaluation with the values and notes behind it (for a rule's message)."""
    ev = _Evaluator(facts)
    result = _condition(ev.value(expr))
    return Explanation(result, tuple(ev.values.items()), tuple(ev.notes), ev.uses_metrics)


def format_value(v: Value | Any, name: str = "") -> str:
    """A value for messages: `missing` for none, `true`/`false`, numbers as `format_number`
    writes them (`runtime` as a duration), text as it is."""
    if v is None:
        return "missing"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return format_duration(float(v)) if name == "runtime" else format_number(float(v))
    return str(v)

