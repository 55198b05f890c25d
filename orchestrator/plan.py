"""(specs, snapshot, capacity) → Plan: what a pass must do, each action with its reason.

Pure: no backend, file or clock. Decisions, in order:

* a run the sheet asks for and nero never submitted → `submit` (or `held` for state=hold);
* a run whose spec hash changed → `restart`, naming what changed (`lr: 0.1 → 0.2`);
* a live run whose row says state=stop → `cancel`;
* a live run whose row disappeared → `orphaned` (reported, left running) unless `prune`;
* `after` holds a run until the named experiments completed (held for good if one failed);
* submits and restarts are given a cluster in priority order while clusters have free
  slots; the rest stay in the plan with `waiting` saying why.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence

from .model import Action, ActionKind, Desired, Plan, RunRecord, RunSpec, RunState
from .spec import diff_essence


def plan(
    specs: Sequence[RunSpec],
    snapshot: Mapping[str, RunRecord],
    capacity: Mapping[str, int],
    prune: bool = False,
) -> Plan:
    actions: list[Action] = []
    wanted: list[tuple[RunSpec, ActionKind, str]] = []
    unchanged = 0
    seen: set[str] = set()
    by_experiment: dict[str, list[RunSpec]] = {}
    for s in specs:
        by_experiment.setdefault(s.experiment, []).append(s)

    for spec in specs:
        seen.add(spec.key)
        rec = snapshot.get(spec.key)
        if spec.desired is Desired.STOP:
            if rec is not None and (rec.state.live or rec.intent):
                actions.append(Action(ActionKind.CANCEL, spec.key, f"state=stop in Experiments row {spec.row}", spec, rec.cluster))
            else:
                unchanged += 1
            continue
        if rec is None:
            kind, reason = ActionKind.SUBMIT, "new run"
        elif rec.spec_hash != spec.spec_hash:
            changed = diff_essence(json.loads(rec.essence), spec.essence())
            kind, reason = ActionKind.RESTART, "; ".join(changed) or "spec changed"
        else:
            unchanged += 1
            continue
        if spec.desired is Desired.HOLD:
            what = "not started" if kind is ActionKind.SUBMIT else f"restart deferred ({reason})"
            actions.append(Action(ActionKind.HOLD, spec.key, f"state=hold: {what}", spec))
            continue
        blocked = _dependencies(spec, by_experiment, snapshot)
        if blocked and blocked[0]:
            actions.append(Action(ActionKind.HOLD, spec.key, blocked[1], spec))
            continue
        wanted.append((spec, kind, reason if not blocked else f"{reason}|{blocked[1]}"))

    for key, rec in snapshot.items():
        if key in seen or not (rec.state.live or rec.intent):
            continue
        if prune:
            actions.append(Action(ActionKind.CANCEL, key, "row removed from the sheet (--prune)", None, rec.cluster))
        else:
            actions.append(Action(ActionKind.ORPHAN, key, "row removed from the sheet but still running; "
                                  "set state=stop on a row for it or run with --prune to cancel it", None, rec.cluster))

    actions.extend(_assign(wanted, snapshot, capacity))
    order = {ActionKind.CANCEL: 0, ActionKind.RESTART: 1, ActionKind.SUBMIT: 2, ActionKind.ORPHAN: 3, ActionKind.HOLD: 4}
    actions.sort(key=lambda a: order[a.kind])
    return Plan(tuple(actions), unchanged)


def _dependencies(spec: RunSpec, by_experiment: Mapping[str, list[RunSpec]], snapshot: Mapping[str, RunRecord]) -> tuple[bool, str] | None:
    """None if `after` is satisfied; (True, why) if it never will be; (False, why) to wait."""
    for dep in spec.after:
        runs = by_experiment.get(dep, [])
        done = 0
        for d in runs:
            rec = snapshot.get(d.key)
            if rec is None or rec.spec_hash != d.spec_hash or not rec.state.finished:
                continue
            if rec.state is not RunState.COMPLETED:
                return True, f"after {dep}: {d.key} {rec.state.value}"
            done += 1
        if done < len(runs):
            return False, f"after {dep}: {done}/{len(runs)} runs completed"
    return None


def _assign(wanted: list[tuple[RunSpec, ActionKind, str]], snapshot: Mapping[str, RunRecord], capacity: Mapping[str, int]) -> list[Action]:
    used = Counter(r.cluster for r in snapshot.values() if r.state.live or r.intent)
    out: list[Action] = []
    # a restart's own cancel frees its slot
    for spec, kind, _ in wanted:
        rec = snapshot.get(spec.key)
        if kind is ActionKind.RESTART and rec is not None and (rec.state.live or rec.intent):
            used[rec.cluster] -= 1
    for spec, kind, reason in sorted(wanted, key=lambda w: (-w[0].priority, w[0].row)):
        reason, _, dep_wait = reason.partition("|")
        if dep_wait:
            out.append(Action(kind, spec.key, reason, spec, "", dep_wait))
            continue
        chosen = next((c for c in spec.clusters if used[c] < capacity.get(c, 1)), "")
        if chosen:
            used[chosen] += 1
            out.append(Action(kind, spec.key, reason, spec, chosen))
        else:
            full = ", ".join(f"{c} {used[c]}/{capacity.get(c, 1)}" for c in spec.clusters)
            out.append(Action(kind, spec.key, reason, spec, "", f"no free slot ({full})"))
    return out
