"""nero: spreadsheet-driven experiment orchestrator.

From Python, `Project` does what the `nero` command does, with pandas DataFrames and
tables in Jupyter (README.md, "From Python"):

    from orchestrator import Project

    project = Project.init("demo")              # nero init demo
    project.reconcile(until_done=True)          # nero reconcile demo --until-done
    project.runs()                              # nero status demo --json, one row per run
    project.metrics("demo*", ["val_loss"])      # every point: run, attempt, metric, step, value

Inside a job, `orchestrator.track` logs metrics. `Project` and its types live in
`orchestrator.api`, imported on first use, so `from orchestrator import track` in a job stays
light. ARCHITECTURE.md maps the package.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: `import orchestrator.track` in a job imports nothing but track
if TYPE_CHECKING:
    from typing import Any

    from .api import NeroWarning, PlanView, Project, StatusView

__all__ = ["NeroWarning", "PlanView", "Project", "StatusView", "__version__"]

__version__ = "0.1.0"

_API = ("NeroWarning", "PlanView", "Project", "StatusView")


def __getattr__(name: str) -> Any:
    """`Project` and its types, from `orchestrator.api` when first asked for."""
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
