"""`nero config`: the settings in force and where each came from (the environment, the
project's workbook, your user file, the defaults: `layers.merge`), and the user file's
editing (`--edit`, `set`, `get`). The file and its keys: orchestrator/userconfig.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from ..errors import NeroError
from ..model import Effective, Origin
from .console import console, escape
from .group import fail, main, resolve_workbook

__all__ = ["config"]

_LAYER_STYLE = {"environment": "magenta", "project": "cyan", "user": "green", "default": "dim"}


def _workbook(arg: str | None) -> Path | None:
    """The workbook `-w` names (which must exist), else `$NERO_WORKBOOK` or
    ./experiments.xlsx where one exists; None outside a project."""
    if arg:
        return resolve_workbook(arg)
    implied = Path(os.environ.get("NERO_WORKBOOK") or "experiments.xlsx").expanduser()
    implied = implied / "experiments.xlsx" if implied.is_dir() else implied
    return implied if implied.is_file() else None


def _effective(workbook: str | None) -> tuple[Effective, Path, Path | None]:
    """The settings in force (with the project's workbook, if any), the user file, the workbook."""
    from ..userconfig import effective, read_layers

    layers = read_layers()
    book = _workbook(workbook)
    return effective(layers, book), layers.path, book


@main.group(invoke_without_command=True)
@click.option("-w", "--workbook", default=None, help="The project's workbook (default: ./experiments.xlsx if any).")
@click.option("--json", "as_json", is_flag=True, help="The settings as JSON (key, value, layer, from).")
@click.option("--edit", is_flag=True, help="Open your user file in $VISUAL or $EDITOR (created with commented defaults).")
@click.pass_context
def config(ctx: click.Context, workbook: str | None, as_json: bool, edit: bool) -> None:
    """The settings in force and where each comes from: an environment variable
    (NERO_SMTP_HOST), the project's workbook (Settings!B4, Clusters!A3), your user file
    (its path and line) or nero's default. The environment wins over the workbook, the
    workbook over the user file.

    \b
    nero config                              the table (in a project: with its workbook)
    nero config --edit                       edit your user file
    nero config set mail.smtp_host smtp.example.org
    nero config set clusters.gpu1.kind ssh clusters.gpu1.host gpu1.example.org
    nero config get default_cluster
    """
    ctx.ensure_object(dict)
    ctx.obj["workbook"] = workbook
    if ctx.invoked_subcommand is not None:
        return
    if edit:
        _edit()
        return
    from ..layers import setting_rows

    try:
        found, path, book = _effective(workbook)
    except NeroError as e:
        fail(e)
    rows = setting_rows(found)
    if as_json:
        click.echo(json.dumps({"user_file": str(path), "workbook": str(book) if book else None,
                               "settings": [r.to_dict() for r in rows]}, indent=2))
        return
    from rich.table import Table

    exists = "" if path.exists() else " (not created yet: `nero config --edit`)"
    table = Table(title=f"user file: {escape(str(path))}{exists}", title_justify="left", show_edge=False)
    for column in ("setting", "value", "from"):
        table.add_column(column, overflow="fold")
    for r in rows:
        style = _LAYER_STYLE.get(r.origin.layer, "")
        table.add_row(escape(r.key), escape(r.value), f"[{style}]{escape(str(r.origin))}[/]")
    console().print(table)
    if book is None:
        click.echo("(outside a project: run it beside an experiments workbook, or with -w, to see its settings)")


@config.command(name="set")
@click.argument("key")
@click.argument("value")
@click.argument("more", nargs=-1)
def set_(key: str, value: str, more: tuple[str, ...]) -> None:
    """Set KEY to VALUE in your user file (mail.smtp_host, default_cluster, digest,
    state_root, clusters.NAME.FIELD, people.NAME.email), keeping its comments. More KEY
    VALUE pairs may follow; they are checked together (a new cluster needs its kind and
    host at once), and a bad value changes nothing.

    \b
    nero config set clusters.gpu1.kind ssh clusters.gpu1.host gpu1.example.org
    """
    from ..userconfig import set_value

    if len(more) % 2:
        raise click.UsageError(f"{more[-1]!r} has no value: give KEY VALUE pairs")
    pairs = list(zip(more[::2], more[1::2], strict=True))
    try:
        path = set_value(key, value, more=pairs)
    except ValueError as e:
        click.echo(f"error: {e}", err=True)
        raise SystemExit(2) from None
    except NeroError as e:
        fail(e)
    for k, v in [(key, value), *pairs]:
        click.echo(f"{k} = {v} in {path}")


@config.command()
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Key, value, layer and origin as JSON.")
@click.pass_context
def get(ctx: click.Context, key: str, as_json: bool) -> None:
    """The value of KEY in force (smtp_host or mail.smtp_host, clusters.gpu1,
    clusters.gpu1.host, people.ada); --json adds where it came from."""
    from ..layers import setting_rows

    try:
        effective, _, _ = _effective(ctx.obj.get("workbook"))
    except NeroError as e:
        fail(e)
    rows = setting_rows(effective)
    found = _lookup(effective, key)
    if found is None:
        known = ", ".join(r.key for r in rows)
        click.echo(f"error: no setting {key!r}; settings: {known}", err=True)
        raise SystemExit(2)
    value, origin = found
    if as_json:
        click.echo(json.dumps({"key": key, "value": value, "layer": origin.layer, "from": str(origin)}))
    else:
        click.echo(value)


def _lookup(effective: Effective, key: str) -> tuple[str, Origin] | None:
    """(value, origin) of a key: a row's, a mail row's by its last part (smtp_host), or a
    cluster's or person's field (clusters.gpu1.host)."""
    from ..layers import setting_rows, shown_value

    by_key = {r.key: r for r in setting_rows(effective)}
    row = by_key.get(key) or by_key.get(f"mail.{key}")
    if row is not None:
        return row.value, row.origin
    prefix, _, field = key.rpartition(".")
    if prefix not in by_key or field in ("name", "cells"):
        return None
    kind, _, name = prefix.partition(".")
    items = effective.clusters if kind == "clusters" else effective.people
    item = next((i for i in items if i.name == name), None)
    if item is None or not hasattr(item, field):
        return None
    return shown_value(getattr(item, field)), by_key[prefix].origin


def _edit() -> None:
    """Create the user file if need be, open it in the editor, check what was saved."""
    from ..userconfig import config_path, create, read_layers

    path = config_path()
    if create(path):
        click.echo(f"created {path} with commented defaults")
    click.edit(filename=str(path))
    try:
        read_layers()
    except NeroError as e:
        fail(e)
    click.echo(f"{path}: saved and valid (`nero config` shows what is in force)")
