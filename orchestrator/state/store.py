"""The SQLite state store (`.nero/state.db` beside the workbook): the home of sqlite3.

Tables: `runs` (identity and essence of each run the sheet ever asked for and nero submitted),
`attempts` (each submission of a run: job id, run directory, state, read offsets, its metric files'
offsets, last/best metrics), `metrics` (every metric point), `events` (every transition with its
reason), `outbox` (e-mails: the exact message, its delivery status and a sent mark), `meta`
(schema version, the e-mail event cursor, last digest time and the time of the last reconcile pass).

Crash safety rests on two rules. (1) An attempt row is committed with `intent=1`
*before* its job is submitted; the row is confirmed with the job id afterwards, so after
a crash in between the next pass adopts the job instead of submitting it again.
(2) Metric points and the read offsets they came from are committed in the same
transaction, so a restart neither loses nor duplicates a point.

Metric histories are what the loop reads most (rules and the results workbook, every
pass): each Store keeps those of the runs' current attempts as compact Series and reads
only the metric rows added since its last read (the table is append-only), see
`Store.histories`; those of earlier attempts only on request (`Store.earlier_histories`).

A full or read-only disk is no damage: every statement that fails for it rolls its
transaction back and raises `DiskError` (see `files.disk_error`), which says the state is
intact. Only a store that fails SQLite's own `PRAGMA integrity_check` is called damaged
and worth moving aside.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import DiskError, StateError
from ..files import create_file, disk_error
from ..model import (
    Event,
    NewAttempt,
    Override,
    OverrideKind,
    RunRecord,
    RunState,
    Series,
    Update,
)
from .histories import METRIC_ROWS, EarlierHistories, RunHistories, merge
from .outbox import Outbox
from .schema import (
    ADDED_COLUMNS,
    INSTALL,
    LAST_PASS,
    REWRITES,
    SCHEMA,
    SCHEMA_VERSION,
    SNAPSHOT_SQL,
    TRIGGERS,
    essence_json,
    params_json,
    record_of,
    update_of,
)

__all__ = ["SCHEMA_VERSION", "Store"]

_EVENT_SQL = "INSERT INTO events (time, key, attempt, kind, reason) VALUES (?,?,?,?,?)"


class Store(Outbox):
    """One SQLite database in WAL mode; every write method is one transaction."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            create_file(self.path)  # the umask's mode, which SQLite gives its -wal and -shm too
        except OSError as e:
            raise disk_error(self.path.parent, e) or StateError(f"cannot create {self.path.parent}: {e}") from e
        self._writes = 0
        self._cache: tuple[tuple[int, int], dict[str, RunRecord]] | None = None
        # The histories of every run's current attempt, from the metric rows up to rowid
        # `_read_to` (None: not read yet), as of `_histories_version`; see `_refresh`.
        self._runs: dict[str, RunHistories] = {}
        self._read_to: int | None = None
        self._histories_version: tuple[int, int] | None = None
        self._rewrites: str | None = None
        self._earlier = EarlierHistories()  # of the attempts before each run's current one
        try:
            self.db = _Guarded(sqlite3.connect(str(self.path), timeout=30, isolation_level=None), self.path)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except DiskError:
            self._close_quietly()
            raise
        except sqlite3.DatabaseError as e:
            self._close_quietly()
            raise _unusable(self.path, e) from None

    def _close_quietly(self) -> None:
        db = getattr(self, "db", None)
        if db is not None:
            db.close()

    def _migrate(self) -> None:
        row = None
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.OperationalError:
            pass
        if row and int(row[0]) > SCHEMA_VERSION:
            raise StateError(f"{self.path} was written by a newer nero (schema {row[0]} > {SCHEMA_VERSION}); upgrade nero")
        if not row:
            with self.transaction():
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        for table, added in ADDED_COLUMNS.items():  # a store from before these columns
            columns = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
            missing = [(name, kind) for name, kind in added.items() if name not in columns]
            if missing:
                with self.transaction():
                    for name, kind in missing:
                        self.db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
        have = {name for (name,) in self.db.execute("SELECT name FROM sqlite_master WHERE type IN ('trigger', 'index')")}
        if not have.issuperset(TRIGGERS):  # a store from before the triggers
            with self.transaction():
                for statement in INSTALL:
                    self.db.execute(statement)

    def close(self) -> None:
        self.db.close()

    def transaction(self):
        self._writes += 1
        return _Tx(self.db)

    # ----------------------------------------------------------------- reading
    def snapshot(self) -> dict[str, RunRecord]:
        """Every run with its current attempt. Cached until this store or another
        process commits a change (SQLite's data_version tells the latter)."""
        version = (self.db.execute("PRAGMA data_version").fetchone()[0], self._writes)
        if self._cache is None or self._cache[0] != version:
            self._cache = (version, {row[0]: record_of(row) for row in self.db.execute(SNAPSHOT_SQL)})
        return dict(self._cache[1])

    def essences(self, keys: Iterable[str]) -> dict[str, str]:
        """The essence (JSON) each run was submitted with, of the runs `keys` (the snapshot
        leaves it out: the planner reads it only for a run whose spec changed)."""
        wanted, out = list(keys), {}
        for i in range(0, len(wanted), 500):
            part = wanted[i:i + 500]
            out.update(self.db.execute(f"SELECT key, essence FROM runs WHERE key IN ({','.join('?' * len(part))})",
                                       part).fetchall())
        return out

    def record(self, key: str) -> RunRecord | None:
        row = self.db.execute(SNAPSHOT_SQL + " WHERE r.key = ?", (key,)).fetchone()
        return record_of(row) if row else None

    def attempts(self, key: str) -> list[RunRecord]:
        sql = SNAPSHOT_SQL.replace("a.attempt = r.attempt", "1") + " WHERE r.key = ? ORDER BY a.attempt"
        return [record_of(row) for row in self.db.execute(sql, (key,))]

    def history(self, key: str, attempt: int | None = None) -> dict[str, Series]:
        """The metric histories of one attempt (default: the current one), see `histories.merge`;
        from the histories kept since `histories()` was called, if they hold it."""
        if self._read_to is not None:
            self._refresh()
            run = self._runs.get(key)
            if run is not None and attempt in (None, run.attempt):
                return run.view()
        with _Tx(self.db, "BEGIN"):
            if attempt is None:
                row = self.db.execute("SELECT attempt FROM runs WHERE key=?", (key,)).fetchone()
                attempt = row[0] if row else 0
            run = RunHistories(attempt)
            merge(self.db.execute(METRIC_ROWS + " WHERE key=? AND attempt=? ORDER BY rowid", (key, attempt)),
                   {key: run})
        return run.view()

    def histories(self) -> dict[str, dict[str, Series]]:
        """The histories of every run's current attempt (runs without a metric point are
        left out), in run number order. The store keeps them and reads only what was added
        since, so a Series that did not change is the same object as last time."""
        self._refresh()
        return {key: run.view() for key, run in self._runs.items() if run.curves}

    def _refresh(self) -> None:
        """Bring the kept histories up to date with the database (another process may have
        written to it too), in one read transaction so that runs and points agree:

        * runs that vanished or moved on to a new attempt are dropped;
        * the metric rows added since the last read (rowid above `_read_to`; the table is
          append-only) are merged into the runs still kept;
        * runs not kept yet (all of them the first time; later a new run or attempt) are
          read up to the same rowid: the first time in one pass over the table, later each
          by its index.
        """
        version = (self.db.execute("PRAGMA data_version").fetchone()[0], self._writes)
        if version == self._histories_version:
            return
        with _Tx(self.db, "BEGIN"):
            rewrites = self.get_meta(REWRITES)
            if rewrites != self._rewrites:
                self._runs, self._read_to, self._rewrites = {}, None, rewrites
            current = self.db.execute("SELECT key, attempt FROM runs ORDER BY number").fetchall()
            (top,) = self.db.execute("SELECT COALESCE(MAX(rowid), 0) FROM metrics").fetchone()
            attempts = dict(current)
            kept = {k: run for k, run in self._runs.items() if attempts.get(k) == run.attempt}
            if self._read_to is not None and top > self._read_to:
                merge(self.db.execute(METRIC_ROWS + " WHERE rowid > ? AND rowid <= ? ORDER BY rowid",
                                       (self._read_to, top)), kept)
            new = {k: RunHistories(a) for k, a in current if k not in kept}
            if new and self._read_to is None:
                merge(self.db.execute(METRIC_ROWS + " WHERE rowid <= ? ORDER BY rowid", (top,)), new)
            else:
                for key, run in new.items():
                    merge(self.db.execute(METRIC_ROWS + " WHERE key=? AND attempt=? AND rowid <= ? ORDER BY rowid",
                                           (key, run.attempt, top)), {key: run})
            self._runs = {k: kept[k] if k in kept else new[k] for k, _ in current}
            self._read_to = top
        self._histories_version = version

    def earlier_attempts(self) -> list[RunRecord]:
        """Each attempt before its run's current one (restarts, retries), by number and attempt."""
        sql = SNAPSHOT_SQL.replace("a.attempt = r.attempt", "a.attempt < r.attempt")
        return [record_of(row) for row in self.db.execute(sql + " ORDER BY r.number, a.attempt")]

    def earlier_histories(self) -> dict[tuple[str, int], dict[str, Series]]:
        """The histories of `earlier_attempts` by (run key, attempt), apart from `histories()`."""
        version = (self.db.execute("PRAGMA data_version").fetchone()[0], self._writes)
        if version != self._earlier.version:
            with _Tx(self.db, "BEGIN"):
                self._earlier.refresh(self.db.execute, self.get_meta(REWRITES), version)
        return self._earlier.view()

    def events(self, key: str | None = None, since: float | None = None, limit: int | None = None) -> list[Event]:
        sql, args = "SELECT time, key, kind, reason, attempt FROM events WHERE 1", []
        if key is not None:
            sql += " AND key = ?"
            args.append(key)
        if since is not None:
            sql += " AND time > ?"
            args.append(since)
        sql += " ORDER BY id"
        if limit:
            sql = f"SELECT * FROM ({sql.replace('ORDER BY id', 'ORDER BY id DESC')} LIMIT {int(limit)}) ORDER BY time"
        return [Event(time=t, key=k, kind=kd, reason=r, attempt=a) for t, k, kd, r, a in self.db.execute(sql, args)]

    # ----------------------------------------------------------------- writing
    def record_intents(self, new: Sequence[NewAttempt], now: float) -> None:
        """Commit attempts about to be submitted, before submitting them (a statement per
        table for all of them: 1,000 intents in a few milliseconds more than their triggers)."""
        if not new:
            return
        with self.transaction():
            (next_number,) = self.db.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM runs").fetchone()
            keys = [n.spec.key for n in new]
            known: set[str] = set()
            for k in range(0, len(keys), 500):
                chunk = keys[k:k + 500]
                known.update(r[0] for r in self.db.execute(
                    f"SELECT key FROM runs WHERE key IN ({','.join('?' * len(chunk))})", chunk))
            updates, inserts, attempts, events = [], [], [], []
            ends: dict[tuple[object, ...], tuple[str, str]] = {}
            for n in new:
                s = n.spec
                essence = essence_json(s, ends)
                params = params_json(s.params)
                if s.key in known:
                    updates.append((s.spec_hash, essence, params, n.attempt, s.key))
                else:
                    known.add(s.key)
                    inserts.append((s.key, next_number, s.experiment, s.spec_hash, essence, params, n.attempt, now))
                    next_number += 1
                attempts.append((s.key, n.attempt, RunState.PENDING.value, n.cluster, n.run_dir, s.spec_hash,
                                 n.command, n.parent, n.code_hash, n.git_commit, int(n.git_dirty), now, n.retry, n.who))
                why = f": {n.reason}" if n.reason else ""
                events.append((now, s.key, n.attempt, "submitting", f"attempt {n.attempt} on {n.cluster}{why}"))
            self.db.executemany("UPDATE runs SET spec_hash=?, essence=?, params=?, attempt=?, orphaned=0 WHERE key=?",
                                updates)
            self.db.executemany(
                "INSERT INTO runs (key, number, experiment, spec_hash, essence, params, attempt, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", inserts)
            self.db.executemany(
                "INSERT OR REPLACE INTO attempts (key, attempt, state, cluster, run_dir, spec_hash, command, intent, "
                "parent, code_hash, git_commit, git_dirty, submitted_at, retry, who) VALUES (?,?,?,?,?,?,?,1,?,?,?,?,?,?,?)",
                attempts)
            self.db.executemany(_EVENT_SQL, events)

    def apply(self, updates: Iterable[Update], events: Iterable[Event] = (), orphaned: Iterable[tuple[str, bool]] = ()) -> None:
        """Apply one pass's observations, metric points and events in one transaction (one
        statement for each run of updates that set the same columns)."""
        with self.transaction():
            sql, rows = "", []
            points: list[tuple[object, ...]] = []
            written: list[tuple[object, ...]] = []
            for u in updates:
                this, args = update_of(u)
                if this != sql:
                    if rows:
                        self.db.executemany(sql, rows)
                    sql, rows = this, []
                if this:
                    rows.append(args)
                points += [(u.key, u.attempt, p.name, p.step, None if math.isnan(p.value) else p.value, p.time,
                            p.source) for p in u.points]
                written += [(e.time, e.key, e.attempt, e.kind, e.reason) for e in u.events]
            if rows:
                self.db.executemany(sql, rows)
            if points:
                self.db.executemany(
                    "INSERT INTO metrics (key, attempt, name, step, value, time, source) VALUES (?,?,?,?,?,?,?)", points)
            written += [(e.time, e.key, e.attempt, e.kind, e.reason) for e in events]
            if written:
                self.db.executemany(_EVENT_SQL, written)
            for key, flag in orphaned:
                self.db.execute("UPDATE runs SET orphaned=? WHERE key=?", (int(flag), key))

    def _event(self, e: Event) -> None:
        self.db.execute(_EVENT_SQL, (e.time, e.key, e.attempt, e.kind, e.reason))

    # ----------------------------------------------------------------- overrides
    def overrides(self) -> dict[str, Override]:
        rows = self.db.execute("SELECT key, kind, spec_hash, attempt, time, resume FROM overrides")
        return {k: Override(k, OverrideKind(kind), h, a, t, bool(r)) for k, kind, h, a, t, r in rows}

    def set_overrides(self, items: Sequence[Override], events: Iterable[Event] = ()) -> None:
        with self.transaction():
            for o in items:
                self.db.execute("INSERT OR REPLACE INTO overrides VALUES (?,?,?,?,?,?)",
                                (o.key, o.kind.value, o.spec_hash, o.attempt, o.time, int(o.resume)))
            for e in events:
                self._event(e)

    def drop_overrides(self, keys: Iterable[str], kinds: Iterable[OverrideKind] | None = None,
                       events: Iterable[Event] = ()) -> int:
        n = 0
        with self.transaction():
            for k in keys:
                if kinds is None:
                    n += self.db.execute("DELETE FROM overrides WHERE key=?", (k,)).rowcount
                else:
                    for kind in kinds:
                        n += self.db.execute("DELETE FROM overrides WHERE key=? AND kind=?", (k, kind.value)).rowcount
            for e in events:
                self._event(e)
        return n

    def events_after(self, event_id: int) -> list[tuple[int, Event]]:
        """Events recorded after the event with this id, with their ids, in order."""
        rows = self.db.execute("SELECT id, time, key, kind, reason, attempt FROM events WHERE id > ? ORDER BY id",
                               (event_id,))
        return [(i, Event(time=t, key=k, kind=kd, reason=r, attempt=a)) for i, t, k, kd, r, a in rows]

    def last_event_id(self, before: float | None = None) -> int:
        """The id of the newest event (recorded before the time `before`); 0 if none."""
        if before is None:
            row = self.db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
        else:
            row = self.db.execute("SELECT COALESCE(MAX(id), 0) FROM events WHERE time < ?", (before,)).fetchone()
        return int(row[0])

    def reading(self) -> _Tx:
        """A read transaction: the statements inside it see one state of the database (a
        results write reads the runs twice, a batch at a time; the two passes agree)."""
        return _Tx(self.db, "BEGIN")

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with _Tx(self.db):  # the cached snapshot, histories and events hold no meta: they stay
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def last_pass(self) -> float | None:
        """When the last reconcile pass that ran to its end ran (its clock); None if none did."""
        raw = self.get_meta(LAST_PASS)
        return float(raw) if raw else None

    def record_pass(self, now: float) -> None:
        """Note that a reconcile pass ran to its end at `now` (what `nero status` dates by)."""
        self.set_meta(LAST_PASS, repr(now))

    # ----------------------------------------------------------------- confirmations
    def confirmed(self) -> frozenset[str]:
        """The tokens of the changes `nero apply` confirmed and no pass has used up yet."""
        return frozenset(json.loads(self.get_meta("confirmed") or "[]"))

    def set_confirmed(self, tokens: Iterable[str]) -> None:
        self.set_meta("confirmed", json.dumps(sorted(set(tokens))))

    def shown_plan(self, fingerprint: str) -> list[str] | None:
        """What a plan with awaiting changes listed (one line each), if one was shown."""
        return json.loads(self.get_meta("shown_plans") or "{}").get(fingerprint)

    def remember_plan(self, fingerprint: str, lines: Sequence[str], keep: int = 20) -> None:
        """Keep what a plan awaiting confirmation listed (the newest `keep` plans; the caller
        keeps at most its first 1,000 lines), so that `nero apply ID` can say what changed
        since that plan was shown."""
        shown = json.loads(self.get_meta("shown_plans") or "{}")
        if shown.get(fingerprint) == list(lines):
            return
        shown.pop(fingerprint, None)
        shown[fingerprint] = list(lines)
        self.set_meta("shown_plans", json.dumps(dict(list(shown.items())[-keep:])))


def _unusable(path: Path, error: sqlite3.Error) -> StateError:
    """A store that does not open for a reason other than its disk: damaged only if SQLite's
    integrity check says so (then, and only then, moving it aside is the advice)."""
    try:
        con = sqlite3.connect(path.absolute().as_uri() + "?mode=ro", uri=True, timeout=5)
        try:
            verdict = [str(row[0]) for row in con.execute("PRAGMA integrity_check").fetchmany(3)]
        finally:
            con.close()
    except sqlite3.Error as e:
        if not str(getattr(e, "sqlite_errorname", "")).startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
            return StateError(f"state store {path} cannot be opened: {error} (its integrity check could not run: "
                              f"{e}); fix what the error names (permissions, a lock) and run nero again. Keep the "
                              "file: nothing says it is damaged")
        verdict = [str(e)]
    if verdict == ["ok"]:
        return StateError(f"state store {path} cannot be used now: {error}. Its integrity check passed, so "
                          "keep it: nothing in it was lost; fix what the error names and run nero again")
    return StateError(f"state store {path} is damaged: {error}; integrity check: {'; '.join(verdict)}. "
                      "Move it aside to start afresh (runs keep going, but nero forgets them)")


class _Guarded:
    """The store's sqlite3 connection, whose statements raise DiskError for a full or
    read-only disk (SQLite has rolled the statement back; `_Tx` rolls back the rest)."""

    def __init__(self, con: sqlite3.Connection, path: Path):
        self.con, self.path = con, path

    def execute(self, sql: str, args: Sequence[object] = ()) -> sqlite3.Cursor:
        try:
            return self.con.execute(sql, args)
        except sqlite3.Error as e:
            raise disk_error(self.path, e) or e from e

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> sqlite3.Cursor:
        try:
            return self.con.executemany(sql, rows)
        except sqlite3.Error as e:
            raise disk_error(self.path, e) or e from e

    def close(self) -> None:
        self.con.close()


class _Tx:
    """A transaction: a write transaction (IMMEDIATE: it takes the write lock at once), or
    with `begin="BEGIN"` a read transaction whose statements see one state of the database.
    A failed statement or commit rolls the whole transaction back."""

    def __init__(self, db: _Guarded, begin: str = "BEGIN IMMEDIATE"):
        self.db = db
        self.begin = begin

    def __enter__(self):
        self.db.execute(self.begin)
        return self.db

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
                return False
            except BaseException:
                self._rollback()
                raise
        self._rollback()
        return False

    def _rollback(self) -> None:
        if self.db.con.in_transaction:  # SQLite may have rolled back already (SQLITE_FULL)
            try:
                self.db.con.execute("ROLLBACK")
            except sqlite3.Error:
                pass

