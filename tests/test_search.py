"""Adaptive search rows (issue 17, Must show 2): a row with `search = tpe(loss, N)` over a
real local job with a known optimum runs to its budget through `nero reconcile`, survives
nero killed at any moment (SIGKILL of the loop, a kill right after Optuna asked, a kill
right after a tell) with no trial lost or asked twice, and reports the best parameters."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import nero, state_db, wait_for, write_workbook

from orchestrator.errors import WorkbookError
from orchestrator.sheet import read_workbook
from orchestrator.trials import parse_search

QUAD = r'''
import sys, time
args = dict(a.split("=", 1) for a in sys.argv[1:])
x, k = float(args["x"]), int(args["k"])
time.sleep(float(args.get("sleep", 0)))
print(f"loss={(x - 3) ** 2 + (k - 2) ** 2:.6f}", flush=True)
'''


def _workbook(project: Path, budget: int, sleep: float = 0.0, jobs: int = 2, x: str = "uniform(-2, 8)",
              search: str | None = None) -> None:
    (project / "quad.py").write_text(QUAD)
    write_workbook(project / "experiments.xlsx", [
        {"id": "quad", "command": f"python quad.py x={{{{ x }}}} k={{{{ k }}}} sleep={sleep}", "x": x,
         "k": "randint(0, 4)", "search": search or f"tpe(loss, {budget})"},
    ], clusters=[{"name": "local", "kind": "local", "max_jobs": jobs}])


def _optuna_trials(project: Path) -> list[tuple[int, str, dict[str, float]]]:
    """(number, state, params) of every trial in Optuna's storage, read with plain SQLite."""
    con = sqlite3.connect(project / ".nero" / "search.db")
    try:
        rows = con.execute("SELECT trial_id, number, state FROM trials ORDER BY number").fetchall()
        params = con.execute("SELECT trial_id, param_name, param_value, distribution_json FROM trial_params").fetchall()
    finally:
        con.close()
    by_trial: dict[int, dict[str, float]] = {}
    for tid, name, value, dist in params:
        d = json.loads(dist)
        by_trial.setdefault(tid, {})[name] = (d["attributes"]["choices"][int(value)]
                                              if d["name"] == "CategoricalDistribution" else value)
    return [(n, state, by_trial.get(tid, {})) for tid, n, state in rows]


def _check_budget_kept(project: Path, budget: int) -> None:
    """Every trial Optuna holds is one run of nero's, each run one attempt, all told."""
    trials = _optuna_trials(project)
    assert [n for n, _, _ in trials] == list(range(budget))  # none lost, none asked twice
    assert all(state == "COMPLETE" for _, state, _ in trials), trials
    with state_db(project) as con:
        runs = dict(con.execute("SELECT key, params FROM runs").fetchall())
        attempts = con.execute("SELECT key, COUNT(*) FROM attempts GROUP BY key").fetchall()
        told = con.execute("SELECT COUNT(*) FROM trials WHERE told = 'complete'").fetchone()[0]
    assert sorted(runs) == sorted(f"quad[trial={n}]" for n in range(budget))
    assert all(n == 1 for _, n in attempts)  # no run submitted twice
    assert told == budget
    for n, _, params in trials:  # each run got its trial's values
        ran = dict(json.loads(runs[f"quad[trial={n}]"]))
        assert ran["x"] == pytest.approx(params["x"]) and ran["k"] == params["k"], (n, ran, params)


def test_search_cell_parses_and_bad_cells_are_errors_at_their_cell(tmp_path: Path):
    s = parse_search("tpe(max accuracy, 40)")
    assert (s.sampler, s.metric, s.budget, s.goal) == ("tpe", "accuracy", 40, "max")
    assert parse_search("random(train/loss, 5)").metric == "train/loss"
    write_workbook(tmp_path / "experiments.xlsx", [
        {"id": "a", "command": "echo {{ x }}", "x": "normal(0, 1)", "search": "tpe(loss, 10)"},
        {"id": "b", "command": "echo {{ x }}", "x": 3, "search": "tpe(loss, 10)"},
        {"id": "c", "command": "echo {{ x }}", "x": "[1, 2]", "search": "annealing(loss, 10)"},
        {"id": "d", "command": "echo {{ x }}", "x": "[1, 2]", "search": "tpe(loss, 0)"},
    ])
    with pytest.raises(WorkbookError) as e:
        read_workbook(tmp_path / "experiments.xlsx")
    text = str(e.value)
    assert "Experiments!C2: x: normal(…) cannot be searched" in text
    assert "this row searches nothing" in text
    assert "unknown sampler 'annealing'" in text
    assert "the number of trials must be a whole number" in text


def test_a_search_rows_job_is_checked_before_any_trial_is_asked(project: Path):
    """A command that does not render, or a sampler whose package is missing, refuses the
    workbook at its cell, and Optuna is asked nothing."""
    write_workbook(project / "experiments.xlsx", [
        {"id": "a", "command": "echo {{ x }} {{ nosuch }}", "x": "uniform(0, 1)", "search": "tpe(loss, 5)"},
    ])
    proc = nero("reconcile", str(project))
    assert proc.returncode == 2 and "nosuch" in proc.stderr and "Experiments!B2" in proc.stderr, proc.stderr
    assert not (project / ".nero" / "search.db").exists()
    write_workbook(project / "experiments.xlsx", [
        {"id": "a", "command": "echo {{ x }}", "x": "uniform(0, 1)", "search": "gp(loss, 5)"},
    ])
    proc = nero("plan", str(project))
    assert proc.returncode == 2 and "Experiments!D2: the sampler gp needs torch and scipy" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_adaptive_row_runs_to_its_budget_through_kills_and_reports_the_best(project: Path):
    budget = 24
    _workbook(project, budget, sleep=0.4, jobs=3)
    # 1. nero killed right after Optuna asked, before its state named the trials
    crash = (
        "import os\n"
        "import orchestrator.optimise as o\n"
        "def killed(*a, **k):\n"
        "    os._exit(9)\n"
        "o.record_trials = killed\n"
        "from orchestrator.reconcile import Reconciler\n"
        f"r = Reconciler({str(project / 'experiments.xlsx')!r})\n"
        "r.load(); r.run_pass()\n"
    )
    proc = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert [s for _, s, _ in _optuna_trials(project)] == ["RUNNING"] * 3  # asked, never recorded
    # 2. the watch loop SIGKILLed twice while trials run
    cmd = [sys.executable, "-m", "orchestrator", "reconcile", str(project), "--watch", "--interval", "0.2", "-q"]
    for at_least in (6, 13):
        loop = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(lambda n=at_least: len(_optuna_trials(project)) >= n, timeout=120, what=f"{at_least} trials asked")
        loop.send_signal(signal.SIGKILL)
        loop.wait()
    # 3. nero killed right after it told Optuna, before its state noted the tell
    crash = crash.replace("o.record_trials = killed", "o.mark_told = killed")
    time.sleep(1.0)  # let the running trials end, so this pass has outcomes to tell
    proc = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    # then to the end
    done = nero("reconcile", str(project), "--until-done", "--interval", "0.2", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    _check_budget_kept(project, budget)
    # the best trial: near the optimum (x = 3, k = 2), shown by `nero status`
    trials = _optuna_trials(project)
    with state_db(project) as con:
        values = dict(con.execute("SELECT number, value FROM trials").fetchall())
    best = min(values, key=values.get)
    # near the optimum (loss 0 at x = 3, k = 2): Optuna's TPE over this space and budget, 3 at a
    # time, found a best under 1.02 in each of 300 seeded searches (random search often does not)
    assert values[best] < 2.0, values
    shown = nero("status", str(project), check=True).stdout
    assert f"quad: tpe min loss, {budget}/{budget} trials, best" in shown
    assert f"trial {best}: x=" in shown and f"k={int(trials[best][2]['k'])}" in shown


def test_every_surface_shows_one_optimisation(project: Path):
    """`nero status`, `nero plan`, the digest, results.xlsx's Optimisation sheet and the
    Python API read the one Optimisation: the same trials, values, best so far and best."""
    from openpyxl import load_workbook

    from orchestrator import Project
    from orchestrator.views import optimisation_line

    _workbook(project, 6, jobs=2, x="[1, 2, 3, 4, 5]")
    plan = nero("plan", str(project), check=True).stdout
    assert "quad: search tpe(loss, 6): 0 trial(s) asked (0 told, 0 not yet), 6 left of the budget; next batch: 2 new " \
           "trial(s) would be asked now (2 free slot(s))" in plan
    done = nero("reconcile", str(project), "--until-done", "--interval", "0.2", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    with Project(project) as p:
        [o] = p.optimisations()
        frame = p.trials("quad")
    assert len(o.trials) == 6 and o.done == 6 and o.best is not None
    values = [t.value for t in o.trials]
    assert o.best.value == min(values)
    assert [t.best_so_far for t in o.trials] == [min(values[:i + 1]) for i in range(6)]
    assert list(frame["value"]) == values and list(frame["trial"]) == list(range(6))
    line = optimisation_line(o)
    assert line in nero("status", str(project), check=True).stdout
    assert line in nero("digest", str(project), "--preview", check=True).stdout
    assert b'filename="quad-search.png"' in (project / ".nero" / "preview" / "digest.eml").read_bytes()  # its history
    sheet = load_workbook(project / "results.xlsx")["Optimisation"]
    rows = [r for r in sheet.iter_rows(min_row=2, max_row=1 + len(o.trials), values_only=True)]
    assert [(r[1], r[2], r[3], r[4], r[5]) for r in rows] == [(t.number, t.key, t.state, t.value, t.best_so_far)
                                                              for t in o.trials]
    importances = {r[1]: r[2] for r in sheet.iter_rows(min_row=len(o.trials) + 4, values_only=True)}
    assert importances == dict(o.importances) and set(importances) == {"x", "k"}  # Optuna's, where it gives them
    assert "0 left of the budget; next batch: 0 new trial(s)" in nero("plan", str(project), check=True).stdout
    [batch] = json.loads(nero("plan", str(project), "--json", check=True).stdout)["searches"]
    assert batch == {"experiment": "quad", "search": "tpe(loss, 6)", "trials": 6, "told": 6, "left": 0, "ask": 0,
                     "free": 2}
    with Project(project) as p:
        assert "quad: search tpe(loss, 6): 6 trial(s) asked (6 told, 0 not yet)" in str(p.plan())


def test_what_a_trial_is_told_and_how_many_are_asked():
    """The pure decisions: an ended run's outcome, the trials a pass asks, the best so far."""
    from orchestrator.model import Desired, Experiment, RunRecord, RunState, Search
    from orchestrator.space import parse_distribution
    from orchestrator.trials import Trial, optimisation, outcome, to_ask

    def rec(state: RunState, retry: int = 0, last: dict | None = None) -> RunRecord:
        return RunRecord("e[trial=0]", 1, "e", "h", "", (), state, retry=retry, last=last or {})

    assert outcome(rec(RunState.COMPLETED, last={"acc": 0.9}), 0, "acc", {"acc": [(1, 0.5), (2, 0.8)]}, {}) \
        == ("complete", 0.8)  # the last value of its history, as every surface shows it
    assert outcome(rec(RunState.COMPLETED), 0, "acc", {}, {}) == ("fail", None)  # no value
    assert outcome(rec(RunState.COMPLETED), 0, "acc", {"acc": [(1, float("nan"))]}, {}) == ("fail", None)
    assert outcome(rec(RunState.TERMINATED), 0, "acc", None, {}) == ("pruned", None)
    assert outcome(rec(RunState.FAILED, retry=0), 1, "acc", None, {}) is None  # a retry comes
    assert outcome(rec(RunState.FAILED, retry=1), 1, "acc", None, {}) == ("fail", None)
    assert outcome(rec(RunState.CANCELLED), 0, "acc", None, {}) is None
    assert outcome(rec(RunState.RUNNING), 0, "acc", None, {}) is None
    search = Search("tpe", "acc", 10)
    assert to_ask(search, trials=0, waiting=0, free=4) == 4
    assert to_ask(search, trials=8, waiting=0, free=4) == 2  # the budget left
    assert to_ask(search, trials=3, waiting=2, free=3) == 1  # trials not submitted yet hold slots
    assert to_ask(search, trials=10, waiting=0, free=4) == 0
    exp = Experiment("e", 2, "x", (), Desired.RUN, (("x", parse_distribution("uniform(0, 1)")),), search=search)
    o = optimisation(exp, [Trial("e", 1, (("x", 0.2),), "complete", 0.7), Trial("e", 0, (("x", 0.1),), "complete", 0.6),
                           Trial("e", 2, (("x", 0.3),), "fail", None), Trial("e", 3, (("x", 0.4),))], {})
    assert o.goal == "max"  # accuracy-like: metrics.default_goal
    assert [(t.number, t.state, t.best_so_far) for t in o.trials] == [(0, "complete", 0.6), (1, "complete", 0.7),
                                                                      (2, "fail", 0.7), (3, "running", 0.7)]
    assert o.best is not None and o.best.number == 1 and o.done == 3
    assert optimisation(exp, [], {"acc": "min"}).goal == "min"  # the Metrics sheet's goal
    assert optimisation(Experiment("e", 2, "x", (), Desired.RUN, exp.params, search=Search("tpe", "acc", 5, "min")),
                        [], {}).goal == "min"  # the cell's


def test_a_search_row_refuses_samples_and_together(tmp_path: Path):
    write_workbook(tmp_path / "experiments.xlsx", [
        {"id": "a", "command": "echo {{ x }} {{ y }}", "x": "uniform(0, 1)", "y": "[1, 2]", "search": "tpe(loss, 5)",
         "samples": 4, "together": "x, y"},
    ])
    with pytest.raises(WorkbookError) as e:
        read_workbook(tmp_path / "experiments.xlsx")
    assert "samples does not apply to a row with search" in str(e.value)
    assert "together does not apply to a row with search" in str(e.value)


def test_a_trial_killed_half_asked_is_adopted_with_its_values_completed(project: Path):
    """nero killed after Optuna created a trial and drew some of its values: the next start
    adopts it, keeping the values drawn and drawing the rest, and adopts it only once."""
    from orchestrator.search import Studies

    _workbook(project, 5)
    exp = read_workbook(project / "experiments.xlsx").experiments[0]
    studies = Studies(project / ".nero" / "search.db")
    trial = studies.study(exp, "min").ask()
    x = trial.suggest_float("x", -2, 8)  # the kill came before k was drawn
    [adopted] = studies.adopt(exp, "min", known=set())
    values = dict(adopted.params)
    assert adopted.number == 0 and values["x"] == x and values["k"] in range(0, 5)
    assert studies.adopt(exp, "min", known={0}) == []
    studies.tell(exp, "min", 0, "complete", 1.5)
    studies.tell(exp, "min", 0, "complete", 9.0)  # told again after a kill: nothing changes
    studies.close()
    assert [(n, s) for n, s, _ in _optuna_trials(project)] == [(0, "COMPLETE")]
    con = sqlite3.connect(project / ".nero" / "search.db")
    try:
        assert con.execute("SELECT value FROM trial_values").fetchall() == [(1.5,)]
    finally:
        con.close()


def test_a_cmaes_row_searches_with_optunas_cma_es_and_closes_in_on_the_optimum(project: Path):
    """`cmaes(loss, N)`: the row's study samples with Optuna's CmaEsSampler (the `cmaes`
    package comes with the `search` extra) and, told (x-3)^2 one trial at a time, its best
    after 40 trials is near x = 3; an integer dimension goes along (CMA-ES searches both)."""
    from orchestrator.search import Studies

    _workbook(project, 40, search="cmaes(loss, 40)")
    exp = read_workbook(project / "experiments.xlsx").experiments[0]
    studies = Studies(project / ".nero" / "search.db")
    try:
        assert type(studies.study(exp, "min").sampler).__name__ == "CmaEsSampler"
        best = float("inf")
        for _ in range(40):
            [asked] = studies.ask(exp, "min", 1)
            p = dict(asked.params)
            value = (float(p["x"]) - 3) ** 2 + (int(p["k"]) - 2) ** 2
            studies.tell(exp, "min", asked.number, "complete", value)
            best = min(best, value)
        assert studies.counts("quad").get("complete") == 40, studies.counts("quad")
    finally:
        studies.close()
    assert best < 0.5, best  # random search over [-2, 8] x {0..4} reaches this in 40 draws ~40 % of the time


def test_a_search_row_behind_a_grid_row_asks_only_for_the_slots_the_grid_leaves(project: Path):
    """The planner starts a higher-priority (or earlier) row's new runs first: a search row
    behind them is promised, and asks for, only the slots they leave. With 4 slots and 3 grid
    runs ahead, `nero plan` says 1 trial would be asked, and the pass asks exactly 1 (it asked
    4, which then waited behind the grid with no slot)."""
    (project / "quad.py").write_text(QUAD)
    write_workbook(project / "experiments.xlsx", [
        {"id": "grid", "command": "sleep {{ x }}", "x": "[1, 2, 3]", "k": "1"},
        {"id": "quad", "command": "python quad.py x={{ x }} k={{ k }}", "x": "uniform(-2, 8)", "k": "randint(0, 4)",
         "search": "tpe(loss, 10)"},
    ], clusters=[{"name": "local", "kind": "local", "max_jobs": 4}])
    plan = json.loads(nero("plan", "--json", cwd=project).stdout)
    assert [(s["experiment"], s["ask"], s["free"]) for s in plan["searches"]] == [("quad", 1, 1)], plan["searches"]
    proc = nero("reconcile", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert [n for n, _, _ in _optuna_trials(project)] == [0]
    with state_db(project) as con:
        live = sorted(k for (k,) in con.execute("SELECT key FROM runs"))
    assert live == ["grid[x=1]", "grid[x=2]", "grid[x=3]", "quad[trial=0]"], live
