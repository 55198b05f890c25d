"""The `NeroError` tree: every error nero reports on purpose.

    NeroError
    ├── WorkbookError      the experiments workbook is unreadable or invalid (exit 2);
    │                      carries every Problem at once, each with its cell
    ├── ExpressionError    a rule or selector does not parse or cannot be evaluated
    ├── StateError         the state store is unusable (locked, newer schema, corrupt)
    ├── BackendError       a cluster could not be reached or a scheduler command failed;
    │                      carries the cluster's name and what to do next
    └── TemplateError      a job template is missing or uses an undefined variable

Third-party exceptions are translated into these at the boundary of their home module,
so the CLI can print one clear message and pick the exit code.
"""

from __future__ import annotations

from collections.abc import Sequence

from .model import Problem

__all__ = ["NeroError", "WorkbookError", "ExpressionError", "StateError", "BackendError", "TemplateError"]


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


class ExpressionError(NeroError):
    exit_code = 2

    def __init__(self, text: str, message: str, position: int | None = None):
        self.text = text
        self.position = position
        where = f" at character {position + 1}" if position is not None else ""
        super().__init__(f"{message}{where} in {text[:200]!r}")


class StateError(NeroError):
    pass


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
