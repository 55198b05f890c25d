"""The core loop end to end on the local cluster: real workbooks, real jobs, real SQLite."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import nero, state_db, wait_for, write_workbook
from jobs import ARGV, STEPPER


def status(project: Path) -> list[dict]:
    out = nero("status", str(project), "--json", check=True).stdout
    return json.loads(out) if out.strip().startswith("[") else []


def running_after_pass(project: Path) -> list[dict]:
    """Run one pass (status only reads the state store), then the running runs."""
    nero("reconcile", str(project), "-q", check=True)
    return [r for r in status(project) if r["state"] == "running"]


def dump_state(project: Path) -> list[str]:
    with state_db(project) as con:
        return list(con.iterdump())


# --------------------------------------------------------------------------- Must show 1
@pytest.mark.slow
def test_demo_from_init_runs_to_completion_and_results_hold_the_printed_metrics(project: Path):
    nero("init", str(project / "demo"), check=True)
    t0 = time.time()
    proc = nero("reconcile", str(project / "demo"), "--until-done", "--interval", "1", timeout=170)
    elapsed = time.time() - t0
    assert elapsed < 120, f"demo took {elapsed:.0f}s"
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = status(project / "demo")
    assert len(runs) >= 6
    # the diverging and the stalling configurations are stopped by the rules; the rest complete
    by_key = {r["run"]: r for r in runs}
    assert {r["state"] for r in runs} == {"completed", "terminated"}
    nan_run = by_key["demo[lr=3,layers=2]"]
    assert nan_run["state"] == "terminated" and nan_run["reason"].startswith("isnan(loss) or isinf(loss) (loss=nan")
    stalled = by_key["demo[lr=0.1,layers=0]"]
    assert stalled["state"] == "terminated" and stalled["reason"].startswith("plateau(val_loss, 5) (val_loss=")
    assert nan_run["step"] < 20 and stalled["step"] < 20  # stopped early (see also the next test)
    completed = [r for r in runs if r["state"] == "completed"]
    assert len(completed) >= 3

    import pandas as pd

    summary = pd.read_excel(project / "demo" / "results.xlsx", sheet_name="Summary")
    assert len(summary) == len(runs)
    reasons = dict(zip(summary["run"], summary["reason"], strict=True))
    assert reasons[nan_run["run"]] == nan_run["reason"] and reasons[stalled["run"]] == stalled["reason"]
    for r in completed:
        printed: dict[str, str] = {}
        for line in (Path(r["run_dir"]) / "stdout.log").read_text().splitlines():
            printed.update(dict(re.findall(r"(\w+)=([-+0-9.eE]+|nan)", line)))
        row = summary[summary["run"] == r["run"]].iloc[0]
        for metric in ("loss", "val_loss", "acc"):
            # the program prints rounded values and logs exact ones through track:
            # they agree to the printed precision
            text = printed[metric]
            decimals = len(text.split(".")[1]) if "." in text else 0
            assert abs(row[f"last:{metric}"] - float(text)) <= 0.5 * 10 ** -decimals + 1e-12, (r["run"], metric)


# --------------------------------------------------------------------------- Must show 2
def _edits_workbook(project: Path, *, b_steps: int = 400, a_values: str = "[1, 2]", c_state: str = "run",
                    with_d: bool = True) -> Path:
    rows = [
        {"id": "a", "command": "python stepper.py steps=400 delay=0.1 tag={{ tag }}", "tag": a_values},
        {"id": "b", "command": "python stepper.py steps={{ steps }} delay=0.1", "steps": b_steps},
        {"id": "c", "command": "python stepper.py steps=400 delay=0.1", "state": c_state},
    ]
    if with_d:
        rows.append({"id": "d", "command": "python stepper.py steps=400 delay=0.1"})
    return write_workbook(project / "experiments.xlsx", rows, clusters=[{"name": "local", "kind": "local", "max_jobs": 16}])


def plan_json(project: Path, *extra: str) -> list[tuple[str, str, str]]:
    out = json.loads(nero("plan", str(project), "--json", *extra, check=True).stdout)
    return sorted((a["action"], a["run"], a["reason"]) for a in out["actions"])


def test_edits_make_plan_print_the_expected_actions_and_reconcile_carries_them_out(project: Path):
    (project / "stepper.py").write_text(STEPPER)
    _edits_workbook(project)
    assert plan_json(project) == [
        ("submit", "a[tag=1]", "new run"), ("submit", "a[tag=2]", "new run"),
        ("submit", "b", "new run"), ("submit", "c", "new run"), ("submit", "d", "new run"),
    ]
    nero("reconcile", str(project), check=True)
    assert plan_json(project) == []  # no edit: nothing to do
    before = {r["run"]: r for r in status(project)}

    # change a value, add a value to a list, set state=stop, delete a row
    time.sleep(1.1)  # a new mtime even on coarse file systems
    _edits_workbook(project, b_steps=500, a_values="[1, 2, 3]", c_state="stop", with_d=False)
    expected = [
        ("cancel", "c", "state=stop in Experiments row 4"),
        ("orphaned", "d", "row removed from the sheet but still running; set state=stop on a row for it or run with --prune to cancel it"),
        ("restart", "b", "steps: 400 → 500"),
        ("submit", "a[tag=3]", "new run"),
    ]
    assert plan_json(project) == expected
    human = nero("plan", str(project), check=True).stdout
    assert "steps: 400 → 500" in human and "Plan: 1 to submit, 1 to restart, 1 to cancel, 1 orphaned" in human

    # a pass starts the new run at once; the restart and the cancel throw work away: they wait
    said = nero("reconcile", str(project), check=True).stdout
    assert "restart b (steps: 400 → 500; cancels the running attempt) — awaiting confirmation: nero apply " in said
    waiting = {r["run"]: r for r in status(project)}
    assert waiting["b"]["attempt"] == 1 and waiting["c"]["state"] == "running"
    assert waiting["a[tag=3]"]["state"] in ("submitted", "running")
    nero("apply", str(project), check=True)  # confirms what awaits and runs the pass

    def c_cancelled():
        nero("reconcile", str(project), check=True)
        runs = {r["run"]: r for r in status(project)}
        return runs if runs["c"]["state"] == "cancelled" else None

    after = wait_for(c_cancelled, timeout=30, every=0.5, what="c cancelled")
    assert after["b"]["attempt"] == 2 and after["b"]["state"] in ("submitted", "running")
    assert after["a[tag=3]"]["state"] in ("submitted", "running")
    assert after["d"]["state"] == "running" and after["d"]["orphaned"]
    assert after["a[tag=1]"]["job_id"] == before["a[tag=1]"]["job_id"]  # untouched
    # the restarted run's first attempt was cancelled with the reason
    with state_db(project) as con:
        old = con.execute("SELECT state, reason FROM attempts WHERE key='b' AND attempt=1").fetchone()
    assert old == ("cancelled", "restarted: steps: 400 → 500")

    # with no edit, the plan is empty again, but the orphan is still reported
    assert [a[:2] for a in plan_json(project)] == [("orphaned", "d")]
    # --prune cancels it, once confirmed
    assert [a[:2] for a in plan_json(project, "--prune")] == [("cancel", "d")]
    nero("reconcile", str(project), "--prune", check=True)
    assert {r["run"]: r["state"] for r in status(project)}["d"] == "running"
    nero("apply", str(project), "--prune", check=True)

    def d_cancelled():
        nero("reconcile", str(project), check=True)
        return {r["run"]: r["state"] for r in status(project)}["d"] == "cancelled"

    wait_for(d_cancelled, timeout=30, every=0.5, what="d cancelled")


# --------------------------------------------------------------------------- Must show 3
HOSTILE = ["x'; touch {marker} #", "$(touch {marker})", "`touch {marker}`", "a\nb; touch {marker}", "--flag=$HOME", "*"]


def test_hostile_parameter_values_reach_the_program_as_literal_arguments(project: Path):
    marker = project / "pwned"
    values = [v.format(marker=marker) for v in HOSTILE]
    (project / "argv.py").write_text(ARGV)
    quoted = "[" + ", ".join('"' + v + '"' for v in values) + "]"
    assert not any('"' in v for v in values)
    write_workbook(project / "experiments.xlsx", [
        {"id": "evil", "command": "python argv.py {{ v }} {{ run_key }}", "v": quoted},
    ])
    proc = nero("reconcile", str(project), "--until-done", "--interval", "0.5", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = status(project)
    assert len(runs) == len(values)
    seen = []
    for r in runs:
        argv = json.loads((Path(r["run_dir"]) / "argv.json").read_text())
        assert len(argv) == 2 and argv[1] == r["run"]
        seen.append(argv[0])
    assert sorted(seen) == sorted(values)
    assert not marker.exists()
    job = (Path(runs[0]["run_dir"]) / "job.sh").read_text()
    assert "nero job script" in job  # the rendered script is kept for a person to read


# --------------------------------------------------------------------------- Must show 4
def test_invalid_workbook_is_reported_cell_by_cell_and_touches_nothing(project: Path):
    (project / "stepper.py").write_text(STEPPER)
    write_workbook(project / "experiments.xlsx", [
        {"id": "ok", "command": "python stepper.py steps=300 delay=0.1"},
    ])
    nero("reconcile", str(project), check=True)
    running = wait_for(lambda: running_after_pass(project), what="job running")
    state_before = dump_state(project)

    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.title = "Experiments"
    ws.append(["id", "command", "cluster", "state", "cpus", "lr", "after", "mem"])
    ws.append(["ok", "python stepper.py steps=300 delay=0.1", None, "stop", None, None, None, None])  # would cancel
    ws.append([None, "python x.py", None, None, None, None, None, None])                # 3: missing id
    ws.append(["dup", "python x.py", None, None, None, None, None, None])               # 4
    ws.append(["dup", "python x.py", None, None, None, None, None, None])               # 5: duplicate id
    ws.append(["bad var", "python x.py --lr {{ lr }}", None, None, None, "[0.1, 0.2", None, None])  # 6: id, variation
    ws.append(["e7", "python x.py", "nowhere", None, None, None, None, None])           # 7: unknown cluster
    ws.append(["e8", "python x.py", None, "maybe", None, None, None, None])             # 8: unknown state
    ws.append(["e9", "python x.py", None, None, "four", None, None, None])              # 9: text in cpus
    ws.append(["e10", "python x.py {{ lr }}", None, None, None, "=1/0", None, None])    # 10: formula, no value
    ws.append(["e11", None, None, None, None, None, "ghost", "lots"])                   # 11: no command, after, mem
    ws2 = wb.create_sheet("Clusters")
    ws2.append(["name", "kind"])
    ws2.append(["gpu", "kubernetes"])                                                   # Clusters!B2
    wb.create_sheet("Metrics").append(["name", "pattern"])
    wb["Metrics"].append(["acc", "acc=("])                                              # Metrics!B2
    wb.save(project / "experiments.xlsx")

    for cmd in (["plan"], ["reconcile"], ["reconcile", "--until-done"]):
        proc = nero(*cmd, str(project))
        assert proc.returncode == 2, proc.stdout + proc.stderr
    text = proc.stderr
    for cell in ("Experiments!A3", "Experiments!A5", "Experiments!A6", "Experiments!F6", "Experiments!C7",
                 "Experiments!D8", "Experiments!E9", "Experiments!F10", "Experiments!B11", "Experiments!G11",
                 "Experiments!H11", "Clusters!B2", "Metrics!B2"):
        assert cell in text, f"{cell} not reported:\n{text}"
    assert "nothing was dispatched" in text
    # nothing cancelled, nothing written
    assert dump_state(project) == state_before
    again = {r["run"]: r for r in status(project)}
    assert again["ok"]["state"] == "running" and again["ok"]["job_id"] == running[0]["job_id"]
    pid = int(running[0]["job_id"])
    assert Path(f"/proc/{pid}").exists()

    # a missing required sheet / column is reported too
    wb = Workbook()
    wb.active.title = "Runs"
    wb.save(project / "other.xlsx")
    proc = nero("plan", str(project / "other.xlsx"))
    assert proc.returncode == 2 and "Experiments" in proc.stderr


# --------------------------------------------------------------------------- Must show 5
def _metrics_in_db(project: Path) -> dict[str, list[int]]:
    if not (project / ".nero" / "state.db").exists():
        return {}
    with state_db(project) as con:
        rows = con.execute("SELECT key, step FROM metrics WHERE name='loss' AND source='stdout' ORDER BY rowid").fetchall()
    out: dict[str, list[int]] = {}
    for key, step in rows:
        out.setdefault(key, []).append(step)
    return out


@pytest.mark.slow
def test_sigkill_of_the_watch_loop_loses_nothing_and_submits_nothing_twice(project: Path):
    (project / "stepper.py").write_text(STEPPER)
    write_workbook(project / "experiments.xlsx", [
        {"id": "k", "command": "python stepper.py steps=80 delay=0.1 tag={{ tag }}", "tag": "[1, 2, 3, 4]"},
    ], clusters=[{"name": "local", "kind": "local", "max_jobs": 8}])
    cmd = [sys.executable, "-m", "orchestrator", "reconcile", str(project), "--watch", "--interval", "0.3", "-q"]
    for round_ in range(3):
        loop = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(lambda n=20 * (round_ + 1): sum(len(v) for v in _metrics_in_db(project).values()) > n,
                 timeout=60, what="metrics ingested")
        loop.send_signal(signal.SIGKILL)
        loop.wait()
    jobs_before = {r["run"]: r["job_id"] for r in status(project)}
    assert len(jobs_before) == 4
    proc = nero("reconcile", str(project), "--until-done", "--interval", "0.3", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = status(project)
    assert {r["run"]: r["job_id"] for r in runs} == jobs_before  # same jobs, never resubmitted
    assert all(r["attempt"] == 1 and r["state"] == "completed" for r in runs)
    with state_db(project) as con:
        assert con.execute("SELECT COUNT(*) FROM attempts").fetchone()[0] == 4
    # every printed step ingested exactly once, in order
    for key, steps in _metrics_in_db(project).items():
        assert steps == list(range(1, 81)), key


def test_crash_between_submit_and_record_adopts_the_job(project: Path):
    """A reconciler killed right after the job started, before it recorded the job id."""
    (project / "stepper.py").write_text(STEPPER)
    write_workbook(project / "experiments.xlsx", [{"id": "once", "command": "python stepper.py steps=30 delay=0.1"}])
    crash = (
        "import os, sys\n"
        "from orchestrator.backends.local import LocalBackend\n"
        "from orchestrator.reconcile import Reconciler\n"
        "class Crashing(LocalBackend):\n"
        "    def submit(self, jobs, ready=None):\n"
        "        super().submit(jobs, ready)\n"
        "        os._exit(9)\n"
        f"r = Reconciler({str(project / 'experiments.xlsx')!r}, backend_factory=Crashing)\n"
        "r.load(); r.run_pass()\n"
    )
    proc = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    with state_db(project) as con:
        assert con.execute("SELECT intent, job_id FROM attempts").fetchall() == [(1, "")]
    proc = nero("reconcile", str(project), "--until-done", "--interval", "0.3", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "adopted" in proc.stdout
    runs = status(project)
    assert len(runs) == 1 and runs[0]["attempt"] == 1 and runs[0]["state"] == "completed"
    assert len(list((project / "runs").rglob("job.sh"))) == 1
    assert sorted(set(_metrics_in_db(project)["once"])) == list(range(1, 31))


def test_jobs_survive_ctrl_c_of_the_loop(project: Path):
    (project / "stepper.py").write_text(STEPPER)
    write_workbook(project / "experiments.xlsx", [{"id": "s", "command": "python stepper.py steps=40 delay=0.1"}])
    loop = subprocess.Popen([sys.executable, "-m", "orchestrator", "reconcile", str(project), "--watch", "--interval", "0.3"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = wait_for(lambda: [r for r in status(project) if r["state"] == "running"], what="running")[0]
    loop.send_signal(signal.SIGINT)
    _, err = loop.communicate(timeout=30)
    assert "Jobs keep running" in err
    assert Path(f"/proc/{run['job_id']}").exists()
    proc = nero("reconcile", str(project), "--until-done", "--interval", "0.3", timeout=60)
    assert proc.returncode == 0
    assert status(project)[0]["state"] == "completed"


def test_failed_run_reason_and_until_done_exit_code(project: Path):
    (project / "stepper.py").write_text(STEPPER)
    write_workbook(project / "experiments.xlsx", [
        {"id": "bad", "command": "python stepper.py steps=3 delay=0.05 fail=3; echo 'boom: disk full' >&2; exit 3"},
    ])
    proc = nero("reconcile", str(project), "--until-done", "--interval", "0.3", timeout=60)
    assert proc.returncode == 1
    r = status(project)[0]
    assert r["state"] == "failed" and r["reason"] == "exit code 3: boom: disk full"
    assert "did not complete" in proc.stderr


def test_status_logs_and_lost_detection(project: Path):
    (project / "stepper.py").write_text(STEPPER)
    # long enough to be still running when it is killed, however slow the commands below are
    write_workbook(project / "experiments.xlsx", [{"id": "v", "command": "python stepper.py steps=4000 delay=0.05"}])
    nero("reconcile", str(project), check=True)
    r = wait_for(lambda: running_after_pass(project), what="running")[0]
    table = nero("status", str(project), check=True).stdout
    assert "v" in table and "running" in table
    time.sleep(0.5)
    logs = nero("logs", "v", "-w", str(project), check=True).stdout
    assert "step=1 loss=1.000000" in logs
    assert nero("logs", "1", "-w", str(project), "-n", "1", check=True).stdout.count("\n") == 1
    # kill -9 the whole job: no exit code is ever written → lost
    os.killpg(int(r["job_id"]), signal.SIGKILL)
    time.sleep(0.3)
    nero("reconcile", str(project), check=True)
    r = status(project)[0]
    assert r["state"] == "lost" and "without writing an exit code" in r["reason"]
    assert nero("logs", "nope", "-w", str(project)).returncode != 0


def test_git_commit_and_dirty_flag_are_recorded(project: Path):
    (project / "stepper.py").write_text(STEPPER)
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    subprocess.run(["git", "-C", str(project), "-c", "user.email=t@t", "-c", "user.name=t", "add", "stepper.py"], check=True)
    subprocess.run(["git", "-C", str(project), "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x"], check=True)
    head = subprocess.run(["git", "-C", str(project), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    write_workbook(project / "experiments.xlsx", [{"id": "g", "command": "python stepper.py steps=2 delay=0"}])
    (project / "stepper.py").write_text(STEPPER + "\n# edited\n")
    nero("reconcile", str(project), "--until-done", "--interval", "0.3", check=True)
    with state_db(project) as con:
        assert con.execute("SELECT git_commit, git_dirty FROM attempts").fetchone() == (head, 1)


def test_watch_keeps_the_last_good_plan_while_the_workbook_is_half_saved_or_open(project: Path):
    (project / "stepper.py").write_text(STEPPER)
    book = write_workbook(project / "experiments.xlsx", [
        {"id": "w", "command": "python stepper.py steps=150 delay=0.1 tag={{ tag }}", "tag": "[1]"},
    ])
    good = book.read_bytes()
    loop = subprocess.Popen([sys.executable, "-m", "orchestrator", "reconcile", str(project), "--watch", "--interval", "0.3"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: [r for r in status(project) if r["state"] == "running"], what="running")
        book.write_bytes(good[: len(good) // 2])  # a half-saved file
        time.sleep(1.5)
        (project / ".~lock.experiments.xlsx#").write_text("someone,editing")
        write_workbook(book, [{"id": "w", "command": "python stepper.py steps=150 delay=0.1 tag={{ tag }}",
                               "tag": "[1, 2]"}])
        time.sleep(1.5)
        assert [r["run"] for r in status(project)] == ["w[tag=1]"]  # not applied while open elsewhere
        (project / ".~lock.experiments.xlsx#").unlink()
        wait_for(lambda: len(status(project)) == 2, timeout=20, what="the saved edit applied")
        assert all(r["state"] in ("submitted", "running") for r in status(project))
    finally:
        loop.send_signal(signal.SIGINT)
        _, err = loop.communicate(timeout=30)
    assert "keeping the last good plan" in err
    assert "is open in a spreadsheet program" in err
    assert err.count("keeping the last good plan") <= 3  # warned when it changed, not every pass


def test_a_stop_rule_fires_in_the_first_pass_that_sees_the_nan(project: Path):
    script = "import time\nprint('step=1 loss=1.0', flush=True)\nprint('step=2 loss=nan', flush=True)\ntime.sleep(60)\n"
    (project / "nan.py").write_text(script)
    write_workbook(project / "experiments.xlsx", [{"id": "n", "command": "python nan.py", "rules": "isnan(loss)"}])
    nero("reconcile", str(project), check=True)
    wait_for(lambda: list(project.rglob("stdout.log")) and "nan" in next(project.rglob("stdout.log")).read_text(),
             what="the NaN printed")
    nero("reconcile", str(project), check=True)  # the first pass after it
    events = json.loads(nero("history", str(project), "--json", check=True).stdout)
    assert [e["event"] for e in events if e["event"] in ("terminate", "terminated")][:1] == ["terminate"]
    assert next(e for e in events if e["event"] == "terminate")["reason"] == "isnan(loss) (loss=nan at step 2)"
    nero("reconcile", str(project), "--until-done", "--interval", "0.3", timeout=60)
    run = status(project)[0]
    assert run["state"] == "terminated" and run["reason"] == "isnan(loss) (loss=nan at step 2)"
    assert list(project.rglob("stopped"))  # the job script got the stop while the program ran


def test_a_job_printing_random_bytes_has_no_metrics(project: Path):
    # seeded: unseeded noise now and then holds a short printable line such as `fjV=3`, which
    # is text and rightly a metric
    script = ("import random, sys\nfor s in range(20):\n    sys.stdout.buffer.write(random.Random(s).randbytes(50_000))\n"
              "sys.stdout.buffer.write(b'\\nloss=0.25\\n')\n")
    (project / "noise.py").write_text(script)
    write_workbook(project / "experiments.xlsx", [{"id": "noise", "command": "python noise.py"}])
    nero("reconcile", str(project), "--until-done", "--interval", "0.3", timeout=120, check=True)
    run = status(project)[0]
    assert run["state"] == "completed"
    with state_db(project) as con:
        names = {n for (n,) in con.execute("SELECT DISTINCT name FROM metrics")}
    assert names == {"loss"}


def test_a_rule_firing_after_the_program_exited_0_leaves_the_run_completed(project: Path):
    # The rule's metric is read in a pass that cannot yet close the run (more output than one
    # poll reads, 32 MiB locally), so the rule fires after the program had printed its last
    # line and written exit code 0: the run is completed, the rule a warning (issue #11).
    script = ("import sys\nprint('step=5 loss=nan', flush=True)\nline = '.' * 1023 + '\\n'\n"
              "sys.stdout.write(line * (33 * 1024))\n")
    (project / "last.py").write_text(script)
    write_workbook(project / "experiments.xlsx", [{"id": "last", "command": "python last.py", "rules": "isnan(loss)"}])
    nero("reconcile", str(project), check=True)
    wait_for(lambda: list(project.rglob("exit_code")), what="the program's exit code")
    nero("reconcile", str(project), check=True)  # reads the NaN but not yet the end: the rule fires
    events = json.loads(nero("history", str(project), "--json", check=True).stdout)
    assert [e["event"] for e in events if e["event"] in ("terminate", "completed")] == ["terminate"]
    nero("reconcile", str(project), "--until-done", "--interval", "0.3", timeout=60, check=True)
    run = status(project)[0]
    assert run["state"] == "completed" and run["reason"] == "exit code 0"
    events = json.loads(nero("history", str(project), "--json", check=True).stdout)
    kinds = [e["event"] for e in events]
    assert "terminated" not in kinds and kinds[-2:] == ["completed", "warn"]
    assert events[-1]["reason"] == "isnan(loss) (loss=nan at step 5) (fired after the program had ended)"
    assert not list(project.rglob("stopped"))
