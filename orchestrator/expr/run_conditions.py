"""The run conditions of a selector: where its short numbers (`12-18`), state words (`failed`)
and id globs (`lr-sweep*`) stand among an expression's tokens, and which words they are (pure).

`orchestrator.expr.parser` calls `run_conditions` on the tokens of one selector term; each run
condition found becomes one token of kind `run`, which the parser reads as a primary. The
grammar and the rules for globs are written in `orchestrator.expr.selectors`.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable, Mapping

from ..errors import ExpressionError
from ..tokens import Token
from .tree import KEYWORDS, STATE_WORDS, Glob, Numbers, RunCondition, States

__all__ = ["glob_hint", "run_conditions"]

_WORD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-*?=+@/:%[]")
_WORD = re.compile(r"[A-Za-z0-9_.\-*?=+@/:%\[\]]+")
_RANGE = re.compile(r"#?(\d+)(?:\s*-\s*#?(\d+))?")
_EXPERIMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_CONNECTIVES = frozenset({"and", "or", "not"})

Error = Callable[[str, int], ExpressionError]  # (message, position) -> the error to raise
Comparison = Callable[[str, int, int], bool]  # whether text[start:end] reads as a comparison


def _word_end(text: str, i: int, end: int) -> int:
    """Where the word of glob characters from `i` ends; a ',' is part of it inside a `[...]`
    that closes (`demo[lr=0.1,layers=2]`)."""
    depth = 0
    while i < end:
        c = text[i]
        if c == ",":
            close = text.find("]", i, end)
            if not depth or close < 0 or any(ch != "," and ch not in _WORD_CHARS or ch == "[" for ch in text[i:close]):
                break
        elif c not in _WORD_CHARS:
            break
        elif c == "[":
            depth += 1
        elif c == "]":
            depth = max(0, depth - 1)
        i += 1
    return i


def _ends_condition(tokens: list[Token], k: int) -> bool:
    """Whether the tokens from k, after any ')', end a condition: the end, 'and' or 'or'."""
    while tokens[k].kind == "op" and tokens[k].text == ")":
        k += 1
    tok = tokens[k]
    return tok.kind == "end" or (tok.kind == "name" and tok.text.lower() in ("and", "or"))


def _run_condition(text: str, tokens: list[Token], starts: list[int], k: int, end: int, error: Error,
                   comparison: Comparison) -> tuple[RunCondition, int] | None:
    """The run condition written from token k, which begins a condition, and where it ends
    (`starts`: where each token begins)."""
    pos = tokens[k].pos
    after = lambda stop: bisect_left(starts, stop, k)  # noqa: E731  the first token from `stop`
    m = _RANGE.match(text, pos, end)
    if m and (m.end() == end or text[m.end()] not in _WORD_CHARS) and _ends_condition(tokens, after(m.end())):
        low = int(m.group(1))
        high = int(m.group(2)) if m.group(2) else low
        if high < low:
            raise error(f"the range {m.group(0)!r} runs backwards; write {high}-{low}", pos)
        return Numbers(low, high), m.end()
    stop = _word_end(text, pos, end)
    word = text[pos:stop]
    if not word or "==" in word or not _ends_condition(tokens, after(stop)):
        return None
    if word.lower() in STATE_WORDS:
        return States(word.lower()), stop
    if word.lower() in KEYWORDS or not (any(c in word for c in "*?[]") or _EXPERIMENT_ID.fullmatch(word)):
        return None
    if "=" in word and comparison(text, pos, stop):  # a comparison written without spaces (a*b=c)
        return None
    if "**" in word:
        raise error(f"{word!r}: '**' is not supported (there is no power operator, and in a glob one '*' "
                    "matches any text)", pos + word.index("**"))
    if "__" in word:
        raise error(f"{word!r} looks like Python attribute access; selectors match run ids, write '?' for each "
                    "'_' if an id really contains '__'", pos + word.index("__"))
    return Glob(word), stop


def run_conditions(text: str, tokens: list[Token], end: int, error: Error,
                   comparison: Comparison) -> tuple[list[Token], dict[int, RunCondition]]:
    """The tokens with each run condition of a selector term made one `run` token, and the
    run conditions by position. A run condition stands where a condition begins (at the
    start, after 'and', 'or', 'not' or a '(' there, never inside a function's parentheses or
    after an operator) and ends one (before the end, 'and', 'or' or ')'): `demo*` in
    `demo* and loss > 1`, not `lr` in `lr == 0.1`."""
    out: list[Token] = []
    found: dict[int, RunCondition] = {}
    starts = [t.pos for t in tokens]
    groups: list[bool] = []  # per open '(': whether conditions begin inside it
    begins, k = True, 0
    while k < len(tokens):
        tok = tokens[k]
        if begins and all(groups) and tok.kind != "end":
            run = _run_condition(text, tokens, starts, k, end, error, comparison)
            if run is not None:
                node, stop = run
                found[tok.pos] = node
                out.append(Token("run", text[tok.pos:stop], tok.pos, text[tok.pos:stop]))
                while tokens[k].pos < stop and tokens[k].kind != "end":
                    k += 1
                begins = False
                continue
        if tok.kind == "op" and tok.text == "(":
            prev = out[-1] if out else None
            call = prev is not None and prev.kind == "name" and prev.text.lower() not in _CONNECTIVES
            groups.append(begins and not call)
            begins = groups[-1]
        elif tok.kind == "op" and tok.text == ")":
            if groups:
                groups.pop()
            begins = False
        else:
            begins = tok.kind == "name" and tok.text.lower() in _CONNECTIVES
        out.append(tok)
        k += 1
    return out, found


def glob_hint(text: str, start: int, end: int, found: Mapping[int, RunCondition]) -> str:
    """For an error in a selector term with a glob written where a value stands (`demo* > 1`),
    how to write it; "" when there is none."""
    for m in _WORD.finditer(text, start, end):
        word = m.group(0)
        if m.start() not in found and "==" not in word and (
                any(c in word for c in "?[]") or word[0] == "*" or word[-1] == "*"):
            return (f"; {word!r} is an id glob only where a condition stands: on its own or with and, or, "
                    f"not (e.g. '{word} and loss > 1')")
    return ""
