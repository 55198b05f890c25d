"""Metrics from the files frameworks write (TensorBoard event files, CSV loggers) and from the
dicts Hugging Face's Trainer prints: real files written by the real libraries (tensorboardX,
TensorBoard's own reader as the reference, csv and pandas in Lightning's and Keras' layouts),
read in pieces as a growing file is, and a real job whose points arrive pass by pass."""

from __future__ import annotations

import csv
import json
import math
import random
import struct
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import nero, state_db, wait_for, write_workbook

from orchestrator.errors import WorkbookError
from orchestrator.metric_files import globs_of, metric_name, read_sources
from orchestrator.model import MetricDef, SourceChunk, SourceOffset
from orchestrator.monitor import parse_output
from orchestrator.sheet import read_workbook
from orchestrator.tfevents import masked_crc, read_events

tensorboardX = pytest.importorskip("tensorboardX")


def event_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("events.out.tfevents.*"))


def poll_in_pieces(files: dict[str, bytes], cuts: int, seed: int = 0, window: int = 0) -> list[tuple]:
    """Read `files` (relative path -> final content) as polls of a growing folder would: each
    poll sees every file up to a random length, then the last one sees them whole."""
    rng = random.Random(seed)
    known: tuple[SourceOffset, ...] = ()
    got: list[tuple] = []
    k, last = 0, None
    while k <= cuts or known != last:  # then polls of the whole files until nothing more is read
        last, k = known, k + 1
        chunks = []
        for path, content in files.items():
            size = len(content) if k > cuts else rng.randint(0, len(content))
            at = {o.path: o for o in known}.get(path, SourceOffset(path)).offset
            if size < at:
                size = at  # a file only grows
            data = content[at:size][:window] if window else content[at:size]
            head = content[:content.find(b"\n") + 1] if at else b""
            chunks.append(SourceChunk(path, at, data, size, head))
        r = read_sources(chunks, known, 0.0, final=k > cuts, window=window)
        known = r.offsets
        got += [(p.name, p.step, p.value, p.source) for p in r.points]
    return got


# ---------------------------------------------------------------------------- event files
def tf2_scalar(writer, tag: str, tensor, step: int) -> None:
    """A scalar as TensorFlow 2's `tf.summary.scalar` writes it, through tensorboardX's FileWriter."""
    from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata

    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="scalars"))
    writer.add_summary(Summary(value=[Summary.Value(tag=tag, tensor=tensor, metadata=meta)]), step)


def test_tensorboardx_scalars_read_as_tensorboard_reads_them(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util
    from tensorboardX.proto.tensor_pb2 import TensorProto
    from tensorboardX.proto.tensor_shape_pb2 import TensorShapeProto

    w = tensorboardX.SummaryWriter(str(tmp_path / "tb"))
    tf2 = tensorboardX.FileWriter(str(tmp_path / "tb2"))  # a second file, as a second writer makes
    for s in range(0, 30):
        w.add_scalar("train/loss", 1.0 / (s + 1), s)
        w.add_scalar("lr", 0.1 * 0.9 ** s, s)
        # TensorFlow 2's scalars: rank-0 tensors (float_val, double_val, or tensor_content)
        tf2_scalar(tf2, "tensor/acc", TensorProto(dtype=1, float_val=[s / 30], tensor_shape=TensorShapeProto()), s)
        tf2_scalar(tf2, "tensor/exact", TensorProto(dtype=2, double_val=[1 / 3 + s]), s)
        tf2_scalar(tf2, "tensor/bytes", TensorProto(dtype=1, tensor_content=struct.pack("<f", s * 0.5)), s)
    tf2_scalar(tf2, "tensor/vector", TensorProto(dtype=1, float_val=[1.0, 2.0], tensor_shape=TensorShapeProto(
        dim=[TensorShapeProto.Dim(size=2)])), 0)  # no scalar: nothing
    w.add_text("note", "hello", 0)
    w.add_histogram("weights", np.arange(100.0), 1)
    w.add_image("picture", np.zeros((3, 8, 8)), 2)
    w.add_scalar("negative_step", 5.0, -3)
    w.close()
    tf2.close()
    ours = {}
    for path in event_files(tmp_path):
        r = read_events(path.read_bytes(), final=True)
        assert r.problems == () and r.consumed == path.stat().st_size
        ours.update({(p.name, p.step): p.value for p in r.points})
    assert {p.source for p in r.points} == {"tensorboard"}
    assert {n for n, _ in ours} == {"train/loss", "lr", "tensor/acc", "tensor/exact", "tensor/bytes", "negative_step"}

    theirs = {}
    for path in event_files(tmp_path):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        theirs.update({(tag, e.step): e.value for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)})
        for tag in acc.Tags()["tensors"]:
            arrays = {(tag, e.step): tensor_util.make_ndarray(e.tensor_proto) for e in acc.Tensors(tag)}
            theirs.update((k, float(a)) for k, a in arrays.items() if a.ndim == 0)  # what TensorBoard charts
    assert set(ours) == set(theirs) and len(theirs) == 5 * 30 + 1
    for key, value in theirs.items():  # float32 values read back as the decimal that was logged
        assert ours[key] == pytest.approx(value, rel=1e-6), key
    assert ours[("train/loss", 2)] == 0.33333334 and ours[("train/loss", 3)] == 0.25 and ours[("lr", 0)] == 0.1 and ours[("negative_step", -3)] == 5.0
    assert ours[("tensor/exact", 4)] == 1 / 3 + 4  # a double stays exact


def test_event_file_read_in_any_pieces_gives_the_same_points(tmp_path: Path) -> None:
    w = tensorboardX.SummaryWriter(str(tmp_path / "tb"))
    for s in range(200):
        w.add_scalar("loss", 1.0 / (s + 1), s)
        if s % 50 == 0:
            w.add_image("big", np.random.default_rng(s).random((3, 64, 64)), s)  # ~40 kB records
    w.close()
    [path] = event_files(tmp_path)
    content = path.read_bytes()
    whole = [(p.name, p.step, p.value, p.source) for p in read_events(content, final=True).points]
    assert len(whole) == 200
    for seed in range(5):
        assert poll_in_pieces({"tb/x.tfevents": content}, cuts=12, seed=seed) == whole
    # a read window smaller than an image record: the image is skipped unread, the scalars all come
    assert poll_in_pieces({"tb/x.tfevents": content}, cuts=40, window=8192) == whole


def test_a_record_still_being_written_waits_and_a_corrupt_one_is_skipped_at_the_end(tmp_path: Path) -> None:
    w = tensorboardX.SummaryWriter(str(tmp_path / "tb"))
    for s in range(10):
        w.add_scalar("loss", float(s), s)
    w.close()
    content = event_files(tmp_path)[0].read_bytes()
    r = read_events(content[:-3])  # the last record's CRC not yet written
    assert [p.step for p in r.points] == list(range(9)) and r.consumed < len(content) - 3
    zeroed = content[:-12] + b"\0" * 12  # a network file system's page not yet filled
    assert [p.step for p in read_events(zeroed).points] == list(range(9))
    final = read_events(zeroed, final=True)
    assert [p.step for p in final.points] == list(range(9)) and final.consumed == len(content)
    assert "fails its CRC" in final.problems[0]
    assert masked_crc(b"") == 0xA282EAD8 + (0 >> 15)  # the TFRecord mask of CRC-32C("") = 0


# ---------------------------------------------------------------------------- names
def test_keras_folders_and_add_scalars_keep_their_series_apart(tmp_path: Path) -> None:
    for split, loss in (("train", 0.5), ("validation", 0.7)):  # Keras' TensorBoard callback layout
        w = tensorboardX.SummaryWriter(str(tmp_path / "logs" / split))
        w.add_scalar("epoch_loss", loss, 0)
        w.close()
    w = tensorboardX.SummaryWriter(str(tmp_path / "runs" / "exp"))
    w.add_scalars("loss", {"train": 0.4, "val": 0.6}, 1)
    w.add_scalar("plain/tag", 1.0, 1)
    w.close()
    files = {str(p.relative_to(tmp_path)): p.read_bytes() for p in event_files(tmp_path)}
    names = {n: v for n, _, v, _ in poll_in_pieces(files, cuts=0)}
    assert names == {"train/epoch_loss": 0.5, "validation/epoch_loss": 0.7, "loss/train": 0.4, "loss/val": 0.6,
                     "plain/tag": 1.0}
    assert metric_name("runs/exp/loss_train/events.out.tfevents.1", "loss") == "loss/train"  # torch's layout


# ---------------------------------------------------------------------------- CSV
class LightningCSV:
    """The file Lightning's CSVLogger writes (lightning_fabric.loggers.csv_logs._ExperimentWriter):
    a header of every key so far, rows appended on save, the file rewritten with a wider header
    when a new key appears."""

    def __init__(self, path: Path):
        self.path, self.keys = path, []

    def save(self, rows: list[dict]) -> None:
        new = [k for r in rows for k in r if k not in self.keys]
        self.keys += list(dict.fromkeys(new))
        if new and self.path.exists():
            with self.path.open(newline="") as f:
                old = list(csv.DictReader(f))
            with self.path.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.keys)
                w.writeheader()
                w.writerows(old)
        exists = self.path.exists()
        with self.path.open("a" if exists else "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.keys)
            if not exists:
                w.writeheader()
            w.writerows(rows)


def test_lightning_csv_with_a_rewritten_header_is_read_once_per_row(tmp_path: Path) -> None:
    path = tmp_path / "lightning_logs" / "version_0" / "metrics.csv"
    path.parent.mkdir(parents=True)
    log = LightningCSV(path)
    known: tuple[SourceOffset, ...] = ()
    got: list[tuple] = []

    def poll() -> None:
        nonlocal known
        content = path.read_bytes()
        at = {o.path: o for o in known}.get("m.csv", SourceOffset("m.csv")).offset
        head = content[:content.find(b"\n") + 1] if at else b""
        r = read_sources([SourceChunk("m.csv", at, content[at:], len(content), head)], known, 0.0)
        known = r.offsets
        got.extend((p.name, p.step, p.value) for p in r.points)

    log.save([{"train_loss": 0.9, "epoch": 0, "step": 9}, {"train_loss": 0.8, "epoch": 0, "step": 19}])
    poll()
    log.save([{"val_loss": 0.7, "epoch": 0, "step": 19}])  # a new key: the file is rewritten
    poll()  # the header changed: read again from the start next time
    poll()
    log.save([{"train_loss": 0.6, "epoch": 1, "step": 29}])
    poll()
    poll()
    assert got == [("train_loss", 9, 0.9), ("epoch", 9, 0.0), ("train_loss", 19, 0.8), ("epoch", 19, 0.0),
                   ("epoch", 19, 0.0), ("val_loss", 19, 0.7), ("train_loss", 29, 0.6), ("epoch", 29, 1.0)]


def test_keras_csv_written_by_pandas_is_read_by_epoch_in_any_pieces(tmp_path: Path) -> None:
    frame = pd.DataFrame({"epoch": range(8), "accuracy": np.linspace(0.5, 0.9, 8), "loss": np.linspace(1, 0.2, 8),
                          "val_accuracy": np.linspace(0.4, 0.8, 8), "val_loss": np.linspace(1.1, 0.3, 8)})
    frame.to_csv(tmp_path / "history.csv", index=False)  # Keras' CSVLogger layout: epoch first
    content = (tmp_path / "history.csv").read_bytes()
    whole = poll_in_pieces({"history.csv": content}, cuts=0)
    assert len(whole) == 8 * 4 and {s for _, s, _, _ in whole} == set(range(8)) and whole[0][3] == "csv"
    assert ("val_loss", 7, pytest.approx(0.3), "csv") in whole
    for seed in range(4):
        assert poll_in_pieces({"history.csv": content}, cuts=6, seed=seed) == whole
    assert poll_in_pieces({"history.csv": "\ufeff".encode() + content}, cuts=3) == whole  # saved by Excel: a BOM


# ---------------------------------------------------------------------------- Hugging Face
HF_LOGS = r'''
import numpy as np
from transformers import TrainingArguments
from transformers.trainer_callback import ProgressCallback, TrainerControl, TrainerState

callback, state = ProgressCallback(), TrainerState(max_steps=30)
args = TrainingArguments(output_dir="out", report_to=[])
callback.on_train_begin(args, state, TrainerControl())
for step in (10, 20, 30):
    state.global_step = step
    callback.on_log(args, state, TrainerControl(), logs={"loss": 1.0 / step, "grad_norm": 2.5, "learning_rate": 5e-05 * (1 - step / 40), "epoch": step / 30})
callback.on_log(args, state, TrainerControl(), logs={"eval_loss": np.float64(0.25), "eval_accuracy": np.float64(0.875), "epoch": 1.0})
callback.on_log(args, state, TrainerControl(), logs={"train_runtime": 12.5, "train_loss": 0.0625, "total_flos": 1e12, "epoch": 1.0})
callback.on_train_end(args, state, TrainerControl())
print("Namespace(lr='0.1')", {'dropout': '0.10'}, flush=True)  # quoted values elsewhere stay text
'''


def test_hugging_face_trainer_logs_as_transformers_prints_them(tmp_path: Path) -> None:
    """transformers' own ProgressCallback writes the lines (through its tqdm bar, on stdout)."""
    import subprocess
    import sys

    pytest.importorskip("transformers")
    (tmp_path / "hf.py").write_text(HF_LOGS)
    out = subprocess.run([sys.executable, "hf.py"], cwd=tmp_path, capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert b"{'loss': " in out.stdout
    points, _ = parse_output(out.stdout, final=True)
    got = [(p.name, p.value) for p in points]
    assert got == [("loss", 0.1), ("grad_norm", 2.5), ("learning_rate", 3.75e-05), ("epoch", pytest.approx(1 / 3, 1e-3)),
                   ("loss", 0.05), ("grad_norm", 2.5), ("learning_rate", 2.5e-05), ("epoch", pytest.approx(2 / 3, 1e-3)),
                   ("loss", pytest.approx(1 / 30, 1e-3)), ("grad_norm", 2.5), ("learning_rate", 1.25e-05), ("epoch", 1.0),
                   ("eval_loss", 0.25), ("eval_accuracy", 0.875), ("epoch", 1.0),
                   ("train_runtime", 12.5), ("train_loss", 0.0625), ("epoch", 1.0)]
    assert {p.step for p in points} == {None}  # the Trainer prints no step: numbered in order


def test_hugging_face_dict_lines_give_their_values() -> None:
    # transformers' ProgressCallback.on_log writes `str(logs)`; evaluation metrics computed
    # with numpy are numpy scalars, which numpy 2 shows as np.float64(…)
    lines = [str({"loss": 0.6931, "grad_norm": 1.25, "learning_rate": 4.5e-05, "epoch": 0.5}),
             str({"eval_loss": np.float64(0.52), "eval_accuracy": np.float64(0.81), "epoch": 1.0}),
             str({"train_runtime": 12.3, "train_loss": 0.65, "epoch": 3.0})]
    points, _ = parse_output(("\n".join(lines) + "\n").encode())
    got = {(p.name, p.value) for p in points}
    assert got == {("loss", 0.6931), ("grad_norm", 1.25), ("learning_rate", 4.5e-05), ("epoch", 0.5),
                   ("eval_loss", 0.52), ("eval_accuracy", 0.81), ("epoch", 1.0), ("train_runtime", 12.3),
                   ("train_loss", 0.65), ("epoch", 3.0)}
    assert {p.step for p in points} == {None}  # no step printed: numbered in order


# ---------------------------------------------------------------------------- the Metrics sheet
def test_metrics_file_globs_are_checked_at_their_cells(tmp_path: Path) -> None:
    book = write_workbook(tmp_path / "experiments.xlsx", [{"id": "a", "command": "true"}], metrics=[
        {"name": "val_accuracy", "file": "history.csv", "goal": "max"},
        {"name": "b", "file": "/etc/passwd"},
        {"name": "c", "file": "../other/*.csv"},
        {"name": "d", "file": "logs/*.csv", "pattern": "d=(\\d+)"},
    ])
    with pytest.raises(WorkbookError) as info:
        read_workbook(book)
    found = {p.where: p.message for p in info.value.problems}
    assert set(found) == {"Metrics!B3", "Metrics!B4", "Metrics!B5"}
    assert "relative" in found["Metrics!B3"] and "`..`" in found["Metrics!B4"] and "pattern" in found["Metrics!B5"]
    assert globs_of((MetricDef("val_accuracy", file="history.csv"),))[-1] == "history.csv"


# ---------------------------------------------------------------------------- the agent's listing
def test_the_agent_lists_what_the_globs_match_within_its_bounds(tmp_path: Path) -> None:
    from orchestrator.backends.agent import glob_regex, list_sources

    run = tmp_path / "run"
    for rel in ("metrics.csv", "lightning_logs/version_0/metrics.csv", "history.csv", "logs/a.csv", "logs/deep/b.csv",
                "runs/x/events.out.tfevents.1.h", ".git/events.out.tfevents.2.h", "stdout.log",
                "/".join(["d"] * 12) + "/events.out.tfevents.3.h"):
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_bytes(b"x")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "events.out.tfevents.4.h").write_bytes(b"x")
    (run / "linked").symlink_to(tmp_path / "elsewhere")
    globs = [(glob_regex(g), g.endswith(".csv")) for g in (*globs_of(()), "*.csv", "logs/*.csv")]
    found = dict(list_sources(str(run), globs))
    assert found == {"metrics.csv": True, "lightning_logs/version_0/metrics.csv": True, "history.csv": True,
                     "logs/a.csv": True, "runs/x/events.out.tfevents.1.h": False}
    assert [n for n, _ in list_sources(str(run), globs, max_files=2)] == ["history.csv", "lightning_logs/version_0/metrics.csv"]
    for k in range(3000):
        (run / f"ckpt-{k}").write_bytes(b"")
    assert len(list_sources(str(run), globs, max_entries=1000)) <= 5  # a huge folder is looked at only so far


# ---------------------------------------------------------------------------- the store
def test_file_offsets_are_stored_with_their_points_and_an_older_store_gains_the_column(tmp_path: Path) -> None:
    import sqlite3

    from orchestrator.model import Desired, MetricPoint, NewAttempt, Offsets, RunSpec, Update
    from orchestrator.state import Store

    spec = RunSpec(key="a", experiment="a", row=2, params=(), command="python train.py", clusters=("local",),
                   resources=(), setup="", workdir="", template="", desired=Desired.RUN, priority=0, after=(),
                   retries=0, rules="", notify=(), spec_hash="h")
    path = tmp_path / "state.db"
    store = Store(path)
    store.record_intents([NewAttempt(spec, 1, "local", "/runs/a/1", "python train.py")], 0.0)
    store.close()
    with sqlite3.connect(path) as con:  # the attempts table as nero left it before metric files
        con.execute("ALTER TABLE attempts DROP COLUMN off_files")
    store = Store(path)
    assert store.snapshot()["a"].offsets.files == ()
    files = (SourceOffset("lightning_logs/version_0/metrics.csv", 120, 3, 0, 12345),
             SourceOffset("tb/events.out.tfevents.1.host", 4096))
    point = MetricPoint("train/loss", 0.5, 7, 1.0, "tensorboard")
    store.apply([Update("a", 1, offsets=Offsets(10, 0, 0, 0, files), points=(point,))])
    store.close()
    store = Store(path)  # read back by a new process
    assert store.snapshot()["a"].offsets == Offsets(10, 0, 0, 0, files)
    assert [(s, v) for s, v in store.history("a")["train/loss"]] == [(7, 0.5)]
    store.close()


def test_a_late_float32_point_from_an_event_file_does_not_replace_track_s_value_in_rules(tmp_path: Path) -> None:
    """TensorBoard's writer flushes late: its points of a metric track also logs arrive a pass
    after track's, float32 (1e39 is inf there). Rules read the history: track's, at the latest step."""
    from orchestrator.expr import Facts
    from orchestrator.lifecycle import fold_metrics
    from orchestrator.model import Desired, MetricPoint, NewAttempt, RunSpec, Update
    from orchestrator.rules import evaluate, parse_rules
    from orchestrator.state import Store

    spec = RunSpec(key="a", experiment="a", row=2, params=(), command="python train.py", clusters=("local",),
                   resources=(), setup="", workdir="", template="", desired=Desired.RUN, priority=0, after=(),
                   retries=0, rules="", notify=(), spec_hash="h")
    store = Store(tmp_path / "state.db")
    store.record_intents([NewAttempt(spec, 1, "local", "/runs/a/1", "python train.py")], 0.0)
    passes = [[MetricPoint("loss", 10.0 ** (10 * s), s, 0.0, "track") for s in (1, 2, 3, 4)],
              [MetricPoint("loss", v, s, 0.0, "tensorboard") for s, v in ((1, 10.0), (2, 1e20), (3, 1e30), (4, math.inf))]]
    last: dict = {}
    for points in passes:
        last, best, step = fold_metrics(points, last, {}, {})
        store.apply([Update("a", 1, points=tuple(points), last=last, best=best, step=step)])
    record = store.snapshot()["a"]
    assert record.last["loss"] == math.inf  # the order of arrival: the late file's point came last
    facts = Facts.of(record, 0.0, store.history("a"))
    assert facts.metrics["loss"] == 1e40  # track's, at step 4
    assert not evaluate(parse_rules("isinf(loss)"), facts)[0].fired
    store.close()


# ---------------------------------------------------------------------------- a real job
TRAIN = r'''
import csv, os, sys, time
import numpy as np
from tensorboardX import SummaryWriter
run = os.environ["NERO_RUN_DIR"]
w = SummaryWriter(os.path.join(run, "tb"), flush_secs=1)
os.makedirs(os.path.join(run, "lightning_logs", "version_0"))

def epoch(s):
    w.add_scalar("train/loss", 1.0 / s, s)
    w.add_scalar("val/acc", s / 10, s)
    w.flush()
    with open(os.path.join(run, "lightning_logs", "version_0", "metrics.csv"), "a", newline="") as f:
        out = csv.writer(f)
        if s == 1:
            out.writerow(["epoch", "step", "train_loss_epoch"])
        out.writerow([s - 1, s * 10, 2.0 / s])
    with open(os.path.join(run, "history.csv"), "a", newline="") as f:
        out = csv.writer(f)
        if s == 1:
            out.writerow(["epoch", "accuracy", "val_accuracy"])
        out.writerow([s - 1, s / 20, s / 30])
    print(str({"loss": round(1.0 / s, 4), "eval_f1": np.float64(s / 40), "epoch": float(s)}), flush=True)

for s in (1, 2, 3):
    epoch(s)
open(os.path.join(run, "half"), "w").close()
while not os.path.exists(os.path.join(run, "go")):
    time.sleep(0.05)
for s in (4, 5, 6):
    epoch(s)
w.close()
'''


def stored(project: Path) -> list[tuple]:
    with state_db(project) as con:
        return con.execute("SELECT name, step, value, source FROM metrics ORDER BY rowid").fetchall()


def test_a_running_job_s_event_files_and_csvs_arrive_pass_by_pass(project: Path) -> None:
    (project / "train.py").write_text(textwrap.dedent(TRAIN))
    write_workbook(project / "experiments.xlsx", [{"id": "tb", "command": "python train.py"}],
                   metrics=[{"name": "val_accuracy", "goal": "max", "file": "history.csv"}])
    nero("reconcile", str(project), check=True)
    half = wait_for(lambda: next(project.rglob("half"), None), what="the first three epochs")
    # tensorboardX writes from a thread of its own: wait until the file holds epoch 3
    wait_for(lambda: len(read_events(next(half.parent.rglob("events.out.tfevents.*")).read_bytes()).points) == 6,
             what="tensorboardX's writer thread")
    nero("reconcile", str(project), check=True)
    first = stored(project)
    steps = {(n, s) for n, s, _, src in first if src == "tensorboard"}
    assert steps == {(n, s) for n in ("train/loss", "val/acc") for s in (1, 2, 3)}
    assert {(n, s, v) for n, s, v, src in first if src == "csv"} >= {
        ("train_loss_epoch", 30, 2 / 3), ("epoch", 30, 2.0), ("val_accuracy", 2, 0.1), ("accuracy", 2, 0.15)}
    assert [v for n, _, v, src in first if n == "eval_f1" and src == "stdout"] == [0.025, 0.05, 0.075]
    (half.parent / "go").touch()
    wait_for(lambda: (half.parent / "exit_code").exists(), what="the job's end")
    nero("reconcile", str(project), check=True)
    nero("reconcile", str(project), check=True)
    rows = stored(project)
    assert rows[:len(first)] == first  # what the first pass stored stays, nothing doubled
    tb = [(n, s, v) for n, s, v, src in rows if src == "tensorboard"]
    assert len(tb) == len(set(tb)) == 12
    assert [s for n, s, _ in tb if n == "train/loss"] == [1, 2, 3, 4, 5, 6]
    assert ("train/loss", 4, 0.25) in tb
    assert len([r for r in rows if r[3] == "csv"]) == 6 * 4
    status = json.loads(nero("status", str(project), "--json", check=True).stdout)
    run = status[0] if isinstance(status, list) else status["runs"][0]
    assert run["state"] == "completed"
    with state_db(project) as con:
        [(files,)] = con.execute("SELECT off_files FROM attempts").fetchall()
    offsets = {p: off for p, off, *_ in json.loads(files)}
    assert set(offsets) == {"history.csv", "lightning_logs/version_0/metrics.csv",
                            str(next(project.rglob("events.out.tfevents.*")).relative_to(half.parent))}
    assert all(off == (half.parent / p).stat().st_size for p, off in offsets.items())


# ---------------------------------------------------------------------------- the example program
EXAMPLE = Path(__file__).resolve().parent.parent / "templates" / "project" / "train.py"


def test_the_example_program_writes_an_event_file_when_it_can_and_runs_without(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    def train(folder: Path, **env: str) -> subprocess.CompletedProcess[str]:
        folder.mkdir()
        return subprocess.run([sys.executable, str(EXAMPLE), "--epoch-seconds", "0", "--epochs", "5"], cwd=folder,
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "NERO_RUN_DIR": str(folder), **env})

    with_board = train(tmp_path / "with")
    assert with_board.returncode == 0, with_board.stderr
    files = {str(p.relative_to(tmp_path / "with")): p.read_bytes() for p in event_files(tmp_path / "with")}
    assert len(files) == 1 and next(iter(files)).startswith("tb/")
    got = poll_in_pieces(files, cuts=3)
    assert {(n, s) for n, s, _, _ in got} == {(n, s) for n in ("loss", "val_loss", "acc") for s in range(1, 6)}
    printed = {line.split()[0]: float(line.split()[2].split("=")[1]) for line in with_board.stdout.splitlines()}
    assert {s: v for n, s, v, _ in got if n == "val_loss"} == {int(k.split("=")[1]): pytest.approx(v, rel=1e-3)
                                                                for k, v in printed.items()}
    # without tensorboardX or torch (here: an import that fails, as an uninstalled one does) it runs as before
    shadow = tmp_path / "shadow" / "tensorboardX"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('tensorboardX is not installed')\n")
    without = train(tmp_path / "without", PYTHONPATH=str(shadow.parent))
    assert without.returncode == 0 and without.stdout.count("\n") == 5 and not event_files(tmp_path / "without")


RULED = r'''
import os, time
from tensorboardX import SummaryWriter
w = SummaryWriter(os.path.join(os.environ["NERO_RUN_DIR"], "tb"), flush_secs=1)
for s in (1, 2, 3):
    w.add_scalar("val/acc", s / 10, s)
w.flush()
time.sleep(120)
'''


def test_a_rule_on_a_tensorboard_tag_stops_the_run(project: Path) -> None:
    """`val/acc` is a name rules read; the float32 0.3 TensorBoard stores is the 0.3 logged."""
    (project / "ruled.py").write_text(RULED)
    write_workbook(project / "experiments.xlsx", [{"id": "r", "command": "python ruled.py", "rules": "val/acc >= 0.3"}])
    nero("reconcile", str(project), "--until-done", "--interval", "0.3", timeout=120)
    run = json.loads(nero("status", str(project), "--json", check=True).stdout)[0]
    assert run["state"] == "terminated" and run["reason"] == "val/acc >= 0.3 (val/acc=0.3 at step 3)", run


WRITER = r'''
import csv, os, sys, time
from tensorboardX import SummaryWriter
run = os.environ["NERO_RUN_DIR"]
w = SummaryWriter(os.path.join(run, "tb"), flush_secs=1)
with open(os.path.join(run, "metrics.csv"), "w", newline="") as f:
    out = csv.writer(f)
    out.writerow(["step", "acc"])
    for s in range(1, 121):
        w.add_scalar("train/loss", 1.0 / s, s)
        out.writerow([s, s / 1000])
        f.flush()
        time.sleep(0.03)
w.close()
'''


@pytest.mark.slow
def test_sigkill_of_the_watch_loop_loses_and_doubles_no_point_of_a_metric_file(project: Path) -> None:
    import signal
    import sqlite3
    import subprocess
    import sys

    (project / "writer.py").write_text(WRITER)
    write_workbook(project / "experiments.xlsx", [{"id": "k", "command": "python writer.py", "tag": "[1, 2, 3]"}],
                   clusters=[{"name": "local", "kind": "local", "max_jobs": 8}])
    cmd = [sys.executable, "-m", "orchestrator", "reconcile", str(project), "--watch", "--interval", "0.2", "-q"]

    def count() -> int:
        if not (project / ".nero" / "state.db").exists():
            return 0
        with state_db(project) as con:
            try:
                return con.execute("SELECT COUNT(*) FROM metrics WHERE source != 'stdout'").fetchone()[0]
            except sqlite3.OperationalError:  # the store is being created
                return 0

    for round_ in range(3):
        loop = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda n=60 * (round_ + 1): count() > n, timeout=60, what="points of the files ingested")
        loop.send_signal(signal.SIGKILL)
        loop.wait()
    assert nero("reconcile", str(project), "--until-done", "--interval", "0.3", timeout=120).returncode == 0
    with state_db(project) as con:
        rows = con.execute("SELECT key, name, step FROM metrics WHERE source != 'stdout' ORDER BY rowid").fetchall()
    for key in {k for k, _, _ in rows}:
        for name in ("train/loss", "acc"):
            assert [s for k, n, s in rows if k == key and n == name] == list(range(1, 121)), (key, name)


# --------------------------------------------------------------------------- nero metrics test
def test_metrics_test_reads_an_event_file_and_a_keras_csv_as_a_pass_would(tmp_path: Path):
    """`nero metrics test` on the files frameworks write: every point with its step and the
    tag or column it came from, equal to what a pass reads (read_sources over the whole file);
    a Keras CSVLogger file named `.log` is read as a CSV with `--as csv`."""
    w = tensorboardX.SummaryWriter(str(tmp_path / "logs" / "validation"))
    for i in range(4):
        w.add_scalar("epoch_loss", 1.0 / (i + 1), i)
    w.close()
    (event,) = event_files(tmp_path)
    out = nero("metrics", "test", str(event), "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["kind"] == "tensorboard" and got["problems"] == []
    # Keras' TensorBoard callback writes logs/validation/: the folder names the series
    assert [(c["metric"], c["step"], c["value"]) for c in got["captures"]] == [
        ("validation/epoch_loss", i, float(str(np.float32(1.0 / (i + 1))))) for i in range(4)]  # float32, shortest
    pass_read = read_sources([SourceChunk(f"logs/validation/{event.name}", 0, event.read_bytes(),
                                          event.stat().st_size)], (), None, final=True)
    assert [(p.name, p.step, p.value) for p in pass_read.points] == [
        (c["metric"], c["step"], c["value"]) for c in got["captures"]]
    text = nero("metrics", "test", str(event))
    assert "TensorBoard event file" in text.stdout and "tag validation/epoch_loss" in text.stdout

    log = tmp_path / "training.log"  # CSVLogger('training.log'), as Keras' documentation writes it
    pd.DataFrame({"epoch": [0, 1, 2], "accuracy": [0.5, 0.6, 0.7], "loss": [0.9, 0.7, 0.6]}).to_csv(log, index=False)
    as_log = json.loads(nero("metrics", "test", str(log), "--json").stdout)
    assert as_log["kind"] == "log"  # by its name, printed output: the default capture takes nothing here
    as_csv = json.loads(nero("metrics", "test", str(log), "--as", "csv", "--json").stdout)
    assert as_csv["kind"] == "csv"
    assert {(m["metric"], m["count"], m["first_step"], m["last_step"], m["last_value"]) for m in as_csv["metrics"]} == {
        ("accuracy", 3, 0, 2, 0.7), ("loss", 3, 0, 2, 0.6)}
