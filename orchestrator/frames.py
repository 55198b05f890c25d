"""Runs and metric histories as pandas DataFrames: the home of pandas.

For analysis in a notebook and for `nero export`:

    from orchestrator.project import Project
    with Project("experiments.xlsx") as project:
        runs, metrics = project.frames()
    runs.groupby("layers")["best:val_loss"].min()

`runs` has one row per run (index: run key) with its number, experiment, parameters,
state, reason, attempt, cluster, job id, host, start, end, runtime_s, git commit and the
`last:`/`best:` value of every metric and its value at each Settings checkpoint (`metric@step`),
as every surface shows them (`orchestrator.shown`). `metrics` is tidy: one row per point of each run's
current attempt (run, metric, step, value).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping, Sequence
from pathlib import Path

from .metrics import Summary
from .model import RunRecord, Series

__all__ = ["runs_frame", "metrics_frame", "export", "json_ready"]


def runs_frame(runs: Sequence[RunRecord], now: float, values: Mapping[str, Mapping[str, Summary]],
               checkpoints: Sequence[int] = ()):
    """One row per run; its metric columns are `values` (`orchestrator.shown`): `last:m`,
    `best:m` and `m@cp` for each checkpoint."""
    import pandas as pd

    rows = []
    for r in runs:
        row: dict[str, object] = {"run": r.key, "number": r.number, "experiment": r.experiment}
        row.update({k: v for k, v in r.params})
        row.update({
            "state": r.state.value, "reason": r.reason, "attempt": r.attempt, "cluster": r.cluster,
            "job_id": r.job_id, "host": r.host,
            "start": pd.to_datetime(r.started_at, unit="s") if r.started_at else pd.NaT,
            "end": pd.to_datetime(r.ended_at, unit="s") if r.ended_at else pd.NaT,
            "runtime_s": r.runtime(now), "git_commit": r.git_commit, "git_dirty": r.git_dirty,
        })
        shown = values.get(r.key, {})
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


def metrics_frame(histories: Mapping[str, Mapping[str, Sequence[tuple[int | None, float]]]]):
    """The tidy frame of histories (best given as Series: their arrays become the step and
    value columns without a Python object per point). A point without a step has <NA>."""
    import numpy as np
    import pandas as pd

    runs: list[str] = []
    metrics: list[str] = []
    steps, values = array("d"), array("d")
    for key, per in histories.items():
        for name, points in per.items():
            series = Series.of(points)
            runs += [key] * len(series)
            metrics += [name] * len(series)
            steps += series.steps
            values += series.values
    step = pd.array(np.frombuffer(steps, dtype=np.float64), dtype="Float64").astype("Int64")
    return pd.DataFrame({"run": pd.Series(runs, dtype="str"), "metric": pd.Series(metrics, dtype="str"),
                         "step": step, "value": np.frombuffer(values, dtype=np.float64).copy()})


def export(runs, metrics, path: Path) -> list[Path]:
    """Write the frames by the file's suffix: .csv or .parquet (two files), or .json."""
    suffix = path.suffix.lower()
    written: list[Path] = []
    if suffix == ".csv":
        metrics_path = path.with_name(f"{path.stem}-metrics.csv")
        runs.to_csv(path)
        metrics.to_csv(metrics_path, index=False)
        written = [path, metrics_path]
    elif suffix == ".json":
        import json

        payload = {"runs": json_ready(runs.reset_index().to_dict(orient="records")),
                   "metrics": json_ready(metrics.to_dict(orient="records"))}
        path.write_text(json.dumps(payload, indent=1, default=str))
        written = [path]
    elif suffix == ".parquet":
        metrics_path = path.with_name(f"{path.stem}-metrics.parquet")
        runs.to_parquet(path)
        metrics.to_parquet(metrics_path)
        written = [path, metrics_path]
    else:
        raise ValueError(f"cannot export to {path.name}: use a .csv, .json or .parquet file")
    return written


def json_ready(rows: list[dict]) -> list[dict]:
    """NaN → None so the JSON is standard."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in rows]
