"""Writing files that people or other processes open: whole or not at all.

The one home of atomic writes. A file is written beside its target under a unique
temporary name, flushed to disk (`fsync`), renamed over the target, and the folder is
synced so the rename survives a power cut. A reader therefore sees the old file or the new
one, never half of either; a crash leaves at most a hidden temporary file, which
`remove_stale_temporaries` clears.

The job-side agent (`backends/agent.py`) runs on clusters with nothing but the standard
library and keeps its own copy of this rule, as ARCHITECTURE.md explains.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["TEMP_SUFFIX", "remove_stale_temporaries", "sync_folder", "temporary_beside", "write_atomically"]

TEMP_SUFFIX = ".tmp"


def temporary_beside(path: Path, suffix: str = TEMP_SUFFIX) -> Path:
    """A new, empty, hidden file next to `path` (same folder, so a rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(name)


def sync_folder(folder: Path) -> None:
    """Make a rename inside `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomically(path: str | Path, data: bytes | str | Callable[[Path], None], *,
                     mode: int | None = None, durable: bool = True) -> Path:
    """Replace `path` with `data` (bytes, text as UTF-8, or a function that writes the
    temporary file it is given), atomically and, unless `durable=False`, synced to disk.
    The file gets `mode`, else the mode the umask gives a new file, never `mkstemp`'s
    private 0600. `durable=False` keeps the atomicity against a killed process, not
    against a power cut: for files rewritten often that are cheap to lose (job scripts)."""
    path = Path(path)
    tmp = temporary_beside(path)
    try:
        if callable(data):
            data(tmp)
        else:
            tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, mode if mode is not None else _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        sync_folder(path.parent)
    return path


def remove_stale_temporaries(path: str | Path, older_than_s: float = 3600.0,
                             now: float | None = None) -> list[Path]:
    """Remove the temporary files a killed writer of `path` left behind; return them."""
    import time

    path = Path(path)
    limit = (time.time() if now is None else now) - older_than_s
    removed = []
    for tmp in path.parent.glob(f".{path.name}.*"):
        try:
            if tmp.is_file() and tmp.stat().st_mtime < limit:
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            continue
    return removed


def _umask_mode() -> int:
    """0o666 less the umask, read without changing it where /proc tells it (threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask
