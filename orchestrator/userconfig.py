"""The user file and the environment: the two layers of settings around a project's workbook
(merged by `layers.merge`, the one home of the layering).

The user file is TOML, `config.toml` in the platform's config folder (platformdirs:
`~/.config/nero/` on Linux), or where `$NERO_CONFIG` says. It is read with tomllib and
written with tomlkit, so `nero config set` keeps its comments and layout:

    default_cluster = "gpu1"
    digest = "daily at 08:00"
    state_root = "/scratch/ada/nero-state"
    [mail]            email_to, email_from, smtp_host, smtp_port, smtp_security, smtp_user
    [clusters.gpu1]   the Clusters sheet's columns (kind, host, user, gpus, …)
    [people.ada]      email, digest (mine, all, off)

Its values are checked by the sheet readers themselves (a Settings, Clusters or People
sheet is built from them), so a value means the same in the file as in a cell; a problem
is reported at `<file>:<line>` with its key, all at once (`ConfigError`, exit 2). The
environment overrides a setting with `NERO_<KEY>` (`NERO_SMTP_HOST`, `NERO_STATE_ROOT`).
Passwords never go in the file: `NERO_SMTP_PASSWORD` or the keyring (mail/smtp.py).
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .files import write_atomically
from .layers import USER_KEYS, env_name, merge
from .model import Cluster, Effective, Layer, Origin, Problem
from .sheet import (
    CLUSTER_COLUMNS,
    PEOPLE_COLUMNS,
    Problems,
    Sheet,
    read_clusters,
    read_people,
    read_settings,
)

__all__ = [
    "CLUSTER_FIELDS", "CONFIG_ENV", "PERSON_FIELDS", "TEMPLATE", "Layers", "config_path", "create", "effective",
    "read_layers", "set_value", "state_root",
]

CONFIG_ENV = "NERO_CONFIG"
CLUSTER_FIELDS = tuple(c for c in CLUSTER_COLUMNS if c not in ("name", "notes"))
PERSON_FIELDS = tuple(c for c in PEOPLE_COLUMNS if c not in ("name", "notes"))
_TOP = ("default_cluster", "digest", "state_root", "mail", "clusters", "people")
_FIELD = {key.rpartition(".")[2]: key for key in USER_KEYS}  # smtp_host -> mail.smtp_host

TEMPLATE = """\
# nero's user settings: defaults for all your projects. `nero config` shows what is in
# force and where each value comes from. A project's workbook (Settings, Clusters and
# People sheets) wins over this file, and the environment (NERO_SMTP_HOST, …) over both.
# Passwords never go here: set NERO_SMTP_PASSWORD or run `keyring set nero <smtp_user>`.

# default_cluster = "local"          # where a row without a cluster runs
# digest = "off"                     # the progress digest: "every 6 hours", "daily at 08:00", "off"
# state_root = "/scratch/me/nero"    # keep each project's .nero state under this local folder

# Personal clusters, shared by all projects (the Clusters sheet's columns); a project's
# Clusters row of the same name wins.
# [clusters.gpu1]
# kind = "ssh"
# host = "gpu1.example.org"
# gpus = "0,1"

# People a row's notify may name, and the digest each gets: mine (the rows naming them), all, off.
# [people.ada]
# email = "ada@example.org"
# digest = "mine"

[mail]
# email_to = ["me@example.org"]
# email_from = "me@example.org"
# smtp_host = "smtp.example.org"
# smtp_port = 587
# smtp_security = "starttls"         # starttls, ssl or none
# smtp_user = "me"
"""


@dataclass(frozen=True)
class Layers:
    """The user file's layer and the environment's, the file they came from, and a stamp
    of both (what a cached workbook read depends on besides the workbook)."""

    user: Layer
    env: Layer
    path: Path
    stamp: str


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    """The user file: `$NERO_CONFIG`, else config.toml in the platform's config folder."""
    env = os.environ if environ is None else environ
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]).expanduser()
    import platformdirs

    return platformdirs.user_config_path("nero", appauthor=False) / "config.toml"


def read_layers(environ: Mapping[str, str] | None = None) -> Layers:
    """The user file's layer (empty without the file) and the environment's; ConfigError
    lists every bad value, each at its file, line and key (or variable)."""
    env = os.environ if environ is None else environ
    path = config_path(env)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    except OSError as e:
        raise ConfigError(str(path), [Problem(str(path), f"cannot be read ({e.strerror})")]) from None
    problems: list[Problem] = []
    user = _user_layer(text, path, problems)
    environment = _env_layer(env, problems)
    if problems:
        raise ConfigError(str(path), sorted(problems, key=_line_order))
    given = sorted((name, env[name]) for name in map(env_name, USER_KEYS.values()) if name in env)
    stamp = hashlib.blake2b(repr((str(path), text, given)).encode(), digest_size=12).hexdigest()
    return Layers(user, environment, path, stamp)


def effective(layers: Layers, workbook: str | Path | None = None) -> Effective:
    """What is in force: in a project (its workbook read with these layers; WorkbookError
    if it does not read), else the user file and the environment over the defaults."""
    if workbook is None:
        return merge(Layer("project"), layers.user, layers.env)
    from .sheet import read_workbook

    found = read_workbook(workbook, layers.user, layers.env).effective
    assert found is not None
    return found


def state_root(environ: Mapping[str, str] | None = None) -> tuple[str, Origin]:
    """The folder under which projects keep their `.nero` state ("" for beside the
    workbook) and where that came from: `NERO_STATE_ROOT`, else the user file."""
    found = effective(read_layers(environ))
    return found.state_root, found.origin("state_root")


def create(path: Path) -> bool:
    """Write the commented template to `path` unless a file is there; whether it did."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, TEMPLATE)
    return True


def set_value(key: str, value: str, environ: Mapping[str, str] | None = None,
              more: Sequence[tuple[str, str]] = ()) -> Path:
    """Set `key` (`mail.smtp_host`, `default_cluster`, `clusters.gpu1.host`) to `value`, and
    each pair of `more`, in the user file (created from the template first), keeping its
    comments; the result is checked as a whole before it is written, so a bad value
    changes nothing (ConfigError; ValueError for a key that is no setting)."""
    import tomlkit

    path = config_path(environ)
    text = path.read_text(encoding="utf-8") if path.exists() else TEMPLATE
    for k, _ in ((key, value), *more):
        text = _uncomment(text, _key_parts(k))
    try:
        doc = tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as e:
        raise ConfigError(str(path), [Problem(str(path), f"is not valid TOML ({e}); fix it with "
                                                         "`nero config --edit`")]) from None
    for k, v in ((key, value), *more):
        parts = _key_parts(k)
        table: Any = doc
        for i, part in enumerate(parts[:-1]):
            if part not in table:
                table[part] = tomlkit.table(is_super_table=i == 0 and len(parts) == 3)
            table = table[part]
        table[parts[-1]] = _toml_value(parts[-1], v)
    new = tomlkit.dumps(doc)
    problems: list[Problem] = []
    _user_layer(new, path, problems)
    if problems:
        raise ConfigError(str(path), sorted(problems, key=_line_order))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, new)
    return path


# ---------------------------------------------------------------------------- reading
def _key_parts(key: str) -> list[str]:
    """The file's path of a key `set` takes; ValueError says which keys there are."""
    parts = key.split(".")
    if key in USER_KEYS:
        return parts
    if key in _FIELD:  # smtp_host for mail.smtp_host
        return _FIELD[key].split(".")
    if len(parts) == 3 and parts[0] == "clusters" and parts[2] in CLUSTER_FIELDS:
        return parts
    if len(parts) == 3 and parts[0] == "people" and parts[2] in PERSON_FIELDS:
        return parts
    raise ValueError(f"unknown setting {key!r}; settings: {', '.join(USER_KEYS)}, clusters.NAME.FIELD "
                     f"({', '.join(CLUSTER_FIELDS)}), people.NAME.FIELD ({', '.join(PERSON_FIELDS)})")


def _uncomment(text: str, parts: list[str]) -> str:
    """`text` with the template's commented example of a key not yet set (`# smtp_port =
    587  # …`) made a live line (`smtp_port = 0  # …`), which `set` then overwrites with the
    value: the value lands where the example stands, its comment kept."""
    table, leaf = ".".join(parts[:-1]), parts[-1]
    if f"{table}.{leaf}".strip(".") in _lines(text):
        return text
    lines = text.splitlines(keepends=True)
    current = ""
    for i, line in enumerate(lines):
        if m := re.match(r"^\[\s*([^\]]+?)\s*\]", line.strip()):
            current = m.group(1).strip()
        elif current == table and (m := re.match(rf"^#\s*{re.escape(leaf)}\s*=\s*[^#]*(#.*)?$", line.strip())):
            lines[i] = f"{leaf} = 0" + (f"  {m.group(1)}" if m.group(1) else "") + "\n"
            return "".join(lines)
    return text


def _toml_value(field: str, value: str) -> Any:
    """A value typed on the command line as the file keeps it: numbers for ports and
    counts, a list for email_to, text otherwise."""
    if field in ("smtp_port", "port", "max_jobs") and value.strip().isdigit():
        return int(value)
    if field == "email_to":
        return [a.strip() for a in re.split(r"[,;]", value) if a.strip()]
    return value


def _lines(text: str) -> dict[str, int]:
    """The line of each key and table in the file (`mail.smtp_port` -> 12)."""
    found: dict[str, int] = {}
    table = ""
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if m := re.match(r"^\[\s*([^\]]+?)\s*\]", stripped):
            table = ".".join(p.strip().strip("\"'") for p in m.group(1).split("."))
            found.setdefault(table, n)
        elif m := re.match(r"^([A-Za-z0-9_.\"' -]+?)\s*=", stripped):
            key = ".".join(p.strip().strip("\"'") for p in m.group(1).split("."))
            found.setdefault(f"{table}.{key}" if table else key, n)
    return found


def _cell(value: Any) -> Any:
    """A TOML value as a cell holds it (a list of addresses as one comma-separated cell)."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ", ".join(value)
    if isinstance(value, dict | list):
        raise ValueError("is a table or list; write a single value here")
    return value


def _user_layer(text: str, path: Path, problems: list[Problem]) -> Layer:
    """The user file as a layer; its problems added to `problems`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problems.append(Problem(str(path), f"is not valid TOML ({e}); fix it with `nero config --edit`"))
        return Layer("user")
    lines = _lines(text)

    def where(key: str) -> str:
        line = lines.get(key) or lines.get(key.rpartition(".")[0])
        return f"{path}:{line}" if line else str(path)

    def bad(key: str, message: str) -> None:
        problems.append(Problem(f"{where(key)}: {key}", message))

    values: list[tuple[str, Any]] = []
    for key, value in data.items():
        if key not in _TOP:
            bad(key, _unknown(key, ", ".join(_TOP)))
        elif key == "mail":
            if not isinstance(value, dict):
                bad(key, "must be a table: [mail] with email_to, smtp_host, …")
                continue
            for field, v in value.items():
                full = f"mail.{field}"
                if full in USER_KEYS:
                    values.append((full, v))
                else:
                    bad(full, _unknown(field, ", ".join(k for k in USER_KEYS if k.startswith("mail."))))
        elif key in ("clusters", "people") and not (isinstance(value, dict)
                                                   and all(isinstance(t, dict) for t in value.values())):
            bad(key, f"must hold tables: [{key}.NAME] with its fields")
        elif key not in ("clusters", "people"):
            values.append((key, value))
    clusters = _read_tables(data.get("clusters"), "clusters", CLUSTER_FIELDS, where, bad)
    people = _read_tables(data.get("people"), "people", PERSON_FIELDS, where, bad)
    return Layer("user", _settings(values, where, bad),
                 tuple((_placed(c, where), where(f"clusters.{c.name}"))
                       for c in read_clusters(clusters, _relay(clusters, "clusters", bad)) if c.cell("name")),
                 tuple((p, where(f"people.{p.name}")) for p, _ in read_people(people, _relay(people, "people", bad))))


def _placed(cluster: Cluster, where: Where) -> Cluster:
    """A user cluster that names its own lines (a template problem is blamed on them)."""
    key = f"clusters.{cluster.name}"
    return replace(cluster, cells=(("name", where(key)), ("template", where(f"{key}.template"))))


Where = Callable[[str], str]
Bad = Callable[[str, str], None]


class _Relay(Problems):
    """Problems found in a sheet built from the file (or the environment), reported at the
    key each cell came from."""

    def __init__(self, keys: Mapping[str, str], bad: Bad):
        super().__init__()
        self.keys, self.bad = keys, bad

    def add(self, where: str, message: str) -> None:
        key = self.keys.get(where) or self.keys.get(re.sub(r"![A-Z]+(\d+)$", r"!\1", where), where)
        self.bad(key, message)


def _relay(sheet: Sheet | None, prefix: str, bad: Bad) -> Problems:
    """The relay of a Clusters or People sheet built by `_read_tables`: each cell's key is
    `<prefix>.<name>.<column>`, a row's is `<prefix>.<name>`."""
    keys: dict[str, str] = {}
    if sheet is not None:
        (_, header), *rows = sheet.rows
        for n, cells in rows:
            keys[f"{sheet.title}!{n}"] = f"{prefix}.{cells[0]}"
            for c, column in enumerate(header):
                keys[sheet.ref(n, c)] = f"{prefix}.{cells[0]}" + (f".{column}" if c else "")
    return _Relay(keys, bad)


def _read_tables(tables: Any, prefix: str, fields: tuple[str, ...], where: Where, bad: Bad) -> Sheet | None:
    """`[clusters.NAME]` (or `[people.NAME]`) tables as the rows of a sheet; unknown fields
    and values that are no single value are reported here."""
    if not isinstance(tables, dict) or not tables:
        return None
    title = prefix.capitalize()
    rows: list[tuple[int, list[object]]] = [(1, ["name", *fields])]
    for name, table in tables.items():
        if not isinstance(table, dict):
            continue
        cells: list[object] = [name] + [None] * len(fields)
        for field, value in table.items():
            key = f"{prefix}.{name}.{field}"
            if field not in fields:
                bad(key, _unknown(field, ", ".join(fields)))
                continue
            try:
                cells[1 + fields.index(field)] = _cell(value)
            except ValueError as e:
                bad(key, str(e))
        rows.append((len(rows) + 1, cells))
    return Sheet(title, rows)


def _settings(values: list[tuple[str, Any]], where: Where, bad: Bad) -> tuple[tuple[str, Any, str], ...]:
    """The file's settings, checked by the Settings sheet's reader; `state_root` here."""
    found: list[tuple[str, Any, str]] = []
    rows: list[tuple[int, list[object]]] = []
    keys: dict[str, str] = {}
    for key, value in values:
        if key == "state_root":
            try:
                found.append((key, _state_root(value), where(key)))
            except ValueError as e:
                bad(key, str(e))
            continue
        try:
            cell = _cell(value)
        except ValueError as e:
            bad(key, str(e))
            continue
        n = len(rows) + 1
        rows.append((n, [USER_KEYS[key], cell]))
        keys[f"Settings!A{n}"] = keys[f"Settings!B{n}"] = key
    read = read_settings(Sheet("Settings", rows), Path("."), _Relay(keys, bad)) if rows else ()
    return tuple((field, value, where(keys[cell])) for field, value, cell in read) + tuple(found)


def _state_root(value: Any) -> str:
    """A state_root value: an absolute folder (~ expanded)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError('write the path of a folder on a local disk, e.g. "/scratch/me/nero"')
    root = os.path.expanduser(value.strip())
    if not os.path.isabs(root):
        raise ValueError(f'{value!r} is not an absolute path; write one such as "/scratch/me/nero"')
    return root


def _env_layer(env: Mapping[str, str], problems: list[Problem]) -> Layer:
    """The `NERO_<KEY>` variables that are set, checked as the file's values are."""
    values = [(key, env[env_name(field)]) for key, field in USER_KEYS.items() if env.get(env_name(field), "").strip()]

    def bad(key: str, message: str) -> None:
        problems.append(Problem(f"environment {env_name(USER_KEYS[key])}", message))

    return Layer("environment", _settings(values, lambda key: env_name(USER_KEYS[key]), bad))


def _line_order(problem: Problem) -> tuple[int, int]:
    """The file's problems by line, then the environment's."""
    m = re.match(r"^.*:(\d+): ", problem.where + " ")
    return (0, int(m.group(1))) if m else (1, 0)


def _unknown(key: str, valid: str) -> str:
    if "pass" in key.lower() or "secret" in key.lower():
        return ("secrets never go in this file; remove it and give the SMTP password through NERO_SMTP_PASSWORD "
                "or `keyring set nero <smtp_user>`")
    return f"unknown key {key!r}; valid here: {valid}"
