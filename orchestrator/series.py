"""One metric's history, compact: `Series` (two arrays of doubles) and `Histories`.

The state store hands out every history as a Series and the results workbook, the rules,
the plots and the exports read them; model.py re-exports both names.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

__all__ = ["Series", "Histories"]


@dataclass(frozen=True, eq=False)
class Series(Sequence[tuple[int | None, float]]):
    """One metric's history in one attempt: the points (step, value) in the order they
    were logged, one point per step; a point logged without a step has step None.

    Compact (two `array('d')`: 16 bytes a point, against ~100 for a tuple of Python
    numbers), so every history of a thousand-run study fits in a few tens of MB. It reads
    as a sequence of `(step, value)` tuples; code that wants speed uses `steps` (NaN where
    a point had no step) and `values` (NaN for a value that was not a number) directly.
    `ordered` promises that every point has a step and the steps strictly ascend (the
    usual history), so a reader need not sort them. The arrays must not be changed once
    the Series is built."""

    steps: array
    values: array
    ordered: bool = False

    @classmethod
    def of(cls, points: Iterable[tuple[int | None, float]]) -> Series:
        if isinstance(points, Series):
            return points
        steps, values = array("d"), array("d")
        nan, top, ordered = math.nan, -math.inf, True
        for step, value in points:
            if step is None or not step > top:
                ordered = False
            else:
                top = step
            steps.append(nan if step is None else step)
            values.append(nan if value is None else value)
        return cls(steps, values, ordered)

    def __len__(self) -> int:
        return len(self.values)

    @overload
    def __getitem__(self, i: int) -> tuple[int | None, float]: ...
    @overload
    def __getitem__(self, i: slice) -> Series: ...
    def __getitem__(self, i: int | slice) -> tuple[int | None, float] | Series:
        if isinstance(i, slice):
            return Series(self.steps[i], self.values[i], self.ordered and (i.step or 1) > 0)
        s = self.steps[i]
        return (None if s != s else int(s), self.values[i])

    def __iter__(self) -> Iterator[tuple[int | None, float]]:
        for s, v in zip(self.steps, self.values, strict=True):
            yield (None if s != s else int(s), v)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Series):
            return self.steps.tobytes() == other.steps.tobytes() and self.values.tobytes() == other.values.tobytes()
        if isinstance(other, Sequence) and not isinstance(other, str):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        tail = f", last={self[-1]}" if len(self) else ""
        return f"Series(n={len(self)}{tail})"


Histories = dict[str, dict[str, Series]]  # run key -> metric -> its history (current attempt)
