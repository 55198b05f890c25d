"""The Curves and Curve data sheets of the results workbook.

Curve data holds the downsampled histories, two rows (steps, values) per run × metric,
grouped by experiment then metric. Curves holds the leaderboard of the primary metric
(a table and a bar chart beside it) and, below, per experiment, native line charts of
its runs drawn from Curve data: a row of charts per group of at most SERIES_PER_CHART
runs, the experiment's metrics side by side, page breaks between rows so none is cut.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..curves import PALETTE, axis_cap, decimals, downsample, log_scale
from .ooxml import Cells
from .sheets import MAX_ROWS, Formats, Widths, header, page
from .view import (
    SERIES_PER_CHART,
    RunView,
    View,
    cell_text,
    chart_text,
    points_per_series,
    short_label,
)

__all__ = ["write_curves"]

_CHART_WIDTH, _GAP, _PER_ROW = 560, 16, 3  # pixels, pixels, charts side by side
_BOARD_WIDTH = 900  # pixels


@dataclass
class _Placed:
    """One run × metric in Curve data, as its chart needs it."""

    row: int  # row of the step row in Curve data (0-based); values are row + 1
    n: int
    label: str
    x_max: float
    y_min: float
    y_max: float
    y_first: float


# (experiment, metric, the experiment's runs with points of it)
_Order = list[tuple[str, str, list[RunView]]]
# a chart: (experiment, metric, its series, a note on which runs it shows)
_Chart = tuple[str, str, list[_Placed], str]


def write_curves(book: Any, ws: Any, data_ws: Any, view: View, fmt: Formats) -> tuple[Cells, Cells]:
    """Curves and Curve data; returns their rows."""
    order = _order(view)
    data_cells, placed = _write_curve_data(data_ws, view, fmt, order)
    board = view.leaderboard()
    cells, table_px = _write_leaderboard(ws, view, fmt, board)
    layout = _layout(order, placed)
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


def _order(view: View) -> _Order:
    """The run × metric series of Curve data: by experiment, then metric."""
    experiments: dict[str, list[RunView]] = {}
    for run in view.prepared():
        experiments.setdefault(run.record.experiment, []).append(run)
    order: _Order = []
    for exp, exp_runs in experiments.items():
        for m in view.metrics:
            with_m = [run for run in exp_runs if m in run.at]
            if with_m:
                order.append((exp, m, with_m))
    return order


def _write_curve_data(data_ws: Any, view: View, fmt: Formats,
                      order: _Order) -> tuple[Cells, dict[tuple[str, str], list[_Placed]]]:
    """Curve data's rows, and where each series went, by (experiment, metric)."""
    per = points_per_series(sum(len(rs) for _, _, rs in order))
    head = ["experiment", "run", "metric", "axis", "points"]
    data_cells = fmt.cells(len(head) + per)
    header(data_ws, data_cells, head, fmt)
    for k in range(per):
        data_cells.number(5 + k, k + 1, fmt.header)
    placed: dict[tuple[str, str], list[_Placed]] = {}
    widths = Widths(head)
    row = 1
    string = data_cells.string
    for exp, m, with_m in order:
        slot = placed.setdefault((exp, m), [])
        exp_t, m_t = cell_text(exp), cell_text(m)
        for run in with_m:
            if row + 1 >= MAX_ROWS:
                break
            steps, values = downsample(*view.series(run, m), per)
            if not steps:
                continue
            key = cell_text(run.record.key)
            n = len(steps)
            for axis, seq in (("step", steps), ("value", values)):
                data_cells.row(row)
                string(0, exp_t)
                string(1, key)
                string(2, m_t)
                string(3, axis)
                data_cells.number(4, n)
                data_cells.numbers(5, seq)
                row += 1
            widths.see(row, 0, len(exp_t))
            widths.see(row, 1, len(key))
            widths.see(row, 2, len(m_t))
            slot.append(_Placed(row - 2, n, short_label(run.record.key, run.record.experiment), steps[-1],
                                min(values), max(values), values[0]))
    columns = widths.apply(data_ws, 48)
    data_ws.set_column(5, 5 + per - 1, 10)
    page(data_ws, [*columns[:5], *[10] * per], frozen=5)  # experiment, run, metric, axis, points
    return data_cells, placed


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


def _layout(order: _Order, placed: dict[tuple[str, str], list[_Placed]]) -> list[list[_Chart]]:
    """Rows of charts: per experiment, a row per group of runs with the experiment's metrics
    side by side (at most _PER_ROW a row)."""
    layout: list[list[_Chart]] = []
    for exp in dict.fromkeys(e for e, _, _ in order):
        metrics = [m for e, m, _ in order if e == exp]
        n_runs = max(len(placed.get((exp, m), [])) for m in metrics)
        groups = math.ceil(n_runs / SERIES_PER_CHART)
        size = math.ceil(n_runs / groups) if groups else SERIES_PER_CHART  # balanced groups
        for g in range(groups):
            charts = []
            for m in metrics:
                series = placed.get((exp, m), [])
                chunk = series[g * size:(g + 1) * size]
                if chunk:
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
