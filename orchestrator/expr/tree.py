"""The syntax tree of nero's expression language: its nodes, walking them, and writing a tree
back as canonical text (pure).

Nodes are frozen dataclasses, so trees compare, hash and cache by value; `parse` in
`orchestrator.expr.parser` builds them and `unparse` here writes them back so that
`parse(unparse(t)) == t`. Durations are numbers of seconds once parsed. Three conditions
exist only in run selectors (`parse_at(..., selector=True)`): `Numbers` (the short numbers
`12-18`), `States` (a word of `STATE_WORDS`) and `Glob` (an id glob `lr-sweep*`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..model import FINISHED_STATES, LIVE_STATES, RunState
from ..units import format_number

__all__ = [
    "BUILTIN_NAMES",
    "KEYWORDS",
    "STATE_WORDS",
    "Arith",
    "Bool",
    "Call",
    "Compare",
    "Expr",
    "Glob",
    "Literal",
    "Logic",
    "Name",
    "Neg",
    "Not",
    "Num",
    "Numbers",
    "RunCondition",
    "States",
    "Str",
    "Unary",
    "children",
    "max_depth",
    "unparse",
    "walk",
]

BUILTIN_NAMES = frozenset({"runtime", "step", "state", "cluster", "experiment", "id", "key"})
KEYWORDS = frozenset({"and", "or", "not", "true", "false", "nan", "inf", "after"})  # case-insensitive

STATE_WORDS: Mapping[str, frozenset[str]] = {
    **{s.value: frozenset({s.value}) for s in RunState},
    "live": frozenset(s.value for s in LIVE_STATES),
    "active": frozenset(s.value for s in LIVE_STATES),
    "finished": frozenset(s.value for s in FINISHED_STATES),
    "crashed": frozenset({RunState.FAILED.value, RunState.LOST.value}),
    "all": frozenset(s.value for s in RunState),
}

V = TypeVar("V", float, str, bool)


class Expr:
    """A node of a parsed expression (frozen dataclasses below)."""

    __slots__ = ()


@dataclass(frozen=True)
class Literal(Expr, Generic[V]):
    """A constant written in the expression."""

    value: V


class Num(Literal[float]):
    """A number; nan and inf included, durations in seconds."""


class Str(Literal[str]):
    """Quoted text."""


class Bool(Literal[bool]):
    """true or false."""


@dataclass(frozen=True)
class Name(Expr):
    name: str


class RunCondition(Expr):
    """A condition on which run it is, written as a word of a selector (no operands)."""

    __slots__ = ()


@dataclass(frozen=True)
class Numbers(RunCondition):
    """Selectors only: the runs whose short number (`nero status`) is from low to high."""

    low: int
    high: int


@dataclass(frozen=True)
class States(RunCondition):
    """Selectors only: the runs in one of the states a word of `STATE_WORDS` stands for."""

    word: str  # lower case, a key of STATE_WORDS


@dataclass(frozen=True)
class Glob(RunCondition):
    """Selectors only: the runs whose key or experiment id matches the pattern (`*` any
    text, `?` one character, `[` and `]` themselves)."""

    pattern: str


@dataclass(frozen=True)
class Unary(Expr):
    """An operator on one operand."""

    operand: Expr


class Neg(Unary):
    """-x"""


class Not(Unary):
    """not c"""


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
    """A node's operands and arguments, left to right."""
    if isinstance(node, Unary):
        return (node.operand,)
    if isinstance(node, Arith):
        return (node.left, node.right)
    if isinstance(node, Compare | Logic):
        return node.operands
    if isinstance(node, Call):
        return node.args
    return ()


def walk(node: Expr) -> Iterator[Expr]:
    """Every node, parents before children, left to right (iterative)."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(children(n)))


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
    if isinstance(node, Numbers):
        return str(node.low) if node.low == node.high else f"{node.low}-{node.high}"
    if isinstance(node, States):
        return node.word
    if isinstance(node, Glob):
        return node.pattern
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


def max_depth(node: Expr) -> int:
    """The depth of a tree, computed without recursion."""
    deepest = 0
    stack = [(node, 1)]
    while stack:
        n, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((c, d + 1) for c in children(n))
    return deepest
