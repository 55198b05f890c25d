"""`nero reconcile`: one pass, or the loop that keeps reconciling (`--watch`,
`--until-done`) and sends the scheduled digests. The loop itself is `orchestrator.loop`
(the one the Python API runs too); this module prints what it tells (`Printer`)."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import click

from .. import loop
from ..errors import NeroError
from ..project import Project
from .console import awaiting_lines, console, print_report
from .group import WORKBOOK_ARG, fail, main, open_project, warn

if TYPE_CHECKING:
    from schedule import Scheduler

    from ..model import Plan
    from ..reconcile import PassReport, Reread
    from ..state import Mail

__all__ = ["DigestLoop", "Printer", "print_plan_summary", "reconcile"]


@main.command()
@WORKBOOK_ARG
@click.option("--watch", is_flag=True, help="Keep reconciling every --interval seconds until Ctrl-C.")
@click.option("--interval", type=float, default=None, help="Seconds between passes (default: Settings interval, else 30).")
@click.option("--until-done", is_flag=True, help="Loop until nothing is pending or running; exit 1 if any run failed, or if changes still await "
              "confirmation (nero apply) when nothing else is left.")
@click.option("--prune", is_flag=True, help="Cancel running runs whose rows were removed from the sheet.")
@click.option("-y", "--yes", is_flag=True,
              help="Apply changes that throw work away without waiting for `nero apply` (as Settings on_save = apply all).")
@click.option("-q", "--quiet", is_flag=True, help="Print only warnings, what awaits confirmation and the final summary.")
def reconcile(workbook: str | None, watch: bool, interval: float | None, until_done: bool, prune: bool, yes: bool,
              quiet: bool) -> None:
    """Make the runs match the workbook: submit, restart, cancel, and collect metrics.

    One pass by default. With --watch it loops, re-reading the workbook when it changed
    and then stayed unchanged for 2 s (quick saves are read once), and says what it did
    and why, a line each; a workbook that becomes invalid or is open in Excel keeps the
    last good plan. Changes that throw work away (restarting a running or finished run,
    cancelling, more new runs at once than Settings confirm_over) wait: they are listed
    as awaiting confirmation with the command that confirms them (`nero apply 3f9a2c`);
    --yes or Settings on_save = apply all applies them at once.
    Ctrl-C ends the loop, never the jobs: they keep running and the next reconcile picks
    them up. Exit code 2 when the workbook is invalid (nothing is touched then); 3 when a
    disk nero writes to is full or read-only (nothing is lost then; the loop instead says
    so once, waits and resumes when it can write again).
    """
    with open_project(workbook) as project:
        looping = watch or until_done
        said = Printer(quiet, project if looping and sys.stdout.isatty() and not quiet else None)
        try:
            with said:
                done = loop.reconcile(project, until_done=until_done, watch=watch, interval=interval, prune=prune,
                                      yes=yes, observer=said)
        except loop.ReconcileRunning as e:
            raise click.ClickException(str(e)) from None
        except NeroError as e:
            fail(e)
        if done.stopped:
            click.echo("\nStopped watching. Jobs keep running; `nero reconcile --watch` picks them up again.", err=True)
            return
        if not looping and done.plan is not None:
            for line in awaiting_lines(done.plan):
                click.echo(line)
        click.echo(done.summary)
        if done.not_completed:
            bad = done.not_completed
            click.echo(f"{len(bad)} run{'s' if len(bad) != 1 else ''} did not complete: " +
                       ", ".join(f"{r.key} ({r.state.value})" for r in bad[:10]), err=True)
        if done.unconfirmed and done.plan is not None:
            click.echo(loop.unconfirmed_line(done.plan), err=True)
        if not done.ok:
            sys.exit(1)


def print_plan_summary(project: Project, plan: Plan) -> None:
    """One line: the runs by state, how many wait or are held, and the results workbook."""
    click.echo(loop.runs_line(project, plan))


class Printer(loop.Observer):
    """What the loop tells, printed: warnings (always), each pass's events, the workbook
    re-read and what awaits confirmation, a line each (unless `quiet`), and digests sent.
    With `project` (a terminal, not quiet), a live line of progress under them while in
    its `with` block: runs finished of all, how many are live, what awaits."""

    def __init__(self, quiet: bool, project: Project | None = None) -> None:
        self.quiet, self.project = quiet, project
        self.progress = None
        self.task = None

    def __enter__(self) -> Printer:
        if self.project is not None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.progress = Progress(TextColumn("[bold]runs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                     TextColumn("{task.description}"), console=console())
            self.progress.start()
            self.task = self.progress.add_task("", total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    @staticmethod
    def _say(line: str) -> None:
        click.echo(f"{time.strftime('%H:%M:%S')} {line}")

    def warning(self, message: str) -> None:
        warn(message)

    def notice(self, message: str) -> None:
        click.echo(message, err=True)

    def passed(self, report: PassReport) -> None:
        print_report(report, self.quiet)
        if self.progress is not None and self.project is not None:
            runs = self.project.runs()
            finished = sum(1 for r in runs if r.state.finished)
            total = len(runs) + sum(1 for a in report.plan.actions if a.kind.value == "submit")
            live = sum(1 for r in runs if r.state.live)
            waits = report.plan.awaiting
            self.progress.update(self.task, completed=finished, total=total, description=f"{live} live" + (
                f", {len(waits)} awaiting confirmation: nero apply {report.plan.fingerprint}" if waits else ""))

    def reread(self, found: Reread) -> None:
        if self.quiet:
            return
        saved = time.strftime("%H:%M:%S", time.localtime(found.saved_at))
        n = found.rows_changed
        self._say(f"workbook re-read (saved {saved}): {n} row{'s' if n != 1 else ''} changed")

    def awaiting(self, plan: Plan) -> None:
        if not plan.fingerprint:
            self._say("nothing awaits confirmation any more")
        for line in awaiting_lines(plan):
            self._say(line)

    def digest(self, mail: Mail, now: float) -> None:
        if not self.quiet:
            click.echo(f"{time.strftime('%H:%M:%S', time.localtime(now))} digest     {mail.subject}")


class DigestLoop(loop.DigestLoop):
    """`orchestrator.loop.DigestLoop` saying what it sends on the command line (unless `quiet`)."""

    def __init__(self, project: Project, sched: Scheduler, quiet: bool) -> None:
        super().__init__(project, sched, Printer(quiet))
