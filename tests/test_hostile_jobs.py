"""Hostile jobs (#12): output nero cannot read in one window, terminal escape sequences,
a job that deletes its own run folder, and a kill of nero between writing a job's files
and starting it. Real jobs on the local cluster, real SQLite, the real command line."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
import tty
from dataclasses import replace
from pathlib import Path

from conftest import nero, state_db, write_workbook

from orchestrator.backends.local import LocalBackend
from orchestrator.cli.logs import TerminalView
from orchestrator.lifecycle import observe, recovery
from orchestrator.model import (
    JobStatus,
    MetricDef,
    Offsets,
    RunRecord,
    RunState,
    Submission,
    Update,
)
from orchestrator.reconcile import Reconciler


def status(project: Path) -> list[dict]:
    out = nero("status", str(project), "--json", check=True).stdout
    return json.loads(out) if out.strip().startswith("[") else []


def events(project: Path, kind: str) -> list[str]:
    with state_db(project) as con:
        return [r[0] for r in con.execute("SELECT reason FROM events WHERE kind=? ORDER BY id", (kind,))]


def steps(project: Path) -> list[int]:
    with state_db(project) as con:
        return [r[0] for r in con.execute("SELECT step FROM metrics WHERE name='loss' ORDER BY step")]


def until_finished(rec: Reconciler, timeout: float = 60) -> dict:
    """Passes until every run has finished (or fail after `timeout`): the runs, by key."""
    end = time.time() + timeout
    while time.time() < end:
        rec.run_pass(results=False)
        snap = rec.store.snapshot()
        if snap and all(r.state.finished for r in snap.values()):
            return snap
        time.sleep(0.2)
    raise AssertionError(f"not finished after {timeout} s: {[(r.key, r.state.value) for r in snap.values()]}")


class SmallWindow(LocalBackend):
    """The local cluster reading 1 KiB per output file and poll: a line of a few KiB is
    longer than its read window, as a line of over 32 MiB is for the real one."""

    def read_limits(self) -> tuple[int, int]:
        return 1024, 1 << 30


LONG_LINES = r'''
import sys
print("step=1 loss=1.0", flush=True)
sys.stdout.write("x" * 5000 + "\n")
print("step=2 loss=0.5", flush=True)
sys.stdout.write("y" * 3000)  # the last line: no line end at all
'''


def test_a_line_longer_than_the_read_window_is_cut_and_the_run_completes(project: Path):
    """#12: one output line longer than the read window with no newline stalled the run
    forever (the same window re-read every pass, the run never closed although the job
    had written exit code 0). Now the line is cut: skipped, a warn event each, and the
    metrics around it are read."""
    (project / "long.py").write_text(LONG_LINES)
    write_workbook(project / "experiments.xlsx", [{"id": "long", "command": "python long.py"}])
    rec = Reconciler(project / "experiments.xlsx", backend_factory=SmallWindow)
    try:
        rec.load()
        run = until_finished(rec)["long"]
    finally:
        rec.close()
    assert run.state.value == "completed" and run.exit_code == 0
    assert steps(project) == [1, 2]
    cuts = events(project, "warn")
    assert len(cuts) == 2 and all("stdout.log: a line longer than 1024 bytes" in c for c in cuts), cuts
    size = (Path(run.run_dir) / "stdout.log").stat().st_size
    assert run.offsets.stdout == size  # read to the end, each byte once


def test_a_real_line_over_32_mib_does_not_stall_the_run(project: Path):
    """#12 as reported: a job printing one 33 MiB line (no newline) on the local cluster,
    whose read window is 32 MiB, through `nero reconcile --until-done`."""
    (project / "huge.py").write_text('import sys\nsys.stdout.write("a" * (33 << 20))\n'
                                     'print()\nprint("step=7 loss=0.25")\n')
    write_workbook(project / "experiments.xlsx", [{"id": "huge", "command": "python huge.py"}])
    t0 = time.time()
    proc = nero("reconcile", str(project), "--until-done", "--interval", "0.3", "-q", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert status(project)[0]["state"] == "completed"
    assert steps(project) == [7]
    assert [c for c in events(project, "warn") if "stdout.log: a line longer than 33554432 bytes" in c]
    assert time.time() - t0 < 60


ESCAPES = b"\x1b]0;PWNED\x07\x1b[31mred\x1b[0m\tok\x08\xc2\x9b\r\nplain\n"  # \xc2\x9b: the C1 CSI in UTF-8


def _on_a_terminal(project: Path, *args: str) -> bytes:
    """`nero logs` with its stdout on a real pseudo-terminal (raw mode: bytes pass as written)."""
    main, sub = pty.openpty()
    tty.setraw(sub)
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "logs", *args, "-w", str(project)],
                            stdout=sub, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    os.close(sub)
    out = b""
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # the terminal's other end closed
            break
        if not data:
            break
        out += data
    proc.wait(timeout=60)
    os.close(main)
    assert proc.returncode == 0, proc.stderr.read()
    return out


def test_nero_logs_escapes_control_characters_on_a_terminal_only(project: Path):
    """#12: `nero logs` passed a job's terminal escape sequences (retitle, colours, CSI)
    to the terminal. On a terminal they are now shown escaped (newline and tab kept);
    `--raw` and piped output are the file's exact bytes."""
    (project / "esc.py").write_text(f"import sys\nsys.stdout.buffer.write({ESCAPES!r})\n")
    write_workbook(project / "experiments.xlsx", [{"id": "esc", "command": "python esc.py"}])
    nero("reconcile", str(project), "--until-done", "--interval", "0.3", "-q", check=True, timeout=60)
    piped = subprocess.run([sys.executable, "-m", "orchestrator", "logs", "esc", "-w", str(project)],
                           capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
    assert piped.returncode == 0 and piped.stdout == ESCAPES
    assert _on_a_terminal(project, "esc", "--raw") == ESCAPES
    shown = _on_a_terminal(project, "esc")
    assert shown == b"\\x1b]0;PWNED\\x07\\x1b[31mred\\x1b[0m\tok\\x08\\x9b\\r\nplain\n"
    assert b"\x1b" not in shown and b"\x07" not in shown


def test_the_terminal_view_cuts_a_line_longer_than_the_window_and_says_so():
    """#12: the cut of an over-long line is said in the log view, whatever chunks the
    output arrives in (a line spanning reads, the last line without an end)."""
    view = TerminalView(8)
    text = view.feed(b"short\n0123456789" + b"a" * 20) + view.feed(b"bb\nend\x1b") + view.feed(b"9" * 10)
    text += view.finish()
    assert text == "short\n01234567 [line cut: 24 bytes]\nend\\x1b9999 [line cut: 6 bytes]"


def test_a_job_that_deletes_its_run_folder_is_lost_with_its_own_reason(project: Path):
    """#12: a job deleting its own run folder ended `lost` with the unrelated reason
    "killed, out of memory, or the machine restarted". The poll now says the folder is
    gone and the run is lost for that reason."""
    write_workbook(project / "experiments.xlsx", [{"id": "gone", "command": 'rm -rf "$NERO_RUN_DIR"; sleep 0.5'}])
    nero("reconcile", str(project), "--until-done", "--interval", "0.3", "-q", timeout=60)
    run = status(project)[0]
    assert run["state"] == "lost", run
    assert run["reason"].startswith("the run folder ") and "vanished while the job ran" in run["reason"], run
    assert "out of memory" not in run["reason"]


# --------------------------------------------------------------------------- intent recovery
LEDGER = r'''
import os, sys
with open(sys.argv[1], "a") as f:  # one line per start of the program
    f.write(os.environ["NERO_RUN_DIR"] + "\n")
print("step=1 loss=0.5")
'''

# nero killed at a named point of a submission: after the agent wrote the job's files and
# before it handed the job over ("files"), or after it recorded the hand-over but before the
# process started ("handed": a unit that runs `true` instead, so no job exists and no id is
# written); `units` are the agent's submission units, so the rest of the request is real
KILLED_IN_SUBMIT = r'''
import os, sys
from orchestrator.backends.local import LocalBackend
from orchestrator.reconcile import Reconciler

POINT = sys.argv[2]


class KilledInSubmit(LocalBackend):
    def exchange(self, request, payload, timeout, then=None):
        if request["op"] != "submit":
            return super().exchange(request, payload, timeout, then)
        if POINT == "files":
            request = {**request, "units": []}
        else:
            request = {**request, "units": [{**u, "kind": "command", "argv": ["true"]} for u in request["units"]]}
        super().exchange(request, payload, timeout, then)
        os._exit(9)


r = Reconciler(sys.argv[1], backend_factory=KilledInSubmit)
r.load()
r.run_pass()
'''


def _killed_in_submit(project: Path, point: str) -> Path:
    """A workbook with one run whose submission nero does not survive (at `point`); the
    ledger file the run's program writes a line to each time it starts."""
    ledger = project / "starts.txt"
    (project / "ledger.py").write_text(LEDGER)
    write_workbook(project / "experiments.xlsx", [{"id": "once", "command": f"python ledger.py {ledger}"}])
    (project / "killed.py").write_text(KILLED_IN_SUBMIT)
    proc = subprocess.run([sys.executable, str(project / "killed.py"), str(project / "experiments.xlsx"), point],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    with state_db(project) as con:
        assert con.execute("SELECT intent, job_id, state FROM attempts").fetchall() == [(1, "", "pending")]
    assert len(list(project.rglob("job.sh"))) == 1 and not ledger.exists()  # written, never started
    return ledger


def test_a_kill_between_writing_job_sh_and_starting_it_is_resubmitted_in_the_next_pass(project: Path):
    """#12: nero SIGKILLed after writing `job.sh` and before starting the process lost the
    run (adopted as "(starting)", then `lost: the job did not start within 120 s`, never
    resubmitted). The run folder shows the job was never handed over: the next pass
    submits it again at once, the same attempt, and it starts exactly once."""
    ledger = _killed_in_submit(project, "files")
    proc = nero("reconcile", str(project), check=True)
    assert "1 were never handed to the cluster and are submitted now" in proc.stdout + proc.stderr
    assert status(project)[0]["state"] in ("submitted", "running", "completed")
    proc = nero("reconcile", str(project), "--until-done", "--interval", "0.3", timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = status(project)[0]
    assert run["state"] == "completed" and run["attempt"] == 1
    assert ledger.read_text().count("\n") == 1  # started exactly once
    assert steps(project) == [1]


def test_a_job_handed_over_but_not_seen_waits_its_grace_then_starts_once(project: Path):
    """#12: "submitted, not yet started" is not "never handed over": a job whose hand-over
    was recorded but that no one has seen yet may still start (a slow scheduler, a process
    starting), so recovery waits the grace (and adopts it should it appear), then submits
    it again; the job script's claim lets only one copy start."""
    ledger = _killed_in_submit(project, "handed")
    clock = [time.time()]
    rec = Reconciler(project / "experiments.xlsx", clock=lambda: clock[0])
    try:
        rec.load()
        report = rec.run_pass(results=False)
        assert any("1 were handed to the cluster but are not seen yet" in w for w in report.warnings), report.warnings
        assert [r.intent for r in rec.store.snapshot().values()] == [True]  # waits: not resubmitted
        time.sleep(0.5)
        assert not ledger.exists()
        clock[0] += 61  # past the grace
        report = rec.run_pass(results=False)
        assert any("were still not seen 60 s after their submission and are submitted again" in w
                   for w in report.warnings), report.warnings
        clock[0] = time.time() + 61
        end = time.time() + 60
        while not all(r.state.finished for r in rec.store.snapshot().values()) and time.time() < end:
            time.sleep(0.2)
            clock[0] += 0.2
            rec.run_pass(results=False)
        run = rec.store.snapshot()["once"]
    finally:
        rec.close()
    assert run.state.value == "completed" and run.attempt == 1
    assert ledger.read_text().count("\n") == 1


# --------------------------------------------------------------------------- the rules, pure
def _poll(rec: RunRecord, stdout: bytes, *, midline: bool = False, exit_code: int | None = None) -> Update:
    """lifecycle.observe of one poll whose stdout chunk is `stdout` (read window: 16 bytes)."""
    st = JobStatus(key=rec.key, attempt=1, alive=True, started=None, exit_code=exit_code, heartbeat=None,
                   stdout=stdout, stderr=b"", metrics=b"", resources=b"", offsets=rec.offsets,
                   complete=len(stdout) < 16, window=16, midline=(midline, False, False, False))
    return observe(rec, st, 1000.0, (MetricDef("loss", r"loss=(?P<value>[0-9.]+)"),))


RECORD = RunRecord(key="r", number=1, experiment="r", spec_hash="h", essence="{}", params=(), state=RunState.RUNNING,
                   attempt=1, cluster="local", run_dir="/r/1", offsets=Offsets(stdout=100))


def test_reading_moves_on_through_a_cut_line_and_warns_once_per_line():
    """#12: each poll of a line longer than the window consumes bytes (never the same
    window twice); the cut is one warn event; the line after it is read."""
    cut = _poll(RECORD, b"x" * 16)  # a full window, no line end: the line is cut
    assert cut.offsets.stdout == 116 and [e.kind for e in cut.events] == ["warn"]
    assert cut.events[0].reason == ("stdout.log: a line longer than 16 bytes at byte 100 was cut "
                                    "(skipped to its end, not read for metrics)")
    on = _poll(replace(RECORD, offsets=cut.offsets), b"x" * 16, midline=True)  # still the same line
    assert on.offsets.stdout == 132 and on.events == ()
    end = _poll(replace(RECORD, offsets=on.offsets), b"xx\nloss=0.5\n", midline=True)  # its end, then a line
    assert end.offsets.stdout == 132 + 12 and [p.value for p in end.points] == [0.5] and end.events == ()
    whole = _poll(RECORD, b"loss=0.25\nxxxxxx")  # complete lines first: no cut, the rest waits
    assert whole.offsets.stdout == 110 and [p.value for p in whole.points] == [0.25] and whole.events == ()


def test_a_job_that_ended_inside_a_cut_line_closes():
    """#12 as reported: exit code 0 written, the run stayed open while its last line was
    longer than the window. Past the cut, the last bytes are read and the run completes."""
    held = _poll(RECORD, b"y" * 16, exit_code=0)  # more to read: the ending waits, the cut is said
    assert held.state is None and held.offsets.stdout == 116 and [e.kind for e in held.events] == ["warn"]
    done = _poll(replace(RECORD, offsets=held.offsets), b"yyyy", midline=True, exit_code=0)
    assert done.state is RunState.COMPLETED and done.offsets.stdout == 120


def test_recovery_tells_seen_handed_and_never_handed_apart():
    """#12: "submitted and started" is adopted, "handed over, not seen yet" waits its grace,
    "never handed to the backend" is submitted again at once."""
    seen, handed = Submission("r", 1, job_id="42"), Submission("r", 1)
    assert recovery(seen, 1000.0, 1001.0, 60.0) == "adopt"
    assert recovery(handed, 1000.0, 1001.0, 60.0) == "wait"
    assert recovery(handed, 1000.0, 1061.0, 60.0) == "resubmit"
    assert recovery(None, 1000.0, 1001.0, 60.0) == "resubmit"
