"""Earlier attempts stay visible: after a restart the attempts before a run's current one
are kept by the state store and shown by the results workbook (Attempts), the export and
frames (an `attempt` column, the attempts frame), `nero plot --attempts` and
`nero status --attempts`."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import pytest
from conftest import nero, write_workbook
from jobs import STEPPER
from test_results import NOW, curve, make_input, record
from test_state_histories import plain, plain_all, start

from orchestrator.model import MetricPoint, RunState, Update
from orchestrator.results import SHEETS, write_results
from orchestrator.state import Store


# ---------------------------------------------------------------------------- the state store
def log(store: Store, key: str, attempt: int, points: list[tuple[int | None, float]], source: str = "stdout") -> None:
    store.apply([Update(key=key, attempt=attempt,
                        points=tuple(MetricPoint("loss", v, s, 0.0, source) for s, v in points))])


def test_store_keeps_earlier_attempts_apart_and_reads_them_incrementally(tmp_path: Path):
    path = tmp_path / "state.db"
    store = Store(path)
    start(store, "a", 1)
    start(store, "b", 1)
    log(store, "a", 1, [(1, 3.0), (2, 2.0)])
    log(store, "b", 1, [(1, 5.0)])
    assert store.earlier_attempts() == [] and store.earlier_histories() == {}
    current = store.histories()

    start(store, "a", 2)  # a row edit restarts a
    log(store, "a", 2, [(1, 9.0)])
    assert [(r.key, r.attempt, r.state) for r in store.earlier_attempts()] == [("a", 1, RunState.PENDING)]
    earlier = store.earlier_histories()
    assert plain_all(earlier) == {("a", 1): [("loss", [(1, 3.0), (2, 2.0)])]}
    # the current attempts are as before: a's is its new attempt, b's the same object as before
    now = store.histories()
    assert plain(now["a"]) == [("loss", [(1, 9.0)])] and now["b"]["loss"] is current["b"]["loss"]

    # the cancelled job's last output, read after the restart, reaches the earlier attempt;
    # an attempt that did not change is the same object as before
    log(store, "a", 1, [(3, 1.5), (2, 2.5)], source="track")
    log(store, "b", 1, [(2, 4.0)])
    again = store.earlier_histories()
    assert plain_all(again) == {("a", 1): [("loss", [(1, 3.0), (2, 2.5), (3, 1.5)])]}
    start(store, "b", 2)
    start(store, "a", 3)
    latest = store.earlier_histories()
    assert list(latest) == [("a", 1), ("a", 2), ("b", 1)]  # by run number, then attempt
    assert latest[("a", 1)]["loss"] is again[("a", 1)]["loss"]
    # what a fresh store reads is the same
    assert plain_all(Store(path).earlier_histories()) == plain_all(latest)
    # a run's history of any attempt by its number
    assert plain(store.history("a", 1)) == plain(latest[("a", 1)])


# ---------------------------------------------------------------------------- the workbook
def with_attempts(tmp_path: Path):
    """make_input's data with two earlier attempts of run 1 and one of run 4: steps missing,
    repeated and without number, a NaN, a metric (`acc`) only an earlier attempt logged."""
    data = make_input(tmp_path)
    h1 = {"val_err": ((1, 0.9), (3, 0.7), (3, 0.65), (None, 0.6), (9, math.nan)), "acc": ((1, 0.2), (2, 0.4))}
    h2 = {"val_err": curve(120, 0.8), "loss": curve(60, 2.0, diverge_at=30)}
    h4 = {"loss": curve(30, 1.5)}
    first = data.runs[0]
    attempts = (
        record(first.key, 1, RunState.CANCELLED, first.params, attempt=1, reason="restarted: steps: 10 → 20",
               command="python rnn.py --steps 10", last={"val_err": 0.6}),
        record(first.key, 1, RunState.FAILED, first.params, attempt=2, reason="exit code 1",
               command="python rnn.py --steps 15", started_at=NOW - 9000, ended_at=NOW - 8000),
        record(data.runs[3].key, 4, RunState.LOST, data.runs[3].params, attempt=1, reason="no heartbeat"),
    )
    histories = {(first.key, 1): h1, (first.key, 2): h2, (data.runs[3].key, 1): h4}
    return dataclasses.replace(data, attempts=attempts, attempt_histories=histories)


def test_attempts_sheet_shows_each_earlier_attempt_by_the_summarys_rules(tmp_path: Path):
    import openpyxl

    data = with_attempts(tmp_path)
    path = tmp_path / "results.xlsx"
    assert write_results(path, data)
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == list(SHEETS) and SHEETS[-2:] == ("Attempts", "Optimisation")
    rows = list(wb["Attempts"].iter_rows(values_only=True))
    head = list(rows[0])
    assert head[:6] == ["#", "run", "experiment", "state", "reason", "attempt"]
    assert "lr" not in head  # no parameters: the store keeps a run's parameters as they are now
    assert head[-4:] == ["git_commit", "git_dirty", "command", "run_dir"]
    assert {"last:acc", "best:acc", "last:val_err", "best:val_err", "val_err@10"} <= set(head)
    got = [dict(zip(head, r, strict=True)) for r in rows[1:]]
    assert [(r["#"], r["run"], r["attempt"], r["state"]) for r in got] == [
        (1, "lr-sweep[lr=0.1]", 1, "cancelled"), (1, "lr-sweep[lr=0.1]", 2, "failed"), (4, "rnn[act=tanh]", 1, "lost")]
    assert got[0]["reason"] == "restarted: steps: 10 → 20" and got[0]["command"] == "python rnn.py --steps 10"
    assert got[1]["runtime_s"] == 1000

    # every value is what the Summary shows for a run with this record and this history
    summary_path = tmp_path / "as-summary.xlsx"
    for attempt, row in zip(data.attempts, got, strict=True):
        alone = dataclasses.replace(data, runs=(attempt,), attempts=(), attempt_histories={},
                                    histories={attempt.key: data.attempt_histories.get((attempt.key, attempt.attempt), {})})
        write_results(summary_path, alone)
        s_rows = list(openpyxl.load_workbook(summary_path)["Summary"].iter_rows(values_only=True))
        summary = dict(zip(s_rows[0], s_rows[1], strict=True))
        metric_cols = [c for c in head if ":" in c or "@" in c]
        assert metric_cols
        for col in metric_cols:
            assert row[col] == summary.get(col), (attempt.attempt, col)
    # spot checks: a step logged twice keeps its latest value; last is the value at the largest
    # step (a NaN at step 9, shown as nan), best the best finite one
    assert got[0]["last:val_err"] == "nan" and got[0]["best:val_err"] == 0.6 and got[0]["best:acc"] == 0.4
    assert got[1]["last:loss"] == "nan"


def test_a_new_earlier_attempt_rewrites_the_workbook_and_none_leaves_a_header(tmp_path: Path):
    import openpyxl

    data = with_attempts(tmp_path)
    path = tmp_path / "results.xlsx"
    plain_data = dataclasses.replace(data, attempts=(), attempt_histories={})
    assert write_results(path, plain_data)
    assert [r for r in openpyxl.load_workbook(path)["Attempts"].iter_rows(values_only=True)][1:] == []
    assert write_results(path, plain_data) is False
    assert write_results(path, data) is True  # an attempt more: the workbook shows it
    assert write_results(path, data, charts=False) is False
    grown = dict(data.attempt_histories)
    grown[("rnn[act=tanh]", 1)] = {"loss": curve(31, 1.5)}
    assert write_results(path, dataclasses.replace(data, attempt_histories=grown), charts=False) is True


# ---------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_a_row_edit_keeps_the_earlier_attempt_visible_everywhere(project: Path):
    """Must show 3: restart a run by editing its row; both attempts' metrics are in the
    results workbook, the export, `nero plot --attempts` and `nero status --attempts`."""
    import openpyxl
    import pandas as pd

    (project / "stepper.py").write_text(STEPPER)
    clusters = [{"name": "local", "kind": "local", "max_jobs": 4}]

    def sheet(steps: int, tag: int) -> None:
        write_workbook(project / "experiments.xlsx",
                       [{"id": "b", "command": "python stepper.py steps={{ steps }} delay=0.02 tag={{ tag }}",
                         "steps": steps, "tag": tag},
                        {"id": "c", "command": "python stepper.py steps=3 delay=0.02"}], clusters=clusters)

    sheet(6, 1)
    nero("reconcile", str(project), "--until-done", "--interval", "0.3", "-q", check=True)
    time.sleep(1.1)  # a new mtime even on coarse file systems
    sheet(4, 2)  # the row edit: b restarts (it re-runs a completed run: confirmed with --yes)
    nero("reconcile", str(project), "--until-done", "--interval", "0.3", "-q", "--yes", check=True)

    runs = json.loads(nero("status", str(project), "--json", "--attempts", check=True).stdout)
    b = next(r for r in runs if r["run"] == "b")
    assert b["attempt"] == 2 and b["state"] == "completed" and b["metrics"]["tag"] == 2
    assert [(a["attempt"], a["state"], a["metrics"]["tag"], a["step"]) for a in b["attempts"]] == [(1, "completed", 1, 6)]
    assert next(r for r in runs if r["run"] == "c")["attempts"] == []
    assert "attempts" not in json.loads(nero("status", str(project), "--json", check=True).stdout)[0]
    table = nero("status", str(project), "--attempts", check=True).stdout
    assert "└ attempt 1" in table

    # the results workbook: the current attempt on Summary, the earlier one on Attempts
    wb = openpyxl.load_workbook(project / "results.xlsx")
    rows = list(wb["Attempts"].iter_rows(values_only=True))
    got = [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    assert [(r["run"], r["attempt"], r["state"]) for r in got] == [("b", 1, "completed")]
    assert got[0]["last:tag"] == 1 and got[0]["last:loss"] == pytest.approx(1 / 6, abs=1e-6)
    assert "steps=6" in got[0]["command"]
    s_rows = list(wb["Summary"].iter_rows(values_only=True))
    summary = {r["run"]: r for r in (dict(zip(s_rows[0], row, strict=True)) for row in s_rows[1:])}
    assert summary["b"]["attempt"] == 2 and summary["b"]["last:tag"] == 2
    assert summary["b"]["last:loss"] == pytest.approx(0.25, abs=1e-6)

    # the export: every point of both attempts, and the attempts file
    out = nero("export", str(project), "-o", str(project / "x.csv"), check=True).stdout
    assert "2 runs, 1 earlier attempt," in out
    metrics = pd.read_csv(project / "x-metrics.csv")
    assert list(metrics.columns) == ["run", "attempt", "metric", "step", "value"]
    loss = metrics[(metrics["run"] == "b") & (metrics["metric"] == "loss")]
    assert sorted(loss[loss["attempt"] == 1]["step"]) == [1, 2, 3, 4, 5, 6]
    assert sorted(loss[loss["attempt"] == 2]["step"]) == [1, 2, 3, 4]
    tags = metrics[(metrics["run"] == "b") & (metrics["metric"] == "tag")]
    assert set(tags[tags["attempt"] == 1]["value"]) == {1} and set(tags[tags["attempt"] == 2]["value"]) == {2}
    assert set(metrics[metrics["run"] == "c"]["attempt"]) == {1}
    attempts = pd.read_csv(project / "x-attempts.csv")
    assert list(attempts[["run", "attempt", "state"]].itertuples(index=False, name=None)) == [("b", 1, "completed")]
    assert attempts["last:tag"].iloc[0] == 1
    runs_csv = pd.read_csv(project / "x.csv").set_index("run")
    assert runs_csv.loc["b", "attempt"] == 2 and runs_csv.loc["b", "last:tag"] == 2
    exported = json.loads((lambda p: (nero("export", str(project), "-o", str(p), check=True), p.read_text())[1])(
        project / "x.json"))
    assert [(a["run"], a["attempt"]) for a in exported["attempts"]] == [("b", 1)]

    # the plot: the current curve and the earlier attempt's
    png = project / "loss.png"
    proc = nero("plot", str(project), "b", "loss", "--attempts", "-o", str(png), check=True)
    assert "(1 run; 2 curves: 1 current, 1 earlier attempt)" in proc.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    plain_plot = nero("plot", str(project), "b", "loss", "-o", str(project / "plain.png"), check=True)
    assert plain_plot.stdout.strip().endswith("(1 run).")
