"""Job scripts before anything is dispatched: which template a run uses, the run's command
and job script rendered, and every template problem as a workbook problem at its cell.

A pass renders all its jobs before it submits any (`render_job`), and `Reconciler.load`
renders every job the workbook would submit (`check_workbook`) with stand-in folders, so
what a pass would refuse, `nero plan` (and every command that reads the workbook)
already reports, cell by cell (`Experiments!B7: …`), exit 2, nothing dispatched.

A problem is blamed on the cell that can fix it: a command that does not render on its
command cell; a job script that does not render on the `template` cell that chose its
template (the row's, else the cluster's), else on the row.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .backends import DEFAULT_TEMPLATES
from .errors import TemplateError, WorkbookError
from .jobs import command_variables, script_context, shared_context, shared_parts
from .model import Cluster, ClusterKind, Problem, RunSpec, Workbook
from .paths import ClusterPaths
from .render import (
    OUTPUT_CHARS,
    bounded,
    plain_substitution,
    render_command,
    render_template,
    substitution,
    template_problem,
)

__all__ = ["JobText", "check_templates", "check_workbook", "own_templates_only", "render_job", "render_shared",
           "template_name"]

_COMMAND = "the command does not render: "
_STAND_IN_ROOT = "/nero-check/runs"  # the run root a check renders with (the cluster's is not asked)


@dataclass(frozen=True)
class JobText:
    """A run's rendered command line and job script."""

    command: str
    script: str


def template_name(spec: RunSpec, cluster: Cluster) -> str:
    """The job template a run uses on a cluster: the row's, else the cluster's, else the kind's."""
    name = spec.template or cluster.template or DEFAULT_TEMPLATES.get(cluster.kind, f"{cluster.kind.value}.sh.j2")
    return name if name.endswith(".j2") else name + ".j2"


def render_job(workbook: Workbook, spec: RunSpec, cluster: Cluster, *, attempt: int, run_dir: str, workdir: str,
               python: str, resume: bool, prev_dir: str, job_name: str, rendered_at: str,
               project_dir: str) -> JobText:
    """The run's command and job script; a WorkbookError naming the cell when either fails."""
    problems: list[Problem] = []
    text = _render(workbook, spec, cluster, problems, attempt=attempt, run_dir=run_dir, workdir=workdir,
                   python=python, resume=resume, prev_dir=prev_dir, job_name=job_name,
                   rendered_at=rendered_at, project_dir=project_dir)
    if text is None:
        raise WorkbookError(workbook.path, problems)
    return text


def own_templates_only(project_dir: str) -> bool:
    """Whether the project's job scripts are all nero's own templates (no `templates/*.j2`
    of its own, partials included): they render alike for every run of a shape."""
    return not any((Path(project_dir) / "templates").glob("*.j2")) if project_dir else True


def render_shared(workbook: Workbook, spec: RunSpec, cluster: Cluster, shared: dict[tuple[object, ...], str | None],
                  *, attempt: int, run_dir: str, workdir: str, python: str, resume: bool, prev_dir: str,
                  job_name: str, rendered_at: str, project_dir: str) -> JobText | None:
    """The run's command and the shared job script of its shape (`jobs.shared_context`:
    the run's own names are shell variables its job.sh sets), rendered once per shape and
    kept in `shared`; None when the shape's script cannot be shared or does not render
    (render it per run: `render_job` says why). Only for nero's own templates
    (`own_templates_only`). WorkbookError as `render_job` when the command does not render."""
    problems: list[Problem] = []
    template = template_name(spec, cluster)
    shape = (*_shape(spec, template, cluster.name), python, rendered_at)
    if shape not in shared:
        # rendered with references for the run's names: a template that computes with one
        # (nero's do not) fails or differs here, and its runs are rendered one by one
        failed: list[Problem] = []
        job = _render(workbook, spec, cluster, failed, attempt=attempt, run_dir=run_dir, workdir=workdir,
                      python=python, resume=resume, prev_dir=prev_dir, job_name=job_name, rendered_at=rendered_at,
                      project_dir=project_dir, shared=True)
        if failed and failed[0].message.startswith(_COMMAND):
            return None  # this run's command: `render_job` reports it; the shape is tried with the next run
        shared[shape] = job.script if job is not None and shared_parts(job.script) is not None else None
    script = shared[shape]
    if script is None:
        return None
    job = _render(workbook, spec, cluster, problems, attempt=attempt, run_dir=run_dir, workdir=workdir, python=python,
                  resume=resume, prev_dir=prev_dir, job_name=job_name, rendered_at=rendered_at,
                  project_dir=project_dir, with_script=False)
    if job is None:
        raise WorkbookError(workbook.path, problems)
    return JobText(job.command, script)


def check_templates(workbook: Workbook, project_dir: str) -> list[Problem]:
    """Each `template` cell (Experiments and Clusters) must name a job template in the
    project's `templates/` folder or nero's own; a path that leaves them is refused."""
    problems: list[Problem] = []
    rows = [(e.template, e.cell("template")) for e in workbook.experiments]
    rows += [(c.template, c.cell("template")) for c in workbook.clusters]
    for name, cell in rows:
        if name:
            why = template_problem(name, project_dir)
            if why:
                problems.append(Problem(cell or name, why))
    return problems


def check_workbook(workbook: Workbook, specs: Iterable[RunSpec], project_dir: str,
                   workdir_of: dict[str, str]) -> list[Problem]:
    """Render each run's command and its job script on each of its clusters, with stand-in
    run folders; every problem at its cell, each cell and message once. A row's command (or
    its template on a cluster) that failed is not rendered again for the row's other runs,
    so a runaway template costs one render's bound per row, not one per run. Each run's command
    is rendered (its values can break it: `{{ 1 / lr }}`) unless it only puts variables in
    text (`plain_substitution`: it renders for every run of a row if for one); a row's job script on a cluster is rendered with
    its first run when the project has no job templates of its own (nero's render alike for
    every run of a row: 0.15 ms a run made a first `nero plan` of 100,000 new runs take 15 s),
    and for every run when it has (they may branch on a run's values), and a pass still renders every job it
    submits before it submits any (`render_job`). `workdir_of`: the local workdir of each run
    key (where the command would run)."""
    problems = check_templates(workbook, project_dir)
    with bounded():  # one memory limit for all the renders
        _check_jobs(workbook, specs, project_dir, workdir_of, problems)
    return sorted(dict.fromkeys(problems), key=_reading_order)  # each cell and message once


def _reading_order(problem: Problem) -> tuple[int, int, int, str]:
    """Experiments before Clusters, then by row, then by column."""
    sheet, _, cell = problem.where.partition("!")
    m = re.match(r"^([A-Z]*)(\d+)$", cell)
    row, column = (int(m.group(2)), len(m.group(1))) if m else (0, 0)
    return (sheet != "Experiments", row, column, cell)


def _check_jobs(workbook: Workbook, specs: Iterable[RunSpec], project_dir: str, workdir_of: dict[str, str],
                problems: list[Problem]) -> None:
    clusters = {c.name: c for c in workbook.clusters}
    bad_names: dict[str, bool] = {}  # template name -> whether it names no template (reported by check_templates)
    failed: set[tuple[str, ...]] = set()  # a row's command, or a template on a cluster, that failed is not tried again
    scripted: set[tuple[str, str, str]] = set()  # (row, template, cluster) whose job script was rendered
    commands: set[tuple[str, str]] = set()  # (row, command) rendered, of a command whose every render is alike
    # nero's own job templates render alike for every run of a row; a project's own (or a
    # project override of one of nero's partials) may branch on values: rendered for every run
    own_only = own_templates_only(project_dir)
    # nero's own templates put a run's names (key, folders, command) only into quoted text:
    # rows alike in everything else (cluster, template, resources, setup) render alike, so one
    # render stands for them all (a 50,000-row sweep: 50,000 renders, ~1 ms each, became a few)
    shapes: set[tuple[object, ...]] = set()
    for spec in specs:
        if (spec.experiment, spec.command) in failed:
            continue
        alike = (spec.experiment, spec.command) in commands
        sure = alike or _renders_surely(spec)  # its command need not be rendered
        for name in spec.clusters or ("local",):
            c = clusters.get(name) or Cluster(name=name)
            template = template_name(spec, c)
            if alike and own_only and (spec.experiment, template, name) in scripted:
                continue
            shape = _shape(spec, template, name) if own_only else None
            known = shape is not None and shape in shapes
            if template not in bad_names:
                bad_names[template] = bool(template_problem(template, project_dir))
            if sure and (known or bad_names[template]):  # nothing to render: one run a row, 200,000 rows
                scripted.add((spec.experiment, template, name))
                continue
            before = len(problems)
            run_dir = ClusterPaths(_STAND_IN_ROOT).run(spec.experiment, spec.key, 1)
            _render(workbook, spec, c, problems, attempt=1, run_dir=run_dir, workdir=workdir_of.get(spec.key, ""),
                    python=c.python or (sys.executable if c.kind is ClusterKind.LOCAL else ""), resume=False,
                    prev_dir="", job_name=spec.key, rendered_at="", project_dir=project_dir,
                    with_script=not bad_names[template] and not known
                    and not (own_only and (spec.experiment, template, name) in scripted))
            scripted.add((spec.experiment, template, name))
            if plain_substitution(spec.command):
                commands.add((spec.experiment, spec.command))
            if len(problems) > before:
                failed.add((spec.experiment, spec.command) if problems[-1].message.startswith(_COMMAND)
                           else (spec.experiment, template, name))
                break
            if shape is not None:
                shapes.add(shape)


def _renders_surely(spec: RunSpec) -> bool:
    """Whether the run's command renders for sure, so the check need not render it: a
    plain substitution (`render.substitution`) of variables the run defines, whose output
    cannot reach OUTPUT_CHARS (each value's quoted length bounded from above). Rows with
    one command and their own values (one run a row) then render no command at all."""
    parts = substitution(spec.command)
    if parts is None:
        return False
    size, names = parts
    values = {**dict(spec.resources), **dict(spec.params)}
    for name in names:
        if name in ("run_key", "experiment"):
            size += 5 * len(spec.key) + 2
        elif name == "run_dir":  # the stand-in folder: each slug at most its name or 109 characters
            size += 5 * (len(_STAND_IN_ROOT) + max(len(spec.experiment), 109) + max(len(spec.key), 109) + 4) + 2
        elif name in ("attempt", "resume"):
            size += 3
        elif name in values:
            size += _quoted_size(values[name])
        else:
            return False  # undefined: the render says so
    return size <= OUTPUT_CHARS


def _quoted_size(value: object) -> int:
    """At most the characters `render._finalize` makes of a value (shell quoting writes a
    quote as 5 characters); past OUTPUT_CHARS for what it does not bound."""
    if value is None or isinstance(value, bool):
        return 7
    if isinstance(value, float):
        return 32
    if isinstance(value, int):
        return 24 if value.bit_length() <= 64 else OUTPUT_CHARS + 1
    if isinstance(value, str):
        return 5 * len(value) + 2
    return OUTPUT_CHARS + 1


def _shape(spec: RunSpec, template: str, cluster: str) -> tuple[object, ...]:
    """What a run's job script under one of nero's own templates depends on besides the
    run's names and command, which go into it as quoted text and cannot break it (nor reach
    the 1 MiB output bound: a cell holds at most 32,767 characters, `sheet/bounds.py`)."""
    return (template, cluster, spec.setup, spec.resources)


def _render(workbook: Workbook, spec: RunSpec, cluster: Cluster, problems: list[Problem], *, attempt: int,
            run_dir: str, workdir: str, python: str, resume: bool, prev_dir: str, job_name: str,
            rendered_at: str, project_dir: str, with_script: bool = True, shared: bool = False) -> JobText | None:
    """The job (None when the command, or with `with_script` the job script, fails: the problem added)."""
    try:
        command = render_command(spec.command, command_variables(spec, run_dir, attempt, resume))
    except TemplateError as e:
        problems.append(Problem(_cell(workbook, spec, "command"), f"{_COMMAND}{e}"))
        return None
    if not with_script:
        return JobText(command, "")
    template = template_name(spec, cluster)
    context = script_context(spec, cluster, attempt=attempt, run_dir=run_dir, workdir=workdir, command=command,
                             python=python, resume=resume, prev_run_dir=prev_dir, job_name=job_name,
                             rendered_at=rendered_at)
    try:
        script = render_template(template, shared_context(context) if shared else context, project_dir)
    except TemplateError as e:
        where = (cluster.cell("template") if cluster.template and not spec.template else "")
        where = where or _cell(workbook, spec, "template" if spec.template else "command")
        problems.append(Problem(where, f"the job script of cluster {cluster.name!r} does not render: {e}; "
                                "fix the template or choose another"))
        return None
    return JobText(command, script)


def _cell(workbook: Workbook, spec: RunSpec, column: str) -> str:
    """The cell of `column` in the run's row (the row itself when the cell is unknown)."""
    exp = next((e for e in workbook.experiments if e.id == spec.experiment), None)
    return (exp.cell(column) if exp else "") or f"Experiments!{spec.row}"
