"""The torture suite's long run, by hand: `python -m tests.torture --kills 60 --seed 1`
from the repository root. Prints each step, then the figures (bench/README.md records
them); exit 1 if anything failed. Every wait has its own timeout."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .inputs import BAD_JOBS, Verdict, bad_job, full_disk, hostile, hostile_cases
from .kills import NAMED_POINTS, kill_leftovers, torture


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.torture", description=__doc__)
    ap.add_argument("--kills", type=int, default=60, help="SIGKILLs of the reconciler (default 60; 0: none)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=4, help="runs at the start; one more before each kill")
    ap.add_argument("--lines", type=int, default=60, help="metric lines each job prints (every 0.05 s)")
    ap.add_argument("--workbooks", default="all", help="'all', a number (the first N) or 0")
    ap.add_argument("--workbook-timeout", type=float, default=60, help="seconds each nero command may take")
    ap.add_argument("--no-bad-jobs", action="store_true")
    ap.add_argument("--no-disk", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    a = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="nero-torture-"))
    t0 = time.monotonic()
    failures: list[str] = []
    verdicts: list[Verdict] = []
    try:
        print(f"# {a.kills} kills, seed {a.seed}, in {scratch}", flush=True)
        k = torture(scratch / "kills", kills=a.kills, seed=a.seed, runs=a.runs, lines=a.lines,
                    final_timeout=max(120.0, 3.0 * a.kills), progress=lambda s: print("  " + s, flush=True))
        kill_leftovers(scratch / "kills")
        if not k.ok:
            failures.append("kills: " + "; ".join(k.problems + k.unfinished)[:2000])
        try:
            count = None if a.workbooks == "all" else int(a.workbooks)
            cases, module = hostile_cases() if count != 0 else ([], None)
        except ImportError:
            cases, module = [], None
            failures.append("workbooks: tests/hostile_workbooks.py not found")
        for name, data in cases[:count]:
            v = hostile(name, data, module.expect(name), scratch / "wb" / name, timeout=a.workbook_timeout)
            kill_leftovers(scratch / "wb" / name)
            shutil.rmtree(scratch / "wb" / name, ignore_errors=True)
            verdicts.append(v)
            print(f"  workbook {name:36} {v.outcome:8} {v.wall_s:6.2f} s {v.peak_mb:7.0f} MB"
                  f"{'' if v.ok else '  FAIL: ' + '; '.join(v.problems)[:300]}", flush=True)
        bad = [] if a.no_bad_jobs else list(BAD_JOBS)
        for name in bad:
            v = bad_job(name, scratch / "jobs" / name, timeout=60)
            kill_leftovers(scratch / "jobs" / name)
            verdicts.append(v)
            print(f"  bad job  {name:36} {v.outcome:10} {v.wall_s:6.2f} s {v.peak_mb:7.0f} MB"
                  f"{'' if v.ok else '  FAIL: ' + '; '.join(v.problems)[:300]}", flush=True)
        disk = "skipped (--no-disk)" if a.no_disk else "skipped (needs root for a tmpfs)"
        if not a.no_disk and os.geteuid() == 0:
            v = full_disk(scratch / "disk", timeout=60)
            verdicts.append(v)
            disk = "ok" if v.ok else "FAIL: " + " ".join("; ".join(v.problems).split())[:300]
        failures += [f"{v.name}: {' '.join('; '.join(v.problems).split())[:300]}" for v in verdicts if not v.ok]
        wbs = [v for v in verdicts if v.name in {n for n, _ in cases}]
        jobs = [v for v in verdicts if v.name in BAD_JOBS]
        print()
        print("| figure | value |")
        print("|---|---|")
        named = sum(c for p, c in k.by_point.items() if p in NAMED_POINTS)
        print(f"| kills of `nero reconcile --watch` | {k.kills} ({k.by_point['random']} random, {named} at named points"
              f"{f', {k.fallbacks} named points not reached' if k.fallbacks else ''}) |")
        print(f"| kills by point | {', '.join(f'{p} {c}' for p, c in sorted(k.by_point.items()))} |")
        print(f"| runs, program starts | {k.runs}, {k.starts} |")
        print(f"| duplicate starts | {k.duplicate_starts} |")
        print(f"| metric points printed | {k.points} |")
        print(f"| lost points | {k.lost_points} |")
        print(f"| duplicated points | {k.duplicated_points} |")
        print(f"| runs not completed | {len(k.unfinished)} |")
        print(f"| results.xlsx readable | {'yes' if k.results_readable else 'NO'} |")
        print(f"| leftover results temporaries | {k.stale_temporaries} |")
        print(f"| final `reconcile --until-done` | {k.final_s:.1f} s, exit {k.final_rc} |")
        refused = sum(v.outcome == "refused" for v in wbs)
        read = sum(v.outcome == "read" for v in wbs)
        print(f"| hostile workbooks | {len(wbs)}: {refused} refused, {read} read, {len(wbs) - refused - read} failed; "
              f"{sum(not v.ok for v in wbs)} not as expected |")
        if wbs:
            t = max(wbs, key=lambda v: v.wall_s)
            m = max(wbs, key=lambda v: v.peak_mb)
            print(f"| worst workbook time | {t.wall_s:.2f} s ({t.name}) |")
            print(f"| worst workbook peak memory | {m.peak_mb:.0f} MB ({m.name}) |")
        print(f"| bad jobs | {len(jobs)}: {sum(v.ok for v in jobs)} as expected"
              f"{'; failing: ' + ', '.join(v.name for v in jobs if not v.ok) if any(not v.ok for v in jobs) else ''} |")
        if jobs:
            print(f"| worst pass with a bad job | {max(v.wall_s for v in jobs):.2f} s, "
                  f"{max(v.peak_mb for v in jobs):.0f} MB |")
        print(f"| full disk | {disk} |")
        print(f"| total time | {time.monotonic() - t0:.0f} s |")
        if failures:
            print("\nFAILURES:")
            for f in failures:
                print(" - " + f)
        return 1 if failures else 0
    finally:
        kill_leftovers(scratch)
        if not a.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
