"""Remote backends without a cluster: command builders and output parsers (Slurm, SGE),
the agent's framing, code shipping, and the agent itself run on this machine through the
local shell (detached processes, bounded reads, adoption, cancel)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator.backends import code as codeship
from orchestrator.backends.arrays import SGE, SLURM, array_script, array_units, group, header
from orchestrator.backends.client import SchedState, job_name, parse_nvidia_smi
from orchestrator.backends.sge import (
    PRESENT,
    parse_max_array,
    parse_qacct,
    parse_qacct_names,
    parse_qstat_g_c,
    parse_qstat_names,
    parse_qstat_xml,
    task_numbers,
)
from orchestrator.backends.slurm import (
    SlurmBackend,
    expand_array_id,
    parse_exit_code,
    parse_limit,
    parse_names,
    parse_sacct,
    parse_scontrol,
    parse_sinfo,
    parse_squeue,
)
from orchestrator.backends.ssh import SshBackend
from orchestrator.backends.wire import AgentReply, decode_reply
from orchestrator.model import Cluster, ClusterKind, Handle, JobScript, Offsets, RunSpec
from orchestrator.paths import GPU_CLAIMS
from orchestrator.render import render_template
from orchestrator.units import parse_size_mb as size_mb


# --------------------------------------------------------------------------- names
def test_job_name_carries_the_run_key_and_attempt_and_is_safe():
    a = job_name("lr-sweep[lr=0.01,layers=2]", 1)
    assert a.startswith("nero-lr-sweep_lr_0.01_layers_2-") and a.endswith("-a1")
    assert job_name("lr-sweep[lr=0.01,layers=2]", 2) != a
    # different keys that sanitize alike still differ (hash of the key)
    assert job_name("x[a=1]", 1) != job_name("x[a_1]", 1)
    hostile = job_name("x'; rm -rf ~ #" + "y" * 300, 3)
    assert len(hostile) < 70 and all(c.isalnum() or c in "_.-" for c in hostile)
    assert "," not in job_name("a[b=1,c=2]", 1)  # squeue/sacct --name take comma lists


# --------------------------------------------------------------------------- slurm parsers
def test_squeue_sacct_and_scontrol_text_parsing():
    q = parse_squeue("514|FAILED|NonZeroExitCode\n515|OUT_OF_MEMORY|OutOfMemory\n516|CANCELLED|None\n"
                     "517|RUNNING|None\n518_3|PENDING|Priority\n519|TIMEOUT|TimeLimit\n")
    assert q["514"] == SchedState("FAILED", False, "NonZeroExitCode")
    assert q["515"].state == "OUT_OF_MEMORY" and q["515"].reason == "OutOfMemory" and not q["515"].live
    assert q["516"].reason == ""  # "None" is no reason
    assert q["517"].live and q["518_3"].live and q["518_3"].reason == "Priority"
    assert q["519"] == SchedState("TIMEOUT", False, "TimeLimit")

    s = parse_sacct("514|FAILED|3:0|None\n515|OUT_OF_MEMORY|0:125|None\n516|CANCELLED by 1001|0:15|None\n"
                    "520|COMPLETED|0:0|None\n521_[2-4,7%2]|PENDING|0:0|Priority\n522|NODE_FAIL|0:9|\n")
    assert s["514"].exit_code == 3 and s["514"].state == "FAILED"
    assert s["516"] == SchedState("CANCELLED", False, "by 1001", 143)
    assert s["520"] == SchedState("COMPLETED", False, "", 0)
    assert {k for k in s if k.startswith("521_")} == {"521_2", "521_3", "521_4", "521_7"}
    assert s["521_3"].live and s["522"].exit_code == 137

    c = parse_scontrol("JobId=530 JobName=x JobState=TIMEOUT Reason=TimeLimit Dependency=(null) ExitCode=0:15\n"
                       "JobId=531 ArrayJobId=529 ArrayTaskId=4 JobState=RUNNING Reason=None ExitCode=0:0\n")
    assert c["530"] == SchedState("TIMEOUT", False, "TimeLimit", 143)
    assert c["529_4"].live


def test_exit_codes_array_ids_names_and_limits():
    assert parse_exit_code("3:0") == 3 and parse_exit_code("0:9") == 137 and parse_exit_code("") is None
    assert expand_array_id("7_[0-2]") == ["7_0", "7_1", "7_2"] and expand_array_id("7_5") == ["7_5"]
    names = parse_names("101|nero-a-1234-a1\n102_0|nero-batch-x\n102_1|nero-batch-x\n")
    assert names == {"nero-a-1234-a1": ["101"], "nero-batch-x": ["102"]}
    assert parse_limit("|500|\n") == 500 and parse_limit("||\n") is None


def test_sinfo_partitions_and_nvidia_smi():
    qs = parse_sinfo("debug|up|2/6/0/8|1|(null)|23640|infinite\ngpu|up|0/4/0/4|1|gpu:a100:4|512000|2-00:00:00\n"
                     "gpu|up|4/0/0/4|1|gpu:a100:4|512000|2-00:00:00\n")
    assert [(q.name, q.free_slots, q.total_slots) for q in qs] == [("debug", 6, 8), ("gpu", 4, 8)]
    assert "gpu:a100:4" in qs[1].detail
    gpus = parse_nvidia_smi("0, NVIDIA A100, 1024, 40960, 87\n1, NVIDIA A100, 0, 40960, 0\n")
    assert gpus[0].mem_used_mb == 1024 and gpus[0].util_pct == 87 and gpus[1].index == 1
    assert size_mb("10G") == 10240 and size_mb("500M") == 500 and size_mb("4000") == 4000 and size_mb("x") is None


def _job(run_dir: str, extra: str = "", sge: bool = False) -> JobScript:
    if sge:
        text = (f"#!/bin/bash\n#$ -N nero-{Path(run_dir).name}\n#$ -S /bin/bash\n#$ -o {run_dir}/sge.out\n"
                f"#$ -e {run_dir}/sge.err\n#$ -q all.q\n{extra}# comment\nset -u\n#$ -ignored-after-commands\n")
    else:
        text = (f"#!/bin/bash\n#SBATCH --job-name=nero-{Path(run_dir).name}\n#SBATCH --output={run_dir}/slurm-%j.out\n"
                f"#SBATCH --partition=debug\n{extra}# comment\nset -u\n#SBATCH --ignored-after-commands\n")
    return JobScript(Path(run_dir).name, 1, run_dir, text, "{}", "c", "cmd", job_name=f"nero-{Path(run_dir).name}")


@pytest.mark.parametrize("sge", [False, True], ids=["slurm", "sge"])
def test_jobs_with_identical_resources_form_arrays_chunked_at_max_array_size(sge: bool):
    dialect, mem = (SGE, "#$ -l h_vmem=4000M\n") if sge else (SLURM, "#SBATCH --mem=4000M\n")
    own = ("#$ -q all.q",) if sge else ("#SBATCH --partition=debug",)
    assert header(_job("/w/a", sge=sge).text, dialect) == own  # name/output/shell/later lines excluded
    jobs = [_job(f"/w/r{i}", sge=sge) for i in range(5)] + [_job("/w/big", mem, sge=sge)]
    groups = group(jobs, 2, dialect)
    assert [[j.run_dir for j in g] for g in groups] == [["/w/r0", "/w/r1"], ["/w/r2", "/w/r3"], ["/w/r4"], ["/w/big"]]
    script = array_script(header(jobs[0].text, dialect), "nero-batch-abc", "/w/.nero/batches/nero-batch-abc", 2,
                          dialect)
    if sge:  # tasks 1 and 2, stdout and stderr in one file each, in the batch folder
        assert "#$ -t 1-2" in script and "#$ -N nero-batch-abc" in script and "#$ -S /bin/bash" in script
        assert "#$ -o /w/.nero/batches/nero-batch-abc/$TASK_ID.out" in script and "NERO_TASK=$((SGE_TASK_ID - 1))" in script
    else:
        assert "#SBATCH --array=0-1" in script and "#SBATCH --job-name=nero-batch-abc" in script
        assert "NERO_TASK=$((SLURM_ARRAY_TASK_ID - 0))" in script
    assert own[0] in script and "exec bash ./job.sh" in script
    # the directives come before the first command: sbatch and qsub read them
    lines = script.splitlines()
    first_cmd = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    assert all(not line.startswith(dialect.directive) for line in lines[first_cmd:])
    units, extras = array_units(jobs, "/w", dialect, 2, {"project": "p"})
    assert [u["argv"][0] for u in units] == [dialect.submit[0]] * 4 and [len(u["runs"]) for u in units] == [2, 2, 1, 1]
    # the run's link to its task's output: task numbers from 1 on SGE, from 0 on Slurm
    link = extras["/w/r1"]["links"][dialect.out_link]
    assert link.endswith("/2.out" if sge else "/1.out"), link
    assert units[0]["array"] % ("7", units[0]["first"] + 1) == ("7.2" if sge else "7_1") == dialect.task_id("7", 1)


# --------------------------------------------------------------------------- sge parsers
QSTAT_XML = """<?xml version='1.0'?>
<job_info>
  <queue_info>
    <job_list state="running"><JB_job_number>23</JB_job_number><JB_name>nero-a-very-long-name-a1</JB_name>
      <state>r</state></job_list>
  </queue_info>
  <job_info>
    <job_list state="pending"><JB_job_number>25</JB_job_number><JB_name>nero-b-a1</JB_name><state>qw</state></job_list>
    <job_list state="pending"><JB_job_number>26</JB_job_number><JB_name>nero-c-a1</JB_name><state>Eqw</state></job_list>
  </job_info>
</job_info>"""

QACCT = """==============================================================
qname        all.q
hostname     vm
jobname      nero-x
jobnumber    18
category     -u nerotest -l h_rt=5
failed       37  : qmaster enforced h_rt, h_cpu, or h_vmem limit
exit_status  137                  (Killed)
ru_wallclock 6s
==============================================================
jobname      f.sh
jobnumber    19
failed       0
exit_status  4
==============================================================
jobname      s.sh
jobnumber    20
failed       100 : assumedly after job
exit_status  137                  (Killed)
==============================================================
jobname      ok.sh
jobnumber    21
failed       0
exit_status  0
"""


def test_sge_qstat_qacct_and_queues():
    st = parse_qstat_xml(QSTAT_XML)
    assert st["23"].live and st["25"].live and st["25"].state == "qw"
    assert not st["26"].live and "Eqw" in st["26"].reason
    assert parse_qstat_names(QSTAT_XML)["nero-a-very-long-name-a1"] == ["23"]
    acct = parse_qacct(QACCT)
    assert acct["18"].state == "TIMEOUT" and "h_rt" in acct["18"].reason
    assert acct["19"] == SchedState("FAILED", False, "exit_status 4", 4)
    assert acct["20"].state == "CANCELLED"
    assert acct["21"] == SchedState("COMPLETED", False, "", 0)
    assert parse_qacct_names(QACCT)["nero-x"] == ["18"]
    qs = parse_qstat_g_c("CLUSTER QUEUE  CQLOAD   USED    RES  AVAIL  TOTAL aoACDS  cdsuE\n"
                         "--------------------------------------------------------------------------------\n"
                         "all.q            0.96      0      0      2      2      0      0\n")
    assert [(q.name, q.free_slots, q.total_slots) for q in qs] == [("all.q", 2, 2)]


# `qstat -xml -g d` as SGE 8.1.9 writes it for an array: a task a line, a plain job without <tasks>
QSTAT_TASKS = """<?xml version='1.0'?>
<job_info>
  <queue_info>
    <job_list state="running"><JB_job_number>2</JB_job_number><JB_name>nero-batch-1</JB_name><state>r</state>
      <queue_name>all.q@vm</queue_name><slots>1</slots><tasks>1</tasks></job_list>
    <job_list state="running"><JB_job_number>5</JB_job_number><JB_name>nero-lone-a1</JB_name><state>r</state>
      <queue_name>all.q@vm</queue_name><slots>1</slots></job_list>
  </queue_info>
  <job_info>
    <job_list state="pending"><JB_job_number>2</JB_job_number><JB_name>nero-batch-1</JB_name><state>qw</state>
      <slots>1</slots><tasks>3</tasks></job_list>
    <job_list state="pending"><JB_job_number>3</JB_job_number><JB_name>nero-batch-2</JB_name><state>hqw</state>
      <slots>1</slots><tasks>4-8:2</tasks></job_list>
    <job_list state="pending"><JB_job_number>4</JB_job_number><JB_name>nero-batch-3</JB_name><state>Eqw</state>
      <slots>1</slots><tasks>2</tasks></job_list>
  </job_info>
</job_info>"""


def test_sge_array_tasks_are_listed_accounted_and_named_by_task():
    st = parse_qstat_xml(QSTAT_TASKS)
    assert {k for k, v in st.items() if v.live} == {"2.1", "2.3", "5", "3.4", "3.6", "3.8"}
    assert not st["4.2"].live and "Eqw (qstat -j 4 says why)" in st["4.2"].reason  # an error state ends the task
    assert task_numbers("1,4-5:1") == [1, 4, 5] and task_numbers("7") == [7] and task_numbers("x") == []
    assert parse_qstat_names(QSTAT_TASKS)["nero-batch-1"] == ["2"]  # the array once, not once a task
    # the agent's listing ids: the pattern's groups joined by `.` (agent._scheduler)
    ids = {".".join(g for g in m.groups() if g) for m in re.finditer(PRESENT, QSTAT_TASKS)}
    assert ids == {"2.1", "2.3", "5", "3", "4.2"}  # a range stays its job (its tasks then go to qacct)
    acct = parse_qacct("jobname      nero-batch-1\njobnumber    2\ntaskid       1\nfailed       0\nexit_status  0\n"
                       "==============================================================\n"
                       "jobname      nero-batch-1\njobnumber    2\ntaskid       2\nfailed       0\nexit_status  3\n"
                       "==============================================================\n"
                       "jobname      nero-lone-a1\njobnumber    5\ntaskid       undefined\nfailed       0\n"
                       "exit_status  0\n")
    assert acct["2.1"].state == "COMPLETED" and acct["2.2"] == SchedState("FAILED", False, "exit_status 3", 3)
    assert acct["5"].state == "COMPLETED"
    assert parse_qacct_names("jobname a\njobnumber 9\ntaskid 1\n===\njobname a\njobnumber 9\ntaskid 2\n") == {"a": ["9"]}
    assert parse_max_array("max_aj_instances 2000\nmax_aj_tasks                 75000\n") == 75000
    assert parse_max_array("max_aj_tasks 0\n") is None


# --------------------------------------------------------------------------- framing
def test_agent_reply_framing_skips_login_noise_and_detects_truncation():
    head = json.dumps({"ok": True, "x": [0, 3]}).encode()
    frame = b"NERO-AGENT/1 %d 3\n" % len(head) + head + b"abc"
    reply = decode_reply(b"Welcome to the cluster!\nlast login ...\n" + frame)
    assert reply.header["x"] == [0, 3] and reply.blob(reply.header["x"]) == b"abc"
    with pytest.raises(ValueError):
        decode_reply(frame[:-1])
    with pytest.raises(ValueError):
        decode_reply(b"bash: python3: command not found\n")


def test_a_scheduler_still_running_a_job_withholds_its_exit_code():
    """The job script wrote exit_code while Slurm is still tearing the job down (e.g.
    TIMEOUT's SIGTERM): nero waits for the scheduler's final word instead of calling it
    a plain failure."""
    b = SlurmBackend(Cluster("c", ClusterKind.SLURM), "/p")
    h = Handle("k", 1, "77", "/w/k/1", Offsets())
    item = {"files": {"exit_code": "143", "heartbeat": "100"}, "chunks": [None] * 4, "complete": True}
    reply = AgentReply({}, b"")
    live = b._status(h, item, reply, {"77": SchedState("COMPLETING", True)}, 101.0, False)
    assert live.alive and live.exit_code is None
    final = b._status(h, item, reply, {"77": SchedState("TIMEOUT", False, "TimeLimit")}, 101.0, False)
    assert not final.alive and final.exit_code == 143 and final.scheduler_state == "TIMEOUT"
    # the scheduler forgot the job: alive only while the heartbeat is fresh
    gone = dict(item, files={"heartbeat": "100"})
    assert b._status(h, gone, reply, {}, 120.0, False).alive
    assert not b._status(h, gone, reply, {}, 400.0, False).alive
    # #14: the job script's first heartbeat comes a second after its start: a job the
    # scheduler forgot in between is alive while its start is fresh
    young = dict(item, files={"started": '{"host": "n1", "time": 100.5, "pid": 7}'})
    assert b._status(h, young, reply, {}, 120.0, False).alive
    assert not b._status(h, young, reply, {}, 400.0, False).alive


# --------------------------------------------------------------------------- templates
def test_scheduler_templates_keep_hostile_values_on_their_directive_lines(tmp_path: Path):
    from orchestrator.jobs import directive, scheduler_options

    evil = "debug\n#SBATCH --wrap=touch /tmp/pwned"
    common = {"key": "k", "experiment": "e", "attempt": 1, "cluster": "c", "run_dir": "/w/e/k/1", "workdir": "/w/code",
              "command": "true", "setup": "", "resume": 0, "prev_run_dir": "", "env": [], "path_prepend": "",
              "heartbeat": 10, "rendered_at": "now", "params": {}, "job_name": "nero-k-1-a1", "kind": "slurm",
              "partition": directive(evil), "account": directive("acct'; echo x"), "gpu_pool": "", "gpu_claims": "",
              "options": scheduler_options("--qos=high '--comment=a b'", "--constraint=\"a100\nb\""),
              "resources": {"time": 90, "mem": 4000, "cpus": 2, "gpus": 1}}
    text = render_template("slurm.sbatch.j2", common)
    lines = text.splitlines()
    directives = [line for line in lines if line.startswith("#SBATCH")]
    assert "#SBATCH --time=90" in directives and "#SBATCH --mem=4000M" in directives
    assert "#SBATCH --gres=gpu:1" in directives and "#SBATCH --cpus-per-task=2" in directives
    assert "#SBATCH --qos=high" in directives and "#SBATCH '--comment=a b'" in directives
    assert not any(line.startswith("#SBATCH --wrap") for line in lines)
    assert any(line.startswith("#SBATCH --partition='debug #SBATCH --wrap=touch /tmp/pwned'") for line in lines)
    sge = render_template("sge.sh.j2", {**common, "kind": "sge"})
    assert "#$ -l h_rt=1:30:00" in sge and "#$ -l h_vmem=4000M" in sge and "#$ -pe smp 2" in sge
    assert "#$ -N nero-k-1-a1" in sge
    ssh = render_template("ssh.sh.j2", {**common, "kind": "ssh", "gpu_pool": "0,1", "gpu_claims": GPU_CLAIMS})
    assert "NERO_GPUS_WANTED=1" in ssh and "NERO_GPU_POOL=0,1" in ssh
    # the local cluster waits for GPUs with the same block as ssh hosts, claims in the same host-wide
    # folder (the host's NERO_GPU_CLAIMS overrides it); without gpus, neither has it
    local = render_template("local.sh.j2", {**common, "kind": "local", "gpu_pool": "", "gpu_claims": GPU_CLAIMS})
    assert "NERO_GPUS_WANTED=1" in local and f"NERO_GPU_CLAIMS=${{NERO_GPU_CLAIMS:-{GPU_CLAIMS}}}" in local
    assert local[local.index("NERO_GPUS_WANTED"):] == ssh[ssh.index("NERO_GPUS_WANTED"):].replace(
        "NERO_GPU_POOL=0,1", "NERO_GPU_POOL=''")
    no_gpus = {**common, "resources": {"time": 90}}
    assert "NERO_GPUS_WANTED" not in render_template("local.sh.j2", {**no_gpus, "kind": "local"})
    assert "NERO_GPUS_WANTED" not in render_template("ssh.sh.j2", {**no_gpus, "kind": "ssh"})
    for name, script in (("slurm", text), ("sge", sge), ("ssh", ssh), ("local", local)):
        p = tmp_path / f"{name}.sh"
        p.write_text(script)
        assert subprocess.run(["bash", "-n", str(p)]).returncode == 0, name


# --------------------------------------------------------------------------- code shipping
def test_code_snapshot_git_tracked_files_or_include_list(tmp_path: Path):
    root = tmp_path / "code"
    root.mkdir()
    (root / "train.py").write_text("print(1)\n")
    (root / "data.bin").write_bytes(b"x" * 10)
    (root / "runs").mkdir()
    (root / "runs" / "out.log").write_text("no")
    plain = codeship.list_files(root)
    assert plain == ["data.bin", "train.py"]  # no git, no include list: all but nero's/VCS/cache folders
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x"}
    subprocess.run(["git", "init", "-q", str(root)], check=True, env=env)
    subprocess.run(["git", "-C", str(root), "add", "train.py"], check=True, env=env)
    subprocess.run(["git", "-C", str(root), "commit", "-qm", "x"], check=True, env=env)
    assert codeship.list_files(root) == ["train.py"]  # git-tracked only
    codeship._snapshots.clear()
    h1 = codeship.snapshot(root).hash
    (root / "train.py").write_text("print(2)\n")  # an uncommitted edit counts
    codeship._snapshots.clear()
    h2 = codeship.snapshot(root).hash
    assert h1 != h2
    (root / ".neroinclude").write_text("# what the job needs\n*.py\ndata.bin\n!secret*\n")
    (root / "secret.py").write_text("x")
    assert codeship.list_files(root) == ["data.bin", "train.py"]
    codeship._snapshots.clear()
    snap = codeship.snapshot(root)
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(codeship.archive(snap)), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == ["data.bin", "train.py"]


# --------------------------------------------------------------------------- the agent, locally
def _wait(pred, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_agent_on_this_machine_submits_polls_adopts_and_cancels_detached_jobs(tmp_path: Path):
    """The ssh backend through the local shell: the same agent, minus the network."""
    work = tmp_path / "work"
    b = SshBackend(Cluster("here", ClusterKind.SSH, workdir=str(work)), str(tmp_path))
    info = b.connect()
    assert info.workdir == str(work) and (work / ".nero").is_dir() and info.disk_free_mb > 0
    body = ('cd "$(dirname "$0")"; echo $$ > pid; printf \'{"host": "h", "time": 1}\\n\' > started\n'
            "for i in 1 2 3; do echo \"step=$i loss=0.$i\"; done >> stdout.log\n")
    jobs = [JobScript("fast", 1, str(work / "fast"), body + "echo 0 > exit_code\n", "{}", "here", "c",
                      job_name="nero-fast"),
            JobScript("slow", 1, str(work / "slow"), body + "sleep 60\n", "{}", "here", "c", job_name="nero-slow")]
    subs = b.submit(jobs)
    assert all(s.job_id.isdigit() and not s.error for s in subs)
    assert (work / "slow" / "job_id").read_text().strip() == subs[1].job_id
    handles = [Handle(s.key, 1, s.job_id, j.run_dir, Offsets()) for s, j in zip(subs, jobs, strict=True)]
    st = _wait(lambda: (lambda r: r if r[0].exit_code == 0 and r[1].stdout.count(b"\n") == 3 else None)(b.poll(handles)))
    assert st[0].stdout == b"step=1 loss=0.1\nstep=2 loss=0.2\nstep=3 loss=0.3\n" and st[0].complete
    assert not st[0].alive and st[1].alive and st[1].exit_code is None
    # offsets: only what was appended since
    later = b.poll([Handle("slow", 1, subs[1].job_id, jobs[1].run_dir, Offsets(stdout=len(st[1].stdout)))])
    assert later[0].stdout == b""
    # adoption finds the job by the id written in its run directory
    found = b.adopt([Handle("slow", 1, "", jobs[1].run_dir, Offsets()), Handle("never", 1, "", str(work / "x"))])
    assert found["slow"].job_id == subs[1].job_id and "never" not in found
    before = b.shell.round_trips
    assert b.cancel([handles[1]]) == {}
    b.poll(handles)
    assert b.shell.round_trips == before + 2  # one round trip per operation, however many jobs
    _wait(lambda: not b.poll([handles[1]])[0].alive)


def test_every_kind_of_backend_implements_the_whole_protocol(tmp_path: Path):
    from orchestrator.backends import Backend, make_backend

    members = [m for m in dir(Backend) if not m.startswith("_")] + list(Backend.__annotations__)
    for kind in ClusterKind:
        b = make_backend(Cluster(kind.value, kind, host="" if kind is ClusterKind.LOCAL else "h"), str(tmp_path))
        assert [m for m in members if not hasattr(b, m)] == [], kind
        assert b.remote is (kind is not ClusterKind.LOCAL)


def test_local_backend_runs_the_agents_operations_in_process(tmp_path: Path):
    """Local jobs: detached processes started, polled, read, adopted and cancelled by the
    agent's own operations, in this process (no shell, no round trip), and reaped."""
    from orchestrator.backends import make_backend
    from orchestrator.backends.agent import SPAWNED

    b = make_backend(Cluster("local"), str(tmp_path))
    root = b.run_root()
    assert root == str(tmp_path / "runs") and b.ship_code(str(tmp_path), "") == (str(tmp_path), None)
    body = 'echo $$ > pid; printf \'{"host": "h", "time": 1}\\n\' > started\necho "step=1 loss=0.5" >> stdout.log\n'
    jobs = [JobScript("fast", 1, f"{root}/fast", body + "echo 0 > exit_code\n", "{}", "local", "c"),
            JobScript("slow", 1, f"{root}/slow", body + "sleep 60\n", "{}", "local", "c")]
    subs = b.submit(jobs)
    assert all(s.job_id.isdigit() and not s.error for s in subs)
    handles = [Handle(s.key, 1, s.job_id, j.run_dir, Offsets()) for s, j in zip(subs, jobs, strict=True)]
    st = _wait(lambda: (lambda r: r if r[0].exit_code == 0 and r[1].stdout else None)(b.poll(handles)))
    assert st[0].stdout == b"step=1 loss=0.5\n" and not st[0].alive and st[1].alive
    assert b.read_output(jobs[0].run_dir, "stdout.log", tail=5).data == b"=0.5\n"
    assert b.read_output(jobs[0].run_dir, "stdout.log", offset=5).ended
    found = b.adopt([Handle("slow", 1, "", jobs[1].run_dir, Offsets())])
    assert found["slow"].job_id == subs[1].job_id
    assert b.cancel([handles[1]]) == {}
    _wait(lambda: not b.poll([handles[1]])[0].alive)
    assert not [p for p in SPAWNED if p.pid in {int(s.job_id) for s in subs}]  # reaped: no zombie left


def test_agent_bounds_the_bytes_read_per_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import orchestrator.backends.client as remote

    work = tmp_path / "w"
    d = work / "big"
    d.mkdir(parents=True)
    (d / "stdout.log").write_bytes(b"x=1\n" * 1000)
    monkeypatch.setattr(remote, "PER_FILE_LIMIT", 1000)
    b = SshBackend(Cluster("here", ClusterKind.SSH, workdir=str(work)), str(tmp_path))
    st = b.poll([Handle("big", 1, "", str(d), Offsets())])[0]
    assert len(st.stdout) == 1000 and not st.complete
    st = b.poll([Handle("big", 1, "", str(d), Offsets(stdout=3000))])[0]
    assert len(st.stdout) == 1000 and st.complete


# --------------------------------------------------------------------------- shared array scripts
HOSTILE_VALUES = ["a b", "it's", "$HOME", "`id`", 'say "hi"', "x;y", "tab\there", "line\nbreak", "back\\slash", "ünï"]


def test_bash_words_keep_every_value_whole_on_one_line():
    from orchestrator.jobs import bash_word

    for v in [*HOSTILE_VALUES, "", "nul\0byte", "\x7f\x01"]:
        word = bash_word(v)
        assert "\n" not in word
        out = subprocess.run(["bash", "-c", 'eval "V=$1"; printf %s "$V"', "x", word], capture_output=True, text=True)
        assert out.stdout == v.replace("\0", ""), (v, word)


def test_array_tasks_write_their_run_folders_from_one_values_file(tmp_path: Path):
    """The job side of a shared-script job array, run here with bash as Slurm would run
    each task (SLURM_ARRAY_TASK_ID set): each task makes its run folder and files from its
    line of `values`, its program gets its values as written, and a second start of the same
    task keeps the files the first one wrote."""
    import shlex

    from orchestrator.jobs import runnable_script, script_context, shared_context, shared_values
    from orchestrator.model import Desired

    project = tmp_path / "project"
    project.mkdir()
    root = tmp_path / "work"
    workdir = tmp_path / "code"
    workdir.mkdir()
    (workdir / "probe.py").write_text("import json, os, sys\n"
                                      "json.dump(sys.argv[1:], open(os.environ['NERO_RUN_DIR'] + '/argv.json', 'w'))\n")
    cluster = Cluster(name="slurm", kind=ClusterKind.SLURM, partition="debug")
    jobs = []
    for i, v in enumerate(HOSTILE_VALUES):
        key = f"q[v={v}]"
        spec = RunSpec(key, "q", 2, (("v", v),), "", ("slurm",), (), "", "", "", Desired.RUN, 0, (), 0, "", (), "")
        run_dir = f"{root}/q/{i}/1"
        command = f"python3 probe.py {shlex.quote(v)} 'two words' > \"$NERO_RUN_DIR/argv.out\"\necho done=1"
        context = script_context(spec, cluster, attempt=1, run_dir=run_dir, workdir=str(workdir), command=command,
                                 python="", resume=False, prev_run_dir="", job_name=job_name(key, 1, run_dir),
                                 rendered_at="now")
        shared = render_template("slurm.sbatch.j2", shared_context(context))
        values = shared_values(run_dir=run_dir, key=key, experiment="q", attempt=1, resume=False, prev_run_dir="",
                               job_name=job_name(key, 1, run_dir), workdir=str(workdir), command=command)
        jobs.append(JobScript(key, 1, run_dir, shared, json.dumps({"v": v}), "slurm", command,
                              job_name=job_name(key, 1, run_dir), values=values))
    assert len({id(j.text) for j in jobs}) == len(jobs) and len({j.text for j in jobs}) == 1  # one text for all
    # a run's own job.sh says its own name and output where sbatch reads them
    own = runnable_script(jobs[0].text, jobs[0].values)
    assert f"#SBATCH --job-name={jobs[0].job_name}\n" in own and f"#SBATCH --output={jobs[0].run_dir}/slurm-%j.out" in own
    assert "NERO_V_" not in own.split("set -u")[0].split("# this run's own values")[0]
    units, extras = SlurmBackend(cluster, str(project)).units(jobs, str(root))
    [unit] = units
    assert unit["lazy"] and unit["array"] and not extras and unit["runs"] == [j.run_dir for j in jobs]
    for path, text in unit["files"].items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    assert len(Path(f"{unit['record']}/values").read_text().splitlines()) == len(jobs)
    array_sh = f"{unit['record']}/array.sh"
    for i, j in enumerate(jobs):
        env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(i), "SLURM_JOB_ID": f"77{i}"}
        done = subprocess.run(["bash", array_sh], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        d = Path(j.run_dir)
        assert json.loads((d / "argv.json").read_text()) == [HOSTILE_VALUES[i], "two words"]
        assert (d / "stdout.log").read_text() == "done=1\n" and (d / "exit_code").read_text() == "0\n"
        assert json.loads((d / "params.json").read_text()) == {"v": HOSTILE_VALUES[i]}
        submit = json.loads((d / "submit.json").read_text())
        assert submit["index"] == i and submit["owner"]["key"] == j.key and submit["record"] == unit["record"]
        assert (d / "job.sh").read_text() == runnable_script(j.text, j.values)
        assert os.access(d / "job.sh", os.X_OK) and (d / ".tick").is_fifo() and (d / "slurm.out").is_symlink()
    # the same task started again (a requeue, a duplicate): the files stay, the claim stops the copy
    first = Path(jobs[0].run_dir)
    before = (first / "job.sh").stat().st_mtime_ns
    done = subprocess.run(["bash", array_sh], env={**os.environ, "SLURM_ARRAY_TASK_ID": "0", "SLURM_JOB_ID": "999"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "already started" in done.stderr
    assert (first / "job.sh").stat().st_mtime_ns == before
    # a task past the end of the file fails, saying so
    done = subprocess.run(["bash", array_sh], env={**os.environ, "SLURM_ARRAY_TASK_ID": "99", "SLURM_JOB_ID": "9"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 97 and "no task 99" in done.stderr


def test_hello_answers_the_site_limits_from_the_agents_keep_within_the_refresh_time(tmp_path: Path):
    """`sacctmgr` costs every nero command's first request 0.2 s: the agent keeps a hello
    command's output for `cache_s` (HELLO_REFRESH_S) and runs it again after, or when asked."""
    from orchestrator.backends import agent

    def hello(cache_s: float) -> str:
        reply = agent.serve({"op": "hello", "workdir": str(tmp_path / "w"), "tools": [],
                             "commands": [["sh", "-c", "echo $$"]], "cache_s": cache_s}, None)
        assert reply.header["ok"], reply.header
        out = reply.header["outputs"][0]
        start, size = out["out"]
        return b"".join(reply.blobs)[start:start + size].decode()

    first = hello(600)
    assert hello(600) == first  # kept
    assert hello(0) != first  # asked afresh (nero's refresh)
    kept = next((tmp_path / "w" / ".nero" / "hello").iterdir())
    os.utime(kept, (time.time() - 700, time.time() - 700))
    again = hello(600)
    assert again != first and hello(600) == again  # older than cache_s: run again, then kept


def test_a_job_arrays_words_made_from_pieces_equal_the_whole_quoted():
    """`run_lead_word` (a values file's line, escaped piece by piece) is `bash_word` of the
    whole `run_lead`, for values with quotes, backslashes, control characters, NUL and
    non-ASCII, and a lead with a reference no run sets."""
    import random

    from orchestrator.jobs import SHARED, bash_word, run_lead, run_lead_word

    lead = ("#!/bin/bash\n#SBATCH --job-name='\"${NERO_V_JOB_NAME}\"'\n#SBATCH --output=\"${NERO_V_RUN_DIR}\"/o-%j\n"
            "# run \"${NERO_V_KEY}\", attempt \"${NERO_V_ATTEMPT}\" \"${NERO_V_OTHER}\"\n# it's\x01 \\ done\n")
    chars = "aZ09_@%+=:,./-'\" \t\n\x01\x00é€$`\\[]{}*?~!#&;<>|()\x7f"
    rng = random.Random(2)
    for _ in range(5000):
        values = tuple((var, "".join(rng.choice(chars) for _ in range(rng.randint(0, 6)))) for _, var in SHARED)
        assert run_lead_word(lead, values) == bash_word(run_lead(lead, values)), values


def test_parameters_written_without_an_encoder_read_as_json_writes_them():
    """The store's `params` column and the essence's parameters (`schema.params_json`) are
    byte for byte what `json.dumps` writes, NaN, infinities, -0.0, bools, None, escapes and
    a repeated name included."""
    import json
    import random

    from orchestrator.state.schema import params_json

    values = [0, -1, 10**20, 0.1, -0.0, 1e300, float("nan"), float("inf"), "a\"b\u00e9\n", "", True, False, None]
    rng = random.Random(5)
    for _ in range(5000):
        pairs = tuple((k, rng.choice(values)) for k in rng.sample(["lr", "b", "z", "params", "é", "a b"], rng.randint(0, 5)))
        assert params_json(pairs) == json.dumps([[k, v] for k, v in pairs], default=str)
        assert params_json(pairs, compact=True, ordered=True) == json.dumps(dict(pairs), sort_keys=True, default=str,
                                                                            separators=(",", ":"))
    twice = (("a", 1), ("a", 2))
    assert params_json(twice, compact=True, ordered=True) == '{"a":2}'


def test_a_job_that_ends_while_it_is_polled_is_not_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A poll reads a run's status files, then asks whether its process lives: a job that
    wrote its exit code and ended in between was reported dead without an exit code, and
    the run LOST (seen twice under load). The job's end is placed in that window here (it
    cannot be timed from outside): the poll says it was alive, and the next one reads its end."""
    import signal

    from orchestrator.backends import agent

    run = tmp_path / "run"
    run.mkdir()
    job = subprocess.Popen(["sleep", "30"], cwd=run)  # a real process whose folder is the run's
    (run / "pid").write_text(f"{job.pid}\n")
    (run / "started").write_text(f"{time.time()}\n")
    real = agent.process_alive

    def ends_now(pid: int, run_dir: str) -> bool:  # the job ends right after its files were read
        (run / "exit_code").write_text("0\n")
        job.send_signal(signal.SIGKILL)
        job.wait()
        return real(pid, run_dir)

    monkeypatch.setattr(agent, "process_alive", ends_now)

    def poll() -> dict:
        reply = agent.serve({"op": "poll", "workdir": str(tmp_path), "runs": [{"dir": str(run), "check_pid": True}]},
                            None)
        assert reply.header["ok"], reply.header
        return reply.header["runs"][0]

    first = poll()
    assert first["files"]["exit_code"] is None and first["alive"] is True
    second = poll()
    assert second["files"]["exit_code"] == "0" and "alive" not in second
