"""nero: spreadsheet-driven experiment orchestrator.

`orchestrator.project.Project` opens a project from Python; `orchestrator.track` logs
metrics from inside a job. ARCHITECTURE.md maps the package.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
