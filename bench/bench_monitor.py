"""Benchmark: a monitoring pass over 500 live Slurm runs (issue: remote clusters).

500 runs are submitted to the testbed's Slurm through its sshd (one pass, job arrays);
each prints `step=… loss=…` every second for ten minutes. Slurm runs as many as its CPUs
allow and keeps the rest pending: all 500 are live (submitted or running) and polled.
Then, with the reconciler (its connection) already up, as in `nero reconcile --watch`:

* a monitoring pass: the scheduler's word on all 500 jobs, every run's status files and
  the output appended since the last pass, observe, commit; its ssh round trips, time
  and bytes read;
* the same after 4 KB of new output was appended to each of the 500 runs' logs
  (2 MB to read, parse and commit in the pass).

Target: ≤ 3 round trips and < 2 s per monitoring pass. Every job is cancelled at the end.

Run (as root, testbed up): . /tmp/nero-testbed/env.sh && python bench/bench_monitor.py [--runs 500]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import write_workbook  # noqa: E402

from orchestrator.model import RunState  # noqa: E402
from orchestrator.reconcile import Reconciler  # noqa: E402

TICKER = "import time\nfor i in range(1, 601):\n    print(f'step={i} loss={1 / i:.6f}', flush=True)\n    time.sleep(1)\n"


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        sys.exit(f"{name} is not set: run `bash tests/testbed/up.sh` and `. /tmp/nero-testbed/env.sh` first")
    return value


def ssh(command: str) -> str:
    out = subprocess.run(["ssh", "-F", env("NERO_TEST_SSH_CONFIG"), env("NERO_TEST_SSH_ALIAS"), command],
                         capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise RuntimeError(f"ssh {command[:60]!r}: {out.stderr}")
    return out.stdout


def measure(rec: Reconciler, passes: int) -> dict:
    backend = rec.backend("slurm")
    times, trips, sizes = [], [], []
    for _ in range(passes):
        t0, r0 = time.perf_counter(), backend.shell.round_trips
        rec.run_pass(results=False)
        times.append(time.perf_counter() - t0)
        trips.append(backend.shell.round_trips - r0)
        sizes.append(backend.last_poll_bytes)
        time.sleep(1)
    return {"median_s": statistics.median(times), "max_s": max(times), "trips": max(trips),
            "kb": statistics.median(sizes) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--passes", type=int, default=5)
    args = ap.parse_args()
    env("NERO_TEST_SLURM")
    os.environ["NERO_SSH_CONFIG"] = env("NERO_TEST_SSH_CONFIG")
    project = Path(tempfile.mkdtemp(prefix="nero-bench-monitor-"))
    (project / "ticker.py").write_text(TICKER)
    workdir = f"nero-work/bench-monitor-{uuid.uuid4().hex[:8]}"
    write_workbook(project / "experiments.xlsx", [
        {"id": "live", "command": "python3 ticker.py {{ i }}", "i": f"range(0, {args.runs})", "cluster": "slurm",
         "mem": 100},
    ], clusters=[{"name": "slurm", "kind": "slurm", "host": env("NERO_TEST_SSH_ALIAS"), "workdir": workdir,
                  "python": "/usr/bin/python3", "partition": os.environ.get("NERO_TEST_SLURM_PARTITION", "debug")}])
    rec = Reconciler(project / "experiments.xlsx")
    rec.load()
    ids: list[str] = []
    try:
        t0 = time.perf_counter()
        rec.run_pass(results=False, yes=True)  # the whole grid at once (over Settings confirm_over: as `--yes`)
        submit_s = time.perf_counter() - t0
        snap = rec.store.snapshot()
        ids = sorted({r.job_id.split("_")[0] for r in snap.values() if r.job_id})
        live = sum(1 for r in snap.values() if r.state.live)
        time.sleep(5)
        rec.run_pass(results=False)  # the first monitoring pass sees the starts
        states = [r.state for r in rec.store.snapshot().values()]
        running = sum(1 for s in states if s is RunState.RUNNING)
        steady = measure(rec, args.passes)
        # 4 KB of new output in every run's stdout.log (one command, outside nero)
        run_dirs = [r.run_dir for r in rec.store.snapshot().values()]
        listing = "\n".join(run_dirs)
        ssh(f"python3 -c \"import sys\nline = ('note=1 ' + 'x' * 57 + '\\\\n') * 64\n"
            f"for d in sys.stdin.read().split():\n    open(d + '/stdout.log', 'a').write(line)\" <<'EOF'\n{listing}\nEOF")
        burst = measure(rec, 1)
    finally:
        for k in range(0, len(ids), 500):
            ssh(f"scancel {' '.join(ids[k:k + 500])} 2>/dev/null; true")
        rec.close()
        time.sleep(2)
        ssh(f"rm -rf {workdir}")
    print(f"{args.runs} Slurm runs submitted in one pass in {submit_s:.2f} s; {live} live "
          f"({running} running, {args.runs - running} pending) when measured\n")
    title = f"monitoring pass over {args.runs} live runs"
    head = f"{title:44} {'round trips':>11} {'median s':>9} {'max s':>7} {'KB read':>8}"
    print(head)
    print("-" * len(head))
    for name, m in (("steady (1 line/s from each running job)", steady), ("+ 4 KB new output in each of the runs", burst)):
        print(f"{name:44} {m['trips']:11d} {m['median_s']:9.3f} {m['max_s']:7.3f} {m['kb']:8.0f}")
    ok = max(steady["trips"], burst["trips"]) <= 3 and max(steady["max_s"], burst["max_s"]) < 2
    print(f"\ntarget: <= 3 round trips and < 2 s per monitoring pass: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
