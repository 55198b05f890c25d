"""The Metrics sheet's patterns: which group of a pattern is the value and which the step.

One rule, read alike by the sheet's validation (a broken pattern is a workbook error at
its cell), the reconciler's parsing (`monitor.parse_output`) and `nero metrics test`:

* The value is the group named `value`; else the pattern's one unnamed group.
* The step is the group named `step` (optional). Without one, or where it holds no
  whole number, the line's default step key (`epoch=3`, `step: 3`) gives it, if any.
* Beside a `value` group, unnamed groups are structure: `(train|val) loss (?P<value>…)`.

Everything else is an error, with its fix:

* no group for the value (no group at all, or only `step`): nothing says what to record;
* two or more unnamed groups and no `value` group: `epoch (\\d+) … error ([\\d.]+)`
  does not say which number is the value (nero once took the first: the epoch);
* a group with any other name: `(?P<epoch>\\d+)` means nothing to nero, so the step it
  was meant to give would be lost unseen.

A pattern is compiled in multi-line mode (`^` and `$` match at each line). Pure: stdlib
only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["MetricPattern", "compile_metric_pattern"]

_EXAMPLE = r"e.g. val_loss[=:]\s*([-+.\deE]+|nan)"


@dataclass(frozen=True)
class MetricPattern:
    """A Metrics-sheet pattern, compiled, with the group that holds the value (its
    name or number) and whether a group named `step` gives the step."""

    regex: re.Pattern[str]
    value: int | str
    step: bool


@lru_cache(maxsize=256)
def compile_metric_pattern(pattern: str) -> MetricPattern:
    """Compile a Metrics-sheet pattern and find its value and step groups (the rule
    above). Raises ValueError saying what is wrong and how to fix it, for a pattern
    that does not compile or whose groups break the rule."""
    try:
        rx = re.compile(pattern, re.M)
    except re.error as e:
        raise ValueError(f"'{pattern}' is not a valid regular expression ({e}); {_EXAMPLE}") from None
    named = rx.groupindex
    unnamed = [i for i in range(1, rx.groups + 1) if i not in named.values()]
    problem = _layout_problem(pattern, named, len(unnamed))
    if problem:
        raise ValueError(problem)
    return MetricPattern(rx, "value" if "value" in named else unnamed[0], "step" in named)


def _layout_problem(pattern: str, named: Mapping[str, int], unnamed: int) -> str | None:
    """What is wrong with a pattern's groups, and the fix; None if nothing."""
    stray = [n for n in named if n not in ("value", "step")]
    if stray:
        return (f"'{pattern}' has a group named {stray[0]!r}, a name nero does not read; name the value's "
                "group (?P<value>…) and the step's (?P<step>…), and make any other a plain group (?:…)")
    if "value" in named or unnamed == 1:
        return None
    if unnamed:
        return (f"'{pattern}' has {unnamed} unnamed groups and none named value, so which one holds the value "
                "is ambiguous; name the value group: (?P<value>…) (and the step's: (?P<step>…)), or make the "
                "others plain groups (?:…)")
    return (f"'{pattern}' has no capture group for the value; put the number in parentheses or name "
            f"it (?P<value>…), {_EXAMPLE}")
