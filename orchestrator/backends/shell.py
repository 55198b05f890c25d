"""The one shell interface every backend talks through: run a command, feed it bytes,
get its exit code and output back as bytes.

`LocalShell` runs commands on this machine (a cluster whose login node is this machine,
and the tests' baseline); `connection.SshShell` runs them on a remote host over one
reused fabric/paramiko connection. Neither raises on a non-zero exit code: callers check
`Completed.rc` explicitly. Transport failures are `BackendError`s naming the cluster.
Each call is one round trip; `round_trips` counts them (benchmarks report it).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Protocol

from ..errors import BackendError

__all__ = ["Completed", "LocalShell", "Shell"]


@dataclass(frozen=True)
class Completed:
    rc: int
    stdout: bytes
    stderr: bytes

    def err_text(self, limit: int = 600) -> str:
        text = self.stderr.decode("utf-8", "replace").strip()
        return text[-limit:]


class Shell(Protocol):
    cluster: str
    host: str  # where commands run, for messages ("login.hpc.example.org:22")
    round_trips: int
    connections: int

    def run(self, command: str, stdin: bytes = b"", timeout: float = 300) -> Completed:
        """Run `command` through the login shell, feeding `stdin`; one round trip."""

    def connect(self) -> None:
        """Open the connection now (no-op when already open or local)."""

    def close(self) -> None: ...


class LocalShell:
    """Commands on this machine, through `/bin/sh -c` like sshd does."""

    def __init__(self, cluster: str):
        self.cluster = cluster
        self.host = "localhost"
        self.round_trips = 0
        self.connections = 0

    def connect(self) -> None:
        pass

    def run(self, command: str, stdin: bytes = b"", timeout: float = 300) -> Completed:
        self.round_trips += 1
        try:
            proc = subprocess.run(["/bin/sh", "-c", command], input=stdin, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BackendError(self.cluster, f"a command on this machine took longer than {timeout:.0f} s",
                               "the scheduler may be overloaded; the next pass tries again") from None
        except OSError as e:
            raise BackendError(self.cluster, f"cannot run a command on this machine: {e}") from None
        return Completed(proc.returncode, proc.stdout, proc.stderr)

    def close(self) -> None:
        pass
