"""Hostile inputs: workbooks (`tests/hostile_workbooks.py`), bad jobs and a full disk.

`measured` runs one `nero` command in its own process group and returns its exit code,
output, wall time and peak memory (VmHWM, reported by `peak.py` from inside it), killed at
its own timeout and capped by an address-space limit so that a bomb cannot take the
machine down. Each check returns a `Verdict`: ok, or what went wrong.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .kills import ROOT, nero_env

__all__ = ["BAD_JOBS", "MEMORY_CAP", "Measured", "Verdict", "bad_job", "full_disk", "hostile", "hostile_cases",
           "measured"]

PEAK = Path(__file__).resolve().parent / "peak.py"
MEMORY_CAP = 3 * 1024 ** 3  # address space of each nero process here: a bomb fails, the machine does not
# a refusal names where each problem is (`Experiments!D7: …`, `xl/sharedStrings.xml: …`,
# `Experiments: …`, the file itself) or the limit it passed
CELL_OR_LIMIT = re.compile(r"^\s+[^\s:][^:\n]{0,80}: \S|\blimit\b", re.M)


@dataclass
class Measured:
    rc: int
    out: str
    wall_s: float
    peak_mb: float
    timed_out: bool = False


def measured(args: list[str], cwd: Path, timeout: float, cap: int = MEMORY_CAP) -> Measured:
    """`python -m orchestrator ARGS` with its wall time and peak resident memory (VmHWM,
    reported by `peak.py` from inside the process; 0 if it was killed)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryDirectory() as tmp:
        peak = Path(tmp) / "peak"
        env = {**nero_env(), "NERO_TORTURE_CAP": str(cap), "NERO_TORTURE_PEAK": str(peak)}
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, str(PEAK), *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
        wall = time.monotonic() - t0
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
        kib = int(peak.read_text()) if peak.exists() and peak.read_text().strip().isdigit() else 0
    return Measured(proc.returncode, text, wall, kib / 1024, timed_out)


@dataclass
class Verdict:
    name: str
    expected: str = ""
    outcome: str = ""  # refused / read / failed
    problems: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    peak_mb: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


def hostile_cases(only: list[str] | None = None) -> tuple[list[tuple[str, bytes]], object]:
    """The hostile workbooks of tests/hostile_workbooks.py and its module (for `expect`)."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import hostile_workbooks

    return hostile_workbooks.cases(only), hostile_workbooks


def _dispatched(project: Path) -> list[str]:
    found = [str(p.relative_to(project)) for p in project.rglob("job.sh")]
    db = project / ".nero" / "state.db"
    if db.exists():
        with sqlite3.connect(db) as con:
            try:
                found += [f"attempt {k}" for (k,) in con.execute("SELECT key FROM attempts")]
            except sqlite3.Error:
                pass
    return found


def hostile(name: str, data: bytes, expected: str, project: Path, timeout: float = 120) -> Verdict:
    """`nero plan` and one `nero reconcile` pass on a hostile workbook: exit 2 with a cell or
    a limit named, or read fine; never a traceback, never killed by our caps; a refused
    workbook dispatches nothing."""
    v = Verdict(name, expected)
    project.mkdir(parents=True, exist_ok=True)
    (project / "experiments.xlsx").write_bytes(data)
    outcomes = []
    for args in (["plan", str(project)], ["reconcile", str(project), "-q"]):
        m = measured(args, project, timeout)
        v.wall_s, v.peak_mb = max(v.wall_s, m.wall_s), max(v.peak_mb, m.peak_mb)
        what = f"nero {args[0]}"
        if m.timed_out:
            v.problems.append(f"{what}: killed after {timeout:.0f} s")
        elif "Traceback" in m.out or "MemoryError" in m.out:
            v.problems.append(f"{what}: exit {m.rc} with a traceback: …{m.out.strip()[-300:]}")
        elif m.rc == 2:
            outcomes.append("refused")
            if not CELL_OR_LIMIT.search(m.out):
                v.problems.append(f"{what}: exit 2 naming no cell, part or limit: {m.out.strip()[-300:]}")
        elif m.rc in (0, 1):
            outcomes.append("read")
        else:
            v.problems.append(f"{what}: exit {m.rc}: …{m.out.strip()[-300:]}")
        if args[0] == "plan" and (v.problems or "refused" in outcomes):
            break  # reconcile reads the workbook the same way: the plan's outcome stands for both
    v.outcome = "failed" if v.problems else ("refused" if "refused" in outcomes else "read")
    if v.outcome == "refused" and _dispatched(project):
        v.problems.append(f"refused but dispatched: {_dispatched(project)[:3]}")
    if expected and not v.problems and {"refused": "refused", "ok": "read"}.get(expected, expected) != v.outcome:
        v.problems.append(f"expected {expected}, got {v.outcome}")
    for pwn in project.rglob("PWN*"):
        v.problems.append(f"the workbook ran code here: {pwn}")
    return v


# ------------------------------------------------------------------------------ bad jobs
BAD_JOBS = {
    # name: (command, what the run must end as, a word its reason must hold or "")
    "instant-exit": ("true", "completed", ""),
    "instant-fail": ("exit 3", "failed", "exit code 3"),
    "binary-garbage": ("python -c \"import random, sys; sys.stdout.buffer.write(random.Random(7).randbytes(1 << 20)); "
                       "print(); print('step=1 tick=0.5')\"", "completed", ""),
    "long-line-40mib": ("python -c \"import sys; sys.stdout.write('x' * (40 << 20)); sys.stdout.flush()\"", "completed", ""),
    "deletes-its-run-folder": ("rm -rf \"$NERO_RUN_DIR\"", "lost", "run folder"),
    "ignores-sigterm": ("python -c \"import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                        "print('step=1 tick=0.5', flush=True); time.sleep(600)\"", "cancelled", ""),
}


def _runs(project: Path) -> list[tuple]:
    db = project / ".nero" / "state.db"
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        return con.execute("SELECT key, attempt, state, reason, run_dir, job_id FROM attempts ORDER BY rowid").fetchall()


def _write(project: Path, command: str, state: str = "run", clusters: tuple[dict, ...] = ()) -> None:
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from conftest import write_workbook

    write_workbook(project / "experiments.xlsx", [{"id": "bad", "command": command, "state": state}], clusters=clusters)


def bad_job(name: str, project: Path, timeout: float = 60, passes_after_end: int = 3) -> Verdict:
    """One misbehaving program on the local cluster: every pass ends cleanly (no traceback,
    bounded time) and the run ends as it should, within `timeout` and at most
    `passes_after_end` passes after its processes are gone."""
    command, want, reason_word = BAD_JOBS[name]
    v = Verdict(name, want)
    project.mkdir(parents=True, exist_ok=True)
    _write(project, command)
    end = time.monotonic() + timeout
    stopped = False
    after_end = 0  # passes since the job's processes were all gone
    while time.monotonic() < end and after_end <= passes_after_end:
        m = measured(["reconcile", str(project), "-q"], project, timeout=max(5.0, end - time.monotonic()))
        v.wall_s, v.peak_mb = max(v.wall_s, m.wall_s), max(v.peak_mb, m.peak_mb)
        if m.timed_out or "Traceback" in m.out or m.rc not in (0, 1):
            v.problems.append(f"nero reconcile: exit {m.rc}{' (killed at its timeout)' if m.timed_out else ''}: "
                              f"…{m.out.strip()[-300:]}")
            return v
        runs = _runs(project)
        if not runs:
            continue
        key, attempt, state, reason, run_dir, job_id = runs[-1]
        if name == "ignores-sigterm" and not stopped and state == "running":
            _write(project, command, state="stop")  # the user stops it; it ignores SIGTERM
            stopped = True
        if state not in ("submitted", "running"):
            v.outcome = state
            if state != want:
                v.problems.append(f"ended {state} ({reason}), expected {want}")
            elif reason_word and reason_word not in reason:
                v.problems.append(f"ended {state} with reason {reason!r}, which does not say {reason_word!r}")
            elif "out of memory" in reason and name == "deletes-its-run-folder":
                v.problems.append(f"reason {reason!r} blames memory")
            if job_id.isdigit() and not _gone(int(job_id), 20):
                v.problems.append(f"its process group {job_id} is still alive")
            return v
        if job_id.isdigit() and _gone(int(job_id), 0):
            after_end += 1
        time.sleep(0.3)
    runs = _runs(project)
    v.outcome = runs[-1][2] if runs else "never submitted"
    v.problems.append(f"still {v.outcome} {after_end} passes after its processes ended (or after {timeout:.0f} s)")
    return v


def _gone(pgid: int, wait_s: float) -> bool:
    """No live (non-zombie) process left in the group, waiting up to `wait_s`."""
    end = time.monotonic() + wait_s
    while True:
        alive = False
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                alive = True
                break
        if not alive:
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(0.2)


# ------------------------------------------------------------------------------ full disk
def full_disk(base: Path, timeout: float = 60, size_mb: int = 24) -> Verdict:
    """A project on a small tmpfs that fills while a job prints metric lines (its run folder
    elsewhere): passes on the
    full disk print one clear message and no traceback; once space is freed the run ends
    with every line it printed stored once. Needs root (mount); the caller skips otherwise."""
    v = Verdict("full-disk", "completed")
    mnt = base / "disk"
    mnt.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mnt)], check=True, timeout=30)
    try:
        project = mnt / "p"
        project.mkdir()
        (project / "ticker.py").write_text("import time\nfor i in range(1, 61):\n"
                                           "    print(f'step={i} tick={i / 2}', flush=True)\n    time.sleep(0.05)\n")
        # the run folders stay off the full disk: it is nero's own files that meet it
        _write(project, "python ticker.py", clusters=({"name": "local", "kind": "local", "workdir": str(base / "runs")},))
        m = measured(["reconcile", str(project), "-q"], project, timeout=30)
        if m.rc != 0:
            v.problems.append(f"first pass exit {m.rc}: {m.out[-300:]}")
            return v
        filler = mnt / "filler"
        with open(filler, "wb") as f:  # fill the disk to the last byte
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
            try:
                f.flush()
            except OSError:
                pass
        time.sleep(1.0)
        for _ in range(2):
            m = measured(["reconcile", str(project), "-q"], project, timeout=30)
            v.wall_s, v.peak_mb = max(v.wall_s, m.wall_s), max(v.peak_mb, m.peak_mb)
            if m.timed_out or "Traceback" in m.out:
                v.problems.append(f"on a full disk: exit {m.rc} with a traceback: …{m.out.strip()[-300:]}")
                break
            if m.rc != 0 and not re.search(r"full|space|no room", m.out, re.I):
                v.problems.append(f"on a full disk: exit {m.rc} without saying the disk is full: {m.out[-300:]}")
                break
            if re.search(r"move it aside|start afresh", m.out):
                v.problems.append(f"on a full disk: advice that throws the state away: {m.out[-300:]}")
                break
        filler.unlink()
        end = time.monotonic() + timeout
        runs = _runs(project)
        while time.monotonic() < end and (not runs or runs[-1][2] in ("submitted", "running")):
            m = measured(["reconcile", str(project), "-q"], project, timeout=30)
            runs = _runs(project)
            time.sleep(0.3)
        v.outcome = runs[-1][2] if runs else "never submitted"
        if v.outcome != "completed":
            v.problems.append(f"after space returned: {v.outcome} ({runs[-1][3] if runs else ''})")
        else:
            printed = re.findall(r"^step=(\d+) ", (Path(runs[-1][4]) / "stdout.log").read_text(), re.M)
            with sqlite3.connect(project / ".nero" / "state.db") as con:
                stored = [s for (s,) in con.execute("SELECT step FROM metrics WHERE name='tick' ORDER BY step")]
                if con.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                    v.problems.append("state.db integrity_check failed")
            if sorted(int(s) for s in printed) != stored:
                v.problems.append(f"printed {len(printed)} points, stored {len(stored)}")
        return v
    finally:
        for pid_file in mnt.rglob("pid"):
            try:
                os.killpg(int(pid_file.read_text().strip()), signal.SIGKILL)
            except (ValueError, OSError):
                pass
        subprocess.run(["umount", "-l", str(mnt)], timeout=30)
