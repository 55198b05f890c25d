"""Backends: how jobs reach a cluster. One protocol, `Backend`, for every kind of cluster;
reconcile.py and the CLI use only it and never ask which kind they hold.

    local   detached bash processes on this machine            local.py
    ssh     detached bash processes on a server, over SSH      ssh.py
    slurm   sbatch / job arrays, squeue + sacct, scancel       slurm.py
    sge     qsub, qstat + qacct, qdel                          sge.py

Every kind is an `AgentBackend` (`client.py`): each operation is one request to nero's
agent (`agent.py`, stdlib Python), sent over the cluster's connection (`wire.py` frames
it; `shell.py` runs it here, `connection.py` over SSH with fabric, host keys checked) or,
for the local cluster, run in nero's own process. `code.py` picks and packs the workdir
files shipped once per content hash. Backends know nothing of the workbook but their
Cluster.

The `Backend` protocol:

    cluster              the Clusters sheet's row
    remote               True: each operation is a round trip to another machine (an idle
                         cluster is polled with back-off; `nero logs -f` reads less often)
    connect()            reach the cluster now; BackendError if it cannot be reached
    capacity()           how many jobs may be live at once
    run_root()           where its run folders go (absolute, on the cluster)
    free_disk_mb()       free space there, as last seen (None: unknown)
    ship_code(local, setting, exclude)
                         where a run whose workdir is `local` here runs there, and the
                         code snapshot `submit` ships with it (None: nothing to ship)
    submit(jobs)         create each job's run folder, write its files, start it; all of
                         a pass's jobs at once
    poll(handles)        status and appended output of every given live job, in one go;
                         a finished job is never asked about again
    adopt(handles)       after a crash between submitting and recording: the jobs that
                         exist, by run key; without a job id, those handed to the cluster
                         (a process started, a submit command run: a scheduler may still
                         queue it late) but not seen yet; the others were never handed over
    cancel(handles)      ask jobs to stop; run key → error for those it could not ask
    read_limits()        bytes read per output file and per cluster in one poll; a line
                         longer than the first (the read window) is cut, never re-read
    read_output(run_dir, name, offset=, tail=, limit=)
                         bytes of one output file of a run (`nero logs`)
    resources()          queues and free slots, GPUs, RAM, load, free disk (`nero resources`)
    close()              drop the connection
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from ..model import (
    Cluster,
    ClusterKind,
    ClusterResources,
    CodeSnapshot,
    Handle,
    JobScript,
    JobStatus,
    OutputChunk,
    Submission,
)
from .client import job_name

__all__ = ["DEFAULT_TEMPLATES", "Backend", "job_name", "make_backend"]

DEFAULT_TEMPLATES = {
    ClusterKind.LOCAL: "local.sh.j2",
    ClusterKind.SSH: "ssh.sh.j2",
    ClusterKind.SLURM: "slurm.sbatch.j2",
    ClusterKind.SGE: "sge.sh.j2",
}


class Backend(Protocol):
    """What nero asks of a cluster (see the module docstring)."""

    cluster: Cluster
    remote: bool
    # whether its `submit` takes jobs with `values` (one script shared by many runs, each
    # task writing its run folder when it starts: Slurm arrays); the reconciler renders them so
    shared_scripts: bool

    def connect(self) -> object:
        """Reach the cluster now (once, then as needed); BackendError if it cannot be reached."""

    def capacity(self) -> int:
        """How many jobs may be live at once (max_jobs, else the cluster's default)."""

    def run_root(self) -> str:
        """Where this cluster's run folders go (on the cluster; absolute)."""

    def free_disk_mb(self) -> float | None:
        """Free space where the cluster's run folders go, as last seen (None: unknown)."""

    def ship_code(self, local: str, setting: str, exclude: Sequence[str] = ()) -> tuple[str, CodeSnapshot | None]:
        """Where a run whose workdir is `local` on this machine (`setting` as the sheet
        wrote it) runs on the cluster, and the snapshot of its files that `submit` ships
        there (None: nothing to ship). `exclude`: files never shipped (the workbooks)."""

    def submit(self, jobs: Sequence[JobScript], ready: Callable[[], None] | None = None) -> list[Submission]:
        """Create each job's run folder, write its files and start it. `ready` (the
        caller's record of the attempts, made meanwhile) is called before any job is
        handed over: what it raises hands none over."""

    def poll(self, handles: Sequence[Handle]) -> list[JobStatus]:
        """Status and appended output of every given live job, in one round trip."""

    def adopt(self, handles: Sequence[Handle]) -> dict[str, Submission]:
        """After a crash between submitting and recording: the jobs that exist, by run key
        (no job id: handed over, not seen yet; absent: never handed over)."""

    def cancel(self, handles: Sequence[Handle]) -> dict[str, str]:
        """Ask jobs to stop; returns run key → error for those that could not be asked."""

    def read_limits(self) -> tuple[int, int]:
        """Bytes read per output file (the read window: a longer line is cut) and per
        cluster in one poll."""

    def read_output(self, run_dir: str, name: str, *, offset: int = 0, tail: int | None = None,
                    limit: int = 8 << 20) -> OutputChunk:
        """One output file of a run folder (`stdout.log`, …): its last `tail` bytes, or up
        to `limit` bytes from `offset`, with its size and whether the job has ended."""

    def resources(self) -> ClusterResources:
        """Queues and free slots, GPUs, RAM, load and free disk (`nero resources`)."""

    def close(self) -> None:
        """Drop the connection (jobs keep running)."""


def make_backend(cluster: Cluster, project_dir: str) -> Backend:
    if cluster.kind is ClusterKind.LOCAL:
        from .local import LocalBackend

        return LocalBackend(cluster, project_dir)
    if cluster.kind is ClusterKind.SLURM:
        from .slurm import SlurmBackend

        return SlurmBackend(cluster, project_dir)
    if cluster.kind is ClusterKind.SGE:
        from .sge import SgeBackend

        return SgeBackend(cluster, project_dir)
    if cluster.kind is ClusterKind.SSH:
        from .ssh import SshBackend

        return SshBackend(cluster, project_dir)
    from ..errors import BackendError

    raise BackendError(cluster.name, f"unknown cluster kind {cluster.kind.value!r}",
                       f"valid kinds are: {', '.join(k.value for k in ClusterKind)}")
