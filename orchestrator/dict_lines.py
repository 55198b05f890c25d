"""Printed Python dicts whose numbers are quoted (pure): Hugging Face's Trainer logs.

`transformers`' `ProgressCallback.on_log` writes each log as `str(dict)` on a line of its
own; since transformers 5 it first formats every float as text (`f"{v:.4g}"`), so a line
reads `{'loss': '0.6931', 'grad_norm': '1.25', 'learning_rate': '4.5e-05', 'epoch': '0.5'}`
(before: `{'loss': 0.6931, …}`, which the default capture reads as it is). The default
capture takes quoted values for text (`dropout='0.10'`), rightly in general, so this module
reads the one exception: in a line that is a whole dict literal (`{'…': …}` alone on its
line, spaces and a carriage return around it allowed), a `'key': 'number'` entry is the
number. Nothing else changes: the unquoted values of such a line are the default capture's,
and so is its step (a `step` or `global_step` key with a whole number; the Trainer prints
none, so its values are numbered in order, and `epoch` is a metric of its own).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .model import MetricPoint

__all__ = ["dict_points", "may_hold_dicts"]

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf|-inf)"
_LINE = re.compile(r"^[ \t\r]*\{['\"][^\n]*\}[ \t\r]*$", re.M)
_ENTRY = re.compile(rf"""(?:^|[{{,])\s*(['"])([A-Za-z][\w.\-/]*)\1\s*:\s*(['"])({_NUMBER})\3\s*(?=[,}}])""")


def may_hold_dicts(data: bytes, end: int) -> bool:
    """Whether data[:end] may hold a dict line (a cheap scan: most output has none)."""
    return data.find(b"{'", 0, end) >= 0 or data.find(b'{"', 0, end) >= 0


def dict_points(text: str, time: float | None, source: str, skip: frozenset[str],
                line_step: Callable[[int], int | None]) -> list[tuple[int, int, MetricPoint]]:
    """(line end, position, point) of every quoted number in the dict lines of `text`,
    names in `skip` (lower case: the Metrics patterns') left out; `line_step(line end)` gives
    a line's step."""
    found: list[tuple[int, int, Any]] = []
    for line in _LINE.finditer(text):
        body, b = line.group(), line.end()
        for m in _ENTRY.finditer(body):
            name = m.group(2)
            if name.lower() in skip:
                continue
            found.append((b, line.start() + m.start(), MetricPoint(name, float(m.group(4)), line_step(b), time, source)))
    return found
