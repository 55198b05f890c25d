"""Remote clusters, the shared part: every operation is one call of nero's agent
(`agent.py`, stdlib Python on the login node), so one pass costs one round trip per
cluster for polling and one for submitting, over one reused connection.

    hello   once per connection: home, workdir, free disk, tools, scheduler limits
    submit  one transfer: code archives (once per content hash) + every job's files
            + the submission commands, all in one command
    poll    one command: the scheduler's word on the live jobs, each run's status files
            and the bytes appended to its outputs since the last pass (bounded)
    adopt   after a crash: job ids written in the run directories, else the scheduler's
            jobs by name
    cancel  one command for all jobs of the pass

`RemoteBackend` is the thin class; the scheduler specifics (commands to build, output
to parse) live in `slurm.py`, `sge.py` and `ssh.py` as pure functions and small hooks.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import BackendError
from ..model import (
    Cluster,
    ClusterKind,
    ClusterResources,
    GpuInfo,
    Handle,
    JobScript,
    JobStatus,
    OutputChunk,
    QueueInfo,
    Submission,
)
from .shell import LocalShell, Shell

MAGIC = b"NERO-AGENT/1"
BOOTSTRAP = "python3 -c 'import sys;b=sys.stdin.buffer;n=int(b.readline());exec(compile(b.read(n),\"nero_agent\",\"exec\"))'"
PER_FILE_LIMIT = 8 * 1024 * 1024  # bytes read per output file per pass; the rest comes next pass
PASS_BUDGET = 64 * 1024 * 1024  # bytes read per cluster per pass
HELLO_REFRESH_S = 600.0
UNKNOWN_HEARTBEAT_S = 60.0
# seconds of silence before a command counts as hung (a pass must not block for long)
OP_TIMEOUT_S = {"hello": 60.0, "poll": 120.0, "adopt": 300.0, "cancel": 120.0, "resources": 60.0, "submit": 900.0,
                "read": 60.0}  # a job the scheduler forgot is alive only while its heartbeat is this fresh
TRANSIENT = re.compile(r"unable to contact|socket timed out|temporarily unable|connection refused|timed out|"
                       r"try again|cannot reach|commlib error|unable to (?:connect|communicate)|"
                       r"slurm_persist_conn|qmaster", re.I)


# --------------------------------------------------------------------------- pure helpers
def job_name(key: str, attempt: int, run_dir: str = "") -> str:
    """The scheduler job name of an attempt: readable, carries the run key and the attempt,
    plus a hash of the key and the run directory, so the same run key in another project
    (or another cluster workdir) never names the same job. Safe for Slurm, SGE and shells."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("._-")[:40] or "run"
    digest = hashlib.sha1(f"{key}\0{run_dir}".encode()).hexdigest()[:8]
    return f"nero-{base}-{digest}-a{attempt}"


@lru_cache(maxsize=1)
def agent_source() -> bytes:
    return (Path(__file__).resolve().parent / "agent.py").read_bytes()


def encode_request(request: dict[str, Any], payload: bytes = b"") -> bytes:
    """stdin for BOOTSTRAP: the agent's source, then the compressed JSON request, then payload."""
    src = agent_source()
    body = zlib.compress(json.dumps(request, separators=(",", ":")).encode(), 6)
    return b"%d\n" % len(src) + src + b"%d\n" % len(body) + body + payload


@dataclass(frozen=True)
class AgentReply:
    header: dict[str, Any]
    data: bytes

    def blob(self, ref: Sequence[int] | None) -> bytes:
        if not ref:
            return b""
        off, n = ref
        return self.data[off:off + n]

    def text(self, ref: Sequence[int] | None) -> str:
        return self.blob(ref).decode("utf-8", "replace")


def decode_reply(stdout: bytes) -> AgentReply:
    """The agent's framed reply; anything a login script printed before it is skipped."""
    at = stdout.find(MAGIC + b" ")
    if at < 0:
        raise ValueError("no reply from nero's agent")
    nl = stdout.index(b"\n", at)
    _, hlen, blen = stdout[at:nl].split()
    head_end = nl + 1 + int(hlen)
    header = json.loads(stdout[nl + 1:head_end])
    data = stdout[head_end:head_end + int(blen)]
    if len(data) != int(blen):
        raise ValueError("nero's agent reply was cut short")
    return AgentReply(header, data)


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


def size_mb(text: str) -> float | None:
    """'10G', '500M', '2T', '4000' (MB) → megabytes; None if empty or unreadable."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgtp]?)i?b?\s*", str(text or ""), re.I)
    if not m:
        return None
    factor = {"": 1, "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 ** 2, "p": 1024 ** 3}[m.group(2).lower()]
    return float(m.group(1)) * factor


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


# --------------------------------------------------------------------------- the backend
class RemoteBackend(ABC):
    """A cluster reached through a Shell and nero's agent. Subclasses say how jobs are
    submitted, listed, cancelled and found by name."""

    kind = ClusterKind.SSH
    tools: tuple[str, ...] = ()
    default_capacity = 4

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

    def call(self, op: str, request: dict[str, Any], payload: bytes = b"", timeout: float | None = None) -> AgentReply:
        timeout = timeout or OP_TIMEOUT_S.get(op, 120.0)
        done = self.shell.run(BOOTSTRAP, encode_request({"op": op, **request}, payload), timeout=timeout)
        try:
            reply = decode_reply(done.stdout)
        except (ValueError, json.JSONDecodeError):
            where = self.shell.host
            err = done.err_text() or done.stdout.decode("utf-8", "replace")[-300:]
            hint = ("python3 (3.6 or newer) must be on the PATH of a non-interactive login"
                    if done.rc in (126, 127) or "python3" in err else "check that `ssh` to the host gives a working shell")
            raise BackendError(self.cluster.name, f"nero's agent did not run on {where} (exit code {done.rc}): {err}",
                               hint) from None
        if not reply.header.get("ok"):
            raise BackendError(self.cluster.name, f"nero's agent failed on {self.shell.host} ({op}): "
                               f"{reply.header.get('error', 'unknown error')}",
                               "check the cluster's workdir is writable and the disk is not full")
        return reply

    def workdir_setting(self) -> str:
        return self.cluster.workdir or f"nero/{Path(self.project_dir).name or 'project'}"

    def connect(self, refresh: bool = False) -> HostInfo:
        """Reach the cluster (one round trip the first time, and to refresh)."""
        if self.info is not None and not refresh and time.monotonic() - self.info.at < HELLO_REFRESH_S:
            return self.info
        reply = self.call("hello", {"workdir": self.workdir_setting(), "tools": list(self.tools),
                                    "commands": self.hello_commands()})
        h = reply.header
        outputs = [(o["rc"], reply.text(o["out"]), o.get("err", "")) for o in h.get("outputs", [])]
        self.info = HostInfo(h["home"], h["user"], h["host"], h.get("cpus"), h["workdir"], h.get("disk_free_mb"),
                             h.get("tools", {}), outputs)
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
        return f"{self.run_root()}/.nero/code/{code_hash}"

    def free_disk_mb(self) -> float | None:
        return self.info.disk_free_mb if self.info else None

    def capacity(self) -> int:
        if self.cluster.max_jobs:
            return self.cluster.max_jobs
        return self.site_capacity() or self.default_capacity

    def site_capacity(self) -> int | None:
        return None

    def close(self) -> None:
        if self._shell is not None:
            self._shell.close()

    # ------------------------------------------------------------ hooks
    def hello_commands(self) -> list[list[str]]:
        return []

    def learn(self, info: HostInfo) -> None:  # noqa: B027 (optional hook: most kinds learn nothing)
        """Read limits from the hello commands' output."""

    @abstractmethod
    def units(self, jobs: Sequence[JobScript], root: str) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """Submission units (commands or processes to start) and, per run directory, extra
        files/links to write; every job appears in exactly one unit's `runs`."""

    def query(self, handles: Sequence[Handle]) -> dict[str, Any] | None:
        """The scheduler commands of a poll (listing + details), or None."""
        return None

    def states(self, reply: AgentReply) -> dict[str, SchedState]:
        return {}

    def adopt_query(self) -> tuple[list[str] | None, list[str] | None]:
        return None, None

    def adopt_names(self, reply: AgentReply) -> dict[str, list[str]]:
        """Job name → job ids (array jobs: the array's id) from the adopt listing."""
        return {}

    @abstractmethod
    def cancel_request(self, handles: Sequence[Handle]) -> dict[str, Any]:
        """The agent request that stops these jobs (scancel, qdel, or signals)."""

    def resource_commands(self) -> list[list[str]]:
        return []

    def queues(self, outputs: list[tuple[int, str, str]]) -> tuple[QueueInfo, ...]:
        return ()

    # ------------------------------------------------------------ submit
    def submit(self, jobs: Sequence[JobScript]) -> list[Submission]:
        if not jobs:
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
        entries = []
        for j in jobs:
            extra = extras.get(j.run_dir, {})
            entries.append({"dir": j.run_dir, "exec": ["job.sh"], "links": extra.get("links", {}),
                            "files": {"job.sh": j.text, "params.json": j.params_json, **extra.get("files", {})}})
        reply = self.call("submit", {"workdir": info.workdir, "code": code_req, "jobs": entries, "units": units,
                                     "parallel": 4}, b"".join(payload))
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
            text = f"{unit['argv'][0]}: {' '.join(message)[-400:]}"
            if TRANSIENT.search(text):
                transient.append(text)
            for d in unit["runs"]:
                by_dir[d] = Submission("", 0, error=text)
        if transient:
            raise BackendError(self.cluster.name, f"the scheduler did not take the jobs: {transient[0]}",
                               "nero tries again next pass (jobs it did take are adopted, not resubmitted)")
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
        req = {"workdir": info.workdir, "per_file": PER_FILE_LIMIT, "budget": PASS_BUDGET,
               "runs": [{"dir": h.run_dir, "off": [h.offsets.stdout, h.offsets.stderr, h.offsets.metrics,
                                                    h.offsets.resources],
                         "pid": h.job_id, "check_pid": check_pid} for h in handles]}
        if query is not None:
            req["scheduler"] = query
            req["ids"] = sorted({h.job_id for h in handles if h.job_id})
        reply = self.call("poll", req)
        self.last_poll_bytes = len(reply.data)
        if reply.header.get("disk_free_mb") is not None:
            info.disk_free_mb = reply.header["disk_free_mb"]
        states = self.states(reply) if query is not None else {}
        remote_now = float(reply.header.get("time") or time.time())
        return [self._status(h, item, reply, states, remote_now, check_pid)
                for h, item in zip(handles, reply.header["runs"], strict=True)]

    def _status(self, h: Handle, item: dict[str, Any], reply: AgentReply, states: dict[str, SchedState],
                now: float, check_pid: bool) -> JobStatus:
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
                # the scheduler forgot the job (or never had it): the run directory decides
                alive = exit_code is None and heartbeat is not None and now - heartbeat < UNKNOWN_HEARTBEAT_S
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
        )

    # ------------------------------------------------------------ adopt
    def adopt(self, handles: Sequence[Handle]) -> dict[str, Submission]:
        """Jobs found for attempts recorded but not confirmed (a crash in between), by run key."""
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
        names = self.adopt_names(reply)
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
                    jid = f"{base}_{submit['index']}" if submit.get("batch") else base
            if jid:
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

    def cancel_errors(self, handles: Sequence[Handle], req: dict[str, Any], reply: AgentReply) -> dict[str, str]:
        return {}

    # ------------------------------------------------------------ resources
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
        outputs = [(o["rc"], reply.text(o["out"]), o.get("err", "")) for o in h.get("outputs", [])]
        return ClusterResources(
            cluster=self.cluster.name, kind=self.kind.value, host=h.get("host", ""), cpus=h.get("cpus"),
            load=tuple(h.get("load") or ()), mem_total_mb=h.get("mem_total_mb"),
            mem_available_mb=h.get("mem_available_mb"), disk_path=h.get("workdir", ""),
            disk_free_mb=h.get("disk_free_mb"), queues=self.queues(outputs), gpus=parse_nvidia_smi(h.get("gpus")),
        )


def run_agent_locally(request: dict[str, Any], python: str = "") -> AgentReply:
    """Run an agent request on this machine (the local cluster's `nero resources`)."""
    import subprocess
    import sys

    boot = "import sys;b=sys.stdin.buffer;n=int(b.readline());exec(compile(b.read(n),'nero_agent','exec'))"
    proc = subprocess.run([python or sys.executable, "-c", boot], input=encode_request(request),
                          capture_output=True, timeout=120)
    return decode_reply(proc.stdout)


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
