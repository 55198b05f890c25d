"""The Settings sheet: key/value rows (results file, pass interval, e-mail, digest, …)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..confirm import ON_SAVE
from .cells import choice, names, number, show, text, whole
from .quantities import digest_cell, interval_cell, size_text_cell
from .table import UNREADABLE, Problems, Sheet, header_key

__all__ = ["SETTING_KEYS", "SMTP_SECURITY", "read_settings"]

Values = tuple[tuple[str, Any, str], ...]  # (key, value, its value cell)

SETTING_KEYS = (
    "results", "interval", "digest", "email_to", "email_from", "smtp_host", "smtp_port",
    "smtp_user", "smtp_security", "primary_metric", "checkpoints", "min_free_disk",
    "default_cluster", "on_save", "confirm_over", "sample_seed",
)
SMTP_SECURITY = ("starttls", "ssl", "none")


def read_settings(sheet: Sheet | None, path: Path, problems: Problems) -> Values:
    """The settings the sheet gives, each with its value cell (empty values left out: the
    weaker layers and the defaults give those, `layers.merge`)."""
    if sheet is None or not sheet.rows:
        return ()
    key_col, value_col, rows = _settings_layout(sheet)
    parsers = _setting_parsers()
    values: dict[str, Any] = {}
    seen: dict[str, str] = {}  # key -> its value cell
    for row_number, cells in rows:
        raw_key = cells[key_col] if key_col < len(cells) else None
        raw_value = cells[value_col] if value_col < len(cells) else None
        key_ref, value_ref = sheet.ref(row_number, key_col), sheet.ref(row_number, value_col)
        if raw_key is None:
            if raw_value is not None:
                problems.add(key_ref, "a value without a setting name; write the name here (e.g. interval) or clear the row")
            continue
        key = "" if raw_key is UNREADABLE else header_key(text(raw_key))
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
            problems.add(key_ref, _unknown_setting(text(raw_key)))
    _check_results(values, seen, path, problems)
    return tuple((key, value, seen[key]) for key, value in values.items())


def _settings_layout(sheet: Sheet) -> tuple[int, int, list[tuple[int, list[object]]]]:
    """Key and value columns (A and B unless a `key`/`value` header row says otherwise)."""
    _, first = sheet.rows[0]
    headers = [header_key(text(v)) if v not in (None, UNREADABLE) else "" for v in first]
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
        "results": _results_name, "interval": interval_cell, "digest": digest_cell,
        "email_to": _emails, "email_from": _email, "smtp_host": text,
        "smtp_port": whole(1, 587, 65535), "smtp_user": text,
        "smtp_security": choice(SMTP_SECURITY), "primary_metric": text,
        "checkpoints": _checkpoints, "min_free_disk": size_text_cell, "default_cluster": text,
        "on_save": choice(ON_SAVE), "confirm_over": whole(0, 200), "sample_seed": whole(0, 42),
    }


def _check_results(values: dict[str, Any], cells: dict[str, str], path: Path, problems: Problems) -> None:
    results = values.get("results")
    if results:
        folder = path.parent.resolve()
        target = (folder / Path(results).expanduser()).resolve()
        if target == path.resolve():
            problems.add(cells["results"], "results would overwrite the experiments workbook itself; "
                         "write another file name such as results.xlsx")
        elif not target.is_relative_to(folder):
            problems.add(cells["results"], f"results {results!r} is outside the project folder {folder}; "
                         "write a file name in it such as results.xlsx (or a subfolder: out/results.xlsx)")


def _results_name(value: object, column: str) -> str:
    name = text(value)
    if not name.lower().endswith(".xlsx"):
        raise ValueError(f"{name!r} is not an .xlsx file name for results; write e.g. results.xlsx")
    return name


def _email(value: object, column: str) -> str:
    address = text(value)
    if "@" not in address:
        raise ValueError(f"{address!r} is not an e-mail address for {column}; write e.g. lab-bot@example.org")
    return address


def _emails(value: object, column: str) -> tuple[str, ...]:
    return tuple(_email(a, column) for a in names(value))


def _checkpoints(value: object, column: str) -> tuple[int, ...]:
    items = [value] if isinstance(value, int | float) else list(names(value))
    steps = [number(i) for i in items]
    if not steps or any(s is None or not s.is_integer() or s < 1 for s in steps):
        raise ValueError(f"{show(value)} is not a list of steps for checkpoints; write whole numbers "
                         "separated by commas, e.g. 10, 50, 200")
    return tuple(sorted({int(s) for s in steps if s is not None}))
