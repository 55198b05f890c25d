"""A sheet as a table: header row, known and extra columns, and data rows whose cells
convert to values while every problem is reported once, at its cell (`Experiments!D7`)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

from ..model import Problem
from .cells import text

__all__ = [
    "UNREADABLE",
    "Problems",
    "Row",
    "Sheet",
    "Table",
    "column_letter",
    "header_key",
    "read_table",
    "report_unknown_columns",
    "table_rows",
]

T = TypeVar("T")


class _Unreadable:
    """A cell whose problem is already reported (a formula without a saved value, #REF!…)."""

    def __repr__(self) -> str:
        return "<unreadable cell>"


UNREADABLE: Any = _Unreadable()


class Problems:
    """Every problem found, at most one per cell (the first is the root cause), the first
    LIMIT of them listed: a sheet of 50,000 bad rows is not worth a message per cell, and
    the memory and time of listing them all is unbounded (#12)."""

    LIMIT = 1_000

    def __init__(self) -> None:
        self.items: list[Problem] = []
        self.unlisted = 0
        self._cells: set[str] = set()

    def add(self, where: str, message: str) -> None:
        if where in self._cells:
            return
        if len(self.items) >= self.LIMIT:
            self.unlisted += 1
            return
        self._cells.add(where)
        self.items.append(Problem(where, message))

    def listed(self, key: Callable[[Problem], Any] | None = None) -> list[Problem]:
        """The problems to report, in `key` order, and a last line counting the unlisted."""
        items = sorted(self.items, key=key) if key else list(self.items)
        if self.unlisted:
            items.append(Problem("…", f"and {self.unlisted:,} more problems, not listed; fix the ones above "
                                 "(often one cause repeated down a column) and run nero again"))
        return items


@dataclass
class Sheet:
    """One sheet's non-blank rows: (1-based row number, cell values from column A)."""

    title: str
    rows: list[tuple[int, list[object]]]

    def ref(self, row: int, col: int) -> str:
        return f"{self.title}!{column_letter(col)}{row}"


@lru_cache(maxsize=4096)
def column_letter(col: int) -> str:
    """0 → A, 25 → Z, 26 → AA."""
    letters, n = "", col + 1
    while n:
        n, rest = divmod(n - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def header_key(header: str) -> str:
    """Header matching: case-insensitive, spaces and dashes count as underscores."""
    return re.sub(r"[\s\-]+", "_", header.strip().lower())


@dataclass
class Table:
    """A sheet with a header row: known columns by name, other headed columns in order."""

    sheet: Sheet
    header: int
    columns: dict[str, int]
    extra: list[tuple[str, int]]
    rows: list[tuple[int, list[object]]]
    headers: list[str]  # as written, in column order


def read_table(sheet: Sheet, known: Sequence[str], problems: Problems) -> Table | None:
    """The sheet's first row as headers (None for an empty sheet); values under no header are reported."""
    if not sheet.rows:
        return None
    header, cells = sheet.rows[0]
    columns: dict[str, int] = {}
    extra: list[tuple[str, int]] = []
    seen: dict[str, str] = {}
    headed: set[int] = set()
    headers: list[str] = []
    for c, value in enumerate(cells):
        if value is None:
            continue
        headed.add(c)
        if value is UNREADABLE:
            continue
        name = text(value)
        headers.append(name)
        key, ref = header_key(name), sheet.ref(header, c)
        if key in seen:
            problems.add(ref, f"column {name!r} appears twice (also {seen[key]}); keep one of them")
            continue
        seen[key] = ref
        if key in known:
            columns[key] = c
        else:
            extra.append((name, c))
    table = Table(sheet, header, columns, extra, sheet.rows[1:], headers)
    _check_headless_values(table, headed, problems)
    return table


def _check_headless_values(table: Table, headed: set[int], problems: Problems) -> None:
    reported: set[int] = set()
    for r, values in table.rows:
        for c, value in enumerate(values):
            if value is not None and c not in headed and c not in reported:
                reported.add(c)
                letter = column_letter(c)
                problems.add(table.sheet.ref(r, c), f"this column has no header, so its values mean nothing; "
                             f"type a column name in {letter}{table.header} or clear the column")


def report_unknown_columns(table: Table, known: Sequence[str], problems: Problems) -> None:
    for name, c in table.extra:
        problems.add(table.sheet.ref(table.header, c),
                     f"unknown column {name!r} in {table.sheet.title}; valid columns: {', '.join(known)}")


class Row:
    """One data row of a table, with converters that report problems at the right cell."""

    __slots__ = ("number", "problems", "table", "values")

    def __init__(self, table: Table, number: int, values: list[object], problems: Problems):
        self.table, self.number, self.values, self.problems = table, number, values, problems

    def ref(self, column: str) -> str:
        c = self.table.columns.get(column)
        return self.ref_at(c) if c is not None else f"{self.table.sheet.title}!{self.number}"

    def ref_at(self, c: int) -> str:
        return self.table.sheet.ref(self.number, c)

    def at(self, c: int) -> object:
        return self.values[c] if c < len(self.values) else None

    def raw(self, column: str) -> object:
        c = self.table.columns.get(column)
        return None if c is None else self.at(c)

    def get(self, column: str, convert: Callable[[Any, str], T], default: T) -> T:
        c = self.table.columns.get(column)  # `raw`, inlined: a row asks for some 20 columns (#14: 200,000 rows)
        if c is None or c >= len(self.values):
            return default
        value = self.values[c]
        if value is None or value is UNREADABLE:
            return default
        try:
            return convert(value, column)
        except ValueError as e:
            self.problems.add(self.ref(column), str(e))
            return default

    def require(self, column: str, convert: Callable[[Any, str], T], default: T, missing: str) -> T:
        if self.raw(column) is None:
            self.problems.add(self.ref(column), missing)
        return self.get(column, convert, default)


def table_rows(table: Table | None, problems: Problems) -> Iterator[Row]:
    """The table's data rows, one at a time (a Row each, made as it is read)."""
    if table is not None:
        for n, v in table.rows:
            yield Row(table, n, v, problems)
