"""Which changes wait for a confirmation (`nero apply`), and the name of what waits.

Pure: the one home of the policy. A change that throws work away waits; the rest happens
on save, as the sheet says:

* a restart because the row changed, of a run that is running (its attempt is cancelled)
  or that ended with results (completed or terminated: a new attempt replaces them);
* a cancel because the row says state=stop, or because its row is gone (`--prune`);
* new runs, when more than Settings `confirm_over` of them are asked for at once.

Never gated: new runs up to that threshold, automatic retries, a changed row whose run had
failed, was cancelled or lost (running it again loses nothing), `nero abort` and
`nero restart` (confirmed when typed), and edits that restart nothing (rules, notify,
priority…). Settings `on_save = apply all` (or `nero reconcile --yes`) applies it all.

Each gated action carries a token: its kind, run key, the spec hash it would run and the
run's attempt. A confirmation is a set of tokens, so it names exactly the changes it saw:
an edit made after it makes a new token that waits again, and an edit undone before it
makes the action, and its wait, disappear (no attempt is made). A plan's fingerprint is a
short hash of its awaiting tokens; `nero apply ID` confirms only the plan with that ID.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from .model import Action, ActionKind, RunRecord, RunState

__all__ = ["APPLY_ALL", "ON_SAVE", "Gate", "describe", "fingerprint", "mark", "risk", "too_many"]

ON_SAVE = ("confirm", "apply all")  # Settings on_save: the default first
APPLY_ALL = "apply all"


@dataclass(frozen=True)
class Gate:
    """What a plan is made under: apply everything (Settings on_save = apply all, or
    `--yes`), the new-run threshold (Settings confirm_over) and the tokens confirmed."""

    apply_all: bool = False
    over: int = 200
    confirmed: frozenset[str] = frozenset()


def risk(kind: ActionKind, rec: RunRecord | None) -> str:
    """Why an action the sheet caused (an edit, state=stop, a row gone with --prune) throws
    work away; '' when it does not. Manual commands and retries never come here."""
    if rec is None:
        return ""
    live = rec.state.live or rec.intent
    if kind is ActionKind.CANCEL:
        return "cancels the running run" if live else ""
    if kind is ActionKind.RESTART:
        if live:
            return "cancels the running attempt"
        if rec.state in (RunState.COMPLETED, RunState.TERMINATED):
            return f"replaces its {rec.state.value} attempt"
    return ""


def too_many(new_runs: int, gate: Gate) -> str:
    """Why each of `new_runs` new runs asked for at once waits ('' when they do not)."""
    if new_runs <= gate.over:
        return ""
    return f"one of {new_runs} new runs, more than Settings confirm_over ({gate.over})"


def mark(action: Action, why: str, attempt: int, gate: Gate) -> Action:
    """`action` with its token when `why` says it throws work away, and waiting for a
    confirmation unless the gate lets it through."""
    if not why:
        return action
    spec_hash = action.spec.spec_hash if action.spec else ""
    token = f"{action.kind} {action.key} {spec_hash} {attempt}"  # a StrEnum formats as its value
    waits = not gate.apply_all and token not in gate.confirmed
    return action.but(token=token, awaiting=why if waits else "")


def fingerprint(tokens: Iterable[str]) -> str:
    """The short name of a set of awaiting tokens ('' for none): what `nero apply` takes."""
    found = sorted(set(tokens))
    if not found:
        return ""
    return hashlib.sha256("\n".join(found).encode()).hexdigest()[:6]


def describe(action: Action) -> str:
    """One line for an awaiting action: `restart demo[lr=0.1] (lr: 0.1 → 0.2; cancels the
    running attempt)`."""
    return f"{action.kind.value} {action.key} ({action.reason}; {action.awaiting or 'confirmed'})"
