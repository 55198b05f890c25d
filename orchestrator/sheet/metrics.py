"""The Metrics sheet: the metrics to capture from run output, each with a pattern and a goal,
and the metric files (`file`: a glob in the run folder) to read besides the default ones."""

from __future__ import annotations

from ..metric_files import check_glob
from ..metric_patterns import compile_metric_pattern
from ..metrics import GOALS, default_goal
from ..model import MetricDef
from .cells import choice, text
from .table import Problems, Sheet, read_table, report_unknown_columns, table_rows

__all__ = ["METRIC_COLUMNS", "read_metrics"]

METRIC_COLUMNS = ("name", "pattern", "goal", "file", "notes")


def read_metrics(sheet: Sheet | None, problems: Problems) -> tuple[MetricDef, ...]:
    """The metric definitions; none without the sheet (then every name=value is captured)."""
    table = read_table(sheet, METRIC_COLUMNS, problems) if sheet else None
    if table is None:
        return ()
    report_unknown_columns(table, METRIC_COLUMNS, problems)
    if "name" not in table.columns:
        problems.add(f"{table.sheet.title}!{table.header}", "the Metrics header row has no name column "
                     f"(headers found: {', '.join(table.headers)}); add columns name, pattern, goal")
        return ()
    metrics: list[MetricDef] = []
    seen: dict[str, str] = {}
    for row in table_rows(table, problems):
        name = row.require("name", text, "", "missing name; write the metric's name, e.g. val_loss")
        pattern = row.get("pattern", _pattern, "")
        goal = row.get("goal", choice(GOALS), default_goal(name))
        file = row.get("file", _glob, "")
        if file and pattern:
            problems.add(row.ref("file"), f"metric {name!r} has both a pattern (read from printed lines) and a file; "
                         "keep one: a file's tags and columns are read by their names")
            continue
        if not name:
            continue
        if name in seen:
            problems.add(row.ref("name"), f"metric {name!r} is defined twice (also {seen[name]}); keep one row")
            continue
        seen[name] = row.ref("name")
        metrics.append(MetricDef(name, pattern, goal, file))
    return tuple(metrics)


def _pattern(value: object, column: str) -> str:
    """A pattern cell: a regex whose groups say which is the value and which the step
    (the rule and its error messages are `compile_metric_pattern`'s, the parser's own)."""
    pattern = text(value)
    compile_metric_pattern(pattern)
    return pattern


def _glob(value: object, column: str) -> str:
    """A file cell: a glob of metric files relative to the run folder (metric_files.check_glob)."""
    glob = text(value).strip()
    problem = check_glob(glob) if glob else None
    if problem:
        raise ValueError(problem)
    return glob
