"""The testbed itself works: every real component nero's tests talk to answers as documented.

Runs against what `bash tests/testbed/up.sh` started, found through the variables it writes to
`$NERO_TESTBED_DIR/env.sh` (source that file before pytest). A service whose variables are
missing is skipped, with a reason naming tests/testbed/up.sh.
"""

from __future__ import annotations

import mailbox
import os
import shlex
import shutil
import smtplib
import subprocess
import time
import uuid
from email.message import EmailMessage
from pathlib import Path

import pytest

# one worker runs every test that talks to the testbed's sshd, Slurm and SGE, in order
# (one of them stops and restarts sshd): tests/conftest.py
pytestmark = pytest.mark.xdist_group("testbed")

paramiko = pytest.importorskip("paramiko")

UP = "bash tests/testbed/up.sh"


def need(*names: str) -> dict[str, str]:
    """The named env vars, or skip the test naming up.sh."""
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        where = os.environ.get("NERO_TESTBED_DIR", "/tmp/nero-testbed")
        pytest.skip(
            f"{', '.join(missing)} not set: run `{UP}` (as root) and "
            f"`. {where}/env.sh` before pytest"
        )
    return {n: os.environ[n] for n in names}


SSH_VARS = (
    "NERO_TEST_SSH_HOST",
    "NERO_TEST_SSH_PORT",
    "NERO_TEST_SSH_USER",
    "NERO_TEST_SSH_KEY",
    "NERO_TEST_KNOWN_HOSTS",
)


def connect(known_hosts: str | None = None, user: str | None = None) -> paramiko.SSHClient:
    """Key login with host-key checking against the testbed's known_hosts (unknown -> reject)."""
    env = need(*SSH_VARS)
    client = paramiko.SSHClient()
    client.load_host_keys(known_hosts or env["NERO_TEST_KNOWN_HOSTS"])
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        env["NERO_TEST_SSH_HOST"],
        port=int(env["NERO_TEST_SSH_PORT"]),
        username=user or env["NERO_TEST_SSH_USER"],
        key_filename=env["NERO_TEST_SSH_KEY"],
        look_for_keys=False,
        allow_agent=False,
        timeout=15,
    )
    return client


@pytest.fixture(scope="module")
def ssh():
    client = connect()
    yield client
    client.close()


def run(client: paramiko.SSHClient, cmd: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run cmd in a non-interactive session (as nero will), return (rc, stdout, stderr)."""
    stdin, out, err = client.exec_command(cmd, timeout=timeout)
    stdin.close()  # not left to the garbage collector (it may close it in paramiko's own thread: a deadlock)
    # recv_exit_status() waits forever: every wait on the testbed has its own deadline
    if not out.channel.status_event.wait(timeout):
        out.channel.close()
        raise AssertionError(f"{cmd!r} did not finish within {timeout:.0f} s")
    rc = out.channel.recv_exit_status()
    return rc, out.read().decode(), err.read().decode()


def ok(client: paramiko.SSHClient, cmd: str, timeout: float = 60) -> str:
    rc, out, err = run(client, cmd, timeout)
    assert rc == 0, f"{cmd!r} -> rc {rc}\nstdout: {out}\nstderr: {err}"
    return out


def wait_until(fn, timeout: float, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


@pytest.fixture
def workdir(ssh):
    """A fresh directory in the test user's home on the 'remote' side."""
    d = f"nero-work/testbed-{uuid.uuid4().hex[:8]}"
    ok(ssh, f"mkdir -p {d}")
    yield d
    run(ssh, f"rm -rf {d}")


# ------------------------------------------------------------------------------------ ssh
def test_ssh_key_login_non_root_with_home_and_python(ssh):
    env = need(*SSH_VARS)
    out = ok(
        ssh,
        'id -un; id -u; test -w "$HOME" && echo writable; python3 -c "import sys; print(sys.version_info[:2] >= (3, 8))"',
    )
    user, uid, writable, py = out.split()
    assert user == env["NERO_TEST_SSH_USER"] and uid != "0"
    assert writable == "writable" and py == "True"


def test_a_second_login_is_another_user_on_the_same_host(ssh):
    env = need(*SSH_VARS, "NERO_TEST_SSH_USER2", "NERO_TEST_SSH_HOME", "NERO_TEST_SSH_HOME2")
    other = connect(user=env["NERO_TEST_SSH_USER2"])
    try:
        user, uid, home, host = ok(other, 'id -un; id -u; echo "$HOME"; hostname').split()
        first_uid, first_host = ok(ssh, "id -u; hostname").split()
        assert (user, home, host) == (env["NERO_TEST_SSH_USER2"], env["NERO_TEST_SSH_HOME2"], first_host)
        assert uid not in ("0", first_uid)
        ok(other, "test -w nero-work")
        rc, _, _ = run(other, f"touch {env['NERO_TEST_SSH_HOME']}/nero-work/not-yours")
        assert rc != 0  # two people, not one: neither writes in the other's home
    finally:
        other.close()


def test_ssh_unknown_host_key_is_rejected(tmp_path):
    """Host-key checking really is on: with an empty known_hosts the login must fail."""
    need(*SSH_VARS)
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        connect(known_hosts=str(empty))


def test_ssh_config_alias_with_paramiko_and_fabric():
    env = need(*SSH_VARS, "NERO_TEST_SSH_CONFIG", "NERO_TEST_SSH_ALIAS")
    cfg = paramiko.SSHConfig.from_path(env["NERO_TEST_SSH_CONFIG"]).lookup(
        env["NERO_TEST_SSH_ALIAS"]
    )
    assert cfg["hostname"] == env["NERO_TEST_SSH_HOST"]
    assert cfg["port"] == env["NERO_TEST_SSH_PORT"]
    assert cfg["user"] == env["NERO_TEST_SSH_USER"]
    assert cfg["identityfile"] == [env["NERO_TEST_SSH_KEY"]]
    assert cfg["userknownhostsfile"] == env["NERO_TEST_KNOWN_HOSTS"]

    fabric = pytest.importorskip("fabric")
    # only the testbed's ssh_config, never the developer's ~/.ssh/config
    config = fabric.Config(runtime_ssh_path=env["NERO_TEST_SSH_CONFIG"])
    with fabric.Connection(
        env["NERO_TEST_SSH_ALIAS"],
        config=config,
        connect_kwargs={"look_for_keys": False, "allow_agent": False},
    ) as c:
        # fabric accepts any host key by default: pin it
        c.client.load_host_keys(env["NERO_TEST_KNOWN_HOSTS"])
        c.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        assert c.host == env["NERO_TEST_SSH_HOST"] and str(c.port) == env["NERO_TEST_SSH_PORT"]
        assert c.user == env["NERO_TEST_SSH_USER"]
        r = c.run("id -un", hide=True, in_stream=False)
        assert r.stdout.strip() == env["NERO_TEST_SSH_USER"]


def test_openssh_cli_with_alias():
    env = need(*SSH_VARS, "NERO_TEST_SSH_CONFIG", "NERO_TEST_SSH_ALIAS")
    if not shutil.which("ssh"):
        pytest.skip("no OpenSSH client")
    p = subprocess.run(
        ["ssh", "-F", env["NERO_TEST_SSH_CONFIG"], env["NERO_TEST_SSH_ALIAS"], "id -un"],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == env["NERO_TEST_SSH_USER"]


def test_sftp_put_and_get(ssh, workdir, tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("héllo\n")
    with ssh.open_sftp() as sftp:
        home = sftp.normalize(".")  # SFTP does not expand ~
        sftp.put(str(src), f"{home}/{workdir}/a.txt")
        assert ok(ssh, f"cat {workdir}/a.txt") == "héllo\n"


# ------------------------------------------------------------------------------------ slurm
def sacct_state(client, jid: str) -> list[tuple[str, str, str]]:
    out = ok(client, f"sacct -n -X -P -o JobID,State,ExitCode -j {jid}")
    return [tuple(line.split("|")) for line in out.splitlines() if line]


def wait_sacct(
    client,
    jid: str,
    timeout: float,
    done=lambda st: st not in ("PENDING", "RUNNING", "REQUEUED", ""),
    count: int = 1,
):
    """Wait until sacct lists `count` records for jid (array tasks: one per task), all done."""

    def check():
        rows = sacct_state(client, jid)
        return rows if len(rows) >= count and all(done(r[1]) for r in rows) else None

    return wait_until(check, timeout, what=f"job {jid} to finish in sacct")


def sbatch(client, workdir: str, args: str, script: str) -> str:
    out = ok(client, f"cd {workdir} && sbatch --parsable {args} --wrap {shlex.quote(script)}")
    return out.strip().split(";")[0]


@pytest.fixture
def slurm(ssh):
    need("NERO_TEST_SLURM")
    return ssh


def test_slurm_cli_over_ssh(slurm):
    out = ok(slurm, "command -v sbatch squeue sacct scancel && sinfo -h -o '%T %c'")
    state, cpus = out.splitlines()[-1].split()
    assert state in ("idle", "mixed", "allocated", "completing")
    assert int(cpus) >= 2


def test_slurm_sbatch_and_sacct(slurm, workdir):
    jid = sbatch(
        slurm,
        workdir,
        "-J nero-tb -o out.txt",
        'echo "hi from $SLURM_JOB_ID"; python3 -c "print(6*7)"',
    )
    rows = wait_sacct(slurm, jid, 60)
    assert rows == [(jid, "COMPLETED", "0:0")]
    assert ok(slurm, f"cat {workdir}/out.txt") == f"hi from {jid}\n42\n"
    # squeue -t all keeps finished jobs visible (MinJobAge=3600)
    assert "COMPLETED" in ok(slurm, f"squeue -h -t all -j {jid} -o %T")


def test_slurm_failed_job_exit_code(slurm, workdir):
    jid = sbatch(slurm, workdir, "-o /dev/null", "exit 3")
    assert wait_sacct(slurm, jid, 60) == [(jid, "FAILED", "3:0")]


def test_slurm_scancel(slurm, workdir):
    jid = sbatch(slurm, workdir, "-o /dev/null", "sleep 300")
    wait_until(lambda: "RUNNING" in ok(slurm, f"squeue -h -j {jid} -o %T"), 30, what="job to run")
    ok(slurm, f"scancel {jid}")
    rows = wait_sacct(slurm, jid, 60)
    assert rows[0][1].startswith("CANCELLED")


def test_slurm_mem_limit_is_enforced(slurm, workdir):
    jid = sbatch(
        slurm, workdir, "--mem=50M -o /dev/null", "python3 -c 'a = b\"x\" * (500 * 2**20)'"
    )
    assert wait_sacct(slurm, jid, 60)[0][1] == "OUT_OF_MEMORY"


def test_slurm_array_of_100(slurm, workdir):
    t0 = time.monotonic()
    jid = sbatch(slurm, workdir, "--array=1-100 -o out-%a.txt", 'echo "$SLURM_ARRAY_TASK_ID"')
    # pending array tasks are not all listed by sacct yet: wait for 100 records
    rows = wait_sacct(slurm, jid, 180, count=100)
    assert len(rows) == 100 and {r[1] for r in rows} == {"COMPLETED"}, rows
    assert ok(slurm, f"cat {workdir}/out-100.txt") == "100\n"
    print(f"100-task array finished in {time.monotonic() - t0:.1f} s")


@pytest.mark.slow
def test_slurm_time_limit_is_enforced(slurm, workdir):
    """--time=1 ends TIMEOUT 60-90 s after the start (slurmctld sweeps time limits every 30 s)."""
    t0 = time.monotonic()
    jid = sbatch(slurm, workdir, "--time=1 -o /dev/null", "sleep 300")
    rows = wait_sacct(slurm, jid, 180, done=lambda st: st not in ("PENDING", "RUNNING", ""))
    assert rows[0][1] == "TIMEOUT", rows
    print(f"--time=1 job TIMEOUT after {time.monotonic() - t0:.0f} s")


# ------------------------------------------------------------------------------------ sge
@pytest.fixture
def sge(ssh):
    need("NERO_TEST_SGE")
    return ssh


def qacct(client, jid: str) -> dict[str, str] | None:
    rc, out, _ = run(client, f"qacct -j {jid}")
    if rc != 0:
        return None
    return dict(line.split(None, 1) for line in out.splitlines() if len(line.split(None, 1)) == 2)


def test_sge_cli_over_ssh(sge):
    out = ok(sge, "command -v qsub qstat qacct qdel && echo SGE_ROOT=$SGE_ROOT && qstat -g c")
    assert "SGE_ROOT=/" in out and "all.q" in out


def test_sge_qsub_and_qacct(sge, workdir):
    script = f'cd "$HOME/{workdir}" && echo "hi from $JOB_ID" > out.txt && python3 -c "print(6*7)" >> out.txt'
    jid = ok(
        sge,
        f"cd {workdir} && echo {shlex.quote(script)} | qsub -terse -N nero-tb -o /dev/null -e /dev/null",
    ).strip()
    assert jid.isdigit(), jid
    acct = wait_until(lambda: qacct(sge, jid), 60, what=f"qacct -j {jid}")
    assert acct["failed"].strip() == "0" and acct["exit_status"].strip() == "0", acct
    assert ok(sge, f"cat {workdir}/out.txt") == f"hi from {jid}\n42\n"


def test_sge_failed_exit_code_and_sync(sge, workdir):
    rc, out, err = run(
        sge, f"cd {workdir} && echo 'exit 3' | qsub -sync y -o /dev/null -e /dev/null", timeout=90
    )
    # qsub -sync y exits with the job's exit code and reports it on stderr
    assert rc == 3 and "exited with exit code 3" in err, (rc, out, err)


def test_sge_qdel(sge, workdir):
    jid = ok(
        sge, f"cd {workdir} && echo 'sleep 300' | qsub -terse -o /dev/null -e /dev/null"
    ).strip()
    ok(sge, f"qdel {jid}")
    wait_until(lambda: jid not in ok(sge, "qstat"), 30, what=f"{jid} gone from qstat")


# ------------------------------------------------------------------------------------ smtp
def test_smtp_handshake_and_delivery():
    env = need("NERO_TEST_SMTP_HOST", "NERO_TEST_SMTP_PORT", "NERO_TEST_SMTP_MAILDIR")
    subject = f"nero testbed {uuid.uuid4().hex}"
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "nero@example.test", "you@example.test", subject
    msg.set_content("hello")
    with smtplib.SMTP(env["NERO_TEST_SMTP_HOST"], int(env["NERO_TEST_SMTP_PORT"]), timeout=10) as s:
        assert s.ehlo()[0] == 250
        s.send_message(msg)

    def delivered():
        box = mailbox.Maildir(env["NERO_TEST_SMTP_MAILDIR"], create=False)
        return [m for m in box if m["Subject"] == subject]

    got = wait_until(delivered, 10, interval=0.1, what="the message in the maildir")
    assert got[0].get_payload(decode=True).strip() == b"hello"


# ------------------------------------------------------------------------------------ libreoffice
def test_soffice_converts_xlsx_to_pdf(tmp_path):
    env = need("NERO_TEST_SOFFICE")
    openpyxl = pytest.importorskip("openpyxl")
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["run", "loss"])
    ws.append(["a", 0.5])
    ws["C1"] = "=SUM(B2:B2)"
    src = tmp_path / "tiny.xlsx"
    wb.save(src)
    profile = (
        tmp_path / "profile"
    )  # one profile per call: shared profiles fail silently in parallel
    p = subprocess.run(
        [
            env["NERO_TEST_SOFFICE"],
            "--headless",
            "--norestore",
            "--nolockcheck",
            f"-env:UserInstallation={profile.as_uri()}",
            "--convert-to",
            "pdf",
            "--outdir",
            str(tmp_path / "out"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    pdf = tmp_path / "out" / "tiny.pdf"
    assert p.returncode == 0 and pdf.is_file(), p.stdout + p.stderr
    assert pdf.read_bytes()[:5] == b"%PDF-"
    pdftoppm = os.environ.get("NERO_TEST_PDFTOPPM")
    if pdftoppm:
        subprocess.run(
            [pdftoppm, "-png", "-r", "50", str(pdf), str(tmp_path / "page")], check=True, timeout=60
        )
        assert list(tmp_path.glob("page*.png"))


# ------------------------------------------------------------------------------------ chromium
def test_chromium_headless_screenshot(tmp_path):
    env = need("NERO_TEST_CHROMIUM")
    page = tmp_path / "page.html"
    page.write_text("<!doctype html><h1>nero</h1>")
    shot = tmp_path / "shot.png"
    (tmp_path / "profile").mkdir()
    p = subprocess.run(
        [
            env["NERO_TEST_CHROMIUM"],
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=400,300",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert p.returncode == 0, p.stderr
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_env_points_at_existing_files():
    need(*SSH_VARS)
    for n in ("NERO_TEST_SSH_KEY", "NERO_TEST_KNOWN_HOSTS", "NERO_TEST_SSH_CONFIG"):
        if os.environ.get(n):
            assert Path(os.environ[n]).is_file(), n
