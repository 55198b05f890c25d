"""The outbox: queueing notices and digests, and delivering them (the one part of e-mail
that talks to the state store). Nothing here raises into the reconcile loop: every
problem becomes a warning in the pass report, and the message waits in the outbox for a
later pass.

Queueing
    A pass reads the events recorded since the last event it mailed about (a cursor in the
    store's meta table, moved by compare-and-set in the transaction that queues the
    notices), so events recorded by a pass that crashed, or by another command, are
    neither lost nor mailed twice; on first use the cursor starts at the current pass. It
    gathers what each notice says about its run (the attempt, its metric history, the
    tails of its logs) and hands it to content.py. Digests come on Settings `digest`
    (driven by the `--watch` loop) or `nero digest --send`; a scheduled digest is skipped
    when nothing happened since the last one and nothing is live.
    Each message is stored in the store's outbox table and written atomically to
    `.nero/outbox/<time>-<id>-<label>.eml`, the same bytes the SMTP server receives. With
    `smtp_host` and `email_to` set, messages are queued for delivery; without either they
    are written to the outbox only (status `local`), so the outbox shows what would be sent.

Delivery guarantees: at most once, and in practice exactly once
    Each message has one outbox row, delivered by one process at a time (a lock file in
    the outbox folder; a process that finds it taken skips delivery). For each message:
    MAIL FROM, RCPT TO and DATA are sent; only when the server has answered DATA with 354
    is the row marked `sending` (committed), then the data goes out and the final reply is
    awaited. A 250 marks it `sent`. A failure before the data is sent, or a refusal of the
    data itself, means the server did not take it: the row goes back to `queued` (a 4xx, a
    refused or broken connection) and is retried on a later pass, with back-off in a
    long-running loop (30 s doubling to 30 min; a new `nero reconcile` process always tries
    once), or to `failed` on a 5xx refusal (or after `MAX_TRIES` temporary refusals). If
    the connection breaks after the data went out, or nero dies between the 354 and the
    sent mark, the server may have accepted the message: the row becomes `uncertain` and is
    *not* resent, so nobody ever gets a message twice; a warning names it and its .eml
    file. That window is a single round trip per message. Without a password for
    `smtp_user` the messages wait, with a warning. `nero mail` lists the outbox;
    `nero mail --resend ID` puts a failed, uncertain or local message back in the queue
    (`Mailer.requeue`), asking first for an uncertain one.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from ..files import write_atomically
from ..model import Event, ResultsInput, RunSpec, Settings, Workbook
from ..paths import ProjectPaths
from ..state import Mail, Store
from ..units import format_duration
from .compose import Draft, Part
from .content import (
    ENDINGS,
    TAIL_LINES,
    RunFacts,
    addressed_batches,
    build_digest,
    build_notice,
    digest_audiences,
    fallback_notice,
    is_detailed,
    needs_details,
)
from .digest import Audience, Digested, DigestRuns, digest_runs
from .smtp import (
    Broken,
    Refused,
    Transport,
    keyring_password,
    sender_address,
    smtp_config,
    smtp_error,
    smtp_password,
    smtp_server,
)

__all__ = [
    "ATTACH_MAX_BYTES", "BACKOFF_S", "CURSOR_KEY", "DIGEST_KEY", "KEEP_DAYS", "MAIL_STATUSES", "MAX_TRIES",
    "RESENDABLE", "Mailer", "tail",
]

# outbox statuses (see "Delivery guarantees"); `local`: written to the outbox only (no SMTP)
MAIL_STATUSES = ("queued", "sending", "sent", "failed", "uncertain", "local")
RESENDABLE = ("failed", "uncertain", "local")
MAX_TRIES = 10  # temporary refusals of one message before it is given up
BACKOFF_S = (30.0, 1800.0)
ATTACH_MAX_BYTES = 15 * 1024 * 1024
KEEP_DAYS = 30  # .eml files of settled messages older than this are removed
CURSOR_KEY = "notify.event_cursor"
DIGEST_KEY = "digest.last_at"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
_ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


# ---------------------------------------------------------------------------- what a message needs
def _clean(text: str) -> str:
    lines = []
    for line in _ANSI.sub("", text).split("\n"):
        line = line.rstrip("\r").rsplit("\r", 1)[-1]  # progress bars: what the terminal shows last
        line = _CONTROL.sub("", line.expandtabs(4))
        lines.append(line if len(line) <= 400 else line[:399] + "…")
    return "\n".join(lines)


def tail(path: str | Path, lines: int = TAIL_LINES, max_bytes: int = 64 * 1024) -> str | None:
    """The last `lines` lines of a text file (None if it does not exist here)."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return None
    text = _clean(data.decode("utf-8", "replace")).rstrip("\n")
    if not text.strip():
        return ""
    return "\n".join(text.split("\n")[-lines:])


def _results_attachment(results_file: Path | None) -> tuple[list[Part], str]:
    """The results workbook to attach to a digest, or a note why there is none."""
    if results_file is not None and results_file.is_file():
        size = results_file.stat().st_size
        if size <= ATTACH_MAX_BYTES:
            return [Part(results_file.read_bytes(), results_file.name, mime=XLSX)], ""
        return [], f"{results_file.name} is {size / 2**20:.0f} MB, too large to attach: {results_file}"
    return [], "no results workbook yet (it is written by nero reconcile)"


def _mail(draft: Draft, sender: str, recipients: tuple[str, ...], status: str, now: float) -> Mail:
    """The outbox row of a built message (its .eml name gets the row's id when stored)."""
    return Mail(kind=draft.kind, subject=draft.subject, message_id=draft.message_id, sender=sender,
                recipients=recipients, message=draft.message, status=status,
                eml=f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}-{{id:06d}}-{draft.label}.eml")


class Mailer:
    """E-mail for one project: queues notices and digests, delivers the outbox. One per
    state store (`Mailer.of`), so the delivery back-off lives as long as the loop."""

    _by_store: weakref.WeakKeyDictionary[Store, Mailer] = weakref.WeakKeyDictionary()

    def __init__(self, store: Store, project_dir: str | Path, clock: Callable[[], float] = time.time,
                 environ: Mapping[str, str] | None = None,
                 keyring_get: Callable[[str, str], str | None] = keyring_password):
        self.store = store
        self.project_dir = Path(project_dir)
        self.outbox = ProjectPaths(self.project_dir, store.path.parent).outbox  # beside the store, in the state folder
        self.clock = clock
        self.environ = environ
        self.keyring_get = keyring_get
        self._failures = 0
        self._retry_at = 0.0
        self._pruned_at = 0.0
        self._warned: set[str] = set()

    @classmethod
    def of(cls, store: Store, project_dir: str | Path) -> Mailer:
        mailer = cls._by_store.get(store)
        if mailer is None:
            mailer = cls._by_store[store] = cls(store, project_dir)
        return mailer

    # ------------------------------------------------------------ the pass
    def on_pass(self, specs: Sequence[RunSpec], workbook: Workbook, now: float) -> list[str]:
        """Queue the notices for events recorded since the last call, deliver what is due."""
        warnings: list[str] = []
        try:
            self.queue_notices(specs, workbook, now, warnings)
        except Exception as e:
            warnings.append(f"e-mail: notices not built: {type(e).__name__}: {e}")
        warnings += self.deliver(workbook.settings, now)
        try:
            self._prune(now)
        except Exception as e:
            warnings.append(f"e-mail: old .eml files not removed: {type(e).__name__}: {e}")
        return warnings

    def _route(self, settings: Settings, warnings: list[str],
               recipients: tuple[str, ...] = ()) -> tuple[str, tuple[str, ...], str]:
        """Sender, recipients (`recipients`, else email_to) and the status new messages start in."""
        cfg = smtp_config(settings, recipients)
        if cfg is None:
            if settings.smtp_host and not (recipients or settings.email_to) and "no-to" not in self._warned:
                self._warned.add("no-to")
                warnings.append(f"e-mail: smtp_host is set but email_to is empty; messages are only written to "
                                f"{self.outbox}")
            return sender_address(settings), recipients or tuple(settings.email_to), "local"
        return cfg.sender, cfg.recipients, "queued"

    def _facts(self, event: Event, detailed: bool) -> RunFacts:
        """What a notice says about the run of `event`: the attempt it is about (else the
        latest), and when it shows details its history and, for endings, its log tails."""
        attempts = {r.attempt: r for r in self.store.attempts(event.key)}
        rec = attempts.get(event.attempt) or (max(attempts.values(), key=lambda r: r.attempt) if attempts else None)
        if rec is None or not needs_details(event, detailed):
            return RunFacts(rec)
        history = self.store.history(rec.key, rec.attempt)
        run_dir = Path(rec.run_dir) if rec.run_dir else None
        if event.kind in ENDINGS and run_dir is not None and run_dir.is_dir():
            return RunFacts(rec, history, tail(run_dir / "stderr.log"), tail(run_dir / "stdout.log"), True)
        return RunFacts(rec, history)

    def queue_notices(self, specs: Sequence[RunSpec], workbook: Workbook, now: float,
                      warnings: list[str] | None = None) -> list[Mail]:
        warnings = [] if warnings is None else warnings
        raw = self.store.get_meta(CURSOR_KEY)
        cursor = int(raw) if raw else self.store.last_event_id(before=now)  # first use: this pass on
        if not any(e.notify for e in workbook.experiments):  # no row asks for notices: nothing to read
            last = self.store.last_event_id()
            if last != cursor or raw is None:
                self.store.enqueue_mail([], now, meta={CURSOR_KEY: str(last)}, expect=(CURSOR_KEY, raw))
            return []
        new = self.store.events_after(cursor)
        if not new:
            if raw is None:
                self.store.set_meta(CURSOR_KEY, str(cursor))
            return []
        by_key = {s.key: s for s in specs}
        named = {e.id: e.recipients for e in workbook.experiments if e.recipients}
        mails: list[Mail] = []
        for to, batch in addressed_batches([e for _, e in new], by_key, named):
            sender, recipients, status = self._route(workbook.settings, warnings, to)
            try:
                facts = [self._facts(e, is_detailed(i, len(batch))) for i, e in enumerate(batch)]
                draft = build_notice(batch, facts, by_key, workbook, self.project_dir, sender, recipients, now,
                                     warnings)
                mails.append(_mail(draft, sender, recipients, status, now))
                continue
            except Exception as e:
                warnings.append(f"e-mail: notice for {batch[0].key} {batch[0].kind} built without details: "
                                f"{type(e).__name__}: {e}")
                error = e
            for ev in batch:
                try:
                    draft = fallback_notice(ev, error, self.project_dir, sender, recipients, now)
                    mails.append(_mail(draft, sender, recipients, status, now))
                except Exception as e2:  # the event must not block every later notice
                    warnings.append(f"e-mail: no notice for {ev.key} {ev.kind}: {type(e2).__name__}: {e2}")
        # compare-and-set on the cursor: two processes never queue the same events
        stored = self.store.enqueue_mail(mails, now, meta={CURSOR_KEY: str(new[-1][0])}, expect=(CURSOR_KEY, raw))
        self._write_files(stored, warnings)
        return stored

    # ------------------------------------------------------------ digests
    def digest(self, data: ResultsInput, results_file: Path | None, now: float, *, force: bool = False,
               warnings: list[str] | None = None, runs: DigestRuns | None = None) -> Mail | None:
        """Queue the digests (and remember their time); without `force` only if something
        happened since the last one or runs are live. Returns the digest of all rows (to
        email_to); the per-person digests (`content.digest_audiences`) are queued with it.
        `runs`: where the runs are read, a batch at a time, for `data` without them (default:
        `data`'s runs)."""
        warnings = [] if warnings is None else warnings
        raw = self.store.get_meta(DIGEST_KEY)
        since = float(raw) if raw else None
        runs = runs or DigestRuns.of(data)
        audiences = digest_audiences(data)
        shown = digest_runs(data, runs, audiences)
        if not force:
            changed = any(e.time > since for e in data.events) if since is not None else bool(data.events)
            if not changed and not shown[0][1].live:
                return None
        mails = []
        for audience, (rows_data, digested) in zip(audiences, shown, strict=True):
            sender, recipients, status = self._route(data.settings, warnings, audience.recipients)
            mails.append(self._digest(rows_data, digested, runs, results_file, since, sender, recipients, status,
                                      now, warnings, sorted(audience.experiments or ())))
        stored = self.store.enqueue_mail(mails, now, meta={DIGEST_KEY: repr(now)})
        self._write_files(stored, warnings)
        return stored[0]

    def preview(self, data: ResultsInput, results_file: Path | None, now: float,
                warnings: list[str] | None = None, runs: DigestRuns | None = None) -> Mail:
        """The digest as it would be sent now, not queued (the next digest still covers the
        same period)."""
        warnings = [] if warnings is None else warnings
        raw = self.store.get_meta(DIGEST_KEY)
        sender, recipients, _ = self._route(data.settings, warnings)
        runs = runs or DigestRuns.of(data)
        [(_, digested)] = digest_runs(data, runs, [Audience(recipients)])
        return self._digest(data, digested, runs, results_file, float(raw) if raw else None, sender, recipients,
                            "preview", now, warnings)

    def _digest(self, data: ResultsInput, digested: Digested, runs: DigestRuns, results_file: Path | None,
                since: float | None, sender: str, recipients: tuple[str, ...], status: str, now: float,
                warnings: list[str], rows: Sequence[str] = ()) -> Mail:
        attachments, note = _results_attachment(results_file)
        draft = build_digest(data, digested, runs, attachments, note, since, self.project_dir, sender, recipients,
                             now, warnings, rows)
        return _mail(draft, sender, recipients, status, now)

    # ------------------------------------------------------------ files
    def eml_path(self, mail: Mail) -> Path:
        return self.outbox / mail.eml

    def _write_files(self, mails: Iterable[Mail], warnings: list[str]) -> None:
        for m in mails:
            try:
                write_atomically(self.eml_path(m), m.message)
            except OSError as e:
                warnings.append(f"e-mail: cannot write {self.eml_path(m)}: {e}")

    def _prune(self, now: float) -> None:
        """Remove .eml files of settled messages older than KEEP_DAYS (once a day)."""
        if now - self._pruned_at < 86400 or not self.outbox.is_dir():
            return
        self._pruned_at = now
        keep = {m.eml for m in self.store.mail(("queued", "sending"))}
        for p in self.outbox.glob("*.eml"):
            with contextlib.suppress(OSError):
                if p.name not in keep and now - p.stat().st_mtime > KEEP_DAYS * 86400:
                    p.unlink()

    # ------------------------------------------------------------ delivery
    def deliver(self, settings: Settings, now: float | None = None, *, force: bool = False) -> list[str]:
        """Send every queued message (see the module docstring for the guarantees).
        Returns warnings; never raises."""
        now = self.clock() if now is None else now
        try:
            return self._deliver(settings, now, force)
        except Exception as e:
            self._backoff(now)
            return [f"e-mail: delivery stopped by {type(e).__name__}: {e}; messages wait in the outbox"]

    def _backoff(self, now: float) -> float:
        self._failures += 1
        delay = min(BACKOFF_S[1], BACKOFF_S[0] * 2 ** (self._failures - 1))
        self._retry_at = now + delay
        return delay

    def _waiting(self, now: float, problem: str, waiting: int) -> str:
        """Back off after `problem` stopped delivery; the warning that says so."""
        delay = self._backoff(now)
        return f"e-mail: {problem}; {waiting} message(s) wait in the outbox, next try in {format_duration(delay)}"

    def _deliver(self, settings: Settings, now: float, force: bool) -> list[str]:
        from filelock import FileLock, Timeout

        cfg = smtp_server(settings)
        if cfg is None or not (force or now >= self._retry_at):
            return []
        if not self.store.mail(("queued", "sending"), limit=1):
            return []
        warnings: list[str] = []
        self.outbox.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.outbox / ".deliver.lock"))
        try:
            lock.acquire(timeout=0 if not force else 30)
        except Timeout:
            return []  # another nero process is delivering right now
        try:
            # under the lock, a message still `sending` was being sent by a process that died
            for m in self.store.mail(("sending",)):
                self.store.settle_mail(m.id, "uncertain", now, "nero stopped while sending it")
                warnings.append(self._uncertain(m))
            queued = self.store.mail(("queued",))
            if not queued:
                return warnings
            password = None
            if cfg.user:
                password = smtp_password(cfg.user, self.environ, self.keyring_get)
                if password is None:
                    warnings.append(self._waiting(now, f"no password for {cfg.user} at {cfg.where}: set "
                                                       f"NERO_SMTP_PASSWORD or run `keyring set nero {cfg.user}`",
                                                  len(queued)))
                    return warnings
            try:
                transport = Transport(cfg, password)
            except Exception as e:
                warnings.append(self._waiting(now, f"cannot deliver through {cfg.where} ({smtp_error(e)})", len(queued)))
                return warnings
            try:
                for m in queued:
                    try:
                        self._send(transport, m, now, warnings)
                    except Broken as e:
                        left = len(self.store.mail(("queued",)))
                        warnings.append(self._waiting(now, f"the connection to {cfg.where} broke ({e})", left))
                        return warnings
                self._failures, self._retry_at = 0, 0.0
            finally:
                transport.close()
        finally:
            lock.release()
        return warnings

    def _send(self, t: Transport, m: Mail, now: float, warnings: list[str]) -> None:
        """One message: offered, marked `sending` once the server waits for the data, sent,
        and settled by the server's reply (see "Delivery guarantees")."""
        try:
            refused = t.offer(m.sender, m.recipients)
        except Refused as e:
            self._refused(m, e.code, e.error, now, warnings, tried=True)
            return
        if not self.store.claim_mail(m.id):
            t.reset()
            return
        try:
            code, reply = t.finish(m.message)
        except Broken as e:
            self.store.settle_mail(m.id, "uncertain", now, str(e))
            warnings.append(self._uncertain(m))
            raise
        if code == 250:
            self.store.settle_mail(m.id, "sent", now)
            if refused:
                warnings.append(f"e-mail: {m.subject!r} was not accepted for " +
                                ", ".join(f"{r} ({why})" for r, why in refused.items()))
        else:  # the server answered the data with a refusal: it did not take the message
            self._refused(m, code, reply, now, warnings)

    def _refused(self, m: Mail, code: int, error: str, now: float, warnings: list[str], tried: bool = False) -> None:
        permanent = code >= 500 or m.tries + 1 >= MAX_TRIES
        self.store.settle_mail(m.id, "failed" if permanent else "queued", now, error, tried=tried)
        if permanent:
            warnings.append(f"e-mail: the server refused {m.subject!r} ({error}); not retried. It is in "
                            f"{self.eml_path(m)}")
        else:
            warnings.append(f"e-mail: the server deferred {m.subject!r} ({error}); retried later")

    def _uncertain(self, m: Mail) -> str:
        return (f"e-mail: {m.subject!r} may or may not have been delivered (the connection broke after the "
                f"message was sent); it is not resent, so nobody gets it twice (`nero mail --resend {m.id}` "
                f"does). A copy: {self.eml_path(m)}")

    def requeue(self, ids: Sequence[int]) -> tuple[list[Mail], list[str]]:
        """Put failed, uncertain or outbox-only (`local`) messages back in the queue, for
        `deliver` to send: the same bytes, Message-ID included, so a mail program shows a
        message that did arrive twice as one. Returns the messages requeued and, for the
        other ids, why not."""
        known = {m.id: m for m in self.store.mail(MAIL_STATUSES)}
        done: list[Mail] = []
        problems: list[str] = []
        for i in ids:
            m = known.get(i)
            if m is None:
                problems.append(f"no message {i} in the outbox (`nero mail` lists them)")
                continue
            if m.status not in RESENDABLE:
                problems.append(f"message {i} is {m.status}, not failed, uncertain or local: nothing to resend")
                continue
            data = m.message
            if not data:
                try:
                    data = self.eml_path(m).read_bytes()
                except OSError as e:
                    problems.append(f"message {i}: its copy {self.eml_path(m)} cannot be read ({e.strerror})")
                    continue
            if self.store.requeue_mail(m.id, data, RESENDABLE):
                done.append(m)
            else:
                problems.append(f"message {i} changed meanwhile (another nero process is delivering)")
        return done, problems
