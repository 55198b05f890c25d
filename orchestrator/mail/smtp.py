"""The SMTP side of e-mail (the home of yagmail and smtplib): where to deliver, the
password, and one connection that hands a message to the server.

yagmail opens the connection (`smtp_security`: starttls, ssl or none; certificates are
verified; 10 s timeouts) and logs in as `smtp_user` with the password from
`NERO_SMTP_PASSWORD`, else the system keyring (`keyring set nero <smtp_user>`); it is never
read from the workbook and never prompted for. Without `smtp_user` no login is attempted.
yagmail's own message builder is not used (see compose.py): the connection sends the
stored bytes as they are, in two steps, so that the outbox can record the moment after
which the server may have the message (see outbox.py)."""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..model import Settings
from .formats import one_line

__all__ = [
    "SMTP_TIMEOUT_S", "Broken", "Refused", "SmtpConfig", "Transport", "keyring_password", "sender_address",
    "smtp_config", "smtp_error", "smtp_password", "smtp_server",
]

SMTP_TIMEOUT_S = 10.0
_DEFAULT_PORTS = {"ssl": 465, "starttls": 587, "none": 25}


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    security: str  # starttls | ssl | none
    user: str
    sender: str
    recipients: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


def sender_address(settings: Settings) -> str:
    """Settings email_from, else smtp_user if it is an address, else nero@<this host>."""
    if settings.email_from:
        return settings.email_from
    if "@" in settings.smtp_user:
        return settings.smtp_user
    return f"nero@{socket.getfqdn() or 'localhost'}"


def smtp_config(settings: Settings, recipients: tuple[str, ...] = ()) -> SmtpConfig | None:
    """Where to deliver, or None: without smtp_host, or without anyone to send to
    (`recipients`, else email_to), mail stays in the outbox."""
    server = smtp_server(settings)
    to = recipients or tuple(settings.email_to)
    if server is None or not to:
        return None
    return SmtpConfig(server.host, server.port, server.security, server.user, server.sender, to)


def smtp_server(settings: Settings) -> SmtpConfig | None:
    """The server queued messages go through (each carries its own recipients); None
    without smtp_host."""
    if not settings.smtp_host:
        return None
    security = (settings.smtp_security or "starttls").lower()
    port = settings.smtp_port or _DEFAULT_PORTS.get(security, 587)
    return SmtpConfig(settings.smtp_host, int(port), security, settings.smtp_user, sender_address(settings),
                      tuple(settings.email_to))


def keyring_password(service: str, user: str) -> str | None:
    """The system keyring's password for (service, user), or None."""
    import keyring

    return keyring.get_password(service, user)


def smtp_password(user: str, environ: Mapping[str, str] | None = None,
                  keyring_get: Callable[[str, str], str | None] = keyring_password) -> str | None:
    """NERO_SMTP_PASSWORD, else the keyring entry ("nero", user); None if neither (never prompts)."""
    env = os.environ if environ is None else environ
    if env.get("NERO_SMTP_PASSWORD"):
        return env["NERO_SMTP_PASSWORD"]
    try:
        return keyring_get("nero", user)
    except Exception:  # no backend, a locked store, no D-Bus: all mean "no password here"
        return None


class Broken(Exception):
    """The connection is gone; the remaining messages wait for the next try."""


class Refused(Exception):
    """The server refused the message before its data was sent (code and error text)."""

    def __init__(self, code: int, error: str):
        super().__init__(error)
        self.code = code
        self.error = error


class Transport:
    """One SMTP connection opened by yagmail (TLS and login as configured)."""

    def __init__(self, cfg: SmtpConfig, password: str | None):
        import ssl

        import yagmail

        context = ssl.create_default_context()
        kwargs: dict[str, Any] = {"timeout": SMTP_TIMEOUT_S}
        if cfg.security == "ssl":
            kwargs["context"] = context
        # a dict user keeps yagmail from appending @gmail.com to a login without "@"
        user = {cfg.user: cfg.user} if cfg.user else {cfg.sender: "nero"}
        self.client = yagmail.SMTP(
            user=user, password=password, host=cfg.host, port=cfg.port, smtp_ssl=cfg.security == "ssl",
            smtp_starttls={"context": context} if cfg.security == "starttls" else False,
            smtp_skip_login=not cfg.user, soft_email_validation=False, **kwargs)
        self.client.login()
        self.smtp = self.client.smtp
        self.smtp.ehlo_or_helo_if_needed()

    def offer(self, sender: str, recipients: tuple[str, ...]) -> dict[str, str]:
        """MAIL FROM, RCPT TO and DATA, up to the server's 354 (it waits for the data).
        Returns the recipients the server refused, each with its reply; raises `Refused`
        (after a reset, the connection stays usable) when it refused the sender, every
        recipient or the DATA command, and `Broken` when the connection failed."""
        import smtplib

        smtp = self.smtp
        try:
            code, resp = smtp.mail(sender)
            if code != 250:
                raise smtplib.SMTPSenderRefused(code, resp, sender)
            refused = {}
            for r in recipients:
                code, resp = smtp.rcpt(r)
                if code not in (250, 251):
                    refused[r] = (code, resp)
            if len(refused) == len(recipients):
                code, resp = next(iter(refused.values())) if refused else (554, b"no recipients")
                raise smtplib.SMTPResponseException(code, resp)
            code, resp = smtp.docmd("data")
            if code != 354:
                raise smtplib.SMTPDataError(code, resp)
        except smtplib.SMTPResponseException as e:
            if e.smtp_code == -1:
                raise Broken(smtp_error(e)) from None
            self.reset()
            raise Refused(e.smtp_code, smtp_error(e)) from None
        except (OSError, smtplib.SMTPException) as e:
            raise Broken(smtp_error(e)) from None
        return {r: f"{c} {_decode(x)}" for r, (c, x) in refused.items()}

    def finish(self, message: bytes) -> tuple[int, str]:
        """Send the data of an offered message; the server's final reply (code and text).
        Raises `Broken` when the connection failed meanwhile: the server may have the
        message then."""
        import smtplib

        try:
            self.smtp.send(_data(message))
            code, resp = self.smtp.getreply()
        except (OSError, smtplib.SMTPException) as e:
            raise Broken(smtp_error(e)) from None
        return code, f"{code} {one_line(_decode(resp), 160)}"

    def reset(self) -> None:
        """Abandon the message in progress (RSET); the connection stays open."""
        with contextlib.suppress(Exception):
            self.smtp.rset()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


def _data(message: bytes) -> bytes:
    """The DATA payload: CRLF line ends, leading dots doubled, the final dot line."""
    data = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    data = re.sub(rb"(?m)^\.", b"..", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def _decode(b: bytes | str) -> str:
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b)


def smtp_error(e: Exception) -> str:
    """An SMTP or connection error in a few words, for warnings and the outbox."""
    import smtplib

    if isinstance(e, smtplib.SMTPResponseException) and e.smtp_code != -1:
        return f"{e.smtp_code} {one_line(_decode(e.smtp_error), 160)}"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, TimeoutError | socket.timeout):
        return f"no answer within {SMTP_TIMEOUT_S:.0f} s"
    return one_line(f"{type(e).__name__}: {e}", 200)
