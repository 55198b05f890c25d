"""A project shared by people and machines: where its state lives, whether that folder is
safe for SQLite, and who is at the keyboard.

* `project_paths`: a project's files given its state root: `<project>/.nero`, or, with a
  state root (a folder on a local disk: the user setting `state_root` or env
  `NERO_STATE_ROOT`, read by `userconfig.state_root`; `reconcile.paths_of` joins the two),
  `<state root>/<project name>-<hash of its path>` (`paths.state_folder_name`).
* `check_state_folder`: refuses a state root while the project's state is still in its
  `.nero` (a new, empty state would submit every run again: the message says how to move
  it), and (`NetworkStateError`, exit 2) a state folder on a network
  file system (NFS, Lustre, SMB/CIFS, Ceph, GlusterFS, BeeGFS, GPFS, sshfs…), where SQLite's
  locks are not reliable and two machines writing the store can damage it; the message
  says what to do. `NERO_ALLOW_NETWORK_STATE=1` accepts the risk. The file system is read
  from a mount table (`MountTable`, `/proc/self/mountinfo` unless told another file):
  the mount with the longest mount point that holds the folder.
* `current_user`: the OS user recorded as who submitted an attempt.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import NetworkStateError, StateError
from .paths import NERO_DIR, ProjectPaths, state_folder_name

__all__ = ["ALLOW_NETWORK_ENV", "NETWORK_TYPES", "STATE_ROOT_ENV", "Mount", "MountTable", "check_state_folder",
           "current_user", "project_paths", "state_left_behind"]

STATE_ROOT_ENV = "NERO_STATE_ROOT"
ALLOW_NETWORK_ENV = "NERO_ALLOW_NETWORK_STATE"
MOUNTINFO = "/proc/self/mountinfo"

# file system types whose locking SQLite cannot rely on (fcntl locks over a network, or none)
NETWORK_TYPES = frozenset({
    "nfs", "nfs4", "lustre", "cifs", "smb", "smb3", "smbfs", "ceph", "fuse.ceph", "glusterfs", "fuse.glusterfs",
    "beegfs", "gpfs", "fuse.sshfs", "sshfs", "afs", "openafs", "ocfs2", "gfs2", "panfs", "pvfs2", "orangefs",
    "fuse.s3fs", "fuse.rclone", "fuse.gcsfuse", "fuse.davfs2", "davfs", "ncpfs", "coda", "wekafs", "fuse.juicefs",
    "9p",
})


@dataclass(frozen=True)
class Mount:
    """One line of a mount table: where, what type, from where."""

    point: str
    fstype: str
    source: str

    @property
    def network(self) -> bool:
        return self.fstype in NETWORK_TYPES


def _unescape(field: str) -> str:
    """A mountinfo path: spaces, tabs, newlines and backslashes are written as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


class MountTable:
    """The mounts of this process (`/proc/self/mountinfo`, or the file `path` names: a test's
    own table)."""

    def __init__(self, path: str | Path = MOUNTINFO):
        self.path = Path(path)

    def mounts(self) -> list[Mount]:
        """Every mount, in the table's order (later ones cover earlier ones); none where the
        table cannot be read (no /proc)."""
        try:
            text = self.path.read_text(errors="replace")
        except OSError:
            return []
        found = []
        for line in text.splitlines():
            fields = line.split()
            if "-" not in fields[6:]:
                continue
            sep = fields.index("-", 6)
            if len(fields) < sep + 3 or len(fields) < 5:
                continue
            found.append(Mount(_unescape(fields[4]), fields[sep + 1], _unescape(fields[sep + 2])))
        return found

    def mount_of(self, folder: str | Path) -> Mount | None:
        """The mount holding `folder` (links resolved in the part that exists, the rest as
        written: a folder nero will create): the one with the longest mount point that is a
        prefix of it, the last listed on a tie."""
        target = os.path.realpath(folder)
        best: Mount | None = None
        for m in self.mounts():
            point = m.point.rstrip("/") or "/"
            inside = target == point or target.startswith(point if point == "/" else point + "/")
            if inside and (best is None or len(point) >= len(best.point.rstrip("/") or "/")):
                best = m
        return best


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def project_paths(project_dir: str | Path, state_root: str = "") -> ProjectPaths:
    """The files of the project in `project_dir`: its state folder is `.nero` inside it, or,
    with a `state_root` (the user setting `state_root`, env `NERO_STATE_ROOT`:
    `userconfig.state_root`), the project's own folder below that one."""
    root = Path(project_dir).resolve()
    if not state_root.strip():
        return ProjectPaths(root)
    return ProjectPaths(root, Path(os.path.expanduser(state_root.strip())).absolute() / state_folder_name(root))


def state_left_behind(paths: ProjectPaths) -> Path | None:
    """The project's state store still in `<project>/.nero` while a state root moves the
    state elsewhere and nothing is there yet; None otherwise."""
    left = paths.root / NERO_DIR / "state.db"
    return left if paths.state is not None and not paths.state_db.exists() and left.exists() else None


def check_state_folder(paths: ProjectPaths, mounts: MountTable | None = None,
                       env: Mapping[str, str] | None = None) -> Mount | None:
    """The network mount the state folder of `paths` is on, if it is and the user accepted it
    (`NERO_ALLOW_NETWORK_STATE=1`); None on a local disk. A state folder on a network file
    system that was not accepted raises NetworkStateError with the remedy; a state root
    whose folder has no state while `<project>/.nero` has one, StateError with the move."""
    env = _env(env)
    left = state_left_behind(paths)
    if left is not None:
        raise StateError(
            f"The state root (setting state_root, {STATE_ROOT_ENV}) moves this project's state to {paths.nero}, "
            f"but its state is still in {left.parent} "
            f"(a new, empty state would submit every run again). Move it first, with no nero running:\n"
            f"    mkdir -p '{paths.nero}' && mv '{left.parent}'/* '{paths.nero}'/ && rmdir '{left.parent}'")
    mount = (mounts or MountTable()).mount_of(paths.nero)
    if mount is None or not mount.network:
        return None
    if env.get(ALLOW_NETWORK_ENV, "").strip().lower() in ("1", "yes", "true"):
        return mount
    moved = paths.state is not None
    raise NetworkStateError(
        f"nero's state folder {paths.nero} is on a network file system ({mount.fstype} from {mount.source}, "
        f"mounted at {mount.point}). SQLite's locking is not reliable there: two machines (or a lost lock) "
        f"can damage the state, so nero opened nothing.\n"
        f"  Keep the state on a local disk: set {STATE_ROOT_ENV} to a folder on a local disk"
        f"{' (the one set now is on that network file system too)' if moved else ''}, e.g.\n"
        f"    nero config set state_root /var/tmp/$USER/nero     (or: export {STATE_ROOT_ENV}=/var/tmp/$USER/nero)\n"
        f"  and this project's state lives in <that folder>/{state_folder_name(paths.root)}; every command "
        f"that touches the project must then run on that machine, with the same setting.\n"
        f"  Or accept the risk (one machine at a time, never two nero processes on two machines): "
        f"{ALLOW_NETWORK_ENV}=1.")


def current_user() -> str:
    """The OS user this process runs as (its effective uid's name; the number where the
    user database has no name for it)."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
