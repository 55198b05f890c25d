"""Hostile experiments workbooks (issue #12): zip bombs in every kind of part, huge cell
text, too many rows, columns and cells, deep XML, DTDs and entity bombs, lying zip
headers, damaged and foreign files; each at most 10 MB on disk.

`cases()` builds them as (name, file bytes); `expect(name)` says what nero does with one:
'refused' (exit 2 with a message, nothing dispatched) or 'ok' (read like any workbook).
The zips are written by hand (`_zip`) so that a part can unpack to gigabytes from a
megabyte on disk (a deflate block repeated after a full flush) and so that the central
directory can lie. The 'ok' cases are valid nero workbooks (one Experiments row).
"""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["MAX_DISK", "cases", "expect", "names", "run_measured"]

MAX_DISK = 10 * 1024 * 1024  # every case is at most this size on disk

MB = 1024 * 1024
_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PKG_REL = "http://schemas.openxmlformats.org/package/2006/relationships"
_CT = "application/vnd.openxmlformats-officedocument.spreadsheetml"


@dataclass(frozen=True)
class _Part:
    """One zip member, already compressed (method 8) or stored (method 0)."""

    name: str
    data: bytes
    crc: int
    size: int
    method: int = 8


def _deflate(name: str, raw: bytes) -> _Part:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return _Part(name, c.compress(raw) + c.flush(), zlib.crc32(raw), len(raw))


def _stored(name: str, raw: bytes) -> _Part:
    return _Part(name, raw, zlib.crc32(raw), len(raw), method=0)


def _bomb(name: str, head: bytes, unit: bytes, size: int, tail: bytes = b"") -> _Part:
    """head + unit repeated to about `size` bytes + tail, deflated in a few kilobytes per
    megabyte: one block compressed after a full flush is identical each time, so it is
    compressed once and repeated."""
    chunk = unit * max(1, MB // len(unit))
    count = max(1, size // len(chunk))
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = [c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)]
    block = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    assert block == again, "deflate blocks differ after a full flush"
    out.append(block * count)
    out.append(c.compress(tail) + c.flush())
    crc = zlib.crc32(head)
    for _ in range(count):
        crc = zlib.crc32(chunk, crc)
    crc = zlib.crc32(tail, crc)
    return _Part(name, b"".join(out), crc, len(head) + len(chunk) * count + len(tail))


def _zip(parts: list[_Part], declared: dict[str, int] | None = None) -> bytes:
    """A zip file; `declared` overrides the uncompressed size the headers state."""
    declared = declared or {}
    body, central = bytearray(), bytearray()
    for p in parts:
        name = p.name.encode()
        size = declared.get(p.name, p.size)
        fields = (20, 0, p.method, 0, 0x21, p.crc & 0xFFFFFFFF, len(p.data), size, len(name))
        offset = len(body)
        body += struct.pack("<IHHHHHIIIHH", 0x04034B50, *fields, 0) + name + p.data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, *fields, 0, 0, 0, 0, 0, offset) + name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(parts), len(parts), len(central), len(body), 0)
    return bytes(body + central + end)


# ------------------------------------------------------------------- a valid workbook's parts

def _xml(text: str) -> bytes:
    return ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n' + text).encode()


def _col(n: int) -> str:
    letters = ""
    while n:
        n, rest = divmod(n - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def _esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _inline(ref: str, text: str) -> str:
    return f'<c r="{ref}" t="inlineStr"><is><t>{_esc(text)}</t></is></c>'


def _row(r: int, values: list[str]) -> str:
    return f'<row r="{r}">' + "".join(_inline(f"{_col(i)}{r}", v) for i, v in enumerate(values, 1)) + "</row>"


def _sheet(rows: str, extra: str = "") -> bytes:
    return _xml(f'<worksheet xmlns="{_MAIN}" xmlns:r="{_REL}"><sheetData>{rows}</sheetData>{extra}</worksheet>')


HEADER = ["id", "command", "notes"]
GOOD_ROWS = _row(1, HEADER) + _row(2, ["a", "echo hi", "fine"])


def _book(sheets: dict[str, bytes | _Part] | None = None, *, strings: bytes | _Part | None = None,
          styles: bytes | _Part | None = None, extra: list[_Part] = (),  # type: ignore[assignment]
          replace: dict[str, bytes | _Part] | None = None, declared: dict[str, int] | None = None) -> bytes:
    """A workbook with `sheets` (title -> worksheet XML; default: one good Experiments sheet),
    optional shared strings and styles, extra members, and members replaced by name."""
    sheets = sheets if sheets is not None else {"Experiments": _sheet(GOOD_ROWS)}
    overrides = [f'<Override PartName="/xl/workbook.xml" ContentType="{_CT}.sheet.main+xml"/>']
    rels, entries, members = [], [], {}
    for i, (title, xml) in enumerate(sheets.items(), 1):
        path = f"xl/worksheets/sheet{i}.xml"
        overrides.append(f'<Override PartName="/{path}" ContentType="{_CT}.worksheet+xml"/>')
        rels.append(f'<Relationship Id="rId{i}" Type="{_REL}/worksheet" Target="worksheets/sheet{i}.xml"/>')
        entries.append(f'<sheet name="{_esc(title)}" sheetId="{i}" r:id="rId{i}"/>')
        members[path] = xml
    n = len(sheets)
    if strings is not None:
        overrides.append(f'<Override PartName="/xl/sharedStrings.xml" ContentType="{_CT}.sharedStrings+xml"/>')
        rels.append(f'<Relationship Id="rId{n + 1}" Type="{_REL}/sharedStrings" Target="sharedStrings.xml"/>')
        members["xl/sharedStrings.xml"] = strings
    if styles is not None:
        overrides.append(f'<Override PartName="/xl/styles.xml" ContentType="{_CT}.styles+xml"/>')
        rels.append(f'<Relationship Id="rId{n + 2}" Type="{_REL}/styles" Target="styles.xml"/>')
        members["xl/styles.xml"] = styles
    head = {
        "[Content_Types].xml": _xml(
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>' + "".join(overrides) + "</Types>"),
        "_rels/.rels": _xml(
            f'<Relationships xmlns="{_PKG_REL}"><Relationship Id="rId1" '
            f'Type="{_REL}/officeDocument" Target="xl/workbook.xml"/></Relationships>'),
        "xl/workbook.xml": _xml(f'<workbook xmlns="{_MAIN}" xmlns:r="{_REL}"><sheets>{"".join(entries)}</sheets></workbook>'),
        "xl/_rels/workbook.xml.rels": _xml(f'<Relationships xmlns="{_PKG_REL}">{"".join(rels)}</Relationships>'),
    }
    members = {**head, **members, **(replace or {})}
    parts = [m if isinstance(m, _Part) else _deflate(name, m) for name, m in members.items()]
    return _zip(parts + list(extra), declared)


def _strings(items: list[str]) -> bytes:
    body = "".join(f"<si><t>{_esc(s)}</t></si>" for s in items)
    return _xml(f'<sst xmlns="{_MAIN}" count="{len(items)}" uniqueCount="{len(items)}">{body}</sst>')


def _shared_sheet(rows: list[list[int]]) -> bytes:
    """A sheet whose cells are shared strings by index."""
    out = []
    for r, idx in enumerate(rows, 1):
        cells = "".join(f'<c r="{_col(c)}{r}" t="s"><v>{i}</v></c>' for c, i in enumerate(idx, 1))
        out.append(f'<row r="{r}">{cells}</row>')
    return _sheet("".join(out))


def _styles(xfs: int) -> bytes:
    xf = '<xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>'
    return _xml(
        f'<styleSheet xmlns="{_MAIN}"><fonts count="1"><font><sz val="11"/><name val="Calibri"/></font></fonts>'
        '<fills count="1"><fill><patternFill patternType="none"/></fill></fills>'
        '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
        f'<cellStyleXfs count="1">{xf}</cellStyleXfs><cellXfs count="{xfs}">{xf * xfs}</cellXfs></styleSheet>')


_XML_HEAD = b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
_SHEET_OPEN = f'<worksheet xmlns="{_MAIN}"><sheetData>'.encode()
_SHEET_CLOSE = b"</sheetData></worksheet>"


def _deep(depth: int, tag: str = "x") -> str:
    return f"<{tag}>" * depth + f"</{tag}>" * depth


_LAUGHS = ('<!DOCTYPE lolz [<!ENTITY lol "lol">'
           + "".join(f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10))
           + "]>")


def _rows_of_cells(rows: int, cols: int, start: int = 2) -> str:
    return "".join(f'<row r="{r}">' + "".join(f'<c r="{_col(c)}{r}"><v>1</v></c>' for c in range(1, cols + 1))
                   + "</row>" for r in range(start, start + rows))


# ------------------------------------------------------------------------------ the cases

def _build() -> dict[str, tuple[str, Callable[[], bytes]]]:
    """name -> (expected outcome, builder)."""
    good = lambda: _book()  # noqa: E731
    long_row = lambda text: _sheet(GOOD_ROWS + _row(3, ["b", "echo b", text]))  # noqa: E731
    big_sst_head = _XML_HEAD + f'<sst xmlns="{_MAIN}"><si><t>'.encode()
    c: dict[str, tuple[str, Callable[[], bytes]]] = {
        # --- fine workbooks, some near the limits
        "ok_minimal": ("ok", good),
        "ok_shared_strings": ("ok", lambda: _book(
            {"Experiments": _shared_sheet([[0, 1], [2, 3]])}, strings=_strings(["id", "command", "a", "echo hi"]))),
        "ok_text_at_limit": ("ok", lambda: _book({"Experiments": long_row("n" * 32767)})),
        "ok_many_long_texts": ("ok", lambda: _book({"Experiments": _sheet(
            _row(1, HEADER) + "".join(_row(r, [f"r{r}", "echo x", "n" * 30000]) for r in range(2, 202)))})),
        "ok_thousand_rows": ("ok", lambda: _book({"Experiments": _sheet(
            _row(1, HEADER) + "".join(_row(r, [f"r{r}", "echo x", "n"]) for r in range(2, 1002)))})),
        "ok_big_other_sheet": ("ok", lambda: _book({"Experiments": _sheet(GOOD_ROWS), "Data": _sheet(
            _rows_of_cells(100_000, 3, start=1))})),
        "ok_image_8mb": ("ok", lambda: _book(extra=[_stored("xl/media/image1.png", random.Random(1).randbytes(8 * MB))])),
        "ok_styles_2k": ("ok", lambda: _book(styles=_styles(2000))),
        "ok_1000_sheets": ("ok", lambda: _book({"Experiments": _sheet(GOOD_ROWS),
                                                **{f"S{i}": _sheet("") for i in range(999)}})),
        "ok_near_limits_text_and_formulas": ("ok", lambda: _book({"Experiments": _sheet(
            _row(1, HEADER) + "".join(
                f'<row r="{r}">{_inline(f"A{r}", f"r{r}")}{_inline(f"B{r}", "echo x")}<c r="C{r}" t="str">'
                f'<f>REPT("n",30000)</f><v>{"n" * 30000}</v></c></row>' for r in range(2, 1002)))})),
        "ok_shared_strings_8mb_tiny": ("ok", lambda: _book(
            {"Experiments": _shared_sheet([[0, 1], [2, 3]])},
            strings=_strings(["id", "command", "a", "echo hi", *(f"{i:x}" for i in range(390_000))]))),
        "ok_styles_2mb": ("ok", lambda: _book(styles=_styles(31_000))),
        "ok_styles_99k_elements": ("ok", lambda: _book(styles=_xml(
            f'<styleSheet xmlns="{_MAIN}"><cellXfs>' + "<xf/>" * 99_000 + "</cellXfs></styleSheet>"))),
        "styles_tiny_formats_2mb": ("refused", lambda: _book(styles=_xml(
            f'<styleSheet xmlns="{_MAIN}"><cellXfs>' + "<xf/>" * 400_000 + "</cellXfs></styleSheet>"))),
        "styles_tiny_fonts_2mb": ("refused", lambda: _book(styles=_xml(
            f'<styleSheet xmlns="{_MAIN}"><fonts>' + "<font/>" * 290_000 + "</fonts></styleSheet>"))),
        "ok_defined_names_2mb": ("ok", lambda: _book(replace={"xl/workbook.xml": _xml(
            f'<workbook xmlns="{_MAIN}" xmlns:r="{_REL}"><sheets><sheet name="Experiments" sheetId="1" r:id="rId1"/>'
            '</sheets><definedNames>' + "".join(f'<definedName name="n{i}">Experiments!$A$1</definedName>'
                                                for i in range(34_000)) + "</definedNames></workbook>")})),
        "sheets_12k_one_part": ("refused", lambda: _many_titles(12_000)),
        "near_limits_four_sheets": ("refused", lambda: _book({
            title: _sheet(_row(1, ["key", "value"] if title == "Settings" else ["id", "command"] if title ==
                               "Experiments" else ["name", "kind"]) + "".join(
                f'<row r="{r}">{_inline(f"A{r}", f"x{r}")}<c r="B{r}" t="str"><f>REPT("n",30000)</f>'
                f'<v>{"n" * 30000}</v></c></row>' for r in range(2, 382)))
            for title in ("Experiments", "Clusters", "Metrics", "Settings")})),
        "cells_at_limits_four_sheets": ("refused", lambda: _four_sheets_of_cells(41_667)),  # 1,000,008 cells
        "cells_near_limit_four_sheets": ("refused", lambda: _four_sheets_of_cells(41_600)),  # 998,400: all read
        # --- parts over the limit of their role
        "styles_3mb": ("refused", lambda: _book(styles=_styles(40_000))),
        "sheet_40mb": ("refused", lambda: _book({"Experiments": _bomb(
            "xl/worksheets/sheet1.xml", _XML_HEAD + _SHEET_OPEN + GOOD_ROWS.encode(), b" " * 64, 40 * MB,
            _SHEET_CLOSE)})),
        "sheets_read_60mb": ("refused", lambda: _book({
            "Experiments": _bomb("xl/worksheets/sheet1.xml", _XML_HEAD + _SHEET_OPEN + GOOD_ROWS.encode(),
                                 b" " * 64, 30 * MB, _SHEET_CLOSE),
            "Settings": _bomb("xl/worksheets/sheet2.xml", _XML_HEAD + _SHEET_OPEN, b" " * 64, 30 * MB,
                              _SHEET_CLOSE)})),
        "four_titles_one_part": ("refused", lambda: _four_titles_one_part(20)),
        "chartsheet_image_refs": ("refused", lambda: _chartsheet_images(400, 5)),
        "ok_chartsheet_image": ("ok", lambda: _chartsheet_images(1, 1)),
        "bad_cells_50k_rows": ("refused", lambda: _book({"Experiments": _sheet(
            _row(1, ["id", "command", "cpus", "mem", "time", "retries"]) + "".join(
                _row(r, ["same", "echo", "x", "y", "z", "q"]) for r in range(2, 50_001)))})),
        # --- zip bombs: parts that unpack to gigabytes
        "bomb_shared_strings_one_text": ("refused", lambda: _book(strings=_bomb(
            "xl/sharedStrings.xml", big_sst_head, b"A" * 64, 1024 * MB, b"</t></si></sst>"))),
        "bomb_shared_strings_many_texts": ("refused", lambda: _book(strings=_bomb(
            "xl/sharedStrings.xml", _XML_HEAD + f'<sst xmlns="{_MAIN}">'.encode(), b"<si><t>ab</t></si>",
            1024 * MB, b"</sst>"))),
        "bomb_shared_strings_9mb": ("refused", lambda: _book(strings=_strings(["x" * 1000] * 9 * 1024))),
        "bomb_sheet_cells": ("refused", lambda: _book({"Experiments": _bomb(
            "xl/worksheets/sheet1.xml", _XML_HEAD + _SHEET_OPEN, b'<row><c t="n"><v>1</v></c></row>',
            1024 * MB, _SHEET_CLOSE)})),
        "bomb_sheet_whitespace": ("refused", lambda: _book({"Experiments": _bomb(
            "xl/worksheets/sheet1.xml", _XML_HEAD + _SHEET_OPEN, b" " * 64, 1024 * MB, _SHEET_CLOSE)})),
        "bomb_sheet_100mb_rows": ("refused", lambda: _book({"Experiments": _bomb(
            "xl/worksheets/sheet1.xml", _XML_HEAD + _SHEET_OPEN, b"<row/>", 100 * MB, _SHEET_CLOSE)})),
        "bomb_other_sheet": ("refused", lambda: _book({"Experiments": _sheet(GOOD_ROWS), "Data": _bomb(
            "xl/worksheets/sheet2.xml", _XML_HEAD + _SHEET_OPEN, b"<row><c><v>1</v></c></row>",
            2048 * MB, _SHEET_CLOSE)})),
        "bomb_styles": ("refused", lambda: _book(styles=_bomb(
            "xl/styles.xml", _XML_HEAD + f'<styleSheet xmlns="{_MAIN}"><cellXfs>'.encode(),
            b'<xf numFmtId="0" fontId="0"/>', 1024 * MB, b"</cellXfs></styleSheet>"))),
        "bomb_workbook_xml": ("refused", lambda: _book(replace={"xl/workbook.xml": _bomb(
            "xl/workbook.xml", _XML_HEAD + f'<workbook xmlns="{_MAIN}" xmlns:r="{_REL}">'.encode(), b" " * 64,
            1024 * MB, b'<sheets><sheet name="Experiments" sheetId="1" r:id="rId1"/></sheets></workbook>')})),
        "bomb_content_types": ("refused", lambda: _book(replace={"[Content_Types].xml": _bomb(
            "[Content_Types].xml", _XML_HEAD + b'<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">',
            b"<!-- padding padding padding -->", 1024 * MB, b"</Types>")})),
        "bomb_rels": ("refused", lambda: _book(replace={"_rels/.rels": _bomb(
            "_rels/.rels", _XML_HEAD + f'<Relationships xmlns="{_PKG_REL}">'.encode(), b"\n" * 64, 1024 * MB,
            f'<Relationship Id="rId1" Type="{_REL}/officeDocument" Target="xl/workbook.xml"/></Relationships>'.encode())})),
        "bomb_theme": ("refused", lambda: _book(extra=[_bomb(
            "xl/theme/theme1.xml", _XML_HEAD + b'<a:theme xmlns:a="http://schemas.openxmlformats.org/drawingml/2006/main">',
            b" " * 64, 1024 * MB, b"</a:theme>")])),
        "bomb_core_properties": ("refused", lambda: _book(extra=[_bomb(
            "docProps/core.xml", _XML_HEAD + b'<cp:coreProperties xmlns:cp="http://schemas.openxmlformats.org/package/2006/metadata/core-properties">',
            b" " * 64, 1024 * MB, b"</cp:coreProperties>")])),
        "bomb_total_media": ("refused", lambda: _book(extra=[
            _bomb(f"xl/media/image{i}.bin", b"", b"\0" * 64, 64 * MB) for i in range(8)])),
        "bomb_declared_size_lies": ("refused", lambda: _book(
            {"Experiments": _bomb("xl/worksheets/sheet1.xml", _XML_HEAD + _SHEET_OPEN, b" " * 64, 1024 * MB,
                                  _SHEET_CLOSE)}, declared={"xl/worksheets/sheet1.xml": 4096})),
        "bomb_declared_size_huge": ("refused", lambda: _book(declared={"xl/worksheets/sheet1.xml": 0xFFFF0000})),
        # --- cells: text, formulas, numbers
        "text_inline_40000": ("refused", lambda: _book({"Experiments": long_row("n" * 40000)})),
        "text_shared_40000": ("refused", lambda: _book(
            {"Experiments": _shared_sheet([[0, 1, 2], [3, 4, 5]])},
            strings=_strings(["id", "command", "notes", "a", "echo hi", "n" * 40000]))),
        "text_inline_5mb": ("refused", lambda: _book({"Experiments": long_row("n" * (5 * MB))})),
        "text_inline_8mb_entities": ("refused", lambda: _book({"Experiments": long_row("<" * (2 * MB))})),
        "shared_string_runs_unused": ("refused", lambda: _book(
            {"Experiments": _shared_sheet([[0, 1], [2, 3]])},
            strings=_xml(f'<sst xmlns="{_MAIN}"><si><t>id</t></si><si><t>command</t></si><si><t>a</t></si>'
                         '<si><t>echo hi</t></si><si>' + "<r><t>a</t></r>" * 500_000 + "</si></sst>"))),
        "shared_string_empty_runs_unused": ("refused", lambda: _book(
            {"Experiments": _shared_sheet([[0, 1], [2, 3]])},
            strings=_xml(f'<sst xmlns="{_MAIN}"><si><t>id</t></si><si><t>command</t></si><si><t>a</t></si>'
                         '<si><t>echo hi</t></si><si>' + "<r><t/></r>" * 700_000 + "</si></sst>"))),
        "shared_strings_junk_between": ("refused", lambda: _book(
            {"Experiments": _shared_sheet([[0, 1], [2, 3]])},
            strings=_xml(f'<sst xmlns="{_MAIN}">' + ("<x/>" * 3000 + "<si><t>id</t></si>") * 600 + "</sst>"))),
        "inline_empty_runs": ("refused", lambda: _book({"Experiments": _sheet(
            GOOD_ROWS + '<row r="3"><c r="C3" t="inlineStr"><is>' + "<r><t/></r>" * 1_000_000 + "</is></c></row>")})),
        "ok_20k_merged_ranges": ("ok", lambda: _book({"Experiments": _sheet(GOOD_ROWS, "<mergeCells>" + "".join(
            f'<mergeCell ref="E{r}:F{r}"/>' for r in range(1, 20_001)) + "</mergeCells>")})),
        "attributes_90k_per_cell": ("refused", lambda: _book({"Experiments": _sheet(
            GOOD_ROWS + '<row r="3">' + "".join(f'<c r="{_col(c)}3" ' + " ".join(
                f'a{i}=""' for i in range(90_000)) + "><v>1</v></c>" for c in range(1, 31)) + "</row>")})),
        "row_of_junk_elements": ("refused", lambda: _book({"Experiments": _sheet(
            GOOD_ROWS + '<row r="3">' + "<x/>" * 2_000_000 + "</row>")})),
        "sheet_junk_elements": ("refused", lambda: _book({"Experiments": _sheet(GOOD_ROWS, "<x/>" * 2_000_000)})),
        "cell_junk_elements": ("refused", lambda: _book({"Experiments": _sheet(
            GOOD_ROWS + '<row r="3"><c r="C3">' + "<x/>" * 2_000_000 + "</c></row>")})),
        "text_inline_rich_runs": ("refused", lambda: _book({"Experiments": _sheet(
            GOOD_ROWS + '<row r="3"><c r="A3" t="inlineStr"><is>' + "<r><t>abcdefghij</t></r>" * 5000
            + "</is></c></row>")})),
        "formula_100k": ("refused", lambda: _book({"Experiments": _sheet(
            GOOD_ROWS + '<row r="3"><c r="A3"><f>' + "1+" * 50000 + "1</f><v>50001</v></c></row>")})),
        "formula_9000": ("refused", lambda: _book({"Experiments": _sheet(
            GOOD_ROWS + '<row r="3"><c r="C3" t="str"><f>"' + "x" * 9000 + '"</f><v>x</v></c></row>')})),
        "number_100k_digits": ("refused", lambda: _book({"Experiments": _sheet(
            GOOD_ROWS + '<row r="3"><c r="C3"><v>' + "9" * 100000 + "</v></c></row>")})),
        "attribute_5mb": ("refused", lambda: _book({"Experiments": _sheet(
            GOOD_ROWS + '<row r="3"><c r="C3" foo="' + "a" * (5 * MB) + '"><v>1</v></c></row>')})),
        "tag_name_5mb": ("refused", lambda: _book({"Experiments": _sheet(GOOD_ROWS + "<" + "a" * (5 * MB) + "/>")})),
        # --- shape of a sheet
        "rows_260000": ("refused", lambda: _book({"Experiments": _sheet(
            _row(1, HEADER) + "".join(f'<row r="{r}"><c r="C{r}"><v>1</v></c></row>' for r in range(2, 260_002)))})),
        "row_index_1048576": ("refused", lambda: _book({"Experiments": _sheet(
            GOOD_ROWS + '<row r="1048576"><c r="A1048576"><v>1</v></c></row>')})),
        "rows_without_index_400k": ("refused", lambda: _book({"Experiments": _bomb(
            "xl/worksheets/sheet1.xml", _XML_HEAD + _SHEET_OPEN, b"<row><c><v>1</v></c></row>", 10 * MB, _SHEET_CLOSE)})),
        "columns_1500": ("refused", lambda: _book({"Experiments": _sheet(
            GOOD_ROWS + "<row r=\"3\">" + "".join(f'<c r="{_col(c)}3"><v>1</v></c>' for c in range(1, 1501)) + "</row>")})),
        "column_XFD": ("refused", lambda: _book({"Experiments": _sheet(GOOD_ROWS + '<row r="3"><c r="XFD3"><v>1</v></c></row>')})),
        "cells_1050k": ("refused", lambda: _book({"Experiments": _sheet(_row(1, HEADER) + _rows_of_cells(105_000, 10))})),
        "sparse_far_cells": ("refused", lambda: _book({"Experiments": _sheet(
            _row(1, HEADER) + "".join(f'<row r="{r}"><c r="ALL{r}"><v>1</v></c></row>' for r in range(2, 20002)))})),
        "many_problems_at_once": ("refused", lambda: _book({
            "Experiments": _sheet(_row(1, HEADER) + _row(2, ["a", "echo", "n" * 40000]) + _row(3, ["b", "x" * 33000])),
            "Settings": _sheet('<row r="1"><c r="XFD1"><v>1</v></c></row>')})),
        # --- XML: depth, DTDs, entities
        "deep_sheet": ("refused", lambda: _book({"Experiments": _sheet(GOOD_ROWS, _deep(100_000))})),
        "deep_styles": ("refused", lambda: _book(styles=_xml(f'<styleSheet xmlns="{_MAIN}">{_deep(10_000)}</styleSheet>'))),
        "deep_workbook_xml": ("refused", lambda: _book(replace={"xl/workbook.xml": _xml(
            f'<workbook xmlns="{_MAIN}" xmlns:r="{_REL}"><sheets><sheet name="Experiments" sheetId="1" r:id="rId1"/>'
            f'</sheets>{_deep(200_000)}</workbook>')})),
        "deep_shared_strings": ("refused", lambda: _book(
            {"Experiments": _shared_sheet([[0, 1], [2, 3]])},
            strings=_xml(f'<sst xmlns="{_MAIN}"><si><t>id</t></si><si><t>command</t></si><si><t>a</t></si>'
                         f'<si><t>echo</t></si><si>{_deep(50_000, "r")}</si></sst>'))),
        "billion_laughs_shared_strings": ("refused", lambda: _book(
            {"Experiments": _shared_sheet([[0, 1], [2, 3]])},
            strings=('<?xml version="1.0"?>' + _LAUGHS + f'<sst xmlns="{_MAIN}"><si><t>id</t></si><si><t>command</t></si>'
                     '<si><t>a</t></si><si><t>&lol9;</t></si></sst>').encode())),
        "billion_laughs_sheet": ("refused", lambda: _book({"Experiments": (
            '<?xml version="1.0"?>' + _LAUGHS + f'<worksheet xmlns="{_MAIN}"><sheetData>{GOOD_ROWS}'
            '<row r="3"><c r="C3" t="inlineStr"><is><t>&lol9;</t></is></c></row></sheetData></worksheet>').encode()})),
        "external_entity_workbook": ("refused", lambda: _book(replace={"xl/workbook.xml": (
            '<?xml version="1.0"?><!DOCTYPE w [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            f'<workbook xmlns="{_MAIN}" xmlns:r="{_REL}"><sheets><sheet name="&x;" sheetId="1" r:id="rId1"/>'
            '</sheets></workbook>').encode()})),
        "doctype_content_types": ("refused", lambda: _book(replace={"[Content_Types].xml": (
            b'<?xml version="1.0"?><!DOCTYPE Types SYSTEM "http://example.invalid/t.dtd">'
            + _good_part("[Content_Types].xml", strip_decl=True))})),
        # --- not a workbook at all, or a damaged one
        "empty_file": ("refused", lambda: b""),
        "not_a_zip": ("refused", lambda: b"id,command\na,echo hi\n"),
        "xls_magic": ("refused", lambda: bytes.fromhex("D0CF11E0A1B11AE1") + b"\0" * 4096),
        "corrupt_zip": ("refused", lambda: b"PK\x03\x04" + random.Random(2).randbytes(100_000)),
        "truncated_zip": ("refused", lambda: _book()[:300]),
        "truncated_zip_end": ("refused", lambda: _book()[:-10]),
        "bad_crc": ("refused", lambda: _bad_crc(_book())),
        "zip_without_workbook": ("refused", lambda: _zip([_deflate("readme.txt", b"hello")])),
        "broken_sheet_xml": ("refused", lambda: _book({"Experiments": _xml(f'<worksheet xmlns="{_MAIN}"><sheetData><row>')})),
        "many_zip_members_60k": ("refused", lambda: _book(extra=[_stored(f"x/{i}", b"") for i in range(60_000)])),
    }
    return c


def _four_sheets_of_cells(rows: int) -> bytes:
    """nero's four sheets, each a formula (so two passes) and `rows` rows of 6 short texts."""
    return _book({title: _sheet('<row r="1"><c r="A1" t="str"><f>"x"</f><v>x</v></c></row>' + "".join(
        "<row>" + '<c t="inlineStr"><is><t>ab</t></is></c>' * 6 + "</row>" for _ in range(rows)))
        for title in ("Experiments", "Clusters", "Metrics", "Settings")})


def _four_titles_one_part(size_mb: int) -> bytes:
    """nero's four sheet titles, all on one sheet part of `size_mb` MB: read four times."""
    rels = "".join(f'<Relationship Id="rId{i}" Type="{_REL}/worksheet" Target="worksheets/sheet1.xml"/>'
                   for i in range(1, 5))
    entries = "".join(f'<sheet name="{t}" sheetId="{i}" r:id="rId{i}"/>'
                      for i, t in enumerate(("Experiments", "Clusters", "Metrics", "Settings"), 1))
    return _book({"Experiments": _bomb("xl/worksheets/sheet1.xml", _XML_HEAD + _SHEET_OPEN + GOOD_ROWS.encode(),
                                       b" " * 64, size_mb * MB, _SHEET_CLOSE)}, replace={
        "xl/workbook.xml": _xml(f'<workbook xmlns="{_MAIN}" xmlns:r="{_REL}"><sheets>{entries}</sheets></workbook>'),
        "xl/_rels/workbook.xml.rels": _xml(f'<Relationships xmlns="{_PKG_REL}">{rels}</Relationships>')})


_PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                     "1f15c4890000000d4944415478da63f8cfc0f01f0005000201a3e8f9a20000000049454e44ae426082")


def _chartsheet_images(refs: int, image_mb: int) -> bytes:
    """A chartsheet beside Experiments whose drawing shows one picture of `image_mb` MB
    `refs` times (openpyxl reads a chartsheet's pictures, one copy per reference)."""
    draw_ns = ('xmlns:xdr="http://schemas.openxmlformats.org/drawingml/2006/spreadsheetDrawing" '
               f'xmlns:a="http://schemas.openxmlformats.org/drawingml/2006/main" xmlns:r="{_REL}"')
    pic = ('<xdr:absoluteAnchor><xdr:pos x="0" y="0"/><xdr:ext cx="1" cy="1"/><xdr:pic><xdr:nvPicPr>'
           '<xdr:cNvPr id="1" name="p"/><xdr:cNvPicPr/></xdr:nvPicPr><xdr:blipFill><a:blip r:embed="rId1"/>'
           '</xdr:blipFill><xdr:spPr/></xdr:pic><xdr:clientData/></xdr:absoluteAnchor>')
    chart = _xml(f'<chartsheet xmlns="{_MAIN}" xmlns:r="{_REL}"><sheetPr/><sheetViews><sheetView workbookViewId="0"/>'
                 '</sheetViews><drawing r:id="rId1"/></chartsheet>')
    good = _book({"Experiments": _sheet(GOOD_ROWS), "Chart1": _sheet("")})
    import io
    import zipfile

    src = zipfile.ZipFile(io.BytesIO(good))
    links = src.read("xl/_rels/workbook.xml.rels").decode().replace(
        f'Id="rId2" Type="{_REL}/worksheet" Target="worksheets/sheet2.xml"',
        f'Id="rId2" Type="{_REL}/chartsheet" Target="chartsheets/sheet1.xml"')
    return _book({"Experiments": _sheet(GOOD_ROWS), "Chart1": _sheet("")}, replace={
        "xl/_rels/workbook.xml.rels": links.encode()}, extra=[
        _deflate("xl/chartsheets/sheet1.xml", chart),
        _deflate("xl/chartsheets/_rels/sheet1.xml.rels", _xml(
            f'<Relationships xmlns="{_PKG_REL}"><Relationship Id="rId1" Type="{_REL}/drawing" '
            'Target="../drawings/drawing1.xml"/></Relationships>')),
        _deflate("xl/drawings/drawing1.xml", _xml(f"<xdr:wsDr {draw_ns}>{pic * refs}</xdr:wsDr>")),
        _deflate("xl/drawings/_rels/drawing1.xml.rels", _xml(
            f'<Relationships xmlns="{_PKG_REL}"><Relationship Id="rId1" Type="{_REL}/image" '
            'Target="../media/image1.png"/></Relationships>')),
        _bomb("xl/media/image1.png", _PNG, b"\0" * 64, image_mb * MB)])


def _many_titles(count: int) -> bytes:
    """Experiments, and `count` more sheet entries all pointing at one empty sheet part."""
    good = _book()
    import io
    import zipfile

    src = zipfile.ZipFile(io.BytesIO(good))
    entries = "".join(f'<sheet name="S{i}" sheetId="{i + 2}" r:id="rX{i}"/>' for i in range(count))
    rels = "".join(f'<Relationship Id="rX{i}" Type="{_REL}/worksheet" Target="worksheets/sheet2.xml"/>'
                   for i in range(count))
    book = src.read("xl/workbook.xml").decode().replace("</sheets>", entries + "</sheets>")
    links = src.read("xl/_rels/workbook.xml.rels").decode().replace("</Relationships>", rels + "</Relationships>")
    return _book({"Experiments": _sheet(GOOD_ROWS), "Empty": _sheet("")},
                 replace={"xl/workbook.xml": book.encode(), "xl/_rels/workbook.xml.rels": links.encode()})


def _good_part(name: str, strip_decl: bool = False) -> bytes:
    """A member of the good workbook, uncompressed."""
    import io
    import zipfile

    raw = zipfile.ZipFile(io.BytesIO(_book())).read(name)
    return raw.split(b"\n", 1)[1] if strip_decl else raw


def _bad_crc(data: bytes) -> bytes:
    """Flip a byte inside the first member's compressed data."""
    b = bytearray(data)
    name_len = struct.unpack_from("<H", b, 26)[0]
    b[30 + name_len + 5] ^= 0xFF
    return bytes(b)


_CASES = _build()


def names() -> list[str]:
    """Every case's name, in a stable order."""
    return list(_CASES)


def expect(name: str) -> str:
    """'refused' (exit 2, a message, nothing dispatched) or 'ok' (read like any workbook)."""
    return _CASES[name][0]


def cases(only: list[str] | None = None) -> list[tuple[str, bytes]]:
    """(name, file bytes) of every case (or those in `only`), each at most MAX_DISK bytes."""
    out = []
    for name in only or names():
        data = _CASES[name][1]()
        assert len(data) <= MAX_DISK, f"{name} is {len(data)} bytes on disk"
        out.append((name, data))
    return out


_LAUNCH = r"""
import json, os, resource, signal, subprocess, sys, time
cmd, cwd, timeout, cap = json.loads(sys.argv[1])
if cap:
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
start = time.monotonic()
proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
os.set_blocking(proc.stdout.fileno(), False)
head, out, killed = b"", b"", False
while True:
    chunk = proc.stdout.read()
    if chunk:
        head = head or chunk[:4000]
        out = (out + chunk)[-200000:]
    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    if pid:
        break
    if time.monotonic() - start > timeout:
        proc.kill()
        killed = True
        pid, status, usage = os.wait4(proc.pid, 0)
        break
    time.sleep(0.02)
out += proc.stdout.read() or b""
print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "seconds": time.monotonic() - start,
                  "peak_mb": usage.ru_maxrss / 1024, "killed": killed,
                  "head": (head or out)[:4000].decode(errors="replace"),
                  "output": out[-20000:].decode(errors="replace")}))
"""


def run_measured(cmd: Sequence[str], cwd: str, timeout: float = 120,
                 cap_mb: int = 0) -> dict[str, object]:
    """Run `cmd` and return its exit code (`rc`), `seconds`, `peak_mb` (its own peak RSS),
    `killed` (timed out), the start of its output (`head`) and the end (`output`). It is started by a small launcher
    process, so the peak is the command's own: a forked child's peak RSS counts its
    parent's size at the fork. `cap_mb` caps its address space (0: no cap)."""
    arg = json.dumps([list(cmd), cwd, timeout, cap_mb * 1024 * 1024])
    done = subprocess.run([sys.executable, "-c", _LAUNCH, arg], capture_output=True, text=True,
                          timeout=timeout + 60, check=True)
    return json.loads(done.stdout)
