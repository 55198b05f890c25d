"""Variation expansion, stable run keys and spec hashes (pure).

A parameter cell is a scalar or a variation: `[0.1, 0.01]`, `range(1, 5)`,
`linspace(0, 1, 5)`, `logspace(-4, -1, 4)` (read as the tokens of `orchestrator.tokens`:
commas inside quotes do not split a list). Several variations in one row form a grid.
A run's key is `experiment[name=value,…]` over the varied parameters, in column order,
so inserting rows or list values renumbers nothing. A key names one run: values that
render one key (`[1, 1.0]`, a `linspace` finer than 12 significant digits) and numbers that
overflow or underflow are errors at their cell, and `key_clashes` finds any key given twice
(the sheet's check and the planner's last guard). The spec hash covers only what
changes the job (command, parameters, cluster, resources, template, setup, workdir).

A cell may also sample (`uniform(0, 1)`, `choice(adam, sgd)`: `space.parse_distribution`),
and a row's `together` groups zip lists instead of crossing them: a row's runs are then the
product of its factors (`factors.py`), and a sampled run's key ends with its sample index,
`experiment[lr=0.00123,sample=2]`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import TypeVar

from .factors import SAMPLE, factors, sizes
from .model import Experiment, RunSpec, Scalar, Variation, Workbook
from .space import (
    Distribution,
    format_value,
    list_value,
    normalize,
    parse_distribution,
    parse_scalar,
)
from .tokens import PLAIN_QUOTES, number, scan, spans, tokenize

__all__ = [
    "MAX_VALUES",
    "count_runs",
    "diff_essence",
    "json_scalar",
    "expand",
    "expand_experiment",
    "format_value",
    "key_cell",
    "key_clashes",
    "normalize",
    "parse_cell",
    "parse_scalar",
    "run_key",
    "run_keys",
    "spec_hash",
]

MAX_VALUES = 100_000
_SMALLEST = sys.float_info.min  # the smallest float that keeps all its digits (2.2e-308)
_FUNCTIONS = ("range", "linspace", "logspace")
_FUNCTION_WORD = re.compile(r"(?:range|linspace|logspace)\b")  # at the start of a name token


def _number(text: str, what: str) -> float:
    """One argument of range/linspace/logspace: a number, its sign written against it."""
    n = number(text)
    if n is None:
        raise ValueError(f"{text.strip()!r} is not a number in {what}")
    if math.isinf(n):
        raise ValueError(f"{what}: {text.strip()} is too large for a number (it would read as inf)")
    return n


def _whole(text: str, what: str) -> float | int:
    """An argument of range: a whole number written as digits is read exactly."""
    t = text.strip()
    return int(t) if t.lstrip("+-").isdigit() else _number(t, what)


def _shown(text: str) -> str:
    """A cell's text in a message (long cells cut short)."""
    return text if len(text) <= 60 else text[:57] + "…"


def _first_repeat(values: tuple[Scalar, ...]) -> tuple[int, int, str] | None:
    """(i, j, key text) of the first two values that render the same run key, else None."""
    seen: dict[str, int] = {}
    for j, v in enumerate(values):
        shown = format_value(v)
        i = seen.setdefault(shown, j)
        if i != j:
            return i, j, shown
    return None


def _check_list_repeats(text: str, written: list[str], values: tuple[Scalar, ...]) -> None:
    """Two values of a list that render the same run key are one run: an error naming both."""
    repeat = _first_repeat(values)
    if repeat is None:
        return
    i, j, shown = repeat
    a, b = written[i], written[j]
    why = ""
    if a != b:
        digits = ": a run key keeps 12 significant digits" if _numbers_differ(values[i], values[j], a, b) else ""
        why = f" ({a} and {b} name the same run{digits})"
    raise ValueError(f"{_shown(text)} lists {shown} twice{why}; remove one")


def _numbers_differ(x: Scalar, y: Scalar, a: str, b: str) -> bool:
    """Whether two written numbers differ as numbers although they render alike."""
    if number(a) is None or number(b) is None or isinstance(x, bool | str) or isinstance(y, bool | str):
        return False
    return float(a) != float(b)


def _check_generated_repeats(text: str, values: tuple[Scalar, ...]) -> None:
    """A variation function that gives one run key twice is an error with a fix."""
    repeat = _first_repeat(values)
    if repeat is not None:
        i, j, shown = repeat
        raise ValueError(f"{_shown(text)} gives {shown} twice (values {i + 1} and {j + 1}): its values differ "
                         "only past the 12 significant digits a run key keeps (or not at all); use fewer values "
                         "or ends further apart")


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


def parse_cell(value: object, paired: bool = False) -> Scalar | Variation | Distribution:
    """Turn a parameter cell into a scalar, a Variation or a Distribution; ValueError says
    what is wrong. A `paired` cell (named in `together`) may list a value twice: its pairs
    name the runs (`factors.check` finds a pair given twice)."""
    if value is None or isinstance(value, bool | int):
        return value  # type: ignore[return-value]
    if isinstance(value, float):
        return normalize(value)
    if not isinstance(value, str):
        return str(value)
    text = value.strip()
    dist = parse_distribution(text)
    if dist is not None:
        return dist
    if text.startswith("["):
        if not text.endswith("]"):
            raise ValueError(f"list {text[:40]!r} is missing its closing ']' (write e.g. [0.1, 0.01])")
        items = _list_items(text)
        if not items or any(not i.strip() for i in items):
            raise ValueError(f"list {text[:40]!r} has an empty value (write e.g. [0.1, 0.01])")
        written = [i.strip() for i in items]
        vals = tuple(list_value(w, text) for w in written)
        if not paired:
            _check_list_repeats(text, written, vals)
        return Variation(text, vals)
    call = _function_call(text) if text.startswith(_FUNCTIONS) else None
    if call:
        fn, args = call
        values = _expand_function(fn, args, text)
        if not paired:
            _check_generated_repeats(text, values)
        return Variation(text, values)
    if text.endswith("]") or (text.startswith(_FUNCTIONS) and _FUNCTION_WORD.match(next(scan(text)).text)):
        raise ValueError(f"{text[:40]!r} is not a valid variation; use [a, b], range(a, b[, step]), linspace(a, b, n) or logspace(a, b, n)")
    return value


def _expand_function(fn: str, args: list[str], text: str) -> tuple[Scalar, ...]:
    if fn == "range":
        if not 1 <= len(args) <= 3:
            raise ValueError(f"{text!r}: range takes 1 to 3 arguments: range(stop), range(start, stop[, step])")
        nums = [_whole(a, text) for a in args]
        if not all(float(n).is_integer() for n in nums):
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
        pts = [_power_of_ten(p, text) for p in pts]
    for i, p in enumerate(pts, 1):
        if not math.isfinite(p):
            raise ValueError(f"{_shown(text)}: value {i} overflows (it would read as {format_value(p)}): the span "
                             "from start to stop is too large for a number; use ends closer together")
        if 0 < abs(p) < _SMALLEST:
            raise ValueError(f"{_shown(text)}: value {i} ({p:.3g}) is too close to 0 for a number (below 2.2e-308 "
                             "it loses its digits); scale the parameter, e.g. use logspace for its exponent")
    return tuple(normalize(float(p)) for p in pts)


def _power_of_ten(p: float, text: str) -> float:
    """10^p, or an error when it does not fit a number (exponents from -307 to 308)."""
    try:
        v = 10.0**p
    except OverflowError:
        v = math.inf
    if math.isnan(v):
        v = math.inf
    if math.isinf(v) or v < _SMALLEST:
        what = "too large for a number (it would read as inf)" if v > 1 else "too close to 0 for a number (it would read as 0)"
        raise ValueError(f"{_shown(text)}: 10^{format_value(p)} is {what}; logspace takes exponents from "
                         "-307 to 308, e.g. logspace(-4, -1, 4)")
    return v


def run_key(experiment: str, varied: Iterable[tuple[str, Scalar]]) -> str:
    parts = [f"{k}={format_value(v)}" for k, v in varied]
    return f"{experiment}[{','.join(parts)}]" if parts else experiment


def spec_hash(essence: dict) -> str:
    blob = json.dumps(essence, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_keys(exp: Experiment) -> Iterator[tuple[str, tuple[tuple[str, Scalar], ...]]]:
    """(key, parameters) of every run of a row, in grid order (its first variation varies slowest)."""
    if not exp.together and not any(isinstance(v, Variation | Distribution) for _, v in exp.params):
        yield exp.id, exp.params  # one run: its key is the id, its parameters the row's (one tuple for both)
        return
    names = [n for n, _ in exp.params]
    # each value with its `name=value` part of the key (None: a fixed parameter, not in the
    # key), formatted once per row rather than once per run: `run_key`'s form
    choices = [[(x, f"{n}={format_value(x)}") for x in v.values] if isinstance(v, Variation) else [(v, None)]
               for n, v in exp.params]
    if exp.together or any(isinstance(v, Distribution) for _, v in exp.params):
        yield from _factor_keys(exp, names)
        return
    if not any(isinstance(v, Variation) for _, v in exp.params):
        yield run_key(exp.id, ()), tuple(zip(names, (c[0][0] for c in choices), strict=True))
        return
    for combo in itertools.product(*choices):
        params = tuple(zip(names, [c[0] for c in combo], strict=True))
        yield f"{exp.id}[{','.join([c[1] for c in combo if c[1] is not None])}]", params


def _factor_keys(exp: Experiment, names: list[str]) -> Iterator[tuple[str, tuple[tuple[str, Scalar], ...]]]:
    """`run_keys` of a row with paired or sampled cells: the product of its factors, each
    alternative's `name=value` parts made once; the key lists them in column order, then
    `sample=i`."""
    n = len(names)
    alternatives = [[tuple((i, x, f"{names[i]}={format_value(x)}" if i < n else f"{SAMPLE}={x}") for i, x in alt)
                     for alt in f.alternatives] for f in factors(exp)]
    base: list[Scalar] = [None if isinstance(v, Variation | Distribution) else v for _, v in exp.params]
    for combo in itertools.product(*alternatives):
        values = base.copy()
        parts: list[str | None] = [None] * (n + 1)
        for alt in combo:
            for i, x, part in alt:
                if i < n:
                    values[i] = x
                parts[i] = part
        yield f"{exp.id}[{','.join([p for p in parts if p is not None])}]", tuple(zip(names, values, strict=True))


def key_cell(exp: Experiment) -> str:
    """The cell a row's run keys come from: its first varied parameter's, else its id's."""
    first = next((n for n, v in exp.params if isinstance(v, Variation | Distribution)), "id")
    return exp.cell(first) or exp.cell("id")


_T = TypeVar("_T")


def key_clashes(runs: Iterable[tuple[str, _T]]) -> Iterator[tuple[str, _T, _T]]:
    """(key, first, again) for every run key given a second time. A key names one run (one
    folder, one attempt count), so the sheet reports these and the planner refuses them."""
    first: dict[str, _T] = {}
    for key, what in runs:
        if key in first:
            yield key, first[key], what
        else:
            first[key] = what


_Hasher = Callable[[tuple[tuple[str, Scalar], ...]], str]


def expand_experiment(exp: Experiment, default_cluster: str = "local",
                      runs: Iterable[tuple[str, tuple[tuple[str, Scalar], ...]]] | None = None,
                      hashers: dict[tuple[object, ...], _Hasher] | None = None) -> Iterator[RunSpec]:
    """The row's runs: its grid (`run_keys`), or the (key, parameters) `runs` gives (an
    adaptive row's trials). `hashers` keeps each row hasher for the rows alike in all
    the hash covers but the values (`expand`: 200,000 one-run rows made one, not 200,000)."""
    clusters = exp.clusters or (default_cluster,)
    where = key_cell(exp)
    if hashers is None:
        hashed = _row_hasher(exp, clusters)
    else:
        alike = (clusters, exp.command, exp.resources, exp.setup, exp.template, exp.workdir,
                 tuple(n for n, _ in exp.params))
        hashed = hashers.get(alike)  # type: ignore[assignment]
        if hashed is None:
            hashed = hashers[alike] = _row_hasher(exp, clusters)
    for key, params in (run_keys(exp) if runs is None else runs):
        yield RunSpec(
            key=key, experiment=exp.id, row=exp.row, params=params, command=exp.command,
            clusters=clusters, resources=exp.resources, setup=exp.setup, workdir=exp.workdir,
            template=exp.template, desired=exp.desired, priority=exp.priority, after=exp.after,
            retries=exp.retries, rules=exp.rules, notify=exp.notify, spec_hash=hashed(params), where=where,
        )


_PIECES = 10_000  # "name":value pieces a row hasher keeps (values seen once are not worth keeping)


def _row_hasher(exp: Experiment, clusters: tuple[str, ...]) -> _Hasher:
    """`spec_hash(spec.essence())` of a row's runs, the row's part serialised once: the
    essence's keys sorted put `params` between `command` and `resources`, so the blob is
    the row's prefix, the run's parameters, the row's suffix (the same bytes, so the same
    hash; a JSON dump of the whole essence per run was most of a 100,000-run expansion).
    It serves every row with the same command, clusters, resources, setup, template,
    workdir and parameter names in the same order."""
    def dump(x: object) -> str:
        return json.dumps(x, sort_keys=True, default=str, separators=(",", ":"))

    prefix = f'{{"clusters":{dump(list(clusters))},"command":{dump(exp.command)},"params":'
    suffix = (f',"resources":{dump(dict(exp.resources))},"setup":{dump(exp.setup)},"template":{dump(exp.template)},'
              f'"workdir":{dump(exp.workdir)}}}')

    names = [n for n, _ in exp.params]
    if len(set(names)) != len(names):  # a name given twice: the dict keeps the last; dump it whole
        return lambda params: hashlib.sha256((prefix + dump(dict(params)) + suffix).encode()).hexdigest()[:16]
    order = sorted(range(len(names)), key=names.__getitem__)  # a row's runs list its names in one order
    pieces: dict[tuple[int, type, Scalar], str] = {}  # "name":value of each value, serialised once
    heads = [dump(n) + ":" for n in names]

    def piece(i: int, value: Scalar) -> str:
        if type(value) is int:  # as JSON writes it (a seed per run: each value met once)
            return heads[i] + int.__repr__(value)
        if type(value) is str:
            return heads[i] + encode_basestring_ascii(value)
        got = pieces.get((i, type(value), value))
        if got is None:
            got = dump({names[i]: value})[1:-1]
            if len(pieces) < _PIECES and not (value == 0 and type(value) is float):  # 0.0 == -0.0, dumped apart
                pieces[(i, type(value), value)] = got
        return got

    def hashed(params: tuple[tuple[str, Scalar], ...]) -> str:
        body = ",".join([piece(i, params[i][1]) for i in order])
        return hashlib.sha256((prefix + "{" + body + "}" + suffix).encode()).hexdigest()[:16]

    return hashed


def json_scalar(v: object) -> str:
    """`json.dumps(v)` of None, a bool, an int, a float or a str, without building an
    encoder (a run's parameters, written a run at a time)."""
    if isinstance(v, str):
        return encode_basestring_ascii(v)
    if v is None or isinstance(v, bool) or (isinstance(v, float) and not math.isfinite(v)):
        return json.dumps(v)
    return int.__repr__(v) if isinstance(v, int) else float.__repr__(v)  # type: ignore[arg-type]


def count_runs(exp: Experiment) -> int:
    """How many runs a row makes: the product of its factors' sizes."""
    if exp.together or any(isinstance(v, Distribution) for _, v in exp.params):
        return math.prod(size for _, size in sizes(exp))
    return math.prod(len(v.values) if isinstance(v, Variation) else 1 for _, v in exp.params)


def expand(workbook: Workbook,
           trials: Mapping[str, Iterable[tuple[str, tuple[tuple[str, Scalar], ...]]]] | None = None) -> list[RunSpec]:
    """Every run the workbook asks for; an adaptive row's are its trials (`trials`, by
    experiment: (key, parameters); none when not given)."""
    default = workbook.settings.default_cluster or "local"
    trials = trials or {}
    hashers: dict[tuple[object, ...], _Hasher] = {}
    return [s for e in workbook.experiments
            for s in expand_experiment(e, default, trials.get(e.id, ()) if e.search is not None else None, hashers)]


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
