"""The `sge` backend (Son of / Univa / Open Grid Engine): pure command builders and
output parsers, plus the thin class that connects them to nero's agent.

* Submission: `templates/sge.sh.j2` carries the `#$` directives (name, shell, output
  files, h_rt, h_vmem, queue, project). Jobs of one pass whose directives are identical go
  as one job array (`arrays.py`: `qsub -terse -t 1-N`, chunked at the site's
  `max_aj_tasks`), task i running the i-th run's job.sh; a job alone goes with
  `qsub -terse job.sh` in its run directory. Array tasks' ids are `<job id>.<task>`, from 1.
* State: `qstat -xml -g d -u USER` lists the live jobs, one line per array task (full
  names, unlike the text form; finished jobs leave it, so it does not grow with history);
  `qacct -j ID` tells how a job or task that left the listing ended (`failed`,
  `exit_status`), read from a bounded tail of the accounting file (QACCT), once per job
  for all its tasks.
* Cancel: `qdel` (a task by its `<job id>.<task>`).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from typing import Any

from ..model import ClusterKind, Handle, QueueInfo
from .arrays import SGE, ArrayBackend
from .client import HostInfo, SchedState

__all__ = ["ACCOUNTING_TAIL", "PRESENT", "QACCT", "QSTAT", "SgeBackend", "parse_max_array", "parse_qacct",
           "parse_qacct_names", "parse_qstat_g_c", "parse_qstat_names", "parse_qstat_xml", "task_numbers"]

QSTAT = ["qstat", "-xml", "-g", "d", "-u", "{user}"]
# the ids the listing holds: `<job>` or, for an array's task, `<job>.<task>` (the agent joins the groups)
PRESENT = r"(?s)<JB_job_number>(\d+)</JB_job_number>(?:(?:(?!</job_list>).)*?<tasks>(\d+)</tasks>)?"
ACCOUNTING_TAIL = 16_000_000  # bytes of the accounting file qacct reads for the jobs of one pass
# `qacct -j ID` scans the whole accounting file, which grows with every job the site ever
# ran: the jobs that left qstat's listing are looked up in its last ACCOUNTING_TAIL bytes
# (one copy per pass, the first, possibly cut, line dropped), so a pass costs what its
# ended jobs cost, never the site's history. A job that ended before that is not found
# there: its run folder's files tell how it ended.
QACCT = ["sh", "-c",
         'a="${SGE_ROOT:-/var/lib/gridengine}/${SGE_CELL:-default}/common/accounting"; t=""; '
         f'if [ -r "$a" ] && [ "$(wc -c < "$a")" -gt {ACCOUNTING_TAIL} ]; then '
         f't=$(mktemp) && tail -c {ACCOUNTING_TAIL} "$a" | sed 1d > "$t"; fi; '
         # one qacct per job: an array's tasks are its records
         'for i in $(echo "$1" | tr , "\\n" | sed "s/[.].*//" | sort -u); do qacct ${t:+-f "$t"} -j "$i" 2>/dev/null; done; '
         '[ -z "$t" ] || rm -f "$t"', "qacct", "{ids}"]
QACCT_NAME = ["qacct", "-j", "{name}"]
QSTAT_G = ["qstat", "-g", "c"]
SCONF = ["qconf", "-sconf"]
DEFAULT_CAPACITY = 2000
DEFAULT_MAX_ARRAY = 75_000  # SGE's default max_aj_tasks


def _qstat_jobs(text: str) -> Iterator[ET.Element]:
    """The `job_list` elements of `qstat -xml` output (none if it does not parse)."""
    try:
        root = ET.fromstring(text.strip() or "<job_info/>")
    except ET.ParseError:
        return iter(())
    return root.iter("job_list")


def task_numbers(tasks: str) -> list[int]:
    """An array's task list as qstat writes it (`7`, `3-9:2`, `1,4-5:1`) → task numbers."""
    out = []
    for part in tasks.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:-(\d+)(?::(\d+))?)?\s*", part)
        if m:
            first, last, step = int(m.group(1)), int(m.group(2) or m.group(1)), int(m.group(3) or 1)
            out += range(first, last + 1, max(step, 1))
    return out


def parse_qstat_xml(text: str) -> dict[str, SchedState]:
    """`qstat -xml` → job id (array tasks `id.task`, ranges of pending tasks expanded) →
    state; `E` (error) states end a job."""
    out: dict[str, SchedState] = {}
    for job in _qstat_jobs(text):
        jid = (job.findtext("JB_job_number") or "").strip()
        if not jid:
            continue
        state = (job.findtext("state") or "").strip()
        tasks = (job.findtext("tasks") or "").strip()
        keys = [f"{jid}.{t}" for t in task_numbers(tasks)] if tasks else [jid]
        if "E" in state:
            st = SchedState("FAILED", False, f"SGE error state {state} (qstat -j {jid} says why)")
        else:
            st = SchedState(state, True, "")
        for key in keys:
            out[key] = st
    return out


def parse_qstat_names(text: str) -> dict[str, list[str]]:
    """`qstat -xml` → job name → job ids."""
    out: dict[str, list[str]] = {}
    for job in _qstat_jobs(text):
        jid = (job.findtext("JB_job_number") or "").strip()
        name = (job.findtext("JB_name") or "").strip()
        if jid and name:
            ids = out.setdefault(name, [])
            if jid not in ids:  # an array lists each task
                ids.append(jid)
    return out


def _h_rt_seconds(category: str) -> float | None:
    m = re.search(r"h_rt=(\S+)", category or "")
    if not m:
        return None
    parts = m.group(1).split(":")
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        return None
    secs = 0.0
    for n in nums:
        secs = secs * 60 + n
    return secs


def _qacct_records(text: str) -> Iterator[dict[str, str]]:
    """The records of `qacct -j` output (separated by lines of `=`), as field → value."""
    for record in re.split(r"^=+\s*$", text, flags=re.M):
        fields: dict[str, str] = {}
        for line in record.splitlines():
            k, _, v = line.partition(" ")
            if k:
                fields[k.strip()] = v.strip()
        yield fields


def parse_qacct(text: str) -> dict[str, SchedState]:
    """`qacct -j ID` (one or more records) → job id (an array's task: `id.task`) → final state."""
    out: dict[str, SchedState] = {}
    for fields in _qacct_records(text):
        jid = fields.get("jobnumber", "")
        if not jid.isdigit():
            continue
        if fields.get("taskid", "").isdigit():
            jid = f"{jid}.{fields['taskid']}"
        failed = fields.get("failed", "0")
        code_text = fields.get("exit_status", "0").split()[0] if fields.get("exit_status") else "0"
        code = int(code_text) if code_text.lstrip("-").isdigit() else None
        failed_no = failed.split()[0] if failed else "0"
        detail = failed.split(":", 1)[1].strip() if ":" in failed else ""
        if failed_no == "0" and code == 0:
            st = SchedState("COMPLETED", False, "", 0)
        elif failed_no == "37" or "h_rt" in detail:
            limit = _h_rt_seconds(fields.get("category", ""))
            wall = float(fields.get("ru_wallclock", "0").rstrip("s") or 0)
            timed_out = limit is not None and wall >= limit - 1
            st = SchedState("TIMEOUT" if timed_out else "OUT_OF_MEMORY", False, detail or f"failed {failed}", code)
        elif failed_no == "100" and code in (137, 143):
            st = SchedState("CANCELLED", False, f"killed ({detail or 'qdel'})", code)
        elif failed_no != "0":
            st = SchedState("FAILED", False, f"failed {failed}", code)
        else:
            st = SchedState("FAILED", False, f"exit_status {code}", code)
        out[jid] = st
    return out


def parse_qacct_names(text: str) -> dict[str, list[str]]:
    """`qacct -j NAME` → job name → job ids."""
    out: dict[str, list[str]] = {}
    for fields in _qacct_records(text):
        if fields.get("jobnumber", "").isdigit() and fields.get("jobname"):
            ids = out.setdefault(fields["jobname"], [])
            if fields["jobnumber"] not in ids:  # an array has a record per task
                ids.append(fields["jobnumber"])
    return out


def parse_max_array(text: str) -> int | None:
    """`qconf -sconf` → `max_aj_tasks`, the most tasks of one array (0: no limit → None)."""
    m = re.search(r"^max_aj_tasks\s+(\d+)", text, re.M)
    return int(m.group(1)) or None if m else None


def parse_qstat_g_c(text: str) -> tuple[QueueInfo, ...]:
    """`qstat -g c` → cluster queues with available/total slots."""
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 6 and not line.startswith(("CLUSTER", "-")) and f[3].isdigit() and f[4].isdigit() and f[5].isdigit():
            out.append(QueueInfo(f[0], "", f"load {f[1]}, {f[2]} used, {f[3]} reserved", int(f[4]), int(f[5])))
    return tuple(out)


class SgeBackend(ArrayBackend):
    kind = ClusterKind.SGE
    tools = ("qsub", "qstat", "qdel")
    default_capacity = DEFAULT_CAPACITY
    cancel_command = ("qdel",)
    cancel_refused = re.compile(r"not (?:the )?owner|permission denied|not allowed", re.I)  # not `denied: no such job`
    listing_hint = "is sge_qmaster up and SGE_ROOT set for non-interactive logins? runs keep their state"
    dialect = SGE
    default_max_array = DEFAULT_MAX_ARRAY

    def hello_commands(self) -> list[list[str]]:
        return [SCONF]

    def learn(self, info: HostInfo) -> None:
        if info.outputs and info.outputs[0][0] == 0:
            self.max_array = parse_max_array(info.outputs[0][1]) or DEFAULT_MAX_ARRAY

    def query(self, handles: Sequence[Handle]) -> dict[str, Any]:
        return {"list": QSTAT, "present": PRESENT, "detail": [QACCT]}
    def parse_listing(self, text: str) -> dict[str, SchedState]:
        return parse_qstat_xml(text)

    def parse_detail(self, text: str, alt: int, rc: int) -> dict[str, SchedState]:
        return parse_qacct(text) if rc == 0 else {}

    def adopt_query(self) -> tuple[list[str], list[str]]:
        return QSTAT, QACCT_NAME

    def parse_names(self, text: str, detail: bool) -> dict[str, list[str]]:
        return parse_qacct_names(text) if detail else parse_qstat_names(text)

    def resource_commands(self) -> list[list[str]]:
        return [QSTAT_G]

    def queues(self, outputs: list[tuple[int, str, str]]) -> tuple[QueueInfo, ...]:
        return parse_qstat_g_c(outputs[0][1]) if outputs and outputs[0][0] == 0 else ()
