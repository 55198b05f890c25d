"""nero from Python: `Project`, the commands of `nero` as methods, with pandas DataFrames
and objects that render as tables in Jupyter.

    >>> from orchestrator import Project
    >>> project = Project.init("demo")                 # nero init demo
    >>> project.plan()                                 # nero plan demo
    >>> done = project.reconcile(until_done=True)      # nero reconcile demo --until-done
    >>> runs = project.runs()                          # nero status demo --json, one row per run
    >>> runs[["state", "best:val_loss"]]
    >>> project.metrics("demo*", ["val_loss"])         # every point: run, attempt, metric, step, value
    >>> project.restart("failed", yes=True)            # nero restart failed --yes

Each method runs the code its command runs (`orchestrator.operations`, `orchestrator.loop`,
`orchestrator.views`): the same selection, confirmation policy, loop and values, so what
Python shows equals what `nero status --json` prints. Selectors are the command line's
(`'lr>0.01 and failed'`, `'demo*'`, `12-18`, state words); a misspelt name raises
ExpressionError naming the closest known ones. Warnings (the workbook's, a pass's) are
issued as `NeroWarning`s (Python's `warnings`).
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import loop, operations
from . import project as facade
from .errors import ExpressionError, NeroError
from .units import format_duration, format_significant
from .views import (
    action_row,
    batch_line,
    flat_row,
    freshness_line,
    html_table,
    plan_line,
    trial_row,
)

if TYPE_CHECKING:
    from .model import Freshness, NextBatch, Optimisation, Plan
    from .plots import Drawn
    from .reconcile import PassReport, Reread
    from .state import Mail

__all__ = ["NeroWarning", "PlanView", "Project", "StatusView"]

DataFrame = Any  # a pandas DataFrame (pandas is imported by orchestrator.frames only)


class NeroWarning(UserWarning):
    """A warning nero gives (the workbook's, a pass's, a selector read without the workbook)."""


def _warn(message: str) -> None:
    warnings.warn(message, NeroWarning, stacklevel=4)


class _Told(loop.Observer):
    """The loop's account from Python: warnings as NeroWarnings; with `verbose`, a printed
    line per event, re-read, awaiting change and digest (as `nero reconcile` prints them)."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose

    def _say(self, line: str) -> None:
        if self.verbose:
            print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)

    def warning(self, message: str) -> None:
        _warn(message)

    def notice(self, message: str) -> None:
        self._say(message)

    def passed(self, report: PassReport) -> None:
        for w in report.warnings:
            _warn(w)
        for e in report.events:
            self._say(f"{e.kind:<10} {e.key}  {e.reason}")

    def reread(self, found: Reread) -> None:
        self._say(f"workbook re-read: {found.rows_changed} row{'s' if found.rows_changed != 1 else ''} changed")

    def awaiting(self, plan: Plan) -> None:
        from .confirm import describe

        if not plan.fingerprint:
            self._say("nothing awaits confirmation any more")
        for a in plan.awaiting:
            self._say(f"{describe(a)} — awaiting confirmation: Project.apply({plan.fingerprint!r})")

    def digest(self, mail: Mail, now: float) -> None:
        self._say(f"digest     {mail.subject}")


@dataclass(frozen=True)
class PlanView:
    """What `Project.plan()` returns: the plan (`plan.actions`: what a pass would do, each
    with its reason) and how fresh the picture is. In Jupyter a table; `str()` its text;
    `to_dict()` is what `nero plan --json` prints; `frame()` the actions as a DataFrame.

        >>> p = project.plan()
        >>> p.fingerprint            # '' unless changes await confirmation: project.apply(p.fingerprint)
        >>> p.frame().groupby("action").size()
    """

    plan: Plan
    freshness: Freshness
    now: float
    searches: tuple[NextBatch, ...] = ()  # what each search row would ask now (`nero plan`'s lines)

    @property
    def actions(self) -> list[dict[str, object]]:
        """The actions as `nero plan --json` lists them: action, run, reason, cluster, waiting (awaiting)."""
        return [action_row(a) for a in self.plan.actions]

    @property
    def fingerprint(self) -> str:
        """The plan's ID when changes await confirmation (`Project.apply(ID)` confirms them); else ''."""
        return self.plan.fingerprint

    @property
    def awaiting(self) -> list[str]:
        """The changes awaiting confirmation, a line each (`restart demo[lr=0.1] (lr: 0.1 → 0.2; …)`)."""
        from .confirm import describe

        return [describe(a) for a in self.plan.awaiting]

    def to_dict(self) -> dict[str, object]:
        """The plan as `nero plan --json` prints it."""
        from .views import plan_json

        return plan_json(self.plan, self.freshness, self.now, self.searches)

    def frame(self) -> DataFrame:
        """The actions as a DataFrame (the columns of `actions`)."""
        from .frames import table

        return table(self.actions, columns=("action", "run", "reason", "cluster", "waiting"))

    def _notes(self) -> list[str]:
        notes = [plan_line(self.plan), *(batch_line(b) for b in self.searches)]
        if self.plan.awaiting:
            n = len(self.plan.awaiting)
            notes.append(f"{n} change{'s' if n != 1 else ''} awaiting confirmation; to apply exactly these: "
                         f"project.apply({self.fingerprint!r}) (nero apply {self.fingerprint})")
        return [*notes, freshness_line(self.freshness, self.now)]

    def _cells(self) -> list[list[str]]:
        return [[a.kind.value, a.key, f"{a.reason}; {a.awaiting}" if a.awaiting else a.reason,
                 "awaiting confirmation" if a.awaiting else f"→ {a.cluster}" if a.cluster else a.waiting]
                for a in self.plan.actions]

    def __str__(self) -> str:
        return "\n".join([*("  ".join(c for c in row if c) for row in self._cells()), *self._notes()])

    def _repr_html_(self) -> str:
        return html_table(("action", "run", "reason", "where"), self._cells(), notes=self._notes())


@dataclass(frozen=True)
class StatusView:
    """What `Project.status()` returns: the runs as `nero status --json` lists them (`rows`,
    flattened as in `Project.runs()`) and how fresh they are. In Jupyter a table (number,
    run, state, cluster, runtime, step, last metric values, reason) under the counts by
    state; `frame()` is `Project.runs()`'s DataFrame; `counts` the runs by state."""

    rows: tuple[dict[str, object], ...]
    freshness: str

    @property
    def counts(self) -> dict[str, int]:
        """How many runs are in each state, most first."""
        return dict(Counter(str(r["state"]) for r in self.rows).most_common())

    def frame(self) -> DataFrame:
        """The runs as a DataFrame, indexed by run key (`Project.runs()`)."""
        from .frames import table

        return table(self.rows, index="run", columns=("run", "number", "experiment", "state"))

    def _caption(self) -> str:
        n = len(self.rows)
        return f"{n} run{'s' if n != 1 else ''}" + (": " + ", ".join(f"{k} {s}" for s, k in self.counts.items())
                                                    if n else "")

    def _cells(self) -> list[list[str]]:
        def metrics(row: dict[str, object]) -> str:
            return "  ".join(f"{k[5:]}={format_significant(v)}" for k, v in row.items()
                             if k.startswith("last:") and isinstance(v, float))

        return [[str(r["number"]), str(r["run"]), str(r["state"]) + (" (orphaned)" if r["orphaned"] else ""),
                 str(r["cluster"]), format_duration(r["runtime_s"]) if isinstance(r["runtime_s"], float) else "",
                 "" if r["step"] is None else str(r["step"]), metrics(r), str(r["reason"])] for r in self.rows]

    def __str__(self) -> str:
        return "\n".join([self._caption(), *("  ".join(row) for row in self._cells()), self.freshness])

    def _repr_html_(self) -> str:
        return html_table(("#", "run", "state", "cluster", "runtime", "step", "metrics", "reason"), self._cells(),
                          caption=self._caption(), notes=[self.freshness])


class Project:
    """An experiments workbook and the runs nero keeps for it, from Python.

    `workbook` is the workbook or a folder holding `experiments.xlsx` (as the command
    line's WORKBOOK); `clock` (seconds since the epoch) is the time the project takes as
    now (default: the system's). Close it (or use `with`) to close the state store.

        >>> with Project("demo") as project:
        ...     project.reconcile(until_done=True)
        ...     best = project.runs("completed")["best:val_loss"].min()
    """

    def __init__(self, workbook: str | Path = "experiments.xlsx", *, clock: Callable[[], float] | None = None) -> None:
        path = Path(workbook).expanduser()
        if path.is_dir():
            path = path / "experiments.xlsx"
        if not path.exists():
            raise NeroError(f"no experiments workbook at {path}; Project.init(folder) creates one "
                            "(as `nero init`), or pass the workbook's path")
        self.core = facade.Project(path, clock=clock or time.time)
        """The facade the command line uses (`orchestrator.project.Project`): records, selections, histories."""

    @classmethod
    def init(cls, directory: str | Path = ".", *, force: bool = False,
             clock: Callable[[], float] | None = None) -> Project:
        """`nero init DIRECTORY`: create `experiments.xlsx` (the example workbook) and
        `train.py` (its training program) in `directory`, and open the project. NeroError
        if either exists, unless `force`.

            >>> project = Project.init("demo")
        """
        wb, _ = operations.create(directory, force)
        return cls(wb, clock=clock)

    def close(self) -> None:
        """Close the state store and every cluster connection."""
        self.core.close()

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Project({str(self.core.workbook_path)!r})"

    # ------------------------------------------------------------ the workbook
    @property
    def workbook_path(self) -> Path:
        """The experiments workbook (absolute)."""
        return self.core.workbook_path

    @property
    def directory(self) -> Path:
        """The project's folder: the workbook's."""
        return self.core.directory

    @property
    def results_path(self) -> Path:
        """The results workbook nero keeps up to date (Settings `results`, else results.xlsx
        beside the workbook); it exists once a pass wrote it."""
        self._load()
        return self.core.results_path()

    def _load(self) -> None:
        """Read the workbook if it changed (WorkbookError if it does not read); its warnings as NeroWarnings."""
        for w in self.core.load():
            _warn(w)

    # ------------------------------------------------------------ plan and reconcile
    def plan(self, *, prune: bool = False) -> PlanView:
        """`nero plan`: what a reconcile pass would do now, and why; nothing is started or
        stopped. `prune`: cancel runs whose rows were removed (`--prune`).

            >>> project.plan()            # a table in Jupyter: + submit demo[lr=0.01,layers=0] new run → local …
            >>> project.plan().to_dict()  # nero plan --json
        """
        self._load()
        fresh = self.core.freshness()
        return PlanView(self.core.plan(prune=prune), fresh, self.core.clock(), tuple(self.core.next_batches()))

    def reconcile(self, *, until_done: bool = False, watch: bool = False, interval: float | None = None,
                  prune: bool = False, yes: bool = False, verbose: bool = False) -> loop.Outcome:
        """`nero reconcile`: one pass (submit, restart, cancel, collect metrics, apply the
        rules, write results.xlsx), or with `until_done` passes every `interval` seconds
        (Settings `interval`, else 30; sooner while local runs end) until nothing is pending
        or running; `watch` keeps going until interrupted (KeyboardInterrupt: the jobs go
        on). Changes that throw work away wait for `apply` unless `yes`. `verbose` prints
        a line per event, as the command does. Returns the `loop.Outcome`: `summary`
        (`runs: 3 completed, 3 terminated, 3 held; …`), `ok` (no run failed, was lost,
        timed out or preempted: the command's exit 0), `not_completed`, `report`.
        ReconcileRunning if another reconcile holds the project's lock.

            >>> done = project.reconcile(until_done=True, interval=2)
            >>> done.ok, done.summary
        """
        self._load()
        return loop.reconcile(self.core, until_done=until_done, watch=watch, interval=interval, prune=prune,
                              yes=yes, observer=_Told(verbose))

    def apply(self, plan_id: str = "", *, prune: bool = False) -> operations.Confirmed:
        """`nero apply [ID]`: confirm the changes awaiting confirmation (exactly those of the
        plan `plan_id`, as `plan().fingerprint` names it; PlanChanged, saying what changed,
        if the plan is another now) and apply them: a pass now, unless a watching reconcile
        applies them in its next. Returns `operations.Confirmed` (`confirmed`: the changes)."""
        self._load()
        return operations.confirm_plan(self.core, plan_id, prune)

    # ------------------------------------------------------------ runs and metrics
    def _rows(self, selector: str | None) -> tuple[list[dict[str, object]], str]:
        """The runs as `nero status --json` lists them, flattened (`views.flat_row`), and the freshness line."""
        core = self.core
        fresh = core.freshness()
        records = ([c.record for c in operations.select(core, selector, warn=_warn) if c.record] if selector
                   else core.runs())
        rows = [flat_row(row, r) for row, r in zip(operations.run_rows(core, records, fresh), records, strict=True)]
        return rows, freshness_line(fresh, core.clock())

    def runs(self, selector: str | None = None) -> DataFrame:
        """`nero status --json` as a DataFrame: one row per run nero started (of those
        `selector` matches), indexed by run key, by run number: `number`, `experiment`, the
        parameters, then the fields of `nero status --json` (`state`, `cluster`, `attempt`,
        `job_id`, `host`, `runtime_s`, `reason`, `step`, `run_dir`, …, `as_of`) with the
        metrics as columns: `last:<metric>`, `best:<metric>` and `<metric>@<checkpoint>`
        (the values every surface shows, `orchestrator.shown`). As `nero status`, the local
        cluster's live runs are read first when no reconcile is running.

            >>> project.runs("completed").sort_values("best:val_loss").head(3)
            >>> project.runs("lr > 0.01 and not failed")
        """
        rows, _ = self._rows(selector)
        from .frames import table

        return table(rows, index="run", columns=("run", "number", "experiment", "state"))

    def status(self, selector: str | None = None) -> StatusView:
        """`nero status`: the runs (of those `selector` matches) with the counts by state and
        how fresh they are; a table in Jupyter, `frame()` the DataFrame of `runs()`."""
        rows, line = self._rows(selector)
        return StatusView(tuple(rows), line)

    def metrics(self, selector: str | None = None, names: str | Iterable[str] | None = None) -> DataFrame:
        """Every metric point of every attempt (the current one and those before a restart or
        a retry) of the runs `selector` matches, long format: `run`, `attempt`, `metric`,
        `step`, `value` (as `nero export`'s metrics file), by run number, then attempt.
        `names` keeps only those metrics; a name that is no known metric raises
        ExpressionError with the closest ones.

            >>> m = project.metrics("demo*", "val_loss")
            >>> m[m.attempt == 1].pivot_table(index="step", columns="run", values="value")
        """
        from .frames import metrics_frame

        core = self.core
        wanted = [names] if isinstance(names, str) else None if names is None else list(names)
        runs = None
        if selector is not None:
            runs = [c.record for c in operations.select(core, selector, warn=_warn) if c.record]
        histories = core.attempt_histories(runs)  # of the selected runs alone
        if wanted is not None:
            self._check_metrics(wanted, histories)
        return metrics_frame({at: {m: p for m, p in h.items() if wanted is None or m in wanted}
                              for at, h in histories.items()})

    def _check_metrics(self, wanted: Sequence[str], histories: dict) -> None:
        from .metrics import unknown_metric

        known = self.core.metric_names() | {m for h in histories.values() for m in h}
        problems = [unknown_metric(n, known) for n in wanted if n not in known]
        if problems:
            raise ExpressionError(", ".join(wanted), "; ".join(problems))

    def history(self, selector: str = "all", *, last: int = 0, who: str | None = None) -> DataFrame:
        """`nero history --json` as a DataFrame: the events (submissions, starts, ends with
        reasons, rules, manual actions) of the runs `selector` matches, oldest first (the
        `last` ones if given): `time` (seconds since the epoch), `run`, `attempt`, `event`,
        `reason`, `who` (the OS user who submitted the attempt); `who=NAME`: only the events of
        attempts NAME submitted.

            >>> project.history("terminated")
        """
        from .frames import table

        _, _, rows = operations.history_rows(self.core, selector, last, warn=_warn, who=who)
        return table(rows, columns=("time", "run", "attempt", "event", "reason", "who"))

    def optimisations(self) -> list[Optimisation]:
        """The adaptive rows' searches (a `search` cell), as `nero status`, the digest and the
        Optimisation sheet show them: each row's trials in order with the best so far
        (`.trials`), its best trial (`.best`: `.value`, `.params`), the budget, and Optuna's
        parameter importances where it gives them (`.importances`).

            >>> best = project.optimisations()[0].best
            >>> best.value, dict(best.params)
        """
        self._load()
        return self.core.optimisations(importances=True)

    def trials(self, experiment: str | None = None) -> DataFrame:
        """The trials of the adaptive rows (of `experiment` only, if given), one row each:
        `experiment`, `trial`, `run`, `state`, `value`, `best_so_far`, then the parameters."""
        from .frames import table

        rows = [trial_row(o, t) for o in self.optimisations() if experiment in (None, o.experiment) for t in o.trials]
        return table(rows, columns=("experiment", "trial", "run", "state", "value", "best_so_far"))

    def config(self) -> DataFrame:
        """`nero config --json` as a DataFrame: every setting in force for this project,
        with where it came from (`layer`: environment, project, user, default; `from`: the
        variable, the cell such as Settings!B4, the user file and line).

            >>> project.config().loc["mail.smtp_host"]
        """
        from .frames import table
        from .layers import setting_rows

        self._load()
        wb = self.core.workbook
        assert wb is not None and wb.effective is not None
        return table([r.to_dict() for r in setting_rows(wb.effective)], index="key",
                     columns=("key", "value", "layer", "from"))

    def plot(self, selector: str, metric: str, path: str | Path | None = None, *, attempts: bool = False) -> Drawn:
        """`nero plot SELECTOR METRIC`: `metric` over steps of the started runs `selector`
        matches, one line per run, to a PNG (`path`, default `<metric>.png` beside the
        workbook); `attempts` draws their earlier attempts too, dashed. Returns what was
        drawn (`.path`, `.current`, `.earlier`); NoRunMatches when no started run matches.

            >>> from IPython.display import Image
            >>> Image(project.plot("demo*", "val_loss").path)
        """
        drawn, _ = operations.plot(self.core, selector, metric, path, attempts, warn=_warn)
        return drawn

    def export(self, path: str | Path) -> operations.Exported:
        """`nero export -o PATH`: every run, every metric point of every attempt and the
        earlier attempts to .csv (three files), .json (one) or .parquet (three). Returns the
        files written (`.paths`) and how many runs, attempts and points."""
        return operations.export(self.core, path)

    # ------------------------------------------------------------ manual overrides
    def _override(self, verb: str, selector: str, yes: bool, reason: str, resume: bool = False) -> operations.Manual:
        return operations.override(self.core, verb, selector, lambda found: yes,
                                   reason=reason or f"Project.{verb}({selector!r})", resume=resume, warn=_warn)

    def abort(self, selector: str, *, yes: bool = False, reason: str = "") -> operations.Manual:
        """`nero abort SELECTOR`: cancel the matching runs (and keep the matching runs not
        started from starting) until their rows change. As the command asks first, nothing
        is done without `yes=True`: the result then lists the runs that match (`matched`,
        a table in Jupyter) with `done` False. Once recorded, a pass applies it right away
        unless a watching reconcile will (`applied`). `reason` goes into the runs' events.

            >>> project.abort("runtime > 1h and loss > 0.5")            # which runs? nothing done
            >>> project.abort("runtime > 1h and loss > 0.5", yes=True)  # done
        """
        return self._override("abort", selector, yes, reason)

    def restart(self, selector: str, *, yes: bool = False, reason: str = "", resume: bool = False
                ) -> operations.Manual:
        """`nero restart SELECTOR`: a new attempt of the matching runs (cancelling those still
        running); `resume` starts it with NERO_RESUME=1 and NERO_PREV_RUN_DIR set. Nothing is
        done without `yes=True` (see `abort`)."""
        return self._override("restart", selector, yes, reason, resume)

    def hold(self, selector: str, *, yes: bool = False, reason: str = "") -> operations.Manual:
        """`nero hold SELECTOR`: keep the matching runs from starting (running ones go on)
        until `release` or until their rows change. Nothing is done without `yes=True`."""
        return self._override("hold", selector, yes, reason)

    def release(self, selector: str, *, yes: bool = False, reason: str = "") -> operations.Manual:
        """`nero release SELECTOR`: undo `hold` and `abort` for the matching runs (only runs an
        override holds count). Nothing is done without `yes=True`."""
        return self._override("release", selector, yes, reason)
