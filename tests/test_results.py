"""The results workbook (orchestrator/results/): real xlsx files, read back with pandas and
openpyxl, rendered by LibreOffice when it is installed."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import subprocess
import zipfile
from bisect import bisect_right
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.curves import downsample
from orchestrator.errors import NeroError
from orchestrator.metrics import goals_of
from orchestrator.model import Event, ResultsInput, RunRecord, RunState, Series, Settings
from orchestrator.plots import plot_curves
from orchestrator.results import (
    MAX_POINTS_PER_SERIES,
    MIN_PRINT_SCALE,
    SERIES_PER_CHART,
    SHEETS,
    fingerprint,
    shows,
    streamed_digests,
    write_results,
)

HOSTILE = '=HYPERLINK("http://example.org","x")'
NOW = 1_700_000_000.0
CHECKPOINTS = (10, 50, 200)


def curve(n: int, scale: float, start: int = 1, diverge_at: int | None = None) -> tuple[tuple[int | None, float], ...]:
    return tuple((s, math.nan if diverge_at is not None and s >= diverge_at else scale * math.exp(-s / 60) + 0.01 * (s % 7))
                 for s in range(start, start + n))


def record(key: str, number: int, state: RunState, params: tuple = (), **kw) -> RunRecord:
    experiment = key.split("[", 1)[0]
    started = NOW - 7200 + 60 * number if state is not RunState.PENDING else None
    ended = started + 3000 if started is not None and state.finished else None
    base = dict(key=key, number=number, experiment=experiment, spec_hash="abc", essence={}, params=params,
                state=state, attempt=1 if started else 0, cluster="local", job_id=f"{4000 + number}" if started else "",
                host="vm" if started else "", started_at=started, ended_at=ended, git_commit="c02a97de7200ecbc",
                command=f"python rnn.py --run {number}")
    base.update(kw)
    return RunRecord(**base)


def make_input(tmp_path: Path, checkpoints: tuple[int, ...] = CHECKPOINTS, extra_runs: int = 0) -> ResultsInput:
    """Two experiments, every kind of state, a diverged run, hostile text everywhere."""
    run_dir = tmp_path / "runs" / "lr-sweep" / "1"
    run_dir.mkdir(parents=True, exist_ok=True)
    h = {
        "lr-sweep[lr=0.1]": {"val_err": curve(250, 0.9), "loss": curve(250, 3.0)},
        "lr-sweep[lr=0.01]": {"val_err": curve(120, 0.8), "loss": curve(120, 2.5, diverge_at=60)},
        "lr-sweep[lr=0.001]": {"val_err": curve(40, 0.7)},  # still running: 50 and 200 not reached
        # steps without numbers count 1, 2, 3…; a resumed attempt logged steps 20-30 again
        "rnn[act=tanh]": {"val_err": tuple((None, 0.5 - 0.001 * i) for i in range(80)),
                          "loss": curve(30, 2.0) + tuple((s, 0.1) for s in range(20, 61))},
        "rnn[act=relu]": {"val_err": curve(600, 0.6), "loss": curve(600, 2.0)},
    }
    runs = [
        record("lr-sweep[lr=0.1]", 1, RunState.COMPLETED, (("lr", 0.1), ("note", "+1 trick"), ("tag", HOSTILE)),
               run_dir=str(run_dir), peak_rss_mb=812.5, peak_gpu_mem_mb=2048.0, min_disk_free_mb=51234.0,
               mean_gpu_util_pct=61.24),
        record("lr-sweep[lr=0.01]", 2, RunState.FAILED, (("lr", 0.01), ("note", "-x"), ("tag", "@home")),
               reason=HOSTILE, run_dir="/scratch/u/lr-sweep/2", cluster="triton", git_dirty=True),
        record("lr-sweep[lr=0.001]", 3, RunState.RUNNING, (("lr", 0.001), ("note", "plain"), ("tag", "x")),
               run_dir=str(tmp_path / "runs" / "lr-sweep" / "3")),
        record("rnn[act=tanh]", 4, RunState.TERMINATED, (("act", "tanh"), ("state", "param-state")),
               reason="val_err > 0.4 after 50 \x1b[31mred\x1b[0m\x00"),
        record("rnn[act=relu]", 5, RunState.LOST, (("act", "relu"),), reason="no heartbeat for 10m"),
        record("rnn[act=gelu]", 6, RunState.PENDING, (("act", "gelu"),), reason="waiting for a free slot"),
    ]
    for i in range(extra_runs):
        key = f"wide[seed={i}]"
        h[key] = {"val_err": curve(300, 0.5 + 0.01 * i), "loss": curve(300, 2.0 + 0.01 * i)}
        runs.append(record(key, 7 + i, RunState.COMPLETED, (("seed", i),)))
    runs = [dataclasses.replace(r, last={m: p[-1][1] for m, p in h.get(r.key, {}).items()}) for r in runs]
    events = []
    for r in runs:
        if r.started_at:
            events += [Event(r.started_at - 5, r.key, "submitted", "", 1), Event(r.started_at, r.key, "started", "on vm", 1)]
        if r.ended_at:
            events.append(Event(r.ended_at, r.key, r.state.value, r.reason, 1))
    return ResultsInput(
        experiments_path=str(tmp_path / "experiments.xlsx"),
        settings=Settings(primary_metric="val_err", checkpoints=checkpoints),
        goals={"val_err": "min", "loss": "min"}, runs=tuple(runs), histories=h, events=tuple(events),
        queue=(("rnn[act=gelu]", "waiting for a free slot"), ("rnn[act=selu]", HOSTILE)), now=NOW)


def as_series(data: ResultsInput) -> ResultsInput:
    """The same input with its histories as the state store hands them out (Series)."""
    return dataclasses.replace(data, histories={k: {m: Series.of(p) for m, p in h.items()}
                                                for k, h in data.histories.items()})


def expected_at(points, cp: int) -> float | None:
    """The value at checkpoint cp, computed independently of orchestrator.results."""
    latest: dict[float, float] = {}
    prev = 0
    for s, v in points:
        prev = prev + 1 if s is None else s
        latest[prev] = v
    steps = sorted(latest)
    if not steps or steps[-1] < cp:
        return None
    i = bisect_right(steps, cp) - 1
    return latest[steps[i]] if i >= 0 else None


def is_text(col: pd.Series) -> bool:
    return all(isinstance(v, str) for v in col.dropna())


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, ResultsInput]:
    data = make_input(tmp_path)
    path = tmp_path / "results.xlsx"
    assert write_results(path, data) is True
    return path, data


# ---------------------------------------------------------------------------- must show 2
def test_pandas_reads_every_sheet_with_documented_columns_and_types(written):
    path, data = written
    sheets = pd.read_excel(path, sheet_name=None)
    assert list(sheets) == list(SHEETS)

    s = sheets["Summary"]
    metric_cols = [f"{m}@{cp}" for m in ("val_err", "loss") for cp in CHECKPOINTS]
    metric_cols += ["last:val_err", "best:val_err", "last:loss", "best:loss"]
    assert list(s.columns) == [
        "#", "run", "experiment", "lr", "note", "tag", "act", "state (param)", "state", "reason", "attempt",
        "cluster", "job_id", "host", "start", "end", "runtime_s", "runtime", "peak_gpu_mem_mb", "gpu_util_pct",
        *metric_cols,
        "git_commit", "git_dirty", "command", "run_dir"]
    assert len(s) == len(data.runs)
    assert s["#"].dtype == "int64" and s["attempt"].dtype == "int64"
    assert s["lr"].dtype == "float64"
    for c in ("run", "experiment", "note", "tag", "state", "reason", "cluster", "host", "git_commit", "command", "run_dir"):
        assert is_text(s[c]), c
    assert pd.api.types.is_datetime64_any_dtype(s["start"]) and pd.api.types.is_datetime64_any_dtype(s["end"])
    assert pd.api.types.is_timedelta64_dtype(s["runtime"])
    assert s["runtime_s"].dtype == "float64"
    assert s["runtime"].iloc[0] == pd.Timedelta(seconds=3000)
    # the run's own GPU memory and the mean utilisation of its GPUs; empty where it had none
    assert s["peak_gpu_mem_mb"].iloc[0] == 2048.0 and s["peak_gpu_mem_mb"].iloc[1:].isna().all()
    assert s["gpu_util_pct"].iloc[0] == 61.2 and s["gpu_util_pct"].iloc[1:].isna().all()
    for c in metric_cols:
        assert s[c].dtype == "float64", c  # the text "nan" of a diverged run reads as NaN
    assert s["git_dirty"].dtype == "bool" and s["git_dirty"].tolist()[:2] == [False, True]
    assert s["state"].tolist() == [r.state.value for r in data.runs]
    # start is the local time of the machine (documented in the header comment)
    import datetime as dt
    assert s["start"].iloc[0] == pd.Timestamp(dt.datetime.fromtimestamp(data.runs[0].started_at))

    c = sheets["Curves"]
    assert list(c.columns) == ["rank", "run", "experiment", "best:val_err"]
    assert c["rank"].tolist() == list(range(1, len(c) + 1)) and c["best:val_err"].dtype == "float64"
    assert c["best:val_err"].is_monotonic_increasing  # min is better: the best first
    assert is_text(c["run"]) and is_text(c["experiment"])

    d = sheets["Curve data"]
    assert list(d.columns[:5]) == ["experiment", "run", "metric", "axis", "points"]
    assert list(d.columns[5:]) == list(range(1, MAX_POINTS_PER_SERIES + 1))
    assert d["axis"].tolist() == ["step", "value"] * (len(d) // 2)
    assert d["points"].dtype == "int64" and (d["points"] <= MAX_POINTS_PER_SERIES).all()
    assert all(d[k].dtype == "float64" for k in range(1, MAX_POINTS_PER_SERIES + 1))

    e = sheets["Events"]
    assert list(e.columns) == ["time", "run", "attempt", "kind", "reason"]
    assert pd.api.types.is_datetime64_any_dtype(e["time"]) and e["attempt"].dtype == "int64"
    assert e["time"].is_monotonic_increasing and len(e) == len(data.events)

    r = sheets["Resources"]
    assert list(r.columns) == ["run", "peak_rss_mb", "peak_gpu_mem_mb", "min_disk_free_mb", "gpu_util_pct"]
    assert r["run"].tolist() == ["lr-sweep[lr=0.1]"]
    assert r["peak_rss_mb"].iloc[0] == 812.5 and r["min_disk_free_mb"].iloc[0] == 51234
    assert r["peak_gpu_mem_mb"].iloc[0] == 2048 and r["gpu_util_pct"].iloc[0] == 61.2

    q = sheets["Queue"]
    assert list(q.columns) == ["run", "reason"] and q["reason"].tolist()[1] == HOSTILE


# ---------------------------------------------------------------------------- must show 3
@pytest.mark.parametrize("series", [False, True], ids=["tuples", "series"])
@pytest.mark.parametrize("checkpoints", [CHECKPOINTS, (5, 25), ()])
def test_checkpoint_columns_follow_settings_and_match_stored_metrics(tmp_path, checkpoints, series):
    data = make_input(tmp_path, checkpoints=checkpoints)
    if series:
        data = as_series(data)
    path = tmp_path / "results.xlsx"
    write_results(path, data)
    s = pd.read_excel(path, sheet_name="Summary")
    at_cols = [c for c in s.columns if "@" in c]
    assert at_cols == [f"{m}@{cp}" for m in ("val_err", "loss") for cp in checkpoints]
    compared = 0
    for i, r in enumerate(data.runs):
        for m in ("val_err", "loss"):
            points = data.histories.get(r.key, {}).get(m, ())
            for cp in checkpoints:
                want, got = expected_at(points, cp), s[f"{m}@{cp}"].iloc[i]
                if want is None or math.isnan(want):
                    assert pd.isna(got), (r.key, m, cp)
                else:
                    assert got == pytest.approx(want, rel=1e-12), (r.key, m, cp)
                    compared += 1
            finite = [v for _, v in points if math.isfinite(v)]
            if points:
                assert s[f"best:{m}"].iloc[i] == pytest.approx(min(finite), rel=1e-12)
                assert s[f"last:{m}"].iloc[i] == pytest.approx(r.last[m], nan_ok=True)
    assert compared >= (10 if checkpoints else 0)
    if checkpoints == CHECKPOINTS:
        row = s.set_index("run")
        assert pd.isna(row.loc["lr-sweep[lr=0.001]", "val_err@50"])  # running, not there yet
        assert row.loc["rnn[act=tanh]", "val_err@50"] == pytest.approx(0.5 - 0.049)  # 50th unnumbered point
        assert row.loc["rnn[act=tanh]", "loss@50"] == 0.1  # the resumed attempt's value wins


def test_diverged_values_are_visible_text(written):
    import openpyxl

    path, _ = written
    ws = openpyxl.load_workbook(path)["Summary"]
    head = [c.value for c in ws[1]]
    cell = ws.cell(row=3, column=head.index("loss@200") + 1)  # lr=0.01 reached 120 steps only
    assert cell.value is None
    cell = ws.cell(row=3, column=head.index("last:loss") + 1)
    assert (cell.value, cell.data_type) == ("nan", "s")
    assert cell.font.color.rgb.endswith("C00000")


# ---------------------------------------------------------------------------- must show 5
def test_text_from_logs_and_the_sheet_never_becomes_a_formula(written):
    import openpyxl

    path, _ = written
    wb = openpyxl.load_workbook(path)
    found = 0
    for ws in wb:
        if ws.title == "Curve data":
            continue
        for row in ws.iter_rows():
            for cell in row:
                assert cell.data_type != "f", f"{ws.title}!{cell.coordinate} is a formula: {cell.value!r}"
                if cell.value == HOSTILE:
                    assert cell.data_type == "s"
                    found += 1
                if isinstance(cell.value, str):
                    assert "\x1b" not in cell.value and "\x00" not in cell.value
    assert found >= 4  # Summary reason and tag, Events reason, Queue reason
    summary = wb["Summary"]
    head = [c.value for c in summary[1]]
    assert summary.cell(row=3, column=head.index("reason") + 1).value == HOSTILE
    notes = [summary.cell(row=r, column=head.index("note") + 1) for r in (2, 3)]
    assert [(c.value, c.data_type) for c in notes] == [("+1 trick", "s"), ("-x", "s")]
    assert summary.cell(row=3, column=head.index("tag") + 1).value == "@home"
    assert summary.cell(row=5, column=head.index("reason") + 1).value == "val_err > 0.4 after 50 red\ufffd"
    # the raw XML holds it as an inline string, not a <f> element
    with zipfile.ZipFile(path) as z:
        assert all(b"<f>" not in z.read(n) for n in z.namelist() if n.startswith("xl/worksheets/"))


def test_series_histories_write_the_same_workbook_as_tuples(tmp_path, written):
    path, data = written
    other = tmp_path / "series.xlsx"
    assert write_results(other, as_series(data))
    assert fingerprint(as_series(data)) == fingerprint(data)
    a, b = pd.read_excel(path, sheet_name=None), pd.read_excel(other, sheet_name=None)
    for name in SHEETS:
        pd.testing.assert_frame_equal(a[name], b[name], obj=name)


@pytest.mark.parametrize("text", [
    "  two leading spaces", "trailing tab\t", "a & b < c > d", "_x0041_ stays literal", "line one\nline two",
    "emoji 🧪 and ünïcode", '"quoted" \'both\'', "]]> <![CDATA[", "&amp; already escaped"])
def test_text_reads_back_exactly_as_written(tmp_path, text):
    import openpyxl

    data = make_input(tmp_path)
    runs = list(data.runs)
    runs[0] = dataclasses.replace(runs[0], reason=text, params=(("lr", 0.1), ("note", text)))
    data = dataclasses.replace(data, runs=tuple(runs), events=(Event(NOW, runs[0].key, "warn", text, 1),),
                               queue=((runs[0].key, text),))
    path = tmp_path / "results.xlsx"
    write_results(path, data)
    if "_x0041_" in text:
        # Excel and LibreOffice read _xHHHH_ as an escaped character: the text's own is
        # escaped in turn (_x005F_ is "_"), which they show as written; openpyxl does not
        # unescape, so pandas shows the escape
        with zipfile.ZipFile(path) as z:
            assert b"_x005F_x0041_ stays literal" in z.read("xl/worksheets/sheet6.xml")
        text = "_x005F" + text
    wb = openpyxl.load_workbook(path)
    head = [c.value for c in wb["Summary"][1]]
    assert wb["Summary"].cell(row=2, column=head.index("reason") + 1).value == text
    assert wb["Summary"].cell(row=2, column=head.index("note") + 1).value == text
    assert wb["Events"].cell(row=2, column=5).value == text
    assert wb["Queue"].cell(row=2, column=2).value == text
    assert pd.read_excel(path, sheet_name="Queue")["reason"].iloc[0] == text


def test_summary_layout(written):
    import openpyxl

    path, data = written
    ws = openpyxl.load_workbook(path)["Summary"]
    head = [c.value for c in ws[1]]
    assert ws.freeze_panes == "C2"
    assert ws.auto_filter.ref.startswith("A1:")
    assert ws.cell(row=2, column=head.index("state") + 1).fill.fgColor.rgb.endswith("C6EFCE")  # completed
    assert ws.cell(row=3, column=head.index("state") + 1).fill.fgColor.rgb.endswith("FFC7CE")  # failed
    assert ws.cell(row=4, column=head.index("state") + 1).fill.fgColor.rgb.endswith("BDD7EE")  # running
    assert ws.cell(row=1, column=head.index("start") + 1).comment.text.startswith("Start of the current attempt, local time")
    assert "step ≤ 50" in ws.cell(row=1, column=head.index("val_err@50") + 1).comment.text
    link = ws.cell(row=2, column=head.index("run_dir") + 1)
    assert link.hyperlink is not None and link.hyperlink.target.lower() == Path(data.runs[0].run_dir).as_uri().lower()
    remote = ws.cell(row=3, column=head.index("run_dir") + 1)  # triton, no such directory here
    assert remote.value == "triton:/scratch/u/lr-sweep/2" and remote.hyperlink is None
    assert ws.column_dimensions["B"].width >= len("lr-sweep[lr=0.001]")


# (frozen panes, print title columns or None when the sheet fits one page wide); #13: every
# sheet prints landscape, one page wide where it can, the header row on each page, and is
# frozen at its run column
PRINTED = {"Summary": ("C2", None), "Curves": (None, None), "Curve data": ("F2", "$A:$E"), "Events": ("C2", None),
           "Resources": ("B2", None), "Queue": ("B2", None), "Attempts": ("C2", None),
           "Optimisation": ("D2", None)}


def test_every_sheet_prints_readably(written):
    """#13: printed, the Summary was cut across four pages at 60 %, columns split from their rows."""
    import openpyxl

    path, _ = written
    book = openpyxl.load_workbook(path)
    assert book.sheetnames == list(PRINTED)
    for ws in book.worksheets:
        frozen, title_columns = PRINTED[ws.title]
        setup = ws.page_setup
        assert setup.orientation == "landscape" and setup.paperSize == 9, ws.title  # A4
        assert ws.freeze_panes == frozen, ws.title
        if title_columns is None:  # one page wide, as many pages high as it takes
            assert ws.sheet_properties.pageSetUpPr.fitToPage, ws.title
            assert (setup.fitToWidth or 1) == 1 and setup.fitToHeight == 0, ws.title
        else:  # too wide for that (200 value columns): across pages, the run's columns on each
            assert not (ws.sheet_properties.pageSetUpPr and ws.sheet_properties.pageSetUpPr.fitToPage), ws.title
            assert setup.scale == MIN_PRINT_SCALE and ws.print_title_cols == title_columns, ws.title
        if frozen is not None:  # the header row at the top of every printed page
            assert ws.print_title_rows == "$1:$1", ws.title


def test_remote_hosts_decide_what_is_remote(tmp_path):
    data = make_input(tmp_path)
    path = tmp_path / "results.xlsx"
    write_results(path, data, remote_hosts={"triton": "triton.example.org"})
    s = pd.read_excel(path, sheet_name="Summary").set_index("run")
    assert s.loc["lr-sweep[lr=0.01]", "run_dir"] == "triton.example.org:/scratch/u/lr-sweep/2"
    assert s.loc["lr-sweep[lr=0.1]", "run_dir"] == data.runs[0].run_dir


# ---------------------------------------------------------------------------- atomic writes
def test_write_is_atomic_and_a_failure_leaves_the_old_file(tmp_path):
    data = make_input(tmp_path)
    path = tmp_path / "out" / "results.xlsx"
    assert write_results(path, data)
    later = dataclasses.replace(data, runs=tuple(dataclasses.replace(r, reason="again") for r in data.runs))
    assert write_results(path, later)
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.xlsx"]
    before = path.read_bytes()

    class Exploding(str):
        """A command line whose length cannot be taken: fails in the middle of the Summary."""

        def __len__(self) -> int:
            raise RuntimeError("boom while writing")

    runs = list(data.runs)
    runs[3] = dataclasses.replace(runs[3], command=Exploding("python x.py"))
    with pytest.raises(RuntimeError, match="boom while writing"):
        write_results(path, dataclasses.replace(data, runs=tuple(runs)))
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.xlsx"]
    assert pd.read_excel(path, sheet_name="Summary")["reason"].iloc[0] == "again"


def test_unchanged_content_is_not_rewritten_and_time_alone_is_no_change(written):
    path, data = written
    mtime = path.stat().st_mtime_ns
    assert write_results(path, data) is False
    assert write_results(path, dataclasses.replace(data, now=NOW + 30)) is False
    assert path.stat().st_mtime_ns == mtime
    assert fingerprint(data) == fingerprint(dataclasses.replace(data, now=NOW + 30))
    changed = dataclasses.replace(data, queue=())
    assert fingerprint(changed) != fingerprint(data)
    assert write_results(path, changed) is True


@pytest.mark.parametrize("series", [False, True])
def test_a_value_replaced_inside_a_history_rewrites_the_file(tmp_path, series):
    """A history of the same length with one value changed where no sample looks (a printed
    point overridden by a tracked one) is new content: the Summary's best shows it."""
    data = make_input(tmp_path)
    path = tmp_path / "results.xlsx"
    assert write_results(path, as_series(data) if series else data) is True
    h = dict(data.histories)
    points = list(h["rnn[act=relu]"]["val_err"])
    points[101] = (points[101][0], -5.0)  # not the first, a quarter, the middle, three quarters or the last
    h["rnn[act=relu]"] = {**h["rnn[act=relu]"], "val_err": tuple(points)}
    changed = dataclasses.replace(data, histories=h)
    assert write_results(path, as_series(changed) if series else changed) is True
    summary = pd.read_excel(path, sheet_name="Summary")
    assert summary.loc[summary["run"] == "rnn[act=relu]", "best:val_err"].item() == -5.0


@pytest.mark.parametrize("primary,declared", [("val_err", {"val_err": "min"}), ("", {}), ("", {"loss": "max"})])
def test_shows_reads_the_runs_a_batch_at_a_time_and_agrees_with_a_whole_write(tmp_path, primary, declared):
    """`streamed_digests` (what a pass asks first) hold one batch of runs at a time, and
    the file `shows` them exactly when `write_results` would write nothing; the goals and
    metric columns the runs bring are decided as the whole input decides them."""
    data = make_input(tmp_path, extra_runs=3)
    data = dataclasses.replace(data, settings=dataclasses.replace(data.settings, primary_metric=primary),
                               goals=goals_of((m for r in data.runs for m in r.last), declared))
    head = dataclasses.replace(data, runs=(), histories={}, goals=declared)

    def batches(d: ResultsInput, size: int = 2):
        for i in range(0, len(d.runs), size):
            part = d.runs[i:i + size]
            yield part, {r.key: d.histories[r.key] for r in part if r.key in d.histories}

    path = tmp_path / "results.xlsx"
    fingerprints = streamed_digests(head, lambda: batches(data)).fingerprints
    assert not shows(path, fingerprints)  # no file yet
    assert write_results(path, data) is True
    assert shows(path, fingerprints) and shows(path, streamed_digests(head, lambda: batches(data, 1)).fingerprints)
    assert write_results(path, data) is False
    for change in ({"reason": "another reason"}, {"best": {"val_err": 0.001}}, {"last": {"new_metric": 1.0}}):
        runs = list(data.runs)
        runs[4] = dataclasses.replace(runs[4], **change)
        other = dataclasses.replace(data, runs=tuple(runs), goals=goals_of((m for r in runs for m in r.last), declared))
        assert not shows(path, streamed_digests(head, lambda d=other: batches(d)).fingerprints), change
        assert write_results(path, other) is True
        assert shows(path, streamed_digests(head, lambda d=other: batches(d)).fingerprints), change
        assert write_results(path, data) is True  # back


@pytest.mark.parametrize("size", [1, 2, 5])
def test_a_write_a_batch_of_runs_at_a_time_is_the_whole_write_byte_for_byte(tmp_path, size):
    """`write_results` with `batches` (what a pass over 100,000 runs does: two passes over
    the store, a batch of runs held at a time) writes the very file the whole input writes:
    every part, Summary, Curve data, charts and leaderboard included."""
    import zipfile

    data = make_input(tmp_path, extra_runs=25)
    runs = list(data.runs)
    h = dict(data.histories)
    h["wide[seed=3]"] = {**h["wide[seed=3]"], "loss": tuple((s, math.nan) for s in range(1, 40))}  # never finite
    runs[7] = dataclasses.replace(runs[7], last={"acc": 0.5, **runs[7].last}, best={"acc": 0.9})  # a stored-only metric
    runs[8] = dataclasses.replace(runs[8], experiment="other", key="other[seed=2]", params=(("seed", 2), ("wd", 0.1)))
    h["other[seed=2]"] = h.pop(runs[8].key.replace("other", "wide"), {})
    declared = {"val_err": "min"}
    data = dataclasses.replace(data, runs=tuple(runs), histories=h,
                               goals=goals_of((m for r in runs for m in r.last), declared))
    head = dataclasses.replace(data, runs=(), histories={}, goals=declared)

    def batches():
        for i in range(0, len(runs), size):
            part = runs[i:i + size]
            yield part, {r.key: h[r.key] for r in part if r.key in h}

    whole, streamed = tmp_path / "whole.xlsx", tmp_path / "streamed.xlsx"
    assert write_results(whole, data, charts=True) and write_results(streamed, head, charts=True, batches=batches)
    with zipfile.ZipFile(whole) as a, zipfile.ZipFile(streamed) as b:
        assert a.namelist() == b.namelist()
        for name in a.namelist():
            assert a.read(name) == b.read(name), name
    summary = pd.read_excel(streamed, sheet_name="Summary")
    assert list(summary["run"]) == [r.key for r in runs] and "wd" in summary.columns and "best:acc" in summary.columns


def test_summary_only_refresh_keeps_the_curves_and_matches_a_full_write(tmp_path, written):
    path, data = written
    runs = list(data.runs)
    runs[2] = dataclasses.replace(runs[2], state=RunState.COMPLETED, reason="exit code 0", ended_at=NOW - 10)
    newer = dataclasses.replace(data, runs=tuple(runs), events=data.events + (Event(NOW - 10, runs[2].key, "completed"),))
    assert write_results(path, newer, charts=False)
    full = tmp_path / "full.xlsx"
    write_results(full, newer)
    with zipfile.ZipFile(path) as z, zipfile.ZipFile(full) as f:
        assert z.testzip() is None
        charts = sorted(n for n in z.namelist() if n.startswith("xl/charts/"))
        assert charts and charts == sorted(n for n in f.namelist() if n.startswith("xl/charts/"))
        for name in charts + ["xl/worksheets/sheet2.xml", "xl/worksheets/sheet3.xml", "xl/drawings/drawing1.xml"]:
            assert z.read(name) == f.read(name), name
        import re
        types = re.compile(rb'PartName="([^"]+)" ContentType="([^"]+)"')
        refreshed, rebuilt = (set(types.findall(x.read("[Content_Types].xml"))) for x in (z, f))
        assert rebuilt <= refreshed  # every chart and drawing is declared
        assert {p for p, _ in refreshed - rebuilt} <= {b"/xl/sharedStrings.xml"}  # the refresh writes in memory
    a, b = pd.read_excel(path, sheet_name=None), pd.read_excel(full, sheet_name=None)
    assert list(a) == list(b)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], obj=name)
    assert a["Summary"]["state"].iloc[2] == "completed"


def test_summary_only_refresh_keeps_stale_curves_until_a_full_write(written):
    path, data = written
    h = dict(data.histories)
    h["lr-sweep[lr=0.001]"] = {"val_err": curve(80, 0.7)}  # the running run logged more
    grown = dataclasses.replace(data, histories=h)
    assert write_results(path, grown, charts=False)
    d = pd.read_excel(path, sheet_name="Curve data")
    assert d[(d.run == "lr-sweep[lr=0.001]") & (d.axis == "step")]["points"].iloc[0] == 40  # as of the full write
    assert pd.read_excel(path, sheet_name="Summary")["val_err@50"].iloc[2] == pytest.approx(expected_at(h["lr-sweep[lr=0.001]"]["val_err"], 50))
    assert write_results(path, grown, charts=False) is False  # nothing new to show without charts
    assert write_results(path, grown) is True  # a full write brings the curves up to date
    d = pd.read_excel(path, sheet_name="Curve data")
    assert d[(d.run == "lr-sweep[lr=0.001]") & (d.axis == "step")]["points"].iloc[0] == 80


def test_a_file_saved_by_a_spreadsheet_program_is_rebuilt(written):
    import openpyxl

    path, data = written
    wb = openpyxl.load_workbook(path)
    wb["Summary"]["A1"] = "#"
    wb.save(path)  # openpyxl, like Excel, rewrites parts and drops the charts
    runs = [dataclasses.replace(r, reason="x") for r in data.runs]
    assert write_results(path, dataclasses.replace(data, runs=tuple(runs)), charts=False)
    with zipfile.ZipFile(path) as z:
        assert any(n.startswith("xl/charts/") for n in z.namelist())


def test_many_runs_split_across_charts(tmp_path):
    data = make_input(tmp_path, extra_runs=45)
    path = tmp_path / "results.xlsx"
    write_results(path, data)
    with zipfile.ZipFile(path) as z:
        charts = [z.read(n).decode() for n in z.namelist() if n.startswith("xl/charts/")]
    wide = [c for c in charts if "wide: val_err" in c]
    assert len(wide) == math.ceil(45 / SERIES_PER_CHART)
    assert "runs 1–15 of 45" in wide[0] and all(c.count("<c:ser>") <= SERIES_PER_CHART for c in charts)
    assert any("Leaderboard" in c for c in charts)


def test_downsampling_keeps_first_last_and_extremes():
    steps = list(range(5000))
    values = [math.sin(s / 50) for s in steps]
    values[1234], values[4321] = 7.0, -9.0
    s, v = downsample(steps, values, 200)
    assert len(s) <= 200 and s[0] == 0 and s[-1] == 4999 and s == sorted(s)
    assert 7.0 in v and -9.0 in v
    assert downsample(steps[:150], values[:150], 200) == (steps[:150], values[:150])


# ---------------------------------------------------------------------------- plot
def test_plot_curves_draws_a_png(written, tmp_path):
    import matplotlib.image

    _, data = written
    out = plot_curves(data.runs, data.histories, "val_err", tmp_path / "plots" / "val_err.png")
    img = matplotlib.image.imread(out)
    assert img.shape[0] > 400 and img.shape[1] > 800
    coloured = ((abs(img[..., 0] - img[..., 1]) > 0.2) | (abs(img[..., 1] - img[..., 2]) > 0.2)).sum()
    assert coloured > 2000
    with pytest.raises(NeroError, match="metrics with points: loss, val_err"):
        plot_curves(data.runs, data.histories, "bleu", tmp_path / "x.png")


# ---------------------------------------------------------------------------- must show 1
needs_libreoffice = pytest.mark.skipif(shutil.which("soffice") is None or shutil.which("pdftoppm") is None,
                                       reason="run tests/testbed/up.sh libreoffice")


def render(path: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """LibreOffice's PDF of the workbook (own profile, own HOME) and the text of each page."""
    out = tmp_path / "pdf"
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    proc = subprocess.run(
        ["soffice", "--headless", "--norestore", f"-env:UserInstallation={(tmp_path / 'lo-profile').as_uri()}",
         "--convert-to", "pdf", "--outdir", str(out), str(path)],
        capture_output=True, text=True, timeout=180, env={**os.environ, "HOME": str(home)})
    pdf = out / (path.stem + ".pdf")
    assert proc.returncode == 0 and pdf.exists(), proc.stdout + proc.stderr
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    return pdf, text.split("\f")


def coloured_pixels(pdf: Path, page: int, tmp_path: Path) -> int:
    """Pixels of the rendered page that are clearly coloured (chart lines and bars, not text)."""
    import matplotlib.image

    prefix = tmp_path / f"page{page}"
    subprocess.run(["pdftoppm", "-png", "-r", "50", "-f", str(page), "-l", str(page), str(pdf), str(prefix)],
                   check=True, timeout=60)
    img = matplotlib.image.imread(next(tmp_path.glob(f"page{page}*.png")))[..., :3]
    return int(((abs(img[..., 0] - img[..., 1]) > 0.25) | (abs(img[..., 1] - img[..., 2]) > 0.25)).sum())


@needs_libreoffice
def test_libreoffice_opens_the_workbook_and_draws_the_charts(written, tmp_path):
    path, data = written
    # a summary-only refresh: the curves LibreOffice draws were copied from the full write
    runs = (dataclasses.replace(data.runs[0], reason="refreshed"),) + data.runs[1:]
    assert write_results(path, dataclasses.replace(data, runs=runs), charts=False)
    pdf, pages = render(path, tmp_path)
    assert "refreshed" in pages[0]
    curves = [i for i, text in enumerate(pages) if "Leaderboard: best val_err" in text]
    assert curves, "no page shows the Curves sheet"
    text = pages[curves[0]]
    for title in ("lr-sweep: val_err (min is better)", "rnn: loss (min is better)", "step"):
        assert title in text
    assert "lr=0.01" in text  # a legend entry
    assert HOSTILE in "".join(pages)  # shown as text
    assert coloured_pixels(pdf, curves[0] + 1, tmp_path) > 1500, "the charts look empty"


@needs_libreoffice
@pytest.mark.slow
def test_libreoffice_renders_the_demo_results(tmp_path):
    """The demo of `nero init`, run to completion: its results workbook as LibreOffice prints it."""
    from conftest import nero

    nero("init", str(tmp_path / "demo"), check=True)
    # the demo's diverging configuration fails on purpose, so the exit code is not 0
    proc = nero("reconcile", str(tmp_path / "demo"), "--until-done", "--interval", "1", timeout=170)
    path = tmp_path / "demo" / "results.xlsx"
    assert path.exists(), proc.stdout + proc.stderr
    sheets = pd.read_excel(path, sheet_name=None)
    assert list(sheets) == list(SHEETS) and len(sheets["Summary"]) >= 6
    pdf, pages = render(path, tmp_path)
    curves = [i for i, text in enumerate(pages) if "Leaderboard: best" in text]
    assert curves and "demo: " in "".join(pages[i] for i in curves)
    # #13: the six-run Summary is one page wide: every column and every run on its one page
    summary = sheets["Summary"]
    assert curves[0] == 1, f"the Summary takes {curves[0]} pages"
    missing = [c for c in summary.columns if str(c) not in pages[0]] + [k for k in summary["run"] if k not in pages[0]]
    assert not missing, missing
    assert coloured_pixels(pdf, curves[0] + 1, tmp_path) > 1500, "the charts look empty"


def test_large_histories_refresh_the_curves_at_most_every_five_minutes(tmp_path):
    data = make_input(tmp_path)
    h = dict(data.histories)
    h["rnn[act=relu]"] = {"val_err": curve(60_000, 0.6), "loss": curve(60_000, 2.0)}  # 120,000 points
    data = dataclasses.replace(data, histories=h)
    path = tmp_path / "results.xlsx"
    assert write_results(path, data)

    def points_of(key: str) -> int:
        d = pd.read_excel(path, sheet_name="Curve data")
        return int(d[(d.run == key) & (d.metric == "val_err")]["points"].iloc[0])

    assert points_of("lr-sweep[lr=0.001]") == 40
    h["lr-sweep[lr=0.001]"] = {"val_err": curve(90, 0.7)}
    grown = dataclasses.replace(data, histories=h, now=NOW + 60)
    assert write_results(path, grown)  # the Summary shows the new points at once
    assert pd.read_excel(path, sheet_name="Summary")["val_err@50"].iloc[2] == pytest.approx(expected_at(curve(90, 0.7), 50))
    assert points_of("lr-sweep[lr=0.001]") == 40  # the curves wait
    assert write_results(path, dataclasses.replace(grown, now=NOW + 120)) is False
    assert write_results(path, dataclasses.replace(grown, now=NOW + 301))  # five minutes later
    assert points_of("lr-sweep[lr=0.001]") == 90
    assert write_results(path, dataclasses.replace(grown, now=NOW + 900)) is False


def test_diverged_runs_do_not_flatten_the_charts(tmp_path):
    """Like the demo's lr=3: finite but astronomically large losses, from the first step."""
    data = make_input(tmp_path)
    h = dict(data.histories)
    h["lr-sweep[lr=0.01]"] = {"val_err": tuple((s, 10.0 ** (80 + 60 * s)) for s in range(1, 4)) + ((4, math.nan),),
                              "loss": curve(100, 2.5)}
    runs = tuple(dataclasses.replace(r, last={}, best={}) if r.number == 2 else r for r in data.runs)
    data = dataclasses.replace(data, histories=h, runs=runs)
    path = tmp_path / "results.xlsx"
    write_results(path, data)
    with zipfile.ZipFile(path) as z:
        chart = next(c for c in (z.read(n).decode() for n in z.namelist() if n.startswith("xl/charts/"))
                     if "lr-sweep: val_err" in c)
        board = next(c for c in (z.read(n).decode() for n in z.namelist() if n.startswith("xl/charts/"))
                     if "Leaderboard" in c)
    assert "lr=0.01 (off the chart)" in chart
    assert '<c:max val="10"/>' in chart  # the others keep a readable axis (log, up to 10)
    assert "<c:max " in board and "0.00E+00" in board
    s = pd.read_excel(path, sheet_name="Summary").set_index("run")
    assert s.loc["lr-sweep[lr=0.01]", "best:val_err"] == pytest.approx(1e140)
    out = plot_curves(data.runs, h, "val_err", tmp_path / "val_err.png")  # no overflow in the axis
    assert out.stat().st_size > 10_000


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**9, 10**9),
                          st.sampled_from([1e7, 9999999.999999998, 1e-5, 9.999999999999999e-06, 0.0, 1000.0]))))
def test_a_columns_number_format_learnt_a_value_at_a_time_is_the_median_rule(values):
    """`curves.decimals` (Summary's metric columns, learnt a batch of runs at a time through
    `Magnitudes`) is the rule on the sorted values: four significant digits of the median
    magnitude, scientific at or over 1e7 and under 1e-5."""
    from orchestrator.curves import decimals

    mags = sorted(abs(v) for v in values if math.isfinite(v) and v != 0)
    if not mags:
        expected = 3
    else:
        med = mags[len(mags) // 2]
        expected = None if med >= 1e7 or med < 1e-5 else max(0, min(6, 3 - math.floor(math.log10(med))))
    assert decimals(values) == expected


def test_a_row_of_more_runs_than_charted_draws_its_best_and_keeps_every_series(tmp_path):
    """An experiment of more than CHARTED_RUNS runs is charted as its best CHARTED_RUNS by the
    primary metric, best first, the titles saying so; Curve data keeps every run's series
    (10,000 runs a row made 500 charts a row: 870 MB to write, nothing to read)."""
    import re

    from orchestrator.results import CHARTED_RUNS

    n = CHARTED_RUNS + 30
    data = make_input(tmp_path, extra_runs=n)
    path = tmp_path / "results.xlsx"
    write_results(path, data)
    with zipfile.ZipFile(path) as z:
        charts = {name: z.read(name).decode() for name in z.namelist() if name.startswith("xl/charts/")}
        sheets = "".join(z.read(name).decode() for name in z.namelist() if name.startswith("xl/worksheets/"))
    wide = sorted((c for c in charts.values() if "wide: val_err" in c),
                  key=lambda c: int(re.search(r"runs (\d+)–", c).group(1)))
    assert len(wide) == CHARTED_RUNS // SERIES_PER_CHART
    assert f"runs 1–{SERIES_PER_CHART} of {n}, the best by val_err" in wide[0]
    drawn = [int(s) for c in wide for s in re.findall(r"<c:v>seed=(\d+)</c:v>", c)]
    best = sorted(range(n), key=lambda i: (min(v for _, v in data.histories[f"wide[seed={i}]"]["val_err"]), i))
    assert drawn == best[:CHARTED_RUNS]  # the leaderboard's order: the best first
    assert f"wide[seed={n - 1}]" in sheets and f"seed={best[-1]}<" not in "".join(charts.values())
