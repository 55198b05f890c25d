"""The layout shared by the results workbook's sheets (cell formats, header rows, column
widths, page setup) and the three small sheets: Events, Resources and Queue.

xlsxwriter's part: it is handed the worksheet objects; the rows go into `ooxml.Cells`.
Summary and the two curve sheets have modules of their own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..curves import Magnitudes, decimals, nonfinite_text
from ..model import Event, RunRecord, RunState, Scalar
from .ooxml import Cells, ShuffledCells
from .view import View, cell_text, excel_time, time_zone

__all__ = [
    "MAX_EVENTS", "MAX_ROWS", "MIN_PRINT_SCALE", "STATE_COLOURS", "Formats", "Widths",
    "ResourceRows", "header", "page", "write_events", "write_queue", "write_value",
]

MAX_EVENTS = 10_000
MAX_ROWS = 1_048_576

# (fill, font) per state: completed green, failed/lost red, terminated orange, live blue, waiting grey
STATE_COLOURS: dict[RunState, tuple[str, str]] = {
    RunState.COMPLETED: ("#C6EFCE", "#006100"),
    RunState.FAILED: ("#FFC7CE", "#9C0006"),
    RunState.LOST: ("#FFC7CE", "#9C0006"),
    RunState.TIMEOUT: ("#FFC7CE", "#9C0006"),
    RunState.TERMINATED: ("#FCD5B4", "#974706"),
    RunState.PREEMPTED: ("#FCD5B4", "#974706"),
    RunState.RUNNING: ("#BDD7EE", "#1F4E78"),
    RunState.SUBMITTED: ("#DDEBF7", "#1F4E78"),
    RunState.PENDING: ("#EDEDED", "#595959"),
    RunState.CANCELLED: ("#EDEDED", "#595959"),
}


class Formats:
    """Every cell format, created and numbered in one fixed order, so styles.xml is the same
    in every file this version writes (a copied sheet's style numbers stay valid)."""

    def __init__(self, book: Any):
        add = book.add_format
        self.header = add({"bold": True, "bg_color": "#D9E1F2", "bottom": 1, "valign": "top"})
        self.int = add({"num_format": "0"})
        self.mb = add({"num_format": "#,##0"})
        self.seconds = add({"num_format": "#,##0"})
        self.duration = add({"num_format": "[h]:mm:ss"})
        self.datetime = add({"num_format": "yyyy-mm-dd hh:mm"})
        self.datetime_s = add({"num_format": "yyyy-mm-dd hh:mm:ss"})
        self.nonfinite = add({"font_color": "#C00000", "italic": True, "align": "right"})
        self.bool = add({"num_format": '"TRUE";"TRUE";"FALSE"'})
        self.dirty = add({"num_format": '"TRUE";"TRUE";"FALSE"', "font_color": "#9C5700", "bold": True})
        self.mono = add({"font_name": "Consolas"})
        self.decimals = [add({"num_format": "0" if d == 0 else "0." + "0" * d}) for d in range(7)]
        self.sci = add({"num_format": "0.00E+00"})
        self.state: dict[RunState, Any] = {}
        by_colour: dict[tuple[str, str], Any] = {}
        for state, colours in STATE_COLOURS.items():
            if colours not in by_colour:
                by_colour[colours] = add({"bg_color": colours[0], "font_color": colours[1]})
            self.state[state] = by_colour[colours]
        self.best = add({"bold": True, "font_color": "#006100", "bg_color": "#E2EFDA"})
        self.link = book.get_default_url_format()
        ordered = [self.header, self.int, self.mb, self.seconds, self.duration, self.datetime,
                   self.datetime_s, self.nonfinite, self.bool, self.dirty, self.mono, *self.decimals, self.sci,
                   *by_colour.values(), self.link]
        for f in ordered:  # pin the style numbers (xlsxwriter assigns them at first use)
            pin = getattr(f, "_get_xf_index", None)
            if pin is not None:
                pin()
        pin = getattr(self.best, "_get_dxf_index", None)
        if pin is not None:
            pin()
        # the style numbers of the cells nero writes itself (ooxml.Cells)
        self.xf: dict[int, int] = {id(f): f.xf_index for f in ordered if getattr(f, "xf_index", None) is not None}

    def cells(self, ncols: int) -> Cells:
        """The rows of a new sheet `ncols` columns wide, in these formats."""
        return Cells(ncols, self.xf)

    def shuffled_cells(self, ncols: int) -> ShuffledCells:
        """`cells` whose rows may come in any order."""
        return ShuffledCells(ncols, self.xf)

    def metric(self, values: Iterable[float]) -> Any:
        """About four significant digits at the column's typical magnitude."""
        d = decimals(values)
        return self.sci if d is None else self.decimals[d]

    def metric_of(self, magnitudes: Magnitudes | None) -> Any:
        """`metric` of the values `magnitudes` saw (None: none)."""
        d = magnitudes.decimals() if magnitudes is not None else 3
        return self.sci if d is None else self.decimals[d]

    def fit(self, v: float, column: Any) -> Any:
        """The column's format, or a scientific one for a value it would show badly."""
        a = abs(v)
        return self.sci if a >= 1e7 or 0 < a < 1e-6 else column


class Widths:
    """Column widths from the header and the text of the first `sample` rows."""

    def __init__(self, headers: Sequence[str], cap: Mapping[int, int] | None = None, sample: int = 500):
        self.w = [len(h) + 2 for h in headers]
        self.cap = cap or {}
        self.sample = sample

    def see(self, row: int, col: int, text_len: int) -> None:
        if row <= self.sample and text_len + 1 > self.w[col]:
            self.w[col] = text_len + 1

    def apply(self, ws: Any, default_cap: int = 40) -> list[float]:
        """Set the columns' widths; returns them (characters), for `page`."""
        applied = [min(max(w, 6), self.cap.get(c, default_cap)) for c, w in enumerate(self.w)]
        for c, w in enumerate(applied):
            ws.set_column(c, c, w)
        return applied


def header(ws: Any, cells: Cells, headers: Sequence[str], fmt: Formats,
           comments: Mapping[int, str] | None = None, height: float | None = None) -> None:
    """The header row, into `cells`, and its comments, through xlsxwriter."""
    cells.row(0, height)
    ws.set_row(0, height)  # xlsxwriter needs to know the row its comments are in
    for c, h in enumerate(headers):
        cells.string(c, cell_text(h), fmt.header)
    for c, note in (comments or {}).items():
        ws.write_comment(0, c, note, {"x_scale": 2.2, "y_scale": 1.4})


MIN_PRINT_SCALE = 25  # %: a sheet narrower than 4 pages at 100 % is printed one page wide
_PAGE_PX = int((11.69 - 0.8) * 96)  # A4 landscape between the margins, in pixels at 100 %


def page(ws: Any, columns: Sequence[float] = (), frozen: int | None = None) -> None:
    """The page setup every results sheet shares: A4 landscape, narrow margins, and one page
    wide (fitToWidth 1, fitToHeight 0) when the `columns` (their widths in characters) print
    at MIN_PRINT_SCALE % or more so. With `frozen` (the columns up to and including the run
    column), the header row and those columns are frozen on screen and the header row is
    printed at the top of every page (print titles); a sheet too wide for one page is printed
    across pages at MIN_PRINT_SCALE % with those columns repeated on each, so no page shows
    values without their runs."""
    ws.set_landscape()
    ws.set_paper(9)
    ws.set_margins(left=0.4, right=0.4, top=0.5, bottom=0.5)
    width_px = sum(7 * w + 5 for w in columns)
    fits = width_px * MIN_PRINT_SCALE <= _PAGE_PX * 100
    if fits:
        ws.fit_to_pages(1, 0)
    else:
        ws.set_print_scale(MIN_PRINT_SCALE)
        ws.print_across()
    if frozen is None:
        return
    ws.freeze_panes(1, frozen)
    ws.repeat_rows(0)
    if frozen and not fits:
        ws.repeat_columns(0, frozen - 1)


def write_value(cells: Cells, col: int, v: Scalar, fmt: Formats, num_fmt: Any = None) -> int:
    """Write one value by type into the current row; returns the display length (for widths)."""
    if v is None or v == "":
        return 0
    if isinstance(v, bool):
        cells.boolean(col, v, fmt.bool)
        return 5
    if isinstance(v, int | float):
        if math.isfinite(v):
            cells.number(col, v, num_fmt)
            return min(len(repr(v)), 12)
        cells.string(col, nonfinite_text(v), fmt.nonfinite)
        return 4
    s = cell_text(v)
    cells.string(col, s, num_fmt)
    return len(s)


def write_events(ws: Any, view: View, fmt: Formats) -> Cells:
    """Events: `time` · `run` · `attempt` · `kind` · `reason`, the newest MAX_EVENTS."""
    head = ["time", "run", "attempt", "kind", "reason"]
    cells = fmt.cells(len(head))
    header(ws, cells, head, fmt, {0: f"Local time of the machine that wrote this file ({time_zone()})"})
    events: list[Event] = sorted(view.data.events, key=lambda e: e.time)[-MAX_EVENTS:]
    widths = Widths(head, {4: 80})
    for row, e in enumerate(events, start=1):
        cells.row(row)
        t = excel_time(e.time)
        if t is not None:
            cells.number(0, t, fmt.datetime_s)
        key = cell_text(e.key)
        cells.string(1, key)
        cells.number(2, e.attempt, fmt.int)
        cells.string(3, cell_text(e.kind))
        if e.reason:
            reason = cell_text(e.reason)
            cells.string(4, reason)
            widths.see(row, 4, len(reason))
        widths.see(row, 1, len(key))
        widths.see(row, 3, len(e.kind))
    widths.w[0] = 20
    _finish(ws, widths, len(events), len(head), run_column=1)
    return cells


class ResourceRows:
    """Resources: `run` · `peak_rss_mb` · `peak_gpu_mem_mb` · `min_disk_free_mb` ·
    `gpu_util_pct`, for the runs with at least one sample; `add` a batch of runs at a time."""

    HEAD = ("run", "peak_rss_mb", "peak_gpu_mem_mb", "min_disk_free_mb", "gpu_util_pct")

    def __init__(self, ws: Any, fmt: Formats):
        self.ws, self.fmt = ws, fmt
        self.cells = fmt.cells(len(self.HEAD))
        header(ws, self.cells, self.HEAD, fmt, {
            1: "Peak resident memory of the job (MB)", 2: "Peak GPU memory of the run's own processes (MB)",
            3: "Lowest free disk space seen in the run directory (MB)",
            4: "Mean utilisation of the GPUs the run's processes were on (%)"})
        self.widths = Widths(self.HEAD)
        self.n = 0

    def add(self, runs: Iterable[RunRecord]) -> None:
        cells, fmt = self.cells, self.fmt
        for r in runs:
            vals = (r.peak_rss_mb, r.peak_gpu_mem_mb, r.min_disk_free_mb,
                    None if r.mean_gpu_util_pct is None else round(r.mean_gpu_util_pct, 1))
            if all(v is None for v in vals) or self.n + 1 >= MAX_ROWS:
                continue
            self.n += 1
            cells.row(self.n)
            key = cell_text(r.key)
            cells.string(0, key)
            self.widths.see(self.n, 0, len(key))
            for c, v in enumerate(vals, start=1):
                write_value(cells, c, v, fmt, fmt.mb)

    def finish(self) -> Cells:
        _finish(self.ws, self.widths, self.n, len(self.HEAD), run_column=0)
        return self.cells


def write_queue(ws: Any, view: View, fmt: Formats) -> Cells:
    """Queue: `run` · `reason`, the pending and held runs and why they wait."""
    head = ["run", "reason"]
    cells = fmt.cells(len(head))
    header(ws, cells, head, fmt)
    widths = Widths(head, {1: 80})
    for row, (key, reason) in enumerate(view.data.queue, start=1):
        cells.row(row)
        k, why = cell_text(key), cell_text(reason)
        cells.string(0, k)
        if why:
            cells.string(1, why)
        widths.see(row, 0, len(k))
        widths.see(row, 1, len(why))
    _finish(ws, widths, len(view.data.queue), len(head), run_column=0)
    return cells


def _finish(ws: Any, widths: Widths, rows: int, ncols: int, run_column: int) -> None:
    """Column widths, a filter over `rows` rows, and the page setup (frozen up to the run
    column)."""
    columns = widths.apply(ws, 48)
    ws.autofilter(0, 0, rows, ncols - 1)
    page(ws, columns, frozen=run_column + 1)
