"""The limits on an experiments workbook, checked before it is parsed (#12).

A small .xlsx file can unpack to gigabytes, and the reading (xlsx.py) keeps some parts
whole (the shared strings, the styles through openpyxl, every cell of the sheets nero
reads), so nothing is read until:

1. the zip's central directory is within bounds: each part's unpacked size (by its role)
   and all parts together, and the number of parts. Python's zipfile never yields more
   than the size the directory states (a lie ends in a CRC error), so these figures bound
   everything read afterwards;
2. each XML part besides the sheets nero reads streams through expat, a chunk at a time,
   holding nothing but counters: no DTD (so no entity can expand), a bounded nesting
   depth, no tag or text longer than `LONGEST_RUN` bytes; the number of sheets;
3. the sheets nero reads are checked as they are read (xlsx.py, one expat pass over each:
   #14, the check was a pass of its own costing as much as the read), by `SheetLimits`:
   the same DTD, depth and run limits, the rows, columns and cells (cells counted across
   those sheets), the XML elements of a row, of a cell's text and outside rows, and the
   length of each cell's text and formula (a shared string's length, found by step 2, is
   reported at the cells that show it). The reader counts as it goes and calls
   `SheetLimits` when a count passes its limit, so it never holds more than the limits
   allow; the sheet's reading stops there (`Exceeded`), the problem is listed.

Every limit exceeded becomes a `Problem` (the cell's address where it is a cell's), all
at once, as one `WorkbookError`. A file that is no zip, or a damaged part, is left to the
normal reading, which reports it; this module only refuses what is too big.
"""

from __future__ import annotations

import posixpath
import re
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn
from xml.parsers import expat

from ..errors import WorkbookError
from .table import Problems

__all__ = [
    "CELLS", "CHARTSHEETS", "COLUMNS", "DEPTH", "ELEMENTS", "FORMULA", "LONGEST_RUN", "OTHER_PART", "PART",
    "PARTS", "ROW_NODES", "ROWS", "RUNS", "SHARED_STRINGS", "SHEET", "SHEETS", "SHEETS_READ", "SHEET_NODES",
    "TEXT", "TOTAL", "Exceeded", "SheetLimits", "check_bounds",
]

MB = 1024 * 1024
TOTAL = 256 * MB  # all parts together, unpacked
PARTS = 10_000  # parts in the zip
PART = 64 * MB  # any one part (pictures and embedded files included)
SHARED_STRINGS = 8 * MB  # the shared strings part: openpyxl keeps every string in memory
SHEET = 32 * MB  # one sheet nero reads
SHEETS_READ = 48 * MB  # the sheets nero reads, together
OTHER_PART = 2 * MB  # every other XML part (workbook, styles, theme, relationships…)
RUNS = 4_000  # XML elements and attributes in one cell's text (formatted runs): held as a tree
ROW_NODES = 100_000  # XML elements and attributes in one row (openpyxl holds a row's tree)
SHEET_NODES = 200_000  # XML elements and attributes in a sheet besides rows (2 M `<x/>` took 220 MB)
ELEMENTS = 100_000  # XML elements in one of those (2 MB of `<xf/>` took 261 MB in openpyxl)
CHARTSHEETS = 8 * MB  # what the chart sheets show, each chart and picture counted each time it is shown
SHEETS = 1_000  # sheets in the workbook (openpyxl and nero walk them all)
TEXT = 32_767  # characters in a cell: Excel's own limit
FORMULA = 8_192  # characters in a formula: Excel's own limit
ROWS = 250_000  # per sheet (#14: a 200,000-row sweep; #12's 300 MB bound measured in bench/README.md)
COLUMNS = 1_000  # per sheet
CELLS = 1_000_000  # in the sheets nero reads together, counting the empty cells left of each row's last one
DEPTH = 48  # XML nesting
LONGEST_RUN = MB  # bytes of one tag or text without a '<' (what expat buffers whole)

_CHUNK = 64 * 1024
_RESAVE = "save the workbook again from Excel or LibreOffice (File › Save As › .xlsx)"
_CT = "application/vnd.openxmlformats-officedocument.spreadsheetml"
_BINARY = re.compile(r"\.(png|jpe?g|gif|bmp|tiff?|emf|wmf|bin|ico|wdp|pdf|mp[34]|wav|svg)$", re.IGNORECASE)


class _Stop(Exception):
    """Stop scanning this part: a limit that makes the rest of it not worth reading; the
    argument, if any, is the problem to report at the part."""


def check_bounds(path: Path, wanted: Callable[[str], bool]) -> SheetLimits:
    """Raise WorkbookError listing every limit the workbook at `path` exceeds but those of
    the cells of the sheets nero reads (`wanted` says which titles): the `SheetLimits` it
    returns checks them as they are read. Returns quietly when the file is within bounds,
    and when it is no zip or is damaged (left to the reading, whose error nero reports)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return SheetLimits({})
    with archive:
        check = _Check(path.name, archive, wanted)
        problems = check.run()
    if problems.items:
        raise WorkbookError(str(path), problems.listed())
    return SheetLimits(check.long_strings)


def _mb(size: int) -> str:
    return f"{size / MB:,.1f} MB" if size < 10 * MB else f"{size // MB:,} MB"


class _Check:
    """One workbook's check: sizes from the central directory, then the XML parts."""

    def __init__(self, name: str, archive: zipfile.ZipFile, wanted: Callable[[str], bool]):
        self.name, self.archive, self.wanted = name, archive, wanted
        self.problems = Problems()
        self.infos = {i.filename: i for i in archive.infolist()}
        self.sheet_count = 0  # the workbook part's <sheet> entries
        self.long_strings: dict[int, int] = {}  # shared string index -> length, of those longer than TEXT
        self.add = self.problems.add

    def run(self) -> Problems:
        if not self._sizes_fit():
            return self.problems  # nothing is parsed when a part is too big to read
        types = self._content_types()
        self._scan("_rels/.rels")
        book = next((p for p, t in types.items() if t.endswith("main+xml")), "xl/workbook.xml")
        rels = _rels_of(book)
        for part in (book, rels):
            info = self.infos.get(part)
            if info and info.file_size > OTHER_PART:
                self._too_big(part, info.file_size, OTHER_PART, "a part that is not a sheet")
        if self.problems.items:
            return self.problems
        sheets = self._sheets(book)
        if self.sheet_count > SHEETS:
            self.add(book, f"the workbook has {self.sheet_count:,} sheets; the limit is {SHEETS:,}. Delete the sheets "
                     "you do not need, or keep them in another file")
        if self.problems.items:
            return self.problems
        # (part, title) of each sheet nero reads: two titles on one part are read twice
        read = [(part, title) for title, part, _ in sheets if self.wanted(title) and part in self.infos]
        parts_read = {part for part, _ in read}
        unread = {part for _, part, kind in sheets if part not in parts_read and not kind.endswith("/chartsheet")}
        strings = [p for p, t in types.items() if t == f"{_CT}.sharedStrings+xml"]
        self._sizes_by_role(strings, read, unread)
        if self.problems.items:
            return self.problems
        shown = 0  # by the chart sheets: openpyxl reads them, and keeps their charts
        for title, part, kind in sheets:
            if kind.endswith("/chartsheet") and shown <= CHARTSHEETS:
                shown += self._shown(part)
                if shown > CHARTSHEETS:
                    self.add(title, f"the chart sheets up to this one show charts and pictures of {_mb(shown)} "
                             f"(each counted every time it is shown); the limit is {_mb(CHARTSHEETS)}. Delete "
                             "chart sheets, or keep them in another file")
        for part in strings:
            self._scan(part, _SharedStrings(self.long_strings))
        done = {"[Content_Types].xml", "_rels/.rels", book, rels, *strings, *parts_read, *unread}
        for part in self.infos:
            if part not in done and not _BINARY.search(part) and not part.endswith("/"):
                self._scan(part)
        return self.problems  # the sheets nero reads: as they are read (SheetLimits)

    # -------------------------------------------------------------------- sizes, unparsed

    def _sizes_fit(self) -> bool:
        """The central directory's figures: parts, each part, all parts together."""
        infos = list(self.infos.values())
        if len(self.archive.infolist()) > PARTS:
            self.add(self.name, f"the file holds {len(self.archive.infolist()):,} parts; the limit is {PARTS:,}. "
                     f"A workbook has a few dozen: the file may be damaged or not a workbook; {_RESAVE}")
        for i in infos:
            if i.file_size > PART:
                fix = ("far more than a spreadsheet program writes: the file may be damaged or crafted; "
                       + _RESAVE) if i.filename.endswith((".xml", ".rels")) else "remove that picture or file"
                self.add(i.filename, f"unpacks to {_mb(i.file_size)}; the limit for one part is {_mb(PART)}: {fix}")
        total = sum(i.file_size for i in infos)
        if total > TOTAL and not self.problems.items:
            self.add(self.name, f"the workbook unpacks to {_mb(total)}; the limit is {_mb(TOTAL)}. Remove large "
                     "pictures or embedded files, or keep data nero does not need in another file")
        head = [self.infos.get(p) for p in ("[Content_Types].xml", "_rels/.rels")]
        for i in head:
            if i and i.file_size > OTHER_PART:
                self._too_big(i.filename, i.file_size, OTHER_PART, "a part that is not a sheet")
        return not self.problems.items

    def _too_big(self, part: str, size: int, limit: int, what: str) -> None:
        self.add(part, f"unpacks to {_mb(size)}; the limit for {what} is {_mb(limit)}. "
                 f"That is far more than a spreadsheet program writes for it: the file may be damaged or "
                 f"crafted; {_RESAVE}")

    def _sizes_by_role(self, strings: list[str], read: list[tuple[str, str]], unread: set[str]) -> None:
        """The shared strings, the sheets nero reads, every other XML part."""
        for part in strings:
            info = self.infos.get(part)
            if info and info.file_size > SHARED_STRINGS:
                self.add(part, f"the text of the cells unpacks to {_mb(info.file_size)}; the "
                         f"limit is {_mb(SHARED_STRINGS)}. Shorten long texts, move them to files the commands "
                         f"read, or split the experiments into several workbooks")
        together = 0
        for part, title in read:
            size = self.infos[part].file_size
            together += size
            if size > SHEET:
                self.add(title, f"the sheet (part {part}) unpacks to {_mb(size)}; the limit is "
                         f"{_mb(SHEET)}. Delete unused rows and columns (formatting too), or split the "
                         "experiments into several workbooks")
        if together > SHEETS_READ and not self.problems.items:
            self.add(self.name, f"the sheets nero reads unpack to {_mb(together)} together; the limit is "
                     f"{_mb(SHEETS_READ)}. Delete unused rows and columns, or split the experiments into "
                     "several workbooks")
        for part, info in self.infos.items():
            if part in strings or part in unread or any(part == p for p, _ in read) or _BINARY.search(part):
                continue
            if info.file_size > OTHER_PART:
                self._too_big(part, info.file_size, OTHER_PART, "a part that is not a sheet")

    # ----------------------------------------------------------------- package structure

    def _content_types(self) -> dict[str, str]:
        """part -> content type, from [Content_Types].xml (overrides, then defaults)."""
        overrides: dict[str, str] = {}
        defaults: dict[str, str] = {}

        def start(tag: str, attrs: dict[str, str]) -> None:
            if tag == "Override" and "PartName" in attrs:
                overrides[attrs["PartName"].lstrip("/")] = attrs.get("ContentType", "")
            elif tag == "Default" and "Extension" in attrs:
                defaults[attrs["Extension"].lower()] = attrs.get("ContentType", "")

        self._scan("[Content_Types].xml", _Visitor(start))
        return {part: overrides.get(part, defaults.get(posixpath.splitext(part)[1][1:].lower(), ""))
                for part in self.infos}

    def _sheets(self, book: str) -> list[tuple[str, str, str]]:
        """(title, part, relationship type) of every sheet the workbook part lists."""
        entries: list[tuple[str, str]] = []

        def sheet(tag: str, attrs: dict[str, str]) -> None:
            if tag == "sheet":
                rid = next((v for k, v in attrs.items() if k.endswith(":id")), "")
                entries.append((attrs.get("name", ""), rid))

        self._scan(book, _Visitor(sheet))
        targets = self._targets(book)
        self.sheet_count = len(entries)
        return [(title, *targets[rid]) for title, rid in entries if rid in targets]

    def _targets(self, part: str) -> dict[str, tuple[str, str]]:
        """Id -> (part, relationship type) of the parts `part` refers to."""
        targets: dict[str, tuple[str, str]] = {}
        folder = posixpath.dirname(part)

        def rel(tag: str, attrs: dict[str, str]) -> None:
            if tag == "Relationship" and attrs.get("TargetMode") != "External":
                target = attrs.get("Target", "")
                full = target.lstrip("/") if target.startswith("/") else posixpath.join(folder, target)
                targets[attrs.get("Id", "")] = (posixpath.normpath(full), attrs.get("Type", ""))

        self._scan(_rels_of(part), _Visitor(rel))
        return targets

    def _shown(self, part: str) -> int:
        """The bytes a chart sheet shows: openpyxl reads each chart and picture its drawings
        show once per time it is shown (a picture shown 1,000 times is read 1,000 times)."""
        shown = 0
        for drawing, kind in self._targets(part).values():
            if not kind.endswith("/drawing"):
                continue
            refs: dict[str, int] = {}

            def ref(tag: str, attrs: dict[str, str], refs: dict[str, int] = refs) -> None:
                for key, value in attrs.items():
                    if ":" in key and key.endswith((":embed", ":id")):
                        refs[value] = refs.get(value, 0) + 1

            self._scan(drawing, _Visitor(ref))
            for rid, (target, _) in self._targets(drawing).items():
                if rid in refs and target in self.infos:
                    shown += refs[rid] * self.infos[target].file_size
        return shown

    # ------------------------------------------------------------------------ streaming

    def _scan(self, part: str, visitor: _Visitor | None = None, where: str = "") -> None:
        """Stream one part through expat: no DTD, bounded depth and runs; `visitor` sees
        the elements. A damaged part ends the scan quietly (openpyxl reports it)."""
        info = self.infos.get(part)
        if info is None:
            return
        visitor = visitor or _Visitor()
        parser = expat.ParserCreate()
        parser.buffer_text = True
        parser.buffer_size = _CHUNK

        def doctype(*_: object) -> None:
            raise _Stop("declares a DTD (<!DOCTYPE …>); a workbook never needs one, and its entities "
                        "could expand without end, so nero does not read it")

        parser.StartDoctypeDeclHandler = doctype
        parser.EntityDeclHandler = doctype
        parser.StartElementHandler = visitor.start_element
        parser.EndElementHandler = visitor.end_element
        parser.CharacterDataHandler = visitor.text
        run = 0  # bytes since the last '<'
        try:
            with self.archive.open(info) as stream:
                while chunk := stream.read(_CHUNK):
                    last = chunk.rfind(b"<")
                    run = run + (chunk.find(b"<") if last >= 0 else len(chunk))
                    if run > LONGEST_RUN:
                        raise _Stop(f"one XML tag or text runs over {_mb(LONGEST_RUN)} without a break")
                    if last >= 0:
                        run = len(chunk) - last - 1
                    parser.Parse(chunk, False)
                parser.Parse(b"", True)
        except _Stop as stop:
            if stop.args:
                self.add(where or part, f"{stop.args[0]}; {_RESAVE}")
        except (expat.ExpatError, zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError,
                NotImplementedError, RuntimeError):
            return  # damaged: the normal reading reports it


class _Visitor:
    """What a scan does with a part's elements (tags without their namespace prefix):
    count the depth, and call `start` for each."""

    most = ELEMENTS  # elements in the part (openpyxl makes an object of each)

    def __init__(self, start: Callable[[str, dict[str, str]], None] | None = None):
        self._start = start
        self.depth = 0
        self.elements = 0

    def start_element(self, name: str, attrs: dict[str, str]) -> None:
        self.depth += 1
        self.elements += 1
        if self.depth > DEPTH:
            raise _Stop(f"its XML is nested deeper than {DEPTH} levels")
        if self.elements > self.most:
            raise _Stop(f"it holds more than {self.most:,} XML elements, the limit for a part that is not a "
                        "sheet (openpyxl makes an object of each; bloated cell styles do this)")
        self.start(name[name.find(":") + 1:], attrs)

    def end_element(self, name: str) -> None:
        self.depth -= 1
        self.end(name[name.find(":") + 1:])

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        if self._start:
            self._start(tag, attrs)

    def end(self, tag: str) -> None:
        pass

    def text(self, data: str) -> None:
        pass


class _SharedStrings(_Visitor):
    """Notes the index and length of each shared string longer than TEXT (the part's size
    bounds its elements: each becomes at most a short string)."""

    most = SHARED_STRINGS

    def __init__(self, long_strings: dict[int, int]):
        super().__init__()
        self.long = long_strings
        self.index = self.length = 0
        self.nodes = self.outside = 0  # elements and attributes in the current <si>, and outside
        self.in_text = False

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        if tag == "si":  # openpyxl holds one string's tree at a time, and all between strings
            self.length, self.outside, self.nodes = 0, self.nodes, 0
        elif tag == "t":
            self.in_text = True
        self.nodes += 1 + len(attrs)
        if self.nodes > RUNS:
            raise _Stop(f"over {RUNS:,} XML elements and attributes in string {self.index + 1:,} (formatted "
                        f"runs) or between strings; the limit is {RUNS:,}")

    def end(self, tag: str) -> None:
        if tag == "t":
            self.in_text = False
        elif tag == "si":
            self.nodes = self.outside
            if self.length > TEXT:
                self.long[self.index] = self.length
            self.index += 1

    def text(self, data: str) -> None:
        if self.in_text:
            self.length += len(data)


class Exceeded(Exception):
    """A sheet nero reads went past a limit while it was read: its reading stops there
    (the problem is in `SheetLimits.problems`)."""


class SheetLimits:
    """The limits on the sheets nero reads, checked while xlsx.py reads them (one pass over
    each sheet). The reader counts what it meets: rows and columns (numbered as it numbers
    them, so what it allocates is what is checked), cells across the sheets (`cells`, each
    row counting up to its last cell), XML nesting, elements and attributes in a row, in a
    cell's text and besides rows, each cell's text and formula lengths; past a limit it
    calls the method below, which lists the problem and raises `Exceeded` (a cell's text
    or formula too long is listed and the reading goes on, until the list is full).
    `long_strings`: the length of each shared string longer than TEXT, by index."""

    def __init__(self, long_strings: dict[int, int]):
        self.long_strings = long_strings
        self.problems = Problems()
        self.cells = 0  # in the sheets read so far

    def _stop(self, where: str, message: str) -> NoReturn:
        self.problems.add(where, message)
        raise Exceeded

    def damaged(self, title: str, why: str) -> NoReturn:
        """A DTD, nesting too deep, a tag or text too long: the sheet is not read on."""
        self._stop(title, f"{why}; {_RESAVE}")

    def dtd(self, title: str) -> NoReturn:
        self.damaged(title, "declares a DTD (<!DOCTYPE …>); a workbook never needs one, and its entities could "
                     "expand without end, so nero does not read it")

    def deep(self, title: str) -> NoReturn:
        self.damaged(title, f"its XML is nested deeper than {DEPTH} levels")

    def long_run(self, title: str) -> NoReturn:
        self.damaged(title, f"one XML tag or text runs over {_mb(LONGEST_RUN)} without a break")

    def row_nodes(self, title: str, row: int) -> NoReturn:
        self._stop(title, f"row {row:,} holds over {ROW_NODES:,} XML elements and attributes; the limit is "
                   f"{ROW_NODES:,}; {_RESAVE}")

    def sheet_nodes(self, title: str) -> NoReturn:
        self._stop(title, f"over {SHEET_NODES:,} XML elements and attributes besides rows (merged ranges, links, "
                   f"formats…); the limit is {SHEET_NODES:,}. Clear unused formatting, or {_RESAVE}")

    def rows(self, title: str, row: int) -> NoReturn:
        self._stop(title, f"row {row:,} is beyond the limit of {ROWS:,} rows per sheet; delete the rows below your "
                   "table (formatting too: select them, Delete Rows), or split the experiments into several "
                   "workbooks")

    def columns(self, where: str, col: int) -> NoReturn:
        self._stop(where, f"column {col:,} is beyond the limit of {COLUMNS:,} columns per sheet; delete the "
                   "columns right of your table (formatting too)")

    def runs(self, where: str) -> NoReturn:
        self._stop(where, f"text is made of over {RUNS:,} XML elements and attributes (formatted runs); the limit "
                   f"is {RUNS:,}")

    def too_many_cells(self, title: str, row: int) -> NoReturn:
        self._stop(title, f"more than {CELLS:,} cells by row {row:,}, in the sheets nero reads together (counting "
                   f"the empty cells left of each row's last one); the limit is {CELLS:,}. Delete unused rows and "
                   "columns, or split the experiments into several workbooks")

    def cell(self, where: str, text: int, formula: int) -> None:
        """A cell's text or formula past Excel's own limits (`text`, `formula`: lengths)."""
        if text > TEXT:
            self.problems.add(where, f"text is {text:,} characters; the limit is {TEXT:,} (Excel's own). Shorten "
                              "it, or put it in a file the command reads")
        elif formula > FORMULA:
            self.problems.add(where, f"formula is {formula:,} characters; the limit is {FORMULA:,} (Excel's own). "
                              "Shorten it, or type its value")
        if self.problems.unlisted:
            raise Exceeded  # the list is full: the rest would not be shown


def _rels_of(part: str) -> str:
    """The relationships part of `part`: xl/workbook.xml -> xl/_rels/workbook.xml.rels."""
    return posixpath.join(posixpath.dirname(part), "_rels", posixpath.basename(part) + ".rels")
