"""The `slurm` backend: pure command builders and output parsers, plus the thin class
that connects them to nero's agent on the login node.

* Submission: a job's script is `templates/slurm.sbatch.j2` (job name = run key +
  attempt). Jobs of one pass whose `#SBATCH` resources are identical go as one job
  array (`arrays.py`, chunked at the site's MaxArraySize), each task running its own run
  directory's `job.sh`; a job alone goes with `sbatch --parsable job.sh`. Array tasks' ids are
  `<array id>_<index>`. The site's MaxSubmitJobs / MaxJobCount bound the capacity, so a
  large sweep goes in chunks the site accepts.
* State: nero's own jobs only, by id, so a pass costs what the live runs cost, never the
  user's history: `squeue -r -t all -j ID` per job or array while there are few (one
  lookup each in slurmctld), `squeue -u USER -j ID,ID,…` beyond (slurmctld sends the
  user's jobs to squeue on the login node, only nero's come back); then `sacct -P -j`
  for the jobs squeue no longer knows, falling back to `scontrol -o show job` and
  finally to the run directory's files when accounting is off. Text output only: the
  JSON of Slurm 22.05 is wrong.
* COMPLETED, FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, PREEMPTED, BOOT_FAIL
  and DEADLINE end a run with Slurm's own reason (`TimeLimit`, `OutOfMemory`, …).
* Cancel: `scancel` (ids of finished jobs are not errors).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from ..model import ClusterKind, Handle, QueueInfo
from .arrays import SLURM, ArrayBackend
from .client import HostInfo, SchedState

__all__ = ["GONE", "PER_JOB_LISTING", "SACCT", "SCONTROL", "SQUEUE", "SQUEUE_MANY", "SlurmBackend", "expand_array_id",
           "listing_query", "parse_config", "parse_exit_code", "parse_limit", "parse_names", "parse_sacct",
           "parse_scontrol", "parse_sinfo", "parse_squeue"]

FINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
                   "BOOT_FAIL", "DEADLINE", "REVOKED"})
DEFAULT_MAX_ARRAY = 1001  # Slurm's default MaxArraySize
DEFAULT_CAPACITY = 5000
SQUEUE = ["squeue", "-h", "-r", "-t", "all", "-j", "{id}", "-o", "%i|%T|%r"]
SQUEUE_MANY = ["squeue", "-h", "-r", "-t", "all", "-u", "{user}", "-j", "{ids}", "-o", "%i|%T|%r"]
PER_JOB_LISTING = 16  # jobs or arrays asked about one by one; beyond, one squeue per chunk
GONE = r"Invalid job id"  # squeue -j on a job slurmctld has forgotten (then sacct tells)
SQUEUE_NAMES = ["squeue", "-h", "-r", "-t", "all", "-u", "{user}", "-o", "%i|%j"]
SACCT = ["sacct", "-X", "-P", "-n", "-o", "JobID,State,ExitCode,Reason", "-j", "{ids}"]
SACCT_NAMES = ["sacct", "-X", "-P", "-n", "-o", "JobID,JobName", "-S", "now-30days", "--name={names}"]
SCONTROL = ["scontrol", "-o", "show", "job", "{id}"]
SINFO = ["sinfo", "-h", "-o", "%R|%a|%C|%D|%G|%m|%l"]


# --------------------------------------------------------------------------- parsers
def _state(word: str, reason: str = "", exit_code: int | None = None) -> SchedState:
    word = word.strip()
    state, _, rest = word.partition(" ")  # "CANCELLED by 1001"
    reason = reason.strip()
    if reason in ("None", "(null)"):
        reason = ""
    if rest and not reason:
        reason = rest.strip()
    return SchedState(state, state not in FINAL, reason, exit_code)


def parse_exit_code(text: str) -> int | None:
    """sacct/scontrol `ExitCode` `3:0` → 3; `0:9` (killed by signal 9) → 137; '' → None."""
    m = re.fullmatch(r"\s*(\d+):(\d+)\s*", text or "")
    if not m:
        return None
    code, sig = int(m.group(1)), int(m.group(2))
    return 128 + sig if code == 0 and sig else code


def parse_squeue(text: str) -> dict[str, SchedState]:
    """`squeue -h -r -o '%i|%T|%r'` → job id → state."""
    out = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and parts[0]:
            out[parts[0]] = _state(parts[1], parts[2] if len(parts) > 2 else "")
    return out


def expand_array_id(jid: str) -> list[str]:
    """`123_[1-3,7%2]` (pending tasks as sacct lists them) → ['123_1', '123_2', '123_3', '123_7']."""
    m = re.fullmatch(r"(\d+)_\[([0-9,\-%]+)\]", jid)
    if not m:
        return [jid]
    out = []
    for part in m.group(2).split("%")[0].split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            if a.isdigit() and b.isdigit():
                out += [f"{m.group(1)}_{i}" for i in range(int(a), int(b) + 1)]
        elif part.isdigit():
            out.append(f"{m.group(1)}_{part}")
    return out


def parse_sacct(text: str) -> dict[str, SchedState]:
    """`sacct -X -P -n -o JobID,State,ExitCode,Reason` → job id → state."""
    out = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0]:
            continue
        st = _state(parts[1], parts[3] if len(parts) > 3 else "",
                    parse_exit_code(parts[2]) if len(parts) > 2 else None)
        for jid in expand_array_id(parts[0]):
            out[jid] = st
    return out


def parse_scontrol(text: str) -> dict[str, SchedState]:
    """`scontrol -o show job` (one line per job) → job id → state."""
    out = {}
    for line in text.splitlines():
        fields = dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", line))
        if "JobId" not in fields or "JobState" not in fields:
            continue
        jid = fields["JobId"]
        if fields.get("ArrayJobId") and fields.get("ArrayTaskId", "").isdigit():
            jid = f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}"
        out[jid] = _state(fields["JobState"], fields.get("Reason", ""), parse_exit_code(fields.get("ExitCode", "")))
    return out


def parse_names(text: str) -> dict[str, list[str]]:
    """`squeue -o '%i|%j'` or `sacct -o JobID,JobName` → job name → base job ids
    (an array task `123_4` counts as its array, `123`)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and parts[0]:
            base = parts[0].split("_")[0].split(".")[0]
            ids = out.setdefault(parts[1], [])
            if base not in ids:
                ids.append(base)
    return out


def parse_config(text: str) -> dict[str, str]:
    """`scontrol show config` → {key: value}."""
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k.strip()] = v.strip()
    return out


def parse_limit(text: str) -> int | None:
    """`sacctmgr -nP show assoc format=MaxSubmitJobs,MaxJobs,GrpSubmitJobs` → the smallest set limit."""
    values = [int(v) for line in text.splitlines() for v in line.split("|") if v.strip().isdigit()]
    return min(values) if values else None


def parse_sinfo(text: str) -> tuple[QueueInfo, ...]:
    """`sinfo -h -o '%R|%a|%C|%D|%G|%m|%l'` → partitions with idle/total CPUs."""
    parts: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        f = line.strip().split("|")
        if len(f) < 4:
            continue
        p = parts.setdefault(f[0], {"state": f[1], "idle": 0, "total": 0, "nodes": 0, "gres": set(), "mem": "",
                                    "limit": ""})
        cpus = f[2].split("/")  # allocated/idle/other/total
        if len(cpus) == 4 and all(c.isdigit() for c in cpus):
            p["idle"] += int(cpus[1])
            p["total"] += int(cpus[3])
        if f[3].isdigit():
            p["nodes"] += int(f[3])
        if len(f) > 4 and f[4] not in ("(null)", ""):
            p["gres"].add(f[4])
        if len(f) > 5:
            p["mem"] = f[5]
        if len(f) > 6:
            p["limit"] = f[6]
    out = []
    for name, p in parts.items():
        detail = f"{p['nodes']} node{'s' if p['nodes'] != 1 else ''}, {p['mem']} MB/node, time limit {p['limit']}"
        if p["gres"]:
            detail += f", gres {', '.join(sorted(p['gres']))}"
        out.append(QueueInfo(name, p["state"], detail, p["idle"], p["total"]))
    return tuple(out)


# --------------------------------------------------------------------------- builders
def listing_query(job_ids: Iterable[str]) -> dict[str, Any]:
    """The poll's scheduler request for these jobs: squeue by id (an array task counts
    as its array), then sacct / scontrol for the ids squeue lacks."""
    jobs = sorted({j.split("_")[0] for j in job_ids}, key=lambda j: (len(j), j))
    listing = SQUEUE if len(jobs) <= PER_JOB_LISTING else SQUEUE_MANY
    return {"list": listing, "jobs": jobs, "gone": GONE, "present": r"^(\S+?)\|", "detail": [SACCT, SCONTROL],
            "chunk": 300}


class SlurmBackend(ArrayBackend):
    kind = ClusterKind.SLURM
    tools = ("sbatch", "squeue", "scancel")
    default_capacity = DEFAULT_CAPACITY
    listing_hint = "is slurmctld up? `squeue` on the login node should answer; runs keep their state"
    cancel_command = ("scancel",)
    cancel_refused = re.compile(r"denied|not permitted|access", re.I)

    dialect = SLURM
    default_max_array = DEFAULT_MAX_ARRAY
    site_limit: int | None = None

    def hello_commands(self) -> list[list[str]]:
        return [["scontrol", "show", "config"],
                ["sacctmgr", "-nP", "show", "assoc", "where", "user={user}",
                 "format=MaxSubmitJobs,MaxJobs,GrpSubmitJobs,GrpJobs"]]

    def learn(self, info: HostInfo) -> None:
        if info.outputs and info.outputs[0][0] == 0:
            conf = parse_config(info.outputs[0][1])
            if conf.get("MaxArraySize", "").isdigit():
                self.max_array = max(1, int(conf["MaxArraySize"]))
            if conf.get("MaxJobCount", "").isdigit():
                self.site_limit = int(conf["MaxJobCount"])
        if len(info.outputs) > 1 and info.outputs[1][0] == 0:
            user_limit = parse_limit(info.outputs[1][1])
            if user_limit is not None:
                self.site_limit = min(user_limit, self.site_limit or user_limit)

    def site_capacity(self) -> int | None:
        return min(self.site_limit, DEFAULT_CAPACITY) if self.site_limit else None

    def query(self, handles: Sequence[Handle]) -> dict[str, Any]:
        return listing_query([h.job_id for h in handles if h.job_id])

    def parse_listing(self, text: str) -> dict[str, SchedState]:
        return parse_squeue(text)

    def parse_detail(self, text: str, alt: int, rc: int) -> dict[str, SchedState]:
        if alt == 0:  # sacct: a failure means accounting is off; scontrol fails for each unknown id
            return parse_sacct(text) if rc == 0 else {}
        return parse_scontrol(text)

    def adopt_query(self) -> tuple[list[str], list[str]]:
        return SQUEUE_NAMES, SACCT_NAMES

    def parse_names(self, text: str, detail: bool) -> dict[str, list[str]]:
        return parse_names(text)

    def resource_commands(self) -> list[list[str]]:
        return [SINFO]

    def queues(self, outputs: list[tuple[int, str, str]]) -> tuple[QueueInfo, ...]:
        return parse_sinfo(outputs[0][1]) if outputs and outputs[0][0] == 0 else ()
