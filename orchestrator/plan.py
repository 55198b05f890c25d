"""(specs, snapshot, capacity) → Plan: what a pass must do, each action with its reason.

Pure: no backend, file or clock. `plan` is `decide` (each run's decision, alone: for a sheet
without `after` it depends on the run's own spec, record and override) then `finish` (the
gate's marks, orphans, slots in priority order); `renew` decides again only the runs written
since, so a kept plan is brought up to date run by run (`replan.py`). Decisions, in order:

* two specs with one run key → a WorkbookError, and no plan at all;
* a run the sheet asks for and nero never submitted → `submit` (or `held` for state=hold);
* a run whose spec hash changed → `restart`, naming what changed (`lr: 0.1 → 0.2`);
* a live run whose row says state=stop → `cancel`;
* a live run whose row disappeared → `orphaned` (reported, left running) unless `prune`;
* a failed, timed-out, preempted or lost run is retried (resuming) up to its `retries`;
* manual overrides: `nero hold` / `nero abort` hold or cancel a run until its row changes,
  `nero restart` starts a new attempt once;
* a run cancelled by its row's state=stop or by `nero abort` comes back (a new attempt,
  resuming) once its row says `run` and no override holds it: `state = run` means the row's
  runs should complete (runs a rule terminated, or that failed, are not restarted by this);
* `after` holds a run until every run of the named experiments completed (`pretrain`) or
  finished, completed or terminated by a rule (`pretrain finished`); a run that ended
  otherwise and will not come back holds it for good, and the reason names that run;
* submits and restarts are given a cluster in priority order while clusters have free
  slots; the rest stay in the plan with `waiting` saying why;
* a change that throws work away (confirm.py) waits for `nero apply` unless the gate lets
  it through: it stays in the plan with `awaiting` saying why, and the pass skips it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .confirm import Gate, fingerprint, mark, risk, too_many
from .errors import WorkbookError
from .model import (
    Action,
    ActionKind,
    After,
    Desired,
    Override,
    OverrideKind,
    Plan,
    Problem,
    RunRecord,
    RunSpec,
    RunState,
    Until,
)
from .spec import diff_essence, key_clashes

__all__ = ["RETRYABLE", "Decision", "Decisions", "active_override", "decide", "finish", "plan", "renew", "stopped_by"]

RETRYABLE = frozenset({RunState.FAILED, RunState.TIMEOUT, RunState.PREEMPTED, RunState.LOST})
_ABORTED = "aborted with `nero abort`"
_STOPPED = "state=stop in Experiments row "
_SATISFIES = {Until.COMPLETED: frozenset({RunState.COMPLETED}),
              Until.FINISHED: frozenset({RunState.COMPLETED, RunState.TERMINATED})}


def stopped_by(rec: RunRecord) -> str:
    """"stopped" or "aborted" for a run cancelled by its row's state=stop or by `nero abort`
    (the cancel reasons this module gives, which the store keeps as `stop_requested`), else ""."""
    if rec.state is not RunState.CANCELLED:
        return ""
    why = rec.stop_requested.removeprefix("cancelled: ")
    return "stopped" if why.startswith(_STOPPED) else "aborted" if why == _ABORTED else ""


def active_override(o: Override | None, spec: RunSpec, rec: RunRecord | None) -> Override | None:
    """An override still in force: its row did not change, and a restart not yet used."""
    if o is None or o.spec_hash != spec.spec_hash:
        return None
    if o.kind is OverrideKind.RESTART and rec is not None and rec.attempt > o.attempt:
        return None
    return o


def plan(
    specs: Sequence[RunSpec],
    snapshot: Mapping[str, RunRecord],
    capacity: Mapping[str, int],
    prune: bool = False,
    overrides: Mapping[str, Override] | None = None,
    gate: Gate | None = None,
) -> Plan:
    """What a pass must do (see the module). `gate` says which changes that throw work
    away wait for a confirmation; without one, none waits."""
    decisions = decide(specs, snapshot, overrides or {})
    used = Counter(r.cluster for r in snapshot.values() if r.state.live or r.intent)
    return finish(decisions, capacity, used, snapshot, prune=prune, gate=gate)


@dataclass(frozen=True)
class Decision:
    """One run's part of a plan before the plan is put together: an action as it stands
    (`wants`: a submit or restart that still needs a slot, and `wait`s for `after` when
    that is set), with why it throws work away (`why`, of its `attempt`: marked against
    the gate when the plan is made, so a decision holds for every gate)."""

    action: Action
    wants: bool = False
    why: str = ""
    attempt: int = 0
    wait: str = ""


@dataclass(frozen=True)
class Decisions:
    """The first stage of a plan: the decision of each run that is not unchanged, by key
    (with its place among the specs), and of each live run whose row is gone (with its
    run number); `runs` specs were decided. `renew` brings them up to date with the runs
    that changed since, `finish` makes the plan."""

    runs: int
    by_key: Mapping[str, tuple[int, Decision]]
    orphans: Mapping[str, tuple[int, Decision]]

    def waiting_keys(self) -> frozenset[str]:
        """The runs that are to be submitted, restarted or held (the jobs a workbook check renders)."""
        return frozenset(k for k, (_, d) in self.by_key.items()
                         if d.action.kind in (ActionKind.SUBMIT, ActionKind.RESTART, ActionKind.HOLD))


def decide(specs: Sequence[RunSpec], snapshot: Mapping[str, RunRecord],
           overrides: Mapping[str, Override]) -> Decisions:
    """Every run's decision (see the module), of the runs the sheet asks for and of the live
    runs whose row is gone; a WorkbookError when two specs have one key."""
    _one_spec_per_key(specs)
    by_experiment: dict[str, list[RunSpec]] = {}
    if any(s.after for s in specs):  # what `after` waits for (none: 200,000 runs not sorted for nothing)
        for s in specs:
            by_experiment.setdefault(s.experiment, []).append(s)
    by_key: dict[str, tuple[int, Decision]] = {}
    for i, spec in enumerate(specs):
        d = _decide(spec, snapshot.get(spec.key), overrides, by_experiment, snapshot)
        if d is not None:
            by_key[spec.key] = (i, d)
    seen = {s.key for s in specs}
    orphans = {key: (rec.number, _orphan(rec)) for key, rec in snapshot.items()
               if key not in seen and (rec.state.live or rec.intent)}
    return Decisions(len(specs), by_key, orphans)


def renew(decisions: Decisions, specs: Mapping[str, tuple[int, RunSpec]], changed: Iterable[str],
          records: Mapping[str, RunRecord], overrides: Mapping[str, Override]) -> Decisions:
    """`decisions` with the runs `changed` decided again: `specs` holds (place, spec) of
    each changed run the sheet asks for (the others are not in the sheet), `records` each
    changed run's record (none: never submitted), `overrides` at least theirs. For sheets
    without `after` (a run's decision then depends on its own spec, record and override
    alone): `decide` over all runs equals this."""
    by_key, orphans = dict(decisions.by_key), dict(decisions.orphans)
    for key in changed:
        by_key.pop(key, None)
        orphans.pop(key, None)
        rec = records.get(key)
        if key in specs:
            i, spec = specs[key]
            if spec.after:
                raise ValueError(f"{key}: a run with `after` depends on other runs; decide them all")
            d = _decide(spec, rec, overrides, {}, records)
            if d is not None:
                by_key[key] = (i, d)
        elif rec is not None and (rec.state.live or rec.intent):
            orphans[key] = (rec.number, _orphan(rec))
    return Decisions(decisions.runs, by_key, orphans)


def _orphan(rec: RunRecord) -> Decision:
    return Decision(Action(ActionKind.ORPHAN, rec.key, "row removed from the sheet but still running; set state=stop "
                           "on a row for it or run with --prune to cancel it", None, rec.cluster),
                    why=risk(ActionKind.CANCEL, rec), attempt=rec.attempt)


def _decide(spec: RunSpec, rec: RunRecord | None, overrides: Mapping[str, Override],
            by_experiment: Mapping[str, list[RunSpec]], snapshot: Mapping[str, RunRecord]) -> Decision | None:
    """One run's decision; None when it is unchanged."""
    live = rec is not None and (rec.state.live or rec.intent)
    override = active_override(overrides.get(spec.key), spec, rec)
    manual = override.kind if override else None
    if spec.desired is Desired.STOP or manual is OverrideKind.ABORT:
        why = f"{_STOPPED}{spec.row}" if spec.desired is Desired.STOP else _ABORTED
        if live and not (rec and rec.stop_requested):
            cancel = Action(ActionKind.CANCEL, spec.key, why, spec, rec.cluster if rec else "")
            by_sheet = manual is not OverrideKind.ABORT
            return Decision(cancel, why=risk(cancel.kind, rec) if by_sheet else "", attempt=rec.attempt if rec else 0)
        if rec is None and manual is OverrideKind.ABORT:
            return Decision(Action(ActionKind.HOLD, spec.key, f"{why}: not started", spec))
        return None
    why, attempt = "", 0
    if rec is None:
        kind, reason = ActionKind.SUBMIT, "new run"
        template = Action(kind, spec.key, reason, spec)
    elif rec.spec_hash != spec.spec_hash:
        changed = diff_essence(json.loads(rec.essence), spec.essence())
        kind, reason = ActionKind.RESTART, "; ".join(changed) or "spec changed"
        typed = manual is OverrideKind.RESTART  # `nero restart` after the edit: confirmed when typed
        template = Action(kind, spec.key, reason, spec)
        why, attempt = ("" if typed else risk(kind, rec)), rec.attempt
    elif manual is OverrideKind.RESTART:
        kind, reason = ActionKind.RESTART, "requested with `nero restart`" + (" --resume" if override and override.resume else "")
        template = Action(kind, spec.key, reason, spec, resume=bool(override and override.resume))
    elif (was := stopped_by(rec)) and not rec.intent:
        kind = ActionKind.RESTART
        reason = f"row is `run` again (was {was})" if spec.desired is Desired.RUN else f"was {was}"
        template = Action(kind, spec.key, reason, spec, resume=True)
    elif rec.state in RETRYABLE and rec.retry < spec.retries and not rec.intent:
        n = rec.retry + 1
        kind, reason = ActionKind.RESTART, f"retry {n}/{spec.retries} after {rec.state.value}" + (f": {rec.reason}" if rec.reason else "")
        template = Action(kind, spec.key, reason, spec, resume=True, retry=n)
    else:
        return None
    if manual is OverrideKind.HOLD:
        return Decision(Action(ActionKind.HOLD, spec.key, f"held with `nero hold` ({reason})", spec))
    blocked = _dependencies(spec, by_experiment, snapshot, overrides) if spec.after else None
    if spec.desired is Desired.HOLD:
        what = "not started" if kind is ActionKind.SUBMIT else f"restart deferred ({reason})"
        then = f"; then {blocked[1]}" if blocked else ""
        return Decision(Action(ActionKind.HOLD, spec.key, f"state=hold: {what}{then}", spec))
    if blocked and blocked[0]:
        return Decision(Action(ActionKind.HOLD, spec.key, blocked[1], spec))
    return Decision(template, wants=True, why=why, attempt=attempt, wait=blocked[1] if blocked else "")


def finish(decisions: Decisions, capacity: Mapping[str, int], used: Mapping[str, int],
           records: Mapping[str, RunRecord], prune: bool = False, gate: Gate | None = None) -> Plan:
    """The plan of `decisions`: each marked against `gate`, a live run whose row is gone
    cancelled with `prune`, submits and restarts given a cluster in priority order while
    `capacity` (free slots of each cluster beyond the `used` ones: live runs by cluster)
    lasts. `records` holds at least the runs that restart."""
    gate = gate or Gate(apply_all=True)
    actions: list[Action] = []
    wanted: list[Decision] = []
    for _, d in sorted(decisions.by_key.values(), key=lambda x: x[0]):
        if d.wants:
            wanted.append(d)
        else:
            actions.append(mark(d.action, d.why, d.attempt, gate))
    for _, d in sorted(decisions.orphans.values(), key=lambda x: x[0]):
        if prune:
            cancel = Action(ActionKind.CANCEL, d.action.key, "row removed from the sheet (--prune)", None, d.action.cluster)
            actions.append(mark(cancel, d.why, d.attempt, gate))
        else:
            actions.append(d.action)
    new_runs = sum(1 for d in wanted if d.action.kind is ActionKind.SUBMIT)
    many = too_many(new_runs, gate)
    going = []
    for d in wanted:
        submit = d.action.kind is ActionKind.SUBMIT
        template = mark(d.action, many if submit else d.why, 0 if submit else d.attempt, gate)
        if template.awaiting:
            actions.append(template)
        else:
            going.append((template, d.wait))
    actions.extend(_assign(going, used, records, capacity))
    order = {ActionKind.CANCEL: 0, ActionKind.RESTART: 1, ActionKind.SUBMIT: 2, ActionKind.ORPHAN: 3, ActionKind.HOLD: 4}
    actions.sort(key=lambda a: order[a.kind])
    unchanged = decisions.runs - len(decisions.by_key)
    return Plan(tuple(actions), unchanged, fingerprint(a.token for a in actions if a.awaiting))


def _one_spec_per_key(specs: Sequence[RunSpec]) -> None:
    """The last guard of run keys: two specs with one key would share a folder and restart
    each other every pass, so the planner refuses them as a workbook error, before any
    action. The sheet reports every such case first (sheet/experiments.py); this holds
    even for a variation that forgets to."""
    if len({s.key for s in specs}) == len(specs):
        return  # the usual case, found at the speed of a set

    def cell(s: RunSpec) -> str:
        return s.where or f"Experiments row {s.row}"

    problems = [Problem(cell(b), f"the run key {key} is made twice (by {cell(a)} and {cell(b)}); nero plans one run "
                                 "per key: change one of the values so each run has its own key")
                for key, a, b in key_clashes((s.key, s) for s in specs)]
    if problems:
        raise WorkbookError("", problems)


def _dependencies(spec: RunSpec, by_experiment: Mapping[str, list[RunSpec]], snapshot: Mapping[str, RunRecord],
                  overrides: Mapping[str, Override]) -> tuple[bool, str] | None:
    """None if `after` is satisfied; (True, why) if it never will be; (False, why) to wait."""
    for dep in spec.after:
        runs = by_experiment.get(dep.experiment, [])
        pending = 0
        for d in runs:
            rec = snapshot.get(d.key)
            if rec is None or rec.spec_hash != d.spec_hash or not rec.state.finished or _comes_back(d, rec, overrides):
                pending += 1
            elif rec.state not in _SATISFIES[dep.until]:
                return True, f"waits for {dep.experiment}: {d.key} {rec.state.value}; {_unblock(dep, d, rec)}"
        if pending:
            return False, f"waits for {dep.experiment}: {pending} of {len(runs)} runs not {dep.until.value}"
    return None


def _comes_back(spec: RunSpec, rec: RunRecord, overrides: Mapping[str, Override]) -> bool:
    """Whether this plan starts the ended run again on its own (a retry, or its row is `run` again)."""
    override = active_override(overrides.get(spec.key), spec, rec)
    if override is not None:
        return override.kind is OverrideKind.RESTART
    if rec.intent:
        return False
    if rec.state in RETRYABLE:
        return rec.retry < spec.retries
    return spec.desired is Desired.RUN and bool(stopped_by(rec))


def _unblock(dep: After, spec: RunSpec, rec: RunRecord) -> str:
    """What lets a run whose dependency ended badly start."""
    if rec.state is RunState.TERMINATED:
        return (f"`{dep.experiment}` in after waits for completed runs: write `{dep.experiment} finished` "
                "to also accept runs a rule terminated")
    if rec.state is RunState.CANCELLED:
        return f"set {dep.experiment}'s state to run (or `nero release` it), or remove {dep.experiment} from after"
    return f"start it again (`nero restart '{spec.key}'`) or remove {dep.experiment} from after"


def _assign(going: list[tuple[Action, str]], used: Mapping[str, int], records: Mapping[str, RunRecord],
            capacity: Mapping[str, int]) -> list[Action]:
    used = Counter(used)
    out: list[Action] = []
    # a restart's own cancel frees its slot
    for base, _ in going:
        rec = records.get(base.key)
        if base.kind is ActionKind.RESTART and rec is not None and (rec.state.live or rec.intent):
            used[rec.cluster] -= 1
    for base, dep_wait in sorted(going, key=lambda w: (-w[0].spec.priority, w[0].spec.row)):
        spec = base.spec
        if dep_wait:
            out.append(base.but(waiting=dep_wait))
            continue
        chosen = next((c for c in spec.clusters if used[c] < capacity.get(c, 1)), "")
        if chosen:
            used[chosen] += 1
            out.append(base.but(cluster=chosen))
        else:
            full = ", ".join(f"{c} {used[c]}/{capacity.get(c, 1)}" for c in spec.clusters)
            out.append(base.but(waiting=f"no free slot ({full})"))
    return out
