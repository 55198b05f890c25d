"""Issue #12, "the command template runs code inside nero" and "template and results paths
escape": real workbooks, the real CLI, real templates. Each test holds one failure."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import nero, state_db, write_workbook

PWN = "{{ cycler.__init__.__globals__.os.system('touch PWN') }}"


def attempts(project: Path) -> int:
    """Attempts nero recorded (0 when no state was kept at all)."""
    if not (project / ".nero" / "state.db").exists():
        return 0
    with state_db(project) as con:
        return con.execute("SELECT count(*) FROM attempts").fetchone()[0]


def refused(project: Path, *command: str, timeout: float = 120) -> str:
    """Run a command that must refuse the workbook (exit 2, no traceback); its stderr."""
    proc = nero(*command, str(project), cwd=project, timeout=timeout)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "nothing was dispatched" in proc.stderr, proc.stderr
    return proc.stderr


def test_a_command_cell_cannot_run_code_on_the_machine_running_nero(project: Path):
    """#12: `{{ cycler.__init__.__globals__.os.system('touch PWN') }}` created PWN during reconcile
    (for ssh, Slurm and SGE rows too: the render is on the user's machine, before any connection)."""
    write_workbook(project / "experiments.xlsx", [
        {"id": "ok", "command": "echo fine"},
        {"id": "evil", "command": f"echo {PWN}"},
        {"id": "far", "command": f"echo {PWN}", "cluster": "hpc"},
    ], clusters=[{"name": "hpc", "kind": "slurm", "host": "login.invalid"}])
    for cmd in ("plan", "reconcile"):
        err = refused(project, cmd)
        for cell in ("Experiments!B3", "Experiments!B4"):
            assert f"{cell}: the command does not render: not allowed in a template" in err, err
    assert not (project / "PWN").exists()
    assert attempts(project) == 0  # the good row was not dispatched either


def test_a_project_job_template_cannot_run_code_either(project: Path):
    """#12: job templates (a project's templates/*.j2) render in the same sandbox."""
    (project / "templates").mkdir()
    (project / "templates" / "evil.sh.j2").write_text("#!/bin/bash\n" + PWN + "\n{{ command }}\n")
    write_workbook(project / "experiments.xlsx", [{"id": "a", "command": "echo hi", "template": "evil.sh.j2"}])
    err = refused(project, "plan")
    assert "Experiments!C2" in err and "template 'evil.sh.j2'" in err, err
    refused(project, "reconcile")
    assert not (project / "PWN").exists()
    assert attempts(project) == 0


def test_a_project_job_template_that_fails_for_one_runs_values_is_reported_by_plan(project: Path):
    """#12: plan renders what a pass would; a project's job template may branch on a run's
    values, so it is rendered for every run, not once per row (#14's shortcut is for nero's
    own templates only)."""
    (project / "templates").mkdir()
    (project / "templates" / "picky.sh.j2").write_text(
        "#!/bin/bash\n{% if params.lr > 0.5 %}{{ 1 // 0 }}{% endif %}\n{{ command }}\n")
    write_workbook(project / "experiments.xlsx", [
        {"id": "a", "command": "echo {{ lr }}", "lr": "[0.1, 0.2, 0.9]", "template": "picky.sh.j2"}])
    err = refused(project, "plan")
    assert "picky.sh.j2" in err and "does not render" in err, err
    assert attempts(project) == 0


@pytest.mark.parametrize("loop, says", [
    ("{% for i in range(10**10) %}x{% endfor %}", "range() of 10,000,000,000 items"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "longer than 3 s"),
    ("{% set r = range(100000) %}{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}", "longer than 3 s"),  # alarm
    ("{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}", "output is longer"),
    ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
     "the template was stopped"),
    ("{{ 'x' * 10**9 }}", "repeating a value"),
])
def test_a_runaway_command_template_is_stopped_within_seconds(project: Path, loop: str, says: str):
    """#12: `{% for i in range(10**10) %}` blocked a pass for over 90 s."""
    write_workbook(project / "experiments.xlsx", [{"id": "loop", "command": f"echo {loop}"}])
    started = time.monotonic()
    err = refused(project, "plan")
    took = time.monotonic() - started
    assert "Experiments!B2" in err and says in err, err
    assert took < 30, f"plan took {took:.1f} s"  # 3 s of render plus the CLI's start on a busy machine


@pytest.mark.parametrize("tag", ["{% include 'local.sh.j2' %}", "{% import 'local.sh.j2' as x %}",
                                 "{% extends 'local.sh.j2' %}"])
def test_a_command_cell_cannot_load_other_templates(project: Path, tag: str):
    """#12: `{% include %}` in a command crashed the pass with a raw TypeError."""
    write_workbook(project / "experiments.xlsx", [{"id": "inc", "command": f"echo {tag}"}])
    for cmd in ("plan", "reconcile"):
        err = refused(project, cmd)
        assert "Experiments!B2" in err and "cannot load other templates" in err, err
    assert attempts(project) == 0


def test_a_template_path_that_leaves_the_templates_folders_is_a_cell_error_at_plan(project: Path):
    """#12: `../../../../etc/passwd` passed plan; reconcile exited 2 without the cell and skipped valid rows."""
    (project / "secret.j2").write_text("not a template nero may use\n")
    (project / "templates").mkdir()
    (project / "templates" / "linked.sh.j2").symlink_to(project / "secret.j2")  # a link out is refused too
    (project / "templates" / "incl.sh.j2").write_text("{% include 'linked.sh.j2' %}\n{{ command }}\n")
    write_workbook(project / "experiments.xlsx", [
        {"id": "ok", "command": "echo fine", "cluster": "box", "template": None},
        {"id": "bad", "command": "echo hi", "cluster": "box", "template": "../../../../etc/passwd"},
        {"id": "gone", "command": "echo hi", "cluster": "box", "template": "nosuch.sh.j2"},
        {"id": "link", "command": "echo hi", "cluster": "box", "template": "linked.sh.j2"},
        {"id": "incl", "command": "echo hi", "cluster": "box", "template": "incl.sh.j2"},
    ], clusters=[{"name": "box", "kind": "local", "template": "../secret.j2"}])
    for cmd in ("plan", "reconcile"):
        err = refused(project, cmd)
        assert "Experiments!D3" in err and "leaves the templates folders" in err, err
        assert "Experiments!D4" in err and "'nosuch.sh.j2' not found" in err, err
        assert "Experiments!D5" in err and "'linked.sh.j2' is a link to a file outside the templates folders" in err
        assert "Experiments!D6" in err and "includes 'linked.sh.j2', which is a link" in err, err
        assert "Clusters!C2" in err and "'../secret.j2'" in err, err
        assert "local.sh.j2" in err  # what may be named instead
    assert attempts(project) == 0


def test_a_results_path_outside_the_project_is_a_cell_error(project: Path):
    """#12: a results path of `../outside.xlsx` wrote outside the project."""
    inner = project / "proj"
    write_workbook(inner / "experiments.xlsx", [{"id": "a", "command": "echo hi"}],
                   settings={"results": "../outside.xlsx"})
    for cmd in ("plan", "reconcile"):
        proc = nero(cmd, str(inner), cwd=inner)
        assert proc.returncode == 2 and "Settings!B2" in proc.stderr and "outside the project folder" in proc.stderr
    assert not (project / "outside.xlsx").exists()
    write_workbook(inner / "experiments.xlsx", [{"id": "a", "command": "echo hi"}],
                   settings={"results": "out/results.xlsx"})
    assert nero("plan", str(inner), cwd=inner).returncode == 0  # a subfolder is inside


def test_plan_reports_the_render_error_reconcile_would_hit_and_nothing_is_dispatched(project: Path):
    """#12: plan rendered nothing, so what reconcile refused (or crashed on) plan passed."""
    (project / "templates").mkdir()
    (project / "templates" / "mine.sh.j2").write_text(
        "#!/bin/bash\n# {{ params.lr / params.zero }}\ncd {{ workdir }}\n{{ command }}\n")
    write_workbook(project / "experiments.xlsx", [
        {"id": "good", "command": "echo fine", "lr": None, "zero": None},
        {"id": "div", "command": "echo {{ lr / zero }}", "lr": 1, "zero": 0},
        {"id": "tmpl", "command": "echo {{ lr }}", "lr": 1, "zero": 0, "template": "mine.sh.j2"},
    ])
    before = nero("plan", str(project), "--json", cwd=project)
    assert before.returncode == 2, before.stdout + before.stderr
    err = before.stderr
    assert "Experiments!B3" in err and "ZeroDivisionError" in err, err
    assert "Experiments!E4" in err and "template 'mine.sh.j2': ZeroDivisionError" in err, err
    err = refused(project, "reconcile")
    assert "Experiments!B3" in err and "Experiments!E4" in err
    assert attempts(project) == 0 and not (project / "runs").exists()

    # fixed, the same workbook plans and runs
    (project / "templates" / "mine.sh.j2").write_text("#!/bin/bash\ncd {{ workdir }}\n{{ command }}\n")
    write_workbook(project / "experiments.xlsx", [
        {"id": "good", "command": "echo fine", "lr": None},
        {"id": "tmpl", "command": "echo {{ lr }}", "lr": 1, "template": "mine.sh.j2"},
    ])
    plan = json.loads(nero("plan", str(project), "--json", cwd=project, check=True).stdout)
    assert sorted(a["action"] for a in plan["actions"]) == ["submit", "submit"]
    nero("reconcile", str(project), cwd=project, check=True)
    assert attempts(project) == 2


def test_watch_keeps_the_last_good_plan_when_a_command_stops_rendering(project: Path):
    """#12: a template error is a workbook error, so a watching loop keeps its last good plan."""
    from orchestrator.project import Project

    write_workbook(project / "experiments.xlsx", [{"id": "a", "command": "echo fine"}])
    with Project(project / "experiments.xlsx") as p:
        assert p.load() == []
        write_workbook(project / "experiments.xlsx", [{"id": "a", "command": "echo {{ 1 / 0 }}"}])
        warnings = p.load(keep_last_good=True)
        assert len(warnings) == 1 and "Experiments!B2" in warnings[0] and "keeping the last good plan" in warnings[0]
        assert p.workbook is not None and p.workbook.experiments[0].command == "echo fine"


def test_mail_templates_render_in_the_sandbox(tmp_path: Path):
    """#12: a project's e-mail override is user text too: it cannot reach os."""
    from jinja2.sandbox import SecurityError

    from orchestrator.render import mail_environment

    env = mail_environment((str(tmp_path),))
    with pytest.raises(SecurityError):
        env.from_string(PWN).render()
    assert not (tmp_path / "PWN").exists() and not Path("PWN").exists()


def test_a_held_row_whose_command_fails_is_reported_before_it_is_released(project: Path):
    """#12: plan renders what reconcile would submit, also a held run once `nero release` frees it."""
    write_workbook(project / "experiments.xlsx", [
        {"id": "now", "command": "echo fine"},
        {"id": "later", "command": "echo {{ 1 / 0 }}", "state": "hold"},
    ])
    err = refused(project, "plan")
    assert "Experiments!B3" in err and "ZeroDivisionError" in err, err


def test_a_template_that_breaks_after_the_workbook_was_read_submits_nothing_of_the_pass(project: Path):
    """#12: a pass renders all its jobs before it submits any, so a late render failure (a
    template file edited after the workbook was read) cannot leave half a pass submitted."""
    from orchestrator.errors import WorkbookError
    from orchestrator.project import Project

    (project / "templates").mkdir()
    mine = project / "templates" / "mine.sh.j2"
    mine.write_text("#!/bin/bash\ncd {{ workdir }}\n{{ command }}\n")
    write_workbook(project / "experiments.xlsx", [
        {"id": "a", "command": "echo a"},
        {"id": "b", "command": "echo b", "template": "mine.sh.j2"},
    ])
    with Project(project / "experiments.xlsx") as p:
        p.load()
        mine.write_text("#!/bin/bash\n{{ nosuchname }}\n")
        with pytest.raises(WorkbookError) as refusal:  # one pass: refused, exit 2, with the cell
            p.reconcile()
        assert "Experiments!C3" in str(refusal.value) and "nosuchname" in str(refusal.value)
    assert attempts(project) == 0  # `a` renders fine, but it was not submitted either

    mine.write_text("#!/bin/bash\ncd {{ workdir }}\n{{ command }}\n")
    with Project(project / "experiments.xlsx") as p:  # a watching loop warns and keeps going
        p.load()
        mine.write_text("#!/bin/bash\n{{ nosuchname }}\n")  # after the load: the pass finds it
        p.load(keep_last_good=True)
        report = p.reconcile()
        assert any("Experiments!C3" in w and "watching goes on" in w for w in report.warnings), report.warnings
        assert attempts(project) == 0
        mine.write_text("#!/bin/bash\ncd {{ workdir }}\n{{ command }}\n")
        p.reconcile()
    assert attempts(project) == 2


def test_the_bounds_of_a_render_leave_the_callers_alarm_and_memory_limit_as_they_were():
    """#12: the time backstop (SIGALRM) and the memory cap (RLIMIT_AS) hold only while rendering."""
    import resource
    import signal

    from orchestrator.errors import TemplateError
    from orchestrator.render import render_command

    def handler(signum, frame):
        raise AssertionError("the caller's alarm fired early")

    limits = resource.getrlimit(resource.RLIMIT_AS)
    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 100)
    try:
        assert render_command("echo {{ lr }}", {"lr": 0.5}) == "echo 0.5"
        with pytest.raises(TemplateError, match="memory"):
            render_command("{{ 'x'|center(10**10) }}", {})
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 90 < remaining <= 100 and signal.getsignal(signal.SIGALRM) is handler
        assert resource.getrlimit(resource.RLIMIT_AS) == limits
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_rows_alike_but_for_their_values_share_one_job_script_render_and_a_bad_command_is_still_reported(
        project: Path, monkeypatch: pytest.MonkeyPatch):
    """#14: the load's check rendered nero's own job template once per row (~1 ms each: a
    50,000-row sweep spent most of its first `nero plan` there). Rows alike in cluster,
    template, resources and setup render it once; a row with other resources renders its own;
    a command that breaks is still reported at its cell."""
    import orchestrator.preflight as preflight
    from orchestrator.sheet import read_workbook
    from orchestrator.spec import expand

    rows = [{"id": f"r{i}", "command": f"echo {{{{ x }}}} {i}", "x": f"[{i}]"} for i in range(40)]
    rows.append({"id": "bad", "command": "echo {{ 1 / x }}", "x": "[0]"})
    rows.append({"id": "cpus", "command": "echo {{ x }}", "x": "[1]", "cpus": 2})
    write_workbook(project / "experiments.xlsx", rows)
    workbook = read_workbook(project / "experiments.xlsx")
    scripts: list[str] = []
    real = preflight.render_template
    monkeypatch.setattr(preflight, "render_template",
                        lambda name, context, project_dir: scripts.append(str(context["key"])) or real(name, context, project_dir))
    problems = preflight.check_workbook(workbook, expand(workbook), str(project), {})
    assert [p.where for p in problems] == ["Experiments!B42"], problems  # the bad row's command cell
    assert "division by zero" in problems[0].message
    assert scripts == ["r0[x=0]", "cpus[x=1]"], scripts  # one render per shape
    plan = nero("plan", str(project))
    assert plan.returncode == 2 and "Experiments!B42" in plan.stdout + plan.stderr


def test_rows_with_one_plain_command_render_it_once_unless_a_value_could_break_its_bound(
        project: Path, monkeypatch: pytest.MonkeyPatch):
    """#14: a 200,000-row sweep (one run a row) rendered its command once per row; a command
    that only puts variables in text renders for any values whose quoted length keeps it
    within render's OUTPUT_CHARS, so those rows render it once. A row whose value could
    break that bound is still rendered, and reported at its command cell."""
    import orchestrator.preflight as preflight
    from orchestrator.sheet import read_workbook
    from orchestrator.spec import expand

    command = "echo " + "{{ x }}" * 40
    rows = [{"id": f"r{i}", "command": command, "x": f"v{i}"} for i in range(30)]
    rows.append({"id": "long", "command": command, "x": "y" * 30_000})  # 40 × 30,000 characters: over 1 MiB
    write_workbook(project / "experiments.xlsx", rows)
    workbook = read_workbook(project / "experiments.xlsx")
    rendered: list[str] = []
    real = preflight.render_command
    monkeypatch.setattr(preflight, "render_command",
                        lambda text, variables: rendered.append(str(variables["run_key"])) or real(text, variables))
    problems = preflight.check_workbook(workbook, expand(workbook), str(project), {})
    assert rendered == ["r0", "long"], rendered  # the first row's (with its job script), then the one at risk
    assert [p.where for p in problems] == ["Experiments!B32"], problems
    assert "longer than" in problems[0].message and problems[0].message.startswith("the command does not render")
