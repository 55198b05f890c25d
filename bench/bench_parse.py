"""Benchmark: `orchestrator.monitor.parse_output` throughput on realistic job output.

Generates a buffer (50 MB by default) of training-log lines: noise lines modelled on
the reference log (`20:32:05 Temp-dir: 0 mb, RAM 18.3 percent`, `Loading megabatch 1/2.`,
durations like `0:00:02.694695`), a Python warning and a tqdm bar, mixed with metric
lines in four common formats (`epoch=3 loss=0.41 …`, `step: 1200 loss: … lr: …`, Keras,
the PyTorch MNIST example). For each share of metric lines it prints MB/s of
`parse_output` with the default patterns and with one Metrics-sheet pattern, the best
of a few rounds, and the CPU µs each captured point adds (beyond the 0% row's cost
per byte). Target: ≥ 100 MB/s on typical output.

    python bench/bench_parse.py [--mb 50] [--rounds 3] [--shares 0,0.01,0.05,0.1,0.2,1]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from orchestrator.model import MetricDef  # noqa: E402
from orchestrator.monitor import parse_output  # noqa: E402

PATTERN = (MetricDef("val_loss", r"val_loss=(?P<value>\S+)"),)


def generate(size: int, metric_share: float, seed: int = 1) -> bytes:
    """About `size` bytes of log lines, `metric_share` of them carrying metrics."""
    rng = random.Random(seed)
    noise = [
        lambda ts, i: f"{ts} Temp-dir: 0 mb, RAM {rng.uniform(10, 90):.1f} percent",
        lambda ts, i: f"{ts} Loading megabatch {i % 2 + 1}/2.",
        lambda ts, i: f"{ts} Preprocessing: Preparing megabatch {i % 7} / {rng.randint(2, 9)}",
        lambda ts, i: f"{ts} Saving parameters of language_model",
        lambda ts, i: f"{ts} Updated altogether 6 channels in 0:00:00.{rng.randint(0, 999999):06d}",
        lambda ts, i: f"{ts} First epoch took 0:00:02.694695, estimated time remaining 0:00:00",
        lambda ts, i: ("/usr/lib/python3.11/site-packages/torch/utils/data/dataloader.py:557: UserWarning: "
                       "This DataLoader will create 4 worker processes in total."),
        lambda ts, i: f" {i % 100:2d}%|████▌     | {i % 1000}/1000 [00:12<00:15, 36.1it/s]",
    ]
    metric = [
        lambda ts, i: f"{ts} epoch={i // 100} loss={rng.random():.4f} val_loss={rng.random():.4f} acc={rng.random():.4f}",
        lambda ts, i: f"step: {i} loss: {rng.random():.5f} lr: {rng.uniform(1e-5, 1e-3):.2e}",
        lambda ts, i: (f"100/100 [==============================] - 2s 20ms/step - loss: {rng.random():.4f}"
                       f" - accuracy: {rng.random():.4f}"),
        lambda ts, i: f"Train Epoch: {i // 100} [{i % 60000}/60000 ({i % 100}%)]\tLoss: {rng.random():.6f}",
    ]
    out, n, i = [], 0, 0
    while n < size:
        s = i % 86400
        ts = f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"
        kinds = metric if rng.random() < metric_share else noise
        line = kinds[rng.randrange(len(kinds))](ts, i) + "\n"
        out.append(line)
        n += len(line)
        i += 1
    return "".join(out).encode()


def measure(buf: bytes, defs: tuple[MetricDef, ...], rounds: int) -> tuple[float, float, int]:
    """Best wall and CPU seconds over `rounds`, and the number of points."""
    wall = cpu = float("inf")
    points = 0
    for _ in range(rounds):
        gc.collect()
        w, c = time.perf_counter(), time.process_time()
        pts, consumed = parse_output(buf, defs, 0.0)
        wall, cpu = min(wall, time.perf_counter() - w), min(cpu, time.process_time() - c)
        assert consumed == len(buf)
        points = len(pts)
        del pts
    return wall, cpu, points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shares", default="0,0.01,0.05,0.1,0.2,1")
    args = ap.parse_args()
    size = int(args.mb * 1_000_000)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, {args.mb:g} MB buffers, best of {args.rounds}")
    print(f"{'metric lines':>12} {'points':>9} | {'default MB/s':>12} {'(cpu)':>6} {'µs/point':>8} | "
          f"{'+pattern MB/s':>13} {'(cpu)':>6}")
    noise_cpu_per_byte = None  # from the 0% row: what is left is the cost of the points
    for share in (float(s) for s in args.shares.split(",")):
        buf = generate(size, share)
        wall, cpu, points = measure(buf, (), args.rounds)
        pwall, pcpu, _ = measure(buf, PATTERN, args.rounds)
        if not points:
            noise_cpu_per_byte = cpu / len(buf)
        base = noise_cpu_per_byte * len(buf) if noise_cpu_per_byte is not None else 0.0
        per_point = f"{(cpu - base) / points * 1e6:8.2f}" if points else f"{'-':>8}"
        print(f"{share:>11.0%} {points:>9} | {len(buf) / wall / 1e6:>12.1f} {len(buf) / cpu / 1e6:>6.1f} {per_point} | "
              f"{len(buf) / pwall / 1e6:>13.1f} {len(buf) / pcpu / 1e6:>6.1f}")


if __name__ == "__main__":
    main()
