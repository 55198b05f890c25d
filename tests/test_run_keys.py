"""A run key is never produced twice (issue #11): values that render one key are reported
at their cell, every variation function is checked for repeats and for numbers that
overflow or underflow, a grid cannot spell one key twice, and the planner refuses two
specs with one key. Each case runs the real `nero plan` and `nero reconcile` on a real
xlsx: exit 2, the cell in the message, and nothing submitted."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import nero, state_db, write_workbook

from orchestrator.errors import WorkbookError
from orchestrator.model import Cluster, Desired, Experiment, Workbook
from orchestrator.plan import plan
from orchestrator.spec import expand, parse_cell

GOOD = {"id": "ok", "command": "echo {{ x }}", "notes": "fine", "seed": 1, "x": "[1, 2]"}


def rejected(project: Path, x: object, **more: object) -> str:
    """Row 3's `x` (column E) is `x`; `nero plan` and `nero reconcile` must both refuse the
    workbook with exit 2 and submit nothing. Returns what `nero plan` said."""
    bad = {"id": "e", "command": "echo {{ x }}" + "".join(f" {{{{ {k} }}}}" for k in more), "notes": None,
           "seed": 1, "x": x, **more}
    workbook = write_workbook(project / "experiments.xlsx", [GOOD, bad])
    shown = nero("plan", str(workbook))
    assert shown.returncode == 2, shown.stdout + shown.stderr
    said = shown.stdout + shown.stderr
    assert "nothing was dispatched" in said
    ran = nero("reconcile", str(workbook), "-q")
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert not (project / "runs").exists()  # not even the good row ran: a bad workbook dispatches nothing
    if (project / ".nero" / "state.db").exists():
        with state_db(project) as con:
            assert con.execute("SELECT count(*) FROM runs").fetchone() == (0,)
            assert con.execute("SELECT count(*) FROM attempts").fetchone() == (0,)
    return " ".join(said.split())


CASES = [
    ("[1, 1.0]", "Experiments!E3: x: [1, 1.0] lists 1 twice (1 and 1.0 name the same run); remove one"),
    ("['1', 1]", "Experiments!E3: x: ['1', 1] lists 1 twice ('1' and 1 name the same run); remove one"),
    ("[true, 'true']", "Experiments!E3: x: [true, 'true'] lists true twice (true and 'true' name the same run); "
     "remove one"),
    ("linspace(1, 1.0000000000001, 3)", "Experiments!E3: x: linspace(1, 1.0000000000001, 3) gives 1 twice "
     "(values 1 and 2): its values differ only past the 12 significant digits a run key keeps"),
    ("logspace(-400, -350, 3)", "Experiments!E3: x: logspace(-400, -350, 3): 10^-400 is too close to 0 for a "
     "number (it would read as 0); logspace takes exponents from -307 to 308"),
    ("logspace(-1e308, 1, 5)", "Experiments!E3: x: logspace(-1e308, 1, 5): 10^-1e+308 is too close to 0"),
]


@pytest.mark.parametrize(("cell", "message"), CASES, ids=[c for c, _ in CASES])
def test_a_cell_that_would_give_one_key_twice_is_reported_at_its_cell(project: Path, cell: str, message: str):
    assert message in rejected(project, cell)


def test_a_grid_that_spells_one_key_twice_is_reported(project: Path):
    # x='a,y=b' with y='c', and x='a' with y='b,y=c', both read e[x=a,y=b,y=c]
    said = rejected(project, "['a,y=b', a]", y="[c, 'b,y=c']")
    assert ("Experiments!E3: two runs of this row get the run key e[x=a,y=b,y=c] (x='a,y=b', y='c' and "
            "x='a', y='b,y=c')") in said


@pytest.mark.parametrize(("cell", "message"), [
    ("logspace(0, 400, 3)", "10^400 is too large for a number (it would read as inf)"),
    ("logspace(-310, -300, 2)", "10^-310 is too close to 0 for a number"),
    ("linspace(-1e308, 1e308, 3)", "value 1 overflows (it would read as nan)"),
    ("linspace(0, 1e-320, 3)", "value 2 (5e-321) is too close to 0 for a number"),
    ("linspace(0, 1e400, 2)", "1e400 is too large for a number (it would read as inf)"),
    ("linspace(0, 0, 3)", "gives 0 twice (values 1 and 2)"),
    ("[1e400]", "1e400 is too large for a number (it would read as inf)"),
    ("[1e-400, 0]", "1e-400 is too close to 0 for a number"),
    ("[0.1, 0.1000000000001]", "lists 0.1 twice (0.1 and 0.1000000000001 name the same run: a run key keeps "
     "12 significant digits); remove one"),
    ("[0.1, 0.1]", "lists 0.1 twice; remove one"),
    ("[0, -0]", "lists 0 twice (0 and -0 name the same run)"),
    ("[a, 'a']", "lists a twice (a and 'a' name the same run)"),
    ("[nan, NaN]", "lists nan twice"),
])
def test_every_variation_is_checked_for_repeats_and_numbers_out_of_range(cell: str, message: str):
    with pytest.raises(ValueError) as info:
        parse_cell(cell)
    assert message in str(info.value)


def test_values_that_fit_still_expand():
    assert parse_cell("logspace(-307, 308, 2)").values == (1e-307, 1e308)
    assert parse_cell("range(100000000000000000000, 100000000000000000002)").values == (10**20, 10**20 + 1)
    assert parse_cell("[1, 2.5, 'x', true]").values == (1, 2.5, "x", True)
    assert parse_cell("linspace(-1, 1, 3)").values == (-1.0, 0.0, 1.0)


def test_the_planner_refuses_two_specs_with_one_key():
    # no sheet can produce this today (ids are unique and carry no '['): the planner's guard
    # holds for specs from anywhere, e.g. a new variation function that forgets its check
    def row(n: int) -> Experiment:
        return Experiment(id="e", row=n, command="echo {{ x }}", clusters=("local",), desired=Desired.RUN,
                          params=(("x", parse_cell("[1, 2]")),), cells=(("id", f"Experiments!A{n}"),
                                                                         ("x", f"Experiments!E{n}")))

    specs = expand(Workbook(path="x.xlsx", experiments=(row(2), row(5)), clusters=(Cluster("local"),)))
    with pytest.raises(WorkbookError) as info:
        plan(specs, {}, {"local": 8})
    assert info.value.exit_code == 2
    assert [(p.where, p.message.split(";")[0]) for p in info.value.problems] == [
        ("Experiments!E5", "the run key e[x=1] is made twice (by Experiments!E2 and Experiments!E5)"),
        ("Experiments!E5", "the run key e[x=2] is made twice (by Experiments!E2 and Experiments!E5)"),
    ]
    assert str(info.value).startswith("2 problems in the workbook; nothing was dispatched")
