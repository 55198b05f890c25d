"""Writing the results workbook: decide whether a write is needed and which sheets to
build, have xlsxwriter write the frame, assemble the file and replace the old one
atomically (`orchestrator.files`).
"""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import DiskError, NeroError
from ..files import disk_error, remove_stale_temporaries, write_atomically
from ..model import ResultsInput
from .curves import CurveRows, write_curves
from .ooxml import CannotReuse, Cells, Existing, assemble
from .optimisation import write_optimisation
from .sheets import Formats, ResourceRows, write_events, write_queue
from .summary import summary_rows, write_attempts
from .view import (
    CHEAP_POINTS,
    CURVES_MAX_AGE,
    FORMAT_VERSION,
    SHEETS,
    Batch,
    Batches,
    RunDigests,
    View,
)

__all__ = ["shows", "still_shows", "streamed_digests", "write_results"]


def write_results(path: str | Path, data: ResultsInput, *, charts: bool | None = None,
                  remote_hosts: Mapping[str, str] | None = None, current: list[bool] | None = None,
                  fingerprints: tuple[str, str] | None = None, batches: Batches | None = None,
                  digests: list[RunDigests] | None = None) -> bool:
    """Write the results workbook for `data` to `path` atomically; True if it was written.

    Skips the write (returns False) when the file already shows exactly this content, so
    calling it every pass is cheap. Curves and Curve data are copied from the existing
    file when they were built from the same histories. When the histories changed:
    `charts=True` rebuilds them; `charts=False` keeps the file's curves as of its last
    full write (a summary-only refresh, well under a second for 1,000 runs); the default
    (None) rebuilds them when that is cheap (≤ 100,000 points) or when the file's curves
    are CURVES_MAX_AGE (300 s of `data.now`) old, else refreshes the rest only — so the
    loop is never held up for long and the curves lag by at most five minutes. A file
    without usable curves always gets them.
    `remote_hosts` maps the name of each non-local cluster to its ssh host, so a remote
    run directory shows as `host:path` text rather than a local link; without it, a run
    on cluster `local` (or none) or whose directory exists here is local.
    Temporary files of killed writers older than `files.STALE_AFTER_S` are removed; a
    full or read-only disk raises DiskError. `current`, if given, gets True appended when
    the file then shows `data` whole, its curves included (not when they lag).
    `batches`: the runs and their histories, for `data` without them (`runs=()`,
    `histories={}`, the declared goals), a batch at a time; each call a new pass, over the
    same runs (two passes: `View`). `fingerprints`: theirs, when known (`streamed_digests`);
    else `digests`, if given, gets the runs' digests appended (`still_shows`).
    """
    path = Path(path)
    remove_stale_temporaries(path)  # what writers killed mid-write left (`.tmp`; `.base` from earlier versions)
    view = View(data, remote_hosts, batches, fingerprints)
    summary_fp, curves_fp = view.survey.fingerprints
    if digests is not None and view.survey.digests is not None:
        digests.append(view.survey.digests)
    old = Existing.open(path)
    if charts is None:
        charts = (old is None or view.points() <= CHEAP_POINTS
                  or not data.now - old.curves_at < CURVES_MAX_AGE)
    whole = old is not None and old.curves_fp == curves_fp or bool(charts)
    if old is not None and old.summary_fp == summary_fp and (old.curves_fp == curves_fp or not charts):
        if whole and current is not None:
            current.append(True)
        return False
    reuse = old if old is not None and (old.curves_fp == curves_fp or not charts) else None
    try:
        write_atomically(path, lambda tmp: _build(tmp, view, summary_fp, curves_fp, reuse))
    except (OSError, CannotReuse) as exc:
        raise _disk_trouble(path, exc) or NeroError(f"cannot write the results workbook {path}: {exc}") from exc
    except Exception as exc:
        if type(exc).__module__.startswith("xlsxwriter"):  # FileCreateError wraps the OSError
            raise _disk_trouble(path, exc) or NeroError(f"cannot write the results workbook {path}: {exc}") from exc
        raise
    if whole and current is not None:
        current.append(True)
    return True


def streamed_digests(head: ResultsInput, batches: Batches,
                     remote_hosts: Mapping[str, str] | None = None) -> RunDigests:
    """The fingerprints `write_results` would find for `head` with the runs of `batches`
    (`View.fingerprints`), with each run's digest, holding one batch of runs at a time: a
    pass learns whether the file `shows` them in one pass that computes nothing else, hands
    them to `write_results` when it does not, and keeps the digests for `still_shows`."""
    return View(head, remote_hosts, batches).digests()


def still_shows(path: str | Path, kept: RunDigests, head: ResultsInput, changed: Batch,
                remote_hosts: Mapping[str, str] | None = None) -> bool | None:
    """Whether the results workbook at `path`, which showed the runs `kept` digested, still
    shows the store's data: `head` (the input without its runs) digests as it did, and so
    does every run of `changed` (every run written since, with their histories; the caller
    makes sure none was removed and no point added). None when the file is not the one
    `kept` describes (its fingerprints differ: another write): the digests cannot tell."""
    if not shows(path, kept.fingerprints):
        return None
    view = View(head, remote_hosts, lambda: ())
    if view.head_digest() != kept.head:
        return False
    runs, histories = changed
    return all(kept.of(r.number) == view.run_digest(r, histories.get(r.key, {})) for r in runs)


def shows(path: str | Path, fingerprints: tuple[str, str]) -> bool:
    """Whether the results workbook at `path` shows data of these fingerprints, its curves
    included: `write_results` would write nothing."""
    old = Existing.open(Path(path))
    return old is not None and (old.summary_fp, old.curves_fp) == fingerprints


def _disk_trouble(path: Path, exc: BaseException) -> DiskError | None:
    """The DiskError behind `exc` (an OSError, or one xlsxwriter wrapped), if any."""
    for e in (exc, *exc.args, exc.__cause__, exc.__context__):
        if isinstance(e, OSError):
            return disk_error(path, e)
    return None


def _build(out: Path, view: View, summary_fp: str, curves_fp: str, reuse: Existing | None) -> None:
    """Write the workbook to `out`, with the curves of `reuse` when they can be taken over.
    xlsxwriter's file is built in memory: only `out` touches the disk, through a file this
    module opens and closes (a zip xlsxwriter left open on a full disk complained again
    when it was collected)."""
    if reuse is not None:
        base, rows = _write_book(view, summary_fp, reuse.curves_fp, curves=False, curves_at=reuse.curves_at)
        try:
            assemble(base, out, rows, reuse.path)
            return
        except (CannotReuse, OSError, zipfile.BadZipFile, KeyError, struct.error, UnicodeDecodeError):
            pass  # the old file's curves cannot be taken over: build them
    base, rows = _write_book(view, summary_fp, curves_fp, curves=True)
    assemble(base, out, rows)


def _new_book(target: io.BytesIO, view: View, summary_fp: str, curves_fp: str, curves_at: float) -> Any:
    import xlsxwriter

    book = xlsxwriter.Workbook(target, {
        "in_memory": True,  # the sheets' rows are written by ooxml.Cells: xlsxwriter's part is small
        "strings_to_formulas": False, "strings_to_urls": False, "strings_to_numbers": False,
        "nan_inf_to_errors": False,
    })
    book.set_properties({
        "title": "nero results",
        "subject": view.data.experiments_path,
        "author": "nero", "company": "", "comments":
            f"Generated by nero from {view.data.experiments_path}; edits are overwritten.",
        "created": datetime.fromtimestamp(view.data.now, UTC).replace(tzinfo=None),
    })
    book.set_custom_property("nero_format", FORMAT_VERSION)
    book.set_custom_property("nero_summary", summary_fp)
    book.set_custom_property("nero_curves", curves_fp)
    book.set_custom_property("nero_curves_at", repr(float(curves_at)))
    return book


def _write_book(view: View, summary_fp: str, curves_fp: str, *, curves: bool,
                curves_at: float | None = None) -> tuple[io.BytesIO, dict[str, Cells]]:
    """Write the workbook's frame with xlsxwriter, in memory (every sheet, Curves and Curve
    data empty with curves=False); returns it and the sheets' rows, by part name, for
    `assemble`."""
    stamp = curves_at if curves_at is not None else view.data.now
    base = io.BytesIO()
    book = _new_book(base, view, summary_fp, curves_fp, stamp)
    fmt = Formats(book)
    sheets = {name: book.add_worksheet(name) for name in SHEETS}
    summary = summary_rows(sheets["Summary"], view, fmt)
    resources = ResourceRows(sheets["Resources"], fmt)
    curve_rows = CurveRows(sheets["Curve data"], view, fmt) if curves else None
    for runs, histories in view.prepared_batches():  # one batch of runs at a time, for every sheet of runs
        summary.add(runs)
        resources.add(run.record for run in runs)
        if curve_rows is not None:
            curve_rows.add(runs, histories)
    rows = {"Summary": summary.finish(), "Resources": resources.finish()}
    if curve_rows is not None:
        rows["Curves"], rows["Curve data"] = write_curves(book, sheets["Curves"], curve_rows, view, fmt)
    rows["Events"] = write_events(sheets["Events"], view, fmt)
    rows["Queue"] = write_queue(sheets["Queue"], view, fmt)
    rows["Attempts"] = write_attempts(sheets["Attempts"], view, fmt)
    rows["Optimisation"] = write_optimisation(book, sheets["Optimisation"], view, fmt)
    book.close()
    return base, {f"xl/worksheets/sheet{SHEETS.index(name) + 1}.xml": cells for name, cells in rows.items()}
