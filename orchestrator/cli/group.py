"""The `nero` click group and what its commands share: finding the workbook, opening the
project, reporting errors, reading selectors, and the clock.

Every command finds its experiments workbook the same way: the WORKBOOK argument (or
`-w`), which may be a file or a folder holding `experiments.xlsx`; else `$NERO_WORKBOOK`;
else `./experiments.xlsx`. State lives in `.nero/state.db` beside the workbook.

A test hook: `$NERO_NOW` (seconds since the epoch) is the time a command takes as now,
standing still, instead of the system clock: run times and selectors (`runtime > 8s`),
the time stamps of events, overrides and e-mail, and the clock of the passes it runs.
Tests set it to see time pass without waiting; a user has no reason to.
"""

from __future__ import annotations

import functools
import gc
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import click

from ..errors import NeroError
from ..project import Candidate, Project

__all__ = ["WORKBOOK_ARG", "WORKBOOK_OPTION", "clock", "fail", "main", "open_project",
           "resolve_workbook", "select", "warn", "workbook_and_selector"]

WORKBOOK_ARG = click.argument("workbook", required=False, metavar="[WORKBOOK]")
WORKBOOK_OPTION = click.option("-w", "--workbook", default=None, help="The experiments workbook (file or folder).")


class _Group(click.Group):
    """The `nero` group: a NeroError that reaches it (a full or read-only disk, a state
    store that does not open) is printed as its one message with its exit code, never as
    a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except NeroError as e:
            fail(e)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="nero")
def main() -> None:
    """nero: the experiments workbook is the control panel.

    List experiments and their parameter variations in an Excel workbook; nero expands
    them into runs, starts them on your machine or your clusters, watches their logs and
    metrics, stops bad ones by your rules, and keeps a results workbook up to date.

    \b
    Start here:
      nero init demo                       a project with an example workbook and program
      nero plan demo                       what reconcile would do, with reasons
      nero reconcile demo --until-done     run it all, then stop
      nero reconcile demo --watch          keep the world in line with the sheet
      nero apply demo                      confirm changes that throw work away (restarts, cancels)
      nero status demo                     a table of runs, states and latest metrics
    """
    # A command builds hundreds of thousands of objects that live until it ends (a 200,000-run
    # plan: rows, specs, decisions) and makes no garbage cycles worth chasing that often: with
    # CPython's default thresholds (700, 10, 10) its cyclic collector took 8 of the 23 s of
    # that plan, for no memory back. Young collections every 100,000 allocations instead.
    gc.set_threshold(100_000, 50, 100)


@functools.cache
def clock() -> Callable[[], float]:
    """The commands' clock: the system's, or the time `$NERO_NOW` names (read once)."""
    raw = os.environ.get("NERO_NOW", "").strip()
    if not raw:
        return time.time
    try:
        now = float(raw)
    except ValueError:
        raise click.ClickException(f"NERO_NOW={raw!r} is not a time in seconds since the epoch") from None
    return lambda: now


def resolve_workbook(arg: str | Path | None) -> Path:
    """The experiments workbook a command means (see the module's docstring)."""
    raw = arg or os.environ.get("NERO_WORKBOOK") or "experiments.xlsx"
    p = Path(raw).expanduser()
    if p.is_dir():
        p = p / "experiments.xlsx"
    if not p.exists():
        hint = "run `nero init` to create one, or pass the workbook's path"
        raise click.ClickException(f"no experiments workbook at {p}; {hint}")
    return p


def fail(e: NeroError) -> NoReturn:
    """Print a NeroError and exit with its exit code."""
    click.echo(f"error: {e}", err=True)
    sys.exit(e.exit_code)


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def _loaded(opened: Project, keep_last_good: bool) -> Project:
    """`opened` after reading its workbook (warnings printed); exits if it does not read."""
    try:
        for w in opened.load(keep_last_good=keep_last_good):
            warn(w)
    except NeroError as e:
        opened.close()
        fail(e)
    return opened


def open_project(workbook: str | Path | None, load: bool = True, keep_last_good: bool = False) -> Project:
    """The project of the workbook a command means, on the commands' clock; with `load` its
    workbook is read (a workbook that does not read ends the command)."""
    project = Project(resolve_workbook(workbook), clock=clock())
    return _loaded(project, keep_last_good) if load else project


def workbook_and_selector(args: tuple[str, ...], selector_required: bool = False) -> tuple[str | None, str | None]:
    """`[WORKBOOK] [SELECTOR]`: a lone argument is the workbook if such a file or folder exists."""
    if len(args) > 2:
        raise click.UsageError("give at most a workbook and a selector (quote a selector with spaces)")
    if len(args) == 2:
        return args[0], args[1]
    if len(args) == 1:
        p = Path(args[0]).expanduser()
        is_path = (p.exists() or args[0].endswith(".xlsx")) and not selector_required
        return (args[0], None) if is_path else (None, args[0])
    if selector_required:
        raise click.UsageError("which runs? give a SELECTOR, e.g. failed, 12-18 or 'lr-sweep*'")
    return None, None


def select(project: Project, selector_text: str, need_workbook: bool = False) -> list[Candidate]:
    """The runs a selector matches (`operations.select`). A selector that does not parse ends
    the command; so does a workbook that does not read if `need_workbook`, else only runs
    nero started count (a warning says so)."""
    from ..operations import select as matching

    try:
        return matching(project, selector_text, need_workbook=need_workbook, warn=warn)
    except NeroError as e:  # a selector that does not parse, a name that is no metric, parameter or built-in
        fail(e)
