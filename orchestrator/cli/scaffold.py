"""`nero init`: a new project from the example workbook and training program."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from .group import main

__all__ = ["init"]


@main.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Overwrite an existing experiments.xlsx / train.py.")
def init(directory: str, force: bool) -> None:
    """Create a project in DIRECTORY: experiments.xlsx (commented headers, drop-downs and
    a worked example grid) and train.py, a small example training program."""
    from ..render import builtin_templates
    from ..sheet import write_example_workbook

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    wb, train = d / "experiments.xlsx", d / "train.py"
    for p in (wb, train):
        if p.exists() and not force:
            raise click.ClickException(f"{p} exists; use --force to overwrite it, or pick another directory")
    write_example_workbook(wb)
    shutil.copyfile(builtin_templates() / "project" / "train.py", train)
    click.echo(f"Created {wb} and {train}.")
    click.echo("Next: open the workbook, then run")
    click.echo(f"  nero plan {d}\n  nero reconcile {d} --until-done")
