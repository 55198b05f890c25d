"""Hostile workbooks (issue #12): run `nero plan` on each case of tests/hostile_workbooks.py
in a fresh process and print, per case, its size on disk, what nero did (refused, with the
first problem, or read it), the seconds taken and the process's peak RSS.

The claim it checks: a workbook of at most 10 MB on disk never takes more than 300 MB of
memory to read or reject. Peak RSS is the child's own `ru_maxrss` (os.wait4), so cases do
not blur into each other. Each child runs under an address-space cap (--cap-mb) and a
timeout, so that a case that would blow up cannot take the machine down with it.

    python bench/bench_hostile_workbooks.py [--only a,b] [--timeout 60] [--cap-mb 4096]
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import hostile_workbooks  # noqa: E402

LIMIT_MB = 300


def run_case(book: Path, timeout: float, cap_mb: int) -> tuple[str, float, float]:
    """(outcome, seconds, peak MB) of `nero plan` on one workbook, in a fresh process."""
    out = book.with_suffix(".out")

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap_mb * 1024 * 1024, cap_mb * 1024 * 1024))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "400"}
    start = time.monotonic()
    with out.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "plan", str(book)], cwd=book.parent, env=env,
                                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                preexec_fn=cap)
    timed_out = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - start > timeout:
            proc.send_signal(signal.SIGKILL)
            timed_out = True
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.02)
    seconds = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait again
    text = out.read_text(errors="replace")
    return _outcome(proc.returncode, text, timed_out, timeout), seconds, usage.ru_maxrss / 1024


def _outcome(rc: int, text: str, timed_out: bool, timeout: float) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if timed_out:
        return f"killed after {timeout:.0f} s"
    if rc == 0:
        return "read ok"
    if rc == 2 and lines and "problem" in lines[0]:
        first = lines[1] if len(lines) > 1 else lines[0]
        more = f" (+{len(lines) - 2} more)" if len(lines) > 2 else ""
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
