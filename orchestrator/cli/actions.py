"""The commands that act on runs a selector picks: `nero abort`, `restart`, `hold` and
`release`. Each shows the runs, asks (unless --yes), records the override, and applies it
with a pass right away unless a watching reconcile will. `nero apply` confirms the changes
a plan shows awaiting confirmation, and applies them the same way."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from ..errors import NeroError
from ..operations import PlanChanged, confirm_plan, override
from .console import STATE_STYLE, awaiting_lines, console, escape, print_report
from .group import WORKBOOK_OPTION, fail, main, open_project, warn, workbook_and_selector

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..project import Candidate
    from ..reconcile import PassReport

__all__ = ["abort", "apply", "hold", "release", "restart"]


def _confirm(verb: str, found: Sequence[Candidate], yes: bool) -> bool:
    from rich.table import Table

    t = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("#", "run", "state", "cluster"):
        t.add_column(col, no_wrap=col != "run")
    for c in found:
        r = c.record
        style = STATE_STYLE.get(c.facts.state, "")
        t.add_row(str(r.number) if r else "-", escape(c.key), f"[{style}]{c.facts.state}[/]", escape(c.facts.cluster))
    console().print(t)
    if yes:
        return True
    if not sys.stdin.isatty():
        raise click.ClickException(f"{len(found)} runs match; add --yes to {verb} them without asking")
    return click.confirm(f"{verb.capitalize()} these {len(found)} runs?", default=False)


def _applied(applied: str, report: PassReport | None, error: str) -> None:
    """Say how a recorded change was applied (`operations.Manual.applied`)."""
    if applied == "failed":
        warn(f"recorded, but the pass failed: {error}; the next `nero reconcile` applies it")
    elif applied == "watcher":
        click.echo("A running `nero reconcile --watch` applies this in its next pass.")
    elif report is not None:
        print_report(report, quiet=False)


def _override_command(verb: str, doc: str) -> click.Command:
    @main.command(name=verb, help=doc)
    @click.argument("args", nargs=-1, required=True, metavar="[WORKBOOK] SELECTOR")
    @WORKBOOK_OPTION
    @click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
    @click.option("--resume", is_flag=True, hidden=verb != "restart",
                  help="Start the new attempt with NERO_RESUME=1 and NERO_PREV_RUN_DIR set.")
    def command(args: tuple[str, ...], workbook: str | None, yes: bool, resume: bool) -> None:
        given, selector = workbook_and_selector(args, selector_required=True)
        assert selector is not None
        with open_project(workbook or given, load=False) as project:
            try:
                done = override(project, verb, selector, lambda found: _confirm(verb, found, yes),
                                resume=resume, warn=warn)
            except NeroError as e:
                fail(e)
            if not done.matched:
                click.echo(f"No run matches; nothing to {verb}. `nero status` lists the runs.")
                return
            if not done.done:
                return  # not confirmed
            for key in done.skipped:
                warn(f"{key} is no longer in the workbook; skipped")
            click.echo(done.message())
            _applied(done.applied, done.report, done.error)

    return command


abort = _override_command("abort", """Cancel the runs matching SELECTOR (and keep the matching
    runs that have not started from starting), until their rows change.

    \b
    SELECTOR is a comma-separated union of: run numbers and ranges from `nero status`
    (`12-18,21`), state words (`failed`, `running`, `live`, `crashed`, `all`), id globs
    (`lr-sweep*`, `demo[lr=0.1*`), and conditions (`runtime > 2h and val_err > 0.4`),
    combined with and, or, not: `lr-sweep* and val_err > 0.4`, `not demo*`.
    Example: nero abort 'runtime > 1m and loss > 0.5'""")
restart = _override_command("restart", """Start a new attempt of the runs matching SELECTOR
    (cancelling those still running). --resume sets NERO_RESUME=1 and NERO_PREV_RUN_DIR.

    \b
    Example: nero restart failed        nero restart 'crashed,144-149,170' --resume""")
hold = _override_command("hold", """Keep the runs matching SELECTOR from starting (running ones
    go on) until `nero release` or until their rows change.""")
release = _override_command("release", """Undo `nero hold` / `nero abort` for the runs matching SELECTOR.""")


@main.command()
@click.argument("args", nargs=-1, metavar="[WORKBOOK] [ID]")
@WORKBOOK_OPTION
@click.option("--prune", is_flag=True, help="The plan of `nero plan --prune`: confirm cancelling runs whose rows were removed.")
def apply(args: tuple[str, ...], workbook: str | None, prune: bool) -> None:
    """Confirm the changes awaiting confirmation, and apply them.

    \b
    `nero plan` and `nero reconcile --watch` list what waits (restarting a running or
    finished run, cancelling, more new runs at once than Settings confirm_over) with the
    plan's ID: `nero apply 3f9a2c` confirms exactly that plan, and refuses, saying what
    changed, if the workbook or the runs have changed it since. Without an ID it lists
    what awaits now and confirms that. A running `nero reconcile --watch` applies it in
    its next pass; else a pass runs now. A change undone before it is confirmed simply
    leaves the plan: nothing is restarted or cancelled for it.
    """
    given, wanted = workbook_and_selector(args)
    with open_project(workbook or given) as project:
        try:
            done = confirm_plan(project, wanted or "", prune)
        except PlanChanged as e:
            raise click.ClickException(str(e)) from None
        except NeroError as e:
            fail(e)
    if not done.confirmed:
        click.echo("Nothing awaits confirmation; `nero plan` shows what a pass would do.")
        return
    for line in awaiting_lines(done.plan, limit=len(done.plan.awaiting)):
        click.echo(line.partition(" — awaiting confirmation")[0])
    n = len(done.confirmed)
    click.echo(f"Confirmed {n} change{'s' if n != 1 else ''} (plan {done.plan.fingerprint}).")
    _applied(done.applied, done.report, done.error)
