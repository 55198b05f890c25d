"""Hostile workbooks (issue #12): run `nero plan` on each case of tests/hostile_workbooks.py
in a fresh process and print, per case, its size on disk, what nero did (refused, with the
first problem, or read it), the seconds taken and the process's peak RSS.

The claim it checks: a workbook of at most 10 MB on disk never takes more than 300 MB of
memory to read or reject. Peak RSS is the child's own `ru_maxrss` (os.wait4, taken by a
small launcher process: tests/hostile_workbooks.run_measured), so cases do not blur into
each other. Each child runs under an address-space cap (--cap-mb) and a
timeout, so that a case that would blow up cannot take the machine down with it.

    python bench/bench_hostile_workbooks.py [--only a,b] [--timeout 60] [--cap-mb 4096]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import hostile_workbooks  # noqa: E402

LIMIT_MB = 300


def run_case(book: Path, timeout: float, cap_mb: int) -> tuple[str, float, float]:
    """(outcome, seconds, peak MB) of `nero plan` on one workbook, in a fresh process."""
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = str(ROOT) + (os.pathsep + env_path if env_path else "")
    os.environ["COLUMNS"] = "400"
    got = hostile_workbooks.run_measured([sys.executable, "-m", "orchestrator", "plan", str(book)],
                                         str(book.parent), timeout, cap_mb)
    os.environ["PYTHONPATH"] = env_path
    outcome = _outcome(int(got["rc"]), str(got["head"]), bool(got["killed"]), timeout)
    return outcome, float(got["seconds"]), float(got["peak_mb"])


def _outcome(rc: int, text: str, timed_out: bool, timeout: float) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if timed_out:
        return f"killed after {timeout:.0f} s"
    if rc == 0:
        return "read ok"
    if rc == 2 and lines and "problem" in lines[0]:
        first = lines[1] if len(lines) > 1 else lines[0]
        count = re.search(r"(\d[\d,]*) problems? in the workbook", lines[0])
        more = f" ({count.group(1)} problems)" if count and count.group(1) != "1" else ""
        return f"refused: {first[:150]}{more}"
    last = lines[-1][:150] if lines else ""
    return f"exit {rc}: {last}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma list of case names")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per case before it is killed")
    ap.add_argument("--cap-mb", type=int, default=4096, help="address-space cap of each child")
    args = ap.parse_args()
    only = [n for n in args.only.split(",") if n] or None
    rows = []
    print(f"{'case':34} {'disk':>9} {'s':>6} {'peak MB':>8}  outcome")
    for name in only or hostile_workbooks.names():
        # one case at a time: a forked child's peak RSS counts the parent's size at the fork
        with tempfile.TemporaryDirectory() as tmp:
            book = Path(tmp) / "experiments.xlsx"
            [(_, data)] = hostile_workbooks.cases([name])
            book.write_bytes(data)
            size = len(data)
            del data
            outcome, seconds, peak = run_case(book, args.timeout, args.cap_mb)
        expected = hostile_workbooks.expect(name)
        got = "ok" if outcome == "read ok" else "refused" if outcome.startswith("refused") else "other"
        flag = "" if got == expected else f"  [expected {expected}]"
        rows.append((name, size, outcome, seconds, peak, flag))
        print(f"{name:34} {size / 1024 / 1024:>7.2f}MB {seconds:>6.2f} {peak:>8.1f}  {outcome}{flag}", flush=True)
    worst = max(rows, key=lambda r: r[4])
    slowest = max(rows, key=lambda r: r[3])
    wrong = [r[0] for r in rows if r[5]]
    print(f"\n{len(rows)} cases, largest on disk {max(r[1] for r in rows) / 1024 / 1024:.2f} MB")
    print(f"worst peak RSS: {worst[4]:.1f} MB ({worst[0]}); limit {LIMIT_MB} MB: "
          f"{'held' if worst[4] <= LIMIT_MB else 'BROKEN'}")
    print(f"slowest: {slowest[3]:.2f} s ({slowest[0]})")
    print(f"outcomes not as expected: {', '.join(wrong) if wrong else 'none'}")
    return 0 if worst[4] <= LIMIT_MB and not wrong else 1


if __name__ == "__main__":
    sys.exit(main())
