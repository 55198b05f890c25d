"""Benchmark: the compute the `prune` rules save against no pruning, at equal final quality.

    python bench/bench_prune.py [--seeds 10] [--runs 81] [--steps 81] [--slots 9]

A row of `--runs` runs (a grid or a sample: one experiment row) over a population of
synthetic learning curves with known final values: run i's value at step s is
`final_i + gap_i·exp(-s/tau_i)` plus Gaussian noise (sd 0.01), its known final value the
noise-free value at the last step; `final` ~ U(0.1, 1), `gap` ~ U(0.3, 2), `tau` ~ U(3, 40)
steps, so a slow starter sometimes ends best and early values are a fair, not a perfect,
guide. Lower is better.

The row is simulated as nero runs it: `--slots` runs at a time (the cluster's `max_jobs`),
each advancing one step per tick; after every tick (or every `--lag` ticks: nero's passes
need not fall on every step) nero's own decision, `orchestrator.prune.decide` (what
`rules.prune_verdicts` calls every pass), judges the live runs against every run of the row
and the runs it names stop; a stopped or finished run frees its slot for the next. A
step-unit is one step of one run. Reported, each the median over the seeds:

- compute saved: 1 - step-units spent / (runs × steps), no pruning spending all of it;
- best final: the best known final value among the runs that ran to the end, its regret
  against the best of all runs (what no pruning finds: median and mean), how often the pruned
  row kept the very best run and how often its best is within 0.01 (the noise) of it: equal
  final quality;
- the same through Optuna's own pruners in-process (a sequential study: one trial at a time,
  each reporting every step), with the matching settings, as the named peer; and nero's
  decisions in that same sequential order (`--slots 1`), which must prune as Optuna does
  for ASHA and Hyperband (tests/test_prune.py checks it exactly).

Last, the cost of one pass's decision: `decide` over a row of 1,000 runs × 200 steps with
100 live ones (median of 5), each history a Series as the state store hands it out.

Fails (exit 1) if a configuration saved no compute or pruned nothing.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from array import array
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.prune import Pruner, decide, parse_pruner  # noqa: E402
from orchestrator.series import Series  # noqa: E402

NEAR = 0.01  # a best final within the noise (sd 0.01) of the row's very best counts as equal quality


def population(seed: int, runs: int, steps: int) -> tuple[list[list[float]], list[float]]:
    """Each run's curve (steps 1..steps) and its known final value."""
    r = random.Random(seed)
    curves, finals = [], []
    for _ in range(runs):
        final, gap, tau = r.uniform(0.1, 1.0), r.uniform(0.3, 2.0), r.uniform(3, 40)
        clean = [final + gap * math.exp(-s / tau) for s in range(1, steps + 1)]
        curves.append([v + r.gauss(0, 0.01) for v in clean])
        finals.append(clean[-1])
    return curves, finals


def simulate(pruner: Pruner | None, curves: list[list[float]], slots: int, lag: int = 1,
             name: str = "row") -> tuple[int, list[int]]:
    """Step-units spent and the runs that ran to the end, the row run `slots` at a time with
    nero's decision after every `lag` ticks. Run i's key is `{name}_{i}`, the name Optuna's
    Hyperband hashes for trial i of a study called `name`, so both put it in one bracket."""
    n, steps = len(curves), len(curves[0])
    keys = [f"{name}_{i}" for i in range(n)]
    # each run's history: one Series whose arrays grow as the run reports (decide keeps none)
    histories: dict[str, Series] = {}
    reached = [0] * n
    waiting, live, done = list(range(n)), [], []
    spent, tick = 0, 0
    while waiting or live:
        while waiting and len(live) < slots:
            i = waiting.pop(0)
            live.append(i)
            histories[keys[i]] = Series(array("d"), array("d"), True)
        for i in live:
            reached[i] += 1
            s = histories[keys[i]]
            s.steps.append(reached[i])
            s.values.append(curves[i][reached[i] - 1])
            spent += 1
        finished = [i for i in live if reached[i] == steps]
        done += finished
        live = [i for i in live if reached[i] < steps]
        tick += 1
        if pruner is not None and live and tick % lag == 0:
            stop = decide(pruner, "min", histories, [keys[i] for i in live])
            live = [i for i in live if keys[i] not in stop]
    return spent, done


def optuna_peer(kind: str, settings: dict[str, int], curves: list[list[float]], name: str) -> tuple[int, list[int]]:
    """The same curves through an Optuna study with its own pruner, one trial at a time."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if kind == "median":
        pruner: optuna.pruners.BasePruner = optuna.pruners.MedianPruner(
            n_startup_trials=0, n_warmup_steps=settings["warmup"], n_min_trials=settings["min_runs"])
    elif kind == "asha":
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=settings["min_step"],
                                                        reduction_factor=settings["eta"])
    else:
        pruner = optuna.pruners.HyperbandPruner(min_resource=settings["min_step"], max_resource=settings["max_step"],
                                                reduction_factor=settings["eta"])
    study = optuna.create_study(study_name=name, direction="minimize", pruner=pruner,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    spent = [0]
    done: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        curve = curves[trial.number]
        for step, value in enumerate(curve, start=1):
            trial.report(value, step)
            spent[0] += 1
            if trial.should_prune():
                raise optuna.TrialPruned()
        done.append(trial.number)
        return curve[-1]

    study.optimize(objective, n_trials=len(curves))
    return spent[0], done


def decision_cost(runs: int = 1000, steps: int = 200, live: int = 100, repeats: int = 5) -> dict[str, float]:
    """Seconds for one pass's `decide` over a row of `runs` runs, `live` of them running."""
    r = random.Random(1)
    histories = {}
    for i in range(runs):
        n = steps if i >= live else r.randint(steps // 2, steps)
        histories[f"row[i={i}]"] = Series.of([(s, r.random() + 1 / s) for s in range(1, n + 1)])
    candidates = [f"row[i={i}]" for i in range(live)]
    out = {}
    for text in ("prune median(v, warmup=5)", "prune asha(v, min_step=1, eta=3)",
                 "prune hyperband(v, min_step=1, max_step=200, eta=3)"):
        pruner = parse_pruner(text, 0, len(text))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            decide(pruner, "min", histories, candidates)
            times.append(time.perf_counter() - t0)
        out[pruner.kind] = statistics.median(times)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--runs", type=int, default=81)
    ap.add_argument("--steps", type=int, default=81)
    ap.add_argument("--slots", type=int, default=9)
    ap.add_argument("--lag", type=int, default=5, help="ticks between passes in the lagged configuration")
    ap.add_argument("--no-optuna", action="store_true", help="leave the in-process Optuna peer out")
    args = ap.parse_args()
    if args.seeds < 10:
        print("note: fewer than 10 seeds; the figures are medians over", args.seeds)
    total = args.runs * args.steps
    rules = {  # the eager settings, then gentler ones (later rungs, a longer warm-up)
        "median": "prune median(v, warmup=5, min_runs=3)",
        "median/20": "prune median(v, warmup=20, min_runs=3)",
        "asha": "prune asha(v, min_step=1, eta=3)",
        "asha/9": "prune asha(v, min_step=9, eta=3)",
        "hyperband": f"prune hyperband(v, min_step=1, max_step={args.steps}, eta=3)",
    }
    configs: list[tuple[str, str, int, int]] = []  # (label, kind, slots, lag) ; kind "" = no pruning
    configs.append(("no pruning", "", args.slots, 1))
    for kind in rules:
        configs.append((f"nero {kind}, {args.slots} slots", kind, args.slots, 1))
        configs.append((f"nero {kind}, {args.slots} slots, a pass every {args.lag} steps", kind, args.slots, args.lag))
        configs.append((f"nero {kind}, 1 slot (sequential)", kind, 1, 1))
        if not args.no_optuna:
            configs.append((f"Optuna {kind} pruner (sequential)", kind, 1, 0))
    results: dict[str, dict[str, list[float]]] = {c[0]: {"saved": [], "best": [], "kept": [], "regret": [], "near": []}
                                                  for c in configs}
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        curves, finals = population(seed, args.runs, args.steps)
        optimum = min(finals)
        for label, kind, slots, lag in configs:
            if not kind:
                spent, done = simulate(None, curves, slots)
            elif lag == 0:
                pruner = parse_pruner(rules[kind], 0, len(rules[kind]))
                spent, done = optuna_peer(pruner.kind, dict(pruner.settings), curves, f"row{seed}")
            else:
                spent, done = simulate(parse_pruner(rules[kind], 0, len(rules[kind])), curves, slots, lag, f"row{seed}")
            best = min(finals[i] for i in done)
            res = results[label]
            res["saved"].append(1 - spent / total)
            res["best"].append(best)
            res["kept"].append(float(best == optimum))
            res["regret"].append(best - optimum)
            res["near"].append(float(best - optimum <= NEAR))
    elapsed = time.perf_counter() - t0
    print(f"{args.runs} runs × {args.steps} steps a row ({total} step-units unpruned), {args.seeds} seeds, "
          f"{args.slots} slots; medians over the seeds ({elapsed:.0f} s)")
    for kind, text in rules.items():
        print(f"  {kind}: {text}")
    print()
    print(f"{'configuration':<56} {'saved':>7} {'best final':>11} {'regret':>8} {'mean':>7} {'kept best':>10} "
          f"{'within ' + str(NEAR):>11} {'compute ratio':>14}")
    failed = []
    for label, *_ in configs:
        res = results[label]
        saved = statistics.median(res["saved"])
        seeds = len(res["kept"])
        print(f"{label:<56} {saved:>6.1%} {statistics.median(res['best']):>11.4f} "
              f"{statistics.median(res['regret']):>8.4f} {statistics.fmean(res['regret']):>7.4f} "
              f"{sum(res['kept']):>4.0f}/{seeds:<5} {sum(res['near']):>5.0f}/{seeds:<5} {1 / (1 - saved):>13.2f}×")
        if label != "no pruning" and not saved > 0:
            failed.append(label)
    print()
    cost = decision_cost()
    print("one pass's decision, a row of 1,000 runs × 200 steps, 100 live (median of 5): "
          + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in cost.items()))
    if failed:
        print(f"FAILED: no compute saved by {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
