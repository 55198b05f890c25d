"""`nero logs`: a run's stdout or stderr, read where the run is (locally, or on its
cluster over SSH), once or followed until the job ends."""

from __future__ import annotations

import sys
import time

import click

from ..errors import NeroError
from .group import fail, main, open_project

__all__ = ["logs"]


@main.command()
@click.argument("run")
@click.option("-w", "--workbook", default=None, help="The experiments workbook (file or folder).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the run ends.")
@click.option("--stderr", "which", flag_value="stderr", help="Show stderr.log instead of stdout.log.")
@click.option("--stdout", "which", flag_value="stdout", default=True, help="Show stdout.log (default).")
@click.option("-n", "--lines", type=int, default=0, help="Only the last N lines.")
def logs(run: str, workbook: str | None, follow: bool, which: str, lines: int) -> None:
    """Print a run's output. RUN is its key (`demo[lr=0.1,layers=2]`) or its number in `nero status`.

    A run on a remote cluster is read there over SSH (no `ssh` + `tail` needed); with
    --follow new output is printed every 2 s (every 0.5 s on this machine) until the job ends."""
    with open_project(workbook, load=False) as project:
        runs = project.runs()
        match = next((r for r in runs if r.key == run), None) or next(
            (r for r in runs if str(r.number) == run), None)
        if match is None:
            close = [r.key for r in runs if run in r.key][:5]
            raise click.ClickException(f"no run {run!r}" + (f"; did you mean: {', '.join(close)}" if close else
                                                              "; `nero status` lists the runs"))
        if not match.run_dir:
            raise click.ClickException(f"{match.key} has no run directory yet ({match.state.value}); "
                                       "it gets one when it is submitted")
        try:
            backend = project.backend(match.cluster)
        except NeroError as e:
            fail(e)
        _print_output(backend, match.run_dir, f"{which or 'stdout'}.log", lines, follow)


def _last_lines(data: bytes, lines: int) -> bytes:
    return b"\n".join(data.splitlines()[-lines:]) + b"\n" if lines and data else data


def _print_output(backend, run_dir: str, name: str, lines: int, follow: bool) -> None:
    """`nero logs`: one output file of a run, read through its cluster's backend (one
    round trip per read on a remote cluster)."""
    where = f"{backend.cluster.name}:{run_dir}/{name}"
    try:
        if lines:  # the last N lines: the file's tail, generously sized
            chunk = backend.read_output(run_dir, name, tail=max(64 << 10, lines * 1024))
            sys.stdout.write(_last_lines(chunk.data, lines).decode("utf-8", "replace"))
            offset = chunk.size or 0
        else:  # the whole file, 8 MB a round trip
            offset = 0
            while True:
                chunk = backend.read_output(run_dir, name, offset=offset)
                sys.stdout.write(chunk.data.decode("utf-8", "replace"))
                offset += len(chunk.data)
                if not chunk.data or chunk.size is None or offset >= chunk.size:
                    break
        sys.stdout.flush()
        if not chunk.dir_exists:
            raise click.ClickException(f"the run directory {backend.cluster.name}:{run_dir} does not exist "
                                       "(any more): its output is gone")
        if chunk.size is None:
            click.echo(f"({where} does not exist yet)", err=True)
        while follow and not chunk.ended:
            time.sleep(2.0 if backend.remote else 0.5)
            chunk = backend.read_output(run_dir, name, offset=offset)
            if chunk.size is not None and chunk.size < offset:  # the file was truncated or replaced
                offset = 0
                continue
            sys.stdout.write(chunk.data.decode("utf-8", "replace"))
            sys.stdout.flush()
            offset += len(chunk.data)
            if chunk.ended:  # what the job wrote after its last read
                while (chunk := backend.read_output(run_dir, name, offset=offset)).data:
                    sys.stdout.write(chunk.data.decode("utf-8", "replace"))
                    offset += len(chunk.data)
                sys.stdout.flush()
    except KeyboardInterrupt:
        return
    except NeroError as e:
        fail(e)
