"""Remote clusters end to end, against the real thing: Slurm (with accounting), SGE and a
plain SSH host, all reached through the testbed's sshd on 127.0.0.1 with host keys
checked. Everything goes through the real `nero` command line.

Needs `bash tests/testbed/up.sh` and `. $NERO_TESTBED_DIR/env.sh`; without them every
test here skips saying so, and under `.ci/run` (NERO_REQUIRE_TESTBED=1) it fails instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import kill_jobs, nero, wait_for, write_workbook
from jobs import STEPPER

# one worker runs every test that talks to the testbed's sshd, Slurm and SGE, in order
# (one of them stops and restarts sshd): tests/conftest.py
pytestmark = pytest.mark.xdist_group("testbed")

UP = "bash tests/testbed/up.sh"
ROOT = Path(__file__).resolve().parent.parent
SSH_VARS = ("NERO_TEST_SSH_HOST", "NERO_TEST_SSH_PORT", "NERO_TEST_SSH_USER", "NERO_TEST_SSH_KEY",
            "NERO_TEST_KNOWN_HOSTS", "NERO_TEST_SSH_CONFIG", "NERO_TEST_SSH_ALIAS", "NERO_TEST_REMOTE_PYTHON")

HOG = r'''
import sys, time
print("allocating", flush=True)
blocks = [bytearray(50 * 1024 * 1024) for _ in range(int(sys.argv[1]) // 50)]
for b in blocks:
    b[::4096] = b"x" * len(b[::4096])
time.sleep(10)
print("survived", flush=True)
'''

VERSION = 'import sys, time\ntime.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 0)\nprint("version=1")\n'

GPU = r'''
import os, time
print("gpus=" + os.environ.get("CUDA_VISIBLE_DEVICES", "none"), flush=True)
print("t0=%.3f" % time.time(), flush=True)
time.sleep(3)
print("t1=%.3f" % time.time(), flush=True)
'''


def need(*names: str) -> dict[str, str]:
    """The testbed's variables, or skip naming up.sh (fail when NERO_REQUIRE_TESTBED=1)."""
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        where = os.environ.get("NERO_TESTBED_DIR", "/tmp/nero-testbed")
        msg = (f"{', '.join(missing)} not set: run `{UP}` (as root) and `. {where}/env.sh` before pytest "
               "(see tests/testbed/README.md)")
        if os.environ.get("NERO_REQUIRE_TESTBED") == "1":
            pytest.fail(msg + "; NERO_REQUIRE_TESTBED=1 forbids skipping")
        pytest.skip(msg)
    return {n: os.environ[n] for n in names}


class Remote:
    """A project whose clusters are the testbed's Slurm, SGE and SSH host (one remote
    folder per test), and the means to look at the remote side directly."""

    def __init__(self, project: Path, env: dict[str, str]):
        self.project = project
        self.env = env
        self.tag = f"t-{uuid.uuid4().hex[:10]}"
        self.workdir = f"nero-work/{self.tag}"
        self.abs_workdir = f"{env['NERO_TEST_SSH_HOME']}/{self.workdir}" if env.get("NERO_TEST_SSH_HOME") else ""
        self.nero_env = {"NERO_SSH_CONFIG": env["NERO_TEST_SSH_CONFIG"]}
        self._client = None

    def clusters(self, **extra: dict) -> list[dict]:
        base = {"host": self.env["NERO_TEST_SSH_ALIAS"], "workdir": self.workdir,
                "python": self.env["NERO_TEST_REMOTE_PYTHON"]}
        rows = [{"name": "slurm", "kind": "slurm", **base, "partition": os.environ.get("NERO_TEST_SLURM_PARTITION", "debug")},
                {"name": "sge", "kind": "sge", **base},
                {"name": "ssh", "kind": "ssh", **base, "max_jobs": 4},
                {"name": "local", "kind": "local", "max_jobs": 8}]
        for r in rows:
            r.update(extra.get(r["name"], {}))
        return rows

    def nero(self, *args: str, timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess:
        return nero(*args, cwd=self.project, timeout=timeout, env={**self.nero_env, **(env or {})})

    def status(self) -> dict[str, dict]:
        out = self.nero("status", str(self.project), "--json").stdout
        return {r["run"]: r for r in json.loads(out)} if out.strip().startswith("[") else {}

    def db(self, sql: str, *args) -> list[tuple]:
        con = sqlite3.connect(self.project / ".nero" / "state.db")
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def ssh(self, command: str, timeout: float = 60) -> str:
        import paramiko

        if self._client is None:
            c = paramiko.SSHClient()
            c.load_host_keys(self.env["NERO_TEST_KNOWN_HOSTS"])
            c.set_missing_host_key_policy(paramiko.RejectPolicy())
            c.connect(self.env["NERO_TEST_SSH_HOST"], port=int(self.env["NERO_TEST_SSH_PORT"]),
                      username=self.env["NERO_TEST_SSH_USER"], key_filename=self.env["NERO_TEST_SSH_KEY"],
                      look_for_keys=False, allow_agent=False, timeout=15)
            self._client = c
        stdin, out, err = self._client.exec_command(command, timeout=timeout)
        if not out.channel.status_event.wait(timeout):  # recv_exit_status() alone waits forever
            out.channel.close()
            raise AssertionError(f"{command!r} did not finish within {timeout:.0f} s")
        rc = out.channel.recv_exit_status()
        text, error = out.read().decode(), err.read().decode()
        # closed here, in this thread: a paramiko file left to the garbage collector may be
        # closed in the transport's own thread, which then deadlocks on its lock (a CI hang)
        for f in (stdin, out, err):
            f.close()
        if rc != 0:
            raise AssertionError(f"{command!r} exited {rc}: {text} {error}")
        return text

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def cleanup(self) -> None:
        """Cancel whatever the test left running (by the job ids nero recorded) and remove
        the remote folder."""
        try:
            kinds = {"slurm": "scancel", "sge": "qdel"}
            rows = self.db("SELECT cluster, job_id FROM attempts WHERE job_id != ''") \
                if (self.project / ".nero" / "state.db").exists() else []
            cmds = []
            for cluster, tool in kinds.items():
                ids = [j for c, j in rows if c == cluster]
                if ids:
                    cmds.append(f"{tool} {' '.join(ids)} >/dev/null 2>&1")
            pids = [j for c, j in rows if c == "ssh" and j.isdigit()]
            if pids:
                cmds.append("; ".join(f"kill -KILL -- -{p} 2>/dev/null" for p in pids))
            # a cancelled job may still write its last files for a moment: retry the removal
            cmds.append(f"rm -rf {self.workdir} 2>/dev/null || {{ sleep 3; rm -rf {self.workdir}; }}")
            self.ssh("; ".join(cmds) + "; true")
        except Exception:  # noqa: BLE001 - best effort after a failed test
            pass
        finally:
            self.close()
            kill_jobs(self.project)


@pytest.fixture
def remote(tmp_path: Path):
    env = need(*SSH_VARS, "NERO_TEST_SLURM", "NERO_TEST_SGE", "NERO_TEST_SSH_HOME")
    pytest.importorskip("paramiko")
    r = Remote(tmp_path, env)
    (tmp_path / "stepper.py").write_text(STEPPER)
    yield r
    r.cleanup()


# --------------------------------------------------------------------------- Must show 1
@pytest.mark.slow  # a run waits for its 1-minute Slurm time limit
def test_a_grid_across_slurm_sge_and_ssh_runs_to_completion_with_slurm_reasons(remote: Remote):
    """51 runs over the three remote kinds; a failing run, an OUT_OF_MEMORY and a TIMEOUT
    on Slurm come back with Slurm's reason; the results workbook holds job ids, hosts,
    states and metrics."""
    (remote.project / "hog.py").write_text(HOG)
    write_workbook(remote.project / "experiments.xlsx", [
        {"id": "grid-slurm", "command": "python3 stepper.py steps=6 delay=0.2 tag={{ tag }}", "tag": "range(0, 27)",
         "cluster": "slurm"},
        {"id": "grid-sge", "command": "python3 stepper.py steps=4 delay=0.1 tag={{ tag }}", "tag": "range(0, 10)",
         "cluster": "sge"},
        {"id": "grid-ssh", "command": "python3 stepper.py steps=6 delay=0.2 tag={{ tag }}", "tag": "range(0, 11)",
         "cluster": "ssh"},
        {"id": "fails", "command": "python3 stepper.py steps=3 delay=0.1 fail=3", "cluster": "slurm"},
        {"id": "oom", "command": "python3 hog.py 500", "cluster": "slurm", "mem": 50},
        {"id": "slow", "command": "python3 stepper.py steps=400 delay=0.5", "cluster": "slurm", "time": 1},
    ], clusters=remote.clusters())
    t0 = time.time()
    proc = remote.nero("reconcile", str(remote.project), "--until-done", "--interval", "2", timeout=280)
    elapsed = time.time() - t0
    assert proc.returncode == 1, proc.stdout + proc.stderr  # runs failed, as they should
    runs = remote.status()
    assert len(runs) == 51
    grid = [r for k, r in runs.items() if k.startswith("grid-")]
    assert len(grid) == 48 and all(r["state"] == "completed" for r in grid), [(r["run"], r["state"], r["reason"])
                                                                                for r in grid if r["state"] != "completed"]
    assert {r["cluster"] for r in grid} == {"slurm", "sge", "ssh"}
    fails, oom, slow = runs["fails"], runs["oom"], runs["slow"]
    assert fails["state"] == "failed" and fails["reason"].startswith("FAILED: NonZeroExitCode"), fails
    assert "exit code 3" in fails["reason"]
    assert oom["state"] == "failed" and oom["reason"].startswith("OUT_OF_MEMORY: OutOfMemory"), oom
    assert slow["state"] == "timeout" and slow["reason"].startswith("TIMEOUT: TimeLimit"), slow
    assert slow["step"] and slow["step"] > 50  # metrics kept flowing until Slurm stopped it
    # job ids as the schedulers know them: array tasks on Slurm (from 0) and SGE (from 1), pids on ssh
    assert sorted(int(r["job_id"].split("_")[1]) for r in grid if r["cluster"] == "slurm") == list(range(27))
    assert sorted(int(r["job_id"].split(".")[1]) for r in grid if r["cluster"] == "sge") == list(range(1, 11))
    assert len({r["job_id"].split(".")[0] for r in grid if r["cluster"] == "sge"}) == 1  # one qsub
    assert all(r["job_id"].isdigit() for r in grid if r["cluster"] == "ssh")
    jobs = remote.ssh("sacct -X -P -n -o JobID,State -j " + ",".join(r["job_id"] for r in runs.values()
                                                                      if r["cluster"] == "slurm"))
    states = dict(line.split("|", 1) for line in jobs.split())
    assert states[slow["job_id"]] == "TIMEOUT" and states[oom["job_id"]] == "OUT_OF_MEMORY"

    import pandas as pd

    summary = pd.read_excel(remote.project / "results.xlsx", sheet_name="Summary")
    assert len(summary) == 51
    by_run = summary.set_index("run")
    for r in runs.values():
        row = by_run.loc[r["run"]]
        assert str(row["job_id"]) == r["job_id"] and row["state"] == r["state"] and row["host"] == r["host"]
    assert set(by_run.loc[[r["run"] for r in grid], "host"]) == {socket.gethostname()}
    last_step = {"grid-slurm": 6, "grid-sge": 4, "grid-ssh": 6}
    for r in grid:
        steps = last_step[r["run"].split("[")[0]]
        assert abs(by_run.loc[r["run"], "last:loss"] - 1 / steps) < 1e-5 and r["step"] == steps, r
    # every run recorded the code it ran, shipped once for all
    hashes = {h for (h,) in remote.db("SELECT code_hash FROM attempts")}
    assert len(hashes) == 1 and len(next(iter(hashes))) == 16
    assert remote.ssh(f"ls {remote.workdir}/.nero/code").split() == list(hashes)
    assert elapsed < 240, f"the grid took {elapsed:.0f}s"



@pytest.mark.parametrize("fallback", ["scontrol", "files"])
def test_without_accounting_slurm_state_comes_from_scontrol_then_the_run_directory(
        remote: Remote, monkeypatch: pytest.MonkeyPatch, fallback: str):
    """A site with accounting off whose squeue already forgot the jobs: `sacct` fails, so
    the state comes from `scontrol` (Slurm's reason kept), or, when that knows nothing
    either, from the files the job script wrote."""
    from orchestrator.backends import Backend, make_backend
    from orchestrator.backends.slurm import SCONTROL, SlurmBackend
    from orchestrator.model import Cluster, Handle
    from orchestrator.reconcile import Reconciler

    no_accounting = ["sh", "-c", "echo 'sacct: error: Slurm accounting storage is disabled' >&2; exit 1"]

    class NoAccounting(SlurmBackend):
        def query(self, handles: Sequence[Handle]) -> dict[str, Any]:
            detail = [no_accounting, SCONTROL] if fallback == "scontrol" else [no_accounting]
            return {**super().query(handles), "list": ["sh", "-c", "true"], "detail": detail}

    def factory(cluster: Cluster, project_dir: str) -> Backend:
        return NoAccounting(cluster, project_dir) if cluster.kind.value == "slurm" else make_backend(cluster, project_dir)

    monkeypatch.setenv("NERO_SSH_CONFIG", remote.env["NERO_TEST_SSH_CONFIG"])
    write_workbook(remote.project / "experiments.xlsx", [
        {"id": "ok", "command": "python3 stepper.py steps=3 delay=0.3", "cluster": "slurm"},
        {"id": "bad", "command": "python3 stepper.py steps=3 delay=0.3 fail=3", "cluster": "slurm", "mem": 200},
    ], clusters=remote.clusters())
    rec = Reconciler(remote.project / "experiments.xlsx", backend_factory=factory)
    try:
        rec.load()
        wait_for(lambda: rec.run_pass(results=False) and all(r.state.finished for r in rec.store.snapshot().values()),
                 timeout=90, every=1, what="both runs finished")
        runs = rec.store.snapshot()
    finally:
        rec.close()
    assert runs["ok"].state.value == "completed" and runs["ok"].last["loss"] == pytest.approx(1 / 3, abs=1e-5)
    assert runs["bad"].state.value == "failed"
    if fallback == "scontrol":
        assert runs["bad"].reason == "FAILED: NonZeroExitCode (exit code 3)"
    else:
        assert runs["bad"].reason.startswith("exit code 3")


# --------------------------------------------------------------------------- Must show 4
def _config_with_known_hosts(remote: Remote, known_hosts: Path) -> Path:
    text = Path(remote.env["NERO_TEST_SSH_CONFIG"]).read_text()
    lines = [line for line in text.splitlines() if "UserKnownHostsFile" not in line]
    lines.insert(next(i for i, line in enumerate(lines) if line.strip().startswith("Host ")) + 1,
                 f"    UserKnownHostsFile {known_hosts}")
    cfg = remote.project / "ssh_config"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def test_a_changed_or_unknown_host_key_refuses_the_connection_and_submits_nothing(remote: Remote):
    write_workbook(remote.project / "experiments.xlsx", [
        {"id": "never", "command": "python3 stepper.py steps=2", "cluster": "slurm"},
        {"id": "here", "command": "python stepper.py steps=2 delay=0.05", "cluster": "local"},
    ], clusters=remote.clusters())
    # known_hosts names the server with a different key (the client's own, say)
    wrong = remote.project / "known_hosts_wrong"
    pub = Path(remote.env["NERO_TEST_SSH_KEY"] + ".pub").read_text().split()
    wrong.write_text(f"[127.0.0.1]:{remote.env['NERO_TEST_SSH_PORT']} {pub[0]} {pub[1]}\n")
    cfg = _config_with_known_hosts(remote, wrong)
    proc = remote.nero("reconcile", str(remote.project), env={"NERO_SSH_CONFIG": str(cfg)})
    assert proc.returncode == 0, proc.stderr  # the pass goes on for the other clusters
    err = proc.stderr
    assert "cluster 'slurm'" in err and "has CHANGED" in err and "man in the middle" in err, err
    assert "ssh-keygen -R" in err and "nothing was sent" in err
    runs = remote.status()
    assert set(runs) == {"here"}  # nothing was submitted to slurm, not even an intent
    assert remote.ssh(f"test -e {remote.workdir} && echo exists || echo absent").strip() == "absent"
    name_prefix = "nero-never-"
    assert name_prefix not in remote.ssh("squeue -h -t all -u $USER -o %j")

    # an unknown key: refused too, and the message says how to trust it
    empty = remote.project / "known_hosts_empty"
    empty.write_text("")
    cfg = _config_with_known_hosts(remote, empty)
    proc = remote.nero("reconcile", str(remote.project), env={"NERO_SSH_CONFIG": str(cfg)})
    port, host = remote.env["NERO_TEST_SSH_PORT"], remote.env["NERO_TEST_SSH_HOST"]
    assert "is not in known_hosts" in proc.stderr, proc.stderr
    assert f"ssh-keyscan -p {port} {host} >> ~/.ssh/known_hosts (after checking the fingerprint)" in proc.stderr
    assert "SHA256:" in proc.stderr  # the offered key's fingerprint, to check
    assert set(remote.status()) == {"here"}


# --------------------------------------------------------------------------- Must show 5
def test_a_reconciler_killed_right_after_sbatch_is_adopted_not_resubmitted(remote: Remote):
    write_workbook(remote.project / "experiments.xlsx", [
        {"id": "once", "command": "python3 stepper.py steps=20 delay=0.1", "cluster": "slurm"},
    ], clusters=remote.clusters())
    crash = (
        "import os\n"
        "from orchestrator.backends import make_backend\n"
        "from orchestrator.backends.slurm import SlurmBackend\n"
        "from orchestrator.reconcile import Reconciler\n"
        "class Crashing(SlurmBackend):\n"
        "    def submit(self, jobs, ready=None):\n"
        "        super().submit(jobs, ready)  # sbatch returned: the job exists\n"
        "        os._exit(9)            # ... and nero dies before recording it\n"
        "def factory(cluster, project_dir):\n"
        "    if cluster.kind.value == 'slurm':\n"
        "        return Crashing(cluster, project_dir)\n"
        "    return make_backend(cluster, project_dir)\n"
        f"r = Reconciler({str(remote.project / 'experiments.xlsx')!r}, backend_factory=factory)\n"
        "r.load(); r.run_pass()\n"
    )
    proc = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **remote.nero_env}, cwd=ROOT)
    assert proc.returncode == 9, proc.stderr
    [(intent, job_id, run_dir)] = remote.db("SELECT intent, job_id, run_dir FROM attempts")
    assert (intent, job_id) == (1, "")
    name = remote.ssh(f"python3 -c 'import json; print(json.load(open(\"{run_dir}/submit.json\"))[\"job_name\"])'").strip()
    assert name.startswith("nero-once-") and name.endswith("-a1")
    # the agent recorded the id in the run directory; remove it so adoption must go by the job name
    remote.ssh(f"rm -f {run_dir}/job_id")
    proc = remote.nero("reconcile", str(remote.project), "--until-done", "--interval", "1", timeout=150)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "adopted" in proc.stdout
    runs = remote.status()
    assert runs["once"]["state"] == "completed" and runs["once"]["attempt"] == 1
    queue = remote.ssh("squeue -h -t all -u $USER -o '%i|%j'").split()
    ours = [line for line in queue if line.endswith("|" + name)]
    assert len(ours) == 1, queue  # exactly one job, never a second submission
    assert ours[0].split("|")[0] == runs["once"]["job_id"]
    assert remote.db("SELECT COUNT(*) FROM attempts") == [(1,)]
    steps = sorted(s for (s,) in remote.db("SELECT step FROM metrics WHERE name='loss'"))
    assert steps == list(range(1, 21))


# --------------------------------------------------------------------------- Must show 6
def _sshd_pid(tb: str) -> int | None:
    try:
        pid = int(Path(tb, "run", "sshd.pid").read_text().strip())
        return pid if Path(f"/proc/{pid}").exists() else None
    except (OSError, ValueError):
        return None


def _port_open(port: int) -> bool:
    with contextlib.closing(socket.socket()) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop_sshd(tb: str, port: int) -> None:
    """Stop the testbed's sshd: its listener (by its pidfile) and the sessions it forked
    (its child processes), so established connections drop too."""
    pid = _sshd_pid(tb)
    assert pid, "the testbed's sshd is not running"
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    for p in [pid, *children]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGTERM)
    wait_for(lambda: not _port_open(port), timeout=10, what="sshd to stop")


def test_sshd_stopped_during_watch_local_runs_go_on_and_no_metric_is_lost(remote: Remote):
    env = need("NERO_TESTBED_DIR")
    if os.geteuid() != 0:
        pytest.fail("stopping and restarting the testbed's sshd needs root (as tests/testbed/up.sh does)")
    tb, port = env["NERO_TESTBED_DIR"], int(remote.env["NERO_TEST_SSH_PORT"])
    write_workbook(remote.project / "experiments.xlsx", [
        {"id": "far", "command": "python3 stepper.py steps=60 delay=0.4", "cluster": "slurm"},
        {"id": "near", "command": "python stepper.py steps=60 delay=0.4", "cluster": "local"},
    ], clusters=remote.clusters())
    out, err = remote.project / "watch.out", remote.project / "watch.err"
    with open(out, "w") as fo, open(err, "w") as fe:
        loop = subprocess.Popen([sys.executable, "-m", "orchestrator", "reconcile", str(remote.project), "--watch",
                                 "--interval", "1"], stdin=subprocess.DEVNULL, stdout=fo, stderr=fe, cwd=ROOT,
                                env={**os.environ, "COLUMNS": "200", **remote.nero_env})
    stopped = False
    try:
        def both_running() -> bool:
            runs = remote.status()  # one snapshot: both runs seen together
            return len(runs) == 2 and all(r["state"] == "running" and (r["step"] or 0) >= 3 for r in runs.values())

        wait_for(both_running, timeout=60, what="both runs running")
        remote.close()
        _stop_sshd(tb, port)
        stopped = True
        down_at = time.time()
        wait_for(lambda: "unreachable" in err.read_text(), timeout=30, what="the pass to report the cluster unreachable")
        time.sleep(1.5)  # a pass that read the cluster just before the stop has committed by now
        before = remote.status()
        near_before, far_before = before["near"]["step"], before["far"]["step"]
        time.sleep(6)
        st = remote.status()
        assert st["near"]["step"] > near_before + 5  # local runs go on
        assert st["far"]["step"] == far_before and st["far"]["state"] == "running"  # remote: state kept
        warning = next(line for line in err.read_text().splitlines() if "unreachable" in line)
        assert "cluster 'slurm'" in warning and "keep their state" in warning and "ssh nero-test" in warning
        up = subprocess.run(["bash", str(ROOT / "tests" / "testbed" / "up.sh"), "sshd"], capture_output=True,
                            text=True, timeout=120)
        assert up.returncode == 0, up.stdout + up.stderr
        stopped = False
        outage = time.time() - down_at
        wait_for(lambda: {r["state"] for r in remote.status().values()} == {"completed"}, timeout=120,
                 what="both runs completed after sshd returned")
    finally:
        if stopped or not _port_open(port):
            subprocess.run(["bash", str(ROOT / "tests" / "testbed" / "up.sh"), "sshd"], capture_output=True, timeout=120)
        loop.send_signal(signal.SIGINT)
        loop.wait(timeout=30)
    assert outage > 6  # passes ran while the cluster was unreachable
    steps = remote.db("SELECT key, step FROM metrics WHERE name='loss' ORDER BY rowid")
    for key in ("far", "near"):
        assert [s for k, s in steps if k == key] == list(range(1, 61)), key  # none lost, none twice


# --------------------------------------------------------------------------- code shipping
def test_code_ships_once_per_content_hash_and_edits_never_change_queued_runs(remote: Remote):
    p = remote.project
    git = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x"}
    (p / "prog.py").write_text(VERSION)
    (p / "notes.txt").write_text("untracked: stays here")
    subprocess.run(["git", "init", "-q", str(p)], check=True, env=git)
    subprocess.run(["git", "-C", str(p), "add", "prog.py", "stepper.py"], check=True, env=git)
    subprocess.run(["git", "-C", str(p), "commit", "-qm", "v1"], check=True, env=git)
    rows = [{"id": "first", "command": "python3 prog.py {{ wait }}", "wait": "[4, 5]", "cluster": "slurm"}]
    write_workbook(p / "experiments.xlsx", rows, clusters=remote.clusters())
    remote.nero("reconcile", str(p), "-q")
    # edit the code after submission (uncommitted), add a run
    (p / "prog.py").write_text(VERSION.replace("version=1", "version=2"))
    time.sleep(1.1)
    write_workbook(p / "experiments.xlsx", rows + [{"id": "second", "command": "python3 prog.py", "cluster": "slurm"}],
                   clusters=remote.clusters())
    proc = remote.nero("reconcile", str(p), "--until-done", "--interval", "1", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = remote.status()
    assert {k: r["metrics"]["version"] for k, r in runs.items()} == {"first[wait=4]": 1, "first[wait=5]": 1,
                                                                    "second": 2}
    hashes = dict(remote.db("SELECT key, code_hash FROM attempts"))
    assert hashes["first[wait=4]"] == hashes["first[wait=5]"] != hashes["second"]
    shipped = remote.ssh(f"ls {remote.workdir}/.nero/code").split()
    assert sorted(shipped) == sorted(set(hashes.values()))
    assert remote.ssh(f"ls {remote.workdir}/.nero/code/{hashes['second']}").split() == ["prog.py", "stepper.py"]


# --------------------------------------------------------------------------- faults
def test_unreachable_refused_and_failing_clusters_are_reported_and_the_pass_goes_on(remote: Remote):
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    closed_port = free.getsockname()[1]
    free.close()
    other_key = remote.project / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    cfg = Path(remote.env["NERO_TEST_SSH_CONFIG"]).read_text()
    cfg += (f"\nHost wrong-key\n    HostName 127.0.0.1\n    Port {remote.env['NERO_TEST_SSH_PORT']}\n"
            f"    User {remote.env['NERO_TEST_SSH_USER']}\n    IdentityFile {other_key}\n    IdentitiesOnly yes\n"
            f"    UserKnownHostsFile {remote.env['NERO_TEST_KNOWN_HOSTS']}\n")
    (remote.project / "ssh_config").write_text(cfg)
    clusters = remote.clusters() + [
        {"name": "gone", "kind": "slurm", "host": "127.0.0.1", "port": closed_port, "workdir": remote.workdir},
        {"name": "locked", "kind": "ssh", "host": "wrong-key", "workdir": remote.workdir},
    ]
    write_workbook(remote.project / "experiments.xlsx", [
        {"id": "a", "command": "python3 stepper.py steps=2", "cluster": "gone"},
        {"id": "b", "command": "python3 stepper.py steps=2", "cluster": "locked"},
        {"id": "c", "command": "python3 stepper.py steps=2", "cluster": "slurm", "partition": "no-such-partition"},
        {"id": "d", "command": "python stepper.py steps=3 delay=0.05", "cluster": "local"},
    ], clusters=clusters)
    env = {"NERO_SSH_CONFIG": str(remote.project / "ssh_config")}
    proc = remote.nero("reconcile", str(remote.project), env=env)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    gone = next(line for line in err.splitlines() if "cluster 'gone'" in line)
    assert "unreachable" in gone and "refused" in gone and "its new runs wait" in gone
    locked = next(line for line in err.splitlines() if "cluster 'locked'" in line)
    assert "authentication refused" in locked and "authorized_keys" in locked
    wait_for(lambda: remote.nero("reconcile", str(remote.project), "-q", env=env) and
             remote.status().get("d", {}).get("state") == "completed", what="the local run to complete")
    runs = remote.status()
    assert "a" not in runs and "b" not in runs  # held back, not failed: they go when the cluster answers
    assert runs["c"]["state"] == "failed" and "invalid partition" in runs["c"]["reason"].lower(), runs["c"]
    assert runs["c"]["reason"].startswith("submission failed: sbatch:")
    plan = json.loads(remote.nero("plan", str(remote.project), "--json", env=env).stdout)
    assert {a["run"] for a in plan["actions"]} >= {"a", "b"}



def test_an_alias_with_proxyjump_is_honoured_and_every_hop_checks_its_host_key(remote: Remote):
    key, known = remote.env["NERO_TEST_SSH_KEY"], remote.env["NERO_TEST_KNOWN_HOSTS"]
    port, user = remote.env["NERO_TEST_SSH_PORT"], remote.env["NERO_TEST_SSH_USER"]

    def config(jump_known_hosts: Path) -> Path:
        cfg = remote.project / "jump_config"
        block = f"    Port {port}\n    User {user}\n    IdentityFile {key}\n    IdentitiesOnly yes\n"
        cfg.write_text(f"Host jump\n    HostName 127.0.0.1\n{block}    UserKnownHostsFile {jump_known_hosts}\n\n"
                       f"Host via-jump\n    HostName localhost\n{block}    UserKnownHostsFile {known}\n"
                       "    ProxyJump jump\n")
        return cfg

    write_workbook(remote.project / "experiments.xlsx", [{"id": "x", "command": "true"}],
                   clusters=remote.clusters(ssh={"host": "via-jump"}))
    proc = remote.nero("resources", "ssh", "-w", str(remote.project), "--json",
                       env={"NERO_SSH_CONFIG": str(config(Path(known)))})
    assert proc.returncode == 0, proc.stderr
    [res] = json.loads(proc.stdout)
    assert res["error"] == "" and res["disk_path"].endswith(remote.workdir)
    # the jump host's key unknown: refused at the first hop (the final hop's key is known)
    empty = remote.project / "empty_known_hosts"
    empty.write_text("")
    proc = remote.nero("resources", "ssh", "-w", str(remote.project), "--json",
                       env={"NERO_SSH_CONFIG": str(config(empty))})
    assert proc.returncode == 1
    [res] = json.loads(proc.stdout)
    assert f"[127.0.0.1]:{port}" in res["error"] and "is not in known_hosts" in res["error"], res["error"]


def test_min_free_disk_holds_the_runs_of_a_cluster_short_of_space(remote: Remote):
    write_workbook(remote.project / "experiments.xlsx", [
        {"id": "big", "command": "python3 stepper.py steps=2", "cluster": "sge"},
    ], clusters=remote.clusters(), settings={"min_free_disk": "900000G"})
    proc = remote.nero("reconcile", str(remote.project))
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stderr.splitlines() if "cluster 'sge'" in line)
    assert "free disk in its workdir is" in line and "below Settings min_free_disk 900000G" in line
    assert "held" in line and remote.status() == {}
    assert "1 waiting" in proc.stdout


# --------------------------------------------------------------------------- cancel, resources, GPUs
def test_state_stop_cancels_running_jobs_on_every_remote_kind(remote: Remote):
    rows = [{"id": f"long-{c}", "command": "python3 stepper.py steps=600 delay=0.1", "cluster": c}
            for c in ("slurm", "sge", "ssh")]
    write_workbook(remote.project / "experiments.xlsx", rows, clusters=remote.clusters())
    wait_for(lambda: remote.nero("reconcile", str(remote.project), "-q") and
             len(runs := remote.status()) == 3 and all(r["state"] == "running" for r in runs.values()),
             timeout=60, what="three running jobs")
    time.sleep(1.1)
    write_workbook(remote.project / "experiments.xlsx", [dict(r, state="stop") for r in rows],
                   clusters=remote.clusters())
    wait_for(lambda: remote.nero("reconcile", str(remote.project), "-q", "--yes") and  # cancels wait for a confirmation
             all(r["state"] == "cancelled" for r in remote.status().values()), timeout=60, what="all cancelled")
    runs = remote.status()
    assert all(r["reason"] == "state=stop in Experiments row " + str(i + 2) for i, r in enumerate(runs.values()))
    slurm_state = remote.ssh(f"sacct -X -P -n -o State -j {runs['long-slurm']['job_id']}").strip()
    assert slurm_state.startswith("CANCELLED")
    assert runs["long-sge"]["job_id"] not in remote.ssh("qstat -u $USER")
    assert remote.ssh(f"kill -0 {runs['long-ssh']['job_id']} 2>/dev/null && echo alive || echo gone").strip() == "gone"


def test_resources_lists_partitions_queues_memory_load_and_disk(remote: Remote):
    write_workbook(remote.project / "experiments.xlsx", [{"id": "x", "command": "true"}], clusters=remote.clusters())
    proc = remote.nero("resources", "-w", str(remote.project), "--json")
    assert proc.returncode == 0, proc.stderr
    data = {c["cluster"]: c for c in json.loads(proc.stdout)}
    assert set(data) == {"local", "slurm", "sge", "ssh"}
    partition = os.environ.get("NERO_TEST_SLURM_PARTITION", "debug")
    assert [q["name"] for q in data["slurm"]["queues"]] == [partition] and data["slurm"]["queues"][0]["total_slots"] >= 1
    assert data["sge"]["queues"][0]["name"] == "all.q"
    for c in data.values():
        assert c["error"] == "" and c["mem_total_mb"] > 0 and c["disk_free_mb"] > 0 and len(c["load"]) == 3
    human = remote.nero("resources", "slurm", "-w", str(remote.project))
    assert human.returncode == 0 and partition in human.stdout and "free disk" in human.stdout
    assert "sge" not in human.stdout


def test_ssh_runs_that_ask_for_gpus_get_distinct_free_ones(remote: Remote):
    (remote.project / "gpu.py").write_text(GPU)
    write_workbook(remote.project / "experiments.xlsx", [
        {"id": "g", "command": "python3 gpu.py {{ i }}", "i": "[1, 2, 3]", "cluster": "ssh", "gpus": 1},
    ], clusters=remote.clusters(ssh={"gpus": "0,1", "max_jobs": 3}))
    proc = remote.nero("reconcile", str(remote.project), "--until-done", "--interval", "1", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    spans = []
    for r in remote.status().values():
        text = remote.ssh(f"cat {r['run_dir']}/stdout.log")
        values = dict(line.split("=", 1) for line in text.split())
        spans.append((float(values["t0"]), float(values["t1"]), values["gpus"]))
    assert sorted(s[2] for s in spans) in (["0", "0", "1"], ["0", "1", "1"])
    for a in spans:
        for b in spans:
            if a is not b and a[2] == b[2]:
                assert a[1] <= b[0] or b[1] <= a[0], "two runs held the same GPU at once"


def test_logs_of_remote_runs_are_read_on_the_cluster_and_followed_to_the_end(remote: Remote):
    rows = [{"id": f"talk-{c}", "command": "python3 stepper.py steps=40 delay=0.1", "cluster": c}
            for c in ("slurm", "ssh")]
    write_workbook(remote.project / "experiments.xlsx", rows, clusters=remote.clusters())
    wait_for(lambda: remote.nero("reconcile", str(remote.project), "-q") and
             len(runs := remote.status()) == 2 and all(r["state"] in ("running", "completed") for r in runs.values()),
             timeout=60, what="two started jobs")
    runs = remote.status()
    for name, r in runs.items():
        # the run directory is on the cluster's side, not this machine's: nero reads it there
        assert r["cluster"] != "local"
        followed = remote.nero("logs", "-w", str(remote.project), name, "--follow", timeout=120)
        assert followed.returncode == 0, followed.stderr
        assert followed.stdout.splitlines() == [f"step={i} loss={1.0 / i:.6f} tag=0" for i in range(1, 41)], name
        last = remote.nero("logs", "-w", str(remote.project), str(r["number"]), "-n", "3")
        assert last.returncode == 0 and last.stdout.splitlines() == [
            f"step={i} loss={1.0 / i:.6f} tag=0" for i in (38, 39, 40)]
        err = remote.nero("logs", "-w", str(remote.project), name, "--stderr")
        assert err.returncode == 0 and err.stdout == ""
    remote.ssh(f"rm -rf {remote.workdir}/talk-ssh*")
    gone = remote.nero("logs", "-w", str(remote.project), "talk-ssh")
    assert gone.returncode != 0 and "does not exist (any more)" in gone.stderr


# --------------------------------------------------------------------------- metric files
REPLAY = r'''
import os, sys, time
run = os.environ["NERO_RUN_DIR"]
data = open("events.bin", "rb").read()  # written by tensorboardX on nero's side: none is installed here
cut = int(sys.argv[1])
os.makedirs(os.path.join(run, "tb"))
with open(os.path.join(run, "tb", "events.out.tfevents.1.remote"), "ab") as f:
    f.write(data[:cut])  # ends inside a record, as a file being written does
with open(os.path.join(run, "metrics.csv"), "a") as f:
    f.write("epoch,step,val_loss\n0,10,0.5\n")
open(os.path.join(run, "half"), "w").close()
while not os.path.exists(os.path.join(run, "go")):
    time.sleep(0.1)
with open(os.path.join(run, "tb", "events.out.tfevents.1.remote"), "ab") as f:
    f.write(data[cut:])
with open(os.path.join(run, "metrics.csv"), "a") as f:
    f.write("1,20,0.25\n")
'''


@pytest.mark.parametrize("cluster", ["ssh", "slurm"])
def test_event_files_and_csvs_on_a_remote_host_arrive_pass_by_pass(remote: Remote, tmp_path_factory, cluster: str):
    """The agent finds and reads a run's metric files on the cluster (no TensorBoard, no
    torch there); nero decodes them: what a pass stores is what the file held whole then."""
    tensorboardX = pytest.importorskip("tensorboardX")
    tmp_path = tmp_path_factory.mktemp("writer")
    w = tensorboardX.SummaryWriter(str(tmp_path / "tb"))
    for s in range(10):
        w.add_scalar("train/loss", 1.0 / (s + 1), s)
    w.close()
    data = next((tmp_path / "tb").rglob("events.out.tfevents.*")).read_bytes()
    starts, i = [], 0
    while i < len(data):
        starts.append(i)
        i += 16 + int.from_bytes(data[i:i + 8], "little")
    cut = starts[6] + 20  # records 0 (the file's version) and steps 0-4 whole, step 5 begun
    (remote.project / "events.bin").write_bytes(data)
    (remote.project / "replay.py").write_text(REPLAY)
    write_workbook(remote.project / "experiments.xlsx", [
        {"id": "tb", "command": f"python3 replay.py {cut}", "cluster": cluster}], clusters=remote.clusters())
    first_pass = remote.nero("reconcile", str(remote.project))
    assert first_pass.returncode == 0, first_pass.stdout + first_pass.stderr
    [(run_dir,)] = remote.db("SELECT run_dir FROM attempts")
    wait_for(lambda: remote.ssh(f"test -e {run_dir}/half && echo yes || true").strip() == "yes", timeout=60,
             what="the first half written on the cluster")

    def points() -> list[tuple]:
        return remote.db("SELECT name, step, value, source FROM metrics WHERE source != 'stdout' ORDER BY rowid")

    assert remote.nero("reconcile", str(remote.project)).returncode == 0
    first = points()
    assert [p for p in first if p[3] == "tensorboard"] == [
        ("train/loss", s, 1.0 / (s + 1) if s != 2 else 0.33333334, "tensorboard") for s in range(5)]
    assert [p for p in first if p[3] == "csv"] == [("epoch", 10, 0.0, "csv"), ("val_loss", 10, 0.5, "csv")]
    remote.ssh(f"touch {run_dir}/go")
    wait_for(lambda: remote.ssh(f"test -e {run_dir}/exit_code && echo yes || true").strip() == "yes", timeout=60,
             what="the job's end")
    wait_for(lambda: remote.nero("reconcile", str(remote.project)) and remote.status()["tb"]["state"] == "completed",
             timeout=60, what="the run completed")
    rows = points()
    assert rows[:len(first)] == first
    assert [s for n, s, _, src in rows if src == "tensorboard"] == list(range(10))  # each once
    assert [p for p in rows if p[3] == "csv"][-2:] == [("epoch", 20, 1.0, "csv"), ("val_loss", 20, 0.25, "csv")]
