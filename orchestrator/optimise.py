"""The adaptive rows' step of a reconcile pass: tell, adopt, ask (wiring: nero's state and
Optuna's studies; the decisions are `trials.py`'s).

Before a pass plans, for each adaptive row whose state is `run`:

1. adopt (once per process): trials Optuna's storage holds as running that nero's state
   does not name: a nero killed between asking and recording. They are recorded now, as
   if just asked (`search.Studies.adopt`), so no trial is lost and none asked twice;
2. tell every trial whose run ended for good (`trials.outcome`), then note it told in the
   state; a kill between the two tells it again, which changes nothing (Optuna skips a
   finished trial);
3. ask for as many new trials as the row's clusters have free slots, up to the budget
   (`trials.to_ask`); the slots the sheet's new runs ahead of the row in the planner's order
   (higher priority, then earlier rows) will take are not free (`slots_left`), and record them in the state in one transaction. Then the pass plans
   them as runs (`spec.expand` with the trials), submits them like any run (an attempt's
   intent recorded before it is handed to a backend), and a kill after the record leaves
   trials the next pass submits.

Order of the durable steps, with what each kill leaves: ask (Optuna: trial running) → kill
→ adopted next start | record (nero: trial) → kill → submitted next pass | run ends → tell
(Optuna) → kill → told again, skipped | mark told (nero).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .model import (
    Desired,
    Experiment,
    NextBatch,
    Optimisation,
    Problem,
    RunRecord,
    RunSpec,
    Scalar,
    Workbook,
)
from .spec import expand_experiment
from .state import Store
from .state.trials import mark_told, read_trials, record_trials
from .trials import (
    Trial,
    optimisation,
    outcome,
    search_goal,
    stand_in,
    to_ask,
    trial_key,
    trial_params,
)

__all__ = ["Searcher", "free_slots", "next_batches", "package_problems", "slots_left", "stand_ins", "trial_runs"]


def trial_runs(workbook: Workbook, trials: Mapping[str, list[Trial]]) -> dict[str, list[tuple[str, tuple[tuple[str, Scalar], ...]]]]:
    """The runs (key, parameters) of the adaptive rows' trials, for `spec.expand`."""
    out = {}
    for exp in workbook.experiments:
        if exp.search is not None:
            out[exp.id] = [(trial_key(exp.id, t.number), trial_params(exp, dict(t.params)))
                           for t in trials.get(exp.id, ())]
    return out


def stand_ins(workbook: Workbook, specs: list[RunSpec]) -> list[RunSpec]:
    """A stand-in run (trial 0, each dimension's first value) of each adaptive row with no
    trial yet, so the workbook's check renders its job before a trial is asked."""
    default = workbook.settings.default_cluster or "local"
    have = {s.experiment for s in specs}
    return [s for exp in workbook.experiments if exp.search is not None and exp.id not in have
            for s in expand_experiment(exp, default, [(trial_key(exp.id, 0), trial_params(exp, stand_in(exp)))])]


def package_problems(workbook: Workbook) -> list[Problem]:
    """Adaptive rows whose search needs a package that is not installed, at their cells."""
    from .search import sampler_problem

    rows = [e for e in workbook.experiments if e.search is not None]
    return [p for e in rows if (p := sampler_problem(e, e.cell("search") or e.cell("id"))) is not None]


def free_slots(snapshot: Mapping[str, RunRecord], capacity: Mapping[str, int]) -> dict[str, int]:
    """Each cluster's free slots: its capacity less its live runs (as the planner counts them)."""
    used = Counter(r.cluster for r in snapshot.values() if r.state.live or r.intent)
    return {c: max(0, n - used[c]) for c, n in capacity.items()} | {
        c: max(0, 1 - n) for c, n in used.items() if c not in capacity}


def _order(item: Experiment | RunSpec) -> tuple[int, int]:
    """The planner's order of submits (`plan._assign`): higher priority first, then row order."""
    return (-item.priority, item.row)


def _take(slots: dict[str, int], clusters: tuple[str, ...], n: int) -> None:
    """Take `n` slots as the planner gives them: each from the first listed cluster with one free."""
    for _ in range(n):
        c = next((c for c in clusters if slots.get(c, 1) > 0), None)
        if c is None:
            return
        slots[c] = slots.get(c, 1) - 1


def slots_left(workbook: Workbook, specs: list[RunSpec], snapshot: Mapping[str, RunRecord],
               capacity: Mapping[str, int]) -> list[tuple[Experiment, dict[str, int]]]:
    """Each adaptive row (in the planner's order) with the free slots left for its new trials:
    each cluster's free slots less those the sheet's new runs ahead of the row will take
    (runs of other rows to start, not yet submitted, waiting on no `after`) and those the
    trials of the adaptive rows before it will take. Without this a pass asked for trials
    the planner then left waiting behind a grid row, and `nero plan` promised them a slot."""
    slots = free_slots(snapshot, capacity)
    searched = {e.id for e in workbook.experiments if e.search is not None}
    waiting_rows = {e.id for e in workbook.experiments if e.after}
    ahead = sorted((s for s in specs if s.experiment not in searched and s.experiment not in waiting_rows
                    and s.desired is Desired.RUN and s.key not in snapshot), key=_order)
    out = []
    i = 0
    for exp in sorted((e for e in workbook.experiments if e.search is not None), key=_order):
        while i < len(ahead) and _order(ahead[i]) < _order(exp):
            _take(slots, ahead[i].clusters, 1)
            i += 1
        out.append((exp, slots))
    return out


def _row_free(exp: Experiment, default: str, free: Mapping[str, int]) -> int:
    """The free slots of the row's clusters (a cluster the capacities do not name has one, as in the planner)."""
    return sum(free.get(c, 1) for c in (exp.clusters or (default,)))


def _waiting(exp: Experiment, trials: list[Trial], snapshot: Mapping[str, RunRecord]) -> int:
    """The row's trials whose run was not submitted yet."""
    return sum(1 for t in trials if trial_key(exp.id, t.number) not in snapshot)


def next_batches(workbook: Workbook, specs: list[RunSpec], trials: Mapping[str, list[Trial]],
                 snapshot: Mapping[str, RunRecord], capacity: Mapping[str, int]) -> list[NextBatch]:
    """What each adaptive row would ask for now (`nero plan`), without asking."""
    default = workbook.settings.default_cluster or "local"
    out = []
    for exp, slots in slots_left(workbook, specs, snapshot, capacity):
        mine = trials.get(exp.id, [])
        free = _row_free(exp, default, slots)
        n = to_ask(exp.search, len(mine), _waiting(exp, mine, snapshot), free) if exp.desired is Desired.RUN else 0
        _take(slots, exp.clusters or (default,), n + _waiting(exp, mine, snapshot))
        out.append(NextBatch(exp.id, exp.search.source or exp.search.sampler, len(mine),
                             sum(1 for t in mine if t.told), max(0, exp.search.budget - len(mine)), n, free))
    return sorted(out, key=lambda b: [e.id for e in workbook.experiments].index(b.experiment))


@dataclass
class Searcher:
    """The studies of one project and what this process did with them."""

    store: Store
    path: Path
    adopted: set[str] = field(default_factory=set)  # rows whose running trials were checked this process
    _studies: object = None

    @property
    def studies(self):  # type: ignore[no-untyped-def]
        if self._studies is None:
            from .search import Studies

            self._studies = Studies(self.path)
        return self._studies

    def trials(self) -> dict[str, list[Trial]]:
        return read_trials(self.store)

    def step(self, workbook: Workbook, specs: list[RunSpec], snapshot: Mapping[str, RunRecord],
             capacity: Mapping[str, int]) -> bool:
        """Adopt, tell and ask (see the module); True when trials were recorded (the specs change)."""
        default = workbook.settings.default_cluster or "local"
        trials = self.trials()
        changed = False
        told: list[tuple[str, int, str, float | None]] = []
        for exp, slots in slots_left(workbook, specs, snapshot, capacity):
            goal = search_goal(exp.search, workbook.goals)
            mine = trials.get(exp.id, [])
            if exp.id not in self.adopted:
                found = self.studies.adopt(exp, goal, {t.number for t in mine})
                if found:
                    record_trials(self.store, exp.id, [(a.number, a.params) for a in found])
                    mine = mine + [Trial(exp.id, a.number, a.params) for a in found]
                    changed = True
                self.adopted.add(exp.id)
            for t in mine:
                if t.told:
                    continue
                rec = snapshot.get(trial_key(exp.id, t.number))
                if rec is None:
                    continue
                got = outcome(rec, exp.retries, exp.search.metric, self.store.history(rec.key)
                              if rec.state.finished else None, workbook.goals)
                if got is not None:
                    self.studies.tell(exp, goal, t.number, *got)
                    told.append((exp.id, t.number, *got))
            if exp.desired is not Desired.RUN:
                continue
            waiting = _waiting(exp, mine, snapshot)
            n = to_ask(exp.search, len(mine), waiting, _row_free(exp, default, slots))
            if n > 0:
                asked = self.studies.ask(exp, goal, n)
                record_trials(self.store, exp.id, [(a.number, a.params) for a in asked])
                changed = True
            _take(slots, exp.clusters or (default,), n + waiting)  # the slots these trials take (from the next row's)
        mark_told(self.store, told)
        return changed

    def optimisations(self, workbook: Workbook, importances: bool = False) -> list[Optimisation]:
        """Every adaptive row's Optimisation (Optuna's parameter importances when asked)."""
        trials = self.trials()
        out = []
        for exp in workbook.experiments:
            if exp.search is None:
                continue
            goal = search_goal(exp.search, workbook.goals)
            found = self.studies.importances(exp, goal) if importances else []
            out.append(optimisation(exp, trials.get(exp.id, []), workbook.goals, found))
        return out

    def close(self) -> None:
        if self._studies is not None:
            self._studies.close()  # type: ignore[attr-defined]
