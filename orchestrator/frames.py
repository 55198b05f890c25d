"""Runs and metric histories as pandas DataFrames: the home of pandas.

For analysis in a notebook and for `nero export`:

    from orchestrator.project import Project
    with Project("experiments.xlsx") as project:
        runs, metrics = project.frames()
    runs.groupby("layers")["best:val_loss"].min()

`runs` has one row per run (index: run key) with its number, experiment, parameters,
state, reason, attempt, cluster, job id, host, start, end, runtime_s, git commit and the
`last:`/`best:` value of every metric and its value at each Settings checkpoint (`metric@step`),
all of its current attempt, as every surface shows them (`orchestrator.shown`). `metrics` is
tidy: one row per point of every attempt of each run (run, attempt, metric, step, value), by
run number, then attempt, so `metrics[metrics.attempt == runs.attempt[metrics.run]]` are the
current attempts' points. `project.attempts_frame()` (`attempts_frame`) has one row per
attempt before a run's current one (a restart, a retry): `run`, `attempt`, then the
columns of `runs` but the parameters (the state store keeps a run's parameters as they
are now), each for that attempt, its values by the same rules. `table` makes a frame of
plain rows (`orchestrator.views`): the Python API's `runs()`, `history()` and plan.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping, Sequence
from pathlib import Path

from .metrics import Summary
from .model import RunRecord, Series

__all__ = ["ATTEMPT_COLUMNS", "attempts_frame", "concat", "runs_frame", "metrics_frame", "export", "json_ready", "table"]

# the attempts frame's columns before the `last:`/`best:` ones (all of them when it is empty)
ATTEMPT_COLUMNS = ("run", "attempt", "number", "experiment", "state", "reason", "cluster", "job_id", "host", "who",
                   "start", "end", "runtime_s", "git_commit", "git_dirty")


def runs_frame(runs: Sequence[RunRecord], now: float, values: Mapping[str, Mapping[str, Summary]],
               checkpoints: Sequence[int] = ()):
    """One row per run; its metric columns are `values` (`orchestrator.shown`): `last:m`,
    `best:m` and `m@cp` for each checkpoint."""
    return _frame(runs, now, [values.get(r.key, {}) for r in runs], checkpoints)


def _frame(runs: Sequence[RunRecord], now: float, values: Sequence[Mapping[str, Summary]],
           checkpoints: Sequence[int]):
    import pandas as pd

    rows = []
    for r, shown in zip(runs, values, strict=True):
        row: dict[str, object] = {"run": r.key, "number": r.number, "experiment": r.experiment}
        row.update({k: v for k, v in r.params})
        row.update({
            "state": r.state.value, "reason": r.reason, "attempt": r.attempt, "cluster": r.cluster,
            "job_id": r.job_id, "host": r.host, "who": r.who,
            "start": pd.to_datetime(r.started_at, unit="s") if r.started_at else pd.NaT,
            "end": pd.to_datetime(r.ended_at, unit="s") if r.ended_at else pd.NaT,
            "runtime_s": r.runtime(now), "git_commit": r.git_commit, "git_dirty": r.git_dirty,
        })
        for name in sorted(shown):
            row[f"last:{name}"] = shown[name].last
        for name in sorted(shown):
            row[f"best:{name}"] = shown[name].best
        for name in sorted(shown):
            for cp, value in zip(checkpoints, shown[name].at, strict=True):
                row[f"{name}@{cp}"] = value
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.set_index("run") if len(frame) else frame


def concat(frames: Sequence):
    """The frames of `runs_frame` made a batch of runs at a time, as one (the frame of every
    run at once: its columns in the order they first appear, each of the type its values
    make together)."""
    import pandas as pd

    parts = [f for f in frames if len(f)]
    if not parts:
        return pd.DataFrame()
    return parts[0] if len(parts) == 1 else pd.concat(parts, sort=False)


def attempts_frame(attempts: Sequence[RunRecord], now: float,
                   values: Mapping[tuple[str, int], Mapping[str, Summary]], checkpoints: Sequence[int] = ()):
    """One row per earlier attempt (`Store.earlier_attempts`): `run`, `attempt`, then the
    columns of `runs_frame` but the parameters, each for that attempt; `values` by
    (run key, attempt)."""
    import pandas as pd

    frame = _frame(attempts, now, [values.get((a.key, a.attempt), {}) for a in attempts], checkpoints)
    if not len(frame):
        return pd.DataFrame(columns=list(ATTEMPT_COLUMNS))
    params = {name for r in attempts for name, _ in r.params}
    frame = frame.reset_index().drop(columns=[c for c in frame.columns if c in params and c not in ATTEMPT_COLUMNS])
    return frame[["run", "attempt", *[c for c in frame.columns if c not in ("run", "attempt")]]]


def metrics_frame(histories: Mapping[str | tuple[str, int], Mapping[str, Sequence[tuple[int | None, float]]]],
                  attempts: Mapping[str, int] | None = None):
    """The tidy frame (run, attempt, metric, step, value) of histories (best given as
    Series: their arrays become the step and value columns without a Python object per
    point), in their order. `histories` maps a (run key, attempt) pair, or a run key whose
    attempt `attempts` gives (else <NA>), to its metrics. A point without a step has <NA>."""
    import numpy as np
    import pandas as pd

    runs: list[str] = []
    numbers = array("d")
    metrics: list[str] = []
    steps, values = array("d"), array("d")
    attempts = attempts or {}
    for at, per in histories.items():
        key, attempt = at if isinstance(at, tuple) else (at, attempts.get(at))
        for name, points in per.items():
            series = Series.of(points)
            runs += [key] * len(series)
            numbers += array("d", [math.nan if attempt is None else attempt]) * len(series)
            metrics += [name] * len(series)
            steps += series.steps
            values += series.values

    def ints(a: array):
        return pd.array(np.frombuffer(a, dtype=np.float64), dtype="Float64").astype("Int64")

    return pd.DataFrame({"run": pd.Series(runs, dtype="str"), "attempt": ints(numbers),
                         "metric": pd.Series(metrics, dtype="str"), "step": ints(steps),
                         "value": np.frombuffer(values, dtype=np.float64).copy()})


def table(rows: Sequence[Mapping[str, object]], index: str | None = None, columns: Sequence[str] = ()):
    """Rows (dicts, as `orchestrator.views` makes them) as a DataFrame in their order, indexed
    by the column `index` if given; with no row, an empty frame with `columns`."""
    import pandas as pd

    frame = pd.DataFrame(list(rows)) if len(rows) else pd.DataFrame(columns=list(columns))
    return frame.set_index(index) if index and index in frame.columns else frame


def export(runs, metrics, path: Path, attempts=None) -> list[Path]:
    """Write the frames by the file's suffix: .csv or .parquet (two files, three with
    `attempts`: `<stem>-metrics` and `<stem>-attempts` beside `path`), or .json (one file,
    with the keys `runs`, `metrics` and `attempts`)."""
    suffix = path.suffix.lower()
    written: list[Path] = []
    if suffix == ".csv":
        metrics_path = path.with_name(f"{path.stem}-metrics.csv")
        runs.to_csv(path)
        metrics.to_csv(metrics_path, index=False)
        written = [path, metrics_path]
        if attempts is not None:
            written.append(path.with_name(f"{path.stem}-attempts.csv"))
            attempts.to_csv(written[-1], index=False)
    elif suffix == ".json":
        import json

        payload = {"runs": json_ready(runs.reset_index().to_dict(orient="records")),
                   "metrics": json_ready(metrics.to_dict(orient="records"))}
        if attempts is not None:
            payload["attempts"] = json_ready(attempts.to_dict(orient="records"))
        path.write_text(json.dumps(payload, indent=1, default=str))
        written = [path]
    elif suffix == ".parquet":
        metrics_path = path.with_name(f"{path.stem}-metrics.parquet")
        runs.to_parquet(path)
        metrics.to_parquet(metrics_path)
        written = [path, metrics_path]
        if attempts is not None:
            written.append(path.with_name(f"{path.stem}-attempts.parquet"))
            attempts.to_parquet(written[-1], index=False)
    else:
        raise ValueError(f"cannot export to {path.name}: use a .csv, .json or .parquet file")
    return written


def json_ready(rows: list[dict]) -> list[dict]:
    """NaN → None so the JSON is standard."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in rows]
