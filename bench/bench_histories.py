"""Benchmark: the metric histories of the state store (orchestrator/state.py).

    python bench/bench_histories.py [--runs 1000] [--steps 500] [--metrics 3] [--live 500]

Builds a real state store (the real schema; rows inserted with executemany for a quick
setup, in the order the loop writes them: each pass adds 10 steps of every metric of every
run, one run after the other), 1,000 runs × 500 steps × 3 metrics, then measures:

- `cold`: `Store.histories()` in a new process (the first pass of a loop, `nero plot`,
  `nero export`): its time and the process's peak RSS, next to `cold (before)`, the
  implementation it replaced (kept below: a list of tuples per run, merged into lists of
  (step, value) tuples with a dict entry per point), also in its own process.
- `incremental`: `histories()` again after one pass's worth of new points written through
  `Store.apply` (500 live runs × 3 metrics × 10 steps); median of 5 passes. Also counts
  the Series that kept their identity (the runs that got no point).
- `rules access`: what `Reconciler._rules` reads per pass for 500 live runs: one
  (incremental) `histories()` plus a `Facts.of` per run, next to the 500 `history(key)`
  queries and `Facts.of` it made before (the previous implementation).

Targets: incremental < 0.1 s, so that it and the summary-only refresh of the results
workbook (bench_results.py, < 0.5 s) stay under 0.5 s a pass together; the cold read is
paid once per process (the first pass of a loop, a one-off command) and is reported next
to what it replaced, with its memory (< 80 MB).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.expr import Facts  # noqa: E402
from orchestrator.model import MetricPoint, Update  # noqa: E402
from orchestrator.state import Store  # noqa: E402

NAMES = ("val_err", "train_err", "loss", "val_acc", "lr")
PASS_STEPS = 10


def key_of(i: int) -> str:
    return f"exp{i // 100:02d}[lr={10 ** -(1 + i % 4):g},seed={i}]"


def build(path: Path, runs: int, steps: int, metrics: int) -> int:
    rnd = random.Random(7)
    names = NAMES[:metrics]
    store = Store(path)
    db = store.db
    with store.transaction():
        for i in range(runs):
            db.execute("INSERT INTO runs (key, number, experiment, spec_hash, essence, params, attempt, created_at) "
                       "VALUES (?, ?, ?, '', '{}', '[]', 1, 0)", (key_of(i), i + 1, key_of(i).split("[")[0]))
            db.execute("INSERT INTO attempts (key, attempt, state) VALUES (?, 1, 'running')", (key_of(i),))
    n = 0
    for first in range(1, steps + 1, PASS_STEPS):
        rows = [(key_of(i), 1, m, s, rnd.random(), float(s), "track")
                for i in range(runs) for s in range(first, min(first + PASS_STEPS, steps + 1)) for m in names]
        with store.transaction():
            db.executemany("INSERT INTO metrics (key, attempt, name, step, value, time, source) VALUES (?,?,?,?,?,?,?)",
                           rows)
        n += len(rows)
    store.close()
    return n


# ---------------------------------------------------------------------------- the baseline
# The implementation before Series and the kept histories, verbatim but for the names.
_SOURCE_RANK = {"track": 2, "stdout": 1, "stderr": 0}


def old_merge(rows):
    out: dict[str, list[tuple[int | None, float]]] = {}
    where: dict[tuple[str, int], tuple[int, int]] = {}
    for name, step, value, source in rows:
        v = math.nan if value is None else value
        points = out.setdefault(name, [])
        if step is None:
            points.append((None, v))
            continue
        rank = _SOURCE_RANK.get(source, 0)
        seen = where.get((name, step))
        if seen is None:
            where[(name, step)] = (len(points), rank)
            points.append((step, v))
        elif rank >= seen[1]:
            points[seen[0]] = (step, v)
            where[(name, step)] = (seen[0], rank)
    return out


def old_histories(store: Store):
    per_run: dict[str, list[tuple]] = {}
    sql = ("SELECT m.key, m.name, m.step, m.value, m.source FROM metrics m JOIN runs r "
           "ON r.key = m.key AND r.attempt = m.attempt ORDER BY m.rowid")
    for key, *rest in store.db.execute(sql):
        per_run.setdefault(key, []).append(rest)
    return {k: old_merge(rows) for k, rows in per_run.items()}


def old_history(store: Store, key: str):
    row = store.db.execute("SELECT attempt FROM runs WHERE key=?", (key,)).fetchone()
    attempt = row[0] if row else 0
    return old_merge(store.db.execute(
        "SELECT name, step, value, source FROM metrics WHERE key=? AND attempt=? ORDER BY rowid", (key, attempt)))


# ---------------------------------------------------------------------------- measurements
def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """The resident set now (Linux), else the peak so far."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return peak_mb()


def child(variant: str, path: Path) -> dict:
    store = Store(path)
    before = rss_mb()
    t = time.perf_counter()
    histories = store.histories() if variant == "new" else old_histories(store)
    elapsed = time.perf_counter() - t
    out = {"time": elapsed, "peak": peak_mb(), "before": before,
           "points": sum(len(p) for h in histories.values() for p in h.values())}
    return out


def run_child(variant: str, path: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", variant, "--db", str(path)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def new_pass(store: Store, live: list[str], names: tuple[str, ...], first: int) -> None:
    store.apply([Update(k, 1, points=tuple(MetricPoint(m, random.random(), s, 0.0, "track")
                                           for s in range(first, first + PASS_STEPS) for m in names))
                 for k in live])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--metrics", type=int, default=3)
    ap.add_argument("--live", type=int, default=500)
    ap.add_argument("--child", choices=("new", "old"), help=argparse.SUPPRESS)
    ap.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.db)))
        return

    names = NAMES[:args.metrics]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.db"
        t = time.perf_counter()
        points = build(path, args.runs, args.steps, args.metrics)
        setup = time.perf_counter() - t
        new, old = run_child("new", path), run_child("old", path)
        assert new["points"] == old["points"] == points

        store = Store(path)
        before = store.histories()
        kept_bytes = sum(sys.getsizeof(c.steps) + sys.getsizeof(c.values) + sys.getsizeof(c.ranks)
                         for run in store._runs.values() for c in run.curves.values())
        live = [key_of(i) for i in range(args.live)]
        incremental, rules_new, rules_old, kept = [], [], [], 0
        for n in range(5):
            new_pass(store, live, names, args.steps + 1 + n * PASS_STEPS)
            snap = store.snapshot()
            t = time.perf_counter()
            after = store.histories()
            incremental.append(time.perf_counter() - t)
            for k in live:
                Facts.of(snap[k], 0.0, after.get(k))
            rules_new.append(time.perf_counter() - t)
            kept = sum(after[k][m] is before[k][m] for k in after for m in after[k])
            before = after
            t = time.perf_counter()
            for k in live:
                Facts.of(snap[k], 0.0, old_history(store, k))
            rules_old.append(time.perf_counter() - t)
        store.close()

    print(f"{args.runs} runs × {args.steps} steps × {args.metrics} metrics = {points:,} points "
          f"(store built in {setup:.1f} s)")
    print(f"{'measurement':<36} {'before':>12} {'after':>12} {'ratio':>7} {'target':>10}")

    def row(label: str, b: float, a: float, unit: str, target: str) -> None:
        print(f"{label:<36} {b:>10.3f}{unit:>2} {a:>10.3f}{unit:>2} {b / a:>6.1f}× {target:>10}")

    row("cold histories(): time", old["time"], new["time"], "s", "once")
    row("cold histories(): process peak RSS", old["peak"], new["peak"], "MB", "< 80 MB")
    row("  … over the RSS before the call", old["peak"] - old["before"], new["peak"] - new["before"], "MB", "")
    print(f"{'incremental histories() (median of 5)':<36} {'':>12} {statistics.median(incremental) * 1000:>10.1f}ms"
          f" {'':>7} {'< 100 ms':>10}")
    print(f"  after {args.live} runs × {args.metrics} metrics × {PASS_STEPS} steps; "
          f"{kept} of {args.runs * args.metrics} Series kept their identity")
    row(f"rules access, {args.live} live runs (median)", statistics.median(rules_old), statistics.median(rules_new),
        "s", "")
    print(f"kept histories: {kept_bytes / points:.1f} bytes a point (steps, values, ranks as allocated)")


if __name__ == "__main__":
    main()
