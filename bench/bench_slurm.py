"""Benchmark: 1,000 runs dispatched to Slurm through sshd in one pass (issue: remote clusters).

Measured in the same run, against the testbed's real Slurm and sshd:

* nero: one `reconcile` pass that submits N runs to a `slurm` cluster reached through the
  loopback sshd (host key checked): render, record intents, ship, submit, record. Jobs
  with identical resources go as job arrays; a second row shows the same pass with one
  `sbatch` per job (still one round trip: the agent runs them, 4 at a time).
* plain `sbatch` loop on the login node: `for f in *.sh; do sbatch --parsable $f; done`
  on this machine (the login node), N trivial scripts.
* one ssh connection per `sbatch`: `ssh -F ssh_config nero-test sbatch --parsable …` per
  job (OpenSSH client), over a sample of M jobs (the rate is what counts).

Targets: nero ≥ 0.5× the plain loop's runs/s and ≥ 10× the per-connection loop's.
Every job submitted here is cancelled right after it is counted.

Run (as root, testbed up): . /tmp/nero-testbed/env.sh && python bench/bench_slurm.py [--runs 1000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import write_workbook  # noqa: E402

from orchestrator.backends import Backend, make_backend  # noqa: E402
from orchestrator.backends.slurm import SlurmBackend  # noqa: E402
from orchestrator.model import Cluster, RunState  # noqa: E402
from orchestrator.reconcile import Reconciler  # noqa: E402


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        sys.exit(f"{name} is not set: run `bash tests/testbed/up.sh` and `. /tmp/nero-testbed/env.sh` first")
    return value


def ssh(command: str) -> str:
    out = subprocess.run(["ssh", "-F", env("NERO_TEST_SSH_CONFIG"), env("NERO_TEST_SSH_ALIAS"), command],
                         capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise RuntimeError(f"ssh {command[:60]!r}: {out.stderr}")
    return out.stdout


def cancel(ids: list[str], as_user: bool) -> None:
    """scancel the given jobs (as the ssh user, or locally as this user), then let slurmctld settle."""
    for k in range(0, len(ids), 500):
        chunk = " ".join(ids[k:k + 500])
        if as_user:
            ssh(f"scancel {chunk} 2>/dev/null; true")
        else:
            subprocess.run(f"scancel {chunk}", shell=True, capture_output=True)
    time.sleep(2)


def nero_pass(n: int, arrays: bool, tag: str) -> dict:
    project = Path(tempfile.mkdtemp(prefix="nero-bench-slurm-"))
    workdir = f"nero-work/bench-{tag}"
    write_workbook(project / "experiments.xlsx", [
        {"id": "sweep", "command": "true {{ i }}", "i": f"range(0, {n})", "cluster": "slurm"},
    ], clusters=[{"name": "slurm", "kind": "slurm", "host": env("NERO_TEST_SSH_ALIAS"), "workdir": workdir,
                  "python": "/usr/bin/python3", "partition": os.environ.get("NERO_TEST_SLURM_PARTITION", "debug")}])

    def factory(cluster: Cluster, project_dir: str) -> Backend:
        if cluster.kind.value == "slurm":
            return SlurmBackend(cluster, project_dir, arrays=arrays)
        return make_backend(cluster, project_dir)

    rec = Reconciler(project / "experiments.xlsx", backend_factory=factory)
    rec.load()
    t0 = time.perf_counter()
    rec.run_pass(results=False, yes=True)  # the whole grid at once (over Settings confirm_over: as `--yes`)
    seconds = time.perf_counter() - t0
    backend = rec.backend("slurm")
    trips, conns = backend.shell.round_trips, backend.shell.connections
    snap = rec.store.snapshot()
    submitted = [r for r in snap.values() if r.state is RunState.SUBMITTED and r.job_id]
    ids = sorted({r.job_id.split("_")[0] for r in submitted}) if arrays else [r.job_id for r in submitted]
    sbatch_calls = len(ids)
    rec.close()
    cancel(ids, as_user=True)
    ssh(f"rm -rf {workdir}")
    return {"runs": len(submitted), "seconds": seconds, "trips": trips, "connections": conns, "sbatch": sbatch_calls}


def plain_loop(n: int) -> dict:
    d = Path(tempfile.mkdtemp(prefix="nero-bench-sbatch-"))
    for i in range(n):
        (d / f"j{i:05d}.sh").write_text("#!/bin/bash\n#SBATCH --output=/dev/null\ntrue\n")
    t0 = time.perf_counter()
    out = subprocess.run(f'cd {d} && for f in j*.sh; do sbatch --parsable "$f"; done', shell=True,
                         capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - t0
    ids = out.stdout.split()
    cancel(ids, as_user=False)
    return {"runs": len(ids), "seconds": seconds, "trips": 0, "sbatch": len(ids)}


def per_connection(m: int, tag: str) -> dict:
    remote = f"nero-work/bench-{tag}-one.sh"
    ssh(f"printf '#!/bin/bash\\n#SBATCH --output=/dev/null\\ntrue\\n' > {remote}")
    cfg, alias = env("NERO_TEST_SSH_CONFIG"), env("NERO_TEST_SSH_ALIAS")
    ids = []
    t0 = time.perf_counter()
    for _ in range(m):
        out = subprocess.run(["ssh", "-F", cfg, alias, f"sbatch --parsable {remote}"], capture_output=True, text=True,
                             timeout=60, stdin=subprocess.DEVNULL)
        ids += out.stdout.split()
    seconds = time.perf_counter() - t0
    cancel(ids, as_user=True)
    ssh(f"rm -f {remote}")
    return {"runs": len(ids), "seconds": seconds, "trips": m, "sbatch": len(ids)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--per-connection", type=int, default=100, help="jobs in the one-connection-per-sbatch sample")
    args = ap.parse_args()
    env("NERO_TEST_SLURM")
    os.environ["NERO_SSH_CONFIG"] = env("NERO_TEST_SSH_CONFIG")
    tag = uuid.uuid4().hex[:8]
    print(f"Slurm through sshd ({env('NERO_TEST_SSH_ALIAS')}), {args.runs} runs; "
          f"per-connection sample {args.per_connection} jobs\n")
    rows = [
        ("plain sbatch loop on the login node", plain_loop(args.runs)),
        ("one ssh connection per sbatch (OpenSSH)", per_connection(args.per_connection, tag)),
        ("nero, one pass, job arrays", nero_pass(args.runs, True, tag + "a")),
        ("nero, one pass, one sbatch per job", nero_pass(args.runs, False, tag + "b")),
    ]
    rate = {name: r["runs"] / r["seconds"] for name, r in rows}
    plain, conn = rate[rows[0][0]], rate[rows[1][0]]
    head = f"{'method':42} {'runs':>5} {'seconds':>8} {'runs/s':>8} {'sbatch':>7} {'ssh trips':>9} {'vs plain':>9} {'vs per-conn':>11}"
    print(head)
    print("-" * len(head))
    for name, r in rows:
        trips = str(r["trips"]) + (f" ({r['connections']} conn)" if "connections" in r else "")
        print(f"{name:42} {r['runs']:5d} {r['seconds']:8.2f} {rate[name]:8.0f} {r['sbatch']:7d} {trips:>9} "
              f"{rate[name] / plain:8.2f}x {rate[name] / conn:10.1f}x")
    best = rate[rows[2][0]]
    ok = best >= 0.5 * plain and best >= 10 * conn
    print(f"\ntarget: nero >= 0.5x plain loop and >= 10x per-connection: {'met' if ok else 'NOT met'} "
          f"({best / plain:.2f}x, {best / conn:.1f}x)")
    if rows[2][1]["runs"] != args.runs:
        sys.exit(f"nero submitted {rows[2][1]['runs']} of {args.runs} runs")


if __name__ == "__main__":
    main()
