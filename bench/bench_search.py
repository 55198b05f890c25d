"""Benchmark: nero's adaptive search (a `search = tpe(f, N)` row) against its anchors on one
objective and budget, median over seeds (issue 17, Must show 3, the TPE part).

The objective is the Branin function on x1 ∈ [-5, 10], x2 ∈ [0, 15] (three global minima,
f* = 0.397887), printed by a real job as `f=…`. Each contender gets the same budget of
evaluations; the figure is the regret of the best value found (best − f*), its median
over the seeds:

* nero tpe: a workbook row `search = tpe(f, BUDGET)` with x1 = uniform(-5, 10),
  x2 = uniform(0, 15) and `sample_seed` = the seed, run to its end by the real command
  line `nero reconcile --until-done` (Clusters local, max_jobs `--jobs`): every trial a
  local job, its value read from the job's output and told back by nero;
* optuna tpe: Optuna's TPESampler(seed) asked and told in-process (the peer that should
  match nero's within noise: nero drives the same sampler through its ask/tell path);
* optuna tpe ×J (with `--jobs` J > 1): Optuna's TPESampler(seed, constant_liar=True) asked J
  trials at a time, all told before the next J are asked: the in-process peer of nero asking
  J trials at once (nero asks as each slot frees up, so its batches overlap);
* random: Optuna's RandomSampler(seed), in-process;
* grid: the grid of the budget's size (6 × 5 for 30: linspace over each range), the same
  for every seed.

Fails loudly when a nero run did not reach its budget or a trial has no value.

Run: python bench/bench_search.py [--seeds 10] [--budget 30] [--jobs 1]
"""

from __future__ import annotations

import argparse
import math
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from openpyxl import Workbook

ROOT = Path(__file__).resolve().parent.parent
F_STAR = 0.397887357729738
BRANIN = r'''
import math, sys
a = dict(x.split("=", 1) for x in sys.argv[1:])
x1, x2 = float(a["x1"]), float(a["x2"])
b, c, r, s, t = 5.1 / (4 * math.pi ** 2), 5 / math.pi, 6, 10, 1 / (8 * math.pi)
print(f"f={(x2 - b * x1 ** 2 + c * x1 - r) ** 2 + s * (1 - t) * math.cos(x1) + s!r}")
'''


def branin(x1: float, x2: float) -> float:
    b, c, r, s, t = 5.1 / (4 * math.pi ** 2), 5 / math.pi, 6, 10, 1 / (8 * math.pi)
    return (x2 - b * x1 ** 2 + c * x1 - r) ** 2 + s * (1 - t) * math.cos(x1) + s


def nero_tpe(tmp: Path, seed: int, budget: int, jobs: int) -> tuple[float, float]:
    """(best value, seconds) of a search row run by `nero reconcile --until-done`."""
    folder = tmp / f"seed{seed}"
    folder.mkdir()
    (folder / "branin.py").write_text(BRANIN)
    wb = Workbook()
    ws = wb.active
    ws.title = "Experiments"
    ws.append(["id", "command", "x1", "x2", "search", "sample_seed"])
    ws.append(["branin", f"{sys.executable} branin.py x1={{{{ x1 }}}} x2={{{{ x2 }}}}", "uniform(-5, 10)",
               "uniform(0, 15)", f"tpe(f, {budget})", seed])
    cl = wb.create_sheet("Clusters")
    cl.append(["name", "kind", "max_jobs"])
    cl.append(["local", "local", jobs])
    wb.save(folder / "experiments.xlsx")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "orchestrator", "reconcile", str(folder), "--until-done", "--quiet",
                        "--interval", "0.1"], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"bench_search: nero reconcile exited {p.returncode}:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    con = sqlite3.connect(folder / ".nero" / "state.db")
    try:
        rows = con.execute("SELECT told, value FROM trials").fetchall()
    finally:
        con.close()
    values = [v for told, v in rows if told == "complete" and v is not None]
    if len(rows) != budget or len(values) != budget:
        sys.exit(f"bench_search: seed {seed}: {len(rows)} trials, {len(values)} with a value (budget {budget})")
    return min(values), seconds


def optuna_study(sampler_name: str, seed: int, budget: int, batch: int = 1) -> float:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = (optuna.samplers.TPESampler(seed=seed, constant_liar=batch > 1) if sampler_name == "tpe"
               else optuna.samplers.RandomSampler(seed=seed))
    study = optuna.create_study(sampler=sampler)
    space = {"x1": optuna.distributions.FloatDistribution(-5, 10), "x2": optuna.distributions.FloatDistribution(0, 15)}
    while len(study.trials) < budget:
        asked = [study.ask(space) for _ in range(min(batch, budget - len(study.trials)))]
        for t in asked:
            study.tell(t, branin(t.params["x1"], t.params["x2"]))
    if len(study.trials) != budget:
        sys.exit(f"bench_search: optuna {sampler_name} made {len(study.trials)} trials")
    return study.best_value


def grid(budget: int) -> tuple[float, str]:
    """The best of the grid closest to square with `budget` points (a × b = budget)."""
    a = max(d for d in range(1, int(math.isqrt(budget)) + 1) if budget % d == 0)
    b = budget // a
    xs = [-5 + 15 * i / (b - 1) for i in range(b)] if b > 1 else [2.5]
    ys = [15 * j / (a - 1) for j in range(a)] if a > 1 else [7.5]
    return min(branin(x, y) for x in xs for y in ys), f"{b} × {a}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budget", type=int, default=30)
    ap.add_argument("--jobs", type=int, default=1, help="max_jobs of nero's local cluster (trials asked at once)")
    args = ap.parse_args()
    if args.seeds < 1 or args.budget < 2:
        sys.exit("bench_search: give at least one seed and a budget of 2 or more")
    batched = f"optuna tpe ×{args.jobs}"
    regrets: dict[str, list[float]] = {"nero tpe": [], "optuna tpe": [], **({batched: []} if args.jobs > 1 else {}),
                                       "random": []}
    seconds: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench_search_") as d:
        for seed in range(args.seeds):
            best, s = nero_tpe(Path(d), seed, args.budget, args.jobs)
            seconds.append(s)
            regrets["nero tpe"].append(best - F_STAR)
            regrets["optuna tpe"].append(optuna_study("tpe", seed, args.budget) - F_STAR)
            if args.jobs > 1:
                regrets[batched].append(optuna_study("tpe", seed, args.budget, args.jobs) - F_STAR)
            regrets["random"].append(optuna_study("random", seed, args.budget) - F_STAR)
            print(f"  seed {seed}: " + "  ".join(f"{k} {v[-1]:.4f}" for k, v in regrets.items()) + f"  ({s:.1f} s)",
                  flush=True)
    grid_best, shape = grid(args.budget)
    median = {k: statistics.median(v) for k, v in regrets.items()}
    median[f"grid {shape}"] = grid_best - F_STAR
    nero = median["nero tpe"]
    print(f"\nBranin, budget {args.budget}, {args.seeds} seeds, nero max_jobs {args.jobs}: median regret of the best "
          f"value (best − {F_STAR:.6f})")
    print(f"{'contender':<14} {'median regret':>14} {'quartiles':>22} {'÷ nero tpe':>11}")
    for name, m in median.items():
        vals = regrets.get(name)
        q = statistics.quantiles(vals, n=4) if vals and len(vals) > 1 else None
        quart = f"{q[0]:.4f} – {q[2]:.4f}" if q else "(one value)"
        ratio = m / nero if nero > 0 else math.inf
        print(f"{name:<14} {m:>14.4f} {quart:>22} {ratio:>10.2f}×")
    print(f"\nnero: {statistics.median(seconds):.1f} s per search of {args.budget} real jobs (median)")


if __name__ == "__main__":
    main()
