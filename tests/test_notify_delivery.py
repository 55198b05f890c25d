"""E-mail delivery and building, one behaviour at a time, against a real SMTP server
(aiosmtpd in process): refusals, deferrals, a connection that breaks after the data, a
crash while sending, login with the password from the environment or the keyring, template
overrides, grouping, and the digest schedule of the watch loop."""

from __future__ import annotations

import json
import time
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path

import pytest
from conftest import write_workbook
from test_notify import FROM, TO, Inbox, SmtpServer, free_port, set_settings

from orchestrator.digest_schedule import digest_overdue, parse_digest
from orchestrator.mail import (
    GROUP_OVER,
    Mailer,
    compose,
    message_id,
)
from orchestrator.model import Event, Settings
from orchestrator.state import Mail, Store


def _settings(port: int, **extra: object) -> Settings:
    values: dict[str, object] = {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_security": "none",
                                 "email_to": (TO,), "email_from": FROM, **extra}
    return Settings(**values)  # type: ignore[arg-type]


def _queue(mailer: Mailer, subject: str = "hello", n: int = 1) -> list[Mail]:
    mails = []
    for i in range(n):
        mid = message_id("test", FROM)
        data = compose(subject=f"{subject} {i}", sender=FROM, recipients=[TO], text="plain\n.leading dot\n",
                       html="<p>html</p>", msg_id=mid, date=time.time())
        mails.append(Mail(kind="notice", subject=f"{subject} {i}", message_id=mid, sender=FROM, recipients=(TO,),
                          message=data, eml=f"t-{{id:06d}}-{i}.eml"))
    return mailer.store.enqueue_mail(mails, time.time())


def _statuses(store: Store) -> list[str]:
    return [m.status for m in store.mail(("queued", "sending", "sent", "failed", "uncertain", "local"))]


@pytest.fixture
def mailer(tmp_path: Path):
    store = Store(tmp_path / ".nero" / "state.db")
    yield Mailer(store, tmp_path, environ={}, keyring_get=lambda service, user: None)
    store.close()


class Refusing(Inbox):
    def __init__(self, rcpt: str = "", data: list[str] | None = None, drop_after_data: bool = False):
        super().__init__()
        self.rcpt, self.data, self.drop = rcpt, list(data or []), drop_after_data

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        if self.rcpt:
            return self.rcpt
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        if self.data:
            return self.data.pop(0)
        await super().handle_DATA(server, session, envelope)
        if self.drop:  # the server has the message, the client never hears so
            server.transport.abort()
        return "250 OK"


def _server(handler: Inbox, port: int, **kw):
    from aiosmtpd.controller import Controller

    return Controller(handler, hostname="127.0.0.1", port=port, **kw)


def test_a_message_is_sent_once_with_leading_dots_intact(mailer: Mailer):
    port = free_port()
    _queue(mailer, n=3)
    with SmtpServer(port) as inbox:
        assert mailer.deliver(_settings(port)) == []
        assert mailer.deliver(_settings(port)) == []
    assert len(inbox.received) == 3
    assert _statuses(mailer.store) == ["sent"] * 3
    body = message_from_bytes(inbox.received[0][2], policy=default_policy).get_body(("plain",)).get_content()
    assert ".leading dot" in body and "..leading" not in body
    assert all(m.message == b"" for m in mailer.store.mail(("sent",)))  # the .eml keeps it, not the store


def test_a_permanent_refusal_fails_the_message_and_it_is_not_retried(mailer: Mailer):
    port = free_port()
    _queue(mailer)
    handler = Refusing(rcpt="550 5.1.1 no such user")
    server = _server(handler, port)
    server.start()
    try:
        warnings = mailer.deliver(_settings(port))
        assert any("refused" in w and "550" in w for w in warnings), warnings
        assert mailer.deliver(_settings(port)) == []
    finally:
        server.stop()
    assert _statuses(mailer.store) == ["failed"]
    assert handler.received == []


def test_a_deferred_message_is_retried_and_arrives_once(mailer: Mailer):
    port = free_port()
    _queue(mailer)
    handler = Refusing(data=["451 4.3.0 try again later"])
    server = _server(handler, port)
    server.start()
    try:
        warnings = mailer.deliver(_settings(port))
        assert any("deferred" in w for w in warnings), warnings
        assert _statuses(mailer.store) == ["queued"]
        assert mailer.deliver(_settings(port)) == []
        assert mailer.deliver(_settings(port)) == []
    finally:
        server.stop()
    assert len(handler.received) == 1
    assert _statuses(mailer.store) == ["sent"]


def test_a_connection_lost_after_the_data_is_never_resent(mailer: Mailer):
    port = free_port()
    first, second = _queue(mailer, n=2)
    handler = Refusing(drop_after_data=True)
    server = _server(handler, port)
    server.start()
    try:
        warnings = mailer.deliver(_settings(port))
        assert any("may or may not have been delivered" in w and first.eml in w for w in warnings), warnings
        handler.drop = False
        mailer.deliver(_settings(port), force=True)
        mailer.deliver(_settings(port), force=True)
    finally:
        server.stop()
    subjects = [message_from_bytes(d, policy=default_policy)["Subject"] for _, _, d in handler.received]
    assert sorted(subjects) == sorted([first.subject, second.subject])  # each exactly once
    assert _statuses(mailer.store) == ["uncertain", "sent"]


def test_a_message_left_sending_by_a_crash_is_not_sent_again(mailer: Mailer):
    port = free_port()
    crashed, waiting = _queue(mailer, n=2)
    assert mailer.store.claim_mail(crashed.id)  # nero died after the 354, before the sent mark
    with SmtpServer(port) as inbox:
        warnings = mailer.deliver(_settings(port))
    assert any(crashed.subject in w and "not resent" in w for w in warnings), warnings
    assert [message_from_bytes(d, policy=default_policy)["Subject"] for _, _, d in inbox.received] == [waiting.subject]
    assert _statuses(mailer.store) == ["uncertain", "sent"]


def test_server_down_then_up_backs_off_in_a_loop_and_delivers_once(mailer: Mailer):
    port = free_port()
    _queue(mailer)
    now = time.time()
    warnings = mailer.deliver(_settings(port), now)
    assert any("connection refused" in w and "next try in 30s" in w for w in warnings), warnings
    assert mailer.deliver(_settings(port), now + 5) == []  # backing off: not even tried
    warnings = mailer.deliver(_settings(port), now + 31)
    assert any("next try in 1m00s" in w for w in warnings), warnings
    with SmtpServer(port) as inbox:
        assert mailer.deliver(_settings(port), now + 40) == []  # still backing off
        assert mailer.deliver(_settings(port), now + 100) == []
    assert len(inbox.received) == 1 and _statuses(mailer.store) == ["sent"]


def _auth_server(handler: Inbox, port: int, seen: list[tuple[str, str]]):
    from aiosmtpd.smtp import AuthResult, LoginPassword

    def authenticator(server, session, envelope, mechanism, data):
        if isinstance(data, LoginPassword):
            seen.append((data.login.decode(), data.password.decode()))
            return AuthResult(success=data.password == b"s3cret")
        return AuthResult(success=False)

    return _server(handler, port, authenticator=authenticator, auth_require_tls=False, auth_required=True)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize("source", ["environment", "keyring"])
def test_login_with_the_password_from_the_environment_or_the_keyring(tmp_path: Path, source: str):
    port = free_port()
    store = Store(tmp_path / ".nero" / "state.db")
    environ = {"NERO_SMTP_PASSWORD": "s3cret"} if source == "environment" else {}
    keys = {("nero", "jdoe"): "s3cret"} if source == "keyring" else {}
    mailer = Mailer(store, tmp_path, environ=environ, keyring_get=lambda s, u: keys.get((s, u)))
    _queue(mailer)
    seen: list[tuple[str, str]] = []
    handler = Inbox()
    server = _auth_server(handler, port, seen)
    server.start()
    try:
        assert mailer.deliver(_settings(port, smtp_user="jdoe")) == []
    finally:
        server.stop()
        store.close()
    assert seen == [("jdoe", "s3cret")]  # the login as written (yagmail would make it jdoe@gmail.com)
    assert len(handler.received) == 1


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_without_a_password_nothing_is_sent_and_nothing_prompts(mailer: Mailer):
    port = free_port()
    _queue(mailer)
    seen: list[tuple[str, str]] = []
    handler = Inbox()
    server = _auth_server(handler, port, seen)
    server.start()
    try:
        warnings = mailer.deliver(_settings(port, smtp_user="jdoe"))
    finally:
        server.stop()
    assert any("no password for jdoe" in w and "NERO_SMTP_PASSWORD" in w and "keyring set nero jdoe" in w
               for w in warnings), warnings
    assert seen == [] and handler.received == [] and _statuses(mailer.store) == ["queued"]


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the test trusts it through SSL_CERT_FILE)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_tls_is_used_and_the_certificate_is_verified(mailer: Mailer, tmp_path: Path, monkeypatch, security: str):
    import ssl

    cert, key = _certificate(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    port = free_port()
    _queue(mailer)
    handler = Inbox()
    kw = {"tls_context": server_ctx, "require_starttls": True} if security == "starttls" else {"ssl_context": server_ctx}
    server = _server(handler, port, **kw)
    server.start()
    try:
        untrusted = mailer.deliver(_settings(port, smtp_security=security))  # not trusted yet
        assert any("CERTIFICATE_VERIFY_FAILED" in w or "certificate verify failed" in w for w in untrusted), untrusted
        assert handler.received == []
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        assert mailer.deliver(_settings(port, smtp_security=security), force=True) == []
    finally:
        server.stop()
    assert len(handler.received) == 1 and _statuses(mailer.store) == ["sent"]


# ------------------------------------------------------------------------------ notices
def _project(tmp_path: Path, n: int, settings: dict | None = None):
    from orchestrator.sheet import read_workbook
    from orchestrator.spec import expand

    path = write_workbook(tmp_path / "experiments.xlsx", [
        {"id": "grid", "command": "python x.py {{ i }}", "i": f"range(0, {n})", "notify": "failed"},
        {"id": "quiet", "command": "python x.py"},
    ], settings=settings or {"results": "results.xlsx"})
    wb = read_workbook(path)
    return wb, expand(wb)


def _events(store: Store, specs, kind: str = "failed", only: str = "grid") -> None:
    now = time.time()
    store.apply([], events=[Event(now, s.key, kind, "exit code 1: boom", 1) for s in specs if s.experiment == only])


def test_more_notices_of_one_kind_than_the_limit_become_one_message(mailer: Mailer, tmp_path: Path):
    wb, specs = _project(tmp_path, GROUP_OVER + 2)
    mailer.queue_notices(specs, wb, time.time() - 1)  # first use: the cursor starts here
    _events(mailer.store, specs)
    _events(mailer.store, specs, only="quiet")  # its row asks for no e-mail
    mails = mailer.queue_notices(specs, wb, time.time())
    assert len(mails) == 1
    msg = message_from_bytes((tmp_path / ".nero" / "outbox" / mails[0].eml).read_bytes(), policy=default_policy)
    assert msg["Subject"] == f"[nero] {GROUP_OVER + 2} runs failed in {tmp_path.name}"
    text = msg.get_body(("plain",)).get_content()
    assert all(s.key in text for s in specs if s.experiment == "grid")
    assert mailer.queue_notices(specs, wb, time.time()) == []  # the cursor moved: never twice


def test_a_projects_template_overrides_the_built_in_one_and_a_broken_one_falls_back(mailer: Mailer, tmp_path: Path):
    wb, specs = _project(tmp_path, 2)
    mailer.queue_notices(specs, wb, time.time() - 1)
    custom = tmp_path / "templates" / "email"
    custom.mkdir(parents=True)
    (custom / "notice.subject.j2").write_text("LAB ALERT {{ item.key }} {{ item.title }}")
    _events(mailer.store, specs)
    mails = mailer.queue_notices(specs, wb, time.time())
    assert sorted(m.subject for m in mails) == ["LAB ALERT grid[i=0] failed", "LAB ALERT grid[i=1] failed"]
    (custom / "notice.subject.j2").write_text("{{ item.no_such_field }}")
    _events(mailer.store, specs)
    warnings: list[str] = []
    mails = mailer.queue_notices(specs, wb, time.time(), warnings)
    assert sorted(m.subject for m in mails) == ["[nero] grid[i=0] failed: exit code 1: boom",
                                                "[nero] grid[i=1] failed: exit code 1: boom"]
    assert any("templates/email/notice.subject.j2" in w and "built-in" in w for w in warnings), warnings


def test_smtp_host_without_email_to_writes_the_outbox_and_says_so(mailer: Mailer, tmp_path: Path):
    wb, specs = _project(tmp_path, 1, {"smtp_host": "127.0.0.1"})
    mailer.queue_notices(specs, wb, time.time() - 1)
    _events(mailer.store, specs)
    warnings = mailer.on_pass(specs, wb, time.time())
    assert any("email_to is empty" in w for w in warnings)
    assert _statuses(mailer.store) == ["local"]
    assert len(list((tmp_path / ".nero" / "outbox").glob("*.eml"))) == 1


# ------------------------------------------------------------------------------ digest schedule
def test_digest_settings_parse_and_a_missed_digest_is_overdue():
    six = parse_digest("every 6 hours")
    assert (six.every_s, six.unit, six.n) == (6 * 3600, "hours", 6)
    assert parse_digest("every 30 minutes").every_s == 1800
    assert parse_digest("daily at 08:00").daily_at == "08:00"
    assert parse_digest("off").off and parse_digest("").off
    now = time.time()
    assert digest_overdue(six, now - 7 * 3600, now) and not digest_overdue(six, now - 3600, now)
    assert not digest_overdue(six, None, now)  # the first one comes on schedule
    lt = time.localtime(now)
    today_8 = time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday, 8, 0, 0, 0, 0, -1))
    daily = parse_digest("daily at 08:00")
    assert digest_overdue(daily, today_8 - 86400 - 60, now)  # yesterday's 08:00 came and went
    last_due = today_8 if today_8 <= now else today_8 - 86400
    assert not digest_overdue(daily, last_due + 1, now)


def test_the_watch_loop_schedules_digests_catches_up_and_follows_the_setting(tmp_path: Path):
    import schedule

    from orchestrator.cli import DigestLoop
    from orchestrator.mail import DIGEST_KEY
    from orchestrator.project import Project

    (tmp_path / "ok.py").write_text("print('loss=1')\n")
    wb = write_workbook(tmp_path / "experiments.xlsx", [{"id": "ok", "command": "python ok.py"}],
                        settings={"digest": "every 6 hours"})
    project = Project(wb)
    try:
        project.load()
        report = project.reconcile()
        store = Store(tmp_path / ".nero" / "state.db")
        store.set_meta(DIGEST_KEY, repr(time.time() - 7 * 3600))  # the last one was 7 h ago
        store.close()
        sched = schedule.Scheduler()
        loop = DigestLoop(project, sched, quiet=True)
        loop.after_pass(report)
        assert (loop.job.interval, loop.job.unit) == (6, "hours")
        digests = list((tmp_path / ".nero" / "outbox").glob("*-digest.eml"))
        assert len(digests) == 1  # caught up at once
        loop.after_pass(report)  # same setting: nothing new
        assert len(list((tmp_path / ".nero" / "outbox").glob("*-digest.eml"))) == 1
        time.sleep(1.1)
        set_settings(wb, digest="daily at 08:00")
        project.load()
        loop.after_pass(report)
        assert len(sched.jobs) == 1 and (sched.jobs[0].unit, str(sched.jobs[0].at_time)) == ("days", "08:00:00")
        loop.send()  # what the scheduler calls
        assert len(list((tmp_path / ".nero" / "outbox").glob("*-digest.eml"))) == 2
    finally:
        project.close()


def test_two_processes_never_queue_the_same_events(mailer: Mailer, tmp_path: Path):
    """Queueing notices moves the event cursor by compare-and-set: a process that read the
    cursor before another one moved it stores nothing."""
    wb, specs = _project(tmp_path, 2)
    mailer.queue_notices(specs, wb, time.time() - 1)
    _events(mailer.store, specs)
    other = Store(tmp_path / ".nero" / "state.db")
    try:
        stale = other.get_meta("notify.event_cursor")  # the other process reads the cursor …
        assert len(mailer.queue_notices(specs, wb, time.time())) == 2  # … this one queues the events …
        late = _queue(Mailer(other, tmp_path))[0]  # (a message to store, built from the stale view)
        assert other.enqueue_mail([late], time.time(), meta={"notify.event_cursor": "999"},
                                  expect=("notify.event_cursor", stale)) == []  # … and it stores nothing
    finally:
        other.close()
    assert len(mailer.store.mail(("local",))) == 2 and len(mailer.store.mail(("queued",))) == 1


def test_line_breaks_from_cells_never_reach_a_header():
    data = compose(subject="run a\nb failed\r\nBcc: x@evil.example", sender=FROM, recipients=[TO], text="t",
                   html="<p>t</p>", msg_id=message_id("t", FROM), date=time.time(),
                   headers={"X-Nero-Run": "k[tag=a\nb]"})
    msg = message_from_bytes(data, policy=default_policy)
    assert msg["Subject"] == "run a b failed Bcc: x@evil.example" and msg["Bcc"] is None
    assert msg["X-Nero-Run"] == "k[tag=a b]"


def test_nero_mail_lists_the_outbox_and_resends_failed_and_uncertain_messages(tmp_path: Path):
    from conftest import nero

    port = free_port()
    workbook = write_workbook(tmp_path / "experiments.xlsx", [{"id": "x", "command": "true"}], settings={
        "smtp_host": "127.0.0.1", "smtp_port": port, "smtp_security": "none", "email_to": TO, "email_from": FROM})
    store = Store(tmp_path / ".nero" / "state.db")
    mailer = Mailer(store, tmp_path, environ={}, keyring_get=lambda service, user: None)
    refused, broken, fine = _queue(mailer, n=3)
    handler = Refusing(data=["554 5.7.1 rejected"])
    server = _server(handler, port)
    server.start()
    try:  # the first is refused for good; nero dies while sending the second
        assert mailer.requeue([refused.id]) == ([], [f"message {refused.id} is queued, not failed, uncertain or "
                                                     "local: nothing to resend"])
        mailer.store.claim_mail(broken.id)  # nero died after the 354: uncertain on the next delivery
        mailer.deliver(_settings(port), force=True)
    finally:
        server.stop()
    store.close()
    assert _statuses(Store(tmp_path / ".nero" / "state.db")) == ["failed", "uncertain", "sent"]

    listed = nero("mail", str(workbook), "--json", check=True)
    rows = {r["id"]: r for r in json.loads(listed.stdout)}
    assert [rows[m.id]["status"] for m in (refused, broken, fine)] == ["failed", "uncertain", "sent"]
    assert "554" in rows[refused.id]["error"]
    table = nero("mail", str(workbook), check=True).stdout
    assert "2 not delivered: `nero mail --resend" in table and "uncertain" in table and refused.subject in table

    with SmtpServer(port) as inbox:
        again = nero("mail", str(workbook), "--resend", str(refused.id), "--resend", str(broken.id))
        assert again.returncode == 1  # the uncertain one needs --yes (no terminal to ask on)
        assert f"Sent message {refused.id}" in again.stdout and f"message {broken.id} is uncertain" in again.stderr
        sure = nero("mail", str(workbook), "--resend", str(broken.id), "--yes", check=True)
        assert f"Sent message {broken.id}" in sure.stdout
        twice = nero("mail", str(workbook), "--resend", str(broken.id), "--yes")
        assert twice.returncode == 1 and "is sent, not failed" in twice.stderr
        unknown = nero("mail", str(workbook), "--resend", "999")
        assert unknown.returncode == 1 and "no message 999" in unknown.stderr
    received = [message_from_bytes(d, policy=default_policy) for _, _, d in inbox.received]
    assert [m["Subject"] for m in received] == [refused.subject, broken.subject]
    assert received[0]["Message-ID"] == refused.message_id  # the original message, byte for byte
    assert _statuses(Store(tmp_path / ".nero" / "state.db")) == ["sent", "sent", "sent"]
