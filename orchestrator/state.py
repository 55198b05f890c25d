"""The SQLite state store (`.nero/state.db` beside the workbook): the home of sqlite3.

Tables: `runs` (identity and essence of each run the sheet ever asked for and nero
submitted), `attempts` (each submission of a run: job id, run directory, state, read
offsets, last/best metrics), `metrics` (every metric point), `events` (every transition
with its reason), `outbox` (e-mails: the exact message, its delivery status and a sent
mark), `meta` (schema version, the e-mail event cursor and last digest time).

Crash safety rests on two rules. (1) An attempt row is committed with `intent=1`
*before* its job is submitted; the row is confirmed with the job id afterwards, so after
a crash in between the next pass adopts the job instead of submitting it again.
(2) Metric points and the read offsets they came from are committed in the same
transaction, so a restart neither loses nor duplicates a point.

Metric histories are what the loop reads most (rules and the results workbook, every
pass): each Store keeps those of the runs' current attempts as compact Series and reads
only the metric rows added since its last read (the table is append-only), see
`Store.histories`.
"""

from __future__ import annotations

import json
import math
import sqlite3
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import StateError
from .metrics import SOURCE_RANK, supersedes
from .model import (
    Event,
    NewAttempt,
    Offsets,
    Override,
    OverrideKind,
    RunRecord,
    RunState,
    Series,
    Update,
)

__all__ = ["SCHEMA_VERSION", "Store", "Mail"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    number INTEGER NOT NULL UNIQUE,
    experiment TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    essence TEXT NOT NULL,
    params TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    orphaned INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (
    key TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    cluster TEXT NOT NULL DEFAULT '',
    job_id TEXT NOT NULL DEFAULT '',
    host TEXT NOT NULL DEFAULT '',
    run_dir TEXT NOT NULL DEFAULT '',
    spec_hash TEXT NOT NULL DEFAULT '',
    command TEXT NOT NULL DEFAULT '',
    intent INTEGER NOT NULL DEFAULT 1,
    parent INTEGER,
    code_hash TEXT NOT NULL DEFAULT '',
    git_commit TEXT NOT NULL DEFAULT '',
    git_dirty INTEGER NOT NULL DEFAULT 0,
    submitted_at REAL,
    started_at REAL,
    ended_at REAL,
    exit_code INTEGER,
    heartbeat_at REAL,
    stop_requested TEXT NOT NULL DEFAULT '',
    retry INTEGER NOT NULL DEFAULT 0,
    off_stdout INTEGER NOT NULL DEFAULT 0,
    off_stderr INTEGER NOT NULL DEFAULT 0,
    off_metrics INTEGER NOT NULL DEFAULT 0,
    off_resources INTEGER NOT NULL DEFAULT 0,
    step INTEGER,
    last TEXT NOT NULL DEFAULT '{}',
    best TEXT NOT NULL DEFAULT '{}',
    peak_rss REAL,
    peak_gpu REAL,
    min_disk REAL,
    PRIMARY KEY (key, attempt)
);
CREATE TABLE IF NOT EXISTS metrics (
    key TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    name TEXT NOT NULL,
    step INTEGER,
    value REAL,
    time REAL,
    source TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_by_run ON metrics (key, attempt, name);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    key TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_by_run ON events (key);
CREATE TABLE IF NOT EXISTS overrides (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    time REAL NOT NULL,
    resume INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    payload TEXT NOT NULL DEFAULT '{}',
    sent_at REAL,
    tries INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'queued',
    message_id TEXT NOT NULL DEFAULT '',
    sender TEXT NOT NULL DEFAULT '',
    recipients TEXT NOT NULL DEFAULT '',
    eml TEXT NOT NULL DEFAULT '',
    message BLOB
);
"""

_SNAPSHOT_SQL = """
SELECT r.key, r.number, r.experiment, r.spec_hash, r.essence, r.params, r.orphaned,
       a.attempt, a.state, a.reason, a.cluster, a.job_id, a.host, a.run_dir,
       a.submitted_at, a.started_at, a.ended_at, a.exit_code, a.git_commit, a.git_dirty,
       a.intent, a.last, a.best, a.step, a.heartbeat_at, a.command, a.peak_rss, a.peak_gpu,
       a.min_disk, a.parent, a.code_hash, a.off_stdout, a.off_stderr, a.off_metrics,
       a.off_resources, a.stop_requested, a.retry
FROM runs r JOIN attempts a ON a.key = r.key AND a.attempt = r.attempt
"""


def _loads(text: str) -> dict[str, float]:
    if not text or text == "{}":
        return {}
    return {k: float(v) for k, v in json.loads(text).items()}


def _record(row: tuple) -> RunRecord:
    return RunRecord(
        key=row[0], number=row[1], experiment=row[2], spec_hash=row[3], essence=row[4],
        params=tuple((k, v) for k, v in json.loads(row[5])), orphaned=bool(row[6]),
        attempt=row[7], state=RunState(row[8]), reason=row[9], cluster=row[10], job_id=row[11],
        host=row[12], run_dir=row[13], submitted_at=row[14], started_at=row[15],
        ended_at=row[16], exit_code=row[17], git_commit=row[18], git_dirty=bool(row[19]),
        intent=bool(row[20]), last=_loads(row[21]), best=_loads(row[22]), step=row[23],
        heartbeat_at=row[24], command=row[25], peak_rss_mb=row[26], peak_gpu_mem_mb=row[27],
        min_disk_free_mb=row[28], parent_attempt=row[29], code_hash=row[30],
        offsets=Offsets(row[31], row[32], row[33], row[34]), stop_requested=row[35], retry=row[36],
    )


# each point's source rank (metrics.source_rank), computed by SQLite as the rows are read
_RANK_SQL = "CASE source " + " ".join(f"WHEN '{s}' THEN {r}" for s, r in SOURCE_RANK.items()) + " ELSE 0 END"
_METRIC_ROWS = f"SELECT key, attempt, name, step, value, {_RANK_SQL} FROM metrics"
_NEAR = 8  # a step logged again is looked for among this many latest points first

# The metrics table is append-only (nothing in nero updates or deletes a point), which lets
# a Store read only the rows added since its last read. Should anything change or delete
# rows all the same (a hand edit, a future clean-up), these triggers count it, and every
# Store that sees the count change reads the table afresh.
_REWRITES = "metrics_rewrites"
_TRIGGERS = {
    f"metrics_{event.lower()}": (
        f"CREATE TRIGGER IF NOT EXISTS metrics_{event.lower()} AFTER {event} ON metrics BEGIN "
        f"INSERT OR REPLACE INTO meta VALUES ('{_REWRITES}', "
        f"COALESCE((SELECT value FROM meta WHERE key = '{_REWRITES}'), 0) + 1); END"
    )
    for event in ("UPDATE", "DELETE")
}


class _Curve:
    """One metric's history while it is merged (see `_merge`): the arrays of its Series,
    the source rank of each point and the largest step so far, so that a point with a new,
    larger step (nearly every point) costs three appends.

    `series` is the Series last handed out over these arrays. A handed-out Series never
    changes: `own` copies the arrays before the first change after that."""

    __slots__ = ("steps", "values", "ranks", "top", "ordered", "series")

    def __init__(self) -> None:
        self.steps, self.values, self.ranks = array("d"), array("d"), bytearray()
        self.top: float = -math.inf
        self.ordered = True  # every step given, ascending (see Series.ordered)
        self.series: Series | None = None

    def own(self) -> None:
        if self.series is not None:
            self.steps, self.values, self.series = self.steps[:], self.values[:], None

    def place(self, step: float | None, value: float, rank: int) -> None:
        """A point that is not simply appended: one without a step, or whose step is not
        larger than every step so far (logged again, or out of order)."""
        if step is not None:
            i = self.find(step)
            if i >= 0:
                if supersedes(rank, self.ranks[i]):
                    self.values[i] = value
                    self.ranks[i] = rank
                return
        self.ordered = False
        self.steps.append(math.nan if step is None else step)
        self.values.append(value)
        self.ranks.append(rank)

    def find(self, step: float) -> int:
        """The index of the point with this step, -1 if none: the latest points first (a
        step logged twice nearly always is one of them), then the others, both at C speed."""
        steps = self.steps
        n = len(steps)
        near = max(0, n - _NEAR)
        for lo, hi in ((near, n), (0, near)):
            try:
                return steps.index(step, lo, hi)
            except ValueError:
                pass
        return -1

    def view(self) -> Series:
        if self.series is None:
            self.series = Series(self.steps, self.values, self.ordered)
        return self.series


class _Run:
    """The histories of one attempt of a run, as a Store keeps them between reads."""

    __slots__ = ("attempt", "curves")

    def __init__(self, attempt: int) -> None:
        self.attempt = attempt
        self.curves: dict[str, _Curve] = {}  # in the order the metrics first appeared

    def curve(self, name: str) -> _Curve:
        """The curve of a metric, ready to change."""
        curve = self.curves.get(name)
        if curve is None:
            curve = self.curves[name] = _Curve()
        else:
            curve.own()
        return curve

    def view(self) -> dict[str, Series]:
        return {name: curve.view() for name, curve in self.curves.items()}


def _merge(rows: Iterable[Sequence], runs: Mapping[str, _Run]) -> None:
    """Merge metric rows (key, attempt, name, step, value, source rank), in the order they
    were logged, into the histories of `runs`; rows of other runs or attempts are skipped.

    One point per step: a program that prints `loss=…` and also logs it through
    `orchestrator.track` reports each value twice; the point of the higher source rank
    wins, of equal rank the later one (metrics.supersedes: track, then stdout, then
    stderr), and it keeps the position where its step first appeared. Points without a step are kept in the order they came. A missing value
    (NULL) is NaN."""
    nan = math.nan
    sinks: dict[str, tuple[int | None, dict[str, tuple]]] = {}  # key -> (attempt, name -> sink)
    last_key, wanted, names = None, None, {}
    for key, attempt, name, step, value, rank in rows:
        if key != last_key:  # a pass writes each run's points together
            run = sinks.get(key)
            if run is None:
                cached = runs.get(key)
                run = sinks[key] = (None if cached is None else cached.attempt, {})
            last_key, (wanted, names) = key, run
        if attempt != wanted:
            continue
        sink = names.get(name)
        if sink is None:
            curve = runs[key].curve(name)
            sink = names[name] = (curve, curve.steps.append, curve.values.append, curve.ranks.append)
        curve, add_step, add_value, add_rank = sink
        if value is None:
            value = nan
        if step is not None and step > curve.top:  # the usual case, inlined for speed
            curve.top = step
            add_step(step)
            add_value(value)
            add_rank(rank)
        else:
            curve.place(step, value, rank)


@dataclass(frozen=True)
class Mail:
    """One e-mail in the outbox: `message` holds the exact MIME bytes that are written to
    its .eml file and handed to the SMTP server (dropped from the store once sent)."""

    kind: str  # "notice" or "digest"
    subject: str
    message_id: str
    sender: str
    recipients: tuple[str, ...]
    message: bytes
    eml: str  # the file name in the outbox folder (a pattern with `{id}` before it is stored)
    status: str = "queued"
    id: int = 0
    created_at: float = 0.0
    tries: int = 0
    last_error: str = ""
    sent_at: float | None = None


def _json_num(d: dict[str, float]) -> str:
    return json.dumps({k: (v if math.isfinite(v) else str(v)) for k, v in d.items()})


class Store:
    """One SQLite database in WAL mode; every write method is one transaction."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writes = 0
        self._cache: tuple[tuple[int, int], dict[str, RunRecord]] | None = None
        # The histories of every run's current attempt, from the metric rows up to rowid
        # `_read_to` (None: not read yet), as of `_histories_version`; see `_refresh`.
        self._runs: dict[str, _Run] = {}
        self._read_to: int | None = None
        self._histories_version: tuple[int, int] | None = None
        self._rewrites: str | None = None
        try:
            self.db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise StateError(f"state store {self.path} is unusable: {e}; move it aside to start afresh (runs keep going, but nero forgets them)") from None

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
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        have = {name for (name,) in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        if not have.issuperset(_TRIGGERS):  # a store from before the triggers
            with self.transaction():
                for statement in _TRIGGERS.values():
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
            self._cache = (version, {row[0]: _record(row) for row in self.db.execute(_SNAPSHOT_SQL)})
        return dict(self._cache[1])

    def record(self, key: str) -> RunRecord | None:
        row = self.db.execute(_SNAPSHOT_SQL + " WHERE r.key = ?", (key,)).fetchone()
        return _record(row) if row else None

    def attempts(self, key: str) -> list[RunRecord]:
        sql = _SNAPSHOT_SQL.replace("a.attempt = r.attempt", "1") + " WHERE r.key = ? ORDER BY a.attempt"
        return [_record(row) for row in self.db.execute(sql, (key,))]

    def history(self, key: str, attempt: int | None = None) -> dict[str, Series]:
        """The metric histories of one attempt (default: the current one), see `_merge`;
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
            run = _Run(attempt)
            _merge(self.db.execute(_METRIC_ROWS + " WHERE key=? AND attempt=? ORDER BY rowid", (key, attempt)),
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
            rewrites = self.get_meta(_REWRITES)
            if rewrites != self._rewrites:
                self._runs, self._read_to, self._rewrites = {}, None, rewrites
            current = self.db.execute("SELECT key, attempt FROM runs ORDER BY number").fetchall()
            (top,) = self.db.execute("SELECT COALESCE(MAX(rowid), 0) FROM metrics").fetchone()
            attempts = dict(current)
            kept = {k: run for k, run in self._runs.items() if attempts.get(k) == run.attempt}
            if self._read_to is not None and top > self._read_to:
                _merge(self.db.execute(_METRIC_ROWS + " WHERE rowid > ? AND rowid <= ? ORDER BY rowid",
                                       (self._read_to, top)), kept)
            new = {k: _Run(a) for k, a in current if k not in kept}
            if new and self._read_to is None:
                _merge(self.db.execute(_METRIC_ROWS + " WHERE rowid <= ? ORDER BY rowid", (top,)), new)
            else:
                for key, run in new.items():
                    _merge(self.db.execute(_METRIC_ROWS + " WHERE key=? AND attempt=? AND rowid <= ? ORDER BY rowid",
                                           (key, run.attempt, top)), {key: run})
            self._runs = {k: kept[k] if k in kept else new[k] for k, _ in current}
            self._read_to = top
        self._histories_version = version

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
        """Commit attempts about to be submitted, before submitting them."""
        if not new:
            return
        with self.transaction():
            (next_number,) = self.db.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM runs").fetchone()
            for n in new:
                s = n.spec
                essence = json.dumps(s.essence(), sort_keys=True, default=str)
                params = json.dumps([[k, v] for k, v in s.params], default=str)
                cur = self.db.execute(
                    "UPDATE runs SET spec_hash=?, essence=?, params=?, attempt=?, orphaned=0 WHERE key=?",
                    (s.spec_hash, essence, params, n.attempt, s.key),
                )
                if cur.rowcount == 0:
                    self.db.execute(
                        "INSERT INTO runs (key, number, experiment, spec_hash, essence, params, attempt, created_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (s.key, next_number, s.experiment, s.spec_hash, essence, params, n.attempt, now),
                    )
                    next_number += 1
                self.db.execute(
                    "INSERT OR REPLACE INTO attempts (key, attempt, state, cluster, run_dir, spec_hash, command, "
                    "intent, parent, code_hash, git_commit, git_dirty, submitted_at, retry) VALUES (?,?,?,?,?,?,?,1,?,?,?,?,?,?)",
                    (s.key, n.attempt, RunState.PENDING.value, n.cluster, n.run_dir, s.spec_hash, n.command,
                     n.parent, n.code_hash, n.git_commit, int(n.git_dirty), now, n.retry),
                )
                why = f": {n.reason}" if n.reason else ""
                self._event(Event(now, s.key, "submitting", f"attempt {n.attempt} on {n.cluster}{why}", n.attempt))

    def apply(self, updates: Iterable[Update], events: Iterable[Event] = (), orphaned: Iterable[tuple[str, bool]] = ()) -> None:
        """Apply one pass's observations, metric points and events in one transaction."""
        with self.transaction():
            for u in updates:
                self._apply(u)
            for e in events:
                self._event(e)
            for key, flag in orphaned:
                self.db.execute("UPDATE runs SET orphaned=? WHERE key=?", (int(flag), key))

    def _apply(self, u: Update) -> None:
        sets: list[str] = []
        args: list[object] = []
        simple = {
            "state": u.state.value if u.state else None, "reason": u.reason, "job_id": u.job_id,
            "host": u.host, "started_at": u.started_at, "ended_at": u.ended_at,
            "exit_code": u.exit_code, "heartbeat_at": u.heartbeat_at,
            "intent": None if u.intent is None else int(u.intent),
            "stop_requested": u.stop_requested, "step": u.step,
            "last": None if u.last is None else _json_num(u.last),
            "best": None if u.best is None else _json_num(u.best),
        }
        for col, val in simple.items():
            if val is not None:
                sets.append(f"{col}=?")
                args.append(val)
        if u.offsets is not None:
            sets += ["off_stdout=?", "off_stderr=?", "off_metrics=?", "off_resources=?"]
            args += [u.offsets.stdout, u.offsets.stderr, u.offsets.metrics, u.offsets.resources]
        if u.samples:
            rss = [s.rss_mb for s in u.samples if s.rss_mb is not None]
            gpu = [s.gpu_mem_mb for s in u.samples if s.gpu_mem_mb is not None]
            disk = [s.disk_free_mb for s in u.samples if s.disk_free_mb is not None]
            if rss:
                sets.append("peak_rss=MAX(COALESCE(peak_rss, 0), ?)")
                args.append(max(rss))
            if gpu:
                sets.append("peak_gpu=MAX(COALESCE(peak_gpu, 0), ?)")
                args.append(max(gpu))
            if disk:
                sets.append("min_disk=MIN(COALESCE(min_disk, 1e18), ?)")
                args.append(min(disk))
        if sets:
            self.db.execute(f"UPDATE attempts SET {', '.join(sets)} WHERE key=? AND attempt=?", (*args, u.key, u.attempt))
        if u.points:
            self.db.executemany(
                "INSERT INTO metrics (key, attempt, name, step, value, time, source) VALUES (?,?,?,?,?,?,?)",
                [(u.key, u.attempt, p.name, p.step, None if math.isnan(p.value) else p.value, p.time, p.source)
                 for p in u.points],
            )
        for e in u.events:
            self._event(e)

    def _event(self, e: Event) -> None:
        self.db.execute(
            "INSERT INTO events (time, key, attempt, kind, reason) VALUES (?,?,?,?,?)",
            (e.time, e.key, e.attempt, e.kind, e.reason),
        )

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

    # ----------------------------------------------------------------- outbox
    # Statuses: `queued` (to deliver) → `sending` (committed just before the message's
    # data goes on the wire) → `sent`; `failed` (refused for good), `uncertain` (the
    # connection broke after the data went out, or nero died in between: maybe delivered,
    # never resent), `local` (no SMTP configured: the .eml file is all there is).
    # notify.py explains the delivery guarantees.
    def _outbox_columns(self) -> None:
        """Add the outbox columns a state store from before e-mail delivery lacks (once)."""
        if getattr(self, "_outbox_checked", False):
            return
        have = {row[1] for row in self.db.execute("PRAGMA table_info(outbox)")}
        wanted = {"status": "TEXT NOT NULL DEFAULT 'queued'", "message_id": "TEXT NOT NULL DEFAULT ''",
                  "sender": "TEXT NOT NULL DEFAULT ''", "recipients": "TEXT NOT NULL DEFAULT ''",
                  "eml": "TEXT NOT NULL DEFAULT ''", "message": "BLOB"}
        missing = [(c, t) for c, t in wanted.items() if c not in have]
        if missing:
            with self.transaction():
                for column, decl in missing:
                    self.db.execute(f"ALTER TABLE outbox ADD COLUMN {column} {decl}")
                self.db.execute("UPDATE outbox SET status='sent' WHERE sent_at IS NOT NULL")
        self._outbox_checked = True

    def enqueue_mail(self, mails: Sequence[Mail], now: float, meta: dict[str, str] | None = None,
                     expect: tuple[str, str | None] | None = None) -> list[Mail]:
        """Store new messages (each `Mail.eml` is a pattern with `{id}`) and `meta` values
        in one transaction; returns the messages with their ids and file names. With
        `expect` (a meta key and the value it was read with), nothing is stored if another
        process changed that value meanwhile (then [] is returned)."""
        self._outbox_columns()
        out = []
        with self.transaction():
            if expect is not None:
                row = self.db.execute("SELECT value FROM meta WHERE key=?", (expect[0],)).fetchone()
                if (row[0] if row else None) != expect[1]:
                    return []
            for m in mails:
                cur = self.db.execute(
                    "INSERT INTO outbox (created_at, kind, subject, status, message_id, sender, recipients, message) "
                    "VALUES (?,?,?,?,?,?,?,?)",
                    (now, m.kind, m.subject, m.status, m.message_id, m.sender, ",".join(m.recipients),
                     m.message if m.status in ("queued", "sending") else None))  # else the .eml file has it
                mail_id = int(cur.lastrowid or 0)
                eml = m.eml.format(id=mail_id)
                self.db.execute("UPDATE outbox SET eml=? WHERE id=?", (eml, mail_id))
                out.append(replace(m, id=mail_id, eml=eml, created_at=now))
            for key, value in (meta or {}).items():
                self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        return out

    def mail(self, statuses: Iterable[str] = ("queued",), kind: str | None = None,
             limit: int | None = None, newest_first: bool = False) -> list[Mail]:
        """Messages in the given statuses, oldest first (message bytes included)."""
        self._outbox_columns()
        wanted = list(statuses)
        sql = (f"SELECT id, created_at, kind, subject, status, message_id, sender, recipients, eml, "
               f"COALESCE(message, X''), tries, last_error, sent_at FROM outbox "
               f"WHERE status IN ({','.join('?' * len(wanted))})")
        args: list[object] = list(wanted)
        if kind is not None:
            sql += " AND kind=?"
            args.append(kind)
        sql += " ORDER BY id" + (" DESC" if newest_first else "") + (f" LIMIT {int(limit)}" if limit else "")
        return [Mail(id=r[0], created_at=r[1], kind=r[2], subject=r[3], status=r[4], message_id=r[5], sender=r[6],
                     recipients=tuple(a for a in r[7].split(",") if a), eml=r[8], message=bytes(r[9]),
                     tries=r[10], last_error=r[11], sent_at=r[12]) for r in self.db.execute(sql, args)]

    def claim_mail(self, mail_id: int) -> bool:
        """queued → sending, committed before the message goes out; False if it is not queued."""
        with self.transaction():
            cur = self.db.execute("UPDATE outbox SET status='sending', tries=tries+1 WHERE id=? AND status='queued'",
                                  (mail_id,))
            return cur.rowcount == 1

    def settle_mail(self, mail_id: int, status: str, now: float, error: str = "", tried: bool = False) -> None:
        """Record how a delivery ended: `sent` (the message bytes are dropped; the .eml file
        keeps them), `queued` (not delivered: retried later), `failed` or `uncertain`.
        `tried`: count a try that ended before the message was claimed (a refusal)."""
        with self.transaction():
            if status == "sent":
                self.db.execute("UPDATE outbox SET status='sent', sent_at=?, message=NULL, last_error='' WHERE id=?",
                                (now, mail_id))
            else:
                self.db.execute("UPDATE outbox SET status=?, last_error=?, tries=tries+? WHERE id=?",
                                (status, error[:500], int(tried), mail_id))

    def requeue_mail(self, mail_id: int, message: bytes, statuses: Sequence[str]) -> bool:
        """Put a message in one of `statuses` back in the queue, with these bytes and no
        tries; False if it is not in one of them (any more)."""
        with self.transaction():
            cur = self.db.execute(
                f"UPDATE outbox SET status='queued', tries=0, last_error='', message=? "
                f"WHERE id=? AND status IN ({','.join('?' * len(statuses))})", (message, mail_id, *statuses))
            return cur.rowcount == 1

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

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))


class _Tx:
    """A transaction: a write transaction (IMMEDIATE: it takes the write lock at once), or
    with `begin="BEGIN"` a read transaction whose statements see one state of the database."""

    def __init__(self, db: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE"):
        self.db = db
        self.begin = begin

    def __enter__(self):
        self.db.execute(self.begin)
        return self.db

    def __exit__(self, exc_type, exc, tb):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        return False

