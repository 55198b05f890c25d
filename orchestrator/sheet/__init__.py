"""The experiments workbook: read it into a `model.Workbook`, and write the example one.

`read_workbook` reads the sheets Experiments (required), Clusters, Metrics and Settings,
checks every cell and reports all problems at once, each anchored to its cell
(`Experiments!D7: …`), as one `WorkbookError`; `read_metric_definitions` reads the
Metrics sheet alone (for `nero metrics test`). `write_example_workbook` creates the
annotated worked example that `nero init` copies; `lock_file` finds a spreadsheet
program's lock file beside a workbook.

The modules: workbook (the file, its sheets, the whole workbook), bounds (its limits, checked
first), xlsx (the file read as a stream), table (header, rows, problems
at cells), cells and quantities (cell converters), one module per sheet (experiments,
clusters, metrics, settings), commands (the command-variable check) and example.
"""

from __future__ import annotations

from pathlib import Path

from ..model import Workbook
from ..render import command_variables
from . import workbook
from .clusters import CLUSTER_COLUMNS
from .commands import BUILTIN_VARIABLES, RUN_VARIABLES
from .example import write_example_workbook
from .experiments import EXPERIMENT_COLUMNS, MAX_RUNS_PER_ROW, NOTIFY_EVENTS
from .metrics import METRIC_COLUMNS
from .settings import SETTING_KEYS, SMTP_SECURITY
from .table import column_letter
from .workbook import SHEETS, lock_file, read_metric_definitions

__all__ = [
    "BUILTIN_VARIABLES",
    "CLUSTER_COLUMNS",
    "EXPERIMENT_COLUMNS",
    "MAX_RUNS_PER_ROW",
    "METRIC_COLUMNS",
    "NOTIFY_EVENTS",
    "RUN_VARIABLES",
    "SETTING_KEYS",
    "SHEETS",
    "SMTP_SECURITY",
    "column_letter",
    "lock_file",
    "read_metric_definitions",
    "read_workbook",
    "write_example_workbook",
]


def read_workbook(path: str | Path) -> Workbook:
    """Read and validate an experiments workbook; WorkbookError lists every problem.

    Commands are checked with rendering's own template parser (`render.command_variables`),
    so a command that reads back here also renders; the reading modules never parse templates.
    """
    return workbook.read_workbook(path, command_variables)
