"""Projects keep out of each other's folders, on this machine (the local cluster runs the same
agent operations as a remote one; tests/test_remote_isolation.py does it on the testbed's
Slurm and ssh host): a project's id, made once; the default remote folder keyed by it; an
owner marker in every run folder; a submit that refuses another project's run folder or a
live job's, and moves a dead one aside.
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
from conftest import nero, state_db, wait_for, write_workbook

from orchestrator.errors import NeroError
from orchestrator.identity import project_id
from orchestrator.paths import SUBMIT_FILE, ProjectPaths, remote_workdir


def _id_in(root: str) -> str:
    return project_id(root)


def test_a_project_id_is_made_once_and_every_maker_agrees_on_it(tmp_path: Path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        ids = pool.map(_id_in, [str(tmp_path)] * 8)
    assert len(set(ids)) == 1 and len(ids[0]) == 16 and int(ids[0], 16) >= 0
    path = ProjectPaths(tmp_path).project_id
    assert path.read_text() == ids[0] + "\n"
    assert [p.name for p in path.parent.iterdir()] == ["project_id"]  # no temporary left behind
    assert project_id(tmp_path) == ids[0]
    path.write_text("not an id\n")
    with pytest.raises(NeroError, match="does not hold a project id"):
        project_id(tmp_path)


def test_nero_init_makes_the_id_and_the_default_remote_folder_is_keyed_by_it(tmp_path: Path):
    nero("init", str(tmp_path / "exp"), check=True)
    pid = ProjectPaths(tmp_path / "exp").project_id.read_text().strip()
    assert remote_workdir("exp", pid) == f"nero/exp-{pid[:8]}"
    assert remote_workdir("my exp", pid).startswith("nero/my_exp-") and remote_workdir("my exp", pid).endswith(pid[:8])


def _workbook(project: Path, command: str, workdir: str) -> None:
    write_workbook(project / "experiments.xlsx", [{"id": "e", "command": command}],
                   clusters=[{"name": "local", "kind": "local", "workdir": workdir}])


def test_a_project_never_writes_into_another_projects_run_folder(tmp_path: Path):
    shared = tmp_path / "shared-runs"
    first, second = tmp_path / "a" / "exp", tmp_path / "b" / "exp"
    for p in (first, second):
        p.mkdir(parents=True)
        _workbook(p, "echo hello from $PWD", str(shared))
    assert nero("reconcile", str(first), "--until-done", "--interval", "0.2").returncode == 0
    folder = shared / "e" / "e" / "1"
    owner = json.loads((folder / SUBMIT_FILE).read_text())["owner"]
    assert owner == {"project": project_id(first), "path": str(first), "key": "e", "attempt": 1}
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    nero("reconcile", str(second))
    (run,) = json.loads(nero("status", str(second), "--json", check=True).stdout)
    assert run["state"] == "failed" and run["run_dir"] == str(folder)
    assert f"belongs to another nero project ({first}, id {project_id(first)})" in run["reason"], run
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert not list(shared.glob("e/e/1.replaced-*"))


def test_a_submit_refuses_a_live_jobs_folder_and_moves_a_dead_ones_aside(project: Path):
    (project / "slow.py").write_text("import time\nfor i in range(40):\n    print(f'step={i}', flush=True)\n"
                                     "    time.sleep(0.1)\n")
    _workbook(project, "python3 slow.py", "")
    nero("reconcile", str(project), check=True)
    (run,) = json.loads(nero("status", str(project), "--json", check=True).stdout)
    folder = Path(run["run_dir"])
    wait_for(lambda: (folder / "pid").exists(), what="the job to start")

    def forget() -> None:  # nero's state is lost; the job (if any) runs on
        for suffix in ("", "-wal", "-shm"):
            (project / ".nero" / f"state.db{suffix}").unlink(missing_ok=True)

    forget()
    nero("reconcile", str(project))
    (again,) = json.loads(nero("status", str(project), "--json", check=True).stdout)
    assert again["state"] == "failed" and "may be alive (its process" in again["reason"], again
    wait_for(lambda: (folder / "exit_code").exists(), timeout=60, what="the first job to end")
    assert (folder / "stdout.log").read_text().count("step=") == 40
    assert not list(folder.parent.glob("1.replaced-*"))
    forget()
    assert nero("reconcile", str(project), "--until-done", "--interval", "0.2").returncode == 0
    (aside,) = folder.parent.glob("1.replaced-*")
    assert (aside / "stdout.log").read_text().count("step=") == 40
    with state_db(project) as con:
        assert con.execute("SELECT state, run_dir FROM attempts").fetchall() == [("completed", str(folder))]
