"""`AgentBackend`: the one implementation of the `Backend` protocol. Every operation is
one request to nero's agent (`agent.py`): on a remote cluster over a reused `Shell`
connection, so one pass costs one round trip per cluster for polling and one for
submitting; on the local cluster in nero's own process.

    hello   once per connection: home, workdir, free disk, tools, scheduler limits
    submit  one transfer: code archives (once per content hash) + every job's files
            + the submission commands, all in one command
    poll    one command: the scheduler's word on the live jobs, each run's status files
            and the bytes appended to its outputs since the last pass (bounded)
    adopt   after a crash: job ids written in the run directories, else the scheduler's
            jobs by name
    cancel  one command for all jobs of the pass
    read    one output file of a run (`nero logs`)
    resources  CPUs, load, RAM, GPUs, free disk and the queues (`nero resources`)

The kinds (`local.py`, `ssh.py`, `slurm.py`, `sge.py`) say how jobs are submitted,
listed, cancelled and found by name: scheduler commands to build and their output to
parse, as pure functions and small hooks; the loops over the agent's replies live here.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BackendError
from ..identity import project_id
from ..jobs import runnable_script
from ..metric_files import MAX_FILES, needs_head
from ..model import (
    Cluster,
    ClusterKind,
    ClusterResources,
    CodeSnapshot,
    GpuInfo,
    Handle,
    JobScript,
    JobStatus,
    OutputChunk,
    QueueInfo,
    SourceChunk,
    Submission,
)
from ..paths import SUBMIT_FILE, ClusterPaths, remote_workdir
from .shell import LocalShell, Shell, Then
from .wire import BOOTSTRAP, GO, AgentReply, agent_prefix, decode_reply, encode_request

__all__ = ["AgentBackend", "HostInfo", "SchedState", "Units", "job_name", "one_unit_per_job", "parse_nvidia_smi"]

PER_FILE_LIMIT = 8 * 1024 * 1024  # bytes read per output file per pass; the rest comes next pass
PASS_BUDGET = 64 * 1024 * 1024  # bytes read per cluster per pass
HELLO_REFRESH_S = 600.0
UNKNOWN_HEARTBEAT_S = 60.0  # a job the scheduler forgot is alive only while its heartbeat is this fresh
# seconds of silence before a command counts as hung (a pass must not block for long)
OP_TIMEOUT_S = {"hello": 60.0, "poll": 120.0, "adopt": 300.0, "cancel": 120.0, "resources": 60.0, "submit": 900.0,
                "read": 60.0}
TRANSIENT = re.compile(r"unable to contact|socket timed out|temporarily unable|connection refused|timed out|"
                       r"try again|cannot reach|commlib error|unable to (?:connect|communicate)|"
                       r"slurm_persist_conn|qmaster", re.I)
CANCEL_CHUNK = 500  # job ids per scancel / qdel command

# submission units (commands or processes to start) and, per run directory, extra files/links
Units = tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]


# --------------------------------------------------------------------------- pure helpers
def job_name(key: str, attempt: int, run_dir: str = "") -> str:
    """The scheduler job name of an attempt: readable, carries the run key and the attempt,
    plus a hash of the key and the run directory, so the same run key in another project
    (or another cluster workdir) never names the same job. Safe for Slurm, SGE and shells."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("._-")[:40] or "run"
    digest = hashlib.sha1(f"{key}\0{run_dir}".encode()).hexdigest()[:8]
    return f"nero-{base}-{digest}-a{attempt}"


@dataclass(frozen=True)
class SchedState:
    """What a scheduler says about one job."""

    state: str  # the scheduler's own word: RUNNING, PENDING, TIMEOUT, r, qw, …
    live: bool
    reason: str = ""
    exit_code: int | None = None


@dataclass
class HostInfo:
    home: str
    user: str
    host: str
    cpus: int | None
    workdir: str
    disk_free_mb: float | None
    tools: dict[str, str | None]
    outputs: list[tuple[int, str, str]]  # (rc, stdout, stderr) of the hello commands
    at: float = field(default_factory=time.monotonic)


def parse_nvidia_smi(text: str | None) -> tuple[GpuInfo, ...]:
    out = []
    for line in (text or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5 or not parts[0].isdigit():
            continue

        def num(s: str) -> float | None:
            try:
                return float(s)
            except ValueError:
                return None

        out.append(GpuInfo(int(parts[0]), parts[1], num(parts[2]), num(parts[3]), num(parts[4])))
    return tuple(out)


def one_unit_per_job(jobs: Sequence[JobScript], kind: str, argv: list[str]) -> Units:
    """One submission per job, run in its run directory (`sbatch job.sh`, `qsub job.sh`,
    or a detached `bash job.sh`), its job name kept in `submit.json` for adoption."""
    units, extras = [], {}
    for j in jobs:
        units.append({"kind": kind, "argv": argv, "cwd": j.run_dir, "runs": [j.run_dir]})
        extras[j.run_dir] = {"files": {"submit.json": json.dumps({"job_name": j.job_name})}}
    return units, extras


# --------------------------------------------------------------------------- the backend
class AgentBackend(ABC):
    """A cluster driven through nero's agent. Subclasses say how jobs are submitted,
    listed, cancelled and found by name; `exchange` says how a request reaches the agent
    (through the cluster's Shell here)."""

    kind = ClusterKind.SSH
    tools: tuple[str, ...] = ()  # commands that must exist on the cluster
    default_capacity = 4
    remote = True  # each operation is a round trip to another machine
    listing_hint = ""  # what to check when the scheduler's listing fails
    cancel_command: tuple[str, ...] = ()  # scancel / qdel: the job ids follow
    cancel_refused = re.compile(r"(?!)")  # a cancel command's output saying the user may not cancel
    # many runs go as one job whose tasks write their own run folders: the reconciler renders
    # one shared script per shape for them (JobScript.values; Slurm arrays)
    shared_scripts = False

    def __init__(self, cluster: Cluster, project_dir: str, shell: Shell | None = None):
        self.cluster = cluster
        self.project_dir = project_dir
        self._shell = shell
        self.info: HostInfo | None = None
        self._shipped: set[str] = set()  # code hashes known to be on the cluster
        self.last_poll_bytes = 0

    # ------------------------------------------------------------ plumbing
    @property
    def shell(self) -> Shell:
        if self._shell is None:
            if self.cluster.host:
                from .connection import SshShell

                self._shell = SshShell(self.cluster)
            else:
                self._shell = LocalShell(self.cluster.name)
        return self._shell

    def call(self, op: str, request: dict[str, Any], payload: bytes = b"", timeout: float | None = None,
             then: Callable[[], bytes] | None = None) -> AgentReply:
        """One agent operation; BackendError if it could not run or failed. `then`: called
        once the request is on its way, what it returns is sent after it (see `exchange`)."""
        reply = self.exchange({"op": op, **request}, payload, timeout or OP_TIMEOUT_S.get(op, 120.0), then)
        if not reply.header.get("ok"):
            raise BackendError(self.cluster.name, f"nero's agent failed on {self.shell.host} ({op}): "
                               f"{reply.header.get('error', 'unknown error')}",
                               "check the cluster's workdir is writable and the disk is not full")
        return reply

    def exchange(self, request: dict[str, Any], payload: bytes, timeout: float,
                 then: Callable[[], bytes] | None = None) -> AgentReply:
        """Send one request to the agent and read its reply: one command over the shell.
        `then` runs while the agent reads the request; its bytes follow the request (a
        submission's go-ahead: `wire.GO`). What it raises is raised here, the command cut off."""
        try:
            done = self.shell.run(BOOTSTRAP, encode_request(request, payload), timeout=timeout, then=then)
        except Then as e:
            raise e.error  # noqa: B904 - its own, as `then` raised it (the command was cut off)
        try:
            reply = decode_reply(done.stdout)
        except (ValueError, json.JSONDecodeError):
            where = self.shell.host
            err = done.err_text() or done.stdout.decode("utf-8", "replace")[-300:]
            hint = ("python3 (3.6 or newer) must be on the PATH of a non-interactive login"
                    if done.rc in (126, 127) or "python3" in err else "check that `ssh` to the host gives a working shell")
            raise BackendError(self.cluster.name, f"nero's agent did not run on {where} (exit code {done.rc}): {err}",
                               hint) from None
        prestart = getattr(self.shell, "prestart", None)
        if prestart is not None:  # the next call's agent, started while this pass works on the reply
            prestart(BOOTSTRAP, agent_prefix())
        return reply

    def workdir_setting(self) -> str:
        """The cluster's `workdir`, else the project's own folder below `~/nero`, named
        after the project's folder and its id (attempts keep the run folder they were
        submitted to, so runs of an older nero, below `~/nero/<name>`, are still found)."""
        return self.cluster.workdir or remote_workdir(Path(self.project_dir).resolve().name, self.project_id)

    @property
    def project_id(self) -> str:
        return project_id(self.project_dir)

    def connect(self, refresh: bool = False) -> HostInfo:
        """Reach the cluster (one round trip the first time, and to refresh)."""
        if self.info is not None and not refresh and time.monotonic() - self.info.at < HELLO_REFRESH_S:
            return self.info
        # the site's limits, asked at most every HELLO_REFRESH_S by any nero command (kept by the agent)
        reply = self.call("hello", {"workdir": self.workdir_setting(), "tools": list(self.tools),
                                    "commands": self.hello_commands(), "cache_s": 0 if refresh else HELLO_REFRESH_S})
        h = reply.header
        self.info = HostInfo(h["home"], h["user"], h["host"], h.get("cpus"), h["workdir"], h.get("disk_free_mb"),
                             h.get("tools", {}), _outputs(reply))
        missing = [t for t in self.tools if not self.info.tools.get(t)]
        if missing:
            raise BackendError(self.cluster.name, f"{', '.join(missing)} not found on {self.shell.host} "
                               f"(a {self.kind.value} cluster needs them)",
                               "check the cluster's kind, or that a non-interactive login has them on its PATH")
        self.learn(self.info)
        return self.info

    def remote_path(self, path: str) -> str:
        info = self.connect()
        if path.startswith("~/"):
            return info.home.rstrip("/") + path[1:]
        return path if path.startswith("/") else f"{info.home.rstrip('/')}/{path}"

    def run_root(self) -> str:
        return self.connect().workdir

    def code_dir(self, code_hash: str) -> str:
        return ClusterPaths(self.run_root()).code(code_hash)

    def ship_code(self, local: str, setting: str, exclude: Sequence[str] = ()) -> tuple[str, CodeSnapshot | None]:
        """A local workdir is shipped (once per content hash, with the next submission) and
        the job runs in the copy; a workdir that does not exist here names a folder on the
        cluster (`setting` as the Experiments sheet wrote it), used as it is."""
        if Path(local).is_dir():
            from .code import snapshot

            snap = snapshot(local, self.cluster.name, exclude=exclude)
            return self.code_dir(snap.hash), snap
        return self.remote_path(setting), None

    def owner(self) -> dict[str, str]:
        """Who a run folder belongs to (its submit.json says): this project's id and folder."""
        return {"project": self.project_id, "path": str(Path(self.project_dir).resolve())}

    def free_disk_mb(self) -> float | None:
        return self.info.disk_free_mb if self.info else None

    def capacity(self) -> int:
        if self.cluster.max_jobs:
            return self.cluster.max_jobs
        return self.site_capacity() or self.default_capacity

    def site_capacity(self) -> int | None:
        return None

    def read_limits(self) -> tuple[int, int]:
        """Bytes read per output file and per cluster in one poll."""
        return PER_FILE_LIMIT, PASS_BUDGET

    def close(self) -> None:
        if self._shell is not None:
            self._shell.close()

    # ------------------------------------------------------------ hooks
    def hello_commands(self) -> list[list[str]]:
        return []

    def learn(self, info: HostInfo) -> None:  # noqa: B027 (optional hook: most kinds learn nothing)
        """Read limits from the hello commands' output."""

    @abstractmethod
    def units(self, jobs: Sequence[JobScript], root: str) -> Units:
        """Submission units (commands or processes to start) and, per run directory, extra
        files/links to write; every job appears in exactly one unit's `runs`."""

    def query(self, handles: Sequence[Handle]) -> dict[str, Any] | None:
        """The scheduler commands of a poll (listing + details), or None: the job's
        process is checked instead (a detached process, not a scheduler's job)."""
        return None

    def parse_listing(self, text: str) -> dict[str, SchedState]:
        """The poll's listing (squeue, qstat) → job id → state."""
        return {}

    def parse_detail(self, text: str, alt: int, rc: int) -> dict[str, SchedState]:
        """A detail command's output (`alt`: which of the query's alternatives) → job id → state."""
        return {}

    def adopt_query(self) -> tuple[list[str] | None, list[str] | None]:
        """The listing of the user's jobs by name, and the command that finds names the
        listing lacks (`{names}` or `{name}`), or None, None."""
        return None, None

    def parse_names(self, text: str, detail: bool) -> dict[str, list[str]]:
        """Job name → job ids (array jobs: the array's id) from the adopt listing or,
        with `detail`, from the detail command's output."""
        return {}

    def task_id(self, array_id: str, index: int) -> str:
        """The job id of the task of a job array that runs its run number `index` (from 0):
        kinds that submit job arrays say (`arrays.Dialect.task_id`)."""
        raise NotImplementedError(f"{self.kind.value} clusters submit no job arrays")

    def cancel_request(self, handles: Sequence[Handle]) -> dict[str, Any]:
        """The agent request that stops these jobs: `cancel_command` with their ids."""
        ids = [h.job_id for h in handles if h.job_id]
        return {"commands": [[*self.cancel_command, *ids[k:k + CANCEL_CHUNK]]
                             for k in range(0, len(ids), CANCEL_CHUNK)]}

    def cancel_errors(self, handles: Sequence[Handle], req: dict[str, Any], reply: AgentReply) -> dict[str, str]:
        """Jobs the cancel command refused (already finished or unknown jobs are not errors)."""
        errors = {}
        for res in reply.header.get("commands", []):
            text = f"{res.get('err', '')} {res.get('out', '')}"
            if res.get("rc") == 0 or not self.cancel_refused.search(text):
                continue
            for h in handles:
                if h.job_id and h.job_id in text:
                    errors[h.key] = f"{self.cancel_command[0]} {h.job_id}: {text.strip()[-200:]}"
        return errors

    def resource_commands(self) -> list[list[str]]:
        return []

    def queues(self, outputs: list[tuple[int, str, str]]) -> tuple[QueueInfo, ...]:
        return ()

    # ------------------------------------------------------------ submit
    def submit(self, jobs: Sequence[JobScript], ready: Callable[[], None] | None = None) -> list[Submission]:
        if not jobs:
            if ready is not None:
                ready()
            return []
        info = self.connect()
        from .code import archive

        snaps = {j.code.hash: j.code for j in jobs if j.code is not None and j.code.hash not in self._shipped}
        code_req, payload = [], []
        for h, snap in snaps.items():
            blob = archive(snap)
            code_req.append({"dir": self.code_dir(h), "size": len(blob), "hash": h})
            payload.append(blob)
        units, extras = self.units(jobs, info.workdir)
        # runs whose job writes their folder when it starts (a unit marked `lazy`): only
        # checked here (another project's folder, a live job's), nothing written
        lazy = {d for u in units if u.get("lazy") for d in u["runs"]}
        entries = []
        owner = self.owner()
        for j in jobs:
            if j.run_dir in lazy:  # the owner's project part is the request's `owner`
                entries.append({"dir": j.run_dir, "owner": {"key": j.key, "attempt": j.attempt}, "lazy": True})
                continue
            mine = {**owner, "key": j.key, "attempt": j.attempt}
            extra = extras.get(j.run_dir, {})
            files = {"job.sh": runnable_script(j.text, j.values), "params.json": j.params_json,
                     **extra.get("files", {})}
            # the submission record names the run's owner too (no file more to write per run)
            files[SUBMIT_FILE] = json.dumps({**json.loads(files.get(SUBMIT_FILE, "{}")), "owner": mine})
            entries.append({"dir": j.run_dir, "exec": ["job.sh"], "links": extra.get("links", {}), "files": files,
                            "owner": mine})
        gate = None
        if ready is not None:  # the agent reads the request while the attempts are committed, and hands
            def gate() -> bytes:  # nothing over before it is told they are (`GO`; else it stops there)
                ready()
                return GO
        # a folder that holds another project's run, or a live job, is never written: those jobs fail
        reply = self.call("submit", {"workdir": info.workdir, "code": code_req, "jobs": entries, "units": units,
                                     "owner": owner, "gate": gate is not None,
                                     "parallel": 4, "check_pid": self.adopt_query()[0] is None,
                                     "fresh_s": UNKNOWN_HEARTBEAT_S}, b"".join(payload), then=gate)
        self._shipped.update(snaps)
        if reply.header.get("disk_free_mb") is not None:
            info.disk_free_mb = reply.header["disk_free_mb"]
        by_dir: dict[str, Submission] = {}
        transient = []
        for unit, res in zip(units, reply.header.get("units", []), strict=False):
            ids = res.get("ids") or []
            if res.get("rc") == 0 and len(ids) == len(unit["runs"]):
                for d, jid in zip(unit["runs"], ids, strict=True):
                    by_dir[d] = Submission("", 0, job_id=jid)
                continue
            message = (res.get("err") or res.get("out") or f"exit code {res.get('rc')}").strip().splitlines()
            text = " ".join(message) if res.get("refused") else f"{unit['argv'][0]}: {' '.join(message)[-400:]}"
            if TRANSIENT.search(text):
                transient.append(text)
            for d in unit["runs"]:
                by_dir[d] = Submission("", 0, error=text)
        if transient:  # the scheduler may have taken the jobs all the same (Slurm documents it)
            tool = transient[0].split(":", 1)[0]
            raise BackendError(self.cluster.name, f"{tool} did not answer in time, so whether the scheduler took "
                               f"the jobs is unknown: {transient[0]}",
                               "the next pass looks for them by name, adopts those it finds and submits only "
                               "the others")
        out = []
        for j in jobs:
            s = by_dir.get(j.run_dir) or Submission("", 0, error="no answer from the submission")
            out.append(Submission(j.key, j.attempt, job_id=s.job_id, error=s.error))
        return out

    # ------------------------------------------------------------ poll
    def poll(self, handles: Sequence[Handle]) -> list[JobStatus]:
        if not handles:
            return []
        info = self.connect()
        query = self.query(handles)
        check_pid = query is None
        per_file, budget = self.read_limits()
        req = {"workdir": info.workdir, "per_file": per_file, "budget": budget,
               "runs": [{"dir": h.run_dir, "off": [h.offsets.stdout, h.offsets.stderr, h.offsets.metrics,
                                                    h.offsets.resources],
                         "src": {f.path: f.offset for f in h.offsets.files},
                         "pid": h.job_id, "check_pid": check_pid} for h in handles]}
        globs = list(dict.fromkeys(g for h in handles for g in h.sources))
        if globs:
            req["sources"] = {"globs": [[g, needs_head(g)] for g in globs], "max_files": MAX_FILES}
        if query is not None:
            req["scheduler"] = query
            req["ids"] = sorted({h.job_id for h in handles if h.job_id})
        reply = self.call("poll", req)
        self.last_poll_bytes = len(reply.data)
        if reply.header.get("disk_free_mb") is not None:
            info.disk_free_mb = reply.header["disk_free_mb"]
        states = self.states(reply, query["list"]) if query is not None else {}
        remote_now = float(reply.header.get("time") or time.time())
        return [self._status(h, item, reply, states, remote_now, check_pid, per_file)
                for h, item in zip(handles, reply.header["runs"], strict=True)]

    def states(self, reply: AgentReply, listing: list[str]) -> dict[str, SchedState]:
        """The scheduler's word on each job: its listing, then the details of the jobs the
        listing lacks. A failed listing is an error (the runs keep their state)."""
        sched = reply.header.get("scheduler", {})
        lst = sched.get("list") or {}
        if lst.get("rc") != 0:
            raise BackendError(self.cluster.name, f"{listing[0]} failed (exit code {lst.get('rc')}): "
                               f"{(lst.get('err') or '').strip()[-300:]}", self.listing_hint)
        states = self.parse_listing(reply.text(lst.get("out")))
        for d in sched.get("details", []):
            for jid, st in self.parse_detail(reply.text(d.get("out")), d.get("alt", 0), d.get("rc", 0)).items():
                states.setdefault(jid, st)
        return states

    def _status(self, h: Handle, item: dict[str, Any], reply: AgentReply, states: dict[str, SchedState],
                now: float, check_pid: bool, window: int = 0) -> JobStatus:
        files = item.get("files", {})
        started = None
        if files.get("started"):
            try:
                started = json.loads(files["started"])
            except ValueError:
                started = None
        exit_code = _int(files.get("exit_code"))
        heartbeat = _float(files.get("heartbeat"))
        chunks = [reply.blob(ref) for ref in item["chunks"]]
        sched_state = sched_reason = ""
        if check_pid:
            alive = bool(item.get("alive"))
        else:
            sched = states.get(h.job_id)
            if sched is None:
                # the scheduler forgot the job (or never had it): the run directory decides; its
                # start is its first sign of life (the job script's first heartbeat comes a
                # second later, templates/_job_body.sh.j2)
                begun = started.get("time") if isinstance(started, dict) else None
                seen = heartbeat if heartbeat is not None else _float(None if begun is None else str(begun))
                alive = exit_code is None and seen is not None and now - seen < UNKNOWN_HEARTBEAT_S
            elif sched.live:
                alive = True
                sched_state, sched_reason = sched.state, sched.reason
                exit_code = None  # written, but the scheduler has not finished the job yet: next pass
            else:
                alive = False
                sched_state, sched_reason = sched.state, sched.reason
                if exit_code is None and sched.state == "COMPLETED":
                    exit_code = 0 if sched.exit_code is None else sched.exit_code
        return JobStatus(
            key=h.key, attempt=h.attempt, alive=alive, started=started, exit_code=exit_code, heartbeat=heartbeat,
            stdout=chunks[0], stderr=chunks[1], metrics=chunks[2], resources=chunks[3], offsets=h.offsets,
            scheduler_state=sched_state, scheduler_reason=sched_reason,
            stderr_tail=reply.blob(item.get("tail")), complete=bool(item.get("complete", True)),
            signalled=files.get("stopped") is not None, window=window,
            midline=tuple(bool(m) for m in item.get("mid") or (False,) * len(chunks)),
            dir_exists=bool(item.get("dir", True)),
            sources=tuple(SourceChunk(path, int(off), reply.blob(data), int(size), reply.blob(head))
                          for path, off, data, size, head, *_ in item.get("sources") or ()),
        )

    # ------------------------------------------------------------ adopt
    def adopt(self, handles: Sequence[Handle]) -> dict[str, Submission]:
        """Jobs found for attempts recorded but not confirmed (a crash in between), by run
        key; a Submission without a job id: handed to the cluster (its folder says so) but
        no job seen yet. An attempt missing from the answer was never handed over."""
        if not handles:
            return {}
        info = self.connect()
        listing, detail = self.adopt_query()
        check_pid = listing is None
        reply = self.call("adopt", {"workdir": info.workdir, "list": listing, "detail": detail,
                                    "runs": [{"dir": h.run_dir, "name": job_name(h.key, h.attempt, h.run_dir),
                                              "check_pid": check_pid} for h in handles]})
        sched = reply.header.get("scheduler", {})
        lst = sched.get("list")
        if lst is not None and lst.get("rc") != 0:
            raise BackendError(self.cluster.name, f"{listing[0] if listing else 'listing'} failed: {lst.get('err', '')}",
                               "the jobs are looked for again next pass")
        names = self.parse_names(reply.text((lst or {}).get("out")), detail=False)
        for d in sched.get("details", []):
            if d.get("rc") == 0:
                for name, ids in self.parse_names(reply.text(d.get("out")), detail=True).items():
                    known = names.setdefault(name, [])
                    known.extend(i for i in ids if i not in known)
        found: dict[str, Submission] = {}
        for h, item in zip(handles, reply.header["runs"], strict=True):
            jid = (item.get("job_id") or "").strip()
            if not jid and check_pid:
                jid = (item.get("pid") or "").strip()  # a detached process: the job script wrote its pid
            if not jid:
                submit = {}
                try:
                    submit = json.loads(item.get("submit") or "{}")
                except ValueError:
                    pass
                name = submit.get("batch") or submit.get("job_name") or job_name(h.key, h.attempt, h.run_dir)
                ids = names.get(name) or []
                if ids:
                    base = max(ids, key=_id_order)
                    jid = self.task_id(base, int(submit["index"])) if submit.get("batch") else base
            if jid or item.get("handed"):
                found[h.key] = Submission(h.key, h.attempt, job_id=jid)
        return found

    # ------------------------------------------------------------ cancel
    def cancel(self, handles: Sequence[Handle]) -> dict[str, str]:
        if not handles:
            return {}
        info = self.connect()
        req = self.cancel_request(handles)
        reply = self.call("cancel", {"workdir": info.workdir, **req})
        return self.cancel_errors(handles, req, reply)

    # ------------------------------------------------------------ output and resources
    def read_output(self, run_dir: str, name: str, *, offset: int = 0, tail: int | None = None,
                    limit: int = 8 << 20) -> OutputChunk:
        """Bytes of one output file of a run directory on the cluster (one round trip):
        its last `tail` bytes, or up to `limit` bytes from `offset`."""
        reply = self.call("read", {"dir": run_dir, "name": name, "offset": offset, "tail": tail, "limit": limit})
        h = reply.header
        return OutputChunk(reply.blob(h["data"]), h.get("size"), bool(h.get("ended")), bool(h.get("dir_exists")))

    def resources(self) -> ClusterResources:
        reply = self.call("resources", {"workdir": self.info.workdir if self.info else self.workdir_setting(),
                                        "commands": self.resource_commands()})
        h = reply.header
        return ClusterResources(
            cluster=self.cluster.name, kind=self.kind.value, host=h.get("host", ""), cpus=h.get("cpus"),
            load=tuple(h.get("load") or ()), mem_total_mb=h.get("mem_total_mb"),
            mem_available_mb=h.get("mem_available_mb"), disk_path=h.get("workdir", ""),
            disk_free_mb=h.get("disk_free_mb"), queues=self.queues(_outputs(reply)),
            gpus=parse_nvidia_smi(h.get("gpus")),
        )


def _outputs(reply: AgentReply) -> list[tuple[int, str, str]]:
    """(rc, stdout, stderr) of the commands a hello or resources request ran."""
    return [(o["rc"], reply.text(o["out"]), o.get("err", "")) for o in reply.header.get("outputs", [])]


def _int(text: str | None) -> int | None:
    if text and text.strip().lstrip("-").isdigit():
        return int(text.strip())
    return None


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _id_order(jid: str) -> tuple[int, str]:
    head = jid.split("_")[0].split(".")[0]
    return (int(head) if head.isdigit() else -1, jid)
