"""Run selectors: which runs a command acts on, from `crashed,144-149,170`,
`lr-sweep*, val_err < 0.2` or `lr-sweep* and val_err > 0.4` (pure).

A selector is a comma-separated union of conditions of the expression language
(`orchestrator.expr.parser`, read with `selector=True`), in which three run conditions may
stand wherever a condition begins and ends (on their own, around `and`, `or`, after `not`,
inside `( )`, never inside a function's parentheses or next to an operator)::

    selector := condition ("," condition)*
    run      := "#"? N | "#"? N "-" "#"? N     # the short numbers shown by `nero status`
              | state word                     # see STATE_WORDS: failed, running, live, crashed, all …
              | glob                           # lr-sweep*, demo[lr=0.1*, *layers=2], lr-sweep

so `failed or demo[lr=0.1*`, `not demo*` and `(demo* or long*) and step > 100` are
selectors. A glob is a word of letters, digits and `_ . - * ? = + @ / : % [ ]` (a `,` only
inside a `[...]` that closes) with no `==` that contains `*`, `?`, `[` or `]`, or is a plain
id (`lr-sweep`, `demo`); a word that reads as a comparison (`lr=0.1`, `a*b=c`) is one, and
`true`, `false`, `nan`, `inf`, `and`, `or`, `not` stay keywords. `*` and `?` are wildcards;
`[` and `]` match themselves (run keys contain them). A glob matches the whole run key or the
whole experiment id. Commas inside `(...)`, quotes or a closed `[...]` (a `]` before any
further `[`) do not split the union, so `demo[lr=0.1,layers=2]` is one glob and
`demo[lr=0.1*, demo[lr=0.2*` two; write `?` for a comma in a glob whose `]` is left open. A
state word wins over an experiment of the same name (select that one with `id == 'all'`); a
plain id that is also a metric, parameter or built-in name is reported by `Project.select`,
never guessed. `**` and `__` are rejected in globs too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from ..errors import ExpressionError
from ..tokens import scan, trim
from .evaluation import Facts, evaluate
from .parser import MAX_LENGTH, names, parse_at
from .tree import STATE_WORDS, Expr, Glob, Numbers, States, walk

__all__ = [
    "ExprTerm",
    "GlobTerm",
    "NumberTerm",
    "Selector",
    "StateTerm",
    "Term",
    "parse_selector",
]


class Term(ABC):
    """One comma-separated part of a selector: a condition, evaluated as every condition is."""

    __slots__ = ()

    @property
    @abstractmethod
    def expr(self) -> Expr:
        """The condition this term is."""

    def matches(self, facts: Facts) -> bool:
        """Whether the run with these facts is selected by this term."""
        return evaluate(self.expr, facts)


@dataclass(frozen=True)
class NumberTerm(Term):
    """A term that is only a range of short numbers (`12-18`)."""

    low: int
    high: int

    @property
    def expr(self) -> Expr:
        return Numbers(self.low, self.high)


@dataclass(frozen=True)
class StateTerm(Term):
    """A term that is only a state word (`failed`)."""

    word: str
    states: frozenset[str]

    @property
    def expr(self) -> Expr:
        return States(self.word)


@dataclass(frozen=True)
class GlobTerm(Term):
    """A term that is only an id glob (`lr-sweep*`)."""

    pattern: str

    @property
    def expr(self) -> Expr:
        return Glob(self.pattern)


@dataclass(frozen=True)
class ExprTerm(Term):
    """Any other condition (`val_err < 0.2`, `demo* and loss > 1`)."""

    condition: Expr

    @property
    def expr(self) -> Expr:
        return self.condition


@dataclass(frozen=True)
class Selector:
    """A union of terms; `matches` is true when any term matches the run."""

    source: str
    terms: tuple[Term, ...]

    def matches(self, facts: Facts) -> bool:
        return any(t.matches(facts) for t in self.terms)

    def names(self) -> set[str]:
        """The metric and parameter names the conditions refer to (built-ins left out)."""
        out: set[str] = set()
        for t in self.terms:
            out |= names(t.expr)
        return out

    def ids(self) -> set[str]:
        """The plain ids (globs without a wildcard or bracket, `demo`) the selector names."""
        return {n.pattern for t in self.terms for n in walk(t.expr)
                if isinstance(n, Glob) and not any(c in n.pattern for c in "*?[]")}


def _split_terms(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each top-level comma-separated part."""
    n = len(text)
    next_close, next_open = [n] * (n + 1), [n] * (n + 1)  # first ']' / '[' at or after each index
    for k in range(n - 1, -1, -1):
        next_close[k] = k if text[k] == "]" else next_close[k + 1]
        next_open[k] = k if text[k] == "[" else next_open[k + 1]
    start, depth, i = 0, 0, 0
    while i < n:
        tokens, i = scan(text, i), n
        for tok in tokens:
            if tok.kind == "char" and tok.text == "[":
                close = next_close[tok.pos + 1]
                if close < next_open[tok.pos + 1]:  # a closed [...] (no '[' before its ']') is part
                    i = close + 1  # of a run key: read on after it, quotes inside it are no quotes
                    break
            elif tok.kind == "op" and tok.text == "(":
                depth += 1
            elif tok.kind == "op" and tok.text == ")":
                depth = max(0, depth - 1)
            elif tok.kind == "op" and tok.text == "," and depth == 0:
                yield start, tok.pos
                start = tok.pos + 1
    yield start, n


def _term(text: str, start: int, end: int) -> Term:
    expr = parse_at(text, start, end, label=f"selector term {text[start:end][:60]!r}", selector=True)
    if isinstance(expr, Numbers):
        return NumberTerm(expr.low, expr.high)
    if isinstance(expr, States):
        return StateTerm(expr.word, STATE_WORDS[expr.word])
    if isinstance(expr, Glob):
        return GlobTerm(expr.pattern)
    return ExprTerm(expr)


@lru_cache(maxsize=256)
def parse_selector(text: str) -> Selector:
    """Parse a run selector such as `crashed,144-149,170` or `lr-sweep* and val_err < 0.2`."""
    if len(text) > MAX_LENGTH:
        raise ExpressionError(text, f"the selector is {len(text)} characters long; at most {MAX_LENGTH} are allowed")
    terms: list[Term] = []
    for start, end in map(lambda span: trim(text, *span), _split_terms(text)):
        if start < end:
            terms.append(_term(text, start, end))
    if not terms:
        words = " ".join(sorted(STATE_WORDS))
        raise ExpressionError(text, "empty selector; give run numbers (12-18,21), state words "
                              f"({words}), id globs (lr-sweep*) or conditions (val_err < 0.2)")
    return Selector(text, tuple(terms))
