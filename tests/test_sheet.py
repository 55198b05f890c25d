"""Reading and validating real experiments workbooks (xlsx files written with openpyxl),
the example workbook, and the example training program it runs."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import openpyxl
import pytest

from orchestrator.errors import WorkbookError
from orchestrator.model import After, ClusterKind, Desired, Until, Variation
from orchestrator.sheet import (
    CLUSTER_COLUMNS,
    EXPERIMENT_COLUMNS,
    lock_file,
    read_workbook,
    write_example_workbook,
)
from orchestrator.spec import expand

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "templates" / "project" / "train.py"
CMD = "python train.py --lr {{ lr }}"


def write_xlsx(path: Path, sheets: dict[str, list[list[object]]]) -> Path:
    book = openpyxl.Workbook()
    book.remove(book.active)
    for title, rows in sheets.items():
        ws = book.create_sheet(title)
        for row in rows:
            ws.append(row)
    book.save(path)
    return path


def problems_of(path: Path) -> dict[str, str]:
    with pytest.raises(WorkbookError) as info:
        read_workbook(path)
    assert info.value.exit_code == 2
    return {p.where: p.message for p in info.value.problems}


# ---------------------------------------------------------------------------- the example


def test_example_reads_back_clean(tmp_path: Path) -> None:
    wb = read_workbook(write_example_workbook(tmp_path / "experiments.xlsx"))
    demo, held = wb.experiments
    assert (demo.id, demo.row, demo.desired, held.desired) == ("demo", 2, Desired.RUN, Desired.HOLD)
    assert dict(demo.params)["lr"] == Variation("[0.01, 0.1, 3.0]", (0.01, 0.1, 3.0))
    assert demo.rules == "isnan(loss) or isinf(loss); plateau(val_loss, 5)"
    assert demo.notify == ("failed", "terminated")
    assert held.after == (After("demo", Until.FINISHED),)  # demo ends with terminated runs: #13
    runs = [s for s in expand(wb) if s.experiment == "demo"]
    assert len(runs) == 6 and "demo[lr=0.01,layers=0]" in {s.key for s in runs}
    assert [c.name for c in wb.clusters] == ["local"] and wb.clusters[0].max_jobs is None
    assert [(m.name, m.goal) for m in wb.metrics] == [("loss", "min"), ("val_loss", "min"), ("acc", "max")]
    s = wb.settings
    assert (s.results, s.interval, s.digest, s.primary_metric, s.checkpoints) == (
        "results.xlsx", 5.0, "off", "val_loss", (5, 10, 20))


def test_example_is_annotated(tmp_path: Path) -> None:
    book = openpyxl.load_workbook(write_example_workbook(tmp_path / "e.xlsx"))
    assert book.sheetnames == ["Experiments", "Clusters", "Metrics", "Settings"]
    for ws in book.worksheets:
        headers = [c for c in ws[1] if c.value is not None]
        assert headers and all(c.comment and len(c.comment.text) > 10 for c in headers), ws.title
        assert all(c.font.b for c in headers) and ws.freeze_panes == "A2"
    assert {h.value for h in book["Experiments"][1]} >= set(EXPERIMENT_COLUMNS)
    assert [h.value for h in book["Clusters"][1]] == list(CLUSTER_COLUMNS)
    lists = {ws.title: [dv.formula1 for dv in ws.data_validations.dataValidation] for ws in book.worksheets}
    assert '"run,hold,stop"' in lists["Experiments"]
    assert '"local,ssh,slurm,sge"' in lists["Clusters"]


def test_shipped_example_is_current(tmp_path: Path) -> None:
    """sheets/experiments.xlsx must match write_example_workbook (run sheets/regenerate.py)."""
    fresh = openpyxl.load_workbook(write_example_workbook(tmp_path / "e.xlsx"))
    shipped = openpyxl.load_workbook(ROOT / "sheets" / "experiments.xlsx")
    for ws in fresh.worksheets:
        old = shipped[ws.title]
        cells = [(c.coordinate, c.value, c.comment.text if c.comment else None) for r in ws.iter_rows() for c in r]
        assert cells == [(c.coordinate, c.value, c.comment.text if c.comment else None)
                         for r in old.iter_rows() for c in r], "run: python sheets/regenerate.py"
    read_workbook(ROOT / "sheets" / "experiments.xlsx")


# ---------------------------------------------------------------------------- every mistake at once


def test_every_problem_is_reported_with_its_cell(tmp_path: Path) -> None:
    ok = ["ok", "python t.py --lr {{ lr }}", "local", "run", 2, "2h", "4G", "[0.1, 0.01]", None, "failed", 1]
    experiments = [
        ["id", "command", "cluster", "state", "cpus", "time", "mem", "lr", "after", "notify", "retries", "rules"],
        ok,
        ["OK", "python t.py"],                                   # A3 duplicate id (case-insensitive)
        ["bad id!", "python t.py"],                              # A4 invalid id
        [None, "python t.py"],                                   # A5 missing id
        ["no-cmd"],                                              # B6 missing command
        ["var", "t.py {{ lr }} {{ nope }}", None, None, None, None, None, 1],  # B7 undefined variable
        ["jinja", "t.py {{ lr "],                                # B8 template syntax
        ["clu", "t.py", "moon"],                                 # C9 unknown cluster
        ["st", "t.py", None, "go"],                              # D10 unknown state
        ["cpu", "t.py", None, None, "four"],                     # E11 not a number
        ["tm", "t.py", None, None, None, "soon"],                # F12 not a duration
        ["mem", "t.py", None, None, None, None, "lots"],         # G13 not a size
        ["vary", "t.py", None, None, None, None, None, "[0.1, 0.2"],  # H14 variation syntax
        ["aft", "t.py", None, None, None, None, None, None, "ghost"],  # I15 unknown experiment
        ["ntf", "t.py", None, None, None, None, None, None, None, "failed, exploded"],  # J16
        ["ret", "t.py", None, None, None, None, None, None, None, None, -1],  # K17 negative
        ["frm", "t.py", None, None, None, None, None, "=1+1"],   # H18 formula without value
        ["rl", "t.py", *[None] * 9, "isnan(loss); loss >"],      # L19 rule syntax
    ]
    clusters = [
        ["name", "kind", "host", "port"],
        ["gpu", "ssh"],                                          # C2 ssh without host
        ["gpu", "ssh", "h2"],                                    # A3 duplicate cluster
        ["hpc", "pbs", "h"],                                     # B4 unknown kind
        ["x", "slurm", "h", "ssh-port"],                         # D5 not a number
    ]
    metrics = [
        ["name", "pattern", "goal"],
        ["loss", "loss=("],                                      # B2 bad regex
        ["acc", r"acc=\d+"],                                     # B3 no group
        ["f1", None, "up"],                                      # C4 bad goal
    ]
    settings = [
        ["key", "value"],
        ["interval", "often"],                                   # B2
        ["digest", "weekly"],                                    # B3
        ["smtp_port", "abc"],                                    # B4
        ["checkpoints", "10, x"],                                # B5
        ["colour", "blue"],                                      # A6 unknown key
        ["smtp_security", "tls"],                                # B7
        ["default_cluster", "moon"],                             # B8
        ["smtp_password", "hunter2"],                            # A9 secret
    ]
    path = write_xlsx(tmp_path / "bad.xlsx", {"Experiments": experiments, "Clusters": clusters,
                                              "Metrics": metrics, "Settings": settings})
    found = problems_of(path)
    expected = {
        "Experiments!A3": ["duplicate", "Experiments!A2"],
        "Experiments!A4": ["'bad id!'", "letters, digits"],
        "Experiments!A5": ["missing id"],
        "Experiments!B6": ["missing command", "{{ lr }}"],
        "Experiments!B7": ["{{ nope }}", "no parameter column", "lr"],
        "Experiments!B8": ["not a valid template"],
        "Experiments!C9": ["'moon'", "local, gpu, hpc, x"],
        "Experiments!D10": ["'go'", "run, hold, stop"],
        "Experiments!E11": ["'four'", "whole number", "cpus"],
        "Experiments!F12": ["'soon'", "HH:MM:SS", "2h"],
        "Experiments!G13": ["'lots'", "4G"],
        "Experiments!H14": ["closing ']'", "lr"],
        "Experiments!I15": ["'ghost'", "unknown experiment"],
        "Experiments!J16": ["'exploded'", "started, completed, failed, terminated, lost, warn"],
        "Experiments!K17": ["at least 0", "retries"],
        "Experiments!H18": ["formula =1+1 has no saved value", "LibreOffice"],
        "Experiments!L19": ["rule 2", "ends too early", "plateau(val_loss, 10)"],
        "Clusters!C2": ["needs a host"],
        "Clusters!A3": ["'gpu'", "twice", "Clusters!A2"],
        "Clusters!B4": ["'pbs'", "local, ssh, slurm, sge"],
        "Clusters!D5": ["'ssh-port'", "port"],
        "Metrics!B2": ["not a valid regular expression"],
        "Metrics!B3": ["no capture group", "parentheses"],
        "Metrics!C4": ["'up'", "min, max"],
        "Settings!B2": ["'often'", "interval"],
        "Settings!B3": ["'weekly'", "daily at 08:00"],
        "Settings!B4": ["'abc'", "smtp_port"],
        "Settings!B5": ["checkpoints", "10, 50, 200"],
        "Settings!A6": ["'colour'", "valid settings", "default_cluster"],
        "Settings!B7": ["'tls'", "starttls, ssl, none"],
        "Settings!B8": ["'moon'", "local, gpu, hpc, x"],
        "Settings!A9": ["secrets never go in the workbook", "keyring"],
    }
    assert set(found) == set(expected)
    assert list(found)[:3] == ["Experiments!A3", "Experiments!A4", "Experiments!A5"]  # reading order
    assert list(found)[-1] == "Settings!A9"
    for where, words in expected.items():
        for word in words:
            assert word in found[where], (where, word, found[where])


def test_error_text_names_every_cell(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "e.xlsx", {"Experiments": [["id", "command", "cpus"], ["a", "x", "abc"], ["b!", "y"]]})
    with pytest.raises(WorkbookError) as info:
        read_workbook(path)
    text = str(info.value)
    assert "2 problems" in text and "Experiments!C2: 'abc' is not a whole number for cpus" in text
    assert "Experiments!A3" in text


# ---------------------------------------------------------------------------- structure


def test_headers_are_case_insensitive_and_order_free(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "e.xlsx", {
        "experiments": [[" Notes", "LR", "Command ", "STATE", "ID", "Epochs"],
                        ["hi", "[1, 2]", "run {{ LR }}", "Hold", "x", 3]],
        "CLUSTERS": [["Kind", "NAME", "Max Jobs"], ["local", "local", 2]],
        "settings": [["Interval", "2m"]],
    })
    wb = read_workbook(path)
    (exp,) = wb.experiments
    assert (exp.id, exp.command, exp.desired) == ("x", "run {{ LR }}", Desired.HOLD)
    assert exp.params == (("LR", Variation("[1, 2]", (1, 2))), ("Epochs", 3))
    assert wb.clusters[0].max_jobs == 2 and wb.settings.interval == 120.0


def test_unknown_columns_are_parameters_in_column_order(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "e.xlsx", {"Experiments": [
        ["seed", "id", "optimizer", "command", "dropout", "notes"],
        [1, "a", "adam", "t {{ seed }} {{ optimizer }} {{ dropout }}", 0.5, "x"],
        [None, "b", "sgd", "t {{ optimizer }}", None, None],
    ]})
    a, b = read_workbook(path).experiments
    assert a.params == (("seed", 1), ("optimizer", "adam"), ("dropout", 0.5))
    assert b.params == (("optimizer", "sgd"),)  # empty cells: the row does not use them


def test_empty_parameter_used_by_the_command_is_reported(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "e.xlsx", {"Experiments": [
        ["id", "command", "lr"], ["a", "t {{ lr }}", 0.1], ["b", "t {{ lr }}"], ["c", "t {{ Lr }}", 1]]})
    found = problems_of(path)
    assert set(found) == {"Experiments!B3", "Experiments!B4"}
    assert "Experiments!C3 is empty" in found["Experiments!B3"]
    assert "called 'lr'" in found["Experiments!B4"]


def test_builtins_and_resources_may_be_used_in_the_command(tmp_path: Path) -> None:
    cmd = "t {{ run_key }} {{ run_dir }} {{ attempt }} {{ experiment }} {{ resume }} {{ cpus }}"
    path = write_xlsx(tmp_path / "e.xlsx", {"Experiments": [["id", "command", "cpus"], ["a", cmd, 4], ["b", cmd]]})
    found = problems_of(path)
    assert set(found) == {"Experiments!B3"} and "sets no cpus; fill in Experiments!C3" in found["Experiments!B3"]
    path = write_xlsx(tmp_path / "f.xlsx", {"Experiments": [["id", "command", "cpus"], ["a", cmd, 4]]})
    assert read_workbook(path).experiments[0].command == cmd


def test_variations_expand_to_a_grid(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "e.xlsx", {"Experiments": [
        ["id", "command", "lr", "layers", "opt", "epochs"],
        ["g", "t {{ lr }} {{ layers }} {{ opt }}", "logspace(-3, -1, 3)", "range(1, 3)", "['adam', 'sgd']", 5],
    ]})
    keys = [s.key for s in expand(read_workbook(path))]
    assert len(keys) == 12 and keys[0] == "g[lr=0.001,layers=1,opt=adam]"


def test_blank_rows_are_skipped_and_rows_keep_their_numbers(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "e.xlsx", {"Experiments": [
        ["id", "command"], [None, None], ["a", "x"], ["  ", ""], ["b", "y"]]})
    assert [(e.id, e.row) for e in read_workbook(path).experiments] == [("a", 3), ("b", 5)]


def test_missing_sheet_and_missing_columns(tmp_path: Path) -> None:
    found = problems_of(write_xlsx(tmp_path / "a.xlsx", {"Runs": [["id"]], "Settings": [["interval", 5]]}))
    assert set(found) == {"Experiments"} and "sheets found: Runs, Settings" in found["Experiments"]
    found = problems_of(write_xlsx(tmp_path / "b.xlsx", {"Experiments": [["name", "cmd"], ["a", "x"]]}))
    assert set(found) == {"Experiments!1"}
    assert "no id and no command column" in found["Experiments!1"] and "name, cmd" in found["Experiments!1"]


def test_only_experiments_is_required_and_local_always_exists(tmp_path: Path) -> None:
    wb = read_workbook(write_xlsx(tmp_path / "e.xlsx", {"Experiments": [["id", "command", "cluster"], ["a", "x", "local"]]}))
    assert wb.clusters[0].kind is ClusterKind.LOCAL and wb.metrics == () and wb.settings.interval == 30.0


def test_clusters_and_resources_are_normalised(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "e.xlsx", {
        "Experiments": [["id", "command", "cluster", "time", "mem", "cpus", "gpus", "partition"],
                        ["a", "x", "hpc, box", "1-02:00:00", "4G", "8", 1, "gpu"],
                        ["b", "x", None, 90, 512, None, None, None],
                        ["c", "x", None, "1h30m", "1.5 GB", None, None, None],
                        ["d", "x", None, "00:00:30", "500M", None, None, None]],
        "Clusters": [["name", "kind", "host", "user", "port", "max_jobs", "gpus"],
                     ["hpc", "SLURM", "login", "ana", 2222, 50, "a100:4"],
                     ["box", "ssh", "gpu01", None, None, None, 2]],
        "Settings": [["key", "value"], ["default_cluster", "box"], ["digest", "Every 6  Hours"],
                     ["email_to", "a@x.org; b@y.org"], ["checkpoints", 50], ["min_free_disk", "10G"]],
    })
    wb = read_workbook(path)
    a, b, c, d = wb.experiments
    assert a.clusters == ("hpc", "box") and b.clusters == ()
    assert a.resources == (("time", 1560), ("cpus", 8), ("mem", 4096), ("gpus", 1), ("partition", "gpu"))
    assert dict(b.resources) == {"time": 90, "mem": 512}
    assert dict(c.resources) == {"time": 90, "mem": 1536}
    assert dict(d.resources) == {"time": 1, "mem": 500}
    hpc = wb.cluster("hpc")
    assert (hpc.kind, hpc.port, hpc.max_jobs, hpc.gpus) == (ClusterKind.SLURM, 2222, 50, "a100:4")
    assert [c.name for c in wb.clusters] == ["local", "hpc", "box"]
    s = wb.settings
    assert (s.default_cluster, s.digest, s.email_to, s.checkpoints) == ("box", "every 6 hours", ("a@x.org", "b@y.org"), (50,))


def test_after_cycles_and_giant_grids_are_reported(tmp_path: Path) -> None:
    found = problems_of(write_xlsx(tmp_path / "e.xlsx", {"Experiments": [
        ["id", "command", "after", "a", "b"],
        ["x", "t", "y"], ["y", "t", "x"], ["z", "t", "z"],
        ["big", "t", None, "range(1000)", "range(101)"],
    ]}))
    assert "cycle" in found["Experiments!C2"] and "itself" in found["Experiments!C4"]
    assert "101,000 runs" in found["Experiments!A5"] and "100,000" in found["Experiments!A5"]


def test_bad_parameter_headers(tmp_path: Path) -> None:
    found = problems_of(write_xlsx(tmp_path / "e.xlsx", {"Experiments": [
        ["id", "command", "batch size", "attempt", "lr", "LR", None],
        ["a", "t", 1, 2, 3, 4, "orphan"]]}))
    assert set(found) == {"Experiments!C1", "Experiments!D1", "Experiments!F1", "Experiments!G2"}
    assert "batch_size" in found["Experiments!C1"] and "built in" in found["Experiments!D1"]
    assert "twice" in found["Experiments!F1"] and "no header" in found["Experiments!G2"]


def test_shell_metacharacters_are_read_verbatim(tmp_path: Path) -> None:
    evil = "a'; echo pwned"
    wb = read_workbook(write_xlsx(tmp_path / "e.xlsx", {"Experiments": [["id", "command", "name"], ["a", "t {{ name }}", evil]]}))
    assert wb.experiments[0].params == (("name", evil),)


def test_results_may_not_overwrite_the_workbook(tmp_path: Path) -> None:
    found = problems_of(write_xlsx(tmp_path / "e.xlsx", {"Experiments": [["id", "command"]],
                                                         "Settings": [["results", "e.xlsx"]]}))
    assert "overwrite" in found["Settings!B1"]


# ---------------------------------------------------------------------------- formulas


def test_formula_without_saved_value_is_reported(tmp_path: Path) -> None:
    found = problems_of(write_xlsx(tmp_path / "f.xlsx", {"Experiments": [
        ["id", "command", "lr"], ["=\"a\"&\"b\"", "t {{ lr }}", "=0.1*2"]]}))
    assert set(found) == {"Experiments!A2", "Experiments!C2"}
    assert found["Experiments!C2"].startswith("formula =0.1*2 has no saved value; open and save the workbook")


@pytest.mark.skipif(shutil.which("soffice") is None, reason="LibreOffice (soffice) is not installed")
def test_formula_with_saved_value_reads_its_value(tmp_path: Path) -> None:
    source = write_xlsx(tmp_path / "in.xlsx", {"Experiments": [
        ["id", "command", "lr", "name"], ["f", "t {{ lr }} {{ name }}", "=0.1*2", "=\"a\"&\"b\""]]})
    out, profile = tmp_path / "out", tmp_path / "profile"
    subprocess.run(
        ["soffice", "--headless", "--norestore", f"-env:UserInstallation=file://{profile}",
         "--convert-to", "xlsx:Calc MS Excel 2007 XML", "--outdir", str(out), str(source)],
        check=True, capture_output=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)},
    )
    (exp,) = read_workbook(out / "in.xlsx").experiments
    assert exp.params == (("lr", 0.2), ("name", "ab"))


# ---------------------------------------------------------------------------- unreadable files


def test_missing_corrupt_and_truncated_files(tmp_path: Path) -> None:
    good = write_example_workbook(tmp_path / "good.xlsx")
    data = good.read_bytes()
    cases = {
        "missing.xlsx": None,
        "empty.xlsx": b"",
        "half.xlsx": data[: len(data) // 2],
        "noise.xlsx": b"PK\x03\x04" + os.urandom(2000),
        "notes.csv": b"id,command\na,x\n",
    }
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(WorkbookError) as info:
            read_workbook(path)
        (problem,) = info.value.problems
        assert problem.where == name and info.value.exit_code == 2
        assert any(w in problem.message for w in ("half-saved", "not found", "not an .xlsx")), problem.message


def test_lock_file(tmp_path: Path) -> None:
    book = tmp_path / "experiments.xlsx"
    assert lock_file(book) is None
    libre = tmp_path / ".~lock.experiments.xlsx#"
    libre.write_text("x")
    assert lock_file(book) == libre
    libre.unlink()
    excel = tmp_path / "~$experiments.xlsx"
    excel.write_text("x")
    assert lock_file(book) == excel


# ---------------------------------------------------------------------------- speed


def test_reading_is_fast(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "grid.xlsx", {"Experiments": [
        ["id", "command", "a", "b"], ["grid", "t {{ a }} {{ b }}", "range(100)", "linspace(0, 1, 100)"]]})
    example = write_example_workbook(tmp_path / "e.xlsx")
    for p in (path, example):
        read_workbook(p)  # warm imports
        best = min(_timed(read_workbook, p) for _ in range(3))
        assert best < 0.1, f"{p.name} took {best * 1000:.0f} ms"


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


# ---------------------------------------------------------------------------- train.py


def _train(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TRAIN), "--epoch-seconds", "0", *args], capture_output=True, text=True,
        timeout=60, cwd=tmp_path, env={**os.environ, "NERO_RUN_DIR": str(tmp_path), **env},
    )


def test_train_prints_metric_lines_and_learns(tmp_path: Path) -> None:
    run = _train(tmp_path, "--lr", "0.1", "--layers", "2", "--epochs", "20")
    lines = run.stdout.splitlines()
    assert run.returncode == 0 and len(lines) == 20
    first = dict(kv.split("=") for kv in lines[0].split())
    last = dict(kv.split("=") for kv in lines[-1].split())
    assert first["epoch"] == "1" and last["epoch"] == "20"
    assert float(last["val_loss"]) < float(first["val_loss"]) and float(last["acc"]) >= 0.9
    assert (tmp_path / "checkpoint.npz").is_file()


def test_train_diverges_to_nan_with_a_large_learning_rate(tmp_path: Path) -> None:
    run = _train(tmp_path, "--lr", "3.0", "--epochs", "8")
    assert "loss=nan" in run.stdout and run.returncode == 1
    assert "NaN" in run.stderr and "--lr" in run.stderr


def test_train_fails_on_purpose_and_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    first, second = tmp_path / "1", tmp_path / "2"
    first.mkdir(), second.mkdir()
    failed = _train(first, "--epochs", "6", "--fail-at-epoch", "4")
    assert failed.returncode == 3 and failed.stdout.count("\n") == 3
    resumed = _train(second, "--epochs", "6", "--fail-at-epoch", "4",
                     NERO_RESUME="1", NERO_PREV_RUN_DIR=str(first))
    assert resumed.returncode == 0 and resumed.stdout.startswith("epoch=4 ")
    assert int(np.load(second / "checkpoint.npz")["epoch"]) == 6


def test_times_typed_as_spreadsheet_times(tmp_path: Path) -> None:
    book = openpyxl.Workbook()
    ws = book.active
    ws.title = "Experiments"
    ws.append(["id", "command", "time"])
    ws.append(["a", "x", datetime.time(1, 30)])
    ws.append(["b", "x", datetime.timedelta(hours=30)])
    ws["C3"].number_format = "[h]:mm:ss"
    book.save(tmp_path / "t.xlsx")
    a, b = read_workbook(tmp_path / "t.xlsx").experiments
    assert dict(a.resources)["time"] == 90 and dict(b.resources)["time"] == 1800


def test_after_says_what_it_waits_for(tmp_path: Path) -> None:
    """#13: `after` reads `pretrain` (every run completed) or `pretrain finished` / `pretrain
    (finished)` (completed or terminated by a rule); anything else is a cell error saying what to write."""
    rows = [["id", "command", "after"], ["pre-train.1", "t"], ["b", "t"],
            ["ok", "t", "pre-train.1 finished, b"], ["paren", "t", "b (Finished); pre-train.1(completed)"]]
    wb = read_workbook(write_xlsx(tmp_path / "ok.xlsx", {"Experiments": rows}))
    assert {e.id: e.after for e in wb.experiments}["ok"] == (After("pre-train.1", Until.FINISHED), After("b"))
    assert {e.id: e.after for e in wb.experiments}["paren"] == (After("b", Until.FINISHED), After("pre-train.1"))
    found = problems_of(write_xlsx(tmp_path / "bad.xlsx", {"Experiments": [
        ["id", "command", "after"], ["b", "t"],
        ["x", "t", "b done"], ["y", "t", "b finished extra"], ["z", "t", "b, b finished"], ["w", "t", "b!"]]}))
    assert set(found) == {"Experiments!C3", "Experiments!C4", "Experiments!C5", "Experiments!C6"}
    assert "'b done'" in found["Experiments!C3"] and "b finished" in found["Experiments!C3"]
    assert "twice" in found["Experiments!C5"] and "not a valid" in found["Experiments!C6"]


def _every_value_type(path: Path, **options: object) -> Path:
    """A workbook with every kind of cell nero may meet, written by xlsxwriter (shared
    strings, or inline strings with constant_memory; dates from 1900 or 1904)."""
    import xlsxwriter

    book = xlsxwriter.Workbook(str(path), options)
    dates = {"date": book.add_format({"num_format": "yyyy-mm-dd"}),
             "clock": book.add_format({"num_format": "hh:mm"}),
             "stamp": book.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"}),
             "span": book.add_format({"num_format": "[h]:mm:ss"}),
             "money": book.add_format({"num_format": "0.00"})}
    bold = book.add_format({"bold": True})
    ws = book.add_worksheet("experiments ")  # a title nero matches ignoring case and spaces
    ws.write_row(0, 0, ["id", "command", "lr", "flag", "when", "notes"])
    ws.write_row(1, 0, ["a", "echo {{ lr }}", 0.001, True, None, "  padded  "])
    ws.write_number(2, 2, 3)
    ws.write_string(2, 0, "b")
    ws.write_boolean(2, 3, False)
    ws.write_datetime(2, 4, datetime.datetime(2024, 2, 29, 13, 45, 7), dates["stamp"])
    ws.write_datetime(3, 4, datetime.datetime(2024, 3, 1), dates["date"])
    ws.write_datetime(4, 4, datetime.time(6, 30), dates["clock"])
    ws.write_number(5, 4, 1.5, dates["span"])
    ws.write_number(6, 2, 12345678901234, dates["money"])
    ws.write_number(6, 3, -2.5e-07)
    ws.write_rich_string(7, 5, "rich ", bold, "text", " here")
    ws.write_formula(8, 2, "=1+2", None, 3)
    ws.write_formula(8, 3, '="x"&"y"', None, "xy")
    ws.write_formula(8, 4, "=1/0", None, "#DIV/0!")
    ws.write_string(8, 5, "   ")  # blank text is no value
    ws.write_string(10, 7, "far right")  # a gap in the row and a blank row before it
    ws.write_number(12, 0, 0)
    ws.write_string(13, 1, "ünïcödé & <xml> \"quotes\"")
    book.add_worksheet("Data").write_row(0, 0, ["not", "read"])
    settings = book.add_worksheet("SETTINGS")
    settings.write_row(0, 0, ["key", "value"])
    settings.write_row(1, 0, ["results", "out.xlsx"])
    book.close()
    return path


def _with_formulas_unsaved(path: Path) -> Path:
    """openpyxl writes formulas without their value: the cells nero must report."""
    book = openpyxl.Workbook()
    ws = book.active
    ws.title = "Experiments"
    ws.append(["id", "command", "lr"])
    ws.append(["a", "echo", "=1+1"])
    ws.append(["b", "echo", 0.5])
    book.create_sheet("Metrics").append(["name", "=UPPER(\"x\")"])
    book.save(path)
    return path


@pytest.mark.parametrize("make", ["example", "shared", "inline", "epoch1904", "unsaved"])
def test_streamed_reader_agrees_with_openpyxl(tmp_path: Path, make: str) -> None:
    """#14: the streamed reader (200,000 rows in seconds, where openpyxl took minutes) gives
    the very titles, row numbers, columns, typed values, errors and unsaved formulas the
    openpyxl reading gave, so every cell reference and validation stays as it was."""
    from openpyxl_sheets import read_sheets as read_with_openpyxl

    from orchestrator.sheet.workbook import SHEETS
    from orchestrator.sheet.xlsx import CellError, NoSavedValue, read_sheets

    path = tmp_path / "experiments.xlsx"
    if make == "example":
        write_example_workbook(path)
    elif make == "unsaved":
        _with_formulas_unsaved(path)
    else:
        _every_value_type(path, **{"inline": {"constant_memory": True}, "epoch1904": {"date_1904": True}}.get(make, {}))

    def wanted(title: str) -> str | None:
        return next((s for s in SHEETS if s.lower() == title.strip().lower()), None)

    got, expected = read_sheets(path, wanted), read_with_openpyxl(path, wanted)
    assert got == expected
    assert {type(v) for _, (_, rows) in got[1].items() for _, values in rows for v in values} >= (
        {str} if make == "example" else {str, NoSavedValue} if make == "unsaved" else
        {str, int, float, bool, datetime.datetime, datetime.time, datetime.timedelta, type(None), CellError})
    if make == "unsaved":
        assert dict(got[1]["Experiments"][1])[2][2] == NoSavedValue("=1+1")
    if make == "shared":  # spot checks, so that agreeing on nothing cannot pass
        rows = dict(got[1]["Experiments"][1])
        assert rows[2] == ["a", "echo {{ lr }}", 0.001, True, None, "padded"]
        assert rows[3][4] == datetime.datetime(2024, 2, 29, 13, 45, 7)
        assert rows[8][5] == "rich text here" and rows[9][2:5] == [3, "xy", CellError("#DIV/0!")]
        assert rows[11] == [None] * 7 + ["far right"] and 10 not in rows


def test_cells_keep_their_references_through_the_streamed_reader(tmp_path: Path) -> None:
    """#14: a problem found by the new reader is still reported at its cell."""
    path = _with_formulas_unsaved(tmp_path / "experiments.xlsx")
    with pytest.raises(WorkbookError) as e:
        read_workbook(path)
    text = str(e.value)
    assert "Experiments!C2: formula =1+1 has no saved value" in text
    book = _every_value_type(tmp_path / "typed.xlsx")
    with pytest.raises(WorkbookError) as e:
        read_workbook(book)
    assert "experiments !E9: the cell shows the error #DIV/0!" in str(e.value)


def test_built_in_date_formats_are_openpyxls() -> None:
    """#14: the reader asks openpyxl (half a second to import) about a workbook's styles only
    when one may be a date; the built-in formats it knows for dates are openpyxl's own."""
    from openpyxl.styles.numbers import BUILTIN_FORMATS, is_date_format

    from orchestrator.sheet.xlsx import DATE_FORMAT_IDS

    assert {i for i in range(200) if is_date_format(BUILTIN_FORMATS.get(i))} == DATE_FORMAT_IDS
