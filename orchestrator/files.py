"""Writing files that people or other processes open: whole or not at all.

The one home of atomic writes. A file is written beside its target under a unique
temporary name, flushed to disk (`fsync`), renamed over the target, and the folder is
synced so the rename survives a power cut. A reader therefore sees the old file or the new
one, never half of either; a crash leaves at most a hidden temporary file, which
`remove_stale_temporaries` clears.

It is also the home of what a full or read-only disk means to nero: `disk_error` turns an
error from a write (OSError, or SQLite's) into a `DiskError` naming the path, its mount
point, the space there and what nero needs; `write_atomically` raises that itself.

The job-side agent (`backends/agent.py`) runs on clusters with nothing but the standard
library and keeps its own copy of this rule, as ARCHITECTURE.md explains.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import DiskError

__all__ = ["NEEDED_BYTES", "STALE_AFTER_S", "TEMP_SUFFIX", "create_file", "disk_error", "remove_stale_temporaries",
           "sync_folder", "temporary_beside", "umask_mode", "write_atomically", "write_once"]

TEMP_SUFFIX = ".tmp"
NEEDED_BYTES = 16 * 2**20  # the free space nero asks for: a pass's state writes and a results file
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_FULL_SQLITE = {"SQLITE_FULL"}
_READ_ONLY_SQLITE = {"SQLITE_READONLY", "SQLITE_READONLY_DIRECTORY", "SQLITE_READONLY_DBMOVED"}


def disk_error(path: str | Path, error: BaseException | None = None, needed: int = NEEDED_BYTES) -> DiskError | None:
    """The DiskError `error` (raised writing `path`) stands for, or None when the disk is
    neither full nor read-only. An error that says so (ENOSPC, EDQUOT, EROFS, SQLITE_FULL)
    is one whatever the space now; a vaguer one (EIO, SQLite's "disk I/O error" or "unable
    to open database file", SQLITE_READONLY) is one when the file system is mounted
    read-only or has less than `needed` bytes free. Anything else (a permission denied, a
    damaged database) is not the disk's doing: None."""
    path = Path(path).absolute()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except OSError:
        return None
    code = getattr(error, "errno", None)
    name = str(getattr(error, "sqlite_errorname", ""))
    # Errors that may mean a full or read-only disk without saying so: then the disk decides.
    vague = error is None or code == errno.EIO or name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN"))
    free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    mounted_ro = bool(st.f_flag & os.ST_RDONLY)
    read_only = code == errno.EROFS or (mounted_ro and (vague or name in _READ_ONLY_SQLITE))
    full = code in _FULL_ERRNOS or name in _FULL_SQLITE or (vague and free < needed)
    if not (read_only or full):
        return None
    detail = os.strerror(code) if code else (str(error) if error is not None else "")
    return DiskError(str(path), _mount_point(probe), free, total, needed, read_only=read_only, detail=detail)


def _mount_point(path: Path) -> str:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return str(path)


def temporary_beside(path: Path, suffix: str = TEMP_SUFFIX) -> Path:
    """A new, empty, hidden file next to `path` (same folder, so a rename is atomic);
    DiskError when the disk is full or read-only."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as e:
        raise disk_error(path, e) or e from e
    os.close(fd)
    return Path(name)


def create_file(path: Path) -> Path:
    """`path`, created empty (and its folders) unless it exists, with the mode the umask gives a
    new file: SQLite would create a store 0644 whatever the umask, and gives its `-wal` and
    `-shm` files the store's mode, so a group sharing a project (umask 002) can all write it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except FileExistsError:
        pass
    return path


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
    against a power cut: for files rewritten often that are cheap to lose (job scripts).
    A full or read-only disk raises DiskError (the old file is left as it was)."""
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
        os.chmod(tmp, mode if mode is not None else umask_mode())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and (trouble := disk_error(path, e)) is not None:
            raise trouble from e
        raise
    if durable:
        sync_folder(path.parent)
    return path


def write_once(path: str | Path, data: bytes | str) -> bool:
    """Create `path` holding `data`, whole (written beside it, synced, then linked in
    place), unless it exists: never replaces a file, so of two processes writing at once
    exactly one wins. True if this call made it. DiskError on a full or read-only disk."""
    path = Path(path)
    tmp = temporary_beside(path)
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, umask_mode())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            return _create_exclusive(path, tmp.read_bytes())  # a file system without hard links
    except OSError as e:
        raise disk_error(path, e) or e from e
    finally:
        tmp.unlink(missing_ok=True)
    sync_folder(path.parent)
    return True


def _create_exclusive(path: Path, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # less the umask
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return True


STALE_AFTER_S = 600.0  # a temporary file this old is no live writer's


def remove_stale_temporaries(path: str | Path, older_than_s: float = STALE_AFTER_S,
                             now: float | None = None) -> list[Path]:
    """Remove the temporary files (`.NAME.*`: `.tmp`, `.base`, …) a killed writer of
    `path` left behind; return them. Those younger than `older_than_s` may be a concurrent
    writer's and are left alone."""
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


def umask_mode(full: int = 0o666) -> int:
    """`full` (0o666 for a file, 0o777 for a folder or a program) less the umask, read without
    changing it where /proc tells it (threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return full & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return full & ~mask
