"""(specs, snapshot, capacity) → Plan: what a pass must do, each action with its reason.

Pure: no backend, file or clock. Decisions, in order:

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
from collections.abc import Mapping, Sequence

from .confirm import Gate, fingerprint, mark, new_run, risk, too_many
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

__all__ = ["RETRYABLE", "active_override", "plan", "stopped_by"]

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
    _one_spec_per_key(specs)
    overrides = overrides or {}
    gate = gate or Gate(apply_all=True)
    actions: list[Action] = []
    wanted: list[tuple[RunSpec, ActionKind, str, Action | None]] = []
    unchanged = 0
    seen: set[str] = set()
    by_experiment: dict[str, list[RunSpec]] = {}
    if any(s.after for s in specs):  # what `after` waits for (none: 200,000 runs not sorted for nothing)
        for s in specs:
            by_experiment.setdefault(s.experiment, []).append(s)

    for spec in specs:
        seen.add(spec.key)
        rec = snapshot.get(spec.key)
        live = rec is not None and (rec.state.live or rec.intent)
        asked = overrides.get(spec.key)
        override = active_override(asked, spec, rec) if asked is not None else None
        manual = override.kind if override else None
        if spec.desired is Desired.STOP or manual is OverrideKind.ABORT:
            why = f"{_STOPPED}{spec.row}" if spec.desired is Desired.STOP else _ABORTED
            if live and not (rec and rec.stop_requested):
                cancel = Action(ActionKind.CANCEL, spec.key, why, spec, rec.cluster if rec else "")
                by_sheet = manual is not OverrideKind.ABORT
                actions.append(mark(cancel, risk(cancel.kind, rec) if by_sheet else "", rec.attempt if rec else 0, gate))
            elif rec is None and manual is OverrideKind.ABORT:
                actions.append(Action(ActionKind.HOLD, spec.key, f"{why}: not started", spec))
            else:
                unchanged += 1
            continue
        template: Action | None = None
        if rec is None:
            kind, reason = ActionKind.SUBMIT, "new run"
        elif rec.spec_hash != spec.spec_hash:
            changed = diff_essence(json.loads(rec.essence), spec.essence())
            kind, reason = ActionKind.RESTART, "; ".join(changed) or "spec changed"
            typed = manual is OverrideKind.RESTART  # `nero restart` after the edit: confirmed when typed
            template = mark(Action(kind, spec.key, reason, spec), "" if typed else risk(kind, rec), rec.attempt, gate)
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
            unchanged += 1
            continue
        if manual is OverrideKind.HOLD:
            actions.append(Action(ActionKind.HOLD, spec.key, f"held with `nero hold` ({reason})", spec))
            continue
        blocked = _dependencies(spec, by_experiment, snapshot, overrides) if spec.after else None
        if spec.desired is Desired.HOLD:
            what = "not started" if kind is ActionKind.SUBMIT else f"restart deferred ({reason})"
            then = f"; then {blocked[1]}" if blocked else ""
            actions.append(Action(ActionKind.HOLD, spec.key, f"state=hold: {what}{then}", spec))
            continue
        if blocked and blocked[0]:
            actions.append(Action(ActionKind.HOLD, spec.key, blocked[1], spec))
            continue
        wanted.append((spec, kind, reason if not blocked else f"{reason}|{blocked[1]}", template))

    for key, rec in snapshot.items():
        if key in seen or not (rec.state.live or rec.intent):
            continue
        if prune:
            cancel = Action(ActionKind.CANCEL, key, "row removed from the sheet (--prune)", None, rec.cluster)
            actions.append(mark(cancel, risk(cancel.kind, rec), rec.attempt, gate))
        else:
            actions.append(Action(ActionKind.ORPHAN, key, "row removed from the sheet but still running; "
                                  "set state=stop on a row for it or run with --prune to cancel it", None, rec.cluster))

    new_runs = sum(1 for _, kind, _, _ in wanted if kind is ActionKind.SUBMIT)
    many = too_many(new_runs, gate)
    going = []
    for spec, kind, reason, template in wanted:
        if kind is ActionKind.SUBMIT:
            template = new_run(spec, many, gate)
        if template is not None and template.awaiting:
            why = reason.partition("|")[0]
            actions.append(template if why == template.reason else _with(template, why))
        else:
            going.append((spec, kind, reason, template))
    actions.extend(_assign(going, snapshot, capacity))
    order = {ActionKind.CANCEL: 0, ActionKind.RESTART: 1, ActionKind.SUBMIT: 2, ActionKind.ORPHAN: 3, ActionKind.HOLD: 4}
    actions.sort(key=lambda a: order[a.kind])
    return Plan(tuple(actions), unchanged, fingerprint(a.token for a in actions if a.awaiting))


def _with(a: Action, reason: str, cluster: str | None = None, waiting: str | None = None) -> Action:
    """`dataclasses.replace(a, reason=…, cluster=…, waiting=…)` written out: a plan makes one
    per run, and replace took 15 of the 200 s of a profiled 200,000-run plan (#14). It names
    every field of Action (tests/test_plan.py checks the list), as `confirm.mark` does."""
    return Action(kind=a.kind, key=a.key, reason=reason, spec=a.spec, cluster=a.cluster if cluster is None else cluster,
                  waiting=a.waiting if waiting is None else waiting, resume=a.resume, retry=a.retry, token=a.token,
                  awaiting=a.awaiting)


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


def _assign(wanted: list[tuple[RunSpec, ActionKind, str, Action | None]], snapshot: Mapping[str, RunRecord],
            capacity: Mapping[str, int]) -> list[Action]:
    used = Counter(r.cluster for r in snapshot.values() if r.state.live or r.intent)
    out: list[Action] = []
    # a restart's own cancel frees its slot
    for spec, kind, _, _ in wanted:
        rec = snapshot.get(spec.key)
        if kind is ActionKind.RESTART and rec is not None and (rec.state.live or rec.intent):
            used[rec.cluster] -= 1
    for spec, kind, reason, template in sorted(wanted, key=lambda w: (-w[0].priority, w[0].row)):
        reason, _, dep_wait = reason.partition("|")
        base = template or Action(kind, spec.key, reason, spec)
        if dep_wait:
            out.append(_with(base, reason, waiting=dep_wait))
            continue
        chosen = next((c for c in spec.clusters if used[c] < capacity.get(c, 1)), "")
        if chosen:
            used[chosen] += 1
            out.append(_with(base, reason, cluster=chosen))
        else:
            full = ", ".join(f"{c} {used[c]}/{capacity.get(c, 1)}" for c in spec.clusters)
            out.append(_with(base, reason, waiting=f"no free slot ({full})"))
    return out
