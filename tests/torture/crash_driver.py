"""`nero` with a SIGKILL armed at a named point: `python crash_driver.py POINT N -- ARGS...`.

Runs the real command line (`orchestrator.cli.main(ARGS)`, e.g. `reconcile DIR --watch`)
in this process after wrapping one function so that its N-th call SIGKILLs the process
right there, the way the kill tests of the core loop subclass a backend (see
tests/test_core_loop.py::test_crash_between_submit_and_record_adopts_the_job). Nothing in
orchestrator/ knows about this: the points are places in its real code path.

POINT is one of POINTS. A point that is no longer found (a function renamed) is an error
(exit 3), never a silent run without the kill.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys

__all__ = ["POINTS", "arm"]

POINTS = {
    "random": "no armed point: the parent SIGKILLs at a seeded random moment",
    "mid-transaction": "inside the write transaction that stores metric points, before its COMMIT",
    "after-intent": "the attempt's intent row is committed, nothing handed to the backend yet",
    "after-submit": "the backend started the job, before the reconciler recorded its job id",
    "mid-results-write": "results.xlsx half written beside its target, before the rename",
    "before-start": "job.sh written into the run folder, its process not started yet",
}


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class _Countdown:
    def __init__(self, n: int):
        self.left = n

    def hit(self) -> bool:
        self.left -= 1
        return self.left <= 0


def arm(point: str, n: int) -> None:
    """Wrap the function where `point` lies so that its n-th passage SIGKILLs us."""
    count = _Countdown(n)
    if point == "random":
        return
    if point == "mid-transaction":
        real_connect = sqlite3.connect

        def connect(*args, **kwargs):
            con = real_connect(*args, **kwargs)
            wrote = [False]

            def trace(statement: str) -> None:
                s = statement.lstrip().upper()
                if s.startswith("BEGIN"):
                    wrote[0] = False
                elif s.startswith("INSERT INTO METRICS"):
                    wrote[0] = True
                elif s.startswith("COMMIT") and wrote[0] and count.hit():
                    _die()  # the points are written inside the transaction, not committed

            con.set_trace_callback(trace)
            return con

        sqlite3.connect = connect
        return
    if point == "after-intent":
        from orchestrator.state.store import Store

        real = Store.record_intents

        def record_intents(self, *args, **kwargs):
            real(self, *args, **kwargs)
            if count.hit():
                _die()

        Store.record_intents = record_intents
        return
    if point == "after-submit":
        from orchestrator.backends.local import LocalBackend

        real_submit = LocalBackend.submit

        def submit(self, jobs, ready=None):
            out = real_submit(self, jobs, ready)
            if count.hit():
                _die()
            return out

        LocalBackend.submit = submit
        return
    if point == "mid-results-write":
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if str(dst).endswith("results.xlsx") and count.hit():
                size = os.path.getsize(src)
                with open(src, "r+b") as f:
                    f.truncate(size // 2)  # the writer got half way
                _die()
            return real_replace(src, dst, *args, **kwargs)

        os.replace = replace
        return
    if point == "before-start":
        real_popen = subprocess.Popen

        class Popen(real_popen):  # type: ignore[misc, valid-type]
            def __init__(self, args, *a, **kw):
                argv = [str(x) for x in (args if isinstance(args, list | tuple) else [args])]
                if any(x.endswith("job.sh") for x in argv) and count.hit():
                    _die()  # job.sh is in its run folder; its process never starts
                super().__init__(args, *a, **kw)

        subprocess.Popen = Popen
        return
    print(f"crash_driver: unknown point {point!r}; known: {', '.join(POINTS)}", file=sys.stderr)
    raise SystemExit(3)


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[2] != "--":
        print(__doc__, file=sys.stderr)
        raise SystemExit(3)
    arm(argv[0], int(argv[1]))
    from orchestrator.cli import main as nero

    nero(argv[3:], prog_name="nero")


if __name__ == "__main__":
    main(sys.argv[1:])
