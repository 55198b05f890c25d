"""Full and read-only disks, stale temporary files, and workbooks that are no .xlsx (#12).

The disks are real: a 32 MB tmpfs mounted for the test (root only; skipped with the reason
otherwise), filled with a ballast file until the kernel says ENOSPC, or remounted
read-only. The project (workbook, `.nero/`, results) lives on it; the runs' folders live on
the ordinary disk (the local cluster's `workdir`), so the jobs themselves keep writing
their output while nero's disk is full, as when a project sits on a small home volume.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import kill_jobs, nero, wait_for, write_workbook
from jobs import STEPPER

from orchestrator.errors import DiskError, StateError, WorkbookError
from orchestrator.files import STALE_AFTER_S, temporary_beside
from orchestrator.sheet import read_workbook
from orchestrator.state import Store

STEPS = 40


def _mount(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 32 MB file system (tmpfs), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = _mount(["-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)])
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        kill_jobs(tmp_path)
        for m in (tmp_path / "ro", mnt):
            if os.path.ismount(m):
                subprocess.run(["umount", "-l", str(m)], capture_output=True)


def fill(disk: Path) -> Path:
    """Fill `disk` to the last block; the ballast file to delete to free it again."""
    ballast = disk / "ballast"
    with open(ballast, "ab", buffering=0) as f:
        for size in (2**20, 4096, 512):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
    assert shutil.disk_usage(disk).free < 4096
    return ballast


def make_project(tmp_path: Path, disk: Path, steps: int = STEPS, delay: float = 0.01) -> Path:
    """A project on `disk` whose two runs print `steps` metric points into folders elsewhere."""
    (tmp_path / "stepper.py").write_text(STEPPER)
    project = disk / "p"
    write_workbook(project / "experiments.xlsx", [
        {"id": "k", "command": f"python {tmp_path / 'stepper.py'} steps={steps} delay={delay} tag={{{{ tag }}}}",
         "tag": "[1, 2]"},
    ], clusters=[{"name": "local", "kind": "local", "workdir": str(tmp_path / "runs"), "max_jobs": 4}])
    return project


def points(project: Path) -> dict[str, list[int]]:
    con = sqlite3.connect(project / ".nero" / "state.db")
    try:
        rows = con.execute("SELECT key, step FROM metrics WHERE name='loss' ORDER BY key, step").fetchall()
    finally:
        con.close()
    found: dict[str, list[int]] = {}
    for key, step in rows:
        found.setdefault(key, []).append(int(step))
    return found


def assert_clear(proc: subprocess.CompletedProcess, *phrases: str) -> None:
    """One message with exit code 3, no traceback, no advice that throws the state away."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out
    assert "Traceback" not in out and "OperationalError" not in out, out
    assert "move it aside" not in out, out
    for phrase in phrases:
        assert phrase in out, out


def test_a_full_disk_is_one_clear_message_and_nothing_is_lost(tmp_path: Path, small_disk: Path):
    """#12: every command printed a traceback ending in "state store … is unusable: disk I/O
    error; move it aside to start afresh" on a full disk, though nothing was damaged."""
    project = make_project(tmp_path, small_disk)
    done = nero("reconcile", str(project), "--until-done", "--interval", "0.3", "-q", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    before = points(project)
    assert before == {"k[tag=1]": list(range(1, STEPS + 1)), "k[tag=2]": list(range(1, STEPS + 1))}
    ballast = fill(small_disk)
    for command in ("status", "reconcile", "plan"):
        assert_clear(nero(command, str(project)), "the disk is full", f"on {small_disk}", "16 MB",
                     "Nothing was lost: nero's state is intact; free space and nero resumes.")
    ballast.unlink()
    status = nero("status", str(project), "--json")
    assert status.returncode == 0, status.stderr
    assert points(project) == before
    check = sqlite3.connect(project / ".nero" / "state.db")
    assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    check.close()


def test_the_state_store_rolls_back_and_raises_disk_error_when_its_wal_fills_the_disk(small_disk: Path):
    """#12: when nero's own WAL filled the disk the loop died with a raw
    sqlite3.OperationalError; now the write rolls back whole and raises DiskError."""
    room = small_disk / "room"
    room.write_bytes(b"\0" * 8 * 2**20)  # 8 MB to give back once the disk is full
    store = Store(small_disk / ".nero" / "state.db")
    store.set_meta("kept", "x")
    blob = "y" * (2 * 2**20)
    written = 0
    with pytest.raises(DiskError) as caught:
        for i in range(100):  # 200 MB into a 32 MB disk: one of these fails
            store.set_meta(f"blob{i}", blob)
            written += 1
    assert 0 < written < 16
    assert caught.value.mount == str(small_disk) and caught.value.total == 32 * 2**20
    assert "Nothing was lost" in str(caught.value) and "move it aside" not in str(caught.value)
    assert store.get_meta(f"blob{written}") is None  # the failed transaction left nothing
    assert store.get_meta("kept") == "x" and store.get_meta(f"blob{written - 1}") == blob
    room.unlink()
    store.set_meta(f"blob{written}", blob)  # the same write, once there is room
    assert store.get_meta(f"blob{written}") == blob
    assert store.db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    store.close()


@pytest.mark.slow
def test_the_loop_keeps_running_on_a_full_disk_and_resumes_with_every_point(tmp_path: Path, small_disk: Path):
    """#12: the loop died when the disk filled. Now it says so once, waits, and resumes
    when space returns, with every metric point ingested once."""
    steps = 60
    project = make_project(tmp_path, small_disk, steps=steps, delay=0.1)
    log = tmp_path / "loop.err"
    with open(log, "w") as err:
        loop = subprocess.Popen([sys.executable, "-m", "orchestrator", "reconcile", str(project), "--until-done",
                                 "--interval", "0.3", "-q"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err)
        try:
            wait_for(lambda: (project / ".nero" / "state.db").exists() and sum(map(len, points(project).values())) > 4,
                     timeout=60, what="the first points")
            ballast = fill(small_disk)
            wait_for(lambda: "the disk is full" in log.read_text(), timeout=60, what="the loop to say the disk is full")
            time.sleep(3)  # several passes on the full disk
            assert loop.poll() is None, log.read_text()
            ballast.unlink()
            assert loop.wait(timeout=120) == 0, log.read_text()
        finally:
            if loop.poll() is None:
                loop.kill()
    text = log.read_text()
    assert text.count("the disk is full") == 1, text
    assert "resuming" in text and "Traceback" not in text and "move it aside" not in text, text
    assert points(project) == {"k[tag=1]": list(range(1, steps + 1)), "k[tag=2]": list(range(1, steps + 1))}


def test_a_read_only_disk_is_one_clear_message(tmp_path: Path, small_disk: Path):
    """#12: a read-only mount gave a raw OSError on reconcile.lock (and tracebacks)."""
    project = make_project(tmp_path, small_disk, steps=3)
    assert nero("reconcile", str(project), "--until-done", "--interval", "0.3", "-q", timeout=120).returncode == 0
    before = points(project)
    # The state folder read-only under a reader that holds the store open (its -wal and -shm
    # exist): reading works, reconciling stops at the lock with what to do.
    holder = sqlite3.connect(project / ".nero" / "state.db")
    holder.execute("SELECT COUNT(*) FROM runs").fetchall()
    ro = tmp_path / "ro"
    ro.mkdir()
    if _mount(["--bind", str(project), str(ro)]).returncode or _mount(["-o", "remount,bind,ro", str(ro)]).returncode:
        pytest.skip("cannot make a read-only bind mount here")
    assert nero("status", str(ro)).returncode == 0
    proc = nero("reconcile", str(ro))
    assert_clear(proc, "reconcile.lock", f"mounted at {ro} is read-only", "Remount it read-write")
    holder.close()
    subprocess.run(["umount", str(ro)], check=True)
    # The whole disk read-only: every command says so.
    assert _mount(["-o", "remount,ro", str(small_disk)]).returncode == 0
    for command in ("status", "reconcile"):
        assert_clear(nero(command, str(project)), f"mounted at {small_disk} is read-only", "Nothing was lost")
    assert _mount(["-o", "remount,rw", str(small_disk)]).returncode == 0
    assert points(project) == before


def test_a_damaged_store_is_told_apart_from_a_full_disk(tmp_path: Path):
    """#12: "move it aside" is the advice only when SQLite's integrity check fails."""
    db = tmp_path / ".nero" / "state.db"
    Store(db).close()
    db.write_bytes(b"not a database at all" * 500)
    with pytest.raises(StateError) as caught:
        Store(db)
    message = str(caught.value)
    assert "is damaged" in message and "integrity check" in message and "Move it aside" in message


def test_stale_results_temporaries_are_removed_and_fresh_ones_kept(tmp_path: Path):
    """#12: each kill during a results write left a `.results.xlsx.*.tmp`/`.base` pair
    that was never removed. The writer now removes those older than 10 minutes; a younger
    one may be a concurrent writer's and stays."""
    (tmp_path / "stepper.py").write_text(STEPPER)
    write_workbook(tmp_path / "experiments.xlsx", [{"id": "s", "command": "python stepper.py steps=2 delay=0"}])
    results = tmp_path / "results.xlsx"
    stale = [temporary_beside(results), temporary_beside(results, ".base")]  # what the writer creates
    fresh = [temporary_beside(results), temporary_beside(results, ".base")]
    old = time.time() - STALE_AFTER_S - 60
    for p in stale:
        os.utime(p, (old, old))
    proc = nero("reconcile", str(tmp_path), "--until-done", "--interval", "0.3", "-q", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert results.exists()
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in fresh)
    assert sorted(p.name for p in tmp_path.glob(".results.xlsx.*")) == sorted(p.name for p in fresh)


# ---------------------------------------------------------------- .xls and encrypted workbooks
def _compound_file(streams: dict[str, bytes]) -> bytes:
    """A minimal OLE2 compound file (MS-CFB, version 3, 512-byte sectors) holding `streams`,
    each padded to 4096 bytes so that it lives in regular sectors: what an encrypted .xlsx
    is (streams EncryptionInfo and EncryptedPackage)."""
    import struct

    free, end, fat_sector, nostream = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFF
    sector = 512
    data = [v.ljust(4096, b"\0") for v in streams.values()]
    fat = [fat_sector, end]  # sector 0: the FAT, sector 1: the directory
    starts = []
    for blob in data:
        n = len(blob) // sector
        starts.append(len(fat))
        fat += [len(fat) + i + 1 for i in range(n - 1)] + [end]
    fat += [free] * (128 - len(fat))

    def entry(name: str, kind: int, left: int, right: int, child: int, start: int, size: int) -> bytes:
        raw = name.encode("utf-16-le") + b"\0\0"
        return (raw.ljust(64, b"\0") + struct.pack("<HBBIII", len(raw), kind, 1, left, right, child)
                + b"\0" * 16 + b"\0" * 4 + b"\0" * 16 + struct.pack("<IQ", start, size))

    names = list(streams)
    directory = entry("Root Entry", 5, nostream, nostream, 1, end, 0)
    for i, name in enumerate(names):
        right = i + 2 if i + 1 < len(names) else nostream
        directory += entry(name, 2, nostream, right, nostream, starts[i], len(streams[name]))
    directory = directory.ljust(sector, b"\0")
    header = (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 16 + struct.pack("<HHHHH", 0x3E, 3, 0xFFFE, 9, 6)
              + b"\0" * 6 + struct.pack("<IIIIIIIII", 0, 1, 1, 0, 4096, end, 0, end, 0)
              + struct.pack("<I", 0) + struct.pack("<I", free) * 108)
    assert len(header) == sector
    return header + struct.pack("<128I", *fat) + directory + b"".join(data)


def read_problem(path: Path) -> str:
    with pytest.raises(WorkbookError) as caught:
        read_workbook(path)
    assert caught.value.exit_code == 2
    return str(caught.value)


def test_a_password_protected_workbook_is_named_as_such(tmp_path: Path):
    """#12: an encrypted .xlsx was reported as "half-saved or damaged"."""
    path = tmp_path / "experiments.xlsx"
    path.write_bytes(_compound_file({"EncryptionInfo": b"\x04\x00\x04\x00" + b"\x40" * 200,
                                     "EncryptedPackage": os.urandom(3000)}))
    if shutil.which("file"):  # libmagic, which parses the compound file's directory, agrees
        assert "Encrypted" in subprocess.run(["file", str(path)], capture_output=True, text=True).stdout
    message = read_problem(path)
    assert "password-protected" in message and "remove the password" in message, message
    assert "half-saved" not in message and "damaged" not in message, message


@pytest.mark.skipif(shutil.which("soffice") is None, reason="LibreOffice (soffice) is not installed")
def test_an_old_xls_workbook_is_named_as_such_whatever_its_name(tmp_path: Path):
    """#12: an .xls (old binary Excel) was reported as "half-saved or damaged"; also when
    it is named experiments.xlsx. The .xls is LibreOffice's, converted from a real xlsx."""
    source = write_workbook(tmp_path / "e.xlsx", [{"id": "a", "command": "echo hi"}])
    profile = tmp_path / "lo-profile"
    subprocess.run(["soffice", "--headless", "--norestore", f"-env:UserInstallation={profile.as_uri()}",
                    "--convert-to", "xls", "--outdir", str(tmp_path / "out"), str(source)],
                   check=True, capture_output=True, timeout=120)
    xls = tmp_path / "out" / "e.xls"
    assert xls.read_bytes()[:8] == b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
    renamed = tmp_path / "experiments.xlsx"
    shutil.copy(xls, renamed)
    for path in (xls, renamed):
        message = read_problem(path)
        assert "old .xls file" in message and "save it as an Excel Workbook (.xlsx)" in message, message
        assert "half-saved" not in message and "password" not in message, message
