"""One reconcile pass: the only module that wires the pure core to the adapters.

    recover intents → poll live runs (one call per cluster) → observe → commit
    → plan(specs, snapshot, capacity) → render every job → cancel → record intents → submit
    → commit → results workbook (only if something changed)

What a pass computes from the workbook and the store alone (the workbook as read, that its
jobs render, the plan when it gives no run a slot, the clusters it reaches, the results
workbook being current) is kept in the store's cache (`state/cache.py`) under a stamp of
every input (the workbook's bytes, nero's code and templates, the store's data version,
the confirmed changes), so a command over an unchanged project reads no run and expands
no spec: the specs are expanded on first use (`Reconciler.specs`).

The workbook is re-read only when its size or modification time changed; an invalid or
half-saved workbook keeps the last good specs while watching (and stops a single pass
with exit code 2 before anything is dispatched, cancelled or written). A workbook whose
commands or job scripts do not render (`preflight`) is an invalid one.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .backends import Backend, job_name, make_backend
from .confirm import APPLY_ALL, Gate, describe
from .errors import BackendError, ConfigError, NeroError, WorkbookError
from .jobs import params_json, shared_values
from .lifecycle import observe, recovery
from .metric_files import DEFAULT_GLOBS, globs_of
from .metrics import goals_of
from .model import (
    Action,
    ActionKind,
    Cluster,
    ClusterKind,
    CodeSnapshot,
    Desired,
    Event,
    Handle,
    JobScript,
    NewAttempt,
    Plan,
    Problem,
    ResultsInput,
    RunRecord,
    RunSpec,
    RunState,
    Update,
    Workbook,
)
from .optimise import Searcher, package_problems, stand_ins, trial_runs
from .paths import ClusterPaths, ProjectPaths
from .plan import finish
from .plan import plan as make_plan
from .replan import Kept, current, firsts, incremental, specs_of, to_render
from .sharing import MountTable, check_state_folder, current_user, project_paths
from .spec import expand
from .state import Store
from .state.cache import cached, data_version, file_digest, folder_stamp, keep
from .state.tally import (
    any_intent,
    changed_since,
    experiment_records,
    histories_of,
    history_batches,
    live_clusters,
    live_records,
    metric_names,
    orphaned_keys,
    planning_records,
    records_of,
    run_count,
    who_submitted,
)
from .units import format_megabytes

if TYPE_CHECKING:
    from .results import RunDigests

__all__ = ["PassReport", "Reconciler", "Reread", "ClusterWatch", "SETTLE_S", "paths_of", "state_path", "git_info"]

_Jobs = dict[str, list[tuple[JobScript, RunRecord | None]]]  # the jobs of a pass, by cluster


@dataclass
class PassReport:
    plan: Plan
    events: list[Event] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    changed: bool = False
    results_written: bool = False
    results_deferred: float = 0.0  # seconds until the results workbook is rewritten (RESULTS_DUTY), 0: not deferred


UNCONFIRMED_GRACE_S = 60.0  # above Slurm's and SGE's default message timeouts
PLAN_KEPT = 10_000  # the most actions a plan kept in the cache has (held runs, cancels, orphans)
SETTLE_S = 2.0  # the watch loop reads a saved workbook once its file has not changed for this long
# While runs are live, a results workbook of RESULTS_MANY runs or more that took
# RESULTS_SLOW_S or more to write is written again RESULTS_DUTY times that long after its
# last write at the earliest: a 100,000-run project (3-10 s a write) is not rewritten every
# pass, and the loop spends at most a tenth of its time on it. A smaller one is rewritten
# every pass, as before (however long a loaded machine takes); with no run live, and when a
# loop ends, it is always written at once.
RESULTS_DUTY = 10.0
RESULTS_SLOW_S = 1.0
RESULTS_MANY = 10_000
RESULTS_BUILT = "results_built"  # the store's meta key: "<time of the write> <seconds it took> <runs>"
# the store's meta key: the last metric point (rowid) when the results workbook was last
# written or found current. A point added since lengthens a history the file shows: the
# pass writes without first hashing the runs to learn whether it must (`write_results`).
RESULTS_POINTS = "results_points"
# the cache's name for each run's digest as the last pass that hashed every run found them
# (`results.RunDigests`, with the data version and last point they were read at): a pass
# whose changes touched at most RESULTS_RECHECK_MAX runs learns whether the results workbook
# still shows the store by digesting those runs alone (100,000 runs: ~1 ms a changed run,
# not the 2.5 s every run costs)
RESULTS_DIGESTS = "results_digests"
RESULTS_RECHECK_MAX = 5_000


@dataclass(frozen=True)
class Reread:
    """A re-read of the workbook while watching: when it was saved, and how many of its
    Experiments rows changed (added, removed or edited)."""

    saved_at: float
    rows_changed: int


def _reread(before: Workbook, after: Workbook, stamp: tuple[int, int] | None) -> Reread:
    """The re-read of `after` over `before`: when it was saved, how many rows changed."""
    old = {e.id: replace(e, row=0, cells=()) for e in before.experiments}
    new = {e.id: replace(e, row=0, cells=()) for e in after.experiments}
    changed = sum(old.get(i) != new.get(i) for i in old.keys() | new.keys())
    return Reread(stamp[0] / 1e9 if stamp else time.time(), changed)


def paths_of(project_dir: str | Path) -> ProjectPaths:
    """The one resolution of a project's files: its state folder under the state root the
    user set (`userconfig.state_root`: env `NERO_STATE_ROOT`, else the user file), else `.nero`."""
    from .userconfig import state_root

    return project_paths(project_dir, state_root()[0])


def state_path(workbook: Path, mounts: MountTable | None = None) -> Path:
    """The state store of the project whose workbook is `workbook` (`paths_of`), after
    `sharing.check_state_folder` found its folder safe (NetworkStateError if not)."""
    paths = paths_of(Path(workbook).resolve().parent)
    check_state_folder(paths, mounts)
    return paths.state_db


def git_info(workdir: str) -> tuple[str, bool]:
    try:
        head = subprocess.run(["git", "-C", workdir, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "", False
        dirty = subprocess.run(["git", "-C", workdir, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30)
        return head.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return "", False


class Reconciler:
    """Holds what lives across passes: the last good workbook, backends, the store."""

    def __init__(self, workbook: str | Path, store: Store | None = None,
                 backend_factory: Callable[[Cluster, str], Backend] = make_backend,
                 clock: Callable[[], float] = time.time, unconfirmed_grace_s: float = UNCONFIRMED_GRACE_S,
                 mounts: MountTable | None = None):
        self.workbook_path = Path(workbook).resolve()
        self.project_dir = self.workbook_path.parent
        self.store = store or Store(state_path(self.workbook_path, mounts))
        self.user = current_user()  # recorded as who submitted each attempt
        self.backend_factory = backend_factory
        self.clock = clock
        self.unconfirmed_grace_s = unconfirmed_grace_s  # see _recover
        self.workbook: Workbook | None = None
        self._specs: list[RunSpec] | None = []
        self._layers = ""  # the stamp of the user file and NERO_ variables last read (userconfig.Layers)
        self._key = ""  # the stamp of the workbook read, nero's code and the templates (see _workbook_key)
        self._stamp: tuple[int, int] | None = None
        self._checked = False  # the workbook last read was checked against the state (`load(check=False)` not)
        self._backends: dict[str, Backend] = {}
        self._results_fingerprint = ""
        self._results_runs = 0  # the runs the last results workbook written held (RESULTS_MANY)
        self._warned: tuple | None = None
        self._watching = False  # load(keep_last_good=True): a loop that keeps going on a bad workbook
        self._retry: dict[str, tuple[int, str]] = {}  # run key -> (retry number, reason) of the attempt being submitted
        self._commits = _Commits(())  # the git commit of each workdir the pass submits from (asked as it renders)
        self.reread: Reread | None = None  # the last re-read while watching (the loop says it)
        self._remembered = ""  # the fingerprint of the last plan kept for `nero apply ID`
        self._planning: tuple[str, dict[str, RunRecord]] | None = None  # (data version, planning_records)
        self._searcher: Searcher | None = None
        self._kept: tuple[tuple[str, str], Kept] | None = None  # ((workbook stamp, data version), decisions)

    # ------------------------------------------------------------ workbook
    def load(self, keep_last_good: bool = False, settle_s: float = 0.0, check: bool = True) -> list[str]:
        """Re-read the workbook if it changed. Returns warnings; raises WorkbookError
        unless `keep_last_good` and a good workbook was read before. With `settle_s` (the
        watch loop: SETTLE_S) a changed workbook is read only once its file has not changed
        for that long, so saves in quick succession are read (and applied) once; with
        `keep_last_good`, `reread` says what a re-read found. `check=False` reads it without
        checking it against the state (no run is decided or rendered, no warning given):
        what shows values reads of it, its goals and checkpoints; a later `load()` checks it."""
        from .sheet import lock_file, read_workbook
        from .userconfig import read_layers

        warnings: list[str] = []
        self._watching = keep_last_good
        try:
            layers = read_layers()  # the user file and NERO_ variables around the workbook
        except ConfigError as e:
            if keep_last_good and self.workbook is not None:
                return self._once(("config", str(e)), f"{e}\n  keeping the last good plan; fix the file and save it")
            raise
        same_layers, self._layers = layers.stamp == self._layers, layers.stamp
        try:
            st = self.workbook_path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if (stamp is not None and stamp == self._stamp and same_layers and self.workbook is not None
                and (self._checked or not check)):
            return warnings
        lock = lock_file(self.workbook_path)
        if lock is not None and keep_last_good and self.workbook is not None:
            return self._once(("lock", stamp), f"{self.workbook_path.name} is open in a spreadsheet program ({lock.name}); "
                              "keeping the last good plan until it is saved and closed")
        if settle_s and self.workbook is not None and stamp and time.time() - stamp[0] / 1e9 < settle_s:
            return warnings  # just saved: read it once it settles
        before = self.workbook
        try:
            key = self._workbook_key()
            wb = cached(self.store, "workbook", key)
            if not isinstance(wb, Workbook):
                wb = read_workbook(self.workbook_path, layers.user, layers.env)
                if key and key == self._workbook_key():  # the file did not change while it was read
                    keep(self.store, "workbook", key, wb)
            version = data_version(self.store)
            checked = f"{key}|{version}" if key and version else ""
            found = cached(self.store, "checked", checked) if check else []
            specs = None
            if not isinstance(found, list):  # not checked against this state yet
                found = None
                if key and incremental(wb):  # only the runs not rendered yet under this workbook
                    specs = self._check(wb, key)
                else:
                    specs = expand(wb, self._trial_runs(wb))
                    self._preflight(wb, specs)
        except WorkbookError as e:
            if keep_last_good and self.workbook is not None:
                return self._once(("bad", stamp), f"{e}\n  keeping the last good plan; fix the workbook and save it")
            raise
        if lock is not None:
            warnings.append(f"{self.workbook_path.name} is open in a spreadsheet program ({lock.name}); using what is saved")
        self.workbook, self._specs, self._stamp, self._key, self._checked = wb, specs, stamp, key, check
        if keep_last_good and before is not None:
            self.reread = _reread(before, wb, stamp)
        if found is None:
            from .rules import name_warnings

            # what name_warnings reads of the rows: every run once expanded (a first plan), else each row's first
            named = firsts(wb) if incremental(wb) and self._specs is None else self.specs
            primary = wb.settings.primary_metric
            found = name_warnings(named, primary, self.metric_names() if primary or any(s.rules for s in named) else ())
            keep(self.store, "checked", checked, found)
        return warnings + found

    @property
    def specs(self) -> list[RunSpec]:
        """The runs the workbook asks for, expanded on first use (a command that finds its
        work in the cache never expands them)."""
        if self._specs is None:
            assert self.workbook is not None
            self._specs = expand(self.workbook, self._trial_runs(self.workbook))
        return self._specs

    def _trial_runs(self, wb: Workbook) -> dict:
        """The runs of the adaptive rows' trials (`optimise.trial_runs`); {} without such rows."""
        if not any(e.search is not None for e in wb.experiments):
            return {}
        return trial_runs(wb, self.searcher().trials())

    def searcher(self) -> Searcher:
        """The adaptive rows' studies (`optimise.Searcher`), opened on first use."""
        if self._searcher is None:
            self._searcher = Searcher(self.store, paths_of(self.project_dir).search_db)
        return self._searcher

    def _workbook_key(self) -> str:
        """The stamp of what reading and checking the workbook depends on besides the store:
        the workbook's bytes, nero's code and job templates, the project folder, the user
        file and NERO_ variables ("" when the workbook cannot be read)."""
        from .render import builtin_templates

        digest = file_digest(self.workbook_path)
        if not digest:
            return ""
        code = folder_stamp(Path(__file__).parent, suffixes=(".py",))
        templates = folder_stamp(builtin_templates(), self.project_dir / "templates", contents=True)
        return f"{digest}|{code}|{templates}|{self.project_dir}|{self._layers}"

    def _state_key(self, *more: object) -> str:
        """The stamp of what the loaded workbook and the store's data make (with `more`), ""
        when there is none (no workbook read, a store without its data version)."""
        version = data_version(self.store)
        if not (self._key and version):
            return ""
        return "|".join(map(str, (self._key, version, *more)))

    def _preflight(self, wb: Workbook, specs: list[RunSpec]) -> None:
        """Render every job the workbook would submit, now or once released (commands and
        job scripts, with stand-in run folders): a template problem refuses the workbook,
        with its cell."""
        from .preflight import check_workbook

        searching = any(e.search is not None for e in wb.experiments)
        specs = specs + stand_ins(wb, specs) if searching else specs
        snapshot, overrides = self._snapshot(specs), self.store.overrides()
        if not snapshot and not overrides and len({s.key for s in specs}) == len(specs):
            # nothing ran yet: the plan would submit or hold every run but those of rows set to stop (a plan of
            # 200,000 new runs made here and again by `plan`, #14)
            chosen = [s for s in specs if s.desired is not Desired.STOP]
        else:
            todo = make_plan(specs, snapshot, {c.name: len(specs) + 1 for c in wb.clusters}, overrides=overrides)
            keys = {a.key for a in todo.actions
                    if a.spec is not None and a.kind in (ActionKind.SUBMIT, ActionKind.RESTART, ActionKind.HOLD)}
            chosen = [s for s in specs if s.key in keys]
        problems = check_workbook(wb, chosen, str(self.project_dir), {s.key: self.workdir(s) for s in chosen})
        problems += package_problems(wb) if searching else []
        if problems:
            raise WorkbookError(str(self.workbook_path), problems)

    def _check(self, wb: Workbook, key: str) -> list[RunSpec] | None:
        """`_preflight` for a sheet whose runs are decided one by one (`replan.incremental`):
        the runs to submit, restart or hold from the kept decisions, and of those only the
        ones not rendered yet under this workbook; the specs if it expanded them all."""
        from .preflight import check_workbook

        every: list[RunSpec] = []

        def expanded() -> list[RunSpec]:
            every[:] = expand(wb, {})
            return every

        kept = self._decisions(wb, key, expanded)
        todo, passed = to_render(self.store, key, kept.decisions.waiting_keys())
        if every:
            chosen = [s for s in every if s.key in todo]
        else:
            chosen = [s for _, s in sorted(specs_of(wb, todo, kept.starts).values(), key=lambda x: x[0])]
        problems = check_workbook(wb, chosen, str(self.project_dir), {s.key: self.workdir(s) for s in chosen})
        if problems:
            raise WorkbookError(str(self.workbook_path), problems)
        passed()
        return every or None

    def _decisions(self, wb: Workbook, key: str, specs: Callable[[], list[RunSpec]],
                   overrides: dict | None = None) -> Kept:
        """`replan.current`, made once per data version in this process (a load, a plan and a
        pass's reach ask for it in turn)."""
        version = data_version(self.store)
        if self._kept is not None and self._kept[0] == (key, version):
            return self._kept[1]
        kept = current(self.store, wb, key, specs, self._snapshot,
                       self.store.overrides() if overrides is None else overrides)
        self._kept = ((key, version), kept)
        return kept

    def metric_names(self) -> set[str]:
        """The known metrics: the Metrics rows' and those the runs' current attempts produced."""
        rows = {d.name for d in self.workbook.metrics} if self.workbook else set()
        return rows | metric_names(self.store)

    def _once(self, what: tuple, warning: str) -> list[str]:
        """A warning about the workbook is said once per saved version, not every pass."""
        if self._warned == what:
            return []
        self._warned = what
        return [warning]

    # ------------------------------------------------------------ backends
    def backend(self, name: str) -> Backend:
        if name not in self._backends:
            assert self.workbook is not None
            try:
                cluster = self.workbook.cluster(name)
            except KeyError:
                cluster = Cluster(name="local") if name == "local" else None  # type: ignore[assignment]
                if cluster is None:
                    raise BackendError(name, "not in the Clusters sheet", "add it or change the run's cluster") from None
            self._backends[name] = self.backend_factory(cluster, str(self.project_dir))
        return self._backends[name]

    def capacity(self) -> dict[str, int]:
        """Free-slot limits per cluster; 0 for a cluster this pass found unreachable or short
        of disk (its new runs wait, the warning says why)."""
        assert self.workbook is not None
        out = {}
        for c in self.workbook.clusters:
            try:
                out[c.name] = 0 if self._watch(c.name).hold else self.backend(c.name).capacity()
            except NeroError:
                out[c.name] = 0
        return out

    def close(self) -> None:
        for b in self._backends.values():
            b.close()
        if self._searcher is not None:
            self._searcher.close()
        self.store.close()

    # ------------------------------------------------------------ plan
    def _snapshot(self, specs: list[RunSpec]) -> dict[str, RunRecord]:
        """The runs as the planner reads them (`tally.planning_records`: no parameters or
        metric values), with the essence of each run whose spec changed (what it diffs to say
        why the run restarts); read once per data version."""
        from dataclasses import replace

        snap = dict(self._planning_records())
        changed = [s.key for s in specs if (r := snap.get(s.key)) is not None and r.spec_hash != s.spec_hash]
        for key, essence in self.store.essences(changed).items():
            snap[key] = replace(snap[key], essence=essence)
        return snap

    def _planning_records(self) -> dict[str, RunRecord]:
        """`tally.planning_records`, read once per data version (not to be changed)."""
        version = data_version(self.store)
        if self._planning is None or self._planning[0] != version:
            self._planning = (version, planning_records(self.store))
        return self._planning[1]

    def plan(self, prune: bool = False, yes: bool = False) -> Plan:
        self._checked_first()
        found = self._plan(prune, self.gate(yes))
        self.remember(found)
        return found

    def release_plan(self) -> None:
        """Drop what planning keeps for the next plan in this process (the expanded specs,
        the planning records, the kept decisions: ~1 KB a run): a one-shot command that
        plans, then reads every run (`nero digest`), holds one or the other, not both.
        The next plan makes them again."""
        self._specs, self._planning, self._kept = None, None, None

    def _checked_first(self) -> None:
        """A plan or a pass decides from a workbook checked against the state: one read
        unchecked (`load(check=False)`) is checked now."""
        assert self.workbook is not None, "load() first"
        if not self._checked:
            self.load()

    def _plan(self, prune: bool, gate: Gate, overrides: dict | None = None) -> Plan:
        """The plan; from the cache when the workbook, the store's data and the gate are
        those it was made from. Only a plan that gives no run a slot is kept: one that does
        depends on the clusters' free slots too; nor one of more than PLAN_KEPT actions (a
        cache that costs more to keep than the plan to make)."""
        stamp = self._state_key(prune, gate.apply_all, gate.over, ",".join(sorted(gate.confirmed)))
        found = cached(self.store, "plan", stamp)
        if isinstance(found, Plan):
            return found
        overrides = self.store.overrides() if overrides is None else overrides
        if self._key and incremental(self.workbook):  # the kept decisions, renewed with the runs written since
            d = self._decisions(self.workbook, self._key, lambda: self.specs, overrides).decisions
            restarts = [k for k, (_, x) in d.by_key.items() if x.wants and x.action.kind is ActionKind.RESTART]
            found = finish(d, self.capacity(), live_clusters(self.store), planning_records(self.store, restarts),
                           prune=prune, gate=gate)
        else:
            found = make_plan(self.specs, self._snapshot(self.specs), self.capacity(), prune=prune, overrides=overrides,
                              gate=gate)
        if len(found.actions) <= PLAN_KEPT and not any(a.kind in (ActionKind.SUBMIT, ActionKind.RESTART)
                                                        and not a.awaiting for a in found.actions):
            keep(self.store, "plan", stamp, found)
        return found

    def gate(self, yes: bool = False) -> Gate:
        """The confirmation policy of the workbook's Settings (confirm.py); `yes` applies all."""
        assert self.workbook is not None
        s = self.workbook.settings
        return Gate(apply_all=yes or s.on_save == APPLY_ALL, over=s.confirm_over, confirmed=self.store.confirmed())

    def confirm(self, plan: Plan) -> list[str]:
        """Confirm the changes `plan` shows awaiting, exactly those (their tokens): the next
        pass applies them. Returns their lines."""
        self.store.set_confirmed(self.store.confirmed() | {a.token for a in plan.awaiting})
        return [describe(a) for a in plan.awaiting]

    def remember(self, plan: Plan) -> None:
        """Keep what a plan with awaiting changes listed, for `nero apply ID` to compare."""
        if plan.fingerprint and plan.fingerprint != self._remembered:  # once per plan, not every pass
            self.store.remember_plan(plan.fingerprint, [describe(a) for a in plan.awaiting[:1000]])
            self._remembered = plan.fingerprint

    def _confirmations(self, gate: Gate, plan: Plan) -> None:
        """After planning a pass: drop the confirmed tokens the plan no longer holds (used up,
        or the change is gone) and remember what awaits. Dropped only when the workbook read
        is the one saved now (not one still settling, open elsewhere or invalid), since
        `nero apply` may have confirmed what the saved workbook asks for."""
        held = {a.token for a in plan.actions if a.token}
        try:
            st = self.workbook_path.stat()
            current = (st.st_mtime_ns, st.st_size) == self._stamp
        except OSError:
            current = False
        if gate.confirmed - held and current:
            self.store.set_confirmed(gate.confirmed & held)
        self.remember(plan)

    # ------------------------------------------------------------ one pass
    def run_pass(self, prune: bool = False, results: bool = True, yes: bool = False) -> PassReport:
        """One pass (see the module); changes that wait for a confirmation are skipped
        (confirm.py), all are applied with `yes`."""
        self._checked_first()
        now = self.clock()
        report = PassReport(plan=Plan((), 0))
        self._recover(now, report)
        self._poll(now, report)
        self._rules(now, report)
        if any(e.search is not None for e in self.workbook.experiments):  # adaptive rows: tell, adopt, ask
            if self.searcher().step(self.workbook, self.specs, self.store.snapshot(), self.capacity()):
                self._specs = None
                report.changed = True
        overrides = self.store.overrides()
        gate = self.gate(yes)
        plan = self._plan(prune, gate, overrides)
        self._planning = None  # from here on the pass reads whole records: not both at once
        self._confirmations(gate, plan)
        report.plan = plan
        try:
            jobs = self._jobs(plan)  # every job rendered before anything is cancelled or submitted
        except WorkbookError as e:  # a template file changed since the workbook was read
            if not self._watching:
                raise
            report.warnings += self._once(("render", str(e)), f"{e}\n  watching goes on; fix it and save")
        else:
            self._cancel(plan, now, report)
            self._submit(jobs, now, report)
        self._mark_orphans(plan)
        self._expire_overrides(overrides)
        if results and (report.changed or not self._results_fingerprint):
            report.results_written = self._write_results_unless_current(plan)
            report.results_deferred = 0.0 if report.results_written else self._results_wait()
        self._notify(report, now)
        self.store.record_pass(now)
        return report

    def refresh_local(self) -> list[str]:
        """Between passes, with the reconcile lock held: poll the live runs of the local
        cluster (reading their run folders costs no round trip) and record what they show,
        as a pass's poll does (states, ends, metrics). Nothing is submitted, cancelled or
        ruled on and no results or mail are written: the next pass goes on from there (its
        notices include these events). Returns the keys of the runs polled."""
        assert self.workbook is not None, "load() first"
        named = {c.name: c.kind for c in self.workbook.clusters}
        local = {n for n, kind in named.items() if kind is ClusterKind.LOCAL} | ({"local"} - set(named))
        report = PassReport(plan=Plan((), 0))
        return self._poll(self.clock(), report, local)

    def _notify(self, report: PassReport, now: float) -> None:
        """E-mail the notices that rows' `notify` asks for (every event recorded since the
        last pass, so none is missed or mailed twice) and deliver the outbox. Problems are
        warnings, never exceptions: see notify.py."""
        from .mail import Mailer

        assert self.workbook is not None
        report.warnings.extend(Mailer.of(self.store, self.project_dir).on_pass(_Specs(self), self.workbook, now))

    def _handle(self, r: RunRecord) -> Handle:
        globs = globs_of(self.workbook.metrics) if self.workbook else DEFAULT_GLOBS
        return Handle(r.key, r.attempt, r.job_id, r.run_dir, r.offsets, r.submitted_at, globs)

    def _recover(self, now: float, report: PassReport) -> None:
        """Attempts recorded but not confirmed (a crash between submit and record)."""
        if not any_intent(self.store):
            return
        pending = [r for r in live_records(self.store) if r.intent]
        updates, resubmit = [], []
        by_cluster: dict[str, list[RunRecord]] = {}
        for r in pending:
            by_cluster.setdefault(r.cluster, []).append(r)
        for cluster, recs in by_cluster.items():  # one adopt call (round trip) per cluster
            try:
                found = self.backend(cluster).adopt([self._handle(r) for r in recs])
            except NeroError as e:
                report.warnings.append(f"{e}; its unconfirmed submissions are checked again next pass")
                continue
            fate = {r.key: recovery(found.get(r.key), r.submitted_at, now, self.unconfirmed_grace_s) for r in recs}
            count = Counter(fate.values())
            never = sum(1 for r in recs if fate[r.key] == "resubmit" and r.key not in found)
            parts = [f"{count['adopt']} were found on the cluster and adopted"]
            if count["wait"]:
                parts.append(f"{count['wait']} were handed to the cluster but are not seen yet and are looked for "
                             f"again next pass (submitted again only if still missing "
                             f"{self.unconfirmed_grace_s:.0f} s after their submission)")
            if never:
                parts.append(f"{never} were never handed to the cluster and are submitted now")
            if count["resubmit"] > never:
                parts.append(f"{count['resubmit'] - never} were still not seen {self.unconfirmed_grace_s:.0f} s "
                             "after their submission and are submitted again (the job script lets one copy start)")
            report.warnings.append(f"cluster {cluster!r}: of {len(recs)} unconfirmed submission(s), " + "; ".join(parts))
            for r in recs:
                if fate[r.key] == "adopt":
                    sub = found[r.key]
                    ev = Event(now, r.key, "adopted", f"job {sub.job_id} found on the cluster "
                               "(its submission was not confirmed)", r.attempt)
                    updates.append(Update(r.key, r.attempt, state=RunState.SUBMITTED, job_id=sub.job_id, intent=False,
                                          events=(ev,)))
                    report.events.append(ev)
                elif fate[r.key] == "resubmit":
                    resubmit.append(r)
        self.store.apply(updates)
        specs = {s.key: s for s in self.specs}
        again: dict[str, list[tuple[JobScript, RunRecord | None]]] = {}
        memo = _RenderMemo(time.strftime("%Y-%m-%d %H:%M:%S"))
        for r in resubmit:
            spec = specs.get(r.key)
            if spec is None:
                ev = Event(now, r.key, "cancelled", "never submitted, and its row is gone", r.attempt)
                self.store.apply([Update(r.key, r.attempt, state=RunState.CANCELLED, reason=ev.reason, intent=False,
                                         ended_at=now, events=(ev,))])
                continue
            try:
                job = self._job(spec, r.cluster, r.attempt, r.run_dir, resume=False, prev_dir="", memo=memo)
            except NeroError as e:
                report.warnings.append(f"{r.key}: not resubmitted this pass: {e}")
                continue
            again.setdefault(r.cluster, []).append((job, None))
        for cluster, jobs in again.items():
            self._dispatch(cluster, jobs, now, report, intents_recorded=True)
        report.changed = True

    def _poll(self, now: float, report: PassReport, only: set[str] | None = None) -> list[str]:
        """Poll the live runs (of the clusters `only` names: then no cluster is reached
        first) and record what changed; returns the keys of the runs polled."""
        assert self.workbook is not None
        live: dict[str, list[RunRecord]] = {}
        if any(only is None or c in only for c in live_clusters(self.store)):
            for r in live_records(self.store):  # the live runs alone, not every run
                if r.state.live and not r.intent and (only is None or r.cluster in only):
                    live.setdefault(r.cluster, []).append(r)
        if only is None:
            self._reach(now, report, set(live))
        polled: list[str] = []
        goals = self.workbook.goals
        updates: list[Update] = []
        for cluster, recs in live.items():
            watch = self._watch(cluster)
            if watch.down:
                continue  # reported by _reach; its runs keep their state
            if watch.next_poll > now:
                continue  # an idle remote cluster: polled with back-off
            try:
                backend = self.backend(cluster)
                statuses = backend.poll([self._handle(r) for r in recs])
            except NeroError as e:
                report.warnings.append(f"{e}; its runs keep their state")
                continue
            by_key = {r.key: r for r in recs}
            polled.extend(by_key)
            changed = False
            for st in statuses:
                rec = by_key.get(st.key)
                if rec is None:
                    continue
                u = observe(rec, st, now, self.workbook.metrics, goals)
                if u.state or u.points or u.offsets or u.host:
                    report.changed = changed = True
                if u.heartbeat_at is not None and u.heartbeat_at != rec.heartbeat_at:
                    changed = True
                updates.append(u)
                report.events.extend(u.events)
            if backend.remote:  # polling costs a round trip: an idle cluster is polled less often
                watch.polled(now, changed)
        if updates:
            self.store.apply(updates)
        return polled

    def _watch(self, name: str) -> ClusterWatch:
        if self._watches is None:
            self._watches = {}
        return self._watches.setdefault(name, ClusterWatch())

    _watches: dict[str, ClusterWatch] | None = None

    def _reach(self, now: float, report: PassReport, live: set[str]) -> None:
        """Reach each cluster that has work this pass (live runs, runs to submit); note the
        ones that are unreachable or short of disk (Settings min_free_disk): no new runs
        go there this pass, and the warning says why and what to do."""
        from .units import parse_size_mb

        assert self.workbook is not None
        wanted = self._wanted_clusters()
        limit_text = self.workbook.settings.min_free_disk
        limit = parse_size_mb(limit_text) if limit_text else None
        for name in sorted(live | wanted):
            watch = self._watch(name)
            watch.hold, watch.down = "", False
            try:
                backend = self.backend(name)
                backend.connect()
            except NeroError as e:
                watch.hold, watch.down = "unreachable", True
                what = "its runs keep their state" if name in live else "its new runs wait"
                report.warnings.append(f"{e}; {what}")
                continue
            free = backend.free_disk_mb() if limit else None
            if limit and free is not None and free < limit and name in wanted:
                watch.hold = (f"free disk in its workdir is {format_megabytes(free)}, below Settings min_free_disk "
                              f"{limit_text}")
                report.warnings.append(f"cluster {name!r}: {watch.hold}; its new runs are held until space is "
                                       "freed (or min_free_disk is lowered)")

    def _wanted_clusters(self) -> set[str]:
        """Clusters that runs not yet submitted, to be restarted or retried may go to."""
        from .model import Desired, OverrideKind

        stamp = self._state_key()
        found = cached(self.store, "wanted", stamp)
        if isinstance(found, set):
            return found
        if self._key and incremental(self.workbook):  # the kept decisions: the runs to submit, restart or hold
            d = self._decisions(self.workbook, self._key, lambda: self.specs)
            found = {c for _, x in d.decisions.by_key.values() if (s := x.action.spec) is not None
                     and s.desired is Desired.RUN and x.action.kind is not ActionKind.CANCEL for c in s.clusters}
            keep(self.store, "wanted", stamp, found)
            return found
        snap = self._planning_records()
        restarts = {k for k, o in self.store.overrides().items() if o.kind is OverrideKind.RESTART}
        out: set[str] = set()
        for s in self.specs:
            if s.desired is not Desired.RUN:
                continue
            rec = snap.get(s.key)
            if (rec is None or rec.spec_hash != s.spec_hash or s.key in restarts
                    or (rec.state.finished and rec.state is not RunState.COMPLETED and s.retries)):
                out.update(s.clusters)
        keep(self.store, "wanted", stamp, out)
        return out

    def _rules(self, now: float, report: PassReport) -> None:
        """Evaluate each live run's rules on its metrics; stop rules terminate the run."""
        from .expr import Facts
        from .rules import evaluate, first_stop, parse_rules, prune_verdicts

        assert self.workbook is not None
        if not live_clusters(self.store):
            return
        specs = {s.key: s for s in self.specs if s.rules}
        if not specs:
            return
        goals = self.workbook.goals
        stops: dict[str, list[tuple[RunRecord, str]]] = {}
        updates: list[Update] = []
        # the live runs with rules and their histories (not every run: 100,000 held 150 MiB), and
        # every run of a row whose rules compare its runs (`prune`)
        live = [r for r in live_records(self.store) if r.key in specs and not r.intent and not r.stop_requested]
        if not live:
            return
        histories = histories_of(self.store, live)
        siblings = experiment_records(self.store, {s.experiment for s in specs.values() if "prune" in s.rules.lower()})
        pruned = prune_verdicts(specs.values(), siblings, lambda: histories_of(self.store, siblings.values()), goals)
        for rec in live:
            spec = specs[rec.key]
            try:
                rules = parse_rules(spec.rules)
            except NeroError as e:  # validated with the sheet; an old state may still differ
                report.warnings.append(f"{rec.key}: rules not evaluated: {e}")
                continue
            facts = Facts.of(rec, now, histories.get(rec.key), goals_of(rec.last, goals))
            verdicts = evaluate(rules, facts, pruned.get(rec.key))
            stop = first_stop(verdicts)
            if stop is not None:
                stops.setdefault(rec.cluster, []).append((rec, stop.message))
            for v in verdicts:
                if not v.warning:
                    continue
                rule = str(v.rule.source)
                if any(e.kind == "warn" and e.attempt == rec.attempt and (e.reason == rule or e.reason.startswith(rule + " ("))
                       for e in self.store.events(rec.key)):
                    continue  # a warning is recorded once per attempt
                ev = Event(now, rec.key, "warn", v.message, rec.attempt)
                updates.append(Update(rec.key, rec.attempt, events=(ev,)))
                report.events.append(ev)
        def terminate(rec: RunRecord, message: str) -> Update:
            ev = Event(now, rec.key, "terminate", message, rec.attempt)
            return Update(rec.key, rec.attempt, stop_requested=f"terminated: {message}", events=(ev,))

        updates += self._stop_jobs(stops, terminate, report, "rules could not stop its runs this pass")
        if updates:
            self.store.apply(updates)
            report.changed = True

    def _stop_jobs(self, groups: dict[str, list[tuple[RunRecord, Any]]], record: Callable[[RunRecord, Any], Update],
                   report: PassReport, failed: str) -> list[Update]:
        """Ask each cluster's backend to stop its jobs (one call per cluster); the updates
        `record` makes for those it could ask, with their events in the report."""
        updates: list[Update] = []
        for cluster, items in groups.items():
            try:
                errors = self.backend(cluster).cancel([self._handle(r) for r, _ in items])
            except NeroError as e:
                report.warnings.append(f"{e}; {failed}")
                continue
            for rec, why in items:
                if rec.key in errors:
                    report.warnings.append(f"{rec.key}: {errors[rec.key]}")
                    continue
                u = record(rec, why)
                updates.append(u)
                report.events.extend(u.events)
        return updates

    def _cancel(self, plan: Plan, now: float, report: PassReport) -> None:
        if not any(a.kind in (ActionKind.CANCEL, ActionKind.RESTART) for a in plan.actions):
            return
        snap = {r.key: r for r in records_of(self.store, [a.key for a in plan.actions
                                                          if a.kind in (ActionKind.CANCEL, ActionKind.RESTART)])}
        todo: dict[str, list[tuple[RunRecord, Action]]] = {}
        for a in plan.actions:
            rec = snap.get(a.key)
            if rec is None or not (rec.state.live or rec.intent):
                continue
            if a.awaiting:
                continue
            if a.kind in (ActionKind.CANCEL, ActionKind.RESTART) and not (a.kind is ActionKind.RESTART and a.waiting):
                todo.setdefault(rec.cluster, []).append((rec, a))
        def cancel(rec: RunRecord, a: Action) -> Update:
            if a.kind is ActionKind.RESTART:
                ev = Event(now, rec.key, "cancelled", f"restarted: {a.reason}", rec.attempt)
                return Update(rec.key, rec.attempt, state=RunState.CANCELLED, reason=ev.reason,
                              stop_requested=f"cancelled: restarted: {a.reason}", ended_at=now, events=(ev,))
            ev = Event(now, rec.key, "cancel", a.reason, rec.attempt)
            return Update(rec.key, rec.attempt, stop_requested=f"cancelled: {a.reason}", events=(ev,))

        updates = self._stop_jobs(todo, cancel, report, "its runs could not be stopped this pass")
        if updates:
            self.store.apply(updates)
            report.changed = True

    def _jobs(self, plan: Plan) -> _Jobs:
        """The job of each run the pass submits, by cluster, all rendered before any is
        submitted: a run whose command or job script does not render refuses the pass
        (WorkbookError with every such cell), so no pass is ever half submitted."""
        by_cluster: _Jobs = {}
        if not any(a.kind in (ActionKind.SUBMIT, ActionKind.RESTART) for a in plan.actions):
            return by_cluster
        self._commits = _Commits({self.workdir(a.spec) for a in plan.actions
                                  if a.kind in (ActionKind.SUBMIT, ActionKind.RESTART) and a.spec is not None})
        snap = {r.key: r for r in records_of(self.store, [a.key for a in plan.actions  # those submitted again
                                                          if a.kind in (ActionKind.SUBMIT, ActionKind.RESTART)])}
        problems: list[Problem] = []
        retries: dict[str, tuple[int, str]] = {}
        memo = _RenderMemo(time.strftime("%Y-%m-%d %H:%M:%S"))  # one snapshot per folder, one script per shape
        for a in plan.actions:
            if a.kind not in (ActionKind.SUBMIT, ActionKind.RESTART) or a.waiting or a.awaiting or a.spec is None:
                continue
            prev = snap.get(a.key)
            attempt = (prev.attempt + 1) if prev else 1
            prev_dir = prev.run_dir if (prev and a.resume) else ""
            try:
                job = self._job(a.spec, a.cluster, attempt, self.run_dir(a.spec, a.cluster, attempt),
                                resume=a.resume, prev_dir=prev_dir, memo=memo)
            except WorkbookError as e:
                problems += [p for p in e.problems if p not in problems]
                continue
            by_cluster.setdefault(a.cluster, []).append((job, prev))
            retries[a.key] = (a.retry, a.reason)
        if problems:
            raise WorkbookError(str(self.workbook_path), problems)
        self._retry.update(retries)
        return by_cluster

    def _submit(self, by_cluster: _Jobs, now: float, report: PassReport) -> None:
        for cluster, jobs in by_cluster.items():
            self._dispatch(cluster, jobs, now, report)

    def _dispatch(self, cluster: str, jobs: list[tuple[JobScript, RunRecord | None]], now: float,
                  report: PassReport, intents_recorded: bool = False) -> None:
        specs = {s.key: s for s in self.specs}
        if not intents_recorded:
            intents = []
            git_cache: dict[str, tuple[str, bool]] = {}
            for job, prev in jobs:
                spec = specs[job.key]
                if spec.workdir not in git_cache:  # by the row's workdir setting: one look a folder
                    git_cache[spec.workdir] = self._commits.get(self.workdir(spec))
                commit, dirty = git_cache[spec.workdir]
                retry, why = self._retry.pop(job.key, (0, ""))
                intents.append(NewAttempt(spec, job.attempt, cluster, job.run_dir, job.name,
                                          commit, dirty, code_hash=job.code.hash if job.code else "",
                                          parent=prev.attempt if prev else None,
                                          retry=retry, reason=why, who=self.user))
        # the intents are committed while the cluster reads the submission, before it hands
        # any job over (`ready`: over SSH the agent waits for the word that they are)
        ready = None if intents_recorded else _Recording(self.store, intents, now)
        try:
            results = self.backend(cluster).submit([j for j, _ in jobs], ready=ready)
        except _Unrecorded as e:  # nothing was handed over
            raise e.__cause__ from None  # type: ignore[misc]
        except NeroError as e:  # the request may have been carried out: never submit these again blindly
            if ready is not None and not ready.done:  # failed before asking: the attempts are recorded now
                try:
                    ready()
                except _Unrecorded as u:
                    raise u.__cause__ from None  # type: ignore[misc]
            report.warnings.append(f"{e}; {len(jobs)} run(s) stay unconfirmed until the next pass has looked "
                                   "for them on the cluster")
            return
        updates = []
        for sub in results:
            if sub.error:
                ev = Event(now, sub.key, "failed", f"submission failed: {sub.error}", sub.attempt)
                updates.append(Update(sub.key, sub.attempt, state=RunState.FAILED, reason=ev.reason, intent=False,
                                      ended_at=now, events=(ev,)))
            else:
                ev = Event(now, sub.key, "submitted", f"on {cluster} as job {sub.job_id}", sub.attempt)
                updates.append(Update(sub.key, sub.attempt, state=RunState.SUBMITTED, job_id=sub.job_id,
                                      intent=False, events=(ev,)))
            report.events.append(ev)
        self.store.apply(updates)
        report.changed = True

    def _expire_overrides(self, overrides) -> None:
        """Drop overrides whose row changed or whose restart was used up."""
        from .plan import active_override

        if not overrides:
            return
        specs = {s.key: s for s in self.specs}
        snap = {r.key: r for r in records_of(self.store, overrides)}
        stale = [k for k, o in overrides.items()
                 if k in specs and active_override(o, specs[k], snap.get(k)) is None]
        if stale:
            self.store.drop_overrides(stale)

    def _mark_orphans(self, plan: Plan) -> None:
        orphans = {a.key for a in plan.of(ActionKind.ORPHAN)}  # keys of runs in the store
        flagged = orphaned_keys(self.store)
        flags = [(k, False) for k in sorted(flagged - orphans)] + [(k, True) for k in sorted(orphans - flagged)]
        if flags:
            self.store.apply([], orphaned=flags)

    # ------------------------------------------------------------ rendering
    def workdir(self, spec: RunSpec) -> str:
        wd = Path(os.path.expanduser(spec.workdir)) if spec.workdir else self.project_dir
        return str(wd if wd.is_absolute() else (self.project_dir / wd).resolve())

    def run_dir(self, spec: RunSpec, cluster: str, attempt: int) -> str:
        """The attempt's run folder: a path on the cluster, below its run root."""
        return ClusterPaths(self.backend(cluster).run_root()).run(spec.experiment, spec.key, attempt)

    def _cluster(self, name: str) -> Cluster:
        assert self.workbook is not None
        try:
            return self.workbook.cluster(name)
        except KeyError:
            return Cluster(name=name)

    def _job(self, spec: RunSpec, cluster: str, attempt: int, run_dir: str, resume: bool, prev_dir: str,
             memo: _RenderMemo | None = None) -> JobScript:
        """The attempt's job script; WorkbookError (with the cell) if it does not render.
        With `memo` (a pass's jobs): the workdir's snapshot is taken once per folder, and on
        a cluster that submits many runs as one job (`Backend.shared_scripts`: Slurm arrays)
        the script of nero's own templates is rendered once per shape, the run's own names
        kept as its `values` (jobs.shared_context)."""
        from . import preflight

        assert self.workbook is not None
        memo = memo or _RenderMemo(time.strftime("%Y-%m-%d %H:%M:%S"))
        setting = memo.settings.get((cluster, spec.workdir))
        if setting is None:  # what the runs of one cluster and workdir share, looked up once a pass
            c = self._cluster(cluster)
            where = (c.name, self.workdir(spec), spec.workdir)
            if where not in memo.code:
                memo.code[where] = self._code(spec, c)
            if memo.own is None:
                memo.own = preflight.own_templates_only(str(self.project_dir))
            setting = memo.settings[(cluster, spec.workdir)] = (
                c, c.python or (sys.executable if c.kind is ClusterKind.LOCAL else ""), *memo.code[where],
                memo.own and self.backend(cluster).shared_scripts)
        c, python, workdir, code, shared = setting
        name = job_name(spec.key, attempt, run_dir)
        args = {"attempt": attempt, "run_dir": run_dir, "workdir": workdir, "python": python, "resume": resume,
                "prev_dir": prev_dir, "job_name": name, "rendered_at": memo.rendered_at,
                "project_dir": str(self.project_dir)}
        if shared:
            job = preflight.render_shared(self.workbook, spec, c, memo.shared, **args)
            if job is not None:
                values = shared_values(run_dir=run_dir, key=spec.key, experiment=spec.experiment, attempt=attempt,
                                       resume=resume, prev_run_dir=prev_dir, job_name=name, workdir=workdir,
                                       command=job.command)
                return JobScript(spec.key, attempt, run_dir, job.script, params_json(spec), cluster, job.command,
                                 job_name=name, code=code, values=values)
        job = preflight.render_job(self.workbook, spec, c, **args)
        return JobScript(spec.key, attempt, run_dir, job.script, params_json(spec), cluster, job.command,
                         job_name=name, code=code)

    def _code(self, spec: RunSpec, c: Cluster) -> tuple[str, CodeSnapshot | None]:
        """Where the run's command runs, and the code to ship there. On a remote cluster a
        local workdir is shipped (once per content hash) and the job runs in the copy; a
        workdir that does not exist here names a folder on the cluster, used as it is."""
        return self.backend(c.name).ship_code(self.workdir(spec), spec.workdir,
                                              exclude=(str(self.workbook_path), str(self.results_path())))

    # ------------------------------------------------------------ results
    def results_input(self, plan: Plan | None = None, events: int | None = None) -> ResultsInput:
        """Everything the results workbook and the digest show, as of now; `events`: only
        the newest this many events (the workbook shows the newest `results.MAX_EVENTS`: at
        100,000 runs every event held took 32 MiB)."""
        return self._with_runs(self._results_head(plan, events))

    def _results_head(self, plan: Plan | None, events: int | None, since: float | None = None) -> ResultsInput:
        """`results_input` but the runs: none, no histories, the declared goals only (the
        runs' metrics add theirs: `_with_runs`, `results.shows`); the events after `since`."""
        assert self.workbook is not None
        wb = self.workbook
        queue = []
        if plan is not None:
            for a in plan.actions:
                if a.awaiting:
                    queue.append((a.key, f"awaiting confirmation ({a.awaiting}): nero apply {plan.fingerprint}"))
                elif a.kind is ActionKind.HOLD or a.waiting:
                    queue.append((a.key, a.reason if a.kind is ActionKind.HOLD else a.waiting))
        return ResultsInput(
            experiments_path=str(self.workbook_path), settings=wb.settings, goals=dict(wb.goals),
            runs=(), histories={},
            events=tuple(self.store.events(since=since, limit=events)), queue=tuple(queue), now=self.clock(),
            attempts=tuple(self.store.earlier_attempts()), attempt_histories=self.store.earlier_histories(),
            optimisations=tuple(self.searcher().optimisations(wb, importances=True)
                                if any(e.search is not None for e in wb.experiments) else ()),
            people=wb.people, named=tuple((e.id, e.recipients) for e in wb.experiments if e.recipients),
            who_submitted=who_submitted(self.store),
        )

    def digest_head(self, plan: Plan | None = None, since: float | None = None) -> ResultsInput:
        """`results_input` without its runs (the digest reads them a batch at a time), with
        the events after `since` (the last digest: what changed since; every event if none)."""
        return self._results_head(plan, None, since)

    def _with_runs(self, head: ResultsInput) -> ResultsInput:
        """`head` with every run, their histories, and the goals their metrics add."""
        runs = tuple(sorted(self.store.snapshot().values(), key=lambda r: r.number))
        return replace(head, runs=runs, histories=self.store.histories(),
                       goals=goals_of((name for r in runs for name in r.last), head.goals))

    def results_path(self) -> Path:
        assert self.workbook is not None
        p = Path(os.path.expanduser(self.workbook.settings.results or "results.xlsx"))
        return p if p.is_absolute() else self.project_dir / p

    def write_results(self, plan: Plan | None = None, charts: bool | None = None,
                      current: list[bool] | None = None) -> bool:
        """Rewrite the results workbook if what it shows changed (results.py decides;
        `charts=True` forces fresh curves, e.g. when the loop ends); `current` gets True
        when the file then shows this data, curves included."""
        from .results import MAX_EVENTS, shows, streamed_digests, write_results

        assert self.workbook is not None
        remote = {c.name: c.host for c in self.workbook.clusters if c.kind is not ClusterKind.LOCAL and c.host}
        self._results_fingerprint = ""  # a write that fails (a full disk) is tried again next pass
        head = self._results_head(plan, MAX_EVENTS)
        path = self.results_path()
        fingerprints = None

        def batches() -> Iterator[tuple[list[RunRecord], dict[str, Any]]]:  # every run, 2,000 at a time
            return history_batches(self.store)

        shown = False
        digests: list[RunDigests] = []
        with self.store.reading():  # every pass over the runs sees the same runs
            points = str(self.store.db.execute("SELECT max(rowid) FROM metrics").fetchone()[0])
            version = int(data_version(self.store))
            self._results_runs = run_count(self.store)
            if points == self.store.get_meta(RESULTS_POINTS):  # no new point: whether the file shows this state is
                # learnt from the runs changed since the digests kept, else in a pass that computes nothing else
                still = self._results_still_shown(path, head, remote, points)
                shown = bool(still)
                if still is None:
                    digests.append(streamed_digests(head, batches, remote))
                    fingerprints = digests[0].fingerprints
                    shown = shows(path, fingerprints)
            written = not shown and write_results(path, head, charts=charts, remote_hosts=remote, current=current,
                                                  fingerprints=fingerprints, batches=batches, digests=digests)
        if digests:  # each run's digest as the file shows it now, for the next pass (`_results_still_shown`)
            keep(self.store, RESULTS_DIGESTS, self._key, (digests[0], version, points))
        if shown and current is not None:
            current.append(True)
        if not shown:
            self.store.set_meta(RESULTS_POINTS, points)
        self._results_fingerprint = "written"
        return written

    def _results_still_shown(self, path: Path, head: ResultsInput, remote: dict[str, str], points: str) -> bool | None:
        """Whether the results workbook still shows the store's data, learnt from the runs
        written since a pass kept every run's digest (`RESULTS_DIGESTS`), not from every
        run (`results.still_shows`): True, False (a run removed, or one or the rest digests
        otherwise: the write that follows reads every run once less), or None when the kept
        digests cannot tell (none kept, too many runs written since, another file)."""
        from .results import RunDigests, shows, still_shows

        found = cached(self.store, RESULTS_DIGESTS, self._key)
        if not isinstance(found, tuple) or len(found) != 3 or found[2] != points:
            return None
        kept, version = found[0], found[1]
        keys = changed_since(self.store, version) if isinstance(kept, RunDigests) else None
        if keys is None or len(keys) > RESULTS_RECHECK_MAX:
            return None
        records = records_of(self.store, keys)
        if len(records) != len(set(keys)):  # a run removed: the file the digests describe shows it
            return None if not shows(path, kept.fingerprints) else False
        return still_shows(path, kept, head, (records, histories_of(self.store, records)), remote)

    def _write_results_unless_current(self, plan: Plan) -> bool:
        """`write_results`, unless the cache says the results workbook is current: written
        (curves too) from this state and plan, and not touched since. Never with live runs,
        whose runtimes move."""
        path = self.results_path()
        shown = hashlib.sha256("\n".join(f"{a.kind.value}\0{a.key}\0{a.reason}\0{a.waiting}\0{a.awaiting}"
                                         for a in plan.actions).encode()).hexdigest()

        def stamp() -> str:
            if live_clusters(self.store):
                return ""
            try:
                st = path.stat()
            except OSError:
                return ""
            db = self.store.db
            points = db.execute("SELECT max(rowid) FROM metrics").fetchone()[0]
            events = db.execute("SELECT max(id) FROM events").fetchone()[0]
            return self._state_key(plan.fingerprint, shown, points, events, st.st_mtime_ns, st.st_size)

        if cached(self.store, "results", stamp()) is True:
            self._results_fingerprint = "written"
            return False
        if self._results_wait() > 0:
            return False
        current: list[bool] = []
        started = time.monotonic()
        written = self.write_results(plan, current=current)
        self.store.set_meta(RESULTS_BUILT, f"{self.clock()!r} {time.monotonic() - started:.3f} {self._results_runs}")
        if current:
            keep(self.store, "results", stamp(), True)
        return written

    def _results_wait(self) -> float:
        """Seconds until the results workbook may be written again (RESULTS_DUTY); 0 when
        it may be now: no run is live, or its last write was quick or long enough ago."""
        raw = (self.store.get_meta(RESULTS_BUILT) or "").split()
        if len(raw) != 3 or not live_clusters(self.store):
            return 0.0
        at, took, runs = float(raw[0]), float(raw[1]), int(raw[2])
        if took < RESULTS_SLOW_S or runs < RESULTS_MANY:
            return 0.0
        return max(0.0, at + RESULTS_DUTY * took - self.clock())

    # ------------------------------------------------------------ queries
    def outstanding(self, plan: Plan) -> int:
        """Runs still pending or live (held runs and changes awaiting confirmation do not count)."""
        live = sum(live_clusters(self.store).values())
        waiting = sum(1 for a in plan.actions if a.kind in (ActionKind.SUBMIT, ActionKind.RESTART) and not a.awaiting)
        return live + waiting


class _Commits:
    """`git_info` of each workdir a pass submits from, each asked on a thread of its own
    while the pass renders its jobs (two git processes; `git status` of a large repository
    takes a while); one not asked for is asked when wanted."""

    def __init__(self, workdirs: Iterable[str]):
        self.found: dict[str, tuple[str, bool]] = {}
        self.asking = {wd: threading.Thread(target=self._ask, args=(wd,), daemon=True, name="nero-git")
                       for wd in workdirs}
        for t in self.asking.values():
            t.start()

    def _ask(self, workdir: str) -> None:
        self.found[workdir] = git_info(workdir)

    def get(self, workdir: str) -> tuple[str, bool]:
        asked = self.asking.get(workdir)
        if asked is None:
            return git_info(workdir)
        asked.join()
        return self.found.get(workdir, ("", False))


class _Unrecorded(Exception):
    """The pass's intents could not be committed (the cause says why): nothing was handed over.
    Not a NeroError: no backend takes it for its own failure."""


class _Recording:
    """`ready` for Backend.submit: commits a pass's intents (`Store.record_intents`) once;
    _Unrecorded (from the error) if they could not be."""

    def __init__(self, store: Store, intents: list[NewAttempt], now: float):
        self.store, self.intents, self.now = store, intents, now
        self.done = False

    def __call__(self) -> None:
        if self.done:
            return
        self.done = True
        try:
            self.store.record_intents(self.intents, self.now)
        except NeroError as e:
            raise _Unrecorded() from e


class _Specs(Sequence):
    """A reconciler's specs, expanded only if something reads them."""

    def __init__(self, rec: Reconciler):
        self._rec = rec

    def __len__(self) -> int:
        return len(self._rec.specs)

    def __getitem__(self, i):  # type: ignore[no-untyped-def]
        return self._rec.specs[i]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._rec.specs)


@dataclass
class ClusterWatch:
    """What the reconciler remembers about a cluster between passes."""

    hold: str = ""  # why no new runs go there this pass ("unreachable", low disk)
    down: bool = False
    unchanged: int = 0  # polls in a row that saw nothing new
    next_poll: float = 0.0

    def polled(self, now: float, changed: bool) -> None:
        """Idle clusters are polled with back-off: after 3 polls that saw nothing new,
        wait 5 s, 10 s, 20 s, … at most 60 s; anything new resets it."""
        self.unchanged = 0 if changed else self.unchanged + 1
        k = self.unchanged - 3
        self.next_poll = 0.0 if k < 0 else now + min(60.0, 5.0 * 2 ** k)


@dataclass
class _RenderMemo:
    """What the jobs of one pass share: the time they were rendered, each workdir's code
    snapshot (one per folder, not one per run), each shape's shared script."""

    rendered_at: str
    code: dict[tuple[str, str, str], tuple[str, CodeSnapshot | None]] = field(default_factory=dict)
    shared: dict[tuple[object, ...], str | None] = field(default_factory=dict)
    own: bool | None = None  # nero's own templates only (None: not looked at yet)
    # by (cluster, the row's workdir): the cluster, its python, the workdir there, the code
    # shipped, whether its runs share one script
    settings: dict[tuple[str, str], tuple[Cluster, str, str, CodeSnapshot | None, bool]] = field(default_factory=dict)
