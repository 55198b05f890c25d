"""How `nero status` shows many runs at a cost that follows what is shown, not the project's
size: a summary above `summary_rows()` runs (counts by state and experiment, the runs that
need attention or changed last, the top runs by the primary metric), plain aligned tables
laid out in one go (no per-row layout), and `--json` / `--csv` written row by row."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import click

from ..units import format_duration, format_significant

if TYPE_CHECKING:
    from ..model import Action, ActionKind, RunRecord
    from ..state.tally import Tally

__all__ = ["ATTENTION", "SHOWN", "group_actions", "plain_table", "print_summary", "stream_csv", "stream_json", "summary_rows", "write_lines"]

SUMMARY_ROWS = 200  # more runs than this and `nero status` (no selector) prints a summary
ATTENTION = ("failed", "lost", "timeout", "preempted")  # states that ask the user to look
SHOWN = 10  # runs listed under each heading of the summary


def summary_rows() -> int:
    """The number of runs above which `nero status` summarises (env NERO_STATUS_ROWS, else 200)."""
    try:
        return max(0, int(os.environ.get("NERO_STATUS_ROWS", SUMMARY_ROWS)))
    except ValueError:
        return SUMMARY_ROWS


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: frozenset[int] = frozenset()
                ) -> Iterator[str]:
    """The lines of an aligned table (two spaces between columns, `right` columns right-aligned),
    the widths computed once over all rows; the last column is not padded."""
    widths = [len(h) for h in headers]
    for r in rows:
        for i, cell in enumerate(r):
            if len(cell) > widths[i]:
                widths[i] = len(cell)
    last = len(headers) - 1

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c if i == last else c.rjust(widths[i]) if i in right else c.ljust(widths[i])
                         for i, c in enumerate(cells)).rstrip()

    yield line(headers)
    for r in rows:
        yield line(r)


def write_lines(lines: Iterable[str]) -> None:
    """Print lines, a thousand at a time."""
    out = sys.stdout
    batch: list[str] = []
    for x in lines:
        batch.append(x)
        if len(batch) >= 1000:
            out.write("\n".join(batch) + "\n")
            batch.clear()
    if batch:
        out.write("\n".join(batch) + "\n")
    out.flush()


def stream_json(items: Iterable[dict[str, object]]) -> None:
    """A JSON list (as json.dumps(list, indent=2) writes it), written item by item."""
    out = sys.stdout
    first = True
    for item in items:
        body = json.dumps(item, indent=2).replace("\n", "\n  ")
        out.write(("[\n  " if first else ",\n  ") + body)
        first = False
    out.write("[]\n" if first else "\n]\n")
    out.flush()


def stream_csv(header: Sequence[str] | None, rows: Iterable[Sequence[object]]) -> None:
    """CSV with a header line (none when None: more rows of the same table), written row by row."""
    w = csv.writer(sys.stdout, lineterminator="\n")
    if header is not None:
        w.writerow(header)
    w.writerows(rows)
    sys.stdout.flush()


def _state(r: RunRecord) -> str:
    return r.state.value + (" (orphaned)" if r.orphaned else "")


def _counts(counts: Iterable[tuple[str, int]]) -> str:
    return ", ".join(f"{n:,} {s}" for s, n in counts)


def _short(runs: Sequence[RunRecord], now: float, extra: str = "", value: dict[str, str] | None = None) -> Iterator[str]:
    headers = ["#", "run", "state", "runtime", *([extra] if extra else []), "reason"]
    rows = [[str(r.number), r.key, _state(r), format_duration(r.runtime(now)),
             *([(value or {}).get(r.key, "")] if extra else []), r.reason[:80]] for r in runs]
    for x in plain_table(headers, rows, right=frozenset({0, 3} | ({4} if extra else set()))):
        yield "  " + x


def print_summary(t: Tally, now: float, threshold: int) -> None:
    """The summary of many runs (see the module's docstring) from their tally (counts, and
    the runs each heading shows: `Project.tally`); metric values are the best each run's
    current attempt recorded."""
    lines = [f"{t.total:,} runs: {_counts(t.states)}", "", "By experiment:"]
    lines += ["  " + x for x in plain_table(["experiment", "runs", "states"],
                                            [[e, f"{sum(n for _, n in states):,}", _counts(states)]
                                             for e, states in t.experiments[:50]], right=frozenset({1}))]
    if len(t.experiments) > 50:
        lines.append(f"  … {len(t.experiments) - 50:,} more experiments")
    if t.attention:
        lines += ["", f"Need attention: {_counts(t.attention)} (latest {len(t.attention_runs)}; "
                      f"`nero status failed` lists them all):", *_short(t.attention_runs, now)]
    lines += ["", f"Changed last ({len(t.recent)}):", *_short(t.recent, now)]
    if t.top:
        top = [r for _, r in t.top]
        value = {r.key: format_significant(v) for v, r in t.top}
        lines += ["", f"Top {len(top)} by {t.metric} ({t.goal}, best value):",
                  *_short(top, now, extra=t.metric, value=value)]
    lines += ["", f"A summary: more than {threshold:,} runs. `nero status all` lists every run; a selector "
                  "some (`nero status 'sweep*'`, `nero status 'loss < 0.2'`); --json or --csv writes every run."]
    click.echo("\n".join(lines))


def group_actions(actions: Iterable[Action]) -> list[tuple[ActionKind, str, str, str]]:
    """Actions alike as one line each: (kind, "9,800 runs of lr-sweep", reason, where), in the
    order each group first appears; a group whose runs have different reasons shows the first
    and how many others."""
    groups: dict[tuple[ActionKind, str, str], list[Action]] = {}
    for a in actions:
        experiment = a.spec.experiment if a.spec is not None else a.key.partition("[")[0]
        where = f"→ {a.cluster}" if a.cluster else (a.waiting or "")
        groups.setdefault((a.kind, experiment, where), []).append(a)
    out = []
    for (kind, experiment, where), members in groups.items():
        reasons = Counter(a.reason for a in members)
        reason = members[0].reason
        if len(reasons) > 1:
            reason += f" (and {len(reasons) - 1:,} other reason{'s' if len(reasons) > 2 else ''})"
        what = members[0].key if len(members) == 1 else f"{len(members):,} runs of {experiment}"
        out.append((kind, what, reason, where))
    return out
