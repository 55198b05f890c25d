"""Benchmark (issue #14): a 200,000-row experiments workbook through `nero plan --json`,
whole process, and the workbook readers side by side.

* build: an Experiments sheet of N rows (id, command, lr, seed: one run each), written by
  xlsxwriter with shared strings as Excel saves them.
* readers, each in a fresh process (seconds, peak RSS): nero's bounds check alone
  (bounds.py, expat: every reader comes after it; since #14 it leaves the cells of the
  sheets nero reads to the read), nero's streamed reader (orchestrator/sheet/xlsx.py,
  expat, counting each sheet against the limits as it reads it), the openpyxl read-only path nero used before
  (tests/openpyxl_sheets.py: two passes when there are formulas), and python-calamine (Rust)
  if installed (`pip install .[bench]`); each reader must give N + 1 rows.
* plan: `python -m orchestrator plan --json` on the N-row workbook, whole process (time,
  peak RSS), with nero's reader and, with --peer-plan, with the openpyxl path put in its
  place; it must exit 0 and list N submits.
* profile: with --profile, the top of cProfile for the plan (which layer takes the time).
* another checkout: with --root DIR the plans run that checkout of nero (the commit before,
  say), and with --raise-limits its row and cell limits are raised in the process (a commit
  whose limits refuse the N rows: before #14 they were 50,000 rows, 300,000 cells).

Run: python bench/bench_workbook.py [--rows 10000,200000] [--plan-rows 200000] [--peer-plan] [--profile]
     [--root DIR] [--raise-limits]    (--rows "" skips the readers)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import hostile_workbooks  # noqa: E402

COMMAND = "python train.py --lr {{ lr }} --seed {{ seed }}"

_READ = r"""
import json, resource, sys, time
sys.path[:0] = [sys.argv[3], sys.argv[3] + "/tests"]
from pathlib import Path
from orchestrator.sheet.workbook import _canonical_sheet as wanted
from orchestrator.sheet.bounds import check_bounds
reader, path = sys.argv[1], Path(sys.argv[2])
t = time.perf_counter()
if reader == "bounds":
    check_bounds(path, lambda title: wanted(title) is not None)
    rows = -1
elif reader == "nero":
    from orchestrator.sheet.xlsx import read_sheets
    rows = len(read_sheets(path, wanted)[1]["Experiments"][1])
elif reader == "openpyxl":
    from openpyxl_sheets import read_sheets
    rows = len(read_sheets(path, wanted)[1]["Experiments"][1])
else:
    import python_calamine
    book = python_calamine.CalamineWorkbook.from_path(str(path))
    rows = sum(1 for row in book.get_sheet_by_name("Experiments").to_python() if any(v != "" for v in row))
print(json.dumps({"seconds": time.perf_counter() - t, "rows": rows,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

# `nero plan` with the openpyxl path in place of the streamed reader (the peer of --peer-plan)
_PEER_PLAN = r"""
import sys
sys.path[:0] = [sys.argv.pop(1), sys.argv.pop(1)]
import openpyxl_sheets
from orchestrator.sheet import workbook
workbook.read_sheets = openpyxl_sheets.read_sheets
from orchestrator.cli import main
sys.argv[0] = "nero"
main()
"""


# `nero plan` with the row and cell limits raised (a commit whose limits refuse the workbook)
_RAISED_PLAN = r"""
import sys
sys.path[:0] = [sys.argv.pop(1)]
from orchestrator.sheet import bounds
bounds.ROWS, bounds.CELLS = max(bounds.ROWS, 250_000), max(bounds.CELLS, 1_000_000)
from orchestrator.cli import main
sys.argv[0] = "nero"
main()
"""


def build(path: Path, rows: int) -> Path:
    import xlsxwriter

    book = xlsxwriter.Workbook(str(path))
    ws = book.add_worksheet("Experiments")
    ws.write_row(0, 0, ["id", "command", "lr", "seed"])
    for r in range(1, rows + 1):
        ws.write_row(r, 0, [f"e{r}", COMMAND, 0.001 * (r % 97 + 1), r])
    book.close()
    return path


def read(reader: str, path: Path, rows: int) -> dict[str, float]:
    """One reader in a fresh process (started by a launcher, so that its peak RSS is its
    own: Linux keeps a parent's peak across exec)."""
    done = hostile_workbooks.run_measured([sys.executable, "-c", _READ, reader, str(path), str(ROOT)],
                                          str(path.parent), timeout=3600)
    if done["rc"] != 0:
        raise SystemExit(f"{reader} failed on {path.name}: {str(done['output'])[-2000:]}")
    got = json.loads(str(done["head"]).strip().splitlines()[-1])
    if got["rows"] != rows + 1 and reader != "bounds":
        raise SystemExit(f"{reader} read {got['rows']} rows of {path.name}, not {rows + 1}: it measured nothing")
    got["peak_mb"] = float(done["peak_mb"])
    return got


def plan(path: Path, rows: int, peer: bool = False, profile: str = "", root: Path = ROOT,
         raised: bool = False) -> dict[str, float]:
    """`nero plan --json` on `path` in a fresh process (nero from `root`; `raised`: its limits
    raised): seconds, peak MB; fails loudly unless it exits 0 and lists one submit per row."""
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = str(root) + (os.pathsep + env_path if env_path else "")
    if raised:
        cmd = [sys.executable, "-c", _RAISED_PLAN, str(root), "plan", "--json", str(path)]
    elif peer:
        cmd = [sys.executable, "-c", _PEER_PLAN, str(ROOT), str(ROOT / "tests"), "plan", "--json", str(path)]
    elif profile:
        cmd = [sys.executable, "-m", "cProfile", "-o", profile, "-m", "orchestrator", "plan", "--json", str(path)]
    else:
        cmd = [sys.executable, "-m", "orchestrator", "plan", "--json", str(path)]
    out = path.parent / "plan.json"  # the plan goes to a file: the shell execs nero, so the peak is nero's
    got = hostile_workbooks.run_measured(["sh", "-c", 'exec "$@" > plan.json', "sh", *cmd], str(path.parent),
                                         timeout=3600)
    os.environ["PYTHONPATH"] = env_path
    if got["rc"] != 0 or got["killed"]:
        raise SystemExit(f"nero plan failed (exit {got['rc']}): {str(got['output'])[-2000:]}")
    submits = sum(1 for a in json.loads(out.read_text())["actions"] if a["action"] == "submit")
    if submits != rows:
        raise SystemExit(f"nero plan listed {submits} submits for {rows} rows: it measured nothing")
    return {"seconds": float(got["seconds"]), "peak_mb": float(got["peak_mb"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="10000,200000", help="sheet sizes for the reader comparison")
    ap.add_argument("--plan-rows", type=int, default=200_000)
    ap.add_argument("--peer-plan", action="store_true", help="also plan with the openpyxl path (minutes)")
    ap.add_argument("--profile", action="store_true", help="print the top of cProfile for the plan")
    ap.add_argument("--root", type=Path, default=ROOT, help="the nero checkout whose plan is measured")
    ap.add_argument("--raise-limits", action="store_true", help="raise that nero's row and cell limits")
    args = ap.parse_args()
    try:
        import python_calamine  # noqa: F401
        readers = ["bounds", "nero", "openpyxl", "calamine"]
    except ImportError:
        readers = ["bounds", "nero", "openpyxl"]
    print(f"load average {os.getloadavg()[0]:.2f}; {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        print("\nreaders (fresh process each, import included; the bounds check comes before any of them):")
        print(f"{'rows':>8} | {'reader':<9} | {'seconds':>8} | {'peak MB':>8} | ratio to nero")
        for rows in (int(n) for n in args.rows.split(",") if n):
            book = build(Path(tmp) / f"read{rows}.xlsx", rows)
            base = None
            for reader in readers:
                got = read(reader, book, rows)
                base = got if reader == "nero" else base
                ratio = "" if base is None else (f"{got['seconds'] / base['seconds']:.2f}× time, "
                                                 f"{got['peak_mb'] / base['peak_mb']:.2f}× memory")
                print(f"{rows:>8,} | {reader:<9} | {got['seconds']:>8.2f} | {got['peak_mb']:>8.0f} | {ratio}")
        folder = Path(tmp) / "project"
        folder.mkdir()
        book = build(folder / "experiments.xlsx", args.plan_rows)
        size = book.stat().st_size / 2**20
        print(f"\n`nero plan --json`, whole process, {args.plan_rows:,} rows ({size:.1f} MB on disk), nero from "
              f"{args.root}{' (limits raised)' if args.raise_limits else ''}, load average {os.getloadavg()[0]:.2f}:")
        t = time.perf_counter()
        ours = plan(book, args.plan_rows, root=args.root, raised=args.raise_limits)
        print(f"  streamed reader: {ours['seconds']:.1f} s, {ours['peak_mb']:.0f} MB peak"
              f" ({'under' if ours['seconds'] < 20 else 'OVER'} the 20 s target)")
        if args.peer_plan:
            peer = plan(book, args.plan_rows, peer=True)
            print(f"  openpyxl path:   {peer['seconds']:.1f} s, {peer['peak_mb']:.0f} MB peak; streamed / openpyxl: "
                  f"{ours['seconds'] / peer['seconds']:.2f}× time, {ours['peak_mb'] / peer['peak_mb']:.2f}× memory")
        if args.profile:
            import pstats

            plan(book, args.plan_rows, profile=str(Path(tmp) / "plan.prof"))
            pstats.Stats(str(Path(tmp) / "plan.prof")).sort_stats("cumulative").print_stats(
                r"orchestrator/(sheet|preflight|plan|reconcile|spec|render)", 25)
        print(f"\n(total {time.perf_counter() - t:.0f} s for the plans)")


if __name__ == "__main__":
    main()
