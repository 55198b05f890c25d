"""The `local` backend: jobs are detached bash processes on this machine.

A job runs as `bash job.sh` in its own session and process group, so it survives
nero's exit, Ctrl-C and SIGKILL. Its process id is the job id. Cancelling sends SIGTERM
to the job's process group and SIGKILL after a grace period. Polling reads the status
files the job script writes and the bytes appended to its outputs since the last pass.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from ..files import write_atomically
from ..model import Cluster, ClusterResources, Handle, JobScript, JobStatus, Submission

MAX_READ = 32 * 1024 * 1024  # bytes read per file per pass; the rest comes next pass
KILL_GRACE_S = 15


def read_from(path: Path, offset: int, limit: int = MAX_READ) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(limit)
    except FileNotFoundError:
        return b""


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None


def _tail(path: Path, size: int = 4096) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            return f.read()
    except FileNotFoundError:
        return b""


def process_alive(pid: int, run_dir: str) -> bool:
    """True if `pid` is a live (non-zombie) process still sitting in `run_dir`."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        if stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] in (b"Z", b"X"):
            return False
        return os.path.realpath(f"/proc/{pid}/cwd") == os.path.realpath(run_dir)
    except (FileNotFoundError, ProcessLookupError, ValueError, PermissionError):
        return False


class LocalBackend:
    def __init__(self, cluster: Cluster, project_dir: str):
        self.cluster = cluster
        self.project_dir = project_dir
        self._children: list[subprocess.Popen] = []  # reaped as they end, so none lingers as a zombie

    def capacity(self) -> int:
        return self.cluster.max_jobs or os.cpu_count() or 1

    def submit(self, jobs: Sequence[JobScript]) -> list[Submission]:
        return [self._submit_one(j) for j in jobs]

    def _submit_one(self, job: JobScript) -> Submission:
        run_dir = Path(job.run_dir)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_atomically(run_dir / "params.json", job.params_json, durable=False)
            write_atomically(run_dir / "job.sh", job.text, durable=False)
            # its own session and process group: survives nero, Ctrl-C and SIGKILL of nero
            proc = subprocess.Popen(["bash", "job.sh"], cwd=run_dir, start_new_session=True, close_fds=True,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self._children.append(proc)
            pid = str(proc.pid)
            write_atomically(run_dir / "job_id", pid + "\n", durable=False)
            return Submission(job.key, job.attempt, job_id=pid)
        except (OSError, subprocess.SubprocessError) as e:
            return Submission(job.key, job.attempt, error=f"could not start the job in {run_dir}: {e}")

    def adopt(self, handles: Sequence[Handle]) -> dict[str, Submission]:
        found = {}
        for h in handles:
            sub = self._adopt_one(h)
            if sub is not None:
                found[h.key] = sub
        return found

    def _adopt_one(self, handle: Handle) -> Submission | None:
        run_dir = Path(handle.run_dir)
        for name in ("job_id", "pid"):
            text = _read_text(run_dir / name)
            if text:
                return Submission(handle.key, handle.attempt, job_id=text)
        if (run_dir / "job.sh").exists():
            # started but not yet recorded its pid: presume submitted; if it never
            # shows life it becomes `lost`, which is safer than a second copy.
            return Submission(handle.key, handle.attempt, job_id="")
        return None

    def connect(self) -> None:
        pass

    def run_root(self) -> Path:
        base = Path(os.path.expanduser(self.cluster.workdir)) if self.cluster.workdir else Path(self.project_dir) / "runs"
        return base if base.is_absolute() else Path(self.project_dir) / base

    def free_disk_mb(self) -> float | None:
        p = self.run_root()
        while not p.exists() and p != p.parent:
            p = p.parent
        try:
            st = os.statvfs(p)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize / 2**20

    def resources(self) -> ClusterResources:
        from .remote import parse_nvidia_smi, run_agent_locally

        reply = run_agent_locally({"op": "resources", "workdir": str(self.run_root())})
        h = reply.header
        return ClusterResources(
            cluster=self.cluster.name, kind="local", host=h.get("host", ""), cpus=h.get("cpus"),
            load=tuple(h.get("load") or ()), mem_total_mb=h.get("mem_total_mb"),
            mem_available_mb=h.get("mem_available_mb"), disk_path=h.get("workdir", ""),
            disk_free_mb=h.get("disk_free_mb"), gpus=parse_nvidia_smi(h.get("gpus")),
        )

    def poll(self, handles: Sequence[Handle]) -> list[JobStatus]:
        self._children = [p for p in self._children if p.poll() is None]
        return [self._poll_one(h) for h in handles]

    def _poll_one(self, h: Handle) -> JobStatus:
        d = Path(h.run_dir)
        started_text = _read_text(d / "started")
        started = None
        if started_text:
            try:
                started = json.loads(started_text)
            except ValueError:
                started = None
        exit_text = _read_text(d / "exit_code")
        exit_code = int(exit_text) if exit_text and exit_text.lstrip("-").isdigit() else None
        hb_text = _read_text(d / "heartbeat")
        heartbeat = float(hb_text) if hb_text and hb_text.replace(".", "", 1).isdigit() else None
        pid_text = h.job_id or _read_text(d / "pid") or ""
        alive = pid_text.isdigit() and process_alive(int(pid_text), h.run_dir)
        o = h.offsets
        chunks = [read_from(d / "stdout.log", o.stdout), read_from(d / "stderr.log", o.stderr),
                  read_from(d / "metrics.jsonl", o.metrics), read_from(d / "resources.jsonl", o.resources)]
        return JobStatus(
            key=h.key, attempt=h.attempt, alive=alive, started=started, exit_code=exit_code,
            heartbeat=heartbeat, stdout=chunks[0], stderr=chunks[1], metrics=chunks[2], resources=chunks[3],
            offsets=o, complete=all(len(c) < MAX_READ for c in chunks),
            stderr_tail=_tail(d / "stderr.log") if exit_code is not None or not alive else b"",
        )

    def cancel(self, handles: Sequence[Handle]) -> dict[str, str]:
        errors: dict[str, str] = {}
        for h in handles:
            pid_text = h.job_id or _read_text(Path(h.run_dir) / "pid") or ""
            if not pid_text.isdigit() or not process_alive(int(pid_text), h.run_dir):
                continue  # already gone; the next poll records how it ended
            pgid = int(pid_text)
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            except PermissionError as e:
                errors[h.key] = f"cannot signal job {pgid}: {e}"
                continue
            # SIGKILL whatever is left after the grace period, without blocking the loop
            subprocess.Popen(
                ["bash", "-c", f"sleep {KILL_GRACE_S}; [ ! -e {shlex.quote(str(Path(h.run_dir) / 'exit_code'))} ] && kill -KILL -- -{pgid}"],
                start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        return errors

    def close(self) -> None:
        pass

