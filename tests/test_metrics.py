"""orchestrator.metrics: the rules of metric values, one table each."""

from __future__ import annotations

import math
from functools import reduce

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.metrics import (
    MAX_GOAL_NAMES,
    best,
    best_finite,
    better,
    default_goal,
    goals_of,
    improves,
    last,
    number_steps,
    prefer_tracked,
    rank_key,
    source_rank,
    supersedes,
    unknown_metric,
    value_at,
)
from orchestrator.model import MetricDef, MetricPoint, Workbook

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(("metric", "declared", "goal"), [
    ("loss", {}, "min"), ("val_loss", None, "min"), ("acc", {}, "max"), ("ACC", {}, "max"), ("acc@50", {}, "max"),
    ("f1", {}, "max"), ("accuracy_top5", {}, "min"), ("acc", {"acc": "min"}, "min"), ("loss", {"loss": "max"}, "max"),
    ("acc", {"acc": "bogus"}, "max"), ("acc", {"other": "min"}, "max"),
])
def test_default_goal(metric, declared, goal) -> None:
    assert default_goal(metric, declared) == goal
    defs = tuple(MetricDef(k, "", v) for k, v in (declared or {}).items() if v in ("min", "max"))
    assert Workbook("x.xlsx", (), (), defs).goal(metric) == goal


def test_every_max_goal_name_defaults_to_max() -> None:
    assert all(default_goal(n) == "max" and default_goal(n.upper() + "@7") == "max" for n in MAX_GOAL_NAMES)


def test_goals_of_keeps_the_declared_first() -> None:
    assert list(goals_of(["acc", "loss", "b"], {"b": "max", "loss": "max"}).items()) == [
        ("b", "max"), ("loss", "max"), ("acc", "max")]


@pytest.mark.parametrize(("goal", "a", "b", "expected"), [
    ("min", 1, 2, True), ("min", 2, 1, False), ("min", 1, 1, False), ("max", 2, 1, True), ("max", 1, 1, False),
    ("min", -INF, 0, True), ("max", INF, 0, True), ("min", NAN, 0, False), ("max", NAN, 0, False),
])
def test_better_is_strict(goal, a, b, expected) -> None:
    assert better(goal, a, b) is expected


@pytest.mark.parametrize(("values", "goal", "nan_skipped", "finite"), [
    ([3, 1, 2], "min", 1, 1), ([3, 1, 2], "max", 3, 3), ([], "min", None, None), ([NAN, NAN], "max", None, None),
    ([NAN, 2, 1, NAN], "min", 1, 1), ([1, INF], "max", INF, 1), ([1, -INF], "min", -INF, 1), ([INF], "max", INF, None),
])
def test_best_and_best_finite(values, goal, nan_skipped, finite) -> None:
    assert best(values, goal) == nan_skipped
    assert best_finite(values, goal) == finite


def test_best_finite_skips_what_is_not_a_number() -> None:
    assert best_finite([None, "x", 2.0, 1.0], "min") == 1.0


FLOATS = st.sampled_from([0.0, -0.0, 0.5, 1.0, 2.0, -1.0, NAN, INF, -INF])


@given(st.lists(FLOATS), st.sampled_from(["min", "max"]))
def test_best_is_folding_improves(values, goal) -> None:
    folded = reduce(lambda b, v: v if improves(goal, v, b) else b, values, None)
    found = best(values, goal)
    assert (found is None and folded is None) or found == folded


@pytest.mark.parametrize(("goal", "values", "order"), [("min", [3, 1, 2], [1, 2, 3]), ("max", [3, 1, 2], [3, 2, 1])])
def test_rank_key_puts_the_best_first(goal, values, order) -> None:
    assert sorted(values, key=lambda v: rank_key(goal, v)) == order


def test_last() -> None:
    assert last([1.0, 2.0]) == 2.0 and last([]) is None and math.isnan(last([1.0, NAN]))


@pytest.mark.parametrize(("steps", "numbered"), [
    ([None, None], [1, 2]), ([5, None, None, 2, None], [5, 6, 7, 2, 3]), ([NAN, 10, NAN], [1, 10, 11]), ([], []),
])
def test_number_steps(steps, numbered) -> None:
    assert number_steps(steps) == numbered


@pytest.mark.parametrize(("checkpoint", "value"), [(0, None), (1, 10.0), (4, 20.0), (5, 30.0), (9, 30.0), (10, 40.0),
                                                   (11, None)])
def test_value_at_a_checkpoint(checkpoint, value) -> None:
    assert value_at([1, 3, 5, 10], [10.0, 20.0, 30.0, 40.0], checkpoint) == value
    assert value_at([], [], checkpoint) is None


def test_source_precedence() -> None:
    assert source_rank("track") > source_rank("stdout") > source_rank("stderr") == source_rank("other") == 0
    assert supersedes(source_rank("track"), source_rank("stdout")) and supersedes(1, 1)
    assert not supersedes(source_rank("stderr"), source_rank("stdout"))
    printed = [MetricPoint("loss", 0.1, 1, None, "stdout"), MetricPoint("lr", 0.5, 1, None, "stderr")]
    tracked = [MetricPoint("loss", 0.123, 1, None, "track")]
    assert prefer_tracked(printed, tracked) == [printed[1], tracked[0]]
    assert prefer_tracked(printed, []) == printed
    # the files frameworks write (exact, float32 in an event file) rank between track and stdout
    assert source_rank("track") > source_rank("tensorboard") == source_rank("csv") > source_rank("stdout")
    board = [MetricPoint("loss", 0.12300000339746475, 1, None, "tensorboard"), MetricPoint("lr", 0.5, 1, None, "csv")]
    assert prefer_tracked(printed, board) == board  # the printed loss and lr give way
    assert prefer_tracked(printed, tracked + board) == [tracked[0], board[1]]  # track's loss over the file's


# ------------------------------------------------------------------------------ unknown names


def test_an_unknown_metric_names_the_known_ones_closest_first() -> None:
    known = ["loss", "test_error", "val_error", "acc"]
    assert unknown_metric("test_eror", known) == (
        "no metric 'test_eror'; did you mean test_error? (known: test_error, val_error, loss, acc)")
    assert unknown_metric("Loss", known).startswith("no metric 'Loss'; did you mean loss?")
    assert unknown_metric("lrr", known, params=["lr"]) == (
        "no metric 'lrr'; did you mean lr? (known: val_error, test_error, loss, acc; parameters: lr)")
    assert unknown_metric("loss", []) == ("no metric 'loss' (no metric is known yet: no Metrics row names one "
                                          "and no run has printed one)")
    many = [f"m{i:02d}" for i in range(20)]
    assert unknown_metric("zzz", many).endswith("m07, …)")
