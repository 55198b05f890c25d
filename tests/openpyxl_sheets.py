"""nero's former workbook reading (openpyxl read-only, two passes: formulas, then the
values saved with them), kept as the reference the streamed reader (orchestrator/sheet/
xlsx.py) must agree with, cell for cell (tests/test_sheet.py), and as the peer it is
timed against (bench/bench_workbook.py).

`read_sheets(path, wanted)` answers as `xlsx.read_sheets` does: every title, and by key
the title and rows (row number, values from column A; text stripped, blank text None;
`CellError` / `NoSavedValue` where the cell shows an error or a formula lacks its value).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import openpyxl

from orchestrator.sheet.xlsx import CellError, NoSavedValue

__all__ = ["read_sheets"]

Rows = list[tuple[int, list[object]]]


def read_sheets(path: Path, wanted: Callable[[str], str | None]) -> tuple[list[str], dict[str, tuple[str, Rows]]]:
    formulas: dict[tuple[str, int, int], str] = {}
    titles, sheets = _scan(path, False, wanted, formulas)
    if formulas:
        titles, sheets = _scan(path, True, wanted, formulas)
    return titles, sheets


def _scan(path: Path, saved: bool, wanted: Callable[[str], str | None],
          formulas: dict[tuple[str, int, int], str]) -> tuple[list[str], dict[str, tuple[str, Rows]]]:
    book = openpyxl.load_workbook(path, read_only=True, data_only=saved, keep_links=False)
    try:
        titles = list(book.sheetnames)
        sheets: dict[str, tuple[str, Rows]] = {}
        for title in titles:
            key = wanted(title)
            ws = book[title]
            if key is None or key in sheets or not hasattr(ws, "reset_dimensions"):
                continue
            ws.reset_dimensions()
            rows: Rows = []
            for r, cells in enumerate(ws.iter_rows(), start=1):
                values: list[object] = []
                for c, cell in enumerate(cells):
                    value, kind = cell.value, getattr(cell, "data_type", None)
                    formula = formulas.get((key, r, c))
                    if kind == "f":
                        formulas[(key, r, c)] = str(getattr(value, "text", value))
                    elif kind == "e":
                        value = CellError(value)
                    elif saved and formula is not None and value is None:
                        value = NoSavedValue(formula)
                    if isinstance(value, str):
                        value = value.strip() or None
                    values.append(value)
                if any(v is not None for v in values):
                    rows.append((r, values))
            sheets[key] = (title, rows)
        return titles, sheets
    finally:
        book.close()
