"""Benchmark: 1,000 runs dispatched to SGE through sshd in one pass (issue #14).

Measured in the same run, against the testbed's real SGE (8.1.9) and sshd:

* nero: one `reconcile` pass that submits N runs to an `sge` cluster reached through the
  loopback sshd (host key checked): render, record intents, ship, submit, record. Jobs with
  identical resources go as job arrays (`qsub -t 1-N`); a second row shows the same pass
  with one `qsub` per job (nero before job arrays on SGE; still one round trip).
* `qsub -t 1-N` on the login node, the peer (what submitit's `map_array` is on Slurm; submitit
  has no SGE executor): N lines of arguments written to a file, one array script reading its
  task's line, one `qsub`. Timed on the login node itself (no ssh in its figure).
* submitit's `map_array` steps pointed at SGE, on the login node (submitit has no SGE
  executor; on Slurm its `map_array` is #14's peer): each call pickled to its own file
  (`DelayedSubmission.dump`), one array script, one `qsub -t 1-N`, each pickle moved into
  its job's folder (`JobPaths.move_temporary_file`), as `SlurmExecutor` does with `sbatch`.
* a plain `qsub` loop on the login node: N trivial scripts, one `qsub` each.

Target (#14: "at least as fast as submitit calling the scheduler on the login node"): nero's
pass (connection up, as a watching `nero reconcile` holds it) ≥ 1.0× submitit's steps on SGE;
the bare `qsub -t` (no tool's work at all) and the pass that opens its own connection are
shown beside it.
Every job here is submitted held (`-h`: none starts, so no job loads the 2 cores while the next
method is timed) and deleted once counted.

Run (as root, testbed up): . /tmp/nero-testbed/env.sh && python bench/bench_sge.py [--runs 1000] [--reps 3]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
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
from orchestrator.backends.sge import SgeBackend  # noqa: E402
from orchestrator.model import Cluster, RunState  # noqa: E402

HOLD = "-h"  # every job submitted here is held, none starts


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        sys.exit(f"{name} is not set: run `bash tests/testbed/up.sh` and `. /tmp/nero-testbed/env.sh` first")
    return value


def ssh(command: str, timeout: float = 900) -> str:
    out = subprocess.run(["ssh", "-F", env("NERO_TEST_SSH_CONFIG"), env("NERO_TEST_SSH_ALIAS"), command],
                         capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise RuntimeError(f"ssh {command[:60]!r}: {out.stderr}")
    return out.stdout


def delete(ids: list[str]) -> None:
    """qdel the given jobs (as the ssh user), then let sge_qmaster settle."""
    for k in range(0, len(ids), 500):
        ssh(f"qdel {' '.join(ids[k:k + 500])} >/dev/null 2>&1; true")
    time.sleep(1)


def nero_pass(n: int, arrays: bool, tag: str, warm: bool = False, workdir: str = "") -> dict:
    """One pass of a new project submitting `n` runs. `workdir`: the cluster folder of
    projects reached before (the agent's hello kept there 10 minutes), each project with its
    own experiment id; else a new one (removed after)."""
    from orchestrator.reconcile import Reconciler

    project = Path(tempfile.mkdtemp(prefix="nero-bench-sge-"))
    shared = bool(workdir)
    workdir = workdir or f"nero-work/bench-{tag}"
    write_workbook(project / "experiments.xlsx", [
        {"id": f"sweep{tag}" if shared else "sweep", "command": "true {{ i }}", "i": f"range(0, {n})",
         "cluster": "sge", "options": HOLD},
    ], clusters=[{"name": "sge", "kind": "sge", "host": env("NERO_TEST_SSH_ALIAS"), "workdir": workdir,
                  "python": "/usr/bin/python3"}])

    def factory(cluster: Cluster, project_dir: str) -> Backend:
        if cluster.kind.value == "sge":
            return SgeBackend(cluster, project_dir, arrays=arrays)
        return make_backend(cluster, project_dir)

    rec = Reconciler(project / "experiments.xlsx", backend_factory=factory)
    rec.load()
    if warm:  # the connection a watching reconciler keeps (hello done)
        rec.backend("sge").connect()
    t0 = time.perf_counter()
    rec.run_pass(results=False, yes=True)  # the whole grid at once (over Settings confirm_over: as `--yes`)
    seconds = time.perf_counter() - t0
    backend = rec.backend("sge")
    trips, conns = backend.shell.round_trips, backend.shell.connections
    snap = rec.store.snapshot()
    submitted = [r for r in snap.values() if r.state is RunState.SUBMITTED and r.job_id]
    ids = sorted({r.job_id.split(".")[0] for r in submitted})
    rec.close()
    shutil.rmtree(project, ignore_errors=True)
    delete(ids)
    ssh(f"rm -rf {workdir}" if not shared else f"rm -rf {workdir}/sweep{tag}")
    return {"runs": len(submitted), "seconds": seconds, "trips": trips, "connections": conns, "qsub": len(ids)}


def _timed_on_login_node(script: str) -> tuple[float, list[str]]:
    """Run `script` on the login node as the ssh user; (its seconds there, the job ids it printed)."""
    out = ssh(f"t0=$(date +%s.%N); {script}; t1=$(date +%s.%N); echo TIME $t0 $t1")
    ids, seconds = [], 0.0
    for line in out.splitlines():
        if line.startswith("TIME "):
            _, t0, t1 = line.split()
            seconds = float(t1) - float(t0)
        elif line.strip():
            ids.append(line.strip().split(".")[0])
    return seconds, ids


def qsub_array(n: int, tag: str) -> dict:
    """`qsub -t 1-N` on the login node: N argument lines written, one array script, one qsub."""
    d = f"nero-work/bench-{tag}-array"
    ssh(f"mkdir -p {d} && printf '#!/bin/bash\\n#$ -S /bin/bash\\n#$ -o /dev/null\\n#$ -j y\\n"
        f"ARGS=$(sed -n \"${{SGE_TASK_ID}}p\" args)\\ntrue $ARGS\\n' > {d}/array.sh")
    seconds, ids = _timed_on_login_node(f"cd {d} && seq 0 {n - 1} > args && qsub -terse -cwd {HOLD} -t 1-{n} array.sh")
    delete(ids)
    ssh(f"rm -rf {d}")
    return {"runs": n if len(ids) == 1 else 0, "seconds": seconds, "trips": 0, "qsub": len(ids)}


def _fn(x: int) -> int:  # the function submitit's jobs would run
    return x


def submitit_steps(n: int) -> dict:
    """submitit's `map_array` (SlurmExecutor._internal_process_submissions) with `qsub -t`
    for `sbatch`, on the login node (this machine, as this user)."""
    import uuid as _uuid

    from submitit.core.utils import DelayedSubmission, JobPaths

    folder = Path(tempfile.mkdtemp(prefix="nero-bench-submitit-sge-"))
    t0 = time.perf_counter()
    pickles = []
    for x in range(n):
        path = folder / f"{_uuid.uuid4().hex}.pkl"
        d = DelayedSubmission(_fn, x)
        d.set_timeout(5, 3)
        d.dump(path)
        pickles.append(path)
    script = folder / "submission_file.sh"
    script.write_text(f"#!/bin/bash\n#$ -S /bin/bash\n#$ -o {folder}/$TASK_ID.out\n#$ -j y\n"
                      f"{sys.executable} -u -m submitit.core._submit {folder}/%j\n")
    out = subprocess.run(["qsub", "-terse", HOLD, "-t", f"1-{n}", str(script)], capture_output=True, text=True,
                         timeout=300)
    jid = out.stdout.strip().split(".")[0]
    for i, path in enumerate(pickles):
        JobPaths(folder / "%j", job_id=f"{jid}_{i}").move_temporary_file(path, "submitted_pickle")
    seconds = time.perf_counter() - t0
    subprocess.run(["qdel", jid], capture_output=True, timeout=60)
    shutil.rmtree(folder, ignore_errors=True)
    return {"runs": n if out.returncode == 0 and jid.isdigit() else 0, "seconds": seconds, "trips": 0, "qsub": 1}


def qsub_loop(n: int, tag: str) -> dict:
    d = f"nero-work/bench-{tag}-loop"
    ssh(f"mkdir -p {d} && cd {d} && for i in $(seq -w 0 {n - 1}); do "
        f"printf '#!/bin/bash\\n#$ -o /dev/null\\n#$ -j y\\ntrue\\n' > j$i.sh; done")
    seconds, ids = _timed_on_login_node(f'cd {d} && for f in j*.sh; do qsub -terse {HOLD} "$f"; done')
    delete(ids)
    ssh(f"rm -rf {d}")
    return {"runs": len(ids), "seconds": seconds, "trips": 0, "qsub": len(ids)}


def _median_of(samples: list[dict]) -> dict:
    """The sample of median seconds (its other figures with it), with the min and max."""
    ordered = sorted(samples, key=lambda r: r["seconds"])
    return {**ordered[len(ordered) // 2], "min": ordered[0]["seconds"], "max": ordered[-1]["seconds"],
            "reps": len(ordered)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3, help="the qsub -t array and nero's array passes, each this many "
                    "times, interleaved (median shown)")
    args = ap.parse_args()
    gc.set_threshold(100_000, 50, 100)  # the collector's thresholds `nero` runs with (cli/group.py: main)
    env("NERO_TEST_SGE")
    os.environ["NERO_SSH_CONFIG"] = env("NERO_TEST_SSH_CONFIG")
    tag = uuid.uuid4().hex[:8]
    print(f"SGE through sshd ({env('NERO_TEST_SSH_ALIAS')}), {args.runs} runs, every job held ({HOLD})\n")
    # the cold passes reach a cluster folder reached before (as a project does from its second
    # command on): one pass first makes it and its agent's hello
    reached = f"nero-work/bench-{tag}-reached"
    nero_pass(10, True, f"{tag}w", workdir=reached)
    bare, peer, cold, warm = [], [], [], []
    for k in range(args.reps):
        bare.append(qsub_array(args.runs, f"{tag}p{k}"))
        peer.append(submitit_steps(args.runs))
        cold.append(nero_pass(args.runs, True, f"{tag}a{k}", workdir=reached))
        warm.append(nero_pass(args.runs, True, f"{tag}c{k}", warm=True))
    ssh(f"rm -rf {reached}")
    rows = [
        ("plain qsub loop on the login node", qsub_loop(args.runs, tag)),
        ("qsub -t 1-N array on the login node", _median_of(bare)),
        ("submitit's map_array steps, qsub -t", _median_of(peer)),
        ("nero, one pass, arrays, opening ssh", _median_of(cold)),
        ("nero, one pass, one qsub per job", nero_pass(args.runs, False, tag + "b", warm=True)),
        ("nero, one pass, arrays, connection up", _median_of(warm)),
    ]
    for name, r in rows:
        if r["runs"] != args.runs:
            sys.exit(f"{name}: {r['runs']} runs submitted, not {args.runs}")
    rate = {name: r["runs"] / r["seconds"] for name, r in rows}
    plain, array, sub = rate[rows[0][0]], rate[rows[1][0]], rate[rows[2][0]]
    head = (f"{'method':40} {'runs':>5} {'seconds':>8} {'min-max s':>11} {'runs/s':>8} {'qsub':>5} {'ssh trips':>11} "
            f"{'vs loop':>8} {'vs qsub -t':>10} {'vs submitit':>11}")
    print(head)
    print("-" * len(head))
    for name, r in rows:
        trips = str(r["trips"]) + (f" ({r['connections']} conn)" if "connections" in r else "")
        spread = f"{r['min']:.2f}-{r['max']:.2f}" if "min" in r else ""
        print(f"{name:40} {r['runs']:5d} {r['seconds']:8.2f} {spread:>11} {rate[name]:8.0f} {r['qsub']:5d} {trips:>11} "
              f"{rate[name] / plain:7.2f}x {rate[name] / array:9.2f}x {rate[name] / sub:10.2f}x")
    pairs = [p["seconds"] / w["seconds"] for p, w in zip(peer, warm, strict=True)]
    print(f"\nnero arrays (connection up) vs submitit's steps, rep by rep (submitit s / nero s): "
          f"{', '.join(f'{x:.2f}x' for x in pairs)} (median {statistics.median(pairs):.2f}x)")
    best, opening = rate[rows[5][0]], rate[rows[3][0]]
    print(f"target (connection up): nero >= 1.0x submitit's map_array steps on SGE: "
          f"{'met' if best >= sub else 'NOT met'} ({best / sub:.2f}x); the bare qsub -t: {best / array:.2f}x; "
          f"opening ssh in the pass: {opening / sub:.2f}x submitit; one qsub per job: {rate[rows[4][0]] / sub:.3f}x")


if __name__ == "__main__":
    main()
