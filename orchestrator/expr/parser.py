"""Parsing nero's one safe expression language: rules, run selectors and status filters (pure).

Text from the workbook and the command line is read as the tokens of `orchestrator.tokens`
and parsed by a recursive-descent parser into the frozen dataclasses of
`orchestrator.expr.tree`, then evaluated by `orchestrator.expr.evaluation`. Nothing is ever
passed to `eval`, there is no attribute access, no indexing, no power operator, and only the
functions listed in `FUNCTIONS` can be called. Every input is bounded (`MAX_LENGTH`
characters, `MAX_DEPTH` levels of nesting) and checked before any recursion, so hostile text
is rejected with an `ExpressionError` in bounded time.

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
                | run                                     # in a run selector only, see below
    run        := "#"? N | "#"? N "-" "#"? N | state word | glob   # `orchestrator.expr.selectors`

- numbers: `0.4`, `1e-3`, `.5`; durations are numbers of seconds: `90s`, `30m`, `2h`, `1.5d`,
  `2h30m` (`units.parse_duration_literal`). Strings: `'running'` or `"running"` (curly quotes
  from a spreadsheet work too).
- `=` and `<>` are accepted for `==` and `!=`; `≤ ≥ ≠` as well. Keywords (`and or not true
  false nan inf`) and function names are case-insensitive; names are case-sensitive.
- names: a letter, then letters, digits and `_`; `.` and `@` followed by a letter or digit and
  `/` followed by a letter continue a name, so `val_err@10`, `train/loss` and `val.acc` are
  metric names. Write `a / b` with spaces to divide. Names never start with `_`.
- functions: `isnan(x)`, `isinf(x)`, `abs(x)`; over a metric's history: `best(m)`, `min(m)`,
  `max(m)` and `plateau(m, n[, delta])` (see `orchestrator.expr.evaluation`).
- run conditions (`parse_at(..., selector=True)` only; rules have none): a `run` is read
  where a condition begins (the start, after `and`, `or`, `not`, or a `(` there; never inside a
  function's parentheses or after an operator) and ends (before the end, `and`, `or` or
  `)`), so `demo* and loss > 1` holds a glob but `lr == 0.1`, `(a) == (b)` and `a*b=c` hold
  none. Which words are globs: `orchestrator.expr.selectors`.
"""

from __future__ import annotations

import keyword
import math
from collections.abc import Callable, Mapping
from functools import lru_cache

from ..errors import ExpressionError
from ..tokens import Token, tokenize
from ..units import parse_duration_literal
from .run_conditions import glob_hint, run_conditions
from .tree import (
    BUILTIN_NAMES,
    KEYWORDS,
    Arith,
    Bool,
    Call,
    Compare,
    Expr,
    Logic,
    Name,
    Neg,
    Not,
    Num,
    RunCondition,
    Str,
    max_depth,
    walk,
)

__all__ = [
    "FUNCTIONS",
    "MAX_DEPTH",
    "MAX_LENGTH",
    "MAX_PLATEAU",
    "names",
    "parse",
    "parse_at",
]

MAX_LENGTH = 2000
MAX_DEPTH = 50
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
_HISTORY_FUNCTIONS = frozenset({"best", "min", "max", "plateau"})
_CONDITION_FUNCTIONS = frozenset({"isnan", "isinf", "plateau"})

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
_PYTHON_ONLY = frozenset(k for k in keyword.kwlist if k not in ("and", "or", "not", "True", "False", "None"))


class _Source:
    """The text being parsed and the slice of it that is one expression; in a selector, the
    run conditions (`Numbers`, `States`, `Glob`) found in it, by position."""

    def __init__(self, text: str, start: int, end: int, label: str, selector: bool = False):
        self.text, self.start, self.end, self.label = text, start, end, label
        self.selector = selector
        self.atoms: dict[int, RunCondition] = {}

    def error(self, message: str, pos: int | None, hint: bool = True) -> ExpressionError:
        prefix = f"{self.label}: " if self.label else ""
        return ExpressionError(self.text, prefix + message + (self.glob_hint() if hint else ""), pos)

    def glob_hint(self) -> str:
        """In a selector, for a glob written where a value stands (`demo* > 1`), how to write it."""
        return glob_hint(self.text, self.start, self.end, self.atoms) if self.selector else ""


def _expression_tokens(src: _Source) -> list[Token]:
    """The tokens of one expression; anything the language does not allow is an error here."""
    text, end = src.text, src.end
    tokens: list[Token] = []
    raw = tokenize(text, src.start, end)
    if src.selector:
        raw, src.atoms = run_conditions(text, raw, end, lambda m, i: src.error(m, i, hint=False), _reads_as_comparison)
    for tok in raw:
        kind, i = tok.kind, tok.pos
        if kind == "run":
            pass
        elif kind == "quantity":
            seconds = parse_duration_literal(tok.text)
            if seconds is None:
                raise src.error(
                    f"{tok.text!r} is not a number or a duration; durations are a number and a unit "
                    "s, m, h or d (90s, 30m, 2h, 1.5d, 2h30m)", i)
            tok = Token("num", tok.text, i, seconds)
        elif kind == "name":
            word = tok.text
            if word[0] == "_":
                raise src.error(f"names may not begin with '_' ({word!r}): expressions have no access to Python internals", i)
            if word in _PYTHON_ONLY:
                if word in ("in", "is"):
                    raise src.error(f"'{word}' is not supported; compare with == and combine with 'or'", i)
                raise src.error(f"'{word}' is Python, not part of nero's expression language", i)
        elif kind == "unclosed":
            raise src.error("unclosed quote", i)
        elif kind in ("op", "char"):
            if tok.text == ".":
                raise src.error("attribute access ('.') is not allowed; '.' may only join the parts of a metric name like val.acc", i)
            two = text[i : min(i + 2, end)]
            if two in _FORBIDDEN:
                raise src.error(_FORBIDDEN[two], i)
            if kind == "char":
                raise src.error(_FORBIDDEN.get(tok.text, f"unexpected character {tok.text!r}"), i)
        tokens.append(tok)
    return tokens


# ---------------------------------------------------------------------------------------------
# The parser


def _reads_as_comparison(text: str, start: int, end: int) -> bool:
    """Whether `text[start:end]` is a condition of the rules language (`a*b=c`)."""
    try:
        parse_at(text, start, end)
    except ExpressionError:
        return False
    return True


def _kind(node: Expr) -> str:
    """"bool" for conditions, "value" for values, "either" for true/false."""
    if isinstance(node, Compare | Logic | Not | RunCondition):
        return "bool"
    if isinstance(node, Call):
        return "bool" if node.func in _CONDITION_FUNCTIONS else "value"
    if isinstance(node, Bool):
        return "either"
    return "value"


class _Parser:
    def __init__(self, src: _Source, tokens: list[Token]):
        self.src = src
        self.tokens = tokens
        self.i = 0
        self.depth = 0

    # helpers ---------------------------------------------------------------------------------

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def advance(self) -> Token:
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

    def close(self, opening: str) -> None:
        """Take the ')' that ends the level of nesting `opening` began (named in the message)."""
        if not self.is_op(")"):
            if self.tok.kind == "end":
                raise self.error(f"{opening} is never closed")
            raise self.unexpected()
        self.advance()
        self.depth -= 1

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
        return self.chain(("+", "-"), self.term)

    def term(self) -> Expr:
        return self.chain(("*", "/"), self.unary)

    def chain(self, ops: tuple[str, str], operand: Callable[[], Expr]) -> Expr:
        """`operand (op operand)*`, nested to the left: `a - b - c` is `(a - b) - c`."""
        start = self.tok.pos
        left = operand()
        length = 0
        while self.is_op(*ops):
            length = self.lengthen(length)
            self.need(left, start, ("value",), "number")
            op = str(self.advance().value)
            rstart = self.tok.pos
            right = self.need(operand(), rstart, ("value",), "number")
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
        if tok.kind == "run":
            self.advance()
            return self.src.atoms[tok.pos]
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
            self.close(f"the '(' at character {tok.pos + 1}")
            return node
        if tok.kind == "name":
            word = tok.text.lower()
            if word in KEYWORDS:
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

    def call(self, name: Token) -> Expr:
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
        self.close(f"the '(' of {name.text}(")
        self.check_call(func, name, args, starts, ends)
        return Call(func, tuple(args))

    def check_call(self, func: str, name: Token, args: list[Expr], starts: list[int], ends: list[int]) -> None:
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


def parse_at(text: str, start: int = 0, end: int | None = None, *, label: str = "",
             selector: bool = False) -> Expr:
    """Parse `text[start:end]` as a condition; errors point into the whole `text` and start
    with `label` (e.g. "rule 2"). `selector`: one term of a run selector, where run
    conditions (short numbers, state words, id globs) are conditions too."""
    end = len(text) if end is None else end
    if end - start > MAX_LENGTH:
        prefix = f"{label}: " if label else ""
        raise ExpressionError(text, f"{prefix}the expression is {end - start} characters long; "
                              f"at most {MAX_LENGTH} are allowed", start)
    src = _Source(text, start, end, label, selector)
    return _Parser(src, _expression_tokens(src)).parse()


@lru_cache(maxsize=1024)
def parse(text: str) -> Expr:
    """Parse a condition; ExpressionError says what is wrong and where."""
    return parse_at(text)


def names(expr: Expr | str) -> set[str]:
    """The metric and parameter names an expression refers to (built-in names such as
    `runtime` or `state` left out), so a sheet can warn about names no run will have."""
    node = parse(expr) if isinstance(expr, str) else expr
    return {n.name for n in walk(node) if isinstance(n, Name) and n.name not in BUILTIN_NAMES}
