"""What a command may reuse from the last one that did the same work (issue #14): the
workbook as read, that it passed its checks, the plan, kept in the store's `cache` table
under a stamp of everything they were made from.

A cached value is used only when its stamp equals the one of now, and a stamp names every
input: the workbook file's bytes (SHA-256), nero's own code (each file's path, size and
modification time), the job templates (their bytes too), the project folder and the store's data version
(`data_version`: a counter that triggers on `runs`, `attempts` and `overrides` raise on
every row written, `schema.TRIGGERS`), plus what the caller adds (the confirmed tokens, the
command's flags). Any edit, override or change of a run's state therefore misses the cache,
and a value from another time can never be taken for the present one; the counter only
grows, so a stamp once stale stays stale.

The values are pickled: the table lives in the store, which nero alone writes, and one
that does not unpickle (another nero, a damaged row) is a miss. Writing the cache never
fails a command: a full disk leaves it unwritten.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sqlite3
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import NeroError
from .schema import DATA_VERSION

if TYPE_CHECKING:
    from .store import Store

__all__ = ["cached", "data_version", "file_digest", "folder_stamp", "keep"]

_BUSY_MS = 30_000  # the store's own (sqlite3.connect(timeout=30))
_TABLE = "CREATE TABLE IF NOT EXISTS cache (name TEXT PRIMARY KEY, stamp TEXT NOT NULL, value BLOB NOT NULL)"


def data_version(store: Store) -> str:
    """The store's data version: changes whenever a run, an attempt or an override is
    written (by any process). "0" before the first such write since the triggers were
    installed (a Store installs them when it opens the database)."""
    row = store.db.execute("SELECT value FROM meta WHERE key = ?", (DATA_VERSION,)).fetchone()
    return str(row[0]) if row else "0"


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes with its size ("" when it cannot be read)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError:
        return ""
    return h.hexdigest()


def folder_stamp(*folders: Path, suffixes: tuple[str, ...] = (), contents: bool = False) -> str:
    """A digest of every file below `folders` (those ending in `suffixes` if given): path,
    size and modification time, and with `contents` its bytes; a folder that does not exist
    counts as empty."""
    h = hashlib.sha256()
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if suffixes and not name.endswith(suffixes):
                    continue
                path = os.path.join(root, name)
                with suppress(OSError):
                    st = os.stat(path)
                    h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{file_digest(Path(path)) if contents else ''}\n"
                             .encode())
    return h.hexdigest()


def cached(store: Store, name: str, stamp: str) -> object | None:
    """The value kept under `name` if it was made under `stamp`; None otherwise."""
    if not stamp:
        return None
    try:
        row = store.db.execute("SELECT stamp, value FROM cache WHERE name = ?", (name,)).fetchone()
    except (sqlite3.Error, NeroError):  # a store without the table yet
        return None
    if row is None or row[0] != stamp:
        return None
    try:
        return pickle.loads(row[1])
    except Exception:  # written by another nero: a miss
        return None


def keep(store: Store, name: str, stamp: str, value: object) -> None:
    """Keep `value` under `name`, made under `stamp` (one statement: the snapshot the
    store keeps in memory stays valid, the cache is no run data)."""
    if not stamp:
        return
    with suppress(sqlite3.Error, NeroError):
        blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        store.db.execute("PRAGMA busy_timeout = 100")  # a reconcile writing: no waiting, the cache stays as it was
        try:
            store.db.execute(_TABLE)
            store.db.execute("INSERT OR REPLACE INTO cache VALUES (?, ?, ?)", (name, stamp, blob))
        finally:
            store.db.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
