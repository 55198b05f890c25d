"""The reconcile loop: one pass, `--until-done` or `--watch`, the one implementation the
`nero reconcile` command and `orchestrator.Project.reconcile` both run (schedule's home).

`reconcile` takes the project's reconcile lock (ReconcileRunning if another process holds
it), then runs one pass, or passes every `interval` seconds (Settings `interval`, else 30)
until nothing is pending or live (`until_done`) or until interrupted (Ctrl-C; the jobs go
on). The workbook is re-read when it changed and then stayed unchanged for
`reconcile.SETTLE_S`; while runs of this machine are live, a pass follows one that saw runs
end after `QUICK_PASS_S`, and twice as late after each that saw none, up to the interval.
Settings `digest` is sent on its schedule (`DigestLoop`); a full or read-only disk stops a
pass and the loop tries again every interval (`DiskWait`). What happens is told to an
`Observer` (the command line prints it; the base class says nothing), and an `Outcome`
comes back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import DiskError, NeroError
from .project import Project
from .views import html_table, summary_line

if TYPE_CHECKING:
    from schedule import Job, Scheduler

    from .model import Plan, RunRecord
    from .reconcile import PassReport, Reread
    from .state import Mail

__all__ = ["DigestLoop", "DiskWait", "NOT_COMPLETED", "Observer", "Outcome", "QUICK_PASS_S", "ReconcileRunning",
           "reconcile", "runs_line", "unconfirmed_line"]

# While runs of this machine (the local cluster: a poll is a few file reads) are live, the
# loop's next pass comes this soon after one that saw runs end (their slots free, the next
# runs go), and twice as late after each pass that saw none, up to the interval: short
# local runs go through in seconds; long ones, printing metrics or not, cost no more passes
# (nor results workbooks) than the interval's.
QUICK_PASS_S = 0.1
NOT_COMPLETED = ("failed", "lost", "timeout", "preempted")  # an until-done loop ending with these fails


class ReconcileRunning(NeroError):
    """Another process holds the project's reconcile lock."""


class Observer:
    """What the loop tells as it goes; each method does nothing here (subclass to show it)."""

    def warning(self, message: str) -> None:
        """A warning (the workbook's, a pass's, a digest not built, a full disk)."""

    def notice(self, message: str) -> None:
        """A note (the disk can be written again)."""

    def passed(self, report: PassReport) -> None:
        """A pass ran (its events and warnings are in `report`)."""

    def reread(self, found: Reread) -> None:
        """The watching loop re-read the workbook."""

    def awaiting(self, plan: Plan) -> None:
        """What awaits confirmation changed (`plan.fingerprint`; '' when nothing awaits any more)."""

    def digest(self, mail: Mail, now: float) -> None:
        """A digest was built and handed to delivery."""


@dataclass(frozen=True)
class Outcome:
    """How a reconcile ended: its last pass (`report`; None when interrupted before one
    ended), the plan `summary` was made from (after the last pass of an until-done loop),
    the passes run, the runs that did not complete (an until-done loop: failed, lost, timed
    out, preempted), and whether Ctrl-C (KeyboardInterrupt) stopped it."""

    report: PassReport | None
    plan: Plan | None
    summary: str
    passes: int
    not_completed: tuple[RunRecord, ...] = ()
    stopped: bool = False
    until_done: bool = False

    @property
    def unconfirmed(self) -> int:
        """Changes an until-done loop ended with still awaiting confirmation (`nero apply`):
        work it was asked to finish and could not start (0 for a single pass or a watch)."""
        return len(self.plan.awaiting) if self.until_done and self.plan is not None else 0

    @property
    def ok(self) -> bool:
        """No run failed, was lost, timed out or was preempted, and an until-done loop left
        no change awaiting confirmation (`nero reconcile --until-done`'s exit 0)."""
        return not self.not_completed and not self.unconfirmed

    def _notes(self) -> list[str]:
        notes = [f"{self.passes} pass{'es' if self.passes != 1 else ''}; " + (
            "stopped (KeyboardInterrupt); the jobs keep running" if self.stopped else self.summary)]
        if self.not_completed:
            n = len(self.not_completed)
            notes.append(f"{n} run{'s' if n != 1 else ''} did not complete")
        if self.unconfirmed and self.plan is not None:
            notes.append(unconfirmed_line(self.plan))
        return notes

    def _cells(self) -> list[list[str]]:
        return [[r.key, r.state.value, r.reason] for r in self.not_completed]

    def __str__(self) -> str:
        return "\n".join([*self._notes(), *("  ".join(c) for c in self._cells())])

    def _repr_html_(self) -> str:
        return html_table(("run", "state", "reason"), self._cells(), caption=" ".join(self._notes()))


def runs_line(project: Project, plan: Plan) -> str:
    """`views.summary_line` of the project's runs under `plan`, with the results workbook."""
    results = project.results_path()
    states = (s for s, n in project.tally(shown=0).states for _ in range(n))  # counted in SQL: no run is read
    return summary_line(states, plan, str(results) if results.exists() else "")


def reconcile(project: Project, *, until_done: bool = False, watch: bool = False, interval: float | None = None,
              prune: bool = False, yes: bool = False, observer: Observer | None = None) -> Outcome:
    """Reconcile `project` (its workbook read: `Project.load`), once or in a loop (see the
    module's docstring). `prune` cancels runs whose rows were removed; `yes` applies the
    changes that throw work away without waiting for a confirmation."""
    said = observer or Observer()
    doing = "watching" if watch else "until done" if until_done else "one pass"
    with project.exclusive(doing) as held:
        if not held:
            raise ReconcileRunning(
                f"another `nero reconcile` is running for {project.workbook_path} "
                f"(lock {project.paths.reconcile_lock}); stop it first, or use `nero status` to watch")
        if not (watch or until_done):
            report = project.reconcile(prune=prune, yes=yes)
            said.passed(report)
            line = runs_line(project, report.plan)
            if report.results_deferred:  # a large project's results workbook, while runs are live (RESULTS_DUTY)
                line += (f" (not rewritten this pass: while runs are live, a results workbook of 10,000 runs or more "
                         f"that takes a second or more to write is rewritten after ten times that; next in "
                         f"{report.results_deferred:.0f} s)")
            return Outcome(report, report.plan, line, 1)
        return _loop(project, interval, until_done, prune, yes, said)


class _Progress:
    """Where a loop stands: passes run, the last pass, what awaits, when the next quick pass is."""

    def __init__(self) -> None:
        self.done = False
        self.passes = 0
        self.report: PassReport | None = None
        self.fingerprint = ""
        self.at: float | None = None
        self.wait = QUICK_PASS_S


def _loop(project: Project, interval: float | None, until_done: bool, prune: bool, yes: bool,
          said: Observer) -> Outcome:
    import schedule

    from .model import RunState
    from .reconcile import SETTLE_S

    every = interval or (project.workbook.settings.interval if project.workbook else 30) or 30
    sched = schedule.Scheduler()
    digests = DigestLoop(project, sched, said)
    disk = DiskWait(every, said)
    now = _Progress()
    ended_states = {s.value for s in RunState if s.finished}

    def tick() -> None:
        with disk:
            _tick()

    def _tick() -> None:
        for w in project.load(keep_last_good=True, settle_s=SETTLE_S):
            said.warning(w)
        found = project.reread()
        if found is not None:
            said.reread(found)
        report = project.reconcile(prune=prune, yes=yes)
        now.report, now.passes = report, now.passes + 1
        said.passed(report)
        if report.plan.fingerprint != now.fingerprint:
            said.awaiting(report.plan)
            now.fingerprint = report.plan.fingerprint
        digests.after_pass(report)
        if until_done and project.outstanding(report.plan) == 0:
            now.done = True
        ended = any(e.kind in ended_states for e in report.events)
        now.wait = QUICK_PASS_S if ended else min(every, 2 * (now.wait or QUICK_PASS_S))
        now.at = time.monotonic() + now.wait if _local_live(project) else None

    sched.every(every).seconds.do(tick)
    try:
        tick()
        while not now.done:
            sched.run_pending()
            if now.at is not None and time.monotonic() >= now.at:
                tick()
                continue
            soon = 0.2 if now.at is None else max(0.0, now.at - time.monotonic())
            time.sleep(min(0.2, soon, max(0.0, sched.idle_seconds or 0.2)))
    except KeyboardInterrupt:
        project.write_results(charts=True)
        plan = now.report.plan if now.report else None
        return Outcome(now.report, plan, runs_line(project, plan) if plan else "", now.passes, stopped=True)
    bad = tuple(r for r in project.runs() if r.state.value in NOT_COMPLETED)
    final = project.plan(prune=prune)
    project.write_results(final, charts=True)  # the curves as they ended
    return Outcome(now.report, final, runs_line(project, final), now.passes, bad, until_done=until_done)


def unconfirmed_line(plan: Plan) -> str:
    """What an until-done loop says when it ends with changes awaiting confirmation."""
    n = len(plan.awaiting)
    return (f"{n:,} change{'s' if n != 1 else ''} still await{'s' if n == 1 else ''} confirmation, so the loop "
            f"cannot finish: `nero plan` lists {'them' if n != 1 else 'it'}; confirm with "
            f"`nero apply {plan.fingerprint}` and run it again, or pass --yes")


class DiskWait:
    """What the loop does while a disk nero writes to is full or read-only: the pass that
    hits it stops there (its transaction rolled back, nothing lost), the message is said
    once, and every later pass tries again until one goes through, which is said too."""

    def __init__(self, every: float, said: Observer) -> None:
        self.every, self.said = every, said
        self.since: float | None = None

    def __enter__(self) -> DiskWait:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> bool:
        if isinstance(exc, DiskError):
            if self.since is None:
                self.since = time.monotonic()
                self.said.warning(f"{exc}\nThe loop keeps running and tries again every {self.every:g} s.")
            return True
        if exc is None and self.since is not None:
            self.said.notice(f"nero can write again after {time.monotonic() - self.since:.0f} s; resuming.")
            self.since = None
        return False


class DigestLoop:
    """Settings `digest` inside the reconcile loop: a `schedule` job on the loop's scheduler
    (every N minutes/hours, or daily at HH:MM), re-planned when the setting changes. When a
    loop starts after a digest was missed (nero was not running), one is sent right away."""

    def __init__(self, project: Project, sched: Scheduler, said: Observer) -> None:
        self.project, self.sched, self.said = project, sched, said
        self.setting: str | None = None
        self.job: Job | None = None
        self.plan: Plan | None = None

    def after_pass(self, report: PassReport) -> None:
        """Follow the setting as the pass read it; a first look sends a missed digest."""
        from .digest_schedule import digest_overdue, parse_digest

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
            head, runs = project.digest_input(self.plan)
            mail = mailer.digest(head, project.results_path(), now, warnings=warnings, runs=runs)
            if mail is not None:
                assert project.workbook is not None
                warnings += mailer.deliver(project.workbook.settings, now)
                self.said.digest(mail, now)
        except Exception as e:  # a digest never stops the loop
            warnings = [f"digest not built: {type(e).__name__}: {e}"]
        for w in warnings:
            self.said.warning(w)


def _local_live(project: Project) -> bool:
    """Whether runs of this machine's own cluster are live (polling them reads files only)."""
    for name, n in project.live_counts().items():
        try:
            if n and not project.backend(name).remote:
                return True
        except NeroError:
            continue  # a cluster the sheet no longer names: not this machine's
    return False
