"""The state store's tables (`SCHEMA`, with the columns added since `ADDED_COLUMNS` and the
metrics table's rewrite and the data version's `TRIGGERS`) and how a row of runs × attempts becomes a RunRecord
(`SNAPSHOT_SQL`, `record_of`), and the rows written (`essence_json`, `update_of`). Pure: the
statements are run by `orchestrator.state.store`."""

from __future__ import annotations

import json
import math
import sys
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]

from ..model import LIVE_STATES, Offsets, RunRecord, RunSpec, RunState, SourceOffset, Update
from ..spec import json_scalar

__all__ = ["ADDED_COLUMNS", "CHANGED_AT", "CHANGES", "CHANGES_SINCE", "DATA_VERSION", "INSTALL", "LAST_PASS", "LIVE_WHERE", "PLANNING_SQL", "REWRITES", "SCHEMA",
           "SCHEMA_VERSION", "SNAPSHOT_SQL", "TRIGGERS", "essence_json", "files_json", "files_of", "record_of",
           "params_json", "update_of"]

SCHEMA_VERSION = 1

SCHEMA = """
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
    gpu_util_sum REAL,
    gpu_util_n INTEGER NOT NULL DEFAULT 0,
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

SNAPSHOT_SQL = """
SELECT r.key, r.number, r.experiment, r.spec_hash, '' AS essence, '' AS params, r.orphaned,
       a.attempt, a.state, a.reason, a.cluster, a.job_id, a.host, a.run_dir,
       a.submitted_at, a.started_at, a.ended_at, a.exit_code, a.git_commit, a.git_dirty,
       a.intent, '' AS last, '' AS best, a.step, a.heartbeat_at, a.command, a.peak_rss, a.peak_gpu,
       a.min_disk, a.parent, a.code_hash, a.off_stdout, a.off_stderr, a.off_metrics,
       a.off_resources, a.stop_requested, a.retry, a.gpu_util_sum, a.gpu_util_n,
       '[' || r.params || ',' || COALESCE(NULLIF(a.last, ''), '{}') || ',' || COALESCE(NULLIF(a.best, ''), '{}') || ']',
       a.off_files, a.who
FROM runs r JOIN attempts a ON a.key = r.key AND a.attempt = r.attempt
"""
# what the planner reads of every run (`plan.py`, `replan.py`, `confirm.py` read the key,
# number, experiment, spec hash, state, reason, attempt, cluster, intent, stop request and
# retry): SNAPSHOT_SQL without parameters and metric values (the larger part of a RunRecord,
# and of reading one), and without the text and times that are the run's alone (its job,
# host, folder, command, commit, code, who; 100,000 of them were 40 MiB of a plan's 200)
PLANNING_SQL = SNAPSHOT_SQL.replace(
    "'[' || r.params || ',' || COALESCE(NULLIF(a.last, ''), '{}') || ',' || COALESCE(NULLIF(a.best, ''), '{}') || ']'",
    "NULL")
for _column in ("a.job_id", "a.host", "a.run_dir", "a.git_commit", "a.command", "a.code_hash", "a.who"):
    PLANNING_SQL = PLANNING_SQL.replace(f"{_column},", f"'' AS {_column[2:]},", 1)
for _column in ("a.submitted_at", "a.started_at", "a.ended_at", "a.exit_code", "a.step", "a.heartbeat_at",
                "a.peak_rss", "a.peak_gpu", "a.min_disk", "a.parent", "a.off_stdout", "a.off_stderr", "a.off_metrics",
                "a.off_resources", "a.gpu_util_sum", "a.gpu_util_n", "a.off_files"):
    PLANNING_SQL = PLANNING_SQL.replace(f"{_column},", f"NULL AS {_column[2:]},", 1)


# A snapshot holds every run (100,000 and more): the names and words runs share (parameter
# and metric names, experiments, clusters, reasons) are held once, not once per run, and
# the offsets of a run that has none are one object.
_intern = sys.intern
_NO_OFFSETS = Offsets(0, 0, 0, 0)
_UNREAD: dict[str, float] = {}  # the last and best values a planning record leaves out: one dict, never written


def _numbers(d: dict[str, object]) -> dict[str, float]:
    if d is _UNREAD:
        return _UNREAD
    return {_intern(k): float(v) for k, v in d.items()} if d else {}  # type: ignore[arg-type]


_STATES = {s.value: s for s in RunState}


def record_of(row: tuple) -> RunRecord:
    """The RunRecord of a row of `SNAPSHOT_SQL`: without its `essence` (a few hundred bytes a
    run, read only for a run whose spec changed: `Store.essences`). Its parameters, last and
    best values come as one JSON array (one parse a run, not three); as NULL (`PLANNING_SQL`)
    they are left empty."""
    params, last, best = ((), _UNREAD, _UNREAD) if row[39] is None else json.loads(row[39])
    return RunRecord(
        key=row[0], number=row[1], experiment=_intern(row[2]), spec_hash=row[3], essence=row[4],
        params=tuple((_intern(k), v) for k, v in params), orphaned=bool(row[6]),
        attempt=row[7], state=_STATES.get(row[8]) or RunState(row[8]), reason=_intern(row[9]),
        cluster=_intern(row[10]), job_id=row[11], host=_intern(row[12]), run_dir=row[13], submitted_at=row[14],
        started_at=row[15], ended_at=row[16], exit_code=row[17], git_commit=row[18], git_dirty=bool(row[19]),
        intent=bool(row[20]), last=_numbers(last), best=_numbers(best), step=row[23],
        heartbeat_at=row[24], command=row[25], peak_rss_mb=row[26], peak_gpu_mem_mb=row[27],
        min_disk_free_mb=row[28], parent_attempt=row[29], code_hash=row[30],
        offsets=Offsets(row[31], row[32], row[33], row[34], files_of(row[40])) if any(row[31:35]) or row[40]
        else _NO_OFFSETS,
        stop_requested=row[35], retry=row[36],
        mean_gpu_util_pct=row[37] / row[38] if row[38] else None, who=_intern(row[41]),
    )


# TRIGGERS: the triggers (and an index) a store gets once, by name, new or old.
# The metrics table is append-only (nothing in nero updates or deletes a point), which lets
# a Store read only the rows added since its last read. Should anything change or delete
# rows all the same (a hand edit, a future clean-up), these triggers count it, and every
# Store that sees the count change reads the table afresh.
REWRITES = "metrics_rewrites"
TRIGGERS = {
    f"metrics_{event.lower()}": (
        f"CREATE TRIGGER IF NOT EXISTS metrics_{event.lower()} AFTER {event} ON metrics BEGIN "
        f"INSERT OR REPLACE INTO meta VALUES ('{REWRITES}', "
        f"COALESCE((SELECT value FROM meta WHERE key = '{REWRITES}'), 0) + 1); END"
    )
    for event in ("UPDATE", "DELETE")
}

# The store's data version (the meta key): one more for every row of runs, attempts or
# overrides written, by any process, so what was computed from them can be reused while it
# is unchanged (orchestrator.state.cache). It only grows.
# Which runs changed since a data version (`state/tally.py: changed_since`): each run key
# with the data version of its last write (to its run row, an attempt, an override), so a
# plan can be brought up to date by deciding again only the runs written since it was made
# (`replan.py`). One row a run, however often it is written. `CHANGES_SINCE`: the data
# version the log starts at (a store from before it has no record of older writes).
# One trigger a table and event does both (raise the counter, then stamp the run with it):
# a run written at version V holds V. Its statements meet no conflict (one would be resolved
# the outer statement's way: an `INSERT OR REPLACE` into overrides made an `INSERT OR
# IGNORE` of the counter replace it with 0): the counter's row is made before any trigger
# exists, and a run's row of the change log is inserted only where the UPDATE found none
# (`changes()` inside a trigger counts the trigger's own last statement). Two triggers each
# (counter, change log) until 2026-12: a statement less per row written, and a trigger
# program less (1,000 intents recorded in 37 ms, not 47).
DATA_VERSION = "data_version"
CHANGES = "CREATE TABLE IF NOT EXISTS changes (key TEXT PRIMARY KEY, version INTEGER NOT NULL)"
CHANGES_SINCE = "changes_since"
_NOW = f"COALESCE((SELECT value FROM meta WHERE key = '{DATA_VERSION}'), 0)"
_WRITES = [(table, event, row) for table in ("runs", "attempts", "overrides")
           for event, row in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD"))]
RETIRED = [f"{table}_{event.lower()}_{what}" for table, event, _ in _WRITES for what in ("version", "change")]
TRIGGERS["changes_by_version"] = "CREATE INDEX IF NOT EXISTS changes_by_version ON changes (version)"
TRIGGERS |= {
    f"{table}_{event.lower()}_written": (
        f"CREATE TRIGGER IF NOT EXISTS {table}_{event.lower()}_written AFTER {event} ON {table} BEGIN "
        f"UPDATE meta SET value = value + 1 WHERE key = '{DATA_VERSION}'; "
        f"UPDATE changes SET version = {_NOW} WHERE key = {row}.key; "
        f"INSERT INTO changes SELECT {row}.key, {_NOW} WHERE changes() = 0; "
        "END"
    )
    for table, event, row in _WRITES
}
# The attempts that are live or not confirmed, few of many: which clusters have live runs
# (every pass, every `nero status`) is answered from this index (`state/tally.py`).
LIVE_WHERE = f"state IN ({', '.join(sorted(repr(s.value) for s in LIVE_STATES))}) OR intent"
TRIGGERS["attempts_live"] = f"CREATE INDEX IF NOT EXISTS attempts_live ON attempts (key, attempt) WHERE {LIVE_WHERE}"

# The attempts by the time they last changed (the latest of ended, started, submitted,
# heartbeat): the runs that changed last (`nero status`) are read from its end, not sorted.
CHANGED_AT = ("MAX(COALESCE(ended_at, 0), COALESCE(started_at, 0), COALESCE(submitted_at, 0), "
              "COALESCE(heartbeat_at, 0))")
TRIGGERS["attempts_changed"] = f"CREATE INDEX IF NOT EXISTS attempts_changed ON attempts ({CHANGED_AT})"

# what a store from before the triggers gets, in order: the change log's table, the triggers
# and indexes, and the version the change log starts at (writes before it are not in it)
# (a store that has every trigger and index of TRIGGERS needs none of them)
INSTALL = (CHANGES, *(f"DROP TRIGGER IF EXISTS {name}" for name in RETIRED),
           f"INSERT OR IGNORE INTO meta VALUES ('{DATA_VERSION}', 0)", *TRIGGERS.values(),
           f"INSERT OR IGNORE INTO meta SELECT '{CHANGES_SINCE}', {_NOW}")

# the meta key of the time (seconds since the epoch, the pass's clock) of the last reconcile
# pass that ran to its end; a store from before it was recorded lacks it
LAST_PASS = "last_pass"

# columns added after a store's first release: a store that lacks one gets it (name → type)
ADDED_COLUMNS = {"attempts": {"gpu_util_sum": "REAL", "gpu_util_n": "INTEGER NOT NULL DEFAULT 0",
                              "off_files": "TEXT NOT NULL DEFAULT ''",
                              "who": "TEXT NOT NULL DEFAULT ''"}}  # the OS user who submitted it


def files_json(files: tuple[SourceOffset, ...]) -> str:
    """The `off_files` column: the read offsets of an attempt's metric files (metric_files.py),
    `[[path, offset, rows, seen, head], …]`; '' for none."""
    return json.dumps([[f.path, f.offset, f.rows, f.seen, f.head] for f in files]) if files else ""


def files_of(text: str) -> tuple[SourceOffset, ...]:
    """The offsets `files_json` wrote."""
    return tuple(SourceOffset(*f) for f in json.loads(text)) if text else ()


def essence_json(spec: RunSpec, ends: dict[tuple[object, ...], tuple[str, str]]) -> str:
    """The JSON of `spec.essence()` (keys sorted, compact): the runs of a row share all of it
    but their parameters, which sort between `command` and `resources` (`ends`: the text
    before and after them, by row)."""
    alike = (spec.command, spec.clusters, spec.resources, spec.setup, spec.workdir, spec.template)
    around = ends.get(alike)
    if around is None:
        whole = json.dumps({**spec.essence(), "params": None}, sort_keys=True, default=str, separators=(",", ":"))
        cut = whole.index('"params":null') + len('"params":')  # a quote inside a value is escaped
        around = ends[alike] = (whole[:cut], whole[cut + len("null"):])
    return around[0] + params_json(spec.params, compact=True, ordered=True) + around[1]


_SCALARS = (str, int, float, bool, type(None))


def params_json(params: tuple[tuple[str, object], ...], compact: bool = False, ordered: bool = False) -> str:
    """`json.dumps` of a run's parameters: the pairs as a list (the `params` column), or
    with `compact` as an object with the names sorted (the essence's, `ordered`), its
    scalars written without building an encoder."""
    if not all(isinstance(v, _SCALARS) for _, v in params) or (compact and len({k for k, _ in params}) != len(params)):
        if compact:
            return json.dumps(dict(params), sort_keys=ordered, default=str, separators=(",", ":"))
        return json.dumps([[k, v] for k, v in params], default=str)
    if compact:
        pairs = sorted(params) if ordered else params
        return "{" + ",".join(f"{encode_basestring_ascii(k)}:{json_scalar(v)}" for k, v in pairs) + "}"
    return "[" + ", ".join(f"[{encode_basestring_ascii(k)}, {json_scalar(v)}]" for k, v in params) + "]"


def _json_num(d: dict[str, float]) -> str:
    return json.dumps({k: (v if math.isfinite(v) else str(v)) for k, v in d.items()})

def update_of(u: Update) -> tuple[str, tuple[object, ...]]:
    """The UPDATE of an attempt's row that `u` makes, and its arguments ("" when it sets nothing)."""
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
    if u.offsets is not None:  # the metric files' offsets too (off_files): with their points, one transaction
        sets += ["off_stdout=?", "off_stderr=?", "off_metrics=?", "off_resources=?", "off_files=?"]
        args += [u.offsets.stdout, u.offsets.stderr, u.offsets.metrics, u.offsets.resources, files_json(u.offsets.files)]
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
        util = [s.gpu_util_pct for s in u.samples if s.gpu_util_pct is not None]
        if util:
            sets += ["gpu_util_sum=COALESCE(gpu_util_sum, 0) + ?", "gpu_util_n=gpu_util_n + ?"]
            args += [sum(util), len(util)]
        if disk:
            sets.append("min_disk=MIN(COALESCE(min_disk, 1e18), ?)")
            args.append(min(disk))
    if not sets:
        return "", ()
    return f"UPDATE attempts SET {', '.join(sets)} WHERE key=? AND attempt=?", (*args, u.key, u.attempt)
