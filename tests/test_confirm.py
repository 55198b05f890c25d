"""Changes that throw work away wait for `nero apply` (#13): the policy, the watch loop's
account of it, and the confirmation of exactly the plan shown. Real jobs, real CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from conftest import nero, state_db, wait_for, write_workbook
from jobs import ARGV, STEPPER

from orchestrator.confirm import Gate
from orchestrator.model import (
    ActionKind,
    Cluster,
    Desired,
    Experiment,
    Override,
    OverrideKind,
    RunRecord,
    RunState,
    Variation,
    Workbook,
)
from orchestrator.plan import plan
from orchestrator.spec import expand

LOCAL = [{"name": "local", "kind": "local", "max_jobs": 16}]


def status(project: Path) -> dict[str, dict]:
    out = nero("status", str(project), "--json", check=True).stdout
    return {r["run"]: r for r in json.loads(out)} if out.strip().startswith("[") else {}


def plan_json(project: Path) -> dict:
    return json.loads(nero("plan", str(project), "--json", check=True).stdout)


def attempts(project: Path) -> list[tuple[str, int]]:
    with state_db(project) as con:
        return sorted(con.execute("SELECT key, attempt FROM attempts").fetchall())


def _rows(lr: float) -> list[dict]:
    return [
        {"id": "a", "command": "python stepper.py steps=3000 delay=0.1 tag={{ tag }} lr={{ lr }}", "tag": "[1, 2]",
         "lr": lr},
        {"id": "b", "command": "python stepper.py steps=3000 delay=0.1"},
    ]


def test_an_edit_of_running_runs_waits_for_apply_an_undo_costs_nothing_and_apply_restarts_exactly_those(project: Path):
    """#13 Must show 1: with --watch running, a parameter edit restarts nothing until
    `nero apply`; undoing it first costs no attempt; `nero apply ID` restarts exactly the
    listed runs, and refuses an ID whose plan has changed since, saying how."""
    (project / "stepper.py").write_text(STEPPER)
    book = write_workbook(project / "experiments.xlsx", _rows(0.1), clusters=LOCAL)
    loop = subprocess.Popen([sys.executable, "-m", "orchestrator", "reconcile", str(project), "--watch", "--interval", "0.3"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: all(r["state"] == "running" for r in status(project).values()) and len(status(project)) == 3,
                 what="three runs running")
        first = {k: r["job_id"] for k, r in status(project).items()}

        write_workbook(book, _rows(0.2), clusters=LOCAL)  # the edit
        shown = wait_for(lambda: (p := plan_json(project))["awaiting"]["count"] == 2 and p, timeout=20,
                         what="the restarts awaiting confirmation")
        fp = shown["awaiting"]["id"]
        assert shown["awaiting"]["confirm"] == f"nero apply {fp}"
        waiting = sorted((a["action"], a["run"], a["reason"], a["awaiting"]) for a in shown["actions"] if a.get("awaiting"))
        assert waiting == [("restart", "a[tag=1]", "lr: 0.1 → 0.2", "cancels the running attempt"),
                           ("restart", "a[tag=2]", "lr: 0.1 → 0.2", "cancels the running attempt")]
        time.sleep(3)  # passes go by: nothing is restarted
        assert attempts(project) == [("a[tag=1]", 1), ("a[tag=2]", 1), ("b", 1)]
        assert all(r["state"] == "running" for r in status(project).values())

        write_workbook(book, _rows(0.1), clusters=LOCAL)  # undone before it was confirmed
        wait_for(lambda: plan_json(project)["awaiting"]["count"] == 0, timeout=20, what="the wait gone")
        time.sleep(3)
        assert attempts(project) == [("a[tag=1]", 1), ("a[tag=2]", 1), ("b", 1)]  # it cost nothing
        assert nero("apply", str(project), fp).returncode == 1  # that plan is gone

        write_workbook(book, _rows(0.2), clusters=LOCAL)
        wait_for(lambda: plan_json(project)["awaiting"]["id"] == fp, timeout=20, what="the same change again")
        write_workbook(book, _rows(0.3), clusters=LOCAL)  # changed again before confirming
        newer = wait_for(lambda: (i := plan_json(project)["awaiting"]["id"]) not in ("", fp) and i, timeout=20,
                         what="the newer plan")
        refused = nero("apply", str(project), fp)
        assert refused.returncode == 1
        assert "no longer awaiting: restart a[tag=1] (lr: 0.1 → 0.2" in refused.stderr
        assert "newly awaiting: restart a[tag=1] (lr: 0.1 → 0.3" in refused.stderr
        assert f"nero apply {newer}" in refused.stderr
        assert attempts(project) == [("a[tag=1]", 1), ("a[tag=2]", 1), ("b", 1)]

        done = nero("apply", str(project), newer, check=True)
        assert "Confirmed 2 changes" in done.stdout and "applies this in its next pass" in done.stdout
        after = wait_for(lambda: (s := status(project))["a[tag=1]"]["attempt"] == 2 and s["a[tag=2]"]["attempt"] == 2
                         and s, timeout=30, what="the listed runs restarted")
        assert after["b"]["attempt"] == 1 and after["b"]["job_id"] == first["b"]  # untouched
        assert attempts(project) == [("a[tag=1]", 1), ("a[tag=1]", 2), ("a[tag=2]", 1), ("a[tag=2]", 2), ("b", 1)]
        assert plan_json(project)["awaiting"]["count"] == 0
    finally:
        loop.send_signal(signal.SIGINT)
        out, err = loop.communicate(timeout=30)
    # the loop said what it did and why, a line each
    assert "workbook re-read (saved " in out and "1 row changed" in out, out
    assert f"restart a[tag=1] (lr: 0.1 → 0.2; cancels the running attempt) — awaiting confirmation: nero apply {fp}" in out
    assert "nothing awaits confirmation any more" in out
    assert "cancelled  a[tag=1]" in out and "restarted: lr: 0.1 → 0.3" in out


def test_a_row_growing_past_confirm_over_waits_and_plan_shows_the_count_and_the_command(project: Path):
    """#13 Must show 2: more new runs at once than Settings confirm_over wait for
    `nero apply`; `nero plan` shows the count and the command; after it they are submitted."""
    (project / "argv.py").write_text(ARGV)

    def book(values: str) -> None:
        write_workbook(project / "experiments.xlsx", [{"id": "g", "command": "python argv.py {{ n }}", "n": values}],
                       clusters=LOCAL, settings={"confirm_over": 3})

    book("[1, 2]")
    nero("reconcile", str(project), check=True)  # 2 new runs: at most 3, submitted on save
    assert len(status(project)) == 2
    book("[1, 2, 3, 4, 5, 6]")
    human = nero("plan", str(project), check=True).stdout
    fp = plan_json(project)["awaiting"]["id"]
    assert fp and f"4 changes awaiting confirmation; to apply exactly these: nero apply {fp}" in human
    assert "one of 4 new runs, more than Settings confirm_over (3)" in human
    one = nero("reconcile", str(project), check=True).stdout  # a pass submits none of them
    assert f"submit 4 new runs of g (more than Settings confirm_over (3)) — awaiting confirmation: nero apply {fp}" in one
    assert len(status(project)) == 2
    until = nero("reconcile", str(project), "--until-done", "--interval", "0.3")  # cannot finish them: says so
    assert until.returncode == 1, until.stdout + until.stderr
    assert (f"4 changes still await confirmation, so the loop cannot finish: `nero plan` lists them; "
            f"confirm with `nero apply {fp}`") in until.stderr
    assert len(status(project)) == 2
    done = nero("apply", str(project), fp, check=True).stdout  # no loop running: it runs the pass itself
    assert "Confirmed 4 changes" in done and "submitted" in done
    assert len(status(project)) == 6
    assert plan_json(project)["awaiting"]["count"] == 0


def _exp(**kw) -> Experiment:
    return Experiment(id="e", row=2, command="python t.py {{ lr }}", clusters=("local",),
                      desired=kw.pop("desired", Desired.RUN), params=(("lr", Variation("[1, 2]", (1, 2))),), **kw)


def _rec(spec, state: RunState, spec_hash: str = "old") -> RunRecord:
    return RunRecord(key=spec.key, number=1, experiment=spec.experiment, spec_hash=spec_hash,
                     essence=json.dumps({**spec.essence(), "command": "python old.py"}), params=spec.params,
                     state=state, attempt=1, cluster="local")


def test_the_policy_gates_what_throws_work_away_and_nothing_else():
    """#13: which actions wait (confirm.py is their one home): a changed row's running or
    finished run, state=stop, --prune; not a failed run's re-run, a retry, a manual
    restart or abort; `apply all` and a confirmed token let them through."""
    specs = expand(Workbook(path="x.xlsx", experiments=(_exp(retries=1),), clusters=(Cluster("local"),)))
    one, two = specs
    gate = Gate()

    def waits(snapshot, prune=False, overrides=None, g=gate, s=specs):
        p = plan(s, snapshot, {"local": 9}, prune=prune, overrides=overrides, gate=g)
        return {(a.kind.value, a.key): a.awaiting for a in p.actions}, p

    got, p = waits({one.key: _rec(one, RunState.RUNNING), two.key: _rec(two, RunState.COMPLETED)})
    assert got == {("restart", one.key): "cancels the running attempt", ("restart", two.key): "replaces its completed attempt"}
    assert len(p.fingerprint) == 6
    got, _ = waits({one.key: _rec(one, RunState.FAILED), two.key: _rec(two, RunState.CANCELLED)})
    assert got == {("restart", one.key): "", ("restart", two.key): ""}  # nothing of value lost
    got, _ = waits({one.key: _rec(one, RunState.FAILED, one.spec_hash), two.key: _rec(two, RunState.RUNNING, two.spec_hash)})
    assert got == {("restart", one.key): ""}  # a retry
    manual = {one.key: Override(one.key, OverrideKind.RESTART, one.spec_hash, 1, 0.0),
              two.key: Override(two.key, OverrideKind.ABORT, two.spec_hash, 1, 0.0)}
    got, _ = waits({one.key: _rec(one, RunState.COMPLETED, one.spec_hash), two.key: _rec(two, RunState.RUNNING, two.spec_hash)},
                   overrides=manual)
    assert got == {("restart", one.key): "", ("cancel", two.key): ""}  # typed by hand: confirmed then
    typed = {one.key: Override(one.key, OverrideKind.RESTART, one.spec_hash, 1, 0.0)}
    got, _ = waits({one.key: _rec(one, RunState.RUNNING)}, overrides=typed)  # `nero restart` after an edit
    assert got[("restart", one.key)] == ""
    stopped = [replace(s, desired=Desired.STOP) for s in specs]
    live = {s.key: _rec(s, RunState.RUNNING, s.spec_hash) for s in specs}
    got, p = waits(live, s=stopped)
    assert set(got.values()) == {"cancels the running run"}
    got, _ = waits(live, s=stopped, g=Gate(apply_all=True))
    assert set(got.values()) == {""}
    got, _ = waits(live, s=stopped, g=Gate(confirmed=frozenset(a.token for a in p.awaiting[:1])))
    assert sorted(got.values()) == ["", "cancels the running run"]  # only what was confirmed
    got, _ = waits(live, s=[], prune=True)
    assert set(got.values()) == {"cancels the running run"}
    got, p = waits({}, g=Gate(over=1))
    assert set(got.values()) == {"one of 2 new runs, more than Settings confirm_over (1)"}
    assert all(a.kind is ActionKind.SUBMIT and not a.cluster for a in p.actions)


def test_on_a_terminal_the_watch_loop_shows_a_live_line_with_what_awaits(project: Path):
    """#13: on a terminal the loop keeps a compact live line (rich) under its decisions,
    saying how many changes await confirmation and the command that confirms them."""
    import os
    import pty
    import re
    import threading

    (project / "stepper.py").write_text(STEPPER)
    book = write_workbook(project / "experiments.xlsx", _rows(0.1), clusters=LOCAL)
    master, slave = pty.openpty()
    loop = subprocess.Popen([sys.executable, "-m", "orchestrator", "reconcile", str(project), "--watch", "--interval", "0.3"],
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env={**os.environ, "COLUMNS": "200"})
    os.close(slave)
    seen: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            seen.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    text = lambda: re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(seen).decode(errors="replace"))  # noqa: E731
    try:
        wait_for(lambda: len(status(project)) == 3, what="three runs")
        write_workbook(book, _rows(0.2), clusters=LOCAL)
        wait_for(lambda: "live, 2 awaiting confirmation: nero apply " in text(), timeout=20, what="the live line")
    finally:
        loop.send_signal(signal.SIGINT)
        loop.wait(timeout=30)
        reader.join(timeout=5)
        os.close(master)
    out = text()
    assert re.search(r"runs .* 0/3 .* 3 live, 2 awaiting confirmation: nero apply [0-9a-f]{6}", out), out[-2000:]
    assert "workbook re-read (saved " in out and "— awaiting confirmation: nero apply" in out


def test_saves_in_quick_succession_are_read_once(project: Path):
    """#13: the watch loop reads a saved workbook once it has stayed unchanged for 2 s, so
    two saves a moment apart are read, said and applied once."""
    (project / "stepper.py").write_text(STEPPER)
    row = {"id": "x", "command": "python stepper.py steps=3000 delay=0.1"}
    book = write_workbook(project / "experiments.xlsx", [row], clusters=LOCAL)
    loop = subprocess.Popen([sys.executable, "-m", "orchestrator", "reconcile", str(project), "--watch", "--interval", "0.3"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(status(project)) == 1, what="the first run")
        write_workbook(book, [row, dict(row, id="y")], clusters=LOCAL)
        time.sleep(0.5)
        write_workbook(book, [row, dict(row, id="y", command="python stepper.py steps=3001 delay=0.1"), dict(row, id="z")],
                       clusters=LOCAL)
        runs = wait_for(lambda: len(s := status(project)) == 3 and s, timeout=20, what="y and z")
        time.sleep(1)
    finally:
        loop.send_signal(signal.SIGINT)
        out, _ = loop.communicate(timeout=30)
    assert out.count("workbook re-read") == 1 and "workbook re-read (saved " in out and "2 rows changed" in out, out
    assert runs["y"]["attempt"] == 1 and attempts(project) == [("x", 1), ("y", 1), ("z", 1)]  # y started once, as saved last


def test_settings_on_save_apply_all_restarts_at_once_and_a_bad_value_is_a_cell_error(project: Path):
    """#13: a project opts into applying everything on save (Settings on_save = apply all);
    a value that is neither choice is reported at its cell, and nothing runs."""
    (project / "stepper.py").write_text(STEPPER)

    def book(lr: float, on_save: str) -> None:
        write_workbook(project / "experiments.xlsx", _rows(lr)[:1], clusters=LOCAL, settings={"on_save": on_save})

    book(0.1, "sometimes")
    bad = nero("plan", str(project))
    assert bad.returncode == 2 and "Settings!B2" in bad.stderr and "confirm, apply all" in bad.stderr, bad.stderr
    book(0.1, "apply all")
    nero("reconcile", str(project), check=True)
    wait_for(lambda: all(r["state"] == "running" for r in status(project).values()), what="running")
    book(0.2, "apply all")
    said = nero("reconcile", str(project), check=True).stdout
    assert "awaiting confirmation" not in said and "restarted: lr: 0.1 → 0.2" in said
    assert {k: r["attempt"] for k, r in status(project).items()} == {"a[tag=1]": 2, "a[tag=2]": 2}
