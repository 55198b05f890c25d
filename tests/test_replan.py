"""#14: a plan kept between commands and renewed with only the runs written since
(`replan.py`, `plan.renew`) equals the plan made from scratch, over random sequences of
writes (submissions, state changes, retries, overrides, orphans; through the command's
store and through another connection) and workbook edits (values, state, retries, a row
removed), each step in a fresh Reconciler as a new command would be. The status summary's
top runs, renewed the same way, equal those ranked from scratch; every run listed a batch
at a time reads as all at once. Real workbooks, real SQLite stores, real commands."""

from __future__ import annotations

import random
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import nero, write_workbook

import orchestrator.replan as replan_module
from orchestrator.model import MetricPoint, NewAttempt, Override, OverrideKind, RunState, Update
from orchestrator.plan import plan as full_plan
from orchestrator.reconcile import Reconciler
from orchestrator.state import Store
from orchestrator.state.tally import histories_of, record_batches, tally

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


def _listed(tmp_path: Path) -> Path:
    """A project of 9 runs: metric points (the csv and json show last and best from them),
    a restarted run (an earlier attempt), stored values without points."""
    wb = write_workbook(tmp_path / "experiments.xlsx", [{"id": "a", "command": "echo {{ x }}", "x": "range(9)"}])
    rec = Reconciler(wb)
    rec.load()
    now = time.time()
    specs = rec.specs
    rec.store.record_intents([NewAttempt(s, 1, "local", f"/r/{s.key}", s.command) for s in specs], now - 50)
    rec.store.record_intents([NewAttempt(specs[2], 2, "local", f"/r/{specs[2].key}/2", specs[2].command)], now - 40)
    rec.store.apply([Update(s.key, 2 if i == 2 else 1, state=RunState.COMPLETED, intent=False, started_at=now - 30,
                            ended_at=now - i, last={"acc": 0.5 + i / 100}, best={"acc": 0.5 + i / 100},
                            points=tuple(MetricPoint("loss", 1 / (1 + i + j), j, now - 20 + j, "stdout")
                                         for j in range(3 if i % 2 else 0)))
                     for i, s in enumerate(specs)])
    rec.close()
    return wb


def test_every_run_listed_a_batch_at_a_time_reads_as_all_at_once(tmp_path: Path):
    """`status all`, `--json`, `--csv` above the summary's size stream the runs a batch at a
    time: the same lines as the listing of them all at once (below the summary's size)."""
    wb = _listed(tmp_path)
    store = Store(tmp_path / ".nero" / "state.db")
    batches = list(record_batches(store, 4))
    assert [len(b) for b in batches] == [4, 4, 1]
    every = [r for b in batches for r in b]
    assert every == sorted(store.snapshot().values(), key=lambda r: r.number)
    assert histories_of(store, every) == store.histories() != {}
    store.close()
    for args in (["status", "all"], ["status", "--json"], ["status", "--csv"], ["status", "--json", "--attempts"]):
        streamed = nero(args[0], str(wb), *args[1:], check=True, env={"NERO_STATUS_ROWS": "3"}).stdout
        if args[1] == "all":  # every run matches `completed` too: read all at once, the same plain table
            at_once = nero("status", str(wb), "completed", check=True, env={"NERO_STATUS_ROWS": "3"}).stdout
            streamed, at_once = (x.rsplit("as of", 1)[0] for x in (streamed, at_once))  # "…s ago" moves
        else:
            at_once = nero(args[0], str(wb), *args[1:], check=True, env={"NERO_STATUS_ROWS": "1000"}).stdout
        assert streamed == at_once, args
        assert "loss" in streamed and "acc" in streamed
