"""What the commands do below their printing: the one implementation the `nero` command line
and the Python API (`orchestrator.Project`) both call.

* `create`: a new project from the example workbook and program (`nero init`);
* `select`: the runs a selector matches, reading the workbook first (`nero status 'failed'`);
* `run_rows`: the runs as `nero status --json` lists them (`Project.runs()`);
* `history_rows`: the event timeline of the runs a selector matches (`nero history`);
* `override`: `nero abort`, `restart`, `hold`, `release`: select, confirm, record, and apply
  with a pass right away unless a watching reconcile will (`Manual` says what happened);
* `confirm_plan`: `nero apply [ID]`: confirm exactly the changes a plan shows awaiting;
* `plot`: `nero plot SELECTOR METRIC [--attempts]`: the curves of the runs it matches, a PNG;
* `export`: `nero export -o FILE`: every run, metric point and earlier attempt, as files.

How a confirmation is asked is the caller's: the command line shows the runs and asks (or
refuses without `--yes` when not on a terminal); the Python API acts only with `yes=True`.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import NeroError
from .identity import project_id
from .project import Candidate, Project
from .views import attempt_row, event_row, html_table, run_row

if TYPE_CHECKING:
    from .metrics import Summary
    from .model import Event, Freshness, Plan, RunRecord
    from .plots import Drawn
    from .reconcile import PassReport

__all__ = ["VERBS", "Confirmed", "Exported", "Manual", "NoRunMatches", "PlanChanged", "confirm_plan", "create",
           "export", "history_rows", "override", "plot", "run_rows", "run_values", "select"]

VERBS = ("abort", "restart", "hold", "release")
Warn = Callable[[str], None]


class PlanChanged(NeroError):
    """`nero apply ID`: the plan shown as ID is not the plan now (the message says how)."""


class NoRunMatches(NeroError):
    """A selector matched no run nero started, where one is needed (`nero plot`)."""


def _ignore(message: str) -> None:
    """Where warnings go when the caller takes none."""


def create(directory: str | Path, force: bool = False) -> tuple[Path, Path]:
    """Create a project in `directory` (made if missing): `experiments.xlsx` (the example
    workbook: commented headers, drop-downs, a worked example grid) and `train.py` (a small
    training program it runs). Returns both paths. NeroError if either exists, unless `force`."""
    from .render import builtin_templates
    from .sheet import write_example_workbook

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    wb, train = d / "experiments.xlsx", d / "train.py"
    for p in (wb, train):
        if p.exists() and not force:
            raise NeroError(f"{p} exists; use --force to overwrite it, or pick another directory")
    write_example_workbook(wb)
    shutil.copyfile(builtin_templates() / "project" / "train.py", train)
    project_id(d)  # the project's identity, from its first moment (identity.py)
    return wb, train


def select(project: Project, selector: str, need_workbook: bool = False, warn: Warn = _ignore) -> list[Candidate]:
    """The runs `selector` matches (`Project.select`), the workbook read first. A selector
    that does not parse or names no known metric, parameter or built-in name raises
    ExpressionError; a workbook that does not read raises its WorkbookError if
    `need_workbook`, else only runs nero started count, and `warn` is told so."""
    from .expr import parse_selector

    parsed = parse_selector(selector)
    try:
        project.load()
    except NeroError as e:
        if need_workbook:
            raise
        warn(f"the workbook does not read, so only runs nero started are considered: {str(e).splitlines()[0]}")
    return project.select(parsed)


def run_values(project: Project, runs: Sequence[RunRecord], with_attempts: bool) -> tuple[
        dict[str, list[RunRecord]], dict[str, dict[str, Summary]], dict[tuple[str, int], dict[str, Summary]]]:
    """What a listing of `runs` shows besides their records: each run's earlier attempts (by
    key; none unless `with_attempts`), each run's metric values, and each earlier attempt's."""
    earlier: dict[str, list[RunRecord]] = {}
    if with_attempts:
        for a in project.earlier_attempts(r.key for r in runs):
            earlier.setdefault(a.key, []).append(a)
    return earlier, project.metric_values(runs), project.attempt_values([a for per in earlier.values() for a in per])


def run_rows(project: Project, runs: Iterable[RunRecord], fresh: Freshness,
             with_attempts: bool = False) -> Iterator[dict[str, object]]:
    """`runs` as `nero status --json` lists them (`views.run_row`), one at a time; each run's
    `as_of` is now when `fresh` read it, else the last pass's time. `with_attempts` adds each
    run's earlier attempts (`views.attempt_row`). Read and made 2,000 runs at a time (their
    values, histories and earlier attempts), so `runs` may be a stream of every run."""
    now = project.clock()
    checkpoints = project.checkpoints()
    refreshed = set(fresh.refreshed)
    it = iter(runs)
    while batch := list(itertools.islice(it, 2_000)):
        earlier, values, attempt_values = run_values(project, batch, with_attempts)
        for r in batch:
            attempts = ([attempt_row(a, now, attempt_values[(a.key, a.attempt)], checkpoints)
                         for a in earlier.get(r.key, ())] if with_attempts else None)
            yield run_row(r, now, values[r.key], checkpoints, now if r.key in refreshed else fresh.last_pass, attempts)


def history_rows(project: Project, selector: str = "all", last: int = 0, warn: Warn = _ignore,
                 who: str | None = None) -> tuple[dict[str, Candidate], list[Event], list[dict[str, object]]]:
    """The event timeline of the runs `selector` matches, oldest first (the `last` ones if
    given), only the events of attempts the OS user `who` submitted if given: the runs by
    key, the events, and the events as `nero history --json` lists them (with `who`)."""
    found = {c.key: c for c in select(project, selector, warn=warn)}
    by = project.submitters()
    events = [e for e in project.events() if e.key in found and (who is None or by.get((e.key, e.attempt)) == who)]
    if last:
        events = events[-last:]
    return found, events, [event_row(e, by.get((e.key, e.attempt), "")) for e in events]


@dataclass(frozen=True)
class Manual:
    """What `override` did. `matched`: the runs the selector matched (for `release`, those
    an override holds); `done`: whether it was recorded (False when nothing matched or it
    was not confirmed); `keys`: the runs it now applies to (for `release`: the runs whose
    overrides were dropped); `skipped`: runs left out because their rows are no longer in
    the workbook; `applied`: "now" (a pass ran: `report`), "watcher" (a running
    `nero reconcile --watch` applies it in its next pass) or "failed" (`error`: the next
    reconcile applies it); "" when nothing was done."""

    verb: str
    selector: str
    matched: tuple[Candidate, ...] = ()
    done: bool = False
    keys: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    applied: str = ""
    report: PassReport | None = None
    error: str = ""

    def message(self) -> str:
        """What the command line says of it (`Recorded abort for 2 runs; …`)."""
        if not self.matched:
            return f"No run matches; nothing to {self.verb}."
        if not self.done:
            n = len(self.matched)
            return f"{n} run{'s match' if n != 1 else ' matches'}; nothing done without a confirmation"
        n = len(self.keys)
        if self.verb == "release":
            return f"Released {n} run{'s' if n != 1 else ''}."
        return (f"Recorded {self.verb} for {n} run{'s' if n != 1 else ''}; "
                "`nero plan` shows it until the row changes.")


    def _cells(self) -> list[list[str]]:
        return [[str(c.record.number) if c.record else "-", c.key, c.facts.state, c.facts.cluster] for c in self.matched]

    def _notes(self) -> list[str]:
        if self.matched and not self.done:
            n = len(self.matched)
            return [f"{n} run{'s match' if n != 1 else ' matches'}; nothing done: confirm with yes=True "
                    f"(`nero {self.verb} --yes` on the command line)"]
        notes = [self.message()] + [f"{k} is no longer in the workbook; skipped" for k in self.skipped]
        if self.applied == "watcher":
            notes.append("A running `nero reconcile --watch` applies this in its next pass.")
        elif self.applied == "failed":
            notes.append(f"The pass failed: {self.error}; the next reconcile applies it.")
        elif self.report is not None:
            notes += [f"{e.kind} {e.key}: {e.reason}" for e in self.report.events]
        return notes

    def __str__(self) -> str:
        return "\n".join([*("  ".join(c) for c in self._cells()), *self._notes()])

    def _repr_html_(self) -> str:
        return html_table(("#", "run", "state", "cluster"), self._cells(), notes=self._notes())


def _apply_now(project: Project, prune: bool = False) -> tuple[str, PassReport | None, str]:
    """A pass right away unless a watching reconcile holds the lock: (applied, report, error)."""
    try:
        report = project.apply_now(prune=prune)
    except NeroError as e:
        return "failed", None, str(e)
    return ("watcher", None, "") if report is None else ("now", report, "")


def override(project: Project, verb: str, selector: str, confirm: Callable[[Sequence[Candidate]], bool],
             reason: str = "", resume: bool = False, warn: Warn = _ignore) -> Manual:
    """`nero abort|restart|hold|release SELECTOR`: the runs `selector` matches (restart and
    hold need the workbook to read; release takes only runs an override holds), then, if
    `confirm(runs)` says so, the override recorded (with `reason` in each run's events;
    default "`nero VERB SELECTOR`") and applied by a pass right away unless a watching
    reconcile will. `resume` (restart): the new attempt starts with NERO_RESUME=1."""
    if verb not in VERBS:
        raise ValueError(f"no such action {verb!r}; one of {', '.join(VERBS)}")
    found = select(project, selector, need_workbook=verb in ("restart", "hold"), warn=warn)
    if verb == "release":
        held = project.overrides()
        found = [c for c in found if c.key in held]
    if not found or not confirm(found):
        return Manual(verb, selector, tuple(found))
    reason = reason or f"`nero {verb} {selector}`"
    skipped: Iterable[str] = ()
    if verb == "release":
        project.release(found, reason)
        keys: Iterable[str] = (c.key for c in found)
    else:
        done = (project.restart(found, reason, resume=resume) if verb == "restart" else
                project.abort(found, reason) if verb == "abort" else project.hold(found, reason))
        keys, skipped = done.keys, done.skipped
    keys, skipped = tuple(keys), tuple(skipped)
    applied, report, error = _apply_now(project)
    return Manual(verb, selector, tuple(found), True, keys, skipped, applied, report, error)


@dataclass(frozen=True)
class Confirmed:
    """What `confirm_plan` did: the plan, the changes it confirmed (none when nothing
    awaited), and how they were applied (`Manual.applied`)."""

    plan: Plan
    confirmed: tuple[str, ...] = ()
    applied: str = ""
    report: PassReport | None = None
    error: str = ""


def confirm_plan(project: Project, wanted: str = "", prune: bool = False) -> Confirmed:
    """`nero apply [ID]`: confirm the changes the plan now shows awaiting, and apply them
    (a pass now unless a watching reconcile will). With `wanted` (a plan's ID as shown),
    PlanChanged unless the plan now is that plan, saying what changed since."""
    plan = project.plan(prune=prune)
    if wanted and wanted != plan.fingerprint:
        raise PlanChanged(_changed_since(project, wanted, plan))
    if not plan.awaiting:
        return Confirmed(plan)
    tokens = tuple(project.confirm(plan))
    applied, report, error = _apply_now(project, prune)
    return Confirmed(plan, tokens, applied, report, error)


def _changed_since(project: Project, wanted: str, plan: Plan) -> str:
    """Why `nero apply ID` refuses: the plan shown as ID is not the plan now, and how."""
    from .confirm import describe

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


def plot(project: Project, selector: str, metric: str, output: str | Path | None = None, with_attempts: bool = False,
         warn: Warn = _ignore) -> tuple[Drawn, int]:
    """`nero plot SELECTOR METRIC`: `metric` over steps for the started runs `selector`
    matches, one line per run, to a PNG (`output`, default `<metric>.png` beside the
    workbook); `with_attempts` draws their earlier attempts too (dashed). Returns what was
    drawn and how many runs. NoRunMatches when no started run matches; NeroError (naming the
    metrics that have points) when none has points for `metric`."""
    from .plots import draw_curves

    runs = [c.record for c in select(project, selector, warn=warn) if c.record is not None]
    if not runs:
        raise NoRunMatches(f"no started run matches {selector!r}; `nero status` lists the runs")
    out = Path(output) if output else project.directory / f"{metric.replace('/', '_')}.png"
    goal = project.workbook.goal(metric) if project.workbook else None
    earlier = None
    if with_attempts:
        keys = {r.key for r in runs}
        earlier = {(k, a): h for (k, a), h in project.earlier_histories().items() if k in keys}
    return draw_curves(runs, project.histories(runs), metric, out, goal=goal, earlier=earlier), len(runs)


@dataclass(frozen=True)
class Exported:
    """What `export` wrote: the files, and how many runs, earlier attempts and metric points."""

    paths: tuple[Path, ...]
    runs: int
    attempts: int
    points: int


def export(project: Project, output: str | Path) -> Exported:
    """`nero export -o FILE`: every run (parameters, state, timings, last and best metrics of
    its current attempt), every metric point of every attempt and the earlier attempts, by
    the file's suffix (`frames.export`: .csv, .json or .parquet), written a batch of runs at
    a time. ValueError for another suffix (or .parquet without pyarrow)."""
    from .frames import export as write

    counted = {"runs": 0, "points": 0}

    def counting(frames: Iterable, what: str) -> Iterator:
        for frame in frames:
            counted[what] += len(frame)
            yield frame

    attempts = project.attempts_frame()
    with project.reading():  # a batch at a time, the runs and their points of one state of the store
        paths = write(counting(project.run_frames(), "runs"), counting(project.metric_frames(), "points"),
                      Path(output), attempts)
    return Exported(tuple(paths), counted["runs"], len(attempts), counted["points"])
