"""Metrics-sheet patterns: which group is the value and which the step (one rule, in
`metric_patterns.py`), end to end through a real job, and `nero metrics test`.

`data/po_training_log.txt` is a user's real training log, verbatim; `data/rnn_training.log`
is lines of it with the epoch lines of the format he reported:
`12:00:07 Finished epoch 7 of rnn: training error 0.31, test error 0.42`.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from conftest import nero, state_db, write_workbook

from orchestrator.capture_report import capture_report
from orchestrator.metric_patterns import compile_metric_pattern
from orchestrator.model import MetricDef
from orchestrator.monitor import parse_output, trace_output

DATA = Path(__file__).parent / "data"
LOG = DATA / "rnn_training.log"
PO_LINE = b"12:00:07 Finished epoch 7 of rnn: training error 0.31, test error 0.42\n"
NATURAL = r"Finished epoch (?P<step>\d+) of \w+: .* test error ([0-9.]+)"
AMBIGUOUS = r"Finished epoch (\d+) of \w+: .* test error ([0-9.]+)"
TRAINING = r"Finished epoch (?P<step>\d+) of \w+: training error (?P<value>[0-9.]+)"
METRICS = [{"name": "test_error", "pattern": NATURAL}, {"name": "training_error", "pattern": TRAINING}]


# --------------------------------------------------------------------------- the rule
@pytest.mark.parametrize(("pattern", "value", "step"), [
    (r"loss=([\d.]+)", 1, False),                                   # the one unnamed group
    (r"loss=(?P<value>[\d.]+)", "value", False),                    # the group named value
    (NATURAL, 2, True),                                             # step named, value the unnamed one
    (r"(?P<step>\d+): loss (?P<value>[\d.]+)", "value", True),
    (r"(train|val) loss (?P<value>[\d.]+) at (\d+)", "value", False),  # beside value, unnamed groups are structure
    (r"(?:train|val) loss ([\d.]+)", 1, False),                     # plain groups do not count
])
def test_which_group_is_the_value_and_which_the_step(pattern: str, value: int | str, step: bool) -> None:
    mp = compile_metric_pattern(pattern)
    assert (mp.value, mp.step) == (value, step)


@pytest.mark.parametrize(("pattern", "says"), [
    (AMBIGUOUS, ["2 unnamed groups", "ambiguous", "name the value group: (?P<value>…)"]),
    (r"acc=\d+", ["no capture group", "parentheses", "(?P<value>…)"]),
    (r"epoch (?P<step>\d+)", ["no capture group"]),
    (r"epoch (?P<epoch>\d+) loss ([\d.]+)", ["group named 'epoch'", "(?P<step>…)"]),
    (r"loss (?P<loss>[\d.]+)", ["group named 'loss'", "(?P<value>…)"]),
    (r"loss=(", ["not a valid regular expression"]),
])
def test_every_other_layout_is_an_error_with_its_fix(pattern: str, says: list[str]) -> None:
    with pytest.raises(ValueError) as e:
        compile_metric_pattern(pattern)
    assert f"'{pattern}'" in str(e.value)  # the pattern as the user wrote it, not escaped
    for part in says:
        assert part in str(e.value)


def test_a_step_before_the_value_is_the_step_not_the_value() -> None:
    points, _ = parse_output(PO_LINE, (MetricDef("test_error", NATURAL),))
    assert [(p.name, p.value, p.step) for p in points] == [("test_error", 0.42, 7)]


def test_trace_output_is_parse_output_with_lines_and_patterns() -> None:
    data = LOG.read_bytes() + b"epoch=8 loss=0.5\nno newline at the end: acc=0.9"
    for defs in ((), tuple(MetricDef(**m) for m in METRICS)):
        traced = trace_output(data, defs)
        assert [c.point for c in traced] == parse_output(data, defs, final=True)[0]
    lines = data.decode().splitlines()
    assert [(c.line, c.point.name, c.point.step, c.pattern) for c in traced[-4:]] == [
        (28, "test_error", 7, NATURAL), (28, "training_error", 7, TRAINING),  # same place: in the sheet's order
        (35, "loss", 8, ""), (36, "acc", None, ""),
    ]
    assert "Finished epoch 7" in lines[27] and lines[35].endswith("acc=0.9")
    assert trace_output(b"x\n\nloss=1\n")[0].line == 3  # the fast path (no pattern) counts lines too


def test_the_report_sums_up_each_metric_and_says_why_a_pattern_took_nothing() -> None:
    defs = (MetricDef("test_error", NATURAL), MetricDef("valid_error", r"valid error ([\d.]+)"),
            MetricDef("lr", r"lr=(\w*)"))
    report = capture_report(LOG.read_bytes() + b"lr=fast loss=nan\n", defs)
    assert [(m.metric, m.count, m.first_step, m.last_step, m.pattern) for m in report.metrics] == [
        ("test_error", 7, 1, 7, NATURAL), ("loss", 1, None, None, "")]
    assert report.metrics[0].last_value == 0.42 and math.isnan(report.metrics[1].last_value)
    assert [(u.metric, u.reason) for u in report.unmatched] == [
        ("valid_error", "it matches no line"),
        ("lr", "it matches (first on line 35), but its value group holds 'fast', not a number")]
    assert report.as_dict()["metrics"][1]["last_value"] == "nan"  # JSON has no NaN


def test_the_real_log_gives_nothing_by_default() -> None:
    assert capture_report((DATA / "po_training_log.txt").read_bytes()).captures == ()


# --------------------------------------------------------------------------- the workbook
def test_a_pattern_that_breaks_the_rule_is_reported_at_its_cell(project: Path) -> None:
    write_workbook(project / "experiments.xlsx", [{"id": "rnn", "command": "cat train.log"}], metrics=[
        {"name": "test_error", "pattern": AMBIGUOUS},
        {"name": "training_error", "pattern": TRAINING},
        {"name": "valid_error", "pattern": r"valid error (?P<err>[\d.]+)"},
    ])
    for args in (["plan", str(project)], ["metrics", "test", str(LOG), str(project)]):
        proc = nero(*args)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "2 problems in the workbook" in proc.stderr  # all at once
        b2 = next(line for line in proc.stderr.splitlines() if "Metrics!B2:" in line)
        assert AMBIGUOUS in b2 and "name the value group: (?P<value>…)" in b2
        assert "Metrics!B4:" in proc.stderr and "group named 'err'" in proc.stderr


# --------------------------------------------------------------------------- end to end
def test_the_natural_pattern_records_the_value_at_its_step_through_a_real_job(project: Path) -> None:
    shutil.copy(LOG, project / "train.log")
    write_workbook(project / "experiments.xlsx", [{"id": "rnn", "command": "cat train.log"}], metrics=METRICS)
    proc = nero("reconcile", str(project), "--until-done", "--interval", "0.3", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [run] = json.loads(nero("status", str(project), "--json", check=True).stdout)
    assert run["state"] == "completed"
    assert run["metrics"] == {"test_error": 0.42, "training_error": 0.31} and run["step"] == 7
    with state_db(project) as con:
        rows = con.execute("SELECT step, value FROM metrics WHERE name='test_error' ORDER BY step").fetchall()
    assert rows == [(1, 0.66), (2, 0.57), (3, 0.51), (4, 0.47), (5, 0.45), (6, 0.43), (7, 0.42)]


# --------------------------------------------------------------------------- nero metrics test
def test_metrics_test_shows_what_each_line_gives(project: Path) -> None:
    write_workbook(project / "experiments.xlsx", [{"id": "rnn", "command": "cat train.log"}],
                   metrics=[*METRICS, {"name": "valid_error", "pattern": r"valid error ([\d.]+)"}])
    proc = nero("metrics", "test", str(LOG), str(project))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "34 lines" in lines[0] and "3 patterns" in lines[0]
    rows = [line.split() for line in lines if line.split()[:1] == ["28"]]
    assert rows == [["28", "test_error", "7", "0.42", *NATURAL.split()],
                    ["28", "training_error", "7", "0.31", *TRAINING.split()]]
    summary = next(line.split() for line in lines if line.startswith("test_error") and "0.42" in line)
    assert summary[:5] == ["test_error", "7", "1", "7", "0.42"]
    assert "pattern of valid_error took nothing" in proc.stderr and "matches no line" in proc.stderr

    brief = nero("metrics", "test", str(LOG), str(project), "--summary", check=True).stdout
    assert "Finished epoch" in brief and not any(line.split()[:1] == ["28"] for line in brief.splitlines())

    out = json.loads(nero("metrics", "test", str(LOG), str(project), "--json", check=True).stdout)
    assert out["workbook"].endswith("experiments.xlsx") and out["lines"] == 34
    assert {"line": 28, "metric": "test_error", "step": 7, "value": 0.42, "pattern": NATURAL} in out["captures"]
    assert out["unmatched"] == [{"metric": "valid_error", "pattern": r"valid error ([\d.]+)",
                                 "reason": "it matches no line"}]
    # found as every command finds its workbook: ./experiments.xlsx
    assert json.loads(nero("metrics", "test", str(LOG), "--json", cwd=project, check=True).stdout)["captures"]


def test_metrics_test_without_a_workbook_uses_the_default_capture(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_bytes(LOG.read_bytes() + b"epoch=8 loss=0.25 val_loss: 0.5\n")
    proc = nero("metrics", "test", str(log), cwd=tmp_path, env={"NERO_WORKBOOK": ""})
    assert proc.returncode == 0 and "no workbook" in proc.stdout
    rows = [line.split() for line in proc.stdout.splitlines() if line.split()[:1] == ["35"]]
    assert rows == [["35", "loss", "8", "0.25", "name=value", "(default)"],
                    ["35", "val_loss", "8", "0.5", "name=value", "(default)"]]
    assert "Finished epoch" in nero("metrics", "test", "--help", check=True).stdout
