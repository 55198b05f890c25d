"""The `NeroError` tree: every error nero reports on purpose.

    NeroError
    ├── WorkbookError      the experiments workbook is unreadable or invalid (exit 2);
    │                      carries every Problem at once, each with its cell
    ├── ConfigError        the user file or a NERO_ variable holds a bad setting (exit 2);
    │                      every Problem at once, each with its file, line and key
    ├── ExpressionError    a rule or selector does not parse or cannot be evaluated
    ├── StateError         the state store is unusable (locked, newer schema, corrupt)
    │   └── NetworkStateError  its folder is on a network file system (exit 2), with the remedy
    ├── DiskError          a disk nero writes to is full or read-only (exit 3); nothing
    │                      was lost, and nero resumes once it can write again
    ├── BackendError       a cluster could not be reached or a scheduler command failed;
    │                      carries the cluster's name and what to do next
    └── TemplateError      a job template is missing or uses an undefined variable

Third-party exceptions are translated into these at the boundary of their home module,
so the CLI can print one clear message and pick the exit code.
"""

from __future__ import annotations

from collections.abc import Sequence

from .model import Problem
from .units import format_megabytes

__all__ = ["NeroError", "WorkbookError", "ConfigError", "ExpressionError", "StateError", "NetworkStateError", "DiskError",
           "BackendError", "TemplateError"]


class NeroError(Exception):
    """Base of every error nero reports on purpose."""

    exit_code = 1


class WorkbookError(NeroError):
    exit_code = 2

    def __init__(self, path: str, problems: Sequence[Problem]):
        self.path = path
        self.problems = tuple(problems)
        n = len(self.problems)
        head = f"{path + ': ' if path else ''}{n} problem{'s' if n != 1 else ''} in the workbook; nothing was dispatched, cancelled or written."
        super().__init__("\n".join([head, *(f"  {p}" for p in self.problems)]))


class ConfigError(NeroError):
    exit_code = 2

    def __init__(self, path: str, problems: Sequence[Problem]):
        self.path = path
        self.problems = tuple(problems)
        n = len(self.problems)
        head = (f"{path}: {n} problem{'s' if n != 1 else ''} in your nero settings (`nero config` shows them, "
                "`nero config --edit` opens the file); nothing was dispatched, cancelled or written.")
        super().__init__("\n".join([head, *(f"  {p}" for p in self.problems)]))


class ExpressionError(NeroError):
    exit_code = 2

    def __init__(self, text: str, message: str, position: int | None = None):
        self.text = text
        self.position = position
        where = f" at character {position + 1}" if position is not None else ""
        super().__init__(f"{message}{where} in {text[:200]!r}")


class StateError(NeroError):
    pass


class NetworkStateError(StateError):
    """nero's state folder is on a network file system (NFS, Lustre, SMB…), where SQLite's
    locking is not reliable; nothing was opened. The message names the mount and the remedy
    (`orchestrator.sharing.check_state_folder`)."""

    exit_code = 2


class DiskError(NeroError):
    """Nero could not write `path` because its disk is full or mounted read-only.

    What nero writes is whole or not at all (SQLite transactions, atomic file writes), so
    this never leaves state half-written: the message says so, and never advises moving
    the state aside. `files.disk_error` builds it with the mount point and its space."""

    exit_code = 3
    INTACT = "Nothing was lost: nero's state is intact; free space and nero resumes."

    def __init__(self, path: str, mount: str, free: int, total: int, needed: int, read_only: bool = False,
                 detail: str = ""):
        self.path, self.mount, self.free, self.total = path, mount, free, total
        self.needed, self.read_only, self.detail = needed, read_only, detail
        why = f" ({detail})" if detail else ""
        if read_only:
            text = (f"cannot write {path}: the file system mounted at {mount} is read-only{why}. "
                    "Remount it read-write (or move the project to a writable disk) and run nero again. "
                    "Nothing was lost: nero's state is intact.")
        else:
            text = (f"cannot write {path}: the disk is full{why}: {_mb(free)} free of {_mb(total)} on {mount}; "
                    f"nero needs at least {_mb(needed)} free there. {self.INTACT}")
        super().__init__(text)


def _mb(n: int) -> str:
    return format_megabytes(max(0, n) / 2**20) if n >= 2**20 or n == 0 else f"{max(0, n) // 1024} KB"


class BackendError(NeroError):
    def __init__(self, cluster: str, message: str, hint: str = ""):
        self.cluster = cluster
        self.hint = hint
        text = f"cluster {cluster!r}: {message}"
        if hint:
            text += f" ({hint})"
        super().__init__(text)


class TemplateError(NeroError):
    exit_code = 2
