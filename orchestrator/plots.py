"""Learning-curve plots drawn with matplotlib (its one home): the PNG of `nero plot` and
the images of the e-mail notices and digests.

The curves are those of the results workbook's charts, with the same colours (`PALETTE`)
and scales: only finite points, a diverged run of a metric to minimise leaving the top of
the chart instead of flattening the others, a log axis when values span a factor 50.
matplotlib is imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .curves import PALETTE, Points, axis_cap, finite, log_scale, nice, nonfinite_text, normalize
from .errors import NeroError
from .metrics import default_goal
from .model import Optimisation, RunRecord

__all__ = ["PALETTE", "PLOT_DPI", "Drawn", "draw_curves", "experiment_curves_png", "plot_curves", "run_curves_png",
           "search_history_png"]

PLOT_DPI = 150  # e-mail images are 1092 px wide, shown at 728: sharp on high-density screens

History = Sequence[tuple[int | None, float]]


@dataclass(frozen=True)
class Drawn:
    """What `draw_curves` drew: the PNG, and how many curves of current and of earlier attempts."""

    path: Path
    current: int
    earlier: int

    @property
    def curves(self) -> int:
        return self.current + self.earlier


def plot_curves(data_runs: Sequence[RunRecord], histories: Mapping[str, Mapping[str, Points]],
                metric: str, out: str | Path, *, goal: str | None = None,
                title: str | None = None) -> Path:
    """Draw `metric` over step for each run (one line per run, legend with run keys) to a
    PNG; returns its path (see `draw_curves`)."""
    return draw_curves(data_runs, histories, metric, out, goal=goal, title=title).path


def draw_curves(data_runs: Sequence[RunRecord], histories: Mapping[str, Mapping[str, Points]],
                metric: str, out: str | Path, *, goal: str | None = None, title: str | None = None,
                earlier: Mapping[tuple[str, int], Mapping[str, Points]] | None = None) -> Drawn:
    """Draw `metric` over step for each run (one line per run, legend with run keys) to a PNG,
    with `earlier` (histories by (run key, attempt)) the runs' earlier attempts as well:
    dashed in their run's colour, labelled `#<run number> (attempt <n>)`.

    The same curves as the workbook's charts, at full resolution: only finite points,
    steps normalised the same way, the same colours. Raises NeroError, naming the metrics
    that have points, when none of the runs has points for `metric`."""
    from matplotlib.figure import Figure

    out = Path(out)
    by_run: dict[str, list[tuple[int, Mapping[str, Points]]]] = {}
    for (key, attempt), h in sorted((earlier or {}).items(), key=lambda item: item[0][1]):
        by_run.setdefault(key, []).append((attempt, h))
    # (label, steps, values, the run's position, the how-manieth earlier attempt drawn of the run: 0 none)
    lines: list[tuple[str, Sequence[float], Sequence[float], int, int]] = []
    available: set[str] = set()
    runs_drawn = 0
    for r in data_runs:
        drawn, old = len(lines), 0
        for label, h, earlier_one in [(r.key, histories.get(r.key, {}), False),
                                      *((f"#{r.number} (attempt {a})", h, True) for a, h in by_run.get(r.key, ()))]:
            available.update(m for m, pts in h.items() if pts)
            steps, values = finite(*normalize(h.get(metric, ())))
            if steps:
                old += earlier_one
                lines.append((label, steps, values, runs_drawn, old if earlier_one else 0))
        runs_drawn += len(lines) > drawn
    if not lines:
        have = ", ".join(sorted(available)) or "none"
        raise NeroError(f"no points for metric {metric!r} in the {len(data_runs)} selected "
                        f"run(s); metrics with points: {have}")
    goal = goal or default_goal(metric)
    n, n_earlier = runs_drawn, sum(1 for line in lines if line[4])
    fig = Figure(figsize=(10, 5.6), dpi=110, layout="constrained")
    ax = fig.subplots()
    firsts = sorted(vs[0] for _, _, vs, _, _ in lines)
    cap = axis_cap(goal, [max(vs) for _, _, vs, _, _ in lines], firsts[len(firsts) // 2])
    for label, steps, values, i, old in lines:
        off = cap is not None and min(values) > cap
        style = "--" if (i // 10) % 2 else "-"
        if old:  # an earlier attempt: dashed, lighter; its run's attempts by dash pattern
            dashes = (":", "-.") if style == "--" else ("--", "-.", ":")
            style = dashes[(old - 1) % len(dashes)]
        ax.plot(steps, values, color=PALETTE[i % 10], linestyle=style, alpha=0.75 if old else 1.0,
                linewidth=1.1 if old else 1.4, marker="o" if len(steps) < 3 else None, markersize=3,
                label=f"{label} (off the chart)" if off else label)
    shown = [v for _, _, vs, _, _ in lines for v in vs if cap is None or v <= cap]
    log = log_scale(shown + ([cap] if cap is not None else []))
    if log:
        ax.set_yscale("log")
    if cap is not None:  # a diverging run's line leaves the top, as in the workbook's charts
        low = min(shown)
        ax.set_ylim(low / 1.5 if log else min(0.0, low), cap)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    older = f", {n_earlier} earlier attempt{'s' if n_earlier != 1 else ''}" if n_earlier else ""
    ax.set_title(title or f"{metric} ({goal} is better), {n} run{'s' if n != 1 else ''}{older}")
    ax.grid(True, color="#DDDDDD", linewidth=0.6)
    if len(lines) <= 40:
        ax.legend(fontsize=7 if len(lines) > 12 else 8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  ncols=1 if len(lines) <= 20 else 2, frameon=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return Drawn(out, len(lines) - n_earlier, n_earlier)


# ---------------------------------------------------------------------------- e-mail images
def _series(points: Iterable[tuple[int | None, float]]) -> tuple[list[float], list[float], tuple[float, float] | None]:
    """The finite points of a history as the workbook's charts draw them (`curves.normalize`:
    steps numbered and ascending), and the first non-finite point (step, value), where a run
    diverged."""
    xs: list[float] = []
    ys: list[float] = []
    bad = None
    for x, value in zip(*normalize(points), strict=True):
        if value is None or not math.isfinite(value):
            if bad is None:
                bad = (x, value if value is not None else math.nan)
            continue
        xs.append(x)
        ys.append(float(value))
    return xs, ys, bad


def _integer_steps(ax: Any, xs: Sequence[float]) -> None:
    """Whole-number step ticks; a lone step sits in the middle of a short axis."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if xs and min(xs) == max(xs):
        ax.set_xlim(xs[0] - 1, xs[0] + 1)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def run_curves_png(history: Mapping[str, History], metrics: Sequence[str],
                   goals: Mapping[str, str], title: str) -> bytes | None:
    """One small panel per metric (at most four) of one run's learning curves, as PNG bytes."""
    from matplotlib.figure import Figure

    def enough(m: str) -> bool:  # a curve needs two points (or one and where it diverged)
        xs, _, bad = _series(history.get(m, ()))
        return len(xs) + (bad is not None) >= 2

    shown = [m for m in metrics if enough(m)][:4]
    if not shown:
        return None
    cols = 1 if len(shown) == 1 else 2
    rows = math.ceil(len(shown) / cols)
    fig = Figure(figsize=(7.28, 2.7 * rows + 0.4), dpi=PLOT_DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(shown):
            ax.set_visible(False)
            continue
        metric = shown[i]
        xs, ys, bad = _series(history.get(metric, ()))
        ax.plot(xs, ys, color="#1F77B4", linewidth=1.6, marker="o" if len(xs) < 30 else None, markersize=3)
        if ys and min(ys) > 0 and max(ys) / min(ys) > 50:
            ax.set_yscale("log")
        if bad is not None:
            ax.axvline(bad[0], color="#D62728", linestyle="--", linewidth=1)
            ax.annotate(f"{nonfinite_text(bad[1])} at step {bad[0]:g}", xy=(bad[0], 0.92),
                        xycoords=("data", "axes fraction"), ha="right", color="#D62728", fontsize=9)
        ax.set_title(f"{metric} ({default_goal(metric, goals)} is better)", fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        _integer_steps(ax, xs)
        ax.tick_params(labelsize=8.5)
        ax.grid(True, color="#DDDDDD", linewidth=0.6)
    fig.suptitle(title, fontsize=10.5)
    return _png(fig)


def experiment_curves_png(runs: Sequence[RunRecord], histories: Mapping[str, Mapping[str, History]],
                          metric: str, goal: str, title: str) -> bytes | None:
    """`metric` over steps, one line per run, sized for an e-mail column (728 px) with the
    legend below: the curves of the results workbook (`plot_curves`), readable in a mail
    client. A diverged run of a metric to minimise leaves the top of the chart (ten times
    the typical first value) instead of flattening the others."""
    from matplotlib.figure import Figure

    lines = []
    for r in runs:
        xs, ys, bad = _series(histories.get(r.key, {}).get(metric, ()))
        if xs:
            label = r.key[len(r.experiment):].strip("[]") if r.key.startswith(r.experiment + "[") else r.key
            lines.append((label or r.key, xs, ys, bad))
    if not lines:
        return None
    firsts = sorted(ys[0] for _, _, ys, _ in lines)
    typical = firsts[len(firsts) // 2]
    top = max(max(ys) for _, _, ys, _ in lines)
    cap = None
    if goal != "max" and typical > 0 and min(min(ys) for _, _, ys, _ in lines) >= 0 and top > 10 * typical:
        cap = nice(10 * typical)
    shown = [v for _, _, ys, _ in lines for v in ys if cap is None or v <= cap]
    log = log_scale(shown)
    n = len(lines)
    legend_rows = math.ceil(n / 2) if n <= 24 else 0
    fig = Figure(figsize=(7.28, 3.7 + 0.2 * legend_rows), dpi=PLOT_DPI, layout="constrained")
    ax = fig.subplots()
    for i, (label, xs, ys, bad) in enumerate(lines):
        off = cap is not None and min(ys) > cap
        note = " (off the chart)" if off else (f" ({nonfinite_text(bad[1])} at step {bad[0]:g})" if bad else "")
        ax.plot(xs, ys, color=PALETTE[i % len(PALETTE)], linestyle="--" if (i // len(PALETTE)) % 2 else "-",
                linewidth=1.6, marker="o" if len(xs) < 3 else None, markersize=3.5, label=label + note)
    if log:
        ax.set_yscale("log")
    if cap is not None and shown:
        low = min(shown)
        ax.set_ylim(low / 1.5 if log else min(0.0, low), cap)
    ax.set_title(title, fontsize=10.5)
    ax.set_xlabel("step", fontsize=9)
    ax.set_ylabel(metric, fontsize=9)
    _integer_steps(ax, [x for _, xs, _, _ in lines for x in xs])
    ax.tick_params(labelsize=8.5)
    ax.grid(True, color="#DDDDDD", linewidth=0.6)
    if legend_rows:
        fig.legend(loc="outside lower center", ncols=2 if n > 1 else 1, fontsize=8.5, frameon=False)
    return _png(fig)


def search_history_png(o: Optimisation) -> bytes | None:
    """A search row's history for an e-mail column: each complete trial's value (dots) and
    the best so far (a step line) over the trial number, as the Optimisation sheet's chart;
    None before a complete trial with a finite value."""
    from matplotlib.figure import Figure

    done = [(t.number, t.value) for t in o.trials if t.value is not None and math.isfinite(t.value)]
    if not done:
        return None
    best = [(t.number, t.best_so_far) for t in o.trials if t.best_so_far is not None and math.isfinite(t.best_so_far)]
    fig = Figure(figsize=(7.28, 3.4), dpi=PLOT_DPI, layout="constrained")
    ax = fig.subplots()
    ax.scatter([n for n, _ in done], [v for _, v in done], s=14, color=PALETTE[0], label="trial value", zorder=3)
    ax.step([n for n, _ in best], [v for _, v in best], where="post", color=PALETTE[1], linewidth=1.8,
            label="best so far")
    values = [v for _, v in done]
    if min(values) > 0 and max(values) / min(values) > 50:
        ax.set_yscale("log")
    ax.set_title(f"{o.experiment}: {o.metric} ({o.goal} is better), {o.sampler}, {len(o.trials)}/{o.budget} trials",
                 fontsize=10.5)
    ax.set_xlabel("trial", fontsize=9)
    ax.set_ylabel(o.metric, fontsize=9)
    _integer_steps(ax, [n for n, _ in done])
    ax.tick_params(labelsize=8.5)
    ax.grid(True, color="#DDDDDD", linewidth=0.6)
    ax.legend(fontsize=8.5, frameon=False)
    return _png(fig)
