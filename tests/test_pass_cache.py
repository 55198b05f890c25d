"""#14: a command over an unchanged project reuses what the last one computed (the workbook
as read, its check, the plan, the status summary, the results workbook being current)
instead of expanding every run and reading every record; and any change that could alter
the answer (a workbook edit, even one that keeps the file's size and time; a template
edit; an override; a run's state changed by another process; a results file removed)
misses the cache. Real workbooks, real SQLite stores, real commands; the expansion of the
specs is counted by wrapping the real function."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from conftest import nero, state_db, wait_for, write_workbook

import orchestrator.reconcile as reconcile_module
from orchestrator.errors import WorkbookError
from orchestrator.model import ActionKind, NewAttempt, Override, OverrideKind, RunState, Update
from orchestrator.project import Project
from orchestrator.reconcile import Reconciler
from orchestrator.state import Store

ROWS = [{"id": "a", "command": "python train.py --lr {{ lr }}", "lr": "range(4)", "seed": "range(3)"},
        {"id": "b", "command": "python train.py --lr {{ lr }}", "lr": "[0, 1]", "retries": 1}]


def _done(project: Path, rows: list[dict] = ROWS) -> list[str]:
    """A project whose every run completed (loss recorded), after one real pass; run keys."""
    wb = write_workbook(project / "experiments.xlsx", rows, settings={"primary_metric": "loss"})
    rec = Reconciler(wb)
    rec.load()
    now = time.time()
    rec.store.record_intents([NewAttempt(s, 1, "local", str(project / "runs" / str(i)), s.command)
                              for i, s in enumerate(rec.specs)], now - 100)
    rec.store.apply([Update(s.key, 1, state=RunState.COMPLETED, intent=False, job_id=str(i), reason="exit code 0",
                            started_at=now - 90, ended_at=now - 80 + i, last={"loss": 1 / (1 + i)},
                            best={"loss": 1 / (1 + i)}) for i, s in enumerate(rec.specs)])
    rec.run_pass()
    keys = [s.key for s in rec.specs]
    rec.close()
    return keys


@pytest.fixture
def expansions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times the specs were expanded (the real `spec.expand`, counted)."""
    calls: list[int] = []
    real = reconcile_module.expand

    def counted(wb, *trials):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(wb, *trials)

    monkeypatch.setattr(reconcile_module, "expand", counted)
    return calls


def _plan(project: Path):  # type: ignore[no-untyped-def]
    with Project(project / "experiments.xlsx") as p:
        p.load()
        return p.plan()


def test_an_unchanged_project_plans_without_expanding_a_run(project: Path, expansions: list[int]):
    keys = _done(project)
    first = _plan(project)  # computes and keeps
    expansions.clear()
    again = _plan(project)
    assert again == first and not again.actions and again.unchanged == len(keys)
    assert expansions == []  # neither the load's check nor the plan expanded the specs
    with Project(project / "experiments.xlsx") as p:  # a pass over it: nothing to do, nothing expanded
        p.load()
        report = p.reconcile()
    assert not report.plan.actions and not report.changed and expansions == []


def test_a_workbook_edit_misses_the_cache_even_with_the_same_size_and_time(project: Path, expansions: list[int]):
    keys = _done(project)
    _plan(project)
    path = project / "experiments.xlsx"
    st = path.stat()
    rows = [dict(ROWS[0]), dict(ROWS[1], lr="[0, 7]")]  # `b`'s second run: 1 → 7
    for _ in range(5):  # the saved time inside the file compresses to another size now and then
        write_workbook(path, rows, settings={"primary_metric": "loss"})
        if path.stat().st_size == st.st_size:
            break
        time.sleep(1.1)
    assert path.stat().st_size == st.st_size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # a saved file the stat alone cannot tell apart
    expansions.clear()
    plan = _plan(project)
    assert expansions, "the edited workbook was checked again"
    assert [a.key for a in plan.of(ActionKind.SUBMIT)] == ["b[lr=7]"], plan.actions
    assert "b[lr=1]" in keys


def test_an_override_misses_the_cache(project: Path):
    keys = _done(project)
    assert not _plan(project).actions
    with Project(project / "experiments.xlsx") as p:
        p.load()
        p.restart(p.select(keys[0]), "try again")
    plan = _plan(project)
    assert [(a.kind, a.key) for a in plan.actions] == [(ActionKind.RESTART, keys[0])], plan.actions


def test_a_state_written_by_another_process_misses_the_cache(project: Path):
    """A run of `b` (retries 1) fails, written through another connection (another process's
    store): the plan retries it, and the status summary counts it."""
    keys = _done(project)
    assert not _plan(project).actions
    env = {"NERO_STATUS_ROWS": "5"}
    assert "14 runs: 14 completed" in nero("status", str(project), check=True, env=env).stdout
    other = Store(project / ".nero" / "state.db")
    other.apply([Update(keys[-1], 1, state=RunState.FAILED, reason="exit code 1")])
    other.close()
    plan = _plan(project)
    assert [(a.kind, a.key) for a in plan.actions] == [(ActionKind.RESTART, keys[-1])], plan.actions
    assert "retry 1/1 after failed" in plan.actions[0].reason
    out = nero("status", str(project), check=True, env=env).stdout
    assert "14 runs: 13 completed, 1 failed" in out and "Need attention: 1 failed" in out, out


def test_a_template_edit_misses_the_cache(project: Path):
    """The load's check renders the jobs a plan would submit: a job template that breaks
    after a plan was kept is still found, at its cell."""
    (project / "templates").mkdir()
    mine = project / "templates" / "mine.sh.j2"
    mine.write_text("#!/bin/bash\ncd {{ workdir }}\n{{ command }}\n")
    write_workbook(project / "experiments.xlsx", [{"id": "a", "command": "echo a", "template": "mine.sh.j2"}])
    assert [a.kind for a in _plan(project).actions] == [ActionKind.SUBMIT]
    assert [a.kind for a in _plan(project).actions] == [ActionKind.SUBMIT]  # kept, and the same
    mine.write_text("#!/bin/bash\n{{ nosuchname }}\n")
    with pytest.raises(WorkbookError) as refused:
        _plan(project)
    assert "Experiments!C2" in str(refused.value) and "nosuchname" in str(refused.value)


def test_the_results_workbook_is_written_again_when_it_is_gone(project: Path):
    _done(project)
    results = project / "results.xlsx"
    assert results.exists()
    with Project(project / "experiments.xlsx") as p:
        p.load()
        assert not p.reconcile().results_written  # current: not rewritten, not even compared
    results.unlink()
    with Project(project / "experiments.xlsx") as p:
        p.load()
        assert p.reconcile().results_written
    assert results.exists()


# the triggers a store got until 2026-12 (two a table and event: the counter, the change log)
_NOW = "COALESCE((SELECT value FROM meta WHERE key = 'data_version'), 0)"
OLD_TRIGGERS = [
    *(f"CREATE TRIGGER {t}_{e.lower()}_version AFTER {e} ON {t} BEGIN "
      "INSERT INTO meta SELECT 'data_version', 0 WHERE NOT EXISTS (SELECT 1 FROM meta WHERE key = 'data_version'); "
      "UPDATE meta SET value = value + 1 WHERE key = 'data_version'; END"
      for t in ("runs", "attempts", "overrides") for e in ("INSERT", "UPDATE", "DELETE")),
    *(f"CREATE TRIGGER {t}_{e.lower()}_change AFTER {e} ON {t} BEGIN "
      f"UPDATE changes SET version = {_NOW} WHERE key = {r}.key; "
      f"INSERT INTO changes SELECT {r}.key, {_NOW} WHERE NOT EXISTS (SELECT 1 FROM changes WHERE key = {r}.key); END"
      for t in ("runs", "attempts", "overrides") for e, r in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD"))),
]


def test_a_store_with_the_two_triggers_of_before_gets_the_one_and_keeps_counting(project: Path):
    """A store from before the triggers were merged (one trigger a table and event now, a
    statement less a row written) is given the new ones when opened: the old are gone, the
    data version goes on from where it was, and a run's write stamps the change log with
    the version it made."""
    from orchestrator.state.cache import data_version
    from orchestrator.state.tally import changed_since

    keys = _done(project)
    with state_db(project) as con:  # made as the older nero left it
        for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE '%_written'"):
            con.execute(f"DROP TRIGGER {name}")
        for sql in OLD_TRIGGERS:
            con.execute(sql)
        con.execute("UPDATE meta SET value = 41 WHERE key = 'data_version'")
        con.commit()
    store = Store(project / ".nero" / "state.db")
    try:
        names = {n for (n,) in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        assert not any(n.endswith(("_version", "_change")) for n in names), names
        assert {f"{t}_{e}_written" for t in ("runs", "attempts", "overrides") for e in ("insert", "update", "delete")} <= names
        assert int(data_version(store)) == 41
        store.apply([Update(keys[0], 1, reason="edited")])
        assert int(data_version(store)) == 42
        assert store.db.execute("SELECT version FROM changes WHERE key = ?", (keys[0],)).fetchone() == (42,)
        assert keys[0] in changed_since(store, 42) and keys[1] not in changed_since(store, 42)
    finally:
        store.close()


def test_the_data_version_counts_every_write_to_runs_attempts_and_overrides(project: Path):
    from orchestrator.state.cache import data_version

    keys = _done(project)
    store = Store(project / ".nero" / "state.db")
    try:
        before = data_version(store)
        store.record_pass(time.time())  # meta alone: no run data
        assert data_version(store) == before
        with state_db(project) as con:  # a hand edit counts too
            con.execute("UPDATE attempts SET reason = 'edited' WHERE key = ?", (keys[0],))
            con.commit()
        assert int(data_version(store)) == int(before) + 1
        for n in range(3):  # an `INSERT OR REPLACE` (of an override) counts each time: never back to 0
            store.set_overrides([Override(keys[0], OverrideKind.HOLD, "h", 1, time.time())])
            assert int(data_version(store)) == int(before) + 2 + n
    finally:
        store.close()


def test_a_slow_results_workbook_is_rewritten_at_most_every_ten_times_its_write_while_runs_are_live(
        project: Path):
    """#14: a 100,000-run results workbook takes seconds to write, and every pass with a
    live run changed it. While runs are live, one of 10,000 runs or more whose last write
    took a second or more is rewritten once ten times that has passed (the pass says when);
    a smaller or quicker one every pass as before, and with no run live at once. Each pass
    here is a new `nero reconcile`."""
    from orchestrator.reconcile import RESULTS_BUILT

    wb = write_workbook(project / "experiments.xlsx", [
        {"id": "long", "command": "python -c \"import time; print('step=1 loss=0.5', flush=True); time.sleep(60)\""},
    ])
    results = project / "results.xlsx"

    def state() -> RunState:
        with state_db(project) as con:
            return RunState(con.execute("SELECT state FROM attempts WHERE key = 'long'").fetchone()[0])

    def one_pass():
        rec = Reconciler(wb)
        try:
            rec.load()
            return rec.run_pass()
        finally:
            rec.close()

    one_pass()
    wait_for(lambda: one_pass() and state() is RunState.RUNNING, timeout=30, what="the run running")
    store = Store(project / ".nero" / "state.db")
    try:
        took = float(store.get_meta(RESULTS_BUILT).split()[1])
        assert 0 <= took < 1  # a small project's write: quick, never deferred

        store.set_meta(RESULTS_BUILT, f"{time.time()!r} 5.0 3")  # a slow write of a small workbook: not deferred
        store.apply([Update("long", 1, reason="moving", step=6)])
        report = one_pass()
        assert report.results_written and report.results_deferred == 0

        store.set_meta(RESULTS_BUILT, f"{time.time()!r} 5.0 100000")  # as if 100,000 runs had taken 5 s, just now
        before = results.stat().st_mtime_ns
        store.apply([Update("long", 1, reason="moved on", step=7)])  # what the workbook shows changed
        report = one_pass()
        assert not report.results_written and 40 < report.results_deferred <= 50, report.results_deferred
        assert results.stat().st_mtime_ns == before
        proc = nero("reconcile", str(project))  # and says so
        assert proc.returncode == 0 and "not rewritten this pass" in proc.stdout + proc.stderr, proc.stdout

        store.set_meta(RESULTS_BUILT, f"{time.time() - 51!r} 5.0 100000")  # ten times 5 s have passed
        report = one_pass()
        assert report.results_written and report.results_deferred == 0
        assert results.stat().st_mtime_ns != before
        assert float(store.get_meta(RESULTS_BUILT).split()[1]) < 1  # this write's own time rules the next

        store.set_meta(RESULTS_BUILT, f"{time.time()!r} 5.0 100000")
        store.apply([Update("long", 1, state=RunState.COMPLETED, intent=False, reason="exit code 0",
                            ended_at=time.time())])  # no run live: written at once
        report = one_pass()
        assert report.results_written and report.results_deferred == 0
    finally:
        store.close()
