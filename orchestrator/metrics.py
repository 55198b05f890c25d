"""What a metric history means: every rule about metric values, in one place (pure).

A metric is a name with a history of points (step, value) per attempt of a run. Every
module that ranks, folds, plots or checks metric values asks these functions, so that
the stored best, the results workbook, the e-mails, the exports and the rules agree.

    rule                  function                  the rule
    ────────────────────  ────────────────────────  ──────────────────────────────────────────
    goal                  default_goal(m, goals)    the Metrics row's goal ("min" / "max");
                          goals_of(names, goals)    else "max" for accuracy-like names
                                                    (MAX_GOAL_NAMES, case and a `@checkpoint`
                                                    suffix ignored: `Acc@50` → max); else "min"
    better                better(goal, a, b)        a is strictly larger (max) / smaller (min)
    best                  best(values, goal)        the best value, NaN skipped (±inf counts);
                          improves(goal, v, best)   None if none. Folded point by point: a NaN
                                                    never improves, anything replaces a missing
                                                    or NaN best, a tie keeps the earlier value
    best shown            best_finite(values, goal) the best finite value (NaN and ±inf
                          shown_best(values, goal)  skipped): what every surface shows as
                                                    `best:` (a diverged run's inf is not its
                                                    best; NaN never is); `shown_best` gives
                                                    NaN for a history with no finite value,
                                                    None for none at all
    shown values          summarize(steps, vs,      last, best shown and every checkpoint
                          goal, checkpoints)        value of one history (steps ascending):
                                                    what status --json, export, frames,
                                                    results and the digest show (shown.py)
    ranking               rank_key(goal, value)     sort key: the best first
    last                  last(values)              the last value of a history (after
                                                    curves.normalize: at its largest step),
                                                    NaN included
    step numbering        number_steps(steps)       a point without a step is one past the
                                                    previous point's step (the first is 1)
    checkpoint            value_at(steps, vs, cp)   the value at the latest step ≤ cp, once
                                                    the run reached cp (its last step ≥ cp);
                                                    steps ascending; None before
    source precedence     SOURCE_RANK, source_rank  track > tensorboard = csv (exact) >
                          supersedes(rank, old)     stdout > stderr (printed, rounded): one
                          prefer_tracked(p, t)      point per step, the higher rank wins, of
                                                    equal rank the later point; in one read
                                                    of a job's files, a metric logged exactly
                                                    (track, event file, CSV) drops its
                                                    printed points

Stdlib only and no import of the rest of nero (model.py builds on it), so any layer may
use it. Values are floats; NaN stands for "not a number" (a diverged run), None for "no
value at all".
"""

from __future__ import annotations

import difflib
import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .model import MetricPoint

__all__ = [
    "GOALS", "MAX_GOAL_NAMES", "SOURCE_RANK",
    "default_goal", "goals_of", "ranked_metric", "better", "improves", "best", "best_finite", "rank_key", "last",
    "number_steps", "value_at", "Summary", "shown_best", "summarize", "source_rank", "supersedes", "prefer_tracked",
    "unknown_metric",
]

GOALS = ("min", "max")
MAX_GOAL_NAMES = frozenset({"acc", "accuracy", "val_acc", "test_acc", "f1", "auc", "bleu", "r2", "reward",
                            "score", "precision", "recall"})
# exact values (track's, an event file's, a CSV's) before printed (rounded) ones; unknown: 0
SOURCE_RANK = {"track": 3, "tensorboard": 2, "csv": 2, "stdout": 1, "stderr": 0}


# ------------------------------------------------------------------------------ names
KNOWN_SHOWN = 8  # names listed after "known:"


def unknown_metric(name: str, known: Iterable[str], params: Iterable[str] = ()) -> str:
    """What to say about a name that is no known metric (a Metrics row or one a run has
    produced) and no parameter: `no metric 'test_eror'; did you mean test_error? (known:
    test_error, loss, …)`, the known names closest first (difflib)."""
    metrics, others = sorted(set(known)), sorted(set(params) - set(known))

    def closeness(n: str) -> float:
        return -difflib.SequenceMatcher(None, name.lower(), n.lower()).ratio()

    lower = {n.lower(): n for n in metrics + others}
    close = difflib.get_close_matches(name.lower(), list(lower), n=3, cutoff=0.6)
    text = f"no metric {name!r}"
    if close:
        text += f"; did you mean {' or '.join(lower[c] for c in close)}?"
    shown = sorted(metrics, key=lambda n: (closeness(n), n))
    if shown:
        more = ", …" if len(shown) > KNOWN_SHOWN else ""
        text += f" (known: {', '.join(shown[:KNOWN_SHOWN])}{more}"
    else:
        text += " (no metric is known yet: no Metrics row names one and no run has printed one"
    if others:
        more = ", …" if len(others) > KNOWN_SHOWN else ""
        text += f"; parameters: {', '.join(sorted(others, key=lambda n: (closeness(n), n))[:KNOWN_SHOWN])}{more}"
    return text + ")"


# ------------------------------------------------------------------------------ goals
def default_goal(metric: str, declared_goals: Mapping[str, str] | None = None) -> str:
    """The goal of a metric: its declared goal (the Metrics sheet's) if it is "min" or
    "max", else "max" for an accuracy-like name, else "min"."""
    goal = declared_goals.get(metric) if declared_goals else None
    if goal in GOALS:
        return goal  # type: ignore[return-value]
    return "max" if metric.split("@")[0].lower() in MAX_GOAL_NAMES else "min"


def ranked_metric(primary: str, declared_goals: Iterable[str], first_last: str, first_any: str) -> str:
    """The metric a project's runs are ranked by (the results workbook's leaderboard, the
    digest, `nero status`): Settings `primary_metric`, else the first metric with a declared
    goal, else the first metric a run stored a last value of (by run number), else the first
    any run has (`first_any`)."""
    return primary or next(iter(declared_goals), "") or first_last or first_any


def goals_of(names: Iterable[str], declared_goals: Mapping[str, str]) -> dict[str, str]:
    """The declared goals (in their order), then every other name with its default goal."""
    goals = dict(declared_goals)
    for name in names:
        if name not in goals:
            goals[name] = default_goal(name)
    return goals


# ------------------------------------------------------------------------------ values
def better(goal: str, a: float, b: float) -> bool:
    """Whether `a` is strictly better than `b` ("max": larger, else smaller)."""
    return a > b if goal == "max" else a < b


def improves(goal: str, value: float, best: float | None) -> bool:
    """Whether `value` becomes the running best after `best` (None: no best yet)."""
    if value != value:  # NaN
        return False
    return best is None or best != best or better(goal, value, best)


def best(values: Iterable[float], goal: str) -> float | None:
    """The best value, NaN skipped (±inf counts); None if there is none. Equal to folding
    `improves` over the values."""
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return None
    return max(kept) if goal == "max" else min(kept)


def best_finite(values: Iterable[object], goal: str) -> float | None:
    """The best finite number among `values` (NaN, ±inf and non-numbers skipped; of equal
    values the first); None if there is none."""
    if isinstance(values, Sequence) and values:  # all finite, checked at C speed: min/max at C speed
        try:
            if math.isfinite(sum(values)):  # type: ignore[arg-type]
                return max(values) if goal == "max" else min(values)  # type: ignore[type-var]
        except TypeError:
            pass
    found: float | None = None
    for v in values:
        if isinstance(v, int | float) and math.isfinite(v) and (found is None or better(goal, v, found)):
            found = v
    return found


def shown_best(values: Sequence[float], goal: str) -> float | None:
    """The best shown: the best finite value; NaN when there are values but none is
    finite (a diverged run); None for no value at all."""
    found = best_finite(values, goal)
    if found is None and len(values):
        return math.nan
    return found


class Summary(NamedTuple):
    """What every surface shows of one metric of one run (None: no value)."""

    last: float | None
    best: float | None
    at: tuple[float | None, ...]  # the value at each checkpoint, in the checkpoints' order


def summarize(steps: Sequence[float], values: Sequence[float], goal: str,
              checkpoints: Sequence[float] = ()) -> Summary:
    """Last, best shown and the value at each checkpoint of one history, its steps numbered
    and ascending (`curves.normalize`); of points at one step only the later counts."""
    if len(set(steps)) != len(steps):  # a step logged twice (numbered onto a given one): the later
        kept = [i for i in range(len(steps)) if i + 1 == len(steps) or steps[i + 1] != steps[i]]
        steps, values = [steps[i] for i in kept], [values[i] for i in kept]
    return Summary(last(values), shown_best(values, goal), tuple(value_at(steps, values, cp) for cp in checkpoints))


def rank_key(goal: str, value: float) -> float:
    """Sort key that puts the best value first."""
    return -value if goal == "max" else value


def last(values: Sequence[float]) -> float | None:
    """The last value of `values` (NaN included); None for an empty history."""
    return values[-1] if len(values) else None


# ------------------------------------------------------------------------------ steps
def number_steps(steps: Iterable[float | None]) -> list[float]:
    """The steps with every missing one (None or NaN) numbered one past the previous
    point's step; the first point's, if missing, is 1."""
    out: list[float] = []
    prev: float = 0
    for s in steps:
        prev = prev + 1 if s is None or s != s else s
        out.append(prev)
    return out


def value_at(steps: Sequence[float], values: Sequence[float], checkpoint: float) -> float | None:
    """The value at checkpoint step `checkpoint`: the latest point at or before it, once
    the run got there (its last step ≥ checkpoint); None before. Steps ascending."""
    if not steps or steps[-1] < checkpoint:
        return None
    i = bisect_right(steps, checkpoint) - 1
    return values[i] if i >= 0 else None


# ------------------------------------------------------------------------------ sources
def source_rank(source: str) -> int:
    """How much a point from `source` is trusted when a step is logged twice."""
    return SOURCE_RANK.get(source, 0)


def supersedes(rank: int, old_rank: int) -> bool:
    """Whether a point of source rank `rank` replaces an earlier point logged at the same
    step with `old_rank` (the higher rank wins; of equal rank the later point)."""
    return rank >= old_rank


def prefer_tracked(printed: Sequence[MetricPoint], tracked: Sequence[MetricPoint]) -> list[MetricPoint]:
    """The points of one read of a job's files: the printed ones (stdout, stderr) of the
    metrics not logged exactly in it (track, event files, CSVs), then the exact ones; of a
    metric two exact sources logged in it, those of the higher rank (track over a file)."""
    if not tracked:
        return list(printed)
    top: dict[str, int] = {}
    for p in tracked:
        r = SOURCE_RANK.get(p.source, 0)
        if r > top.get(p.name, -1):
            top[p.name] = r
    exact = [p for p in tracked if SOURCE_RANK.get(p.source, 0) == top[p.name]]
    return [p for p in printed if p.name not in top] + exact
