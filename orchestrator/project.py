"""A nero project as one object: the door through which commands reach a project's state.

`Project(workbook)` opens what nero keeps beside an experiments workbook (`.nero/`, the
state store) without reading the workbook; `load()` reads it. A project answers what the
commands ask (its runs with their numbers, the runs a selector matches, the event
timeline, the manual overrides, the e-mail outbox) and does what they do (plan,
reconcile, abort, restart, hold, release), so no command touches the state store.

    from orchestrator.project import Project

    with Project("experiments.xlsx") as project:
        project.load()
        for run in project.runs("failed"):
            print(run.number, run.key, run.reason)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ExpressionError, NeroError
from .model import Cluster, ClusterResources, Freshness, NextBatch, Optimisation
from .optimise import next_batches
from .paths import ProjectPaths
from .sharing import MountTable, state_left_behind

if TYPE_CHECKING:
    from .backends import Backend
    from .expr import Facts, Selector
    from .mail import DigestRuns, Mailer
    from .metrics import Summary
    from .model import (
        Event,
        Override,
        OverrideKind,
        Plan,
        ResultsInput,
        RunRecord,
        RunSpec,
        Series,
        Workbook,
    )
    from .reconcile import PassReport, Reread
    from .state import Mail
    from .state.tally import Tally

__all__ = ["Candidate", "LOCK_WAIT_S", "Overridden", "Project"]

LOCK_WAIT_S = 2.0  # a reconcile waits this long for the lock: `nero status` reading local runs holds it briefly


@dataclass(frozen=True)
class Candidate:
    """A run a selector matched: a run nero started (`record`), or one the workbook asks
    for that never started (`spec`); `facts` are what the selector was evaluated on."""

    key: str
    facts: Facts
    record: RunRecord | None = None
    spec: RunSpec | None = None


@dataclass(frozen=True)
class Overridden:
    """What `abort`, `restart` or `hold` recorded: the runs it now applies to, and the
    runs skipped because their rows are no longer in the workbook."""

    keys: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class Project:
    """An experiments workbook and the state nero keeps beside it.

    `clock` (seconds since the epoch) is the time every query and action of this project
    takes as now: run times, the time stamps of events and overrides, a pass's clock.
    `mounts`: the mount table its state folder is checked against (`sharing.MountTable`;
    a state folder on a network file system raises NetworkStateError)."""

    def __init__(self, workbook: str | Path, *, clock: Callable[[], float] = time.time,
                 mounts: MountTable | None = None) -> None:
        from .reconcile import Reconciler

        self._rec = Reconciler(workbook, clock=clock, mounts=mounts)
        self.clock = clock

    @staticmethod
    def has_state(workbook: str | Path) -> bool:
        """Whether nero keeps state for this workbook (a reconcile ran), without creating it."""
        from .reconcile import paths_of

        paths = paths_of(Path(workbook).resolve().parent)
        return paths.state_db.exists() or state_left_behind(paths) is not None  # (opening it then says how to move it)

    def close(self) -> None:
        """Close the state store and every cluster connection."""
        self._rec.close()

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ the workbook
    @property
    def workbook_path(self) -> Path:
        """The experiments workbook (absolute)."""
        return self._rec.workbook_path

    @property
    def directory(self) -> Path:
        """The project's folder: the workbook's."""
        return self._rec.project_dir

    @property
    def paths(self) -> ProjectPaths:
        """The files nero keeps for this project."""
        from .reconcile import paths_of

        return paths_of(self.directory)

    @property
    def workbook(self) -> Workbook | None:
        """The workbook as last read by `load()`; None before."""
        return self._rec.workbook

    def load(self, keep_last_good: bool = False, settle_s: float = 0.0, check: bool = True) -> list[str]:
        """Read the workbook if it changed since the last read (and, with `settle_s`, has
        not changed for that long since); returns warnings. Raises WorkbookError unless
        `keep_last_good` and a good workbook was read before. `check=False`: read, not
        checked against the runs (`Reconciler.load`), for what only shows values."""
        return self._rec.load(keep_last_good=keep_last_good, settle_s=settle_s, check=check)

    # ------------------------------------------------------------ clusters
    def backend(self, cluster: str) -> Backend:
        """The backend of a cluster (any kind: every one offers the same operations). The
        local cluster needs no workbook; another loads it if it was not read yet."""
        if cluster in ("", "local") and (self.workbook is None or "local" not in
                                         {c.name for c in self.workbook.clusters}):
            from .backends import make_backend

            return make_backend(Cluster(name="local"), str(self.directory))
        if self.workbook is None:
            self.load()
        return self._rec.backend(cluster)

    def resources(self, cluster: str | None = None) -> list[ClusterResources]:
        """What each cluster (or the one named) has free, one round trip each; a cluster
        that cannot be asked comes back with its `error` set."""
        if self.workbook is None:
            self.load()
        assert self.workbook is not None
        names = [c.name for c in self.workbook.clusters]
        if cluster and cluster not in names:
            raise NeroError(f"no cluster {cluster!r}; clusters defined: {', '.join(names)}")
        found = []
        for name in [cluster] if cluster else names:
            try:
                found.append(self.backend(name).resources())
            except NeroError as e:
                c = self.workbook.cluster(name)
                found.append(ClusterResources(cluster=name, kind=c.kind.value, host=c.host, error=str(e)))
        return found

    def live_counts(self) -> dict[str, int]:
        """How many of nero's runs are live (or being submitted) per cluster."""
        from .state.tally import live_clusters

        return live_clusters(self._rec.store)

    # ------------------------------------------------------------ plan and reconcile
    def plan(self, prune: bool = False) -> Plan:
        """What a reconcile pass would do now, and why (nothing is touched but the memory of
        the awaiting changes it shows, for `nero apply ID`)."""
        return self._rec.plan(prune=prune)

    def release_plan(self) -> None:
        """Forget what the last plan kept for the next one (`Reconciler.release_plan`), before
        a one-shot command reads every run: at 100,000 runs right after a workbook edit the
        digest peaked at 267 MiB holding both, 156 MiB after."""
        self._rec.release_plan()

    def reconcile(self, prune: bool = False, yes: bool = False) -> PassReport:
        """One reconcile pass: submit, restart, cancel, collect metrics, apply the rules;
        changes that throw work away wait for `confirm` (orchestrator.confirm) unless `yes`."""
        return self._rec.run_pass(prune=prune, yes=yes)

    def optimisations(self, importances: bool = False) -> list[Optimisation]:
        """The Optimisation of each adaptive row (best so far, trials in order; Optuna's
        parameter importances with `importances`); [] without trials or a readable workbook."""
        if not self._rec.searcher().trials():
            return []
        try:
            if self.workbook is None:
                self.load()
        except NeroError:
            return []
        assert self.workbook is not None
        return self._rec.searcher().optimisations(self.workbook, importances)

    def next_batches(self) -> list[NextBatch]:
        """What each adaptive row would ask for now (`nero plan`): trials, budget left, next batch."""
        assert self.workbook is not None
        if not any(e.search is not None for e in self.workbook.experiments):
            return []  # nothing read, no cluster asked for its slots
        rec = self._rec
        return next_batches(self.workbook, rec.specs, rec.searcher().trials(), rec.store.snapshot(), rec.capacity())

    def confirm(self, plan: Plan) -> list[str]:
        """Confirm exactly the changes `plan` shows awaiting; the next pass applies them."""
        return self._rec.confirm(plan)

    def shown_plan(self, fingerprint: str) -> list[str] | None:
        """What the plan `fingerprint` listed as awaiting, if such a plan was shown."""
        return self._rec.store.shown_plan(fingerprint)

    def reread(self) -> Reread | None:
        """The workbook's re-read by the last `load`, once (None if it was not re-read)."""
        found, self._rec.reread = self._rec.reread, None
        return found

    def outstanding(self, plan: Plan) -> int:
        """Runs still pending or live under `plan` (held runs do not count)."""
        return self._rec.outstanding(plan)

    @contextmanager
    def exclusive(self, doing: str = "") -> Iterator[bool]:
        """The project's reconcile lock (one reconciling process at a time), held while the
        block runs if no other process holds it; yields whether this one got it. A reader
        (no `doing`) never waits; a reconcile waits LOCK_WAIT_S for a reader to let go.
        With `doing` ("watching", "one pass"…) the holder writes its pid and that beside the
        lock (`reconcile.pid`, read by `freshness`); a pid file left by a killed holder is
        removed by the next one. DiskError when the lock file cannot be created (read-only
        or full disk)."""
        import os

        from filelock import FileLock, Timeout

        from .files import disk_error, write_atomically

        path, pid_file = self.paths.reconcile_lock, self.paths.reconcile_pid
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=LOCK_WAIT_S if doing else 0)
        except Timeout:
            yield False
            return
        except OSError as e:  # a read-only or full disk: say so, with what to do
            raise disk_error(path, e) or NeroError(f"cannot take the reconcile lock {path}: {e}") from e
        try:
            with suppress(OSError, NeroError):  # who holds it is information, never a reason to stop
                pid_file.unlink(missing_ok=True)
                if doing:
                    write_atomically(pid_file, f"{os.getpid()} {doing}\n", durable=False)
            yield True
        finally:
            with suppress(OSError):
                if doing:
                    pid_file.unlink(missing_ok=True)
            lock.release()

    def freshness(self) -> Freshness:
        """How fresh the store's picture is. With no reconcile running, the live runs of the
        local cluster are read first (their run folders: states, ends, metrics recorded as a
        pass's poll would; nothing is submitted, cancelled or written besides), under the
        reconcile lock taken without waiting; if a reconcile holds it, nothing is touched."""
        last, note = self._rec.store.last_pass(), ""
        try:
            self.load()  # before the lock, which is then held for the poll alone
        except NeroError as e:
            note = str(e).splitlines()[0]
        try:
            with self.exclusive() as held:
                if not held:
                    try:
                        pid, _, doing = self.paths.reconcile_pid.read_text().strip().partition(" ")
                        return Freshness(last, True, int(pid), doing)
                    except (OSError, ValueError):
                        return Freshness(last, True)
                keys = [] if note else self._rec.refresh_local()
        except NeroError as e:
            return Freshness(last, False, note=str(e).splitlines()[0])
        from .state.tally import records_of

        ended = {r.key for r in records_of(self._rec.store, keys) if r.state.finished} if keys else set()
        return Freshness(last, False, refreshed=tuple(keys), note=note, ended=tuple(k for k in keys if k in ended))

    def apply_now(self, prune: bool = False) -> PassReport | None:
        """Run a pass right away (re-reading the workbook) unless a watching reconcile holds
        the lock, which applies what changed in its next pass: the pass's report, or None
        when the lock is held. Raises NeroError when the pass fails."""
        with self.exclusive("one pass") as held:
            if not held:
                return None
            self.load()
            return self.reconcile(prune=prune)

    # ------------------------------------------------------------ results
    def results_path(self) -> Path:
        """The results workbook (Settings `results`, else results.xlsx beside the workbook)."""
        return self._rec.results_path()

    def results_input(self, plan: Plan | None = None) -> ResultsInput:
        """Everything the results workbook and the digest show, as of now, every run held
        (`digest_input` reads them a batch at a time)."""
        return self._rec.results_input(plan)

    def digest_input(self, plan: Plan | None = None) -> tuple[ResultsInput, DigestRuns]:
        """What the e-mail digest shows, as of now: the input without its runs, and where the
        digest reads them, a batch at a time (and an experiment's runs when it plots them):
        100,000 runs are never held whole."""
        from .mail import DigestRuns
        from .state.tally import experiment_records, histories_of, history_batches

        store = self._rec.store

        def experiment(name: str) -> Iterator[tuple[list[RunRecord], dict[str, Any]]]:
            runs = sorted(experiment_records(store, [name]).values(), key=lambda r: r.number)
            for i in range(0, len(runs), 2_000):  # the histories of a batch at a time
                yield runs[i:i + 2_000], histories_of(store, runs[i:i + 2_000])

        # the events since the last digest, what it tells of (100,000 events held 28 MiB)
        return self._rec.digest_head(plan, self.last_digest()), DigestRuns(lambda: history_batches(store), experiment)

    def write_results(self, plan: Plan | None = None, charts: bool | None = None) -> bool:
        """Rewrite the results workbook if what it shows changed (`charts=True`: fresh curves)."""
        return self._rec.write_results(plan, charts=charts)

    # ------------------------------------------------------------ runs
    def runs(self, selector: str | Selector | None = None) -> list[RunRecord]:
        """The runs nero started, by number; with a selector only those it matches."""
        if selector is not None:
            return [c.record for c in self.select(selector) if c.record is not None]
        return sorted(self._rec.store.snapshot().values(), key=lambda r: r.number)

    def run_batches(self, size: int = 2_000) -> Iterator[list[RunRecord]]:
        """The runs nero started, by number, `size` at a time: a listing of every run holds
        one batch, not every run (`status all`, `--json`, `--csv`)."""
        from .state.tally import record_batches

        return record_batches(self._rec.store, size)

    def shown_names(self) -> list[str]:
        """The metrics the runs' current attempts have (a last or best value, or a point), sorted."""
        from .state.tally import shown_names

        return shown_names(self._rec.store)

    def run_count(self) -> int:
        """How many runs nero started (without reading them)."""
        from .state.tally import run_count

        return run_count(self._rec.store)

    def who_submitted(self) -> tuple[str, ...]:
        """The OS users who submitted the project's attempts, sorted (`shown.who_shown`
        decides from them whether the tables show a `who` column)."""
        from .state.tally import who_submitted

        return who_submitted(self._rec.store)

    def submitters(self) -> dict[tuple[str, int], str]:
        """Who submitted each attempt: (run key, attempt) → OS user."""
        from .state.tally import submitters

        return submitters(self._rec.store)

    def tally(self, metric: str = "", shown: int = 10, attention: tuple[str, ...] = ()) -> Tally:
        """Every run counted by state and experiment, and the few runs a summary shows: the
        `shown` latest changed of those in `attention` states or orphaned, the latest changed,
        the best by `metric` (else the first metric any run recorded; its goal the workbook's,
        "min" when it was not read); answered in SQL, see `orchestrator.state.tally`."""
        from .state.tally import tally

        wb = self.workbook
        return tally(self._rec.store, metric, wb.goal if wb else (lambda m: "min"), shown, attention)

    def select(self, selector: str | Selector) -> list[Candidate]:
        """The runs a selector (`nero abort --help` has the forms) matches: runs nero started,
        by number, then the runs the loaded workbook asks for that never started. Raises
        ExpressionError for a selector that does not parse, or that names something that is
        no known metric (a Metrics row or one a run produced), no parameter and no built-in
        name (`runtime`, `step`, `state`, …): a misspelt name is an error, never an empty
        selection."""
        from .expr import Facts, parse_selector
        from .state.tally import histories_of, record_batches

        if isinstance(selector, str):
            selector = parse_selector(selector)
        store, wb = self._rec.store, self._rec.workbook
        now = self.clock()
        goals = wb.goals if wb else {}
        seen = _Seen()  # what the names are checked against, gathered as the runs go by
        out = []
        for batch in record_batches(store):  # a batch of runs at a time (100,000 held 150 MiB, their histories more)
            histories = histories_of(store, batch) if selector.names() else {}
            seen.add(batch, histories)
            for r in batch:
                facts = Facts.of(r, now, histories.get(r.key), goals)
                if selector.matches(facts):
                    out.append(Candidate(r.key, facts, record=r))
        self._check_names(selector, seen)  # before anything is returned, so nothing is acted on
        for spec in self._rec.specs:
            if spec.key in seen.keys:
                continue
            facts = Facts(key=spec.key, number=0, experiment=spec.experiment, state="pending",
                          cluster=spec.clusters[0] if spec.clusters else "", params=dict(spec.params))
            if selector.matches(facts):
                out.append(Candidate(spec.key, facts, spec=spec))
        return out

    def _check_names(self, selector: Selector, seen: _Seen) -> None:
        """A selector naming no known metric (a Metrics row or one a run produced), no
        parameter and no built-in name is a mistake, not an empty selection; so is a plain
        word (`loss`, read as an experiment id) that is such a name: ExpressionError, with
        the fix (for a word that is both an id and a name too: never guessed)."""
        asked, ids = selector.names(), selector.ids()
        if not asked and not ids:
            return
        from .expr import BUILTIN_NAMES
        from .metrics import unknown_metric

        known = self.metric_names() | seen.metrics
        params = seen.params | {str(p) for s in self._rec.specs for p, _ in s.params}
        problems = [unknown_metric(n, known, params) for n in sorted(asked - known - params)]
        experiments = seen.experiments | {s.experiment for s in self._rec.specs}
        experiments |= seen.keys | {s.key for s in self._rec.specs}
        for word in sorted(ids & (known | params | BUILTIN_NAMES)):
            what = ("a metric" if word in known else "a parameter" if word in params else "a built-in name")
            if word in experiments:
                problems.append(f"{word!r} is both an experiment id and {what}; write \"id == '{word}'\" for "
                                f"the experiment's runs, or compare the value, e.g. '{word} > 0'")
            else:
                problems.append(f"{word!r} is {what}, not an experiment id: a word on its own selects an "
                                f"experiment's runs; compare the value, e.g. '{word} > 0'")
        if problems:
            raise ExpressionError(selector.source, "; ".join(problems))

    def metric_names(self) -> set[str]:
        """The known metrics: the Metrics rows' and those the runs' current attempts produced."""
        return self._rec.metric_names()

    def histories(self, runs: Iterable[RunRecord] | None = None) -> dict[str, dict[str, Series]]:
        """Every run's metric histories (its current attempt): run key → metric → points; of
        `runs` alone if given (read for them, not every run)."""
        if runs is not None:
            from .state.tally import histories_of

            return histories_of(self._rec.store, runs)
        return self._rec.store.histories()

    def earlier_attempts(self, keys: Iterable[str] | None = None) -> list[RunRecord]:
        """The attempts before each run's current one (restarted after a row edit or by
        `restart`, or retried), by run number then attempt; of the runs `keys` if given."""
        found = self._rec.store.earlier_attempts()
        if keys is None:
            return found
        wanted = set(keys)
        return [r for r in found if r.key in wanted]

    def earlier_histories(self) -> dict[tuple[str, int], dict[str, Series]]:
        """The metric histories of `earlier_attempts()`: (run key, attempt) → metric → points."""
        return self._rec.store.earlier_histories()

    def attempt_histories(self, runs: Iterable[RunRecord] | None = None) -> dict[tuple[str, int], dict[str, Series]]:
        """Every attempt's metric histories, earlier and current, by run number then attempt:
        (run key, attempt) → metric → points (attempts without a point left out); of `runs`
        alone if given (`tally.attempt_histories_of`, read a batch of runs at a time)."""
        from .state.tally import attempt_histories_of

        out: dict[tuple[str, int], dict[str, Series]] = {}
        for batch in self.run_batches() if runs is None else [sorted(runs, key=lambda r: r.number)]:
            out.update(attempt_histories_of(self._rec.store, batch))
        return out

    def checkpoints(self) -> tuple[int, ...]:
        """Settings `checkpoints`, ascending (the workbook is read if it was not; none when
        it does not read)."""
        return self._shown_settings()[1]

    def _shown_settings(self) -> tuple[dict[str, str], tuple[int, ...]]:
        if self.workbook is None:
            try:
                self.load(check=False)  # its goals and checkpoints: nothing is decided (after an edit: 100,000 runs)
            except NeroError:
                return {}, ()
        wb = self.workbook
        assert wb is not None
        return wb.goals, tuple(sorted({int(c) for c in wb.settings.checkpoints}))

    def metric_values(self, runs: Sequence[RunRecord] | None = None) -> dict[str, dict[str, Summary]]:
        """What every surface shows of each run's metrics (`orchestrator.shown`): run key →
        metric → (last, best, value at each of `checkpoints()`). Goals and checkpoints are the
        workbook's (read if it was not; defaults when it does not read)."""
        from .shown import run_values
        from .state.tally import histories_of

        goals, checkpoints = self._shown_settings()
        few = runs is not None and len(runs) <= 5_000  # their histories alone (a batch of a listing)
        histories = histories_of(self._rec.store, runs) if few else self.histories()
        return {r.key: run_values(r, histories.get(r.key), goals, checkpoints)
                for r in (self.runs() if runs is None else runs)}

    def attempt_values(self, attempts: Sequence[RunRecord]) -> dict[tuple[str, int], dict[str, Summary]]:
        """`metric_values` of earlier attempts (`earlier_attempts()`), by (run key, attempt)."""
        from .shown import run_values

        goals, checkpoints = self._shown_settings()
        histories = self.earlier_histories() if attempts else {}
        return {(a.key, a.attempt): run_values(a, histories.get((a.key, a.attempt)), goals, checkpoints)
                for a in attempts}

    def frames(self):
        """(runs, metrics) as pandas DataFrames (see `orchestrator.frames`): one row per run
        (its current attempt) with its parameters, state, timings and `last:`/`best:`/
        `metric@checkpoint` values (`metric_values`); one row per point of every attempt,
        with its `attempt`. The batches of `run_frames` and `metric_frames`, joined."""
        from .frames import concat

        with self.reading():
            return concat(self.run_frames()), concat(self.metric_frames())

    def reading(self):
        """A read transaction (a context): the reads inside it see one state of the store, as
        another process goes on writing (`frames`, `nero export`: the runs and their points
        agree). Read the workbook (`load`, `checkpoints`) before: it may write."""
        self.checkpoints()
        return self._rec.store.reading()

    def frame_columns(self):
        """The runs frame's columns and their types (`frames.Columns`), from every run: the
        parameters (`state.tally.param_kinds`), the metrics (`shown_names`) and the checkpoints."""
        from .frames import Columns, param_dtype
        from .state.tally import param_kinds

        total = self.run_count()
        params = tuple((name, param_dtype(kinds, n == total)) for name, kinds, n in param_kinds(self._rec.store))
        return Columns(params, tuple(self.shown_names()), self.checkpoints())

    def run_frames(self, size: int = 2_000) -> Iterator:
        """The runs frame (`frames.runs_frame`) `size` runs at a time (`run_batches`), every
        batch of the same columns and types (`frame_columns`): one empty frame when there
        is no run. Inside `reading()`, so the columns fixed first fit every batch."""
        from .frames import runs_frame

        columns, now, made = self.frame_columns(), self.clock(), False
        for batch in self.run_batches(size):
            made = True
            yield runs_frame(batch, now, self.metric_values(batch), columns)
        if not made:
            yield runs_frame([], now, {}, columns)

    def metric_frames(self, points: int = 50_000) -> Iterator:
        """The tidy metrics frame (`frames.metrics_frame`: run, attempt, metric, step, value)
        of every attempt of every run, by run number then attempt, about `points` points at
        a time (the histories of a batch of runs at most held besides): one empty frame when
        there is no point."""
        from .frames import metrics_frame

        chunk: dict[tuple[str, int], dict[str, Series]] = {}
        held, made = 0, False
        for batch in self.run_batches():
            for at, per in self.attempt_histories(batch).items():
                chunk[at] = per
                held += sum(len(s) for s in per.values())
                if held >= points:
                    made = True
                    yield metrics_frame(chunk)
                    chunk, held = {}, 0
        if chunk or not made:
            yield metrics_frame(chunk)

    def attempts_frame(self):
        """The earlier attempts as a pandas DataFrame (`orchestrator.frames.attempts_frame`):
        one row per attempt before a run's current one, with its state, timings and values."""
        from .frames import attempts_frame

        attempts = self.earlier_attempts()
        return attempts_frame(attempts, self.clock(), self.attempt_values(attempts), self.checkpoints())

    def events(self, key: str | None = None) -> list[Event]:
        """The event timeline, oldest first (of one run with `key`)."""
        return self._rec.store.events(key)

    # ------------------------------------------------------------ manual overrides
    def overrides(self) -> dict[str, Override]:
        """The manual overrides in force (hold, abort, restart), by run key."""
        return self._rec.store.overrides()

    def abort(self, runs: Sequence[Candidate], reason: str) -> Overridden:
        """Cancel these runs, and keep those not started from starting, until their rows change."""
        from .model import OverrideKind

        return self._override(OverrideKind.ABORT, runs, reason)

    def restart(self, runs: Sequence[Candidate], reason: str, resume: bool = False) -> Overridden:
        """Start a new attempt of these runs (cancelling live ones); `resume` starts it with
        NERO_RESUME=1 and NERO_PREV_RUN_DIR set."""
        from .model import OverrideKind

        return self._override(OverrideKind.RESTART, runs, reason, resume)

    def hold(self, runs: Sequence[Candidate], reason: str) -> Overridden:
        """Keep these runs from starting (running ones go on) until released or their rows change."""
        from .model import OverrideKind

        return self._override(OverrideKind.HOLD, runs, reason)

    def release(self, runs: Sequence[Candidate], reason: str) -> int:
        """Undo hold and abort for these runs; returns how many overrides were dropped."""
        events = self._events("release", runs, reason, self.clock())
        return self._rec.store.drop_overrides([c.key for c in runs], events=events)

    def _override(self, kind: OverrideKind, runs: Sequence[Candidate], reason: str,
                  resume: bool = False) -> Overridden:
        """Record `kind` for the runs still in the workbook, and an event for every run."""
        from .model import Override

        now = self.clock()
        events = self._events(kind.value, runs, reason, now)
        specs = {s.key: s for s in self._rec.specs}
        items, skipped = [], []
        for c in runs:
            spec = specs.get(c.key)
            if spec is None:
                skipped.append(c.key)
                continue
            items.append(Override(c.key, kind, spec.spec_hash, c.record.attempt if c.record else 0, now, resume))
        self._rec.store.set_overrides(items, events)
        return Overridden([o.key for o in items], skipped)

    @staticmethod
    def _events(kind: str, runs: Iterable[Candidate], reason: str, now: float) -> list[Event]:
        from .model import Event

        return [Event(now, c.key, kind, reason, c.record.attempt if c.record else 0) for c in runs]

    # ------------------------------------------------------------ e-mail
    def mailer(self) -> Mailer:
        """The project's e-mail: notices, digests, the outbox and its delivery."""
        from .mail import Mailer

        return Mailer.of(self._rec.store, self.directory)

    def messages(self, kind: str | None = None, limit: int | None = None,
                 newest_first: bool = False) -> list[Mail]:
        """The e-mail outbox in every status, oldest first (of one `kind`: notice, digest)."""
        from .mail import MAIL_STATUSES

        return self._rec.store.mail(MAIL_STATUSES, kind=kind, limit=limit, newest_first=newest_first)

    def last_digest(self) -> float | None:
        """When the last digest was built (seconds since the epoch); None if never."""
        from .mail import DIGEST_KEY

        raw = self._rec.store.get_meta(DIGEST_KEY)
        return float(raw) if raw else None


@dataclass
class _Seen:
    """What `Project.select` checks a selector's names against, gathered a batch of runs at
    a time: the metrics the runs' histories have, their parameters, experiments and keys."""

    metrics: set[str] = field(default_factory=set)
    params: set[str] = field(default_factory=set)
    experiments: set[str] = field(default_factory=set)
    keys: set[str] = field(default_factory=set)

    def add(self, runs: Iterable[RunRecord], histories: Mapping[str, Mapping[str, object]]) -> None:
        for r in runs:
            self.keys.add(r.key)
            self.experiments.add(r.experiment)
            self.params.update(str(p) for p, _ in r.params)
        for h in histories.values():
            self.metrics.update(h)

