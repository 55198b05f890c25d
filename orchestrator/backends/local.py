"""The `local` backend: jobs are detached bash processes on this machine.

It is the `ssh` backend with no connection: the agent's operations run in nero's own
process (`wire.serve_in_process`), so a poll is a few file reads and no round trip.
A job runs as `bash job.sh` in its own session and process group, so it survives nero's
exit, Ctrl-C and SIGKILL; its process id is the job id. Cancelling sends SIGTERM to the
job's process group and SIGKILL after a grace period. Run folders go below the cluster's
`workdir` (relative to the project), else the project's `runs/`; the command runs in the
run's workdir as it is (nothing is shipped). A run that asks for `gpus` waits for free
GPUs and gets `CUDA_VISIBLE_DEVICES` exactly as on an ssh host (`templates/_gpus.sh.j2`,
claims in the host-wide folder every user's nero shares, `paths.GPU_CLAIMS`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..model import ClusterKind, CodeSnapshot, Handle, JobStatus
from ..paths import ProjectPaths
from .ssh import SshBackend
from .wire import AgentReply, serve_in_process

__all__ = ["MAX_READ", "LocalBackend"]

MAX_READ = 32 * 1024 * 1024  # bytes read per file per pass; the rest comes next pass


class LocalBackend(SshBackend):
    kind = ClusterKind.LOCAL
    tools = ()
    default_capacity = 1
    remote = False
    _run_root: tuple[tuple[str, str], str] | None = None  # (the settings it came from, the run root)

    def exchange(self, request: dict[str, Any], payload: bytes, timeout: float,
                 then: Callable[[], bytes] | None = None) -> AgentReply:
        return serve_in_process(request, payload + (then() if then is not None else b""))

    def run_root(self) -> str:
        c = self.cluster
        known = self._run_root
        if known is not None and known[0] == (c.workdir, self.project_dir):
            return known[1]  # asked once per job rendered: worked out once
        base = Path(os.path.expanduser(c.workdir)) if c.workdir else ProjectPaths(Path(self.project_dir)).runs
        root = str(base if base.is_absolute() else Path(self.project_dir) / base)
        self._run_root = ((c.workdir, self.project_dir), root)
        return root

    def workdir_setting(self) -> str:
        return self.run_root()

    def site_capacity(self) -> int | None:
        return os.cpu_count()

    def free_disk_mb(self) -> float | None:
        from .agent import disk_free_mb

        return disk_free_mb(self.run_root())

    def read_limits(self) -> tuple[int, int]:
        return MAX_READ, sys.maxsize  # no budget per pass: reading here is cheap

    def ship_code(self, local: str, setting: str, exclude: Sequence[str] = ()) -> tuple[str, CodeSnapshot | None]:
        return local, None  # the job runs in the workdir itself

    def poll(self, handles: Sequence[Handle]) -> list[JobStatus]:
        from .agent import SPAWNED

        # reaped as they end, before the poll (a zombie would look alive) and after it (a job
        # that ended in between is reaped by the poll that saw it end, not left to the next)
        SPAWNED[:] = [p for p in SPAWNED if p.poll() is None]
        found = super().poll(handles)
        SPAWNED[:] = [p for p in SPAWNED if p.poll() is None]
        return found
