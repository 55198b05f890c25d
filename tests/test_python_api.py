"""The public Python API (`from orchestrator import Project`), on real jobs: the demo driven
from Python gives exactly what `nero status --json` prints; the manual actions keep the
command line's selection and confirmation; README.md's "From Python" runs as written."""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import pytest
from conftest import ROOT, nero, wait_for, write_workbook
from jobs import CONSTANT

from orchestrator import NeroWarning, PlanView, Project, StatusView
from orchestrator.errors import ExpressionError, NeroError
from orchestrator.loop import Observer, ReconcileRunning, reconcile
from orchestrator.operations import NoRunMatches


def same(got: object, want: object) -> bool:
    """A DataFrame cell equals a JSON value (null: None or NaN)."""
    if want is None:
        return got is None or (isinstance(got, float) and math.isnan(got))
    return bool(got == want)


@pytest.mark.slow  # the demo's 6 runs, about 20 s
def test_the_demo_from_python_equals_nero_status_json(project: Path):
    demo = project / "demo"
    with Project.init(demo) as p:
        plan = p.plan()
        assert isinstance(plan, PlanView) and "Plan: 6 to submit, 3 held; 0 unchanged." in str(plan)
        cli_plan = json.loads(nero("plan", str(demo), "--json", check=True).stdout)
        assert plan.to_dict()["actions"] == cli_plan["actions"] == plan.actions
        assert "<table>" in plan._repr_html_() and "demo-hold[lr=0.001]" in plan._repr_html_()

        done = p.reconcile(until_done=True, interval=2)
        assert done.ok and done.passes > 1 and not done.stopped
        assert done.summary == f"runs: 3 completed, 3 terminated, 3 held; results in {p.results_path}"
        assert p.results_path.exists()
        assert done.summary in done._repr_html_() and done.summary in str(done)
        runs, metrics = p.runs(), p.metrics()
        status = p.status()
    printed = json.loads(nero("status", str(demo), "--json", check=True).stdout)

    # one row per run, in the order and with the values `nero status --json` prints
    assert list(runs.index) == [r["run"] for r in printed] and len(printed) == 6
    for r in printed:
        row = runs.loc[r["run"]]
        for field, value in r.items():
            if field in ("run", "metrics", "best", "at"):  # the run key is the index
                continue
            assert same(row[field], value), (r["run"], field, row[field], value)
        for kind, column in (("metrics", "last:{}"), ("best", "best:{}")):
            for m, value in r[kind].items():
                assert same(row[column.format(m)], value), (r["run"], kind, m)
        for m, at in r["at"].items():
            for cp, value in at.items():
                assert same(row[f"{m}@{cp}"], value), (r["run"], m, cp)
        # the parameters are columns too
        assert row["experiment"] == "demo" and f"lr={row['lr']:g}" in r["run"]

    # the points: the last point of each run's attempt is the last value status prints
    assert list(metrics.columns) == ["run", "attempt", "metric", "step", "value"]
    assert set(metrics.run) == {r["run"] for r in printed} and set(metrics.attempt) == {1}
    for r in printed:
        for m, last in r["metrics"].items():
            points = metrics[(metrics.run == r["run"]) & (metrics.metric == m)].sort_values("step")
            assert same(float(points.value.iloc[-1]), last), (r["run"], m)
            assert int(points.step.iloc[-1]) == r["step"]

    # the status view: counts by state, a table in Jupyter, the same frame
    assert isinstance(status, StatusView) and status.counts == {"completed": 3, "terminated": 3}
    html = status._repr_html_()
    assert "6 runs: 3 completed, 3 terminated" in html and "plateau(val_loss, 5)" in html
    assert list(status.frame().index) == list(runs.index)


def test_manual_actions_select_confirm_and_record_as_the_command_line_does(project: Path):
    (project / "constant.py").write_text(CONSTANT)
    write_workbook(project / "experiments.xlsx", [{"id": "c", "command": "python constant.py {{ loss }}",
                                                   "loss": "[0.2, 0.9]"}],
                   clusters=[{"name": "local", "kind": "local", "max_jobs": 4}])
    with Project(project) as p:
        first = p.reconcile()
        assert first.passes == 1 and [e.kind for e in first.report.events].count("submitted") == 2

        # not confirmed: the command line refuses off a terminal, Python does nothing without yes=True
        refused = nero("abort", str(project), "loss > 0.5")
        assert refused.returncode == 1 and "add --yes" in refused.stderr
        asked = p.abort("loss > 0.5")
        assert not asked.done and [c.key for c in asked.matched] == ["c[loss=0.9]"]
        assert "nothing done: confirm with yes=True" in str(asked) and "<td>c[loss=0.9]</td>" in asked._repr_html_()
        assert p.core.overrides() == {}
        # a misspelt name is the command line's error, with the closest names
        with pytest.raises(ExpressionError, match=r"no metric 'los'; did you mean loss\?"):
            p.abort("los > 0.5", yes=True)
        none = p.abort("loss > 100", yes=True)
        assert not none.matched and not none.done

        # confirmed: recorded with its reason, applied by a pass right away
        aborted = p.abort("loss > 0.5", yes=True)
        assert aborted.done and aborted.keys == ("c[loss=0.9]",) and aborted.applied == "now"
        assert [(e.kind, e.key) for e in aborted.report.events if e.kind == "cancel"] == [("cancel", "c[loss=0.9]")]
        assert p.core.overrides()["c[loss=0.9]"].kind.value == "abort"
        events = p.history("c[loss=0.9]")
        assert list(events.columns) == ["time", "run", "attempt", "event", "reason", "who"]
        assert events[events.event == "abort"].reason.tolist() == ["Project.abort('loss > 0.5')"]
        cli_history = json.loads(nero("history", str(project), "c[loss=0.9]", "--json", check=True).stdout)
        assert events.to_dict(orient="records") == cli_history

        # the cancelled process ends when it ends (a loaded machine: seconds): passes until it is seen ended
        wait_for(lambda: p.reconcile() and p.runs().loc["c[loss=0.9]", "state"] == "cancelled", timeout=60,
                 what="the aborted run seen cancelled")
        held = p.hold("c[loss=0.2]", yes=True, reason="keep it for later")
        assert held.done and p.core.overrides()["c[loss=0.2]"].kind.value == "hold"
        released = p.release("all", yes=True)  # only runs an override holds count
        assert released.done and set(released.keys) == {"c[loss=0.9]", "c[loss=0.2]"} and p.core.overrides() == {}
        assert not p.release("all", yes=True).matched

        restarted = p.restart("c[loss=0.2]", yes=True)
        assert restarted.done and restarted.applied == "now"
        runs = p.runs()
        assert runs.loc["c[loss=0.2]", "attempt"] == 2
        assert runs.loc["c[loss=0.9]", "attempt"] == 2  # released: the run abort cancelled comes back
        assert set(p.metrics("c[loss=0.2]").attempt.dropna()) <= {1, 2}
        # the workbook's warnings and a pass's come as NeroWarnings; unknown metrics in names are errors
        with pytest.raises(ExpressionError, match="did you mean loss"):
            p.metrics(names=["los"])
        # one reconcile at a time: the command line and Python refuse alike while another holds the lock
        with p.core.exclusive("watching") as held:
            assert held
            busy = nero("reconcile", str(project))
            assert busy.returncode == 1 and "another `nero reconcile` is running" in busy.stderr
            with Project(project) as other, pytest.raises(ReconcileRunning, match="another `nero reconcile` is running"):
                other.reconcile()
        # the loop the command line runs: Ctrl-C (KeyboardInterrupt) ends it, never the jobs
        class Interrupt(Observer):
            def passed(self, report):
                raise KeyboardInterrupt

        stopped = reconcile(p.core, watch=True, interval=1, observer=Interrupt())
        assert stopped.stopped and stopped.passes == 1 and "stopped (KeyboardInterrupt)" in str(stopped)
        assert p.runs().loc["c[loss=0.2]", "state"] == "running"
        # plot and export: the files the commands write
        drawn = p.plot("c*", "loss", project / "loss.png", attempts=True)
        assert drawn.path.exists() and drawn.current == 2 and drawn.earlier == 2
        with pytest.raises(NoRunMatches, match="no started run matches 'nosuch'"):
            p.plot("nosuch", "loss")
        exported = p.export(project / "runs.json")
        assert exported.paths == (project / "runs.json",) and (exported.runs, exported.attempts) == (2, 2)
        assert len(json.loads((project / "runs.json").read_text())["metrics"]) == exported.points
        p.abort("all", yes=True)


def test_a_project_needs_its_workbook_and_init_keeps_what_exists(tmp_path: Path):
    with pytest.raises(NeroError, match="no experiments workbook"):
        Project(tmp_path)
    Project.init(tmp_path).close()
    with pytest.raises(NeroError, match="exists; use --force"):
        Project.init(tmp_path)
    with Project.init(tmp_path, force=True) as p:
        assert p.workbook_path.name == "experiments.xlsx" and p.directory == p.workbook_path.parent
        assert p.runs().empty and p.metrics().empty and p.history().empty
        assert p.status().counts == {} and "no reconcile pass recorded yet" in str(p.status())
        with warnings.catch_warnings():
            warnings.simplefilter("error", NeroWarning)
            assert len(p.plan().plan.actions) == 9


def readme_python_blocks() -> list[str]:
    """The code blocks of README.md's "From Python" section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.mark.slow  # the demo twice over, about 30 s
def test_the_readme_from_python_section_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    blocks = readme_python_blocks()
    assert len(blocks) >= 5, "README.md's From Python section lost its walk-through"
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {"__name__": "readme"}
    try:
        for block in blocks:
            exec(compile(block, "README.md (From Python)", "exec"), scope)
    finally:
        project = scope.get("project")
        if isinstance(project, Project):
            project.close()
    best = scope["best"]
    assert best == "demo[lr=0.1,layers=2]"
    points = scope["points"]
    assert set(points.attempt) == {1, 2}
    printed = {r["run"]: r for r in json.loads(nero("status", str(tmp_path / "demo"), "--json", check=True).stdout)}
    assert printed[best]["attempt"] == 2 and printed[best]["state"] == "completed"
    assert scope["png"] == tmp_path / "demo" / "val_loss.png" and scope["png"].stat().st_size > 1000
