"""The experiments workbook (being split into modules; see experiments.py for now)."""

from .experiments import (
    CLUSTER_COLUMNS,
    EXPERIMENT_COLUMNS,
    lock_file,
    read_workbook,
    write_example_workbook,
)

__all__ = ["CLUSTER_COLUMNS", "EXPERIMENT_COLUMNS", "lock_file", "read_workbook", "write_example_workbook"]
