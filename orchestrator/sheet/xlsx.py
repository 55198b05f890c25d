"""The xlsx file read as a stream (issue #14: a 200,000-row sheet took 161 s through
openpyxl): each sheet nero reads goes through expat once, a chunk at a time, and comes
out as its non-empty rows of typed cell values, as openpyxl's read-only mode gives them.

What a cell gives (what openpyxl gives with `data_only`, the value last saved with a
formula): numbers (int or float), text (shared or inline; formatted runs joined, phonetic
runs left out), booleans, dates and times (numbers in a date format, by the workbook's
epoch; ISO dates), and None for an empty cell. Two markers stand for a value that is not
there: `CellError` (the cell shows `#REF!`, `#DIV/0!`… or a date out of range) and
`NoSavedValue` (a formula saved without its value). Rows and columns are numbered as
openpyxl numbers them (an element without `r` follows the one before it; a row before
the previous one is skipped; a row is as wide as its last cell).

The styles part (which formats are dates) is parsed by openpyxl itself, the one thing
kept from it: it is small (bounds.py holds it under 2 MB and 100,000 elements).
Nothing is handed to this module before `bounds.check_bounds` has passed the file, so
every part is within its limits and has no DTD; the sheets it reads are checked as they
are read (`bounds.SheetLimits`: rows, columns, cells, nesting, elements, text lengths,
no DTD), in the same pass, and a sheet past a limit is read no further.
"""

from __future__ import annotations

import posixpath
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.parsers import expat

from .bounds import (
    CELLS,
    COLUMNS,
    DEPTH,
    FORMULA,
    LONGEST_RUN,
    ROW_NODES,
    ROWS,
    RUNS,
    SHEET_NODES,
    TEXT,
    Exceeded,
    SheetLimits,
)
from .table import column_letter

__all__ = ["DATE_FORMAT_IDS", "CellError", "NoSavedValue", "read_sheets"]

DATE_FORMAT_IDS = frozenset((*range(14, 23), 45, 46, 47))  # the built-in number formats that are dates or times

_CHUNK = 256 * 1024
_MAIN_TYPES = ("sheet.main+xml", "template.main+xml", "sheet.macroEnabled.main+xml",
               "template.macroEnabledTemplate.main+xml")


@dataclass(frozen=True)
class CellError:
    """A cell showing an error (`#REF!`, `#DIV/0!`, `#VALUE!` for a date out of range)."""

    text: object


@dataclass(frozen=True)
class NoSavedValue:
    """A formula cell saved without its value (openpyxl writes them so)."""

    formula: str


Rows = list[tuple[int, list[object]]]


def read_sheets(path: Path, wanted: Callable[[str], str | None], limits: SheetLimits | None = None
                ) -> tuple[list[str], dict[str, tuple[str, Rows]]]:
    """Every sheet title in order, and by the key `wanted` gives a worksheet's title (None:
    not read; of two titles with one key, the first is read) its title and rows: (1-based
    row number, values from column A), rows without a value left out. Damage raises
    (zipfile, KeyError, ValueError, expat.ExpatError…): the caller reports the file as
    unreadable. Each sheet is checked against `limits` as it is read (`check_bounds`
    gives them): a sheet past one is read no further and its problem is in
    `limits.problems`, which the caller reports instead of the rows."""
    limits = limits or SheetLimits({})
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        book = _workbook_part(archive, names)
        entries, date1904 = _workbook(archive, book)
        targets = _targets(archive, book, names)
        strings_part = next((t for t, kind in targets.values() if kind.endswith("/sharedStrings")), None)
        styles_part = next((t for t, kind in targets.values() if kind.endswith("/styles")), None)
        titles = [title for title, _ in entries]
        chosen: dict[str, tuple[str, str]] = {}  # key -> (title, part)
        for title, rid in entries:
            key = wanted(title)
            if key is not None and key not in chosen and targets.get(rid, ("", ""))[1].endswith("/worksheet"):
                chosen[key] = (title, targets[rid][0])
        if not chosen:
            return titles, {}
        strings = _shared_strings(archive, strings_part) if strings_part in names else []
        dates, durations = _date_styles(archive, styles_part) if styles_part in names else (set(), set())
        epoch: object = None
        if dates:
            from openpyxl.utils.datetime import CALENDAR_MAC_1904, CALENDAR_WINDOWS_1900

            epoch = CALENDAR_MAC_1904 if date1904 else CALENDAR_WINDOWS_1900
        sheets: dict[str, tuple[str, Rows]] = {}
        for key, (title, part) in chosen.items():
            reader = _SheetReader(strings, dates, durations, epoch, title, limits)
            try:
                _parse_sheet(archive, part, reader, limits)
            except Exceeded:
                if limits.cells > CELLS:
                    break  # reported at the sheet that went over
                continue
            reader.finish()
            sheets[key] = (title, reader.rows)
        return titles, sheets


# ----------------------------------------------------------------------- package parts


def _parse(archive: zipfile.ZipFile, part: str, handlers: dict[str, Any]) -> None:
    """Stream one part through expat (names keep their prefix: callers strip it)."""
    parser = expat.ParserCreate()
    parser.buffer_text = True
    parser.buffer_size = _CHUNK
    for name, handler in handlers.items():
        setattr(parser, name, handler)
    with archive.open(part) as stream:
        while chunk := stream.read(_CHUNK):
            parser.Parse(chunk, False)
        parser.Parse(b"", True)


def _parse_sheet(archive: zipfile.ZipFile, part: str, reader: _SheetReader, limits: SheetLimits) -> None:
    """`_parse` of a sheet, within the limits on XML: no DTD (no entity can expand), no
    tag or text run longer than LONGEST_RUN bytes (what expat buffers whole)."""
    parser = expat.ParserCreate()
    parser.buffer_text = True
    parser.buffer_size = _CHUNK

    def dtd(*_: object) -> None:
        limits.dtd(reader.title)

    parser.StartDoctypeDeclHandler = dtd
    parser.EntityDeclHandler = dtd
    parser.StartElementHandler = reader.start
    parser.EndElementHandler = reader.end
    parser.CharacterDataHandler = reader.data
    run = 0  # bytes since the last '<'
    with archive.open(part) as stream:
        while chunk := stream.read(_CHUNK):
            last = chunk.rfind(b"<")
            run = run + (chunk.find(b"<") if last >= 0 else len(chunk))
            if run > LONGEST_RUN:
                limits.long_run(reader.title)
            if last >= 0:
                run = len(chunk) - last - 1
            parser.Parse(chunk, False)
        parser.Parse(b"", True)


def _local(name: str) -> str:
    return name[name.rfind(":") + 1:]


def _workbook_part(archive: zipfile.ZipFile, names: set[str]) -> str:
    """The workbook part, by its content type as openpyxl finds it."""
    found: list[str] = []

    def start(name: str, attrs: dict[str, str]) -> None:
        if _local(name) == "Override" and attrs.get("ContentType", "").endswith(_MAIN_TYPES):
            found.append(attrs.get("PartName", "").lstrip("/"))

    _parse(archive, "[Content_Types].xml", {"StartElementHandler": start})
    part = next((p for p in found if p in names), "xl/workbook.xml")
    if part not in names:
        raise KeyError("the file contains no workbook part")
    return part


def _workbook(archive: zipfile.ZipFile, book: str) -> tuple[list[tuple[str, str]], bool]:
    """(title, relationship id) of each sheet, and whether dates count from 1904."""
    entries: list[tuple[str, str]] = []
    date1904 = [False]

    def start(name: str, attrs: dict[str, str]) -> None:
        tag = _local(name)
        if tag == "sheet":
            rid = next((v for k, v in attrs.items() if _local(k) == "id" and ":" in k), "")
            entries.append((attrs.get("name", ""), rid))
        elif tag == "workbookPr":
            date1904[0] = attrs.get("date1904", "").lower() in ("1", "true")

    _parse(archive, book, {"StartElementHandler": start})
    return entries, date1904[0]


def _targets(archive: zipfile.ZipFile, part: str, names: set[str]) -> dict[str, tuple[str, str]]:
    """Relationship id -> (part, relationship type) of what `part` refers to."""
    rels = posixpath.join(posixpath.dirname(part), "_rels", posixpath.basename(part) + ".rels")
    targets: dict[str, tuple[str, str]] = {}
    folder = posixpath.dirname(part)

    def start(name: str, attrs: dict[str, str]) -> None:
        if _local(name) == "Relationship" and attrs.get("TargetMode") != "External":
            target = attrs.get("Target", "")
            full = target.lstrip("/") if target.startswith("/") else posixpath.join(folder, target)
            targets[attrs.get("Id", "")] = (posixpath.normpath(full), attrs.get("Type", ""))

    if rels in names:
        _parse(archive, rels, {"StartElementHandler": start})
    return targets


class _Text:
    """The text of an `<si>` or `<is>`: its `<t>` pieces outside phonetic runs (`<rPh>`)."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.phonetic = 0
        self.collecting = False

    def start(self, tag: str) -> None:
        if tag == "rPh":
            self.phonetic += 1
        elif tag == "t" and not self.phonetic:
            self.collecting = True

    def end(self, tag: str) -> None:
        if tag == "rPh":
            self.phonetic -= 1
        elif tag == "t":
            self.collecting = False

    def take(self) -> str:
        text = "".join(self.pieces)
        self.pieces.clear()
        return text


def _shared_strings(archive: zipfile.ZipFile, part: str) -> list[str]:
    strings: list[str] = []
    text = _Text()

    def start(name: str, attrs: dict[str, str]) -> None:
        tag = name if ":" not in name else _local(name)
        if tag == "si":
            text.pieces.clear()
        text.start(tag)

    def end(name: str) -> None:
        tag = name if ":" not in name else _local(name)
        text.end(tag)
        if tag == "si":
            strings.append(text.take().replace("x005F_", ""))  # as openpyxl reads them

    def data(chunk: str) -> None:
        if text.collecting:
            text.pieces.append(chunk)

    _parse(archive, part, {"StartElementHandler": start, "EndElementHandler": end, "CharacterDataHandler": data})
    return strings


def _date_styles(archive: zipfile.ZipFile, part: str) -> tuple[set[int], set[int]]:
    """The cell styles (by index) whose number format is a date, and those a duration.
    openpyxl decides (and takes half a second to import) only when a style may be one: it
    uses a format of the workbook's own or a built-in date format."""
    custom: set[str] = set()
    used: set[str] = set()
    depth = {"cellXfs": 0}

    def start(name: str, attrs: dict[str, str]) -> None:
        tag = _local(name)
        if tag == "numFmt":
            custom.add(attrs.get("numFmtId", ""))
        elif tag == "cellXfs":
            depth["cellXfs"] += 1
        elif tag == "xf" and depth["cellXfs"]:
            used.add(attrs.get("numFmtId", "0"))

    def end(name: str) -> None:
        if _local(name) == "cellXfs":
            depth["cellXfs"] -= 1

    _parse(archive, part, {"StartElementHandler": start, "EndElementHandler": end})
    if not any(n in custom or (n.isdigit() and int(n) in DATE_FORMAT_IDS) for n in used):
        return set(), set()
    from openpyxl.styles.stylesheet import Stylesheet
    from openpyxl.xml.functions import fromstring

    sheet = Stylesheet.from_tree(fromstring(archive.read(part)))
    if not sheet.cell_styles:
        return set(), set()
    return set(sheet.date_formats), set(sheet.timedelta_formats)


# ------------------------------------------------------------------------------ a sheet


_DIGITS = "0123456789"
_OUTSIDE = 1 << 62  # `first` outside a cell: no element there counts as a cell's text
_COLUMNS: dict[str, int] = {}  # letters -> 1-based column, as met


def _column(ref: str) -> int:
    """The 1-based column of a reference like 'AB12' (0 when it names none)."""
    letters = ref.rstrip(_DIGITS)
    col = _COLUMNS.get(letters)
    if col is None:
        col = 0
        for ch in letters.lstrip("$").rstrip("$").upper():
            if not "A" <= ch <= "Z":
                col = 0
                break
            col = col * 26 + ord(ch) - 64
        if len(_COLUMNS) < 20_000:
            _COLUMNS[letters] = col
    return col


class _SheetReader:
    """One worksheet's rows, cell by cell, as expat hands over its elements, counted
    against `limits` as they come (see bounds.SheetLimits)."""

    def __init__(self, strings: list[str], dates: set[int], durations: set[int], epoch: object, title: str,
                 limits: SheetLimits):
        self.strings, self.dates, self.durations, self.epoch = strings, dates, durations, epoch
        self.title, self.limits = title, limits
        self.depth = 0
        self.in_row = False
        self.row_nodes = 0  # XML elements and attributes in the current row
        self.others = 0  # and besides rows
        self.first = _OUTSIDE  # row_nodes at the current <c> (a cell's text: at most RUNS more)
        self.tlen = 0  # characters of the current cell's inline text (its value's and formula's are their lists')
        self.rows: Rows = []
        self.expected = 1  # openpyxl's next row: a row numbered before it is skipped
        self.row = 0
        self.col = 0
        self.cells: list[tuple[int, object]] = []
        self.kind = "n"
        self.style = 0
        self.ref = ""
        self.field = ""  # 'v' or 'f' while inside one
        self.value: list[str] = []
        self.formula: list[str] | None = None
        self.formula_attrs: dict[str, str] = {}
        self.text: _Text | None = None  # inside <is>
        self.shared: dict[str, tuple[str, str]] = {}  # shared formula index -> (text, ref) of its master

    def handlers(self) -> dict[str, Any]:
        return {"StartElementHandler": self.start, "EndElementHandler": self.end,
                "CharacterDataHandler": self.data}

    def start(self, name: str, attrs: dict[str, str]) -> None:
        tag = name if ":" not in name else _local(name)
        self.depth += 1
        if self.depth > DEPTH:
            self.limits.deep(self.title)
        nodes = 1 + len(attrs)  # elements and attributes: in a row, or besides rows
        if tag == "row" or self.in_row:
            self.row_nodes = nodes if tag == "row" else self.row_nodes + nodes
            self.in_row = True
            if self.row_nodes > ROW_NODES:
                self.limits.row_nodes(self.title, self.row + (tag == "row"))
        else:
            self.others += nodes
            if self.others > SHEET_NODES:
                self.limits.sheet_nodes(self.title)
        if tag == "c":
            self.ref = ref = attrs.get("r", "")
            col = (_COLUMNS.get(ref.rstrip(_DIGITS)) or _column(ref)) if ref else 0
            self.col = col if col else self.col + 1
            if self.col > COLUMNS:
                self.limits.columns(self._where(), self.col)
            self.kind = attrs.get("t", "n")
            s = attrs.get("s")
            self.style = int(s) if s else 0
            self.value = []
            self.first = self.row_nodes
            self.tlen = 0
            if self.formula is not None or self.text is not None:
                self.formula = self.text = None
        elif tag == "row":
            self._row_done()
            r = attrs.get("r")
            self.row = int(float(r)) if r else self.row + 1
            self.col = 0
            if self.row > ROWS:
                self.limits.rows(self.title, self.row)
        elif self.row_nodes - self.first > RUNS:
            self.limits.runs(self._where())
        elif tag == "v":
            self.field = "v"
        elif tag == "f":
            self.field = "f"
            self.formula = []
            self.formula_attrs = attrs
        elif tag == "is":
            self.text = _Text()
        elif tag == "t":
            self.field = "t"
            if self.text is not None:
                self.text.start(tag)
        elif self.text is not None:
            self.text.start(tag)

    def end(self, name: str) -> None:
        tag = name if ":" not in name else _local(name)
        self.depth -= 1
        if tag == "c":
            self.first = _OUTSIDE
            v = self.value
            if (self.tlen or self.formula is not None or (v and (len(v) > 1 or len(v[0]) > TEXT))
                    or (self.kind == "s" and self.limits.long_strings)):
                self._check_cell()
            self.cells.append((self.col, self._value()))
        elif tag == "v":
            self.field = ""
        elif tag == "row":
            self.in_row = False
            self.limits.cells += self.col
            if self.limits.cells > CELLS:
                self.limits.too_many_cells(self.title, self.row)
        elif tag == "f":
            self.field = ""
            attrs = self.formula_attrs
            if attrs.get("t") == "shared" and "si" in attrs and self.formula:  # a shared formula's first cell
                self.shared[attrs["si"]] = ("=" + "".join(self.formula), self.ref)
        elif tag == "t":
            self.field = ""
            if self.text is not None:
                self.text.end(tag)
        elif self.text is not None and tag != "is":
            self.text.end(tag)

    def data(self, chunk: str) -> None:
        field = self.field
        if field == "v":
            self.value.append(chunk)
        elif field == "f":
            self.formula.append(chunk)  # type: ignore[union-attr]
        elif field == "t":
            self.tlen += len(chunk)
            if self.text is not None and self.text.collecting:
                self.text.pieces.append(chunk)

    def _where(self) -> str:
        return f"{self.title}!{column_letter(self.col - 1)}{self.row}"

    def _check_cell(self) -> None:
        """The cell's text and formula within Excel's limits (a shared string's length is
        the one `check_bounds` found, reported at each cell that shows it)."""
        value = "".join(self.value)
        formula = sum(map(len, self.formula or ()))
        text = self.tlen + (len(value) if self.kind != "s" else 0)
        if self.kind == "s" and value.strip().isdigit():
            text = self.limits.long_strings.get(int(value.strip()), 0)
        if text > TEXT or formula > FORMULA:
            self.limits.cell(self._where(), text, formula)

    def finish(self) -> None:
        self._row_done()

    def _row_done(self) -> None:
        if not self.cells:
            if self.row >= self.expected:
                self.expected = self.row + 1
            return
        if self.row >= self.expected:  # as openpyxl: a row before the previous one is skipped
            self.expected = self.row + 1
            values: list[object] = [None] * self.cells[-1][0]
            for col, value in self.cells:
                if 0 < col <= len(values):
                    values[col - 1] = value
            if any(v is not None for v in values):
                self.rows.append((self.row, values))
        self.cells = []

    def _value(self) -> object:
        """The cell's value as openpyxl gives it with data_only, then cleaned: text stripped
        (blank text is None)."""
        kind = self.kind
        if kind == "inlineStr":
            value: Any = None if self.text is None else self.text.take()
        else:
            value = "".join(self.value) or None
            if value is not None:
                if kind == "n":
                    value = float(value) if ("." in value or "E" in value or "e" in value) else int(value)
                    if self.style in self.dates:
                        value = self._date(value)
                elif kind == "s":
                    value = self.strings[int(value)]
                elif kind == "b":
                    value = bool(int(value))
                elif kind == "d":
                    from openpyxl.utils.datetime import from_ISO8601

                    value = from_ISO8601(value)
        if kind == "e":
            return CellError(value)
        if value is None and self.formula is not None:
            return NoSavedValue(self._formula_text())
        if isinstance(value, str):
            value = value.strip()
            return value or None
        return value

    def _date(self, value: float) -> object:
        from openpyxl.utils.datetime import from_excel

        try:
            return from_excel(value, self.epoch, timedelta=self.style in self.durations)
        except (OverflowError, ValueError):
            return CellError("#VALUE!")

    def _formula_text(self) -> str:
        """The formula as openpyxl shows it: `=` and its text; a shared formula's copy
        translated from its first cell."""
        text = "=" + "".join(self.formula or ())
        si = self.formula_attrs.get("si")
        if text == "=" and self.formula_attrs.get("t") == "shared" and si in self.shared:
            from openpyxl.formula.translate import Translator

            master, at = self.shared[si]
            text = Translator(master, at).translate_formula(self.ref)
        return text


