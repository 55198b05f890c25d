"""Runs and metric histories as pandas DataFrames: the home of pandas.

For analysis in a notebook and for `nero export`:

    from orchestrator.project import Project
    with Project("experiments.xlsx") as project:
        runs, metrics = project.frames()
    runs.groupby("layers")["best:val_loss"].min()

`runs` has one row per run (index: run key) with its number, experiment, parameters,
state, reason, attempt, cluster, job id, host, who, start, end, runtime_s, git commit and the
`last:`/`best:` value of every metric and its value at each Settings checkpoint (`metric@step`),
all of its current attempt, as every surface shows them (`orchestrator.shown`). Its columns
and their types are fixed from every run before a batch is made (`Columns`, `param_dtype`),
so the frame made a batch of runs at a time, and `export` writing it as it comes, are the
frame of every run at once. `metrics` is
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
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .metrics import Summary
from .model import RunRecord, Series

__all__ = ["ATTEMPT_COLUMNS", "Columns", "attempts_frame", "concat", "runs_frame", "metrics_frame", "export",
           "json_ready", "param_dtype", "table"]

# the runs frame's own columns after `run` (its index): the parameters go between `experiment` and `state`
OWN_COLUMNS = ("number", "experiment", "state", "reason", "attempt", "cluster", "job_id", "host", "who",
               "start", "end", "runtime_s", "git_commit", "git_dirty")
# the attempts frame's columns before the `last:`/`best:` ones (all of them when it is empty)
ATTEMPT_COLUMNS = ("run", "attempt", "number", "experiment", "state", "reason", "cluster", "job_id", "host", "who",
                   "start", "end", "runtime_s", "git_commit", "git_dirty")
_OWN_TYPES = {"number": "int64", "attempt": "int64", "start": "datetime64[ns]", "end": "datetime64[ns]",
              "runtime_s": "float64", "git_dirty": "bool"}  # the others are text


def param_dtype(kinds: Collection[str], everywhere: bool) -> str:
    """The type of a parameter's column, from the JSON types of its values across every run
    (`kinds`: integer, real, text, true, false, null) and whether every run has one: whole
    numbers `int64` (`Int64` where a run has none: 3, not 3.0), numbers `float64`, truth
    values `bool` (`boolean` where a run has none), text `str`, a mixture `object`. Decided
    from every run at once, so each batch of the frame has the same types."""
    kinds = set(kinds)
    everywhere = everywhere and "null" not in kinds
    kinds.discard("null")
    if kinds == {"integer"}:
        return "int64" if everywhere else "Int64"
    if kinds and kinds <= {"integer", "real"}:
        return "float64"
    if kinds and kinds <= {"true", "false"}:
        return "bool" if everywhere else "boolean"
    return "str" if kinds == {"text"} else "object"


@dataclass(frozen=True)
class Columns:
    """The columns of the runs frame and their types, fixed before its first batch is made
    (`Project.frame_columns`): the parameters (name, `param_dtype`) in the order they first
    appear, the metrics (sorted) and the checkpoints. Every batch made with them has the
    same columns of the same types, so batches written one after another (`export`) are
    the frame of every run at once. A parameter named as one of the frame's own columns is
    `<name> (param)`, as on the results workbook's Summary."""

    params: tuple[tuple[str, str], ...] = ()
    metrics: tuple[str, ...] = ()
    checkpoints: tuple[int, ...] = ()

    def metric_columns(self) -> list[str]:
        return ([f"last:{m}" for m in self.metrics] + [f"best:{m}" for m in self.metrics]
                + [f"{m}@{cp}" for m in self.metrics for cp in self.checkpoints])

    def param_labels(self) -> list[str]:
        taken = {"run", *OWN_COLUMNS, *self.metric_columns()}
        return [f"{p} (param)" if p in taken else p for p, _ in self.params]


def runs_frame(runs: Sequence[RunRecord], now: float, values: Mapping[str, Mapping[str, Summary]],
               columns: Columns):
    """One row per run (index: run key) with the `columns`; its metric columns are `values`
    (`orchestrator.shown`): `last:m`, `best:m` and `m@cp` for each checkpoint. A metric of
    `values` that `columns` does not name is a ValueError (the columns were fixed from
    another state of the store)."""
    return _frame(runs, now, [values.get(r.key, {}) for r in runs], columns).set_index("run")


def _frame(runs: Sequence[RunRecord], now: float, values: Sequence[Mapping[str, Summary]], columns: Columns):
    """The columns `run`, the own ones with the parameters after `experiment`, then the
    metrics', a column at a time, each of its type."""
    import numpy as np
    import pandas as pd

    nan = math.nan
    stray = {m for shown in values for m in shown}.difference(columns.metrics)
    if stray:
        raise ValueError(f"metrics {sorted(stray)} are not among the columns {list(columns.metrics)}")
    own = {
        "number": [r.number for r in runs], "experiment": [r.experiment for r in runs],
        "state": [r.state.value for r in runs], "reason": [r.reason for r in runs],
        "attempt": [r.attempt for r in runs], "cluster": [r.cluster for r in runs],
        "job_id": [r.job_id for r in runs], "host": [r.host for r in runs], "who": [r.who for r in runs],
        "start": pd.to_datetime(np.array([r.started_at or nan for r in runs], dtype="float64"), unit="s"),
        "end": pd.to_datetime(np.array([r.ended_at or nan for r in runs], dtype="float64"), unit="s"),
        "runtime_s": [r.runtime(now) for r in runs], "git_commit": [r.git_commit for r in runs],
        "git_dirty": [r.git_dirty for r in runs],
    }
    data = {"run": pd.Series([r.key for r in runs], dtype="str")}
    for name in OWN_COLUMNS:
        data[name] = pd.Series(own[name], dtype=_OWN_TYPES.get(name, "str"))
        if name == "experiment" and columns.params:
            params = [dict(r.params) for r in runs]
            for (param, dtype), label in zip(columns.params, columns.param_labels(), strict=True):
                data[label] = pd.Series([p.get(param) for p in params], dtype=dtype)
    summaries = [[shown.get(m) for shown in values] for m in columns.metrics]
    for m, got in zip(columns.metrics, summaries, strict=True):
        data[f"last:{m}"] = np.array([nan if s is None or s.last is None else s.last for s in got], dtype="float64")
    for m, got in zip(columns.metrics, summaries, strict=True):
        data[f"best:{m}"] = np.array([nan if s is None or s.best is None else s.best for s in got], dtype="float64")
    for m, got in zip(columns.metrics, summaries, strict=True):
        for i, cp in enumerate(columns.checkpoints):
            data[f"{m}@{cp}"] = np.array([nan if s is None or s.at[i] is None else s.at[i] for s in got],
                                         dtype="float64")
    return pd.DataFrame(data)


def concat(frames: Iterable):
    """Frames of the same columns and types (the batches of `runs_frame`, of `metrics_frame`)
    as one; with no frame, an empty one."""
    import pandas as pd

    parts = list(frames)
    full = [f for f in parts if len(f)]
    if not full:
        return parts[0] if parts else pd.DataFrame()
    return full[0] if len(full) == 1 else pd.concat(full)


def attempts_frame(attempts: Sequence[RunRecord], now: float,
                   values: Mapping[tuple[str, int], Mapping[str, Summary]], checkpoints: Sequence[int] = ()):
    """One row per earlier attempt (`Store.earlier_attempts`): `run`, `attempt`, then the
    columns of `runs_frame` but the parameters (the store keeps a run's parameters as they
    are now), each for that attempt; `values` by (run key, attempt)."""
    shown = [values.get((a.key, a.attempt), {}) for a in attempts]
    columns = Columns((), tuple(sorted({m for v in shown for m in v})), tuple(checkpoints))
    frame = _frame(attempts, now, shown, columns)
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


def export(runs: Iterable, metrics: Iterable, path: Path, attempts=None) -> list[Path]:
    """Write frames given a batch at a time (`runs`: batches of `runs_frame`, `metrics`: of
    `metrics_frame`, each of the same columns and types) by the file's suffix, holding one
    batch: .csv or .parquet (two files, three with the `attempts` frame: `<stem>-metrics`
    and `<stem>-attempts` beside `path`), or .json (one file, with the keys `runs`, `metrics`
    and `attempts`, laid out as `json.dumps(…, indent=1)` lays it out). Each file is written
    beside its name and moved there when whole. ValueError for another suffix, or for
    .parquet without pyarrow."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json", ".parquet"):
        raise ValueError(f"cannot export to {path.name}: use a .csv, .json or .parquet file")
    if suffix == ".json":
        sections = [("runs", (f.reset_index() for f in runs)), ("metrics", metrics)]
        with _whole(path) as part:
            _json(part, sections + ([("attempts", [attempts])] if attempts is not None else []))
        return [path]
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ValueError("a .parquet export needs pyarrow: pip install 'nero[parquet]' "
                             "(or export to .csv or .json)") from None
    files = [(path, runs, True), (path.with_name(f"{path.stem}-metrics{suffix}"), metrics, False)]
    if attempts is not None:
        files.append((path.with_name(f"{path.stem}-attempts{suffix}"), [attempts], False))
    for target, frames, index in files:
        with _whole(target) as part:
            (_csv if suffix == ".csv" else _parquet)(part, frames, index)
    return [target for target, _, _ in files]


class _whole:
    """A file written under a temporary name beside `path` and moved to `path` when whole
    (removed if the writing fails): a failed export leaves no half file under the name."""

    def __init__(self, path: Path):
        self.path, self.part = path, path.with_name(f".{path.name}.part")

    def __enter__(self) -> Path:
        return self.part

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.part.replace(self.path)
        else:
            self.part.unlink(missing_ok=True)
        return False


def _csv(path: Path, frames: Iterable, index: bool) -> None:
    with path.open("w", newline="") as out:
        for i, frame in enumerate(frames):
            frame.to_csv(out, index=index, header=i == 0)


def _parquet(path: Path, frames: Iterable, index: bool) -> None:
    """The batches as one Parquet file of the first batch's schema (a column of mixed
    parameter values, int and text, written as text)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    try:
        for frame in frames:
            mixed = [c for c in frame.columns if frame[c].dtype == object]
            if mixed:
                frame = frame.assign(**{c: frame[c].map(lambda v: None if v is None or v != v else str(v))
                                        for c in mixed}).astype({c: "str" for c in mixed})
            table = pa.Table.from_pandas(frame, preserve_index=index, schema=None if writer is None else writer.schema)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def _json(path: Path, sections: Sequence[tuple[str, Iterable]]) -> None:
    """{key: [rows…]} for each (key, frames), a frame at a time, byte for byte as
    `json.dumps(…, indent=1, default=str)` writes the whole (`json_ready` rows)."""
    import json

    with path.open("w") as out:
        out.write("{")
        for i, (key, frames) in enumerate(sections):
            out.write(f"{',' if i else ''}\n {json.dumps(key)}: [")
            n = 0
            for frame in frames:
                for row in json_ready(frame.to_dict(orient="records")):
                    out.write(f"{',' if n else ''}\n  " + json.dumps(row, indent=1, default=str).replace("\n", "\n  "))
                    n += 1
            out.write("\n ]" if n else "]")
        out.write("\n}")


def json_ready(rows: list[dict]) -> list[dict]:
    """NaN and NaT (a run not started) → None so the JSON is standard."""
    from pandas import NaT

    return [{k: (None if (isinstance(v, float) and math.isnan(v)) or v is NaT else v) for k, v in row.items()}
            for row in rows]
