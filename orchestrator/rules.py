"""Autotermination rules: the `rules` column parsed into rules, and their verdicts (pure).

A rules cell is a `;`-separated list of rules (a `;` in quotes does not split; the cell is
read as the tokens of `orchestrator.tokens`); empty parts are ignored::

    rules := rule (";" rule)*
    rule  := ["warn:"] (condition | "prune" pruner) ["after" N]

The condition is the expression language of `orchestrator.expr` (comparisons on the latest
metric values, parameters, `runtime`, `step`, `state`, `cluster`; `and`/`or`/`not`; `isnan`,
`plateau`, `best`, …). `after N` makes the rule wait until the run has reported step N.
A rule without `warn:` is a stop rule: when it fires, the run is cancelled and ends
`terminated` with the verdict's message as its reason; a `warn:` rule only records an event.

    isnan(loss); val_err > 0.4 after 500; warn: plateau(val_loss, 10); runtime > 2h

A `prune` rule (`prune median(val_loss, warmup=5)`, `prune asha(val_loss, eta=3)`,
`prune hyperband(val_loss, max_step=81)`: `orchestrator.prune`) compares the run with the other
runs of its row at the same step; `prune_verdicts` decides those for every live run at once
(from the row's metric histories) and hands them to `evaluate`.

`evaluate` gives one `Verdict` per rule for the run's current `Facts`; its message names the
rule and the values that fired it: `val_err > 0.4 after 500 (val_err=0.52 at step 612)`.
Deciding when to evaluate (every pass on new metrics) and recording events is the caller's job.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from .errors import ExpressionError, NeroError
from .expr import MAX_LENGTH, Expr, Facts, explain, parse_at
from .expr import names as expr_names
from .metrics import default_goal, unknown_metric
from .model import RunRecord, RunSpec, Series
from .prune import Pruner, decide, parse_pruner
from .tokens import Token, tokenize, trim

__all__ = [
    "MAX_RULES_LENGTH",
    "Rule",
    "Verdict",
    "evaluate",
    "first_stop",
    "name_warnings",
    "names",
    "parse_rules",
    "prune_verdicts",
    "verdict",
]

MAX_RULES_LENGTH = 10 * MAX_LENGTH

_AFTER_WORD = re.compile(r"after(?![A-Za-z0-9_])", re.IGNORECASE)  # at the start of a name token
_STEP = re.compile(r"\d+")


@dataclass(frozen=True)
class Rule:
    """One rule of a rules cell. `source` is the rule as written, without `warn:`; a `prune`
    rule has its `pruner` and no `expr`."""

    source: str
    expr: Expr | None
    after: int | None = None
    warn: bool = False
    pruner: Pruner | None = None

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


@lru_cache(maxsize=1024)
def parse_rules(text: str) -> tuple[Rule, ...]:
    """Parse a rules cell; ExpressionError names the rule and the character that is wrong."""
    if len(text) > MAX_RULES_LENGTH:
        raise ExpressionError(text, f"the rules are {len(text)} characters long; at most {MAX_RULES_LENGTH} are allowed")
    rules: list[Rule] = []
    part: list[Token] = []
    for tok in tokenize(text):
        if tok.kind != "end" and not (tok.kind == "char" and tok.text == ";"):
            part.append(tok)
        elif part:
            rules.append(_rule(text, part, f"rule {len(rules) + 1}"))
            part = []
    return tuple(rules)


def _rule(text: str, tokens: list[Token], label: str) -> Rule:
    """One rule from its tokens (at least one)."""
    start, end = trim(text, tokens[0].pos, tokens[-1].stop)
    if end - start > MAX_LENGTH:
        raise ExpressionError(text, f"{label} is {end - start} characters long; at most {MAX_LENGTH} are allowed", start)
    warn = len(tokens) > 1 and tokens[0].text.lower() == "warn" and tokens[0].kind == "name" and tokens[1].text == ":"
    if warn:
        tokens = tokens[2:]
        start = tokens[0].pos if tokens else end
    body_end, after = end, None
    if (len(tokens) >= 2 and tokens[-2].text.lower() == "after" and _is_after(text, tokens[-2])
            and tokens[-1].kind == "num" and _STEP.fullmatch(tokens[-1].text)):
        body_end, after = tokens[-2].pos, int(tokens[-1].text)
        if len(tokens) == 2:
            raise ExpressionError(text, f"{label}: 'after {tokens[-1].text}' needs a condition before it, "
                                  "e.g. 'val_err > 0.4 after 500'", start)
    else:
        word = next((t for t in tokens if _is_after(text, t)), None)
        if word is not None:
            raise ExpressionError(text, f"{label}: 'after' takes a whole step number and ends the rule, "
                                  "e.g. 'val_err > 0.4 after 500'", word.pos)
    source = " ".join(text[start:end].split())
    if len(tokens) >= 2 and tokens[0].kind == "name" and tokens[0].text.lower() == "prune" and tokens[1].kind == "name":
        return Rule(source=source, expr=None, after=after, warn=warn, pruner=parse_pruner(text, start, body_end, label))
    expr = parse_at(text, start, body_end, label=label)
    return Rule(source=source, expr=expr, after=after, warn=warn)


def _is_after(text: str, tok: Token) -> bool:
    """Whether the token is the word `after` (a name starting with it, as in `after.x`, counts
    unless a `.`, `@` or `/` comes right before it)."""
    return (tok.kind == "name" and _AFTER_WORD.match(tok.text) is not None
            and (tok.pos == 0 or text[tok.pos - 1] not in ".@/"))


def verdict(rule: Rule, facts: Facts) -> Verdict:
    """Evaluate one rule for one run (a `prune` rule never fires here: `prune_verdicts`)."""
    if rule.expr is None or (rule.after is not None and (facts.step is None or facts.step < rule.after)):
        return Verdict(rule, False, "")
    ex = explain(rule.expr, facts)
    values = ", ".join(f"{name}={value}" for name, value in ex.values)
    if values and ex.uses_metrics and facts.step is not None:
        values += f" at step {facts.step}"
    details = "; ".join(part for part in (values, *ex.notes) if part)
    message = f"{rule.source} ({details})" if details else rule.source
    return Verdict(rule, ex.result is True, message)


def evaluate(rules: Sequence[Rule], facts: Facts, decided: Mapping[Rule, Verdict] | None = None) -> list[Verdict]:
    """One verdict per rule, in the order of the rules cell; `decided`: the run's verdicts of
    the `prune` rules that fired (`prune_verdicts`)."""
    decided = decided or {}
    return [decided.get(rule) or verdict(rule, facts) for rule in rules]


def prune_verdicts(specs: Iterable[RunSpec], records: Mapping[str, RunRecord],
                   histories: Callable[[], Mapping[str, Mapping[str, Series]]],
                   goals: Mapping[str, str]) -> dict[str, dict[Rule, Verdict]]:
    """The fired `prune` rules of every live run (run key -> rule -> verdict): each row's
    rules judge its live runs (not waiting for a submission or a stop, past `after N`)
    against every run of the row in `records`, on the metric's current-attempt history
    (`histories`, called once, only if some live run has a prune rule); goals come from
    `metrics.default_goal` over the Metrics sheet's `goals`."""
    rows: dict[str, str] = {}  # experiment -> its rules cell, where it holds a prune rule
    for spec in specs:
        if "prune" in spec.rules.lower() and spec.experiment not in rows:
            try:
                if any(r.pruner for r in parse_rules(spec.rules)):
                    rows[spec.experiment] = spec.rules
            except NeroError:  # the sheet reports it
                continue
    runs: dict[str, list[RunRecord]] = {}
    for rec in records.values():
        if rec.experiment in rows:
            runs.setdefault(rec.experiment, []).append(rec)
    out: dict[str, dict[Rule, Verdict]] = {}
    read: Mapping[str, Mapping[str, Series]] | None = None
    for experiment, siblings in runs.items():
        live = [r for r in siblings if r.state.live and not r.intent and not r.stop_requested]
        if not live:
            continue
        read = histories() if read is None else read
        for rule in parse_rules(rows[experiment]):
            if rule.pruner is None:
                continue
            metric = rule.pruner.metric
            candidates = [r.key for r in live if rule.after is None or (r.step is not None and r.step >= rule.after)]
            curves = {r.key: read[r.key][metric] for r in siblings if metric in read.get(r.key, {})}
            for key, why in decide(rule.pruner, default_goal(metric, goals), curves, candidates).items():
                out.setdefault(key, {})[rule] = Verdict(rule, True, f"{rule.source} ({why})")
    return out


def first_stop(verdicts: Iterable[Verdict]) -> Verdict | None:
    """The first fired stop rule (its message is the run's `terminated` reason), if any."""
    return next((v for v in verdicts if v.stop), None)


def names(rules: Iterable[Rule]) -> set[str]:
    """The metric and parameter names the rules refer to (for workbook warnings)."""
    out: set[str] = set()
    for rule in rules:
        out |= {rule.pruner.metric} if rule.pruner else expr_names(rule.expr)  # type: ignore[arg-type]
    return out


def name_warnings(specs: Iterable[RunSpec], primary_metric: str, known: Iterable[str]) -> list[str]:
    """Warnings for the names the rules cells and Settings `primary_metric` give that are no
    known metric (`known`: the Metrics rows and the metrics runs have produced) and, for
    rules, no parameter of the run: not errors, since a metric may appear only once a run
    prints it, but a misspelt name would never match (`nero plan` and the loop show them)."""
    known = set(known)
    out: list[str] = []
    seen: set[tuple[str, str]] = set()
    for spec in specs:
        if not spec.rules or (spec.experiment, spec.rules) in seen:
            continue
        seen.add((spec.experiment, spec.rules))
        try:
            asked = names(parse_rules(spec.rules))
        except NeroError:  # the sheet reports it
            continue
        params = {str(p) for p in dict(spec.params)}
        for name in sorted(asked - known - params):
            out.append(f"experiment {spec.experiment!r}, rules: {unknown_metric(name, known, params)}; "
                       "the rule stays unknown (never fires) until a run prints it")
    if primary_metric and primary_metric not in known:
        out.append(f"Settings primary_metric: {unknown_metric(primary_metric, known)}; "
                   "results are ranked by it once a run prints it")
    return out
