"""The experiments workbook: read it into a `model.Workbook`, and write the example one.

This is openpyxl's home for `experiments.xlsx` (DESIGN.md §3). `read_workbook` reads the
sheets Experiments (required), Clusters, Metrics and Settings, checks every cell and
reports all problems at once, each anchored to its cell (`Experiments!D7: …`), as one
`WorkbookError`. Nothing of openpyxl leaks out. `write_example_workbook` creates the
annotated worked example that `nero init` copies; `lock_file` finds a spreadsheet
program's lock file beside a workbook.

Normalised values: `time` is whole minutes, `mem` whole megabytes, `cpus`/`gpus` whole
numbers; empty cells are left out (of parameters and resources alike).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from typing import Any, TypeVar

from . import spec
from .digest_schedule import read_digest
from .errors import ExpressionError, TemplateError, WorkbookError
from .files import write_atomically
from .model import (
    MAX_GOAL_NAMES,
    RESOURCE_COLUMNS,
    Cluster,
    ClusterKind,
    Desired,
    Experiment,
    MetricDef,
    Problem,
    Scalar,
    Settings,
    Variation,
    Workbook,
)
from .render import command_variables
from .rules import parse_rules
from .units import parse_duration, parse_size_mb

T = TypeVar("T")

EXPERIMENT_COLUMNS = (
    "id", "command", "cluster", "state", *RESOURCE_COLUMNS, "setup", "workdir", "template",
    "priority", "after", "retries", "rules", "notify", "notes",
)
CLUSTER_COLUMNS = (
    "name", "kind", "host", "user", "port", "workdir", "python", "setup", "max_jobs",
    "partition", "account", "template", "gpus", "options", "notes",
)
METRIC_COLUMNS = ("name", "pattern", "goal", "notes")
SETTING_KEYS = (
    "results", "interval", "digest", "email_to", "email_from", "smtp_host", "smtp_port",
    "smtp_user", "smtp_security", "primary_metric", "checkpoints", "min_free_disk",
    "default_cluster",
)
NOTIFY_EVENTS = ("started", "completed", "failed", "terminated", "lost", "warn")
RUN_VARIABLES = ("run_key", "run_dir", "attempt", "experiment", "resume")  # always defined
BUILTIN_VARIABLES = (*RUN_VARIABLES, *RESOURCE_COLUMNS)  # resources: when the row sets them
SMTP_SECURITY = ("starttls", "ssl", "none")
MAX_RUNS_PER_ROW = 100_000
SHEETS = ("Experiments", "Clusters", "Metrics", "Settings")

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PARAMETER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class _Unreadable:
    """A cell whose problem is already reported (a formula without a saved value, #REF!…)."""

    def __repr__(self) -> str:
        return "<unreadable cell>"


UNREADABLE: Any = _Unreadable()


# ---------------------------------------------------------------------------- public API


def read_workbook(path: str | Path) -> Workbook:
    """Read and validate an experiments workbook; WorkbookError lists every problem."""
    path = Path(path)
    problems = _Problems()
    titles, sheets = _load(path, problems)
    clusters = _read_clusters(sheets.get("Clusters"), problems)
    names = tuple(c.name for c in clusters)
    experiments = _read_experiments(sheets.get("Experiments"), titles, names, problems)
    metrics = _read_metrics(sheets.get("Metrics"), problems)
    settings = _read_settings(sheets.get("Settings"), names, path, problems)
    if problems.items:
        raise WorkbookError(str(path), sorted(problems.items, key=_reading_order))
    return Workbook(str(path), experiments, clusters, metrics, settings)


def lock_file(path: str | Path) -> Path | None:
    """The lock file a spreadsheet program keeps beside an open workbook, if any."""
    p = Path(path)
    candidates = [p.with_name(f".~lock.{p.name}#"), p.with_name(f"~${p.name}")]
    if len(p.name) > 2:
        candidates.append(p.with_name(f"~${p.name[2:]}"))  # Office shortens long names
    return next((c for c in candidates if c.exists()), None)


# ---------------------------------------------------------------------------- problems


class _Problems:
    """Every problem found, at most one per cell (the first is the root cause)."""

    def __init__(self) -> None:
        self.items: list[Problem] = []
        self._cells: set[str] = set()

    def add(self, where: str, message: str) -> None:
        if where in self._cells:
            return
        self._cells.add(where)
        self.items.append(Problem(where, message))


def _reading_order(problem: Problem) -> tuple[int, int, int]:
    """Sheets in the order Experiments, Clusters, Metrics, Settings; then row, then column."""
    sheet, _, cell = problem.where.partition("!")
    rank = next((i for i, s in enumerate(SHEETS) if s.lower() == sheet.strip().lower()), -1)
    m = re.match(r"^([A-Z]*)(\d+)$", cell)
    if not m:
        return rank, 0, 0
    col = 0
    for letter in m.group(1):
        col = col * 26 + ord(letter) - 64
    return rank, int(m.group(2)), col


# ---------------------------------------------------------------------------- loading


@dataclass
class _Sheet:
    """One sheet's non-blank rows: (1-based row number, cell values from column A)."""

    title: str
    rows: list[tuple[int, list[object]]]

    def ref(self, row: int, col: int) -> str:
        return f"{self.title}!{column_letter(col)}{row}"


def column_letter(col: int) -> str:
    """0 → A, 25 → Z, 26 → AA."""
    letters, n = "", col + 1
    while n:
        n, rest = divmod(n - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def _load(path: Path, problems: _Problems) -> tuple[list[str], dict[str, _Sheet]]:
    """The sheet titles and nero's sheets by canonical name; file-level trouble raises."""
    if not path.is_file():
        what = "is a folder, not a workbook" if path.is_dir() else "was not found"
        hint = "give the path of an .xlsx file, or create an example with `nero init`"
        raise WorkbookError(str(path), [Problem(path.name, f"{path} {what}; {hint}")])
    try:
        formulas: _Formulas = {}
        titles, sheets = _scan_file(path, False, formulas, problems)
        if formulas:  # only then is the second pass, for the values saved with them, needed
            titles, sheets = _scan_file(path, True, formulas, problems)
    except Exception as e:  # zipfile, zlib, XML and openpyxl errors all mean "unreadable"
        raise WorkbookError(str(path), [Problem(path.name, _unreadable(path, e))]) from None
    return titles, sheets


def _unreadable(path: Path, error: Exception) -> str:
    if path.suffix.lower() == ".xls":
        return "this is an old .xls file; save it as an Excel Workbook (.xlsx) and point nero at that"
    if path.suffix.lower() not in (".xlsx", ".xlsm"):
        return f"{path.name} is not an .xlsx workbook ({error}); save the sheet as Excel Workbook (.xlsx)"
    return (f"the file cannot be read as an .xlsx workbook ({type(error).__name__}: {error}); "
            "it may be half-saved or damaged: save it again from Excel or LibreOffice, "
            "or restore a good copy")


_Formulas = dict[tuple[str, int, int], str]  # (sheet, row, column) -> formula text


def _scan_file(path: Path, saved: bool, formulas: _Formulas,
               problems: _Problems) -> tuple[list[str], dict[str, _Sheet]]:
    """One read of the file: formulas as text (saved=False) or their saved values (True)."""
    import openpyxl

    book = openpyxl.load_workbook(path, read_only=True, data_only=saved, keep_links=False)
    try:
        titles = list(book.sheetnames)
        sheets: dict[str, _Sheet] = {}
        for title in titles:
            canonical = _canonical_sheet(title)
            ws = book[title]
            if canonical is None or canonical in sheets or not hasattr(ws, "reset_dimensions"):
                continue  # not nero's, a second copy, or a chart sheet
            ws.reset_dimensions()  # don't trust the writer's stored sheet size
            sheet = _Sheet(title, [])
            _scan_sheet(sheet, ws.iter_rows(), canonical, saved, formulas, problems)
            sheets[canonical] = sheet
        return titles, sheets
    finally:
        book.close()


def _canonical_sheet(title: str) -> str | None:
    key = title.strip().lower()
    return next((s for s in SHEETS if s.lower() == key), None)


def _scan_sheet(sheet: _Sheet, rows: Iterable[Sequence[Any]], canonical: str, saved: bool,
                formulas: _Formulas, problems: _Problems) -> None:
    """Collect non-blank rows; cells showing an error or lacking a formula's value are
    reported here and become UNREADABLE, so nothing downstream reports them twice."""
    for r, cells in enumerate(rows, start=1):
        values: list[object] = []
        for c, cell in enumerate(cells):
            value, kind = cell.value, getattr(cell, "data_type", None)
            formula = formulas.get((canonical, r, c))
            if kind == "f":
                formulas[(canonical, r, c)] = str(getattr(value, "text", value))
            elif kind == "e":
                problems.add(sheet.ref(r, c), f"the cell shows the error {value}; fix the formula or type the value")
                value = UNREADABLE
            elif saved and formula is not None and value is None:
                problems.add(sheet.ref(r, c), f"formula {formula} has no saved value; open and save the "
                             "workbook in Excel or LibreOffice, or type the value")
                value = UNREADABLE
            values.append(_clean(value))
        if any(v is not None for v in values):
            sheet.rows.append((r, values))


def _clean(value: object) -> object:
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


# ---------------------------------------------------------------------------- tables


def _normal(header: str) -> str:
    """Header matching: case-insensitive, spaces and dashes count as underscores."""
    return re.sub(r"[\s\-]+", "_", header.strip().lower())


@dataclass
class _Table:
    """A sheet with a header row: known columns by name, other headed columns in order."""

    sheet: _Sheet
    header: int
    columns: dict[str, int]
    extra: list[tuple[str, int]]
    rows: list[tuple[int, list[object]]]
    headers: list[str]  # as written, in column order


def _table(sheet: _Sheet, known: Sequence[str], problems: _Problems) -> _Table | None:
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
        text = _text(value)
        headers.append(text)
        key, ref = _normal(text), sheet.ref(header, c)
        if key in seen:
            problems.add(ref, f"column {text!r} appears twice (also {seen[key]}); keep one of them")
            continue
        seen[key] = ref
        if key in known:
            columns[key] = c
        else:
            extra.append((text, c))
    table = _Table(sheet, header, columns, extra, sheet.rows[1:], headers)
    _check_headless_values(table, headed, problems)
    return table


def _check_headless_values(table: _Table, headed: set[int], problems: _Problems) -> None:
    reported: set[int] = set()
    for r, values in table.rows:
        for c, value in enumerate(values):
            if value is not None and c not in headed and c not in reported:
                reported.add(c)
                letter = column_letter(c)
                problems.add(table.sheet.ref(r, c), f"this column has no header, so its values mean nothing; "
                             f"type a column name in {letter}{table.header} or clear the column")


def _report_unknown_columns(table: _Table, known: Sequence[str], problems: _Problems) -> None:
    for name, c in table.extra:
        problems.add(table.sheet.ref(table.header, c),
                     f"unknown column {name!r} in {table.sheet.title}; valid columns: {', '.join(known)}")


class _Row:
    """One data row of a table, with converters that report problems at the right cell."""

    def __init__(self, table: _Table, number: int, values: list[object], problems: _Problems):
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

    def has(self, column: str) -> bool:
        return self.raw(column) is not None

    def get(self, column: str, convert: Callable[[Any, str], T], default: T) -> T:
        value = self.raw(column)
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


def _rows(table: _Table | None, problems: _Problems) -> list[_Row]:
    return [] if table is None else [_Row(table, n, v, problems) for n, v in table.rows]


# ---------------------------------------------------------------------------- cell converters


def _show(value: object) -> str:
    return repr(value) if isinstance(value, str) else repr(_text(value))


def _text(value: object, column: str = "") -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return spec.format_value(value)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    return str(value).strip()


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        return float(value)
    return None


def _whole(minimum: int, example: int, maximum: int | None = None) -> Callable[[Any, str], int]:
    def convert(value: object, column: str) -> int:
        n = _number(value)
        if n is None or not n.is_integer():
            raise ValueError(f"{_show(value)} is not a whole number for {column}; write a number such as {example}")
        if n < minimum or (maximum is not None and n > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise ValueError(f"{column} must be at least {minimum}{upper}, not {int(n)}; write e.g. {example}")
        return int(n)

    return convert


def _minutes(value: object, column: str) -> int:
    """A wall-time limit in whole minutes (rounded up)."""
    seconds: float | None
    if isinstance(value, bool):
        seconds = None
    elif isinstance(value, int | float):
        seconds = float(value) * 60
    elif isinstance(value, clock_time):  # Excel turned 02:00:00 into a time of day
        seconds = value.hour * 3600 + value.minute * 60 + value.second
    elif isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str):
        seconds = parse_duration(value, bare_unit=60)
    else:
        seconds = None
    if seconds is None or not seconds > 0:
        raise ValueError(f"{_show(value)} is not a duration for {column}; write minutes (90), HH:MM:SS "
                         "(01:30:00), D-HH:MM:SS (2-00:00:00) or 90m / 2h / 1d")
    return math.ceil(seconds / 60 - 1e-9)


def _megabytes(value: object, column: str) -> int:
    n = _number(value)
    if n is None and isinstance(value, str):
        n = parse_size_mb(value)
    if n is None or not n > 0:
        raise ValueError(f"{_show(value)} is not a memory size for {column}; write megabytes (4000) or 4G / 500M")
    return math.ceil(n)


def _size_text(value: object, column: str) -> str:
    _megabytes(value, column)
    return _text(value)


def _choice(options: Sequence[str]) -> Callable[[Any, str], str]:
    def convert(value: object, column: str) -> str:
        text = _text(value).lower()
        if text not in options:
            raise ValueError(f"{_show(value)} is not a valid {column}; write one of: {', '.join(options)}")
        return text

    return convert


def _names(value: object, column: str = "") -> tuple[str, ...]:
    """A comma (or semicolon) separated list, blanks dropped."""
    return tuple(n.strip() for n in re.split(r"[,;]", _text(value)) if n.strip())


def _one_of(options: Sequence[str], what: str) -> Callable[[Any, str], tuple[str, ...]]:
    def convert(value: object, column: str) -> tuple[str, ...]:
        names = tuple(n.lower() for n in _names(value))
        bad = [n for n in names if n not in options]
        if bad:
            listing = ", ".join(options)
            raise ValueError(f"unknown {what} {', '.join(map(repr, bad))} in {column}; valid: {listing}")
        return names

    return convert


def _identifier(value: object, column: str) -> str:
    text = _text(value)
    if not _ID.match(text):
        raise ValueError(f"{text!r} is not a valid {column}: start with a letter or digit and use only "
                         "letters, digits, _ . - (e.g. lr-sweep_2)")
    return text


# ---------------------------------------------------------------------------- Clusters


def _read_clusters(sheet: _Sheet | None, problems: _Problems) -> tuple[Cluster, ...]:
    table = _table(sheet, CLUSTER_COLUMNS, problems) if sheet else None
    if table is not None:
        _report_unknown_columns(table, CLUSTER_COLUMNS, problems)
        if "name" not in table.columns:
            problems.add(f"{table.sheet.title}!{table.header}", "the Clusters header row has no name column "
                         f"(headers found: {', '.join(table.headers)}); add a column named name")
            return (Cluster("local"),)
    clusters: list[Cluster] = []
    seen: dict[str, str] = {}
    for row in _rows(table, problems):
        cluster = _cluster(row)
        if cluster is None:
            continue
        if cluster.name.lower() in seen:
            problems.add(row.ref("name"), f"cluster {cluster.name!r} is defined twice (also {seen[cluster.name.lower()]}); "
                         "give each row its own name")
            continue
        seen[cluster.name.lower()] = row.ref("name")
        clusters.append(cluster)
    if not any(c.name == "local" for c in clusters):
        clusters.insert(0, Cluster("local"))
    return tuple(clusters)


def _cluster(row: _Row) -> Cluster | None:
    name = row.require("name", _identifier, "", "missing name; every cluster row needs a name such as gpu-box")
    host = row.get("host", _text, "")
    kind_text = row.get("kind", _choice([k.value for k in ClusterKind]), "")
    if not kind_text and row.raw("kind") is None and host:
        row.problems.add(row.ref("kind"), "kind is empty but host is set; write ssh, slurm or sge")
    kind = ClusterKind(kind_text or "local")
    if kind is not ClusterKind.LOCAL and not host and row.raw("host") is None:
        row.problems.add(row.ref("host"), f"kind {kind.value} needs a host: an ~/.ssh/config alias or a host name such as login.hpc.example.org")
    if name == "local" and kind is not ClusterKind.LOCAL:
        row.problems.add(row.ref("kind"), f"the cluster named local must have kind local; name the {kind.value} cluster differently")
    if not name:
        return None
    return Cluster(
        name=name, kind=kind, host=host, user=row.get("user", _text, ""),
        port=row.get("port", _whole(1, 22, 65535), None), workdir=row.get("workdir", _text, ""),
        python=row.get("python", _text, ""), setup=row.get("setup", _text, ""),
        max_jobs=row.get("max_jobs", _whole(1, 8), None), partition=row.get("partition", _text, ""),
        account=row.get("account", _text, ""), template=row.get("template", _text, ""),
        gpus=row.get("gpus", _text, ""), options=row.get("options", _text, ""),
    )


# ---------------------------------------------------------------------------- Experiments


def _read_experiments(sheet: _Sheet | None, titles: list[str], clusters: tuple[str, ...],
                      problems: _Problems) -> tuple[Experiment, ...]:
    if sheet is None:
        found = ", ".join(titles) or "none"
        problems.add("Experiments", f"the workbook has no Experiments sheet (sheets found: {found}); add a sheet "
                     "named Experiments with an id and a command column, or start from `nero init`")
        return ()
    table = _table(sheet, EXPERIMENT_COLUMNS, problems)
    if table is None:
        problems.add(sheet.title, "the Experiments sheet is empty; row 1 must hold the headers, at least id and command")
        return ()
    missing = [c for c in ("id", "command") if c not in table.columns]
    if missing:
        found = ", ".join(table.headers) or "none"
        problems.add(f"{sheet.title}!{table.header}", f"the header row has no {' and no '.join(missing)} column "
                     f"(headers found: {found}); add columns named id and command")
        return ()
    parameters = _parameter_columns(table, problems)
    experiments: list[Experiment] = []
    ids: dict[str, str] = {}
    for row in _rows(table, problems):
        exp = _experiment(row, parameters, clusters)
        if exp is None:
            continue
        if exp.id.lower() in ids:
            problems.add(row.ref("id"), f"duplicate id {exp.id!r} (also {ids[exp.id.lower()]}); ids must be "
                         f"unique (ignoring case): rename one, e.g. {exp.id}-2")
            continue
        ids[exp.id.lower()] = row.ref("id")
        experiments.append(exp)
    _check_after(experiments, table, problems)
    return tuple(experiments)


def _parameter_columns(table: _Table, problems: _Problems) -> list[tuple[str, int]]:
    good = []
    for name, c in table.extra:
        ref = table.sheet.ref(table.header, c)
        if name in BUILTIN_VARIABLES:
            problems.add(ref, f"a parameter cannot be called {name!r}: that name is built in; rename the column")
        elif not _PARAMETER.match(name):
            suggestion = re.sub(r"\W+", "_", name).strip("_") or "param"
            if suggestion[0].isdigit():
                suggestion = f"p_{suggestion}"
            problems.add(ref, f"{name!r} is not usable as a parameter name; use letters, digits and _ "
                         f"(e.g. {suggestion}) so the command can say {{{{ {suggestion} }}}}")
        else:
            good.append((name, c))
    return good


def _experiment(row: _Row, parameters: list[tuple[str, int]], clusters: tuple[str, ...]) -> Experiment | None:
    ident = row.require("id", _identifier, "", "missing id; every row needs a unique id such as lr-sweep")
    command = row.require("command", _text, "", "missing command; write the shell command of one run, "
                          "e.g. python train.py --lr {{ lr }}")
    params, unreadable = _parameters(row, parameters)
    exp = Experiment(
        id=ident, row=row.number, command=command,
        clusters=row.get("cluster", _known_clusters(clusters), ()),
        desired=Desired(row.get("state", _choice([d.value for d in Desired]), "run")),
        params=params, resources=_resources(row),
        setup=row.get("setup", _text, ""), workdir=row.get("workdir", _text, ""),
        template=row.get("template", _text, ""), priority=row.get("priority", _whole(-10**9, 10), 0),
        after=row.get("after", _names, ()), retries=row.get("retries", _whole(0, 2), 0),
        rules=row.get("rules", _rules, ""), notify=row.get("notify", _one_of(NOTIFY_EVENTS, "event"), ()),
    )
    if command:
        _check_command(row, exp, {name for name, _ in parameters}, unreadable)
    if ident:
        _check_grid(row, exp)
    return exp if ident else None


def _rules(value: object, column: str) -> str:
    text = _text(value)
    try:
        parse_rules(text)
    except ExpressionError as e:
        raise ValueError(f"{e}; write rules separated by ';', e.g. isnan(loss); val_loss > 2 after 5; "
                         "plateau(val_loss, 10); runtime > 2h") from None
    return text


def _known_clusters(clusters: tuple[str, ...]) -> Callable[[Any, str], tuple[str, ...]]:
    def convert(value: object, column: str) -> tuple[str, ...]:
        names = _names(value)
        bad = [n for n in names if n not in clusters]
        if bad:
            raise ValueError(f"unknown cluster {', '.join(map(repr, bad))}; clusters defined: {', '.join(clusters)} "
                             "(add it to the Clusters sheet or fix the name)")
        return names

    return convert


def _parameters(row: _Row, parameters: list[tuple[str, int]]) -> tuple[tuple[tuple[str, Scalar | Variation], ...], set[str]]:
    """Non-empty parameter cells in column order, and the names of unreadable ones."""
    params: list[tuple[str, Scalar | Variation]] = []
    unreadable: set[str] = set()
    for name, c in parameters:
        value = row.at(c)
        if value is UNREADABLE:
            unreadable.add(name)
        elif value is not None:
            try:
                params.append((name, spec.parse_cell(_param_value(value))))
            except ValueError as e:
                row.problems.add(row.ref_at(c), f"{name}: {e}")
                unreadable.add(name)
    return tuple(params), unreadable


def _param_value(value: object) -> object:
    if isinstance(value, datetime | date | clock_time | timedelta):
        return _text(value)
    return value


def _resources(row: _Row) -> tuple[tuple[str, Scalar], ...]:
    converters: dict[str, Callable[[Any, str], Scalar]] = {
        "time": _minutes, "cpus": _whole(1, 4), "mem": _megabytes, "gpus": _whole(0, 1),
        "partition": _text, "account": _text, "options": _text,
    }
    out = []
    for name in RESOURCE_COLUMNS:
        value = row.get(name, converters[name], None)
        if value is not None:
            out.append((name, value))
    return tuple(out)


def _check_command(row: _Row, exp: Experiment, columns: set[str], unreadable: set[str]) -> None:
    try:
        used = command_variables(exp.command)
    except TemplateError as e:
        row.problems.add(row.ref("command"), f"the command is not a valid template: {e}; "
                         "write each variable as {{ name }}")
        return
    present = {name for name, _ in exp.params} | {name for name, _ in exp.resources}
    undefined = sorted(used - present - set(RUN_VARIABLES) - unreadable)
    if undefined:
        reasons = [_undefined_reason(row, name, columns, present) for name in undefined]
        row.problems.add(row.ref("command"), "; ".join(reasons))


def _undefined_reason(row: _Row, name: str, columns: set[str], present: set[str]) -> str:
    var = "{{ " + name + " }}"
    if name in RESOURCE_COLUMNS:
        where = row.ref(name) if name in row.table.columns else f"a {name} column"
        return f"the command uses {var} but this row sets no {name}; fill in {where} or remove {var}"
    if name in columns:
        c = next(c for n, c in row.table.extra if n == name)
        return f"the command uses {var} but {row.ref_at(c)} is empty; fill it in or remove {var} from the command"
    twin = next((c for c in columns if c.lower() == name.lower()), None)
    if twin:
        return f"the command uses {var} but the column is called {twin!r} (names are case-sensitive); write {{{{ {twin} }}}}"
    known = ", ".join(sorted(present)) or "none"
    return (f"the command uses {var} but there is no parameter column {name!r}; add that column or remove {var} "
            f"(parameters of this row: {known}; built in: {', '.join(BUILTIN_VARIABLES)})")


def _check_grid(row: _Row, exp: Experiment) -> None:
    runs = spec.count_runs(exp)
    if runs > MAX_RUNS_PER_ROW:
        sizes = " × ".join(f"{n}: {len(v.values)}" for n, v in exp.params if isinstance(v, Variation))
        row.problems.add(row.ref("id"), f"this row expands to {runs:,} runs ({sizes}); at most {MAX_RUNS_PER_ROW:,} "
                         "per row: use fewer values or split it into several rows")


def _check_after(experiments: list[Experiment], table: _Table, problems: _Problems) -> None:
    ids = {e.id for e in experiments}
    refs = {e.id: table.sheet.ref(e.row, table.columns.get("after", 0)) for e in experiments}
    for e in experiments:
        unknown = [a for a in e.after if a not in ids]
        if e.id in e.after:
            problems.add(refs[e.id], f"{e.id!r} cannot wait for itself; remove it from after")
        elif unknown:
            problems.add(refs[e.id], f"after names unknown experiment {', '.join(map(repr, unknown))}; "
                         f"write ids from the id column (e.g. {', '.join(sorted(ids)[:3])})")
    cycle = _find_cycle({e.id: [a for a in e.after if a in ids and a != e.id] for e in experiments})
    if cycle:
        problems.add(refs[cycle[0]], f"after forms a cycle ({' → '.join(cycle)}), so these rows would wait for each "
                     "other forever; remove one of the names")


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], node, nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                found = visit(nxt, [*path, node])
                if found:
                    return found
        state[node] = 2
        return None

    for node in graph:
        if node not in state:
            found = visit(node, [])
            if found:
                return found
    return None


# ---------------------------------------------------------------------------- Metrics


def _read_metrics(sheet: _Sheet | None, problems: _Problems) -> tuple[MetricDef, ...]:
    table = _table(sheet, METRIC_COLUMNS, problems) if sheet else None
    if table is None:
        return ()
    _report_unknown_columns(table, METRIC_COLUMNS, problems)
    if "name" not in table.columns:
        problems.add(f"{table.sheet.title}!{table.header}", "the Metrics header row has no name column "
                     f"(headers found: {', '.join(table.headers)}); add columns name, pattern, goal")
        return ()
    metrics: list[MetricDef] = []
    seen: dict[str, str] = {}
    for row in _rows(table, problems):
        name = row.require("name", _text, "", "missing name; write the metric's name, e.g. val_loss")
        pattern = row.get("pattern", _pattern, "")
        default_goal = "max" if name.lower() in MAX_GOAL_NAMES else "min"
        goal = row.get("goal", _choice(("min", "max")), default_goal)
        if not name:
            continue
        if name in seen:
            problems.add(row.ref("name"), f"metric {name!r} is defined twice (also {seen[name]}); keep one row")
            continue
        seen[name] = row.ref("name")
        metrics.append(MetricDef(name, pattern, goal))
    return tuple(metrics)


def _pattern(value: object, column: str) -> str:
    text = _text(value)
    example = r"e.g. val_loss[=:]\s*([-+.\deE]+|nan)"
    try:
        compiled = re.compile(text)
    except re.error as e:
        raise ValueError(f"{text!r} is not a valid regular expression ({e}); {example}") from None
    value_groups = compiled.groups - (1 if "step" in compiled.groupindex else 0)
    if value_groups < 1:
        raise ValueError(f"{text!r} has no capture group for the value; put the number in parentheses, {example}")
    return text


# ---------------------------------------------------------------------------- Settings


def _read_settings(sheet: _Sheet | None, clusters: tuple[str, ...], path: Path,
                   problems: _Problems) -> Settings:
    if sheet is None or not sheet.rows:
        return Settings()
    key_col, value_col, rows = _settings_layout(sheet)
    parsers = _setting_parsers()
    values: dict[str, Any] = {}
    seen: dict[str, str] = {}  # key -> its value cell
    for number, cells in rows:
        raw_key = cells[key_col] if key_col < len(cells) else None
        raw_value = cells[value_col] if value_col < len(cells) else None
        key_ref, value_ref = sheet.ref(number, key_col), sheet.ref(number, value_col)
        if raw_key is None:
            if raw_value is not None:
                problems.add(key_ref, "a value without a setting name; write the name here (e.g. interval) or clear the row")
            continue
        key = "" if raw_key is UNREADABLE else _normal(_text(raw_key))
        if key in seen:
            problems.add(key_ref, f"setting {key} appears twice (value also in {seen[key]}); keep one row")
        elif key in SETTING_KEYS:
            seen[key] = value_ref
            if raw_value is not None and raw_value is not UNREADABLE:
                try:
                    values[key] = parsers[key](raw_value, key)
                except ValueError as e:
                    problems.add(value_ref, str(e))
        elif raw_key is not UNREADABLE:
            problems.add(key_ref, _unknown_setting(_text(raw_key)))
    _check_settings(values, seen, clusters, path, problems)
    return Settings(**values)


def _settings_layout(sheet: _Sheet) -> tuple[int, int, list[tuple[int, list[object]]]]:
    """Key and value columns (A and B unless a `key`/`value` header row says otherwise)."""
    _, first = sheet.rows[0]
    headers = [_normal(_text(v)) if v not in (None, UNREADABLE) else "" for v in first]
    if headers and headers[0] in ("key", "setting", "name"):
        value_col = headers.index("value") if "value" in headers else 1
        return 0, value_col, sheet.rows[1:]
    return 0, 1, sheet.rows


def _unknown_setting(key: str) -> str:
    if "pass" in key.lower() or "secret" in key.lower():
        return (f"{key!r}: secrets never go in the workbook; remove this row and give the SMTP password "
                "through the environment or the system keyring (see README)")
    return f"unknown setting {key!r}; valid settings: {', '.join(SETTING_KEYS)}"


def _setting_parsers() -> dict[str, Callable[[Any, str], Any]]:
    return {
        "results": _results_name, "interval": _interval, "digest": _digest,
        "email_to": _emails, "email_from": _email, "smtp_host": _text,
        "smtp_port": _whole(1, 587, 65535), "smtp_user": _text,
        "smtp_security": _choice(SMTP_SECURITY), "primary_metric": _text,
        "checkpoints": _checkpoints, "min_free_disk": _size_text, "default_cluster": _text,
    }


def _check_settings(values: dict[str, Any], cells: dict[str, str], clusters: tuple[str, ...], path: Path,
                    problems: _Problems) -> None:
    cluster = values.get("default_cluster")
    if cluster and cluster not in clusters:
        problems.add(cells["default_cluster"], f"default_cluster {cluster!r} is not a cluster; "
                     f"clusters defined: {', '.join(clusters)}")
    results = values.get("results")
    if results and (path.parent / results).resolve() == path.resolve():
        problems.add(cells["results"], "results would overwrite the experiments workbook itself; "
                     "write another file name such as results.xlsx")


def _results_name(value: object, column: str) -> str:
    text = _text(value)
    if not text.lower().endswith(".xlsx"):
        raise ValueError(f"{text!r} is not an .xlsx file name for results; write e.g. results.xlsx")
    return text


def _interval(value: object, column: str) -> float:
    seconds = _number(value) if not isinstance(value, str) else parse_duration(value)
    if seconds is None or not seconds > 0:
        raise ValueError(f"{_show(value)} is not a valid interval; write seconds between passes (30) or 30s / 5m")
    return float(seconds)


def _digest(value: object, column: str) -> str:
    schedule = read_digest(_text(value))
    if schedule is None:
        raise ValueError(f"{_show(value)} is not a digest schedule; write every 6 hours, every 30 minutes, "
                         "daily at 08:00, or off")
    return schedule.setting


def _email(value: object, column: str) -> str:
    text = _text(value)
    if "@" not in text:
        raise ValueError(f"{text!r} is not an e-mail address for {column}; write e.g. lab-bot@example.org")
    return text


def _emails(value: object, column: str) -> tuple[str, ...]:
    return tuple(_email(a, column) for a in _names(value))


def _checkpoints(value: object, column: str) -> tuple[int, ...]:
    items = [value] if isinstance(value, int | float) else list(_names(value))
    steps = [_number(i) for i in items]
    if not steps or any(s is None or not s.is_integer() or s < 1 for s in steps):
        raise ValueError(f"{_show(value)} is not a list of steps for checkpoints; write whole numbers "
                         "separated by commas, e.g. 10, 50, 200")
    return tuple(sorted({int(s) for s in steps if s is not None}))


# ---------------------------------------------------------------------------- the example


EXPERIMENT_HELP = {
    "id": "Required. A unique name for the row, e.g. lr-sweep (letters, digits, _ . -). "
          "Run keys and run folders are built from it: demo[lr=0.1,layers=2].",
    "state": "run (default): start what is missing.\nhold: start nothing new; running runs go on.\n"
             "stop: cancel this row's running runs.",
    "command": "Required. The command of one run, with {{ name }} for each parameter column: "
               "python train.py --lr {{ lr }}. Every value is shell-quoted. Also available: "
               "{{ run_key }}, {{ run_dir }}, {{ attempt }}, {{ experiment }}, {{ resume }}, "
               "and {{ cpus }} or another resource the row sets.",
    "cluster": "Where to run: a name from the Clusters sheet. A comma list (a, b) means any of them "
               "with a free slot. Empty: Settings default_cluster, else local.",
    "time": "Wall-time limit: minutes (90), HH:MM:SS (01:30:00), D-HH:MM:SS, or 90m / 2h / 1d.",
    "cpus": "CPU cores per run (whole number).",
    "mem": "Memory per run: megabytes (4000) or 4G / 500M.",
    "gpus": "GPUs per run (whole number).",
    "options": "Extra scheduler options for this row's runs, e.g. --qos=high (Slurm) or -l ssd=1 (SGE); "
               "added to the cluster's options.",
    "partition": "Slurm partition or SGE queue. Empty: the cluster's partition.",
    "account": "Slurm account or SGE project to charge. Empty: the cluster's account.",
    "setup": "Shell lines run before the command, e.g.\nmodule load cuda\nsource venv/bin/activate",
    "workdir": "The folder the command runs in (your code). Empty: the folder of this workbook. "
               "Relative paths start there.",
    "template": "A job-script template from templates/ (e.g. slurm.sh.j2). Empty: the default for the "
                "cluster's kind. A templates/ folder beside this workbook overrides built-ins by name.",
    "priority": "Higher starts first when slots are scarce (whole number, default 0).",
    "after": "Comma list of experiment ids that must complete first, e.g. pretrain.",
    "retries": "Resubmit a failed, preempted or lost run up to N times, with NERO_RESUME=1 set so "
               "the program can continue from its checkpoint (default 0).",
    "rules": "Stop runs that go badly; separate rules with ';':\nisnan(loss); val_loss > 2 after 5; "
             "plateau(val_loss, 10); runtime > 2h\nEditing rules never restarts a run.",
    "notify": "Events to e-mail to Settings email_to, comma separated: started, completed, failed, "
              "terminated, lost, warn.",
    "notes": "Free text; nero ignores it.",
}
PARAMETER_HELP = (
    "A parameter: every column nero does not know is one; use it in the command as {{ %s }}.\n"
    "A cell is one value (0.1) or a variation: [0.1, 0.01], range(1, 5), linspace(0, 1, 5), "
    "logspace(-4, -1, 4). Several variations in a row form a grid: each combination is one run. "
    "An empty cell means the row does not use the parameter."
)
CLUSTER_HELP = {
    "name": "Required. The name the Experiments cluster column uses. A cluster named local always "
            "exists; this row only tunes it.\nMore rows, for example:\n"
            "gpu-box | ssh | gpu01 | ana | | ~/runs | ~/venv/bin/python\n"
            "hpc | slurm | login.hpc.example.org | ana | | /scratch/ana/runs | | module load python | 50 | gpu | proj42",
    "kind": "local (this machine), ssh (a plain host), slurm or sge (a batch scheduler reached over ssh).",
    "host": "Required for ssh, slurm, sge: an ~/.ssh/config alias or a host name, e.g. login.hpc.example.org.",
    "user": "Login name on the host. Empty: from ~/.ssh/config, else yours.",
    "port": "SSH port (whole number). Empty: from ~/.ssh/config, else 22.",
    "workdir": "Where run folders go on that machine, e.g. /scratch/ana/runs. Empty: runs/ beside this workbook.",
    "python": "The Python to put first on PATH for jobs, e.g. ~/venv/bin/python.",
    "setup": "Shell lines every job on this cluster runs first, e.g. module load python/3.11.",
    "max_jobs": "At most this many runs at once on this cluster. Empty for local: the number of cores.",
    "partition": "Default Slurm partition / SGE queue for this cluster.",
    "account": "Default Slurm account / SGE project for this cluster.",
    "template": "Default job template for this cluster, e.g. slurm.sbatch.j2 (default for slurm), sge.sh.j2, ssh.sh.j2.",
    "gpus": "ssh hosts: the GPUs runs may use, e.g. 0,1,2,3 (empty: all nvidia-smi shows). A run with gpus "
            "gets CUDA_VISIBLE_DEVICES of free ones. Slurm/SGE: informational.",
    "options": "Extra scheduler options for every job here, e.g. --qos=high --constraint=a100 (Slurm) "
               "or -l gpu_type=a100 (SGE).",
    "notes": "Free text; nero ignores it.",
}
METRIC_HELP = {
    "name": "The metric's name as it appears in rules and results, e.g. val_loss. Without this sheet "
            "nero captures every name=value and name: value pair with a number.",
    "pattern": "Optional regular expression over output lines with one group for the value (and "
               "optionally a group named step), e.g. val_loss[=:]\\s*([-+.\\deE]+|nan). Empty: name=value.",
    "goal": "min (lower is better) or max (higher is better); decides 'best' in results.",
    "notes": "Free text; nero ignores it.",
}
SETTING_HELP = {
    "results": "The results workbook nero writes (beside this one).",
    "interval": "Seconds between reconcile passes (30) or 30s / 5m.",
    "digest": "Progress e-mails: every 6 hours, every 30 minutes, daily at 08:00, or off.",
    "email_to": "Who gets e-mails: addresses separated by commas.",
    "email_from": "Sender address, e.g. nero@lab.example.org.",
    "smtp_host": "Mail server, e.g. smtp.example.org.",
    "smtp_port": "Mail server port, e.g. 587 (starttls) or 465 (ssl).",
    "smtp_user": "Login for the mail server. The password never goes here: use the environment or the keyring.",
    "smtp_security": "starttls (default), ssl or none.",
    "primary_metric": "The metric results are ranked by, e.g. val_loss (its goal comes from Metrics).",
    "checkpoints": "Steps at which metrics get their own result columns: 10, 50, 200 → val_loss@10 …",
    "min_free_disk": "Warn when a run folder's disk has less free space than this, e.g. 10G.",
    "default_cluster": "The cluster for rows whose cluster cell is empty. Empty: local.",
}

EXAMPLE_COMMAND = "python train.py --lr {{ lr }} --layers {{ layers }} --epochs {{ epochs }}"
EXAMPLE_EXPERIMENTS = (
    ("id", "state", "command", "lr", "layers", "epochs", "cluster", "rules", "notify", "retries",
     "priority", "after", "time", "cpus", "mem", "gpus", "partition", "account", "options", "setup",
     "workdir", "template", "notes"),
    ("demo", "run", EXAMPLE_COMMAND, "[0.01, 0.1, 3.0]", "[0, 2]", 20, "local",
     "isnan(loss); plateau(val_loss, 5)", "failed, terminated", None, None, None, None, None, None,
     None, None, None, None, None, None, None,
     "3 learning rates × 2 depths = 6 runs of about 6 s. lr=3.0 diverges to NaN and the isnan "
     "rule stops it; the linear model (layers=0) with lr=0.1 stalls and plateau stops it. "
     "Edit a cell and run nero plan to see what would change."),
    ("demo-hold", "hold", EXAMPLE_COMMAND, "logspace(-3, -1, 3)", 3, 20, "local", "isnan(loss)",
     "failed", 1, None, "demo", None, None, None, None, None, None, None, None, None, None,
     "Held: nothing starts until you set state to run; then it waits for demo (after) and "
     "retries a failed run once, resuming from its checkpoint."),
)
EXAMPLE_CLUSTERS = (CLUSTER_COLUMNS, ("local", "local"))
EXAMPLE_METRICS = (("name", "pattern", "goal"), ("loss", None, "min"), ("val_loss", None, "min"), ("acc", None, "max"))
EXAMPLE_SETTINGS: tuple[tuple[str, object], ...] = (
    ("results", "results.xlsx"), ("interval", 5), ("digest", "off"), ("email_to", None),
    ("email_from", None), ("smtp_host", None), ("smtp_port", None), ("smtp_user", None),
    ("smtp_security", None), ("primary_metric", "val_loss"), ("checkpoints", "5, 10, 20"),
    ("min_free_disk", None), ("default_cluster", None),
)


def write_example_workbook(path: str | Path) -> Path:
    """Write the annotated example `experiments.xlsx` (atomically) and return its path."""
    from openpyxl import Workbook as OpenpyxlWorkbook

    path = Path(path)
    book = OpenpyxlWorkbook()
    experiments = book.active
    experiments.title = "Experiments"
    _fill(experiments, EXAMPLE_EXPERIMENTS, _experiment_help)
    _drop_down(experiments, EXAMPLE_EXPERIMENTS[0].index("state"), [d.value for d in Desired], "state")
    _fill(book.create_sheet("Clusters"), EXAMPLE_CLUSTERS, CLUSTER_HELP.get)
    _drop_down(book["Clusters"], 1, [k.value for k in ClusterKind], "kind")
    _fill(book.create_sheet("Metrics"), EXAMPLE_METRICS, METRIC_HELP.get)
    _drop_down(book["Metrics"], 2, ["min", "max"], "goal")
    settings = book.create_sheet("Settings")
    _fill(settings, (("key", "value", "meaning"), *((k, v, SETTING_HELP[k]) for k, v in EXAMPLE_SETTINGS)), {
        "key": "A setting's name. Empty value: the default.",
        "value": "The setting's value; empty means the default.",
        "meaning": "What the setting does (for you; nero reads only key and value).",
    }.get)
    for row, (key, _) in enumerate(EXAMPLE_SETTINGS, start=2):
        settings.cell(row, 1).comment = _comment(SETTING_HELP[key])
    write_atomically(path, book.save)
    return path


def _experiment_help(header: str) -> str:
    return EXPERIMENT_HELP.get(header) or PARAMETER_HELP % header


def _fill(ws: Any, rows: Sequence[Sequence[object]], help_for: Callable[[str], str | None]) -> None:
    from openpyxl.styles import Alignment, Font

    for r, values in enumerate(rows, start=1):
        for c, value in enumerate(values, start=1):
            if value is not None:
                ws.cell(r, c, value)
    bold, left = Font(bold=True), Alignment(horizontal="left", vertical="top")
    for c, header in enumerate(rows[0], start=1):
        cell = ws.cell(1, c)
        cell.font = bold
        cell.comment = _comment(help_for(str(header)) or str(header))
        longest = max(len(_text(row[c - 1])) for row in rows if c - 1 < len(row) and row[c - 1] is not None)
        ws.column_dimensions[column_letter(c - 1)].width = min(max(10, longest + 2), 80)
        for r in range(2, len(rows) + 1):
            ws.cell(r, c).alignment = left
    ws.freeze_panes = "A2"


def _comment(text: str) -> Any:
    from openpyxl.comments import Comment

    comment = Comment(text, "nero")
    comment.width = 320
    comment.height = 40 + 16 * (len(text) // 45 + text.count("\n") + 1)
    return comment


def _drop_down(ws: Any, col: int, options: Sequence[str], what: str) -> None:
    from openpyxl.worksheet.datavalidation import DataValidation

    dv = DataValidation(type="list", formula1=f'"{",".join(options)}"', allow_blank=True,
                        showErrorMessage=True, errorTitle=f"Not a valid {what}",
                        error=f"Choose one of: {', '.join(options)}")
    letter = column_letter(col)
    dv.add(f"{letter}2:{letter}1000")
    ws.add_data_validation(dv)


