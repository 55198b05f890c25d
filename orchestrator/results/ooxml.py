"""The results workbook: a state-store snapshot (`ResultsInput`) → `results.xlsx`, atomically.

This is the sheet researchers compare runs in, kept live by the reconcile loop. It is
generated: edits made to it are overwritten by the next write. Every sheet has one header
row and documented columns, so `pandas.read_excel(path, sheet_name=None)` reads it as is
(`sheets/RESULTS.md` is the same reference for users).

Summary: one row per run, ordered by `#`
    `#` int · `run` str (the run key) · `experiment` str · one column per parameter (union
    over runs, first-seen order; a parameter whose name collides with a fixed column is
    headed `<name> (param)`) · `state` str · `reason` str · `attempt` int · `cluster` str ·
    `job_id` str · `host` str · `start`, `end` datetime (local time of the machine that
    wrote the file; the header comments name the zone) · `runtime_s` float (seconds; for a
    live run, up to the time of the write) · `runtime` duration (`[h]:mm:ss`; pandas reads
    a timedelta) · `<metric>@<checkpoint>` float for every metric × Settings `checkpoints`
    (the value of the last point with step ≤ checkpoint, empty unless the run reached that
    step) · `last:<metric>` float · `best:<metric>` float (best in the metric's goal
    direction) · `git_commit` str · `git_dirty` bool · `command` str (as run) · `run_dir`
    str (a `file://` hyperlink for a local run; `host:path` text for a remote cluster).
    Metric values that are not finite are the text `nan`, `inf` or `-inf` (red), so a
    diverged run stands out; pandas reads `nan` as NaN by default (`pd.to_numeric`
    converts `inf`). The best value of each metric column is bold green.

Curves: the leaderboard of `primary_metric` (Settings; else the first metric)
    `rank` int · `run` str · `experiment` str · `best:<metric>` float — the best 30 runs,
    with a bar chart beside the table; below, per experiment, a native line chart per
    metric comparing its runs (x = step; a log y axis when values span over a factor 50;
    more than 20 runs are shared out over several charts). The charts plot Curve data.
Curve data: the downsampled metric histories the charts draw, two rows per run × metric
    `experiment` str · `run` str · `metric` str · `axis` str (`step`, then `value`) ·
    `points` int · `1` … `N` float (the points). At most 200 points per run × metric (fewer
    when the workbook would exceed 600,000 points, never fewer than 32): the first, the
    last and each bucket's minimum and maximum are kept, so spikes and the best value
    survive. Only finite points are plotted: a diverged run's line ends where it diverged.
    Points without a step count one past the previous point (the first is step 1); a step
    logged twice (a resumed attempt) keeps its latest value.
Events: `time` datetime (local) · `run` str · `attempt` int · `kind` str · `reason` str —
    chronological; the newest 10,000 events.
Resources: `run` str · `peak_rss_mb` float · `peak_gpu_mem_mb` float ·
    `min_disk_free_mb` float — runs with at least one sample.
Queue: `run` str · `reason` str — pending and held runs and why they wait.

Text from logs, the experiments sheet or the cluster never becomes a formula or a link:
every string is written as a string (`=HYPERLINK(…)` stays text); control characters and
ANSI colour codes are removed.

Writing. The workbook goes to a temporary file in the target's directory and is renamed
into place, so a reader never sees half a file; a failed write leaves the old file
intact. `write_results` skips the write when the file already holds the same content
(`fingerprint`; the time of the write alone is not a change), so the loop may call it
every pass. Curves and Curve data are the expensive part (about 2 s for 1,000 runs ×
1,500 points): when the file's curves were built from the same histories, or when a
caller accepts curves a few minutes old (`charts=None`, the default, rebuilds them at
most every five minutes once histories are large; `charts=False` never), those two
sheets are copied from the existing file byte for byte and only the rest is rebuilt —
about 0.25 s for 1,000 runs. xlsxwriter writes each sheet's frame (columns, comments,
filters, conditional formats, links, charts, page setup); nero writes the rows itself
(`_Cells`: a cell is one f-string, against ~6 µs through xlsxwriter) and `_assemble`
splices them in. Histories come as `model.Series` (arrays of steps and values).
`plot_curves` draws the same curves with matplotlib for `nero plot` and the e-mail digest.
"""

from __future__ import annotations

import hashlib
import marshal
import math
import os
import re
import struct
import tempfile
import time
import zipfile
import zlib
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .errors import NeroError
from .model import MAX_GOAL_NAMES, Event, ResultsInput, RunRecord, RunState, Scalar, Series

FORMAT_VERSION = "1"
SHEETS = ("Summary", "Curves", "Curve data", "Events", "Resources", "Queue")
CURVE_SHEETS = (2, 3)  # 1-based positions of the sheets copied on a summary-only refresh
MAX_POINTS_PER_SERIES = 200
MIN_POINTS_PER_SERIES = 32
MAX_TOTAL_POINTS = 600_000
SERIES_PER_CHART = 20
LEADERBOARD_SIZE = 30
MAX_EVENTS = 10_000
MAX_LINKS = 65_000  # Excel keeps at most 65,530 hyperlinks per sheet
MAX_ROWS = 1_048_576
MAX_TEXT = 32_767
CHEAP_POINTS = 100_000  # histories this small get fresh curves on every write
CURVES_MAX_AGE = 300.0  # seconds: how stale curves may get between full writes (charts=None)

FIXED_COLUMNS = ("#", "run", "experiment", "state", "reason", "attempt", "cluster", "job_id",
                 "host", "start", "end", "runtime_s", "runtime", "git_commit", "git_dirty",
                 "command", "run_dir")

# (fill, font) per state: completed green, failed/lost red, terminated orange, live blue, waiting grey
STATE_COLOURS: dict[RunState, tuple[str, str]] = {
    RunState.COMPLETED: ("#C6EFCE", "#006100"),
    RunState.FAILED: ("#FFC7CE", "#9C0006"),
    RunState.LOST: ("#FFC7CE", "#9C0006"),
    RunState.TIMEOUT: ("#FFC7CE", "#9C0006"),
    RunState.TERMINATED: ("#FCD5B4", "#974706"),
    RunState.PREEMPTED: ("#FCD5B4", "#974706"),
    RunState.RUNNING: ("#BDD7EE", "#1F4E78"),
    RunState.SUBMITTED: ("#DDEBF7", "#1F4E78"),
    RunState.PENDING: ("#EDEDED", "#595959"),
    RunState.CANCELLED: ("#EDEDED", "#595959"),
}
# Line colours (matplotlib's tab10); runs 11-20 of a chart repeat them dashed.
PALETTE = ("#1F77B4", "#FF7F0E", "#2CA02C", "#D62728", "#9467BD",
           "#8C564B", "#E377C2", "#7F7F7F", "#BCBD22", "#17BECF")

_ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufffe\uffff]")

Points = tuple[tuple[int | None, float], ...]
_FIRST, _SECOND = itemgetter(0), itemgetter(1)
_LAST, _BEST = -1, -2  # metric columns that are not checkpoints


# ------------------------------------------------------------------------------ public API
def write_results(path: str | Path, data: ResultsInput, *, charts: bool | None = None,
                  remote_hosts: Mapping[str, str] | None = None) -> bool:
    """Write the results workbook for `data` to `path` atomically; True if it was written.

    Skips the write (returns False) when the file already shows exactly this content, so
    calling it every pass is cheap. Curves and Curve data are copied from the existing
    file when they were built from the same histories. When the histories changed:
    `charts=True` rebuilds them; `charts=False` keeps the file's curves as of its last
    full write (a summary-only refresh, well under a second for 1,000 runs); the default
    (None) rebuilds them when that is cheap (≤ 100,000 points) or when the file's curves
    are CURVES_MAX_AGE (300 s of `data.now`) old, else refreshes the rest only — so the
    loop is never held up for long and the curves lag by at most five minutes. A file
    without usable curves always gets them.
    `remote_hosts` maps the name of each non-local cluster to its ssh host, so a remote
    run directory shows as `host:path` text rather than a local link; without it, a run
    on cluster `local` (or none) or whose directory exists here is local.
    """
    path = Path(path)
    view = _View(data, remote_hosts)
    summary_fp, curves_fp = view.fingerprints()
    old = _Existing.open(path)
    if charts is None:
        charts = (old is None or view.points() <= CHEAP_POINTS
                  or not data.now - old.curves_at < CURVES_MAX_AGE)
    if old is not None and old.summary_fp == summary_fp and (old.curves_fp == curves_fp or not charts):
        return False
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    tmp, base = (_temp(directory, f".{path.name}.", suffix) for suffix in (".tmp", ".base"))
    try:
        done = False
        if old is not None and (old.curves_fp == curves_fp or not charts):
            rows = _write_book(base, view, summary_fp, old.curves_fp, curves=False, curves_at=old.curves_at)
            try:
                _assemble(base, tmp, rows, old.path)
                done = True
            except (_CannotReuse, OSError, zipfile.BadZipFile, KeyError, struct.error, UnicodeDecodeError):
                pass  # the old file's curves cannot be taken over: build them
        if not done:
            _assemble(base, tmp, _write_book(base, view, summary_fp, curves_fp, curves=True))
        _fsync(tmp)
        os.replace(tmp, path)
    except (OSError, _CannotReuse) as exc:
        raise NeroError(f"cannot write the results workbook {path}: {exc}") from exc
    except Exception as exc:
        if type(exc).__module__.startswith("xlsxwriter"):
            raise NeroError(f"cannot write the results workbook {path}: {exc}") from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)
        base.unlink(missing_ok=True)
    return True


def _temp(directory: Path, prefix: str, suffix: str) -> Path:
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    os.close(fd)
    return Path(name)


def fingerprint(data: ResultsInput, remote_hosts: Mapping[str, str] | None = None) -> str:
    """A cheap hash of what `write_results` would show (the time of the pass excluded).

    Histories enter by their length and first, middle and last points, which catches the
    way they change (appended points); a runtime that only grew is not a change."""
    s, c = _View(data, remote_hosts).fingerprints()
    return hashlib.blake2b(f"{s}:{c}".encode(), digest_size=16).hexdigest()


def plot_curves(data_runs: Sequence[RunRecord], histories: Mapping[str, Mapping[str, Points]],
                metric: str, out: str | Path, *, goal: str | None = None,
                title: str | None = None) -> Path:
    """Draw `metric` over step for each run (one line per run, legend with run keys) to a PNG.

    The same curves as the workbook's charts, at full resolution: only finite points,
    steps normalised the same way, the same colours. Raises NeroError, naming the metrics
    that have points, when none of the runs has points for `metric`."""
    from matplotlib.figure import Figure

    out = Path(out)
    lines: list[tuple[str, Sequence[float], Sequence[float]]] = []
    available: set[str] = set()
    for r in data_runs:
        h = histories.get(r.key, {})
        available.update(m for m, pts in h.items() if pts)
        steps, values = _finite(*_normalize(h.get(metric, ())))
        if steps:
            lines.append((r.key, steps, values))
    if not lines:
        have = ", ".join(sorted(available)) or "none"
        raise NeroError(f"no points for metric {metric!r} in the {len(data_runs)} selected "
                        f"run(s); metrics with points: {have}")
    goal = goal or _default_goal(metric)
    n = len(lines)
    fig = Figure(figsize=(10, 5.6), dpi=110, layout="constrained")
    ax = fig.subplots()
    firsts = sorted(vs[0] for _, _, vs in lines)
    cap = _axis_cap(goal, [max(vs) for _, _, vs in lines], firsts[len(firsts) // 2])
    for i, (key, steps, values) in enumerate(lines):
        off = cap is not None and min(values) > cap
        ax.plot(steps, values, color=PALETTE[i % 10], linestyle="--" if (i // 10) % 2 else "-",
                linewidth=1.4, marker="o" if len(steps) < 3 else None, markersize=3,
                label=f"{key} (off the chart)" if off else key)
    shown = [v for _, _, vs in lines for v in vs if cap is None or v <= cap]
    log = _log_scale(shown + ([cap] if cap is not None else []))
    if log:
        ax.set_yscale("log")
    if cap is not None:  # a diverging run's line leaves the top, as in the workbook's charts
        low = min(shown)
        ax.set_ylim(low / 1.5 if log else min(0.0, low), cap)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} ({goal} is better), {n} run{'s' if n != 1 else ''}")
    ax.grid(True, color="#DDDDDD", linewidth=0.6)
    if n <= 40:
        ax.legend(fontsize=7 if n > 12 else 8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  ncols=1 if n <= 20 else 2, frameon=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


# ------------------------------------------------------------------------------ the view
def _default_goal(metric: str) -> str:
    return "max" if metric.split("@")[0].lower() in MAX_GOAL_NAMES else "min"


def _normalize(points: Iterable[tuple[int | None, float]]) -> tuple[Sequence[float], Sequence[float]]:
    """Steps ascending (a step logged twice keeps its latest value); a missing step is the
    previous step + 1 (the first is 1)."""
    if isinstance(points, Series):
        if points.ordered:  # every step given, ascending: nothing to do
            return points.steps, points.values
        steps, values = points.steps.tolist(), points.values.tolist()  # no step is NaN
        if not steps:
            return (), ()
        missing = math.isnan(sum(steps))
    else:
        pts = points if isinstance(points, tuple | list) else tuple(points)
        if not pts:
            return (), ()
        steps = list(map(_FIRST, pts))
        values = list(map(_SECOND, pts))
        missing = None in steps
    if missing:
        prev: float = 0
        for i, s in enumerate(steps):
            prev = steps[i] = prev + 1 if s is None or s != s else s
    ordered = sorted(steps)
    if ordered == steps:  # the usual case, checked at C speed; bisect finds the latest duplicate
        return steps, values
    latest = dict(zip(steps, values, strict=True))
    keys = sorted(latest)
    return keys, [latest[k] for k in keys]


def _all_finite(values: Sequence[float]) -> bool:
    try:
        return math.isfinite(sum(values))
    except TypeError:
        return False


def _finite(steps: Sequence[float], values: Sequence[float]) -> tuple[Sequence[float], Sequence[float]]:
    if _all_finite(values):
        return steps, values
    keep = [i for i, v in enumerate(values) if isinstance(v, int | float) and math.isfinite(v)]
    return [steps[i] for i in keep], [values[i] for i in keep]


def _downsample(steps: Sequence[float], values: Sequence[float], n: int) -> tuple[Sequence[float], Sequence[float]]:
    """At most `n` points: first, last, and each bucket's minimum and maximum in order."""
    m = len(values)
    if m <= n:
        return steps, values
    buckets = max(1, (n - 2) // 2)
    inner = m - 2
    keep = [0]
    for b in range(buckets):
        lo = 1 + b * inner // buckets
        hi = 1 + (b + 1) * inner // buckets
        if lo >= hi:
            continue
        seg = values[lo:hi]  # slice, min, max and index all run at C speed
        i, j = lo + seg.index(min(seg)), lo + seg.index(max(seg))
        if i == j:
            keep.append(i)
        else:
            keep.extend((i, j) if i < j else (j, i))
    keep.append(m - 1)
    return [steps[i] for i in keep], [values[i] for i in keep]


def _better(goal: str, a: float, b: float) -> bool:
    return a > b if goal == "max" else a < b


def _best_of(goal: str, values: Iterable[float]) -> float | None:
    best: float | None = None
    for v in values:
        if isinstance(v, int | float) and math.isfinite(v) and (best is None or _better(goal, v, best)):
            best = v
    return best


def _log_scale(values: Iterable[float]) -> bool:
    lo, hi = math.inf, -math.inf
    for v in values:
        if v <= 0:
            return False
        lo, hi = min(lo, v), max(hi, v)
    return hi > lo and hi / lo >= 50


def _text(s: Any) -> str:
    """A cell string: no control characters, no ANSI codes, within Excel's length limit."""
    s = str(s)
    if not s.isprintable():
        s = _CONTROL.sub("\ufffd", _ANSI.sub("", s))
    if len(s) > MAX_TEXT:
        s = s[: MAX_TEXT - 1] + "…"
    return s


def _nonfinite(v: float) -> str:
    return "nan" if v != v else ("inf" if v > 0 else "-inf")


def _short_label(key: str, experiment: str) -> str:
    """`lr-sweep[lr=0.01,layers=2]` → `lr=0.01,layers=2` inside a chart of `lr-sweep`."""
    if key.startswith(experiment + "[") and key.endswith("]") and len(key) > len(experiment) + 2:
        key = key[len(experiment) + 1:-1]
    return _chart_text(key)


def _chart_text(s: str) -> str:
    s = _text(s)[:255]
    return " " + s if s.startswith("=") else s  # xlsxwriter reads a leading = as a reference


def _excel_time(ts: float | None) -> float | None:
    """A Unix time as an Excel date serial in local time (what write_datetime would store)."""
    if ts is None or not math.isfinite(ts):
        return None
    return (ts + time.localtime(ts).tm_gmtoff) / 86400.0 + 25569.0


def _zone() -> str:
    t = time.localtime()
    off = t.tm_gmtoff // 60
    sign = "+" if off >= 0 else "-"
    return f"{t.tm_zone}, UTC{sign}{abs(off) // 60:02d}:{abs(off) % 60:02d}"


@dataclass
class _Run:
    record: RunRecord
    last: dict[str, float] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    at: dict[str, tuple[float | None, ...]] = field(default_factory=dict)  # per checkpoint


@dataclass(frozen=True)
class _Stats:
    """What the Summary shows of one history."""

    last: float
    best: float | None  # the best finite value; None if no value was finite
    at: tuple[float | None, ...]  # the value at each checkpoint, None if not reached


# Histories of finished runs do not change: their statistics are remembered between writes
# of a long-lived process (bounded), so a refresh does not sort every history again.
_STATS_MEMO: dict[tuple[Any, ...], _Stats] = {}
_STATS_MEMO_MAX = 200_000


def _signature(p: Sequence[Any]) -> tuple[Any, ...]:
    n = len(p)
    return (n, p[0], p[n // 4], p[n // 2], p[3 * n // 4], p[-1]) if n else (0,)


def _stats(key: str, metric: str, points: Sequence[tuple[int | None, float]], goal: str,
           checkpoints: tuple[int, ...], signature: tuple[Any, ...] | None = None) -> _Stats | None:
    if not points:
        return None
    memo_key = (key, metric, signature or _signature(points), goal, checkpoints)
    hit = _STATS_MEMO.get(memo_key)
    if hit is not None:
        return hit
    steps, values = _normalize(points)
    if _all_finite(values):
        best: float | None = max(values) if goal == "max" else min(values)
    else:
        best = _best_of(goal, values)
    at: list[float | None] = []
    for cp in checkpoints:
        i = bisect_right(steps, cp) - 1
        at.append(values[i] if steps[-1] >= cp and i >= 0 else None)
    stats = _Stats(values[-1], best, tuple(at))
    if len(_STATS_MEMO) >= _STATS_MEMO_MAX:
        _STATS_MEMO.clear()
    _STATS_MEMO[memo_key] = stats
    return stats


class _View:
    """What the workbook shows, computed once from a ResultsInput."""

    def __init__(self, data: ResultsInput, remote_hosts: Mapping[str, str] | None):
        self.data = data
        self.remote_hosts = dict(remote_hosts) if remote_hosts is not None else None
        self.runs = sorted(data.runs, key=lambda r: (r.number, r.key))
        self.checkpoints = tuple(sorted({int(c) for c in data.settings.checkpoints}))
        seen: dict[str, None] = {}
        if data.settings.primary_metric:
            seen[data.settings.primary_metric] = None
        seen.update(dict.fromkeys(data.goals))
        for r in self.runs:
            seen.update(dict.fromkeys(r.last))
            seen.update(dict.fromkeys(r.best))
            seen.update(dict.fromkeys(data.histories.get(r.key, {})))
        self.metrics = list(seen)
        self.primary = data.settings.primary_metric or (self.metrics[0] if self.metrics else "")
        self._prepared: list[_Run] | None = None
        self._signatures: dict[str, dict[str, tuple[Any, ...]]] = {}  # of the histories, once computed

    def points(self) -> int:
        return sum(len(p) for h in self.data.histories.values() for p in h.values())

    def goal(self, metric: str) -> str:
        g = self.data.goals.get(metric) or _default_goal(metric)
        return "max" if g == "max" else "min"

    # --------------------------------------------------------------- fingerprints
    def _history_signature(self, key: str) -> tuple[Any, ...]:
        h = self.data.histories.get(key, {})
        sig = tuple((m, _signature(p)) for m, p in h.items())
        self._signatures[key] = dict(sig)
        return sig

    def fingerprints(self) -> tuple[str, str]:
        d = self.data
        common = (FORMAT_VERSION, self.primary, sorted(d.goals.items()), self.metrics)
        curves = [common]
        summary = [common, self.checkpoints, d.experiments_path, sorted((self.remote_hosts or {}).items()),
                   self.remote_hosts is None]
        for r in self.runs:
            hist = self._history_signature(r.key)
            curves.append((r.number, r.key, r.experiment, r.best.get(self.primary), hist))
            summary.append((
                r.number, r.key, r.experiment, r.params, r.state.value, r.reason, r.attempt,
                r.cluster, r.job_id, r.host, r.started_at, r.ended_at,
                sorted(r.last.items()), sorted(r.best.items()), r.git_commit, r.git_dirty,
                r.command, r.run_dir, r.peak_rss_mb, r.peak_gpu_mem_mb, r.min_disk_free_mb, hist,
            ))
        summary.append((len(d.events), [(e.time, e.key, e.kind, e.reason, e.attempt) for e in d.events[-50:]]))
        summary.append(d.queue)
        return _hash(summary), _hash(curves)

    # --------------------------------------------------------------- per-run values
    def prepared(self) -> list[_Run]:
        if self._prepared is None:
            out = []
            cps = self.checkpoints
            for r in self.runs:
                run = _Run(r)
                hist = self.data.histories.get(r.key, {})
                sigs = self._signatures.get(r.key, {})
                for m in self.metrics:
                    goal = self.goal(m)
                    st = _stats(r.key, m, hist.get(m, ()), goal, cps, sigs.get(m))
                    if m in r.last:
                        run.last[m] = r.last[m]
                    elif st is not None:
                        run.last[m] = st.last
                    candidates = [r.best[m]] if m in r.best else []
                    if st is not None:
                        run.at[m] = st.at
                        if st.best is not None:
                            candidates.append(st.best)
                    best = _best_of(goal, candidates)
                    if best is not None:
                        run.best[m] = best
                    elif candidates or st is not None:
                        run.best[m] = math.nan  # seen, but never finite: a diverged run
                out.append(run)
            self._prepared = out
        return self._prepared

    def series(self, run: _Run, metric: str) -> tuple[Sequence[float], Sequence[float]]:
        """The finite points of a history, steps ascending."""
        return _finite(*_normalize(self.data.histories.get(run.record.key, {}).get(metric, ())))

    def leaderboard(self) -> list[tuple[_Run, float]]:
        m = self.primary
        if not m:
            return []
        ranked = [(run, run.best[m]) for run in self.prepared()
                  if m in run.best and math.isfinite(run.best[m])]
        ranked.sort(key=lambda rv: (-rv[1] if self.goal(m) == "max" else rv[1], rv[0].record.number))
        return ranked[:LEADERBOARD_SIZE]

    def run_dir_cell(self, r: RunRecord) -> tuple[str, str | None]:
        """(text, file URL or None) for the run directory."""
        if not r.run_dir:
            return "", None
        remote: str | None
        if self.remote_hosts is not None:
            remote = (self.remote_hosts.get(r.cluster) or r.cluster) if r.cluster in self.remote_hosts else None
        elif r.cluster in ("", "local") or os.path.isdir(r.run_dir):
            remote = None
        else:
            remote = r.cluster or r.host
        if remote is not None:
            return f"{remote}:{r.run_dir}", None
        p = os.path.abspath(os.path.expanduser(r.run_dir))
        return r.run_dir, "File://" + quote(p if p.startswith("/") else "/" + p, safe="/:@")


def _hash(obj: Any) -> str:
    try:
        raw = marshal.dumps(obj, 2)  # version 2 has no back-references: equal values, equal bytes
    except ValueError:  # a type marshal does not know (a str or float subclass, …)
        raw = repr(obj).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


# ------------------------------------------------------------------------------ formats
class _Formats:
    """Every cell format, created and numbered in one fixed order, so styles.xml is the same
    in every file this version writes (a copied sheet's style numbers stay valid)."""

    def __init__(self, book: Any):
        add = book.add_format
        self.header = add({"bold": True, "bg_color": "#D9E1F2", "bottom": 1, "valign": "top"})
        self.int = add({"num_format": "0"})
        self.mb = add({"num_format": "#,##0"})
        self.seconds = add({"num_format": "#,##0"})
        self.duration = add({"num_format": "[h]:mm:ss"})
        self.datetime = add({"num_format": "yyyy-mm-dd hh:mm"})
        self.datetime_s = add({"num_format": "yyyy-mm-dd hh:mm:ss"})
        self.nonfinite = add({"font_color": "#C00000", "italic": True, "align": "right"})
        self.bool = add({"num_format": '"TRUE";"TRUE";"FALSE"'})
        self.dirty = add({"num_format": '"TRUE";"TRUE";"FALSE"', "font_color": "#9C5700", "bold": True})
        self.mono = add({"font_name": "Consolas"})
        self.decimals = [add({"num_format": "0" if d == 0 else "0." + "0" * d}) for d in range(7)]
        self.sci = add({"num_format": "0.00E+00"})
        self.state: dict[RunState, Any] = {}
        by_colour: dict[tuple[str, str], Any] = {}
        for state, colours in STATE_COLOURS.items():
            if colours not in by_colour:
                by_colour[colours] = add({"bg_color": colours[0], "font_color": colours[1]})
            self.state[state] = by_colour[colours]
        self.best = add({"bold": True, "font_color": "#006100", "bg_color": "#E2EFDA"})
        self.link = book.get_default_url_format()
        ordered = [self.header, self.int, self.mb, self.seconds, self.duration, self.datetime,
                   self.datetime_s, self.nonfinite, self.bool, self.dirty, self.mono, *self.decimals, self.sci,
                   *by_colour.values(), self.link]
        for f in ordered:  # pin the style numbers (xlsxwriter assigns them at first use)
            pin = getattr(f, "_get_xf_index", None)
            if pin is not None:
                pin()
        pin = getattr(self.best, "_get_dxf_index", None)
        if pin is not None:
            pin()
        # the style numbers of the cells nero writes itself (_Cells)
        self.xf: dict[int, int] = {id(f): f.xf_index for f in ordered if getattr(f, "xf_index", None) is not None}

    def metric(self, values: Iterable[float]) -> Any:
        """About four significant digits at the column's typical magnitude."""
        d = _decimals(values)
        return self.sci if d is None else self.decimals[d]

    def fit(self, v: float, column: Any) -> Any:
        """The column's format, or a scientific one for a value it would show badly."""
        a = abs(v)
        return self.sci if a >= 1e7 or 0 < a < 1e-6 else column


# ------------------------------------------------------------------------------ cell rows
_ESCAPED = re.compile(r"(_x[0-9a-fA-F]{4}_)")


class _Cells:
    """The rows of one sheet as SpreadsheetML (`<sheetData>`), written here and spliced into
    the sheet xlsxwriter writes around them (columns, comments, filter, conditional
    formats, links, charts, page setup; see `_assemble`).

    Every sheet holds plain values: through xlsxwriter each cell cost about 6 µs (stored,
    then serialised) — most of a summary-only refresh, and 1.2 million Curve data cells in
    a full write. Here a cell is one f-string. Strings are inline (`t="inlineStr"`), as
    xlsxwriter writes them in constant-memory mode, so they never are formulas; a literal
    `_xHHHH_` is escaped as Excel expects (xlsxwriter does the same). Rows go to a spooled
    temporary file, so a large sheet does not sit in memory."""

    _SPOOL_ROWS = 256  # rows kept as strings before they are encoded into the spool

    def __init__(self, ncols: int, fmt: _Formats):
        from xlsxwriter.utility import xl_col_to_name

        self._names = [xl_col_to_name(c) for c in range(max(ncols, 1))]
        self._s = {f: f' s="{xf}"' for f, xf in fmt.xf.items() if xf}  # id(format) -> style attribute
        self._spool = tempfile.SpooledTemporaryFile(max_size=8 << 20)
        self._rows: list[str] = []
        self._cells: list[str] = []
        self._open = ""  # the current row's start tag
        self._r = "0"  # the current row's number (1-based, as text)
        self.rows = 0  # rows started

    def row(self, row: int, height: float | None = None) -> None:
        """Start row `row` (0-based, ascending)."""
        self._flush()
        self._r = str(row + 1)
        extra = f' ht="{height:g}" customHeight="1"' if height else ""
        self._open = f'<row r="{self._r}"{extra}>'
        self.rows = row + 1

    def number(self, col: int, v: float, fmt: Any = None) -> None:
        """A finite number (the caller checks)."""
        self._cells.append(f'<c r="{self._names[col]}{self._r}"{self._s.get(id(fmt), "")}><v>{v!r}</v></c>')

    def string(self, col: int, s: str, fmt: Any = None) -> None:
        """A string already made safe for a cell by `_text`."""
        if "_x" in s:
            s = _ESCAPED.sub(r"_x005F\1", s)
        if "&" in s or "<" in s or ">" in s:
            s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        t = '<t xml:space="preserve">' if s[:1].isspace() or s[-1:].isspace() else "<t>"
        self._cells.append(f'<c r="{self._names[col]}{self._r}"{self._s.get(id(fmt), "")} t="inlineStr">'
                           f"<is>{t}{s}</t></is></c>")

    def boolean(self, col: int, v: bool, fmt: Any = None) -> None:
        self._cells.append(f'<c r="{self._names[col]}{self._r}"{self._s.get(id(fmt), "")} t="b"><v>{int(v)}</v></c>')

    def numbers(self, col: int, values: Iterable[float]) -> None:
        """Finite numbers without a format from column `col` on."""
        names, r = self._names, self._r
        self._cells.append("".join([f'<c r="{names[c]}{r}"><v>{v!r}</v></c>' for c, v in enumerate(values, col)]))

    def _flush(self) -> None:
        if self._open:
            self._rows.append(self._open + "".join(self._cells) + "</row>")
            if len(self._rows) >= self._SPOOL_ROWS:
                self._spool.write("".join(self._rows).encode("utf-8", "replace"))
                self._rows = []
        self._open, self._cells = "", []

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        """The rows' XML, a chunk at a time (once)."""
        self._flush()
        self._spool.write("".join(self._rows).encode("utf-8", "replace"))
        self._rows = []
        self._spool.seek(0)
        while chunk := self._spool.read(size):
            yield chunk
        self._spool.close()

    def dimension(self) -> str:
        last = self._names[-1]
        return f"A1:{last}{max(self.rows, 1)}" if self.rows else "A1"


# ------------------------------------------------------------------------------ writing
def _new_book(path: Path, view: _View, summary_fp: str, curves_fp: str, curves_at: float) -> Any:
    import xlsxwriter

    book = xlsxwriter.Workbook(str(path), {
        "in_memory": True,  # the sheets' rows are written by _Cells: xlsxwriter's part is small
        "strings_to_formulas": False, "strings_to_urls": False, "strings_to_numbers": False,
        "nan_inf_to_errors": False,
    })
    book.set_properties({
        "title": "nero results",
        "subject": view.data.experiments_path,
        "author": "nero", "company": "", "comments":
            f"Generated by nero from {view.data.experiments_path}; edits are overwritten.",
        "created": datetime.fromtimestamp(view.data.now, UTC).replace(tzinfo=None),
    })
    book.set_custom_property("nero_format", FORMAT_VERSION)
    book.set_custom_property("nero_summary", summary_fp)
    book.set_custom_property("nero_curves", curves_fp)
    book.set_custom_property("nero_curves_at", repr(float(curves_at)))
    return book


def _write_book(path: Path, view: _View, summary_fp: str, curves_fp: str, *, curves: bool,
                curves_at: float | None = None) -> dict[str, _Cells]:
    """Write the workbook's frame with xlsxwriter (every sheet, Curves and Curve data empty
    with curves=False); returns the sheets' rows, by part name, for `_assemble`."""
    stamp = curves_at if curves_at is not None else view.data.now
    book = _new_book(path, view, summary_fp, curves_fp, stamp)
    fmt = _Formats(book)
    sheets = {name: book.add_worksheet(name) for name in SHEETS}
    rows = {"Summary": _write_summary(sheets["Summary"], view, fmt)}
    if curves:
        rows["Curves"], rows["Curve data"] = _write_curves(book, sheets["Curves"], sheets["Curve data"], view, fmt)
    rows["Events"] = _write_events(sheets["Events"], view, fmt)
    rows["Resources"] = _write_resources(sheets["Resources"], view, fmt)
    rows["Queue"] = _write_queue(sheets["Queue"], view, fmt)
    book.close()
    return {f"xl/worksheets/sheet{SHEETS.index(name) + 1}.xml": cells for name, cells in rows.items()}


class _Widths:
    def __init__(self, headers: Sequence[str], cap: Mapping[int, int] | None = None, sample: int = 500):
        self.w = [len(h) + 2 for h in headers]
        self.cap = cap or {}
        self.sample = sample

    def see(self, row: int, col: int, text_len: int) -> None:
        if row <= self.sample and text_len + 1 > self.w[col]:
            self.w[col] = text_len + 1

    def apply(self, ws: Any, default_cap: int = 40) -> None:
        for c, w in enumerate(self.w):
            ws.set_column(c, c, min(max(w, 6), self.cap.get(c, default_cap)))


def _header(ws: Any, cells: _Cells, headers: Sequence[str], fmt: _Formats,
            comments: Mapping[int, str] | None = None, height: float | None = None) -> None:
    """The header row, into `cells`, and its comments, through xlsxwriter."""
    cells.row(0, height)
    ws.set_row(0, height)  # xlsxwriter needs to know the row its comments are in
    for c, h in enumerate(headers):
        cells.string(c, _text(h), fmt.header)
    for c, note in (comments or {}).items():
        ws.write_comment(0, c, note, {"x_scale": 2.2, "y_scale": 1.4})


def _page(ws: Any, landscape: bool = True) -> None:
    if landscape:
        ws.set_landscape()
    ws.set_paper(9)
    ws.fit_to_pages(1, 0)
    ws.set_margins(left=0.4, right=0.4, top=0.5, bottom=0.5)


def _write_value(cells: _Cells, col: int, v: Scalar, fmt: _Formats, num_fmt: Any = None) -> int:
    """Write one value by type into the current row; returns the display length (for widths)."""
    if v is None or v == "":
        return 0
    if isinstance(v, bool):
        cells.boolean(col, v, fmt.bool)
        return 5
    if isinstance(v, int | float):
        if math.isfinite(v):
            cells.number(col, v, num_fmt)
            return min(len(repr(v)), 12)
        cells.string(col, _nonfinite(v), fmt.nonfinite)
        return 4
    s = _text(v)
    cells.string(col, s, num_fmt)
    return len(s)


def _write_summary(ws: Any, view: _View, fmt: _Formats) -> _Cells:
    runs = view.prepared()
    params: dict[str, None] = {}
    for run in runs:
        params.update(dict.fromkeys(name for name, _ in run.record.params))
    param_names = list(params)
    fixed = set(FIXED_COLUMNS)
    # (header, metric, what): what is a checkpoint's index, LAST or BEST
    metric_cols: list[tuple[str, str, int]] = []
    for m in view.metrics:
        metric_cols += [(f"{m}@{cp}", m, i) for i, cp in enumerate(view.checkpoints)]
    for m in view.metrics:
        metric_cols += [(f"last:{m}", m, _LAST), (f"best:{m}", m, _BEST)]
    taken = fixed | {h for h, _, _ in metric_cols}
    head = ["#", "run", "experiment", *[f"{p} (param)" if p in taken else p for p in param_names],
            "state", "reason", "attempt", "cluster", "job_id", "host", "start", "end",
            "runtime_s", "runtime", *[h for h, _, _ in metric_cols],
            "git_commit", "git_dirty", "command", "run_dir"]
    p0 = 3
    s0 = p0 + len(param_names)
    m0 = s0 + 10
    g0 = m0 + len(metric_cols)
    zone = _zone()
    comments = {
        0: "Run number (stable: order of first appearance). This workbook is generated by nero; "
           "edits are overwritten.",
        1: "Run key: experiment[varied parameters]",
        s0 + 1: "Why the run is in its state (scheduler, rule, exit code, …)",
        s0 + 6: f"Start of the current attempt, local time of the machine that wrote this file ({zone})",
        s0 + 7: f"End of the current attempt, local time ({zone})",
        s0 + 8: "Runtime of the current attempt in seconds (a live run: up to the time of this write)",
        s0 + 9: "Runtime as a duration [h]:mm:ss",
        g0 + 1: "TRUE if the working tree had uncommitted changes when the run started",
        g0 + 2: "The command line as run (rendered)",
        g0 + 3: "Run directory: a link for a local run, host:path for a remote cluster",
    }
    for i, (_, m, what) in enumerate(metric_cols):
        goal = view.goal(m)
        if what == _LAST:
            comments[m0 + i] = f"Last value of {m}"
        elif what == _BEST:
            comments[m0 + i] = f"Best value of {m} ({goal} is better)"
        else:
            cp = view.checkpoints[what]
            comments[m0 + i] = (f"{m} at step {cp}: the last point with step ≤ {cp}; empty if the run "
                                f"has not reached step {cp}")
    cells = _Cells(len(head), fmt)
    _header(ws, cells, head, fmt, comments, height=30)
    widths = _Widths(head, {1: 48, g0: 12, g0 + 2: 60, g0 + 3: 60})

    # metric column values first, so each column gets a number format fitting its magnitude
    values: list[list[float | None]] = []
    for run in runs:
        row: list[float | None] = []
        for _, m, what in metric_cols:
            if what == _LAST:
                row.append(run.last.get(m))
            elif what == _BEST:
                row.append(run.best.get(m))
            else:
                at = run.at.get(m)
                row.append(at[what] if at is not None else None)
        values.append(row)
    col_fmt = [fmt.metric(row[i] for row in values if row[i] is not None) for i in range(len(metric_cols))]

    links = 0
    now = view.data.now
    string, number = cells.string, cells.number
    for i, run in enumerate(runs):
        r = run.record
        row = i + 1
        if row >= MAX_ROWS:
            break
        cells.row(row)
        number(0, r.number, fmt.int)
        string(1, _text(r.key))
        widths.see(row, 1, len(r.key))
        string(2, _text(r.experiment))
        widths.see(row, 2, len(r.experiment))
        pvals = dict(r.params)
        for j, name in enumerate(param_names):
            if name in pvals:
                widths.see(row, p0 + j, _write_value(cells, p0 + j, pvals[name], fmt))
        string(s0, r.state.value, fmt.state.get(r.state))
        widths.see(row, s0, len(r.state.value))
        for j, v in enumerate((r.reason, r.attempt, r.cluster, r.job_id, r.host), start=1):
            widths.see(row, s0 + j, _write_value(cells, s0 + j, v, fmt, fmt.int if j == 2 else None))
        start, end = _excel_time(r.started_at), _excel_time(r.ended_at)
        if start is not None:
            number(s0 + 6, start, fmt.datetime)
        if end is not None:
            number(s0 + 7, end, fmt.datetime)
        runtime = r.runtime(now)
        if runtime is not None and math.isfinite(runtime):
            number(s0 + 8, round(runtime, 3), fmt.seconds)
            number(s0 + 9, runtime / 86400.0, fmt.duration)
        for j, v in enumerate(values[i]):
            if v is None:
                continue
            if v - v == 0:  # finite
                number(m0 + j, v, fmt.fit(v, col_fmt[j]))
            else:
                string(m0 + j, _nonfinite(v), fmt.nonfinite)
        if r.git_commit:
            string(g0, _text(r.git_commit), fmt.mono)
        cells.boolean(g0 + 1, bool(r.git_dirty), fmt.dirty if r.git_dirty else fmt.bool)
        if r.command:
            string(g0 + 2, _text(r.command), fmt.mono)
            widths.see(row, g0 + 2, len(r.command))
        text, url = view.run_dir_cell(r)
        if text:
            widths.see(row, g0 + 3, len(text))
            if url is not None and links < MAX_LINKS and len(url) < 2000:
                # xlsxwriter keeps the link (and writes a cell _assemble replaces by this one)
                ws.write_url(row, g0 + 3, url, fmt.link, _text(text))
                string(g0 + 3, _text(text), fmt.link)
                links += 1
            else:
                string(g0 + 3, _text(text))
    for j in range(len(metric_cols)):
        widths.w[m0 + j] = max(widths.w[m0 + j], 9)
    widths.w[s0 + 6] = widths.w[s0 + 7] = 17
    widths.w[s0 + 9] = max(widths.w[s0 + 9], 10)
    widths.apply(ws)
    n = min(len(runs), MAX_ROWS - 1)
    if n:
        from xlsxwriter.utility import xl_col_to_name

        for j, (_, m, _) in enumerate(metric_cols):
            # a formula rule, not "bottom 1": LibreOffice would count empty cells as zeros
            col = xl_col_to_name(m0 + j)
            best = "MAX" if view.goal(m) == "max" else "MIN"
            ws.conditional_format(1, m0 + j, n, m0 + j, {
                "type": "formula", "format": fmt.best,
                "criteria": f"=AND(ISNUMBER({col}2),{col}2={best}({col}$2:{col}${n + 1}))"})
    ws.freeze_panes(1, 2)
    ws.autofilter(0, 0, n, len(head) - 1)
    ws.set_landscape()
    ws.set_paper(9)
    ws.set_print_scale(60)
    ws.print_across()
    ws.set_margins(left=0.4, right=0.4, top=0.5, bottom=0.5)
    ws.repeat_rows(0)
    ws.repeat_columns(0, 1)
    return cells


def _points_per_series(n_series: int) -> int:
    if n_series <= 0:
        return MAX_POINTS_PER_SERIES
    return max(MIN_POINTS_PER_SERIES, min(MAX_POINTS_PER_SERIES, MAX_TOTAL_POINTS // n_series))


@dataclass
class _Placed:
    row: int  # row of the step row in Curve data (0-based); values are row + 1
    n: int
    label: str
    x_max: float
    y_min: float
    y_max: float
    y_first: float


def _write_curves(book: Any, ws: Any, data_ws: Any, view: _View, fmt: _Formats) -> tuple[_Cells, _Cells]:
    """Curves and Curve data; returns their rows."""
    runs = view.prepared()
    # ---- Curve data: two rows per run × metric, grouped by experiment then metric
    experiments: dict[str, list[_Run]] = {}
    for run in runs:
        experiments.setdefault(run.record.experiment, []).append(run)
    order: list[tuple[str, str, list[_Run]]] = []
    for exp, exp_runs in experiments.items():
        for m in view.metrics:
            with_m = [run for run in exp_runs if m in run.at]
            if with_m:
                order.append((exp, m, with_m))
    n_series = sum(len(rs) for _, _, rs in order)
    per = _points_per_series(n_series)
    head = ["experiment", "run", "metric", "axis", "points"]
    data_cells = _Cells(len(head) + per, fmt)
    _header(data_ws, data_cells, head, fmt)
    for k in range(per):
        data_cells.number(5 + k, k + 1, fmt.header)
    placed: dict[tuple[str, str], list[_Placed]] = {}
    widths = _Widths(head)
    row = 1
    string = data_cells.string
    for exp, m, with_m in order:
        slot = placed.setdefault((exp, m), [])
        exp_t, m_t = _text(exp), _text(m)
        for run in with_m:
            if row + 1 >= MAX_ROWS:
                break
            steps, values = _downsample(*view.series(run, m), per)
            if not steps:
                continue
            key = _text(run.record.key)
            n = len(steps)
            for axis, seq in (("step", steps), ("value", values)):
                data_cells.row(row)
                string(0, exp_t)
                string(1, key)
                string(2, m_t)
                string(3, axis)
                data_cells.number(4, n)
                data_cells.numbers(5, seq)
                row += 1
            widths.see(row, 0, len(exp_t))
            widths.see(row, 1, len(key))
            widths.see(row, 2, len(m_t))
            slot.append(_Placed(row - 2, n, _short_label(run.record.key, run.record.experiment), steps[-1],
                                min(values), max(values), values[0]))
    widths.apply(data_ws, 48)
    data_ws.set_column(5, 5 + per - 1, 10)
    data_ws.freeze_panes(1, 5)
    _page(data_ws)

    # ---- Curves: the leaderboard table, its chart, then the charts of each experiment
    board = view.leaderboard()
    value_head = f"best:{view.primary}" if view.primary else "best"
    head = ["rank", "run", "experiment", value_head]
    cells = _Cells(len(head), fmt)
    _header(ws, cells, head, fmt)
    lw = _Widths(head, {1: 44})
    values = [v for _, v in board]
    vfmt = fmt.metric(values)
    for i, (run, v) in enumerate(board, start=1):
        cells.row(i)
        cells.number(0, i, fmt.int)
        key = _text(run.record.key)
        cells.string(1, key)
        cells.string(2, _text(run.record.experiment))
        cells.number(3, v, fmt.fit(v, vfmt))
        lw.see(i, 1, len(key))
        lw.see(i, 2, len(run.record.experiment))
    lw.w[3] = max(lw.w[3], 12)
    lw.apply(ws)

    width, gap, per_row = 560, 16, 3
    # rows of charts: the leaderboard; then per experiment, a row per group of runs with the
    # experiment's metrics side by side (at most per_row a row)
    layout: list[list[tuple[str, str, list[_Placed], str]]] = []
    for exp in dict.fromkeys(e for e, _, _ in order):
        metrics = [m for e, m, _ in order if e == exp]
        n_runs = max(len(placed.get((exp, m), [])) for m in metrics)
        groups = math.ceil(n_runs / SERIES_PER_CHART)
        size = math.ceil(n_runs / groups) if groups else SERIES_PER_CHART  # balanced groups
        for g in range(groups):
            charts = []
            for m in metrics:
                series = placed.get((exp, m), [])
                chunk = series[g * size:(g + 1) * size]
                if chunk:
                    part = f", runs {g * size + 1}–{g * size + len(chunk)} of {len(series)}" if groups > 1 else ""
                    charts.append((exp, m, chunk, part))
            for i in range(0, len(charts), per_row):
                layout.append(charts[i:i + per_row])

    table_px = sum(_column_px(min(max(w, 6), lw.cap.get(c, 40))) for c, w in enumerate(lw.w)) + 64
    board_height = max(240, 90 + 22 * len(board)) if board else 0
    board_width = 900
    content_px = max(table_px + board_width, per_row * (width + gap) if layout else 0, 1)
    # A4 landscape, fit to the width. The scale estimated here is at least the one the
    # spreadsheet program picks (its columns are as wide or wider), so a page holds at
    # least page_px: a break before each row of charts that would not fit keeps charts whole.
    scale = max(10, min(100, int(1040 * 100 / content_px)))
    page_px = 650 * 100 // scale
    _page(ws)

    if board:
        n = len(board)
        d = _decimals(values)
        label = "0.00E+00" if d is None else "[>=100000]0.00E+00;" + ("0" if d == 0 else "0." + "0" * d)
        chart = book.add_chart({"type": "bar"})
        chart.add_series({
            "name": _chart_text(value_head),
            "categories": ["Curves", 1, 1, n, 1], "values": ["Curves", 1, 3, n, 3],
            # the chart's cached copy of its cells (xlsxwriter cannot see the rows _Cells writes)
            "categories_data": [_text(run.record.key) for run, _ in board], "values_data": values,
            "fill": {"color": PALETTE[0]}, "border": {"none": True}, "gap": 60,
            "data_labels": {"value": True, "num_format": label, "font": {"size": 8}},
        })
        goal = view.goal(view.primary)
        chart.set_title({"name": _chart_text(f"Leaderboard: best {view.primary} ({goal} is better), top {n}"),
                         "name_font": {"size": 11, "bold": True}})
        chart.set_y_axis({"reverse": True, "num_font": {"size": 8}})
        x_axis: dict[str, Any] = {"name": _chart_text(view.primary), "name_font": {"size": 9, "bold": False},
                                  "num_font": {"size": 8},
                                  "major_gridlines": {"visible": True, "line": {"color": "#D9D9D9"}}}
        cap = _axis_cap(goal, values, sorted(values)[len(values) // 2])
        if cap is not None:  # a diverged run's bar runs off the chart; its label tells the value
            x_axis["max"] = cap
        chart.set_x_axis(x_axis)
        chart.set_legend({"none": True})
        chart.set_size({"width": board_width, "height": board_height})
        _place(ws, chart, len(head) + 1, 0, 0)
    y = _row_align(max(board_height, 20 * (len(board) + 1)) + 2 * gap)
    page_top, breaks = 0, []
    for charts in layout:
        row_height = max(max(320, 110 + 17 * len(chunk)) for _, _, chunk, _ in charts)
        if y + row_height > page_top + page_px and y > page_top:  # keep each row of charts on one page
            breaks.append(y // 20)
            page_top = y
        for k, (exp, m, chunk, part) in enumerate(charts):
            goal = view.goal(m)
            firsts = sorted(s.y_first for s in chunk)
            cap = _axis_cap(goal, [s.y_max for s in chunk], firsts[len(firsts) // 2])
            shown = [v for s in chunk for v in (s.y_min, s.y_max) if cap is None or v <= cap]
            log = _log_scale(shown + ([cap] if cap is not None else []))
            if log and cap is not None:
                cap = 10 ** math.ceil(math.log10(cap))
            chart = book.add_chart({"type": "scatter", "subtype": "straight"})
            for i, s in enumerate(chunk):
                off = cap is not None and s.y_min > cap  # diverged from the start: say so
                chart.add_series({
                    "name": _chart_text(s.label + " (off the chart)") if off else s.label,
                    "categories": ["Curve data", s.row, 5, s.row, 5 + s.n - 1],
                    "values": ["Curve data", s.row + 1, 5, s.row + 1, 5 + s.n - 1],
                    # no cached copy of the points: spreadsheet programs draw from the cells
                    "categories_data": [], "values_data": [],
                    "line": {"color": PALETTE[i % 10], "width": 1.5,
                             "dash_type": "dash" if (i // 10) % 2 else "solid"},
                    "marker": ({"type": "circle", "size": 4, "fill": {"color": PALETTE[i % 10]},
                                "border": {"color": PALETTE[i % 10]}} if s.n < 3 else {"type": "none"}),
                })
            chart.set_title({"name": _chart_text(f"{exp}: {m} ({goal} is better){part}"),
                             "name_font": {"size": 11, "bold": True}})
            chart.set_x_axis({"name": "step", "name_font": {"size": 9, "bold": False}, "num_font": {"size": 8},
                              "max": max(s.x_max for s in chunk),
                              "major_gridlines": {"visible": True, "line": {"color": "#E4E4E4"}}})
            y_axis: dict[str, Any] = {"name": _chart_text(m), "name_font": {"size": 9, "bold": False},
                                      "num_font": {"size": 8},
                                      "major_gridlines": {"visible": True, "line": {"color": "#E4E4E4"}}}
            if log:
                y_axis["log_base"] = 10
            if cap is not None:  # a diverging run's line leaves the top of the chart
                y_axis["max"] = cap
            chart.set_y_axis(y_axis)
            chart.set_legend({"position": "right", "font": {"size": 8}})
            chart.set_size({"width": width, "height": row_height})
            _place(ws, chart, 0, k * (width + gap), y)
        y = _row_align(y + row_height + gap)
    if breaks:
        ws.set_h_pagebreaks(breaks[:1000])
    return cells, data_cells


def _decimals(values: Iterable[float]) -> int | None:
    """Decimals showing about four significant digits of the typical value; None: scientific."""
    mags = sorted(abs(v) for v in values if isinstance(v, int | float) and math.isfinite(v) and v != 0)
    if not mags:
        return 3
    med = mags[len(mags) // 2]
    if med >= 1e7 or med < 1e-5:
        return None
    return max(0, min(6, 3 - math.floor(math.log10(med))))


def _axis_cap(goal: str, values: Sequence[float], typical: float) -> float | None:
    """An upper axis bound that keeps diverged runs (huge values of a metric to minimise)
    from flattening the others: ten times the typical value, when something exceeds it."""
    if goal == "max" or not values or not typical > 0 or min(values) < 0:
        return None
    cap = 10 * typical
    return _nice(cap) if max(values) > cap else None


def _nice(x: float) -> float:
    """The next 1, 2 or 5 × 10^k at or above x."""
    e = 10 ** math.floor(math.log10(x))
    return next(m * e for m in (1, 2, 5, 10) if m * e >= x)


def _row_align(y: int) -> int:
    return -(-y // 20) * 20


def _column_px(width: float) -> int:
    """Excel's pixel width of a column `width` characters wide (Calibri 11)."""
    return int(width * 7 + 0.5) + 5


def _label_format(values: Sequence[float]) -> str:
    mags = sorted(abs(v) for v in values if v)
    if not mags:
        return "0.000"
    d = max(0, min(6, 3 - math.floor(math.log10(mags[len(mags) // 2]))))
    return "0" if d == 0 else "0." + "0" * d


def _place(ws: Any, chart: Any, col: int, x: int, y: int) -> None:
    """Anchor a chart at pixel (x, y) from the top-left of column `col`, row 1 (rows are 20 px)."""
    ws.insert_chart(y // 20, col, chart, {"x_offset": x, "y_offset": y % 20, "object_position": 3})


def _write_events(ws: Any, view: _View, fmt: _Formats) -> _Cells:
    head = ["time", "run", "attempt", "kind", "reason"]
    zone = _zone()
    cells = _Cells(len(head), fmt)
    _header(ws, cells, head, fmt, {0: f"Local time of the machine that wrote this file ({zone})"})
    events: list[Event] = sorted(view.data.events, key=lambda e: e.time)[-MAX_EVENTS:]
    widths = _Widths(head, {4: 80})
    for row, e in enumerate(events, start=1):
        cells.row(row)
        t = _excel_time(e.time)
        if t is not None:
            cells.number(0, t, fmt.datetime_s)
        key = _text(e.key)
        cells.string(1, key)
        cells.number(2, e.attempt, fmt.int)
        cells.string(3, _text(e.kind))
        if e.reason:
            reason = _text(e.reason)
            cells.string(4, reason)
            widths.see(row, 4, len(reason))
        widths.see(row, 1, len(key))
        widths.see(row, 3, len(e.kind))
    widths.w[0] = 20
    widths.apply(ws, 48)
    ws.freeze_panes(1, 0)
    ws.autofilter(0, 0, len(events), len(head) - 1)
    _page(ws)
    return cells


def _write_resources(ws: Any, view: _View, fmt: _Formats) -> _Cells:
    head = ["run", "peak_rss_mb", "peak_gpu_mem_mb", "min_disk_free_mb"]
    cells = _Cells(len(head), fmt)
    _header(ws, cells, head, fmt, {1: "Peak resident memory of the job (MB)", 2: "Peak GPU memory (MB)",
                                   3: "Lowest free disk space seen in the run directory (MB)"})
    widths = _Widths(head)
    row = 0
    for r in view.runs:
        vals = (r.peak_rss_mb, r.peak_gpu_mem_mb, r.min_disk_free_mb)
        if all(v is None for v in vals):
            continue
        row += 1
        cells.row(row)
        key = _text(r.key)
        cells.string(0, key)
        widths.see(row, 0, len(key))
        for c, v in enumerate(vals, start=1):
            _write_value(cells, c, v, fmt, fmt.mb)
    widths.apply(ws, 48)
    ws.freeze_panes(1, 0)
    ws.autofilter(0, 0, row, len(head) - 1)
    _page(ws, landscape=False)
    return cells


def _write_queue(ws: Any, view: _View, fmt: _Formats) -> _Cells:
    head = ["run", "reason"]
    cells = _Cells(len(head), fmt)
    _header(ws, cells, head, fmt)
    widths = _Widths(head, {1: 80})
    for row, (key, reason) in enumerate(view.data.queue, start=1):
        cells.row(row)
        k, why = _text(key), _text(reason)
        cells.string(0, k)
        if why:
            cells.string(1, why)
        widths.see(row, 0, len(k))
        widths.see(row, 1, len(why))
    widths.apply(ws, 48)
    ws.freeze_panes(1, 0)
    ws.autofilter(0, 0, len(view.data.queue), 1)
    _page(ws, landscape=False)
    return cells


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


# ------------------------------------------------------------------------------ reusing curves
class _CannotReuse(Exception):
    pass


_PROP = re.compile(r'<property [^>]*name="([^"]+)"[^>]*><vt:lpwstr>([^<]*)</vt:lpwstr></property>')
_REL = re.compile(r'<Relationship ([^>]*)/>')
_ATTR = re.compile(r'(\w+)="([^"]*)"')
_OVERRIDE = re.compile(r'<Override PartName="([^"]+)" ContentType="([^"]+)"/>')
_SHEET = re.compile(r'<sheet name="([^"]*)"')
_STAMP = re.compile(r'<dcterms:(?:created|modified) [^>]*>([^<]*)<')


@dataclass
class _Existing:
    """An existing results workbook this version wrote (its curves may be reused)."""

    path: Path
    summary_fp: str
    curves_fp: str
    curves_at: float  # data.now of the write that built the curves

    @classmethod
    def open(cls, path: Path) -> _Existing | None:
        try:
            with zipfile.ZipFile(path) as z:
                core = z.read("docProps/core.xml").decode()
                props = dict(_PROP.findall(z.read("docProps/custom.xml").decode()))
            # a spreadsheet program that saved the file changed who modified it, and when
            stamps = _STAMP.findall(core)
            if "<cp:lastModifiedBy>nero</cp:lastModifiedBy>" not in core or len(set(stamps)) != 1:
                return None
        except (OSError, zipfile.BadZipFile, KeyError, UnicodeDecodeError):
            return None
        if props.get("nero_format") != FORMAT_VERSION:
            return None
        try:
            curves_at = float(props.get("nero_curves_at", "nan"))
        except ValueError:
            curves_at = math.nan
        return cls(path, props.get("nero_summary", ""), props.get("nero_curves", ""), curves_at)


def _rels(z: zipfile.ZipFile, name: str) -> list[dict[str, str]]:
    if name not in z.NameToInfo:
        return []
    return [dict(_ATTR.findall(m)) for m in _REL.findall(z.read(name).decode())]


_DIMENSION = re.compile(r'<dimension ref="[^"]*"/>')


def _splice(sheet: bytes, cells: _Cells) -> Iterator[bytes]:
    """xlsxwriter's sheet XML with `cells` as its rows (and their extent), in chunks."""
    text = sheet.decode("utf-8")
    start = text.find("<sheetData")
    if start < 0:
        raise _CannotReuse("a sheet without sheetData")
    if text.startswith("<sheetData/>", start):
        end = start + len("<sheetData/>")
    else:
        end = text.index("</sheetData>", start) + len("</sheetData>")
    yield (_DIMENSION.sub(f'<dimension ref="{cells.dimension()}"/>', text[:start], count=1)
           + "<sheetData>").encode()
    yield from cells.chunks()
    yield ("</sheetData>" + text[end:]).encode()


def _assemble(base: Path, out: Path, rows: Mapping[str, _Cells], old: Path | None = None) -> None:
    """Write `out`: the parts of `base` (xlsxwriter's file) copied as they are, the sheets
    named in `rows` with those rows spliced in, and, given `old`, Curves and Curve data
    (sheets, drawings, charts) copied byte for byte from `old` over `base`'s empty ones.
    Raises _CannotReuse when `old`'s curves do not fit `base`."""
    with zipfile.ZipFile(base) as zb, (zipfile.ZipFile(old) if old is not None else nullcontext()) as zo:
        replace, extra, types = _curves_of(zb, zo) if old is not None else ({}, [], None)
        with open(out, "wb") as f, open(base, "rb") as fb, (open(old, "rb") if old is not None else nullcontext()) as fo:
            w = _ZipWriter(f)
            for info in zb.infolist():
                name = info.filename
                if name in rows:
                    w.add_chunks(name, _splice(zb.read(name), rows[name]), info.date_time)
                elif name == "[Content_Types].xml" and types is not None:
                    w.add_chunks(name, [types], info.date_time)
                elif name in replace:
                    w.add_raw(fo, replace[name])
                else:
                    w.add_raw(fb, info)
            for info in extra:
                w.add_raw(fo, info)
            w.close()


def _curves_of(zb: zipfile.ZipFile, zo: zipfile.ZipFile) -> tuple[dict[str, zipfile.ZipInfo], list[zipfile.ZipInfo], bytes]:
    """What of `zo` replaces `zb`'s empty curve sheets: (sheet parts to swap, parts to add,
    the content types of the result)."""
    if zb.read("xl/styles.xml") != zo.read("xl/styles.xml"):
        raise _CannotReuse("styles differ")
    for z in (zb, zo):
        if tuple(_SHEET.findall(z.read("xl/workbook.xml").decode())) != SHEETS:
            raise _CannotReuse("sheets differ")
    replace: dict[str, zipfile.ZipInfo] = {}
    extra: list[zipfile.ZipInfo] = []
    for i in CURVE_SHEETS:
        sheet = f"xl/worksheets/sheet{i}.xml"
        rels = f"xl/worksheets/_rels/sheet{i}.xml.rels"
        if rels in zb.NameToInfo:
            raise _CannotReuse("an empty curve sheet has relationships")
        replace[sheet] = zo.getinfo(sheet)
        sheet_rels = _rels(zo, rels)
        if sheet_rels:
            extra.append(zo.getinfo(rels))
        for rel in sheet_rels:
            target = rel.get("Target", "")
            if not re.fullmatch(r"\.\./drawings/drawing\d+\.xml", target):
                raise _CannotReuse(f"unexpected relationship {target}")
            drawing = target.rsplit("/", 1)[1]
            extra += [zo.getinfo(f"xl/drawings/{drawing}"), zo.getinfo(f"xl/drawings/_rels/{drawing}.rels")]
            for crel in _rels(zo, f"xl/drawings/_rels/{drawing}.rels"):
                ctarget = crel.get("Target", "")
                if not re.fullmatch(r"\.\./charts/chart\d+\.xml", ctarget):
                    raise _CannotReuse(f"unexpected relationship {ctarget}")
                extra.append(zo.getinfo("xl/charts/" + ctarget.rsplit("/", 1)[1]))
    if any(info.filename in zb.NameToInfo for info in extra):
        raise _CannotReuse("part names collide")
    old_types = dict(_OVERRIDE.findall(zo.read("[Content_Types].xml").decode()))
    overrides = "".join(
        f'<Override PartName="/{info.filename}" ContentType="{old_types["/" + info.filename]}"/>'
        for info in extra if "/" + info.filename in old_types)
    types = zb.read("[Content_Types].xml").decode()
    if "</Types>" not in types:
        raise _CannotReuse("content types unreadable")
    return replace, extra, types.replace("</Types>", overrides + "</Types>").encode()


class _ZipWriter:
    """The few lines of the zip format needed to copy compressed members between archives."""

    def __init__(self, f: Any):
        self.f = f
        self.central: list[bytes] = []

    @staticmethod
    def _dos(dt: tuple[int, ...]) -> tuple[int, int]:
        y, mo, d, h, mi, s = dt
        return (h << 11) | (mi << 5) | (s // 2), ((max(y, 1980) - 1980) << 9) | (mo << 5) | d

    def _entry(self, name: str, method: int, crc: int, csize: int, usize: int,
               dt: tuple[int, ...], data: bytes) -> None:
        offset = self.f.tell()
        if max(offset, csize, usize) >= 0xFFFFFFFF or len(self.central) >= 0xFFFF:
            raise _CannotReuse("archive needs zip64")
        raw_name = name.encode("utf-8")
        flags = 0x800 if not name.isascii() else 0
        t, d = self._dos(dt)
        self.f.write(struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, flags, method, t, d, crc, csize, usize,
                                 len(raw_name), 0) + raw_name)
        self.f.write(data)
        self.central.append(struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, flags, method, t, d, crc,
                                        csize, usize, len(raw_name), 0, 0, 0, 0, 0, offset) + raw_name)

    def add_raw(self, src: Any, info: zipfile.ZipInfo) -> None:
        src.seek(info.header_offset)
        head = src.read(30)
        if head[:4] != b"PK\x03\x04":
            raise _CannotReuse("bad local header")
        n, m = struct.unpack("<2H", head[26:30])
        src.seek(info.header_offset + 30 + n + m)
        data = src.read(info.compress_size)
        if len(data) != info.compress_size:
            raise _CannotReuse("truncated member")
        self._entry(info.filename, info.compress_type, info.CRC, info.compress_size, info.file_size,
                    info.date_time, data)

    def add_chunks(self, name: str, chunks: Iterable[bytes], dt: tuple[int, ...]) -> None:
        """A member compressed from `chunks` as they come: its local header is written
        first and completed once the sizes are known."""
        # level 1: the sheets rewritten on every refresh compress 3× faster than at the default
        # level 6, for a file a few % larger
        c = zlib.compressobj(1, zlib.DEFLATED, -15)
        start = self.f.tell()
        self._entry(name, zipfile.ZIP_DEFLATED, 0, 0, 0, dt, b"")
        crc = size = 0
        for chunk in chunks:
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
            self.f.write(c.compress(chunk))
        self.f.write(c.flush())
        end = self.f.tell()
        self.central.pop()
        self.f.seek(start)
        packed = end - start - 30 - len(name.encode("utf-8"))
        self._entry(name, zipfile.ZIP_DEFLATED, crc, packed, size, dt, b"")
        self.f.seek(end)

    def close(self) -> None:
        start = self.f.tell()
        for c in self.central:
            self.f.write(c)
        size = self.f.tell() - start
        if start >= 0xFFFFFFFF:
            raise _CannotReuse("archive needs zip64")
        self.f.write(struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(self.central), len(self.central),
                                 size, start, 0))


__all__ = ["write_results", "fingerprint", "plot_curves", "SHEETS", "FORMAT_VERSION"]
