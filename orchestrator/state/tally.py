"""Questions about all runs answered in SQL, at a cost that follows the answer and not the
number of runs (issue #14): how many runs there are in each state and experiment, which
are live or unconfirmed, which are flagged orphaned, and the few runs a summary shows (the
latest that need attention, those that changed last, the top ones by a metric), without a
RunRecord for every run.

Orders agree with the same questions asked of a snapshot sorted by run number: counts by
decreasing count, ties in the order their first run appears; runs by the time they last
changed (the latest of ended, started, submitted, heartbeat), or by their best value of a
metric (NaN left out), ties by run number.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..metrics import ranked_metric
from ..model import RunRecord, Series
from .cache import cached, data_version, keep
from .histories import METRIC_ROWS, RunHistories, merge
from .schema import CHANGED_AT, CHANGES_SINCE, LIVE_WHERE, PLANNING_SQL, SNAPSHOT_SQL, record_of

if TYPE_CHECKING:
    from .store import Store

__all__ = ["Tally", "any_intent", "attempt_histories_of", "changed_since", "experiment_records", "first_metric", "histories_of", "history_batches", "live_clusters",
           "live_records", "metric_names", "orphaned_keys",
           "param_kinds", "planning_records", "record_batches", "records_of", "run_count", "shown_names", "submitters", "tally", "who_submitted"]

_CURRENT = "FROM runs r JOIN attempts a ON a.key = r.key AND a.attempt = r.attempt"
_CHANGED = CHANGED_AT.replace("COALESCE(", "COALESCE(a.")  # matches the index attempts_changed
_LIVE_A = "a." + LIVE_WHERE.replace(" OR ", " OR a.")
_LIVE_ONLY = "FROM attempts a INDEXED BY attempts_live JOIN runs r ON r.key = a.key AND r.attempt = a.attempt"


@dataclass(frozen=True)
class Tally:
    """All runs counted, and the few a summary shows (each list at most `shown` long)."""

    total: int = 0
    states: tuple[tuple[str, int], ...] = ()  # state → runs, most first
    experiments: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()  # by name: state → runs, most first
    attention: tuple[tuple[str, int], ...] = ()  # "failed", "lost (orphaned)"… → runs, most first
    attention_runs: tuple[RunRecord, ...] = ()  # latest changed first
    recent: tuple[RunRecord, ...] = ()  # latest changed first
    metric: str = ""  # what `top` ranks by
    goal: str = "min"  # its goal: "max" ranks the highest first
    top: tuple[tuple[float, RunRecord], ...] = field(default=())  # (best value, run), best first


def run_count(store: Store) -> int:
    """How many runs nero started."""
    return store.db.execute("SELECT count(*) FROM runs").fetchone()[0]


def who_submitted(store: Store) -> tuple[str, ...]:
    """The OS users who submitted the project's attempts (any attempt, earlier ones too),
    sorted; kept in the store's cache under its data version."""
    stamp = data_version(store)
    found = cached(store, "people", stamp)
    if not isinstance(found, tuple):
        found = tuple(w for (w,) in store.db.execute("SELECT DISTINCT who FROM attempts WHERE who != '' ORDER BY who"))
        keep(store, "people", stamp, found)
    return found


def submitters(store: Store) -> dict[tuple[str, int], str]:
    """Who submitted each attempt: (run key, attempt) → OS user (attempts recorded before
    nero kept it are left out)."""
    return {(k, a): w for k, a, w in store.db.execute("SELECT key, attempt, who FROM attempts WHERE who != ''")}


def live_clusters(store: Store) -> dict[str, int]:
    """Runs live or whose submission is not confirmed, by cluster (from the index of such
    attempts: a cost that follows the live runs)."""
    rows = store.db.execute(f"SELECT a.cluster, count(*) {_LIVE_ONLY} WHERE {_LIVE_A} GROUP BY a.cluster")
    return dict(rows.fetchall())


def any_intent(store: Store) -> bool:
    """Whether a run's current attempt is recorded but its submission not confirmed."""
    return store.db.execute(f"SELECT 1 {_LIVE_ONLY} WHERE ({_LIVE_A}) AND a.intent LIMIT 1").fetchone() is not None


def planning_records(store: Store, keys: Iterable[str] | None = None) -> dict[str, RunRecord]:
    """Every run (or those of `keys` that nero started) with its current attempt as the
    planner reads it: without its parameters, last and best values (empty), a third of a
    snapshot's memory and time."""
    if keys is None:
        return {row[0]: record_of(row) for row in store.db.execute(PLANNING_SQL)}
    wanted, out = list(keys), {}
    for i in range(0, len(wanted), 500):
        part = wanted[i:i + 500]
        rows = store.db.execute(f"{PLANNING_SQL} WHERE r.key IN ({','.join('?' * len(part))})", part)
        out.update((row[0], record_of(row)) for row in rows)
    return out


def record_batches(store: Store, size: int = 2_000) -> Iterator[list[RunRecord]]:
    """Every run with its current attempt (as `Store.snapshot` reads it), by number, `size`
    at a time: a listing of every run holds one batch, not every run."""
    last = 0
    while True:
        rows = store.db.execute(f"{SNAPSHOT_SQL} WHERE r.number > ? ORDER BY r.number LIMIT ?", (last, size)).fetchall()
        if not rows:
            return
        batch = [record_of(row) for row in rows]
        last = batch[-1].number
        yield batch


def history_batches(store: Store) -> Iterator[tuple[list[RunRecord], dict[str, dict[str, Series]]]]:
    """`record_batches` with each batch's histories (`histories_of`): every run and its
    metric histories, a batch at a time (the results workbook, the digest)."""
    return ((batch, histories_of(store, batch)) for batch in record_batches(store))


def records_of(store: Store, keys: Iterable[str]) -> list[RunRecord]:
    """The runs of `keys` (those that exist) as `record_batches` reads them, by number."""
    wanted, out = sorted(set(keys)), []
    for i in range(0, len(wanted), 500):
        part = wanted[i:i + 500]
        out += [record_of(row) for row in store.db.execute(
            f"{SNAPSHOT_SQL} WHERE r.key IN ({','.join('?' * len(part))})", part)]
    return sorted(out, key=lambda r: r.number)


def live_records(store: Store) -> list[RunRecord]:
    """The runs whose current attempt is live or not confirmed, as `record_batches` reads
    them (from the index of such attempts: few of many), by number."""
    sql = SNAPSHOT_SQL.replace(_CURRENT, _LIVE_ONLY) + f" WHERE {_LIVE_A} ORDER BY r.number"
    return [record_of(row) for row in store.db.execute(sql)]


def experiment_records(store: Store, experiments: Iterable[str]) -> dict[str, RunRecord]:
    """Every run of `experiments` (rows whose rules compare a row's runs), by key."""
    wanted = sorted(set(experiments))
    if not wanted:
        return {}
    rows = store.db.execute(f"{SNAPSHOT_SQL} WHERE r.experiment IN ({','.join('?' * len(wanted))})", wanted)
    return {row[0]: record_of(row) for row in rows}


def histories_of(store: Store, records: Iterable[RunRecord]) -> dict[str, dict[str, Series]]:
    """The metric histories of the attempts `records` are (as `Store.histories` has them),
    read for those runs alone; runs without a point are left out."""
    runs = {r.key: RunHistories(r.attempt) for r in records}
    keys = list(runs)
    for i in range(0, len(keys), 500):
        part = keys[i:i + 500]
        merge(store.db.execute(f"{METRIC_ROWS} WHERE key IN ({','.join('?' * len(part))}) ORDER BY rowid", part), runs)
    return {key: run.view() for key, run in runs.items() if run.curves}


def attempt_histories_of(store: Store, records: Iterable[RunRecord]) -> dict[tuple[str, int], dict[str, Series]]:
    """Every attempt's metric histories, the earlier ones and the current one, of the runs
    `records` (read for them alone), by their order then attempt: (run key, attempt) →
    metric → points, attempts without a point left out (the export, a batch at a time)."""
    records = list(records)
    current = histories_of(store, records)
    earlier: dict[int, dict[str, RunHistories]] = {}  # attempt → run key → its histories
    keys = [r.key for r in records]
    for i in range(0, len(keys), 500):
        part = keys[i:i + 500]
        for key, attempt in store.db.execute(
                "SELECT a.key, a.attempt FROM runs r JOIN attempts a ON a.key = r.key AND a.attempt < r.attempt "
                f"WHERE r.key IN ({','.join('?' * len(part))})", part):
            earlier.setdefault(attempt, {})[key] = RunHistories(attempt)
    for attempt, runs in earlier.items():  # one read per attempt number (a restart, a retry: few)
        wanted = list(runs)
        for i in range(0, len(wanted), 500):
            part = wanted[i:i + 500]
            merge(store.db.execute(f"{METRIC_ROWS} WHERE key IN ({','.join('?' * len(part))}) AND attempt = ? "
                                   "ORDER BY rowid", (*part, attempt)), runs)
    out: dict[tuple[str, int], dict[str, Series]] = {}
    for r in records:
        for attempt in sorted(a for a, runs in earlier.items() if r.key in runs):
            if earlier[attempt][r.key].curves:
                out[(r.key, attempt)] = earlier[attempt][r.key].view()
        if r.key in current:
            out[(r.key, r.attempt)] = current[r.key]
    return out


def param_kinds(store: Store) -> list[tuple[str, frozenset[str], int]]:
    """Each parameter of the runs, in the order they first appear (by run number, then as
    the row lists them): its name, the JSON types of its values (integer, real, text, true,
    false, null) and how many runs have it (`frames.param_dtype` makes a column type of them)."""
    found: dict[str, tuple[set[str], int, int]] = {}
    for name, kind, runs, first in store.db.execute(
            "SELECT json_extract(p.value, '$[0]'), json_type(p.value, '$[1]'), COUNT(*), "
            "MIN(r.number * 65536 + CAST(p.key AS INTEGER)) FROM runs r, json_each(r.params) p GROUP BY 1, 2"):
        kinds, n, at = found.get(name, (set(), 0, first))
        found[name] = (kinds | {kind}, n + runs, min(at, first))
    return [(name, frozenset(kinds), n) for name, (kinds, n, _) in sorted(found.items(), key=lambda x: x[1][2])]


def changed_since(store: Store, version: int) -> list[str] | None:
    """The runs written (their run row, an attempt, an override) since the store's data
    version was `version`, and a few written just before (`schema.CHANGES`); None when the
    store's change log does not reach back that far."""
    start = store.db.execute("SELECT value FROM meta WHERE key = ?", (CHANGES_SINCE,)).fetchone()
    if start is None or int(start[0]) > version:
        return None
    return [k for (k,) in store.db.execute("SELECT key FROM changes WHERE version >= ?", (version,))]


def metric_names(store: Store) -> set[str]:
    """The metrics the runs' current attempts recorded a last value of."""
    return {k for (k,) in store.db.execute(
        f"SELECT DISTINCT j.key {_CURRENT}, json_each(COALESCE(NULLIF(a.last, ''), '{{}}')) j")}


def shown_names(store: Store) -> list[str]:
    """The metrics of the runs' current attempts: a last or best value, or a point; sorted."""
    return sorted(k for (k,) in store.db.execute(
        f"SELECT j.key {_CURRENT}, json_each(COALESCE(NULLIF(a.last, ''), '{{}}')) j UNION "
        f"SELECT j.key {_CURRENT}, json_each(COALESCE(NULLIF(a.best, ''), '{{}}')) j UNION "
        "SELECT m.name FROM metrics m JOIN runs r ON m.key = r.key AND m.attempt = r.attempt"))


def orphaned_keys(store: Store) -> set[str]:
    """The runs flagged orphaned (their row is gone while they ran)."""
    return {k for (k,) in store.db.execute("SELECT key FROM runs WHERE orphaned")}


def _most_first(rows: list[tuple[str, int, int]]) -> tuple[tuple[str, int], ...]:
    """(name, count, order of first appearance) → (name, count), most first, ties by appearance."""
    return tuple((name, n) for name, n, _ in sorted(rows, key=lambda r: (-r[1], r[2])))


def _records(store: Store, where: str, order: str, limit: int, args: tuple = ()) -> tuple[RunRecord, ...]:
    sql = f"{SNAPSHOT_SQL} {where} ORDER BY {order} LIMIT ?"
    return tuple(record_of(row) for row in store.db.execute(sql, (*args, limit)))


def first_metric(store: Store) -> str:
    """The metric the runs are ranked by when no primary_metric or goal says
    (`metrics.ranked_metric`): the first metric a run stored a last value of (by run number),
    else the first it stored a best value of."""
    def first(column: str) -> str:
        row = store.db.execute(f"SELECT a.{column} {_CURRENT} WHERE a.{column} NOT IN ('', '{{}}') "
                               "ORDER BY r.number LIMIT 1").fetchone()
        return next(iter(json.loads(row[0])), "") if row else ""

    return ranked_metric("", (), first("last"), first("best"))


def tally(store: Store, metric: str = "", goal_of: Callable[[str], str] = lambda m: "min", shown: int = 10,
          attention: tuple[str, ...] = ()) -> Tally:
    """Every run counted by state and by experiment; of the runs in `attention` states or
    orphaned, the counts and the `shown` latest changed; the `shown` latest changed; and the
    `shown` best by `metric` (the best value each run's current attempt recorded, by its goal
    `goal_of(metric)`, "max" or "min"); without `metric`, the first any run recorded (by run
    number: `first_metric`). Kept in the cache until the store's data changes."""
    metric = metric or first_metric(store)
    goal = goal_of(metric) if metric else "min"
    version = data_version(store)
    stamp = "|".join(map(str, (version, metric, goal, shown, attention))) if version else ""
    found = cached(store, f"tally:{shown}", stamp)
    if isinstance(found, Tally):
        return found
    found = _tally(store, metric, goal, shown, attention)
    keep(store, f"tally:{shown}", stamp, found)
    return found


def _tally(store: Store, metric: str, goal: str, shown: int, attention: tuple[str, ...]) -> Tally:
    db = store.db
    total = run_count(store)
    # one scan of the current attempts: counts by experiment, state and orphaned flag, with
    # each group's first run and its latest change (the kinds needing attention are ranked by it)
    rows = db.execute(f"SELECT r.experiment, a.state, r.orphaned, count(*), min(r.number), max({_CHANGED}) "
                      f"{_CURRENT} GROUP BY 1, 2, 3").fetchall()
    states: dict[str, list[int]] = {}
    experiments: dict[str, dict[str, list[int]]] = {}
    kinds: dict[str, list] = {}
    for experiment, state, orphaned, n, first, changed in rows:
        for s in (states.setdefault(state, [0, first]), experiments.setdefault(experiment, {}).setdefault(state, [0, first])):
            s[0] += n
            s[1] = min(s[1], first)
        if state in attention or orphaned:
            k = kinds.setdefault(state + (" (orphaned)" if orphaned else ""), [0, changed, first])
            k[0] += n
            k[1] = max(k[1], changed)
            k[2] = min(k[2], first)
    marks = ", ".join("?" * len(attention)) or "NULL"
    flagged = f"WHERE (a.state IN ({marks}) OR r.orphaned)"
    top: tuple[tuple[float, RunRecord], ...] = ()
    if metric and shown:
        found = _top(store, metric, goal, shown)
        records = {r.key: r for r in _records(store, "WHERE r.key IN (" + ", ".join("?" * len(found)) + ")",
                                              "r.number", shown, tuple(k for _, k, _ in found))} if found else {}
        top = tuple((float(v), records[k]) for v, k, _ in found if k in records)
    return Tally(
        total=total,
        states=_most_first([(s, n, first) for s, (n, first) in states.items()]),
        experiments=tuple((e, _most_first([(s, n, f) for s, (n, f) in experiments[e].items()]))
                          for e in sorted(experiments)),
        attention=tuple((label, n) for label, (n, _, _) in sorted(kinds.items(), key=lambda x: (-x[1][0], -x[1][1], x[1][2]))),
        attention_runs=_records(store, flagged, f"{_CHANGED} DESC, r.number", shown, attention) if kinds and shown else (),
        recent=_records(store, "", f"{_CHANGED} DESC, r.number", shown) if shown else (),
        metric=metric,
        goal=goal,
        top=top,
    )


_TOP_RENEWED = 1_000  # the most runs written since the last ranking that are ranked again alone


def _top(store: Store, metric: str, goal: str, shown: int) -> list[tuple[float, str, int]]:
    """The `shown` best runs by `metric` ((value, key, number), best first). Ranking every run
    reads every run's best values; after a few runs were written, the last ranking (kept
    under the data version it was made at) is brought up to date with those runs alone,
    when that is exact: each run not written since keeps its value, so one that ranked below
    the last ranking's end still does, and the new ranking is exact if its `shown` runs all
    rank no lower than that end (or the last ranking held every run with a value)."""
    path = '$."' + metric.replace("\\", "\\\\").replace('"', '\\"') + '"'
    best = "COALESCE(NULLIF(a.best, ''), '{}')"
    value = ("CASE WHEN typeof(x) IN ('real', 'integer') THEN x WHEN x = 'inf' THEN 9e999 "
             "WHEN x = '-inf' THEN -9e999 END")
    sign = -1 if goal == "max" else 1

    def ranked(where: str, args: tuple, limit: int) -> list[tuple[float, str, int]]:
        sql = (f"SELECT v, key, number FROM (SELECT {value} AS v, key, number FROM (SELECT json_extract({best}, ?1) AS x, "
               f"r.key AS key, r.number AS number {_CURRENT} {where})) WHERE v IS NOT NULL "
               f"ORDER BY v {'DESC' if goal == 'max' else 'ASC'}, number LIMIT {int(limit)}")
        return [(float(v), k, n) for v, k, n in store.db.execute(sql, (path, *args))]

    version = int(data_version(store))
    name, stamp = f"top:{shown}", f"{metric}|{goal}"
    kept = cached(store, name, stamp)
    found = None
    if isinstance(kept, tuple) and len(kept) == 2:
        since, last = kept
        written = changed_since(store, since) if since <= version else None
        if written is not None and len(written) <= _TOP_RENEWED:
            fresh = []
            for i in range(0, len(written), 500):
                part = written[i:i + 500]
                fresh += ranked(f"WHERE r.key IN ({', '.join('?' * len(part))})", tuple(part), len(part))
            gone = set(written)
            both = sorted([t for t in last if t[1] not in gone] + fresh, key=lambda t: (sign * t[0], t[2]))[:shown]
            end = (sign * last[-1][0], last[-1][2]) if last else None
            if len(last) < shown or (len(both) == shown and (sign * both[-1][0], both[-1][2]) <= end):
                found = both
    if found is None:
        found = ranked("", (), shown)
    keep(store, name, stamp, (version, found))
    return found
