"""The Curves and Curve data sheets of the results workbook.

Curve data holds the downsampled histories, two rows (steps, values) per run × metric,
grouped by experiment then metric. Curves holds the leaderboard of the primary metric
(a table and a bar chart beside it) and, below, per experiment, native line charts of
its runs drawn from Curve data: a row of charts per group of at most SERIES_PER_CHART
runs, the experiment's metrics side by side, page breaks between rows so none is cut.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..curves import PALETTE, axis_cap, decimals, downsample, finite, log_scale, normalize
from ..metrics import rank_key
from .ooxml import Cells
from .sheets import MAX_ROWS, Formats, Widths, header, page
from .view import (
    CHARTED_RUNS,
    LEADERBOARD_SIZE,
    SERIES_PER_CHART,
    RunView,
    View,
    cell_text,
    chart_text,
    points_per_series,
    short_label,
)

__all__ = ["CurveRows", "write_curves"]

_CHART_WIDTH, _GAP, _PER_ROW = 560, 16, 3  # pixels, pixels, charts side by side
_BOARD_WIDTH = 900  # pixels


@dataclass(slots=True)
class _Placed:
    """One run × metric in Curve data, as its chart needs it."""

    row: int  # row of the step row in Curve data (0-based); values are row + 1
    n: int
    key: str
    number: int
    rank: float | None  # the run's best of the primary metric, to draw the best runs of a wide row
    label: str
    x_max: float
    y_min: float
    y_max: float
    y_first: float


# a chart: (experiment, metric, its series, a note on which runs it shows)
_Chart = tuple[str, str, list[_Placed], str]


class CurveRows:
    """Curve data's rows and the leaderboard, gathered a batch of runs at a time (`add`).

    Curve data is grouped by experiment, then metric; the runs come by number. The view's
    survey counted each group's series, so every series knows its row when its run comes
    and is written at once (`ooxml.ShuffledCells` reads the rows back in order): the
    downsampled histories are never all held."""

    HEAD = ("experiment", "run", "metric", "axis", "points")

    def __init__(self, data_ws: Any, view: View, fmt: Formats):
        survey = view.survey
        self.data_ws, self.view, self.fmt = data_ws, view, fmt
        self.per = per = points_per_series(survey.series)
        self.cells = fmt.shuffled_cells(len(self.HEAD) + per)
        header(data_ws, self.cells, self.HEAD, fmt)
        for k in range(per):
            self.cells.number(5 + k, k + 1, fmt.header)
        metric_at = {m: i for i, m in enumerate(view.metrics)}
        experiment_at = {e: i for i, e in enumerate(survey.experiments)}
        row = 1
        self.next_row: dict[tuple[str, str], int] = {}  # where the group's next series goes
        self.end_row: dict[tuple[str, str], int] = {}  # and where the next group starts
        for group in sorted(survey.plotted, key=lambda g: (experiment_at[g[0]], metric_at[g[1]])):
            self.next_row[group] = row
            row += 2 * survey.plotted[group]
            self.end_row[group] = row
        self.placed: dict[tuple[str, str], list[_Placed]] = {group: [] for group in self.next_row}
        self.widths = Widths(self.HEAD)
        self.board: list[tuple[RunView, float]] = []

    def add(self, runs: Sequence[RunView], histories: Mapping[str, Mapping[str, Any]]) -> None:
        primary = self.view.primary
        for run in runs:
            best = run.best.get(primary) if primary else None
            if best is not None and math.isfinite(best):
                self.board.append((run, best))
            h = histories.get(run.record.key)
            if h:
                for m in run.at:
                    self._series(run, m, h.get(m, ()))
        if len(self.board) > 4 * LEADERBOARD_SIZE:
            self.board = self.view.ranked(self.board)

    def _series(self, run: RunView, m: str, points: Any) -> None:
        """One run × metric: its two rows (steps, values) where its group puts them."""
        steps, values = downsample(*finite(*normalize(points)), self.per)
        if not steps:
            return
        r = run.record
        group = (r.experiment, m)
        row = self.next_row.get(group, MAX_ROWS)
        if row + 2 > self.end_row.get(group, 0) or row + 1 >= MAX_ROWS:
            return  # not surveyed (the runs changed between the passes): the next write shows it
        self.next_row[group] = row + 2
        cells, string = self.cells, self.cells.string
        exp_t, m_t, key = cell_text(r.experiment), cell_text(m), cell_text(r.key)
        n = len(steps)
        for axis, seq in (("step", steps), ("value", values)):
            cells.row(row)
            string(0, exp_t)
            string(1, key)
            string(2, m_t)
            string(3, axis)
            cells.number(4, n)
            cells.numbers(5, seq)
            row += 1
        for col, text in ((0, exp_t), (1, key), (2, m_t)):
            self.widths.see(row, col, len(text))
        best = run.best.get(self.view.primary) if self.view.primary else None
        self.placed[group].append(_Placed(row - 2, n, r.key, r.number, best if best is not None and math.isfinite(best)
                                          else None, short_label(r.key, r.experiment), steps[-1],
                                          min(values), max(values), values[0]))

    def finish(self) -> Cells:
        """Curve data's frame; its rows."""
        columns = self.widths.apply(self.data_ws, 48)
        self.data_ws.set_column(5, 5 + self.per - 1, 10)
        page(self.data_ws, [*columns[:5], *[10] * self.per], frozen=5)  # experiment, run, metric, axis, points
        return self.cells


def write_curves(book: Any, ws: Any, rows: CurveRows, view: View, fmt: Formats) -> tuple[Cells, Cells]:
    """Curves, and Curve data from the rows gathered; returns their rows."""
    data_cells = rows.finish()
    board = view.ranked(rows.board)
    cells, table_px = _write_leaderboard(ws, view, fmt, board)
    layout = _layout(rows.placed, view.primary, view.goal(view.primary) if view.primary else "min")
    board_height = max(240, 90 + 22 * len(board)) if board else 0
    content_px = max(table_px + _BOARD_WIDTH, _PER_ROW * (_CHART_WIDTH + _GAP) if layout else 0, 1)
    # A4 landscape, fit to the width. The scale estimated here is at least the one the
    # spreadsheet program picks (its columns are as wide or wider), so a page holds at
    # least page_px: a break before each row of charts that would not fit keeps charts whole.
    scale = max(10, min(100, int(1040 * 100 / content_px)))
    page_px = 650 * 100 // scale
    page(ws)
    if board:
        _leaderboard_chart(book, ws, view, board, board_height)
    y = _row_align(max(board_height, 20 * (len(board) + 1)) + 2 * _GAP)
    page_top, breaks = 0, []
    for charts in layout:
        row_height = max(max(320, 110 + 17 * len(chunk)) for _, _, chunk, _ in charts)
        if y + row_height > page_top + page_px and y > page_top:  # keep each row of charts on one page
            breaks.append(y // 20)
            page_top = y
        for k, chart in enumerate(charts):
            _place(ws, _line_chart(book, view, chart, row_height), 0, k * (_CHART_WIDTH + _GAP), y)
        y = _row_align(y + row_height + _GAP)
    if breaks:
        ws.set_h_pagebreaks(breaks[:1000])
    return cells, data_cells


def _value_head(view: View) -> str:
    return f"best:{view.primary}" if view.primary else "best"


def _write_leaderboard(ws: Any, view: View, fmt: Formats,
                       board: list[tuple[RunView, float]]) -> tuple[Cells, int]:
    """The leaderboard table at the top of Curves; returns its rows and its width in pixels."""
    head = ["rank", "run", "experiment", _value_head(view)]
    cells = fmt.cells(len(head))
    header(ws, cells, head, fmt)
    lw = Widths(head, {1: 44})
    vfmt = fmt.metric([v for _, v in board])
    for i, (run, v) in enumerate(board, start=1):
        cells.row(i)
        cells.number(0, i, fmt.int)
        key = cell_text(run.record.key)
        cells.string(1, key)
        cells.string(2, cell_text(run.record.experiment))
        cells.number(3, v, fmt.fit(v, vfmt))
        lw.see(i, 1, len(key))
        lw.see(i, 2, len(run.record.experiment))
    lw.w[3] = max(lw.w[3], 12)
    lw.apply(ws)
    return cells, sum(_column_px(min(max(w, 6), lw.cap.get(c, 40))) for c, w in enumerate(lw.w)) + 64


def _layout(placed: dict[tuple[str, str], list[_Placed]], primary: str = "", goal: str = "min") -> list[list[_Chart]]:
    """Rows of charts: per experiment, a row per group of runs with the experiment's metrics
    side by side (at most _PER_ROW a row). `placed`: the series by (experiment, metric), in
    Curve data's order. An experiment of more than CHARTED_RUNS runs is drawn as its best
    CHARTED_RUNS by `primary` (as the leaderboard ranks; then those without a value, by
    number): 10,000 runs in 500 charts held 870 MB and drew nothing a person reads; Curve
    data keeps every run's series."""
    layout: list[list[_Chart]] = []
    for exp in dict.fromkeys(e for e, _ in placed):
        metrics = [m for e, m in placed if e == exp]
        series_of = {m: placed[(exp, m)] for m in metrics}
        runs = {s.key: s for m in metrics for s in series_of[m]}
        what = ""
        if len(runs) > CHARTED_RUNS:
            def order(s: _Placed) -> tuple[Any, ...]:
                return (1, 0.0, s.number) if s.rank is None else (0, rank_key(goal, s.rank), s.number)

            chosen = {s.key: i for i, s in enumerate(sorted(runs.values(), key=order)[:CHARTED_RUNS])}
            series_of = {m: sorted((s for s in ss if s.key in chosen), key=lambda s: chosen[s.key])
                         for m, ss in series_of.items()}
            ranked = primary and any(s.rank is not None for s in runs.values())  # else: by number, said so
            what = f" of {len(runs):,}, the best by {primary}" if ranked else f" of {len(runs):,}, the first by number"
        n_runs = max(len(series) for series in series_of.values())
        groups = math.ceil(n_runs / SERIES_PER_CHART)
        size = math.ceil(n_runs / groups) if groups else SERIES_PER_CHART  # balanced groups
        for g in range(groups):
            charts = []
            for m in metrics:
                series = series_of[m]
                chunk = series[g * size:(g + 1) * size]
                if chunk:
                    if what:
                        part = f", runs {g * size + 1}–{g * size + len(chunk)}{what}"
                    else:
                        part = f", runs {g * size + 1}–{g * size + len(chunk)} of {len(series)}" if groups > 1 else ""
                    charts.append((exp, m, chunk, part))
            for i in range(0, len(charts), _PER_ROW):
                layout.append(charts[i:i + _PER_ROW])
    return layout


def _leaderboard_chart(book: Any, ws: Any, view: View, board: list[tuple[RunView, float]],
                       height: int) -> None:
    """The bar chart beside the leaderboard table (from its cells, column 3 on)."""
    n = len(board)
    values = [v for _, v in board]
    d = decimals(values)
    label = "0.00E+00" if d is None else "[>=100000]0.00E+00;" + ("0" if d == 0 else "0." + "0" * d)
    chart = book.add_chart({"type": "bar"})
    chart.add_series({
        "name": chart_text(_value_head(view)),
        "categories": ["Curves", 1, 1, n, 1], "values": ["Curves", 1, 3, n, 3],
        # the chart's cached copy of its cells (xlsxwriter cannot see the rows Cells writes)
        "categories_data": [cell_text(run.record.key) for run, _ in board], "values_data": values,
        "fill": {"color": PALETTE[0]}, "border": {"none": True}, "gap": 60,
        "data_labels": {"value": True, "num_format": label, "font": {"size": 8}},
    })
    goal = view.goal(view.primary)
    chart.set_title({"name": chart_text(f"Leaderboard: best {view.primary} ({goal} is better), top {n}"),
                     "name_font": {"size": 11, "bold": True}})
    chart.set_y_axis({"reverse": True, "num_font": {"size": 8}})
    x_axis: dict[str, Any] = {"name": chart_text(view.primary), "name_font": {"size": 9, "bold": False},
                              "num_font": {"size": 8},
                              "major_gridlines": {"visible": True, "line": {"color": "#D9D9D9"}}}
    cap = axis_cap(goal, values, sorted(values)[len(values) // 2])
    if cap is not None:  # a diverged run's bar runs off the chart; its label tells the value
        x_axis["max"] = cap
    chart.set_x_axis(x_axis)
    chart.set_legend({"none": True})
    chart.set_size({"width": _BOARD_WIDTH, "height": height})
    _place(ws, chart, 5, 0, 0)  # beside the table's four columns and a gap


def _line_chart(book: Any, view: View, chart_of: _Chart, height: int) -> Any:
    """One metric of one experiment's runs over step, drawn from Curve data."""
    exp, m, chunk, part = chart_of
    goal = view.goal(m)
    firsts = sorted(s.y_first for s in chunk)
    cap = axis_cap(goal, [s.y_max for s in chunk], firsts[len(firsts) // 2])
    shown = [v for s in chunk for v in (s.y_min, s.y_max) if cap is None or v <= cap]
    log = log_scale(shown + ([cap] if cap is not None else []))
    if log and cap is not None:
        cap = 10 ** math.ceil(math.log10(cap))
    chart = book.add_chart({"type": "scatter", "subtype": "straight"})
    for i, s in enumerate(chunk):
        off = cap is not None and s.y_min > cap  # diverged from the start: say so
        colour = PALETTE[i % 10]
        chart.add_series({
            "name": chart_text(s.label + " (off the chart)") if off else s.label,
            "categories": ["Curve data", s.row, 5, s.row, 5 + s.n - 1],
            "values": ["Curve data", s.row + 1, 5, s.row + 1, 5 + s.n - 1],
            # no cached copy of the points: spreadsheet programs draw from the cells
            "categories_data": [], "values_data": [],
            "line": {"color": colour, "width": 1.5, "dash_type": "dash" if (i // 10) % 2 else "solid"},
            "marker": ({"type": "circle", "size": 4, "fill": {"color": colour}, "border": {"color": colour}}
                       if s.n < 3 else {"type": "none"}),
        })
    chart.set_title({"name": chart_text(f"{exp}: {m} ({goal} is better){part}"),
                     "name_font": {"size": 11, "bold": True}})
    chart.set_x_axis({"name": "step", "name_font": {"size": 9, "bold": False}, "num_font": {"size": 8},
                      "max": max(s.x_max for s in chunk),
                      "major_gridlines": {"visible": True, "line": {"color": "#E4E4E4"}}})
    y_axis: dict[str, Any] = {"name": chart_text(m), "name_font": {"size": 9, "bold": False},
                              "num_font": {"size": 8},
                              "major_gridlines": {"visible": True, "line": {"color": "#E4E4E4"}}}
    if log:
        y_axis["log_base"] = 10
    if cap is not None:  # a diverging run's line leaves the top of the chart
        y_axis["max"] = cap
    chart.set_y_axis(y_axis)
    chart.set_legend({"position": "right", "font": {"size": 8}})
    chart.set_size({"width": _CHART_WIDTH, "height": height})
    return chart


def _row_align(y: int) -> int:
    return -(-y // 20) * 20


def _column_px(width: float) -> int:
    """Excel's pixel width of a column `width` characters wide (Calibri 11)."""
    return int(width * 7 + 0.5) + 5


def _place(ws: Any, chart: Any, col: int, x: int, y: int) -> None:
    """Anchor a chart at pixel (x, y) from the top-left of column `col`, row 1 (rows are 20 px)."""
    ws.insert_chart(y // 20, col, chart, {"x_offset": x, "y_offset": y % 20, "object_position": 3})
