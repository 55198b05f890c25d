"""The experiments workbook: read it into a `model.Workbook`, and write the example one.

`read_workbook` reads the sheets Experiments (required), Clusters, Metrics and Settings,
checks every cell and reports all problems at once, each anchored to its cell
(`Experiments!D7: …`), as one `WorkbookError`; `read_metric_definitions` reads the
Metrics sheet alone (for `nero metrics test`). The sheet readers (`read_settings`,
`read_clusters`, `read_people`) also check the user file's values (userconfig.py), so a
value means and is checked the same wherever it is written. `write_example_workbook` creates the
annotated worked example that `nero init` copies; `lock_file` finds a spreadsheet
program's lock file beside a workbook.

The modules: workbook (the file, its sheets, the whole workbook), bounds (its limits, checked
first), xlsx (the file read as a stream), table (header, rows, problems
at cells), cells and quantities (cell converters), one module per sheet (experiments,
clusters, metrics, settings, people), commands (the command-variable check) and example.
"""

from __future__ import annotations

from pathlib import Path

from ..model import Layer, Workbook
from ..render import command_variables
from . import workbook
from .clusters import CLUSTER_COLUMNS, read_clusters
from .commands import BUILTIN_VARIABLES, RUN_VARIABLES
from .example import write_example_workbook
from .experiments import EXPERIMENT_COLUMNS, MAX_RUNS_PER_ROW, NOTIFY_EVENTS
from .metrics import METRIC_COLUMNS
from .people import DIGEST_PREFERENCES, PEOPLE_COLUMNS, read_people
from .settings import SETTING_KEYS, SMTP_SECURITY, read_settings
from .table import Problems, Sheet, column_letter
from .workbook import SHEETS, lock_file, read_metric_definitions

__all__ = [
    "BUILTIN_VARIABLES",
    "CLUSTER_COLUMNS",
    "DIGEST_PREFERENCES",
    "EXPERIMENT_COLUMNS",
    "MAX_RUNS_PER_ROW",
    "METRIC_COLUMNS",
    "NOTIFY_EVENTS",
    "PEOPLE_COLUMNS",
    "Problems",
    "RUN_VARIABLES",
    "SETTING_KEYS",
    "SHEETS",
    "SMTP_SECURITY",
    "Sheet",
    "column_letter",
    "lock_file",
    "read_clusters",
    "read_metric_definitions",
    "read_people",
    "read_settings",
    "read_workbook",
    "write_example_workbook",
]


def read_workbook(path: str | Path, user: Layer | None = None, env: Layer | None = None) -> Workbook:
    """Read and validate an experiments workbook; WorkbookError lists every problem.
    `user` and `env` are the layers of settings around the workbook's (`layers.merge`;
    userconfig.py reads them).

    Commands are checked with rendering's own template parser (`render.command_variables`),
    so a command that reads back here also renders; the reading modules never parse templates.
    """
    return workbook.read_workbook(path, command_variables, user, env)
