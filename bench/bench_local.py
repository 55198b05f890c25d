"""Benchmark: 1,000 tiny local runs, and what the local job wrapper costs (issue #14).

* throughput: a project with one Experiments row expanding to `--runs` runs of `true`
  (Clusters `local` with `max_jobs` = runs), taken through the real command line
  `nero reconcile --until-done`; runs per second of the whole command. Target ≥ 200.
  Beside it, the rate the same work would reach on idle cores: the CPU time of nero and its
  jobs per run (nero reaps its jobs, so theirs is counted) over the machine's cores, a
  figure the other load on a shared machine does not move.
* wrapper: the CPU time (user + system, of the process and every child it waited for) of
  running one rendered `job.sh` for `true` `--wrapper` times, next to `bash -c true` as
  many times. Target ≤ 3×.

Both fail loudly when the work did not happen (a run not completed, a job that wrote no
exit code), so a figure never measures nothing.

Two things of the machine move these figures and are printed beside them:
* nero's bytecode. nero runs as installed, its modules compiled once (into a cache folder of
  the bench's, PYTHONPYCACHEPREFIX), not compiled again by every command as they are where
  PYTHONDONTWRITEBYTECODE is set and nero is an editable install without __pycache__.
* what a new file costs in the bench's folder. Every run makes ~15 (its folders, job.sh,
  params.json, submit.json, handed, job_id, .tick; the job script's pid, started, stdout.log,
  stderr.log, heartbeat, exit_code). On ext4 without a journal (this VM's) a new inode is
  found by skipping every inode freed in the last 60 s (5 min while its table block is not
  yet written back) in the folder's block group, so right after many files were deleted
  there (the bench's own previous run, a test suite in /tmp) each new file costs 100-400 µs
  of system time instead of ~15 µs. The bench measures it first (`--dir` puts its folder
  elsewhere).

Run: python bench/bench_local.py [--runs 1000] [--wrapper 200] [--dir PARENT] [--code CHECKOUT] [--keep]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from openpyxl import Workbook

ROOT = Path(__file__).resolve().parent.parent


def workbook(path: Path, runs: int) -> None:
    wb = Workbook()
    ws = wb.active
    ws.title = "Experiments"
    ws.append(["id", "command", "i"])
    ws.append(["tiny", "true", f"range({runs})"])
    cl = wb.create_sheet("Clusters")
    cl.append(["name", "kind", "max_jobs"])
    cl.append(["local", "local", runs])
    wb.save(path)


def nero_env(tmp: Path, code: Path) -> dict[str, str]:
    """The environment nero runs in: `code` first on the path, its modules compiled once."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(PYTHONPATH=str(code), PYTHONPYCACHEPREFIX=str(tmp / "pycache"))
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(code / "orchestrator")], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return env


def new_file_us(tmp: Path, n: int = 300) -> float:
    """CPU µs (mostly system time) of creating one empty file in a new folder here."""
    d = tmp / "probe"
    d.mkdir()
    t = time.process_time()
    for i in range(n):
        os.close(os.open(d / str(i), os.O_CREAT | os.O_WRONLY, 0o644))
    return (time.process_time() - t) / n * 1e6


def throughput(tmp: Path, runs: int, env: dict[str, str]) -> tuple[float, float, Path]:
    path = tmp / "experiments.xlsx"
    workbook(path, runs)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "orchestrator", "reconcile", str(path), "--until-done", "--quiet",
                        "--yes"],  # the 1,000 new runs of one row are more than confirm_over: confirmed here
                       env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # nero's CPU and its jobs' (it reaps them): what the machine spent, whatever else runs on it
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if p.returncode != 0:
        sys.exit(f"bench_local: nero reconcile --until-done exited {p.returncode}:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    with sqlite3.connect(tmp / ".nero" / "state.db") as db:
        done = db.execute("SELECT count(*) FROM attempts WHERE state = 'completed' AND exit_code = 0").fetchone()[0]
        dirs = [r[0] for r in db.execute("SELECT run_dir FROM attempts LIMIT 1")]
    if done != runs:
        sys.exit(f"bench_local: {done} of {runs} runs completed: the figure would measure something else")
    return seconds, cpu_s, Path(dirs[0]) / "job.sh"


def cpu(argvs: list[list[str]]) -> float:
    """CPU seconds (user + system) of running each argv to its end, one after the other."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for argv in argvs:
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def wrapper(tmp: Path, job: Path, n: int) -> tuple[float, float]:
    """CPU per run of the rendered job.sh (each copy in its own fresh run folder) and of
    `bash -c true`, interleaved in rounds so both see the same machine load."""
    text = job.read_text()
    run_dir = str(job.parent)
    scripts = []
    for i in range(n):
        d = tmp / "wrap" / str(i)
        d.mkdir(parents=True)
        s = d / "job.sh"
        s.write_text(text.replace(run_dir, str(d)))
        os.mkfifo(d / ".tick")  # as nero's agent makes it in every run folder
        scripts.append(s)
    rounds = 5
    per = n // rounds
    job_cpu = bash_cpu = 0.0
    for r in range(rounds):
        job_cpu += cpu([["bash", str(s)] for s in scripts[r * per:(r + 1) * per]])
        bash_cpu += cpu([["bash", "-c", "true"]] * per)
    ended = sum(1 for s in scripts[:rounds * per] if (s.parent / "exit_code").read_text() == "0\n")
    if ended != rounds * per:
        sys.exit(f"bench_local: {ended} of {rounds * per} job.sh copies wrote exit code 0")
    return job_cpu / (rounds * per), bash_cpu / (rounds * per)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--wrapper", type=int, default=200)
    ap.add_argument("--dir", type=Path, default=None, help="the folder to make the bench's folder in (default: the "
                                                           "system's temporary folder)")
    ap.add_argument("--code", type=Path, default=ROOT, help="the nero checkout to measure (default: this one)")
    ap.add_argument("--keep", action="store_true", help="leave the bench's folder (its ~16,000 files deleted at once "
                                                        "slow the files the next minutes make there, see above)")
    args = ap.parse_args()
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench_local-", dir=args.dir))
    try:
        env = nero_env(tmp, args.code.resolve())
        probe = new_file_us(tmp)
        seconds, cpu_s, job = throughput(tmp, args.runs, env)
        job_cpu, bash_cpu = wrapper(tmp, job, args.wrapper)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    rate = args.runs / seconds
    load = os.getloadavg()[0]
    print(f"{'benchmark':<52} {'figure':>12} {'peer':>12} {'ratio':>7} {'target':>8}")
    print(f"{'nero reconcile --until-done, runs of `true`':<52} {rate:>8.0f} r/s {'200 r/s':>12} "
          f"{rate / 200:>6.2f}x {'>= 1.0x':>8}   ({args.runs} runs in {seconds:.2f} s)")
    cores = os.cpu_count() or 1
    print(f"{'  the same on idle cores: cores / CPU per run':<52} {cores * args.runs / cpu_s:>8.0f} r/s {'200 r/s':>12} "
          f"{cores * args.runs / cpu_s / 200:>6.2f}x {'>= 1.0x':>8}   ({cpu_s / args.runs * 1000:.2f} ms CPU a run, "
          f"{cores} cores)")
    print(f"{'job.sh for `true` vs `bash -c true`, CPU per run':<52} {job_cpu * 1000:>9.2f} ms {bash_cpu * 1000:>9.2f} ms "
          f"{job_cpu / bash_cpu:>6.2f}x {'<= 3.0x':>8}   ({args.wrapper} each)")
    print(f"(load average {load:.2f}; a new file in the bench's folder: {probe:.0f} µs of CPU; nero from "
          f"{args.code.resolve()}{'; kept ' + str(tmp) if args.keep else ''})")


if __name__ == "__main__":
    main()
