"""A submission whose outcome nero cannot know (the scheduler command timed out after it
took the jobs, or the connection dropped right after the request was sent) is never
retried blindly: the next pass looks for the jobs by name, adopts what it finds and
submits only what is provably not there. Against the testbed's real Slurm, SGE and sshd.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

import pytest
from conftest import write_workbook
from test_remote import Remote, remote  # noqa: F401 - the fixture

from orchestrator.backends import Backend, make_backend
from orchestrator.backends.sge import SgeBackend
from orchestrator.backends.slurm import SlurmBackend
from orchestrator.backends.ssh import SshBackend
from orchestrator.errors import BackendError
from orchestrator.model import Cluster, JobScript
from orchestrator.reconcile import Reconciler

# one worker runs every test that talks to the testbed's sshd, Slurm and SGE, in order
# (one of them stops and restarts sshd): tests/conftest.py
pytestmark = pytest.mark.xdist_group("testbed")

LEDGER = r'''
import os, sys, time
# the job's own ledger: one line per start, in a file shared by every run of the test
with open(sys.argv[1], "a") as f:
    f.write(os.environ["NERO_RUN_KEY"] + "\n")
time.sleep(float(sys.argv[2]))
print("done=1")
'''

TIMEOUT = {"sbatch": "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation",
           "qsub": "error: commlib error: got read error (closing \"vm/qmaster/1\")\nUnable to contact qmaster"}


def _accepted_then_timed_out(units, tool: str):
    """The real submit command runs (the scheduler takes the job), then the command says
    it timed out and exits 1, as sbatch/qsub do when the controller answers too slowly."""
    message = TIMEOUT[tool]
    for u in units:
        if u["argv"][0] == tool:
            u["argv"] = ["sh", "-c", f'"$@" >/dev/null; echo {shlex.quote(message)} >&2; exit 1', "fake", *u["argv"]]
    return units


class SlowSlurm(SlurmBackend):
    def units(self, jobs: Sequence[JobScript], root: str):
        units, extras = super().units(jobs, root)
        return _accepted_then_timed_out(units, "sbatch"), extras


class SlowSge(SgeBackend):
    def units(self, jobs: Sequence[JobScript], root: str):
        units, extras = super().units(jobs, root)
        return _accepted_then_timed_out(units, "qsub"), extras


class DroppedSsh(SshBackend):
    """The request reaches the host and runs; the connection drops before the answer."""

    dropped = 0

    def call(self, op, request, payload=b"", timeout=None, then=None):
        reply = super().call(op, request, payload, timeout, then)
        if op == "submit" and not DroppedSsh.dropped:
            DroppedSsh.dropped += 1
            raise BackendError(self.cluster.name, "connection lost: Socket is closed", "nero checks again next pass")
        return reply


FAKES = {"slurm": SlowSlurm, "sge": SlowSge, "ssh": DroppedSsh}


@pytest.mark.parametrize("kind, runs", [("slurm", 12), ("sge", 4), ("ssh", 3)])
def test_an_uncertain_submission_is_found_and_adopted_never_run_twice(remote: Remote,  # noqa: F811
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        kind: str, runs: int):
    DroppedSsh.dropped = 0
    monkeypatch.setenv("NERO_SSH_CONFIG", remote.env["NERO_TEST_SSH_CONFIG"])
    ledger = f"{remote.env['NERO_TEST_SSH_HOME']}/{remote.workdir}/ledger.txt"
    (remote.project / "ledger.py").write_text(LEDGER)
    write_workbook(remote.project / "experiments.xlsx", [
        {"id": "u", "command": f"python3 ledger.py {ledger} 2 {{{{ i }}}}", "i": f"range(0, {runs})",
         "cluster": kind},
    ], clusters=remote.clusters(ssh={"max_jobs": 8}))

    def factory(cluster: Cluster, project_dir: str) -> Backend:
        fake = FAKES.get(cluster.kind.value)
        return fake(cluster, project_dir) if fake and cluster.name == kind else make_backend(cluster, project_dir)

    rec = Reconciler(remote.project / "experiments.xlsx", backend_factory=factory)
    try:
        rec.load()
        first = rec.run_pass(results=False)
        said = " ".join(first.warnings)
        assert f"{runs} run(s) stay unconfirmed" in said, said
        if kind != "ssh":
            assert "did not answer in time, so whether the scheduler took the jobs is unknown" in said, said
        snap = rec.store.snapshot()
        assert len(snap) == runs and all(r.intent and r.attempt == 1 for r in snap.values())
        reports = []
        for _ in range(60):
            reports.append(rec.run_pass(results=False))
            snap = rec.store.snapshot()
            if all(r.state.finished for r in snap.values()):
                break
            import time

            time.sleep(1)
        adopted = [e for rep in reports for e in rep.events if e.kind == "adopted"]
        told = " ".join(w for rep in reports for w in rep.warnings)
        submitted = [e for rep in reports for e in rep.events if e.kind == "submitted"]
    finally:
        rec.close()
    assert all(r.state.value == "completed" and r.attempt == 1 for r in snap.values()), \
        [(r.key, r.state.value, r.reason) for r in snap.values()]
    assert len(adopted) == runs and not submitted, (adopted, submitted)
    assert f"of {runs} unconfirmed submission(s), {runs} were found on the cluster and adopted" in told, told
    starts = remote.ssh(f"cat {ledger}").split()
    assert sorted(starts) == sorted(snap), starts  # every run started exactly once
    assert remote.db("SELECT COUNT(*) FROM attempts") == [(runs,)]
    if kind == "slurm":  # one job array, and no second one under its name
        arrays = {r.job_id.split("_")[0] for r in snap.values()}
        assert len(arrays) == 1, arrays
        name = remote.ssh(f"sacct -X -P -n -j {arrays.pop()} -o JobName").split()[0]
        again = set(remote.ssh(f"sacct -X -P -n -S now-1hours --name={name} -o JobID").split())
        assert len({i.split("_")[0] for i in again}) == 1, again


class LateSlurm(SlurmBackend):
    """The first sbatch times out and the controller queues the job only `delay` seconds
    later, in the background, as a slow slurmctld does with an RPC it had already read."""

    delay = 0.0
    calls = 0

    def units(self, jobs: Sequence[JobScript], root: str):
        units, extras = super().units(jobs, root)
        LateSlurm.calls += 1
        if LateSlurm.calls == 1:
            message = TIMEOUT["sbatch"]
            for u in units:
                u["argv"] = ["sh", "-c", f'nohup sh -c \'sleep {LateSlurm.delay}; exec "$@"\' late "$@" '
                             f'>/dev/null 2>&1 & echo {shlex.quote(message)} >&2; exit 1', "fake", *u["argv"]]
        return units, extras


@pytest.mark.parametrize("delay, grace, outcome", [(3, 30, "adopted"), (9, 2, "submitted")])
def test_a_job_queued_late_is_adopted_within_the_grace_or_never_runs_twice_after_it(
        remote: Remote, monkeypatch: pytest.MonkeyPatch, delay: float, grace: float, outcome: str):  # noqa: F811
    """Slurm queues the timed-out array `delay` s later. Within the grace, the next passes
    wait for it and adopt it; past the grace, nero submits again, and when the late copy
    lands too, its tasks find the runs claimed and end without running anything."""
    import time

    monkeypatch.setenv("NERO_SSH_CONFIG", remote.env["NERO_TEST_SSH_CONFIG"])
    LateSlurm.delay, LateSlurm.calls = delay, 0
    runs = 6
    ledger = f"{remote.env['NERO_TEST_SSH_HOME']}/{remote.workdir}/ledger.txt"
    (remote.project / "ledger.py").write_text(LEDGER)
    write_workbook(remote.project / "experiments.xlsx", [
        {"id": "late", "command": f"python3 ledger.py {ledger} 4 {{{{ i }}}}", "i": f"range(0, {runs})",
         "cluster": "slurm"},
    ], clusters=remote.clusters())

    def factory(cluster: Cluster, project_dir: str) -> Backend:
        return LateSlurm(cluster, project_dir) if cluster.name == "slurm" else make_backend(cluster, project_dir)

    rec = Reconciler(remote.project / "experiments.xlsx", backend_factory=factory, unconfirmed_grace_s=grace)
    events = []
    try:
        rec.load()
        events += rec.run_pass(results=False).events
        deadline = time.time() + 120
        while time.time() < deadline:
            events += rec.run_pass(results=False).events
            snap = rec.store.snapshot()
            if all(r.state.finished for r in snap.values()) and time.time() > (deadline - 120) + delay + 8:
                break
            time.sleep(1)
    finally:
        rec.close()
    assert all(r.state.value == "completed" and r.attempt == 1 for r in snap.values()), \
        [(r.key, r.state.value, r.reason) for r in snap.values()]
    kinds = [e.kind for e in events if e.kind in ("adopted", "submitted")]
    assert kinds == [outcome] * runs, kinds
    starts = remote.ssh(f"cat {ledger}").split()
    assert sorted(starts) == sorted(snap), starts  # every run ran exactly once
    if outcome == "submitted":  # the late array exists too, and each of its tasks ended at the claim
        run_dir = next(iter(snap.values())).run_dir
        assert "already started" in remote.ssh(f"cat {run_dir}/../../../.nero/batches/*/*.out; true")
