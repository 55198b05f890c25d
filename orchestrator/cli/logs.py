"""`nero logs`: a run's stdout or stderr, read where the run is (locally, or on its
cluster over SSH), once or followed until the job ends. Piped (or with --raw) it prints
the file's exact bytes; on a terminal it shows them through `TerminalView`, so a job's
output cannot drive the terminal."""

from __future__ import annotations

import codecs
import sys
import time

import click

from ..errors import NeroError
from .group import fail, main, open_project

__all__ = ["TerminalView", "logs"]


@main.command()
@click.argument("run")
@click.option("-w", "--workbook", default=None, help="The experiments workbook (file or folder).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the run ends.")
@click.option("--stderr", "which", flag_value="stderr", help="Show stderr.log instead of stdout.log.")
@click.option("--stdout", "which", flag_value="stdout", default=True, help="Show stdout.log (default).")
@click.option("-n", "--lines", type=int, default=0, help="Only the last N lines.")
@click.option("--raw", is_flag=True, help="Print the exact bytes also on a terminal (control characters and "
              "over-long lines as they are; piped output is always exact).")
def logs(run: str, workbook: str | None, follow: bool, which: str, lines: int, raw: bool) -> None:
    """Print a run's output. RUN is its key (`demo[lr=0.1,layers=2]`) or its number in `nero status`.

    A run on a remote cluster is read there over SSH (no `ssh` + `tail` needed); with
    --follow new output is printed every 2 s (every 0.5 s on this machine) until the job ends.
    On a terminal, control characters other than newline and tab are shown escaped (`\\x1b`)
    and a line longer than the cluster's read window ends in `[line cut: N bytes]`; piped
    output, or --raw, is the file's exact bytes."""
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
        view = None if raw or not sys.stdout.isatty() else TerminalView(backend.read_limits()[0])
        _print_output(backend, match.run_dir, f"{which or 'stdout'}.log", lines, follow, view,
                      queued=match.state.value in ("pending", "submitted"))


# C0 controls but newline and tab, DEL and the C1 controls: shown escaped on a terminal
_ESCAPES = {c: ("\\r" if c == 13 else f"\\x{c:02x}") for c in (*range(0x20), *range(0x7f, 0xa0)) if c not in (9, 10)}


class TerminalView:
    """What `nero logs` shows on a terminal: the output decoded (UTF-8, bad bytes replaced)
    with control characters escaped, so a job's escape sequences cannot move the cursor,
    recolour or retitle the terminal; of a line longer than `window` bytes (the read window,
    beyond which nero's reader cuts a line too) the first `window` bytes, then
    `[line cut: N bytes]` for the N bytes not shown."""

    def __init__(self, window: int):
        self.window = max(1, window)
        self.column = 0  # bytes of the current line seen so far
        self.hidden = 0  # of those, not shown
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, data: bytes) -> str:
        pieces = data.split(b"\n")
        text = []
        for i, piece in enumerate(pieces):
            text.append(self._part(piece))
            if i < len(pieces) - 1:
                text.append(self.end_line() + "\n")
        return "".join(text)

    def _part(self, piece: bytes) -> str:
        room = max(0, self.window - self.column)
        shown = piece[:room]
        self.column += len(piece)
        self.hidden += len(piece) - len(shown)
        return self._decoder.decode(shown).translate(_ESCAPES)

    def end_line(self) -> str:
        """The end of the current line: its cut mark if some of it was not shown."""
        text = self._decoder.decode(b"", final=True).translate(_ESCAPES)
        if self.hidden:
            text += f" [line cut: {self.hidden} bytes]"
        self.column = self.hidden = 0
        return text

    def finish(self) -> str:
        """At the end of the output: the cut mark of a last line without a line end."""
        return self.end_line() if self.hidden else self._decoder.decode(b"", final=True).translate(_ESCAPES)


def _last_lines(data: bytes, lines: int) -> bytes:
    return b"\n".join(data.splitlines()[-lines:]) + b"\n" if lines and data else data


def _print_output(backend, run_dir: str, name: str, lines: int, follow: bool, view: TerminalView | None,
                  queued: bool = False) -> None:
    """`nero logs`: one output file of a run, read through its cluster's backend (one
    round trip per read on a remote cluster); through `view` on a terminal, else exact bytes.
    `queued`: the run has not started (a Slurm array task writes its folder when it starts)."""
    where = f"{backend.cluster.name}:{run_dir}/{name}"

    def show(data: bytes, end: bool = False) -> None:
        if view is None:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            sys.stdout.write(view.feed(data) + (view.finish() if end else ""))
            sys.stdout.flush()

    try:
        if lines:  # the last N lines: the file's tail, generously sized
            chunk = backend.read_output(run_dir, name, tail=max(64 << 10, lines * 1024))
            show(_last_lines(chunk.data, lines))
            offset = chunk.size or 0
        else:  # the whole file, 8 MB a round trip
            offset = 0
            while True:
                chunk = backend.read_output(run_dir, name, offset=offset)
                show(chunk.data)
                offset += len(chunk.data)
                if not chunk.data or chunk.size is None or offset >= chunk.size:
                    break
        if not chunk.dir_exists:
            show(b"", end=True)
            if queued:
                raise click.ClickException(f"{backend.cluster.name}:{run_dir} does not exist yet: the run's job has "
                                           "not started (a job array's task makes its run folder when it starts)")
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
            show(chunk.data)
            offset += len(chunk.data)
            if chunk.ended:  # what the job wrote after its last read
                while (chunk := backend.read_output(run_dir, name, offset=offset)).data:
                    show(chunk.data)
                    offset += len(chunk.data)
        show(b"", end=True)
    except KeyboardInterrupt:
        return
    except NeroError as e:
        fail(e)
