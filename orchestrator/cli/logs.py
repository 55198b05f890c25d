"""`nero logs`: a run's stdout or stderr, read where the run is (locally, or on its
cluster over SSH), once or followed until the job ends."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from ..errors import NeroError
from .group import fail as _fail
from .group import main, resolve_workbook

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
    --follow new output is printed every 2 s until the job ends."""
    from ..backends.remote import RemoteBackend
    from ..reconcile import Reconciler

    rec = Reconciler(resolve_workbook(workbook))
    try:
        snap = rec.store.snapshot()
        match = snap.get(run) or next((r for r in snap.values() if str(r.number) == run), None)
        if match is None:
            close = [k for k in snap if run in k][:5]
            raise click.ClickException(f"no run {run!r}" + (f"; did you mean: {', '.join(close)}" if close else
                                                              "; `nero status` lists the runs"))
        if not match.run_dir:
            raise click.ClickException(f"{match.key} has no run directory yet ({match.state.value}); "
                                       "it gets one when it is submitted")
        name = f"{which or 'stdout'}.log"
        backend = None
        if match.cluster not in ("", "local"):
            try:
                rec.load()
                backend = rec.backend(match.cluster)
            except NeroError as e:
                _fail(e)
        if isinstance(backend, RemoteBackend):
            _remote_logs(backend, match.run_dir, name, lines, follow)
            return
        path = Path(match.run_dir) / name
        _print_file(path, lines)
        if follow:
            _follow(rec, match.key, path)
    finally:
        rec.close()


def _last_lines(data: bytes, lines: int) -> bytes:
    return b"\n".join(data.splitlines()[-lines:]) + b"\n" if lines and data else data


def _remote_logs(backend, run_dir: str, name: str, lines: int, follow: bool) -> None:
    """`nero logs` of a run on a remote cluster: one agent round trip per read."""
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
            time.sleep(2.0)
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
        _fail(e)


def _print_file(path: Path, lines: int) -> int:
    if not path.exists():
        click.echo(f"({path} does not exist yet)", err=True)
        return 0
    data = path.read_bytes()
    sys.stdout.write(_last_lines(data, lines).decode("utf-8", "replace"))
    sys.stdout.flush()
    return path.stat().st_size


def _follow(rec, key: str, path: Path) -> None:
    offset = path.stat().st_size if path.exists() else 0
    exit_file = path.parent / "exit_code"
    try:
        while True:
            if path.exists():
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                if chunk:
                    offset += len(chunk)
                    sys.stdout.write(chunk.decode("utf-8", "replace"))
                    sys.stdout.flush()
            if exit_file.exists():
                return
            time.sleep(0.5)
    except KeyboardInterrupt:
        return
