"""#14: commands whose output follows what the user looks at, not the project's size. A real
project of a few hundred runs (a real workbook, its real SQLite store filled as passes would
fill it) with a small summary threshold (NERO_STATUS_ROWS) stands for 100,000 runs: `nero
status` summarises and lists every run on request, `--json`/`--csv` write every run, and
`nero plan` groups actions alike."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

from conftest import nero, write_workbook

from orchestrator.model import NewAttempt, RunState, Update
from orchestrator.reconcile import Reconciler

SMALL = {"NERO_STATUS_ROWS": "50"}
ROWS = [{"id": "a", "command": "python train.py --lr {{ lr }}", "lr": "range(20)", "seed": "range(6)"},
        {"id": "b", "command": "python train.py --lr {{ lr }}", "lr": "range(10)", "seed": "range(3)"}]


def _filled(project: Path) -> list[str]:
    """150 runs of two rows, all submitted once: every 10th failed, the rest completed with a
    `loss` that is lowest for the last run; returns the run keys in number order."""
    wb = write_workbook(project / "experiments.xlsx", ROWS, settings={"primary_metric": "loss"})
    rec = Reconciler(wb)
    rec.load()
    now = time.time()
    rec.store.record_intents([NewAttempt(s, 1, "local", str(project / "runs" / str(i)), s.command)
                              for i, s in enumerate(rec.specs)], now - 100)
    rec.store.apply([Update(s.key, 1, state=RunState.FAILED if i % 10 == 0 else RunState.COMPLETED, intent=False,
                            job_id=str(i), reason="exit code 1" if i % 10 == 0 else "exit code 0",
                            started_at=now - 90, ended_at=now - 90 + i / 10, last={"loss": 1 / (1 + i)},
                            best={"loss": 1 / (1 + i)})
                     for i, s in enumerate(rec.specs)])
    keys = [s.key for s in rec.specs]
    rec.close()
    assert len(keys) == 150
    return keys


def test_status_summarises_many_runs_and_lists_every_run_on_request(project: Path):
    """#14: `nero status` laid out a table of every run (65 s at 100,000 runs); above the
    threshold it summarises: counts by state and by experiment, the runs that need attention,
    the top runs by primary_metric, and says how to see everything; `nero status all` lists
    every run (a plain table), and below the threshold the table is as before."""
    keys = _filled(project)
    out = nero("status", str(project), check=True, env=SMALL).stdout
    assert "150 runs: 135 completed, 15 failed" in out, out
    by_exp = out.split("By experiment:")[1].splitlines()
    assert by_exp[2].split() == ["a", "120", "108", "completed,", "12", "failed"], out
    assert by_exp[3].split() == ["b", "30", "27", "completed,", "3", "failed"], out
    assert "Need attention: 15 failed" in out and "`nero status failed`" in out, out
    top = out.split("Top 10 by loss (min, best value):")[1].splitlines()
    assert keys[-1] in top[2] and "0.006667" in top[2], top  # the lowest loss first (1/150)
    assert "`nero status all` lists every run" in out
    assert keys[55] not in out  # a run that is neither failed, recent nor top is not listed
    assert "Not started" not in out and "as of the pass" not in out  # no pass recorded; nothing unstarted
    every = nero("status", str(project), "all", check=True, env=SMALL).stdout
    assert all(k in every for k in keys) and "A summary" not in every
    assert every.splitlines()[0].split() == ["#", "run", "state", "cluster", "runtime", "step", "metrics", "reason"]
    failed = nero("status", str(project), "failed", check=True, env=SMALL).stdout
    assert sum(k in failed for k in keys) == 15
    table = nero("status", str(project), check=True).stdout  # 150 runs, under the default 200
    assert all(k in table for k in keys) and "A summary" not in table


def test_status_json_and_csv_write_every_run(project: Path):
    """#14: `status --json` held every run in memory before printing (843 MiB at 100,000);
    now written run by run, it is the same JSON list; --csv writes a line per run with the
    metrics as `last:`/`best:` columns. Neither summarises, whatever the threshold."""
    keys = _filled(project)
    proc = nero("status", str(project), "--json", check=True, env=SMALL)
    runs = json.loads(proc.stdout)
    assert [r["run"] for r in runs] == keys
    assert runs[0]["state"] == "failed" and runs[1]["metrics"] == {"loss": 0.5} and runs[1]["best"] == {"loss": 0.5}
    assert "no reconcile pass recorded yet" in proc.stderr
    proc = nero("status", str(project), "--csv", check=True, env=SMALL)
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [r["run"] for r in rows] == keys
    assert rows[1]["state"] == "completed" and float(rows[1]["last:loss"]) == 0.5 and rows[1]["experiment"] == "a"
    assert "no reconcile pass recorded yet" in proc.stderr
    assert len(json.loads(nero("status", str(project), "b*", "--json", check=True).stdout)) == 30


def test_plan_groups_actions_alike_and_lists_them_on_request(project: Path):
    """#14: the text plan listed every action (5× slower than --json at 100,000 runs); above
    the threshold, actions alike are one line ("+ submit 120 runs of a"), the counts stay
    exact, and `--details` lists each run."""
    write_workbook(project / "experiments.xlsx", ROWS, clusters=[{"name": "local", "kind": "local", "max_jobs": 200}])
    out = nero("plan", str(project), check=True, env=SMALL).stdout
    lines = out.splitlines()
    assert lines[1].split() == ["+", "submit", "120", "runs", "of", "a", "new", "run", "→", "local"], out
    assert lines[2].split() == ["+", "submit", "30", "runs", "of", "b", "new", "run", "→", "local"], out
    assert "(150 actions grouped; `nero plan --details` lists each run)" in out
    assert "Plan: 150 to submit; 0 unchanged." in out
    assert "a[lr=3,seed=2]" not in out
    details = nero("plan", str(project), "--details", check=True, env=SMALL).stdout
    assert "a[lr=3,seed=2]" in details and "grouped" not in details
    assert sum(line.startswith("+  submit") for line in details.splitlines()) == 150
    plain = nero("plan", str(project), check=True).stdout  # under the default 200: one line per run
    assert "a[lr=3,seed=2]" in plain and "grouped" not in plain
