"""The Optimisation sheet: the adaptive rows' trials in order, the best so far, Optuna's
parameter importances, and a chart per row of each trial's value and the best so far.

One table of every adaptive row's trials (`experiment` · `trial` · `run` · `state` · the
value · `best so far` · each parameter the rows search), then, below it, the importances
(`experiment` · `parameter` · `importance`) where Optuna gave them; a chart per row to the
right of the table. A workbook without adaptive rows shows a line saying so.
"""

from __future__ import annotations

import math
from typing import Any

from ..curves import PALETTE
from ..model import Optimisation
from .ooxml import Cells
from .sheets import Formats, Widths, header, page
from .view import View, cell_text, chart_text

__all__ = ["write_optimisation"]

_CHART_W, _CHART_H = 560, 300


def write_optimisation(book: Any, ws: Any, view: View, fmt: Formats) -> Cells:
    """Write the sheet (rows into the returned Cells, charts through xlsxwriter)."""
    found: tuple[Optimisation, ...] = view.data.optimisations
    names = list(dict.fromkeys(n for o in found for t in o.trials for n, _ in t.params))
    head = ["experiment", "trial", "run", "state", "value", "best so far", *names]
    cells = fmt.cells(max(len(head), 3))
    header(ws, cells, head, fmt, {4: "the value of the metric each row optimises (its last, as every surface shows)"})
    widths = Widths(head, {2: 40})
    if not found:
        cells.row(1)
        cells.string(0, "no row of the workbook has a search (see the search column in sheets/README.md)")
        page(ws, widths.apply(ws), frozen=3)
        return cells
    row = 0
    blocks: list[tuple[Optimisation, int, int]] = []  # (optimisation, first row, last row) of its trials
    for o in found:
        first = row + 1
        for t in o.trials:
            row += 1
            cells.row(row)
            cells.string(0, cell_text(o.experiment))
            cells.number(1, t.number, fmt.int)
            cells.string(2, cell_text(t.key))
            cells.string(3, t.state)
            if t.value is not None and math.isfinite(t.value):
                cells.number(4, t.value)
            if t.best_so_far is not None and math.isfinite(t.best_so_far):
                cells.number(5, t.best_so_far)
            values = dict(t.params)
            for c, n in enumerate(names, 6):
                v = values.get(n)
                if isinstance(v, bool) or isinstance(v, str):
                    cells.string(c, cell_text(str(v)))
                elif isinstance(v, int | float) and math.isfinite(v):
                    cells.number(c, v)
            widths.see(row, 0, len(o.experiment))
            widths.see(row, 2, len(t.key))
        if o.trials:
            blocks.append((o, first, row))
    if any(o.importances for o in found):
        row += 2
        cells.row(row)
        for c, h in enumerate(("experiment", "parameter", "importance")):
            cells.string(c, h, fmt.header)
        for o in found:
            for name, value in o.importances:
                row += 1
                cells.row(row)
                cells.string(0, cell_text(o.experiment))
                cells.string(1, cell_text(name))
                if math.isfinite(value):
                    cells.number(2, value)
    columns = widths.apply(ws)
    ws.autofilter(0, 0, sum(len(o.trials) for o in found), len(head) - 1)
    for k, (o, first, last) in enumerate(blocks):
        ws.insert_chart(1 + k * (_CHART_H // 20 + 1), len(head) + 1, _chart(book, ws.name, o, first, last))
    page(ws, columns, frozen=3)
    return cells


def _chart(book: Any, sheet: str, o: Optimisation, first: int, last: int) -> Any:
    """Each trial's value (markers) and the best so far (a line) over the trial number."""
    chart = book.add_chart({"type": "scatter"})
    for col, name, colour, line in ((4, "value", PALETTE[0], False), (5, "best so far", PALETTE[1], True)):
        chart.add_series({
            "name": name,
            "categories": [sheet, first, 1, last, 1],
            "values": [sheet, first, col, last, col],
            "categories_data": [], "values_data": [],
            "line": {"color": colour, "width": 1.75} if line else {"none": True},
            "marker": {"type": "none"} if line else {"type": "circle", "size": 5, "fill": {"color": colour},
                                                      "border": {"color": colour}},
        })
    chart.set_title({"name": chart_text(f"{o.experiment}: {o.metric} ({o.goal} is better), {o.sampler}"),
                     "name_font": {"size": 11, "bold": True}})
    chart.set_x_axis({"name": "trial", "name_font": {"size": 9, "bold": False}, "num_font": {"size": 8}})
    chart.set_y_axis({"name": chart_text(o.metric), "name_font": {"size": 9, "bold": False}, "num_font": {"size": 8},
                      "major_gridlines": {"visible": True, "line": {"color": "#E4E4E4"}}})
    chart.set_legend({"position": "bottom", "font": {"size": 8}})
    chart.set_size({"width": _CHART_W, "height": _CHART_H})
    return chart
