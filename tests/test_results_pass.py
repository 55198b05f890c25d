"""#14: a pass learns whether the results workbook still shows the store's data from the runs
written since the last pass that digested every run, not by reading every run again; and
what it then shows is what a pass reading every run shows. Real workbooks, a real SQLite
store (written through another connection too, as a second nero would), real files."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import write_workbook

import orchestrator.reconcile as reconcile_module
from orchestrator.model import MetricPoint, NewAttempt, RunState, Update
from orchestrator.reconcile import Reconciler


@pytest.fixture
def project(tmp_path: Path) -> Path:
    wb = write_workbook(tmp_path / "experiments.xlsx", [{"id": "a", "command": "echo {{ x }}", "x": "range(9)"}],
                        settings={"primary_metric": "loss"})
    rec = Reconciler(wb)
    rec.load()
    now = time.time()
    specs = rec.specs
    rec.store.record_intents([NewAttempt(s, 1, "local", f"/r/{s.key}", s.command) for s in specs], now - 50)
    rec.store.apply([Update(s.key, 1, state=RunState.COMPLETED, intent=False, started_at=now - 30, ended_at=now - i,
                            last={"loss": 1 / (1 + i)}, best={"loss": 1 / (1 + i)},
                            points=tuple(MetricPoint("loss", 1 / (1 + i + j), j, now - 20 + j, "stdout")
                                         for j in range(3)))
                     for i, s in enumerate(specs)])
    rec.close()
    return tmp_path


@pytest.fixture
def full_passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times a pass read every run (`tally.history_batches`)."""
    calls: list[int] = []
    every = reconcile_module.history_batches

    def counted(store, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return every(store, *args, **kwargs)

    monkeypatch.setattr(reconcile_module, "history_batches", counted)
    return calls


def _write(project: Path) -> bool:
    rec = Reconciler(project / "experiments.xlsx")  # a new command each time
    try:
        rec.load()
        return rec.write_results()
    finally:
        rec.close()


def _sql(project: Path, statement: str, *args: object) -> None:
    """A write by another connection (another nero's pass, a job's heartbeat)."""
    con = sqlite3.connect(project / ".nero" / "state.db")
    with con:
        con.execute(statement, args)
    con.close()


def _summary(project: Path) -> pd.DataFrame:
    return pd.read_excel(project / "results.xlsx", sheet_name="Summary", engine="openpyxl").set_index("run")


def test_a_change_the_file_does_not_show_is_learnt_from_the_changed_runs_alone(project: Path, full_passes: list[int]):
    assert _write(project) is True
    first = (project / "results.xlsx").stat().st_mtime_ns
    full_passes.clear()
    _sql(project, "UPDATE attempts SET heartbeat_at = ? WHERE key = 'a[x=3]'", time.time())
    assert _write(project) is False and full_passes == []  # the heartbeat's run digested alone
    assert _write(project) is False and full_passes == []
    assert (project / "results.xlsx").stat().st_mtime_ns == first

    _sql(project, "UPDATE attempts SET reason = 'checked by hand' WHERE key = 'a[x=4]'")
    assert _write(project) is True and len(full_passes) == 2  # it no longer shows it: every run read to
    # write (a survey, the rows), not a third time to learn that the file must be written
    assert _summary(project).loc["a[x=4]", "reason"] == "checked by hand"
    full_passes.clear()
    _sql(project, "UPDATE attempts SET heartbeat_at = ? WHERE key = 'a[x=4]'", time.time())
    assert _write(project) is False and full_passes == []  # the write kept the digests of what it showed


def test_what_the_changed_runs_alone_cannot_tell_is_read_from_every_run(project: Path, full_passes: list[int]):
    assert _write(project) is True
    rec = Reconciler(project / "experiments.xlsx")
    rec.load()
    rec.store.apply([Update("a[x=5]", 1, points=(MetricPoint("loss", 0.001, 9, time.time(), "stdout"),))])
    rec.close()
    assert _write(project) is True  # a point added: written at once
    assert _summary(project).loc["a[x=5]", "best:loss"] == 0.001

    _sql(project, "DELETE FROM attempts WHERE key = 'a[x=8]'")
    _sql(project, "DELETE FROM runs WHERE key = 'a[x=8]'")
    full_passes.clear()
    assert _write(project) is True and len(full_passes) == 2  # a run removed: written without it
    assert "a[x=8]" not in _summary(project).index and len(_summary(project)) == 8

    (project / "results.xlsx").unlink()
    assert _write(project) is True and (project / "results.xlsx").exists()  # the file gone: written again
