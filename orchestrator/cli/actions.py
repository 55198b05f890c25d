"""The commands that act on runs a selector picks: `nero abort`, `restart`, `hold` and
`release`. Each shows the runs, asks (unless --yes), records the override, and applies it
with a pass right away unless a watching reconcile will. `nero apply` confirms the changes
a plan shows awaiting confirmation, and applies them the same way."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from ..errors import NeroError
from ..project import Candidate, Project
from .console import STATE_STYLE, awaiting_lines, console, escape, print_report
from .group import WORKBOOK_OPTION, main, open_project, select, warn, workbook_and_selector

if TYPE_CHECKING:
    from ..model import Plan

__all__ = ["abort", "apply", "hold", "release", "restart"]


def _confirm(verb: str, found: list[Candidate], yes: bool) -> bool:
    from rich.table import Table

    if not found:
        click.echo(f"No run matches; nothing to {verb}. `nero status` lists the runs.")
        return False
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


def _apply_now(project: Project, prune: bool = False) -> None:
    """Run a pass right away unless a watching reconcile holds the lock (it applies it then)."""
    try:
        report = project.apply_now(prune=prune)
    except NeroError as e:
        warn(f"recorded, but the pass failed: {e}; the next `nero reconcile` applies it")
        return
    if report is None:
        click.echo("A running `nero reconcile --watch` applies this in its next pass.")
    else:
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
            found = select(project, selector, need_workbook=verb in ("restart", "hold"))
            if verb == "release":
                held = project.overrides()
                found = [c for c in found if c.key in held]
            if not _confirm(verb, found, yes):
                return
            reason = f"`nero {verb} {selector}`"
            if verb == "release":
                n = project.release(found, reason)
                click.echo(f"Released {n} run{'s' if n != 1 else ''}.")
            else:
                if verb == "restart":
                    done = project.restart(found, reason, resume=resume)
                else:
                    done = project.abort(found, reason) if verb == "abort" else project.hold(found, reason)
                for key in done.skipped:
                    warn(f"{key} is no longer in the workbook; skipped")
                n = len(done.keys)
                click.echo(f"Recorded {verb} for {n} run{'s' if n != 1 else ''}; "
                           "`nero plan` shows it until the row changes.")
            _apply_now(project)

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
        plan = project.plan(prune=prune)
        if wanted and wanted != plan.fingerprint:
            raise click.ClickException(_changed_since(project, wanted, plan))
        if not plan.awaiting:
            click.echo("Nothing awaits confirmation; `nero plan` shows what a pass would do.")
            return
        for line in awaiting_lines(plan, limit=len(plan.awaiting)):
            click.echo(line.partition(" — awaiting confirmation")[0])
        n = len(project.confirm(plan))
        click.echo(f"Confirmed {n} change{'s' if n != 1 else ''} (plan {plan.fingerprint}).")
        _apply_now(project, prune)


def _changed_since(project: Project, wanted: str, plan: Plan) -> str:
    """Why `nero apply ID` refuses: the plan shown as ID is not the plan now, and how."""
    from ..confirm import describe

    now = "nothing awaits confirmation now" if not plan.fingerprint else (
        f"the plan now is {plan.fingerprint}; check it with `nero plan` and confirm it with `nero apply {plan.fingerprint}`")
    shown = project.shown_plan(wanted)
    if shown is None:
        return f"no plan {wanted} was shown for this workbook; {now}"
    current = {describe(a) for a in plan.awaiting}
    gone, new = sorted(set(shown) - current), sorted(current - set(shown))
    said = [f"no longer awaiting: {line}" for line in gone[:10]] + [f"newly awaiting: {line}" for line in new[:10]]
    return (f"the plan changed since {wanted} was shown, so nothing was confirmed:\n  " + "\n  ".join(said) +
            f"\n{now}")
