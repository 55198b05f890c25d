"""`python peak.py ARGS` = `python -m orchestrator ARGS` under an address-space cap
($NERO_TORTURE_CAP bytes), writing this process's peak resident memory in KiB to
$NERO_TORTURE_PEAK at exit.

The peak is the kernel's VmHWM, which exec starts afresh: a child's `ru_maxrss` would also
count the pages of the (large) parent it was forked from, so the parent cannot measure it.
"""

from __future__ import annotations

import atexit
import os
import resource
import runpy
import sys


def _report() -> None:
    try:
        with open("/proc/self/status") as f:
            kib = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
        with open(os.environ["NERO_TORTURE_PEAK"], "w") as f:
            f.write(kib)
    except (OSError, KeyError, StopIteration, MemoryError):
        pass


if __name__ == "__main__":
    cap = int(os.environ.get("NERO_TORTURE_CAP", "0"))
    if cap:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    atexit.register(_report)
    sys.argv = ["nero", *sys.argv[1:]]
    runpy.run_module("orchestrator", run_name="__main__", alter_sys=True)
