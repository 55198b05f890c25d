"""Every file and folder nero owns, named in one place (after submitit's `JobPaths`).

Two families, because they live on different machines:

* `ProjectPaths`: beside the experiments workbook on the user's machine: the `.nero/`
  folder (state, locks, outbox, previews) and the default local run root `runs/`.
* `ClusterPaths`: below a cluster's nero workdir, as POSIX strings resolved there: run
  folders, shipped code copies, Slurm array batches and the host's GPU claims.

A run folder is `<root>/<experiment slug>/<run key slug>/<attempt>` on every cluster.
The job-side agent (`backends/agent.py`) is shipped alone and repeats the few names it
needs (`.nero`, `submit.lock`); ARCHITECTURE.md lists them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NERO_DIR", "ClusterPaths", "ProjectPaths", "run_folder", "slug"]

NERO_DIR = ".nero"
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


@dataclass(frozen=True)
class ProjectPaths:
    """The files of one project on the user's machine; `root` is the workbook's folder."""

    root: Path

    @classmethod
    def of_workbook(cls, workbook: str | Path) -> ProjectPaths:
        return cls(Path(workbook).resolve().parent)

    @property
    def nero(self) -> Path:
        return self.root / NERO_DIR

    @property
    def state_db(self) -> Path:
        return self.nero / "state.db"

    @property
    def reconcile_lock(self) -> Path:
        return self.nero / "reconcile.lock"

    @property
    def outbox(self) -> Path:
        return self.nero / "outbox"

    @property
    def preview(self) -> Path:
        return self.nero / "preview"

    @property
    def runs(self) -> Path:
        """The default root of local run folders (a Clusters `workdir` overrides it)."""
        return self.root / "runs"

    @property
    def templates(self) -> Path:
        """The project's own templates, which override the built-in ones by name."""
        return self.root / "templates"


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

    @property
    def gpu_claims(self) -> str:
        return f"{self.nero}/gpus"

    def run(self, experiment: str, key: str, attempt: int) -> str:
        return run_folder(self.root, experiment, key, attempt)
