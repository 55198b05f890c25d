"""The e-mail outbox in the state store: `Mail`, and the Store methods that queue, claim
and settle messages (Store inherits them from `Outbox`).

Statuses: `queued` (to deliver) → `sending` (committed just before the message's data
goes on the wire) → `sent`; `failed` (refused for good), `uncertain` (the connection
broke after the data went out, or nero died in between: maybe delivered, never resent),
`local` (no SMTP configured: the .eml file is all there is). The mail package explains
the delivery guarantees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["Mail", "Outbox"]


@dataclass(frozen=True)
class Mail:
    """One e-mail in the outbox: `message` holds the exact MIME bytes that are written to
    its .eml file and handed to the SMTP server (dropped from the store once sent)."""

    kind: str  # "notice" or "digest"
    subject: str
    message_id: str
    sender: str
    recipients: tuple[str, ...]
    message: bytes
    eml: str  # the file name in the outbox folder (a pattern with `{id}` before it is stored)
    status: str = "queued"
    id: int = 0
    created_at: float = 0.0
    tries: int = 0
    last_error: str = ""
    sent_at: float | None = None


class Outbox:
    """The outbox table's methods of Store (which provides `db` and `transaction`)."""

    db: Any  # the store's sqlite3 connection
    transaction: Callable[[], Any]  # the store's write transaction

    def _outbox_columns(self) -> None:
        """Add the outbox columns a state store from before e-mail delivery lacks (once)."""
        if getattr(self, "_outbox_checked", False):
            return
        have = {row[1] for row in self.db.execute("PRAGMA table_info(outbox)")}
        wanted = {"status": "TEXT NOT NULL DEFAULT 'queued'", "message_id": "TEXT NOT NULL DEFAULT ''",
                  "sender": "TEXT NOT NULL DEFAULT ''", "recipients": "TEXT NOT NULL DEFAULT ''",
                  "eml": "TEXT NOT NULL DEFAULT ''", "message": "BLOB"}
        missing = [(c, t) for c, t in wanted.items() if c not in have]
        if missing:
            with self.transaction():
                for column, decl in missing:
                    self.db.execute(f"ALTER TABLE outbox ADD COLUMN {column} {decl}")
                self.db.execute("UPDATE outbox SET status='sent' WHERE sent_at IS NOT NULL")
        self._outbox_checked = True

    def enqueue_mail(self, mails: Sequence[Mail], now: float, meta: dict[str, str] | None = None,
                     expect: tuple[str, str | None] | None = None) -> list[Mail]:
        """Store new messages (each `Mail.eml` is a pattern with `{id}`) and `meta` values
        in one transaction; returns the messages with their ids and file names. With
        `expect` (a meta key and the value it was read with), nothing is stored if another
        process changed that value meanwhile (then [] is returned)."""
        self._outbox_columns()
        out = []
        with self.transaction():
            if expect is not None:
                row = self.db.execute("SELECT value FROM meta WHERE key=?", (expect[0],)).fetchone()
                if (row[0] if row else None) != expect[1]:
                    return []
            for m in mails:
                cur = self.db.execute(
                    "INSERT INTO outbox (created_at, kind, subject, status, message_id, sender, recipients, message) "
                    "VALUES (?,?,?,?,?,?,?,?)",
                    (now, m.kind, m.subject, m.status, m.message_id, m.sender, ",".join(m.recipients),
                     m.message if m.status in ("queued", "sending") else None))  # else the .eml file has it
                mail_id = int(cur.lastrowid or 0)
                eml = m.eml.format(id=mail_id)
                self.db.execute("UPDATE outbox SET eml=? WHERE id=?", (eml, mail_id))
                out.append(replace(m, id=mail_id, eml=eml, created_at=now))
            for key, value in (meta or {}).items():
                self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        return out

    def mail(self, statuses: Iterable[str] = ("queued",), kind: str | None = None,
             limit: int | None = None, newest_first: bool = False) -> list[Mail]:
        """Messages in the given statuses, oldest first (message bytes included)."""
        self._outbox_columns()
        wanted = list(statuses)
        sql = (f"SELECT id, created_at, kind, subject, status, message_id, sender, recipients, eml, "
               f"COALESCE(message, X''), tries, last_error, sent_at FROM outbox "
               f"WHERE status IN ({','.join('?' * len(wanted))})")
        args: list[object] = list(wanted)
        if kind is not None:
            sql += " AND kind=?"
            args.append(kind)
        sql += " ORDER BY id" + (" DESC" if newest_first else "") + (f" LIMIT {int(limit)}" if limit else "")
        return [Mail(id=r[0], created_at=r[1], kind=r[2], subject=r[3], status=r[4], message_id=r[5], sender=r[6],
                     recipients=tuple(a for a in r[7].split(",") if a), eml=r[8], message=bytes(r[9]),
                     tries=r[10], last_error=r[11], sent_at=r[12]) for r in self.db.execute(sql, args)]

    def claim_mail(self, mail_id: int) -> bool:
        """queued → sending, committed before the message goes out; False if it is not queued."""
        with self.transaction():
            cur = self.db.execute("UPDATE outbox SET status='sending', tries=tries+1 WHERE id=? AND status='queued'",
                                  (mail_id,))
            return cur.rowcount == 1

    def settle_mail(self, mail_id: int, status: str, now: float, error: str = "", tried: bool = False) -> None:
        """Record how a delivery ended: `sent` (the message bytes are dropped; the .eml file
        keeps them), `queued` (not delivered: retried later), `failed` or `uncertain`.
        `tried`: count a try that ended before the message was claimed (a refusal)."""
        with self.transaction():
            if status == "sent":
                self.db.execute("UPDATE outbox SET status='sent', sent_at=?, message=NULL, last_error='' WHERE id=?",
                                (now, mail_id))
            else:
                self.db.execute("UPDATE outbox SET status=?, last_error=?, tries=tries+? WHERE id=?",
                                (status, error[:500], int(tried), mail_id))

    def requeue_mail(self, mail_id: int, message: bytes, statuses: Sequence[str]) -> bool:
        """Put a message in one of `statuses` back in the queue, with these bytes and no
        tries; False if it is not in one of them (any more)."""
        with self.transaction():
            cur = self.db.execute(
                f"UPDATE outbox SET status='queued', tries=0, last_error='', message=? "
                f"WHERE id=? AND status IN ({','.join('?' * len(statuses))})", (message, mail_id, *statuses))
            return cur.rowcount == 1
