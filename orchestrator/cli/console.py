"""How the commands print: a rich console that does not fold piped output, markup
escaping, the colour of each run state, and the events of a pass."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from .group import warn

if TYPE_CHECKING:
    from rich.console import Console

    from ..model import Plan
    from ..reconcile import PassReport

__all__ = ["STATE_STYLE", "awaiting_lines", "console", "escape", "print_report"]

STATE_STYLE = {
    "pending": "dim", "submitted": "cyan", "running": "blue", "completed": "green", "failed": "red",
    "terminated": "dark_orange", "cancelled": "magenta", "timeout": "red", "preempted": "yellow", "lost": "red",
}


def escape(text: str) -> str:
    """`text` with rich markup made literal."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def console(stderr: bool = False) -> Console:
    """A rich console; 160 columns wide when not a terminal (logs and pipes: do not fold at 80)."""
    from rich.console import Console

    con = Console(stderr=stderr, highlight=False)
    if not con.is_terminal and "COLUMNS" not in os.environ:
        con = Console(stderr=stderr, highlight=False, width=160)
    return con


def print_report(report: PassReport, quiet: bool) -> None:
    """A pass's warnings (always), then its events, one line each (unless `quiet`)."""
    for w in report.warnings:
        warn(w)
    if quiet:
        return
    con = console()
    for e in report.events:
        style = STATE_STYLE.get(e.kind, "")
        stamp = time.strftime("%H:%M:%S", time.localtime(e.time))
        kind = f"{e.kind:<10}"
        kind = f"[{style}]{kind}[/]" if style else kind
        con.print(f"{stamp} {kind} {escape(e.key)}  [dim]{escape(e.reason)}[/]", soft_wrap=True)


def awaiting_lines(plan: Plan, limit: int = 10) -> list[str]:
    """What waits for `nero apply`, a line per change (at most `limit`, then a count) and
    one line for the new runs over Settings confirm_over: `restart demo[lr=0.1] (lr: 0.1 →
    0.2; cancels the running attempt) — awaiting confirmation: nero apply 3f9a2c`."""
    from ..confirm import describe
    from ..model import ActionKind

    then = f" — awaiting confirmation: nero apply {plan.fingerprint}"
    new = [a for a in plan.awaiting if a.kind is ActionKind.SUBMIT]
    others = [a for a in plan.awaiting if a.kind is not ActionKind.SUBMIT]
    lines = [describe(a) + then for a in others[:limit]]
    if len(others) > limit:
        lines.append(f"… and {len(others) - limit} more changes" + then)
    if new:
        rows = sorted({a.spec.experiment for a in new if a.spec})
        lines.append(f"submit {len(new)} new runs of {', '.join(rows)} ({new[0].awaiting.partition(', ')[2]})" + then)
    return lines
