"""The `nero` command (click for parsing, rich for tables and progress, schedule for the loop).

Every command finds its experiments workbook the same way: the WORKBOOK argument (or
`-w`), which may be a file or a folder holding `experiments.xlsx`; else `$NERO_WORKBOOK`;
else `./experiments.xlsx`. State lives in `.nero/state.db` beside the workbook.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import click

from .errors import NeroError
from .paths import ProjectPaths
from .units import format_duration, format_significant

EXIT_WORKBOOK = 2

STATE_STYLE = {
    "pending": "dim", "submitted": "cyan", "running": "blue", "completed": "green", "failed": "red",
    "terminated": "dark_orange", "cancelled": "magenta", "timeout": "red", "preempted": "yellow", "lost": "red",
}


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def _console(stderr: bool = False):
    from rich.console import Console

    con = Console(stderr=stderr, highlight=False)
    if not con.is_terminal and "COLUMNS" not in os.environ:
        con = Console(stderr=stderr, highlight=False, width=160)  # logs and pipes: do not fold at 80
    return con


def resolve_workbook(arg: str | None) -> Path:
    raw = arg or os.environ.get("NERO_WORKBOOK") or "experiments.xlsx"
    p = Path(raw).expanduser()
    if p.is_dir():
        p = p / "experiments.xlsx"
    if not p.exists():
        hint = "run `nero init` to create one, or pass the workbook's path"
        raise click.ClickException(f"no experiments workbook at {p}; {hint}")
    return p


def _fail(e: NeroError) -> None:
    click.echo(f"error: {e}", err=True)
    sys.exit(e.exit_code)


def _open(workbook: str | None, keep_last_good: bool = False):
    from .reconcile import Reconciler

    path = resolve_workbook(workbook)
    rec = Reconciler(path)
    try:
        for w in rec.load(keep_last_good=keep_last_good):
            click.echo(f"warning: {w}", err=True)
    except NeroError as e:
        rec.close()
        _fail(e)
    return rec


WORKBOOK_ARG = click.argument("workbook", required=False, metavar="[WORKBOOK]")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="nero")
def main() -> None:
    """nero: the experiments workbook is the control panel.

    List experiments and their parameter variations in an Excel workbook; nero expands
    them into runs, starts them on your machine or your clusters, watches their logs and
    metrics, stops bad ones by your rules, and keeps a results workbook up to date.

    \b
    Start here:
      nero init demo                       a project with an example workbook and program
      nero plan demo                       what reconcile would do, with reasons
      nero reconcile demo --until-done     run it all, then stop
      nero reconcile demo --watch          keep the world in line with the sheet
      nero status demo                     a table of runs, states and latest metrics
    """


@main.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Overwrite an existing experiments.xlsx / train.py.")
def init(directory: str, force: bool) -> None:
    """Create a project in DIRECTORY: experiments.xlsx (commented headers, drop-downs and
    a worked example grid) and train.py, a small example training program."""
    from .render import builtin_templates
    from .sheet import write_example_workbook

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    wb, train = d / "experiments.xlsx", d / "train.py"
    for p in (wb, train):
        if p.exists() and not force:
            raise click.ClickException(f"{p} exists; use --force to overwrite it, or pick another directory")
    write_example_workbook(wb)
    shutil.copyfile(builtin_templates() / "project" / "train.py", train)
    click.echo(f"Created {wb} and {train}.")
    click.echo("Next: open the workbook, then run")
    click.echo(f"  nero plan {d}\n  nero reconcile {d} --until-done")


@main.command()
@WORKBOOK_ARG
@click.option("--prune", is_flag=True, help="Cancel running runs whose rows were removed.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(workbook: str | None, prune: bool, as_json: bool) -> None:
    """Show what `nero reconcile` would do, and why (no side effects).

    \b
    + submit    a run the sheet asks for that never ran
    ~ restart   a run whose command, parameters, cluster, resources, setup or template changed
    - cancel    a live run whose row says state=stop (or whose row is gone, with --prune)
    ! orphaned  a live run whose row was removed: left running, reported
    = held      a run that is not started: state=hold, or `after` is not satisfied
    """
    rec = _open(workbook)
    try:
        p = rec.plan(prune=prune)
    except NeroError as e:
        _fail(e)
    finally:
        rec.close()
    if as_json:
        click.echo(json.dumps({
            "actions": [{"action": a.kind.value, "run": a.key, "reason": a.reason, "cluster": a.cluster,
                         "waiting": a.waiting} for a in p.actions],
            "unchanged": p.unchanged,
        }, indent=2))
        return
    print_plan(p)


def print_plan(p) -> None:
    from rich.table import Table

    from .model import ActionKind

    sym = {ActionKind.SUBMIT: ("+", "green"), ActionKind.RESTART: ("~", "yellow"), ActionKind.CANCEL: ("-", "red"),
           ActionKind.ORPHAN: ("!", "magenta"), ActionKind.HOLD: ("=", "dim")}
    con = _console()
    if p.actions:
        t = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
        for col in ("", "action", "run", "reason", "where"):
            t.add_column(col, overflow="fold", no_wrap=col in ("", "action", "run"))
        for a in p.actions:
            s, style = sym[a.kind]
            where = f"→ {a.cluster}" if a.cluster else (a.waiting or "")
            t.add_row(f"[{style}]{s}[/]", f"[{style}]{a.kind.value}[/]", escape(a.key), escape(a.reason), escape(where))
        con.print(t)
    counts = {k: len(p.of(k)) for k in ActionKind}
    parts = [f"{counts[k]} to {k.value}" for k in (ActionKind.SUBMIT, ActionKind.RESTART, ActionKind.CANCEL) if counts[k]]
    parts += [f"{counts[k]} {k.value}" for k in (ActionKind.ORPHAN, ActionKind.HOLD) if counts[k]]
    if not p.changes:
        con.print(f"No changes. {p.unchanged} run{'s' if p.unchanged != 1 else ''} unchanged" +
                  (f"; {', '.join(parts)}." if parts else "."))
    else:
        con.print(f"Plan: {', '.join(parts)}; {p.unchanged} unchanged.")


@main.command()
@WORKBOOK_ARG
@click.option("--watch", is_flag=True, help="Keep reconciling every --interval seconds until Ctrl-C.")
@click.option("--interval", type=float, default=None, help="Seconds between passes (default: Settings interval, else 30).")
@click.option("--until-done", is_flag=True, help="Loop until nothing is pending or running; exit 1 if any run failed.")
@click.option("--prune", is_flag=True, help="Cancel running runs whose rows were removed from the sheet.")
@click.option("-q", "--quiet", is_flag=True, help="Print only warnings and the final summary.")
def reconcile(workbook: str | None, watch: bool, interval: float | None, until_done: bool, prune: bool, quiet: bool) -> None:
    """Make the runs match the workbook: submit, restart, cancel, and collect metrics.

    One pass by default. With --watch it loops, re-reading the workbook only when it
    changed; a workbook that becomes invalid or is open in Excel keeps the last good plan.
    Ctrl-C ends the loop, never the jobs: they keep running and the next reconcile picks
    them up. Exit code 2 when the workbook is invalid (nothing is touched then).
    """
    from filelock import FileLock, Timeout

    rec = _open(workbook)
    lock = FileLock(str(ProjectPaths(rec.project_dir).reconcile_lock))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        rec.close()
        raise click.ClickException(
            f"another `nero reconcile` is running for {rec.workbook_path} (lock {lock.lock_file}); "
            "stop it first, or use `nero status` to watch") from None
    try:
        if not (watch or until_done):
            report = rec.run_pass(prune=prune)
            _print_report(report, quiet)
            print_plan_summary(rec, report)
            return
        _loop(rec, interval, until_done, prune, quiet)
    except NeroError as e:
        _fail(e)
    finally:
        rec.close()
        lock.release()


def _print_report(report, quiet: bool) -> None:
    for w in report.warnings:
        click.echo(f"warning: {w}", err=True)
    if quiet:
        return
    con = _console()
    for e in report.events:
        style = STATE_STYLE.get(e.kind, "")
        stamp = time.strftime("%H:%M:%S", time.localtime(e.time))
        kind = f"{e.kind:<10}"
        kind = f"[{style}]{kind}[/]" if style else kind
        con.print(f"{stamp} {kind} {escape(e.key)}  [dim]{escape(e.reason)}[/]", soft_wrap=True)


def print_plan_summary(rec, report) -> None:
    from collections import Counter

    snap = rec.store.snapshot()
    counts = Counter(r.state.value for r in snap.values())
    waiting = sum(1 for a in report.plan.actions if a.waiting)
    held = len([a for a in report.plan.actions if a.kind.value == "held"])
    parts = [f"{n} {s}" for s, n in sorted(counts.items())]
    if waiting:
        parts.append(f"{waiting} waiting")
    if held:
        parts.append(f"{held} held")
    click.echo(f"runs: {', '.join(parts) or 'none'}" + (f"; results in {rec.results_path()}" if rec.results_path().exists() else ""))


def _loop(rec, interval: float | None, until_done: bool, prune: bool, quiet: bool) -> None:
    import schedule

    from .model import RunState

    every = interval or (rec.workbook.settings.interval if rec.workbook else 30) or 30
    sched = schedule.Scheduler()
    digests = _DigestLoop(rec, sched, quiet)
    done = {"flag": False}
    progress = None
    if until_done and sys.stdout.isatty() and not quiet:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        progress = Progress(TextColumn("[bold]runs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("{task.description}"), console=_console())
        progress.start()
        task = progress.add_task("", total=None)

    def tick() -> None:
        for w in rec.load(keep_last_good=True):
            click.echo(f"warning: {w}", err=True)
        report = rec.run_pass(prune=prune)
        _print_report(report, quiet)
        digests.after_pass(report)
        if progress is not None:
            snap = rec.store.snapshot()
            finished = sum(1 for r in snap.values() if r.state.finished)
            total = len(snap) + sum(1 for a in report.plan.actions if a.kind.value == "submit")
            live = sum(1 for r in snap.values() if r.state.live)
            progress.update(task, completed=finished, total=total, description=f"{live} live")
        if until_done and rec.outstanding(report.plan) == 0:
            done["flag"] = True

    sched.every(every).seconds.do(tick)
    try:
        tick()
        while not done["flag"]:
            sched.run_pending()
            time.sleep(min(0.2, max(0.0, sched.idle_seconds or 0.2)))
    except KeyboardInterrupt:
        if progress is not None:
            progress.stop()
        click.echo("\nStopped watching. Jobs keep running; `nero reconcile --watch` picks them up again.", err=True)
        rec.write_results(charts=True)
        return
    if progress is not None:
        progress.stop()
    snap = rec.store.snapshot()
    bad = [r for r in snap.values() if r.state in (RunState.FAILED, RunState.LOST, RunState.TIMEOUT, RunState.PREEMPTED)]
    from .reconcile import PassReport

    final = rec.plan(prune=prune)
    rec.write_results(final, charts=True)  # the curves as they ended
    print_plan_summary(rec, PassReport(plan=final))
    if bad:
        click.echo(f"{len(bad)} run{'s' if len(bad) != 1 else ''} did not complete: " +
                   ", ".join(f"{r.key} ({r.state.value})" for r in bad[:10]), err=True)
        sys.exit(1)


@main.command()
@click.argument("args", nargs=-1, metavar="[WORKBOOK] [SELECTOR]")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
@click.option("--all", "show_all", is_flag=True, help="Include every metric, not only the first few.")
def status(args: tuple[str, ...], as_json: bool, show_all: bool) -> None:
    """A table of runs: number, run, state, cluster, runtime, latest metrics, reason.

    \b
    SELECTOR narrows the table, in the forms of `nero abort` (see `nero abort --help`):
      nero status failed        nero status 'lr-sweep*'        nero status 'val_loss < 0.2'
    """
    from .reconcile import Reconciler, state_path

    workbook, selector = _workbook_and_selector(args)
    path = resolve_workbook(workbook)
    if not state_path(path).exists():
        click.echo("No runs yet: `nero reconcile` starts them.")
        return
    rec = Reconciler(path)
    try:
        now = time.time()
        if selector:
            keys = {c.key for c in _candidates(rec, selector)}
            snap = sorted((r for r in rec.store.snapshot().values() if r.key in keys), key=lambda r: r.number)
        else:
            snap = sorted(rec.store.snapshot().values(), key=lambda r: r.number)
        if as_json:
            click.echo(json.dumps([{
                "number": r.number, "run": r.key, "state": r.state.value, "cluster": r.cluster, "attempt": r.attempt,
                "job_id": r.job_id, "host": r.host, "runtime_s": r.runtime(now), "reason": r.reason,
                "metrics": {k: (v if v == v else None) for k, v in r.last.items()}, "step": r.step,
                "run_dir": r.run_dir, "orphaned": r.orphaned, "retry": r.retry, "code_hash": r.code_hash,
                "git_commit": r.git_commit, "git_dirty": r.git_dirty,
            } for r in snap], indent=2))
            return
        _status_table(snap, now, show_all)
        if not selector:
            _not_started(rec)
    finally:
        rec.close()


def _workbook_and_selector(args: tuple[str, ...], selector_required: bool = False) -> tuple[str | None, str | None]:
    """`[WORKBOOK] [SELECTOR]`: a lone argument is the workbook if such a file or folder exists."""
    if len(args) > 2:
        raise click.UsageError("give at most a workbook and a selector (quote a selector with spaces)")
    if len(args) == 2:
        return args[0], args[1]
    if len(args) == 1:
        p = Path(args[0]).expanduser()
        is_path = (p.exists() or args[0].endswith(".xlsx")) and not selector_required
        return (args[0], None) if is_path else (None, args[0])
    if selector_required:
        raise click.UsageError("which runs? give a SELECTOR, e.g. failed, 12-18 or 'lr-sweep*'")
    return None, None


def _not_started(rec) -> None:
    """One line about runs the sheet asks for that have not started (needs the workbook)."""
    from collections import Counter

    try:
        rec.load()
        p = rec.plan()
    except NeroError as e:
        click.echo(f"(the workbook does not read: {str(e).splitlines()[0]})", err=True)
        return
    kinds = Counter("held" if a.kind.value == "held" else "waiting" if a.waiting else "to submit"
                    for a in p.actions if a.kind.value in ("submit", "held") or (a.kind.value == "restart"))
    if kinds:
        parts = ", ".join(f"{n} {k}" for k, n in kinds.items())
        click.echo(f"Not started: {parts} (`nero plan` says why).")


def _status_table(runs, now: float, show_all: bool) -> None:
    from rich.table import Table

    con = _console()
    t = Table(header_style="bold", box=None, pad_edge=False)
    for col, kw in (("#", {"justify": "right"}), ("run", {"no_wrap": True}), ("state", {"no_wrap": True}), ("cluster", {}),
                    ("runtime", {"justify": "right"}), ("step", {"justify": "right"}), ("metrics", {"overflow": "fold"}),
                    ("reason", {"overflow": "fold", "max_width": 60})):
        t.add_column(col, **kw)
    for r in runs:
        names = sorted(r.last)
        shown = names if show_all else names[:4]
        metrics = "  ".join(f"{k}={format_significant(r.last[k])}" for k in shown) + (" …" if len(names) > len(shown) else "")
        style = STATE_STYLE.get(r.state.value, "")
        state = r.state.value + (" (orphaned)" if r.orphaned else "")
        t.add_row(str(r.number), escape(r.key), f"[{style}]{state}[/]", escape(r.cluster), format_duration(r.runtime(now)),
                  "" if r.step is None else str(r.step), escape(metrics), escape(r.reason))
    con.print(t)


@main.command()
@click.argument("run")
@click.option("-w", "--workbook", default=None, help="The experiments workbook (file or folder).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the run ends.")
@click.option("--stderr", "which", flag_value="stderr", help="Show stderr.log instead of stdout.log.")
@click.option("--stdout", "which", flag_value="stdout", default=True, help="Show stdout.log (default).")
@click.option("-n", "--lines", type=int, default=0, help="Only the last N lines.")
def logs(run: str, workbook: str | None, follow: bool, which: str, lines: int) -> None:
    """Print a run's output. RUN is its key (`demo[lr=0.1,layers=2]`) or its number in `nero status`.

    A run on a remote cluster is read there over SSH (no `ssh` + `tail` needed); with
    --follow new output is printed every 2 s until the job ends."""
    from .backends.remote import RemoteBackend
    from .reconcile import Reconciler

    rec = Reconciler(resolve_workbook(workbook))
    try:
        snap = rec.store.snapshot()
        match = snap.get(run) or next((r for r in snap.values() if str(r.number) == run), None)
        if match is None:
            close = [k for k in snap if run in k][:5]
            raise click.ClickException(f"no run {run!r}" + (f"; did you mean: {', '.join(close)}" if close else
                                                              "; `nero status` lists the runs"))
        if not match.run_dir:
            raise click.ClickException(f"{match.key} has no run directory yet ({match.state.value}); "
                                       "it gets one when it is submitted")
        name = f"{which or 'stdout'}.log"
        backend = None
        if match.cluster not in ("", "local"):
            try:
                rec.load()
                backend = rec.backend(match.cluster)
            except NeroError as e:
                _fail(e)
        if isinstance(backend, RemoteBackend):
            _remote_logs(backend, match.run_dir, name, lines, follow)
            return
        path = Path(match.run_dir) / name
        _print_file(path, lines)
        if follow:
            _follow(rec, match.key, path)
    finally:
        rec.close()


def _last_lines(data: bytes, lines: int) -> bytes:
    return b"\n".join(data.splitlines()[-lines:]) + b"\n" if lines and data else data


def _remote_logs(backend, run_dir: str, name: str, lines: int, follow: bool) -> None:
    """`nero logs` of a run on a remote cluster: one agent round trip per read."""
    where = f"{backend.cluster.name}:{run_dir}/{name}"
    try:
        if lines:  # the last N lines: the file's tail, generously sized
            chunk = backend.read_output(run_dir, name, tail=max(64 << 10, lines * 1024))
            sys.stdout.write(_last_lines(chunk.data, lines).decode("utf-8", "replace"))
            offset = chunk.size or 0
        else:  # the whole file, 8 MB a round trip
            offset = 0
            while True:
                chunk = backend.read_output(run_dir, name, offset=offset)
                sys.stdout.write(chunk.data.decode("utf-8", "replace"))
                offset += len(chunk.data)
                if not chunk.data or chunk.size is None or offset >= chunk.size:
                    break
        sys.stdout.flush()
        if not chunk.dir_exists:
            raise click.ClickException(f"the run directory {backend.cluster.name}:{run_dir} does not exist "
                                       "(any more): its output is gone")
        if chunk.size is None:
            click.echo(f"({where} does not exist yet)", err=True)
        while follow and not chunk.ended:
            time.sleep(2.0)
            chunk = backend.read_output(run_dir, name, offset=offset)
            if chunk.size is not None and chunk.size < offset:  # the file was truncated or replaced
                offset = 0
                continue
            sys.stdout.write(chunk.data.decode("utf-8", "replace"))
            sys.stdout.flush()
            offset += len(chunk.data)
            if chunk.ended:  # what the job wrote after its last read
                while (chunk := backend.read_output(run_dir, name, offset=offset)).data:
                    sys.stdout.write(chunk.data.decode("utf-8", "replace"))
                    offset += len(chunk.data)
                sys.stdout.flush()
    except KeyboardInterrupt:
        return
    except NeroError as e:
        _fail(e)


def _print_file(path: Path, lines: int) -> int:
    if not path.exists():
        click.echo(f"({path} does not exist yet)", err=True)
        return 0
    data = path.read_bytes()
    sys.stdout.write(_last_lines(data, lines).decode("utf-8", "replace"))
    sys.stdout.flush()
    return path.stat().st_size


def _follow(rec, key: str, path: Path) -> None:
    offset = path.stat().st_size if path.exists() else 0
    exit_file = path.parent / "exit_code"
    try:
        while True:
            if path.exists():
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                if chunk:
                    offset += len(chunk)
                    sys.stdout.write(chunk.decode("utf-8", "replace"))
                    sys.stdout.flush()
            if exit_file.exists():
                return
            time.sleep(0.5)
    except KeyboardInterrupt:
        return


# ------------------------------------------------------------------ selecting and acting on runs
class Candidate:
    """A run a selector can match: a stored run, or one the sheet asks for that never started."""

    def __init__(self, key: str, facts, record=None, spec=None):
        self.key, self.facts, self.record, self.spec = key, facts, record, spec


def _candidates(rec, selector_text: str, need_workbook: bool = False) -> list[Candidate]:
    from .expr import ExprTerm, Facts, parse_selector

    try:
        selector = parse_selector(selector_text)
    except NeroError as e:
        _fail(e)
    try:
        rec.load()
    except NeroError as e:
        if need_workbook:
            _fail(e)
        click.echo(f"warning: the workbook does not read, so only runs nero started are considered: "
                   f"{str(e).splitlines()[0]}", err=True)
    now = time.time()
    snap = rec.store.snapshot()
    goals = {m.name: m.goal for m in rec.workbook.metrics} if rec.workbook else {}
    histories = rec.store.histories() if any(isinstance(t, ExprTerm) for t in selector.terms) else {}
    out = []
    for r in sorted(snap.values(), key=lambda r: r.number):
        facts = Facts.of(r, now, histories.get(r.key), goals)
        if selector.matches(facts):
            out.append(Candidate(r.key, facts, record=r))
    for spec in rec.specs:
        if spec.key in snap:
            continue
        facts = Facts(key=spec.key, number=0, experiment=spec.experiment, state="pending",
                      cluster=spec.clusters[0] if spec.clusters else "", params=dict(spec.params))
        if selector.matches(facts):
            out.append(Candidate(spec.key, facts, spec=spec))
    return out


def _confirm(verb: str, found: list[Candidate], yes: bool) -> bool:
    from rich.table import Table

    if not found:
        click.echo(f"No run matches; nothing to {verb}. `nero status` lists the runs.")
        return False
    t = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("#", "run", "state", "cluster"):
        t.add_column(col, no_wrap=col != "run")
    for c in found:
        r = c.record
        style = STATE_STYLE.get(c.facts.state, "")
        t.add_row(str(r.number) if r else "-", escape(c.key), f"[{style}]{c.facts.state}[/]", escape(c.facts.cluster))
    _console().print(t)
    if yes:
        return True
    if not sys.stdin.isatty():
        raise click.ClickException(f"{len(found)} runs match; add --yes to {verb} them without asking")
    return click.confirm(f"{verb.capitalize()} these {len(found)} runs?", default=False)


def _apply_now(rec) -> None:
    """Run a pass right away unless a watching reconcile holds the lock (it applies it then)."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(ProjectPaths(rec.project_dir).reconcile_lock))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        click.echo("A running `nero reconcile --watch` applies this in its next pass.")
        return
    try:
        rec.load()
        report = rec.run_pass()
        _print_report(report, quiet=False)
    except NeroError as e:
        click.echo(f"warning: recorded, but the pass failed: {e}; the next `nero reconcile` applies it", err=True)
    finally:
        lock.release()


def _override_command(verb: str, kind_name: str | None, doc: str):
    @main.command(name=verb, help=doc)
    @click.argument("args", nargs=-1, required=True, metavar="[WORKBOOK] SELECTOR")
    @click.option("-w", "--workbook", default=None, help="The experiments workbook (file or folder).")
    @click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
    @click.option("--resume", is_flag=True, hidden=verb != "restart",
                  help="Start the new attempt with NERO_RESUME=1 and NERO_PREV_RUN_DIR set.")
    def command(args: tuple[str, ...], workbook: str | None, yes: bool, resume: bool) -> None:
        from .model import Event, Override, OverrideKind
        from .reconcile import Reconciler

        given, selector = _workbook_and_selector(args, selector_required=True)
        workbook = workbook or given
        rec = Reconciler(resolve_workbook(workbook))
        try:
            found = _candidates(rec, selector, need_workbook=verb in ("restart", "hold"))
            if verb == "release":
                held = rec.store.overrides()
                found = [c for c in found if c.key in held]
            if not _confirm(verb, found, yes):
                return
            now = time.time()
            events = [Event(now, c.key, verb, f"`nero {verb} {selector}`", c.record.attempt if c.record else 0)
                      for c in found]
            if kind_name is None:
                n = rec.store.drop_overrides([c.key for c in found], events=events)
                click.echo(f"Released {n} run{'s' if n != 1 else ''}.")
            else:
                specs = {s.key: s for s in rec.specs}
                items = []
                for c in found:
                    spec = specs.get(c.key)
                    if spec is None:
                        click.echo(f"warning: {c.key} is no longer in the workbook; skipped", err=True)
                        continue
                    items.append(Override(c.key, OverrideKind(kind_name), spec.spec_hash,
                                          c.record.attempt if c.record else 0, now, resume))
                rec.store.set_overrides(items, events)
                click.echo(f"Recorded {verb} for {len(items)} run{'s' if len(items) != 1 else ''}; "
                           "`nero plan` shows it until the row changes.")
            _apply_now(rec)
        finally:
            rec.close()

    return command


abort = _override_command("abort", "abort", """Cancel the runs matching SELECTOR (and keep the matching
    runs that have not started from starting), until their rows change.

    \b
    SELECTOR is a comma-separated union of: run numbers and ranges from `nero status`
    (`12-18,21`), state words (`failed`, `running`, `live`, `crashed`, `all`), id globs
    (`lr-sweep*`, `demo[lr=0.1*`), and conditions (`runtime > 2h and val_err > 0.4`).
    Example: nero abort 'runtime > 1m and loss > 0.5'""")
restart = _override_command("restart", "restart", """Start a new attempt of the runs matching SELECTOR
    (cancelling those still running). --resume sets NERO_RESUME=1 and NERO_PREV_RUN_DIR.

    \b
    Example: nero restart failed        nero restart 'crashed,144-149,170' --resume""")
hold = _override_command("hold", "hold", """Keep the runs matching SELECTOR from starting (running ones
    go on) until `nero release` or until their rows change.""")
release = _override_command("release", None, """Undo `nero hold` / `nero abort` for the runs matching SELECTOR.""")


@main.command()
@click.argument("args", nargs=-1, metavar="[WORKBOOK] [SELECTOR]")
@click.option("-w", "--workbook", default=None, help="The experiments workbook (file or folder).")
@click.option("--json", "as_json", is_flag=True, help="Print the events as JSON.")
@click.option("-n", "--last", type=int, default=0, help="Only the last N events.")
def history(args: tuple[str, ...], workbook: str | None, as_json: bool, last: int) -> None:
    """The event timeline (submissions, starts, ends with reasons, rules, manual actions)
    of the runs matching SELECTOR (default: all)."""
    from rich.table import Table

    from .reconcile import Reconciler

    given, selector = _workbook_and_selector(args)
    workbook, selector = workbook or given, selector or "all"

    rec = Reconciler(resolve_workbook(workbook))
    try:
        found = {c.key: c for c in _candidates(rec, selector)}
        events = [e for e in rec.store.events() if e.key in found]
        if last:
            events = events[-last:]
        if as_json:
            click.echo(json.dumps([{"time": e.time, "run": e.key, "attempt": e.attempt, "event": e.kind,
                                    "reason": e.reason} for e in events], indent=2))
            return
        t = Table(box=None, header_style="bold", pad_edge=False)
        for col in ("time", "#", "run", "attempt", "event", "reason"):
            t.add_column(col, no_wrap=col in ("time", "#", "attempt", "event"), overflow="fold")
        for e in events:
            c = found[e.key]
            style = STATE_STYLE.get(e.kind, "")
            t.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.time)),
                      str(c.record.number) if c.record else "-", escape(e.key), str(e.attempt or ""),
                      f"[{style}]{e.kind}[/]" if style else e.kind, escape(e.reason))
        _console().print(t)
    finally:
        rec.close()


@main.command()
@click.argument("args", nargs=-1, required=True, metavar="[WORKBOOK] SELECTOR METRIC")
@click.option("-w", "--workbook", default=None, help="The experiments workbook (file or folder).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="The PNG to write (default: <metric>.png beside the workbook).")
def plot(args: tuple[str, ...], workbook: str | None, output: str | None) -> None:
    """Draw METRIC over steps for the runs matching SELECTOR, one line per run, to a PNG:
    the curves of the results workbook, for a quick look.

    \b
    Example: nero plot 'demo*' val_loss -o val_loss.png"""
    from .reconcile import Reconciler
    from .results import plot_curves

    if len(args) not in (2, 3):
        raise click.UsageError("give SELECTOR and METRIC (and optionally the workbook first)")
    given, selector, metric = (None, *args) if len(args) == 2 else args
    rec = Reconciler(resolve_workbook(workbook or given))
    try:
        keys = {c.key for c in _candidates(rec, selector) if c.record is not None}
        runs = sorted((r for r in rec.store.snapshot().values() if r.key in keys), key=lambda r: r.number)
        if not runs:
            raise click.ClickException(f"no started run matches {selector!r}; `nero status` lists the runs")
        out = Path(output) if output else rec.project_dir / f"{metric.replace('/', '_')}.png"
        goal = rec.workbook.goal(metric) if rec.workbook else None
        try:
            plot_curves(runs, rec.store.histories(), metric, out, goal=goal)
        except NeroError as e:
            _fail(e)
        click.echo(f"Wrote {out} ({len(runs)} run{'s' if len(runs) != 1 else ''}).")
    finally:
        rec.close()


# ------------------------------------------------------------------------------ e-mail digests
class _DigestLoop:
    """Settings `digest` inside the reconcile loop: a `schedule` job on the loop's scheduler
    (every N minutes/hours, or daily at HH:MM), re-planned when the setting changes. When a
    loop starts after a digest was missed (nero was not running), one is sent right away."""

    def __init__(self, rec, sched, quiet: bool):
        self.rec, self.sched, self.quiet = rec, sched, quiet
        self.setting: str | None = None
        self.job = None
        self.plan = None

    def after_pass(self, report) -> None:
        from .digest_schedule import digest_overdue, parse_digest
        from .notify import DIGEST_KEY

        self.plan = report.plan
        setting = self.rec.workbook.settings.digest if self.rec.workbook else "off"
        if setting == self.setting:
            return
        first = self.setting is None
        self.setting = setting
        if self.job is not None:
            self.sched.cancel_job(self.job)
            self.job = None
        when = parse_digest(setting)
        if when.off:
            return
        if when.every_s is not None:
            self.job = getattr(self.sched.every(when.n), when.unit).do(self.send)
        else:
            self.job = self.sched.every().day.at(when.daily_at).do(self.send)
        raw = self.rec.store.get_meta(DIGEST_KEY)
        if first and digest_overdue(when, float(raw) if raw else None, self.rec.clock()):
            self.send()

    def send(self) -> None:
        from .notify import Mailer

        rec = self.rec
        try:
            mailer = Mailer.of(rec.store, rec.project_dir)
            warnings: list[str] = []
            now = rec.clock()
            mail = mailer.digest(rec.results_input(self.plan), rec.results_path(), now, warnings=warnings)
            if mail is not None:
                warnings += mailer.deliver(rec.workbook.settings, now)
                if not self.quiet:
                    click.echo(f"{time.strftime('%H:%M:%S', time.localtime(now))} digest     {mail.subject}")
        except Exception as e:  # a digest never stops the loop
            warnings = [f"digest not built: {type(e).__name__}: {e}"]
        for w in warnings:
            click.echo(f"warning: {w}", err=True)


@main.command()
@WORKBOOK_ARG
@click.option("--preview", "mode", flag_value="preview", default=True,
              help="Build the digest as it would be sent now and show it (default); nothing is sent.")
@click.option("--send", "mode", flag_value="send", help="Build a digest now and e-mail it (or write it to the outbox).")
@click.option("--open", "open_browser", is_flag=True, help="With --preview: open the HTML in a web browser.")
def digest(workbook: str | None, mode: str, open_browser: bool) -> None:
    """The progress digest: counts by state, what changed since the last digest, the top
    runs by primary_metric, learning curves per experiment, resources, and the results
    workbook attached.

    \b
    --preview  prints the text version and writes .nero/preview/digest.html (with its
               plots) and digest.eml beside it; the next digest still covers the same period
    --send     e-mails it now through Settings smtp_host to email_to (password from
               NERO_SMTP_PASSWORD or the keyring); without SMTP settings it is written to
               .nero/outbox/ as an .eml file. Exit code 1 if it could not be delivered
               (it stays queued and the next `nero reconcile` retries).

    Settings `digest` (every 6 hours, daily at 08:00, off) sends it from `nero reconcile --watch`.
    """
    from .notify import MAIL_STATUSES, Mailer, html_with_data_uris, text_of

    rec = _open(workbook)
    try:
        try:
            current_plan = rec.plan()
        except NeroError:
            current_plan = None
        mailer = Mailer.of(rec.store, rec.project_dir)
        warnings: list[str] = []
        now = time.time()
        data = rec.results_input(current_plan)
        if mode == "preview":
            mail = mailer.preview(data, rec.results_path(), now, warnings)
            folder = rec.store.path.parent / "preview"
            folder.mkdir(parents=True, exist_ok=True)
            eml, page = folder / "digest.eml", folder / "digest.html"
            eml.write_bytes(mail.message)
            page.write_text(html_with_data_uris(mail.message), encoding="utf-8")
            for w in warnings:
                click.echo(f"warning: {w}", err=True)
            click.echo(f"Subject: {mail.subject}\n")
            click.echo(text_of(mail.message).rstrip())
            click.echo(f"\nHTML with its plots: {page}\nThe message as it would be sent: {eml}")
            if open_browser:
                click.launch(str(page))
            return
        mail = mailer.digest(data, rec.results_path(), now, force=True, warnings=warnings)
        assert mail is not None
        warnings += mailer.deliver(rec.workbook.settings, now, force=True)
        for w in warnings:
            click.echo(f"warning: {w}", err=True)
        status = next((m.status for m in rec.store.mail(MAIL_STATUSES, kind="digest", limit=5, newest_first=True)
                       if m.id == mail.id), "queued")
        path = mailer.eml_path(mail)
        if status == "sent":
            click.echo(f"Sent {mail.subject!r} to {', '.join(mail.recipients)} (a copy: {path}).")
        elif status == "local":
            click.echo(f"Wrote {path}: no SMTP configured (set smtp_host and email_to in Settings to e-mail it).")
        else:
            click.echo(f"The digest is not delivered ({status}); it waits in {path} and the next "
                       "`nero reconcile` retries.", err=True)
            sys.exit(1)
    finally:
        rec.close()


MAIL_STYLE = {"sent": "green", "queued": "cyan", "sending": "cyan", "failed": "red", "uncertain": "yellow",
              "local": "dim"}


@main.command()
@WORKBOOK_ARG
@click.option("--resend", multiple=True, type=int, metavar="ID",
              help="Put this failed, uncertain or outbox-only message back in the queue and send it now (repeatable).")
@click.option("-y", "--yes", is_flag=True, help="Resend uncertain messages without asking.")
@click.option("-n", "--last", type=int, default=30, show_default=True, help="How many of the newest messages to list.")
@click.option("--json", "as_json", is_flag=True, help="The list as JSON.")
def mail(workbook: str | None, resend: tuple[int, ...], yes: bool, last: int, as_json: bool) -> None:
    """The e-mail outbox: what nero sent, what waits and what did not go out.

    \b
    status    sent: the server took it · queued: waits for the next delivery (a pass of
              `nero reconcile`) · failed: the server refused it · uncertain: the
              connection broke after the message went out, so it may have arrived; nero
              never resends it by itself · local: no SMTP configured, only the .eml file
              in .nero/outbox/ was written

    --resend ID sends a failed, uncertain or local message again now, with its original
    Message-ID (a mail program that got it already shows it once). An uncertain one may
    reach people twice: nero asks first unless --yes.
    """
    import json

    from .notify import MAIL_STATUSES, Mailer, smtp_config

    rec = _open(workbook)
    try:
        assert rec.workbook is not None
        mailer = Mailer.of(rec.store, rec.project_dir)
        if resend:
            if smtp_config(rec.workbook.settings) is None:
                raise click.ClickException("no SMTP server is configured, so nothing can be sent: set smtp_host "
                                           "(and email_to, email_from) in the workbook's Settings")
            known = {m.id: m for m in rec.store.mail(MAIL_STATUSES)}
            risky = [i for i in resend if i in known and known[i].status == "uncertain"]
            question = (f"Message(s) {', '.join(map(str, risky))} may have been delivered already; resending may "
                        "reach people twice. Resend?")
            skipped = []
            if risky and not yes and not (sys.stdin.isatty() and click.confirm(question, default=False, err=True)):
                skipped = [f"message {i} is uncertain (it may have arrived): not resent; --yes resends it"
                           for i in risky]
                resend = tuple(i for i in resend if i not in risky)
            done, problems = mailer.requeue(resend)
            problems = skipped + problems
            for problem in problems:
                click.echo(f"error: {problem}", err=True)
            warnings = mailer.deliver(rec.workbook.settings, force=True) if done else []
            for w in warnings:
                click.echo(f"warning: {w}", err=True)
            now_known = {m.id: m for m in rec.store.mail(MAIL_STATUSES)}
            failed = bool(problems)
            for m in done:
                status = now_known[m.id].status
                if status == "sent":
                    click.echo(f"Sent message {m.id} {m.subject!r} to {', '.join(m.recipients)}.")
                else:
                    failed = True
                    if status == "queued":
                        hint = "the next `nero reconcile` tries again (see the warning above)"
                    else:
                        hint = "see the warning above"
                    click.echo(f"Message {m.id} {m.subject!r} is {status}, not sent: {hint}.", err=True)
            sys.exit(1 if failed or (resend and not done) else 0)
        mails = rec.store.mail(MAIL_STATUSES, limit=max(1, last), newest_first=True)
        if as_json:
            click.echo(json.dumps([{"id": m.id, "created": m.created_at, "kind": m.kind, "status": m.status,
                                    "subject": m.subject, "to": list(m.recipients), "tries": m.tries,
                                    "error": m.last_error, "sent": m.sent_at, "eml": str(mailer.eml_path(m))}
                                   for m in mails], indent=2))
            return
        if not mails:
            click.echo("The outbox is empty: no e-mail yet (rows' `notify` and Settings `digest` ask for them).")
            return
        from rich.table import Table

        t = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
        for col in ("id", "created", "kind", "status", "to", "subject", "error"):
            t.add_column(col, overflow="fold", justify="right" if col == "id" else "left")
        for m in mails:
            style = MAIL_STYLE.get(m.status, "")
            t.add_row(str(m.id), time.strftime("%Y-%m-%d %H:%M", time.localtime(m.created_at)), m.kind,
                      f"[{style}]{m.status}[/]", escape(", ".join(m.recipients)), escape(m.subject),
                      escape(m.last_error))
        con = _console()
        con.print(t)
        stuck = [m.id for m in mails if m.status in ("failed", "uncertain")]
        if any(m.status == "local" for m in mails):
            con.print(f"local: written to {mailer.outbox} only (no SMTP server was configured; set smtp_host and "
                      "email_to in Settings to e-mail them).")
        if stuck:
            con.print(f"{len(stuck)} not delivered: `nero mail --resend {stuck[0]}` sends one again "
                      f"(copies in {mailer.outbox}).")
    finally:
        rec.close()


@main.command()
@click.argument("workbook", required=False, metavar="[WORKBOOK]")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True,
              help="runs.csv (+ runs-metrics.csv), runs.json, or runs.parquet (+ runs-metrics.parquet).")
def export(workbook: str | None, output: str) -> None:
    """Export every run (parameters, state, timings, last and best metrics) and every
    metric point, for pandas, R or a spreadsheet. In Python: orchestrator.frames.load()."""
    from .frames import export as write
    from .frames import load

    runs, metrics = load(resolve_workbook(workbook))
    try:
        paths = write(runs, metrics, Path(output))
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"Wrote {', '.join(map(str, paths))}: {len(runs)} runs, {len(metrics)} metric points.")



# ---------------------------------------------------------------- nero resources
@main.command()
@click.argument("cluster", required=False)
@click.option("-w", "--workbook", default=None, help="The experiments workbook (file or folder).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def resources(cluster: str | None, workbook: str | None, as_json: bool) -> None:
    """What each cluster has free: partitions/queues and free slots, GPU memory and
    utilisation, RAM, load, and free disk in its workdir. One round trip per cluster.

    \b
    Example: nero resources slurm -w demo"""
    import dataclasses

    rec = _open(workbook)
    try:
        assert rec.workbook is not None
        names = [c.name for c in rec.workbook.clusters]
        if cluster and cluster not in names:
            raise click.ClickException(f"no cluster {cluster!r}; clusters defined: {', '.join(names)}")
        live: dict[str, int] = {}
        for r in rec.store.snapshot().values():
            if r.state.live or r.intent:
                live[r.cluster] = live.get(r.cluster, 0) + 1
        found = []
        for name in [cluster] if cluster else names:
            try:
                res = rec.backend(name).resources()
            except NeroError as e:
                from .model import ClusterResources

                c = rec.workbook.cluster(name)
                res = ClusterResources(cluster=name, kind=c.kind.value, host=c.host, error=str(e))
            found.append(res)
    finally:
        rec.close()
    if as_json:
        click.echo(json.dumps([{**dataclasses.asdict(r), "nero_live": live.get(r.cluster, 0)} for r in found], indent=2))
        if any(r.error for r in found):
            sys.exit(1)
        return
    _resources_tables(found, live)
    if any(r.error for r in found):
        sys.exit(1)


def _resources_tables(found, live: dict[str, int]) -> None:
    from rich.table import Table

    def mb(v: float | None) -> str:
        if v is None:
            return "?"
        return f"{v / 1024:.1f} GB" if v >= 1024 else f"{v:.0f} MB"

    con = _console()
    for r in found:
        head = f"[bold]{escape(r.cluster)}[/] ({r.kind}{', ' + escape(r.host) if r.host else ''})"
        if r.error:
            con.print(f"{head}: [red]{escape(r.error)}[/]")
            continue
        load = "/".join(f"{x:.2f}" for x in r.load) or "?"
        ram = f"{mb(r.mem_available_mb)} free of {mb(r.mem_total_mb)}"
        con.print(f"{head}: {r.cpus or '?'} CPUs, load {load}, RAM {ram}, free disk {mb(r.disk_free_mb)} "
                  f"in {escape(r.disk_path)}; nero runs live here: {live.get(r.cluster, 0)}")
        if r.queues:
            t = Table(box=None, header_style="bold", pad_edge=False)
            for col in ("partition/queue", "state", "free", "total", "detail"):
                t.add_column(col, justify="right" if col in ("free", "total") else "left")
            for q in r.queues:
                t.add_row(escape(q.name), q.state, "?" if q.free_slots is None else str(q.free_slots),
                          "?" if q.total_slots is None else str(q.total_slots), escape(q.detail))
            con.print(t)
        if r.gpus:
            t = Table(box=None, header_style="bold", pad_edge=False)
            for col in ("gpu", "name", "memory used", "memory total", "utilisation"):
                t.add_column(col)
            for g in r.gpus:
                t.add_row(str(g.index), escape(g.name), mb(g.mem_used_mb), mb(g.mem_total_mb),
                          "?" if g.util_pct is None else f"{g.util_pct:.0f}%")
            con.print(t)


if __name__ == "__main__":
    main()
