"""Benchmark: `orchestrator.track.log` against a plain `json.dumps` + write + flush loop.

Both write the same lines (`{"t": …, "step": …, <values>}`) to a file in a temporary
directory, in the same process and run, alternating rounds; the table shows the best
round of each in µs per call and their ratio. Targets: ratio ≤ 1.5 and < 5 µs/call.

    python bench/bench_track.py [--calls 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from orchestrator import track  # noqa: E402

CASES: dict[str, Callable[[random.Random], dict]] = {
    "2 floats": lambda r: {"loss": r.random(), "acc": r.random()},
    "1 float": lambda r: {"loss": r.random()},
    "6 mixed": lambda r: {"loss": r.random(), "val_loss": r.random(), "acc": r.random(),
                          "lr": r.random() * 1e-3, "tokens": r.randrange(10**9), "grad_norm": r.random()},
    "nan/inf": lambda r: {"loss": float("nan"), "val_loss": float("inf")},
}


def baseline(path: str, rows: list[dict]) -> float:
    with open(path, "a") as f:
        t0 = time.perf_counter()
        for i, values in enumerate(rows):
            f.write(json.dumps({"t": time.time(), "step": i, **values}) + "\n")
            f.flush()
        return time.perf_counter() - t0


def tracked(rows: list[dict]) -> float:
    log = track.log
    t0 = time.perf_counter()
    for i, values in enumerate(rows):
        log(i, **values)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    rng = random.Random(0)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, {args.calls} calls x {args.rounds} rounds (best)")
    print(f"{'values':<10} {'json+write+flush':>17} {'track.log':>10} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as d:
        track.init(d)
        for name, make in CASES.items():
            rows = [make(rng) for _ in range(args.calls)]
            base = mine = float("inf")
            for _ in range(args.rounds):
                base = min(base, baseline(os.path.join(d, "baseline.jsonl"), rows))
                mine = min(mine, tracked(rows))
            b, m = base / args.calls * 1e6, mine / args.calls * 1e6
            print(f"{name:<10} {b:>14.2f} µs {m:>7.2f} µs {m / b:>6.2f}")
        track.close()
        # the same lines: what nero reads back from both files
        with open(os.path.join(d, "metrics.jsonl")) as f:
            assert all(json.loads(line) for line in f)


if __name__ == "__main__":
    main()
