"""Metric files in a run folder, the pure part: which files are read, what kind each is,
the names their tags and columns become, and CSV decoding (no I/O).

Besides the lines a job prints (`monitor.parse_output`) and `orchestrator.track`'s
`metrics.jsonl`, nero reads the metric files a framework writes in the run folder, found
there on every poll without configuration (the agent lists the folder, `backends/agent.py`):

    DEFAULT_GLOBS            what                                       written by
    ───────────────────────  ─────────────────────────────────────────  ─────────────────────────────
    **/events.out.tfevents.* TensorBoard event files (tfevents.py)      tensorboardX, torch's
                                                                        SummaryWriter, Lightning's
                                                                        TensorBoardLogger, Keras'
                                                                        TensorBoard, Hugging Face
    **/metrics.csv           CSV with a header row                      Lightning's CSVLogger

plus the files the Metrics sheet's `file` column names (a glob relative to the run folder:
Keras' `CSVLogger('history.csv')`, any CSV). A glob's `*` and `?` match within one folder
name, `**/` any number of folders; hidden folders (`.git`) and links to folders are not
entered. A file whose name holds `tfevents` is an event file, any other a CSV.

Names. An event file's scalar is named by its tag, unchanged (`train/loss` stays
`train/loss`: rules and selectors read `/` inside a name, tokens.py), with two exceptions
that keep apart what TensorBoard keeps apart by folder: an event file in a folder named
`train` or `validation` (Keras' TensorBoard callback writes `logs/train/` and
`logs/validation/`, both with the tag `epoch_loss`) is named `<folder>/<tag>`
(`validation/epoch_loss`), and the folders `add_scalars('loss', {'a': …, 'b': …})` writes
(`<logdir>/loss/a/` by tensorboardX, `<logdir>/loss_a/` by torch) give `loss/a` and `loss/b`.
A CSV column is named by its header, stripped.

CSV steps: the first of the columns `step`, `global_step`, `epoch` the header has gives
each row's step (a whole number; an empty or fractional cell: no step) and is no metric;
every other column with a number in a row is a point (`epoch` too, in Lightning's layout,
where `step` is the step). Empty cells (Lightning's rows are sparse) and text are skipped.

Reading is incremental, as for the printed outputs: per file an offset (`SourceOffset`),
advanced over whole records / whole lines only and stored with the points in one
transaction. A CSV whose header changes (Lightning rewrites the file with a wider header
when a new metric appears) is read again from its start, its first `rows` rows (already
read: `seen`) skipped; a file that shrank was replaced and is read again from its start.
"""

from __future__ import annotations

import csv
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .model import MetricDef, MetricPoint, SourceChunk, SourceOffset
from .tfevents import SOURCE as EVENTS_SOURCE
from .tfevents import read_events

__all__ = ["CSV_SOURCE", "DEFAULT_GLOBS", "EVENTS_SOURCE", "MAX_FILES", "SPLIT_FOLDERS", "STEP_COLUMNS", "SourcesRead",
           "check_glob", "globs_of", "kind_of", "metric_name", "needs_head", "read_csv", "read_sources"]

CSV_SOURCE = "csv"
DEFAULT_GLOBS = ("**/events.out.tfevents.*", "**/metrics.csv")
MAX_FILES = 64  # metric files read per run folder (the first, by path); the agent lists at most
SPLIT_FOLDERS = frozenset({"train", "validation"})
STEP_COLUMNS = ("step", "global_step", "epoch")


def kind_of(path: str) -> str:
    """The source a file (or a glob) is read as: `tensorboard` or `csv`."""
    return EVENTS_SOURCE if "tfevents" in path.rsplit("/", 1)[-1] else CSV_SOURCE


def needs_head(path: str) -> bool:
    """Whether a read from inside the file needs its first line (a CSV's header)."""
    return kind_of(path) == CSV_SOURCE


def globs_of(defs: Sequence[MetricDef]) -> tuple[str, ...]:
    """The globs a run folder is searched with: the defaults, then the Metrics sheet's."""
    out = list(DEFAULT_GLOBS)
    for d in defs:
        if d.file and d.file not in out:
            out.append(d.file)
    return tuple(out)


def check_glob(text: str) -> str | None:
    """What is wrong with a Metrics `file` glob, or None."""
    if text.startswith(("/", "~")) or "\\" in text:
        return f"{text!r} is no path inside the run folder; write one relative to it, e.g. logs/history.csv"
    parts = text.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return f"{text!r} has an empty, `.` or `..` part; write a path inside the run folder, e.g. logs/*.csv"
    if any(c in text for c in "[]{}"):
        return f"{text!r}: only `*`, `?` and `**/` are wildcards here (no [..] or {{..}})"
    if parts[-1] == "**":
        return f"{text!r} names folders, not files; end it with a file name, e.g. **/*.csv"
    return None


def metric_name(path: str, tag: str) -> str:
    """The metric an event file's tag gives (see the module's docstring)."""
    folders = path.split("/")[:-1]
    if folders:
        last = folders[-1]
        head = "/".join(folders[:-1])
        if head == tag or head.endswith("/" + tag):  # tensorboardX's add_scalars: <logdir>/<tag>/<key>
            return f"{tag}/{last}"
        flat = tag.replace("/", "_") + "_"
        if last.startswith(flat) and len(last) > len(flat):  # torch's add_scalars: <logdir>/<tag>_<key>
            return f"{tag}/{last[len(flat):]}"
        if last in SPLIT_FOLDERS:
            return f"{last}/{tag}"
    return tag


@dataclass(frozen=True)
class SourcesRead:
    """What one poll's chunks of a run's metric files gave: the files' new offsets (all of
    them, sorted by path), the points, and problems worth a warning."""

    offsets: tuple[SourceOffset, ...]
    points: list[MetricPoint]
    problems: list[str]


def read_sources(chunks: Iterable[SourceChunk], known: Sequence[SourceOffset], now: float | None, *,
                 final: bool = False, window: int = 0) -> SourcesRead:
    """Read each chunk from its file's known offset; offsets of files not read stay."""
    offsets = {o.path: o for o in known}
    points: list[MetricPoint] = []
    problems: list[str] = []
    for c in chunks:
        before = offsets.get(c.path) or SourceOffset(c.path)
        if c.offset != before.offset:
            continue  # not read from where this attempt stands (cannot happen with one reader)
        if c.size < c.offset:  # shrank: a new file in its place
            offsets[c.path] = SourceOffset(c.path)
            continue
        if kind_of(c.path) == EVENTS_SOURCE:
            r = read_events(c.data, c.offset, c.size, final=final, window=window)
            names: dict[str, str] = {}
            for p in r.points:
                name = names.get(p.name)
                if name is None:
                    name = names[p.name] = metric_name(c.path, p.name)
                points.append(p if name == p.name else MetricPoint(name, p.value, p.step, p.time, p.source))
            problems += [f"{c.path}: {m}" for m in r.problems]
            after = SourceOffset(c.path, c.offset + r.consumed)
        else:
            found, after = read_csv(c, before, now, final=final)
            points += found
        if after != before:
            offsets[c.path] = after
    return SourcesRead(tuple(offsets[p] for p in sorted(offsets)), points, problems)


def _complete(data: bytes, final: bool) -> int:
    return len(data) if final else data.rfind(b"\n") + 1


def _whole(text: str) -> int | None:
    try:
        f = float(text)
    except ValueError:
        return None
    return int(f) if f.is_integer() else None


def read_csv(c: SourceChunk, known: SourceOffset, now: float | None, *, final: bool = False
             ) -> tuple[list[MetricPoint], SourceOffset]:
    """The points of the whole rows of a CSV chunk and the file's new offset (see the
    module's docstring for the header, the step column and a header that changed)."""
    data, start = c.data, 0
    if c.offset == 0:
        nl = data.find(b"\n")
        if nl < 0:
            return [], known  # the header is not whole yet
        head, start = data[:nl + 1], nl + 1
    else:
        head = c.head
        if not head.endswith(b"\n"):
            return [], known
    crc = zlib.crc32(head)
    if c.offset and known.head and crc != known.head:  # rewritten with a new header: again from its start
        return [], SourceOffset(c.path, 0, 0, max(known.seen, known.rows), crc)
    end = start + _complete(data[start:], final)
    header = [h.strip() for h in next(csv.reader([head.decode("utf-8", "replace").lstrip("\ufeff").strip("\r\n")]), [])]
    low = [h.lower() for h in header]
    step_col = next((low.index(s) for s in STEP_COLUMNS if s in low), -1)
    rows, seen = (0 if c.offset == 0 else known.rows), known.seen  # rows up to `seen` were read before a rewrite
    points: list[MetricPoint] = []
    text = data[start:end].decode("utf-8", "replace")
    for cells in csv.reader(text.splitlines()):
        if not cells:
            continue
        rows += 1
        if rows <= seen:
            continue
        step = _whole(cells[step_col]) if 0 <= step_col < len(cells) and cells[step_col].strip() else None
        for k, cell in enumerate(cells):
            if k == step_col or k >= len(header) or not header[k] or not cell.strip():
                continue
            try:
                value = float(cell)
            except ValueError:
                continue
            points.append(MetricPoint(header[k], value, step, now, CSV_SOURCE))
    return points, SourceOffset(c.path, c.offset + end, rows, seen, crc)
