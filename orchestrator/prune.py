"""Pruning rules: stop a run that does worse than the other runs of its row at the same step (pure).

A rule of the rules column that starts with `prune` compares each live run with its
siblings, the other runs of the same experiment row (grid points, samples, search trials),
on one metric's history, the histories nero already collects (no change to the program)::

    prune median(val_loss, warmup=5, min_runs=3)
    prune asha(val_loss, min_step=1, eta=3)
    prune hyperband(val_loss, min_step=1, max_step=81, eta=3)

The metric comes first, then `name=whole number` settings in any order, each at most once.
The goal (lower or higher is better) is the metric's, from `metrics.default_goal`.

- `median` (Optuna's MedianPruner): at step s, the run's best value up to s is compared with
  the median of the others' values at s (each one's latest point at or before s, once it got
  to s); worse than the median stops the run. s is the run's latest step, or, while fewer
  than `min_runs` others have got that far, its latest step that `min_runs` others reached.
  Nothing is judged before step `warmup`. A run with no value but NaN past `warmup` stops.
- `asha` (asynchronous successive halving, Optuna's SuccessiveHalvingPruner): rung k is at
  step `min_step·eta^k`; a run's value at a rung is its value at its first step at or past
  it. A run is judged at the highest rung it has reached, against every run of the row that
  reached that rung: outside the top ⌊n/eta⌋ (at least one) of those n it stops. Once it
  reaches the next rung, the one before is never looked at again.
- `hyperband` (Optuna's HyperbandPruner): ⌊log_eta(max_step/min_step)⌋ + 1 brackets of
  `asha`; bracket b's rungs start at `min_step·eta^b`. A run's bracket comes from a CRC-32 of
  its key, weighted towards the early-stopping brackets as Optuna weights them, so the same
  key is always in the same bracket; a run competes only with the runs of its bracket.

`decide` is the whole decision: given each run's (step, value) history of the metric and
which runs may be stopped, the runs to stop and the numbers why. Reading the histories and
stopping the runs is `rules.prune_verdicts`'s and the reconcile pass's job.
"""

from __future__ import annotations

import binascii
import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import median

from .errors import ExpressionError
from .metrics import GOALS, best, number_steps, value_at
from .series import Series
from .tokens import Token, tokenize
from .units import format_number

__all__ = ["KINDS", "MAX_SETTING", "Pruner", "brackets", "bracket_of", "decide", "parse_pruner"]

MAX_SETTING = 10**9  # a step or a count larger than any run reports

# each kind's settings and their defaults (None: required)
KINDS: Mapping[str, Mapping[str, int | None]] = {
    "median": {"warmup": 0, "min_runs": 3},
    "asha": {"min_step": 1, "eta": 3},
    "hyperband": {"min_step": 1, "max_step": None, "eta": 3},
}
_LEAST = {"warmup": 0, "min_runs": 1, "min_step": 1, "max_step": 1, "eta": 2}
_USAGE = {
    "median": "prune median(metric, warmup=0, min_runs=3)",
    "asha": "prune asha(metric, min_step=1, eta=3)",
    "hyperband": "prune hyperband(metric, min_step=1, max_step=N, eta=3)",
}


@dataclass(frozen=True)
class Pruner:
    """One pruning rule: its kind (`median`, `asha`, `hyperband`), the metric and the settings
    (every setting of its kind, defaults filled in)."""

    kind: str
    metric: str
    settings: tuple[tuple[str, int], ...]

    def get(self, name: str) -> int:
        return dict(self.settings)[name]


# ---------------------------------------------------------------------------------- parsing
def parse_pruner(text: str, start: int, end: int, label: str = "") -> Pruner:
    """The pruning rule `text[start:end]` (`prune kind(metric, name=N, …)`); ExpressionError
    names what is wrong and points into the whole `text`."""
    prefix = f"{label}: " if label else ""
    tokens = tokenize(text, start, end)

    def error(message: str, tok: Token) -> ExpressionError:
        return ExpressionError(text, prefix + message, tok.pos)

    kinds = ", ".join(_USAGE.values())
    kind_tok = tokens[1]
    kind = kind_tok.text.lower()
    if kind_tok.kind != "name" or kind not in KINDS:
        raise error(f"'prune' takes one of: {kinds}", kind_tok)
    usage = _USAGE[kind]
    i = 2

    def expect(what: str, ok: bool) -> Token:
        nonlocal i
        tok = tokens[i]
        if not ok:
            found = "the end of the rule" if tok.kind == "end" else repr(tok.text)
            raise error(f"{what} expected, found {found}; write {usage}", tok)
        i += 1
        return tok

    expect("'('", tokens[i].text == "(" and tokens[i].kind == "op")
    metric = expect("a metric name", tokens[i].kind == "name").text
    if metric.startswith("_"):
        raise error(f"names may not begin with '_' ({metric!r})", tokens[i - 1])
    given: dict[str, int] = {}
    while tokens[i].text == "," and tokens[i].kind == "op":
        i += 1
        name_tok = expect("a setting (name=number)", tokens[i].kind == "name")
        name = name_tok.text.lower()
        if name not in KINDS[kind]:
            raise error(f"{kind}() has no setting {name_tok.text!r}; its settings are "
                        f"{', '.join(KINDS[kind])}: {usage}", name_tok)
        if name in given:
            raise error(f"{name} is given twice", name_tok)
        expect(f"'=' after {name}", tokens[i].kind == "op" and tokens[i].text == "=")
        num = expect(f"a whole number for {name}", tokens[i].kind == "num")
        value = float(num.value)
        least = _LEAST[name]
        if not (value.is_integer() and least <= value <= MAX_SETTING):
            raise error(f"{name} is a whole number from {least} to {MAX_SETTING}, not {num.text}", num)
        given[name] = int(value)
    expect("',' or ')'", tokens[i].text == ")" and tokens[i].kind == "op")
    expect("the end of the rule (or 'after N')", tokens[i].kind == "end")
    settings = {name: given.get(name, default) for name, default in KINDS[kind].items()}
    missing = [name for name, v in settings.items() if v is None]
    if missing:
        raise error(f"{kind}() needs {', '.join(missing)}: {usage}", kind_tok)
    if kind == "hyperband" and settings["max_step"] < settings["min_step"]:  # type: ignore[operator]
        raise error(f"hyperband()'s max_step ({settings['max_step']}) is below its min_step "
                    f"({settings['min_step']})", kind_tok)
    return Pruner(kind, metric, tuple((k, int(v)) for k, v in settings.items()))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- curves
class _Curve:
    """One run's history of the metric: steps numbered and ascending, one point a step."""

    __slots__ = ("steps", "values", "last")

    def __init__(self, steps: Sequence[float], values: Sequence[float]):
        self.steps, self.values = steps, values
        self.last: float = steps[-1]

    def first_from(self, step: float) -> tuple[float, float] | None:
        """The first point at or past `step` (a rung's value), None if none."""
        i = bisect_left(self.steps, step)
        return (self.steps[i], self.values[i]) if i < len(self.steps) else None


def _curve(points: Sequence[tuple[int | None, float]]) -> _Curve | None:
    if isinstance(points, Series) and points.ordered:  # the usual history: the arrays as they are
        return _Curve(points.steps, points.values) if len(points) else None
    pairs = list(points)
    if not pairs:
        return None
    numbered = number_steps(s for s, _ in pairs)
    by_step: dict[float, float] = {}
    for step, (_, value) in zip(numbered, pairs, strict=True):  # of points at one step, the later
        by_step[step] = math.nan if value is None else float(value)
    steps = sorted(by_step)
    return _Curve(steps, [by_step[s] for s in steps])


def _shown(v: float) -> str:
    return format_number(float(v))


# ---------------------------------------------------------------------------------- deciding
def decide(pruner: Pruner, goal: str, histories: Mapping[str, Sequence[tuple[int | None, float]]],
           candidates: Iterable[str]) -> dict[str, str]:
    """The runs of `candidates` to stop, each with the numbers why (`val_loss: best 0.8 up to
    step 6 vs median 0.41 of 5 other runs at step 6`). `histories` holds the metric's history
    of every run of the row (those without one left out), candidates included; `goal` is the
    metric's ("min" or "max")."""
    if goal not in GOALS:
        raise ValueError(f"goal must be one of {GOALS}, not {goal!r}")
    curves = {key: c for key, points in histories.items() if (c := _curve(points)) is not None}
    wanted = [key for key in candidates if key in curves]
    if not wanted:
        return {}
    if pruner.kind == "median":
        return _median(pruner, goal, curves, wanted)
    if pruner.kind == "asha":
        return _halving(pruner, goal, curves, wanted, 0, pruner.get("min_step"))
    out: dict[str, str] = {}
    budgets = brackets(pruner.get("min_step"), pruner.get("max_step"), pruner.get("eta"))
    groups: dict[int, list[str]] = {}
    for key in curves:
        groups.setdefault(bracket_of(key, budgets), []).append(key)
    for b, keys in sorted(groups.items()):
        mine = set(keys)
        found = _halving(pruner, goal, {k: curves[k] for k in keys}, [k for k in wanted if k in mine], b,
                         pruner.get("min_step"))
        out.update({k: f"{why} in bracket {b} (brackets 0 to {len(budgets) - 1})" for k, why in found.items()})
    return out


def _median(pruner: Pruner, goal: str, curves: Mapping[str, _Curve], wanted: list[str]) -> dict[str, str]:
    warmup, least, metric = pruner.get("warmup"), pruner.get("min_runs"), pruner.metric
    lasts = sorted((c.last for c in curves.values()), reverse=True)
    at_step: dict[float, tuple[list[float], int]] = {}  # step -> every run's value there, sorted (NaN left out); count
    out: dict[str, str] = {}
    for key in wanted:
        c = curves[key]
        if c.last < warmup:
            continue
        if best(c.values, goal) is None:
            out[key] = f"{metric}: no value but nan up to step {_shown(c.last)}"
            continue
        # the least step that `least` other runs got to (this run left out of the count)
        if len(lasts) <= least:
            continue
        reached = lasts[least] if c.last >= lasts[least - 1] else lasts[least - 1]
        i = bisect_right(c.steps, min(c.last, reached)) - 1
        if i < 0 or c.steps[i] < warmup:
            continue
        step = c.steps[i]
        if step not in at_step:
            each = [v for o in curves.values() if o.last >= step and (v := value_at(o.steps, o.values, step)) is not None]
            at_step[step] = (sorted(v for v in each if not math.isnan(v)), len(each))
        ordered, count = at_step[step]
        own = c.values[i]  # its own point at that step, among the values there
        others = count - 1
        if others < least:
            continue
        values = ordered
        if not math.isnan(own):
            j = bisect_left(ordered, own)
            values = ordered[:j] + ordered[j + 1:]
        if not values:
            continue
        mid = median(values)
        mine = best(c.values[: i + 1], goal)
        if mine is None:  # NaN only up to that step, numbers since: not judged there
            continue
        if mine > mid if goal == "min" else mine < mid:
            out[key] = (f"{metric}: best {_shown(mine)} up to step {_shown(step)} "
                        f"vs median {_shown(mid)} of {others} other run{'' if others == 1 else 's'} at step {_shown(step)}")
    return out


def _halving(pruner: Pruner, goal: str, curves: Mapping[str, _Curve], wanted: list[str], rate: int,
             min_step: int) -> dict[str, str]:
    """Asynchronous successive halving over `curves`, rung k at min_step·eta^(rate+k)."""
    eta, metric = pruner.get("eta"), pruner.metric
    rungs: dict[int, list[float]] = {}  # rung -> the values of every run that reached it, ascending
    out: dict[str, str] = {}
    for key in wanted:
        c = curves[key]
        rung, step = -1, min_step * eta**rate
        while step <= c.last:
            rung, step = rung + 1, step * eta
        if rung < 0:
            continue
        rung_step = step // eta
        point = c.first_from(rung_step)
        assert point is not None
        at, value = point
        where = f"rung {rung} (step {_shown(rung_step)})"
        if math.isnan(value):
            out[key] = f"{metric}=nan at {where}"
            continue
        if rung not in rungs:
            found = (o.first_from(rung_step) for o in curves.values())
            rungs[rung] = sorted(p[1] for p in found if p is not None and not math.isnan(p[1]))
        values = rungs[rung]
        n = len(values)
        keep = max(1, n // eta)
        edge = values[keep - 1] if goal == "min" else values[n - keep]
        if value > edge if goal == "min" else value < edge:
            rank = 1 + (bisect_left(values, value) if goal == "min" else n - bisect_right(values, value))
            shown_at = "" if at == rung_step else f", its value at step {_shown(at)}"
            going = "only the best goes on" if keep == 1 else f"the best {keep} go on"
            out[key] = f"{metric}={_shown(value)} at {where}{shown_at}: rank {rank} of the {n} runs that reached it, {going}"
    return out


# ---------------------------------------------------------------------------------- hyperband
def brackets(min_step: int, max_step: int, eta: int) -> tuple[int, ...]:
    """Each bracket's share of runs (Optuna's trial allocation budgets): ⌊log_eta(max/min)⌋ + 1
    brackets, bracket b weighted ⌈n·eta^s/(s+1)⌉ with s = n-1-b."""
    n = math.floor(math.log(max_step / min_step, eta)) + 1
    return tuple(math.ceil(n * eta ** (n - 1 - b) / (n - b)) for b in range(n))


def bracket_of(key: str, budgets: Sequence[int]) -> int:
    """The bracket of a run: the CRC-32 of its key, modulo the budgets' sum, falling into
    them in order (so a key always lands in the same bracket)."""
    n = binascii.crc32(key.encode()) % sum(budgets)
    for b, budget in enumerate(budgets):
        n -= budget
        if n < 0:
            return b
    raise AssertionError("unreachable: the budgets sum to more than n")
