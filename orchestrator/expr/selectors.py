"""Run selectors: which runs a command acts on, from `crashed,144-149,170` or
`lr-sweep*, val_err < 0.2` (pure).

A selector is a comma-separated union of terms::

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
`**` and `__` are rejected in globs too. Anything else is a condition of the expression
language (`orchestrator.expr.parser`).
"""

from __future__ import annotations

import fnmatch
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from ..errors import ExpressionError
from ..model import FINISHED_STATES, LIVE_STATES, RunState
from ..tokens import scan, trim
from .evaluation import Facts, evaluate
from .parser import MAX_LENGTH, names, parse_at
from .tree import Expr

__all__ = [
    "STATE_WORDS",
    "ExprTerm",
    "GlobTerm",
    "NumberTerm",
    "Selector",
    "StateTerm",
    "Term",
    "parse_selector",
]

STATE_WORDS: Mapping[str, frozenset[str]] = {
    **{s.value: frozenset({s.value}) for s in RunState},
    "live": frozenset(s.value for s in LIVE_STATES),
    "active": frozenset(s.value for s in LIVE_STATES),
    "finished": frozenset(s.value for s in FINISHED_STATES),
    "crashed": frozenset({RunState.FAILED.value, RunState.LOST.value}),
    "all": frozenset(s.value for s in RunState),
}

Value = float | str | bool | None  # None: the run has no such value (yet)



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
    for start, end in map(lambda span: trim(text, *span), _split_terms(text)):
        if start < end:
            terms.append(_term(text, start, end))
    if not terms:
        words = " ".join(sorted(STATE_WORDS))
        raise ExpressionError(text, "empty selector; give run numbers (12-18,21), state words "
                              f"({words}), id globs (lr-sweep*) or conditions (val_err < 0.2)")
    return Selector(text, tuple(terms))
