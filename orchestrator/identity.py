"""A project's stable identity: a short random id, made once and kept in `.nero/project_id`.

Two projects whose folders have the same name (`~/a/exp` and `~/b/exp`) are told apart by
it: their default workdirs on a cluster are `nero/<name>-<id8>` (`paths.remote_workdir`), and
every run folder nero writes names it as its owner (in `submit.json`, read by the agent
before it writes into an existing folder). `nero init` makes it, else the first use
(the first pass that submits or reaches a remote cluster). It is written whole and never
replaced (`files.write_once`): two processes making it at once agree on the one written
first, and it never changes afterwards, so a project's folders stay where they are.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import NeroError
from .files import write_once
from .paths import ProjectPaths

__all__ = ["project_id"]

_ID = re.compile(r"[0-9a-f]{16}")


def project_id(root: str | Path) -> str:
    """The id of the project whose folder is `root` (made now if it has none yet)."""
    path = ProjectPaths(Path(root).resolve()).project_id
    text = _read(path)
    if text is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_once(path, os.urandom(8).hex() + "\n")
        text = _read(path)
    if text is None or not _ID.fullmatch(text):
        raise NeroError(f"{path} does not hold a project id (16 hex digits) but {text!r}; restore it from a "
                        "backup (the project's folders on clusters are named after it), or delete it to make a "
                        "new one (new runs then go to new folders)")
    return text


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        return None
