"""Job arrays whose tasks write their own run folders (issue #14: 1,000 runs dispatched in
one pass), on Slurm and on SGE: one job script rendered per group, one `values` file, each
task making its run folder when it starts. Against the testbed's real Slurm and SGE through
sshd.

* Sheet values that need quoting (spaces, quotes, `$`, backticks, `;`) and a command of two
  lines reach each run's program as they were written; every run's folder holds what it
  always did (job.sh, params.json, submit.json, outputs, status files), with its metrics.
* A run whose array task has not started has no folder: `nero status` shows it submitted
  with Slurm's reason, a crash-free `nero abort` cancels it, and no folder is ever made.
"""

from __future__ import annotations

import json
import re
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

# per kind: the sheet's option that holds a job (it stays queued), the link to a task's output,
# the job script's name directive, how a task's id joins its array's and the tasks' first number
KINDS = {"slurm": ("--begin=now+1hour", "slurm.out", "#SBATCH --job-name=nero-", "_", 0),
         "sge": ("-h", "sge.out", "#$ -N nero-", ".", 1)}


def _array(jid: str, kind: str) -> str:
    return jid.split(KINDS[kind][3])[0]


def _queued(remote: Remote, kind: str, array: str) -> list[str]:  # noqa: F811
    """The task ids of `array` the scheduler still holds."""
    if kind == "slurm":
        return remote.ssh(f"squeue -h -r -j {array} -o %i 2>/dev/null; true").split()
    xml = remote.ssh("qstat -xml -g d -u $USER")
    return [f"{array}.{t}" for j, t in re.findall(r"<JB_job_number>(\d+)</JB_job_number>.*?<tasks>(\d+)</tasks>",
                                                  xml, re.S) if j == array]


def _named(remote: Remote, kind: str, array: str) -> set[str]:  # noqa: F811
    """The arrays of the user named as `array` is (never a second one)."""
    if kind == "slurm":
        name = remote.ssh(f"squeue -h -j {array} -o %j").split()[0]
        return {i.split("_")[0] for i in remote.ssh(f"squeue -h -r -u $USER -n {name} -o %i").split()}
    xml = remote.ssh("qstat -xml -g d -u $USER")
    jobs = re.findall(r"<JB_job_number>(\d+)</JB_job_number>\s*<JAT_prio>[^<]*</JAT_prio>\s*<JB_name>([^<]*)</JB_name>", xml)
    name = next(n for j, n in jobs if j == array)
    return {j for j, n in jobs if n == name}


HOSTILE = ["a b", "it's", "$HOME", "`id`", 'say "hi"', "x;y", "tab\there", "back\\slash", "ünï"]


def _cell(values: list[str]) -> str:
    """A list cell of these values (each quoted: with its single quotes doubled)."""
    out = []
    for v in values:
        out.append('"' + v + '"' if "'" in v else "'" + v + "'")
    return "[" + ", ".join(out) + "]"


@pytest.mark.parametrize("kind", ["slurm", "sge"])
def test_an_array_of_hostile_values_runs_each_task_in_the_folder_it_writes_itself(remote: Remote,  # noqa: F811
                                                                                   kind: str):
    _, link, name_directive, sep, first = KINDS[kind]
    (remote.project / "probe.py").write_text(PROBE)
    write_workbook(remote.project / "experiments.xlsx", [
        {"id": "q", "command": "python3 probe.py {{ v }} 'fixed arg'\necho done=1", "v": _cell(HOSTILE),
         "cluster": kind},
    ], clusters=remote.clusters())
    proc = remote.nero("reconcile", str(remote.project), "--until-done", "--interval", "1", timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = remote.status()
    assert len(runs) == len(HOSTILE)
    assert all(r["state"] == "completed" for r in runs.values()), [(k, r["state"], r["reason"]) for k, r in runs.items()]
    assert len({_array(r["job_id"], kind) for r in runs.values()}) == 1  # one array, one sbatch / qsub
    assert sorted(int(r["job_id"].split(sep)[1]) for r in runs.values()) == list(range(first, first + len(HOSTILE)))
    rows = remote.db("SELECT key, run_dir, job_id FROM attempts")
    assert len(rows) == len(HOSTILE) and all(jid for _, _, jid in rows)
    # the batch folder holds one shared script and one line of values per run
    batch = json.loads(remote.ssh(f"cat {rows[0][1]!r}/submit.json"))["record"]
    assert remote.ssh(f"wc -l < {batch}/values").strip() == str(len(HOSTILE))
    for key, run_dir, _ in rows:
        listing = set(remote.ssh(f"ls -A {run_dir!r}").split())
        assert {"job.sh", "params.json", "submit.json", "stdout.log", "stderr.log", "started", "exit_code",
                "heartbeat", "pid", ".claim", ".tick", link, "probe.json"} <= listing, listing
        probe = json.loads(remote.ssh(f"cat {run_dir!r}/probe.json"))
        value = json.loads(remote.ssh(f"cat {run_dir!r}/params.json"))["v"]
        assert value in HOSTILE
        assert probe["argv"] == [value, "fixed arg"], probe  # one argument each, as written
        assert probe["key"] == key and probe["attempt"] == "1"
        submit = json.loads(remote.ssh(f"cat {run_dir!r}/submit.json"))
        assert submit["owner"]["key"] == key and submit["record"] == batch
        job_sh = remote.ssh(f"cat {run_dir!r}/job.sh")
        assert job_sh.startswith("#!/bin/bash\n") and name_directive in job_sh
        assert "NERO_V_COMMAND=" in job_sh
        assert remote.ssh(f"cat {run_dir!r}/stdout.log").splitlines()[-1] == "done=1"
        # the task's own output file, in its batch folder, named by its task number
        task = next(r for r in runs.values() if r["run"] == key)["job_id"].split(sep)[1]
        assert remote.ssh(f"readlink {run_dir!r}/{link}").strip() == f"{batch}/{task}.out"
        assert runs[key]["step"] == 3, runs[key]
    losses = remote.db("SELECT a.key, m.step, m.value FROM metrics m JOIN attempts a USING (key) WHERE m.name='loss'")
    assert sorted((k, s) for k, s, _ in losses) == sorted((k, s) for k, _, _ in rows for s in (1, 2, 3))
    assert all(abs(v - 1 / s) < 1e-5 for _, s, v in losses)


@pytest.mark.parametrize("kind", ["slurm", "sge"])
def test_pending_array_tasks_have_no_folder_show_in_status_and_are_cancelled(remote: Remote,  # noqa: F811
                                                                             kind: str):
    hold, _, _, sep, _ = KINDS[kind]
    write_workbook(remote.project / "experiments.xlsx", [
        {"id": "later", "command": "python3 stepper.py steps=2 delay=0.1 tag={{ t }}", "t": "range(0, 4)",
         "cluster": kind, "options": hold},
    ], clusters=remote.clusters())
    proc = remote.nero("reconcile", str(remote.project), "-q")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = remote.db("SELECT key, run_dir, job_id FROM attempts")
    assert len(rows) == 4 and all(sep in jid for _, _, jid in rows)
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
    [array] = {_array(jid, kind) for _, _, jid in rows}
    if kind == "slurm":
        states = remote.ssh(f"sacct -X -P -n -o JobID,State -j {array}")  # pending tasks: one line, `ID_[0-3]`
        assert states.strip() and all(line.split("|")[1].startswith("CANCELLED") for line in states.splitlines()), states
    assert _queued(remote, kind, array) == []
    for _, run_dir, _ in rows:  # cancelled before they started: never made
        assert remote.ssh(f"test -e {run_dir!r} && echo there || echo absent").strip() == "absent"


@pytest.mark.parametrize("kind", ["slurm", "sge"])
def test_nero_killed_after_sbatch_adopts_queued_tasks_that_have_no_folder(remote: Remote, kind: str):  # noqa: F811
    """Killed right after `sbatch` returned, before the job ids were recorded, with the
    array's tasks still queued (no run folder exists): the next pass finds each run's batch
    through the batch index, adopts every task, and submits nothing again."""
    import os
    import subprocess
    import sys

    from test_remote import ROOT

    hold, _, _, sep, first = KINDS[kind]
    write_workbook(remote.project / "experiments.xlsx", [
        {"id": "held", "command": "python3 stepper.py steps=2 delay=0.1 tag={{ t }}", "t": "range(0, 5)",
         "cluster": kind, "options": hold},
    ], clusters=remote.clusters())
    cls = {"slurm": "SlurmBackend", "sge": "SgeBackend"}[kind]
    crash = (
        "import os\n"
        "from orchestrator.backends import make_backend\n"
        f"from orchestrator.backends.{kind} import {cls}\n"
        "from orchestrator.reconcile import Reconciler\n"
        f"class Crashing({cls}):\n"
        "    def submit(self, jobs, ready=None):\n"
        "        super().submit(jobs, ready)  # sbatch returned: the array exists\n"
        "        os.kill(os.getpid(), 9)  # ... and nero dies before recording it\n"
        "def factory(cluster, project_dir):\n"
        f"    if cluster.kind.value == {kind!r}:\n"
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
    arrays = {_array(r["job_id"], kind) for r in runs.values()}
    assert len(arrays) == 1
    assert sorted(int(r["job_id"].split(sep)[1]) for r in runs.values()) == list(range(first, first + 5))
    # its name from the scheduler's listing (held: queued), not accounting
    assert _named(remote, kind, next(iter(arrays))) == arrays  # never a second array
    assert len(_queued(remote, kind, next(iter(arrays)))) == 5
    assert remote.db("SELECT COUNT(*) FROM attempts") == [(5,)]


def test_nothing_is_handed_to_slurm_before_the_attempts_are_recorded(remote: Remote,  # noqa: F811
                                                                    monkeypatch: pytest.MonkeyPatch):
    """The agent reads a submission while nero commits its attempts, and runs `sbatch` only
    on nero's word that they are committed (#14: the two overlap). A store that cannot
    record them (a full disk, injected through the Reconciler's constructor: a disk cannot
    be filled here) fails the pass with its own error, and Slurm never sees the array; the
    next pass, with the disk back, submits every run exactly once."""
    from orchestrator.errors import DiskError
    from orchestrator.reconcile import Reconciler
    from orchestrator.state import Store

    class FullDisk(Store):
        full = True

        def record_intents(self, new, now):
            if FullDisk.full:
                raise DiskError(str(self.path), "/", 0, 1 << 30, 1 << 20, detail="injected")
            super().record_intents(new, now)

    monkeypatch.setenv("NERO_SSH_CONFIG", remote.env["NERO_TEST_SSH_CONFIG"])
    write_workbook(remote.project / "experiments.xlsx", [
        {"id": "gated", "command": "true {{ t }}", "t": "range(0, 6)", "cluster": "slurm",
         "options": "--begin=now+1hour"},
    ], clusters=remote.clusters())
    (remote.project / ".nero").mkdir(exist_ok=True)
    rec = Reconciler(remote.project / "experiments.xlsx", store=FullDisk(remote.project / ".nero" / "state.db"))
    try:
        rec.load()
        with pytest.raises(DiskError, match="injected"):
            rec.run_pass(yes=True)
        assert rec.store.snapshot() == {}  # nothing recorded
        folders = remote.ssh("squeue -h -u $USER -o %Z").split()  # each job's working folder: its batch's
        assert not any(remote.tag in f for f in folders), folders
        written = remote.ssh(f"ls {remote.workdir}/.nero/batches/*/handed 2>/dev/null | wc -l").strip()
        assert written == "0", written  # the request was read (its files may be there), never handed over
        FullDisk.full = False
        rec.run_pass(yes=True)
        runs = rec.store.snapshot()
    finally:
        rec.close()
    assert len(runs) == 6 and all(r.state.value == "submitted" and r.attempt == 1 for r in runs.values()), runs
    arrays = {r.job_id.split("_")[0] for r in runs.values()}
    assert len(arrays) == 1
    name = remote.ssh(f"squeue -h -j {next(iter(arrays))} -o %j").split()[0]
    assert len({i.split("_")[0] for i in remote.ssh(f"squeue -h -r -u $USER -n {name} -o %i").split()}) == 1


@pytest.mark.parametrize("where", ["ssh", "here"])
def test_a_command_fed_in_two_parts_reads_both_and_a_failed_second_part_cuts_it_off(
        remote: Remote, monkeypatch: pytest.MonkeyPatch, where: str):  # noqa: F811
    """`Shell.run(..., then=)`: what `then` returns follows stdin (the go-ahead after a
    submission's request); what it raises is raised as it is, the command reads no more,
    and the connection stays usable. Over sshd and through /bin/sh here."""
    from orchestrator.backends.connection import SshShell
    from orchestrator.backends.shell import LocalShell, Then
    from orchestrator.model import Cluster, ClusterKind

    monkeypatch.setenv("NERO_SSH_CONFIG", remote.env["NERO_TEST_SSH_CONFIG"])
    shell = (SshShell(Cluster(name="slurm", kind=ClusterKind.SLURM, host=remote.env["NERO_TEST_SSH_ALIAS"]))
             if where == "ssh" else LocalShell("here"))
    try:
        told = []

        def then() -> bytes:
            told.append(True)
            return b"go\n"

        done = shell.run("cat; echo end", b"request\n", timeout=30, then=then)
        assert (done.rc, done.stdout, told) == (0, b"request\ngo\nend\n", [True])

        def fails() -> bytes:
            raise RuntimeError("not recorded")

        with pytest.raises(Then) as caught:  # its input ends after the request: no go-ahead
            shell.run("cat", b"request\n", timeout=30, then=fails)
        assert isinstance(caught.value.error, RuntimeError) and str(caught.value.error) == "not recorded"
        assert shell.run("echo still", timeout=30).stdout == b"still\n"
    finally:
        shell.close()


def test_the_next_agent_is_started_before_it_is_asked_and_answers_the_same(remote: Remote,  # noqa: F811
                                                                            monkeypatch: pytest.MonkeyPatch):
    """After each call over SSH nero starts the next call's agent and feeds it its source
    (`SshShell.prestart`): the next call sends only its request to that agent. Each call
    is still one round trip and gets its own answer; a spare whose agent ended is not used."""
    from orchestrator.backends.slurm import SlurmBackend
    from orchestrator.model import Cluster, ClusterKind

    monkeypatch.setenv("NERO_SSH_CONFIG", remote.env["NERO_TEST_SSH_CONFIG"])
    b = SlurmBackend(Cluster(name="slurm", kind=ClusterKind.SLURM, host=remote.env["NERO_TEST_SSH_ALIAS"],
                             workdir=remote.workdir), str(remote.project))
    try:
        info = b.connect()
        spare = wait_for(lambda: b.shell._spare, timeout=15)  # started in the background
        reply = b.call("hello", {"workdir": remote.workdir, "tools": ["sbatch"], "commands": [], "cache_s": 0})
        assert reply.header["ok"] and reply.header["home"] == info.home and reply.header["tools"]["sbatch"]
        assert b.shell.round_trips == 2 and b.shell.connections == 1
        nxt = wait_for(lambda: b.shell._spare if b.shell._spare is not spare else None, timeout=15)
        assert nxt is not spare and spare.chan.closed  # the first spare answered that call
        nxt.chan.close()  # a spare that can no longer be used: the call starts its own agent
        reply = b.call("hello", {"workdir": remote.workdir, "tools": [], "commands": [], "cache_s": 0})
        assert reply.header["ok"] and b.shell.round_trips == 3
    finally:
        b.shell.close()
