"""What the read surfaces list, as plain rows: one home for the command line's `--json` and
the Python API's DataFrames and notebook tables (pure: no I/O, no third-party library).

* `run_row`, `attempt_row`: a run (an earlier attempt) as `nero status --json` lists it;
  `flat_row` is the same row with its metrics as columns (`last:m`, `best:m`, `m@cp`), the
  row of `orchestrator.Project.runs()`;
* `action_row`, `plan_json`: a plan as `nero plan --json` prints it;
* `event_row`: an event as `nero history --json` lists it;
* `freshness_line`, `freshness_json`: how fresh what a command shows is;
* `plan_line`: a plan's counts (`Plan: 6 to submit, 3 held; 0 unchanged.`);
* `summary_line`: the one line after a reconcile (`runs: 3 completed, 3 terminated, 3 held`);
* `html_table`: a small HTML table (`_repr_html_` of the API's plan, status and actions).

The metric values of a row are the ones every surface shows (`shown.run_values`, passed in).
"""

from __future__ import annotations

import html
import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import TYPE_CHECKING

from .space import format_value
from .units import format_duration

if TYPE_CHECKING:
    from .metrics import Summary
    from .model import Action, Event, Freshness, NextBatch, Optimisation, Plan, RunRecord, TrialRow

__all__ = ["action_row", "attempt_row", "event_row", "flat_row", "freshness_json", "freshness_line", "html_table",
           "batch_line", "indented_json", "optimisation_line", "plan_json", "trial_row", "plan_line", "run_row", "shown_json", "summary_line"]


def _number(v: float | None) -> float | None:
    return None if v is None or v != v else v


def shown_json(values: Mapping[str, Summary], checkpoints: Sequence[int]) -> dict[str, object]:
    """A run's metrics in `status --json`: `metrics` (the last values), `best`, and `at`
    (metric → {checkpoint step: value}); NaN and no value are null."""
    return {
        "metrics": {m: _number(v.last) for m, v in values.items()},
        "best": {m: _number(v.best) for m, v in values.items()},
        "at": {m: {str(cp): _number(x) for cp, x in zip(checkpoints, v.at, strict=True)}
               for m, v in values.items()} if checkpoints else {},
    }


def run_row(r: RunRecord, now: float, values: Mapping[str, Summary], checkpoints: Sequence[int],
            as_of: float | None, attempts: Sequence[dict[str, object]] | None = None) -> dict[str, object]:
    """A run as `nero status --json` lists it (`attempts`: its earlier attempts' rows, with
    `--attempts`)."""
    return {
        "number": r.number, "run": r.key, "state": r.state.value, "cluster": r.cluster, "attempt": r.attempt,
        "job_id": r.job_id, "host": r.host, "who": r.who, "runtime_s": r.runtime(now), "reason": r.reason,
        **shown_json(values, checkpoints), "step": r.step,
        "run_dir": r.run_dir, "orphaned": r.orphaned, "retry": r.retry, "code_hash": r.code_hash,
        "git_commit": r.git_commit, "git_dirty": r.git_dirty, "peak_rss_mb": r.peak_rss_mb,
        "peak_gpu_mem_mb": r.peak_gpu_mem_mb, "gpu_util_pct": r.mean_gpu_util_pct, "as_of": as_of,
        **({"attempts": list(attempts)} if attempts is not None else {}),
    }


def attempt_row(a: RunRecord, now: float, values: Mapping[str, Summary], checkpoints: Sequence[int]
                ) -> dict[str, object]:
    """An earlier attempt as `nero status --attempts --json` lists it."""
    return {"attempt": a.attempt, "state": a.state.value, "reason": a.reason, "cluster": a.cluster,
            "job_id": a.job_id, "host": a.host, "who": a.who, "started_at": a.started_at, "ended_at": a.ended_at,
            "runtime_s": a.runtime(now), **shown_json(values, checkpoints), "step": a.step, "run_dir": a.run_dir,
            "retry": a.retry, "command": a.command, "git_commit": a.git_commit, "git_dirty": a.git_dirty,
            "peak_rss_mb": a.peak_rss_mb, "peak_gpu_mem_mb": a.peak_gpu_mem_mb, "gpu_util_pct": a.mean_gpu_util_pct}


def flat_row(row: Mapping[str, object], r: RunRecord) -> dict[str, object]:
    """`row` (`run_row`) with the run's experiment and parameters after its number (a
    parameter named like a field becomes `param:<name>`), and its metrics as columns:
    `last:m` and `best:m` for each metric, then `m@cp` for each checkpoint."""
    out: dict[str, object] = {"run": row["run"], "number": row["number"], "experiment": r.experiment}
    for name, value in r.params:
        out[f"param:{name}" if name in row or name in out else name] = value
    nested = ("metrics", "best", "at", "attempts")
    out.update((k, v) for k, v in row.items() if k not in nested and k not in out)
    last, best, at = row["metrics"], row["best"], row["at"]
    assert isinstance(last, dict) and isinstance(best, dict) and isinstance(at, dict)
    for m in sorted(last):
        out[f"last:{m}"] = last[m]
    for m in sorted(best):
        out[f"best:{m}"] = best[m]
    for m in sorted(at):
        for cp, v in at[m].items():
            out[f"{m}@{cp}"] = v
    return out


def action_row(a: Action) -> dict[str, object]:
    """An action as `nero plan --json` lists it."""
    return {"action": a.kind.value, "run": a.key, "reason": a.reason, "cluster": a.cluster,
            "waiting": a.waiting, **({"awaiting": a.awaiting} if a.awaiting else {})}


def plan_json(p: Plan, fresh: Freshness, now: float, searches: Sequence[NextBatch] = ()) -> dict[str, object]:
    """A plan as `nero plan --json` prints it (with `searches`, what each search row would ask)."""
    return {
        "actions": [action_row(a) for a in p.actions],
        "unchanged": p.unchanged,
        "awaiting": {"count": len(p.awaiting), "id": p.fingerprint,
                     "confirm": f"nero apply {p.fingerprint}" if p.fingerprint else ""},
        "freshness": freshness_json(fresh, now),
        "searches": [{"experiment": b.experiment, "search": b.search, "trials": b.trials, "told": b.told,
                      "left": b.left, "ask": b.ask, "free": b.free} for b in searches],
    }


def batch_line(b: NextBatch) -> str:
    """A search row as `nero plan` shows it: trials asked and told, the budget left, the next batch."""
    return (f"{b.experiment}: search {b.search}: {b.trials} trial(s) asked ({b.told} told, {b.trials - b.told} not "
            f"yet), {b.left} left of the budget; next batch: {b.ask} new trial(s) would be asked now ({b.free} free "
            "slot(s))")


def event_row(e: Event, who: str = "") -> dict[str, object]:
    """An event as `nero history --json` lists it (`who`: the OS user who submitted its attempt)."""
    return {"time": e.time, "run": e.key, "attempt": e.attempt, "event": e.kind, "reason": e.reason, "who": who}


def freshness_line(f: Freshness, now: float) -> str:
    """How fresh the picture a command shows is, in one line: "as of the pass at 12:03:10
    (4m02s ago); no reconcile running — run `nero reconcile` to update"."""
    if f.last_pass is None:
        line = "no reconcile pass recorded yet"
    else:
        same_day = time.localtime(f.last_pass)[:3] == time.localtime(now)[:3]
        stamp = time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S", time.localtime(f.last_pass))
        line = f"as of the pass at {stamp} ({format_duration(now - f.last_pass)} ago)"
    if f.running:
        holder = ", ".join(x for x in (f"pid {f.pid}" if f.pid else "", f.doing) if x)
        return line + (f"; reconcile running ({holder})" if holder else "; the reconcile lock is held by another process")
    if f.refreshed:
        line += f"; local runs read just now ({len(f.ended)} ended since)"
    elif f.note:
        line += f"; local runs not read ({f.note})"
    return line + "; no reconcile running — run `nero reconcile` to update"


def freshness_json(f: Freshness, now: float) -> dict[str, object]:
    """The freshness of `nero plan --json` (its `freshness` key)."""
    return {"last_pass": f.last_pass, "age_s": None if f.last_pass is None else now - f.last_pass,
            "reconcile_running": f.running, "pid": f.pid, "doing": f.doing, "refreshed": list(f.refreshed),
            "ended": list(f.ended), "line": freshness_line(f, now)}


def plan_line(p: Plan) -> str:
    """The plan's counts in one line: `Plan: 6 to submit, 3 held; 0 unchanged.`, or `No
    changes. 9 runs unchanged.`"""
    from .model import ActionKind

    counts = {k: len(p.of(k)) for k in ActionKind}
    parts = [f"{counts[k]:,} to {k.value}" for k in (ActionKind.SUBMIT, ActionKind.RESTART, ActionKind.CANCEL)
             if counts[k]]
    parts += [f"{counts[k]:,} {k.value}" for k in (ActionKind.ORPHAN, ActionKind.HOLD) if counts[k]]
    if not p.changes:
        return (f"No changes. {p.unchanged:,} run{'s' if p.unchanged != 1 else ''} unchanged" +
                (f"; {', '.join(parts)}." if parts else "."))
    return f"Plan: {', '.join(parts)}; {p.unchanged:,} unchanged."


def summary_line(states: Iterable[str], plan: Plan, results: str = "") -> str:
    """One line: the runs by state, how many wait or are held, what awaits confirmation,
    and the results workbook (`results`, when it exists)."""
    counts = Counter(states)
    waiting = sum(1 for a in plan.actions if a.waiting and not a.awaiting)
    held = len([a for a in plan.actions if a.kind.value == "held"])
    parts = [f"{n} {s}" for s, n in sorted(counts.items())]
    if waiting:
        parts.append(f"{waiting} waiting")
    if held:
        parts.append(f"{held} held")
    if plan.awaiting:
        parts.append(f"{len(plan.awaiting)} awaiting confirmation (nero apply {plan.fingerprint})")
    return f"runs: {', '.join(parts) or 'none'}" + (f"; results in {results}" if results else "")


def html_table(headers: Sequence[str], rows: Iterable[Sequence[object]], caption: str = "",
               notes: Sequence[str] = ()) -> str:
    """A small HTML table (every cell escaped; None is empty), with a caption above and
    notes below (no table when there is no row): what a notebook shows of a plan, a status or
    an action."""
    def cell(v: object) -> str:
        return "" if v is None else html.escape(str(v))

    head = "".join(f"<th>{cell(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    out = f"<p>{cell(caption)}</p>" if caption else ""
    if body:
        out += f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return out + "".join(f"<p>{cell(n)}</p>" for n in notes)


def optimisation_line(o: Optimisation) -> str:
    """An adaptive row in one line (`nero status`, the digest): its search, trials of the
    budget, and the best trial with its parameters."""
    head = f"{o.experiment}: {o.sampler} {o.goal} {o.metric}, {len(o.trials)}/{o.budget} trials"
    if o.best is None or o.best.value is None:
        return head + ", no complete trial yet"
    params = ", ".join(f"{n}={format_value(v)}" for n, v in o.best.params)
    return f"{head}, best {format_value(o.best.value)} (trial {o.best.number}: {params})"


def trial_row(o: Optimisation, t: TrialRow) -> dict[str, object]:
    """A trial as `Project.trials()` lists it (the Optimisation sheet's columns): its row,
    number, run, state, value, the best so far, then its parameters."""
    return {"experiment": o.experiment, "trial": t.number, "run": t.key, "state": t.state, "value": t.value,
            "best_so_far": t.best_so_far, **dict(t.params)}


def indented_json(value: object, level: int = 0) -> Iterator[str]:
    """`json.dumps(value, indent=2)`, the same text, in pieces: a dict of texts (a plan's
    action) is one piece, made at C speed. `nero plan --json` of 200,000 actions took
    280 MB and seconds to dump whole through json's indenting encoder (#14)."""
    pad = "\n" + "  " * (level + 1)
    flat = _flat(value, pad)
    if flat is not None:
        yield flat
    elif isinstance(value, dict) and value and all(type(k) is str for k in value):
        yield "{"
        for i, (k, v) in enumerate(value.items()):
            yield ("," if i else "") + pad + encode_basestring_ascii(k) + ": "
            yield from indented_json(v, level + 1)
        yield pad[:-2] + "}"
    elif isinstance(value, list | tuple) and value:
        yield "["
        inner = pad + "  "
        for i, v in enumerate(value):
            flat = _flat(v, inner)
            if flat is not None:
                yield ("," if i else "") + pad + flat
            else:
                yield ("," if i else "") + pad
                yield from indented_json(v, level + 1)
        yield pad[:-2] + "]"
    elif type(value) is str:
        yield encode_basestring_ascii(value)
    else:  # a number, None, a boolean, an empty or unusual container: as json writes it
        yield json.dumps(value, indent=2).replace("\n", "\n" + "  " * level)


def _flat(value: object, pad: str) -> str | None:
    """A dict of texts as `indented_json` writes it (its items at `pad`), else None."""
    if type(value) is not dict or not value or not all(type(k) is str and type(v) is str for k, v in value.items()):
        return None
    return "{" + ",".join([pad + encode_basestring_ascii(k) + ": " + encode_basestring_ascii(v)
                           for k, v in value.items()]) + pad[:-2] + "}"
