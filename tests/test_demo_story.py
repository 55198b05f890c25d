"""The demo story of sheets/README.md ("The worked example"), run as written with the real
command line on the local cluster: `nero init`, `nero plan`, `nero reconcile --until-done`,
setting `demo-hold` to `run`, and `demo-hold`'s runs completing (#13: the demo contradicted
its README, and `demo-hold` could never start)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import openpyxl
from conftest import ROOT, nero
from test_core_loop import status


def set_state(workbook: Path, row_id: str, state: str) -> None:
    """What the README asks of the reader: open the workbook, set a row's state, save."""
    book = openpyxl.load_workbook(workbook)
    sheet = book["Experiments"]
    headers = [c.value for c in sheet[1]]
    for row in sheet.iter_rows(min_row=2):
        if row[headers.index("id")].value == row_id:
            row[headers.index("state")].value = state
    book.save(workbook)


def plan_of(project: Path) -> dict[str, dict]:
    return {a["run"]: a for a in json.loads(nero("plan", str(project), "--json", check=True).stdout)["actions"]}


def test_the_readme_demo_story_runs_as_written(tmp_path: Path):
    story = (ROOT / "sheets" / "README.md").read_text()
    for told in ("`isnan(loss) or isinf(loss)`, stops both early", "`plateau(val_loss, 5)` stops it",
                 "its `after` says `demo finished`", "runs: 3 completed, 3 terminated, 3 held",
                 "runs: 6 completed, 3 terminated", "waits for demo: 6 of 6 runs not finished"):
        assert told in story, f"sheets/README.md no longer says {told!r}: update this test with the story"
    demo = tmp_path / "demo"
    nero("init", str(demo), cwd=tmp_path, check=True)
    workbook = demo / "experiments.xlsx"

    # nero plan demo: 6 to submit; demo-hold's 3 runs held, saying what they wait for after the hold
    text = nero("plan", str(demo), check=True).stdout
    assert "6 to submit" in text and "3 held" in text, text
    held = {k: a for k, a in plan_of(demo).items() if k.startswith("demo-hold")}
    assert len(held) == 3 and {a["action"] for a in held.values()} == {"held"}
    assert {a["reason"] for a in held.values()} == {"state=hold: not started; then waits for demo: 6 of 6 runs not finished"}

    # set to run before demo is done: its runs wait for demo (checked on a copy with no state yet)
    early = tmp_path / "early"
    early.mkdir()
    shutil.copy(workbook, early / "experiments.xlsx")
    set_state(early / "experiments.xlsx", "demo-hold", "run")
    waiting = {k: a for k, a in plan_of(early).items() if k.startswith("demo-hold")}
    assert {a["waiting"] for a in waiting.values()} == {"waits for demo: 6 of 6 runs not finished"}

    # nero reconcile demo --until-done --interval 2: 3 completed, 3 terminated, demo-hold held
    proc = nero("reconcile", str(demo), "--until-done", "--interval", "2", timeout=170)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "runs: 3 completed, 3 terminated, 3 held" in proc.stdout, proc.stdout
    runs = {r["run"]: r for r in status(demo)}
    diverged = [runs["demo[lr=3,layers=2]"], runs["demo[lr=3,layers=0]"]]
    assert all(r["state"] == "terminated" and r["reason"].startswith("isnan(loss) or isinf(loss) (loss=")
               and r["step"] < 20 for r in diverged), diverged
    assert "loss=nan" in diverged[0]["reason"]  # two layers: NaN by epoch 4
    printed = (Path(diverged[1]["run_dir"]) / "stdout.log").read_text().splitlines()
    assert "loss=inf" in printed[4] and "loss=inf" not in printed[3]  # the linear model: inf at epoch 5
    stalled = runs["demo[lr=0.1,layers=0]"]
    assert stalled["state"] == "terminated" and stalled["reason"].startswith("plateau(val_loss, 5) (val_loss=")
    others = ("demo[lr=0.01,layers=0]", "demo[lr=0.01,layers=2]", "demo[lr=0.1,layers=2]")
    assert [runs[k]["state"] for k in others] == ["completed"] * 3
    assert not any(k.startswith("demo-hold") for k in runs)

    # set demo-hold's state to run, save; nero plan demo: 3 to submit, demo-hold's runs
    set_state(workbook, "demo-hold", "run")
    text = nero("plan", str(demo), check=True).stdout
    assert "Plan: 3 to submit" in text, text
    actions = plan_of(demo)
    assert sorted(actions) == ["demo-hold[lr=0.001]", "demo-hold[lr=0.01]", "demo-hold[lr=0.1]"]
    assert {a["action"] for a in actions.values()} == {"submit"}

    # nero reconcile demo --until-done --interval 2: demo-hold's runs complete
    proc = nero("reconcile", str(demo), "--until-done", "--interval", "2", timeout=170)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "runs: 6 completed, 3 terminated" in proc.stdout, proc.stdout
    runs = {r["run"]: r["state"] for r in status(demo)}
    assert [runs[k] for k in sorted(actions)] == ["completed"] * 3
