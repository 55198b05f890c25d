"""Variation expansion, stable run keys and spec hashes (pure).

A parameter cell is a scalar or a variation: `[0.1, 0.01]`, `range(1, 5)`,
`linspace(0, 1, 5)`, `logspace(-4, -1, 4)` (read as the tokens of `orchestrator.tokens`:
commas inside quotes do not split a list). Several variations in one row form a grid.
A run's key is `experiment[name=value,…]` over the varied parameters, in column order,
so inserting rows or list values renumbers nothing. The spec hash covers only what
changes the job (command, parameters, cluster, resources, template, setup, workdir).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterable, Iterator

from .model import Experiment, RunSpec, Scalar, Variation, Workbook
from .tokens import PLAIN_QUOTES, number, scan, spans, tokenize

__all__ = [
    "MAX_VALUES",
    "count_runs",
    "diff_essence",
    "expand",
    "expand_experiment",
    "format_value",
    "normalize",
    "parse_cell",
    "parse_scalar",
    "run_key",
    "spec_hash",
]

MAX_VALUES = 100_000
_FUNCTIONS = ("range", "linspace", "logspace")
_FUNCTION_WORD = re.compile(r"(?:range|linspace|logspace)\b")  # at the start of a name token


def normalize(v: Scalar) -> Scalar:
    """Round floats to 12 significant digits so `linspace` keys stay readable."""
    if isinstance(v, float) and math.isfinite(v):
        return float(f"{v:.12g}")
    return v


def format_value(v: Scalar) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.12g}"
    if v is None:
        return ""
    return str(v)


def parse_scalar(text: str) -> Scalar:
    """A literal inside a list: number, boolean, or (optionally quoted) string."""
    t = text.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        return t[1:-1]
    n = number(t)
    if n is not None:
        return int(t) if t.lstrip("+-").isdigit() else normalize(n)
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("nan", "inf", "-inf"):
        return float(low)
    return t


def _number(text: str, what: str) -> float:
    """One argument of range/linspace/logspace: a number, its sign written against it."""
    n = number(text)
    if n is None:
        raise ValueError(f"{text.strip()!r} is not a number in {what}")
    return n


def _list_items(text: str) -> list[str]:
    """The comma-separated items of `[…]` (commas inside '…' or "…" do not count)."""
    tokens = tokenize(text, 1, len(text) - 1, quotes=PLAIN_QUOTES)
    if len(tokens) > 1 and tokens[-2].kind == "unclosed":  # an unclosed quote runs to the end
        raise ValueError("unclosed quote in list")
    items = [text[start:end] for start, end in spans(tokens, ",", 1, len(text) - 1)]
    if items and not items[-1].strip():
        items.pop()  # trailing comma
    return items


def _function_call(text: str) -> tuple[str, list[str]] | None:
    """`("range", ["1", " 5"])` for `range(1, 5)`; None when the cell is no such call."""
    tokens = tokenize(text, quotes={})
    name = tokens[0]
    if name.kind != "name" or name.text not in _FUNCTIONS:
        return None
    if len(tokens) < 4 or tokens[1].text != "(" or tokens[-2].text != ")":
        return None
    start, end = tokens[1].stop, tokens[-2].pos
    return name.text, [text[a:b] for a, b in spans(tokens[2:-2], ",", start, end)]


def parse_cell(value: object) -> Scalar | Variation:
    """Turn a parameter cell into a scalar or a Variation; ValueError says what is wrong."""
    if value is None or isinstance(value, bool | int):
        return value  # type: ignore[return-value]
    if isinstance(value, float):
        return normalize(value)
    if not isinstance(value, str):
        return str(value)
    text = value.strip()
    if text.startswith("["):
        if not text.endswith("]"):
            raise ValueError(f"list {text[:40]!r} is missing its closing ']' (write e.g. [0.1, 0.01])")
        items = _list_items(text)
        if not items or any(not i.strip() for i in items):
            raise ValueError(f"list {text[:40]!r} has an empty value (write e.g. [0.1, 0.01])")
        vals = tuple(parse_scalar(i) for i in items)
        if len(set(map(repr, vals))) != len(vals):
            raise ValueError(f"list {text[:40]!r} repeats a value; each value makes one run")
        return Variation(text, vals)
    call = _function_call(text) if text.startswith(_FUNCTIONS) else None
    if call:
        fn, args = call
        return Variation(text, _expand_function(fn, args, text))
    if text.endswith("]") or (text.startswith(_FUNCTIONS) and _FUNCTION_WORD.match(next(scan(text)).text)):
        raise ValueError(f"{text[:40]!r} is not a valid variation; use [a, b], range(a, b[, step]), linspace(a, b, n) or logspace(a, b, n)")
    return value


def _expand_function(fn: str, args: list[str], text: str) -> tuple[Scalar, ...]:
    if fn == "range":
        if not 1 <= len(args) <= 3:
            raise ValueError(f"{text!r}: range takes 1 to 3 arguments: range(stop), range(start, stop[, step])")
        nums = [_number(a, text) for a in args]
        if not all(n.is_integer() for n in nums):
            raise ValueError(f"{text!r}: range takes whole numbers; use linspace for fractions")
        r = range(*(int(n) for n in nums))
        if len(r) == 0:
            raise ValueError(f"{text!r} is empty")
        if len(r) > MAX_VALUES:
            raise ValueError(f"{text!r} has {len(r)} values; at most {MAX_VALUES} are allowed")
        return tuple(r)
    if len(args) != 3:
        raise ValueError(f"{text!r}: {fn} takes 3 arguments: {fn}(start, stop, count)")
    a, b, n = (_number(x, text) for x in args)
    if not n.is_integer() or n < 1:
        raise ValueError(f"{text!r}: the count must be a whole number ≥ 1")
    if n > MAX_VALUES:
        raise ValueError(f"{text!r} has {int(n)} values; at most {MAX_VALUES} are allowed")
    count = int(n)
    pts = [a] if count == 1 else [a + (b - a) * i / (count - 1) for i in range(count)]
    if fn == "logspace":
        pts = [10.0**p for p in pts]
    return tuple(normalize(float(p)) for p in pts)


def run_key(experiment: str, varied: Iterable[tuple[str, Scalar]]) -> str:
    parts = [f"{k}={format_value(v)}" for k, v in varied]
    return f"{experiment}[{','.join(parts)}]" if parts else experiment


def spec_hash(essence: dict) -> str:
    blob = json.dumps(essence, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def expand_experiment(exp: Experiment, default_cluster: str = "local") -> Iterator[RunSpec]:
    names = [n for n, _ in exp.params]
    choices = [v.values if isinstance(v, Variation) else (v,) for _, v in exp.params]
    varied = [isinstance(v, Variation) for _, v in exp.params]
    clusters = exp.clusters or (default_cluster,)
    for combo in itertools.product(*choices):
        params = tuple(zip(names, combo, strict=True))
        key = run_key(exp.id, (p for p, is_var in zip(params, varied, strict=True) if is_var))
        spec = RunSpec(
            key=key, experiment=exp.id, row=exp.row, params=params, command=exp.command,
            clusters=clusters, resources=exp.resources, setup=exp.setup, workdir=exp.workdir,
            template=exp.template, desired=exp.desired, priority=exp.priority, after=exp.after,
            retries=exp.retries, rules=exp.rules, notify=exp.notify, spec_hash="",
        )
        yield _with_hash(spec)


def _with_hash(spec: RunSpec) -> RunSpec:
    from dataclasses import replace

    return replace(spec, spec_hash=spec_hash(spec.essence()))


def count_runs(exp: Experiment) -> int:
    return math.prod(len(v.values) if isinstance(v, Variation) else 1 for _, v in exp.params)


def expand(workbook: Workbook) -> list[RunSpec]:
    default = workbook.settings.default_cluster or "local"
    return [s for e in workbook.experiments for s in expand_experiment(e, default)]


def diff_essence(old: dict, new: dict) -> list[str]:
    """Human-readable list of what changed between two essences (`lr: 0.1 → 0.2`)."""
    out: list[str] = []
    for field in ("command", "params", "clusters", "resources", "setup", "workdir", "template"):
        a, b = old.get(field), new.get(field)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            for k in list(a) + [k for k in b if k not in a]:
                if a.get(k) != b.get(k):
                    out.append(f"{k}: {_show(a.get(k))} → {_show(b.get(k))}")
        else:
            out.append(f"{field}: {_show(a)} → {_show(b)}")
    return out


def _show(v: object) -> str:
    if v is None:
        return "(none)"
    if v == "":
        return "(empty)"
    if isinstance(v, list):
        return ",".join(map(str, v))
    s = format_value(v) if isinstance(v, int | float | bool | str) else str(v)
    return s if len(s) <= 60 else s[:57] + "…"
