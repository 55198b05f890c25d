"""Pruning rules (`prune median|asha|hyperband(…)` in the rules column): the notation, the pure
decisions checked against Optuna's own pruners on the same histories, and a row of real local
jobs pruned by `nero reconcile --until-done`."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import optuna
import pytest
from conftest import nero, write_workbook

from orchestrator.errors import ExpressionError
from orchestrator.model import RunRecord, RunSpec, RunState, Series
from orchestrator.prune import Pruner, brackets, decide, parse_pruner
from orchestrator.rules import Verdict, evaluate, first_stop, names, parse_rules, prune_verdicts

optuna.logging.set_verbosity(optuna.logging.WARNING)


# --------------------------------------------------------------------------------------------
# The notation


def test_the_three_pruners_parse_with_their_defaults() -> None:
    rules = parse_rules("isnan(loss); prune median(val_loss, warmup=5); warn: prune asha(acc, eta=4) after 2; "
                        "prune hyperband(val_loss, max_step=81)")
    assert [r.source for r in rules] == ["isnan(loss)", "prune median(val_loss, warmup=5)", "prune asha(acc, eta=4) after 2",
                                         "prune hyperband(val_loss, max_step=81)"]
    median, asha, hyperband = (r.pruner for r in rules[1:])
    assert median == Pruner("median", "val_loss", (("warmup", 5), ("min_runs", 3)))
    assert asha == Pruner("asha", "acc", (("min_step", 1), ("eta", 4)))
    assert rules[2].warn and rules[2].after == 2 and rules[2].expr is None
    assert hyperband == Pruner("hyperband", "val_loss", (("min_step", 1), ("max_step", 81), ("eta", 3)))
    assert rules[0].pruner is None
    assert names(rules) == {"loss", "val_loss", "acc"}
    assert parse_rules("PRUNE Median(val_loss, MIN_RUNS=2,warmup=0)")[0].pruner == Pruner(
        "median", "val_loss", (("warmup", 0), ("min_runs", 2)))


@pytest.mark.parametrize(("text", "message", "at"), [
    ("prune mean(val_loss)", "'prune' takes one of: prune median(metric, warmup=0, min_runs=3), ", 7),
    ("prune median val_loss", "'(' expected, found 'val_loss'", 14),
    ("prune median(1)", "a metric name expected, found '1'", 14),
    ("prune median(val_loss, warmup=2.5)", "warmup is a whole number from 0 to 1000000000, not 2.5", 31),
    ("prune median(val_loss, eta=3)", "median() has no setting 'eta'; its settings are warmup, min_runs", 24),
    ("prune asha(val_loss, eta=1)", "eta is a whole number from 2 to 1000000000, not 1", 26),
    ("prune asha(val_loss, eta=3, eta=4)", "eta is given twice", 29),
    ("prune asha(val_loss, eta 3)", "'=' after eta expected, found '3'", 26),
    ("prune asha(val_loss", "',' or ')' expected, found the end of the rule", 20),
    ("prune asha(val_loss) and loss > 1", "the end of the rule (or 'after N') expected, found 'and'", 22),
    ("prune hyperband(val_loss)", "hyperband() needs max_step: prune hyperband(metric, min_step=1, max_step=N, eta=3)", 7),
    ("prune hyperband(val_loss, min_step=10, max_step=5)", "max_step (5) is below its min_step (10)", 7),
])
def test_bad_prune_rules_say_what_and_where(text: str, message: str, at: int) -> None:
    with pytest.raises(ExpressionError) as e:
        parse_rules("isnan(loss); " + text)
    assert message in str(e.value) and str(e.value).startswith("rule 2: ")
    assert e.value.position == len("isnan(loss); ") + at - 1


def test_a_metric_called_prune_is_still_a_metric() -> None:
    (rule,) = parse_rules("prune > 3")
    assert rule.pruner is None and rule.expr is not None


# --------------------------------------------------------------------------------------------
# The decisions, by hand


def test_median_compares_the_best_so_far_with_the_others_median_at_the_step() -> None:
    pruner = parse_pruner("prune median(loss, warmup=2, min_runs=2)", 0, 40)
    hist = {
        "a": [(1, 1.0), (2, 0.5), (3, 0.4)],
        "b": [(1, 1.0), (2, 0.6), (3, 0.5)],
        "bad": [(1, 2.0), (2, 1.5), (3, 1.4)],
        "slow": [(1, 3.0)],
    }
    assert decide(pruner, "min", hist, ["a", "b", "bad", "slow"]) == {
        "bad": "loss: best 1.4 up to step 3 vs median 0.45 of 2 other runs at step 3"}
    # higher is better: the best so far is the largest
    negated = {k: [(s, -v) for s, v in h] for k, h in hist.items()}
    assert decide(pruner, "max", negated, ["a", "b", "bad", "slow"]) == {
        "bad": "loss: best -1.4 up to step 3 vs median -0.45 of 2 other runs at step 3"}
    # within the warm-up nothing is judged; it is judged where min_runs others are; with too few, nowhere
    assert decide(parse_pruner("prune median(loss, warmup=4)", 0, 29), "min", hist, ["bad"]) == {}
    assert decide(parse_pruner("prune median(loss, min_runs=3)", 0, 31), "min", hist, ["bad"]) == {
        "bad": "loss: best 2 up to step 1 vs median 1 of 3 other runs at step 1"}
    assert decide(parse_pruner("prune median(loss, min_runs=4)", 0, 31), "min", hist, ["bad"]) == {}


def test_median_judges_a_run_ahead_of_the_others_where_enough_of_them_are() -> None:
    pruner = parse_pruner("prune median(loss, min_runs=2)", 0, 30)
    hist = {"fast": [(s, 5.0 - s / 100) for s in range(1, 51)], "a": [(s, 1.0) for s in range(1, 11)],
            "b": [(s, 2.0) for s in range(1, 21)]}
    assert decide(pruner, "min", hist, ["fast"]) == {
        "fast": "loss: best 4.9 up to step 10 vs median 1.5 of 2 other runs at step 10"}


def test_median_takes_each_others_latest_point_at_or_before_the_step_and_stops_all_nan() -> None:
    pruner = parse_pruner("prune median(loss, min_runs=1)", 0, 30)
    hist = {"me": [(10, 2.0)], "other": [(5, 1.0), (20, 0.5)], "nan": [(1, math.nan), (2, math.nan)]}
    out = decide(pruner, "min", hist, ["me", "nan"])
    assert out == {"me": "loss: best 2 up to step 10 vs median 1 of 1 other run at step 10",
                   "nan": "loss: no value but nan up to step 2"}


def test_asha_keeps_the_top_third_at_the_highest_rung_a_run_reached() -> None:
    pruner = parse_pruner("prune asha(loss, min_step=1, eta=3)", 0, 35)
    # rung 0 at step 1, rung 1 at step 3, rung 2 at step 9
    hist = {f"r{q}": [(s, q + 1 / s) for s in range(1, 5)] for q in range(6)}
    hist["late"] = [(1, 9.0), (2, 9.0)]  # short of rung 1: judged at rung 0
    out = decide(pruner, "min", hist, list(hist))
    # rung 1: six runs reached it, the best 2 go on; rung 0: seven, the top 2 go on
    assert sorted(out) == ["late", "r2", "r3", "r4", "r5"]
    assert out["r4"] == "loss=4.33333 at rung 1 (step 3): rank 5 of the 6 runs that reached it, the best 2 go on"
    assert out["late"] == "loss=9 at rung 0 (step 1): rank 7 of the 7 runs that reached it, the best 2 go on"
    # what a run did at an earlier rung no longer counts once it reached the next one
    hist["r5"] = [(1, 0.0), (2, 9.0), (3, 9.0)]
    assert "r5" in decide(pruner, "min", hist, ["r5"])
    assert decide(pruner, "max", hist, ["r5"]) == {}


def test_asha_takes_the_first_point_at_or_past_a_rung() -> None:
    pruner = parse_pruner("prune asha(loss, min_step=2, eta=2)", 0, 35)  # rungs at steps 2, 4, 8
    hist = {"a": [(3, 1.0), (6, 1.0)], "b": [(5, 2.0)]}
    assert decide(pruner, "min", hist, ["a", "b"]) == {
        "b": "loss=2 at rung 1 (step 4), its value at step 5: rank 2 of the 2 runs that reached it, only the best goes on"}


def test_hyperband_brackets_follow_optunas_budgets() -> None:
    assert brackets(1, 81, 3) == (81, 34, 15, 8, 5)  # ceil(5·3^s/(s+1)), s = 4 … 0
    assert brackets(1, 1, 3) == (1,)


def test_unordered_histories_are_numbered_like_every_other_history() -> None:
    pruner = parse_pruner("prune median(loss, min_runs=1)", 0, 30)
    # points without a step are one past the previous; a step logged twice keeps the later value
    hist = {"a": [(None, 3.0), (None, 3.0), (2, 2.5)], "b": Series.of([(1, 1.0), (2, 1.0)])}
    assert decide(pruner, "min", hist, ["a"]) == {"a": "loss: best 2.5 up to step 2 vs median 1 of 1 other run at step 2"}


# --------------------------------------------------------------------------------------------
# Against Optuna's pruners, on the same histories


def _curves(seed: int, n: int, steps: int) -> list[list[float]]:
    """Noisy decaying learning curves with different floors and speeds (no two values equal)."""
    r = random.Random(seed)
    out = []
    for _ in range(n):
        floor, speed, scale = r.uniform(0.1, 1.0), r.uniform(0.05, 0.5), r.uniform(0.5, 2.0)
        out.append([floor + scale * math.exp(-speed * s) + r.gauss(0, 0.02) for s in range(1, steps + 1)])
    return out


def _optuna_prunes(pruner: optuna.pruners.BasePruner, curves: list[list[float]], direction: str,
                   name: str) -> list[int | None]:
    """Each trial's pruned step (None: completed) in a sequential Optuna study reporting the
    curves step by step (steps from 1)."""
    study = optuna.create_study(study_name=name, direction=direction, pruner=pruner,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    pruned: list[int | None] = []

    def objective(trial: optuna.Trial) -> float:
        curve = curves[trial.number]
        for step, value in enumerate(curve, start=1):
            trial.report(value, step)
            if trial.should_prune():
                pruned.append(step)
                raise optuna.TrialPruned()
        pruned.append(None)
        return curve[-1]

    study.optimize(objective, n_trials=len(curves))
    return pruned


def _nero_prunes(pruner: Pruner, curves: list[list[float]], goal: str, name: str,
                 completed_only: bool) -> list[int | None]:
    """The same, each trial judged by `prune.decide` at every step against the histories the
    earlier trials reported (all of them, or the completed ones: `completed_only`)."""
    done: dict[str, list[tuple[int, float]]] = {}
    pruned: list[int | None] = []
    for i, curve in enumerate(curves):
        key = f"{name}_{i}"  # the key Optuna's Hyperband hashes for a trial
        siblings = {k: h for k, h in done.items() if not completed_only or len(h) == len(curve)}
        at: int | None = None
        for step in range(1, len(curve) + 1):
            history = [(s, curve[s - 1]) for s in range(1, step + 1)]
            if key in decide(pruner, goal, {**siblings, key: history}, [key]):
                at = step
                break
        pruned.append(at)
        done[key] = [(s, curve[s - 1]) for s in range(1, (at or len(curve)) + 1)]
    return pruned


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("direction", ["minimize", "maximize"])
@pytest.mark.parametrize(("warmup", "least"), [(0, 1), (5, 1), (3, 4)])
def test_median_prunes_what_optunas_median_pruner_prunes(seed: int, direction: str, warmup: int, least: int) -> None:
    curves = _curves(seed, 24, 30)
    if direction == "maximize":
        curves = [[-v for v in c] for c in curves]
    theirs = _optuna_prunes(optuna.pruners.MedianPruner(n_startup_trials=0, n_warmup_steps=warmup, n_min_trials=least),
                            curves, direction, "median")
    # Optuna's median is over completed trials only; nero's over every run of the row (running and pruned ones
    # too: runs of a row go in parallel): given the same runs, the same decisions
    ours = _nero_prunes(parse_pruner(f"prune median(v, warmup={warmup}, min_runs={least})", 0, 50),
                        curves, "min" if direction == "minimize" else "max", "median", completed_only=True)
    assert ours == theirs
    assert any(p is not None for p in theirs) and any(p is None for p in theirs)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("direction", ["minimize", "maximize"])
@pytest.mark.parametrize(("min_step", "eta"), [(1, 3), (2, 2), (1, 4)])
def test_asha_prunes_what_optunas_successive_halving_pruner_prunes(seed: int, direction: str, min_step: int,
                                                                   eta: int) -> None:
    curves = _curves(100 + seed, 30, 40)
    if direction == "maximize":
        curves = [[-v for v in c] for c in curves]
    theirs = _optuna_prunes(optuna.pruners.SuccessiveHalvingPruner(min_resource=min_step, reduction_factor=eta),
                            curves, direction, "asha")
    ours = _nero_prunes(parse_pruner(f"prune asha(v, min_step={min_step}, eta={eta})", 0, 50),
                        curves, "min" if direction == "minimize" else "max", "asha", completed_only=False)
    assert ours == theirs
    assert any(p is not None for p in theirs) and any(p is None for p in theirs)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("min_step", "max_step", "eta"), [(1, 27, 3), (1, 40, 2)])
def test_hyperband_prunes_what_optunas_hyperband_pruner_prunes(seed: int, min_step: int, max_step: int,
                                                               eta: int) -> None:
    curves = _curves(200 + seed, 40, 40)
    name = f"hb{seed}"
    theirs = _optuna_prunes(optuna.pruners.HyperbandPruner(min_resource=min_step, max_resource=max_step,
                                                           reduction_factor=eta), curves, "minimize", name)
    ours = _nero_prunes(parse_pruner(f"prune hyperband(v, min_step={min_step}, max_step={max_step}, eta={eta})",
                                     0, 80), curves, "min", name, completed_only=False)
    assert ours == theirs
    assert any(p is not None for p in theirs) and any(p is None for p in theirs)


# --------------------------------------------------------------------------------------------
# prune_verdicts: a row's runs, from records and stored histories


def _spec(key: str, rules: str, experiment: str = "sweep") -> RunSpec:
    from orchestrator.model import Desired

    return RunSpec(key=key, experiment=experiment, row=2, params=(), command="true", clusters=("local",),
                   resources=(), setup="", workdir="", template="", desired=Desired.RUN, priority=0, after=(),
                   retries=0, rules=rules, notify=(), spec_hash="h")


def _record(key: str, number: int, state: RunState, step: int, experiment: str = "sweep", **kw: object) -> RunRecord:
    return RunRecord(key=key, number=number, experiment=experiment, spec_hash="h", essence="{}", params=(),
                     state=state, step=step, **kw)  # type: ignore[arg-type]


def test_prune_verdicts_judge_live_runs_against_the_whole_row() -> None:
    rules = "isnan(val_loss); prune median(val_loss, min_runs=2)"
    specs = [_spec(k, rules) for k in ("sweep[q=1]", "sweep[q=2]", "sweep[q=9]", "sweep[q=8]")]
    specs.append(_spec("other", rules, experiment="other"))
    records = {
        "sweep[q=1]": _record("sweep[q=1]", 1, RunState.COMPLETED, 5),
        "sweep[q=2]": _record("sweep[q=2]", 2, RunState.RUNNING, 5),
        "sweep[q=9]": _record("sweep[q=9]", 3, RunState.RUNNING, 5),
        "sweep[q=8]": _record("sweep[q=8]", 4, RunState.RUNNING, 5, stop_requested="terminated: x"),
        "other": _record("other", 5, RunState.RUNNING, 5, experiment="other"),
    }
    histories = {k: {"val_loss": Series.of([(s, float(k[-2]) + 1 / s) for s in range(1, 6)])} for k in records
                 if k != "other"}
    histories["other"] = {"val_loss": Series.of([(1, 100.0)])}
    calls: list[int] = []

    def read() -> dict:
        calls.append(1)
        return histories

    out = prune_verdicts(specs, records, read, {})
    assert calls == [1]
    assert list(out) == ["sweep[q=9]"]  # q=8 is already being stopped; "other" has no others
    (rule, v), = out["sweep[q=9]"].items()
    assert v == Verdict(rule, True, "prune median(val_loss, min_runs=2) (val_loss: best 9.2 up to step 5 vs "
                                    "median 2.2 of 3 other runs at step 5)")
    verdicts = evaluate(parse_rules(rules), _facts(), out["sweep[q=9]"])
    assert first_stop(verdicts) == v
    # declared goals come from the Metrics sheet: higher is better turns it round
    assert set(prune_verdicts(specs, records, read, {"val_loss": "max"})) == {"sweep[q=2]"}
    # warn: only warns; after N waits for the run's step N
    warned = prune_verdicts([_spec(k, rules.replace("prune", "warn: prune")) for k in records], records, read, {})
    (v,) = warned["sweep[q=9]"].values()
    assert v.warning and not v.stop and first_stop([v]) is None
    assert prune_verdicts([_spec(k, rules + " after 6") for k in records], records, read, {}) == {}
    # nothing to prune: the histories are not read
    calls.clear()
    assert prune_verdicts(specs[:1], {"sweep[q=1]": records["sweep[q=1]"]}, read, {}) == {}
    assert prune_verdicts([_spec("x", "isnan(loss)")], records, read, {}) == {}
    assert calls == []


def _facts():
    from orchestrator.expr import Facts

    return Facts(key="sweep[q=9]", state="running", step=5, metrics={"val_loss": 9.2})


# --------------------------------------------------------------------------------------------
# End to end: a row of real local jobs

CURVE = r'''
import sys, time
q = float(sys.argv[1])
for step in range(1, 41):
    print(f"step={step} val_loss={q + 1 / step:.6f}", flush=True)
    time.sleep(0.15)
'''

_REASON = re.compile(r"prune median\(val_loss, warmup=5, min_runs=5\) \(val_loss: best ([0-9.]+) up to step (\d+) "
                     r"vs median ([0-9.]+) of (\d+) other runs at step \2\)")


def test_a_row_of_real_jobs_is_pruned_by_the_median_rule(project: Path) -> None:
    (project / "curve.py").write_text(CURVE)
    write_workbook(project / "experiments.xlsx",
                   [{"id": "sweep", "command": "python curve.py {{ q }}", "q": "[1, 2, 3, 4, 5, 6]",
                     "rules": "prune median(val_loss, warmup=5, min_runs=5)"}],
                   clusters=[{"name": "local", "kind": "local", "max_jobs": 6}])
    proc = nero("reconcile", str(project), "--until-done", "--interval", "1", timeout=120)
    runs = {r["run"]: r for r in json.loads(nero("status", str(project), "--json", check=True).stdout)}
    assert {k: r["state"] for k, r in runs.items()} == {
        "sweep[q=1]": "completed", "sweep[q=2]": "completed", "sweep[q=3]": "completed",
        "sweep[q=4]": "terminated", "sweep[q=5]": "terminated", "sweep[q=6]": "terminated"}, proc.stdout + proc.stderr
    for q in (4, 5, 6):
        run = runs[f"sweep[q={q}]"]
        m = _REASON.fullmatch(run["reason"])
        assert m, run["reason"]
        best, step, mid, others = float(m[1]), int(m[2]), float(m[3]), int(m[4])
        # the numbers are the program's: its value at that step against the others' there
        assert 5 <= step < 20 and others == 5  # at the first pass past the warm-up, or soon after
        assert best == pytest.approx(q + 1 / step, abs=1e-5)
        assert mid == pytest.approx(sorted(p + 1 / step for p in range(1, 7) if p != q)[2], abs=1e-5)
        assert run["step"] < 40, run  # stopped early
    for q in (1, 2, 3):
        assert runs[f"sweep[q={q}]"]["step"] == 40
    import pandas as pd

    summary = pd.read_excel(project / "results.xlsx", sheet_name="Summary", engine="openpyxl")
    reasons = dict(zip(summary["run"], summary["reason"], strict=True))
    assert reasons["sweep[q=6]"] == runs["sweep[q=6]"]["reason"]


def test_a_bad_prune_rule_is_an_error_at_its_cell(project: Path) -> None:
    write_workbook(project / "experiments.xlsx",
                   [{"id": "sweep", "command": "true", "q": "[1, 2]", "rules": "prune median(val_loss, warmup=x)"},
                    {"id": "two", "command": "true", "rules": "prune asha(val_loss, eta=1)"}])
    proc = nero("reconcile", str(project))
    assert proc.returncode == 2
    out = proc.stdout + proc.stderr
    assert "2 problems" in out
    assert "Experiments!D2: rule 1: a whole number for warmup expected, found 'x'" in out
    assert "Experiments!D3: rule 1: eta is a whole number from 2 to 1000000000, not 1" in out
    assert not (project / ".nero" / "state.db").exists() or "submit" not in out


@pytest.mark.parametrize("text", ["prune median(v, warmup=3, min_runs=2)", "prune asha(v, min_step=2, eta=2)",
                                  "prune hyperband(v, min_step=1, max_step=30, eta=3)"])
def test_series_as_the_store_hands_them_out_decide_as_plain_points_do(text: str) -> None:
    r = random.Random(5)
    curves = _curves(7, 40, 30)
    plain = {f"r{i}": [(s, c[s - 1]) for s in range(1, r.randint(1, 30) + 1)] for i, c in enumerate(curves)}
    series = {k: Series.of(v) for k, v in plain.items()}
    assert all(s.ordered for s in series.values())
    pruner = parse_pruner(text, 0, len(text))
    ours = decide(pruner, "min", series, list(plain))
    assert ours == decide(pruner, "min", plain, list(plain)) and ours
