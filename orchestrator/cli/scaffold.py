"""`nero init`: a new project from the example workbook and training program
(`operations.create`, which `orchestrator.Project.init` calls too)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import NeroError
from ..operations import create
from .group import main

__all__ = ["init"]


@main.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Overwrite an existing experiments.xlsx / train.py.")
def init(directory: str, force: bool) -> None:
    """Create a project in DIRECTORY: experiments.xlsx (commented headers, drop-downs and
    a worked example grid) and train.py, a small example training program."""
    try:
        wb, train = create(directory, force)
    except NeroError as e:
        raise click.ClickException(str(e)) from None
    d = Path(directory)
    click.echo(f"Created {wb} and {train}.")
    click.echo("Next: open the workbook, then run")
    click.echo(f"  nero plan {d}\n  nero reconcile {d} --until-done")
