"""lifecycle.observe, table-driven: every attempt state × every kind of poll result.

OBSERVATIONS lists what a poll can see (the job's status files, the scheduler's word, a
stop nero asked for) with the ending it means; each is checked against an attempt in
every RunState. An attempt that never showed a sign of life (pending, submitted) and one
that did (every other state) differ only where the table says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from orchestrator.lifecycle import (
    HEARTBEAT_TIMEOUT_S,
    SCHEDULER_STATES,
    START_GRACE_S,
    fold_metrics,
    observe,
)
from orchestrator.model import JobStatus, MetricDef, MetricPoint, Offsets, RunRecord, RunState

NOW = 100_000.0
FRESH = (RunState.PENDING, RunState.SUBMITTED)  # no sign of life seen yet
LOST_PROCESS = "the job's process ended without writing an exit code (killed, out of memory, or the machine restarted)"
LOST_START = f"the job did not start within {START_GRACE_S:.0f} s of submission"


def record(state: RunState, **changes: Any) -> RunRecord:
    started = None if state in FRESH else NOW - 50
    rec = RunRecord(key="e[a=1]", number=1, experiment="e", spec_hash="h", essence="{}", params=(("a", 1),),
                    state=state, attempt=2, cluster="gpu", job_id="77", submitted_at=NOW - 60, started_at=started)
    return replace(rec, **changes)


def status(**changes: Any) -> JobStatus:
    st = JobStatus(key="e[a=1]", attempt=2, alive=True, started=None, exit_code=None, heartbeat=NOW - 5,
                   stdout=b"", stderr=b"", metrics=b"", resources=b"", offsets=Offsets())
    return replace(st, **changes)


@dataclass(frozen=True)
class Obs:
    """One poll result and what it means. `ends`: (state, reason) of the ending, for an
    attempt that showed life before; `fresh`: the same for one that did not, where it
    differs (None: no ending)."""

    id: str
    status: dict[str, Any]
    ends: tuple[RunState, str] | None
    fresh: tuple[RunState, str] | None | str = "same"
    rec: dict[str, Any] = field(default_factory=dict)
    warns: str | None = None  # the reason of a `warn` event after the ending


STARTED = {"time": NOW - 3, "host": "node7"}
OBSERVATIONS = [
    Obs("alive-nothing-new", {}, None),
    Obs("alive-started-file", {"started": STARTED}, None),
    Obs("alive-scheduler-running", {"scheduler_state": "RUNNING"}, None),
    Obs("exit-0", {"alive": False, "exit_code": 0, "heartbeat": NOW - 2}, (RunState.COMPLETED, "exit code 0")),
    Obs("exit-0-with-started", {"alive": False, "exit_code": 0, "started": STARTED},
        (RunState.COMPLETED, "exit code 0")),
    Obs("exit-1-stderr-tail", {"alive": False, "exit_code": 1, "stderr_tail": b"Traceback\nValueError: boom\n\n"},
        (RunState.FAILED, "exit code 1: ValueError: boom")),
    Obs("exit-2-no-tail", {"alive": False, "exit_code": 2}, (RunState.FAILED, "exit code 2")),
    Obs("exit-143-timeout", {"alive": False, "exit_code": 143, "scheduler_state": "TIMEOUT",
                             "scheduler_reason": "TimeLimit"},
        (RunState.TIMEOUT, "TIMEOUT: TimeLimit (exit code 143)")),
    Obs("exit-137-oom", {"alive": False, "exit_code": 137, "scheduler_state": "OUT_OF_MEMORY",
                         "stderr_tail": b"Killed\n"},
        (RunState.FAILED, "OUT_OF_MEMORY (exit code 137): Killed")),
    Obs("exit-0-scheduler-timeout", {"alive": False, "exit_code": 0, "scheduler_state": "TIMEOUT"},
        (RunState.COMPLETED, "exit code 0")),  # a zero exit code wins over the scheduler
    Obs("exit-1-scheduler-not-final", {"alive": False, "exit_code": 1, "scheduler_state": "COMPLETING"},
        (RunState.FAILED, "exit code 1")),
    Obs("scheduler-preempted", {"alive": False, "scheduler_state": "PREEMPTED"}, (RunState.PREEMPTED, "PREEMPTED")),
    Obs("scheduler-timeout", {"alive": False, "scheduler_state": "TIMEOUT", "scheduler_reason": "TimeLimit"},
        (RunState.TIMEOUT, "TIMEOUT: TimeLimit")),
    Obs("scheduler-deadline", {"alive": False, "scheduler_state": "DEADLINE"}, (RunState.TIMEOUT, "DEADLINE")),
    Obs("scheduler-node-fail", {"alive": False, "scheduler_state": "NODE_FAIL"}, (RunState.LOST, "NODE_FAIL")),
    Obs("scheduler-cancelled", {"alive": False, "scheduler_state": "CANCELLED", "scheduler_reason": "by 1000"},
        (RunState.CANCELLED, "CANCELLED: by 1000")),
    Obs("scheduler-boot-fail", {"alive": False, "scheduler_state": "BOOT_FAIL", "stderr_tail": b"no node\n"},
        (RunState.FAILED, "BOOT_FAIL: no node")),
    Obs("scheduler-failed", {"alive": False, "scheduler_state": "FAILED"}, (RunState.FAILED, "FAILED")),
    Obs("scheduler-oom-alive", {"alive": True, "scheduler_state": "OUT_OF_MEMORY"},
        (RunState.FAILED, "OUT_OF_MEMORY")),  # the scheduler's final word, whatever the files say
    Obs("vanished", {"alive": False}, (RunState.LOST, LOST_PROCESS), fresh=None),  # fresh: still starting
    Obs("vanished-with-started-file", {"alive": False, "started": STARTED}, (RunState.LOST, LOST_PROCESS)),
    Obs("vanished-after-grace", {"alive": False}, (RunState.LOST, LOST_PROCESS), fresh=(RunState.LOST, LOST_START),
        rec={"submitted_at": NOW - START_GRACE_S - 1}),
    Obs("run-folder-gone", {"alive": False, "dir_exists": False},  # #12: the job removed its own folder
        (RunState.LOST, "the run folder /r/e/2 vanished while the job ran (the job or someone removed it)"),
        rec={"run_dir": "/r/e/2"}),
    Obs("heartbeat-stale", {"heartbeat": NOW - HEARTBEAT_TIMEOUT_S - 100},
        (RunState.LOST, f"no heartbeat for {HEARTBEAT_TIMEOUT_S + 100:.0f} s")),
    Obs("heartbeat-stale-scheduler-knows", {"heartbeat": NOW - HEARTBEAT_TIMEOUT_S - 100, "scheduler_state": "RUNNING"},
        None),
    Obs("heartbeat-just-fresh", {"heartbeat": NOW - HEARTBEAT_TIMEOUT_S}, None),
    # `signalled`: the job script got the stop while its program ran (it wrote `stopped`)
    Obs("stop-cancel-exit", {"alive": False, "exit_code": 143, "signalled": True},
        (RunState.CANCELLED, "state=stop in row 2"), rec={"stop_requested": "cancelled: state=stop in row 2"}),
    Obs("stop-terminate-exit-0", {"alive": False, "exit_code": 0, "signalled": True},
        (RunState.TERMINATED, "loss is nan"), rec={"stop_requested": "terminated: loss is nan"}),
    Obs("stop-terminate-exit-143", {"alive": False, "exit_code": 143, "signalled": True},
        (RunState.TERMINATED, "loss is nan"), rec={"stop_requested": "terminated: loss is nan"}),
    Obs("stop-terminate-exit-143-no-marker", {"alive": False, "exit_code": 143},  # a job script without `stopped`
        (RunState.TERMINATED, "loss is nan"), rec={"stop_requested": "terminated: loss is nan"}),
    # the program had ended by itself when the rule fired (issue #11): it ends as it ended
    Obs("stop-terminate-after-exit-0", {"alive": False, "exit_code": 0}, (RunState.COMPLETED, "exit code 0"),
        rec={"stop_requested": "terminated: loss is nan"}, warns="loss is nan (fired after the program had ended)"),
    Obs("stop-terminate-after-exit-1", {"alive": False, "exit_code": 1, "stderr_tail": b"boom\n"},
        (RunState.FAILED, "exit code 1: boom"), rec={"stop_requested": "terminated: loss is nan"},
        warns="loss is nan (fired after the program had ended)"),
    Obs("stop-cancel-after-exit-0", {"alive": False, "exit_code": 0}, (RunState.COMPLETED, "exit code 0"),
        rec={"stop_requested": "cancelled: aborted"}),
    Obs("stop-terminate-exit-scheduler-cancelled", {"alive": False, "exit_code": 143, "scheduler_state": "CANCELLED"},
        (RunState.TERMINATED, "loss is nan"), rec={"stop_requested": "terminated: loss is nan"}),
    Obs("stop-terminate-vanished", {"alive": False}, (RunState.TERMINATED, "loss is nan"),
        rec={"stop_requested": "terminated: loss is nan"}),
    Obs("stop-cancel-scheduler", {"alive": False, "scheduler_state": "CANCELLED"}, (RunState.CANCELLED, "aborted"),
        rec={"stop_requested": "cancelled: aborted"}),
    Obs("stop-without-reason", {"alive": False, "exit_code": 15, "signalled": True}, (RunState.CANCELLED, "cancelled"),
        rec={"stop_requested": "cancelled"}),
    Obs("stop-asked-still-alive", {}, None, rec={"stop_requested": "cancelled: aborted"}),
]


def _expect(obs: Obs, state: RunState) -> tuple[tuple[RunState, str] | None, bool]:
    """(the ending, whether a first sign of life moves the attempt to running)."""
    fresh = state in FRESH
    ending = obs.ends if not fresh or obs.fresh == "same" else obs.fresh
    wakes = fresh and obs.status.get("started") is not None
    return ending, wakes  # type: ignore[return-value]


CASES = [pytest.param(state, obs, id=f"{state.value}-{obs.id}") for state in RunState for obs in OBSERVATIONS]


@pytest.mark.parametrize(("state", "obs"), CASES)
def test_observe_every_state_and_observation(state: RunState, obs: Obs) -> None:
    rec = record(state, **obs.rec)
    st = status(**obs.status)
    u = observe(rec, st, NOW)
    ending, wakes = _expect(obs, state)

    kinds = [e.kind for e in u.events]
    if ending is None:
        after = RunState.RUNNING if wakes else state
        assert kinds == (["started"] if wakes else [])
        assert u.reason is None and u.ended_at is None and u.exit_code is None
    else:
        after, reason = ending
        assert kinds == (["started"] if wakes else []) + [after.value] + (["warn"] if obs.warns else [])
        assert u.reason == reason and u.events[-1 - bool(obs.warns)].reason == reason
        assert obs.warns is None or u.events[-1].reason == obs.warns
        assert u.exit_code == st.exit_code
        assert u.ended_at == (st.heartbeat if st.exit_code is not None and st.heartbeat else NOW)
    assert u.state == (after if after is not state else None)  # None: unchanged
    if wakes:
        assert u.events[0].reason == "on node7" and u.host == "node7" and u.started_at == NOW - 3
    else:
        assert u.started_at is None and u.host is None
    assert all(e.key == rec.key and e.attempt == rec.attempt and e.time == NOW for e in u.events)
    assert u.key == rec.key and u.attempt == rec.attempt and u.heartbeat_at == st.heartbeat


def test_the_table_covers_every_scheduler_state() -> None:
    seen = {o.status.get("scheduler_state") for o in OBSERVATIONS}
    assert set(SCHEDULER_STATES) <= seen


@pytest.mark.parametrize("state", FRESH)
def test_a_started_file_without_a_host_names_the_cluster(state: RunState) -> None:
    u = observe(record(state), status(started={"pid": 4242}), NOW)  # no time, no host
    assert u.state is RunState.RUNNING and u.started_at == NOW and u.host == ""
    assert [(e.kind, e.reason) for e in u.events] == [("started", "on gpu")]


@pytest.mark.parametrize("state", list(RunState))
def test_an_ending_waits_until_the_output_is_read_to_its_end(state: RunState) -> None:
    st = status(alive=False, exit_code=0, started=STARTED, stdout=b"loss=1\n", complete=False)
    u = observe(record(state), st, NOW)
    # the started event is kept; the state stays as it was until the rest is read
    # (today even the move to running waits: a pending attempt stays pending)
    assert u.state is None and u.reason is None and u.ended_at is None and u.exit_code is None
    assert [e.kind for e in u.events] == (["started"] if state in FRESH else [])
    assert [(p.name, p.value) for p in u.points] == [("loss", 1.0)]


# --------------------------------------------------------------------------- output read in one poll
def test_points_offsets_and_a_partial_line() -> None:
    out, track = b"step=1 loss=0.5\nstep=2 loss=0.4\n", b'{"t": 1, "step": 2, "acc": 0.7}\n'
    st = status(stdout=out + b"step=3 lo", stderr=b"warn: 1\n", metrics=track + b'{"t": 2',
                resources=b'{"t": 5, "rss_mb": 100}\n', offsets=Offsets(10, 20, 30, 40))
    u = observe(record(RunState.RUNNING), st, NOW)
    # complete lines only: the partial ones are read again, whole, next poll
    assert u.offsets == Offsets(10 + len(out), 20 + 8, 30 + len(track), 40 + 24)
    assert [(p.name, p.step, p.value, p.source) for p in u.points] == [
        ("loss", 1, 0.5, "stdout"), ("loss", 2, 0.4, "stdout"), ("warn", None, 1.0, "stderr"), ("acc", 2, 0.7, "track")]
    assert u.last == {"loss": 0.4, "warn": 1.0, "acc": 0.7} and u.step == 2
    assert u.samples and u.samples[0].rss_mb == 100


def test_once_the_job_ended_a_last_line_without_newline_is_read() -> None:
    st = status(alive=False, exit_code=0, stdout=b"loss=1\nloss=2")
    u = observe(record(RunState.RUNNING), st, NOW)
    assert [p.value for p in u.points] == [1.0, 2.0] and u.offsets == Offsets(13, 0, 0, 0)


def test_nothing_new_changes_nothing() -> None:
    u = observe(record(RunState.RUNNING), status(), NOW)
    assert u.offsets is None and u.points == () and u.last is None and u.best is None and u.step is None


def test_a_metric_logged_through_track_drops_its_printed_points() -> None:
    st = status(stdout=b"step=1 loss=0.12 lr=0.1\n", stderr=b"loss: 0.13\n", metrics=b'{"step": 1, "loss": 0.1234}\n')
    u = observe(record(RunState.RUNNING), st, NOW)
    assert [(p.name, p.value, p.source) for p in u.points] == [("lr", 0.1, "stdout"), ("loss", 0.1234, "track")]


def test_metrics_sheet_patterns_are_applied() -> None:
    st = status(stdout=b"epoch 3: accuracy 91.5%\n")
    u = observe(record(RunState.RUNNING), st, NOW, (MetricDef("acc", r"accuracy (?P<value>[\d.]+)"),))
    assert [(p.name, p.value) for p in u.points] == [("acc", 91.5)]


# --------------------------------------------------------------------------- last and best
NAN = math.nan


@pytest.mark.parametrize(("name", "goals", "values", "old", "best"), [
    ("loss", {}, [3.0, 1.0, 2.0], None, 1.0),                   # min by default
    ("acc", {}, [0.5, 0.9, 0.7], None, 0.9),                    # accuracy-like names: max (as results shows)
    ("Val_Acc@10", {}, [0.5, 0.9], None, 0.9),
    ("acc", {"acc": "min"}, [0.5, 0.9], None, 0.5),             # the Metrics row decides
    ("loss", {"loss": "max"}, [3.0, 1.0], None, 3.0),
    ("loss", {}, [NAN, 2.0, NAN], None, 2.0),                   # NaN is never the best
    ("loss", {}, [NAN], None, None),
    ("loss", {}, [2.0], NAN, 2.0),                              # anything replaces a NaN best
    ("loss", {}, [2.0], 1.0, 1.0),
    ("reward", {}, [1.0, math.inf], 5.0, math.inf),             # inf counts
])
def test_fold_metrics_best_follows_the_goal(name, goals, values, old, best) -> None:
    points = [MetricPoint(name, v, i, None, "stdout") for i, v in enumerate(values, 1)]
    last, new_best, step = fold_metrics(points, {}, {} if old is None else {name: old}, goals)
    assert step == len(values)
    assert math.isnan(last[name]) if math.isnan(values[-1]) else last[name] == values[-1]
    if best is None:
        assert name not in new_best
    else:
        assert new_best[name] == best


def test_fold_metrics_keeps_other_metrics_and_the_largest_step() -> None:
    points = [MetricPoint("loss", 1.0, 7, None, "stdout"), MetricPoint("loss", 0.5, 3, None, "stdout"),
              MetricPoint("x", 2.0, None, None, "stdout")]
    last, best, step = fold_metrics(points, {"acc": 0.1}, {"acc": 0.2}, {})
    assert last == {"acc": 0.1, "loss": 0.5, "x": 2.0} and best == {"acc": 0.2, "loss": 0.5, "x": 2.0} and step == 7
