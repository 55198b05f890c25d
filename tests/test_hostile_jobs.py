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
from pathlib import Path

from conftest import nero, state_db, write_workbook

from orchestrator.backends.local import LocalBackend
from orchestrator.cli.logs import TerminalView
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
    assert run["state"] == "lost"
    assert run["reason"].startswith("the run folder ") and "vanished while the job ran" in run["reason"], run
    assert "out of memory" not in run["reason"]
