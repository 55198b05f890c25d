"""Slurm monitoring asks about nero's own jobs only, by id (#14: the monitoring pass listed
every job of the user, `squeue -u -t all`, so its cost grew with the scheduler's
history). A finished job of the same user that is not nero's never reaches nero; a job
slurmctld has forgotten falls through to accounting instead of failing the pass.
Against the testbed's real Slurm and sshd, and nero's real agent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import write_workbook
from test_remote import Remote, remote  # noqa: F401 - the fixture

from orchestrator.backends import Backend, make_backend
from orchestrator.backends.sge import ACCOUNTING_TAIL, QACCT, parse_qacct
from orchestrator.backends.slurm import (
    GONE,
    PER_JOB_LISTING,
    SQUEUE,
    SQUEUE_MANY,
    SlurmBackend,
    listing_query,
)
from orchestrator.backends.wire import serve_in_process
from orchestrator.model import Cluster
from orchestrator.reconcile import Reconciler

# one worker runs every test that talks to the testbed's sshd, Slurm and SGE, in order
# (one of them stops and restarts sshd): tests/conftest.py
pytestmark = pytest.mark.xdist_group("testbed")


class Listening(SlurmBackend):
    """The real Slurm backend, keeping the text of every monitoring listing it read."""

    listings: list[str] = []
    commands: list[list[str]] = []

    def states(self, reply, listing):
        Listening.listings.append(reply.text(reply.header.get("scheduler", {}).get("list", {}).get("out")))
        Listening.commands.append(listing)
        return super().states(reply, listing)


@pytest.mark.parametrize("arrays, runs", [(True, 6), (False, PER_JOB_LISTING + 2)])
def test_a_finished_job_of_the_same_user_never_reaches_the_monitoring_pass(remote: Remote,  # noqa: F811
                                                                            monkeypatch: pytest.MonkeyPatch,
                                                                            arrays: bool, runs: int):
    """#14: a job of the ssh user submitted outside nero (and finished, so slurmctld keeps
    it for MinJobAge) is not in what nero's pass reads, whether nero asks per job/array
    or, past PER_JOB_LISTING jobs, in one `squeue -u -j` listing; nero's runs complete."""
    monkeypatch.setenv("NERO_SSH_CONFIG", remote.env["NERO_TEST_SSH_CONFIG"])
    foreign = remote.ssh("sbatch --parsable -J not-nero -o /dev/null --wrap true").strip()
    Listening.listings, Listening.commands = [], []
    write_workbook(remote.project / "experiments.xlsx", [
        {"id": "mine", "command": "true {{ i }}", "i": f"range(0, {runs})", "cluster": "slurm"},
    ], clusters=remote.clusters())

    def factory(cluster: Cluster, project_dir: str) -> Backend:
        if cluster.kind.value == "slurm":
            return Listening(cluster, project_dir, arrays=arrays)
        return make_backend(cluster, project_dir)

    import time

    rec = Reconciler(remote.project / "experiments.xlsx", backend_factory=factory)
    try:
        rec.load()
        deadline = time.time() + 150
        while time.time() < deadline:
            rec.run_pass(results=False)
            snap = rec.store.snapshot()
            if snap and all(r.state.finished for r in snap.values()):
                break
            time.sleep(1)
    finally:
        rec.close()
    assert all(r.state.value == "completed" for r in snap.values()), [(r.key, r.state.value) for r in snap.values()]
    assert remote.ssh(f"squeue -h -t all -j {foreign} -o %T").strip() == "COMPLETED"  # held, listable
    assert Listening.listings, "no monitoring pass ran"
    ours = {r.job_id for r in snap.values()}
    for text in Listening.listings:
        listed = {line.split("|")[0] for line in text.splitlines() if line}
        assert foreign not in listed and listed <= ours, (foreign, listed - ours)
    expected = SQUEUE if arrays else SQUEUE_MANY
    assert Listening.commands[0] == expected


def _poll(tmp_path: Path, listing: list[str], jobs: list[str]) -> dict[str, Any]:
    query = {**listing_query(jobs), "list": listing}
    query["detail"] = [["sh", "-c", 'for i in $(echo "$1" | tr , " "); do echo "$i|COMPLETED|0:0|None"; done',
                        "sacct", "{ids}"]]
    reply = serve_in_process({"op": "poll", "workdir": str(tmp_path), "runs": [], "scheduler": query, "ids": jobs})
    assert reply.header["ok"], reply.header
    return {**reply.header["scheduler"], "text": [reply.text(d["out"]) for d in reply.header["scheduler"]["details"]]}


def test_a_job_slurmctld_forgot_falls_through_to_accounting_and_other_listing_errors_stay_errors(tmp_path: Path):
    """#14: `squeue -j ID` on a job slurmctld no longer holds fails with 'Invalid job id';
    by id, that means "ask sacct", not a failed pass. Any other squeue failure still
    fails the listing (the runs keep their state)."""
    forgot = ["sh", "-c", "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1", "squeue", "{id}"]
    out = _poll(tmp_path, forgot, ["41", "42_3"])
    assert out["list"]["rc"] == 0 and out["list"]["commands"] == 2
    assert [d["ids"] for d in out["details"]] == [["41", "42_3"]]
    assert "42_3|COMPLETED" in out["text"][0]
    assert GONE in "slurm_load_jobs error: Invalid job id specified"
    down = ["sh", "-c", "echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1", "squeue",
            "{id}"]
    assert _poll(tmp_path, down, ["41"])["list"]["rc"] == 1


def test_sge_accounting_is_read_from_a_bounded_tail_of_the_file(remote: Remote):  # noqa: F811
    """#14: `qacct -j ID` scans SGE's whole accounting file, which grows with the site's
    history; nero's detail command reads only its last bytes. A job that just ended is
    found there with its exit status (`false`: 1); the file's first job, beyond the tail, is not
    looked for (plain qacct still finds it)."""
    import shlex
    import time

    acc = '"${SGE_ROOT:-/var/lib/gridengine}/${SGE_CELL:-default}/common/accounting"'

    def ended(command: str) -> str:
        """Submit `command`; its job id once its record is in the accounting file."""
        jid = remote.ssh(f"qsub -terse -b y -o /dev/null -e /dev/null -N not-nero {command}").strip()
        deadline = time.time() + 120
        while f"jobnumber    {jid}" not in remote.ssh(f"qacct -j {jid} 2>/dev/null; true"):
            assert time.time() < deadline, f"SGE job {jid} ({command}) not accounted for in 120 s"
            time.sleep(1)
        return jid

    # records before the job looked for: two at least (a fresh testbed's file may have none)
    while len([line for line in remote.ssh(f"cat {acc}").splitlines() if line and not line.startswith("#")]) < 2:
        ended("/bin/true")
    jid = ended("/bin/false")
    text = remote.ssh(f"cat {acc}").encode()
    at = next(i for i, line in enumerate(text.split(b"\n")) if line and not line.startswith(b"#"))
    start = sum(len(line) + 1 for line in text.split(b"\n")[:at])  # where the file's first record starts
    fields = text[start:].split(b"\n", 1)[0].decode().split(":")
    first = fields[5] if fields[35] == "0" else f"{fields[5]}.{fields[35]}"  # its id as parse_qacct keys it
    assert fields[5] != jid
    # a tail that starts one byte into the first record: what follows it is read, the first is not
    tail = len(text) - start - 1
    small = [a.replace(str(ACCOUNTING_TAIL), str(tail)).replace("{ids}", f"{fields[5]},{jid}") for a in QACCT]
    states = parse_qacct(remote.ssh(shlex.join(small)))
    assert states[jid].state == "FAILED" and states[jid].exit_code == 1, states
    assert first not in states
    assert first in parse_qacct(remote.ssh(f"qacct -j {fields[5]}"))
