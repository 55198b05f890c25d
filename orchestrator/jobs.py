"""Builds the job-script context: the variables a run's command and job template see (pure).

The reconciler decides where a run goes and what it needs from its cluster (the run
directory, the shipped code); this module turns that and the run's
spec into the two dicts that render.py renders:

* `command_variables`: what the `command` cell may use: the run's resources and
  parameters, `run_key`, `run_dir`, `attempt`, `experiment` and `resume` (0/1);
* `script_context`: what a job template (`templates/*.j2`) may use. Scheduler directive
  values are put on one line (`directive`, `scheduler_options`) so a hostile cell cannot
  add a directive or a command to the script; render.py shell-quotes every value that is
  not `Shell` code.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from .model import Cluster, ClusterKind, RunSpec, Shell
from .paths import GPU_CLAIMS
from .spec import format_value

__all__ = ["HEARTBEAT_S", "directive", "scheduler_options", "command_variables", "script_context", "params_json"]

HEARTBEAT_S = 10  # how often the job script writes its heartbeat file (seconds)


def directive(value: str) -> str:
    """A value for a scheduler directive line: no line breaks or control characters."""
    return "".join(ch if ch.isprintable() else " " for ch in value).strip()


def scheduler_options(*texts: str) -> list[str]:
    """Extra scheduler options (`--qos=high --constraint=a100`) as single-line tokens."""
    out: list[str] = []
    for text in texts:
        text = directive(text or "")
        if not text:
            continue
        try:
            out += shlex.split(text)
        except ValueError:
            out.append(text)
    return out


def command_variables(spec: RunSpec, run_dir: str, attempt: int, resume: bool) -> dict[str, object]:
    """The variables of the run's `command` template."""
    return {**dict(spec.resources), **dict(spec.params), "run_key": spec.key, "run_dir": run_dir,
            "attempt": attempt, "experiment": spec.experiment, "resume": int(resume)}


def script_context(spec: RunSpec, cluster: Cluster, *, attempt: int, run_dir: str, workdir: str, command: str,
                   python: str, resume: bool, prev_run_dir: str, job_name: str,
                   rendered_at: str) -> dict[str, object]:
    """The variables of the run's job template. `command` is the rendered command line,
    `python` the interpreter whose folder goes first on PATH (empty: PATH as it is).
    `gpu_claims`: the host-wide folder where ssh and local jobs claim GPUs (empty elsewhere)."""
    resources = dict(spec.resources)
    claims = GPU_CLAIMS if cluster.kind in (ClusterKind.SSH, ClusterKind.LOCAL) else ""
    return {
        "job_name": job_name, "partition": directive(str(resources.get("partition") or cluster.partition)),
        "account": directive(str(resources.get("account") or cluster.account)),
        "options": scheduler_options(cluster.options, str(resources.get("options") or "")),
        "kind": cluster.kind.value, "gpu_pool": directive(cluster.gpus), "gpu_claims": claims,
        "key": spec.key, "experiment": spec.experiment, "attempt": attempt, "cluster": cluster.name,
        "run_dir": run_dir, "workdir": workdir, "command": Shell(command),
        "setup": Shell("\n".join(x for x in (cluster.setup, spec.setup) if x)), "resume": int(resume),
        "prev_run_dir": prev_run_dir, "env": [], "path_prepend": str(Path(python).parent) if python else "",
        "heartbeat": HEARTBEAT_S, "rendered_at": rendered_at, "resources": resources, "params": dict(spec.params),
    }


def params_json(spec: RunSpec) -> str:
    """The run's parameters as the `params.json` a job reads (`orchestrator.track.params`)."""
    return json.dumps({k: v for k, v in spec.params}, indent=2, default=format_value)
