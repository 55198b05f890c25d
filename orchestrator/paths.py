"""Every file and folder nero owns, named in one place (after submitit's `JobPaths`).

Two families, because they live on different machines:

* `ProjectPaths`: beside the experiments workbook on the user's machine: the `.nero/`
  folder (state, locks, outbox, previews) and the default local run root `runs/`.
* `ClusterPaths`: below a cluster's nero workdir, as POSIX strings resolved there: run
  folders, shipped code copies and Slurm array batches. A project's default workdir on a
  cluster is `nero/<project folder name>-<first 8 characters of its id>` (`remote_workdir`),
  so two projects whose folders have the same name never share one.

GPU claims are host-wide, not a workdir's: every nero job of every user of an ssh host (or
this machine) claims its GPUs in `GPU_CLAIMS` (`templates/_gpus.sh.j2`).

A run folder is `<root>/<experiment slug>/<run key slug>/<attempt>` on every cluster.
The job-side agent (`backends/agent.py`) is shipped alone and repeats the few names it
needs (`.nero`, `submit.lock`); ARCHITECTURE.md lists them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["GPU_CLAIMS", "NERO_DIR", "SUBMIT_FILE", "ClusterPaths", "ProjectPaths", "remote_workdir", "run_folder",
           "slug", "state_folder_name"]

NERO_DIR = ".nero"
# the host-wide folder where ssh and local jobs claim GPUs (a job script's NERO_GPU_CLAIMS
# environment variable, set on the host, overrides it)
GPU_CLAIMS = "/tmp/nero-gpu-claims"
# in a run folder: its submission record (job name, array record) and owner (project id and
# folder, run key, attempt), read before anything is written there (backends/agent.py repeats it)
SUBMIT_FILE = "submit.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.=,+-]+")


def slug(key: str) -> str:
    """A file-system-safe, still readable folder name for a run key or experiment id;
    a long or altered name gets a hash suffix so two keys never share a folder."""
    plain = key.replace("[", "_").replace("]", "")
    s = _UNSAFE.sub("_", plain).strip("._") or "run"
    if len(s) > 120 or s != plain:
        s = f"{s[:100]}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
    return s


def run_folder(root: str, experiment: str, key: str, attempt: int) -> str:
    """The run folder of one attempt below `root` (a local or a cluster path)."""
    return f"{root.rstrip('/')}/{slug(experiment)}/{slug(key)}/{attempt}"


def remote_workdir(project_name: str, project_id: str) -> str:
    """A project's default workdir on a cluster, relative to the home folder there: its
    folder's name (readable) and the first 8 characters of its id (unique)."""
    return f"nero/{slug(project_name or 'project')}-{project_id[:8]}"


def _below(*parts: str, doc: str) -> property:
    """A path below the project folder, as a read-only attribute."""
    return property(lambda self: self.root.joinpath(*parts), doc=doc)


def _in_state(*parts: str, doc: str) -> property:
    """A path below nero's state folder (`.nero`, or the one `state` names), as a read-only attribute."""
    return property(lambda self: self.nero.joinpath(*parts), doc=doc)


def state_folder_name(root: Path) -> str:
    """The folder a project's state gets below a state root (`NERO_STATE_ROOT`): the project
    folder's name, readable, and a hash of its resolved path, so two projects named alike
    never share one."""
    return f"{slug(root.name or 'project')}-{hashlib.sha1(str(root).encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class ProjectPaths:
    """The files of one project on the user's machine; `root` is the workbook's folder.
    `state`: where nero's own folder is when it is not `root/.nero` (a state root on a
    local disk, `orchestrator.sharing.project_paths`)."""

    root: Path
    state: Path | None = None

    @property
    def nero(self) -> Path:
        """nero's own folder: state, locks, outbox, previews."""
        return self.state if self.state is not None else self.root / NERO_DIR

    project_id = _below(NERO_DIR, "project_id", doc="the project's identity, made once, never changed (identity.py)")
    state_db = _in_state("state.db", doc="the SQLite state store")
    search_db = _in_state("search.db", doc="Optuna's storage of the adaptive rows' studies (search.py)")
    reconcile_lock = _in_state("reconcile.lock", doc="held by the one reconcile loop of the project")
    reconcile_pid = _in_state("reconcile.pid", doc="who holds the reconcile lock: its pid and what it does")
    outbox = _in_state("outbox", doc="every e-mail as an .eml file")
    preview = _in_state("preview", doc="`nero digest --preview` writes here")
    runs = _below("runs", doc="the default root of local run folders (a Clusters `workdir` overrides it)")
    templates = _below("templates", doc="the project's own templates, which override the built-in ones by name")


@dataclass(frozen=True)
class ClusterPaths:
    """nero's folders below a cluster's workdir `root` (a path on that cluster)."""

    root: str

    @property
    def nero(self) -> str:
        return f"{self.root.rstrip('/')}/{NERO_DIR}"

    def code(self, code_hash: str) -> str:
        return f"{self.nero}/code/{code_hash}"

    def batch(self, name: str) -> str:
        return f"{self.nero}/batches/{name}"

    def run(self, experiment: str, key: str, attempt: int) -> str:
        return run_folder(self.root, experiment, key, attempt)
