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

* submitit's `map_array` on the login node (issue #14): N calls pickled, one array
  script, one `sbatch`.
* monitoring (issue #14): nero's pass over `--live` runs before and after `--history`
  finished jobs of the same user exist, next to the user's whole listing
  (`squeue -u -t all`), which the pass no longer reads.

Targets: nero ≥ 0.5× the plain loop's runs/s and ≥ 10× the per-connection loop's;
≥ 1.0× submitit's map_array, with the connection up as a watching `nero reconcile` holds it
(submitit runs on the login node and opens none; the pass that opens its own, to a cluster
folder reached before, is shown beside it); the monitoring pass after the history ≤ 1.2× the one before.
Every job submitted here is cancelled right after it is counted, but slurmctld keeps each
for MinJobAge (an hour on the testbed) and holds at most MaxJobCount (50,000): the dispatch
part submits 3,000 + 3,000 × reps jobs + --per-connection (11,030 with the defaults), so
about four runs an hour fill the testbed's Slurm ("Resource temporarily unavailable" for
every user of it until the oldest are purged).

Run (as root, testbed up): . /tmp/nero-testbed/env.sh && python bench/bench_slurm.py [--runs 1000]
[--history 15000 | --history 0] [--no-dispatch] [--reps 3]
"""

from __future__ import annotations

import argparse
import gc
import os
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
from orchestrator.backends.slurm import SlurmBackend  # noqa: E402
from orchestrator.model import Cluster, RunState  # noqa: E402
from orchestrator.reconcile import Reconciler  # noqa: E402

# every job the dispatch part submits is held (`--begin`) and cancelled once counted: none
# starts, so no job's start or end loads the 2 cores while the next method is timed
HELD = "now+1hour"


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


def nero_pass(n: int, arrays: bool, tag: str, warm: bool = False, workdir: str = "") -> dict:
    """One pass of a new project submitting `n` runs. `workdir`: the cluster folder of
    projects reached before (the agent's hello, `scontrol show config` and `sacctmgr`, kept
    there 10 minutes), each project with its own experiment id; else a new one (removed after)."""
    project = Path(tempfile.mkdtemp(prefix="nero-bench-slurm-"))
    shared = bool(workdir)
    workdir = workdir or f"nero-work/bench-{tag}"
    write_workbook(project / "experiments.xlsx", [
        {"id": f"sweep{tag}" if shared else "sweep", "command": "true {{ i }}", "i": f"range(0, {n})",
         "cluster": "slurm", "options": f"--begin={HELD}"},
    ], clusters=[{"name": "slurm", "kind": "slurm", "host": env("NERO_TEST_SSH_ALIAS"), "workdir": workdir,
                  "python": "/usr/bin/python3", "partition": os.environ.get("NERO_TEST_SLURM_PARTITION", "debug")}])

    def factory(cluster: Cluster, project_dir: str) -> Backend:
        if cluster.kind.value == "slurm":
            return SlurmBackend(cluster, project_dir, arrays=arrays)
        return make_backend(cluster, project_dir)

    rec = Reconciler(project / "experiments.xlsx", backend_factory=factory)
    rec.load()
    if warm:  # the connection a watching reconciler keeps (hello done)
        rec.backend("slurm").connect()
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
    ssh(f"rm -rf {workdir}" if not shared else f"rm -rf {workdir}/sweep{tag}")
    return {"runs": len(submitted), "seconds": seconds, "trips": trips, "connections": conns, "sbatch": sbatch_calls}


def plain_loop(n: int) -> dict:
    d = Path(tempfile.mkdtemp(prefix="nero-bench-sbatch-"))
    for i in range(n):
        (d / f"j{i:05d}.sh").write_text(f"#!/bin/bash\n#SBATCH --output=/dev/null\n#SBATCH --begin={HELD}\ntrue\n")
    t0 = time.perf_counter()
    out = subprocess.run(f'cd {d} && for f in j*.sh; do sbatch --parsable "$f"; done', shell=True,
                         capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - t0
    ids = out.stdout.split()
    cancel(ids, as_user=False)
    return {"runs": len(ids), "seconds": seconds, "trips": 0, "sbatch": len(ids)}


def per_connection(m: int, tag: str) -> dict:
    remote = f"nero-work/bench-{tag}-one.sh"
    ssh(f"printf '#!/bin/bash\\n#SBATCH --output=/dev/null\\n#SBATCH --begin={HELD}\\ntrue\\n' > {remote}")
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


def _fn(x: int) -> int:  # the function submitit's jobs would run
    return x


def submitit_map_array(n: int) -> dict:
    """submitit's `map_array` on the login node (this machine): pickles N calls, writes one
    array script and calls `sbatch` once, as a user of submitit would."""
    import submitit

    folder = Path(tempfile.mkdtemp(prefix="nero-bench-submitit-"))
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    executor.update_parameters(timeout_min=5, slurm_partition=os.environ.get("NERO_TEST_SLURM_PARTITION", "debug"),
                               slurm_additional_parameters={"begin": HELD})
    t0 = time.perf_counter()
    jobs = executor.map_array(_fn, range(n))
    seconds = time.perf_counter() - t0
    ids = sorted({j.job_id.split("_")[0] for j in jobs})
    cancel(ids, as_user=False)
    return {"runs": len(jobs), "seconds": seconds, "trips": 0, "sbatch": len(ids)}


# ----------------------------------------------------------------------- monitoring
TICKER = "import time\nfor i in range(1, 601):\n    print(f'step={i} loss={1 / i:.6f}', flush=True)\n    time.sleep(1)\n"


def user_listing() -> tuple[float, int]:
    """The listing nero's pass used to read: every job of the ssh user (`squeue -u -t all`)."""
    user = env("NERO_TEST_SSH_USER")
    t0 = time.perf_counter()
    out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-u", user, "-o", "%i|%T|%r"], capture_output=True,
                         timeout=300)
    return time.perf_counter() - t0, len(out.stdout)


def history_count() -> int:
    """Jobs of the ssh user slurmctld still holds (finished ones stay MinJobAge)."""
    return len(subprocess.run(["squeue", "-h", "-r", "-t", "all", "-u", env("NERO_TEST_SSH_USER"), "-o", "%i"],
                              capture_output=True, text=True, timeout=300).stdout.split())


def monitor(live: int, passes: int, tag: str) -> dict:
    """`live` ticker runs submitted in one pass (8 run, the rest pend), then the median of
    `passes` monitoring passes of the connected reconciler; every job cancelled after."""
    project = Path(tempfile.mkdtemp(prefix="nero-bench-slurm-mon-"))
    (project / "ticker.py").write_text(TICKER)
    workdir = f"nero-work/bench-{tag}"
    write_workbook(project / "experiments.xlsx", [
        {"id": "live", "command": "python3 ticker.py {{ i }}", "i": f"range(0, {live})", "cluster": "slurm",
         "mem": 100},
    ], clusters=[{"name": "slurm", "kind": "slurm", "host": env("NERO_TEST_SSH_ALIAS"), "workdir": workdir,
                  "python": "/usr/bin/python3", "partition": os.environ.get("NERO_TEST_SLURM_PARTITION", "debug")}])
    rec = Reconciler(project / "experiments.xlsx")
    rec.load()
    ids: list[str] = []
    try:
        rec.run_pass(results=False, yes=True)  # `live` new runs at once: over Settings confirm_over (as `--yes`)
        snap = rec.store.snapshot()
        ids = sorted({r.job_id.split("_")[0] for r in snap.values() if r.job_id})
        time.sleep(3)
        rec.run_pass(results=False)  # sees the starts
        backend = rec.backend("slurm")
        times, sizes = [], []
        for _ in range(passes):
            t0 = time.perf_counter()
            rec.run_pass(results=False)
            times.append(time.perf_counter() - t0)
            sizes.append(backend.last_poll_bytes)
            time.sleep(1)
        polled = sum(1 for r in rec.store.snapshot().values() if r.state.live)
    finally:
        rec.close()
        cancel(ids, as_user=True)
        ssh(f"rm -rf {workdir}")
    if polled != live:
        sys.exit(f"monitoring: {polled} of {live} runs were live when measured")
    listing_s, listing_b = user_listing()
    return {"live": polled, "median_s": statistics.median(times), "max_s": max(times), "min_s": min(times),
            "kb": statistics.median(sizes) / 1024, "history": history_count(), "listing_s": listing_s,
            "listing_kb": listing_b / 1024}


def make_history(n: int, limit: int, timeout: float) -> float:
    """n finished jobs of the ssh user (`true` in arrays of at most MaxArraySize, `limit`
    running at once so other users of the testbed keep CPUs); seconds until all ended."""
    ids = []
    t0 = time.perf_counter()
    arrays = range(0, n, 10000)
    each = max(1, limit // len(arrays))  # the throttle holds per array
    for start in arrays:
        count = min(10000, n - start)
        ids.append(ssh(f"sbatch --parsable --array=0-{count - 1}%{each} -J nero-bench-history -o /dev/null "
                       f"-e /dev/null --wrap true").strip())
    while True:
        out = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(ids), "-t", "PD,R,CG,CF,S", "-o", "%i"],
                             capture_output=True, text=True)
        left = out.stdout.split()
        if out.returncode == 0 and not left:
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            cancel(ids, as_user=True)
            sys.exit(f"history: {len(left)} of {n} jobs still queued after {timeout:.0f} s (cancelled)")
        time.sleep(10)


def monitoring_rows(args: argparse.Namespace, tag: str) -> None:
    before = monitor(args.live, args.passes, tag + "m0")
    made = make_history(args.history, args.history_limit, args.history_timeout)
    after = monitor(args.live, args.passes, tag + "m1")
    grown = after["history"] - before["history"]
    if grown < args.history:
        sys.exit(f"history: slurmctld holds {grown} more jobs of the user, not {args.history}")
    print(f"\nmonitoring pass over {args.live} live runs, before and after {args.history} finished jobs of the "
          f"same user ({made:.0f} s to run them, {args.history_limit} at a time)\n")
    head = (f"{'':30} {'user jobs held':>14} {'nero pass median s':>18} {'min s':>6} {'max s':>6} {'KB read':>8} "
            f"{'squeue -u -t all s':>18} {'its KB':>7}")
    print(head)
    print("-" * len(head))
    for name, m in (("before (history as found)", before), (f"after +{args.history} finished", after)):
        print(f"{name:30} {m['history']:14d} {m['median_s']:18.3f} {m['min_s']:6.3f} {m['max_s']:6.3f} {m['kb']:8.0f} "
              f"{m['listing_s']:18.3f} {m['listing_kb']:7.0f}")
    ratio = after["median_s"] / before["median_s"]
    print(f"ratio after/before: nero pass {ratio:.2f}x (min {after['min_s'] / before['min_s']:.2f}x), KB read {after['kb'] / before['kb']:.2f}x; "
          f"the user listing nero no longer reads {after['listing_kb'] / before['listing_kb']:.1f}x")
    print(f"target: the pass after the history within 1.2x the pass before: {'met' if ratio <= 1.2 else 'NOT met'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--per-connection", type=int, default=100, help="jobs in the one-connection-per-sbatch sample")
    ap.add_argument("--live", type=int, default=500, help="live runs in the monitoring passes")
    ap.add_argument("--passes", type=int, default=9)
    ap.add_argument("--history", type=int, default=15000, help="finished jobs made between the monitoring passes "
                    "(0: skip the monitoring part)")
    ap.add_argument("--history-limit", type=int, default=6, help="history jobs running at once")
    ap.add_argument("--history-timeout", type=float, default=3600)
    ap.add_argument("--no-dispatch", action="store_true", help="skip the dispatch part")
    ap.add_argument("--reps", type=int, default=3, help="dispatch: submitit and nero array passes, each this many "
                    "times, interleaved (median shown)")
    args = ap.parse_args()
    # the collector's thresholds `nero` itself runs with (cli/group.py: main): the passes here
    # are a watching `nero reconcile`'s, in this process
    gc.set_threshold(100_000, 50, 100)
    env("NERO_TEST_SLURM")
    os.environ["NERO_SSH_CONFIG"] = env("NERO_TEST_SSH_CONFIG")
    tag = uuid.uuid4().hex[:8]
    print(f"Slurm through sshd ({env('NERO_TEST_SSH_ALIAS')}), {args.runs} runs; "
          f"per-connection sample {args.per_connection} jobs\n")
    if not args.no_dispatch:
        dispatch_rows(args, tag)
    if args.history:
        monitoring_rows(args, tag)


def _median_of(samples: list[dict]) -> dict:
    """The sample of median seconds (its other figures with it), with the min and max."""
    ordered = sorted(samples, key=lambda r: r["seconds"])
    return {**ordered[len(ordered) // 2], "min": ordered[0]["seconds"], "max": ordered[-1]["seconds"],
            "reps": len(ordered)}


def dispatch_rows(args: argparse.Namespace, tag: str) -> None:
    # submitit and nero's array passes swing with the load of the 2 shared cores: each is
    # measured `--reps` times, interleaved (submitit, nero, nero warm, submitit, …), median shown
    # the cold passes reach a cluster folder reached before (as a project does from its second
    # command on): one pass first makes it and its agent's hello
    reached = f"nero-work/bench-{tag}-reached"
    nero_pass(10, True, f"{tag}w", workdir=reached)
    sub, arr, warm = [], [], []
    for k in range(args.reps):
        sub.append(submitit_map_array(args.runs))
        arr.append(nero_pass(args.runs, True, f"{tag}a{k}", workdir=reached))
        warm.append(nero_pass(args.runs, True, f"{tag}c{k}", warm=True))
    ssh(f"rm -rf {reached}")
    rows = [
        ("plain sbatch loop on the login node", plain_loop(args.runs)),
        ("one ssh connection per sbatch (OpenSSH)", per_connection(args.per_connection, tag)),
        ("submitit map_array on the login node", _median_of(sub)),
        ("nero, one pass, arrays, opening ssh", _median_of(arr)),
        ("nero, one pass, one sbatch per job", nero_pass(args.runs, False, tag + "b")),
        ("nero, one pass, arrays, connection up", _median_of(warm)),
    ]
    for name, r in rows:
        if r["runs"] != (args.per_connection if "per sbatch" in name else args.runs):
            sys.exit(f"{name}: {r['runs']} runs submitted, not {args.runs}")
    rate = {name: r["runs"] / r["seconds"] for name, r in rows}
    plain, conn, sub_rate = rate[rows[0][0]], rate[rows[1][0]], rate[rows[2][0]]
    head = (f"{'method':42} {'runs':>5} {'seconds':>8} {'min-max s':>11} {'runs/s':>8} {'sbatch':>7} {'ssh trips':>9} "
            f"{'vs plain':>9} {'vs per-conn':>11} {'vs submitit':>11}")
    print(head)
    print("-" * len(head))
    for name, r in rows:
        trips = str(r["trips"]) + (f" ({r['connections']} conn)" if "connections" in r else "")
        spread = f"{r['min']:.2f}-{r['max']:.2f}" if "min" in r else ""
        print(f"{name:42} {r['runs']:5d} {r['seconds']:8.2f} {spread:>11} {rate[name]:8.0f} {r['sbatch']:7d} {trips:>9} "
              f"{rate[name] / plain:8.2f}x {rate[name] / conn:10.1f}x {rate[name] / sub_rate:10.2f}x")
    pairs = [s["seconds"] / a["seconds"] for s, a in zip(sub, arr, strict=True)]
    pairs_warm = [s["seconds"] / w["seconds"] for s, w in zip(sub, warm, strict=True)]
    print(f"\nnero arrays vs submitit, rep by rep (submitit s / nero s): "
          f"{', '.join(f'{x:.2f}x' for x in pairs)}; connection up: {', '.join(f'{x:.2f}x' for x in pairs_warm)}")
    # the target's row: the pass of `nero reconcile` watching (its connection held between
    # passes), beside submitit on the login node (no connection at all); opening the
    # connection (the ssh handshake, the agent's hello) is shown apart
    best, cold = rate[rows[5][0]], rate[rows[3][0]]
    ok = best >= 0.5 * plain and best >= 10 * conn and best >= sub_rate
    print(f"target (connection up): nero >= 1.0x submitit map_array, >= 0.5x plain loop and >= 10x per-connection: "
          f"{'met' if ok else 'NOT met'} ({best / sub_rate:.2f}x, {best / plain:.2f}x, {best / conn:.1f}x); "
          f"opening ssh in the pass: {cold / sub_rate:.2f}x submitit")


if __name__ == "__main__":
    main()
