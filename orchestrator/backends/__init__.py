"""Backends: how jobs reach a cluster. One interface for every kind of cluster.

A backend is pure command builders and output parsers plus a thin class that connects
them to a shell. `poll` reads every live job of its cluster in one go and is never asked
about finished jobs again; `submit` takes all of a pass's new jobs at once.

    local   detached bash processes on this machine            local.py
    ssh     detached bash processes on a server, over SSH      ssh.py
    slurm   sbatch / job arrays, squeue + sacct, scancel       slurm.py
    sge     qsub, qstat + qacct, qdel                          sge.py

The remote kinds share `remote.py` (nero's agent, one round trip per operation),
`connection.py` (the SSH connection: fabric, host keys checked) and `code.py` (the
workdir shipped once per content hash). Backends know nothing of the workbook but their
Cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from ..model import Cluster, ClusterKind, ClusterResources, Handle, JobScript, JobStatus, Submission
from .remote import job_name

__all__ = ["Backend", "make_backend", "job_name", "DEFAULT_TEMPLATES"]

DEFAULT_TEMPLATES = {
    ClusterKind.LOCAL: "local.sh.j2",
    ClusterKind.SSH: "ssh.sh.j2",
    ClusterKind.SLURM: "slurm.sbatch.j2",
    ClusterKind.SGE: "sge.sh.j2",
}


class Backend(Protocol):
    cluster: Cluster

    def submit(self, jobs: Sequence[JobScript]) -> list[Submission]:
        """Create each job's run directory, write its files and start it."""

    def adopt(self, handles: Sequence[Handle]) -> dict[str, Submission]:
        """After a crash between submitting and recording: the jobs that exist, by run key."""

    def poll(self, handles: Sequence[Handle]) -> list[JobStatus]:
        """Status and appended output of every given live job, in one round trip."""

    def cancel(self, handles: Sequence[Handle]) -> dict[str, str]:
        """Ask jobs to stop; returns run key → error for those that could not be asked."""

    def capacity(self) -> int:
        """How many jobs may be live at once (max_jobs, else the cluster's default)."""

    def connect(self) -> object:
        """Reach the cluster now (a no-op for local); BackendError if it cannot be reached."""

    def run_root(self) -> str | Path:
        """Where this cluster's run directories go (on the cluster; absolute)."""

    def free_disk_mb(self) -> float | None:
        """Free space where the cluster's run directories go, as last seen (None: unknown)."""

    def resources(self) -> ClusterResources:
        """Queues and free slots, GPUs, RAM, load and free disk (`nero resources`)."""

    def close(self) -> None: ...


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
