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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..errors import BackendError

__all__ = ["Completed", "LocalShell", "Shell", "Then"]


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

    def run(self, command: str, stdin: bytes = b"", timeout: float = 300,
            then: Callable[[], bytes] | None = None) -> Completed:
        """Run `command` through the login shell, feeding `stdin`; one round trip. With
        `then`: once `stdin` is sent, `then()` runs here (while the command reads it) and
        what it returns is fed after it; what it raises cuts the command's input off (it
        reads no more) and is raised as it is, as `Then.error`."""

    def connect(self) -> None:
        """Open the connection now (no-op when already open or local)."""

    def close(self) -> None: ...


class Then(Exception):  # noqa: N818 - a carrier, not an error of its own
    """What a `run`'s `then` raised (`error`): the command's input was cut off after `stdin`."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


class LocalShell:
    """Commands on this machine, through `/bin/sh -c` like sshd does."""

    def __init__(self, cluster: str):
        self.cluster = cluster
        self.host = "localhost"
        self.round_trips = 0
        self.connections = 0

    def connect(self) -> None:
        pass

    def run(self, command: str, stdin: bytes = b"", timeout: float = 300,
            then: Callable[[], bytes] | None = None) -> Completed:
        self.round_trips += 1
        if then is not None:
            return self._run_then(command, stdin, timeout, then)
        try:
            proc = subprocess.run(["/bin/sh", "-c", command], input=stdin, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BackendError(self.cluster, f"a command on this machine took longer than {timeout:.0f} s",
                               "the scheduler may be overloaded; the next pass tries again") from None
        except OSError as e:
            raise BackendError(self.cluster, f"cannot run a command on this machine: {e}") from None
        return Completed(proc.returncode, proc.stdout, proc.stderr)

    def _run_then(self, command: str, stdin: bytes, timeout: float, then: Callable[[], bytes]) -> Completed:
        try:
            proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        except OSError as e:
            raise BackendError(self.cluster, f"cannot run a command on this machine: {e}") from None
        assert proc.stdin is not None
        try:
            proc.stdin.write(stdin)
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # it ended early: its output says why
        try:
            more = then()
        except BaseException as e:
            try:
                proc.communicate(timeout=timeout)  # its input ends here: it reads no more
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
            raise Then(e) from e
        try:
            out, err = proc.communicate(more, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise BackendError(self.cluster, f"a command on this machine took longer than {timeout:.0f} s",
                               "the scheduler may be overloaded; the next pass tries again") from None
        return Completed(proc.returncode, out, err)

    def close(self) -> None:
        pass
