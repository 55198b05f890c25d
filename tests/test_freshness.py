"""How fresh `nero status` and `nero plan` say their picture is (#13: "`nero status` without
a running reconcile shows 'running, step 181' for a run that ended long ago, with no sign
that the picture is old"), on real local jobs and a real reconcile loop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import nero, state_db, wait_for, write_workbook
from jobs import SLEEPER

LOCAL = [{"name": "local", "kind": "local", "max_jobs": 4}]


def test_status_says_the_last_pass_is_old_and_shows_a_local_run_that_ended_since_as_ended(project: Path):
    """#13 must-show 4: one pass starts a job and no reconcile runs after it; once the job
    ended, `nero status` shows it ended (it reads the local run folder itself), and says when
    the pass was and that no reconcile is running; an hour later (NERO_NOW), an hour ago."""
    (project / "sleeper.py").write_text(SLEEPER)
    write_workbook(project / "experiments.xlsx", [{"id": "s", "command": "python sleeper.py 1"}], clusters=LOCAL)
    t0 = float(int(time.time()))
    nero("reconcile", str(project), "-q", check=True, env={"NERO_NOW": repr(t0)})
    with state_db(project) as con:
        (state, run_dir), = con.execute("SELECT state, run_dir FROM attempts").fetchall()
        assert state in ("submitted", "running")
        assert con.execute("SELECT value FROM meta WHERE key = 'last_pass'").fetchone() == (repr(t0),)
    wait_for(lambda: (Path(run_dir) / "exit_code").exists(), timeout=60, what="the job's end")

    later = {"NERO_NOW": repr(t0 + 3600)}
    shown = nero("status", str(project), check=True, env=later).stdout
    same_day = time.localtime(t0)[:3] == time.localtime(t0 + 3600)[:3]  # run after 23:00, an hour later is tomorrow:
    stamp = time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S", time.localtime(t0))  # the date is said
    assert "completed" in shown and "running" not in shown.replace("no reconcile running", ""), shown
    assert f"as of the pass at {stamp} (1h00m ago)" in shown, shown
    assert "local runs read just now (1 ended since)" in shown, shown
    assert "no reconcile running — run `nero reconcile` to update" in shown, shown
    # the end was recorded (as a pass's poll records it): history has it, and it stays ended
    events = [e["event"] for e in json.loads(nero("history", str(project), "--json", check=True).stdout)]
    assert events[-1] == "completed", events
    with state_db(project) as con:
        assert con.execute("SELECT state FROM attempts").fetchall() == [("completed",)]
        assert con.execute("SELECT value FROM meta WHERE key = 'last_pass'").fetchone() == (repr(t0),)

    # --json stays a list of runs; each says when its state was read; the line goes to stderr
    proc = nero("status", str(project), "--json", check=True, env=later)
    (run,) = json.loads(proc.stdout)
    assert run["state"] == "completed" and run["as_of"] == t0
    assert f"as of the pass at {stamp} (1h00m ago)" in proc.stderr
    plan = json.loads(nero("plan", str(project), "--json", check=True, env=later).stdout)
    assert plan["freshness"]["last_pass"] == t0 and plan["freshness"]["age_s"] == 3600
    assert plan["freshness"]["reconcile_running"] is False
    assert "no reconcile running" in nero("plan", str(project), check=True, env=later).stdout

    # a store from before pass times were recorded keeps working, and says it has none
    with state_db(project) as con:
        con.execute("DELETE FROM meta WHERE key = 'last_pass'")
        con.commit()
    shown = nero("status", str(project), check=True).stdout
    assert "completed" in shown and "no reconcile pass recorded yet; no reconcile running" in shown, shown


def test_status_names_the_running_reconcile_and_touches_nothing_while_it_holds_the_lock(project: Path):
    """#13: with `nero reconcile --watch` running, status and plan say so (its pid, watching)
    and leave the store to it; once it stopped, they say none is running."""
    (project / "sleeper.py").write_text(SLEEPER)
    write_workbook(project / "experiments.xlsx", [{"id": "s", "command": "python sleeper.py 0.2"}], clusters=LOCAL)
    loop = subprocess.Popen([sys.executable, "-m", "orchestrator", "reconcile", str(project), "--watch",
                             "--interval", "0.5", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (project / ".nero" / "reconcile.pid").exists(), timeout=60, what="the loop's pid file")
        assert (project / ".nero" / "reconcile.pid").read_text().split() == [str(loop.pid), "watching"]
        shown = wait_for(lambda: (out := nero("status", str(project), check=True).stdout) and "completed" in out
                         and out, timeout=60, what="the run completed by the loop")
        assert f"reconcile running (pid {loop.pid}, watching)" in shown, shown
        assert "local runs read" not in shown
        fresh = json.loads(nero("plan", str(project), "--json", check=True).stdout)["freshness"]
        assert fresh["reconcile_running"] is True and fresh["pid"] == loop.pid and fresh["doing"] == "watching"
    finally:
        loop.send_signal(signal.SIGINT)
        loop.wait(timeout=60)
    assert not (project / ".nero" / "reconcile.pid").exists()
    assert "no reconcile running" in nero("status", str(project), check=True).stdout
