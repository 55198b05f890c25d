"""The one tokenizer under every small grammar of nero (pure).

The expression language (`orchestrator.expr`), variation cells (`spec.parse_cell`), rules cells
(`rules.parse_rules`), run selectors, durations and sizes (`units`) and digest schedules
(`digest_schedule`) all read their text as the tokens made here, so a number, a name, a quoted
string or an operator is the same thing in every one of them. `tokenize` never fails: each
grammar decides which tokens it accepts (the expression language is the strictest).

Tokens, left to right; whitespace separates them and is no token:

- `num`: a number: `12`, `0.5`, `5.`, `.5`, `1e-3` (value: the float).
- `quantity`: a number with letters, digits, `_` or `.` right after it: `90s`, `2h30m`, `16G`,
  `1.5.2` (value: ""; the grammar reads the unit).
- `name`: an ASCII letter, then letters, digits and `_`; `.` and `@` followed by a letter or
  digit and `/` followed by a letter continue it: `val_err@10`, `train/loss`, `val.acc`. A word
  starting with `_` is a name too (the expression language rejects it).
- `str`: text in quotes, `'…'` or `"…"`, and by default curly quotes (value: the text inside).
- `unclosed`: a quote that is never closed, with the rest of the text.
- `op`: one of `OPERATORS`, two-character ones first (value: the operator, `=` and `<>`
  becoming `==` and `!=`, `≤ ≥ ≠` becoming `<= >= !=`).
- `char`: any other single character: `[ ] : ; # ! & | …`.
- `end`: where the text ends (text "").

`pos` is the token's index in the whole text, so messages can point at it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from typing import NamedTuple

__all__ = [
    "OPERATORS",
    "PLAIN_QUOTES",
    "QUOTES",
    "Token",
    "adjacent",
    "number",
    "scan",
    "spans",
    "tokenize",
    "trim",
]

QUOTES: Mapping[str, str] = {"'": "'", '"': '"', "\u2018": "\u2018\u2019", "\u2019": "\u2018\u2019",
                             "\u201c": "\u201c\u201d", "\u201d": "\u201c\u201d"}  # opening -> closing
PLAIN_QUOTES: Mapping[str, str] = {"'": "'", '"': '"'}
OPERATORS: Mapping[str, str] = {
    "<=": "<=", ">=": ">=", "==": "==", "!=": "!=", "<>": "!=",
    "<": "<", ">": ">", "=": "==", "≤": "<=", "≥": ">=", "≠": "!=",
    "+": "+", "-": "-", "*": "*", "/": "/", "(": "(", ")": ")", ",": ",",
}

_NUMBER = r"(?=[0-9]|\.[0-9])(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_NAME = r"[A-Za-z][A-Za-z0-9_]*(?:(?:[.@][A-Za-z0-9]|/[A-Za-z])[A-Za-z0-9_]*)*|_[A-Za-z0-9_]*"
_SIGNED_NUMBER = re.compile(rf"\s*[+-]?{_NUMBER}\s*")
_OPERATOR = "|".join(re.escape(op) for op in sorted(OPERATORS, key=len, reverse=True))


@lru_cache(maxsize=16)
def _lexer(quotes: tuple[tuple[str, str], ...]) -> tuple[re.Pattern[str], dict[str, re.Pattern[str]]]:
    """The pattern of one token (after any whitespace) and, per opening quote, the pattern of
    the text inside, for one set of quotes."""
    quote = f"|(?P<quote>[{re.escape(''.join(q for q, _ in quotes))}])" if quotes else ""
    token = re.compile(rf"\s*(?:(?P<num>{_NUMBER})(?P<tail>[A-Za-z0-9_.]*)|(?P<name>{_NAME}){quote}"
                       rf"|(?P<op>{_OPERATOR})|(?P<char>\S))")
    return token, {q: re.compile(f"[^{re.escape(closers)}]*") for q, closers in quotes}


class Token(NamedTuple):
    """One token (a named tuple: made by the thousand, so cheap to make)."""

    kind: str  # num | quantity | name | str | unclosed | op | char | end
    text: str  # as written
    pos: int  # in the whole text
    value: float | str = ""  # num: the number; str: the text inside; name: the name; op: the operator

    @property
    def stop(self) -> int:
        """Where the token ends in the whole text."""
        return self.pos + len(self.text)


def tokenize(text: str, start: int = 0, end: int | None = None, *,
             quotes: Mapping[str, str] = QUOTES) -> list[Token]:
    """The tokens of `text[start:end]`, ending with an `end` token; never raises. `quotes`
    maps each opening quote to the characters that close it (empty: quotes are `char`s)."""
    return list(scan(text, start, end, quotes=quotes))


def scan(text: str, start: int = 0, end: int | None = None, *,
         quotes: Mapping[str, str] = QUOTES) -> Iterator[Token]:
    """`tokenize`, one token at a time (for grammars that stop early)."""
    end = len(text) if end is None else end
    token, inside = _lexer(tuple(quotes.items()))
    i = start
    while (m := token.match(text, i, end)) is not None:
        kind = m.lastgroup
        if kind == "tail":  # a number and what is written against it
            pos, i = m.start("num"), m.end()
            if m.end("num") < i:
                yield Token("quantity", text[pos:i], pos)
            else:
                yield Token("num", text[pos:i], pos, float(text[pos:i]))
        elif kind == "quote":
            pos = m.start(kind)
            i = inside[text[pos]].match(text, pos + 1, end).end()  # type: ignore[union-attr]
            if i >= end:
                yield Token("unclosed", text[pos:end], pos, text[pos + 1 : end])
                i = end
            else:
                i += 1
                yield Token("str", text[pos:i], pos, text[pos + 1 : i - 1])
        else:
            pos, i = m.start(kind), m.end()
            word = text[pos:i]
            yield Token(kind, word, pos, OPERATORS[word] if kind == "op" else word)  # type: ignore[arg-type]
    yield Token("end", "", end)


def adjacent(tokens: Sequence[Token]) -> bool:
    """Whether the tokens follow each other with no space between them."""
    return all(a.stop == b.pos for a, b in zip(tokens, tokens[1:], strict=False))


def number(text: str) -> float | None:
    """The number `text` writes, a sign written against it and spaces around it allowed (`90`,
    `-4`, ` +1.5e3 `); None when it writes anything else."""
    return float(text) if _SIGNED_NUMBER.fullmatch(text) else None


def spans(tokens: Iterable[Token], separator: str, start: int, end: int) -> list[tuple[int, int]]:
    """(start, end) of each part of `text[start:end]`, given its tokens, between `separator`
    operators or characters (never inside quotes)."""
    out: list[tuple[int, int]] = []
    for tok in tokens:
        if tok.text == separator and tok.kind in ("op", "char"):
            out.append((start, tok.pos))
            start = tok.pos + 1
    out.append((start, end))
    return out


def trim(text: str, start: int, end: int) -> tuple[int, int]:
    """`(start, end)` moved inwards past whitespace."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end
