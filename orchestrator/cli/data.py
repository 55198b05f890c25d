"""The commands that take data out of a project: `nero export` (runs and metric points
as files), `nero plot` (curves to a PNG) and `nero resources` (what each cluster has free)."""

from __future__ import annotations

import json
import sys

import click

from .. import operations
from ..errors import NeroError
from ..units import format_megabytes
from .console import console as _console
from .console import escape
from .group import WORKBOOK_OPTION, fail, main, open_project, warn

__all__ = ["export", "plot", "resources"]


@main.command()
@click.argument("workbook", required=False, metavar="[WORKBOOK]")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True,
              help="runs.csv (+ runs-metrics.csv, runs-attempts.csv), runs.json, or runs.parquet "
                   "(+ runs-metrics.parquet, runs-attempts.parquet).")
def export(workbook: str | None, output: str) -> None:
    """Export every run (parameters, state, timings, last and best metrics of its current
    attempt), every metric point of every attempt (with its `attempt`) and the attempts
    before each run's current one, for pandas, R or a spreadsheet. In Python:
    orchestrator.Project(workbook).runs() and .metrics() (README: From Python)."""
    with open_project(workbook, load=False) as project:
        try:
            done = operations.export(project, output)
        except ValueError as e:
            raise click.ClickException(str(e)) from None
    earlier = f"{done.attempts} earlier attempt{'s' if done.attempts != 1 else ''}"
    click.echo(f"Wrote {', '.join(map(str, done.paths))}: {done.runs} runs, {earlier}, {done.points} metric points.")


@main.command()
@click.argument("args", nargs=-1, required=True, metavar="[WORKBOOK] SELECTOR METRIC")
@WORKBOOK_OPTION
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="The PNG to write (default: <metric>.png beside the workbook).")
@click.option("--attempts", "with_attempts", is_flag=True,
              help="Draw the runs' earlier attempts too (dashed, in their run's colour).")
def plot(args: tuple[str, ...], workbook: str | None, output: str | None, with_attempts: bool) -> None:
    """Draw METRIC over steps for the runs matching SELECTOR, one line per run, to a PNG:
    the curves of the results workbook, for a quick look. With --attempts, each run's
    earlier attempts (before a restart or a retry) are drawn as well, dashed in the run's
    colour and labelled `#<run number> (attempt <n>)`.

    \b
    Example: nero plot 'demo*' val_loss -o val_loss.png
             nero plot 3 val_loss --attempts"""
    if len(args) not in (2, 3):
        raise click.UsageError("give SELECTOR and METRIC (and optionally the workbook first)")
    given, selector, metric = (None, *args) if len(args) == 2 else args
    with open_project(workbook or given, load=False) as project:
        try:
            drawn, n = operations.plot(project, selector, metric, output, with_attempts, warn=warn)
        except operations.NoRunMatches as e:
            raise click.ClickException(str(e)) from None
        except NeroError as e:
            fail(e)
        note = ""
        if with_attempts:
            note = (f"; {drawn.curves} curve{'s' if drawn.curves != 1 else ''}: {drawn.current} current, "
                    f"{drawn.earlier} earlier attempt{'s' if drawn.earlier != 1 else ''}")
        click.echo(f"Wrote {drawn.path} ({n} run{'s' if n != 1 else ''}{note}).")


# ---------------------------------------------------------------- nero resources
@main.command()
@click.argument("cluster", required=False)
@click.option("-w", "--workbook", default=None, help="The experiments workbook (file or folder).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def resources(cluster: str | None, workbook: str | None, as_json: bool) -> None:
    """What each cluster has free: partitions/queues and free slots, GPU memory and
    utilisation, RAM, load, and free disk in its workdir. One round trip per cluster.

    \b
    Example: nero resources slurm -w demo"""
    import dataclasses

    with open_project(workbook) as project:
        try:
            found = project.resources(cluster)
        except NeroError as e:
            raise click.ClickException(str(e)) from None
        live = project.live_counts()
    if as_json:
        click.echo(json.dumps([{**dataclasses.asdict(r), "nero_live": live.get(r.cluster, 0)} for r in found], indent=2))
        if any(r.error for r in found):
            sys.exit(1)
        return
    _resources_tables(found, live)
    if any(r.error for r in found):
        sys.exit(1)


def _resources_tables(found, live: dict[str, int]) -> None:
    from rich.table import Table

    def mb(v: float | None) -> str:
        return format_megabytes(v, missing="?")

    con = _console()
    for r in found:
        head = f"[bold]{escape(r.cluster)}[/] ({r.kind}{', ' + escape(r.host) if r.host else ''})"
        if r.error:
            con.print(f"{head}: [red]{escape(r.error)}[/]")
            continue
        load = "/".join(f"{x:.2f}" for x in r.load) or "?"
        ram = f"{mb(r.mem_available_mb)} free of {mb(r.mem_total_mb)}"
        con.print(f"{head}: {r.cpus or '?'} CPUs, load {load}, RAM {ram}, free disk {mb(r.disk_free_mb)} "
                  f"in {escape(r.disk_path)}; nero runs live here: {live.get(r.cluster, 0)}")
        if r.queues:
            t = Table(box=None, header_style="bold", pad_edge=False)
            for col in ("partition/queue", "state", "free", "total", "detail"):
                t.add_column(col, justify="right" if col in ("free", "total") else "left")
            for q in r.queues:
                t.add_row(escape(q.name), q.state, "?" if q.free_slots is None else str(q.free_slots),
                          "?" if q.total_slots is None else str(q.total_slots), escape(q.detail))
            con.print(t)
        if r.gpus:
            t = Table(box=None, header_style="bold", pad_edge=False)
            for col in ("gpu", "name", "memory used", "memory total", "utilisation"):
                t.add_column(col)
            for g in r.gpus:
                t.add_row(str(g.index), escape(g.name), mb(g.mem_used_mb), mb(g.mem_total_mb),
                          "?" if g.util_pct is None else f"{g.util_pct:.0f}%")
            con.print(t)
