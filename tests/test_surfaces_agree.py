"""Every machine-readable surface shows the same last, best and checkpoint values (issue #11).

Random histories (steps missing, repeated, out of order; NaN, ±inf; track and printed
points mixed; metrics with a Metrics row and without one, accuracy-like names among them)
are written into a real `.nero/state.db` through the Store, beside a real experiments
workbook with Metrics rows and Settings `checkpoints`. Then each surface is read through
its public path and compared:

* `nero status --json` (`metrics`, `best`, `at`),
* `nero export runs.json` (`last:m`, `best:m`, `m@cp`),
* `Project.frames()` (the same columns, pandas),
* `results.xlsx` (the Summary sheet read back with openpyxl),
* the digest's data (`mail.content.leaderboard` over `Project.results_input()`, what
  `build_digest` hands its template).

"Exactly": the same float, or both NaN/None (no value). The Summary's numbers are compared
as written: xlsxwriter writes 16 significant digits, so the histories' values are ones a
program prints (at most 15 significant digits), where 16 digits are exact.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections import Counter
from pathlib import Path

import openpyxl
from conftest import nero, write_workbook
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.lifecycle import fold_metrics
from orchestrator.mail.content import leaderboard, primary_metric
from orchestrator.mail.digest import Audience, digest_runs
from orchestrator.model import Desired, MetricPoint, NewAttempt, RunSpec, RunState, Update
from orchestrator.project import Project
from orchestrator.state import Store

CHECKPOINTS = (2, 5)
# declared: `loss` maximised against its default, `val_err` minimised; undeclared: `acc`
# (accuracy-like: max), `err` (min)
DECLARED = {"loss": "max", "val_err": "min"}
METRICS = ("loss", "val_err", "acc", "err")
VALUES = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1.0, 0.5]),
    st.integers(-10**6, 10**6).map(lambda n: n / 1000),
    st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: float(f"{v:.15g}")),
)
POINT = st.tuples(
    st.sampled_from(METRICS),
    st.one_of(st.none(), st.integers(1, 8)),  # missing, repeated and out-of-order steps
    VALUES,
    st.sampled_from(("track", "stdout", "stderr")),
)
RUN = st.tuples(st.lists(st.lists(POINT, max_size=6), min_size=0, max_size=3),  # polls of one attempt
                st.sampled_from((RunState.RUNNING, RunState.COMPLETED, RunState.FAILED)))
RUNS = st.lists(RUN, min_size=1, max_size=4)


def spec(key: str) -> RunSpec:
    return RunSpec(key=key, experiment="e", row=2, params=(("i", key),), command="python train.py",
                   clusters=("local",), resources=(), setup="", workdir="", template="", desired=Desired.RUN,
                   priority=0, after=(), retries=0, rules="", notify=(), spec_hash=f"hash-{key}")


def write_project(root: Path, runs) -> Path:
    workbook = write_workbook(
        root / "experiments.xlsx", [{"id": "e", "command": "python train.py {{ i }}", "i": "[0, 1, 2, 3]",
                                     "state": "hold"}],
        settings={"checkpoints": ", ".join(map(str, CHECKPOINTS))},
        metrics=[{"name": "loss", "pattern": r"loss=(\S+)", "goal": "max"},
                 {"name": "val_err", "pattern": r"val_err=(\S+)", "goal": "min"}])
    store = Store(root / ".nero" / "state.db")
    for i, (polls, state) in enumerate(runs):
        key = f"e[i={i}]"
        store.record_intents([NewAttempt(spec(key), 1, "local", str(root / "runs" / str(i)), "python train.py")], 0.0)
        last: dict[str, float] = {}
        best: dict[str, float] = {}
        for n, poll in enumerate(polls):
            points = tuple(MetricPoint(m, v, s, float(n), src) for m, s, v, src in poll)
            last, best, step = fold_metrics(points, last, best, DECLARED)  # what a pass stores
            store.apply([Update(key, 1, state=RunState.RUNNING, intent=False, points=points, last=last,
                                best=best, step=step)])
        store.apply([Update(key, 1, state=state, intent=False)])
    store.close()
    return workbook


def plain_best(metric: str, points) -> float:
    """The best shown: the best finite value of the curve (one value per step) in the
    metric's goal; NaN when none is finite."""
    finite = [v for v in plain_steps(points).values() if math.isfinite(v)]
    goal = DECLARED.get(metric, "max" if metric == "acc" else "min")
    return (max(finite) if goal == "max" else min(finite)) if finite else math.nan


def plain_steps(points) -> dict[int, float]:
    """Step → value: a missing step is one past the previous (the first: 1); of a step
    logged twice, the later point."""
    out: dict[int, float] = {}
    prev = 0
    for step, value in points:
        prev = prev + 1 if step is None else step
        out[prev] = value
    return out


def _plain(x):
    """`x` with every NaN as the string "NaN": two NaN floats are not equal (a dict of them
    compares equal only when they are the same object)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return "NaN" if isinstance(x, float) and math.isnan(x) else x


def same(a, b) -> bool:
    """Exactly equal: the same float, or both NaN / no value."""
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    return isinstance(b, int | float) and not isinstance(b, bool) and float(a) == float(b)


def cell(v):
    """A Summary cell as a number: non-finite values are written as text (`nan`, `inf`)."""
    return float(v) if isinstance(v, str) and v in ("nan", "inf", "-inf") else v


def columns(metrics) -> list[str]:
    return [c for m in metrics for c in (f"last:{m}", f"best:{m}", *(f"{m}@{cp}" for cp in CHECKPOINTS))]


def reference(project: Project) -> dict[str, dict[str, object]]:
    """The one home's values (orchestrator.shown via Project.metric_values), as columns."""
    out = {}
    for key, per in project.metric_values().items():
        row: dict[str, object] = {}
        for m, v in per.items():
            row[f"last:{m}"], row[f"best:{m}"] = v.last, v.best
            row.update({f"{m}@{cp}": x for cp, x in zip(CHECKPOINTS, v.at, strict=True)})
        out[key] = row
    return out


def compare(what: str, expected: dict[str, dict[str, object]], got: dict[str, dict[str, object]]) -> None:
    assert set(got) == set(expected), what
    for key, row in expected.items():
        for col in columns(METRICS):
            assert same(row.get(col), got[key].get(col)), (what, key, col, row.get(col), got[key].get(col))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(RUNS)
def test_last_best_and_checkpoints_agree_on_every_surface(runs) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        workbook = write_project(root, runs)
        with Project(workbook) as project:
            project.load()
            expected = reference(project)
            # the rules, written out plainly over the merged histories
            histories = project.histories()
            for key, row in expected.items():
                assert {c.split(":")[1] for c in row if c.startswith("last:")} == set(histories.get(key, {}))
                for m, points in histories.get(key, {}).items():
                    assert same(plain_best(m, points), row[f"best:{m}"]), (key, m, list(points))
                    steps = plain_steps(points)
                    top = max(steps) if steps else None
                    assert same(steps[top], row[f"last:{m}"]), (key, m, list(points))
                    for cp in CHECKPOINTS:
                        want = steps[max(s for s in steps if s <= cp)] if top >= cp and min(steps) <= cp else None
                        assert same(want, row[f"{m}@{cp}"]), (key, m, cp, list(points))

            # Project.frames()
            frame, _ = project.frames()
            compare("frames", expected, {key: {c: (v if c in frame.columns else None) for c, v in r.items()}
                                         for key, r in frame.to_dict(orient="index").items()})

            # results.xlsx, Summary sheet
            project.write_results(charts=False)
            ws = openpyxl.load_workbook(project.results_path(), read_only=True)["Summary"]
            rows = list(ws.iter_rows(values_only=True))
            head = list(rows[0])
            compare("results.xlsx", expected, {r[head.index("run")]: {h: cell(v) for h, v in zip(head, r, strict=True)}
                                               for r in rows[1:] if r[head.index("run")]})

            # the digest's data: the leaderboard of the primary metric
            data = project.results_input()
            metric = primary_metric(data)
            leaders = leaderboard(data, metric)
            ranked = [k for k, r in expected.items()
                      if isinstance(r.get(f"best:{metric}"), float) and math.isfinite(r[f"best:{metric}"])]
            assert sorted(x["key"] for x in leaders) == sorted(ranked), metric
            for x in leaders:
                row = expected[x["key"]]
                assert same(row[f"best:{metric}"], x["best"]) and same(row[f"last:{metric}"], x["last"]), x
                assert all(same(row[f"{metric}@{cp}"], x["at"][cp]) for cp in CHECKPOINTS), x
            goal = data.goals.get(metric, "min")
            bests = [x["best"] for x in leaders]
            assert bests == sorted(bests, reverse=goal == "max")
            # the digest as it is sent: the runs read a batch at a time, what it shows as from them all
            head, runs = project.digest_input()
            [(_, streamed)] = digest_runs(head, runs, [Audience(())])
            assert streamed.metric == metric and _plain(streamed.leaders()) == _plain(leaders)
            assert (streamed.counts, streamed.total) == (Counter(r.state.value for r in data.runs), len(data.runs))

        # nero status --json
        status = json.loads(nero("status", str(workbook), "--json", check=True).stdout)
        compare("status --json", expected, {
            r["run"]: {**{f"last:{m}": v for m, v in r["metrics"].items()},
                       **{f"best:{m}": v for m, v in r["best"].items()},
                       **{f"{m}@{cp}": v for m, at in r["at"].items() for cp, v in at.items()}}
            for r in status})

        # nero export (json)
        nero("export", str(workbook), "-o", str(root / "runs.json"), check=True)
        exported = json.loads((root / "runs.json").read_text())["runs"]
        compare("export", expected, {r["run"]: r for r in exported})


def test_a_value_replaced_inside_a_history_of_the_same_length_changes_what_shows() -> None:
    """The summaries a long-lived process remembers are keyed by every point: a point
    changed where a sample of five would not look (index 5 of 8) is seen (the run's best
    once stayed at the old history's)."""
    from orchestrator.model import RunRecord, Series
    from orchestrator.shown import run_values

    record = RunRecord(key="e[i=1]", number=1, experiment="e", spec_hash="", essence="", params=(("i", 1),),
                       state=RunState.COMPLETED, attempt=1)
    points = [(None, -0.314), (None, 0.0), (None, 0.0), (None, math.nan), (3, -13.584), (None, -294.0),
              (None, -294.788), (6, 581888.83)]
    changed = list(points)
    changed[5] = (None, -158255.17)
    for make in (list, Series.of):
        first = run_values(record, {"val_err": make(points)}, {"val_err": "min"})["val_err"]
        second = run_values(record, {"val_err": make(changed)}, {"val_err": "min"})["val_err"]
        assert (first.best, second.best) == (-294.788, -158255.17)
    # a history long enough to be remembered (shown.MEMO_FROM points): the same
    from orchestrator.shown import MEMO_FROM

    long = [(i, 1.0 + i) for i in range(1, MEMO_FROM + 9)]
    replaced = list(long)
    replaced[MEMO_FROM // 2 + 3] = (MEMO_FROM // 2 + 4, -7.5)
    for make in (list, Series.of):
        first = run_values(record, {"val_err": make(long)}, {"val_err": "min"})["val_err"]
        again = run_values(record, {"val_err": make(long)}, {"val_err": "min"})["val_err"]
        second = run_values(record, {"val_err": make(replaced)}, {"val_err": "min"})["val_err"]
        assert (first.best, again.best, second.best) == (2.0, 2.0, -7.5)
