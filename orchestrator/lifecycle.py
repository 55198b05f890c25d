"""The life cycle of an attempt: what one poll means for its state (pure).

Given the attempt as the store knows it and what the backend saw (status files, the
bytes appended to its outputs, the scheduler's word), `observe` returns one `Update`:
the new state and reason (the states are described at model.RunState), metric points and
resource samples parsed from the complete lines only, the points of the metric files read in
its run folder (whole records and rows only, `metric_files.read_sources`), the advanced read
offsets, and the events to record.

How a poll decides the state, first match wins (a stop nero asked for, `stop_requested`,
makes any ending cancelled or terminated, except the ending of a program that had ended by
itself before the stop reached it):

* the job wrote an exit code: cancelled or terminated if nero asked for a stop and the job
  script got the signal while its program ran (`JobStatus.signalled`, the run folder's
  `stopped`), or the code is a signal's (over 128: a job script from before `stopped`
  existed), or the scheduler has a final state and the code is not 0; else the scheduler's final state if it has one and the code is not 0, else
  completed (0) or failed (with the last line of stderr). A program that ended by itself
  after a rule asked for its stop (a rule firing on the last line it printed) is thus
  completed or failed, and the rule is recorded as a `warn` event;
* no exit code but a final scheduler state (SCHEDULER_STATES: TIMEOUT, PREEMPTED, …);
* not alive: lost if its run folder vanished (`dir_exists`, a reason of its own), if it had
  started, or if it has waited longer than START_GRACE_S since its submission (else it is
  still starting: unchanged);
* alive, not known to a scheduler, heartbeat older than HEARTBEAT_TIMEOUT_S: lost.

An ending is deferred while the poll could not read the job's files to their end, so a
run is closed only with all its output read. Reading always makes progress: a line longer
than the read window (`JobStatus.window`) is cut, that is skipped to its end (the poll
says when a chunk starts inside such a line, `midline`), with one `warn` event per line. A first sign of life (`started`) moves a
pending or submitted attempt to running.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from .metric_files import read_sources
from .metrics import default_goal, improves, prefer_tracked
from .model import (
    Event,
    JobStatus,
    MetricDef,
    MetricPoint,
    Offsets,
    RunRecord,
    RunState,
    Submission,
    Update,
)
from .monitor import parse_output, parse_resources, parse_track

__all__ = ["START_GRACE_S", "HEARTBEAT_TIMEOUT_S", "SCHEDULER_STATES", "fold_metrics", "observe", "recovery"]

START_GRACE_S = 120.0  # a submitted job that shows no sign of life for this long is lost
HEARTBEAT_TIMEOUT_S = 300.0

SCHEDULER_STATES = {  # a scheduler's final word for a job -> the attempt's state
    "TIMEOUT": RunState.TIMEOUT, "PREEMPTED": RunState.PREEMPTED, "NODE_FAIL": RunState.LOST,
    "OUT_OF_MEMORY": RunState.FAILED, "FAILED": RunState.FAILED, "CANCELLED": RunState.CANCELLED,
    "BOOT_FAIL": RunState.FAILED, "DEADLINE": RunState.TIMEOUT,
}


def fold_metrics(points: Sequence[MetricPoint], last: Mapping[str, float], best: Mapping[str, float],
                 goals: Mapping[str, str]) -> tuple[dict[str, float], dict[str, float], int | None]:
    """New last/best values (metrics.last, metrics.improves) and the largest step of
    `points`; `goals` are the declared ones, the others default (metrics.default_goal)."""
    new_last, new_best = dict(last), dict(best)
    step = None
    goal_of: dict[str, str] = {}
    for p in points:
        new_last[p.name] = p.value
        if p.step is not None:
            step = p.step if step is None else max(step, p.step)
        goal = goal_of.get(p.name)
        if goal is None:
            goal = goal_of[p.name] = default_goal(p.name, goals)
        if improves(goal, p.value, new_best.get(p.name)):
            new_best[p.name] = p.value
    return new_last, new_best, step


def _last_line(data: bytes) -> str:
    for line in reversed(data.decode("utf-8", "replace").splitlines()):
        if line.strip():
            return line.strip()[:300]
    return ""


def _read_lines(data: bytes, midline: bool, window: int, parse: Callable[[bytes], tuple[list, int]]
                ) -> tuple[list, int, bool]:
    """What `parse` finds in a chunk of output, the bytes consumed, and whether a line was
    cut. A chunk that starts inside a cut line (`midline`) first skips to that line's end;
    a chunk as long as the read window with no line end holds a line too long to read: it
    is skipped whole (cut), so reading always makes progress."""
    lead = 0
    if midline:
        nl = data.find(b"\n")
        lead = len(data) if nl < 0 else nl + 1
    found, n = parse(data[lead:])
    if lead + n == 0 and window and len(data) >= window:
        return found, len(data), True
    return found, lead + n, False


def observe(rec: RunRecord, st: JobStatus, now: float, defs: Sequence[MetricDef] = (),
            goals: Mapping[str, str] | None = None) -> Update:
    """What one poll of a live attempt means: the Update to apply (only what changed)
    and its events. `defs` are the Metrics rows (patterns), `goals` the declared goals."""
    goals = goals or {}
    # once the job has written its exit code its files are complete: a last line
    # without a newline is read too
    final = st.exit_code is not None and st.complete
    o = st.offsets
    mid = tuple(st.midline) + (False,) * 4
    cuts: list[str] = []

    def read(name: str, data: bytes, offset: int, midline: bool, parse) -> tuple[list, int]:
        found, n, cut = _read_lines(data, midline, st.window, parse)
        if cut:
            cuts.append(f"{name}: a line longer than {st.window} bytes at byte {offset} was cut "
                        "(skipped to its end, not read for metrics)")
        return found, n

    out_pts, out_n = read("stdout.log", st.stdout, o.stdout, mid[0],
                          lambda d: parse_output(d, defs, now, source="stdout", final=final))
    err_pts, err_n = read("stderr.log", st.stderr, o.stderr, mid[1],
                          lambda d: parse_output(d, defs, now, source="stderr", final=final))
    trk_pts, trk_n = read("metrics.jsonl", st.metrics, o.metrics, mid[2], lambda d: parse_track(d, final=final))
    samples, res_n = read("resources.jsonl", st.resources, o.resources, mid[3],
                          lambda d: parse_resources(d, final=final))
    files = read_sources(st.sources, o.files, now, final=final, window=st.window)
    # a metric both printed (rounded) and logged exactly (track, an event file, a CSV) counts once: the exact one
    points = tuple(prefer_tracked(out_pts + err_pts, trk_pts + files.points))
    offsets = Offsets(o.stdout + out_n, o.stderr + err_n, o.metrics + trk_n, o.resources + res_n, files.offsets)

    events: list[Event] = [Event(now, rec.key, "warn", c, rec.attempt) for c in cuts + files.problems]
    state, reason = rec.state, None
    started_at = host = ended_at = exit_code = None
    if st.started and rec.started_at is None:
        started_at = float(st.started.get("time") or now)
        host = str(st.started.get("host") or "")
        if state in (RunState.PENDING, RunState.SUBMITTED):
            state = RunState.RUNNING
            events.append(Event(now, rec.key, "started", f"on {host or rec.cluster}", rec.attempt))

    ended = False
    if st.exit_code is not None:
        ended, exit_code = True, st.exit_code
        if rec.stop_requested and (st.signalled or st.exit_code > 128
                                   or (st.scheduler_state in SCHEDULER_STATES and st.exit_code != 0)):
            state, reason = _stopped(rec.stop_requested)
        elif st.scheduler_state in SCHEDULER_STATES and st.exit_code != 0:
            state, reason = _scheduler(st)
        elif st.exit_code == 0:
            state, reason = RunState.COMPLETED, "exit code 0"
        else:
            tail = _last_line(st.stderr_tail)
            state = RunState.FAILED
            reason = f"exit code {st.exit_code}" + (f": {tail}" if tail else "")
    elif st.scheduler_state in SCHEDULER_STATES:
        ended = True
        state, reason = _stopped(rec.stop_requested) if rec.stop_requested else _scheduler(st)
    elif not st.alive:
        started = st.started is not None or rec.started_at is not None
        waited = now - (rec.submitted_at or now)
        if rec.stop_requested:
            ended = True
            state, reason = _stopped(rec.stop_requested)
        elif not st.dir_exists:
            ended = True
            state = RunState.LOST
            reason = f"the run folder {rec.run_dir} vanished while the job ran (the job or someone removed it)"
        elif started or waited > START_GRACE_S:
            ended = True
            state = RunState.LOST
            reason = ("the job's process ended without writing an exit code (killed, out of memory, or the machine restarted)"
                      if started else f"the job did not start within {START_GRACE_S:.0f} s of submission")
    elif st.heartbeat is not None and now - st.heartbeat > HEARTBEAT_TIMEOUT_S and not st.scheduler_state:
        ended = True
        state, reason = RunState.LOST, f"no heartbeat for {now - st.heartbeat:.0f} s"

    if ended and not st.complete:
        # more output than one pass reads: finish reading before the run is closed
        state, reason, ended, ended_at, exit_code = rec.state, None, False, None, None
        events = [e for e in events if e.kind in ("started", "warn")]
    if ended:
        # the job's last heartbeat is written just before its exit code: the real end
        ended_at = st.heartbeat if st.exit_code is not None and st.heartbeat else now
        events.append(Event(now, rec.key, state.value, reason or "", rec.attempt))
        kind, _, why = rec.stop_requested.partition(": ")
        if kind == "terminated" and state in (RunState.COMPLETED, RunState.FAILED):
            # the program had ended by itself before the stop reached it (a rule firing on
            # its last line): the run ends as the program did, the rule is a warning
            events.append(Event(now, rec.key, "warn", f"{why or kind} (fired after the program had ended)",
                                rec.attempt))

    last = best = None
    step = None
    if points:
        last, best, step = fold_metrics(points, rec.last, rec.best, goals)
    return Update(
        key=rec.key, attempt=rec.attempt,
        state=state if state is not rec.state else None, reason=reason,
        host=host, started_at=started_at, ended_at=ended_at, exit_code=exit_code,
        heartbeat_at=st.heartbeat, offsets=offsets if offsets != o else None,
        points=points, samples=tuple(samples), last=last, best=best, step=step,
        events=tuple(events),
    )


def recovery(found: Submission | None, submitted_at: float | None, now: float, grace: float) -> str:
    """What becomes of an attempt recorded but not confirmed (nero stopped between its
    intent and the backend's answer), given what `Backend.adopt` found of it: "adopt"
    (handed over and seen: its job id), "wait" (handed to the cluster but not seen yet: a
    scheduler may queue it late, a process may be starting; for `grace` s after its
    submission), else "resubmit" (never handed over; or still unseen after the grace,
    where the job script's claim lets only one copy start)."""
    if found is not None and found.job_id:
        return "adopt"
    if found is not None and now - (submitted_at or 0) < grace:
        return "wait"
    return "resubmit"


def _stopped(request: str) -> tuple[RunState, str]:
    kind, _, why = request.partition(": ")
    return (RunState.TERMINATED if kind == "terminated" else RunState.CANCELLED), why or kind


def _scheduler(st: JobStatus) -> tuple[RunState, str]:
    state = SCHEDULER_STATES[st.scheduler_state]
    reason = st.scheduler_state + (f": {st.scheduler_reason}" if st.scheduler_reason else "")
    if st.exit_code is not None and st.exit_code != 0:
        reason += f" (exit code {st.exit_code})"
    tail = _last_line(st.stderr_tail) if state is RunState.FAILED else ""
    return state, reason + (f": {tail}" if tail else "")
