"""Building a message: the e-mail templates rendered, and the MIME bytes composed.

Every message is built once, as MIME bytes (stdlib `email`: multipart/alternative with a
text part and an HTML part whose images are multipart/related, stable Content-IDs,
attachments in multipart/mixed) with a unique Message-ID. Those bytes are what the outbox
stores, what its .eml file holds and what the SMTP server receives. yagmail's message
builder is not used: its Content-IDs change from process to process, it turns newlines
into <br> and can only append images, and a message must be byte-identical in the outbox,
in the store and on the wire to be delivered exactly once.

The text and HTML come from Jinja templates `templates/email/*.j2` (through
`render.mail_environment`); a project's own `templates/email/<name>` overrides one by
name (a broken override falls back to the built-in template, with a warning)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..units import format_duration, format_megabytes, format_metric
from .formats import local_time, one_line, short_time

__all__ = [
    "STATE_COLORS", "Draft", "Part", "compose", "html_with_data_uris", "message_id", "render_mail", "render_message",
    "text_of",
]

STATE_COLORS = {
    "pending": "#656d76", "submitted": "#1b7c83", "running": "#0969da", "completed": "#1a7f37",
    "failed": "#cf222e", "terminated": "#bc4c00", "cancelled": "#8250df", "timeout": "#cf222e",
    "preempted": "#9a6700", "lost": "#cf222e", "warn": "#9a6700", "not started": "#656d76",
}


# ---------------------------------------------------------------------------- templates
def _search_path(project_dir: str | Path | None) -> tuple[str, ...]:
    from ..render import builtin_templates

    search = []
    if project_dir and (Path(project_dir) / "templates" / "email").is_dir():
        search.append(str(Path(project_dir) / "templates"))
    search.append(str(builtin_templates()))
    return tuple(search)


def _breakable(text: Any) -> Any:
    """HTML-escaped text with line-break opportunities after commas (long run keys wrap
    between parameters, not in the middle of a name)."""
    from markupsafe import Markup, escape

    return Markup(str(escape(str(text))).replace(",", ",<wbr>"))


@lru_cache(maxsize=8)
def _environment(search: tuple[str, ...]) -> Any:
    from ..render import mail_environment

    env = mail_environment(search)
    env.filters.update(num=format_metric, when=local_time, clock=short_time, duration=format_duration, mb=format_megabytes,
                       one_line=one_line, state_color=lambda s: STATE_COLORS.get(str(s), "#1f2328"),
                       breakable=_breakable)
    return env


def render_mail(name: str, context: Mapping[str, Any], project_dir: str | Path | None,
                warnings: list[str] | None = None) -> str:
    """Render `email/<name>`; a project's override that fails falls back to the built-in one."""
    search = _search_path(project_dir)
    try:
        return _environment(search).get_template(f"email/{name}").render(**context)
    except Exception as e:
        if len(search) == 1:
            raise
        if warnings is not None:
            warnings.append(f"e-mail template templates/email/{name} in the project failed ({type(e).__name__}: "
                            f"{e}); used the built-in one")
        return _environment(search[-1:]).get_template(f"email/{name}").render(**context)


def render_message(name: str, context: dict[str, Any], project_dir: str | Path | None,
                   warnings: list[str] | None = None) -> tuple[str, str, str]:
    """Subject, text and HTML of a message from `email/<name>.subject.j2`, `.txt.j2` and
    `.html.j2`; the text and HTML templates see the subject as `subject` in `context`."""
    subject = render_mail(f"{name}.subject.j2", context, project_dir, warnings).strip()
    context["subject"] = subject
    return (subject, render_mail(f"{name}.txt.j2", context, project_dir, warnings),
            render_mail(f"{name}.html.j2", context, project_dir, warnings))


# ---------------------------------------------------------------------------- MIME
@dataclass(frozen=True)
class Draft:
    """A message built but not yet in the outbox: `kind` (notice or digest), its subject
    and Message-ID, the MIME bytes, and a short label for its .eml file name."""

    kind: str
    subject: str
    message_id: str
    message: bytes
    label: str


@dataclass(frozen=True)
class Part:
    """An inline image of the HTML part (with the Content-ID its <img> names) or, without
    a Content-ID, an attachment."""

    data: bytes
    filename: str
    mime: str = "image/png"
    cid: str = ""


def message_id(kind: str, sender: str) -> str:
    from email.utils import make_msgid

    domain = sender.rpartition("@")[2] or "nero.invalid"
    return make_msgid(idstring=f"nero.{kind}", domain=domain)


def compose(*, subject: str, sender: str, recipients: Sequence[str], text: str, html: str,
            images: Sequence[Part] = (), attachments: Sequence[Part] = (), msg_id: str, date: float,
            headers: Mapping[str, str] | None = None) -> bytes:
    """The complete MIME message as it is stored, written to the .eml file and sent."""
    from email.message import EmailMessage
    from email.policy import SMTP
    from email.utils import formatdate

    from .. import __version__

    msg = EmailMessage(policy=SMTP)
    msg["Subject"] = _header(subject)
    msg["From"] = sender
    if recipients:
        msg["To"] = ", ".join(recipients)
    msg["Date"] = formatdate(date, localtime=True)
    msg["Message-ID"] = msg_id
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Mailer"] = f"nero {__version__}"
    for k, v in (headers or {}).items():
        msg[k] = _header(v)
    msg.set_content(text if text.endswith("\n") else text + "\n")
    msg.add_alternative(html, subtype="html")
    html_part = msg.get_payload()[-1]
    for img in images:
        maintype, _, subtype = img.mime.partition("/")
        html_part.add_related(img.data, maintype=maintype, subtype=subtype, cid=f"<{img.cid}>",
                              filename=img.filename, disposition="inline")
    for a in attachments:
        maintype, _, subtype = a.mime.partition("/")
        msg.add_attachment(a.data, maintype=maintype, subtype=subtype, filename=a.filename)
    return msg.as_bytes()


def _header(value: str) -> str:
    """One line: cells may hold line breaks, headers may not."""
    return " ".join(str(value).split())


def html_with_data_uris(message: bytes) -> str:
    """The HTML part of a message with its cid: images as data: URIs (for a browser)."""
    import base64
    from email import message_from_bytes
    from email.policy import default

    msg = message_from_bytes(message, policy=default)
    body = msg.get_body(preferencelist=("html",))
    if body is None:
        return ""
    html = body.get_content()
    for part in msg.walk():
        cid = part.get("Content-ID")
        if cid and part.get_content_maintype() == "image":
            uri = f"data:{part.get_content_type()};base64,{base64.b64encode(part.get_payload(decode=True)).decode()}"
            html = html.replace(f"cid:{cid.strip('<>')}", uri)
    return html


def text_of(message: bytes) -> str:
    """The plain-text part of a message ("" if it has none)."""
    from email import message_from_bytes
    from email.policy import default

    body = message_from_bytes(message, policy=default).get_body(preferencelist=("plain",))
    return body.get_content() if body is not None else ""
