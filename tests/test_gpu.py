"""GPUs per run: the job script samples the GPU memory of the run's own processes (not the
node's) and the utilisation of the GPUs they are on, and the local cluster places runs that
ask for `gpus` on free GPUs (`CUDA_VISIBLE_DEVICES`), waiting while none is free.

This machine has no GPU, so `nvidia-smi` is the one fake: a small script put first on PATH
that reports two GPUs and, per process, what the jobs registered in a folder (a job writes
its pid, its GPU and its memory), plus a process of no run that uses GPU 0.
Everything else is real: the workbook, `nero reconcile`, the job scripts, SQLite, results.xlsx.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import nero, write_workbook

FAKE_NVIDIA_SMI = r'''#!{python}
"""A fake nvidia-smi: two GPUs; per-process memory from the files in $FAKE_GPU_DIR/apps
(one per process: its name is the pid, its text "<gpu index> <MB>"); live processes only."""
import os, sys

apps_dir = os.path.join(os.environ["FAKE_GPU_DIR"], "apps")
UTIL = {{0: 40, 1: 70}}


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(") ", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


apps = []
for name in sorted(os.listdir(apps_dir)):
    gpu, mb = open(os.path.join(apps_dir, name)).read().split()
    if alive(int(name)):
        apps.append((int(name), int(gpu), int(mb)))
args = " ".join(sys.argv[1:])
with open(os.path.join(os.environ["FAKE_GPU_DIR"], "calls"), "a") as log:
    log.write(args + "\n")
if "--query-compute-apps=pid,used_memory,gpu_uuid" in args:
    for pid, gpu, mb in apps:
        print("%d, %d, GPU-fake-%d" % (pid, mb, gpu))
elif "--query-gpu=" in args:
    fields = args.split("--query-gpu=")[1].split()[0].split(",")
    for i in (0, 1):
        value = {{"index": str(i), "uuid": "GPU-fake-%d" % i, "utilization.gpu": str(UTIL[i]),
                 "memory.used": str(sum(mb for _, g, mb in apps if g == i)), "name": "Fake GPU",
                 "memory.total": "81920"}}
        print(", ".join(value[f] for f in fields))
else:
    sys.exit(2)
'''

# The job: registers itself and a child process (a helper of the program) on the GPU it was
# given, with `mb` and 100 MB, prints what it saw, and holds the GPU until a sample of its own
# resources shows both.
JOB = r'''
import json, os, subprocess, sys, time
mb = int(sys.argv[1])
gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "none")
t0 = time.time()
apps = os.path.join(os.environ["FAKE_GPU_DIR"], "apps")
helper = subprocess.Popen(["sleep", "60"])
with open(os.path.join(apps, str(helper.pid)), "w") as f:
    f.write("%s 100" % gpus)
with open(os.path.join(apps, str(os.getpid())), "w") as f:
    f.write("%s %d" % (gpus, mb))
samples = os.path.join(os.environ["NERO_RUN_DIR"], "resources.jsonl")
deadline = time.time() + 40
while time.time() < deadline:
    rows = [json.loads(l) for l in open(samples)] if os.path.exists(samples) else []
    if any(r.get("gpu_mem_mb") == mb + 100 for r in rows):
        break
    time.sleep(0.2)
helper.kill()
helper.wait()
print("gpus=%s t0=%.3f t1=%.3f" % (gpus, t0, time.time()), flush=True)
'''


@pytest.fixture
def fake_gpus(tmp_path: Path):
    """A fake nvidia-smi on PATH, its folder, and a process of no run that holds 300 MB on
    GPU 0 (under the 500 MB that makes a GPU busy). The jobs claim these fake GPUs in a
    claims folder of their own (NERO_GPU_CLAIMS), not the host's."""
    d = tmp_path / "fake-gpu"
    (d / "bin").mkdir(parents=True)
    (d / "apps").mkdir()
    smi = d / "bin" / "nvidia-smi"
    smi.write_text(FAKE_NVIDIA_SMI.format(python=sys.executable))
    smi.chmod(0o755)
    other = subprocess.Popen(["sleep", "300"])
    (d / "apps" / str(other.pid)).write_text("0 300")
    try:
        yield d, {"PATH": f"{d / 'bin'}:{os.environ['PATH']}", "FAKE_GPU_DIR": str(d),
                  "NERO_GPU_CLAIMS": str(d / "claims")}
    finally:
        other.kill()
        other.wait()


@pytest.mark.slow
def test_local_runs_get_distinct_free_gpus_wait_for_one_and_record_their_own_gpu_memory(project: Path, fake_gpus):
    d, env = fake_gpus
    (project / "job.py").write_text(JOB)
    write_workbook(project / "experiments.xlsx", [
        {"id": "g", "command": "python3 job.py {{ mb }}", "mb": "[1111, 2222, 3333]", "gpus": 1},
    ], clusters=[{"name": "local", "kind": "local", "max_jobs": 3}])
    proc = nero("reconcile", str(project), "--until-done", "--interval", "1", timeout=170, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = {r["run"]: r for r in json.loads(nero("status", str(project), "--json", check=True, env=env).stdout)}
    assert set(runs) == {f"g[mb={mb}]" for mb in (1111, 2222, 3333)}
    spans = {}
    for key, r in runs.items():
        assert r["state"] == "completed", r
        out = dict(kv.split("=", 1) for kv in (Path(r["run_dir"]) / "stdout.log").read_text().split())
        spans[key] = (float(out["t0"]), float(out["t1"]), out["gpus"])
    # every run saw exactly one of the two GPUs; two at once held different ones
    assert sorted(s[2] for s in spans.values()) in (["0", "0", "1"], ["0", "1", "1"])
    for a in spans.values():
        for b in spans.values():
            if a is not b and a[2] == b[2]:
                assert a[1] <= b[0] or b[1] <= a[0], "two runs held the same GPU at once"
    # the third run waited: its program started only once one of the first two had ended
    first = sorted(spans.values())
    assert first[2][0] >= min(first[0][1], first[1][1])
    for key, r in runs.items():
        mb = int(key.split("=")[1].rstrip("]"))
        gpu = int(spans[key][2])
        # the run's own memory (its program and the program's helper), not the GPU's sum (which
        # holds the other process's 300 MB on GPU 0 and, while they overlapped, the other run's),
        # and the utilisation of its GPU
        assert r["peak_gpu_mem_mb"] == mb + 100, (key, r)
        assert r["gpu_util_pct"] == {0: 40, 1: 70}[gpu], (key, r)
        samples = [json.loads(line) for line in (Path(r["run_dir"]) / "resources.jsonl").read_text().splitlines()]
        assert {s["gpu_mem_mb"] for s in samples} <= {None, 100.0, float(mb), float(mb + 100)}
        assert all(s["rss_mb"] is not None for s in samples)
    import pandas as pd

    summary = pd.read_excel(project / "results.xlsx", sheet_name="Summary").set_index("run")
    for key in runs:
        assert summary.loc[key, "peak_gpu_mem_mb"] == runs[key]["peak_gpu_mem_mb"]
        assert summary.loc[key, "gpu_util_pct"] == runs[key]["gpu_util_pct"]
    resources = pd.read_excel(project / "results.xlsx", sheet_name="Resources").set_index("run")
    assert resources.loc["g[mb=2222]", "peak_gpu_mem_mb"] == 2322
    # the claims folder (host-wide, as on ssh hosts: every user may make a GPU's folder in it)
    # holds one folder per GPU claimed, and no claim outlives its job: each folder locks now
    claims = d / "claims"
    assert claims.stat().st_mode & 0o7777 == 0o1777
    assert sorted(p.name for p in claims.iterdir()) == ["0", "1"]
    for gpu in claims.iterdir():
        fd = os.open(gpu, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    # the sampler asked for utilisation only while the run had a process on a GPU
    calls = (d / "calls").read_text().splitlines()
    assert sum("utilization.gpu" in c for c in calls) <= sum("compute-apps" in c for c in calls)


def test_without_nvidia_smi_gpu_fields_are_null_and_a_run_with_gpus_still_runs(project: Path):
    # runs past the job script's first second, so its sampler takes samples
    (project / "job.py").write_text('import os, time\ntime.sleep(1.5)\nprint("gpus=" + os.environ.get("CUDA_VISIBLE_DEVICES", "none"))\n')
    write_workbook(project / "experiments.xlsx", [{"id": "n", "command": "python3 job.py", "gpus": 1}])
    path = ":".join(p for p in os.environ["PATH"].split(":")
                    if not (Path(p) / "nvidia-smi").exists())
    proc = nero("reconcile", str(project), "--until-done", "--interval", "1", timeout=120, env={"PATH": path})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (r,) = json.loads(nero("status", str(project), "--json", check=True).stdout)
    assert r["state"] == "completed" and r["peak_gpu_mem_mb"] is None and r["gpu_util_pct"] is None
    assert (Path(r["run_dir"]) / "stdout.log").read_text() == "gpus=none\n"
    assert "no GPU pool" in (Path(r["run_dir"]) / "stderr.log").read_text()
    samples = [json.loads(line) for line in (Path(r["run_dir"]) / "resources.jsonl").read_text().splitlines()]
    assert samples and all(s["gpu_mem_mb"] is None and s["gpu_util_pct"] is None and s["rss_mb"] is not None
                           for s in samples)
