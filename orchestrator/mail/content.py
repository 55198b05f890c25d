"""What a notice and a digest say, computed from plain data that the caller gathers (the
outbox reads the store and the log files; nothing here does I/O of its own but the
e-mail templates).

Notices
    For the events a row names in its `notify` cell. The words map to event kinds:
    `started`; `completed`; `failed` (exit code ≠ 0, a failed submission, and also a
    scheduler `timeout`: the run did not complete by its own doing); `terminated` (a rule
    stopped it); `lost` (no heartbeat or scheduler record, and also `preempted`: the run
    was interrupted from outside); `warn` (a warning rule fired). A `cancelled` run is never
    notified: the user or the sheet asked for it. The subject names run and event; notices
    of endings carry the reason (exit code, the scheduler's reason, or the rule with its
    values), the last 40 lines of stderr and stdout (for runs whose folder is on this
    machine; remote runs name `nero logs`), the run's learning curves and its metrics.
    More than `GROUP_OVER` notices of one kind from one pass become one message listing
    them (a grid failing on a typo sends one e-mail, not two hundred); it shows the
    details of its first `DETAILED_IN_GROUP` runs.

Digests
    Counts by state, what changed since the last digest, the top runs by `primary_metric`,
    one learning-curve plot per experiment (inline images), a resources summary, and the
    results workbook attached (or why not).
"""

from __future__ import annotations

import hashlib
import html as html_lib
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..metrics import default_goal
from ..model import Event, ResultsInput, RunRecord, RunSpec, Workbook
from ..shown import run_values
from ..units import format_metric
from ..views import optimisation_line
from .compose import Draft, Part, compose, message_id, render_message
from .digest import DIGEST_TOP, Audience, Digested, DigestRuns, digest_runs, drawn_runs
from .formats import local_time, one_line

__all__ = [
    "CHANGE_KINDS", "DETAILED_IN_GROUP", "DIGEST_CHANGES", "DIGEST_LINES", "DIGEST_PLOTS", "DIGEST_TOP", "ENDINGS", "EVENT_WORDS",
    "GROUP_OVER", "STATE_ORDER", "TAIL_LINES", "Audience", "RunFacts", "addressed_batches", "build_digest",
    "digest_audiences", "build_notice", "fallback_notice",
    "is_detailed", "leaderboard", "needs_details", "notice_batches", "notice_item", "primary_metric", "slug_name",
]

EVENT_WORDS = {
    "started": "started", "completed": "completed", "failed": "failed", "timeout": "failed",
    "terminated": "terminated", "lost": "lost", "preempted": "lost", "warn": "warn",
}
ENDINGS = frozenset({"failed", "timeout", "terminated", "lost", "preempted"})
TAIL_LINES = 40
GROUP_OVER = 10  # more notices of one kind in one pass than this: one message lists them
DETAILED_IN_GROUP = 3
DIGEST_PLOTS = 8
DIGEST_LINES = 20  # runs drawn in an experiment's plot at most: the best (`digest.drawn_runs`)
DIGEST_CHANGES = 25
STATE_ORDER = ("running", "submitted", "pending", "completed", "failed", "terminated", "timeout",
               "preempted", "lost", "cancelled")
CHANGE_KINDS = ("started", "completed", "failed", "terminated", "timeout", "preempted", "lost",
                "cancelled", "warn", "adopted")


@dataclass(frozen=True)
class RunFacts:
    """What the caller gathered about the run an event is about: the attempt record (None
    when the store has none) and, when `needs_details`, its metric history and, for an
    ending whose run folder is on this machine (`output_here`), the tails of its logs."""

    record: RunRecord | None
    history: Mapping[str, Sequence[tuple[int | None, float]]] = field(default_factory=dict)
    stderr: str | None = None
    stdout: str | None = None
    output_here: bool = False


def slug_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:60] or "x"


def _metric_order(metrics: Iterable[str], primary: str) -> list[str]:
    names = list(dict.fromkeys(metrics))
    return ([primary] if primary in names else []) + sorted(n for n in names if n != primary)


def primary_metric(data: ResultsInput) -> str:
    """The metric the digest ranks by, as the results workbook's leaderboard: Settings
    `primary_metric`, else the first metric with a goal (declared first), else the first
    any run has."""
    return _whole(data).metric


def _whole(data: ResultsInput, metric: str | None = None) -> Digested:
    """What the digest shows of a whole ResultsInput's runs (one batch), ranking `metric`
    if given."""
    runs = DigestRuns.of(data)
    if metric is None:
        [(_, d)] = digest_runs(data, runs, [Audience(())])
        return d
    d = Digested(data)
    d.metric = metric
    for batch, histories in runs.batches():
        for r in batch:
            d.add(r, histories.get(r.key))
    return d


def _cid(kind: str, n: int, token: str) -> str:
    return f"{kind}-{n}.{token}@nero"


def _token(msg_id: str) -> str:
    """A short tag of one message for the Content-IDs of its images."""
    return hashlib.blake2b(msg_id.encode(), digest_size=4).hexdigest()


# ---------------------------------------------------------------------------- notices
def notice_batches(events: Sequence[Event], specs: Mapping[str, RunSpec]) -> list[list[Event]]:
    """The events whose row's `notify` names them, as one notice each, or one notice for
    all of a kind when there are more than GROUP_OVER of it."""
    return [batch for _, batch in addressed_batches(events, specs, {})]


def addressed_batches(events: Sequence[Event], specs: Mapping[str, RunSpec],
                      named: Mapping[str, tuple[str, ...]]) -> list[tuple[tuple[str, ...], list[Event]]]:
    """`notice_batches` with the recipients of each: the addresses the row's `notify`
    names (`named`, by experiment id), () for Settings email_to. Events whose rows name
    different recipients never share a notice."""
    groups: dict[tuple[str, tuple[str, ...]], list[Event]] = {}
    for e in events:
        word = EVENT_WORDS.get(e.kind)
        spec = specs.get(e.key)
        if word and spec is not None and word in spec.notify:
            groups.setdefault((word, named.get(spec.experiment, ())), []).append(e)
    batches: list[tuple[tuple[str, ...], list[Event]]] = []
    for (_, to), group in groups.items():
        batches += [(to, group)] if len(group) > GROUP_OVER else [(to, [e]) for e in group]
    return batches


def digest_audiences(data: ResultsInput) -> list[Audience]:
    """The digests to send: one of all rows to Settings email_to and every person whose
    digest is `all` (always, as before people: the outbox keeps it without recipients),
    then one per person whose digest is `mine`, of the rows whose `notify` names them
    (none for a person no row names)."""
    everyone = list(data.settings.email_to)
    everyone += [p.email for p in data.people if p.digest == "all" and p.email not in everyone]
    audiences = [Audience(tuple(everyone))]
    for p in data.people:
        rows = frozenset(experiment for experiment, to in data.named if p.email in to)
        if p.digest == "mine" and rows and p.email not in everyone:
            audiences.append(Audience((p.email,), rows, p.name))
    return audiences


def is_detailed(index: int, count: int) -> bool:
    """Whether the `index`-th of `count` events in one notice shows its run's details."""
    return index < (1 if count == 1 else DETAILED_IN_GROUP)


def needs_details(event: Event, detailed: bool) -> bool:
    """Whether a notice item shows metrics, curves and (for endings) logs: the caller
    gathers the history and log tails for it only then."""
    return detailed and event.kind != "started"


def _params(rec: RunRecord | None, spec: RunSpec | None) -> list[tuple[str, str]]:
    pairs = rec.params if rec is not None else (spec.params if spec is not None else ())
    return [(k, format_metric(v)) for k, v in pairs]


def notice_item(event: Event, spec: RunSpec | None, facts: RunFacts, workbook: Workbook, n: int, token: str,
                images: list[Part], detailed: bool = True) -> dict[str, Any]:
    """The template context for one event's notice (and its curve image, appended to `images`)."""
    from ..plots import run_curves_png

    rec = facts.record
    settings = workbook.settings
    item: dict[str, Any] = {
        "key": event.key, "kind": event.kind, "word": EVENT_WORDS.get(event.kind, event.kind),
        "title": "warning" if event.kind == "warn" else event.kind, "reason": event.reason,
        "short_reason": one_line(event.reason, 70), "time": event.time, "attempt": event.attempt,
        "experiment": spec.experiment if spec else (rec.experiment if rec else ""),
        "params": _params(rec, spec), "number": rec.number if rec else None,
        "state": rec.state.value if rec else "", "cluster": rec.cluster if rec else "",
        "host": rec.host if rec else "", "run_dir": rec.run_dir if rec else "",
        "job_id": rec.job_id if rec else "", "command": rec.command if rec else "",
        "started_at": rec.started_at if rec else None, "ended_at": rec.ended_at if rec else None,
        "runtime": rec.runtime(event.time) if rec else None, "exit_code": rec.exit_code if rec else None,
        "step": rec.step if rec else None, "metrics": [], "image": None, "stderr": None, "stdout": None,
        "output_elsewhere": "", "ending": event.kind in ENDINGS, "detailed": detailed,
    }
    if rec is None or not needs_details(event, detailed):
        return item
    history = facts.history
    shown = run_values(rec, history, workbook.goals)
    order = _metric_order(shown, settings.primary_metric)
    item["metrics"] = [{"name": m, "last": shown[m].last, "best": shown[m].best, "goal": workbook.goal(m)}
                       for m in order]
    png = run_curves_png(history, _metric_order(history, settings.primary_metric),
                         {m: workbook.goal(m) for m in history}, f"{rec.key} (attempt {rec.attempt})")
    if png is not None:
        cid = _cid("curve", n, token)
        images.append(Part(png, f"curves-{n}.png", cid=cid))
        item["image"] = cid
    if item["ending"]:
        if facts.output_here:
            item["stderr"] = facts.stderr
            item["stdout"] = facts.stdout
        elif rec.run_dir:
            item["output_elsewhere"] = f"the run's output is on {rec.cluster or 'its cluster'}: {rec.run_dir}"
    return item


def build_notice(events: Sequence[Event], facts: Sequence[RunFacts], specs: Mapping[str, RunSpec],
                 workbook: Workbook, project_dir: Path, sender: str, recipients: tuple[str, ...], now: float,
                 warnings: list[str]) -> Draft:
    """One notice for `events` (one, or a batch of one kind), `facts[i]` about `events[i]`."""
    word = EVENT_WORDS.get(events[0].kind, events[0].kind)
    msg_id = message_id(word, sender)
    token = _token(msg_id)
    images: list[Part] = []
    items = [notice_item(e, specs.get(e.key), f, workbook, i, token, images, detailed=is_detailed(i, len(events)))
             for i, (e, f) in enumerate(zip(events, facts, strict=True))]
    ctx = {"items": items, "item": items[0], "word": word, "project": project_dir.name,
           "workbook": str(workbook.path), "now": now, "grouped": len(items) > 1, "tail_lines": TAIL_LINES,
           "title": items[0]["title"] if len(items) == 1 else f"{len(items)} runs {word}"}
    subject, text, html = render_message("notice", ctx, project_dir, warnings)
    headers = {"X-Nero-Kind": "notice", "X-Nero-Event": word, "X-Nero-Project": project_dir.name}
    if len(events) == 1:
        headers["X-Nero-Run"] = events[0].key
        thread = hashlib.blake2b(f"{project_dir}:{events[0].key}".encode(), digest_size=8).hexdigest()
        headers["References"] = f"<run.{thread}@nero>"
    data = compose(subject=subject, sender=sender, recipients=recipients, text=text, html=html, images=images,
                   msg_id=msg_id, date=now, headers=headers)
    label = slug_name(f"{word}-{events[0].key if len(events) == 1 else len(events)}")
    return Draft("notice", subject, msg_id, data, label)


def fallback_notice(event: Event, error: Exception, project_dir: Path, sender: str, recipients: tuple[str, ...],
                    now: float) -> Draft:
    """A plain notice for when building the full one failed: the event is never lost."""
    subject = f"[nero] {event.key} {event.kind}: {one_line(event.reason, 70)}"
    text = (f"{event.key} {event.kind} at {local_time(event.time)} (attempt {event.attempt}).\n\n{event.reason}\n\n"
            f"(nero could not build the full notice: {type(error).__name__}: {error})\n")
    msg_id = message_id(event.kind, sender)
    data = compose(subject=subject, sender=sender, recipients=recipients, text=text,
                   html=f"<pre>{html_lib.escape(text)}</pre>", msg_id=msg_id, date=now,
                   headers={"X-Nero-Kind": "notice", "X-Nero-Event": EVENT_WORDS.get(event.kind, event.kind),
                            "X-Nero-Run": event.key, "X-Nero-Project": project_dir.name})
    return Draft("notice", subject, msg_id, data, event.kind)


# ---------------------------------------------------------------------------- digest
def _counts(d: Digested, every_row: bool) -> list[dict[str, Any]]:
    """Runs by state, then the runs the sheet asks for that have not started (held, or
    waiting for a slot or for the experiments named in `after`)."""
    rows = [{"state": s, "n": d.counts[s]} for s in STATE_ORDER if d.counts.get(s)]
    rows += [{"state": s, "n": n} for s, n in sorted(d.counts.items()) if s not in STATE_ORDER]
    waiting = d.waiting(every_row)
    if waiting:
        rows.append({"state": "not started", "n": waiting})
    return rows


def leaderboard(data: ResultsInput, metric: str) -> list[dict[str, Any]]:
    """The digest's leaderboard of `metric`: the DIGEST_TOP runs with a finite best, the
    best first, with the values every surface shows (`orchestrator.shown`)."""
    return _whole(data, metric).leaders() if metric else []


def _resources(d: Digested) -> dict[str, Any]:
    clusters = [{"name": name, "live": c.live, "runs": c.runs, "runtime": c.runtime, "peak_rss": c.rss,
                 "peak_gpu": c.gpu, "min_disk": c.disk} for name, c in sorted(d.clusters.items())]
    return {"clusters": clusters, "hungry": [{"key": r.key, "rss": r.peak_rss_mb, "gpu": r.peak_gpu_mem_mb}
                                            for r in d.hungry()]}


def _changes(data: ResultsInput, since: float | None) -> dict[str, Any]:
    events = [e for e in data.events if (since is None or e.time > since) and e.kind in CHANGE_KINDS]
    submitted = sum(1 for e in data.events if (since is None or e.time > since) and e.kind == "submitted")
    counts = Counter(e.kind for e in events)
    return {
        "counts": [{"kind": k, "n": counts[k]} for k in CHANGE_KINDS if counts.get(k)],
        "submitted": submitted, "total": len(events),
        "events": [{"time": e.time, "key": e.key, "kind": e.kind, "reason": e.reason, "attempt": e.attempt}
                   for e in events[-DIGEST_CHANGES:][::-1]],
    }


def _experiment_plots(data: ResultsInput, d: Digested, runs_of: DigestRuns, token: str,
                      warnings: list[str]) -> tuple[list[dict[str, Any]], list[Part], int]:
    """One plot of the digest's metric (else the experiment's first metric) per experiment,
    the most recently active experiments first, each experiment's runs read when it is
    plotted; returns (plots, images, experiments left out)."""
    from ..plots import experiment_curves_png

    experiments = sorted(d.last_seen, key=lambda e: -d.last_seen[e])
    plots: list[dict[str, Any]] = []
    images: list[Part] = []
    skipped = 0
    for experiment in experiments:
        names = d.names.get(experiment)
        if not names:
            continue
        if len(plots) >= DIGEST_PLOTS:
            skipped += 1
            continue
        chosen = d.metric if d.metric in names else sorted(names)[0]
        goal = default_goal(chosen, data.goals)
        try:
            runs, histories, total = drawn_runs(runs_of, experiment, chosen, data.goals, DIGEST_LINES)
            title = f"{experiment}: {chosen} ({goal} is better)" + (
                f", the best {len(runs)} of {total:,} runs" if total > len(runs) else "")
            png = experiment_curves_png(runs, histories, chosen, goal, title)
        except Exception as e:  # a plot must not cost the digest
            warnings.append(f"digest: no plot for {experiment}: {type(e).__name__}: {e}")
            continue
        if png is None:
            continue
        cid = _cid("experiment", len(plots), token)
        images.append(Part(png, f"{slug_name(experiment)}-{slug_name(chosen)}.png", cid=cid))
        plots.append({"experiment": experiment, "metric": chosen, "image": cid, "runs": total, "drawn": len(runs)})
    return plots, images, skipped


def _searches(data: ResultsInput, token: str, images: list[Part], warnings: list[str]) -> list[dict[str, Any]]:
    """Each search row's line (`views.optimisation_line`) and the image of its history (added to `images`)."""
    from ..plots import search_history_png

    out = []
    for i, o in enumerate(data.optimisations):
        cid = ""
        try:
            png = search_history_png(o)
        except Exception as e:  # a plot must not cost the digest
            warnings.append(f"digest: no plot for the search {o.experiment}: {type(e).__name__}: {e}")
            png = None
        if png is not None:
            cid = _cid("search", i, token)
            images.append(Part(png, f"{slug_name(o.experiment)}-search.png", cid=cid))
        out.append({"experiment": o.experiment, "line": optimisation_line(o), "image": cid})
    return out


def build_digest(data: ResultsInput, d: Digested, runs_of: DigestRuns, attachments: Sequence[Part],
                 attachment_note: str, since: float | None, project_dir: Path, sender: str,
                 recipients: tuple[str, ...], now: float, warnings: list[str], rows: Sequence[str] = ()) -> Draft:
    """The digest since the last one (`since`; None: the first) of the runs `d` learnt
    (`digest.digest_runs`) and `data`'s events, with the results workbook attached
    (`attachments`) or `attachment_note` saying why not; `rows` names the experiments a
    person's own digest covers (none: every row)."""
    metric = d.metric
    msg_id = message_id("digest", sender)
    token = _token(msg_id)
    plots, images, skipped = _experiment_plots(data, d, runs_of, token, warnings)
    counts = _counts(d, every_row=not rows)
    ctx = {
        "project": project_dir.name, "workbook": data.experiments_path, "now": now, "since": since,
        "counts": counts, "total": d.total, "live": d.live,
        "summary": ", ".join(f"{c['n']} {c['state']}" for c in counts) or "no runs yet",
        "changes": _changes(data, since), "metric": metric, "goal": default_goal(metric, data.goals),
        "leaders": d.leaders() if metric else [], "plots": plots, "plots_skipped": skipped,
        "resources": _resources(d), "attachment": attachments[0].filename if attachments else "",
        "attachment_note": attachment_note, "finished": d.finished, "rows": sorted(rows),
        "searches": _searches(data, token, images, warnings),
    }
    subject, text, html = render_message("digest", ctx, project_dir, warnings)
    data_bytes = compose(subject=subject, sender=sender, recipients=recipients, text=text, html=html, images=images,
                         attachments=attachments, msg_id=msg_id, date=now,
                         headers={"X-Nero-Kind": "digest", "X-Nero-Project": project_dir.name})
    return Draft("digest", subject, msg_id, data_bytes, "digest")
