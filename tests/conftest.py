"""Shared fixtures: run the real `nero` CLI, write real workbooks, clean up real jobs."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Tests stop `nero reconcile --watch` with SIGINT (Ctrl-C). A shell starting a command in the
# background (`.ci/run &` from a script) sets SIGINT to ignored, every child inherits that,
# and Python then never raises KeyboardInterrupt: the loops would not stop. A Python handler
# here is reset to the default at each child's exec, so every nero the tests start hears Ctrl-C.
signal.signal(signal.SIGINT, signal.default_int_handler)


def nero(*args: str, cwd: Path | str | None = None, timeout: float = 180, check: bool = False,
         env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the real command line, as a user would (`python -m orchestrator` = `nero`)."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"nero {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def wait_for(predicate, timeout: float = 60, every: float = 0.2, what: str = "condition"):
    """Poll `predicate` until it returns something truthy (returned), or fail after `timeout`."""
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextlib.contextmanager
def state_db(project: Path):
    """A connection to a project's real state store, closed afterwards."""
    con = sqlite3.connect(project / ".nero" / "state.db")
    try:
        yield con
    finally:
        con.close()


def write_workbook(path: Path, experiments: Iterable[Mapping[str, object]], clusters: Iterable[Mapping[str, object]] = (),
                   settings: Mapping[str, object] | None = None, metrics: Iterable[Mapping[str, object]] = ()) -> Path:
    """A real xlsx written with openpyxl, the way a user's spreadsheet looks."""
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.title = "Experiments"
    rows = list(experiments)
    headers: list[str] = []
    for r in rows:
        for k in r:
            if k not in headers:
                headers.append(k)
    ws.append(headers)
    for r in rows:
        ws.append([r.get(h) for h in headers])
    for title, data in (("Clusters", list(clusters)), ("Metrics", list(metrics))):
        if data:
            s = wb.create_sheet(title)
            hs = list(dict.fromkeys(k for d in data for k in d))
            s.append(hs)
            for d in data:
                s.append([d.get(h) for h in hs])
    if settings:
        s = wb.create_sheet("Settings")
        s.append(["key", "value"])
        for k, v in settings.items():
            s.append([k, v])
    path.parent.mkdir(parents=True, exist_ok=True)
    wb.save(path)
    return path


def kill_jobs(root: Path) -> None:
    for pid_file in root.rglob("runs/**/pid"):
        if (pid_file.parent / "exit_code").exists():
            continue
        try:
            os.killpg(int(pid_file.read_text().strip()), signal.SIGKILL)
        except (ValueError, ProcessLookupError, PermissionError):
            pass


# nero's user-level settings (orchestrator/userconfig.py): no test reads the real user's file
# or a NERO_<KEY> variable of the shell that started pytest; a test that wants a user file
# writes the one NERO_CONFIG names here (its own, empty folder).
_SETTING_VARIABLES = ("NERO_DEFAULT_CLUSTER", "NERO_DIGEST", "NERO_STATE_ROOT", "NERO_EMAIL_TO", "NERO_EMAIL_FROM",
                      "NERO_SMTP_HOST", "NERO_SMTP_PORT", "NERO_SMTP_SECURITY", "NERO_SMTP_USER")


_NO_USER_FILE = Path(tempfile.mkdtemp(prefix="nero-tests-user-config-"))
atexit.register(shutil.rmtree, _NO_USER_FILE, True)
os.environ["NERO_CONFIG"] = str(_NO_USER_FILE / "config.toml")  # what session fixtures' nero reads too
for _name in _SETTING_VARIABLES:
    os.environ.pop(_name, None)


@pytest.fixture(autouse=True)
def user_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user file every nero in the test reads (absent until the test writes it)."""
    path = tmp_path_factory.mktemp("user-config") / "config.toml"
    monkeypatch.setenv("NERO_CONFIG", str(path))
    for name in _SETTING_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return path


@pytest.fixture
def project(tmp_path: Path):
    """A project folder whose leftover jobs are killed after the test."""
    yield tmp_path
    kill_jobs(tmp_path)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT

