"""`nero reconcile`: one pass, or the loop that keeps reconciling (`--watch`,
`--until-done`) and sends the scheduled digests."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import click

from ..errors import DiskError, NeroError
from ..project import Project
from .console import awaiting_lines, console, print_report
from .group import WORKBOOK_ARG, fail, main, open_project, warn

if TYPE_CHECKING:
    from schedule import Job, Scheduler

    from ..model import Plan
    from ..reconcile import PassReport, Reread

__all__ = ["Decisions", "DigestLoop", "DiskWait", "print_plan_summary", "reconcile"]


@main.command()
@WORKBOOK_ARG
@click.option("--watch", is_flag=True, help="Keep reconciling every --interval seconds until Ctrl-C.")
@click.option("--interval", type=float, default=None, help="Seconds between passes (default: Settings interval, else 30).")
@click.option("--until-done", is_flag=True, help="Loop until nothing is pending or running; exit 1 if any run failed.")
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
    doing = "watching" if watch else "until done" if until_done else "one pass"
    with open_project(workbook) as project, project.exclusive(doing) as held:
        if not held:
            raise click.ClickException(
                f"another `nero reconcile` is running for {project.workbook_path} "
                f"(lock {project.paths.reconcile_lock}); stop it first, or use `nero status` to watch")
        try:
            if not (watch or until_done):
                report = project.reconcile(prune=prune, yes=yes)
                print_report(report, quiet)
                for line in awaiting_lines(report.plan):
                    click.echo(line)
                print_plan_summary(project, report.plan)
                return
            _loop(project, interval, until_done, prune, quiet, yes)
        except NeroError as e:
            fail(e)


def print_plan_summary(project: Project, plan: Plan) -> None:
    """One line: the runs by state, how many wait or are held, and the results workbook."""
    counts = dict(project.tally(shown=0).states)  # counted in SQL: no run is read
    waiting = sum(1 for a in plan.actions if a.waiting and not a.awaiting)
    held = len([a for a in plan.actions if a.kind.value == "held"])
    parts = [f"{n} {s}" for s, n in sorted(counts.items())]
    if waiting:
        parts.append(f"{waiting} waiting")
    if held:
        parts.append(f"{held} held")
    if plan.awaiting:
        parts.append(f"{len(plan.awaiting)} awaiting confirmation (nero apply {plan.fingerprint})")
    results = project.results_path()
    click.echo(f"runs: {', '.join(parts) or 'none'}" + (f"; results in {results}" if results.exists() else ""))


def _loop(project: Project, interval: float | None, until_done: bool, prune: bool, quiet: bool, yes: bool) -> None:
    import schedule

    from ..model import RunState
    from ..reconcile import SETTLE_S

    every = interval or (project.workbook.settings.interval if project.workbook else 30) or 30
    sched = schedule.Scheduler()
    digests = DigestLoop(project, sched, quiet)
    done = {"flag": False}
    progress = None
    if sys.stdout.isatty() and not quiet:  # the live view: a line of progress under the decisions
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        progress = Progress(TextColumn("[bold]runs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("{task.description}"), console=console())
        progress.start()
        task = progress.add_task("", total=None)

    disk = DiskWait(every)
    said = Decisions(quiet)

    def tick() -> None:
        with disk:
            _tick()

    def _tick() -> None:
        for w in project.load(keep_last_good=True, settle_s=SETTLE_S):
            warn(w)
        said.reread(project.reread())
        report = project.reconcile(prune=prune, yes=yes)
        print_report(report, quiet)
        said.awaiting(report.plan)
        digests.after_pass(report)
        if progress is not None:
            runs = project.runs()
            finished = sum(1 for r in runs if r.state.finished)
            total = len(runs) + sum(1 for a in report.plan.actions if a.kind.value == "submit")
            live = sum(1 for r in runs if r.state.live)
            waits = report.plan.awaiting
            progress.update(task, completed=finished, total=total, description=f"{live} live" + (
                f", {len(waits)} awaiting confirmation: nero apply {report.plan.fingerprint}" if waits else ""))
        if until_done and project.outstanding(report.plan) == 0:
            done["flag"] = True
        ended = any(e.kind in ended_states for e in report.events)
        wait = QUICK_PASS_S if ended else min(every, 2 * (quick["wait"] or QUICK_PASS_S))
        quick["wait"] = wait
        quick["at"] = time.monotonic() + wait if _local_live(project) else None

    ended_states = {s.value for s in RunState if s.finished}
    quick: dict[str, float | None] = {"at": None, "wait": QUICK_PASS_S}

    sched.every(every).seconds.do(tick)
    try:
        tick()
        while not done["flag"]:
            sched.run_pending()
            at = quick["at"]
            if at is not None and time.monotonic() >= at:
                tick()
                continue
            soon = 0.2 if at is None else max(0.0, at - time.monotonic())
            time.sleep(min(0.2, soon, max(0.0, sched.idle_seconds or 0.2)))
    except KeyboardInterrupt:
        if progress is not None:
            progress.stop()
        click.echo("\nStopped watching. Jobs keep running; `nero reconcile --watch` picks them up again.", err=True)
        project.write_results(charts=True)
        return
    if progress is not None:
        progress.stop()
    bad = [r for r in project.runs() if r.state in (RunState.FAILED, RunState.LOST, RunState.TIMEOUT, RunState.PREEMPTED)]
    final = project.plan(prune=prune)
    project.write_results(final, charts=True)  # the curves as they ended
    print_plan_summary(project, final)
    if bad:
        click.echo(f"{len(bad)} run{'s' if len(bad) != 1 else ''} did not complete: " +
                   ", ".join(f"{r.key} ({r.state.value})" for r in bad[:10]), err=True)
        sys.exit(1)


class Decisions:
    """The loop's account of what it decided and why, a line each: the workbook re-read
    (when it was saved, how many rows changed), and what awaits confirmation, said when it
    changes (and when nothing awaits any more: the change was applied or undone)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.fingerprint = ""

    @staticmethod
    def _say(line: str) -> None:
        click.echo(f"{time.strftime('%H:%M:%S')} {line}")

    def reread(self, found: Reread | None) -> None:
        if found is None or self.quiet:
            return
        saved = time.strftime("%H:%M:%S", time.localtime(found.saved_at))
        n = found.rows_changed
        self._say(f"workbook re-read (saved {saved}): {n} row{'s' if n != 1 else ''} changed")

    def awaiting(self, plan: Plan) -> None:
        if plan.fingerprint == self.fingerprint:
            return
        if not plan.fingerprint:
            self._say("nothing awaits confirmation any more")
        for line in awaiting_lines(plan):
            self._say(line)
        self.fingerprint = plan.fingerprint


class DiskWait:
    """What the loop does while a disk nero writes to is full or read-only: the pass that
    hits it stops there (its transaction rolled back, nothing lost), the message is printed
    once, and every later pass tries again until one goes through, which is said too."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.since: float | None = None

    def __enter__(self) -> DiskWait:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> bool:
        if isinstance(exc, DiskError):
            if self.since is None:
                self.since = time.monotonic()
                warn(f"{exc}\nThe loop keeps running and tries again every {self.every:g} s.")
            return True
        if exc is None and self.since is not None:
            click.echo(f"nero can write again after {time.monotonic() - self.since:.0f} s; resuming.", err=True)
            self.since = None
        return False


class DigestLoop:
    """Settings `digest` inside the reconcile loop: a `schedule` job on the loop's scheduler
    (every N minutes/hours, or daily at HH:MM), re-planned when the setting changes. When a
    loop starts after a digest was missed (nero was not running), one is sent right away."""

    def __init__(self, project: Project, sched: Scheduler, quiet: bool) -> None:
        self.project, self.sched, self.quiet = project, sched, quiet
        self.setting: str | None = None
        self.job: Job | None = None
        self.plan: Plan | None = None

    def after_pass(self, report: PassReport) -> None:
        """Follow the setting as the pass read it; a first look sends a missed digest."""
        from ..digest_schedule import digest_overdue, parse_digest

        self.plan = report.plan
        setting = self.project.workbook.settings.digest if self.project.workbook else "off"
        if setting == self.setting:
            return
        first = self.setting is None
        self.setting = setting
        if self.job is not None:
            self.sched.cancel_job(self.job)
            self.job = None
        when = parse_digest(setting)
        if when.off:
            return
        if when.every_s is not None:
            self.job = getattr(self.sched.every(when.n), when.unit).do(self.send)
        else:
            self.job = self.sched.every().day.at(when.daily_at).do(self.send)
        if first and digest_overdue(when, self.project.last_digest(), self.project.clock()):
            self.send()

    def send(self) -> None:
        """Build a digest and deliver it (what the scheduler calls); never raises."""
        project = self.project
        try:
            mailer = project.mailer()
            warnings: list[str] = []
            now = project.clock()
            mail = mailer.digest(project.results_input(self.plan), project.results_path(), now, warnings=warnings)
            if mail is not None:
                assert project.workbook is not None
                warnings += mailer.deliver(project.workbook.settings, now)
                if not self.quiet:
                    click.echo(f"{time.strftime('%H:%M:%S', time.localtime(now))} digest     {mail.subject}")
        except Exception as e:  # a digest never stops the loop
            warnings = [f"digest not built: {type(e).__name__}: {e}"]
        for w in warnings:
            warn(w)


# While runs of this machine (the local cluster: a poll is a few file reads) are live, the
# loop's next pass comes this soon after one that saw runs end (their slots free, the next
# runs go), and twice as late after each pass that saw none, up to the interval: short
# local runs go through in seconds; long ones, printing metrics or not, cost no more passes
# (nor results workbooks) than the interval's.
QUICK_PASS_S = 0.1


def _local_live(project: Project) -> bool:
    """Whether runs of this machine's own cluster are live (polling them reads files only)."""
    for name, n in project.live_counts().items():
        try:
            if n and not project.backend(name).remote:
                return True
        except NeroError:
            continue  # a cluster the sheet no longer names: not this machine's
    return False
