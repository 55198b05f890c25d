"""The torture suite's short run (issue #12), inside the normal pytest run: every test is
marked `torture` (`pytest -m torture` runs only these, `-m "not torture"` leaves them out)
and together they take under a minute on a 2-core machine. The long run, with every
hostile workbook and at least 50 kills, is `python -m tests.torture` (bench/README.md).

Each case failed before its #12 fix (bounds, reader, disk, the dash kill in the agent).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .inputs import bad_job, full_disk, hostile, hostile_cases
from .kills import NAMED_POINTS, torture

pytestmark = pytest.mark.torture

SEED = 12


def test_six_seeded_sigkills_start_nothing_twice_and_lose_no_point(project: Path):
    """#12 torture: SIGKILLs of `nero reconcile --watch` at each named point (inside the
    metrics transaction, after the intent, after the submit before its record, half-way
    through results.xlsx, between job.sh and its process) and at a random moment; then
    the project runs to the end with every job started once and every line stored once."""
    report = torture(project / "p", kills=6, seed=SEED, runs=2, lines=30, max_jobs=3, point_timeout=8,
                     final_timeout=60)
    assert report.kills == 6 and report.by_point["random"] == 1, report.by_point
    assert report.fallbacks == 0, report.by_point  # every named point was reached and killed there
    assert report.duplicate_starts == 0 and report.starts == report.runs == 8, report
    assert report.points == 8 * 30 and report.lost_points == 0 and report.duplicated_points == 0, report
    assert report.unfinished == [] and report.results_readable and report.final_rc == 0, report
    assert report.problems == [], report.problems
    assert {p for p in report.by_point if p != "random"} == set(NAMED_POINTS)


# the short run's share of tests/hostile_workbooks.py (the long run takes them all)
WORKBOOKS = [
    "ok_minimal",
    "ok_text_at_limit",
    "empty_file",
    "not_a_zip",
    "truncated_zip",
    "broken_sheet_xml",
    "xls_magic",
    "billion_laughs_sheet",
    "text_inline_40000",
    "bomb_shared_strings_9mb",
]


@pytest.mark.parametrize("name", WORKBOOKS)
def test_hostile_workbook_is_refused_with_its_cell_or_read_never_a_traceback(project: Path, name: str):
    """#12 hostile workbooks: `nero plan` and `nero reconcile` exit 2 naming a cell or a
    limit (and dispatch nothing), or read the workbook; never a traceback, in bounded time
    and memory."""
    cases, module = hostile_cases([name])
    (_, data), = cases
    v = hostile(name, data, module.expect(name), project / name, timeout=30)
    assert v.ok, v.problems
    assert v.wall_s < 20 and v.peak_mb < 300, (v.wall_s, v.peak_mb)


@pytest.mark.parametrize("name", [
    "binary-garbage",
    "instant-fail",
    "long-line-40mib",
    "deletes-its-run-folder",
])
def test_bad_job_ends_as_it_should_and_every_pass_ends_cleanly(project: Path, name: str):
    """#12 bad jobs: binary garbage on stdout, an immediate failure, one 40 MiB line with no
    newline, a job that deletes its own run folder: each pass ends without a traceback and
    the run ends with the right state and reason."""
    # 40 MiB of output takes two passes to read (local reads 32 MiB a file a pass), both after
    # the job has ended (#14: its job script no longer leaves a sampler's `sleep` behind)
    v = bad_job(name, project / name, timeout=40, passes_after_end=2 if name == "long-line-40mib" else 1)
    assert v.ok, v.problems


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_disk_says_so_and_loses_nothing_once_space_returns(tmp_path: Path):
    """#12 full disk: nero's own files (state.db, results.xlsx) on a full tmpfs: each pass
    says the disk is full without a traceback or advice that discards the state; once space
    returns the run ends with every printed point stored once."""
    v = full_disk(tmp_path, timeout=40)
    assert v.ok, v.problems


def test_a_job_ignoring_sigterm_is_killed_when_its_grace_period_ends(tmp_path: Path):
    """#12 bad jobs, found by the torture run: a job that ignores SIGTERM was never killed
    after a cancel's grace period where /bin/sh is dash (it refused `kill -KILL -- -PGID`),
    so its run stayed `running` for good. The long run's `ignores-sigterm` case goes through
    `nero reconcile` with the real 15 s grace; here the agent's cancel gets 1 s."""
    import signal
    import subprocess
    import sys

    from orchestrator.backends.wire import serve_in_process

    job = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                            "print('ready', flush=True); time.sleep(120)"], cwd=tmp_path, stdout=subprocess.PIPE,
                           text=True, start_new_session=True)
    try:
        assert job.stdout.readline() == "ready\n"
        reply = serve_in_process({"op": "cancel", "kill": [{"pid": str(job.pid), "dir": str(tmp_path), "grace": 1}]})
        assert reply.header["ok"] and reply.header["kill"] == [""], reply.header
        assert job.wait(timeout=15) == -signal.SIGKILL
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(timeout=10)
