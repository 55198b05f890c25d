"""The local job wrapper's cost (#14): a job script whose own work is close to starting bash.
A run that ends within a second starts no process but its program, and still records its
start, its end and its exit code; a longer one gets resource samples read from /proc, with
no `ps`. Real jobs on the local cluster, the real command line; the one stand-in is a folder
of commands put first on PATH that log each call and then run the real command."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from conftest import nero, state_db, write_workbook

# what the job script used to start on its fast path, and its sampler's per-sample commands
WATCHED = ("date", "mv", "mkdir", "hostname", "ps", "df", "awk", "sed", "cat", "head", "cut", "tr", "sleep")


def watched_path(tmp: Path, names: tuple[str, ...]) -> tuple[dict[str, str], Path]:
    """Commands that log their name to a file, then run the real one; the env that puts them first."""
    bin_dir, log = tmp / "watched-bin", tmp / "calls.log"
    bin_dir.mkdir()
    log.write_text("")
    for name in names:
        real = shutil.which(name)
        assert real, name
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\necho {name} >> "{log}"\nexec {real} "$@"\n')
        script.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}, log


def test_a_short_run_starts_no_process_but_its_program_and_records_start_end_and_exit_code(project: Path):
    """#14: each job.sh cost 18.7x `bash -c true`, starting date, mv, mkdir, hostname, ps, df
    and awk; a run of a tenth of a second needs none of them, and loses nothing without them."""
    env, log = watched_path(project, WATCHED)
    write_workbook(project / "experiments.xlsx", [{"id": "t", "command": "exit {{ code }}", "code": "[0, 3]"}])
    proc = nero("reconcile", str(project), "--until-done", "--interval", "1", env=env, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # one run failed, as its command said
    with state_db(project) as con:
        rows = con.execute("SELECT key, state, exit_code, started_at, ended_at, submitted_at, run_dir, host "
                           "FROM attempts ORDER BY key").fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [("t[code=0]", "completed", 0), ("t[code=3]", "failed", 3)]
    for _key, _state, _code, started, ended, submitted, run_dir, host in rows:
        # the job's own times (from the started file and its last heartbeat), not the poll's
        assert submitted - 1 <= started <= ended < started + 1.0
        assert host
        d = Path(run_dir)
        started_file = json.loads((d / "started").read_text())
        assert started_file["time"] == started and started_file["pid"] == int((d / "pid").read_text())
        assert float((d / "heartbeat").read_text()) == ended
        assert not (d / "resources.jsonl").exists()  # no sampler for a run shorter than a second
        # without a scheduler the pid file is the claim (created only where none exists): no .claim
        assert not (d / ".claim").exists()
    assert log.read_text() == "", "the job scripts started: " + " ".join(log.read_text().split())


def test_a_longer_run_gets_resource_samples_from_proc_without_ps(project: Path):
    """#14: the sampler read RSS with ps and awk every sample; where /proc exists it reads
    /proc/<pid>/stat and status with bash builtins, and still sums the run's own processes."""
    env, log = watched_path(project, ("ps",))
    (project / "hold.py").write_text("import time\nblock = bytearray(64 << 20)\ntime.sleep(2.5)\n")
    write_workbook(project / "experiments.xlsx", [{"id": "long", "command": "python3 hold.py"}])
    proc = nero("reconcile", str(project), "--until-done", "--interval", "1", env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (r,) = json.loads(nero("status", str(project), "--json", check=True).stdout)
    samples = [json.loads(line) for line in (Path(r["run_dir"]) / "resources.jsonl").read_text().splitlines()]
    assert len(samples) >= 2  # the first after a second, the last as the job ended
    # the program's 64 MB block (and the job script's own bash) summed; free disk from df
    assert max(s["rss_mb"] for s in samples) > 64 and r["peak_rss_mb"] > 64
    assert all(s["disk_free_mb"] and s["disk_free_mb"] > 0 for s in samples)
    assert "ps" not in log.read_text().split()


def test_until_done_does_not_wait_the_interval_while_local_runs_end(project: Path):
    """#14: a pass of 1,000 runs of `true` took 50 s, most of it waiting for the next pass;
    while local runs end, the next pass comes at once (the interval here is a minute)."""
    write_workbook(project / "experiments.xlsx", [{"id": "t", "command": "true", "i": "range(20)"}],
                   clusters=[{"name": "local", "kind": "local", "max_jobs": 5}])
    proc = nero("reconcile", str(project), "--until-done", "--interval", "60", "--quiet", timeout=50)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with state_db(project) as con:
        assert con.execute("SELECT count(*) FROM attempts WHERE state = 'completed'").fetchone()[0] == 20


def test_the_claim_lets_one_copy_of_an_attempt_run_with_or_without_a_scheduler(project: Path):
    """#14: without a scheduler the pid file is the claim (one file fewer); under one, .claim
    holds the job's id: another job's copy ends at once, the same job started again (a
    requeue) runs. Copies of a rendered job.sh, run by hand in fresh run folders."""
    import subprocess

    write_workbook(project / "experiments.xlsx", [{"id": "c", "command": "echo ran"}])
    assert nero("reconcile", str(project), "--until-done", "--interval", "1", timeout=120).returncode == 0
    (r,) = json.loads(nero("status", str(project), "--json", check=True).stdout)
    text = (Path(r["run_dir"]) / "job.sh").read_text()

    def run(d: Path, job_id: str | None) -> str:
        d.mkdir(exist_ok=True)
        (d / "job.sh").write_text(text.replace(r["run_dir"], str(d)))
        env = {k: v for k, v in os.environ.items() if k not in ("SLURM_JOB_ID", "JOB_ID")}
        if job_id:
            env["SLURM_JOB_ID"] = job_id
        p = subprocess.run(["bash", str(d / "job.sh")], env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return p.stderr

    bare = project / "bare"
    assert run(bare, None) == ""
    assert not (bare / ".claim").exists() and (bare / "pid").read_text().strip().isdigit()
    assert "already started" in run(bare, None)  # a second copy: the pid file is there
    assert (bare / "stdout.log").read_text() == "ran\n"

    queued = project / "queued"
    run(queued, "101")
    assert (queued / ".claim").read_text() == "101\n" and (queued / "pid").read_text().strip().isdigit()
    assert "already started (job 101)" in run(queued, "102")  # another job's copy ends at once
    run(queued, "101")  # the same job again (a requeue) keeps its claim and runs
    assert (queued / "stdout.log").read_text() == "ran\nran\n"
