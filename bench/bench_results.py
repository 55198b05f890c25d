"""Benchmark of the results workbook (the package orchestrator/results/).

    python bench/bench_results.py [--runs 1000] [--points 500] [--metrics 3]

Each variant runs in its own subprocess (so peak memory is its own), on the same input:
1,000 runs in 10 experiments, each with 500 points of 3 metrics.

- `xlsxwriter`: a plain xlsxwriter constant_memory write of the same cells, every point
  of every metric (runs × points × metrics numbers), one row per run × step and a column
  per metric — the floor any xlsx writer of this data pays.
- `nero full`: `write_results` from scratch: Summary, Curves (leaderboard and line charts),
  Curve data (downsampled), Events, Resources, Queue.
- `refresh`: a running run completed (one row, one event); `write_results(..., charts=False)`
  on the file of a full write, in the process that wrote it: the summary-only refresh of
  the loop (median of 5).
- `refresh-cold`: the same in a new process (a restarted loop: nothing remembered).

Time is wall time of the write alone (the input is built first); memory is the process's
peak RSS and the part of it the write added over the input it was given.
Targets: full ≤ 1.5 × xlsxwriter time, < 150 MB; refresh < 0.5 s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.model import Event, ResultsInput, RunRecord, RunState, Series, Settings  # noqa: E402

METRICS = ("val_err", "train_err", "loss", "val_acc", "lr")


def build(runs: int, points: int, metrics: int, seed: int = 7) -> ResultsInput:
    rnd = random.Random(seed)
    now = 1_700_000_000.0
    names = METRICS[:metrics]
    records, histories, events = [], {}, []
    states = (RunState.COMPLETED,) * 6 + (RunState.RUNNING, RunState.FAILED, RunState.TERMINATED, RunState.PENDING)
    for i in range(runs):
        exp = f"exp{i // 100:02d}"
        lr, layers = 10 ** -rnd.uniform(1, 4), 1 + i % 4
        key = f"{exp}[lr={lr:.6g},layers={layers},seed={i}]"
        state = states[i % len(states)]
        started = None if state is RunState.PENDING else now - 86400 + 60 * i
        ended = started + 3600 + i if started is not None and state.finished else None
        h = {}
        if started is not None:
            tau = rnd.uniform(30, 120)
            for m in names:
                scale = {"loss": 3.0, "val_acc": -1.0}.get(m, 1.0)
                h[m] = Series.of((s, (1.0 if scale < 0 else 0.0) + scale * (0.9 * math.exp(-s / tau) + 0.05 * rnd.random()))
                                 for s in range(1, points + 1))
            histories[key] = h
            events += [Event(started - 10, key, "submitted", "", 1), Event(started, key, "started", "on node01", 1)]
            if ended is not None:
                events.append(Event(ended, key, state.value, "exit code 0" if state is RunState.COMPLETED else "rule", 1))
        records.append(RunRecord(
            key=key, number=i + 1, experiment=exp, spec_hash="0" * 12, essence={},
            params=(("lr", float(f"{lr:.6g}")), ("layers", layers), ("seed", i)), state=state,
            reason="" if state is RunState.COMPLETED else state.value, attempt=1 if started else 0,
            cluster="local", job_id=str(10_000 + i) if started else "", host="node01" if started else "",
            run_dir=f"/scratch/nero/{exp}/{i}/1" if started else "", started_at=started, ended_at=ended,
            git_commit="c02a97de7200ecbc3d28ba4a5352c0cbcbb0cd94", git_dirty=i % 7 == 0,
            last={m: p[-1][1] for m, p in h.items()}, best={m: min(v for _, v in p) for m, p in h.items()},
            command=f"python train.py --lr {lr:.6g} --layers {layers} --seed {i}",
            peak_rss_mb=1000.0 + i if started else None, min_disk_free_mb=50_000.0 if started else None,
        ))
    return ResultsInput(
        experiments_path="experiments.xlsx",
        settings=Settings(primary_metric="val_err", checkpoints=(10, 50, 200)),
        goals={m: ("max" if m == "val_acc" else "min") for m in names}, runs=tuple(records),
        histories=histories, events=tuple(events), queue=(), now=now)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def variant(name: str, runs: int, points: int, metrics: int, out: Path) -> dict[str, float]:
    data = build(runs, points, metrics)
    result: dict[str, float] = {}
    if name == "xlsxwriter":
        import xlsxwriter

        before = _rss_mb()
        t, cpu = time.perf_counter(), time.process_time()
        book = xlsxwriter.Workbook(str(out), {"constant_memory": True})
        ws = book.add_worksheet("data")
        write = ws.write_number
        row = 0
        for r in data.runs:  # one row per run × step, a column per metric
            h = data.histories.get(r.key, {})
            for points in zip(*h.values(), strict=True):
                for c, (_, v) in enumerate(points):
                    write(row, c, v)
                row += 1
        book.close()
        result["cells"] = sum(len(p) for h in data.histories.values() for p in h.values())
    else:
        from orchestrator.results import write_results

        if name == "refresh-cold":  # a new process (a restarted loop) refreshes the full write's file
            shutil.copyfile(out.parent / "full.xlsx", out)
        elif name == "refresh":
            write_results(out, data)
        before = _rss_mb()
        if name.startswith("refresh"):
            # a running run completes: one row and one event change, the histories do not
            walls, cpus = [], []
            for k in range(5 if name == "refresh" else 1):
                runs_ = list(data.runs)
                i = 6 + 10 * k
                runs_[i] = dataclasses.replace(runs_[i], state=RunState.COMPLETED, reason="exit code 0",
                                               ended_at=data.now)
                data = dataclasses.replace(data, runs=tuple(runs_),
                                           events=data.events + (Event(data.now, runs_[i].key, "completed"),))
                t, cpu = time.perf_counter(), time.process_time()
                assert write_results(out, data, charts=False)
                walls.append(time.perf_counter() - t)
                cpus.append(time.process_time() - cpu)
            result["seconds"] = statistics.median(walls)
            result["min_s"] = min(walls)
            result["cpu_s"] = statistics.median(cpus)
        else:
            t, cpu = time.perf_counter(), time.process_time()
            write_results(out, data)
    if "seconds" not in result:
        result["seconds"] = time.perf_counter() - t
        result["cpu_s"] = time.process_time() - cpu
    result["peak_rss_mb"] = _peak_mb()
    result["input_rss_mb"] = before
    result["write_mb"] = max(0.0, _peak_mb() - before)
    result["file_mb"] = out.stat().st_size / 2**20
    if name == "full":
        from orchestrator.results import fingerprint

        t = time.perf_counter()
        fingerprint(data)
        result["fingerprint_s"] = time.perf_counter() - t
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--points", type=int, default=500)
    ap.add_argument("--metrics", type=int, default=3)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(variant(args.variant, args.runs, args.points, args.metrics, Path(args.out))))
        return
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        for name in ("xlsxwriter", "full", "refresh", "refresh-cold"):
            proc = subprocess.run(
                [sys.executable, __file__, "--variant", name, "--out", str(Path(d) / f"{name}.xlsx"),
                 "--runs", str(args.runs), "--points", str(args.points), "--metrics", str(args.metrics)],
                capture_output=True, text=True, check=True)
            rows[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    base = rows["xlsxwriter"]["seconds"]
    print(f"{args.runs} runs × {args.points} points × {args.metrics} metrics "
          f"({rows['xlsxwriter']['cells']:,} points)")
    print(f"{'variant':<12} {'time s':>8} {'× plain':>8} {'CPU s':>7} {'peak RSS MB':>12} {'write MB':>9} "
          f"{'file MB':>8}")
    for name, r in rows.items():
        print(f"{name:<12} {r['seconds']:8.2f} {r['seconds'] / base:8.2f} {r['cpu_s']:7.2f} "
              f"{r['peak_rss_mb']:12.0f} {r['write_mb']:9.0f} {r['file_mb']:8.1f}")
    full, refresh = rows["full"], rows["refresh"]
    print(f"refresh: median of 5 (fastest {refresh['min_s']:.2f} s); refresh-cold: the first write of a new process")
    print(f"fingerprint: {full['fingerprint_s'] * 1000:.0f} ms; the input alone: {full['input_rss_mb']:.0f} MB RSS; "
          "write MB = peak RSS the write added to it")
    ok = (full["seconds"] <= 1.5 * base and full["write_mb"] < 150 and refresh["seconds"] < 0.5)
    print(f"targets (full ≤ 1.5× plain, its write < 150 MB, refresh < 0.5 s): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
