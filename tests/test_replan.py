"""#14: a plan kept between commands and renewed with only the runs written since
(`replan.py`, `plan.renew`) equals the plan made from scratch, over random sequences of
writes (submissions, state changes, retries, overrides, orphans; through the command's
store and through another connection) and workbook edits (values, state, retries, a row
removed), each step in a fresh Reconciler as a new command would be. The status summary's
top runs, renewed the same way, equal those ranked from scratch. Real workbooks, real
SQLite stores."""

from __future__ import annotations

import random
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import write_workbook

import orchestrator.replan as replan_module
from orchestrator.model import NewAttempt, Override, OverrideKind, RunState, Update
from orchestrator.plan import plan as full_plan
from orchestrator.reconcile import Reconciler
from orchestrator.state import Store
from orchestrator.state.tally import tally

STATES = (RunState.RUNNING, RunState.COMPLETED, RunState.FAILED, RunState.LOST, RunState.SUBMITTED,
          RunState.TIMEOUT)


def _rows(rng: random.Random) -> list[dict]:
    rows = [{"id": "a", "command": "python train.py --lr {{ lr }}", "lr": rng.choice(["[1, 2, 3]", "[1, 2, 3, 4]"]),
             "seed": "range(3)", "retries": rng.choice([0, 1, 2]), "state": rng.choice(["run", "run", "hold", "stop"])},
            {"id": "b", "command": rng.choice(["echo {{ lr }}", "echo lr={{ lr }}"]), "lr": "[5, 6]",
             "state": rng.choice(["run", "run", "stop"])}]
    if rng.random() < 0.8:  # else the row is gone: its live runs are orphans
        rows.append({"id": "c", "command": "echo c {{ x }}", "x": "range(4)", "retries": 1})
    return rows


def _compare(project: Path, renewed: list[int]) -> None:
    rec = Reconciler(project / "experiments.xlsx")
    try:
        rec.load()
        gate = rec.gate()
        got = rec.plan()
        specs = rec.specs
        snap = rec.store.snapshot()
        changed = [s.key for s in specs if s.key in snap and snap[s.key].spec_hash != s.spec_hash]
        for key, essence in rec.store.essences(changed).items():
            snap[key] = replace(snap[key], essence=essence)
        want = full_plan(specs, snap, rec.capacity(), overrides=rec.store.overrides(), gate=gate)
        assert got == want, (got, want)
        if renewed:
            assert rec.plan() == want  # kept, the same
    finally:
        rec.close()


def _write(project: Path, rng: random.Random, now: float) -> None:
    """One random write, through the command's store or another connection."""
    rec = Reconciler(project / "experiments.xlsx")
    rec.load()
    specs = rec.specs
    store = rec.store if rng.random() < 0.5 else Store(project / ".nero" / "state.db")
    snap = store.snapshot()
    what = rng.random()
    if what < 0.3 or not snap:  # submit a few (new runs, or a new attempt of a run)
        chosen = rng.sample(specs, min(len(specs), rng.randint(1, 4)))
        store.record_intents([NewAttempt(s, (snap[s.key].attempt + 1) if s.key in snap else 1, "local",
                                         str(project / "runs" / s.key), s.command) for s in chosen], now)
    elif what < 0.75:  # states change (a poll)
        ups = []
        for r in rng.sample(list(snap.values()), min(len(snap), rng.randint(1, 5))):
            state = rng.choice(STATES)
            ups.append(Update(r.key, r.attempt, state=state, intent=False, reason=f"exit code {rng.randint(0, 2)}",
                              heartbeat_at=now, started_at=now - 10, ended_at=now if state.finished else None,
                              last={"loss": rng.random()}, best={"loss": rng.random()},
                              stop_requested="cancelled: aborted with `nero abort`" if rng.random() < 0.1 else None))
        store.apply(ups)
    elif what < 0.9:  # overrides set or dropped
        s = rng.choice(specs)
        if rng.random() < 0.7:
            kind = rng.choice(list(OverrideKind))
            attempt = snap[s.key].attempt if s.key in snap else 0
            store.set_overrides([Override(s.key, kind, s.spec_hash, attempt, now, rng.random() < 0.5)])
        else:
            store.drop_overrides([s.key])
    else:  # another run's row flagged orphaned
        r = rng.choice(list(snap.values()))
        store.apply([], orphaned=[(r.key, True)])
    if store is not rec.store:
        store.close()
    rec.close()


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_a_renewed_plan_equals_the_plan_made_from_scratch(tmp_path: Path, seed: int,
                                                         monkeypatch: pytest.MonkeyPatch):
    rng = random.Random(seed)
    project = tmp_path / "p"
    rows = _rows(rng)
    write_workbook(project / "experiments.xlsx", rows, settings={"primary_metric": "loss"})
    renewed: list[int] = []
    real = replan_module.renew

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        renewed.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(replan_module, "renew", counted)
    now = time.time() - 10_000
    for _ in range(30):
        now += 7
        if rng.random() < 0.15:
            rows = _rows(rng)
            write_workbook(project / "experiments.xlsx", rows, settings={"primary_metric": "loss"})
        else:
            _write(project, rng, now)
        _compare(project, renewed)
    assert renewed, "no plan was renewed: the test compared full plans only"


@pytest.mark.parametrize("goal", ["min", "max"])
def test_the_renewed_top_runs_equal_those_ranked_from_scratch(tmp_path: Path, goal: str):
    rng = random.Random(7)
    write_workbook(tmp_path / "experiments.xlsx", [{"id": "a", "command": "echo {{ x }}", "x": "range(40)"}])
    rec = Reconciler(tmp_path / "experiments.xlsx")
    rec.load()
    store = rec.store
    now = time.time()
    store.record_intents([NewAttempt(s, 1, "local", f"/r/{s.key}", s.command) for s in rec.specs], now)
    keys = [s.key for s in rec.specs]
    for step in range(40):
        chosen = rng.sample(keys, rng.randint(1, 6))
        store.apply([Update(k, 1, state=RunState.COMPLETED, intent=False, best={"loss": rng.choice([rng.random(), 0.5])})
                     for k in chosen])
        got = tally(store, "loss", lambda m: goal, shown=5)
        store.db.execute("DELETE FROM cache")
        want = tally(store, "loss", lambda m: goal, shown=5)
        assert [(v, r.key) for v, r in got.top] == [(v, r.key) for v, r in want.top], step
        assert got == want
    rec.close()
