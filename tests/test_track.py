"""orchestrator.track: the in-job logging API, with real files and real processes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from orchestrator import track
from orchestrator.monitor import parse_track

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def run_dir(tmp_path: Path):
    """Log to a fresh run directory in this process; restore the default afterwards."""
    track.init(tmp_path)
    yield tmp_path
    track.init(None)
    track.close()


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_script(code: str, env_run_dir: Path | None, cwd: Path, **kw) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != track.ENV_RUN_DIR}
    env["PYTHONPATH"] = str(ROOT)
    if env_run_dir is not None:
        env[track.ENV_RUN_DIR] = str(env_run_dir)
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=cwd, **kw)


def test_log_appends_one_json_line_per_call(run_dir: Path) -> None:
    before = time.time()
    track.log(1, loss=0.5, acc=0.25)
    track.log(loss=0.25)
    track.log(3, tokens=10**12, name="warmup", flag=True, missing=None)
    rows = lines(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, None, 3]
    assert rows[0] == {"t": rows[0]["t"], "step": 1, "loss": 0.5, "acc": 0.25}
    assert rows[2] == {"t": rows[2]["t"], "step": 3, "tokens": 10**12, "name": "warmup", "flag": True, "missing": None}
    assert before <= rows[0]["t"] <= rows[2]["t"] <= time.time()


def test_values_survive_the_round_trip(run_dir: Path) -> None:
    odd = 'quote " backslash \\ newline \n tab \t unicode ±█ é'
    track.log(0, nan=float("nan"), inf=float("inf"), ninf=float("-inf"), small=1e-300, big=1.5e300,
              neg=-0.0, third=1 / 3, text=odd, **{"key with \"quote\"": 1, "ünïcode/key": 2})
    [row] = lines(run_dir / "metrics.jsonl")
    assert math.isnan(row["nan"]) and row["inf"] == math.inf and row["ninf"] == -math.inf
    assert row["small"] == 1e-300 and row["big"] == 1.5e300 and row["third"] == 1 / 3
    assert math.copysign(1, row["neg"]) == -1
    assert row["text"] == odd
    assert row['key with "quote"'] == 1 and row["ünïcode/key"] == 2


def test_numpy_and_other_number_types(run_dir: Path) -> None:
    np = pytest.importorskip("numpy")
    track.log(np.int64(7), f32=np.float32(0.5), f64=np.float64(0.25), i64=np.int64(-3),
              b=np.bool_(True), nan32=np.float32("nan"), arr0=np.array(2.5), dec=Decimal("0.125"),
              frac=Fraction(1, 4), inf64=np.float64("inf"))
    [row] = lines(run_dir / "metrics.jsonl")
    assert row["step"] == 7
    assert (row["f32"], row["f64"], row["i64"], row["b"], row["arr0"]) == (0.5, 0.25, -3, True, 2.5)
    assert (row["dec"], row["frac"]) == (0.125, 0.25)
    assert math.isnan(row["nan32"]) and row["inf64"] == math.inf


def test_bad_calls_are_refused_with_the_reason(run_dir: Path) -> None:
    with pytest.raises(ValueError, match="'t' is reserved"):
        track.log(1, t=5)
    with pytest.raises(TypeError, match="step must be an int"):
        track.log(1.5, loss=1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not loggable"):
        track.log(1, losses=[1.0, 2.0])
    np = pytest.importorskip("numpy")
    with pytest.raises(TypeError, match="not a single number"):
        track.log(1, vec=np.array([1.0, 2.0]))
    assert not (run_dir / "metrics.jsonl").read_text()  # nothing half-written


def test_params_and_run_dir(run_dir: Path) -> None:
    assert track.run_dir() == run_dir
    assert track.params() == {}
    (run_dir / "params.json").write_text(json.dumps({"lr": 0.01, "layers": 2, "name": "a'; echo pwned"}))
    assert track.params() == {"lr": 0.01, "layers": 2, "name": "a'; echo pwned"}
    (run_dir / "params.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        track.params()
    (run_dir / "params.json").write_text("{half")
    with pytest.raises(ValueError, match="not valid JSON"):
        track.params()


def test_outside_nero_it_is_a_silent_no_op(tmp_path: Path) -> None:
    proc = run_script("""
        from orchestrator import track
        assert track.run_dir() is None and track.params() == {}
        track.log(1, loss=0.5)
        print("ok")
    """, None, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err) == (0, "ok\n", "")
    assert list(tmp_path.iterdir()) == []


def test_in_a_job_it_logs_to_nero_run_dir(tmp_path: Path) -> None:
    (tmp_path / "params.json").write_text('{"lr": 0.1}')
    proc = run_script("""
        from orchestrator import track
        lr = track.params()["lr"]
        for step in range(3):
            track.log(step, loss=lr * step)
    """, tmp_path, tmp_path)
    assert proc.wait(timeout=60) == 0
    points, n = parse_track((tmp_path / "metrics.jsonl").read_bytes())
    assert [(p.name, p.value, p.step, p.source) for p in points] == [
        ("loss", 0.0, 0, "track"), ("loss", 0.1, 1, "track"), ("loss", 0.2, 2, "track")]


def test_sigkill_mid_run_loses_no_logged_line_and_leaves_only_whole_lines(tmp_path: Path) -> None:
    # The job reports each step on stdout after `log` returned; after SIGKILL every
    # reported step must be in the file, whole (a buffered writer would lose its buffer).
    proc = run_script("""
        import os
        from orchestrator import track
        pad = "x" * 150
        step = 0
        while True:
            track.log(step, loss=step / 7, pad=pad)
            os.write(1, b"%d\\n" % step)
            step += 1
    """, tmp_path, tmp_path, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    acknowledged = -1
    while acknowledged < 3000:
        acknowledged = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    for line in proc.stdout:  # steps reported before the kill landed
        if line.endswith(b"\n"):
            acknowledged = int(line)
    proc.wait(timeout=60)
    data = (tmp_path / "metrics.jsonl").read_bytes()
    assert data.endswith(b"\n")
    steps = [json.loads(line)["step"] for line in data.splitlines()]
    assert steps == list(range(len(steps))) and len(steps) > acknowledged
    points, consumed = parse_track(data)
    assert consumed == len(data) and len(points) == len(steps)


def test_concurrent_writers_never_interleave(tmp_path: Path) -> None:
    procs = [run_script(f"""
        from orchestrator import track
        pad = "{w}" * 5000
        for step in range(300):
            track.log(step, writer={w}, pad=pad)
    """, tmp_path, tmp_path) for w in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    rows = lines(tmp_path / "metrics.jsonl")
    assert len(rows) == 1200
    for r in rows:
        assert r["pad"] == str(r["writer"]) * 5000
    for w in range(4):
        assert [r["step"] for r in rows if r["writer"] == w] == list(range(300))


def test_init_switches_directory_and_creates_it(tmp_path: Path, run_dir: Path) -> None:
    track.log(1, a=1.0)
    other = tmp_path / "nested" / "run"
    assert track.init(other) == str(other)
    track.log(2, a=2.0)
    assert [r["step"] for r in lines(run_dir / "metrics.jsonl")] == [1]
    assert [r["step"] for r in lines(other / "metrics.jsonl")] == [2]


def test_import_is_light() -> None:
    """`import orchestrator.track` in a job loads track and the package, nothing else (no
    `typing`, no pandas, no API): what it costs follows from what it loads, whatever the
    machine's load (a timed import was flaky under load)."""
    code = ("import sys; before = set(sys.modules); import orchestrator.track; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT).stdout.split()
    assert sorted(out) == ["__future__", "orchestrator", "orchestrator.track"], out
