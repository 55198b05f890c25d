"""Parsing job output, metrics.jsonl and resources.jsonl (orchestrator.monitor, pure)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator import track
from orchestrator.metric_patterns import compile_metric_pattern
from orchestrator.model import MetricDef, MetricPoint, ResourceSample
from orchestrator.monitor import (
    parse_output,
    parse_resources,
    parse_track,
)

REFERENCE_LOG = Path(__file__).parent / "data" / "po_training_log.txt"  # a user's real log, verbatim


def triples(data: bytes, defs: tuple[MetricDef, ...] = ()) -> list[tuple[str, float, int | None]]:
    points, consumed = parse_output(data if data.endswith(b"\n") else data + b"\n", defs)
    return [(p.name, p.value, p.step) for p in points]


# ── default capture ──────────────────────────────────────────────────────────


def test_canonical_line() -> None:
    points, n = parse_output(b"epoch=3 loss=0.41 val_loss=0.52 acc=0.88\n", (), 1000.0)
    assert points == [
        MetricPoint("loss", 0.41, 3, 1000.0, "stdout"),
        MetricPoint("val_loss", 0.52, 3, 1000.0, "stdout"),
        MetricPoint("acc", 0.88, 3, 1000.0, "stdout"),
    ]
    assert n == 41


@pytest.mark.parametrize("line, expected", [
    # Keras
    (b"100/100 [==============================] - 2s 20ms/step - loss: 0.4100 - accuracy: 0.8800 - val_loss: 0.5200",
     [("loss", 0.41, None), ("accuracy", 0.88, None), ("val_loss", 0.52, None)]),
    # the PyTorch MNIST example
    (b"Train Epoch: 1 [640/60000 (1%)]\tLoss: 2.305403", [("Loss", 2.305403, 1)]),
    (b"Test set: Average loss: 0.0333, Accuracy: 9897/10000 (99%)", [("loss", 0.0333, None)]),
    # a printed dict (Hugging Face Trainer): a fractional epoch is a value, not a step
    (b"{'loss': 0.41, 'learning_rate': 5e-05, 'epoch': 0.5}",
     [("loss", 0.41, None), ("learning_rate", 5e-05, None), ("epoch", 0.5, None)]),
    (b"{'eval_loss': 0.3, 'epoch': 2}", [("eval_loss", 0.3, 2)]),
    # tqdm postfix
    (b"Epoch 3: 100%|\xe2\x96\x88\xe2\x96\x88| 10/10 [00:01<00:00, 9.5it/s, loss=0.41, v_num=0]",
     [("loss", 0.41, None), ("v_num", 0.0, None)]),
    (b"step: 1200 loss: 0.4132 lr: 1e-3", [("loss", 0.4132, 1200), ("lr", 0.001, 1200)]),
    (b"loss = 0.41 acc = 0.9", [("loss", 0.41, None), ("acc", 0.9, None)]),
    (b"INFO:root:loss: 0.4 acc=88%", [("loss", 0.4, None), ("acc", 88.0, None)]),
    (b"20:32:11 Done, final loss=0.5.", [("loss", 0.5, None)]),
    (b"acc=0.88\xc2\xb10.01 top5: 0.97 | train/loss=1.5e+00 | lr=.5", [("acc", 0.88, None), ("top5", 0.97, None),
                                                                        ("train/loss", 1.5, None), ("lr", 0.5, None)]),
    (b"epoch=3 step=1200 loss=0.4", [("step", 1200.0, 3), ("loss", 0.4, 3)]),  # epoch wins
    (b"Iteration: 50, global_step=900, x=1", [("Iteration", 50.0, 900), ("x", 1.0, 900)]),  # by rank
    (b"loss=0.3 EPOCH=4", [("loss", 0.3, 4)]),  # the step may come last, any case
    (b"Params: Namespace(lr=0.1, epochs=3, sizes=(1, 2)) loss=0.5", [("loss", 0.5, None)]),
    (b"loss=0.5\r", [("loss", 0.5, None)]),
])
def test_real_world_formats(line: bytes, expected: list) -> None:
    assert triples(line) == expected


@pytest.mark.parametrize("line", [
    b"20:32:05 Starting an experiment on 2015-05-13 on host pc241.",
    b"time: 20:32:05", b"t=20:32:05", b"ts=2015-05-13", b"version: 1.2.3", b"elapsed=0:00:02.694695",
    b"First epoch took 0:00:02.694695, estimated time remaining 0:00:00",
    b"speed=12.3s", b"progress=1/2", b"Temp-dir: 0 mb, RAM 18.3 percent", b"Found: 3 GPUs",
    b"dropout='0.10' mb_size=\"10\"", b"a == 3", b"x <= 3", b"y!=4", b"ratio 1:2", b"1.loss=3",
    b"/usr/lib/python3.11/site-packages/torch/utils/data/dataloader.py:557: UserWarning: 4 workers",
    b"Loading megabatch 1/2.", b"[==========>.........] 50%", b"= 3", b": 4", b"loss: information",
    b"loss=nano", b"x=1e", b"http://host:8080/x", b"top5:0.9",
])
def test_noise_is_not_read_as_metrics(line: bytes) -> None:
    assert triples(line) == []


def test_the_reference_log_has_no_metrics() -> None:
    data = REFERENCE_LOG.read_bytes()
    assert parse_output(data) == ([], len(data))


def test_nan_and_inf_are_captured() -> None:
    got = triples(b"step=7 loss=nan a=-inf b=Infinity c=NAN d=+inf e=-nan\n")
    assert [(n, s) for n, _, s in got] == [(n, 7) for n in ("loss", "a", "b", "c", "d", "e")]
    v = [x for _, x, _ in got]
    assert math.isnan(v[0]) and v[1] == -math.inf and v[2] == math.inf
    assert math.isnan(v[3]) and v[4] == math.inf and math.isnan(v[5])


def test_a_step_does_not_carry_to_the_next_line() -> None:
    assert triples(b"epoch=2\nloss=0.5\n") == [("loss", 0.5, None)]


def test_long_keys_and_lines() -> None:
    key = "a" * 200
    line = ("x " * 100 + f"{key}=1.5 | " + "y" * 500 + f" {key}_b: 2").encode()
    assert triples(line) == [(key, 1.5, None), (key + "_b", 2.0, None)]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    assert triples(b"\xff\xfe loss=0.5 \xc3\n") == [("loss", 0.5, None)]
    assert triples(b"\xff\xfe loss=0.5 \xc3\n", (MetricDef("x", r"nomatch(\d)"),)) == [("loss", 0.5, None)]


def test_binary_output_yields_no_metrics() -> None:
    """Random bytes hold `A=3`-like fragments by the thousand; none is a metric (issue #11)."""
    import os
    import random

    rng = random.Random(11)
    data = bytes(rng.getrandbits(8) for _ in range(400_000)) + os.urandom(400_000)
    assert parse_output(data, (), 0.0, final=True)[0] == []
    assert parse_output(data, (MetricDef("x", r"nomatch(\d)"),), 0.0, final=True)[0] == []
    # a NUL, or a line mostly of control characters or non-UTF-8 bytes, is not text
    assert triples(b"loss=0.5\x00\n") == []
    assert triples(b"\x01\x02\x03\x04 loss=0.5\n") == []
    assert triples(b"\xff\xfe\xfd\xfc\xfb loss=0.5\n") == []
    # text stays text: colour codes, UTF-8 prose and a stray bad byte
    assert triples("\x1b[1mEpoch\x1b[0m Verlust für loss=0.5 ✓\n".encode()) == [("loss", 0.5, None)]


def test_names_start_with_a_letter_and_a_lone_capital_is_no_name() -> None:
    assert triples(b"A=3 B: 4 x=1 _y=2 9z=3 ok=5\n") == [("x", 1.0, None), ("ok", 5.0, None)]
    assert triples(b"As=3 BM=4\n") == [("As", 3.0, None), ("BM", 4.0, None)]


# ── partial lines ────────────────────────────────────────────────────────────


def test_a_trailing_partial_line_is_not_consumed() -> None:
    data = b"loss=1\nloss=2\nloss=3"
    points, n = parse_output(data)
    assert [p.value for p in points] == [1.0, 2.0] and n == len(b"loss=1\nloss=2\n")
    assert parse_output(b"loss=3") == ([], 0)
    assert parse_output(b"") == ([], 0)
    points, n = parse_output(data, final=True)  # the job has ended: the last line counts
    assert [p.value for p in points] == [1.0, 2.0, 3.0] and n == len(data)


_NUM = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr),
    st.integers(-10**6, 10**6).map(str),
    st.sampled_from(["nan", "-inf", "Infinity", "1e-3", ".5", "3."]),
)
_LINE = st.one_of(
    st.builds("epoch={} loss={} val_loss={} acc={}".format, st.integers(0, 999), _NUM, _NUM, _NUM),
    st.builds("{} - loss: {} - accuracy: {}".format, st.sampled_from(["100/100 [====]", "12:30:01"]), _NUM, _NUM),
    st.builds("step: {} lr: {}".format, st.integers(0, 10**6), _NUM),
    st.builds("{{'loss': {}, 'epoch': {}}}".format, _NUM, _NUM),
    st.builds("20:32:{:02d} Temp-dir: 0 mb, RAM {} percent █ ± é".format, st.integers(0, 59), _NUM),
    st.sampled_from(["", "20:32:05 Loading megabatch 1/2.", "Params: Namespace(lr=0.1)", "x" * 100, "a = 1\r"]),
    st.text(alphabet=st.characters(blacklist_characters="\n"), max_size=40),
)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    data = "\n".join(draw(st.lists(_LINE, max_size=30))).encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        data += b"\n"
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    return data, cuts


def feed(parse, data: bytes, cuts: list[int]) -> tuple[list, int]:
    """Feed `data` as a reader would see it grow (ending at each cut), keeping the
    unconsumed tail for the next pass as the caller keeps its offset."""
    out, offset = [], 0
    for end in [*cuts, len(data)]:
        if end < offset:
            continue
        items, n = parse(data[offset:end])
        assert 0 <= n <= end - offset
        out += items
        offset += n
    return out, offset


def _same(a: list, b: list) -> bool:
    return repr(a) == repr(b)  # NaN != NaN, but its repr is equal


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_output_in_any_chunking_equals_output_whole(stream: tuple[bytes, list[int]]) -> None:
    data, cuts = stream
    whole, n = parse_output(data)
    assert n == data.rfind(b"\n") + 1
    chunked, offset = feed(parse_output, data, cuts)
    assert offset == n and _same(chunked, whole)
    # the str path (taken when the Metrics sheet has patterns) reads the same pairs
    unrelated = (MetricDef("never_printed", r"(?!)(x)"),)
    assert _same(parse_output(data, unrelated)[0], whole)


# ── Metrics-sheet patterns ──────────────────────────────────────────────────


def test_patterns_with_value_and_step_groups() -> None:
    defs = (
        MetricDef("bleu", r"BLEU = (?P<value>[\d.]+).*at update (?P<step>\d+)", "max"),
        MetricDef("ppl", r"ppl (\d+\.\d+)"),
        MetricDef("wer", r"WER ([\d.]+)%"),
    )
    data = (b"epoch=1 loss=2.5\n"
            b"| valid | BLEU = 27.3, 60.1/33.2 (BP=1.0) at update 3000\n"
            b"epoch=2 | ppl 12.50 | loss=2.0\n"
            b"WER 13.5% on test, WER 99%\n")
    points, n = parse_output(data, defs, 5.0)
    assert n == len(data)
    assert [(p.name, p.value, p.step) for p in points] == [
        ("loss", 2.5, 1),
        ("BP", 1.0, None), ("bleu", 27.3, 3000),  # a line's default pairs come first
        ("loss", 2.0, 2), ("ppl", 12.5, 2),  # the line's default step applies to a pattern
        ("wer", 13.5, None), ("wer", 99.0, None),
    ]
    assert all(p.time == 5.0 and p.source == "stdout" for p in points)


def test_a_pattern_owns_its_name() -> None:
    data = b"loss=0.5 (smoothed 0.4)\n"
    assert triples(data) == [("loss", 0.5, None)]
    assert triples(data, (MetricDef("loss", r"smoothed ([\d.]+)"),)) == [("loss", 0.4, None)]
    assert triples(data, (MetricDef("LOSS", r"smoothed ([\d.]+)"),)) == [("LOSS", 0.4, None)]
    assert triples(data, (MetricDef("loss"),)) == [("loss", 0.5, None)]  # no pattern: default


def test_a_pattern_value_that_is_not_a_number_is_skipped() -> None:
    defs = (MetricDef("n", r"(?<=n=)(\d+)"), MetricDef("s", r"s=(\w+)"))
    assert triples(b"n=5 s=abc s=7\n", defs) == [("n", 5.0, None), ("s", 7.0, None)]


def test_an_invalid_pattern_says_so() -> None:
    with pytest.raises(ValueError, match=r"'loss \(' is not a valid regular expression \(missing \)"):
        compile_metric_pattern("loss (")


# ── metrics.jsonl ───────────────────────────────────────────────────────────


def test_track_lines_round_trip(tmp_path: Path) -> None:
    track.init(tmp_path)
    try:
        track.log(1, loss=0.5, acc=1, note="warmup", ok=True, gone=None)
        track.log(loss=float("nan"), val=float("-inf"))
    finally:
        track.init(None)
        track.close()
    data = (tmp_path / "metrics.jsonl").read_bytes()
    points, n = parse_track(data)
    assert n == len(data)
    t0, t1 = (json.loads(line)["t"] for line in data.splitlines())
    assert [(p.name, p.step, p.time, p.source) for p in points] == [
        ("loss", 1, t0, "track"), ("acc", 1, t0, "track"), ("ok", 1, t0, "track"),
        ("loss", None, t1, "track"), ("val", None, t1, "track")]
    assert [p.value for p in points][:3] == [0.5, 1.0, 1.0]
    assert math.isnan(points[3].value) and points[4].value == -math.inf


def test_track_corrupt_and_partial_lines() -> None:
    data = (b'{"t": 1.0, "step": 1, "loss": 0.5}\n'
            b'{"t": 2.0, "step": 2, "lo\n'  # torn by a crash of some other writer
            b'[1, 2]\n'
            b'\n'
            b'{"t": 3.0, "step": 3.0, "loss": NaN}\n'
            b'{"t": 4.0, "step": 4, "loss": 0.1}')  # no newline yet
    points, n = parse_track(data)
    assert n == data.rfind(b"\n") + 1
    assert [(p.step, p.time) for p in points] == [(1, 1.0), (3, 3.0)]
    assert math.isnan(points[1].value)
    points, n = parse_track(data, final=True)
    assert n == len(data) and [p.step for p in points] == [1, 3, 4]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.fixed_dictionaries({"t": st.floats(0, 2e9), "step": st.none() | st.integers(0, 10**9)},
                                      optional={"loss": st.floats(), "acc": st.integers(), "note": st.text()})),
       st.lists(st.integers(0, 10**4), max_size=10))
def test_track_in_any_chunking_equals_whole(rows: list[dict], cuts: list[int]) -> None:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    whole, n = parse_track(data)
    assert n == len(data)
    chunked, offset = feed(parse_track, data, sorted(c for c in cuts if c <= len(data)))
    assert offset == n and _same(chunked, whole)


# ── resources.jsonl ─────────────────────────────────────────────────────────


def test_resources() -> None:
    data = (b'{"t": 10.0, "rss_mb": 512.5, "gpu_mem_mb": 2048, "gpu_util_pct": 87.5, "disk_free_mb": 100000}\n'
            b'{"t": 20.0, "rss_mb": 600}\n'
            b'{"rss_mb": 1}\n'  # no time: skipped
            b'garbage\n'
            b'{"t": 30.0, "gpu_mem_mb": null, "gpu_util_pct": null, "disk_free_mb": "n/a"}\n'
            b'{"t": 40.0, "rss')
    samples, n = parse_resources(data)
    assert n == data.rfind(b"\n") + 1
    assert samples == [
        ResourceSample(10.0, 512.5, 2048.0, 100000.0, 87.5),
        ResourceSample(20.0, 600.0, None, None),
        ResourceSample(30.0, None, None, None),
    ]
    assert parse_resources(b"") == ([], 0)
