"""Seeded SIGKILLs of `nero reconcile --watch` over a project of real local jobs, then the
checks: every attempt's program started once, every metric line it printed stored once,
results.xlsx readable.

Each job (`TICKER`) appends `key attempt pid` to the project's `starts.log` when its program
starts (one O_APPEND write: no start is missed, none is merged with another) and prints
`step=i tick=i/2` for i = 1..n. The reconciler is killed `kills` times, each time either at
a seeded random moment or at a named point (`crash_driver.POINTS`) armed at its seeded
k-th passage; a named point that is not reached within its own timeout is killed there and
then (counted in `fallbacks`). Then one pass a minute later by the commands' clock
(`$NERO_NOW`: the grace of a submission handed over but never seen is over) and
`nero reconcile --until-done` run the project to the end, bounded by their timeouts, and
`check` counts what went wrong.
"""

from __future__ import annotations

import collections
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["NAMED_POINTS", "TICKER", "KillReport", "check", "kill_leftovers", "make_project", "nero_env", "torture"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DRIVER = HERE / "crash_driver.py"
NAMED_POINTS = ("mid-transaction", "after-intent", "after-submit", "mid-results-write", "before-start")

TICKER = r'''
import os, sys, time
args = dict(a.split("=", 1) for a in sys.argv[1:])
n = int(args["n"]); delay = float(args["delay"])
fd = os.open("starts.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(fd, f"{os.environ['NERO_RUN_KEY']} {os.environ['NERO_ATTEMPT']} {os.getpid()}\n".encode())
os.close(fd)
for i in range(1, n + 1):
    print(f"step={i} tick={i / 2}", flush=True)
    time.sleep(delay)
'''


def nero_env() -> dict[str, str]:
    """The environment for a `nero` subprocess: this checkout's orchestrator first."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


def kill_leftovers(root: Path) -> None:
    """SIGKILL the process group of every job below `root` that has not ended."""
    for pid_file in root.rglob("pid"):
        if (pid_file.parent / "exit_code").exists():
            continue
        try:
            os.killpg(int(pid_file.read_text().strip()), signal.SIGKILL)
        except (ValueError, OSError):
            pass


def make_project(project: Path, runs: int, lines: int, delay: float, max_jobs: int) -> Path:
    """A project of `runs` real local jobs, `max_jobs` at a time, each printing `lines` lines."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import write_workbook

    project.mkdir(parents=True, exist_ok=True)
    ticker = project / "ticker.py"
    if not ticker.exists() or ticker.read_text() != TICKER:
        # written once: jobs of the nero just killed may be starting it right now, and a
        # rewrite (truncate, then write) would hand one an empty program that exits 0
        ticker.write_text(TICKER)
    return write_workbook(project / "experiments.xlsx", [
        {"id": "t", "command": f"python ticker.py n={lines} delay={delay} seed={{{{ seed }}}}", "seed": f"range({runs})"},
    ], clusters=[{"name": "local", "kind": "local", "max_jobs": max_jobs}])


@dataclass
class KillReport:
    """What a torture run did and found."""

    kills: int = 0
    by_point: collections.Counter = field(default_factory=collections.Counter)
    fallbacks: int = 0  # named points not reached in time, killed there and then
    runs: int = 0
    starts: int = 0
    duplicate_starts: int = 0
    points: int = 0
    lost_points: int = 0
    duplicated_points: int = 0
    unfinished: list[str] = field(default_factory=list)  # run: state (reason)
    results_readable: bool = False
    stale_temporaries: int = 0
    final_rc: int | None = None
    final_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.duplicate_starts or self.lost_points or self.duplicated_points or self.unfinished
                    or not self.results_readable or self.problems or self.final_rc != 0)


def _kill_once(project: Path, point: str, nth: int, delay: float, point_timeout: float, interval: float) -> bool:
    """Start the reconciler loop and SIGKILL it (at `point`, else after `delay` s); True if
    it died at the armed point."""
    args = [sys.executable, str(DRIVER), point, str(nth), "--", "reconcile", str(project), "--watch",
            "--interval", str(interval), "-q"]
    proc = subprocess.Popen(args, cwd=project, env=nero_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        rc = proc.wait(timeout=delay if point == "random" else point_timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        return False
    if rc == 3:
        raise RuntimeError(f"crash point {point!r} is not found in orchestrator/ any more (crash_driver exit 3)")
    return rc == -signal.SIGKILL


def schedule(kills: int, seed: int, points: tuple[str, ...] = NAMED_POINTS) -> list[tuple[str, int, float]]:
    """The seeded kills: (point, its k-th passage, delay for a random kill). Every named
    point comes once first, then random moments and named points alternate by chance."""
    rng = random.Random(seed)
    plan = []
    for i in range(kills):
        if i < len(points):
            point = points[i]
        else:
            point = "random" if rng.random() < 0.5 else rng.choice(points)
        nth = 1 if i < len(points) else rng.randint(1, 2)  # the first round: each point's first passage
        plan.append((point, nth, round(rng.uniform(0.3, 3.0), 2)))
    return plan


def torture(project: Path, *, kills: int, seed: int, runs: int, lines: int, delay: float = 0.05, max_jobs: int = 3,
            points: tuple[str, ...] = NAMED_POINTS, point_timeout: float = 8.0, final_timeout: float = 300.0,
            interval: float = 0.2, progress=None) -> KillReport:
    """Kill the reconciler `kills` times (seeded), run it to the end, check everything.

    The project starts with `runs` runs and gains one before each kill (the row's range
    grows while nero is down, as a user's edit would), so every kill finds runs to submit,
    running jobs printing points and results to write: each named point is there to hit."""
    report = KillReport()
    make_project(project, runs, lines, delay, max_jobs)
    for i, (point, nth, pause) in enumerate(schedule(kills, seed, points)):
        runs += 1
        make_project(project, runs, lines, delay, max_jobs)
        fired = _kill_once(project, point, nth, pause, point_timeout, interval)
        report.kills += 1
        if point != "random" and not fired:
            report.fallbacks += 1
            report.by_point[f"{point} (not reached, killed at {point_timeout:.0f} s)"] += 1
        else:
            report.by_point[point] += 1
        if progress:
            progress(f"kill {i + 1}/{kills}: {point}{'' if point == 'random' else f' #{nth}'}"
                     f"{'' if fired or point == 'random' else ' (not reached)'}")
    t0 = time.monotonic()
    # Time passes: a submission handed to the cluster and never seen (a kill between job.sh
    # and its process) is submitted again once its grace is over. One pass at that time
    # (`$NERO_NOW`, the commands' test clock) instead of a minute's wait.
    from orchestrator.reconcile import UNCONFIRMED_GRACE_S

    later = {**nero_env(), "NERO_NOW": f"{time.time() + UNCONFIRMED_GRACE_S + 1:.3f}"}
    try:
        subprocess.run([sys.executable, "-m", "orchestrator", "reconcile", str(project), "-q"], cwd=project, env=later,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=final_timeout)
        proc = subprocess.run([sys.executable, "-m", "orchestrator", "reconcile", str(project), "--until-done",
                               "--interval", str(interval), "-q"], cwd=project, env=nero_env(),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=final_timeout)
        report.final_rc = proc.returncode
        if proc.returncode != 0:
            report.problems.append(f"final reconcile exited {proc.returncode}: {(proc.stdout + proc.stderr)[-1500:]}")
    except subprocess.TimeoutExpired:
        report.problems.append(f"final reconcile --until-done did not end within {final_timeout:.0f} s")
    report.final_s = time.monotonic() - t0
    check(project, lines, runs, report)
    return report


def check(project: Path, lines: int, runs: int, report: KillReport) -> KillReport:
    """Count duplicate starts, lost and duplicated points, unfinished runs; read results.xlsx."""
    ledger = project / "starts.log"
    starts = collections.Counter()
    if ledger.exists():
        for line in ledger.read_text().splitlines():
            key, attempt, _pid = line.rsplit(" ", 2)
            starts[(key, int(attempt))] += 1
    report.starts = sum(starts.values())
    report.duplicate_starts = sum(c - 1 for c in starts.values())
    with sqlite3.connect(project / ".nero" / "state.db") as con:
        attempts = con.execute("SELECT key, attempt, state, reason, run_dir, job_id FROM attempts").fetchall()
        rows = con.execute("SELECT key, attempt, step, value FROM metrics WHERE name='tick'").fetchall()
    latest: dict[str, tuple] = {}
    for a in attempts:
        if a[0] not in latest or a[1] > latest[a[0]][1]:
            latest[a[0]] = a
    report.runs = len(latest)
    if report.runs != runs:
        report.problems.append(f"{report.runs} runs in the store, {runs} in the workbook")
    report.unfinished = [f"{k}: {a[2]} ({a[3]})" for k, a in sorted(latest.items()) if a[2] != "completed"]
    job_ids = collections.Counter(a[5] for a in attempts if a[5])
    report.duplicate_starts += sum(c - 1 for c in job_ids.values())  # one job id started for two attempts
    stored = collections.Counter((k, a, s, v) for k, a, s, v in rows)
    by_attempt = {(a[0], a[1]): a for a in attempts}
    for (key, attempt), _n in starts.items():
        a = by_attempt.get((key, attempt))
        if a is None:
            report.problems.append(f"{key} attempt {attempt} started but is not in the store")
            continue
        log = Path(a[4]) / "stdout.log"
        printed = [int(m) for m in re.findall(r"^step=(\d+) tick=", log.read_text(errors="replace"), re.M)] \
            if log.exists() else []
        if a[2] == "completed" and printed != list(range(1, lines + 1)):
            report.problems.append(f"{key} attempt {attempt} completed but printed steps {printed[:3]}…")
        report.points += len(printed)
        for step in printed:
            c = stored.pop((key, attempt, step, step / 2), 0)
            if c == 0:
                report.lost_points += 1
            report.duplicated_points += max(0, c - 1)
    report.duplicated_points += sum(stored.values())  # stored, never printed
    for a in attempts:
        d = Path(a[4])
        # the claim: .claim under a scheduler, the pid file itself on these local runs
        if (d / "started").exists() and not ((d / ".claim").is_file() or (d / "pid").is_file()):
            report.problems.append(f"{a[0]} attempt {a[1]} started without its claim")
    report.stale_temporaries = len(list(project.glob(".results.xlsx.*")))
    try:
        import pandas as pd

        summary = pd.read_excel(project / "results.xlsx", sheet_name="Summary")
        report.results_readable = len(summary) == runs
        if not report.results_readable:
            report.problems.append(f"results.xlsx Summary has {len(summary)} rows, {runs} runs")
    except Exception as e:  # noqa: BLE001 - any failure to read it is the finding
        report.problems.append(f"results.xlsx unreadable: {type(e).__name__}: {e}")
    return report
