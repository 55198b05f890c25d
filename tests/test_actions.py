"""Selectors and bulk actions, retries with lineage, and queue order, on real local jobs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import nero, state_db, wait_for, write_workbook
from jobs import CONSTANT, RESUMER, SLEEPER
from test_core_loop import status


def reconcile(project: Path) -> None:
    nero("reconcile", str(project), "-q", check=True)


@pytest.mark.slow  # waits 9 s for the first runs to age, then several passes
def test_abort_by_condition_touches_exactly_the_matching_runs(project: Path):
    (project / "constant.py").write_text(CONSTANT)
    rows = [{"id": "c", "command": "python constant.py {{ loss }}", "loss": "[0.2, 0.9]"}]
    write_workbook(project / "experiments.xlsx", rows, clusters=[{"name": "local", "kind": "local", "max_jobs": 8}])
    reconcile(project)
    # a run that starts later: high loss, but not yet running for long
    rows[0]["loss"] = "[0.2, 0.9, 0.95]"
    write_workbook(project / "experiments.xlsx", rows, clusters=[{"name": "local", "kind": "local", "max_jobs": 8}])
    reconcile(project)
    wait_for(lambda: reconcile(project) or all(r["metrics"] for r in status(project)), what="metrics of every run")
    # the abort sees a clock (NERO_NOW) over 8 s after the first runs started, under 8 s after the late one
    with state_db(project) as con:
        started = dict(con.execute("SELECT key, started_at FROM attempts"))
    now = (started["c[loss=0.9]"] + started["c[loss=0.95]"]) / 2 + 8
    proc = nero("abort", str(project), "runtime > 8s and loss > 0.5", "--yes", env={"NERO_NOW": repr(now)})
    assert proc.returncode == 0, proc.stderr
    assert "c[loss=0.9]" in proc.stdout and "c[loss=0.2]" not in proc.stdout and "c[loss=0.95]" not in proc.stdout

    def settled():
        reconcile(project)
        return {r["run"]: r["state"] for r in status(project)}

    states = wait_for(lambda: (s := settled())["c[loss=0.9]"] == "cancelled" and s, timeout=30, what="cancelled")
    assert states["c[loss=0.2]"] == "running" and states["c[loss=0.95]"] == "running"
    # the abort persists: the plan does not start it again, and says why nothing changed
    assert json.loads(nero("plan", str(project), "--json", check=True).stdout)["actions"] == []
    hist = nero("history", str(project), "c[loss=0.9]", "--json", check=True).stdout
    kinds = [e["event"] for e in json.loads(hist)]
    assert kinds[-3:] == ["abort", "cancel", "cancelled"]
    # a selector that matches nothing is said so, and hostile selectors are refused
    assert "No run matches" in nero("abort", str(project), "loss > 100", "--yes", check=True).stdout
    bad = nero("abort", str(project), "__import__('os').system('touch pwned')", "--yes")
    assert bad.returncode == 2 and "error" in bad.stderr.lower() and not (project / "pwned").exists()


def test_restart_failed_touches_exactly_the_failed_runs(project: Path):
    (project / "constant.py").write_text(CONSTANT)
    write_workbook(project / "experiments.xlsx", [
        {"id": "f", "command": "python constant.py 0.5 {{ fail }}", "fail": "[0, 3]"},
        {"id": "g", "command": "python constant.py 0.5 3"},
        {"id": "ok", "command": "python constant.py 0.1 0", "state": "run"},
    ], clusters=[{"name": "local", "kind": "local", "max_jobs": 8}])
    # "ok" and f[fail=0] never end by themselves: they stay running
    reconcile(project)
    wait_for(lambda: reconcile(project) or sum(r["state"] == "failed" for r in status(project)) == 2,
             timeout=30, what="two failures")
    before = {r["run"]: r for r in status(project)}
    proc = nero("restart", str(project), "failed", "--yes")
    assert proc.returncode == 0, proc.stderr
    after = {r["run"]: r for r in status(project)}
    restarted = {k for k in after if after[k]["attempt"] == 2}
    assert restarted == {"f[fail=3]", "g"}
    assert all(after[k]["job_id"] == before[k]["job_id"] for k in after if k not in restarted)
    # used up: the next plan is empty again
    assert json.loads(nero("plan", str(project), "--json", check=True).stdout)["actions"] == []


def test_retries_resume_and_keep_lineage(project: Path):
    (project / "resumer.py").write_text(RESUMER)
    write_workbook(project / "experiments.xlsx", [
        {"id": "r", "command": "python resumer.py", "retries": 2},
    ])
    proc = nero("reconcile", str(project), "--until-done", "--interval", "0.3", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = status(project)[0]
    assert run["state"] == "completed" and run["attempt"] == 3 and run["retry"] == 2
    with state_db(project) as con:
        rows = con.execute("SELECT attempt, state, parent, retry, run_dir FROM attempts ORDER BY attempt").fetchall()
    assert [(a, s, p, r) for a, s, p, r, _ in rows] == [(1, "failed", None, 0), (2, "failed", 1, 1), (3, "completed", 2, 2)]
    ckpts = [json.loads((Path(d) / "ckpt.json").read_text()) for *_, d in rows]
    assert [c["done"] for c in ckpts] == [5, 10, 15]
    assert ckpts[1] == {"done": 10, "resume": "1", "prev": rows[0][4]}
    assert ckpts[2]["prev"] == rows[1][4]
    events = json.loads(nero("history", str(project), "--json", check=True).stdout)
    submitting = [e["reason"] for e in events if e["event"] == "submitting"]
    assert submitting == ["attempt 1 on local: new run", "attempt 2 on local: retry 1/2 after failed: exit code 2",
                          "attempt 3 on local: retry 2/2 after failed: exit code 2"]
    # the metrics shown are those of the attempt that completed
    assert abs(run["metrics"]["loss"] - 1 / 15) < 1e-4 and run["step"] == 15


def test_priority_after_and_max_jobs_order(project: Path):
    (project / "sleeper.py").write_text(SLEEPER)
    write_workbook(project / "experiments.xlsx", [
        {"id": "low", "command": "python sleeper.py 1", "priority": 0},
        {"id": "high", "command": "python sleeper.py 1", "priority": 5},
        {"id": "dep", "command": "python sleeper.py 1", "priority": 10, "after": "high"},
        {"id": "low2", "command": "python sleeper.py 1"},
    ], clusters=[{"name": "local", "kind": "local", "max_jobs": 1}])
    plan = json.loads(nero("plan", str(project), "--json", check=True).stdout)["actions"]
    by_run = {a["run"]: a for a in plan}
    assert by_run["high"]["cluster"] == "local"
    assert by_run["dep"]["waiting"] == "waits for high: 1 of 1 runs not completed"
    assert by_run["low"]["waiting"].startswith("no free slot (local 1/1)")
    proc = nero("reconcile", str(project), "--until-done", "--interval", "0.3", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = status(project)
    order = [r["run"] for r in sorted(runs, key=lambda r: r["number"])]
    assert order == ["high", "dep", "low", "low2"]
    with state_db(project) as con:
        spans = con.execute("SELECT key, started_at, ended_at FROM attempts ORDER BY started_at").fetchall()
    for (_, _, end), (_, start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end - 0.05  # never two at once with max_jobs=1


def test_after_a_failed_dependency_holds_with_the_reason(project: Path):
    write_workbook(project / "experiments.xlsx", [
        {"id": "first", "command": "exit 4"},
        {"id": "second", "command": "echo never", "after": "first"},
    ])
    proc = nero("reconcile", str(project), "--until-done", "--interval", "0.3", timeout=60)
    assert proc.returncode == 1
    plan = json.loads(nero("plan", str(project), "--json", check=True).stdout)["actions"]
    assert plan == [{"action": "held", "run": "second", "reason": "waits for first: first failed; start it again "
                     "(`nero restart 'first'`) or remove first from after", "cluster": "", "waiting": ""}]


def test_hold_and_release(project: Path):
    (project / "sleeper.py").write_text(SLEEPER)
    write_workbook(project / "experiments.xlsx", [{"id": "h", "command": "python sleeper.py 0.2", "n": "[1, 2]"}])
    assert nero("hold", str(project), "h[n=2]", "--yes", check=True).returncode == 0
    proc = nero("reconcile", str(project), "--until-done", "--interval", "0.3", timeout=60)
    assert proc.returncode == 0
    assert [r["run"] for r in status(project)] == ["h[n=1]"]
    plan = json.loads(nero("plan", str(project), "--json", check=True).stdout)["actions"]
    assert plan[0]["action"] == "held" and "nero hold" in plan[0]["reason"]
    nero("release", str(project), "h*", "--yes", check=True)
    nero("reconcile", str(project), "--until-done", "--interval", "0.3", timeout=60, check=True)
    assert {r["run"]: r["state"] for r in status(project)} == {"h[n=1]": "completed", "h[n=2]": "completed"}


def test_plot_draws_the_selected_runs(project: Path):
    (project / "constant.py").write_text(CONSTANT)
    write_workbook(project / "experiments.xlsx", [
        {"id": "p", "command": "python constant.py {{ loss }} 5", "loss": "[0.3, 0.6]"},
    ])
    nero("reconcile", str(project), "--until-done", "--interval", "0.3", timeout=60)
    out = project / "loss.png"
    proc = nero("plot", str(project), "p*", "loss", "-o", str(out), check=True)
    assert "2 runs" in proc.stdout
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    bad = nero("plot", str(project), "p*", "nosuch")
    assert bad.returncode != 0 and "metrics with points: loss" in bad.stderr
    # the same runs as DataFrames, and exported
    from orchestrator.project import Project

    with Project(project / "experiments.xlsx") as p:
        runs, metrics = p.frames()
    assert sorted(runs.index) == ["p[loss=0.3]", "p[loss=0.6]"]
    assert runs.loc["p[loss=0.6]", "last:loss"] == 0.6 and runs.loc["p[loss=0.3]", "state"] == "failed"
    assert sorted(metrics[metrics["run"] == "p[loss=0.3]"]["step"]) == [1, 2, 3, 4, 5]
    nero("export", str(project), "-o", str(project / "out.csv"), check=True)
    import pandas as pd

    assert pd.read_csv(project / "out-metrics.csv").shape == (10, 5)  # run, attempt, metric, step, value


def test_a_misspelt_metric_in_a_selector_is_an_error_naming_the_known_ones(project: Path):
    (project / "once.py").write_text("print('epoch=1 test_error=0.3 loss=1.0', flush=True)\n")
    write_workbook(project / "experiments.xlsx", [{"id": "e", "command": "python once.py", "lr": 0.1,
                                                   "rules": "warn: isnan(los)"}],
                   settings={"primary_metric": "test_eror"})
    plan = nero("plan", str(project))
    assert plan.returncode == 0
    assert "warning: experiment 'e', rules: no metric 'los'" in plan.stderr
    assert "warning: Settings primary_metric: no metric 'test_eror'" in plan.stderr
    nero("reconcile", str(project), "--until-done", "--interval", "0.3", timeout=60, check=True)
    for command in (("status",), ("history",), ("abort", "--yes"), ("hold", "--yes")):
        proc = nero(command[0], str(project / "experiments.xlsx"), "test_eror > 5", *command[1:])
        assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
        assert ("error: no metric 'test_eror'; did you mean test_error? (known: test_error, loss; parameters: lr)"
                in proc.stderr), proc.stderr
    proc = nero("plot", str(project / "experiments.xlsx"), "all", "test_eror")
    assert proc.returncode != 0 and "metrics with points: loss, test_error" in proc.stderr, proc.stderr
    # known metrics, parameters and built-in names select as before
    proc = nero("status", str(project / "experiments.xlsx"), "test_error < 1 and lr > 0 and runtime >= 0 and "
                "state == 'completed' and step == 1", "--json", check=True)
    assert [r["run"] for r in json.loads(proc.stdout)] == ["e"]


def test_id_globs_and_conditions_combine_in_one_selector(project: Path):
    """#13: `long* and test_error > 5` was rejected ("'and' needs a condition on its left"):
    an id glob, a state word and a run number are conditions of the one expression language."""
    (project / "once.py").write_text("import sys\nprint(f'epoch=1 loss={sys.argv[1]}', flush=True)\n")
    write_workbook(project / "experiments.xlsx", [
        {"id": "demo", "command": "python once.py {{ x }}", "x": "[0.5, 2]"},
        {"id": "demo-b", "command": "python once.py {{ x }}", "x": 3},
        {"id": "long", "command": "python once.py {{ x }}", "x": 5},
        {"id": "x", "command": "python once.py 0.1"},
    ])
    nero("reconcile", str(project), "--until-done", "--interval", "0.3", timeout=60, check=True)
    wb = str(project / "experiments.xlsx")

    def listed(selector: str) -> list[str]:
        return sorted(r["run"] for r in json.loads(nero("status", wb, selector, "--json", check=True).stdout))

    assert listed("demo* and loss > 1") == ["demo-b", "demo[x=2]"]
    assert listed("not demo*") == ["long", "x"]
    assert listed("(demo* or long*) and loss > 2.5") == ["demo-b", "long"]
    assert listed("completed and not (demo or id == 'x'), demo[x=0.5*") == ["demo-b", "demo[x=0.5]", "long"]
    numbers = {r["run"]: r["number"] for r in json.loads(nero("status", wb, "--json", check=True).stdout)}
    assert listed(f"{numbers['long']} or demo[x=2]") == ["demo[x=2]", "long"]
    assert listed("id == 'x'") == ["x"]
    # a plain word that is also a parameter (or a metric) is reported with the fix, never guessed
    for word, said in (("x", "'x' is both an experiment id and a parameter; write \"id == 'x'\""),
                       ("loss", "'loss' is a metric, not an experiment id")):
        proc = nero("status", wb, f"{word} and step >= 1")
        assert proc.returncode == 2 and said in proc.stderr, proc.stderr


STOPPABLE = r'''
import os, sys, time
if os.environ.get("NERO_RESUME") != "1":  # a new attempt after a stop resumes: done at once
    time.sleep(float(sys.argv[1]))
print("done=1")
'''


@pytest.mark.slow  # about 20 s of real jobs and passes; tests/test_spec_plan.py holds the rule fast
def test_stop_then_run_brings_the_cancelled_runs_back(project: Path):
    """#13: `state = run` means the row's runs should complete: a row set back to `run` after
    `stop` resubmits the runs the stop cancelled (resuming), `nero plan` lists them first, and a
    run that had completed is left alone."""
    (project / "job.py").write_text(STOPPABLE)
    rows = [{"id": "s", "command": "python job.py {{ t }}", "t": "[0.1, 60]", "state": "run"}]
    local = [{"name": "local", "kind": "local", "max_jobs": 4}]
    write_workbook(project / "experiments.xlsx", rows, clusters=local)

    def states() -> dict[str, str]:
        reconcile(project)
        return {r["run"]: r["state"] for r in status(project)}

    wait_for(lambda: states() == {"s[t=0.1]": "completed", "s[t=60]": "running"}, timeout=30, what="one done, one running")
    rows[0]["state"] = "stop"
    write_workbook(project / "experiments.xlsx", rows, clusters=local)
    nero("apply", str(project), check=True)  # a cancel waits for a confirmation (#13)
    wait_for(lambda: states()["s[t=60]"] == "cancelled", timeout=30, what="the stop to cancel s[t=60]")
    assert json.loads(nero("plan", str(project), "--json", check=True).stdout)["actions"] == []
    rows[0]["state"] = "run"
    write_workbook(project / "experiments.xlsx", rows, clusters=local)
    text = nero("plan", str(project), check=True).stdout
    assert "No changes" not in text and "row is `run` again (was stopped)" in text and "s[t=60]" in text, text
    actions = json.loads(nero("plan", str(project), "--json", check=True).stdout)["actions"]
    assert [(a["action"], a["run"], a["reason"]) for a in actions] == [
        ("restart", "s[t=60]", "row is `run` again (was stopped)")]
    proc = nero("reconcile", str(project), "--until-done", "--interval", "0.3", timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {r["run"]: r["state"] for r in status(project)} == {"s[t=0.1]": "completed", "s[t=60]": "completed"}
    with state_db(project) as con:
        attempts = dict(con.execute("SELECT key, COUNT(*) FROM attempts GROUP BY key"))
    assert attempts == {"s[t=0.1]": 1, "s[t=60]": 2}
    # and it does not loop: the plan is quiet again
    assert json.loads(nero("plan", str(project), "--json", check=True).stdout)["actions"] == []
