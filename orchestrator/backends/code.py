"""Code shipping, the local half: which files of a run's workdir go to a remote cluster,
their content hash, and the archive that carries them.

The files are, in order of precedence: the glob patterns listed in `.neroinclude` in the
workdir (one per line, `#` comments, `!pattern` excludes); else the files git tracks
there (as they are in the working tree, uncommitted edits included); else every file
under the workdir except version-control, virtualenv, cache and nero's own folders.
The hash covers names, executable bits and contents. On the cluster the files land in
`<workdir>/.nero/code/<hash>/`, once per distinct hash, so editing code after
submitting never changes a queued run, and each attempt records the hash it ran.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import subprocess
import tarfile
import time
from collections.abc import Iterable
from pathlib import Path

from ..errors import BackendError
from ..model import CodeSnapshot
from ..paths import NERO_DIR

__all__ = ["INCLUDE_FILE", "MAX_BYTES", "MAX_FILES", "archive", "list_files", "snapshot"]

INCLUDE_FILE = ".neroinclude"
SKIP_DIRS = frozenset({".git", ".hg", ".svn", NERO_DIR, "runs", "__pycache__", ".venv", "venv", "env",
                       "node_modules", ".ipynb_checkpoints", ".mypy_cache", ".pytest_cache", ".ruff_cache",
                       ".tox", "wandb", "mlruns"})
SKIP_SUFFIXES = (".pyc", ".pyo", ".tmp", ".swp")
MAX_FILES = 20_000
MAX_BYTES = 500 * 1024 * 1024
CACHE_TTL_S = 5.0

_digests: dict[tuple[str, int, int], str] = {}
_snapshots: dict[str, tuple[float, CodeSnapshot]] = {}


def _git_files(root: Path) -> list[str] | None:
    try:
        inside = subprocess.run(["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"],
                                capture_output=True, text=True, timeout=30)
        if inside.returncode != 0 or inside.stdout.strip() != "true":
            return None
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached"], capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return [p for p in out.stdout.decode("utf-8", "surrogateescape").split("\0") if p]


def _walk(root: Path) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith(NERO_DIR))
        for f in filenames:
            if f.endswith(SKIP_SUFFIXES) or f.startswith("~$") or f.startswith(".~lock."):
                continue
            files.append(os.path.relpath(os.path.join(dirpath, f), root))
            if len(files) > MAX_FILES:
                return files
    return files


def _included(root: Path, spec: Path) -> list[str]:
    patterns = [line.strip() for line in spec.read_text().splitlines() if line.strip() and not line.startswith("#")]
    keep: set[str] = set()
    for pattern in (p for p in patterns if not p.startswith("!")):
        for match in root.glob(pattern):
            if match.is_dir():
                keep.update(str(f.relative_to(root)) for f in match.rglob("*") if f.is_file())
            elif match.is_file():
                keep.add(str(match.relative_to(root)))
    for pattern in (p[1:] for p in patterns if p.startswith("!")):
        keep = {f for f in keep if not fnmatch.fnmatch(f, pattern)}
    return sorted(keep)


def list_files(root: Path, exclude: Iterable[str] = ()) -> list[str]:
    """The files to ship, relative to root; `exclude` names files never shipped (the
    experiments and results workbooks when they live in the workdir)."""
    skip = {os.path.realpath(e) for e in exclude}
    spec = root / INCLUDE_FILE
    if spec.is_file():
        files = _included(root, spec)
    else:
        files = _git_files(root)
        if files is None:
            files = _walk(root)
    out = []
    for f in files:
        p = root / f
        if p.is_file() and os.path.realpath(p) not in skip:  # deleted, a submodule, a dangling link: skipped
            out.append(f)
    return sorted(out)


def _digest(p: Path, st: os.stat_result) -> str:
    key = (str(p), st.st_mtime_ns, st.st_size)
    d = _digests.get(key)
    if d is None:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        d = _digests[key] = h.hexdigest()
    return d


def snapshot(root: str | Path, cluster: str = "", exclude: Iterable[str] = ()) -> CodeSnapshot:
    """The files to ship from `root` and their hash (cached for a few seconds)."""
    root = Path(root).resolve()
    exclude = tuple(sorted(exclude))
    cache_key = f"{root}\0{exclude}"
    cached = _snapshots.get(cache_key)
    if cached and time.monotonic() - cached[0] < CACHE_TTL_S:
        return cached[1]
    files = list_files(root, exclude)
    if len(files) > MAX_FILES:
        raise BackendError(cluster, f"the workdir {root} has more than {MAX_FILES:,} files to ship",
                           f"list what the job needs in {root / INCLUDE_FILE} (glob patterns), or make it a git "
                           "repository so only tracked files are shipped")
    h = hashlib.sha256()
    size = 0
    for f in files:
        p = root / f
        st = p.stat()
        size += st.st_size
        h.update(f.encode("utf-8", "surrogateescape") + b"\0" + (b"x" if st.st_mode & 0o111 else b"-") + b"\0")
        h.update(_digest(p, st).encode() + b"\n")
    if size > MAX_BYTES:
        raise BackendError(cluster, f"the workdir {root} holds {size / 2**20:.0f} MB to ship (limit "
                           f"{MAX_BYTES / 2**20:.0f} MB)",
                           f"list only the code in {root / INCLUDE_FILE}, or keep data out of the git repository")
    snap = CodeSnapshot(str(root), tuple(files), h.hexdigest()[:16], size)
    _snapshots[cache_key] = (time.monotonic(), snap)
    return snap


def archive(snap: CodeSnapshot) -> bytes:
    """A tar.gz of the snapshot's files (plain files only; modes 644/755)."""
    buf = io.BytesIO()
    root = Path(snap.root)
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for f in snap.files:
            p = root / f
            data = p.read_bytes()
            info = tarfile.TarInfo(f)
            info.size = len(data)
            info.mode = 0o755 if os.access(p, os.X_OK) else 0o644
            info.mtime = int(p.stat().st_mtime)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
