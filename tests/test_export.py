"""`nero export` written a batch of runs at a time (`Project.run_frames`, `metric_frames`,
`frames.export`): the files are those of the frame of every run at once, byte for byte; a
column's type is decided from every run (a whole-number parameter some rows lack is 3, not
3.0), a parameter named like one of the frame's own columns is kept as `<name> (param)`;
.csv, .json and .parquet (pyarrow, the `parquet` extra) read back as the frame."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import nero, write_workbook

from orchestrator.frames import concat, export, json_ready
from orchestrator.project import Project

STEP = """\
import sys, time
n = int(sys.argv[1])
for i in range(1, n + 1):
    print(f"epoch={i} loss={1 / i:.4f}" + (f" acc={i / 10}" if n > 3 else ""), flush=True)
    time.sleep(0.01)
"""


def _mixed(project: Path) -> Path:
    """Six runs whose parameters differ row to row (an int some rows lack, text, a truth
    value, a mixture of text and a number, one named `host`), one restarted: two attempts."""
    (project / "step.py").write_text(STEP)
    workbook = project / "experiments.xlsx"
    write_workbook(workbook, [
        {"id": "a", "command": "python step.py {{ n }}", "n": "[2, 4, 6]", "opt": "adam", "flag": True},
        {"id": "b", "command": "python step.py 5", "lr": "[0.1, 1]", "flag": False, "host": "x"},
        {"id": "c", "command": "python step.py 3", "opt": 7},
    ])
    nero("reconcile", str(workbook), "--until-done", "--interval", "0.3", "-q", check=True, timeout=120)
    nero("restart", str(workbook), "c", "--yes", check=True)
    nero("reconcile", str(workbook), "--until-done", "--interval", "0.3", "-q", "--yes", check=True, timeout=120)
    return workbook


def test_the_export_written_a_batch_at_a_time_is_the_frame_of_every_run(project: Path):
    workbook = _mixed(project)
    with Project(workbook) as p, p.reading():
        whole = concat(p.run_frames(size=1_000_000))
        batches = list(p.run_frames(size=2))
        points = concat(p.metric_frames())
        point_batches = list(p.metric_frames(points=5))
    with Project(workbook) as p:  # outside a read transaction: it keeps the earlier histories
        attempts = p.attempts_frame()

    # the same columns of the same types in every batch: the batches are the whole frame
    assert len(batches) == 3 and all(list(b.dtypes.items()) == list(whole.dtypes.items()) for b in batches)
    pd.testing.assert_frame_equal(concat(batches), whole)
    assert len(point_batches) > 3
    pd.testing.assert_frame_equal(concat(point_batches).reset_index(drop=True), points)

    # each column's type from every run; the parameters between `experiment` and `state`
    assert list(whole.columns[:8]) == ["number", "experiment", "n", "opt", "flag", "lr", "host (param)", "state"]
    types = {c: str(t) for c, t in whole.dtypes.items()}
    assert (types["n"], types["flag"], types["lr"], types["opt"]) == ("Int64", "boolean", "float64", "object")
    assert whole.loc["a[n=4]", "n"] == 4 and pd.isna(whole.loc["c", "n"])
    assert whole.loc["b[lr=1]", "host (param)"] == "x" and whole.loc["b[lr=1]", "host"] not in ("x", "")
    assert whole.loc["c", "opt"] == 7 and whole.loc["a[n=2]", "opt"] == "adam"
    assert [c for c in whole.columns if ":" in c] == ["last:acc", "last:loss", "best:acc", "best:loss"]
    assert whole.loc["c", "attempt"] == 2 and list(attempts[["run", "attempt"]].itertuples(index=False)) == [("c", 1)]
    assert sorted(set(points[points["run"] == "c"]["attempt"])) == [1, 2]

    # CSV: written a batch at a time, byte for byte the whole frame's
    written = export(batches, point_batches, project / "x.csv", attempts)
    assert [w.name for w in written] == ["x.csv", "x-metrics.csv", "x-attempts.csv"]
    assert (project / "x.csv").read_text() == whole.to_csv()
    assert (project / "x-metrics.csv").read_text() == points.to_csv(index=False)
    assert pd.read_csv(project / "x.csv").loc[1, "n"] == 4  # "4", not "4.0"
    assert not list(project.glob(".*.part"))

    # JSON: as json.dumps lays the whole out, the rows those of the frame
    export(batches, point_batches, project / "x.json", attempts)
    text = (project / "x.json").read_text()
    got = json.loads(text)
    assert text == json.dumps(got, indent=1)
    assert got["runs"] == json.loads(json.dumps(json_ready(whole.reset_index().to_dict(orient="records")), default=str))
    assert len(got["metrics"]) == len(points) and [a["run"] for a in got["attempts"]] == ["c"]
    assert got["runs"][1]["n"] == 4 and got["runs"][4]["n"] is None

    # Parquet: read back, the frame (a mixed column as text)
    export(batches, point_batches, project / "x.parquet", attempts)
    back = pd.read_parquet(project / "x.parquet")
    expected = whole.assign(opt=whole["opt"].map(lambda v: None if v is None or v != v else str(v)).astype("str"))
    pd.testing.assert_frame_equal(back, expected, check_index_type=False)
    pd.testing.assert_frame_equal(pd.read_parquet(project / "x-metrics.parquet"), points)
    assert list(pd.read_parquet(project / "x-attempts.parquet")["run"]) == ["c"]

    # the command writes the same files
    out = nero("export", str(workbook), "-o", str(project / "cli.csv"), check=True).stdout
    assert "6 runs, 1 earlier attempt," in out and f"{len(points)} metric points" in out
    assert (project / "cli.csv").read_text() == whole.to_csv()


def test_an_export_before_any_run_writes_the_headers(project: Path):
    workbook = project / "experiments.xlsx"
    write_workbook(workbook, [{"id": "a", "command": "true", "n": "[1, 2]"}])
    out = nero("export", str(workbook), "-o", str(project / "e.csv"), check=True).stdout
    assert "0 runs, 0 earlier attempts, 0 metric points" in out
    assert (project / "e.csv").read_text().splitlines() == [
        "run,number,experiment,state,reason,attempt,cluster,job_id,host,who,start,end,runtime_s,git_commit,git_dirty"]
    assert (project / "e-metrics.csv").read_text() == "run,attempt,metric,step,value\n"
    nero("export", str(workbook), "-o", str(project / "e.json"), check=True)
    assert json.loads((project / "e.json").read_text()) == {"runs": [], "metrics": [], "attempts": []}


def test_a_parquet_export_without_pyarrow_names_the_extra_and_writes_nothing(project: Path):
    workbook = project / "experiments.xlsx"
    write_workbook(workbook, [{"id": "a", "command": "true"}])
    code = ("import sys; sys.modules['pyarrow'] = None; from orchestrator.cli import main; "
            f"main(['export', {str(workbook)!r}, '-o', {str(project / 'x.parquet')!r}])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "pip install 'nero[parquet]'" in proc.stderr
    assert sorted(p.name for p in project.iterdir() if "parquet" in p.name) == []


@pytest.mark.parametrize("kinds, everywhere, dtype", [
    ({"integer"}, True, "int64"), ({"integer"}, False, "Int64"), ({"integer", "null"}, True, "Int64"),
    ({"integer", "real"}, True, "float64"), ({"real"}, False, "float64"), ({"true", "false"}, True, "bool"),
    ({"true"}, False, "boolean"), ({"text"}, False, "str"), ({"text", "integer"}, True, "object"),
    ({"null"}, False, "object"),
])
def test_a_parameter_column_type_is_decided_from_every_run(kinds, everywhere, dtype):
    from orchestrator.frames import param_dtype

    assert param_dtype(kinds, everywhere) == dtype


def test_values_read_the_workbook_unchecked_and_a_plan_after_them_still_checks_it(project: Path):
    """What shows values reads the workbook's goals and checkpoints without deciding a run
    (after an edit, 100,000 runs' worth of work and memory); a plan in the same process
    checks it first: a run whose command does not render is still an error at its cell."""
    from orchestrator.errors import WorkbookError

    workbook = project / "experiments.xlsx"
    write_workbook(workbook, [{"id": "z", "command": "python -c 'print({{ 1 / lr }})'", "lr": 0}],
                   settings={"checkpoints": "10, 20"})
    with Project(workbook) as p:
        assert p.checkpoints() == (10, 20) and p.workbook is not None
        with pytest.raises(WorkbookError) as raised:
            p.plan()
    assert "Experiments!" in str(raised.value) and "division by zero" in str(raised.value)
    assert nero("export", str(workbook), "-o", str(project / "x.csv")).returncode == 0
    proc = nero("plan", str(workbook))
    assert proc.returncode == 2 and "division by zero" in proc.stderr
