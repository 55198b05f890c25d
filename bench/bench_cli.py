"""Benchmark: whole-process `nero status`, `nero plan` and `nero reconcile` on projects of
1,000 / 10,000 / 100,000 runs (issue #14), side by side with `sqlite3` reading the same rows.

Each project is built once: a workbook of 10 rows (each a grid of lr × seed), its store
filled directly (every run submitted, most completed with metrics and a history of 10
points, some failed), and one
real pass so that a later pass has nothing to do. A second workbook folder with the same
rows and an empty store gives `nero plan` with every run new. Each command is then run as a
subprocess, median of 3, peak RSS from wait4: over the unchanged project (what the last
command computed is reused: the pass cache, `orchestrator/state/cache.py`), and for `status`,
`plan` and `reconcile` also right after a run changed (one run written
before each run (its heartbeat, as a poll writes it): the store's data version rises, so the
cache misses, and the command brings what it kept up to date with that run). Every run of
a built project has POINTS points of `loss` (`add_points`): the results workbook's curves,
the digest's plots and the export read them. The script fails loudly when a workbook is refused, when the store does not
hold the runs, when a command does not print what it should (a summary that counts every
run, a plan with every run new), or when it measured nothing; it ends with the figures
#14 names beside their targets.

Run: python bench/bench_cli.py [--sizes 1000,10000,100000] [--repeat 3] [--before CHECKOUT]
(`--before`: a checkout of an earlier nero, e.g. `git archive COMMIT | tar -x -C DIR`: each
command is timed with it too, right before this one, over the same projects.)
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROWS = 10
POINTS = 10  # metric points of every run a built project has (`add_points`)


def write(path: Path, runs: int) -> None:
    from openpyxl import Workbook

    per = max(1, runs // ROWS)
    a = max(1, int(round(per ** 0.5)))
    b = per // a
    wb = Workbook()
    ws = wb.active
    ws.title = "Experiments"
    ws.append(["id", "command", "lr", "seed", "epochs"])
    for i in range(ROWS):
        ws.append([f"sweep{i}", "python train.py --lr {{ lr }} --seed {{ seed }} --epochs {{ epochs }}",
                   f"linspace(0.001, 0.1, {a})", f"range({b})", 10])
    wb.save(path)


def build(folder: Path, runs: int, fill: bool) -> int:
    """Build a project (in a child process: see `main`); the number of runs its workbook asks for."""
    sys.path.insert(0, str(ROOT))
    from orchestrator.model import NewAttempt, RunState, Update
    from orchestrator.reconcile import Reconciler

    folder.mkdir(parents=True)
    path = folder / "experiments.xlsx"
    write(path, runs)
    rec = Reconciler(path)
    rec.load()  # a refused workbook raises here: the benchmark never measures nothing
    n = len(rec.specs)
    if fill:
        now = time.time()
        rec.store.record_intents([NewAttempt(s, 1, "local", f"{folder}/runs/{i}", s.command)
                                  for i, s in enumerate(rec.specs)], now - 3600)
        ups = []
        for i, s in enumerate(rec.specs):
            failed = i % 97 == 0
            ups.append(Update(s.key, 1, state=RunState.FAILED if failed else RunState.COMPLETED, intent=False,
                              job_id=str(i), reason="exit code 1" if failed else "exit code 0",
                              started_at=now - 3000, ended_at=now - 3000 + i % 500,
                              last={"loss": 1.0 / (1 + i), "acc": 0.9}, best={"loss": 1.0 / (1 + i), "acc": 0.9}))
        rec.store.apply(ups)
        if add_points(folder) < n * POINTS:
            sys.exit(f"bench_cli: {folder} holds fewer than {n * POINTS:,} metric points")
        rec.run_pass()
        got = rec.store.db.execute("SELECT count(*) FROM runs").fetchone()[0]
        if got != n:
            sys.exit(f"bench_cli: the store holds {got} runs, the workbook asks for {n}")
    rec.close()
    return n


def add_points(folder: Path, per_run: int = POINTS) -> int:
    """Give every run of a built project `per_run` points of `loss` (steps 1…per_run) in its
    store, once (what the results workbook, the digest and an export read of a run); the
    points the store then holds, checked."""
    con = sqlite3.connect(folder / ".nero" / "state.db")
    with con:
        if not con.execute("SELECT 1 FROM metrics WHERE source = 'bench' LIMIT 1").fetchone():
            now = time.time()
            con.executemany("INSERT INTO metrics VALUES (?, ?, 'loss', ?, ?, ?, 'bench')",
                            ((key, attempt, step, 1.0 / (step + number), now)
                             for key, attempt, number in con.execute("SELECT key, attempt, number FROM runs").fetchall()
                             for step in range(1, per_run + 1)))
    total = con.execute("SELECT count(*) FROM metrics").fetchone()[0]
    con.close()
    return total


def _ends(path: Path, size: int = 1 << 16) -> str:
    """The first and last `size` bytes of a command's output. Not the whole of it: a child's
    peak RSS from wait4 counts its parent's at the fork, so the parent must stay small (a
    100,000-run `status --json` is 100 MB of text)."""
    with open(path, "rb") as f:
        head = f.read(size)
        f.seek(max(len(head), os.path.getsize(path) - size))
        return (head + b"\n...\n" + f.read()).decode(errors="replace")


def changed(cwd: Path, what: str = "heartbeat") -> None:
    """Write one run, as a poll does: its heartbeat (the results workbook shows nothing new),
    or its reason (`what="reason"`: the workbook shows it, and is rewritten). The store's
    triggers raise its data version (the cache misses) and note the run as changed. Fails
    loudly when the version did not move (the command would measure a cache hit).
    `what="edit"`: the experiments workbook saved again, its runs as they were (a user's
    save: every cache made from the workbook misses); fails loudly unless its bytes changed."""
    if what == "edit":
        import openpyxl

        path = cwd / "experiments.xlsx"
        before_bytes = path.read_bytes()
        book = openpyxl.load_workbook(path)
        book.properties.lastModifiedBy = f"bench_cli {time.time()}"
        book.save(path)
        if path.read_bytes() == before_bytes:
            sys.exit("bench_cli: saving the workbook again did not change it")
        return
    con = sqlite3.connect(cwd / ".nero" / "state.db")
    before = con.execute("SELECT value FROM meta WHERE key = 'data_version'").fetchone()
    with con:
        n = con.execute("SELECT max(number) FROM runs").fetchone()[0]
        key, attempt = con.execute("SELECT key, attempt FROM runs WHERE number = ?",
                                   (random.randint(1, n),)).fetchone()
        column, value = ("reason", f"exit code 0 (noted {time.time()})") if what == "reason" else ("heartbeat_at", time.time())
        con.execute(f"UPDATE attempts SET {column} = ? WHERE key = ? AND attempt = ?", (value, key, attempt))
    after = con.execute("SELECT value FROM meta WHERE key = 'data_version'").fetchone()
    con.close()
    if after is None or after == before:
        sys.exit("bench_cli: writing a run did not raise the store's data version")


def timed(argv: list[str], cwd: Path, check: str | None, cold: str = "",
          root: Path = ROOT) -> tuple[float, float, str]:
    """(seconds, peak RSS MiB, the ends of its output) of one whole process; `cold`: right
    after the store's data changed (`changed`: "heartbeat" or "reason"; "reason" fails
    loudly unless the command rewrote results.xlsx)."""
    results = cwd / "results.xlsx"
    written = results.stat().st_mtime_ns if results.exists() else None
    if cold:
        changed(cwd, cold)
    env = dict(os.environ, PYTHONPATH=str(root), COLUMNS="160",
               PYTHONPYCACHEPREFIX=str(cwd.parent / f"pycache{abs(hash(str(root)))}"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: compiled modules cached
    t = time.perf_counter()
    with open(cwd / ".out", "wb") as out:
        p = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, ru = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t
    text = _ends(cwd / ".out")
    code = os.waitstatus_to_exitcode(status)
    if code != 0 or (check is not None and check not in text):
        sys.exit(f"bench_cli: {' '.join(argv)} exited {code}; expected {check!r} in its output:\n{text[-2000:]}")
    if cold == "reason" and (not results.exists() or results.stat().st_mtime_ns == written):
        sys.exit(f"bench_cli: {' '.join(argv)} did not rewrite {results} after a run's reason changed")
    return dt, ru.ru_maxrss / 1024, text


def median(argv: list[str], cwd: Path, check: str | None, repeat: int, cold: str = "",
           root: Path = ROOT) -> tuple[float, float]:
    timed(argv, cwd, check, root=root)  # warm: the modules compiled, the files in the page cache, the pass cache made
    got = [timed(argv, cwd, check, cold, root) for _ in range(repeat)]
    return statistics.median(g[0] for g in got), max(g[1] for g in got)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--before", type=Path, help="a checkout of an earlier nero: each command is timed with it too, "
                    "right before this one's, over the same projects (before → after in one run)")
    ap.add_argument("--build", nargs=3, metavar=("FOLDER", "RUNS", "FILL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build:  # the child that builds a project: the timing parent stays small, for its
        # children's peak RSS from wait4 counts what a forked child shared with its parent
        print(build(Path(args.build[0]), int(args.build[1]), args.build[2] == "1"))
        return
    nero = [sys.executable, "-m", "orchestrator"]
    rows: list[tuple[int, str, float, float, float]] = []
    before: list[tuple[int, str, float, float, float]] = []  # the same, timed with --before's nero
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            t = time.perf_counter()
            done = Path(tmp) / f"p{size}"
            fresh = Path(tmp) / f"new{size}"
            n = int(subprocess.run([sys.executable, __file__, "--build", str(done), str(size), "1"], check=True,
                                   capture_output=True, text=True).stdout)
            subprocess.run([sys.executable, __file__, "--build", str(fresh), str(size), "0"], check=True,
                           capture_output=True)
            print(f"built {n:,} runs in {time.perf_counter() - t:.1f}s", file=sys.stderr, flush=True)
            db = done / ".nero" / "state.db"
            sql = ["sqlite3", str(db), "SELECT r.number, r.key, a.state, a.cluster, a.started_at, a.ended_at, a.step, "
                   "a.last, a.reason FROM runs r JOIN attempts a ON a.key = r.key AND a.attempt = r.attempt ORDER BY r.number"]
            peer = median(sql, done, None, args.repeat)
            cases = [
                (STATUS, nero + ["status"], done, f"{n:,} runs", ""),
                (STATUS_CHANGED, nero + ["status"], done, f"{n:,} runs", "heartbeat"),
                ("nero status all (full table)", nero + ["status", "all"], done, None, ""),
                ("nero status --json", nero + ["status", "--json"], done, None, ""),
                ("nero status --csv", nero + ["status", "--csv"], done, None, ""),
                (PLAN, nero + ["plan"], done, "No changes.", ""),
                (PLAN_CHANGED, nero + ["plan"], done, "No changes.", "heartbeat"),
                (PLAN_EDITED, nero + ["plan"], done, "No changes.", "edit"),
                ("nero plan (every run new)", nero + ["plan"], fresh, f"{n:,} to submit", ""),
                (RECONCILE, nero + ["reconcile"], done, None, ""),
                (RECONCILE_CHANGED, nero + ["reconcile"], done, None, "heartbeat"),
                (RECONCILE_SHOWN, nero + ["reconcile"], done, None, "reason"),
                (RECONCILE_EDITED, nero + ["reconcile"], done, None, "edit"),
                (DIGEST, nero + ["digest", "--preview"], done, "Runs:", ""),
                (DIGEST_EDITED, nero + ["digest", "--preview"], done, "Runs:", "edit"),
                (EXPORT, nero + ["export", "-o", "runs.csv"], done, f"{n} runs", ""),
                (EXPORT_EDITED, nero + ["export", "-o", "runs.csv"], done, f"{n} runs", "edit"),
            ]
            rows.append((n, PEER, *peer, 1.0))
            for name, argv, cwd, check, cold in cases:
                if args.before:
                    # in a copy of the project: the two nero's caches share names, not stamps
                    twin = Path(tmp) / f"before-{cwd.name}"
                    if not twin.exists():
                        shutil.copytree(cwd, twin)
                    s, mib = median(argv, twin, check, args.repeat, cold, args.before.resolve())
                    before.append((n, name, s, mib, s / peer[0]))
                    print(f"  before: {name}: {s:.2f}s {mib:.0f} MiB", file=sys.stderr, flush=True)
                s, mib = median(argv, cwd, check, args.repeat, cold)
                rows.append((n, name, s, mib, s / peer[0]))
                print(f"  {name}: {s:.2f}s {mib:.0f} MiB", file=sys.stderr, flush=True)
    if not rows:
        sys.exit("bench_cli: nothing was measured")
    print(f"{'runs':>8}  {'command':<46} {'median':>8} {'peak RSS':>9} {'× sqlite3':>10}")
    for n, name, s, mib, ratio in rows:
        print(f"{n:>8,}  {name:<46} {s:>7.2f}s {mib:>6.0f}MiB {ratio:>9.1f}×")
    if before:
        print(f"\nbefore → after ({args.before}):")
        for (n, name, s0, m0, _), (_, _, s, mib, _) in zip(before, [r for r in rows if r[1] != PEER], strict=True):
            print(f"{n:>8,}  {name:<46} {s0:>7.2f}s → {s:.2f}s ({s0 / s:.1f}× faster)  {m0:>5.0f} → {mib:.0f} MiB")
    verdicts(rows)


STATUS, PLAN, RECONCILE = "nero status", "nero plan (no change)", "nero reconcile (one pass, no change)"
STATUS_CHANGED, PLAN_CHANGED = "nero status, a run changed", "nero plan, a run changed"
RECONCILE_CHANGED = "nero reconcile, a run changed"
RECONCILE_SHOWN = "nero reconcile, results.xlsx rewritten"  # a run's reason changed: the workbook shows it
PLAN_EDITED = "nero plan, the workbook saved again"  # every cache made from the workbook misses
RECONCILE_EDITED = "nero reconcile, the workbook saved again"
DIGEST = "nero digest --preview"  # every run read for the counts, leaderboard, resources and plots
DIGEST_EDITED = "nero digest --preview, the workbook saved again"  # a plan after an edit, then every run read
EXPORT = "nero export -o runs.csv"  # every run and every point written
EXPORT_EDITED = "nero export, the workbook saved again"
PEER = "sqlite3 (the same rows)"


def verdicts(rows: list[tuple[int, str, float, float, float]]) -> None:
    """#14's must-show 1 beside what was measured: at (about) 100,000 runs `status`, `plan`
    and a no-change `reconcile` under 1 s and 200 MB; `status` at (about) 10,000 runs
    within 20× of sqlite3. Sizes not measured are said to be so."""
    by = {(n, name): (s, mib, ratio) for n, name, s, mib, ratio in rows}
    sizes = sorted({n for n, *_ in rows})

    def near(target: int) -> int | None:
        return next((n for n in sizes if abs(n - target) <= target // 10), None)

    print("\n#14's targets beside what was measured (must-show 1: status, plan and a no-change reconcile "
          "under 1 s; every command under 200 MB):")
    big, mid = near(100_000), near(10_000)
    for name in (STATUS, PLAN, RECONCILE, STATUS_CHANGED, PLAN_CHANGED, RECONCILE_CHANGED, RECONCILE_SHOWN,
                 PLAN_EDITED, RECONCILE_EDITED, DIGEST, DIGEST_EDITED, EXPORT, EXPORT_EDITED):
        if big is None:
            print(f"  {name} at 100,000 runs: not measured (--sizes has no 100000)")
            continue
        s, mib, _ = by[(big, name)]
        timely = name not in (EXPORT, EXPORT_EDITED)  # writing every run and point: its memory alone is bounded
        ok = (s < 1.0 or not timely) and mib < 200 * 1e6 / 2**20
        print(f"  {name} at {big:,} runs: {s:.2f} s{' (< 1 s)' if timely else ''}, {mib:.0f} MiB "
              f"(< 191 MiB = 200 MB): {'met' if ok else 'NOT met'}")
    if mid is None:
        print("  nero status at 10,000 runs: not measured (--sizes has no 10000)")
    else:
        for name in (STATUS, STATUS_CHANGED):
            ratio = by[(mid, name)][2]
            print(f"  {name} at {mid:,} runs: {ratio:.1f}× sqlite3 (≤ 20×): {'met' if ratio <= 20 else 'NOT met'}")


if __name__ == "__main__":
    main()
