"""The safe expression language: syntax, semantics, selectors, hostile input, and a property
test against an independent reference evaluator (built here as a tree of Python closures)."""

from __future__ import annotations

import math
import operator
import random
import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from orchestrator.errors import ExpressionError
from orchestrator.expr import (
    MAX_DEPTH,
    MAX_LENGTH,
    STATE_WORDS,
    Arith,
    Bool,
    Call,
    Compare,
    ExprTerm,
    Facts,
    Glob,
    GlobTerm,
    Logic,
    Name,
    Neg,
    Not,
    Num,
    Numbers,
    NumberTerm,
    States,
    StateTerm,
    evaluate,
    explain,
    names,
    parse,
    parse_selector,
    truth,
    unparse,
)
from orchestrator.model import MAX_GOAL_NAMES, RunRecord, RunState
from orchestrator.units import format_duration

NAN, INF = math.nan, math.inf


def facts(**kw: Any) -> Facts:
    base: dict[str, Any] = dict(
        key="demo[lr=0.1,layers=2]", number=12, experiment="demo", state="running", cluster="local",
        runtime=7380.0, step=612,
        metrics={"val_err": 0.52, "loss": NAN, "train/loss": 0.3, "acc": 0.9, "val_err@10": 0.7},
        history={"val_err": [0.6, 0.5, 0.52, 0.52], "acc": [0.5, 0.9, 0.8]},
        params={"lr": 0.1, "layers": 2, "opt": "adam", "flag": True, "none": None},
    )
    base.update(kw)
    return Facts(**base)


def ev(text: str, **kw: Any) -> bool:
    return evaluate(parse(text), facts(**kw))


def tri(text: str, **kw: Any) -> bool | None:
    return truth(parse(text), facts(**kw))


def error(text: str) -> str:
    with pytest.raises(ExpressionError) as info:
        parse(text)
    return str(info.value)


# --------------------------------------------------------------------------------------------
# Literals and syntax


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("30m", 1800), ("2h", 7200), ("1.5d", 129600), ("2h30m", 9000), (".5h", 1800), ("1e3", 1000),
    ("0.25", 0.25), ("7", 7),
])
def test_numbers_and_durations(text: str, seconds: float) -> None:
    assert parse(f"runtime == {text}") == Compare((Name("runtime"), Num(seconds)), ("==",))


def test_bad_units_are_explained() -> None:
    for text in ("runtime > 5ms", "runtime > 3days", "x > 1.5.3", "x > 2e"):
        assert "s, m, h or d" in error(text)


def test_literals_and_keywords_are_case_insensitive() -> None:
    assert parse("NOT isnan(x) AND x <> NaN Or TRUE") == parse("not isnan(x) and x != nan or true")
    assert parse("ISNAN(loss)") == Call("isnan", (Name("loss"),))
    assert ev("loss != NAN") and ev("-INF < 0 and inf > 1e308")


def test_operator_spellings() -> None:
    assert parse("a = 1") == parse("a == 1")
    assert parse("a <> 1") == parse("a ≠ 1") == parse("a != 1")
    assert parse("a ≤ 1") == parse("a <= 1") and parse("a ≥ 1") == parse("a >= 1")


def test_strings_in_any_quotes() -> None:
    for text in ("opt == 'adam'", 'opt == "adam"', "opt == ‘adam’", "opt == “adam”"):
        assert parse(text) == parse("opt == 'adam'")
        assert ev(text)
    assert ev('opt != "it\'s"')


def test_metric_names_may_contain_dots_slashes_and_at() -> None:
    assert names(parse("train/loss < 1 and val.acc > 0 and val_err@10 < 2")) == {"train/loss", "val.acc", "val_err@10"}
    assert ev("train/loss < 0.31 and val_err@10 == 0.7")
    # spaces make '/' a division
    assert names(parse("train / loss > 1")) == {"train", "loss"}
    assert ev("train/loss / 2 < 0.2")


def test_precedence_follows_python() -> None:
    assert parse("not a > 1 and b > 1 or c > 1") == Logic("or", (
        Logic("and", (Not(parse("a > 1")), parse("b > 1"))), parse("c > 1")))
    assert ev("1 + 2 * 3 == 7") and ev("(1 + 2) * 3 == 9") and ev("8 / 4 / 2 == 1") and ev("1 - 2 - 3 == -4")
    assert ev("-2 * -3 == 6") and ev("- -1 == 1") and ev("+1 == 1")


def test_chained_comparisons() -> None:
    assert ev("0.01 <= lr < 0.2") and not ev("0.01 <= lr < 0.1")
    assert parse("0 < a < b <= 3") == Compare((Num(0), Name("a"), Name("b"), Num(3)), ("<", "<", "<="))


def test_unparse_roundtrips() -> None:
    for text in ("not (a > 1 or b > 1)", "-(a - b) / (c * -d) >= 2", "(a > 1) == true", "plateau(val_loss, 10, 0.01)",
                 "a > 1 and (b > 1 or c > 1) and not not d == 'x'", "x == \"it's\"", "best(acc) > max(acc) - 1e-05"):
        tree = parse(text)
        assert parse(unparse(tree)) == tree, unparse(tree)


# --------------------------------------------------------------------------------------------
# Names, missing data and types


def test_name_resolution_order() -> None:
    f = dict(metrics={"runtime": 1.0, "lr": 5.0, "state": 3.0}, history={}, params={"lr": 0.1, "step": 3, "p": 2})
    assert ev("runtime > 2h", **f)            # the built-in wins over a metric
    assert ev("state == 'running'", **f)
    assert ev("lr == 5", **f)                 # a metric wins over a parameter
    assert ev("step == 612", **f)
    assert ev("p == 2", **f)
    assert ev("experiment == 'demo' and id == 'demo' and key == 'demo[lr=0.1,layers=2]' and cluster == 'local'")


def test_latest_value_falls_back_to_history() -> None:
    assert ev("x == 3", metrics={}, history={"x": [1, 2, 3]})


def test_missing_data_never_fires() -> None:
    assert tri("nothing > 1") is None
    assert tri("not nothing > 1") is None
    assert tri("nothing > 1 and val_err > 0") is None
    assert tri("nothing > 1 and val_err > 1") is False
    assert tri("nothing > 1 or val_err > 0") is True
    assert tri("nothing != 1") is None
    assert tri("none == 1") is None  # a parameter cell left empty
    assert tri("runtime > 1", runtime=None) is None and tri("step > 1", step=None) is None
    assert tri("isnan(nothing)") is None and tri("not isnan(nothing)") is None
    assert not ev("nothing + 1 > 0")


def test_nan_comparisons_follow_ieee() -> None:
    assert not ev("loss > 0") and not ev("loss < 0") and not ev("loss == loss") and ev("loss != loss")
    assert tri("not loss > 0") is True
    assert ev("isnan(loss)") and not ev("isnan(val_err)") and not ev("isinf(loss)")
    assert ev("isinf(x)", metrics={"x": -INF})


def test_types_never_mix() -> None:
    assert not ev("opt == 1") and ev("opt != 1")
    assert not ev("opt > 1") and not ev("state < 1")
    assert ev("opt > 'aaa'") and ev("state >= 'running'")
    assert ev("flag == true") and not ev("flag == 1") and not ev("flag > 0")
    assert ev("layers == 2") and ev("layers * 2 == 4")  # ints are numbers
    assert tri("opt + 1 > 0") is None and tri("abs(opt) > 0") is None and tri("isnan(opt)") is False


def test_division_by_zero_is_ieee() -> None:
    assert ev("1 / 0 == inf") and ev("-1 / 0 == -inf") and ev("isnan(0 / 0)") and ev("1 / -0 == -inf")
    assert ev("1e308 * 10 == inf") and ev("isnan(inf - inf)")


def test_huge_integers_do_not_overflow() -> None:
    assert ev("big == inf", params={"big": 10**400}) and ev("big == -inf", params={"big": -10**400})
    assert ev("x > 1", metrics={"x": 10**400})


def test_abs() -> None:
    assert ev("abs(-val_err) == 0.52") and ev("abs(2 - 3) == 1")


# --------------------------------------------------------------------------------------------
# History functions


def test_best_min_max_follow_goals() -> None:
    assert ev("best(val_err) == 0.5")           # min by default
    assert ev("best(acc) == 0.9")               # accuracy-like names default to max (as Workbook.goal)
    assert ev("best(val_err) == 0.6", goals={"val_err": "max"})
    assert ev("min(acc) == 0.5 and max(acc) == 0.9 and min(val_err) == 0.5 and max(val_err) == 0.6")
    assert ev("best(x) == 4", metrics={"x": 4.0}, history={})  # latest value alone without a history
    assert ev("best(x) == 1", history={"x": [NAN, 2, 1, NAN]}, metrics={})
    assert ev("isnan(best(x))", history={"x": [NAN, NAN]}, metrics={})
    assert tri("best(nothing) > 0") is None and tri("best(lr) > 0") is None  # a parameter has no history


def test_plateau() -> None:
    def p(values: list[float], n: int, goal: str = "min", delta: str = "") -> bool | None:
        text = f"plateau(m, {n}{', ' + delta if delta else ''})"
        return tri(text, metrics={}, history={"m": values}, goals={"m": goal})

    assert p([1, 2, 3], 2) is True                    # nothing below 1 since
    assert p([3, 2, 1], 2) is False
    assert p([3, 2, 1], 1) is False
    assert p([1, 1, 1], 2) is True                    # equal is no improvement
    assert p([1, 0.99999, 0.99998], 2) is True        # nor is a gain below 0.01 % by default
    assert p([1, 0.99999, 0.99998], 2, delta="0") is False
    assert p([1, 2], 2) is None                       # needs n+1 evaluations
    assert p([1, 2, 3], 2) is True and p([1, 0.95], 1, delta="0.1") is True and p([1, 0.85], 1, delta="0.1") is False
    assert p([1, 2, 3], 2, "max") is False and p([3, 2, 1], 2, "max") is True
    assert p([1, NAN, NAN], 2) is True                # diverged to NaN: no improvement
    assert p([NAN, 1, 2], 2) is False                 # nothing to improve on
    assert p([5, 4, 3, 3.5, 4, 3.2], 3) is True and p([5, 4, 3, 3.5, 4, 2.9], 3) is False
    assert tri("plateau(nothing, 3)") is None


# --------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("text, words", [
    ("x", "is a value, not a condition"),
    ("not 1", "is a value, not a condition"),
    ("x > 1 and y", "is a value, not a condition"),
    ("1 + (x > 1) > 2", "is a condition, not a number"),
    ("isnan(x > 1)", "is a condition, not a value"),
    ("true < 1", "cannot be ordered"),
    ("open('/etc/passwd')", "valid functions are: abs(x), best(metric)"),
    ("best(1) > 0", "best() works on a metric's history"),
    ("best(runtime) > 0", "best() works on a metric's history"),
    ("plateau(x)", "takes 2 or 3 arguments"),
    ("plateau(x, 0)", "whole number"),
    ("plateau(x, 2.5)", "whole number"),
    ("plateau(x, 3, -1)", "delta is a number"),
    ("min(a, b) > 0", "takes 1 argument"),
    ("x > 1 after 5", "'after N' can only end a rule"),
    ("x >", "ends too early"),
    ("(x > 1", "is never closed"),
    ("x > 1)", "unexpected ')'"),
    ("x > 1 y > 2", "missing operator"),
    ("a in b", "'in' is not supported"),
    ("x > 1 && y > 1", "write 'and'"),
    ("x > 1 || y > 1", "write 'or'"),
    ("!x", "write 'not'"),
    ("x ^ 2 > 1", "no power operator"),
    ("'abc", "unclosed quote"),
    ("", "empty expression"),
    ("1 + not x > 1", "'not' must start a condition"),
    ("and x > 1", "needs a condition on its left"),
    ("x > 1; y > 1", "separates rules"),
])
def test_errors_say_what_is_wrong(text: str, words: str) -> None:
    assert words in error(text)


def test_errors_point_at_the_character() -> None:
    with pytest.raises(ExpressionError) as info:
        parse("val_err > 0.4 and loss[0] > 1")
    assert info.value.position == 22
    assert "at character 23" in str(info.value)


HOSTILE = [
    "__import__('os')",
    "__import__('os').system('echo pwned')",
    "().__class__",
    "().__class__.__bases__[0].__subclasses__()",
    "x.__class__.__bases__",
    "x._secret > 1",
    "9**9**9",
    "9 ** 9 ** 9 > 1",
    "(" * 10000 + "1" + ")" * 10000,
    "(" * (MAX_DEPTH + 1) + "x > 1" + ")" * (MAX_DEPTH + 1),
    "not " * 400 + "x > 1",
    "-" * 1000 + "1 > 0",
    "+".join(["1"] * 900) + " > 1",
    "a and " * 20000 + "a",
    "x > " + "1" * 100_000,
    "lambda: 1",
    "(lambda: 1)() > 0",
    "import os",
    "exec('1') > 0",
    "eval('1') > 0",
    "open('/etc/passwd')",
    "getattr(x, 'y') > 1",
    "loss[0]",
    "loss[0] > 1",
    "{}",
    "`ls`",
    "x > 1; __import__('os')",
    "f'{x}' > 1",
    "x if y else z",
    "x > 1 \\\n or 1",
    "$(rm -rf /)",
    "\x00",
]


def rejection_time(fn: Callable[[str], object], text: str) -> float:
    """Seconds to reject `text`, the best of three tries (scheduling noise aside)."""
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        with pytest.raises(ExpressionError):
            getattr(fn, "__wrapped__", fn)(text)  # past the cache
        best = min(best, time.perf_counter() - t0)
    return best


@pytest.mark.parametrize("text", HOSTILE, ids=lambda t: repr(t[:30]))
def test_hostile_expressions_are_rejected_fast(text: str) -> None:
    elapsed = rejection_time(parse, text)
    assert elapsed < 0.05, f"{elapsed * 1000:.1f} ms"
    with pytest.raises(ExpressionError) as info:
        parse(text)
    message = str(info.value)
    assert message and len(message) < 600
    assert "Traceback" not in message


HOSTILE_SELECTORS = [t for t in HOSTILE if t != "loss[0]"] + [
    "failed;rm -rf /", "crashed, 12; rm -rf ~", "failed; rm -rf /", "12,`id`", "a*b; c", "x.__class__", "lr-sweep*,$(id)",
]


@pytest.mark.parametrize("text", HOSTILE_SELECTORS, ids=lambda t: repr(t[:30]))
def test_hostile_selectors_are_rejected_fast(text: str) -> None:
    elapsed = rejection_time(parse_selector, text)
    assert elapsed < 0.05, f"{elapsed * 1000:.1f} ms"


def test_brackets_in_a_selector_are_a_literal_key_not_indexing() -> None:
    assert parse_selector("loss[0]").terms == (GlobTerm("loss[0]"),)
    assert sel("loss[0]", key="loss[0]") and not sel("loss[0]", key="loss0")


def test_limits_are_explicit() -> None:
    assert f"at most {MAX_LENGTH}" in error("x > " + "1" * MAX_LENGTH)
    assert f"more than {MAX_DEPTH} levels" in error("(" * 60 + "x > 1" + ")" * 60)
    assert "levels deep" in error("+".join(["1"] * 200) + " > 1")
    parse("(" * 40 + "x > 1" + ")" * 40)  # deep but within the limit


def test_many_alternatives_are_fine() -> None:
    text = " or ".join(f"x == {i}" for i in range(150))
    assert len(text) < MAX_LENGTH
    assert ev(text, metrics={"x": 149.0})


# --------------------------------------------------------------------------------------------
# names() and Facts.of


def test_names_leave_out_builtins() -> None:
    assert names(parse("runtime > 2h and step > 5 and state == 'x' and best(val) < lr and plateau(m, 3)")) == {"val", "lr", "m"}
    assert names("isnan(loss)") == {"loss"}


def test_facts_of_a_run_record() -> None:
    rec = RunRecord(key="demo[lr=0.1]", number=3, experiment="demo", spec_hash="h", essence="{}",  # type: ignore[arg-type]
                    params=(("lr", 0.1),), state=RunState.RUNNING, cluster="gpu", started_at=100.0, step=7,
                    last={"loss": 0.5})
    f = Facts.of(rec, now=7300.0, history={"loss": ((1, 0.9), (7, 0.5))}, goals={"loss": "min"})
    assert f.runtime == 7200.0 and f.state == "running" and f.history["loss"] == (0.9, 0.5)
    assert evaluate(parse("runtime >= 2h and state == 'running' and cluster == 'gpu' and lr == 0.1 and best(loss) == 0.5"), f)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 45, 725, 7380, 100800, INF)] == ["0s", "45s", "12m05s", "2h03m", "1d04h", "inf"]


def test_explain_lists_values_in_order() -> None:
    ex = explain(parse("val_err > 0.4 and (nothing > 1 or runtime > 3h) and best(val_err) < 1"), facts())
    assert ex.result is None
    assert ex.values == (("val_err", "0.52"), ("runtime", "2h03m"), ("best(val_err)", "0.5"))
    assert ex.uses_metrics


# --------------------------------------------------------------------------------------------
# Selectors


def sel(text: str, **kw: Any) -> bool:
    return parse_selector(text).matches(facts(**kw))


def test_selector_numbers_and_ranges() -> None:
    assert parse_selector("12").terms == (NumberTerm(12, 12),)
    assert parse_selector("12-18, #21, #3 - #4").terms == (NumberTerm(12, 18), NumberTerm(21, 21), NumberTerm(3, 4))
    assert sel("12-18") and sel("1,12") and not sel("13-18,21")
    with pytest.raises(ExpressionError, match="runs backwards"):
        parse_selector("18-12")


def test_selector_state_words() -> None:
    assert sel("running") and sel("RUNNING") and sel("live") and sel("active") and sel("all")
    assert not sel("finished") and not sel("crashed")
    assert sel("crashed", state="lost") and sel("crashed", state="failed") and not sel("crashed", state="timeout")
    assert sel("finished", state="terminated") and sel("finished", state="completed")
    assert parse_selector("failed").terms == (StateTerm("failed", frozenset({"failed"})),)
    assert set(STATE_WORDS) >= {s.value for s in RunState} | {"live", "active", "finished", "crashed", "all"}
    assert sel("failed", state=RunState.FAILED)


def test_selector_the_seed_form() -> None:
    s = parse_selector("crashed,144-149,170")
    assert [type(t) for t in s.terms] == [StateTerm, NumberTerm, NumberTerm]
    assert s.matches(facts(number=170)) and s.matches(facts(number=144)) and s.matches(facts(number=1, state="lost"))
    assert not s.matches(facts(number=150))


def test_selector_globs() -> None:
    assert sel("demo*") and sel("demo") and sel("de?o") and not sel("dem")
    assert sel("demo[lr=0.1*") and not sel("demo[lr=0.01*")
    assert sel("demo[lr=0.1,layers=2]") and not sel("demo[lr=0.1,layers=3]")
    assert sel("*layers=2]") and sel("*[lr=0.1*") and sel("*lr=0.1*")
    assert sel("lr-sweep*", key="lr-sweep[lr=0.01]", experiment="lr-sweep")
    assert sel("lr-sweep", key="lr-sweep[lr=0.01]", experiment="lr-sweep")  # an experiment id matches all its runs
    assert not sel("lr-sweep", key="lr-sweep2", experiment="lr-sweep2")
    assert parse_selector("demo[lr=0.1,layers=2], failed").terms == (
        GlobTerm("demo[lr=0.1,layers=2]"), StateTerm("failed", frozenset({"failed"})))


def test_selector_brackets_are_literal() -> None:
    assert sel("demo[a]", key="demo[a]") and not sel("demo[ab]", key="demoa")
    assert not sel("demo[ab]", key="demo[a]")


def test_selector_expressions() -> None:
    s = parse_selector("val_err < 0.6 and step > 100, plateau(val_err, 2, 0), lr=0.1")
    assert [type(t) for t in s.terms] == [ExprTerm, ExprTerm, ExprTerm]
    assert s.matches(facts())
    assert s.names() == {"val_err", "lr"}
    assert sel("isnan(loss)") and sel("opt == 'a,b', 1", params={"opt": "a,b"}) and sel("runtime > 2h")
    assert not sel("nothing > 1")


def test_selector_errors() -> None:
    for text in ("", " , ", ","):
        with pytest.raises(ExpressionError, match="empty selector"):
            parse_selector(text)
    with pytest.raises(ExpressionError, match="selector term 'x >'"):
        parse_selector("12, x >")
    with pytest.raises(ExpressionError, match="is a value, not a condition"):
        parse_selector("-5")


def test_selector_trailing_comma_is_ignored() -> None:
    assert parse_selector("12,").terms == (NumberTerm(12, 12),)


# #13: an id glob, a state word and a short-number range are conditions of the one language, so
# they combine with conditions (`long* and test_error > 5` used to be rejected).
# (selector, runs it selects among A..E below)
A = dict(key="demo[lr=0.1]", experiment="demo", number=1, state="running", metrics={"loss": 2.0}, step=50)
B = dict(key="demo[lr=0.2]", experiment="demo", number=2, state="failed", metrics={"loss": 0.5}, step=150)
C = dict(key="long-run", experiment="long-run", number=3, state="completed", metrics={"loss": 7.0}, step=500)
D = dict(key="lr-sweep[lr=0.01]", experiment="lr-sweep", number=4, state="completed", metrics={"val_err": 0.5},
         step=None)
E = dict(key="base", experiment="base", number=5, state="lost", metrics={}, step=None)
RUNS = {"A": A, "B": B, "C": C, "D": D, "E": E}
COMBINED = [
    ("demo* and loss > 1", "A"),
    ("long* and loss > 5", "C"),
    ("lr-sweep* and val_err > 0.4", "D"),
    ("not demo*", "CDE"),
    ("NOT demo* and not base", "CD"),
    ("failed or demo[lr=0.1*", "AB"),
    ("(demo* or long*) and step > 100", "BC"),
    ("((demo*) or (long*)) and step > 100", "BC"),
    ("crashed or 3-4", "BCDE"),
    ("#1 - #2 and not failed", "A"),
    ("not (finished or lr-sweep)", "A"),
    ("demo and loss < 1, base", "BE"),
    ("runtime > 1h or demo[lr=0.2]", "B"),
    ("all and not 2-5", "A"),
    ("step > 100 and (lr-sweep* or long-run)", "C"),
    ("*run or *[lr=0.01]", "CD"),
    ("isnan(loss) or base", "E"),
]


@pytest.mark.parametrize(("text", "selected"), COMBINED, ids=[t for t, _ in COMBINED])
def test_run_conditions_combine_with_conditions(text: str, selected: str) -> None:
    selector = parse_selector(text)
    assert {name for name, run in RUNS.items() if selector.matches(facts(runtime=None, **run))} == set(selected)
    for term in selector.terms:  # the canonical text of a term reads back as the same term
        assert parse_selector(unparse(term.expr)).terms == (term,)


# (selector, the tree of its only term): words stay names where a value is written
TREES = [
    ("demo* and loss > 1", Logic("and", (Glob("demo*"), Compare((Name("loss"), Num(1.0)), (">",))))),
    ("not demo*", Not(Glob("demo*"))),
    ("12 or failed", Logic("or", (Numbers(12, 12), States("failed")))),
    ("(a) == (b)", Compare((Name("a"), Name("b")), ("==",))),
    ("a*b=c", Compare((Arith("*", Name("a"), Name("b")), Name("c")), ("==",))),
    ("lr=0.1 or lr=0.2*", Logic("or", (Compare((Name("lr"), Num(0.1)), ("==",)), Glob("lr=0.2*")))),
    ("isnan((loss))", Call("isnan", (Name("loss"),))),
    ("best(val) < 1 and lr-sweep", Logic("and", (Compare((Call("best", (Name("val"),)), Num(1.0)), ("<",)),
                                                 Glob("lr-sweep")))),
    ("x - y > 0", Compare((Arith("-", Name("x"), Name("y")), Num(0.0)), (">",))),
    ("true and demo", Logic("and", (Bool(True), Glob("demo")))),
]


@pytest.mark.parametrize(("text", "tree"), TREES, ids=[t for t, _ in TREES])
def test_run_conditions_are_read_only_where_a_condition_stands(text: str, tree: Any) -> None:
    (term,) = parse_selector(text).terms
    assert term.expr == tree


SELECTOR_ERRORS = [
    ("demo* and", "ends too early"),
    ("demo* > 1", "unexpected '>'; 'demo*' is an id glob only where a condition stands"),  # a glob is no value
    ("x > demo*", "'demo*' is an id glob only where a condition stands"),
    ("isnan(demo*)", "'demo*' is an id glob only where a condition stands"),
    ("demo* demo2*", "'demo*' is an id glob only where a condition stands"),
    ("demo** and x > 1", "'**' is not supported"),
    ("a.__b and x > 1", "looks like Python"),
    ("not 18-12", "runs backwards"),
]


@pytest.mark.parametrize(("text", "message"), SELECTOR_ERRORS, ids=[t for t, _ in SELECTOR_ERRORS])
def test_run_conditions_errors(text: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=re.escape(message)):
        parse_selector(text)
    with pytest.raises(ExpressionError):  # the rules language has no run conditions
        parse("demo* and x > 1")


def test_a_selector_names_its_plain_ids_for_the_ambiguity_check() -> None:
    assert parse_selector("demo and loss > 1, lr-sweep*, not base, 12").ids() == {"demo", "base"}
    assert parse_selector("demo* and loss > 1").names() == {"loss"}


# --------------------------------------------------------------------------------------------
# The reference evaluator: a tree of closures built from the generated tree, sharing no code
# with orchestrator.expr. Trees are tuples; values and conditions are separate strategies.

METRICS = ["loss", "val_err", "acc", "train/loss", "val_err@10"]
PARAMS = ["lr", "layers", "opt", "flag"]
KEYS = [("demo[lr=0.1,layers=2]", "demo"), ("demo[lr=0.01,layers=2]", "demo"), ("demo[lr=0.1,layers=3]", "demo"),
        ("lr-sweep[lr=0.1]", "lr-sweep"), ("lr-sweep", "lr-sweep"), ("base", "base"), ("demo2[x=a b]", "demo2")]

MISSING = object()
UNKNOWN = "unknown"
Fn = Callable[[Facts], Any]

NUMBER_LITERALS = [("0", 0.0), ("0.5", 0.5), ("1", 1.0), ("2", 2.0), ("1e-3", 0.001), ("100", 100.0), ("612", 612.0),
                   ("2h", 7200.0), ("30m", 1800.0), ("1.5d", 129600.0), ("90s", 90.0), ("2h30m", 9000.0), (".5", 0.5),
                   ("nan", NAN), ("NaN", NAN), ("inf", INF), ("INF", INF)]
STRINGS = ["adam", "sgd", "running", "local", "demo", "a,b", "a;b", "it's"]
CMP = ["<", "<=", ">", ">=", "==", "=", "!=", "<>", "≤", "≥", "≠"]

number_leaf = st.sampled_from(NUMBER_LITERALS).map(lambda p: ("num", p[0], p[1]))
name_leaf = st.sampled_from(METRICS + ["lr", "layers", "flag", "runtime", "step", "nothing"]).map(lambda n: ("name", n))
string_leaf = st.sampled_from(STRINGS).map(lambda s: ("str", s))
text_name_leaf = st.sampled_from(["state", "cluster", "opt", "experiment", "id", "key"]).map(lambda n: ("name", n))
history_leaf = st.tuples(st.just("hist"), st.sampled_from(["best", "min", "max", "Best"]),
                         st.sampled_from(METRICS + ["nothing", "lr"]))

numbers = st.recursive(
    st.one_of(number_leaf, name_leaf, name_leaf, history_leaf),
    lambda v: st.one_of(
        st.tuples(st.just("neg"), v),
        st.tuples(st.just("arith"), st.sampled_from("+-*/"), v, v),
        st.tuples(st.just("abs"), v),
    ),
    max_leaves=4,
)
values = st.one_of(numbers, numbers, numbers, string_leaf, text_name_leaf)  # strings too: types never mix
comparisons = st.lists(values, min_size=2, max_size=3).flatmap(
    lambda ops: st.tuples(st.just("cmp"), st.just(ops), st.lists(st.sampled_from(CMP), min_size=len(ops) - 1,
                                                                 max_size=len(ops) - 1)))
condition_leaves = st.one_of(
    comparisons, comparisons, comparisons,
    st.tuples(st.sampled_from(["isnan", "isinf"]), values),
    st.tuples(st.just("cmp"), st.tuples(text_name_leaf, string_leaf), st.tuples(st.sampled_from(CMP))),
    *[st.tuples(st.just("plateau"), st.sampled_from(METRICS + ["nothing"]), st.integers(1, 4),
                st.sampled_from([None, 0.0, 0.05, 0.5, 1.0]))] * 2,
    st.tuples(st.just("bool"), st.booleans()),
)
conditions = st.recursive(
    condition_leaves,
    lambda c: st.one_of(
        st.tuples(st.just("not"), c),
        st.tuples(st.sampled_from(["and", "or"]), st.lists(c, min_size=2, max_size=3)),
        st.tuples(st.just("booleq"), c, st.sampled_from(["==", "!=", "=", "<>"]), st.booleans()),
    ),
    max_leaves=6,
)

TIES = st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, NAN])  # few values: equal bests, exact deltas
FLOATS = st.one_of(st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0, 1e-3, 100.0, 612.0, 7200.0, NAN, INF, -INF]),
                   st.floats(-1e3, 1e3))


@st.composite
def run_facts(draw: st.DrawFn) -> Facts:
    metrics: dict[str, float] = {}
    history: dict[str, list[float]] = {}
    for m in METRICS:
        if not draw(st.integers(0, 5)):
            continue  # not reported (yet)
        series = draw(st.lists(st.one_of(FLOATS, TIES), max_size=9))
        style = draw(st.sampled_from(["both", "latest only", "history only"]))
        if style != "history only" or not series:
            metrics[m] = series[-1] if series else draw(FLOATS)
        if style != "latest only" and series:
            history[m] = series
    params: dict[str, object] = {}
    choices: dict[str, st.SearchStrategy] = {
        "lr": st.sampled_from([0.1, 0.01, 0.001, 2]), "layers": st.sampled_from([1, 2, 3, None]),
        "opt": st.sampled_from(["adam", "sgd", "a,b", "it's"]), "flag": st.booleans(),
    }
    for name, values in choices.items():
        if draw(st.integers(0, 5)):
            params[name] = draw(values)
    key, experiment = draw(st.sampled_from(KEYS))
    return Facts(
        key=key, number=draw(st.integers(1, 30)), experiment=experiment,
        state=draw(st.sampled_from([s.value for s in RunState])), cluster=draw(st.sampled_from(["local", "gpu"])),
        runtime=draw(st.sampled_from([None, 0.0, 59.0, 1800.0, 7200.0, 7380.5, 9000.0, 90000.0, 129600.0])),
        step=draw(st.sampled_from([None, 0, 10, 100, 499, 500, 612, 7200])),
        metrics=metrics, history=history,
        goals=draw(st.dictionaries(st.sampled_from(METRICS), st.sampled_from(["min", "max"]))), params=params,
    )


def ref_goal(f: Facts, metric: str) -> str:
    if f.goals.get(metric) in ("min", "max"):
        return f.goals[metric]
    return "max" if metric.split("@")[0].lower() in MAX_GOAL_NAMES else "min"


def ref_normal(v: object) -> object:
    if v is None:
        return MISSING
    if isinstance(v, bool | str):
        return v
    return float(v)  # type: ignore[arg-type]


def ref_lookup(f: Facts, name: str) -> object:
    fixed = {"runtime": f.runtime, "step": f.step, "state": f.state, "cluster": f.cluster,
             "experiment": f.experiment, "id": f.experiment, "key": f.key}
    if name in fixed:
        return ref_normal(fixed[name])
    if name in f.metrics:
        return ref_normal(f.metrics[name])
    if f.history.get(name):
        return ref_normal(f.history[name][-1])
    if name in f.params:
        return ref_normal(f.params[name])
    return MISSING


def ref_series(f: Facts, name: str) -> list[float]:
    if f.history.get(name):
        return [float(v) for v in f.history[name]]
    return [float(f.metrics[name])] if name in f.metrics else []


def is_number(v: object) -> bool:
    return isinstance(v, float)


def same_type(a: object, b: object) -> bool:
    return (is_number(a) and is_number(b)) or (isinstance(a, str) and isinstance(b, str)) or (
        isinstance(a, bool) and isinstance(b, bool))


ORDER = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "≤": operator.le, "≥": operator.ge}


def ref_compare(op: str, a: object, b: object) -> object:
    if a is MISSING or b is MISSING:
        return UNKNOWN
    if op in ("==", "="):
        return same_type(a, b) and a == b
    if op in ("!=", "<>", "≠"):
        return not (same_type(a, b) and a == b)
    if isinstance(a, bool) or isinstance(b, bool) or not same_type(a, b):
        return False
    return ORDER[op](a, b)


def kleene_and(xs: list[object]) -> object:
    return False if False in xs else UNKNOWN if UNKNOWN in xs else True


def kleene_or(xs: list[object]) -> object:
    return True if True in xs else UNKNOWN if UNKNOWN in xs else False


def ref_arith(op: str, a: object, b: object) -> object:
    if not (is_number(a) and is_number(b)):
        return MISSING
    with np.errstate(all="ignore"):
        x, y = np.float64(a), np.float64(b)
        return float({"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide}[op](x, y))


def ref_value(t: tuple) -> Fn:
    kind = t[0]
    if kind == "num":
        return lambda f, v=t[2]: v
    if kind == "str":
        return lambda f, v=t[1]: v
    if kind == "name":
        return lambda f, n=t[1]: ref_lookup(f, n)
    if kind == "neg":
        inner = ref_value(t[1])
        return lambda f: (lambda x: -x if is_number(x) else MISSING)(inner(f))
    if kind == "abs":
        inner = ref_value(t[1])
        return lambda f: (lambda x: math.fabs(x) if is_number(x) else MISSING)(inner(f))
    if kind == "arith":
        left, right = ref_value(t[2]), ref_value(t[3])
        return lambda f, op=t[1]: ref_arith(op, left(f), right(f))
    if kind == "hist":
        fn, metric = t[1].lower(), t[2]

        def hist(f: Facts) -> object:
            series = ref_series(f, metric)
            if not series:
                return MISSING
            clean = [v for v in series if v == v]
            if not clean:
                return NAN
            direction = ref_goal(f, metric) if fn == "best" else fn
            return max(clean) if direction == "max" else min(clean)
        return hist
    raise AssertionError(t)


def ref_condition(t: tuple) -> Fn:
    kind = t[0]
    if kind == "cmp":
        operands = [ref_value(o) for o in t[1]]
        ops = t[2]

        def chain(f: Facts) -> object:
            vals = [o(f) for o in operands]
            return kleene_and([ref_compare(op, vals[i], vals[i + 1]) for i, op in enumerate(ops)])
        return chain
    if kind in ("isnan", "isinf"):
        inner = ref_value(t[1])
        test = math.isnan if kind == "isnan" else math.isinf

        def check(f: Facts) -> object:
            x = inner(f)
            return UNKNOWN if x is MISSING else (is_number(x) and test(x))
        return check
    if kind == "plateau":
        metric, n, given = t[1], t[2], t[3]

        def plateau(f: Facts) -> object:
            series = ref_series(f, metric)
            if len(series) <= n:
                return UNKNOWN
            sign = 1.0 if ref_goal(f, metric) == "min" else -1.0
            before = [sign * v for v in series[:-n] if not math.isnan(v)]
            recent = [sign * v for v in series[-n:] if not math.isnan(v)]
            if not recent:
                return True
            if not before:
                return False
            best = min(before)
            delta = given if given is not None else (1e-4 * abs(best) if math.isfinite(best) else 0.0)
            return not (min(recent) < best - delta)
        return plateau
    if kind == "bool":
        return lambda f, b=t[1]: b
    if kind == "not":
        inner = ref_condition(t[1])
        return lambda f: (lambda x: UNKNOWN if x == UNKNOWN else not x)(inner(f))
    if kind in ("and", "or"):
        parts = [ref_condition(c) for c in t[1]]
        combine = kleene_and if kind == "and" else kleene_or
        return lambda f: combine([p(f) for p in parts])
    if kind == "booleq":
        inner = ref_condition(t[1])
        op, b = t[2], t[3]
        return lambda f: ref_compare(op, MISSING if (x := inner(f)) == UNKNOWN else x, b)
    raise AssertionError(t)


# Rendering a generated tree as text a user might type: minimal or extra parentheses, any
# keyword case, any operator spelling, varying spaces.

PREC = {"or": 1, "and": 2, "not": 3, "cmp": 4, "+": 5, "-": 5, "*": 6, "/": 6, "neg": 7, "atom": 9}


def render(t: tuple, r: random.Random) -> str:
    return _render(t, r)[0]


def _group(text: str, prec: int, least: int, r: random.Random) -> str:
    if prec < least or r.random() < 0.1:
        return f"({text})"
    return text


def _case(word: str, r: random.Random) -> str:
    return r.choice([word, word.upper(), word.capitalize()])


def _render(t: tuple, r: random.Random) -> tuple[str, int]:
    kind = t[0]
    sp = r.choice(["", " "]) if kind in ("cmp",) else " "
    if kind == "num":
        return t[1], PREC["atom"]
    if kind == "str":
        q = '"' if "'" in t[1] else r.choice(["'", '"'])
        return f"{q}{t[1]}{q}", PREC["atom"]
    if kind == "name":
        return t[1], PREC["atom"]
    if kind == "neg":
        text, p = _render(t[1], r)
        return "-" + _group(text, p, PREC["neg"], r), PREC["neg"]
    if kind == "abs":
        return f"{_case('abs', r)}({render(t[1], r)})", PREC["atom"]
    if kind == "hist":
        return f"{t[1]}({t[2]})", PREC["atom"]
    if kind == "arith":
        p = PREC[t[1]]
        left, lp = _render(t[2], r)
        right, rp = _render(t[3], r)
        return f"{_group(left, lp, p, r)} {t[1]} {_group(right, rp, p + 1, r)}", p
    if kind == "cmp":
        parts = []
        for i, operand in enumerate(t[1]):
            text, p = _render(operand, r)
            if i:
                parts.append(sp + t[2][i - 1] + sp)
            parts.append(_group(text, p, PREC["cmp"] + 1, r))
        return "".join(parts), PREC["cmp"]
    if kind in ("isnan", "isinf"):
        return f"{_case(kind, r)}({render(t[1], r)})", PREC["atom"]
    if kind == "plateau":
        delta = "" if t[3] is None else f", {t[3]}"
        return f"plateau({t[1]},{r.choice(['', ' '])}{t[2]}{delta})", PREC["atom"]
    if kind == "bool":
        return _case("true" if t[1] else "false", r), PREC["atom"]
    if kind == "not":
        text, p = _render(t[1], r)
        return f"{_case('not', r)} {_group(text, p, PREC['not'], r)}", PREC["not"]
    if kind in ("and", "or"):
        p = PREC[kind]
        parts = [_group(*_render(c, r), p + 1, r) for c in t[1]]
        return f" {_case(kind, r)} ".join(parts), p
    if kind == "booleq":
        text, p = _render(t[1], r)
        return f"{_group(text, p, PREC['cmp'] + 1, r)} {t[2]} {_case('true' if t[3] else 'false', r)}", PREC["cmp"]
    raise AssertionError(t)


def ref_truth(t: tuple, f: Facts) -> bool:
    return ref_condition(t)(f) is True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=conditions, runs=st.lists(run_facts(), min_size=1, max_size=4), r=st.randoms(use_true_random=False))
def test_expressions_agree_with_the_reference(tree: tuple, runs: list[Facts], r: random.Random) -> None:
    text = render(tree, r)
    expr = parse(text)
    assert parse(unparse(expr)) == expr or "nan" in unparse(expr)
    for f in runs:
        expected = ref_condition(tree)(f)
        assert truth(expr, f) == (None if expected == UNKNOWN else expected), (text, f)
        assert evaluate(expr, f) == ref_truth(tree, f), (text, f)


@settings(max_examples=500, deadline=None)
@given(series=st.lists(st.one_of(TIES, FLOATS), max_size=10), n=st.integers(1, 5),
       delta=st.sampled_from([None, 0.0, 0.5, 1.0]), goal=st.sampled_from(["min", "max", None]),
       metric=st.sampled_from(["m", "acc", "val_err@10", "Accuracy@5"]), style=st.sampled_from(["history", "latest"]))
def test_history_functions_agree_with_the_reference(series: list[float], n: int, delta: float | None, goal: str | None,
                                                    metric: str, style: str) -> None:
    if style == "latest":
        f = Facts(key="k", metrics={metric: series[-1]} if series else {}, goals={metric: goal} if goal else {})
    else:
        f = Facts(key="k", history={metric: series}, goals={metric: goal} if goal else {})
    tree = ("plateau", metric, n, delta)
    expected = ref_condition(tree)(f)
    assert truth(parse(render(tree, random.Random(0))), f) == (None if expected == UNKNOWN else expected)
    for fn in ("best", "min", "max"):
        value = ref_value(("hist", fn, metric))(f)
        if value is MISSING:
            assert truth(parse(f"{fn}({metric}) == 0"), f) is None
        elif math.isnan(value):  # type: ignore[arg-type]
            assert evaluate(parse(f"isnan({fn}({metric}))"), f)
        else:
            assert evaluate(parse(f"{fn}({metric}) == {value!r}"), f), (fn, value)


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([0.0, -0.0, 0.5, 2.0, NAN, INF, -INF]),
                    st.sampled_from(["", "a", "b", "adam", "1"]))


@settings(max_examples=500, deadline=None)
@given(a=SCALARS, b=SCALARS, op=st.sampled_from(CMP + ["+", "-", "*", "/"]))
def test_types_and_arithmetic_agree_with_the_reference(a: object, b: object, op: str) -> None:
    f = Facts(key="k", params={"a": a, "b": b})
    if op in "+-*/":
        value = ref_arith(op, ref_normal(a), ref_normal(b))
        if value is MISSING:
            assert truth(parse(f"a {op} b == 0"), f) is None
        elif math.isnan(value):  # type: ignore[arg-type]
            assert evaluate(parse(f"isnan(a {op} b)"), f)
        else:
            assert evaluate(parse(f"a {op} b == {value!r}"), f)
    else:
        expected = ref_compare(op, ref_normal(a), ref_normal(b))
        assert truth(parse(f"a {op} b"), f) == (None if expected == UNKNOWN else expected)


GLOBS = ["demo*", "demo[lr=0.1*", "demo[lr=0.1,layers=2]", "*layers=2]", "lr-sweep*", "lr-sweep", "base", "?ase",
         "*[lr=0.01*", "de?o*", "*", "nomatch*", "demo[*", "*]", "demo2[x=a?b]", "demo"]
GLOB_LIKE = re.compile(r"[A-Za-z0-9_.\-*?=+@/:%,\[\]]+")


def ref_glob(pattern: str, text: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, re.S) is not None


terms = st.one_of(
    st.tuples(st.just("range"), st.integers(0, 35), st.integers(0, 6), st.sampled_from(["{a}", "#{a}", "{a}-{b}",
                                                                                        "{a} - {b}", "#{a}-#{b}"])),
    st.tuples(st.just("state"), st.sampled_from(sorted(STATE_WORDS))),
    st.tuples(st.just("glob"), st.sampled_from(GLOBS)),
    st.tuples(st.just("cond"), conditions),
)


def render_term(term: tuple, r: random.Random) -> tuple[str, Callable[[Facts], bool]]:
    kind = term[0]
    if kind == "range":
        a, b = term[1], term[1] + term[2]
        text = term[3].format(a=a, b=b)
        hi = b if "{b}" in term[3] else a
        return text, lambda f: a <= f.number <= hi
    if kind == "state":
        groups = {"live": {"submitted", "running"}, "active": {"submitted", "running"}, "crashed": {"failed", "lost"},
                  "finished": {"completed", "failed", "terminated", "cancelled", "timeout", "preempted", "lost"},
                  "all": {s.value for s in RunState}}
        word = term[1]
        states = groups.get(word, {word})
        return _case(word, r), lambda f: f.state in states
    if kind == "glob":
        pattern = term[1]
        return pattern, lambda f: ref_glob(pattern, f.key) or ref_glob(pattern, f.experiment)
    text = render(term[1], r)
    if GLOB_LIKE.fullmatch(text):
        text = f"({text})"
    return text, lambda f, t=term[1]: ref_truth(t, f)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chosen=st.lists(terms, min_size=1, max_size=4), runs=st.lists(run_facts(), min_size=1, max_size=4),
       r=st.randoms(use_true_random=False))
def test_selectors_agree_with_the_reference(chosen: list[tuple], runs: list[Facts], r: random.Random) -> None:
    rendered = [render_term(t, r) for t in chosen]
    # `demo[*` then `*]` reads as the one glob `demo[*,*]` (documented); leave such pairs out
    assume(not any(a.rfind("[") > a.rfind("]") and any("]" in b for b, _ in rendered[i + 1:])
                   for i, (a, _) in enumerate(rendered)))
    text = ",".join(r.choice(["", " "]) + s + r.choice(["", " "]) for s, _ in rendered)
    selector = parse_selector(text)
    assert len(selector.terms) == len(chosen), text
    for f in runs:
        assert selector.matches(f) == any(ref(f) for _, ref in rendered), (text, f)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chosen=st.lists(st.tuples(terms, st.sampled_from(["and", "or", "and not"])), min_size=1, max_size=4),
       runs=st.lists(run_facts(), min_size=1, max_size=4), r=st.randoms(use_true_random=False))
def test_combined_selectors_agree_with_the_reference(chosen: list[tuple], runs: list[Facts], r: random.Random) -> None:
    """#13: run numbers, state words and id globs combine with conditions by and, or, not."""
    parts = [(render_term(t, r), t, op) for t, op in chosen]
    text = f"({parts[0][0][0]})" + "".join(f" {op} ({rendered[0]})" for rendered, _, op in parts[1:])

    def tri(rendered: tuple, term: tuple, f: Facts) -> object:  # True, False or UNKNOWN
        return ref_condition(term[1])(f) if term[0] == "cond" else rendered[1](f)

    def both(a: object, b: object) -> object:
        return False if False in (a, b) else UNKNOWN if UNKNOWN in (a, b) else True

    def ref(f: Facts) -> bool:  # 'and' binds tighter than 'or'; unknown counts as false
        groups, current = [], tri(parts[0][0], parts[0][1], f)
        for rendered, term, op in parts[1:]:
            value = tri(rendered, term, f)
            if op == "or":
                groups.append(current)
                current = value
            else:
                current = both(current, value if op == "and" else UNKNOWN if value == UNKNOWN else not value)
        groups.append(current)
        return True in groups

    selector = parse_selector(text)
    assert len(selector.terms) == 1, text
    for f in runs:
        assert selector.matches(f) == ref(f), (text, f)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=60))
def test_arbitrary_text_parses_or_fails_cleanly(text: str) -> None:
    for fn in (parse, parse_selector):
        try:
            result = fn(text)
        except ExpressionError:
            continue
        if fn is parse:
            evaluate(result, facts())  # type: ignore[arg-type]
        else:
            result.matches(facts())  # type: ignore[union-attr]


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="()ab<>=!1.+-*/ ,'_[]nota", max_size=80))
def test_operator_soup_parses_or_fails_cleanly(text: str) -> None:
    try:
        expr = parse(text)
    except ExpressionError:
        return
    assert parse(unparse(expr)) == expr or "nan" in unparse(expr)
    evaluate(expr, facts())


def test_unparse_of_every_node_kind() -> None:
    tree = Logic("or", (Not(Compare((Neg(Name("a")), Num(0.5)), ("<",))), Bool(True), Call("isnan", (Name("x"),))))
    assert unparse(tree) == "not -a < 0.5 or true or isnan(x)"
    assert parse(unparse(tree)) == tree
