"""Variation expansion, run keys, spec hashes and the pure planner."""

from __future__ import annotations

import json
from dataclasses import fields, replace

import pytest

from orchestrator.model import (
    Action,
    ActionKind,
    After,
    Cluster,
    Desired,
    Experiment,
    Override,
    OverrideKind,
    RunRecord,
    RunState,
    Until,
    Variation,
    Workbook,
)
from orchestrator.paths import slug
from orchestrator.plan import plan
from orchestrator.spec import diff_essence, expand, parse_cell, run_key, spec_hash


def exp(id="e", row=2, **kw) -> Experiment:
    params = kw.pop("params", (("lr", Variation("[0.1, 0.01]", (0.1, 0.01))), ("epochs", 5)))
    return Experiment(id=id, row=row, command=kw.pop("command", "python t.py --lr {{ lr }}"), clusters=("local",),
                      desired=kw.pop("desired", Desired.RUN), params=params, **kw)


def wb(*exps) -> Workbook:
    return Workbook(path="x.xlsx", experiments=tuple(exps), clusters=(Cluster("local"),))


def rec_for(spec, state=RunState.RUNNING, number=1, **kw) -> RunRecord:
    return RunRecord(key=spec.key, number=number, experiment=spec.experiment, spec_hash=spec.spec_hash,
                     essence=json.dumps(spec.essence()), params=spec.params, state=state, attempt=1,
                     cluster="local", **kw)


def test_variations_expand_to_a_grid_with_stable_keys():
    e = exp(params=(("lr", parse_cell("[0.1, 0.01]")), ("layers", parse_cell("range(1, 3)")), ("act", "relu")))
    keys = [s.key for s in expand(wb(e))]
    assert keys == ["e[lr=0.1,layers=1]", "e[lr=0.1,layers=2]", "e[lr=0.01,layers=1]", "e[lr=0.01,layers=2]"]
    # inserting a value in a list renumbers nothing: the old keys are all still there
    e2 = replace(e, params=(("lr", parse_cell("[0.5, 0.1, 0.01]")),) + e.params[1:])
    assert set(keys) < {s.key for s in expand(wb(e2))}


def test_linspace_and_logspace_values_are_readable():
    assert parse_cell("linspace(0, 1, 11)").values[3] == 0.3
    assert parse_cell("logspace(-4, -1, 4)").values == (0.0001, 0.001, 0.01, 0.1)
    assert run_key("x", [("lr", 0.1 + 0.2)]) == "x[lr=0.3]"


@pytest.mark.parametrize("bad", ["[1, 2", "range(a)", "linspace(0, 1)", "[1,,2]", "range(1.5, 3)", "logspace(0,1,-2)", "range(5, 1)"])
def test_bad_variations_say_what_to_write(bad):
    with pytest.raises(ValueError):
        parse_cell(bad)


def test_spec_hash_ignores_rules_notify_notes_but_not_command():
    base = expand(wb(exp()))[0]
    same = expand(wb(exp(rules="isnan(loss)", notify=("failed",))))[0]
    other = expand(wb(exp(command="python t.py --lr {{ lr }} --x")))[0]
    assert base.spec_hash == same.spec_hash
    assert base.spec_hash != other.spec_hash


def test_expanded_hashes_are_the_hash_of_each_runs_essence():
    """#14: a row's part of the hash is serialised once for all its runs; the hashes stay
    those of each run's whole essence (a stored run would otherwise restart), whatever the
    cells hold (quotes, the text `"params":{}`, non-ASCII, resources in any order, values
    Python holds equal: 1, 1.0, True)."""
    e = exp(command='echo "params":{} {{ lr }} é', setup='x"y', workdir="w\\d", template="t.sh",
            resources=(("mem", "4G"), ("gpus", 1)),
            params=(("lr", parse_cell("[0.1, 0.01]")), ("name", parse_cell("['a\\\"b', 'ü']")), ("n", 3)))
    alike = exp(id="g", params=(("x", Variation("x", (1, 1.0, True, "1", float("nan")))), ("x2", 2)))  # equal in Python
    twice = exp(id="h", params=(("lr", 1), ("lr", Variation("[2, 3]", (2, 3)))))  # a name given twice
    specs = expand(wb(e, exp(id="f"), alike, twice))
    assert len(specs) == 13 and len({s.spec_hash for s in specs}) == 13
    assert all(s.spec_hash == spec_hash(s.essence()) for s in specs)


def test_rows_alike_share_one_row_hasher_and_keep_each_runs_hash():
    """#14: one-run rows alike in command, clusters, resources, setup, template, workdir and
    parameter names share their hasher (200,000 rows made one); each run's hash is still
    its own essence's, ints, texts, floats and 0.0 / -0.0 alike."""
    rows = [exp(id=f"r{i}", row=i + 2, params=(("lr", v), ("seed", i), ("name", f'n"{i}é')))
            for i, v in enumerate((0.1, 0.0, -0.0, 0.1, 7, True, None, "x"))]
    specs = expand(wb(*rows))
    assert [s.key for s in specs] == [f"r{i}" for i in range(8)]
    assert all(s.spec_hash == spec_hash(s.essence()) for s in specs)
    assert specs[1].spec_hash != specs[2].spec_hash  # 0.0 and -0.0 are dumped apart
    assert specs[0].params is rows[0].params  # a one-run row's parameters are the row's own tuple


def test_cells_are_made_from_the_row():
    """#14: a row read from a sheet keeps its columns once for the sheet (`Experiments!E`),
    and `cell` adds the row; a full cell (written by hand) is returned as it is."""
    e = exp(row=7, cells=(("id", "Experiments!A"), ("template", "Experiments!"), ("lr", "Experiments!C9")))
    assert (e.cell("id"), e.cell("template"), e.cell("lr"), e.cell("x")) == ("Experiments!A7", "Experiments!7",
                                                                              "Experiments!C9", "")


def test_the_plan_copies_every_field_of_an_action():
    """Action.but builds an Action field by field (dataclasses.replace was 15 s of a 200,000-run
    plan): a field added to Action must be added there."""
    assert [f.name for f in fields(Action)] == ["kind", "key", "reason", "spec", "cluster", "waiting", "resume",
                                                 "retry", "token", "awaiting"]


def test_slug_is_filesystem_safe_and_unique():
    a, b = slug("e[a=x'; rm -rf ~]"), slug("e[a=x'; rm -rf /]")
    assert "/" not in a and "'" not in a and a != b


def test_plan_new_runs_are_submitted_then_nothing():
    specs = expand(wb(exp()))
    p = plan(specs, {}, {"local": 8})
    assert [a.kind for a in p.actions] == [ActionKind.SUBMIT, ActionKind.SUBMIT]
    assert all(a.cluster == "local" for a in p.actions)
    snap = {s.key: rec_for(s, number=i) for i, s in enumerate(specs, 1)}
    p2 = plan(specs, snap, {"local": 8})
    assert p2.actions == () and p2.unchanged == 2


def test_plan_restart_names_what_changed():
    old = expand(wb(exp()))
    snap = {s.key: rec_for(s, number=i) for i, s in enumerate(old, 1)}
    new = expand(wb(exp(params=(("lr", Variation("[0.1, 0.01]", (0.1, 0.01))), ("epochs", 6)))))
    p = plan(new, snap, {"local": 8})
    assert {a.kind for a in p.actions} == {ActionKind.RESTART}
    assert all(a.reason == "epochs: 5 → 6" for a in p.actions)


def test_plan_stop_orphan_prune_and_hold():
    specs = expand(wb(exp(), exp(id="gone", row=3)))
    snap = {s.key: rec_for(s, number=i) for i, s in enumerate(specs, 1)}
    stopped = expand(wb(exp(desired=Desired.STOP), exp(id="new", row=4, desired=Desired.HOLD)))
    p = plan(stopped, snap, {"local": 8})
    kinds = sorted((a.kind.value, a.key) for a in p.actions)
    assert kinds == [
        ("cancel", "e[lr=0.01]"), ("cancel", "e[lr=0.1]"),
        ("held", "new[lr=0.01]"), ("held", "new[lr=0.1]"),
        ("orphaned", "gone[lr=0.01]"), ("orphaned", "gone[lr=0.1]"),
    ]
    assert all("state=stop" in a.reason for a in p.of(ActionKind.CANCEL))
    pruned = plan(stopped, snap, {"local": 8}, prune=True)
    assert len(pruned.of(ActionKind.CANCEL)) == 4 and not pruned.of(ActionKind.ORPHAN)
    # finished orphans are not reported
    done = {k: replace(r, state=RunState.COMPLETED) for k, r in snap.items()}
    assert not plan(expand(wb(exp())), done, {"local": 8}).actions


def test_plan_respects_capacity_and_priority():
    specs = expand(wb(exp(id="low", row=2), exp(id="high", row=3, priority=5)))
    p = plan(specs, {}, {"local": 2})
    running = [a.key for a in p.actions if a.cluster]
    assert running == ["high[lr=0.1]", "high[lr=0.01]"]
    assert all("no free slot" in a.waiting for a in p.actions if not a.cluster)


def test_plan_after_waits_then_holds_on_failure():
    first, second = exp(id="a", row=2), exp(id="b", row=3, after=(After("a"),))
    specs = expand(wb(first, second))
    p = plan(specs, {}, {"local": 8})
    assert all(a.waiting == "waits for a: 2 of 2 runs not completed" for a in p.actions if a.key.startswith("b"))
    snap = {s.key: rec_for(s, state=RunState.COMPLETED, number=i) for i, s in enumerate(specs[:2], 1)}
    snap[specs[1].key] = replace(snap[specs[1].key], state=RunState.FAILED)
    p = plan(specs, snap, {"local": 8})
    held = p.of(ActionKind.HOLD)
    assert len(held) == 2 and f"{specs[1].key} failed" in held[0].reason and "nero restart" in held[0].reason


@pytest.mark.parametrize("until, starts", [(Until.COMPLETED, False), (Until.FINISHED, True)])
def test_plan_after_finished_accepts_runs_a_rule_terminated(until, starts):
    """#13: `after demo` never starts when demo ends with terminated runs; `demo finished` does."""
    first, second = exp(id="a", row=2), exp(id="b", row=3, after=(After("a", until),))
    specs = expand(wb(first, second))
    snap = {specs[0].key: rec_for(specs[0], state=RunState.COMPLETED, number=1)}
    p = plan(specs, snap, {"local": 8})
    assert [a.waiting for a in p.actions if a.key.startswith("b")] == [f"waits for a: 1 of 2 runs not {until.value}"] * 2
    snap[specs[1].key] = rec_for(specs[1], state=RunState.TERMINATED, number=2)
    p = plan(specs, snap, {"local": 8})
    if starts:
        assert [(a.kind, a.cluster) for a in p.actions] == [(ActionKind.SUBMIT, "local")] * 2
    else:
        assert [a.kind for a in p.actions] == [ActionKind.HOLD] * 2
        assert "`a finished`" in p.actions[0].reason and f"{specs[1].key} terminated" in p.actions[0].reason
    # a failed run blocks either way: it would not come back
    snap[specs[1].key] = replace(snap[specs[1].key], state=RunState.FAILED)
    assert [a.kind for a in plan(specs, snap, {"local": 8}).actions] == [ActionKind.HOLD] * 2


def test_plan_stop_then_run_brings_the_cancelled_runs_back():
    """#13: a row set back to `run` after `stop` resubmits the runs the stop cancelled (not the
    ones a rule terminated or that failed), and a row waiting on it waits instead of giving up."""
    first, second = exp(id="a", row=2), exp(id="b", row=3, after=(After("a"),))
    specs = expand(wb(first, second))
    stopped = f"cancelled: state=stop in Experiments row {specs[0].row}"
    snap = {specs[0].key: rec_for(specs[0], state=RunState.CANCELLED, number=1, stop_requested=stopped),
            specs[1].key: rec_for(specs[1], state=RunState.TERMINATED, number=2)}
    p = plan(specs, snap, {"local": 8})
    restart = p.of(ActionKind.RESTART)
    assert [(a.key, a.reason, a.resume, a.cluster) for a in restart] == [
        (specs[0].key, "row is `run` again (was stopped)", True, "local")]
    assert all(a.kind is ActionKind.HOLD and "terminated" in a.reason for a in p.actions if a.key.startswith("b"))
    snap[specs[1].key] = replace(snap[specs[1].key], state=RunState.COMPLETED)
    waiting = [a.waiting for a in plan(specs, snap, {"local": 8}).actions if a.key.startswith("b")]
    assert waiting == ["waits for a: 1 of 2 runs not completed"] * 2
    # still `stop`: nothing; `hold`: deferred, said so
    stop = expand(wb(replace(first, desired=Desired.STOP), second))
    assert not plan(stop, snap, {"local": 8}).changes
    hold = plan(expand(wb(replace(first, desired=Desired.HOLD), second)), snap, {"local": 8})
    assert [a.reason for a in hold.actions if a.key == specs[0].key] == ["state=hold: restart deferred (was stopped)"]
    # a scheduler's own cancel (no stop asked by nero) is left alone
    snap[specs[0].key] = replace(snap[specs[0].key], stop_requested="")
    assert not plan(specs, snap, {"local": 8}).changes


def test_plan_abort_then_release_brings_the_run_back():
    """#13: a run cancelled by `nero abort` stays cancelled while the override is in force and
    comes back once it is lifted (`nero release`)."""
    spec = expand(wb(exp()))[0]
    snap = {spec.key: rec_for(spec, state=RunState.CANCELLED, stop_requested="cancelled: aborted with `nero abort`")}
    aborted = {spec.key: Override(spec.key, OverrideKind.ABORT, spec.spec_hash, 1, 0.0)}
    assert not plan([spec], snap, {"local": 8}, overrides=aborted).changes
    assert [a.reason for a in plan([spec], snap, {"local": 8}).changes] == ["row is `run` again (was aborted)"]


def test_diff_essence_lists_each_change():
    a = {"command": "x", "params": {"lr": 0.1, "b": 1}, "clusters": ["local"], "resources": {}, "setup": "", "workdir": "", "template": ""}
    b = {**a, "params": {"lr": 0.2, "b": 1, "c": 3}, "setup": "module load x"}
    assert diff_essence(a, b) == ["lr: 0.1 → 0.2", "c: (none) → 3", "setup: (empty) → module load x"]


def test_the_plan_json_is_written_in_pieces_as_json_dumps_writes_it():
    """#14: `nero plan --json` writes the plan a piece at a time (200,000 actions dumped whole
    took 280 MB): the text is json.dumps(…, indent=2)'s, byte for byte."""
    from orchestrator.views import action_row, indented_json

    p = plan(expand(wb(exp(), exp(id="f\u00e9\"x", params=(("n", 1),)))), {}, {"local": 1})
    value = {"actions": [action_row(a) for a in p.actions], "unchanged": p.unchanged, "empty": {}, "none": [],
             "freshness": {"as_of": 1.5, "pid": None, "live": True, "nested": [1, 2.5, "s", None, {"k": []}]},
             "odd": [float("nan"), float("inf"), (1, "2")]}
    assert "".join(indented_json(value)) == json.dumps(value, indent=2)
