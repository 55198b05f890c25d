"""Distributions of sampled cells: parsing, their errors, and reproducible draws (space.py)."""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.space import (
    SIGNIFICANT_DIGITS,
    Distribution,
    draw,
    hash_uniform,
    parse_distribution,
)

ROOT = Path(__file__).resolve().parents[1]

# pinned: a change of the hash, a transform or the rounding fails here (seed 7, experiment
# "sweep", parameter "x", samples 1 to 4)
PINNED = {
    "uniform(0, 1)": [0.253796, 0.66251, 0.639204, 0.558455],
    "loguniform(1e-5, 1e-1)": [0.000103558, 0.00446724, 0.00360426, 0.00171325],
    "randint(1, 8)": [3, 6, 6, 5],
    "choice(adam, sgd, rmsprop)": ["adam", "sgd", "sgd", "sgd"],
    "normal(10, 2)": [8.67481, 10.8386, 10.7127, 10.2941],
}


def draws(cell: str, seed: int = 7, n: int = 4) -> list:
    dist = parse_distribution(cell)
    assert dist is not None
    return [draw(dist, hash_uniform(seed, "sweep", "x", i)) for i in range(1, n + 1)]


def test_pinned_draws() -> None:
    assert hash_uniform(7, "sweep", "x", 1) == 0.25379553726513265
    for cell, expected in PINNED.items():
        got = draws(cell)
        assert got == expected, cell
        assert [type(v) for v in got] == [type(v) for v in expected]


def test_same_draws_in_another_process_with_another_hash_seed() -> None:
    """Another interpreter with another PYTHONHASHSEED (as another machine would) draws the same."""
    code = ("from orchestrator.space import parse_distribution, draw, hash_uniform\n"
            "import json, sys\n"
            "cells = json.loads(sys.argv[1])\n"
            "print(json.dumps({c: [draw(parse_distribution(c), hash_uniform(7, 'sweep', 'x', i)) for i in range(1, 5)]"
            " for c in cells}))\n")
    import json
    for hash_seed in ("0", "12345"):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", code, json.dumps(list(PINNED))], env=env, check=True,
                             capture_output=True, text=True).stdout
        assert json.loads(out) == PINNED


def test_a_sample_does_not_depend_on_the_others() -> None:
    assert draws("uniform(0, 1)", n=10)[:4] == PINNED["uniform(0, 1)"]
    assert draws("uniform(0, 1)", seed=8) != PINNED["uniform(0, 1)"]
    assert hash_uniform(7, "sweep", "x", 1) != hash_uniform(7, "sweep", "y", 1)
    assert hash_uniform(7, "sweep", "x", 1) != hash_uniform(7, "sweep2", "x", 1)


def test_parsed_distributions() -> None:
    assert parse_distribution("uniform(0.1, 0.5)") == Distribution("uniform", (0.1, 0.5))
    assert parse_distribution(" LogUniform(1e-5,1e-1) ") == Distribution("loguniform", (1e-5, 0.1))
    assert parse_distribution("randint(-2, 8)") == Distribution("randint", (-2, 8))
    assert parse_distribution("choice(adam, 'a, b', 3, true)") == Distribution("choice", ("adam", "a, b", 3, True))
    assert parse_distribution("normal(0, 1)") == Distribution("normal", (0.0, 1.0))
    assert str(parse_distribution("choice(adam, 'a, b', 3)")) == "choice(adam, 'a, b', 3)"
    for plain in ("uniform", "adam", "[1, 2]", "range(3)", "0.5", 3, None, "uniformly(0, 1)"):
        assert parse_distribution(plain) is None, plain


@pytest.mark.parametrize(("cell", "message"), [
    ("uniform(5, 1)", "low end must be below the high end"),
    ("uniform(1, 1)", "low end must be below the high end"),
    ("loguniform(0, 1)", "loguniform needs a low end above 0"),
    ("loguniform(-1, 1)", "loguniform needs a low end above 0"),
    ("uniform(a, 1)", "'a' is not a number"),
    ("randint(1.5, 3)", "randint takes whole numbers"),
    ("randint(3, 3)", "low end must be below the high end"),
    ("choice(adam)", "a choice needs at least two"),
    ("normal(0, 0)", "sigma must be above 0"),
    ("normal(0, -1)", "sigma must be above 0"),
    ("uniform(0, 1", "missing its closing ')'"),
    ("uniform(0, 1) x", "text after the closing ')'"),
    ("uniform(0, 1, 2)", "uniform takes 2 arguments, not 3"),
    ("uniform()", "uniform takes 2 arguments, not 0"),
    ("uniform(, 1)", "empty argument"),
    ("uniform(1e999, 2)", "does not fit a number"),
    ("choice('a, b)", "unclosed quote"),
    ("choice(1e999, 2)", "too large for a number"),
])
def test_bad_distributions(cell: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_distribution(cell)


def test_draws_cover_their_range() -> None:
    """The transforms at the ends of u and their shape over many draws."""
    u = [hash_uniform(1, "e", "p", i) for i in range(4000)]
    assert all(0 < x < 1 for x in u)
    assert abs(statistics.fmean(u) - 0.5) < 0.02
    ints = [draw(Distribution("randint", (1, 3)), x) for x in u]
    assert set(ints) == {1, 2, 3} and all(abs(ints.count(k) / len(ints) - 1 / 3) < 0.03 for k in (1, 2, 3))
    assert draw(Distribution("randint", (1, 3)), 0.0) == 1
    assert draw(Distribution("randint", (1, 3)), math.nextafter(1.0, 0)) == 3
    assert draw(Distribution("choice", ("a", "b")), math.nextafter(1.0, 0)) == "b"
    logs = [draw(Distribution("loguniform", (1e-4, 1.0)), x) for x in u]
    assert all(1e-4 <= v <= 1 for v in logs)
    assert abs(sum(v < 1e-2 for v in logs) / len(logs) - 0.5) < 0.03  # half the draws below the geometric middle
    normals = [draw(Distribution("normal", (10.0, 2.0)), x) for x in u]
    assert abs(statistics.fmean(normals) - 10) < 0.15 and abs(statistics.stdev(normals) - 2) < 0.1
    assert math.isfinite(draw(Distribution("normal", (0.0, 1.0)), 0.0))
    assert draw(Distribution("uniform", (2.0, 4.0)), 0.5) == 3.0


def test_rounded_draws_stay_within_their_bounds() -> None:
    """6 significant digits would take 0.12345669 above 0.1234567: the bound is drawn instead."""
    top = math.nextafter(1.0, 0)
    assert draw(Distribution("uniform", (0.0, 0.1234567)), top) == 0.1234567
    assert draw(Distribution("loguniform", (1.0000001, 2.0)), 0.0) == 1.0000001
    assert draw(Distribution("uniform", (0.0, 1.0)), top) == 1.0  # both ends can be drawn once rounded
    assert draw(Distribution("uniform", (0.0, 1.0)), 0.0) == 0.0


def test_drawn_floats_are_rounded() -> None:
    for cell in ("uniform(0, 1)", "loguniform(1e-5, 1e-1)", "normal(10, 2)"):
        for v in draws(cell, n=50):
            assert float(f"{v:.{SIGNIFICANT_DIGITS}g}") == v
