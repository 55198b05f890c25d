"""A project shared by people (issue #16): files that follow the umask, two Unix users in one
group on one project, who submitted each attempt, and a state folder kept off network file
systems (detected from a mount table, moved with NERO_STATE_ROOT)."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import sqlite3
import stat
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest
from conftest import ROOT, kill_jobs, nero, wait_for, write_workbook

from orchestrator.errors import NetworkStateError
from orchestrator.files import create_file, write_atomically
from orchestrator.paths import state_folder_name
from orchestrator.project import Project
from orchestrator.sharing import MountTable, check_state_folder, project_paths
from orchestrator.shown import who_shown
from orchestrator.state import Store

GROUP, ALICE, BOB = "nero-share", "nero-alice", "nero-bob"


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# ------------------------------------------------------------------ the umask

@pytest.mark.parametrize("mask", [0o002, 0o022, 0o077])
def test_files_nero_writes_get_the_umasks_mode(tmp_path: Path, mask: int):
    old = os.umask(mask)
    try:
        written = write_atomically(tmp_path / "results.xlsx", b"x")
        store = Store(tmp_path / ".nero" / "state.db")
        store.close()
        made = create_file(tmp_path / "lock")
    finally:
        os.umask(old)
    want = 0o666 & ~mask
    assert _mode(written) == want  # never mkstemp's 0600
    assert _mode(tmp_path / ".nero" / "state.db") == want  # SQLite alone would make it 0644
    assert _mode(made) == want


# ------------------------------------------------------------ who, migration

def test_a_store_from_before_who_gets_the_column(tmp_path: Path):
    db = tmp_path / ".nero" / "state.db"
    Store(db).close()
    con = sqlite3.connect(db)
    con.execute("ALTER TABLE attempts DROP COLUMN who")  # the store as an older nero left it
    con.commit()
    con.close()
    store = Store(db)
    try:
        columns = {r[1] for r in store.db.execute("PRAGMA table_info(attempts)")}
        assert "who" in columns
    finally:
        store.close()


def test_who_is_shown_when_several_people_submitted():
    assert not who_shown([])
    assert not who_shown(["ana"])
    assert not who_shown(["ana", "", "ana"])
    assert who_shown(["ana", "bo"])


def test_who_submitted_shows_on_every_surface_once_two_people_did(project: Path):
    """Attempts recorded as two people's nero records them (no second Unix user needed):
    status (table, --json, --csv), history (--who), results.xlsx and the Python API agree."""
    from openpyxl import load_workbook

    from orchestrator.model import NewAttempt, RunState, Update
    from orchestrator.reconcile import Reconciler

    wb = write_workbook(project / "experiments.xlsx", [{"id": "a", "command": "echo loss={{ x }}", "x": "[1, 2, 3]"}])
    rec = Reconciler(wb)
    rec.load()
    people = ["ana", "ana", "bo"]
    rec.store.record_intents([NewAttempt(s, 1, "local", str(project / "runs" / str(i)), s.command, who=people[i])
                              for i, s in enumerate(rec.specs)], 1000.0)
    rec.store.apply([Update(s.key, 1, state=RunState.COMPLETED, intent=False, started_at=1001.0, ended_at=1002.0,
                            reason="exit code 0", last={"loss": 1.0}, best={"loss": 1.0}) for s in rec.specs])
    keys = [s.key for s in rec.specs]
    rec.close()

    rows = json.loads(nero("status", str(project), "--json", check=True).stdout)
    assert {r["run"]: r["who"] for r in rows} == dict(zip(keys, people, strict=True))
    table = nero("status", str(project), check=True).stdout.splitlines()
    assert table[0].split()[:5] == ["#", "run", "state", "cluster", "who"]
    assert table[3].split()[4] == "bo"
    csv = nero("status", str(project), "--csv", check=True).stdout.splitlines()
    assert "who" in csv[0].split(",") and csv[3].split(",")[csv[0].split(",").index("who")] == "bo"
    bo = json.loads(nero("history", str(project), "--who", "bo", "--json", check=True).stdout)
    assert {e["run"] for e in bo} == {keys[2]} and {e["who"] for e in bo} == {"bo"}
    assert json.loads(nero("history", str(project), "--who", "nobody", "--json", check=True).stdout) == []
    assert "who" in nero("history", str(project), check=True).stdout.splitlines()[0].split()
    nero("export", str(project), "-o", str(project / "out.csv"), check=True)
    import csv as csv_module

    with open(project / "out.csv", newline="") as f:
        assert [r["who"] for r in csv_module.DictReader(f)] == people
    with Project(wb) as p:
        p.load()
        assert p.who_submitted() == ("ana", "bo")
        p.write_results()
    ws = load_workbook(project / "results.xlsx", read_only=True)["Summary"]
    head, *values = list(ws.iter_rows(values_only=True))
    assert [v[head.index("who")] for v in values] == people
    assert head.index("who") == head.index("git_commit") - 1


def test_one_persons_project_has_no_who_column(project: Path):
    wb = write_workbook(project / "experiments.xlsx", [{"id": "a", "command": "echo loss=1"}])
    nero("reconcile", str(project), "--until-done", "--interval", "0.3", check=True)
    from openpyxl import load_workbook

    assert "who" not in nero("status", str(project), check=True).stdout.splitlines()[0].split()
    head = next(load_workbook(project / "results.xlsx", read_only=True)["Summary"].iter_rows(values_only=True))
    assert "who" not in head
    with Project(wb) as p:
        assert len(p.who_submitted()) == 1 and p.runs()[0].who == p.who_submitted()[0]


# --------------------------------------------------------- network file systems

_MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /home rw,relatime shared:20 - nfs4 fileserver:/export/home rw,vers=4.2
41 40 8:2 / /home/ana/scratch rw,relatime shared:21 - xfs /dev/sdb1 rw
42 22 0:40 / /lus\\040tre rw,relatime shared:22 - lustre 10.0.0.1@o2ib:/fs rw
43 22 0:41 / /mnt/share rw,relatime shared:23 master:5 - cifs //nas/share rw
"""


@pytest.fixture
def mounts(tmp_path: Path) -> MountTable:
    table = tmp_path / "mountinfo"
    table.write_text(_MOUNTINFO)
    return MountTable(table)


def test_the_mount_of_a_folder_is_the_longest_mount_point_above_it(mounts: MountTable):
    assert mounts.mount_of("/home/ana/project/.nero").fstype == "nfs4"
    assert mounts.mount_of("/home/ana/scratch/p/.nero").fstype == "xfs"  # a local disk mounted inside the NFS one
    assert mounts.mount_of("/homeless/p").fstype == "ext4"  # a prefix of the name is not a parent
    assert mounts.mount_of("/lus tre/p").fstype == "lustre"  # mountinfo's escapes
    assert mounts.mount_of("/mnt/share/x").network
    assert not mounts.mount_of("/var/tmp").network


def test_a_state_folder_on_nfs_is_refused_with_the_remedy(mounts: MountTable, tmp_path: Path):
    paths = project_paths("/home/ana/project")
    with pytest.raises(NetworkStateError) as e:
        check_state_folder(paths, mounts, env={})
    text = str(e.value)
    assert e.value.exit_code == 2
    assert "/home/ana/project/.nero is on a network file system (nfs4 from fileserver:/export/home" in text
    assert "nero config set state_root" in text and "export NERO_STATE_ROOT=" in text
    assert state_folder_name(Path("/home/ana/project")) in text
    assert "NERO_ALLOW_NETWORK_STATE=1" in text
    # the remedy works: a state root on a local disk
    moved = project_paths("/home/ana/project", "/var/tmp/ana/nero")
    assert moved.state_db == Path("/var/tmp/ana/nero") / state_folder_name(Path("/home/ana/project")) / "state.db"
    assert check_state_folder(moved, mounts, env={}) is None
    # a state root on the network file system too is refused, and says so
    with pytest.raises(NetworkStateError, match="the one set now is on that network file system too"):
        check_state_folder(project_paths("/home/ana/project", "/mnt/share/nero"), mounts, env={})
    # accepting the risk
    assert check_state_folder(paths, mounts, env={"NERO_ALLOW_NETWORK_STATE": "1"}).fstype == "nfs4"


def test_a_project_whose_state_folder_is_on_a_network_file_system_opens_nothing(tmp_path: Path):
    workbook = write_workbook(tmp_path / "p" / "experiments.xlsx", [{"id": "a", "command": "echo loss=1"}])
    table = tmp_path / "mountinfo"
    table.write_text(f"22 1 8:1 / / rw - ext4 /dev/sda1 rw\n50 22 0:50 / {tmp_path} rw - nfs 10.1.1.1:/vol rw\n")
    with pytest.raises(NetworkStateError, match=f"{tmp_path / 'p' / '.nero'} is on a network file system"):
        Project(workbook, mounts=MountTable(table))
    assert not (tmp_path / "p" / ".nero").exists()
    with Project(workbook, mounts=MountTable(tmp_path / "no-such-table")) as project:  # no /proc: nothing known
        assert project.run_count() == 0


@pytest.mark.slow
def test_with_a_state_root_the_project_keeps_its_state_there(project: Path, tmp_path_factory):
    state_root = tmp_path_factory.mktemp("state-root")
    env = {"NERO_STATE_ROOT": str(state_root)}
    write_workbook(project / "experiments.xlsx", [{"id": "a", "command": "echo loss={{ x }}", "x": "[1, 2]"}],
                   settings={"email_to": "team@example.org"})
    proc = nero("reconcile", str(project), "--until-done", "--interval", "0.3", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    state = state_root / state_folder_name(project.resolve())
    assert (state / "state.db").is_file()
    # nothing of the state beside the workbook: only the project's identity, which stays with it
    assert {p.name for p in (project / ".nero").iterdir()} <= {"project_id"}
    assert (project / "results.xlsx").is_file()
    rows = json.loads(nero("status", str(project), "--json", env=env, check=True).stdout)
    assert sorted(r["state"] for r in rows) == ["completed", "completed"]
    # without the setting, the project's folder holds no state: nero says there are no runs
    assert "No runs yet" in nero("status", str(project), env={"NERO_STATE_ROOT": ""}).stdout

    # a state root set after runs were made beside the workbook: nero refuses, says how to move it
    moved_back = project.parent / f"{project.name}-second"
    shutil.copytree(project, moved_back, ignore=shutil.ignore_patterns("runs"))
    shutil.copytree(state, moved_back / ".nero", dirs_exist_ok=True)
    refused = nero("reconcile", str(moved_back), env=env)
    assert refused.returncode == 1 and "its state is still in" in refused.stderr, refused.stderr
    assert f"mv '{moved_back.resolve() / '.nero'}'/*" in refused.stderr
    status = nero("status", str(moved_back), env=env)
    assert status.returncode == 1 and "its state is still in" in status.stderr  # not "No runs yet"


# -------------------------------------------------- two Unix users, one project

def _ensure_group_and_users() -> None:
    if subprocess.run(["getent", "group", GROUP], capture_output=True).returncode != 0:
        subprocess.run(["groupadd", GROUP], check=True, capture_output=True)
    for user in (ALICE, BOB):
        if subprocess.run(["id", user], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "--create-home", "--no-user-group", "--gid", GROUP, "--shell", "/bin/bash",
                            user], check=True, capture_output=True)


@pytest.fixture
def shared_project():
    """A project folder shared by two users of one group: group-owned, setgid, umask 002."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create the two Unix users and their group (useradd, groupadd)")
    if not (shutil.which("runuser") and shutil.which("useradd")):
        pytest.skip("needs runuser and useradd (util-linux, passwd)")
    _ensure_group_and_users()
    _python_for(ALICE)
    base = Path(tempfile.mkdtemp(prefix="nero-shared-", dir="/tmp"))
    folder = base / "project"
    folder.mkdir()
    gid = grp.getgrnam(GROUP).gr_gid
    for d in (base, folder):
        os.chown(d, pwd.getpwnam(ALICE).pw_uid, gid)
        os.chmod(d, 0o2775)
    yield folder
    kill_jobs(folder)
    shutil.rmtree(base, ignore_errors=True)


def _python_for(user: str) -> tuple[str, str]:
    """A Python the test users can run, with nero's dependencies: this one, or (when it lives
    where they cannot go, a pyenv under /root) the system's Python of the same version with
    this environment's packages on PYTHONPATH. Skips, saying why, when there is neither."""
    site = sysconfig.get_paths()["purelib"]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [(sys.executable, str(ROOT))] + [(f"{d}/{version}", f"{ROOT}:{site}") for d in ("/usr/local/bin", "/usr/bin")]
    for python, path in candidates:
        probe = subprocess.run(["runuser", "-u", user, "--", "env", "-i", f"PYTHONPATH={path}", python, "-c",
                                "import orchestrator.cli, openpyxl"], capture_output=True, text=True)
        if probe.returncode == 0:
            return python, path
    pytest.skip(f"no Python with nero's dependencies that user {user} may run ({sys.executable} is not reachable "
                f"by other users, nor is a system {version}); install nero where the group can read it")


def _as(user: str, *command: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """`command` run as `user` with umask 002 (a group sharing a project), nero from this checkout
    (`python` in `command` is the interpreter `_python_for` found)."""
    home = pwd.getpwnam(user).pw_dir
    python, path = _python_for(user)
    command = tuple(python if c == "python" else c for c in command)
    env = ["env", "-i", f"HOME={home}", f"USER={user}", f"LOGNAME={user}", "PATH=" + os.environ.get("PATH", ""),
           f"PYTHONPATH={path}", "COLUMNS=200", "LANG=C.UTF-8"]
    script = 'umask 002 && exec "$@"'
    return subprocess.run(["runuser", "-u", user, "--", *env, "sh", "-c", script, "sh", *command],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _nero_as(user: str, *args: str) -> subprocess.CompletedProcess:
    return _as(user, "python", "-m", "orchestrator", *args)


_READ_RESULTS = """
import sys
from openpyxl import load_workbook
ws = load_workbook(sys.argv[1], read_only=True)["Summary"]
rows = [[c for c in r] for r in ws.iter_rows(values_only=True)]
head = rows[0]
print("|".join(str(h) for h in head))
for r in rows[1:]:
    print("|".join("" if v is None else str(v) for v in r))
"""


def _results_as(user: str, path: Path) -> list[dict[str, str]]:
    proc = _as(user, "python", "-c", _READ_RESULTS, str(path))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    head = lines[0].split("|")
    return [dict(zip(head, line.split("|"), strict=False)) for line in lines[1:]]


def _no_trouble(proc: subprocess.CompletedProcess) -> None:
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text and "Permission denied" not in text and "readonly" not in text, text


@pytest.mark.slow
def test_two_users_in_one_group_share_a_project(shared_project: Path):
    folder = shared_project
    slow = "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16; do echo loss=$i; sleep 0.5; done"
    rows = [{"id": "slow", "command": slow},
            {"id": "ok", "command": "echo loss=0.5 acc=0.9"},
            {"id": "bad", "command": "echo loss=2; exit 3", "notify": "failed"}]
    write_workbook(folder / "experiments.xlsx", rows, settings={"email_to": "team@example.org"})
    os.chown(folder / "experiments.xlsx", pwd.getpwnam(ALICE).pw_uid, grp.getgrnam(GROUP).gr_gid)
    os.chmod(folder / "experiments.xlsx", 0o664)

    # Alice starts the runs (real local jobs, as Alice)
    first = _nero_as(ALICE, "reconcile", str(folder))
    assert first.returncode == 0, first.stdout + first.stderr

    def slow_state() -> str:
        proc = _nero_as(BOB, "status", str(folder), "--json")
        _no_trouble(proc)
        assert proc.returncode == 0, proc.stderr
        return next(r["state"] for r in json.loads(proc.stdout) if r["run"] == "slow")

    # Bob looks while Alice's job runs: it is running (its working folder is Alice's to read,
    # not Bob's), never taken for lost
    assert wait_for(lambda: slow_state() == "running", timeout=30, what="Alice's job running, as Bob sees it")
    done = _nero_as(ALICE, "reconcile", str(folder), "--until-done", "--interval", "0.5")
    assert done.returncode == 1, done.stdout + done.stderr  # `bad` failed, as it should
    _no_trouble(done)

    nero_dir = folder / ".nero"
    group = grp.getgrnam(GROUP).gr_gid
    for p in [nero_dir, nero_dir / "state.db", folder / "results.xlsx", *nero_dir.rglob("*"),
              *(folder / "runs").rglob("*")]:
        if p.is_symlink() or stat.S_ISFIFO(p.lstat().st_mode):
            continue
        assert _mode(p) & 0o060 == 0o060, f"{p} is {oct(_mode(p))}: the group cannot read and write it"
        assert p.stat().st_gid == group, f"{p} lost the project's group"
    emls = list((nero_dir / "outbox").glob("*.eml"))
    assert emls, "a failure notice in the outbox"

    # Bob: status, the results workbook (with openpyxl, as Bob), the outbox
    status = _nero_as(BOB, "status", str(folder))
    assert status.returncode == 0, status.stderr
    _no_trouble(status)
    assert "slow" in status.stdout and "failed" in status.stdout
    assert " who " not in status.stdout.splitlines()[0]  # one person submitted so far: no who column
    by_run = {r["run"]: r for r in _results_as(BOB, folder / "results.xlsx")}
    assert by_run["ok"]["state"] == "completed" and by_run["bad"]["state"] == "failed"
    mail = _as(BOB, "cat", str(emls[0]))
    assert mail.returncode == 0 and "bad" in mail.stdout

    # Bob adds a row and reconciles too
    edit = (f"from openpyxl import load_workbook\nwb = load_workbook({str(folder / 'experiments.xlsx')!r})\n"
            f"wb['Experiments'].append(['bobs', 'echo loss=0.1'])\nwb.save({str(folder / 'experiments.xlsx')!r})\n")
    assert _as(BOB, "python", "-c", edit).returncode == 0
    bobs = _nero_as(BOB, "reconcile", str(folder), "--until-done", "--interval", "0.5")
    _no_trouble(bobs)
    assert bobs.returncode == 1, bobs.stdout + bobs.stderr  # `bad` is still failed; `bobs` completed

    # who submitted each attempt, on every surface
    rows = {r["run"]: r for r in json.loads(_nero_as(ALICE, "status", str(folder), "--json").stdout)}
    assert {k: r["who"] for k, r in rows.items()} == {"slow": ALICE, "ok": ALICE, "bad": ALICE, "bobs": BOB}
    assert rows["bobs"]["state"] == "completed"
    table = _nero_as(ALICE, "status", str(folder)).stdout.splitlines()
    assert "who" in table[0].split()
    assert any("bobs" in line and BOB in line for line in table)
    by_run = {r["run"]: r for r in _results_as(ALICE, folder / "results.xlsx")}
    assert by_run["bobs"]["who"] == BOB and by_run["ok"]["who"] == ALICE
    history = json.loads(_nero_as(ALICE, "history", str(folder), "--who", BOB, "--json").stdout)
    assert history and {e["run"] for e in history} == {"bobs"} and {e["who"] for e in history} == {BOB}
    assert {e["event"] for e in history} >= {"submitting", "completed"}
    alice = json.loads(_nero_as(BOB, "history", str(folder), "--who", ALICE, "--json").stdout)
    assert {e["run"] for e in alice} == {"slow", "ok", "bad"}
