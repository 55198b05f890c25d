"""Backends: how jobs reach a cluster. One interface for every kind of cluster.

A backend is pure command builders and output parsers plus a thin class that connects
them to a shell. `poll` reads every live job of its cluster in one go and is never asked
about finished jobs again; `submit` takes all of a pass's new jobs at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..model import Cluster, ClusterKind, Handle, JobScript, JobStatus, Submission


class Backend(Protocol):
    cluster: Cluster

    def submit(self, jobs: Sequence[JobScript]) -> list[Submission]:
        """Create each job's run directory, write its files and start it."""

    def adopt(self, handle: Handle) -> Submission | None:
        """After a crash between submitting and recording: find the job if it exists."""

    def poll(self, handles: Sequence[Handle]) -> list[JobStatus]:
        """Status and appended output of every given live job, in one round trip."""

    def cancel(self, handles: Sequence[Handle]) -> dict[str, str]:
        """Ask jobs to stop; returns run key → error for those that could not be asked."""

    def capacity(self) -> int:
        """How many jobs may be live at once (max_jobs, else the cluster's default)."""

    def close(self) -> None: ...


def make_backend(cluster: Cluster, project_dir: str) -> Backend:
    if cluster.kind is ClusterKind.LOCAL:
        from .local import LocalBackend

        return LocalBackend(cluster, project_dir)
    from ..errors import BackendError

    raise BackendError(cluster.name, f"cluster kind {cluster.kind.value!r} is not available in this version of nero",
                       "use kind local, or run the job on this machine")
