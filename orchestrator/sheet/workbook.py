"""The workbook file as a whole: check its bounds, read nero's sheets into rows (xlsx.py,
a streamed read), hand each to its sheet's reader, and report every problem at once,
each anchored to its cell (`Experiments!D7: …`), as one `WorkbookError`.

A formula cell counts with the value last saved with it; a cell showing an error, or a
formula without a saved value, is reported here and read as UNREADABLE, so no reader
reports it again.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import WorkbookError
from ..layers import merge
from ..model import Layer, MetricDef, Problem, Workbook
from .bounds import check_bounds
from .clusters import read_clusters
from .commands import VariablesOf
from .experiments import NOTIFY_EVENTS, read_experiments
from .metrics import read_metrics
from .people import read_people
from .settings import read_settings
from .table import UNREADABLE, Problems, Sheet
from .xlsx import CellError, NoSavedValue, read_sheets

__all__ = ["SHEETS", "lock_file", "read_metric_definitions", "read_workbook"]

SHEETS = ("Experiments", "Clusters", "Metrics", "Settings", "People")


def read_workbook(path: str | Path, variables_of: VariablesOf, user: Layer | None = None,
                  env: Layer | None = None) -> Workbook:
    """Read and validate an experiments workbook; WorkbookError lists every problem.
    `variables_of` names the variables a command template uses (see commands.py); `user`
    and `env` are the weaker and the stronger layer of settings (`layers.merge`)."""
    path = Path(path)
    problems = Problems()
    titles, sheets = _load(path, problems)
    project = Layer("project", read_settings(sheets.get("Settings"), path, problems),
                    tuple((c, c.cell("name")) for c in read_clusters(sheets.get("Clusters"), problems) if c.cell("name")),
                    read_people(sheets.get("People"), problems))
    effective = merge(project, user, env)
    names = tuple(c.name for c in effective.clusters)
    people = {p.name.lower(): p.email for p in effective.people}
    for name in people.keys() & set(NOTIFY_EVENTS):
        problems.add(effective.origin(f"people.{name}").where or "People",
                     f"a person cannot be called {name!r}: notify reads it as the event; name them differently")
    experiments = read_experiments(sheets.get("Experiments"), titles, names, problems, variables_of,
                                   effective.settings.sample_seed, people)
    metrics = read_metrics(sheets.get("Metrics"), problems)
    cluster = effective.settings.default_cluster
    if cluster not in names:
        problems.add(effective.origin("default_cluster").where or "Settings",
                     f"default_cluster {cluster!r} is not a cluster; clusters defined: {', '.join(names)}")
    if problems.items:
        raise WorkbookError(str(path), problems.listed(_reading_order))
    return Workbook(str(path), experiments, effective.clusters, metrics, effective.settings, effective)


def read_metric_definitions(path: str | Path) -> tuple[MetricDef, ...]:
    """The Metrics sheet alone (what `nero metrics test` applies); WorkbookError lists its
    problems and the file's. The other sheets are not checked, so a half-edited
    Experiments sheet does not stop a test of the patterns."""
    path = Path(path)
    scanned = Problems()
    _, sheets = _load(path, scanned)
    sheet = sheets.get("Metrics")
    problems = Problems()
    for p in scanned.items:
        if sheet and p.where.startswith(f"{sheet.title}!"):
            problems.add(p.where, p.message)
    metrics = read_metrics(sheet, problems)
    if problems.items:
        raise WorkbookError(str(path), problems.listed(_reading_order))
    return metrics


def lock_file(path: str | Path) -> Path | None:
    """The lock file a spreadsheet program keeps beside an open workbook, if any."""
    p = Path(path)
    candidates = [p.with_name(f".~lock.{p.name}#"), p.with_name(f"~${p.name}")]
    if len(p.name) > 2:
        candidates.append(p.with_name(f"~${p.name[2:]}"))  # Office shortens long names
    return next((c for c in candidates if c.exists()), None)


def _reading_order(problem: Problem) -> tuple[int, int, int]:
    """Sheets in the order Experiments, Clusters, Metrics, Settings, People; then row, then column."""
    sheet, _, cell = problem.where.partition("!")
    rank = next((i for i, s in enumerate(SHEETS) if s.lower() == sheet.strip().lower()), -1)
    m = re.match(r"^([A-Z]*)(\d+)$", cell)
    if not m:
        return rank, 0, 0
    col = 0
    for letter in m.group(1):
        col = col * 26 + ord(letter) - 64
    return rank, int(m.group(2)), col


def _load(path: Path, problems: Problems) -> tuple[list[str], dict[str, Sheet]]:
    """The sheet titles and nero's sheets by canonical name; file-level trouble raises."""
    if not path.is_file():
        what = "is a folder, not a workbook" if path.is_dir() else "was not found"
        hint = "give the path of an .xlsx file, or create an example with `nero init`"
        raise WorkbookError(str(path), [Problem(path.name, f"{path} {what}; {hint}")])
    limits = check_bounds(path, lambda title: _canonical_sheet(title) is not None)  # before the file is parsed
    try:
        titles, read = read_sheets(path, _canonical_sheet, limits)  # the sheets' own limits, as they are read
    except Exception as e:  # zipfile, zlib, XML and value errors all mean "unreadable"
        if limits.problems.items:  # past a limit before the damage: that is what to fix first
            raise WorkbookError(str(path), limits.problems.listed()) from None
        raise WorkbookError(str(path), [Problem(path.name, _unreadable(path, e))]) from None
    if limits.problems.items:
        raise WorkbookError(str(path), limits.problems.listed())
    sheets = {canonical: _sheet(title, rows, problems) for canonical, (title, rows) in read.items()}
    return titles, sheets


_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # an OLE2 compound file: old .xls, or encrypted OOXML
_ENCRYPTED = ("EncryptionInfo".encode("utf-16-le"), "EncryptedPackage".encode("utf-16-le"))


def _unreadable(path: Path, error: Exception) -> str:
    kind = _compound_kind(path)
    if kind == "encrypted":
        return ("the workbook is password-protected (encrypted), so nero cannot read it; remove the password "
                "(in Excel: File > Info > Protect Workbook > Encrypt with Password, clear it) and save it again")
    if kind == "xls" or path.suffix.lower() == ".xls":
        return "this is an old .xls file; save it as an Excel Workbook (.xlsx) and point nero at that"
    if path.suffix.lower() not in (".xlsx", ".xlsm"):
        return f"{path.name} is not an .xlsx workbook ({error}); save the sheet as Excel Workbook (.xlsx)"
    return (f"the file cannot be read as an .xlsx workbook ({type(error).__name__}: {error}); "
            "it may be half-saved or damaged: save it again from Excel or LibreOffice, "
            "or restore a good copy")


def _compound_kind(path: Path) -> str | None:
    """"encrypted" or "xls" for an OLE2 compound file (an encrypted .xlsx names its
    streams EncryptionInfo and EncryptedPackage), None for anything else. Reads the file in
    1 MiB pieces, so memory stays small whatever its size."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != _OLE2:
                return None
            tail = b""
            while chunk := f.read(2**20):
                window = tail + chunk
                if any(name in window for name in _ENCRYPTED):
                    return "encrypted"
                tail = window[-64:]
    except OSError:
        return None
    return "xls"


def _canonical_sheet(title: str) -> str | None:
    key = title.strip().lower()
    return next((s for s in SHEETS if s.lower() == key), None)


_MARKERS = frozenset((CellError, NoSavedValue))


def _sheet(title: str, rows: list[tuple[int, list[object]]], problems: Problems) -> Sheet:
    """The sheet's rows; cells showing an error or lacking a formula's value are reported
    here and become UNREADABLE, so nothing downstream reports them twice."""
    sheet = Sheet(title, rows)
    for r, values in rows:
        if _MARKERS.isdisjoint(map(type, values)):
            continue  # the usual row: no marker (a test per row at C speed, not one per cell)
        for c, value in enumerate(values):
            if isinstance(value, CellError):
                problems.add(sheet.ref(r, c), f"the cell shows the error {value.text}; fix the formula or type the value")
                values[c] = UNREADABLE
            elif isinstance(value, NoSavedValue):
                problems.add(sheet.ref(r, c), f"formula {value.formula} has no saved value; open and save the "
                             "workbook in Excel or LibreOffice, or type the value")
                values[c] = UNREADABLE
    return sheet
