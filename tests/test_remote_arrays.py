"""Slurm job arrays whose tasks write their own run folders (issue #14: 1,000 runs
dispatched in one pass): one job script rendered per group, one `values` file, each task
making its run folder when it starts. Against the testbed's real Slurm through sshd.

* Sheet values that need quoting (spaces, quotes, `$`, backticks, `;`) and a command of two
  lines reach each run's program as they were written; every run's folder holds what it
  always did (job.sh, params.json, submit.json, outputs, status files), with its metrics.
* A run whose array task has not started has no folder: `nero status` shows it submitted
  with Slurm's reason, a crash-free `nero abort` cancels it, and no folder is ever made.
"""

from __future__ import annotations

import json
import time

import pytest
from conftest import wait_for, write_workbook
from test_remote import Remote, remote  # noqa: F401 - the fixture

pytestmark = pytest.mark.xdist_group("testbed")

PROBE = r'''
import json, os, sys
with open(os.path.join(os.environ["NERO_RUN_DIR"], "probe.json"), "w") as f:
    json.dump({"argv": sys.argv[1:], "key": os.environ["NERO_RUN_KEY"], "cwd": os.getcwd(),
               "attempt": os.environ["NERO_ATTEMPT"]}, f)
for i in range(1, 4):
    print(f"step={i} loss={1 / i:.6f}", flush=True)
'''

HOSTILE = ["a b", "it's", "$HOME", "`id`", 'say "hi"', "x;y", "tab\there", "back\\slash", "ünï"]


def _cell(values: list[str]) -> str:
    """A list cell of these values (each quoted: with its single quotes doubled)."""
    out = []
    for v in values:
        out.append('"' + v + '"' if "'" in v else "'" + v + "'")
    return "[" + ", ".join(out) + "]"


def test_an_array_of_hostile_values_runs_each_task_in_the_folder_it_writes_itself(remote: Remote):  # noqa: F811
    (remote.project / "probe.py").write_text(PROBE)
    write_workbook(remote.project / "experiments.xlsx", [
        {"id": "q", "command": "python3 probe.py {{ v }} 'fixed arg'\necho done=1", "v": _cell(HOSTILE),
         "cluster": "slurm"},
    ], clusters=remote.clusters())
    proc = remote.nero("reconcile", str(remote.project), "--until-done", "--interval", "1", timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = remote.status()
    assert len(runs) == len(HOSTILE)
    assert all(r["state"] == "completed" for r in runs.values()), [(k, r["state"], r["reason"]) for k, r in runs.items()]
    assert len({r["job_id"].split("_")[0] for r in runs.values()}) == 1  # one array, one sbatch
    rows = remote.db("SELECT key, run_dir, job_id FROM attempts")
    assert len(rows) == len(HOSTILE) and all(jid for _, _, jid in rows)
    # the batch folder holds one shared script and one line of values per run
    batch = json.loads(remote.ssh(f"cat {rows[0][1]!r}/submit.json"))["record"]
    assert remote.ssh(f"wc -l < {batch}/values").strip() == str(len(HOSTILE))
    for key, run_dir, _ in rows:
        listing = set(remote.ssh(f"ls -A {run_dir!r}").split())
        assert {"job.sh", "params.json", "submit.json", "stdout.log", "stderr.log", "started", "exit_code",
                "heartbeat", "pid", ".claim", ".tick", "slurm.out", "probe.json"} <= listing, listing
        probe = json.loads(remote.ssh(f"cat {run_dir!r}/probe.json"))
        value = json.loads(remote.ssh(f"cat {run_dir!r}/params.json"))["v"]
        assert value in HOSTILE
        assert probe["argv"] == [value, "fixed arg"], probe  # one argument each, as written
        assert probe["key"] == key and probe["attempt"] == "1"
        submit = json.loads(remote.ssh(f"cat {run_dir!r}/submit.json"))
        assert submit["owner"]["key"] == key and submit["record"] == batch
        job_sh = remote.ssh(f"cat {run_dir!r}/job.sh")
        assert job_sh.startswith("#!/bin/bash\n") and "#SBATCH --job-name=nero-" in job_sh
        assert "NERO_V_COMMAND=" in job_sh
        assert remote.ssh(f"cat {run_dir!r}/stdout.log").splitlines()[-1] == "done=1"
        assert remote.ssh(f"readlink {run_dir!r}/slurm.out").strip().startswith(batch + "/")
        assert runs[key]["step"] == 3, runs[key]
    losses = remote.db("SELECT a.key, m.step, m.value FROM metrics m JOIN attempts a USING (key) WHERE m.name='loss'")
    assert sorted((k, s) for k, s, _ in losses) == sorted((k, s) for k, _, _ in rows for s in (1, 2, 3))
    assert all(abs(v - 1 / s) < 1e-5 for _, s, v in losses)


def test_pending_array_tasks_have_no_folder_show_in_status_and_are_cancelled(remote: Remote):  # noqa: F811
    write_workbook(remote.project / "experiments.xlsx", [
        {"id": "later", "command": "python3 stepper.py steps=2 delay=0.1 tag={{ t }}", "t": "range(0, 4)",
         "cluster": "slurm", "options": "--begin=now+1hour"},
    ], clusters=remote.clusters())
    proc = remote.nero("reconcile", str(remote.project), "-q")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = remote.db("SELECT key, run_dir, job_id FROM attempts")
    assert len(rows) == 4 and all("_" in jid for _, _, jid in rows)
    for _, run_dir, _ in rows:  # the tasks have not started: their folders do not exist yet
        assert remote.ssh(f"test -e {run_dir!r} && echo there || echo absent").strip() == "absent"
    time.sleep(1.1)
    proc = remote.nero("reconcile", str(remote.project), "-q")  # a monitoring pass over folder-less runs
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = remote.status()
    assert all(r["state"] == "submitted" for r in runs.values()), [(k, r["state"], r["reason"]) for k, r in runs.items()]
    assert all(r["job_id"] == jid for (key, _, jid) in rows for r in [runs[key]])
    text = remote.nero("status", str(remote.project)).stdout
    assert text.count("submitted") >= 4 or "4 submitted" in text, text
    logs = remote.nero("logs", "-w", str(remote.project), rows[0][0])
    assert logs.returncode != 0 and "has not started" in logs.stderr, logs.stdout + logs.stderr
    proc = remote.nero("abort", str(remote.project), "later*", "--yes")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wait_for(lambda: remote.nero("reconcile", str(remote.project), "-q", "--yes") and
             all(r["state"] == "cancelled" for r in remote.status().values()), timeout=60, what="all cancelled")
    [array] = {jid.split("_")[0] for _, _, jid in rows}
    states = remote.ssh(f"sacct -X -P -n -o JobID,State -j {array}")  # pending tasks: one line, `ID_[0-3]`
    assert states.strip() and all(line.split("|")[1].startswith("CANCELLED") for line in states.splitlines()), states
    assert not remote.ssh(f"squeue -h -r -j {array} 2>/dev/null; true").strip()
    for _, run_dir, _ in rows:  # cancelled before they started: never made
        assert remote.ssh(f"test -e {run_dir!r} && echo there || echo absent").strip() == "absent"


def test_nero_killed_after_sbatch_adopts_queued_tasks_that_have_no_folder(remote: Remote):  # noqa: F811
    """Killed right after `sbatch` returned, before the job ids were recorded, with the
    array's tasks still queued (no run folder exists): the next pass finds each run's batch
    through the batch index, adopts every task, and submits nothing again."""
    import os
    import subprocess
    import sys

    from test_remote import ROOT

    write_workbook(remote.project / "experiments.xlsx", [
        {"id": "held", "command": "python3 stepper.py steps=2 delay=0.1 tag={{ t }}", "t": "range(0, 5)",
         "cluster": "slurm", "options": "--begin=now+1hour"},
    ], clusters=remote.clusters())
    crash = (
        "import os\n"
        "from orchestrator.backends import make_backend\n"
        "from orchestrator.backends.slurm import SlurmBackend\n"
        "from orchestrator.reconcile import Reconciler\n"
        "class Crashing(SlurmBackend):\n"
        "    def submit(self, jobs):\n"
        "        super().submit(jobs)  # sbatch returned: the array exists\n"
        "        os.kill(os.getpid(), 9)  # ... and nero dies before recording it\n"
        "def factory(cluster, project_dir):\n"
        "    if cluster.kind.value == 'slurm':\n"
        "        return Crashing(cluster, project_dir)\n"
        "    return make_backend(cluster, project_dir)\n"
        f"r = Reconciler({str(remote.project / 'experiments.xlsx')!r}, backend_factory=factory)\n"
        "r.load(); r.run_pass()\n"
    )
    proc = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **remote.nero_env}, cwd=ROOT)
    assert proc.returncode == -9, proc.stderr
    rows = remote.db("SELECT key, intent, job_id, run_dir FROM attempts")
    assert len(rows) == 5 and all(intent == 1 and not jid for _, intent, jid, _ in rows)
    for *_, run_dir in rows:
        assert remote.ssh(f"test -e {run_dir!r} && echo there || echo absent").strip() == "absent"
    proc = remote.nero("reconcile", str(remote.project))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 were found on the cluster and adopted" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    runs = remote.status()
    assert all(r["state"] == "submitted" and r["attempt"] == 1 for r in runs.values()), runs
    arrays = {r["job_id"].split("_")[0] for r in runs.values()}
    assert len(arrays) == 1 and sorted(r["job_id"].split("_")[1] for r in runs.values()) == ["0", "1", "2", "3", "4"]
    name = remote.ssh(f"sacct -X -P -n -j {next(iter(arrays))} -o JobName").split()[0]
    again = remote.ssh(f"squeue -h -r -u $USER -n {name} -o %i").split()
    assert len({i.split("_")[0] for i in again}) == 1, again  # never a second array
    assert remote.db("SELECT COUNT(*) FROM attempts") == [(5,)]
