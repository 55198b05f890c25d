"""The one safe expression language of nero: rules, run selectors and status filters (pure).

Text from the workbook and the command line is parsed by a small hand-written tokenizer and
recursive-descent parser into frozen dataclasses, then evaluated against the `Facts` of one
run. Nothing is ever passed to `eval`, there is no attribute access, no indexing, no power
operator, and only the functions listed in `FUNCTIONS` can be called. Every input is bounded
(`MAX_LENGTH` characters, `MAX_DEPTH` levels of nesting) and checked before any recursion,
so hostile text is rejected with an `ExpressionError` in bounded time.

Expressions::

    condition  := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | comparison
    comparison := sum (("<" | "<=" | ">" | ">=" | "==" | "!=") sum)*   # chains: 0.01 <= lr < 0.1
    sum        := product (("+" | "-") product)*
    product    := unary (("*" | "/") unary)*
    unary      := "-" unary | "+" unary | primary
    primary    := number | duration | string | "true" | "false" | "nan" | "inf"
                | name | function "(" arguments ")" | "(" condition ")"

- numbers: `0.4`, `1e-3`, `.5`; durations are numbers of seconds: `90s`, `30m`, `2h`, `1.5d`,
  `2h30m`. Strings: `'running'` or `"running"` (curly quotes from a spreadsheet work too).
- `=` and `<>` are accepted for `==` and `!=`; `≤ ≥ ≠` as well. Keywords (`and or not true
  false nan inf`) and function names are case-insensitive; names are case-sensitive.
- names: a letter, then letters, digits and `_`; `.` and `@` followed by a letter or digit and
  `/` followed by a letter continue a name, so `val_err@10`, `train/loss` and `val.acc` are
  metric names. Write `a / b` with spaces to divide. Names never start with `_`.
- a name is, in this order: `runtime` (seconds, None before the run starts), `step`, `state`,
  `cluster`, `experiment` or `id` (the experiment id), `key` (the run key) — see
  `BUILTIN_NAMES` — then the run's latest value of that metric, then its parameter.
- functions: `isnan(x)`, `isinf(x)`, `abs(x)`; over a metric's history: `best(m)` (best value so
  far in the metric's goal direction), `min(m)`, `max(m)`, and `plateau(m, n[, delta])`: the
  metric has at least n+1 evaluations and the best of the last n does not improve on the best
  before them by more than delta in its goal direction (default: 0.01 % of that best, so a
  run creeping forward by rounding noise counts as stalled).

Missing data never makes a condition true: a comparison involving a name the run does not have
(yet) is *unknown*; `not`, `and`, `or` follow three-valued logic (unknown `and` false is false,
unknown `or` true is true, `not` unknown is unknown) and an unknown result counts as false.
Comparisons follow IEEE 754: every comparison with NaN is false except `!=` (use `isnan`).
Ordering compares two numbers or two strings; values of different types are never equal.
Arithmetic on a non-number is unknown; division by zero gives ±inf or nan.

Selectors (`parse_selector`) are a comma-separated union of terms::

    selector := term ("," term)*
    term     := "#"? N | "#"? N "-" "#"? N         # the short numbers shown by `nero status`
              | state word                         # see STATE_WORDS: failed, running, live, crashed, all …
              | glob                               # lr-sweep*, demo[lr=0.1*, *layers=2]
              | condition                          # val_err < 0.2 and step > 1000

A term is a glob when it is made of letters, digits and `_ . - * ? = + @ / : % , [ ]` only (no
spaces, no `==`) and contains `*`, `?`, `[` or `]`, or when it is a plain experiment id
(`lr-sweep`). `*` and `?` are wildcards; `[` and `]` match themselves (run keys contain them). A
glob matches the run key or the experiment id. Commas inside `(...)`, quotes or a closed `[...]`
(a `]` before any further `[`) do not split terms, so `demo[lr=0.1,layers=2]` is one term and
`demo[lr=0.1*, demo[lr=0.2*` two; write `?` for a comma in a glob whose `]` is left open.
A state word wins over an experiment of the same name (select that one with `id == 'all'`);
`**` and `__` are rejected in globs too. Anything else is a condition.
"""

from __future__ import annotations

import fnmatch
import keyword
import math
import re
from abc import ABC, abstractmethod
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ..errors import ExpressionError
from ..model import FINISHED_STATES, LIVE_STATES, MAX_GOAL_NAMES, RunRecord, RunState, Series

MAX_LENGTH = 2000
MAX_DEPTH = 50
UNITS: Mapping[str, float] = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
BUILTIN_NAMES = frozenset({"runtime", "step", "state", "cluster", "experiment", "id", "key"})
MAX_PLATEAU = 1_000_000

FUNCTIONS: Mapping[str, str] = {
    "abs": "abs(x)",
    "best": "best(metric)",
    "isinf": "isinf(x)",
    "isnan": "isnan(x)",
    "max": "max(metric)",
    "min": "min(metric)",
    "plateau": "plateau(metric, n[, delta])",
}
PLATEAU_RELATIVE_DELTA = 1e-4  # plateau(m, n) without delta: smaller gains do not count
_HISTORY_FUNCTIONS = frozenset({"best", "min", "max", "plateau"})
_CONDITION_FUNCTIONS = frozenset({"isnan", "isinf", "plateau"})

STATE_WORDS: Mapping[str, frozenset[str]] = {
    **{s.value: frozenset({s.value}) for s in RunState},
    "live": frozenset(s.value for s in LIVE_STATES),
    "active": frozenset(s.value for s in LIVE_STATES),
    "finished": frozenset(s.value for s in FINISHED_STATES),
    "crashed": frozenset({RunState.FAILED.value, RunState.LOST.value}),
    "all": frozenset(s.value for s in RunState),
}

Value = float | str | bool | None  # None: the run has no such value (yet)


# ---------------------------------------------------------------------------------------------
# The facts an expression is evaluated against


def goal_of(metric: str, goals: Mapping[str, str]) -> str:
    """The goal direction of a metric: the Metrics sheet's, else the same default as
    `Workbook.goal` (`max` for accuracy-like names, `min` otherwise)."""
    goal = goals.get(metric)
    if goal in ("min", "max"):
        return goal
    return "max" if metric.split("@")[0].lower() in MAX_GOAL_NAMES else "min"


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
        are used as they are)."""
        hist: dict[str, Sequence[float]] = {}
        for name, points in (history or {}).items():
            if isinstance(points, Series):
                hist[name] = points.values
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
            metrics=dict(record.last),
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


# ---------------------------------------------------------------------------------------------
# The syntax tree


class Expr:
    """A node of a parsed expression (frozen dataclasses below)."""

    __slots__ = ()


@dataclass(frozen=True)
class Num(Expr):
    value: float


@dataclass(frozen=True)
class Str(Expr):
    value: str


@dataclass(frozen=True)
class Bool(Expr):
    value: bool


@dataclass(frozen=True)
class Name(Expr):
    name: str


@dataclass(frozen=True)
class Neg(Expr):
    operand: Expr


@dataclass(frozen=True)
class Not(Expr):
    operand: Expr


@dataclass(frozen=True)
class Arith(Expr):
    op: str  # + - * /
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Compare(Expr):
    operands: tuple[Expr, ...]
    ops: tuple[str, ...]  # < <= > >= == !=, one fewer than operands


@dataclass(frozen=True)
class Logic(Expr):
    op: str  # and | or
    operands: tuple[Expr, ...]


@dataclass(frozen=True)
class Call(Expr):
    func: str
    args: tuple[Expr, ...]


def children(node: Expr) -> tuple[Expr, ...]:
    if isinstance(node, Neg | Not):
        return (node.operand,)
    if isinstance(node, Arith):
        return (node.left, node.right)
    if isinstance(node, Compare | Logic):
        return node.operands
    if isinstance(node, Call):
        return node.args
    return ()


def _walk(node: Expr) -> Iterator[Expr]:
    """Every node, parents before children, left to right (iterative)."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(children(n)))


def names(expr: Expr | str) -> set[str]:
    """The metric and parameter names an expression refers to (built-in names such as
    `runtime` or `state` left out), so a sheet can warn about names no run will have."""
    node = parse(expr) if isinstance(expr, str) else expr
    return {n.name for n in _walk(node) if isinstance(n, Name) and n.name not in BUILTIN_NAMES}


def _kind(node: Expr) -> str:
    """"bool" for conditions, "value" for values, "either" for true/false."""
    if isinstance(node, Compare | Logic | Not):
        return "bool"
    if isinstance(node, Call):
        return "bool" if node.func in _CONDITION_FUNCTIONS else "value"
    if isinstance(node, Bool):
        return "either"
    return "value"


_PRECEDENCE = {"or": 1, "and": 2, "not": 3, "cmp": 4, "+": 5, "-": 5, "*": 6, "/": 6, "neg": 7}


def _precedence(node: Expr) -> int:
    if isinstance(node, Logic):
        return _PRECEDENCE[node.op]
    if isinstance(node, Not):
        return _PRECEDENCE["not"]
    if isinstance(node, Compare):
        return _PRECEDENCE["cmp"]
    if isinstance(node, Arith):
        return _PRECEDENCE[node.op]
    if isinstance(node, Neg) or (isinstance(node, Num) and (node.value < 0)):
        return _PRECEDENCE["neg"]
    return 9


def unparse(node: Expr) -> str:
    """Canonical text for a tree; `parse(unparse(t)) == t` for every tree `parse` returns."""

    def wrap(child: Expr, least: int) -> str:
        text = unparse(child)
        return f"({text})" if _precedence(child) < least else text

    if isinstance(node, Num):
        return format_number(node.value, exact=True)
    if isinstance(node, Str):
        quote = "'" if "'" not in node.value else '"'
        return f"{quote}{node.value}{quote}"
    if isinstance(node, Bool):
        return "true" if node.value else "false"
    if isinstance(node, Name):
        return node.name
    if isinstance(node, Neg):
        return "-" + wrap(node.operand, _PRECEDENCE["neg"])
    if isinstance(node, Not):
        return "not " + wrap(node.operand, _PRECEDENCE["not"])
    if isinstance(node, Arith):
        p = _PRECEDENCE[node.op]
        return f"{wrap(node.left, p)} {node.op} {wrap(node.right, p + 1)}"
    if isinstance(node, Compare):
        parts = [wrap(node.operands[0], _PRECEDENCE["cmp"] + 1)]
        for op, operand in zip(node.ops, node.operands[1:], strict=True):
            parts += [op, wrap(operand, _PRECEDENCE["cmp"] + 1)]
        return " ".join(parts)
    if isinstance(node, Logic):
        p = _PRECEDENCE[node.op]
        return f" {node.op} ".join(wrap(o, p + 1) for o in node.operands)
    if isinstance(node, Call):
        return f"{node.func}({', '.join(unparse(a) for a in node.args)})"
    raise TypeError(f"not an expression node: {node!r}")


# ---------------------------------------------------------------------------------------------
# Tokens


@dataclass(frozen=True)
class _Token:
    kind: str  # num | str | name | op | end
    text: str
    pos: int  # in the whole source
    value: float | str = ""  # the number, the string, the name, or the operator (= becomes ==)


_NUMBER = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_NUMBER_TAIL = re.compile(r"[A-Za-z0-9_.]*")
_DURATION = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)[smhd])+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smhd])")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*(?:(?:[.@][A-Za-z0-9]|/[A-Za-z])[A-Za-z0-9_]*)*")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_QUOTES = {"'": "'", '"': '"', "\u2018": "\u2018\u2019", "\u2019": "\u2018\u2019",
           "\u201c": "\u201c\u201d", "\u201d": "\u201c\u201d"}
_OPERATORS = {
    "<=": "<=", ">=": ">=", "==": "==", "!=": "!=", "<>": "!=",
    "<": "<", ">": ">", "=": "==", "≤": "<=", "≥": ">=", "≠": "!=",
    "+": "+", "-": "-", "*": "*", "/": "/", "(": "(", ")": ")", ",": ",",
}
_FORBIDDEN = {
    "**": "'**' is not supported: there is no power operator",
    "&&": "'&&' is not supported; write 'and'",
    "||": "'||' is not supported; write 'or'",
    "!": "'!' is not supported; write 'not'",
    "&": "'&' is not supported; write 'and'",
    "|": "'|' is not supported; write 'or'",
    "^": "'^' is not supported: there is no power operator",
    "%": "'%' is not supported",
    "[": "indexing with '[' is not allowed; a name stands for the run's latest value",
    "]": "unexpected ']'",
    "{": "unexpected '{'",
    "}": "unexpected '}'",
    "`": "backticks are not allowed; quote text with '…'",
    ";": "';' cannot appear in an expression (it separates rules in the rules column)",
    ":": "unexpected ':' (nero expressions are not Python)",
    "\\": "unexpected '\\'",
}
_KEYWORDS = frozenset({"and", "or", "not", "true", "false", "nan", "inf", "after"})
_PYTHON_ONLY = frozenset(k for k in keyword.kwlist if k not in ("and", "or", "not", "True", "False", "None"))


class _Source:
    """The text being parsed and the slice of it that is one expression."""

    def __init__(self, text: str, start: int, end: int, label: str):
        self.text, self.start, self.end, self.label = text, start, end, label

    def error(self, message: str, pos: int | None) -> ExpressionError:
        prefix = f"{self.label}: " if self.label else ""
        return ExpressionError(self.text, prefix + message, pos)


def _tokenize(src: _Source) -> list[_Token]:
    text, i, end = src.text, src.start, src.end
    tokens: list[_Token] = []
    while i < end:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if ch in "0123456789" or (ch == "." and i + 1 < end and text[i + 1] in "0123456789"):
            i = _number(src, i, tokens)
            continue
        if ("a" <= ch <= "z") or ("A" <= ch <= "Z"):
            m = _NAME.match(text, i, end)
            assert m is not None
            word = m.group()
            if word in _PYTHON_ONLY:
                if word in ("in", "is"):
                    raise src.error(f"'{word}' is not supported; compare with == and combine with 'or'", i)
                raise src.error(f"'{word}' is Python, not part of nero's expression language", i)
            tokens.append(_Token("name", word, i, word))
            i = m.end()
            continue
        if ch == "_":
            m = _WORD.match(text, i, end)
            word = m.group() if m else ch
            raise src.error(f"names may not begin with '_' ({word!r}): expressions have no access to Python internals", i)
        if ch in _QUOTES:
            closers = _QUOTES[ch]
            j = i + 1
            while j < end and text[j] not in closers:
                j += 1
            if j >= end:
                raise src.error("unclosed quote", i)
            tokens.append(_Token("str", text[i : j + 1], i, text[i + 1 : j]))
            i = j + 1
            continue
        if ch == ".":
            raise src.error("attribute access ('.') is not allowed; '.' may only join the parts of a metric name like val.acc", i)
        two = text[i : min(i + 2, end)]
        if two in _FORBIDDEN:
            raise src.error(_FORBIDDEN[two], i)
        if len(two) == 2 and two in _OPERATORS:
            tokens.append(_Token("op", two, i, _OPERATORS[two]))
            i += 2
            continue
        if ch in _FORBIDDEN:
            raise src.error(_FORBIDDEN[ch], i)
        if ch in _OPERATORS:
            tokens.append(_Token("op", ch, i, _OPERATORS[ch]))
            i += 1
            continue
        raise src.error(f"unexpected character {ch!r}", i)
    tokens.append(_Token("end", "", end))
    return tokens


def _number(src: _Source, i: int, tokens: list[_Token]) -> int:
    text, end = src.text, src.end
    m = _NUMBER.match(text, i, end)
    assert m is not None
    tail = _NUMBER_TAIL.match(text, m.end(), end)
    stop = tail.end() if tail else m.end()
    literal = text[i:stop]
    if stop == m.end():
        tokens.append(_Token("num", literal, i, float(literal)))
        return stop
    if _DURATION.fullmatch(literal):
        seconds = sum(float(n) * UNITS[u] for n, u in _DURATION_PART.findall(literal))
        tokens.append(_Token("num", literal, i, seconds))
        return stop
    raise src.error(
        f"{literal!r} is not a number or a duration; durations are a number and a unit "
        "s, m, h or d (90s, 30m, 2h, 1.5d, 2h30m)", i)


# ---------------------------------------------------------------------------------------------
# The parser


class _Parser:
    def __init__(self, src: _Source, tokens: list[_Token]):
        self.src = src
        self.tokens = tokens
        self.i = 0
        self.depth = 0

    # helpers ---------------------------------------------------------------------------------

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def advance(self) -> _Token:
        tok = self.tokens[self.i]
        if tok.kind != "end":
            self.i += 1
        return tok

    def is_op(self, *ops: str) -> bool:
        return self.tok.kind == "op" and self.tok.value in ops

    def is_word(self, word: str) -> bool:
        return self.tok.kind == "name" and self.tok.text.lower() == word

    def error(self, message: str, pos: int | None = None) -> ExpressionError:
        return self.src.error(message, self.tok.pos if pos is None else pos)

    def unexpected(self) -> ExpressionError:
        tok = self.tok
        if tok.kind == "end":
            return self.error("the expression ends too early")
        return self.error(f"unexpected {tok.text!r}")

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"the expression is nested more than {MAX_DEPTH} levels deep")

    def lengthen(self, chain: int) -> int:
        """Arithmetic chains nest to the left: a chain longer than MAX_DEPTH is too deep."""
        if chain >= MAX_DEPTH:
            raise self.error(f"the expression is nested more than {MAX_DEPTH} levels deep "
                             "(a chain of that many + - * / operations)")
        return chain + 1

    def consumed_to(self) -> int:
        """Where the last consumed token ends."""
        if not self.i:
            return self.src.start
        last = self.tokens[self.i - 1]
        return last.pos + len(last.text)

    def need(self, node: Expr, start: int, kinds: tuple[str, ...], what: str, end: int | None = None) -> Expr:
        if _kind(node) not in kinds:
            stop = self.consumed_to() if end is None else end
            text = self.src.text[start:max(stop, start)].strip()
            if what == "condition":
                raise self.error(
                    f"{text!r} is a value, not a condition; compare it, e.g. '{text} > 0'", start)
            raise self.error(f"{text!r} is a condition, not a {what}", start)
        return node

    # grammar ---------------------------------------------------------------------------------

    def parse(self) -> Expr:
        if self.tok.kind == "end":
            raise self.error("empty expression")
        start = self.tok.pos
        node = self.condition()
        if self.tok.kind != "end":
            if self.is_word("after"):
                raise self.error("'after N' can only end a rule, e.g. 'val_err > 0.4 after 500'")
            if self.tok.kind in ("num", "name", "str") or self.is_op("("):
                raise self.error(f"unexpected {self.tok.text!r}; a missing operator, 'and' or 'or'?")
            raise self.unexpected()
        self.need(node, start, ("bool", "either"), "condition")
        depth = max_depth(node)
        if depth > MAX_DEPTH:
            raise self.error(f"the expression is nested {depth} levels deep; at most {MAX_DEPTH} are allowed", start)
        return node

    def condition(self) -> Expr:
        return self.logic("or")

    def logic(self, op: str) -> Expr:
        sub = self.logic_and if op == "or" else self.negation
        start = self.tok.pos
        first = sub()
        if not self.is_word(op):
            return first
        operands = [self.need(first, start, ("bool", "either"), "condition")]
        while self.is_word(op):
            self.advance()
            start = self.tok.pos
            operands.append(self.need(sub(), start, ("bool", "either"), "condition"))
        return Logic(op, tuple(operands))

    def logic_and(self) -> Expr:
        return self.logic("and")

    def negation(self) -> Expr:
        if self.is_word("not"):
            self.advance()
            self.nest()
            start = self.tok.pos
            operand = self.need(self.negation(), start, ("bool", "either"), "condition")
            self.depth -= 1
            return Not(operand)
        return self.comparison()

    def comparison(self) -> Expr:
        start = self.tok.pos
        first = self.arithmetic()
        if not self.is_op("<", "<=", ">", ">=", "==", "!="):
            return first
        operands, ops, starts = [first], [], [start]
        while self.is_op("<", "<=", ">", ">=", "==", "!="):
            ops.append(str(self.advance().value))
            starts.append(self.tok.pos)
            operands.append(self.arithmetic())
        for k, op in enumerate(ops):
            if op not in ("==", "!="):
                for j in (k, k + 1):
                    if _kind(operands[j]) != "value":
                        raise self.error(f"'{op}' orders values; a condition or true/false cannot be ordered", starts[j])
        return Compare(tuple(operands), tuple(ops))

    def arithmetic(self) -> Expr:
        start = self.tok.pos
        left = self.term()
        chain = 0
        while self.is_op("+", "-"):
            chain = self.lengthen(chain)
            self.need(left, start, ("value",), "number")
            op = str(self.advance().value)
            rstart = self.tok.pos
            right = self.need(self.term(), rstart, ("value",), "number")
            left = Arith(op, left, right)
        return left

    def term(self) -> Expr:
        start = self.tok.pos
        left = self.unary()
        chain = 0
        while self.is_op("*", "/"):
            chain = self.lengthen(chain)
            self.need(left, start, ("value",), "number")
            op = str(self.advance().value)
            rstart = self.tok.pos
            right = self.need(self.unary(), rstart, ("value",), "number")
            left = Arith(op, left, right)
        return left

    def unary(self) -> Expr:
        if self.is_op("-", "+"):
            op = str(self.advance().value)
            self.nest()
            start = self.tok.pos
            operand = self.need(self.unary(), start, ("value",), "number")
            self.depth -= 1
            return Neg(operand) if op == "-" else operand
        return self.primary()

    def primary(self) -> Expr:
        tok = self.tok
        if tok.kind == "num":
            self.advance()
            return Num(float(tok.value))
        if tok.kind == "str":
            self.advance()
            return Str(str(tok.value))
        if self.is_op("("):
            self.advance()
            self.nest()
            node = self.condition()
            if not self.is_op(")"):
                if self.tok.kind == "end":
                    raise self.error(f"the '(' at character {tok.pos + 1} is never closed")
                raise self.unexpected()
            self.advance()
            self.depth -= 1
            return node
        if tok.kind == "name":
            word = tok.text.lower()
            if word in _KEYWORDS:
                self.advance()
                if word in ("true", "false"):
                    return Bool(word == "true")
                if word in ("nan", "inf"):
                    return Num(math.nan if word == "nan" else math.inf)
                if word == "after":
                    raise self.error("'after N' can only end a rule, e.g. 'val_err > 0.4 after 500'", tok.pos)
                if word == "not":
                    raise self.error("'not' must start a condition; put it in parentheses: (not …)", tok.pos)
                raise self.error(f"'{tok.text}' needs a condition on its left", tok.pos)
            self.advance()
            if self.is_op("("):
                return self.call(tok)
            return Name(tok.text)
        raise self.unexpected()

    def call(self, name: _Token) -> Expr:
        func = name.text.lower()
        if func not in FUNCTIONS:
            valid = ", ".join(FUNCTIONS.values())
            raise self.error(f"unknown function {name.text!r}; valid functions are: {valid}", name.pos)
        self.advance()  # (
        self.nest()
        args: list[Expr] = []
        starts: list[int] = []
        ends: list[int] = []
        if not self.is_op(")"):
            while True:
                starts.append(self.tok.pos)
                args.append(self.condition())
                ends.append(self.consumed_to())
                if self.is_op(","):
                    self.advance()
                    continue
                break
        if not self.is_op(")"):
            if self.tok.kind == "end":
                raise self.error(f"the '(' of {name.text}( is never closed")
            raise self.unexpected()
        self.advance()
        self.depth -= 1
        self.check_call(func, name, args, starts, ends)
        return Call(func, tuple(args))

    def check_call(self, func: str, name: _Token, args: list[Expr], starts: list[int], ends: list[int]) -> None:
        usage = FUNCTIONS[func]
        arity = (2, 3) if func == "plateau" else (1,)
        if len(args) not in arity:
            raise self.error(f"{name.text}() takes {' or '.join(map(str, arity))} argument"
                             f"{'s' if arity != (1,) else ''}: {usage}", name.pos)
        if func in _HISTORY_FUNCTIONS:
            metric = args[0]
            if not isinstance(metric, Name) or metric.name in BUILTIN_NAMES:
                raise self.error(f"{func}() works on a metric's history; write {usage}, e.g. {func}(val_loss"
                                 f"{', 10' if func == 'plateau' else ''})", starts[0])
        else:
            self.need(args[0], starts[0], ("value",), "value", ends[0])
        if func == "plateau":
            n = args[1]
            if not (isinstance(n, Num) and n.value.is_integer() and 1 <= n.value <= MAX_PLATEAU):
                raise self.error(f"plateau()'s n is a whole number of evaluations from 1 to {MAX_PLATEAU}: {usage}", starts[1])
            if len(args) == 3:
                delta = args[2]
                if not (isinstance(delta, Num) and math.isfinite(delta.value) and delta.value >= 0):
                    raise self.error(f"plateau()'s delta is a number ≥ 0: {usage}", starts[2])


def max_depth(node: Expr) -> int:
    """The depth of a tree, computed without recursion."""
    deepest = 0
    stack = [(node, 1)]
    while stack:
        n, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((c, d + 1) for c in children(n))
    return deepest


def parse_at(text: str, start: int = 0, end: int | None = None, *, label: str = "") -> Expr:
    """Parse `text[start:end]` as a condition; errors point into the whole `text` and start
    with `label` (e.g. "rule 2")."""
    end = len(text) if end is None else end
    if end - start > MAX_LENGTH:
        prefix = f"{label}: " if label else ""
        raise ExpressionError(text, f"{prefix}the expression is {end - start} characters long; "
                              f"at most {MAX_LENGTH} are allowed", start)
    src = _Source(text, start, end, label)
    return _Parser(src, _tokenize(src)).parse()


@lru_cache(maxsize=1024)
def parse(text: str) -> Expr:
    """Parse a condition; ExpressionError says what is wrong and where."""
    return parse_at(text)


# ---------------------------------------------------------------------------------------------
# Evaluation


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
        if isinstance(node, Num | Str | Bool):
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
    ev = _Evaluator(facts)
    result = _condition(ev.value(expr))
    return Explanation(result, tuple(ev.values.items()), tuple(ev.notes), ev.uses_metrics)


# ---------------------------------------------------------------------------------------------
# Formatting values for messages


def format_number(v: float, *, exact: bool = False) -> str:
    """`0.52`, `612`, `nan`, `inf`; with exact=True the text parses back to the same float."""
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v) if exact else f"{v:.6g}"


def format_duration(seconds: float) -> str:
    """`45s`, `12m05s`, `2h03m`, `1d04h`."""
    if not math.isfinite(seconds):
        return format_number(seconds)
    total = max(0, round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_value(v: Value | Any, name: str = "") -> str:
    if v is None:
        return "missing"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return format_duration(float(v)) if name == "runtime" else format_number(float(v))
    return str(v)


# ---------------------------------------------------------------------------------------------
# Selectors


class Term(ABC):
    """One comma-separated part of a selector."""

    __slots__ = ()

    @abstractmethod
    def matches(self, facts: Facts) -> bool:
        """Whether the run with these facts is selected by this term."""


@dataclass(frozen=True)
class NumberTerm(Term):
    low: int
    high: int

    def matches(self, facts: Facts) -> bool:
        return self.low <= facts.number <= self.high


@dataclass(frozen=True)
class StateTerm(Term):
    word: str
    states: frozenset[str]

    def matches(self, facts: Facts) -> bool:
        return str(facts.state) in self.states


@dataclass(frozen=True)
class GlobTerm(Term):
    pattern: str
    regex: re.Pattern[str] = field(compare=False, repr=False, default=re.compile(""))

    def matches(self, facts: Facts) -> bool:
        return bool(self.regex.match(facts.key) or self.regex.match(facts.experiment))


@dataclass(frozen=True)
class ExprTerm(Term):
    expr: Expr

    def matches(self, facts: Facts) -> bool:
        return evaluate(self.expr, facts)


@dataclass(frozen=True)
class Selector:
    """A union of terms; `matches` is true when any term matches the run."""

    source: str
    terms: tuple[Term, ...]

    def matches(self, facts: Facts) -> bool:
        return any(t.matches(facts) for t in self.terms)

    def names(self) -> set[str]:
        out: set[str] = set()
        for t in self.terms:
            if isinstance(t, ExprTerm):
                out |= names(t.expr)
        return out


_RANGE = re.compile(r"#?(\d+)(?:\s*-\s*#?(\d+))?")
_GLOB = re.compile(r"[A-Za-z0-9_.\-*?=+@/:%,\[\]]+")
_EXPERIMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def _split_terms(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each top-level comma-separated part."""
    start, depth, i, n = 0, 0, 0, len(text)
    next_close, next_open = [n] * (n + 1), [n] * (n + 1)  # first ']' / '[' at or after each index
    for k in range(n - 1, -1, -1):
        next_close[k] = k if text[k] == "]" else next_close[k + 1]
        next_open[k] = k if text[k] == "[" else next_open[k + 1]
    while i < n:
        ch = text[i]
        if ch in _QUOTES:
            closers = _QUOTES[ch]
            j = i + 1
            while j < n and text[j] not in closers:
                j += 1
            i = j + 1
            continue
        if ch == "[":  # a closed [...] (no '[' before its ']') is part of a run key
            close = next_close[i + 1]
            if close < next_open[i + 1]:
                i = close + 1
                continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            yield start, i
            start = i + 1
        i += 1
    yield start, n


def _glob_regex(pattern: str) -> re.Pattern[str]:
    escaped = pattern.replace("[", "[[]")
    return re.compile(fnmatch.translate(escaped))


def _term(text: str, start: int, end: int) -> Term:
    piece = text[start:end]
    m = _RANGE.fullmatch(piece)
    if m:
        low = int(m.group(1))
        high = int(m.group(2)) if m.group(2) else low
        if high < low:
            raise ExpressionError(text, f"the range {piece!r} runs backwards; write {high}-{low}", start)
        return NumberTerm(low, high)
    if piece.lower() in STATE_WORDS:
        return StateTerm(piece.lower(), STATE_WORDS[piece.lower()])
    if _GLOB.fullmatch(piece) and "==" not in piece and (
        any(c in piece for c in "*?[]") or _EXPERIMENT_ID.fullmatch(piece)
    ):
        if "**" in piece:
            raise ExpressionError(text, f"{piece!r}: '**' is not supported (there is no power operator, and in a "
                                  "glob one '*' matches any text)", start + piece.index("**"))
        if "__" in piece:
            raise ExpressionError(text, f"{piece!r} looks like Python attribute access; selectors match run ids, "
                                  "write '?' for each '_' if an id really contains '__'", start + piece.index("__"))
        return GlobTerm(piece, _glob_regex(piece))
    return ExprTerm(parse_at(text, start, end, label=f"selector term {piece[:60]!r}"))


@lru_cache(maxsize=256)
def parse_selector(text: str) -> Selector:
    """Parse a run selector such as `crashed,144-149,170` or `lr-sweep*, val_err < 0.2`."""
    if len(text) > MAX_LENGTH:
        raise ExpressionError(text, f"the selector is {len(text)} characters long; at most {MAX_LENGTH} are allowed")
    terms: list[Term] = []
    for start, end in _split_terms(text):
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if start < end:
            terms.append(_term(text, start, end))
    if not terms:
        words = " ".join(sorted(STATE_WORDS))
        raise ExpressionError(text, "empty selector; give run numbers (12-18,21), state words "
                              f"({words}), id globs (lr-sweep*) or conditions (val_err < 0.2)")
    return Selector(text, tuple(terms))
