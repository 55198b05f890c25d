"""The commands that look at runs: `nero plan` (what a pass would do), `nero status` (the
table of runs) and `nero history` (the event timeline)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import click

from ..errors import NeroError
from ..metrics import ranked_metric
from ..operations import history_rows, run_rows, run_values
from ..project import Project
from ..shown import who_shown
from ..units import format_duration, format_significant
from ..views import (
    batch_line,
    freshness_json,
    freshness_line,
    indented_json,
    optimisation_line,
    plan_json,
    plan_line,
)
from .console import STATE_STYLE, console, escape
from .group import (
    WORKBOOK_ARG,
    WORKBOOK_OPTION,
    fail,
    main,
    open_project,
    resolve_workbook,
    select,
    warn,
    workbook_and_selector,
)
from .listing import (
    ATTENTION,
    SHOWN,
    group_actions,
    plain_table,
    print_summary,
    stream_csv,
    stream_json,
    summary_rows,
    write_lines,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ..metrics import Summary
    from ..model import Freshness, Plan, RunRecord

__all__ = ["freshness_json", "freshness_line", "history", "plan", "print_plan", "status"]


@main.command()
@WORKBOOK_ARG
@click.option("--prune", is_flag=True, help="Cancel running runs whose rows were removed.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--details", is_flag=True, help="List every action, however many (else, above 200 actions, "
              "those alike are grouped: one line per action, experiment and place).")
def plan(workbook: str | None, prune: bool, as_json: bool, details: bool) -> None:
    """Show what `nero reconcile` would do, and why (nothing is started or stopped).

    Every command and job script the workbook would submit is rendered first: a template
    that fails is reported at its cell, exit code 2, as reconcile would refuse it.

    \b
    + submit    a run the sheet asks for that never ran
    ~ restart   a run whose command, parameters, cluster, resources, setup or template changed
                (or that a stop or `nero abort` cancelled, once its row says run again)
    - cancel    a live run whose row says state=stop (or whose row is gone, with --prune)
    ! orphaned  a live run whose row was removed: left running, reported
    = held      a run that is not started: state=hold, or `after` is not satisfied

    Changes that throw work away (restarting a running or finished run, cancelling) and
    more new runs at once than Settings confirm_over are listed as awaiting confirmation,
    with the command that confirms exactly this plan: `nero apply 3f9a2c`. A row with a
    `search` cell gets a line: the trials asked and told, the budget left, and how many new
    trials a pass would ask now (its clusters' free slots). A last line says how fresh the
    picture is (see `nero status --help`).
    """
    with open_project(workbook) as project:
        try:
            fresh = project.freshness()
            p = project.plan(prune=prune)
            batches = project.next_batches()
        except NeroError as e:
            fail(e)
        now = project.clock()
    if as_json:
        out, pieces = click.get_text_stream("stdout"), []
        for piece in indented_json(plan_json(p, fresh, now, batches)):  # json.dumps(…, indent=2), a piece at a time
            pieces.append(piece)
            if len(pieces) == 4096:
                out.write("".join(pieces))
                pieces.clear()
        out.write("".join(pieces) + "\n")
        return
    print_plan(p, details=details)
    for batch in batches:  # adaptive rows: trials so far, budget left, the next batch
        click.echo(batch_line(batch))
    click.echo(freshness_line(fresh, now))


def print_plan(p: Plan, details: bool = False) -> None:
    """The plan as a table of actions with their reasons, and a line of counts. Above
    `summary_rows()` actions (unless `details`), actions alike are grouped (`group_actions`)."""
    from rich.table import Table

    from ..model import ActionKind

    sym = {ActionKind.SUBMIT: ("+", "green"), ActionKind.RESTART: ("~", "yellow"), ActionKind.CANCEL: ("-", "red"),
           ActionKind.ORPHAN: ("!", "magenta"), ActionKind.HOLD: ("=", "dim")}
    con = console()
    big = len(p.actions) > summary_rows()
    if big:
        rows = ([[sym[a.kind][0], a.kind.value, a.key, a.reason, f"→ {a.cluster}" if a.cluster else (a.waiting or "")]
                 for a in p.actions] if details else
                [[sym[kind][0], kind.value, what, reason, where] for kind, what, reason, where in group_actions(p.actions)])
        write_lines(plain_table(("", "action", "run" if details else "runs", "reason", "where"), rows))
        if not details:
            click.echo(f"({len(p.actions):,} actions grouped; `nero plan --details` lists each run)")
    elif p.actions:
        t = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
        for col in ("", "action", "run", "reason", "where"):
            t.add_column(col, overflow="fold", no_wrap=col in ("", "action", "run"))
        for a in p.actions:
            s, style = sym[a.kind]
            where = f"→ {a.cluster}" if a.cluster else (a.waiting or "")
            reason = f"{a.reason}; {a.awaiting}" if a.awaiting else a.reason
            where = "awaiting confirmation" if a.awaiting else where
            t.add_row(f"[{style}]{s}[/]", f"[{style}]{a.kind.value}[/]", escape(a.key), escape(reason), escape(where))
        con.print(t)
    say = click.echo if big else con.print
    say(plan_line(p))
    if p.awaiting:
        n = len(p.awaiting)
        con.print(f"{n:,} change{'s' if n != 1 else ''} awaiting confirmation; to apply exactly these: "
                  f"[bold]nero apply {p.fingerprint}[/]", soft_wrap=True)


@main.command()
@click.argument("args", nargs=-1, metavar="[WORKBOOK] [SELECTOR]")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON (written run by run).")
@click.option("--csv", "as_csv", is_flag=True, help="Print the runs as CSV (written run by run).")
@click.option("--all", "show_all", is_flag=True, help="Include every metric, not only the first few.")
@click.option("--attempts", "with_attempts", is_flag=True,
              help="List each run's earlier attempts (before a restart or a retry) under it.")
def status(args: tuple[str, ...], as_json: bool, as_csv: bool, show_all: bool, with_attempts: bool) -> None:
    """A table of runs: number, run, state, cluster, runtime, latest metrics, reason.

    \b
    SELECTOR narrows the table, in the forms of `nero abort` (see `nero abort --help`):
      nero status failed        nero status 'lr-sweep*'        nero status 'val_loss < 0.2'
      nero status all           (every run, however many)
    With more than 200 runs (env NERO_STATUS_ROWS) and no selector, a summary is shown
    instead: counts by state and by experiment, the runs that need attention (failed, lost,
    timed out, preempted, orphaned), those that changed last, and the top runs by the
    primary metric. --json and --csv write every run, run by run.
    --attempts lists each run's earlier attempts under it (in --json: an `attempts` list
    per run, oldest first).
    Once more than one person has submitted runs of the project (a shared project), a
    `who` column names the OS user who submitted each attempt (--json and --csv: always).
    Each row with a `search` cell gets a line under the table: its sampler and metric,
    trials of the budget, and the best trial with its parameters.

    A last line (on stderr with --json or --csv) says how fresh the picture is: the time of
    the last reconcile pass, and whether a reconcile is running. With none running, the live
    runs of the local cluster are read first, so one that ended since shows as ended; in
    --json each run's `as_of` is the time its state was read.
    """
    workbook, selector = workbook_and_selector(args)
    path = resolve_workbook(workbook)
    if not Project.has_state(path):
        click.echo("No runs yet: `nero reconcile` starts them.")
        return
    if as_json and as_csv:
        raise click.UsageError("give --json or --csv, not both")
    with open_project(path, load=False) as project:
        now = project.clock()
        fresh = project.freshness()
        if not selector and not (as_json or as_csv or with_attempts) and project.run_count() > summary_rows():
            _summary(project, now)
            for o in project.optimisations():
                click.echo(optimisation_line(o))
            click.echo(freshness_line(fresh, now))
            _not_started(project)
            return
        if (not selector or selector.strip().lower() == "all") and project.run_count() > summary_rows():
            _every_run(project, now, as_json, as_csv, show_all, with_attempts, fresh)
            if not (as_json or as_csv or selector):
                for o in project.optimisations():
                    click.echo(optimisation_line(o))
            click.echo(freshness_line(fresh, now), err=as_json or as_csv)
            if not (as_json or as_csv or selector):
                _not_started(project)
            return
        runs = [c.record for c in select(project, selector) if c.record] if selector else project.runs()
        if as_json:
            stream_json(run_rows(project, runs, fresh, with_attempts))
            click.echo(freshness_line(fresh, now), err=True)
            return
        earlier, values, attempt_values = run_values(project, runs, with_attempts)
        if as_csv:
            _status_csv(runs, now, values)
            click.echo(freshness_line(fresh, now), err=True)
            return
        _status_table(runs, now, show_all, values, earlier, attempt_values, who_shown(project.who_submitted()))
        if not selector:
            for o in project.optimisations():
                click.echo(optimisation_line(o))
        click.echo(freshness_line(fresh, now))
        if not selector:
            _not_started(project)


def _summary(project: Project, now: float) -> None:
    """`print_summary` ranked by Settings primary_metric, else the first metric with a goal,
    else the first any run recorded (as the results workbook's leaderboard); the runs are
    counted and the few shown found in SQL (`Project.tally`), none is read besides."""
    wb = project.workbook
    metric = ranked_metric(wb.settings.primary_metric, wb.goals, "", "") if wb else ""  # the runs' own: tally
    print_summary(project.tally(metric, SHOWN, ATTENTION), now, summary_rows())


def _every_run(project: Project, now: float, as_json: bool, as_csv: bool, show_all: bool, with_attempts: bool,
               fresh: Freshness) -> None:
    """Every run (`status all`, `--json`, `--csv` of more than `summary_rows()` runs), read and
    written a batch at a time (`Project.run_batches`): JSON and CSV hold one batch; the
    table holds its lines until their widths are known, not the runs."""
    batches = project.run_batches()
    if as_json:
        stream_json(run_rows(project, (r for b in batches for r in b), fresh, with_attempts))
        return
    if as_csv:
        names = project.shown_names()
        for i, batch in enumerate(batches):
            _status_csv(batch, now, project.metric_values(batch), names, header=i == 0)
        return
    with_who = who_shown(project.who_submitted())
    rows: list[list[str]] = []
    for batch in batches:
        earlier, values, attempt_values = run_values(project, batch, with_attempts)
        rows += _plain_rows(batch, now, show_all, values, earlier, attempt_values, with_who)
    _plain_table(rows, with_who)


def _status_csv(runs: list[RunRecord], now: float, values: dict[str, dict[str, Summary]],
                metrics: list[str] | None = None, header: bool = True) -> None:
    """`status --csv`: one line per run, a `last:<metric>` and `best:<metric>` column per metric
    (`metrics`, else those of `values`); `header`: the header line first."""
    metrics = sorted({m for v in values.values() for m in v}) if metrics is None else metrics
    header_line = ["number", "run", "experiment", "state", "cluster", "attempt", "job_id", "host", "runtime_s", "step",
              "orphaned", "retry", "reason", "who", *(f"{k}:{m}" for m in metrics for k in ("last", "best"))]

    def cell(x: float | None) -> object:
        return "" if x is None or x != x else x

    stream_csv(header_line if header else None, ([r.number, r.key, r.experiment, r.state.value, r.cluster, r.attempt, r.job_id, r.host,
                         r.runtime(now), "" if r.step is None else r.step, int(r.orphaned), r.retry, r.reason, r.who,
                         *(cell(getattr(values[r.key].get(m), k, None)) for m in metrics for k in ("last", "best"))]
                        for r in runs))


def _not_started(project: Project) -> None:
    """One line about runs the sheet asks for that have not started (needs the workbook)."""
    from collections import Counter

    try:
        project.load()
        p = project.plan()
    except NeroError as e:
        click.echo(f"(the workbook does not read: {str(e).splitlines()[0]})", err=True)
        return
    kinds = Counter("held" if a.kind.value == "held" else "waiting" if a.waiting else "to submit"
                    for a in p.actions if a.kind.value in ("submit", "held") or (a.kind.value == "restart"))
    if kinds:
        parts = ", ".join(f"{n} {k}" for k, n in kinds.items())
        click.echo(f"Not started: {parts} (`nero plan` says why).")


def _metrics_text(values: dict[str, Summary], show_all: bool) -> str:
    """A run's last values as the table shows them (the first four unless `show_all`)."""
    last = {m: v.last for m, v in values.items() if v.last is not None}
    names = sorted(last)
    shown = names if show_all else names[:4]
    return "  ".join(f"{k}={format_significant(last[k])}" for k in shown) + (" …" if len(names) > len(shown) else "")


def _plain_rows(runs: Iterable[RunRecord], now: float, show_all: bool, values: dict[str, dict[str, Summary]],
                earlier: dict[str, list[RunRecord]], attempt_values: dict[tuple[str, int], dict[str, Summary]],
                with_who: bool) -> list[list[str]]:
    """The lines of the plain table of `runs` (each with its `earlier` attempts below it), as cells."""
    def who(r: RunRecord) -> list[str]:
        return [r.who] if with_who else []

    rows = []
    for r in runs:
        rows.append([str(r.number), r.key, r.state.value + (" (orphaned)" if r.orphaned else ""), r.cluster,
                     *who(r), format_duration(r.runtime(now)), "" if r.step is None else str(r.step),
                     _metrics_text(values[r.key], show_all), r.reason])
        rows += [["", f"  └ attempt {a.attempt}", a.state.value, a.cluster, *who(a), format_duration(a.runtime(now)),
                  "" if a.step is None else str(a.step), _metrics_text(attempt_values[(a.key, a.attempt)], show_all),
                  a.reason] for a in earlier.get(r.key, ())]
    return rows


def _plain_table(rows: list[list[str]], with_who: bool) -> None:
    shift = int(with_who)
    write_lines(plain_table(("#", "run", "state", "cluster", *(["who"] if with_who else []), "runtime", "step",
                             "metrics", "reason"), rows, right=frozenset({0, 4 + shift, 5 + shift})))


def _status_table(runs: list[RunRecord], now: float, show_all: bool, values: dict[str, dict[str, Summary]],
                  earlier: dict[str, list[RunRecord]],
                  attempt_values: dict[tuple[str, int], dict[str, Summary]], with_who: bool = False) -> None:
    """The runs, each with its `earlier` attempts (if any) on rows below it; the metrics are
    their last values as every surface shows them (`values`, `attempt_values`); `with_who`:
    a `who` column after the cluster (`shown.who_shown`). More rows than `summary_rows()`:
    plain aligned text, laid out in one go (rich lays out each row)."""
    def who(r: RunRecord) -> list[str]:
        return [r.who] if with_who else []

    from rich.table import Table

    if len(runs) + sum(map(len, earlier.values())) > summary_rows():
        _plain_table(_plain_rows(runs, now, show_all, values, earlier, attempt_values, with_who), with_who)
        return

    t = Table(header_style="bold", box=None, pad_edge=False)
    for col, kw in (("#", {"justify": "right"}), ("run", {"no_wrap": True}), ("state", {"no_wrap": True}), ("cluster", {}),
                    *((("who", {"no_wrap": True}),) if with_who else ()),
                    ("runtime", {"justify": "right"}), ("step", {"justify": "right"}), ("metrics", {"overflow": "fold"}),
                    ("reason", {"overflow": "fold", "max_width": 60})):
        t.add_column(col, **kw)
    def row(r: RunRecord, number: str, name: str, state: str, values: dict[str, Summary]) -> None:
        metrics = _metrics_text(values, show_all)
        style = STATE_STYLE.get(r.state.value, "")
        t.add_row(number, name, f"[{style}]{state}[/]", escape(r.cluster), *map(escape, who(r)),
                  format_duration(r.runtime(now)),
                  "" if r.step is None else str(r.step), escape(metrics), escape(r.reason))

    for r in runs:
        row(r, str(r.number), escape(r.key), r.state.value + (" (orphaned)" if r.orphaned else ""), values[r.key])
        for a in earlier.get(r.key, ()):
            row(a, "", f"[dim]  └ attempt {a.attempt}[/]", a.state.value, attempt_values[(a.key, a.attempt)])
    console().print(t)



@main.command()
@click.argument("args", nargs=-1, metavar="[WORKBOOK] [SELECTOR]")
@WORKBOOK_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the events as JSON.")
@click.option("-n", "--last", type=int, default=0, help="Only the last N events.")
@click.option("--who", default=None, metavar="NAME",
              help="Only the events of the attempts the OS user NAME submitted.")
def history(args: tuple[str, ...], workbook: str | None, as_json: bool, last: int, who: str | None) -> None:
    """The event timeline (submissions, starts, ends with reasons, rules, manual actions)
    of the runs matching SELECTOR (default: all); `--who NAME`: of the attempts NAME
    submitted. The `who` column (the OS user who submitted each event's attempt) is shown
    when more than one person submitted the project's runs."""
    from rich.table import Table

    given, selector = workbook_and_selector(args)
    workbook, selector = workbook or given, selector or "all"

    with open_project(workbook, load=False) as project:
        try:
            found, events, rows = history_rows(project, selector, last, warn=warn, who=who)
        except NeroError as e:
            fail(e)
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        with_who = who_shown(project.who_submitted())
        t = Table(box=None, header_style="bold", pad_edge=False)
        for col in ("time", "#", "run", "attempt", *(("who",) if with_who else ()), "event", "reason"):
            t.add_column(col, no_wrap=col in ("time", "#", "attempt", "who", "event"), overflow="fold")
        for e, row in zip(events, rows, strict=True):
            c = found[e.key]
            style = STATE_STYLE.get(e.kind, "")
            t.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.time)),
                      str(c.record.number) if c.record else "-", escape(e.key), str(e.attempt or ""),
                      *((escape(str(row["who"])),) if with_who else ()),
                      f"[{style}]{e.kind}[/]" if style else e.kind, escape(e.reason))
        console().print(t)
