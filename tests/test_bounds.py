"""The workbook's limits (#12: a small .xlsx could unpack to gigabytes and take 4× that in
memory): every limit is refused by the real command line before openpyxl parses the file,
exit 2, with a message naming the limit and the part, sheet or cell; a bomb is refused
within 300 MB; workbooks within the limits still read."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from conftest import nero
from hostile_workbooks import MAX_DISK, cases, expect, names, run_measured

from orchestrator.sheet import write_example_workbook

# case -> what the refusal must say (a regular expression over the whole output)
LIMITS = {
    "bomb_total_media": r"experiments\.xlsx: the workbook unpacks to 512 MB; the limit is 256 MB",
    "bomb_sheet_100mb_rows": r"xl/worksheets/sheet1\.xml: unpacks to 99 MB; the limit for one part is 64 MB",
    "many_zip_members_60k": r"the file holds 60,005 parts; the limit is 10,000",
    "bomb_shared_strings_9mb": r"xl/sharedStrings\.xml: the text of the cells unpacks to 8\.9 MB; the limit is 8\.0 MB",
    "styles_3mb": r"xl/styles\.xml: unpacks to 2\.4 MB; the limit for a part that is not a sheet is 2\.0 MB",
    "sheet_40mb": r"Experiments: the sheet \(part xl/worksheets/sheet1\.xml\) unpacks to 40 MB; the limit is 32 MB",
    "sheets_read_60mb": r"the sheets nero reads unpack to 60 MB together; the limit is 48 MB",
    "four_titles_one_part": r"the sheets nero reads unpack to 80 MB together; the limit is 48 MB",
    "text_inline_40000": r"Experiments!C3: text is 40,000 characters; the limit is 32,767 \(Excel's own\)",
    "text_shared_40000": r"Experiments!C2: text is 40,000 characters; the limit is 32,767 \(Excel's own\)",
    "formula_9000": r"Experiments!C3: formula is 9,002 characters; the limit is 8,192 \(Excel's own\)",
    "rows_260000": r"Experiments: row 250,001 is beyond the limit of 250,000 rows per sheet",
    "columns_1500": r"Experiments!ALM3: column 1,001 is beyond the limit of 1,000 columns per sheet",
    "cells_1050k": r"Experiments: more than 1,000,000 cells by row 100,001, in the sheets nero reads together",
    "cells_at_limits_four_sheets": r"Settings: more than 1,000,000 cells by row [\d,]+, in the sheets nero reads together",
    "deep_sheet": r"Experiments: its XML is nested deeper than 48 levels",
    "billion_laughs_shared_strings": r"xl/sharedStrings\.xml: declares a DTD",
    "sheets_12k_one_part": r"xl/workbook\.xml: the workbook has 12,001 sheets; the limit is 1,000",
    "chartsheet_image_refs": r"Chart1: the chart sheets up to this one show charts and pictures of 2,000 MB .*"
                             r"the limit is 8\.0 MB",
    "styles_tiny_formats_2mb": r"xl/styles\.xml: it holds more than 100,000 XML elements",
    "inline_empty_runs": r"Experiments!C3: text is made of over 4,000 XML elements and attributes \(formatted",
    "shared_string_empty_runs_unused": r"xl/sharedStrings\.xml: over 4,000 XML elements and attributes in string 5",
    "shared_strings_junk_between": r"xl/sharedStrings\.xml: over 4,000 XML elements and attributes in string 2 .*"
                                   r"or between strings",
    "row_of_junk_elements": r"Experiments: row 3 holds over 100,000 XML elements and attributes",
    "attributes_90k_per_cell": r"Experiments: row 3 holds over 100,000 XML elements and attributes",
    "sheet_junk_elements": r"Experiments: over 200,000 XML elements and attributes besides rows",
    "attribute_5mb": r"Experiments: one XML tag or text runs over 1\.0 MB without a break",
}


def _write(tmp_path: Path, name: str) -> Path:
    [(_, data)] = cases([name])
    book = tmp_path / "experiments.xlsx"
    book.write_bytes(data)
    return book


@pytest.mark.parametrize("name", list(LIMITS))
def test_each_limit_is_refused_by_nero_plan_with_its_message(tmp_path: Path, name: str) -> None:
    """#12: each limit refused before parsing, exit 2, message naming the limit and where."""
    book = _write(tmp_path, name)
    proc = nero("plan", str(book), cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert re.search(LIMITS[name], out), out
    assert "nothing was dispatched, cancelled or written" in out
    assert not (tmp_path / ".nero" / "runs").exists()


def test_all_problems_of_the_workbook_at_once(tmp_path: Path) -> None:
    """#12: cell limits in several sheets are listed together, each at its cell or sheet."""
    proc = nero("plan", str(_write(tmp_path, "many_problems_at_once")), cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "3 problems in the workbook" in out
    assert "Experiments!C2: text is 40,000 characters" in out
    assert "Experiments!B3: text is 33,000 characters" in out
    assert "Settings!XFD1: column 16,384 is beyond the limit of 1,000 columns" in out


@pytest.mark.parametrize("name", ["bomb_shared_strings_one_text", "bomb_sheet_cells", "bomb_styles",
                                  "bomb_declared_size_lies", "billion_laughs_sheet", "chartsheet_image_refs",
                                  "inline_empty_runs", pytest.param("bad_cells_50k_rows", marks=pytest.mark.slow)])
def test_a_bomb_is_refused_within_300_mb(tmp_path: Path, name: str) -> None:
    """#12: a 1 GB bomb in a 1-3 MB file took 2-4 GB before (a 10 KB chart sheet 2 GB, a
    million empty runs 503 MB); now refused in a few dozen MB (peak RSS of `nero plan`
    itself, measured by a launcher process)."""
    book = _write(tmp_path, name)
    assert book.stat().st_size <= MAX_DISK
    got = run_measured([sys.executable, "-m", "orchestrator", "plan", str(book)], str(tmp_path),
                       timeout=120, cap_mb=2048)
    assert got["rc"] == 2 and not got["killed"], got
    assert "problem" in str(got["head"])
    assert float(got["peak_mb"]) < 300, got


@pytest.mark.slow
def test_more_than_1000_problems_are_counted_not_listed(tmp_path: Path) -> None:
    """#12: 250,000 bad cells took 266 MB to list; the first 1,000 are listed, the rest counted."""
    got = run_measured([sys.executable, "-m", "orchestrator", "plan", str(_write(tmp_path, "bad_cells_50k_rows"))],
                       str(tmp_path), timeout=300)
    head, tail = str(got["head"]), str(got["output"])
    assert got["rc"] == 2 and "1001 problems in the workbook" in head, head
    assert re.search(r"…: and [\d,]+ more problems, not listed", tail), tail[-500:]
    assert float(got["peak_mb"]) < 300


def test_the_example_workbook_still_reads(tmp_path: Path) -> None:
    """#12: the bounds refuse nothing a normal workbook holds."""
    book = write_example_workbook(tmp_path / "experiments.xlsx")
    proc = nero("plan", str(book), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Plan:" in proc.stdout


@pytest.mark.parametrize("name", [n for n in names() if expect(n) == "ok"])
def test_workbooks_within_the_limits_read(tmp_path: Path, name: str) -> None:
    """#12: text at Excel's limit, a 30 MB sheet read twice (formulas), a big sheet nero does
    not read, an 8 MB picture, 1,000 sheets, 8 MB of shared strings: all read."""
    proc = nero("plan", str(_write(tmp_path, name)), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]


def test_every_case_fits_on_disk_and_says_what_to_expect() -> None:
    """The hostile cases the bench and the torture suite share: ≥ 40, each ≤ 10 MB."""
    all_cases = cases()
    assert len(all_cases) >= 40
    assert all(len(data) <= MAX_DISK for _, data in all_cases)
    assert {expect(n) for n, _ in all_cases} == {"ok", "refused"}
