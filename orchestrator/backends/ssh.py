"""The `ssh` backend: a server with no scheduler. Jobs are detached `bash job.sh`
processes (own session and process group, so they outlive the SSH session and nero);
the process id is the job id. At most `max_jobs` run at once (default: the host's CPU
count). A run that asks for `gpus` waits inside its job script until that many GPUs are
free (`templates/_gpus.sh.j2`, shared with the local cluster: the cluster's `gpus` list or every GPU nvidia-smi shows,
minus those claimed by live nero jobs of any user of the host, or busy per nvidia-smi) and runs with
`CUDA_VISIBLE_DEVICES` set to them. Cancel: SIGTERM to the process group, SIGKILL after
a grace period unless the job wrote its exit code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..model import ClusterKind, Handle, JobScript
from .client import AgentBackend, Units, one_unit_per_job
from .wire import AgentReply

__all__ = ["KILL_GRACE_S", "SshBackend"]

KILL_GRACE_S = 15


class SshBackend(AgentBackend):
    kind = ClusterKind.SSH
    tools = ("bash",)
    default_capacity = 4

    def site_capacity(self) -> int | None:
        return self.info.cpus if self.info and self.info.cpus else None

    def units(self, jobs: Sequence[JobScript], root: str) -> Units:
        return one_unit_per_job(jobs, "spawn", ["bash", "job.sh"])

    def cancel_request(self, handles: Sequence[Handle]) -> dict[str, Any]:
        # no job id (adopted before it recorded one): the agent reads the pid its script wrote
        return {"kill": [{"pid": h.job_id, "dir": h.run_dir, "grace": KILL_GRACE_S} for h in handles]}

    def cancel_errors(self, handles: Sequence[Handle], req: dict[str, Any], reply: AgentReply) -> dict[str, str]:
        return {h.key: err for h, err in zip(handles, reply.header.get("kill", []), strict=False) if err}
