"""The `slurm` backend: pure command builders and output parsers, plus the thin class
that connects them to nero's agent on the login node.

* Submission: a job's script is `templates/slurm.sbatch.j2` (job name = run key +
  attempt). Jobs of one pass whose `#SBATCH` resources are identical go as one job
  array (chunked at the site's MaxArraySize), each task running its own run directory's
  `job.sh`; a job alone goes with `sbatch --parsable job.sh`. Array tasks' ids are
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

import hashlib
import json
import re
import shlex
from collections.abc import Iterable, Sequence
from typing import Any

from ..jobs import bash_word, run_lead_word, shared_parts
from ..model import Cluster, ClusterKind, Handle, JobScript, QueueInfo
from ..paths import ClusterPaths
from .client import AgentBackend, HostInfo, SchedState, Units, one_unit_per_job
from .shell import Shell

__all__ = ["GONE", "PER_JOB_LISTING", "SACCT", "SCONTROL", "SQUEUE", "SQUEUE_MANY", "SlurmBackend", "array_script", "batch_name", "batch_values",
           "expand_array_id", "group", "header", "listing_query", "parse_config", "parse_exit_code", "parse_limit",
           "parse_names", "parse_sacct", "parse_scontrol", "parse_sinfo", "parse_squeue", "values_array_script"]

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
_DIRECTIVE_SKIP = re.compile(r"^#SBATCH\s+(?:--job-name|-J|--output|-o|--error|-e|--array|-a)\b")


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


def header(text: str) -> tuple[str, ...]:
    """The `#SBATCH` lines that shape a job's resources (not its name or output files)."""
    lines = []
    for line in text.splitlines()[1:]:
        s = line.strip()
        if s.startswith("#SBATCH"):
            if not _DIRECTIVE_SKIP.match(s):
                lines.append(s)
        elif s and not s.startswith("#"):
            break  # sbatch stops reading directives at the first command
    return tuple(lines)


def group(jobs: Sequence[JobScript], max_array: int) -> list[list[JobScript]]:
    """Jobs with identical resources, in submission order, in chunks of at most `max_array`;
    jobs of one shared script (JobScript.values) apart from the others, one group per script."""
    groups: dict[tuple[object, ...], list[JobScript]] = {}
    heads: dict[str, tuple[str, ...]] = {}  # a shared script is one string for many jobs: read once
    for j in jobs:
        if j.text not in heads:
            heads[j.text] = header(j.text)
        groups.setdefault((heads[j.text], j.text if j.values else None), []).append(j)
    out = []
    for members in groups.values():
        for k in range(0, len(members), max_array):
            out.append(members[k:k + max_array])
    return out


def array_script(lines: Iterable[str], name: str, batch_dir: str, count: int) -> str:
    """The script of a job array whose task i runs the i-th run directory's job.sh."""
    body = "\n".join(lines)
    return (f"#!/bin/bash\n{body}\n#SBATCH --job-name={name}\n#SBATCH --output={batch_dir}/%a.out\n"
            f"#SBATCH --array=0-{count - 1}\n"
            f"# nero job array: task i runs the job.sh of line i+1 of {batch_dir}/tasks\n"
            f'RUN_DIR=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {batch_dir}/tasks)\n'
            f'[ -n "$RUN_DIR" ] || {{ echo "nero: no task $SLURM_ARRAY_TASK_ID in {batch_dir}/tasks" >&2; exit 97; }}\n'
            'cd "$RUN_DIR" && exec bash ./job.sh\n')


def values_array_script(lines: Iterable[str], name: str, batch_dir: str, count: int) -> str:
    """The script of a job array of runs that share one script: task i takes line i+1 of
    the batch's `values` (each value one quoted shell word, `jobs.bash_word`), makes its run
    folder and the run's files (job.sh = the run's lines + the shared `body.sh`; params.json;
    submit.json; the .tick FIFO; slurm.out) unless a start of the same run made them, and
    runs its job.sh. Bash builtins but for mkdir, chmod, mkfifo and ln."""
    body = "\n".join(lines)
    b = shlex.quote(batch_dir)
    return (f"#!/bin/bash\n{body}\n#SBATCH --job-name={name}\n#SBATCH --output={batch_dir}/%a.out\n"
            f"#SBATCH --array=0-{count - 1}\n"
            f"# nero job array: task i makes the run folder of line i+1 of {batch_dir}/values and runs its job.sh\n"
            f"NERO_BATCH={b}\n"
            "NERO_LINE=()\n"
            'mapfile -t -s "$SLURM_ARRAY_TASK_ID" -n 1 NERO_LINE < "$NERO_BATCH/values"\n'
            '[ -n "${NERO_LINE[0]:-}" ] || { echo "nero: no task $SLURM_ARRAY_TASK_ID in $NERO_BATCH/values" >&2; exit 97; }\n'
            'NERO_T_DIR= NERO_T_SCRIPT= NERO_T_PARAMS= NERO_T_SUBMIT=\n'
            'eval "${NERO_LINE[0]}"  # NERO_T_DIR=… NERO_T_SCRIPT=… NERO_T_PARAMS=… NERO_T_SUBMIT=…, each one quoted word\n'
            '[ -n "$NERO_T_DIR" ] || { echo "nero: line $((SLURM_ARRAY_TASK_ID + 1)) of $NERO_BATCH/values names no run folder" >&2; exit 97; }\n'
            'mkdir -p -- "$NERO_T_DIR" && cd -- "$NERO_T_DIR" || { echo "nero: cannot make the run folder $NERO_T_DIR" >&2; exit 97; }\n'
            'if [ ! -s job.sh ]; then  # a requeued or duplicated task finds them made\n'
            '    NERO_BODY=\n'
            '    IFS= read -r -d \'\' NERO_BODY < "$NERO_BATCH/body.sh"\n'
            '    [ -n "$NERO_BODY" ] || { echo "nero: cannot read $NERO_BATCH/body.sh" >&2; exit 97; }\n'
            '    printf \'%s\' "$NERO_T_PARAMS" > params.json\n'
            '    printf \'%s\' "$NERO_T_SUBMIT" > submit.json\n'
            '    printf \'%s%s\' "$NERO_T_SCRIPT" "$NERO_BODY" > job.sh.tmp && chmod +x job.sh.tmp && mv -f job.sh.tmp job.sh || exit 97\n'
            'fi\n'
            '[ -p .tick ] || mkfifo .tick 2>/dev/null\n'
            '[ -L slurm.out ] || ln -s "$NERO_BATCH/$SLURM_ARRAY_TASK_ID.out" slurm.out 2>/dev/null\n'
            'exec bash ./job.sh\n')


def batch_values(jobs: Sequence[JobScript], name: str, batch_dir: str, owner: dict[str, str]) -> tuple[str, str]:
    """The `values` file of a job array of runs that share one script (line i: task i's run
    folder, its job.sh's own lines, params.json and submit.json, each one quoted word) and
    the shared `body.sh`."""
    parts = shared_parts(jobs[0].text)
    assert parts is not None, "a shared script whose body cannot be shared"  # render_shared checked it
    lead, body = parts
    lines = []
    # each run's submit.json: json.dumps({"job_name": …, "batch": name, "index": i, "record":
    # batch_dir, "owner": {**owner, "key": …, "attempt": …}}), its fixed parts encoded once
    s = json.encoder.encode_basestring_ascii
    middle = f', "batch": {s(name)}, "index": '
    record = f', "record": {s(batch_dir)}, "owner": {{' + "".join(
        f"{s(k)}: {s(v)}, " for k, v in owner.items() if k not in ("key", "attempt")) + '"key": '
    for i, j in enumerate(jobs):
        submit = f'{{"job_name": {s(j.job_name)}{middle}{i}{record}{s(j.key)}, "attempt": {int(j.attempt)}}}}}'
        lines.append(f"NERO_T_DIR={bash_word(j.run_dir)} NERO_T_SCRIPT={run_lead_word(lead, j.values)} "
                     f"NERO_T_PARAMS={bash_word(j.params_json)} NERO_T_SUBMIT={bash_word(submit)}\n")
    return "".join(lines), body


def batch_name(dirs: Sequence[str]) -> str:
    return "nero-batch-" + hashlib.sha1("\n".join(dirs).encode()).hexdigest()[:12]


class SlurmBackend(AgentBackend):
    kind = ClusterKind.SLURM
    tools = ("sbatch", "squeue", "scancel")
    default_capacity = DEFAULT_CAPACITY
    listing_hint = "is slurmctld up? `squeue` on the login node should answer; runs keep their state"
    cancel_command = ("scancel",)
    cancel_refused = re.compile(r"denied|not permitted|access", re.I)

    @property
    def shared_scripts(self) -> bool:  # type: ignore[override]
        return self.arrays

    def __init__(self, cluster: Cluster, project_dir: str, shell: Shell | None = None, arrays: bool = True):
        super().__init__(cluster, project_dir, shell)
        self.arrays = arrays
        self.max_array = DEFAULT_MAX_ARRAY
        self.site_limit: int | None = None

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

    def units(self, jobs: Sequence[JobScript], root: str) -> Units:
        units, extras = [], {}
        for g in group(jobs, self.max_array) if self.arrays else [[j] for j in jobs]:
            if len(g) == 1:
                one, extra = one_unit_per_job(g, "cmd", ["sbatch", "--parsable", "job.sh"])
                units += one
                extras.update(extra)
                continue
            dirs = [j.run_dir for j in g]
            name = batch_name(dirs)
            bdir = ClusterPaths(root).batch(name)
            if g[0].values:  # one shared script: each task writes its own run folder when it starts
                values, body = batch_values(g, name, bdir, self.owner())
                units.append({"kind": "cmd", "argv": ["sbatch", "--parsable", f"{bdir}/array.sh"], "cwd": bdir,
                              "runs": dirs, "array": True, "record": bdir, "lazy": True,
                              "files": {f"{bdir}/tasks": "\n".join(dirs) + "\n", f"{bdir}/values": values,
                                        f"{bdir}/body.sh": body,
                                        f"{bdir}/array.sh": values_array_script(header(g[0].text), name, bdir,
                                                                                len(g))}})
                continue
            units.append({"kind": "cmd", "argv": ["sbatch", "--parsable", f"{bdir}/array.sh"], "cwd": bdir,
                          "runs": dirs, "array": True, "record": bdir,
                          "files": {f"{bdir}/tasks": "\n".join(dirs) + "\n",
                                    f"{bdir}/array.sh": array_script(header(g[0].text), name, bdir, len(g))}})
            for i, j in enumerate(g):
                extras[j.run_dir] = {"files": {"submit.json": json.dumps({"job_name": j.job_name, "batch": name,
                                                                           "index": i, "record": bdir})},
                                     "links": {"slurm.out": f"{bdir}/{i}.out"}}
        return units, extras

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
