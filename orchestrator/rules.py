"""Autotermination rules: the `rules` column parsed into rules, and their verdicts (pure).

A rules cell is a `;`-separated list of rules; empty parts are ignored::

    rules := rule (";" rule)*
    rule  := ["warn:"] condition ["after" N]

The condition is the expression language of `orchestrator.expr` (comparisons on the latest
metric values, parameters, `runtime`, `step`, `state`, `cluster`; `and`/`or`/`not`; `isnan`,
`plateau`, `best`, …). `after N` makes the rule wait until the run has reported step N.
A rule without `warn:` is a stop rule: when it fires, the run is cancelled and ends
`terminated` with the verdict's message as its reason; a `warn:` rule only records an event.

    isnan(loss); val_err > 0.4 after 500; warn: plateau(val_loss, 10); runtime > 2h

`evaluate` gives one `Verdict` per rule for the run's current `Facts`; its message names the
rule and the values that fired it: `val_err > 0.4 after 500 (val_err=0.52 at step 612)`.
Deciding when to evaluate (every pass on new metrics) and recording events is the caller's job.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

from .errors import ExpressionError
from .expr import MAX_LENGTH, Expr, Facts, explain, parse_at
from .expr import names as expr_names

MAX_RULES_LENGTH = 10 * MAX_LENGTH

_WARN = re.compile(r"\s*warn\s*:\s*", re.IGNORECASE)
_AFTER = re.compile(r"(?<![A-Za-z0-9_.@/])after\s+(\d+)\s*$", re.IGNORECASE)
_AFTER_WORD = re.compile(r"(?<![A-Za-z0-9_.@/])after(?![A-Za-z0-9_])", re.IGNORECASE)


@dataclass(frozen=True)
class Rule:
    """One rule of a rules cell. `source` is the rule as written, without `warn:`."""

    source: str
    expr: Expr
    after: int | None = None
    warn: bool = False

    def __str__(self) -> str:
        return f"warn: {self.source}" if self.warn else self.source


@dataclass(frozen=True)
class Verdict:
    """A rule's outcome for one run. `message` is empty while `after N` holds the rule back."""

    rule: Rule
    fired: bool
    message: str = ""

    @property
    def stop(self) -> bool:
        """The run must be terminated."""
        return self.fired and not self.rule.warn

    @property
    def warning(self) -> bool:
        return self.fired and self.rule.warn


def _split(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each `;`-separated part; `;` inside quotes does not split."""
    start, quote, i = 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch in quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "\u2018\u2019":
            quote = "\u2018\u2019"
        elif ch in "\u201c\u201d":
            quote = "\u201c\u201d"
        elif ch == ";":
            yield start, i
            start = i + 1
    yield start, len(text)


@lru_cache(maxsize=1024)
def parse_rules(text: str) -> tuple[Rule, ...]:
    """Parse a rules cell; ExpressionError names the rule and the character that is wrong."""
    if len(text) > MAX_RULES_LENGTH:
        raise ExpressionError(text, f"the rules are {len(text)} characters long; at most {MAX_RULES_LENGTH} are allowed")
    rules: list[Rule] = []
    for start, end in _split(text):
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if start == end:
            continue
        label = f"rule {len(rules) + 1}"
        if end - start > MAX_LENGTH:
            raise ExpressionError(text, f"{label} is {end - start} characters long; at most {MAX_LENGTH} are allowed", start)
        warn = False
        m = _WARN.match(text, start, end)
        if m:
            warn, start = True, m.end()
        body_end, after = end, None
        m = _AFTER.search(text, start, end)
        if m:
            body_end, after = m.start(), int(m.group(1))
            if body_end == start or not text[start:body_end].strip():
                raise ExpressionError(text, f"{label}: 'after {m.group(1)}' needs a condition before it, "
                                      "e.g. 'val_err > 0.4 after 500'", start)
        else:
            word = _AFTER_WORD.search(text, start, end)
            if word and _outside_quotes(text, start, word.start()):
                raise ExpressionError(text, f"{label}: 'after' takes a whole step number and ends the rule, "
                                      "e.g. 'val_err > 0.4 after 500'", word.start())
        expr = parse_at(text, start, body_end, label=label)
        source = " ".join(text[start:end].split())
        rules.append(Rule(source=source, expr=expr, after=after, warn=warn))
    return tuple(rules)


def _outside_quotes(text: str, start: int, pos: int) -> bool:
    quote = ""
    for ch in text[start:pos]:
        if quote:
            if ch in quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "\u2018\u2019\u201c\u201d":
            quote = "\u2018\u2019" if ch in "\u2018\u2019" else "\u201c\u201d"
    return not quote


def verdict(rule: Rule, facts: Facts) -> Verdict:
    """Evaluate one rule for one run."""
    if rule.after is not None and (facts.step is None or facts.step < rule.after):
        return Verdict(rule, False, "")
    ex = explain(rule.expr, facts)
    values = ", ".join(f"{name}={value}" for name, value in ex.values)
    if values and ex.uses_metrics and facts.step is not None:
        values += f" at step {facts.step}"
    details = "; ".join(part for part in (values, *ex.notes) if part)
    message = f"{rule.source} ({details})" if details else rule.source
    return Verdict(rule, ex.result is True, message)


def evaluate(rules: Sequence[Rule], facts: Facts) -> list[Verdict]:
    """One verdict per rule, in the order of the rules cell."""
    return [verdict(rule, facts) for rule in rules]


def first_stop(verdicts: Iterable[Verdict]) -> Verdict | None:
    """The first fired stop rule (its message is the run's `terminated` reason), if any."""
    return next((v for v in verdicts if v.stop), None)


def names(rules: Iterable[Rule]) -> set[str]:
    """The metric and parameter names the rules refer to (for workbook warnings)."""
    out: set[str] = set()
    for rule in rules:
        out |= expr_names(rule.expr)
    return out
