"""E-mail end to end: the real `nero` CLI, real jobs, a real SMTP server (aiosmtpd, started
in process on a free loopback port, so no testbed is needed), real .eml files, and the
digest rendered in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections import Counter
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

import pytest
from conftest import nero, write_workbook

from orchestrator.mail import EVENT_WORDS
from orchestrator.results import PALETTE

TO = "researcher@example.org"
FROM = "nero-bot@example.org"
ALL_WORDS = "started, completed, failed, terminated, lost, warn"


# ------------------------------------------------------------------------------ helpers
class Inbox:
    """An aiosmtpd handler that keeps every message it accepts, exactly as received."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 Message accepted for delivery"

    def messages(self) -> list[EmailMessage]:
        return [message_from_bytes(data, policy=default_policy) for _, _, data in self.received]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SmtpServer:
    def __init__(self, port: int):
        from aiosmtpd.controller import Controller

        self.port = port
        self.inbox = Inbox()
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=port)

    def __enter__(self) -> Inbox:
        self.controller.start()
        return self.inbox

    def __exit__(self, *exc) -> None:
        self.controller.stop()


def set_settings(workbook: Path, **values: object) -> None:
    """Set Settings rows the way a user would in Excel (other rows are kept)."""
    from openpyxl import load_workbook

    book = load_workbook(workbook)
    ws = book["Settings"]
    rows = {str(ws.cell(r, 1).value).strip().lower(): r for r in range(2, ws.max_row + 1) if ws.cell(r, 1).value}
    for key, value in values.items():
        row = rows.get(key) or ws.max_row + 1
        ws.cell(row, 1, key)
        ws.cell(row, 2, value)
    book.save(workbook)


def set_cell(workbook: Path, experiment: str, column: str, value: object) -> None:
    from openpyxl import load_workbook

    book = load_workbook(workbook)
    ws = book["Experiments"]
    headers = [str(c.value).strip().lower() if c.value else "" for c in ws[1]]
    col = headers.index(column) + 1
    row = next(r for r in range(2, ws.max_row + 1) if ws.cell(r, headers.index("id") + 1).value == experiment)
    ws.cell(row, col, value)
    book.save(workbook)


def status(project: Path) -> list[dict]:
    return json.loads(nero("status", str(project), "--json", check=True).stdout)


def state_events(project: Path) -> list[tuple[str, str, str]]:
    con = sqlite3.connect(project / ".nero" / "state.db")
    try:
        return list(con.execute("SELECT key, kind, reason FROM events ORDER BY id"))
    finally:
        con.close()


def expected_notices(project: Path, experiment: str, words: set[str]) -> Counter:
    return Counter((key, EVENT_WORDS[kind]) for key, kind, _ in state_events(project)
                   if key.startswith(experiment + "[") and EVENT_WORDS.get(kind) in words)


def notices(messages: list[EmailMessage]) -> Counter:
    return Counter((m["X-Nero-Run"], m["X-Nero-Event"]) for m in messages if m["X-Nero-Kind"] == "notice")


def outbox_messages(project: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((project / ".nero" / "outbox").glob("*.eml"))}


def inline_images(msg: EmailMessage) -> list[EmailMessage]:
    """Image parts that the HTML part references by Content-ID."""
    html = msg.get_body(preferencelist=("html",)).get_content()
    return [p for p in msg.walk() if p.get_content_maintype() == "image" and p["Content-ID"]
            and f"cid:{p['Content-ID'].strip('<>')}" in html]


def _demo(project: Path, smtp_port: int | None) -> Path:
    demo = project / "demo"
    nero("init", str(demo), check=True)
    wb = demo / "experiments.xlsx"
    set_cell(wb, "demo", "notify", ALL_WORDS)
    if smtp_port is not None:
        set_settings(wb, smtp_host="127.0.0.1", smtp_port=smtp_port, smtp_security="none", email_to=TO,
                     email_from=FROM)
    return demo


def _check_notices_match_state(demo: Path, messages: list[EmailMessage]) -> None:
    """Exactly one notice per event a row asked for, and their contents match the state."""
    words = {w.strip() for w in ALL_WORDS.split(",")}
    got = notices(messages)
    assert got == expected_notices(demo, "demo", words)
    assert all(n == 1 for n in got.values())
    runs = {r["run"]: r for r in status(demo)}
    for key, run in runs.items():
        if not key.startswith("demo["):
            continue
        assert got[(key, "started")] == 1, key  # every run of the demo row started
        if run["state"] in ("completed", "terminated", "failed"):
            assert got[(key, run["state"])] == 1, key
    ids = [m["Message-ID"] for m in messages]
    assert len(ids) == len(set(ids))
    for m in messages:
        if m["X-Nero-Kind"] != "notice":
            continue
        key, word = m["X-Nero-Run"], m["X-Nero-Event"]
        run = runs[key]
        assert key in m["Subject"] and word in m["Subject"], m["Subject"]
        text = m.get_body(preferencelist=("plain",)).get_content()
        if word in ("terminated", "failed"):
            assert run["reason"] in text  # the rule with its values, or the exit code
            last_line = (Path(run["run_dir"]) / "stdout.log").read_text().strip().splitlines()[-1]
            assert last_line in text  # the tail of the output
            assert "last 40 lines" in text
            assert len(inline_images(m)) == 1  # the learning curves
        if word == "completed":
            assert len(inline_images(m)) == 1
            for name, value in run["metrics"].items():
                assert f"{name}: {value:.4g} /" in text, (name, value)


def _check_digest(demo: Path, digest: EmailMessage) -> None:
    images = inline_images(digest)
    assert len(images) >= 1
    assert all(p.get_payload(decode=True).startswith(b"\x89PNG") for p in images)
    attached = [p for p in digest.iter_attachments() if p.get_filename() == "results.xlsx"]
    assert len(attached) == 1
    assert attached[0].get_content_type() == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    assert attached[0].get_payload(decode=True) == (demo / "results.xlsx").read_bytes()
    text = digest.get_body(preferencelist=("plain",)).get_content()
    for state, n in Counter(r["state"] for r in status(demo)).items():
        assert f"{n} {state}" in text
        assert f"{n} {state}" in digest["Subject"]
    best = min((r for r in status(demo) if r["metrics"].get("val_loss") is not None),
               key=lambda r: r["metrics"]["val_loss"])
    assert best["run"] in text  # the leaderboard


# ------------------------------------------------------------------------------ Must show 1
@pytest.mark.slow
def test_demo_over_a_real_smtp_server_one_notice_per_event_and_a_digest(project: Path):
    port = free_port()
    demo = _demo(project, port)
    with SmtpServer(port) as inbox:
        proc = nero("reconcile", str(demo), "--until-done", "--interval", "1", timeout=170)
        assert "warning: e-mail" not in proc.stderr, proc.stderr
        sent = nero("digest", str(demo), "--send")
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert "Sent" in sent.stdout
        again = nero("reconcile", str(demo), "-q")  # nothing new: nothing is sent twice
        assert again.returncode in (0, 1), again.stderr
    messages = inbox.messages()
    assert all(rcpt == [TO] and sender == FROM for sender, rcpt, _ in inbox.received)
    _check_notices_match_state(demo, messages)
    digests = [m for m in messages if m["X-Nero-Kind"] == "digest"]
    assert len(digests) == 1
    _check_digest(demo, digests[0])
    # what the server received is byte for byte what the outbox holds
    files = outbox_messages(demo)
    assert sorted(data.rstrip(b"\r\n") for data in files.values()) == \
        sorted(data.rstrip(b"\r\n") for _, _, data in inbox.received)


# ------------------------------------------------------------------------------ Must show 2
OK_JOB = "import sys\nfor i in range(1, 4):\n    print(f'step={i} loss={1 / i}', flush=True)\n"
BAD_JOB = ("import sys\nprint('step=1 loss=2.5', flush=True)\n"
           "print('Traceback (most recent call last):\\nValueError: bad batch', file=sys.stderr)\nsys.exit(3)\n")


def _small_project(project: Path, settings: dict[str, object]) -> Path:
    (project / "ok.py").write_text(OK_JOB)
    (project / "bad.py").write_text(BAD_JOB)
    return write_workbook(project / "experiments.xlsx", [
        {"id": "ok", "command": "python ok.py --seed {{ seed }}", "seed": "[1, 2]", "notify": "started, completed"},
        {"id": "bad", "command": "python bad.py", "notify": "failed, completed"},
    ], clusters=[{"name": "local", "kind": "local", "max_jobs": 8}],
        settings={"primary_metric": "loss", **settings})


def _until_finished(project: Path, at_least: int, timeout: float = 90) -> list[subprocess.CompletedProcess]:
    passes = []
    end = time.time() + timeout
    while time.time() < end:
        passes.append(nero("reconcile", str(project)))
        runs = status(project)
        if len(passes) >= at_least and len(runs) == 3 and all(
                r["state"] not in ("pending", "submitted", "running") for r in runs):
            return passes
        time.sleep(0.5)
    raise AssertionError("runs did not finish")


def test_smtp_down_for_three_passes_then_up_every_message_arrives_exactly_once(project: Path):
    port = free_port()  # nothing listens here until the server starts below
    _small_project(project, {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_security": "none",
                             "email_to": TO, "email_from": FROM})
    passes = _until_finished(project, at_least=1)
    while sum("cannot deliver through 127.0.0.1" in p.stderr for p in passes) < 3 and len(passes) < 30:
        passes.append(nero("reconcile", str(project)))
    for p in passes:
        assert p.returncode == 0, p.stderr  # a failed send never stops the loop
    refused = [p for p in passes if "cannot deliver through 127.0.0.1" in p.stderr]
    assert len(refused) >= 3 and "connection refused" in refused[0].stderr
    down_digest = nero("digest", str(project), "--send")
    assert down_digest.returncode == 1 and "not delivered" in down_digest.stderr
    pending = outbox_messages(project)
    assert len(pending) == 2 + 2 + 1 + 1  # started ×2, completed ×2 (ok), failed (bad), the digest

    with SmtpServer(port) as inbox:
        up = nero("reconcile", str(project))
        assert up.returncode == 0 and "warning: e-mail" not in up.stderr, up.stderr
        again = nero("reconcile", str(project))
        assert "warning: e-mail" not in again.stderr
        resend = nero("digest", str(project), "--send")  # a new digest is a new message
        assert resend.returncode == 0
    ids = [m["Message-ID"] for m in inbox.messages()]
    assert len(ids) == len(set(ids)) == len(pending) + 1
    pending_ids = {message_from_bytes(b, policy=default_policy)["Message-ID"] for b in pending.values()}
    assert pending_ids <= set(ids)  # every message queued while the server was down arrived, once
    got = notices(inbox.messages())
    assert got == Counter({("ok[seed=1]", "started"): 1, ("ok[seed=2]", "started"): 1,
                           ("ok[seed=1]", "completed"): 1, ("ok[seed=2]", "completed"): 1, ("bad", "failed"): 1})
    failed = next(m for m in inbox.messages() if m["X-Nero-Event"] == "failed")
    text = failed.get_body(preferencelist=("plain",)).get_content()
    assert "exit code 3" in failed["Subject"] and "ValueError: bad batch" in text and "step=1 loss=2.5" in text
    con = sqlite3.connect(project / ".nero" / "state.db")
    try:
        assert set(con.execute("SELECT status FROM outbox")) == {("sent",)}
    finally:
        con.close()


# ------------------------------------------------------------------------------ Must show 3
@pytest.mark.slow
def test_without_smtp_the_same_messages_are_eml_files_in_the_outbox(project: Path):
    demo = _demo(project, None)
    nero("reconcile", str(demo), "--until-done", "--interval", "1", timeout=170)
    wrote = nero("digest", str(demo), "--send")
    assert wrote.returncode == 0 and "no SMTP configured" in wrote.stdout, wrote.stdout + wrote.stderr
    files = outbox_messages(demo)
    assert all(re.fullmatch(r"\d{8}-\d{6}-\d{6}-[A-Za-z0-9_.-]+\.eml", name) for name in files)
    messages = [message_from_bytes(data, policy=default_policy) for data in files.values()]
    assert all(not m.defects for m in messages)
    _check_notices_match_state(demo, messages)
    digests = [m for m in messages if m["X-Nero-Kind"] == "digest"]
    assert len(digests) == 1
    _check_digest(demo, digests[0])
    preview = nero("digest", str(demo), "--preview", check=True)
    assert "Runs:" in preview.stdout and (demo / ".nero" / "preview" / "digest.html").is_file()
    assert outbox_messages(demo).keys() == files.keys()  # a preview is not a message


# ------------------------------------------------------------------------------ Must show 4
def _chromium() -> str:
    found = os.environ.get("NERO_TEST_CHROMIUM") or shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else "")
    if not found:
        reason = "chromium is not installed: run `bash tests/testbed/up.sh chromium` (Debian's chromium)"
        if os.environ.get("NERO_REQUIRE_TESTBED") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def _chromium_run(chromium: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="nero-chromium-") as profile:
        return subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120,
            stdin=subprocess.DEVNULL)


def test_digest_html_renders_in_headless_chromium_with_its_images(project: Path, tmp_path: Path):
    chromium = _chromium()
    _small_project(project, {})
    _until_finished(project, at_least=1)
    nero("digest", str(project), "--preview", check=True)
    page = project / ".nero" / "preview" / "digest.html"
    html = page.read_text()
    assert "cid:" not in html and html.count("data:image/png;base64,") >= 1

    # 1. every image decodes in the browser
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</head>", "<script>window.addEventListener('load', () => {"
                                  "const i = [...document.images]; document.body.setAttribute('data-images', "
                                  "i.length + ':' + i.filter(x => x.complete && x.naturalWidth > 0).length);});"
                                  "</script></head>"))
    dom = _chromium_run(chromium, "--dump-dom", probe.as_uri())
    found = re.search(r'data-images="(\d+):(\d+)"', dom.stdout)
    assert found, dom.stderr[-2000:]
    total, loaded = int(found.group(1)), int(found.group(2))
    assert total >= 1 and loaded == total

    # 2. the screenshot shows them: the curves' line colours are on the page
    png = tmp_path / "digest.png"
    shot = _chromium_run(chromium, f"--screenshot={png}", "--window-size=1200,2000", page.as_uri())
    assert png.is_file(), shot.stderr[-2000:]
    from PIL import Image

    img = Image.open(png).convert("RGB")
    assert img.size == (1200, 2000)
    colors = img.getcolors(maxcolors=1 << 24)
    lines = [tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in PALETTE[:3]]
    drawn = sum(n for n, rgb in colors if any(sum(abs(a - b) for a, b in zip(rgb, line, strict=True)) < 60
                                              for line in lines))
    assert drawn > 300, "the plots' lines are not on the page"
    dark = sum(n for n, (r, g, b) in colors if r + g + b < 200)
    assert dark > 2000, "hardly any text on the page"


def test_a_digest_reads_the_events_since_the_last_one(project: Path):
    """The digest tells what changed since the last one: it reads those events alone (not
    every event the project ever had), and tells all of them."""
    from orchestrator.project import Project

    (project / "ok.py").write_text(OK_JOB)
    workbook = write_workbook(project / "experiments.xlsx", [
        {"id": "ok", "command": "python ok.py --seed {{ seed }}", "seed": "[1, 2]"}])
    nero("reconcile", str(workbook), "--until-done", "--interval", "0.3", "-q", check=True, timeout=90)
    assert nero("digest", str(workbook), "--send", check=True).returncode == 0  # no SMTP: the local outbox
    with Project(workbook) as p:
        p.load()
        since = p.last_digest()
        before = len(p.events())
        head, _ = p.digest_input()
        assert since is not None and before >= 6 and head.events == ()
    time.sleep(0.05)
    nero("restart", str(workbook), "ok[seed=1]", "--yes", check=True)
    nero("reconcile", str(workbook), "--until-done", "--interval", "0.3", "-q", "--yes", check=True, timeout=90)
    with Project(workbook) as p:
        p.load()
        first = p.plan()
        p.release_plan()  # what `nero digest` does before it reads every run: the next plan is the same
        assert p.plan() == first
        head, _ = p.digest_input()
        every = p.events()
    newer = [e for e in every if e.time > since]
    assert head.events == tuple(newer) and {e.kind for e in newer} >= {"restart", "completed"}
    assert len(every) > len(newer)
    nero("digest", str(workbook), "--preview", check=True)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", (project / ".nero" / "preview" / "digest.html").read_text()))
    assert "Since the last digest 1 started , 1 completed , 1 submitted." in text  # the restart's, not the first runs'


def test_a_digest_plot_of_a_wide_row_draws_its_best_runs(project: Path):
    """An experiment of more runs than a plot can show (`DIGEST_LINES`) is drawn as its best
    runs by the digest's metric, in the leaderboard's order, read a batch at a time; the
    digest says how many of how many."""
    from orchestrator.mail.content import DIGEST_LINES
    from orchestrator.mail.digest import drawn_runs
    from orchestrator.project import Project

    (project / "val.py").write_text("import sys\nv = float(sys.argv[1])\n"
                                    "print(f'step=1 loss={v + 1}', flush=True)\nprint(f'step=2 loss={v}', flush=True)\n")
    n = DIGEST_LINES + 5
    workbook = write_workbook(project / "experiments.xlsx", [
        {"id": "wide", "command": "python val.py {{ 30 - v }}", "v": f"range({n})"}],
        clusters=[{"name": "local", "kind": "local", "max_jobs": 8}], settings={"primary_metric": "loss"})
    nero("reconcile", str(workbook), "--until-done", "--interval", "0.3", "-q", check=True, timeout=120)
    with Project(workbook) as p:
        p.load()
        head, runs = p.digest_input()
        drawn, histories, total = drawn_runs(runs, "wide", "loss", head.goals, DIGEST_LINES)
    # loss = 30 - v: the largest v is best
    assert total == n and [r.key for r in drawn] == [f"wide[v={v}]" for v in range(n - 1, n - 1 - DIGEST_LINES, -1)]
    assert set(histories) == {r.key for r in drawn} and all(len(h["loss"]) == 2 for h in histories.values())
    nero("digest", str(workbook), "--preview", check=True)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", (project / ".nero" / "preview" / "digest.html").read_text()))
    assert f"loss, {n} runs: the best {DIGEST_LINES} drawn" in text
    assert f"# run best last step state 1 wide[v={n - 1}]" in text  # the leaderboard's first, drawn first
