"""`nero metrics test`: what the Metrics patterns and the default `name=value` capture
take from a log file, line by line, checked before a run records it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import NeroError
from ..model import MetricDef
from .console import console, escape
from .group import fail, main, resolve_workbook, warn

if TYPE_CHECKING:
    from ..capture_report import CaptureReport

__all__ = ["metrics"]

_DEFAULT = "name=value (default)"


@main.group()
def metrics() -> None:
    """Check how metrics are read from run output.

    `nero metrics test LOG [WORKBOOK]` shows what the Metrics patterns and the default
    capture take from a log file (`nero metrics test --help`)."""


@metrics.command("test")
@click.argument("log", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("workbook", required=False, metavar="[WORKBOOK]")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--summary", is_flag=True, help="Only the summary per metric, not every point.")
@click.option("--as", "kind", type=click.Choice(["auto", "log", "tensorboard", "csv"]), default="auto",
              show_default=True, help="Read LOG as printed output, a TensorBoard event file or a CSV "
              "(auto: a name holding `tfevents` is an event file, a `.csv` a CSV, else output).")
def test(log: Path, workbook: str | None, as_json: bool, summary: bool, kind: str) -> None:
    """Show what nero records from the output in LOG, line by line.

    Every metric value taken, with its line, metric, step and value and the pattern that
    took it (the Metrics sheet's, or the default `name=value` / `name: value` capture);
    then per metric the count, first and last step and last value; and a warning for
    each pattern that took nothing. It runs the parser `nero reconcile` runs, so what
    it shows is what a run printing this output records.

    The patterns are WORKBOOK's Metrics sheet (found as every command finds its
    workbook: the argument, else $NERO_WORKBOOK, else ./experiments.xlsx); without a
    workbook, the default capture only. A pattern's value is its group named `value`,
    else its one unnamed group; its step, the group named `step`.

    \b
    Example: for the output line
      12:00:07 Finished epoch 7 of rnn: training error 0.31, test error 0.42
    the Metrics row
      test_error | Finished epoch (?P<step>\\d+) of \\w+: .* test error ([0-9.]+)
    records test_error = 0.42 at step 7 (a run's output: `nero logs RUN > rnn.log`):
      nero metrics test rnn.log experiments.xlsx

    A metric file a framework writes (a TensorBoard event file, Lightning's metrics.csv,
    Keras' CSVLogger file) is read as a pass reads it in a run folder: every point with
    its step and the tag or column it came from (no workbook needed):
      nero metrics test runs/demo/logs/events.out.tfevents.1733.host.1.0
    """
    from ..capture_report import capture_report, file_report

    if kind == "auto":
        kind = "tensorboard" if "tfevents" in log.name else "csv" if log.suffix.lower() == ".csv" else "log"
    if kind == "log":
        path, defs = _definitions(workbook)
        report = capture_report(log.read_bytes(), defs)  # the workbook's check already refused a broken pattern
    else:  # named as in a run folder: the folders that name series (train/, validation/) count
        path, defs = None, ()
        report = file_report("/".join(log.parts[-3:]), log.read_bytes(), kind)
    if as_json:
        click.echo(json.dumps({"log": str(log), "workbook": str(path) if path else None, **report.as_dict()},
                              indent=2))
    else:
        _print(report, log, path, defs, summary)
    for u in report.unmatched:
        warn(f"the Metrics pattern of {u.metric} took nothing from {log}: {u.reason} (pattern '{u.pattern}')")


def _definitions(workbook: str | None) -> tuple[Path | None, tuple[MetricDef, ...]]:
    """The workbook meant and its Metrics definitions; (None, ()) when there is none."""
    if workbook is None and not os.environ.get("NERO_WORKBOOK") and not Path("experiments.xlsx").exists():
        return None, ()
    path = resolve_workbook(workbook)
    from ..sheet import read_metric_definitions

    try:
        return path, read_metric_definitions(path)
    except NeroError as e:
        fail(e)


def _number(value: float | None) -> str:
    """A value as it was read: 0.42, 7, nan; "–" for none."""
    if value is None:
        return "–"
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _print(report: CaptureReport, log: Path, path: Path | None, defs: tuple[MetricDef, ...], summary: bool) -> None:
    from rich.table import Table

    con = console()
    first = "line"
    if report.kind != "log":
        first = "#"
        what = "a TensorBoard event file" if report.kind == "tensorboard" else "a CSV of metrics"
        con.print(escape(f"{log}: {_plural(len(report.captures), 'value')} ({what}, read as nero reads a run "
                         "folder's metric files)"), soft_wrap=True)
        for problem in report.problems:
            warn(problem)
        if not report.captures:
            con.print("Nothing taken: no scalar in it" + (" (a CSV needs a header row and numbers in its cells)"
                                                          if report.kind == "csv" else "") + ".", soft_wrap=True)
            return
    else:
        patterns = sum(1 for d in defs if d.pattern)
        source = (f"the {_plural(patterns, 'pattern')} of {path}'s Metrics sheet and the default "
                  "name=value capture" if path else "no workbook: the default name=value capture only")
        counts = f"{_plural(len(report.captures), 'value')} from {_plural(report.lines, 'line')}"
        con.print(escape(f"{log}: {counts} ({source})"), soft_wrap=True)
        if not report.captures:
            con.print("Nothing taken. Lines such as `loss=0.41` or `val_acc: 0.93` are taken by default; for "
                      "another format, add a Metrics row with a pattern (sheets/README.md, Metrics).",
                      soft_wrap=True)
            return
    if not summary:
        t = Table(header_style="bold", box=None, pad_edge=False)
        for col in (first, "metric", "step", "value", "taken by"):
            t.add_column(col, justify="right" if col in (first, "step", "value") else "left",
                         overflow="fold", no_wrap=col != "taken by")
        for c in report.captures:
            t.add_row(str(c.line), escape(c.point.name), _number(c.point.step), _number(c.point.value),
                      escape(c.pattern or _DEFAULT))
        con.print(t)
        con.print()
    t = Table(header_style="bold", box=None, pad_edge=False)
    for col in ("metric", "values", "first step", "last step", "last value", "taken by"):
        t.add_column(col, justify="left" if col in ("metric", "taken by") else "right",
                     overflow="fold", no_wrap=col != "taken by")
    for m in report.metrics:
        t.add_row(escape(m.metric), str(m.count), _number(m.first_step), _number(m.last_step),
                  _number(m.last_value), escape(m.pattern or _DEFAULT))
    con.print(t)
