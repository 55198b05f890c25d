"""What a learning curve shows, on every surface that draws one (pure).

The results workbook's charts and the PNGs of `nero plot` and the e-mails draw the same
curves: steps numbered and ascending (`normalize`, after `metrics.number_steps`), only
finite points (`finite`), at most n points keeping every extreme (`downsample`), the same
colours (`PALETTE`) and the same scales: a log axis when positive values span a factor 50
(`log_scale`), an axis cap that keeps a diverged run from flattening the others
(`axis_cap`, `nice`), and about four significant digits (`decimals`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from operator import itemgetter

from .metrics import number_steps
from .model import Series

__all__ = ["PALETTE", "Magnitudes", "Points", "axis_cap", "decimals", "downsample", "finite", "log_scale", "nice",
           "nonfinite_text", "normalize"]

# Line colours (matplotlib's tab10) of the workbook's charts and of the plots; runs 11-20 of
# a chart repeat them dashed.
PALETTE = ("#1F77B4", "#FF7F0E", "#2CA02C", "#D62728", "#9467BD",
           "#8C564B", "#E377C2", "#7F7F7F", "#BCBD22", "#17BECF")

Points = tuple[tuple[int | None, float], ...]
_FIRST, _SECOND = itemgetter(0), itemgetter(1)


def normalize(points: Iterable[tuple[int | None, float]]) -> tuple[Sequence[float], Sequence[float]]:
    """Steps ascending (a step logged twice keeps its latest value); a missing step is the
    previous step + 1 (the first is 1)."""
    if isinstance(points, Series):
        if points.ordered:  # every step given, ascending: nothing to do
            return points.steps, points.values
        steps, values = points.steps.tolist(), points.values.tolist()  # no step is NaN
        if not steps:
            return (), ()
        missing = math.isnan(sum(steps))
    else:
        pts = points if isinstance(points, tuple | list) else tuple(points)
        if not pts:
            return (), ()
        steps = list(map(_FIRST, pts))
        values = list(map(_SECOND, pts))
        missing = None in steps
    if missing:
        steps = number_steps(steps)
    ordered = sorted(steps)
    if ordered == steps:  # the usual case, checked at C speed; bisect finds the latest duplicate
        return steps, values
    latest = dict(zip(steps, values, strict=True))
    keys = sorted(latest)
    return keys, [latest[k] for k in keys]


def _all_finite(values: Sequence[float]) -> bool:
    try:
        return math.isfinite(sum(values))
    except TypeError:
        return False


def finite(steps: Sequence[float], values: Sequence[float]) -> tuple[Sequence[float], Sequence[float]]:
    """The points whose value is a finite number."""
    if _all_finite(values):
        return steps, values
    keep = [i for i, v in enumerate(values) if isinstance(v, int | float) and math.isfinite(v)]
    return [steps[i] for i in keep], [values[i] for i in keep]


def downsample(steps: Sequence[float], values: Sequence[float], n: int) -> tuple[Sequence[float], Sequence[float]]:
    """At most `n` points: first, last, and each bucket's minimum and maximum in order."""
    m = len(values)
    if m <= n:
        return steps, values
    buckets = max(1, (n - 2) // 2)
    inner = m - 2
    keep = [0]
    for b in range(buckets):
        lo = 1 + b * inner // buckets
        hi = 1 + (b + 1) * inner // buckets
        if lo >= hi:
            continue
        seg = values[lo:hi]  # slice, min, max and index all run at C speed
        i, j = lo + seg.index(min(seg)), lo + seg.index(max(seg))
        if i == j:
            keep.append(i)
        else:
            keep.extend((i, j) if i < j else (j, i))
    keep.append(m - 1)
    return [steps[i] for i in keep], [values[i] for i in keep]


def log_scale(values: Iterable[float]) -> bool:
    """Whether a y axis should be logarithmic: positive values spanning a factor 50."""
    lo, hi = math.inf, -math.inf
    for v in values:
        if v <= 0:
            return False
        lo, hi = min(lo, v), max(hi, v)
    return hi > lo and hi / lo >= 50


def axis_cap(goal: str, values: Sequence[float], typical: float) -> float | None:
    """An upper axis bound that keeps diverged runs (huge values of a metric to minimise)
    from flattening the others: ten times the typical value, when something exceeds it."""
    if goal == "max" or not values or not typical > 0 or min(values) < 0:
        return None
    cap = 10 * typical
    return nice(cap) if max(values) > cap else None


def nice(x: float) -> float:
    """The next 1, 2 or 5 × 10^k at or above x."""
    e = 10 ** math.floor(math.log10(x))
    return next(m * e for m in (1, 2, 5, 10) if m * e >= x)


def decimals(values: Iterable[float]) -> int | None:
    """Decimals showing about four significant digits of the typical value; None: scientific."""
    mags = Magnitudes()
    for v in values:
        mags.add(v)
    return mags.decimals()


class Magnitudes:
    """The typical magnitude of a column's values, learnt a value at a time (`decimals`): a
    count per power of ten, not the values, whose median's power of ten it gives exactly."""

    __slots__ = ("counts", "n")
    _SMALL, _LARGE = -1000, 1000  # below 1e-5, at least 1e7: shown scientific

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.n = 0

    def add(self, v: float) -> None:
        if isinstance(v, int | float) and math.isfinite(v) and v != 0:
            a = abs(v)
            k = self._LARGE if a >= 1e7 else self._SMALL if a < 1e-5 else math.floor(math.log10(a))
            self.counts[k] = self.counts.get(k, 0) + 1
            self.n += 1

    def decimals(self) -> int | None:
        if not self.n:
            return 3
        seen, powers = 0, iter(sorted(self.counts))
        k = next(powers)
        while seen + self.counts[k] <= self.n // 2:  # the median: the n // 2-th value from the smallest
            seen += self.counts[k]
            k = next(powers)
        return None if k in (self._SMALL, self._LARGE) else max(0, min(6, 3 - k))


def nonfinite_text(v: float) -> str:
    """`nan`, `inf` or `-inf`: how a value that is not finite is shown."""
    return "nan" if v != v else ("inf" if v > 0 else "-inf")
