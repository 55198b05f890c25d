"""Remote isolation, against the testbed's real sshd and Slurm: projects and people sharing a
cluster account or a GPU server keep out of each other's way.

* Two projects whose folders have the same name, on one Slurm account, get their own remote
  folders (`~/nero/<name>-<id8>`, keyed by each project's id) and never touch each other's
  runs; a project pointed at another's folder is refused, and writes nothing there.
* A submit never writes into a run folder whose job may be alive (a state deleted under a
  running job), and moves a dead job's folder aside.
* A project from before the ids (runs below `~/nero/<name>`) still finds its runs in flight.
* Two users' projects on one ssh host with GPUs (a fake nvidia-smi: three GPUs, one busy
  with another program) never run two jobs on one GPU at once: GPU claims are host-wide.

Needs `bash tests/testbed/up.sh` (which makes the second login, `nerotest2`) and
`. $NERO_TESTBED_DIR/env.sh`; without them every test here skips saying so.
"""

from __future__ import annotations

import json
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import wait_for, write_workbook
from jobs import STEPPER
from test_remote import GPU, SSH_VARS, Remote, need

pytestmark = pytest.mark.xdist_group("testbed")

WHO = 'import sys\nprint("who=" + open("who.txt").read().strip() + " tag=" + sys.argv[1], flush=True)\n'

# three GPUs; GPU 2 is busy with a program nero did not start (4 GB used), 0 and 1 are free
FAKE_NVIDIA_SMI = r'''#!/usr/bin/python3
import sys
args = " ".join(sys.argv[1:])
if "--query-compute-apps" in args:
    sys.exit(0)
if "--query-gpu=" not in args:
    sys.exit(2)
for i in range(3):
    value = {"index": str(i), "uuid": "GPU-fake-%d" % i, "memory.used": "4000" if i == 2 else "0",
             "memory.total": "81920", "utilization.gpu": "0", "name": "Fake GPU"}
    print(", ".join(value[f] for f in args.split("--query-gpu=")[1].split()[0].split(",")))
'''


def _project(base: Path, env: dict[str, str], **override: str) -> Remote:
    base.mkdir(parents=True)
    (base / "stepper.py").write_text(STEPPER)
    return Remote(base, {**env, **override})


def _reconcile_at_once(remotes: list[Remote], *args: str, timeout: float = 240) -> list:
    """`nero reconcile PROJECT *args` for every project, all at the same time."""
    with ThreadPoolExecutor(len(remotes)) as pool:
        return list(pool.map(lambda r: r.nero("reconcile", str(r.project), *args, timeout=timeout), remotes))


def _files(r: Remote, root: str) -> str:
    """Every file below `root` on the cluster but nero's own `.nero`, with size and mtime."""
    return r.ssh(f"cd {root} && find . -path ./.nero -prune -o -type f -printf '%p %s %T@\\n' | sort")


@pytest.fixture
def alike(tmp_path: Path):
    """Two projects both called `exp` (in different parent folders), on one Slurm account."""
    env = need(*SSH_VARS, "NERO_TEST_SLURM", "NERO_TEST_SSH_HOME")
    pytest.importorskip("paramiko")
    made = [_project(tmp_path / side / "exp", env) for side in ("a", "b")]
    yield made
    for r in made:
        r.cleanup()


def test_two_projects_named_alike_on_one_slurm_account_keep_their_own_folders(alike: list[Remote], tmp_path: Path):
    home = alike[0].env["NERO_TEST_SSH_HOME"]
    for side, r in zip("ab", alike, strict=True):
        (r.project / "who.py").write_text(WHO)
        (r.project / "who.txt").write_text(side)
        # no workdir: each project's default folder on the cluster
        write_workbook(r.project / "experiments.xlsx", [
            {"id": "e", "command": "python3 stepper.py steps=3 delay=0.2 && python3 who.py {{ i }}", "i": "[1, 2, 3]",
             "cluster": "slurm"},
        ], clusters=[{"name": "slurm", "kind": "slurm", "host": r.env["NERO_TEST_SSH_ALIAS"],
                      "python": r.env["NERO_TEST_REMOTE_PYTHON"], "partition": "debug"}])
    procs = _reconcile_at_once(alike, "--until-done", "--interval", "1")
    ids = []
    for r, proc in zip(alike, procs, strict=True):
        assert proc.returncode == 0, proc.stdout + proc.stderr
        ids.append((r.project / ".nero" / "project_id").read_text().strip())
        r.workdir = f"nero/exp-{ids[-1][:8]}"  # what cleanup removes
    assert ids[0] != ids[1] and all(len(i) == 16 for i in ids)
    roots = [f"{home}/nero/exp-{i[:8]}" for i in ids]
    for side, r, pid, root in zip("ab", alike, ids, roots, strict=True):
        runs = r.status()
        assert sorted(runs) == ["e[i=1]", "e[i=2]", "e[i=3]"]
        for key, run in runs.items():
            assert run["state"] == "completed", run
            assert run["run_dir"].startswith(f"{root}/e/") and run["run_dir"].endswith("/1"), run["run_dir"]
            out = r.ssh(f"cat {run['run_dir']}/stdout.log")
            assert f"who={side} tag={key[4]}" in out and "who=" + "ab"[side == "a"] not in out
            owner = json.loads(r.ssh(f"cat {run['run_dir']}/submit.json"))["owner"]
            assert owner == {"project": pid, "path": str(r.project), "key": key, "attempt": 1}
        assert r.ssh(f"find {root} -name '*.replaced-*'") == ""
    # one folder per project below ~/nero, none under the bare folder name
    listing = alike[0].ssh("ls ~/nero").split()
    assert {f"exp-{i[:8]}" for i in ids} <= set(listing) and "exp" not in listing

    # a third project pointed at the first one's folder (a shared Clusters workdir): its runs
    # are refused, nothing of the first project's changes
    third = _project(tmp_path / "c" / "exp", alike[0].env)
    try:
        write_workbook(third.project / "experiments.xlsx", [
            {"id": "e", "command": "python3 stepper.py steps=3 delay=0.2", "i": "[1, 2, 3]", "cluster": "slurm"},
        ], clusters=[{"name": "slurm", "kind": "slurm", "host": third.env["NERO_TEST_SSH_ALIAS"],
                      "python": third.env["NERO_TEST_REMOTE_PYTHON"], "partition": "debug",
                      "workdir": alike[0].workdir}])
        before = _files(alike[0], roots[0])
        third.nero("reconcile", str(third.project))
        runs = third.status()
        assert len(runs) == 3
        for run in runs.values():
            assert run["state"] == "failed", run
            assert "belongs to another nero project" in run["reason"] and str(alike[0].project) in run["reason"], run
        assert _files(alike[0], roots[0]) == before
        assert all(r["state"] == "completed" for r in alike[0].status().values())
    finally:
        third.workdir = f"nero-work/{third.tag}"  # never the first project's folder
        third.cleanup()


@pytest.fixture
def remote(tmp_path: Path):
    env = need(*SSH_VARS, "NERO_TEST_SSH_HOME")
    pytest.importorskip("paramiko")
    r = _project(tmp_path / "p", env)
    yield r
    r.cleanup()


def _ssh_row(r: Remote, **extra: object) -> dict:
    return {"name": "ssh", "kind": "ssh", "host": r.env["NERO_TEST_SSH_ALIAS"], "python": r.env["NERO_TEST_REMOTE_PYTHON"],
            "workdir": r.workdir, **extra}


def test_a_submit_never_writes_into_the_folder_of_a_live_job_and_moves_a_dead_ones_aside(remote: Remote):
    write_workbook(remote.project / "experiments.xlsx", [
        {"id": "long", "command": "python3 stepper.py steps=25 delay=0.2", "cluster": "ssh"},
    ], clusters=[_ssh_row(remote)])
    remote.nero("reconcile", str(remote.project))
    (run,) = remote.status().values()
    folder = run["run_dir"]
    wait_for(lambda: "step=2 " in remote.ssh(f"cat {folder}/stdout.log"), timeout=60, what="the job to run")
    for suffix in ("", "-wal", "-shm"):  # nero's state is lost; the job runs on
        (remote.project / ".nero" / f"state.db{suffix}").unlink(missing_ok=True)
    remote.nero("reconcile", str(remote.project))
    (again,) = remote.status().values()
    assert again["state"] == "failed" and again["run_dir"] == folder
    assert "may be alive (its process" in again["reason"] and "nothing was written there" in again["reason"], again
    # the live job was left alone: it ends in its own folder with all of its output
    wait_for(lambda: remote.ssh(f"cat {folder}/exit_code 2>/dev/null || true").strip() == "0", timeout=60,
             what="the first job to end")
    assert remote.ssh(f"cat {folder}/stdout.log").count("step=") == 25
    assert remote.ssh(f"ls -d {folder}.replaced-* 2>/dev/null || true") == ""
    # its job is over: the state lost again, the next submit moves its folder aside and runs anew
    for suffix in ("", "-wal", "-shm"):
        (remote.project / ".nero" / f"state.db{suffix}").unlink(missing_ok=True)
    proc = remote.nero("reconcile", str(remote.project), "--until-done", "--interval", "1", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (third,) = remote.status().values()
    assert third["state"] == "completed" and third["run_dir"] == folder
    (aside,) = remote.ssh(f"ls -d {folder}.replaced-*").split()
    assert remote.ssh(f"cat {aside}/stdout.log").count("step=") == 25


def test_runs_in_flight_below_the_old_folder_are_still_found_and_new_runs_go_to_the_keyed_one(tmp_path: Path):
    env = need(*SSH_VARS, "NERO_TEST_SSH_HOME")
    pytest.importorskip("paramiko")
    name = f"old-{time.time_ns() % 10**9}"
    r = _project(tmp_path / name, env)
    r.workdir = f"nero/{name}"  # the folder an older nero used by default: ~/nero/<project folder name>
    try:
        write_workbook(r.project / "experiments.xlsx", [
            {"id": "before", "command": "python3 stepper.py steps=20 delay=0.2", "cluster": "ssh"},
        ], clusters=[_ssh_row(r)])
        r.nero("reconcile", str(r.project))
        assert r.status()["before"]["state"] in ("submitted", "running")
        (r.project / ".nero" / "project_id").unlink()  # a project from before the ids had none
        # nero upgraded: the Clusters row names no workdir, so new runs go to the project's own folder
        write_workbook(r.project / "experiments.xlsx", [
            {"id": "before", "command": "python3 stepper.py steps=20 delay=0.2", "cluster": "ssh"},
            {"id": "after", "command": "python3 stepper.py steps=3 delay=0.1", "cluster": "ssh"},
        ], clusters=[_ssh_row(r, workdir=None)])
        proc = r.nero("reconcile", str(r.project), "--until-done", "--interval", "1", timeout=150)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        pid = (r.project / ".nero" / "project_id").read_text().strip()
        runs = r.status()
        home = env["NERO_TEST_SSH_HOME"]
        assert runs["before"]["state"] == runs["after"]["state"] == "completed"
        assert runs["before"]["run_dir"].startswith(f"{home}/nero/{name}/before/")
        assert runs["after"]["run_dir"].startswith(f"{home}/nero/{name}-{pid[:8]}/after/")
        steps = sorted(s for (s,) in r.db("SELECT step FROM metrics WHERE name='loss' AND key='before'"))
        assert steps == list(range(1, 21))
    finally:
        r.ssh(f"rm -rf nero/{name}-* 2>/dev/null; true")
        r.cleanup()


def test_two_users_runs_on_one_ssh_host_never_share_a_gpu(tmp_path: Path):
    env = need(*SSH_VARS, "NERO_TEST_SSH_HOME", "NERO_TEST_SSH_USER2", "NERO_TEST_SSH_HOME2")
    pytest.importorskip("paramiko")
    people = [_project(tmp_path / f"user{n}" / "gpus", env, NERO_TEST_SSH_USER=user, NERO_TEST_SSH_HOME=home)
              for n, (user, home) in enumerate([(env["NERO_TEST_SSH_USER"], env["NERO_TEST_SSH_HOME"]),
                                                (env["NERO_TEST_SSH_USER2"], env["NERO_TEST_SSH_HOME2"])])]
    try:
        for n, r in enumerate(people):
            # each user's own python and nvidia-smi (the job sees the python's folder first on PATH)
            bin_dir = f"{r.abs_workdir}-bin"
            r.ssh(f"mkdir -p {bin_dir} && ln -sf /usr/bin/python3 {bin_dir}/python3 && "
                  f"printf %s {shlex.quote(FAKE_NVIDIA_SMI)} > {bin_dir}/nvidia-smi && chmod +x {bin_dir}/nvidia-smi")
            (r.project / "gpu.py").write_text(GPU)
            write_workbook(r.project / "experiments.xlsx", [
                {"id": f"g{n}", "command": "python3 gpu.py {{ i }}", "i": "[1, 2, 3]", "cluster": "ssh", "gpus": 1},
            ], clusters=[_ssh_row(r, user=r.env["NERO_TEST_SSH_USER"], python=f"{bin_dir}/python3", max_jobs=3)])
        for proc in _reconcile_at_once(people, "--until-done", "--interval", "1"):
            assert proc.returncode == 0, proc.stdout + proc.stderr
        spans = []  # (start, end, GPU, user) of each job's program
        for r in people:
            runs = r.status()
            assert len(runs) == 3 and all(run["state"] == "completed" for run in runs.values()), runs
            for run in runs.values():
                values = dict(line.split("=", 1) for line in r.ssh(f"cat {run['run_dir']}/stdout.log").split())
                spans.append((float(values["t0"]), float(values["t1"]), values["gpus"], r.env["NERO_TEST_SSH_USER"]))
        # GPU 2 is busy (another program), so every job ran on 0 or 1: more jobs than GPUs, all waited their turn
        assert {s[2] for s in spans} <= {"0", "1"}, spans
        for a in spans:
            for b in spans:
                if a is not b and a[2] == b[2]:
                    assert a[1] <= b[0] or b[1] <= a[0], f"two jobs held GPU {a[2]} at once: {a} {b}"
        # the two users' jobs ran in the same stretch of time (they contended for the GPUs)
        windows = [(min(s[0] for s in spans if s[3] == u), max(s[1] for s in spans if s[3] == u))
                   for u in {s[3] for s in spans}]
        assert len(windows) == 2 and windows[0][0] < windows[1][1] and windows[1][0] < windows[0][1]
        # six 3-second jobs on two GPUs need three rounds
        assert max(s[1] for s in spans) - min(s[0] for s in spans) >= 9.0 - 0.1
        # the host-wide claims folder: anyone's (1777), a folder per GPU claimed, no claim outlives its job
        claims = people[1].ssh("stat -c '%a' /tmp/nero-gpu-claims; ls /tmp/nero-gpu-claims").split()
        assert claims[0] == "1777" and {"0", "1"} <= set(claims[1:])
        for r in people:
            assert r.ssh("flock -n /tmp/nero-gpu-claims/0 true && flock -n /tmp/nero-gpu-claims/1 true && echo free")\
                .strip() == "free"
    finally:
        for r in people:
            r.ssh(f"rm -rf {r.abs_workdir}-bin; true")
            r.cleanup()
