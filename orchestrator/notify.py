"""E-mail: event notices and progress digests (the home of yagmail, and of matplotlib for
the plots in e-mails). Nothing here raises into the reconcile loop: every problem becomes a
warning in the pass report, and the message waits in the outbox for a later pass.

What is sent
    Notices, for the events a row names in its `notify` cell. The words map to event kinds:
    `started`; `completed`; `failed` (exit code ≠ 0, a failed submission, and also a
    scheduler `timeout`: the run did not complete by its own doing); `terminated` (a rule
    stopped it); `lost` (no heartbeat or scheduler record, and also `preempted`: the run
    was interrupted from outside); `warn` (a warning rule fired). A `cancelled` run is never
    notified: the user or the sheet asked for it. The subject names run and event; notices
    of endings carry the reason (exit code, the scheduler's reason, or the rule with its
    values), the last 40 lines of stderr and stdout (for runs whose folder is on this
    machine; remote runs name `nero logs`), the run's learning curves and its metrics.
    More than `GROUP_OVER` notices of one kind from one pass become one message listing
    them (a grid failing on a typo sends one e-mail, not two hundred). A pass reads the
    events recorded since the last event it mailed about (a cursor in the store's meta
    table, moved by compare-and-set in the transaction that queues the notices), so events
    recorded by a pass that crashed, or by another command, are neither lost nor mailed
    twice; on first use the cursor starts at the current pass.
    Without `smtp_host` or `email_to`, notices are still built: they go to the outbox.
    Digests, on Settings `digest` (driven by the `--watch` loop) or `nero digest --send`:
    counts by state, what changed since the last digest, the top runs by `primary_metric`,
    one learning-curve plot per experiment (inline images), a resources summary, and the
    results workbook attached. A scheduled digest is skipped when nothing happened since
    the last one and nothing is live.
    The text and HTML come from Jinja templates `templates/email/*.j2`; a project's own
    `templates/email/<name>` overrides one by name (a broken override falls back to the
    built-in template, with a warning).

Where it goes
    Every message is built once, as MIME bytes (stdlib `email`: multipart/alternative with a
    text part and an HTML part whose images are multipart/related, stable Content-IDs,
    attachments in multipart/mixed), stored in the state store's outbox table with a
    unique Message-ID, and written atomically to `.nero/outbox/<time>-<id>-<label>.eml`.
    The .eml file and what the SMTP server receives are the same bytes. With `smtp_host`
    and `email_to` set, messages are queued for delivery; without either they are written
    to the outbox only (status `local`), so the outbox shows what would be sent.
    yagmail opens the connection (`smtp_security`: starttls, ssl or none; certificates
    are verified; 10 s timeouts) and logs in as `smtp_user` with the password from
    `NERO_SMTP_PASSWORD`, else the system keyring (`keyring set nero <smtp_user>`); it is
    never read from the workbook and never prompted for (without one: a warning, and the
    messages wait). Without `smtp_user` no login is attempted. yagmail's own message
    builder is not used: its Content-IDs change from process to process, it turns newlines
    into <br> and can only append images, and a message must be byte-identical in the
    outbox, in the store and on the wire to be delivered exactly once.

Delivery guarantees: at most once, and in practice exactly once
    Each message has one outbox row, delivered by one process at a time (a lock file in
    the outbox folder; a process that finds it taken skips delivery). For each message:
    MAIL FROM, RCPT TO and DATA are sent; only when the server has answered DATA with 354
    is the row marked `sending` (committed), then the data goes out and the final reply is
    awaited. A 250 marks it `sent`. A failure before the data is sent, or a refusal of the
    data itself, means the server did not take it: the row goes back to `queued` (a 4xx, a refused or broken connection)
    and is retried on a later pass, with back-off in a long-running loop (30 s doubling
    to 30 min; a new `nero reconcile` process always tries once), or to `failed` on a 5xx
    refusal (or after `MAX_TRIES` temporary refusals). If the connection breaks after the
    data went out, or nero dies between the 354 and the sent mark, the server may have
    accepted the message: the row becomes `uncertain` and is *not* resent, so nobody ever
    gets a message twice; a warning names it and its .eml file. That window is a single
    round trip per message. `nero mail` lists the outbox; `nero mail --resend ID` puts a
    failed, uncertain or local message back in the queue (`Mailer.requeue`), asking first
    for an uncertain one.
"""

from __future__ import annotations

import contextlib
import hashlib
import html as html_lib
import math
import os
import re
import socket
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .files import write_atomically
from .model import (
    FINISHED_STATES,
    Event,
    ResultsInput,
    RunRecord,
    RunSpec,
    Series,
    Settings,
    Workbook,
)
from .paths import ProjectPaths
from .state import Mail, Store
from .units import format_duration, format_megabytes, format_metric

EVENT_WORDS = {
    "started": "started", "completed": "completed", "failed": "failed", "timeout": "failed",
    "terminated": "terminated", "lost": "lost", "preempted": "lost", "warn": "warn",
}
ENDINGS = frozenset({"failed", "timeout", "terminated", "lost", "preempted"})
# outbox statuses (see "Delivery guarantees"); `local`: written to the outbox only (no SMTP)
MAIL_STATUSES = ("queued", "sending", "sent", "failed", "uncertain", "local")
RESENDABLE = ("failed", "uncertain", "local")
TAIL_LINES = 40
GROUP_OVER = 10  # more notices of one kind in one pass than this: one message lists them
DETAILED_IN_GROUP = 3
MAX_TRIES = 10  # temporary refusals of one message before it is given up
BACKOFF_S = (30.0, 1800.0)
SMTP_TIMEOUT_S = 10.0
ATTACH_MAX_BYTES = 15 * 1024 * 1024
DIGEST_TOP = 10
DIGEST_PLOTS = 8
DIGEST_CHANGES = 25
PLOT_DPI = 150  # images are 1092 px wide, shown at 728: sharp on high-density screens
KEEP_DAYS = 30  # .eml files of settled messages older than this are removed
CURSOR_KEY = "notify.event_cursor"
DIGEST_KEY = "digest.last_at"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
_DEFAULT_PORTS = {"ssl": 465, "starttls": 587, "none": 25}
_ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
STATE_COLORS = {
    "pending": "#656d76", "submitted": "#1b7c83", "running": "#0969da", "completed": "#1a7f37",
    "failed": "#cf222e", "terminated": "#bc4c00", "cancelled": "#8250df", "timeout": "#cf222e",
    "preempted": "#9a6700", "lost": "#cf222e", "warn": "#9a6700", "not started": "#656d76",
}
STATE_ORDER = ("running", "submitted", "pending", "completed", "failed", "terminated", "timeout",
               "preempted", "lost", "cancelled")
CHANGE_KINDS = ("started", "completed", "failed", "terminated", "timeout", "preempted", "lost",
                "cancelled", "warn", "adopted")


# ---------------------------------------------------------------------------- configuration
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


def smtp_config(settings: Settings) -> SmtpConfig | None:
    """Where to deliver, or None: without smtp_host and email_to, mail stays in the outbox."""
    if not settings.smtp_host or not settings.email_to:
        return None
    security = (settings.smtp_security or "starttls").lower()
    port = settings.smtp_port or _DEFAULT_PORTS.get(security, 587)
    return SmtpConfig(settings.smtp_host, int(port), security, settings.smtp_user, sender_address(settings),
                      tuple(settings.email_to))


def _keyring_password(service: str, user: str) -> str | None:
    import keyring

    return keyring.get_password(service, user)


def smtp_password(user: str, environ: Mapping[str, str] | None = None,
                  keyring_get: Callable[[str, str], str | None] = _keyring_password) -> str | None:
    """NERO_SMTP_PASSWORD, else the keyring entry ("nero", user); None if neither (never prompts)."""
    env = os.environ if environ is None else environ
    if env.get("NERO_SMTP_PASSWORD"):
        return env["NERO_SMTP_PASSWORD"]
    try:
        return keyring_get("nero", user)
    except Exception:  # no backend, a locked store, no D-Bus: all mean "no password here"
        return None


def outbox_dir(project_dir: str | Path) -> Path:
    return ProjectPaths(Path(project_dir)).outbox


# ---------------------------------------------------------------------------- formatting
def _when(t: float | None) -> str:
    return "" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _clock(t: float | None) -> str:
    return "" if t is None else time.strftime("%m-%d %H:%M", time.localtime(t))


def _one_line(text: str, limit: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


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


# ---------------------------------------------------------------------------- templates
def _search_path(project_dir: str | Path | None) -> tuple[str, ...]:
    from .render import builtin_templates

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
    from .render import mail_environment

    env = mail_environment(search)
    env.filters.update(num=format_metric, when=_when, clock=_clock, duration=format_duration, mb=format_megabytes, one_line=_one_line,
                       state_color=lambda s: STATE_COLORS.get(str(s), "#1f2328"), breakable=_breakable)
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


# ---------------------------------------------------------------------------- MIME
@dataclass(frozen=True)
class Part:
    """An inline image (with a Content-ID) or an attachment."""

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

    from . import __version__

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
    from email import message_from_bytes
    from email.policy import default

    body = message_from_bytes(message, policy=default).get_body(preferencelist=("plain",))
    return body.get_content() if body is not None else ""


# ---------------------------------------------------------------------------- plots
def _series(points: Iterable[tuple[int | None, float]]) -> tuple[list[float], list[float], tuple[float, float] | None]:
    """Finite (step, value) pairs; points without a step count one past the previous one.
    Also the first non-finite point (step, value), where a run diverged."""
    xs: list[float] = []
    ys: list[float] = []
    bad = None
    prev = 0.0
    pairs = (zip(points.steps, points.values, strict=True) if isinstance(points, Series)  # NaN: no step
             else ((math.nan if step is None else float(step), value) for step, value in points))
    for step, value in pairs:
        x = step if step == step else prev + 1
        prev = x
        if value is None or not math.isfinite(value):
            if bad is None:
                bad = (x, value if value is not None else math.nan)
            continue
        xs.append(x)
        ys.append(float(value))
    return xs, ys, bad


def _by_step(points: Sequence[tuple[int | None, float]]) -> Sequence[tuple[int | None, float]]:
    """The points in step order, those without a step last; an ordered Series (the usual
    case) as it is."""
    if isinstance(points, Series) and points.ordered:
        return points
    return sorted(points, key=lambda p: (p[0] is None, p[0] or 0))


def _integer_steps(ax: Any, xs: Sequence[float]) -> None:
    """Whole-number step ticks; a lone step sits in the middle of a short axis."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if xs and min(xs) == max(xs):
        ax.set_xlim(xs[0] - 1, xs[0] + 1)


def run_curves_png(history: Mapping[str, Sequence[tuple[int | None, float]]], metrics: Sequence[str],
                   goals: Mapping[str, str], title: str) -> bytes | None:
    """One small panel per metric (at most four) of one run's learning curves, as PNG bytes."""
    import io

    from matplotlib.figure import Figure

    def enough(m: str) -> bool:  # a curve needs two points (or one and where it diverged)
        xs, _, bad = _series(history.get(m, ()))
        return len(xs) + (bad is not None) >= 2

    shown = [m for m in metrics if enough(m)][:4]
    if not shown:
        return None
    cols = 1 if len(shown) == 1 else 2
    rows = math.ceil(len(shown) / cols)
    fig = Figure(figsize=(7.28, 2.7 * rows + 0.4), dpi=PLOT_DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(shown):
            ax.set_visible(False)
            continue
        metric = shown[i]
        xs, ys, bad = _series(history.get(metric, ()))
        ax.plot(xs, ys, color="#1F77B4", linewidth=1.6, marker="o" if len(xs) < 30 else None, markersize=3)
        if ys and min(ys) > 0 and max(ys) / min(ys) > 50:
            ax.set_yscale("log")
        if bad is not None:
            ax.axvline(bad[0], color="#D62728", linestyle="--", linewidth=1)
            ax.annotate(f"{format_metric(bad[1])} at step {bad[0]:g}", xy=(bad[0], 0.92), xycoords=("data", "axes fraction"),
                        ha="right", color="#D62728", fontsize=9)
        ax.set_title(f"{metric} ({goals.get(metric, 'min')} is better)", fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        _integer_steps(ax, xs)
        ax.tick_params(labelsize=8.5)
        ax.grid(True, color="#DDDDDD", linewidth=0.6)
    fig.suptitle(title, fontsize=10.5)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def experiment_curves_png(runs: Sequence[RunRecord], histories: Mapping[str, Mapping[str, Sequence[tuple[int | None, float]]]],
                          metric: str, goal: str, title: str) -> bytes | None:
    """`metric` over steps, one line per run, sized for an e-mail column (728 px) with the
    legend below: the curves of the results workbook (`results.plot_curves`), readable in
    a mail client. A diverged run of a metric to minimise leaves the top of the chart (ten
    times the typical first value) instead of flattening the others."""
    import io

    from matplotlib.figure import Figure

    from .results import PALETTE

    lines = []
    for r in runs:
        xs, ys, bad = _series(_by_step(histories.get(r.key, {}).get(metric, ())))
        if xs:
            label = r.key[len(r.experiment):].strip("[]") if r.key.startswith(r.experiment + "[") else r.key
            lines.append((label or r.key, xs, ys, bad))
    if not lines:
        return None
    firsts = sorted(ys[0] for _, _, ys, _ in lines)
    typical = firsts[len(firsts) // 2]
    top = max(max(ys) for _, _, ys, _ in lines)
    cap = None
    if goal != "max" and typical > 0 and min(min(ys) for _, _, ys, _ in lines) >= 0 and top > 10 * typical:
        e = 10 ** math.floor(math.log10(10 * typical))
        cap = next(m * e for m in (1, 2, 5, 10) if m * e >= 10 * typical)
    shown = [v for _, _, ys, _ in lines for v in ys if cap is None or v <= cap]
    log = bool(shown) and min(shown) > 0 and max(shown) / min(shown) >= 50
    n = len(lines)
    legend_rows = math.ceil(n / 2) if n <= 24 else 0
    fig = Figure(figsize=(7.28, 3.7 + 0.2 * legend_rows), dpi=PLOT_DPI, layout="constrained")
    ax = fig.subplots()
    for i, (label, xs, ys, bad) in enumerate(lines):
        off = cap is not None and min(ys) > cap
        note = " (off the chart)" if off else (f" ({format_metric(bad[1])} at step {bad[0]:g})" if bad else "")
        ax.plot(xs, ys, color=PALETTE[i % len(PALETTE)], linestyle="--" if (i // len(PALETTE)) % 2 else "-",
                linewidth=1.6, marker="o" if len(xs) < 3 else None, markersize=3.5, label=label + note)
    if log:
        ax.set_yscale("log")
    if cap is not None and shown:
        low = min(shown)
        ax.set_ylim(low / 1.5 if log else min(0.0, low), cap)
    ax.set_title(title, fontsize=10.5)
    ax.set_xlabel("step", fontsize=9)
    ax.set_ylabel(metric, fontsize=9)
    _integer_steps(ax, [x for _, xs, _, _ in lines for x in xs])
    ax.tick_params(labelsize=8.5)
    ax.grid(True, color="#DDDDDD", linewidth=0.6)
    if legend_rows:
        fig.legend(loc="outside lower center", ncols=2 if n > 1 else 1, fontsize=8.5, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def slug_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:60] or "x"


def _metric_order(metrics: Iterable[str], primary: str) -> list[str]:
    names = list(dict.fromkeys(metrics))
    return ([primary] if primary in names else []) + sorted(n for n in names if n != primary)


def _primary(data: ResultsInput) -> str:
    if data.settings.primary_metric:
        return data.settings.primary_metric
    for r in data.runs:
        for name in r.last:
            return name
    return ""


# ---------------------------------------------------------------------------- notices
def _cid(kind: str, n: int, token: str) -> str:
    return f"{kind}-{n}.{token}@nero"


def _params(rec: RunRecord | None, spec: RunSpec | None) -> list[tuple[str, str]]:
    pairs = rec.params if rec is not None else (spec.params if spec is not None else ())
    return [(k, format_metric(v)) for k, v in pairs]


def notice_item(store: Store, event: Event, spec: RunSpec | None, workbook: Workbook, project_dir: Path,
                n: int, token: str, images: list[Part], detailed: bool = True) -> dict[str, Any]:
    """The template context for one event's notice (and its curve image, appended to `images`)."""
    attempts = {r.attempt: r for r in store.attempts(event.key)}
    rec = attempts.get(event.attempt) or (max(attempts.values(), key=lambda r: r.attempt) if attempts else None)
    settings = workbook.settings
    item: dict[str, Any] = {
        "key": event.key, "kind": event.kind, "word": EVENT_WORDS.get(event.kind, event.kind),
        "title": "warning" if event.kind == "warn" else event.kind, "reason": event.reason,
        "short_reason": _one_line(event.reason, 70), "time": event.time, "attempt": event.attempt,
        "experiment": spec.experiment if spec else (rec.experiment if rec else ""),
        "params": _params(rec, spec), "number": rec.number if rec else None,
        "state": rec.state.value if rec else "", "cluster": rec.cluster if rec else "",
        "host": rec.host if rec else "", "run_dir": rec.run_dir if rec else "",
        "job_id": rec.job_id if rec else "", "command": rec.command if rec else "",
        "started_at": rec.started_at if rec else None, "ended_at": rec.ended_at if rec else None,
        "runtime": rec.runtime(event.time) if rec else None, "exit_code": rec.exit_code if rec else None,
        "step": rec.step if rec else None, "metrics": [], "image": None, "stderr": None, "stdout": None,
        "output_elsewhere": "", "ending": event.kind in ENDINGS, "detailed": detailed,
    }
    if rec is None or not detailed or event.kind == "started":
        return item
    goals = {m: workbook.goal(m) for m in rec.last}
    order = _metric_order(rec.last, settings.primary_metric)
    item["metrics"] = [{"name": m, "last": rec.last.get(m), "best": rec.best.get(m), "goal": goals[m]} for m in order]
    history = store.history(rec.key, rec.attempt)
    png = run_curves_png(history, _metric_order(history, settings.primary_metric),
                         {m: workbook.goal(m) for m in history}, f"{rec.key} (attempt {rec.attempt})")
    if png is not None:
        cid = _cid("curve", n, token)
        images.append(Part(png, f"curves-{n}.png", cid=cid))
        item["image"] = cid
    if item["ending"]:
        run_dir = Path(rec.run_dir) if rec.run_dir else None
        if run_dir is not None and run_dir.is_dir():
            item["stderr"] = tail(run_dir / "stderr.log")
            item["stdout"] = tail(run_dir / "stdout.log")
        elif rec.run_dir:
            item["output_elsewhere"] = f"the run's output is on {rec.cluster or 'its cluster'}: {rec.run_dir}"
    return item


def _notice(store: Store, events: Sequence[Event], specs: Mapping[str, RunSpec], workbook: Workbook,
            project_dir: Path, sender: str, recipients: tuple[str, ...], status: str, now: float,
            warnings: list[str]) -> Mail:
    word = EVENT_WORDS.get(events[0].kind, events[0].kind)
    msg_id = message_id(word, sender)
    token = hashlib.blake2b(msg_id.encode(), digest_size=4).hexdigest()
    images: list[Part] = []
    items = [notice_item(store, e, specs.get(e.key), workbook, project_dir, i, token, images,
                         detailed=i < (1 if len(events) == 1 else DETAILED_IN_GROUP))
             for i, e in enumerate(events)]
    ctx = {"items": items, "item": items[0], "word": word, "project": project_dir.name,
           "workbook": str(workbook.path), "now": now, "grouped": len(items) > 1, "tail_lines": TAIL_LINES,
           "title": items[0]["title"] if len(items) == 1 else f"{len(items)} runs {word}"}
    subject = render_mail("notice.subject.j2", ctx, project_dir, warnings).strip()
    ctx["subject"] = subject
    text = render_mail("notice.txt.j2", ctx, project_dir, warnings)
    html = render_mail("notice.html.j2", ctx, project_dir, warnings)
    headers = {"X-Nero-Kind": "notice", "X-Nero-Event": word, "X-Nero-Project": project_dir.name}
    if len(events) == 1:
        headers["X-Nero-Run"] = events[0].key
        thread = hashlib.blake2b(f"{project_dir}:{events[0].key}".encode(), digest_size=8).hexdigest()
        headers["References"] = f"<run.{thread}@nero>"
    data = compose(subject=subject, sender=sender, recipients=recipients, text=text, html=html, images=images,
                   msg_id=msg_id, date=now, headers=headers)
    label = slug_name(f"{word}-{events[0].key if len(events) == 1 else len(events)}")
    return Mail(kind="notice", subject=subject, message_id=msg_id, sender=sender, recipients=recipients,
                message=data, eml=f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}-{{id:06d}}-{label}.eml",
                status=status)


def _fallback_notice(event: Event, error: Exception, project_dir: Path, sender: str, recipients: tuple[str, ...],
                     status: str, now: float) -> Mail:
    """A plain notice for when building the full one failed: the event is never lost."""
    subject = f"[nero] {event.key} {event.kind}: {_one_line(event.reason, 70)}"
    text = (f"{event.key} {event.kind} at {_when(event.time)} (attempt {event.attempt}).\n\n{event.reason}\n\n"
            f"(nero could not build the full notice: {type(error).__name__}: {error})\n")
    msg_id = message_id(event.kind, sender)
    data = compose(subject=subject, sender=sender, recipients=recipients, text=text,
                   html=f"<pre>{html_lib.escape(text)}</pre>", msg_id=msg_id, date=now,
                   headers={"X-Nero-Kind": "notice", "X-Nero-Event": EVENT_WORDS.get(event.kind, event.kind),
                            "X-Nero-Run": event.key, "X-Nero-Project": project_dir.name})
    return Mail(kind="notice", subject=subject, message_id=msg_id, sender=sender, recipients=recipients,
                message=data, eml=f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}-{{id:06d}}-{event.kind}.eml",
                status=status)


# ---------------------------------------------------------------------------- digest
def _counts(data: ResultsInput) -> list[dict[str, Any]]:
    """Runs by state, then the runs the sheet asks for that have not started (held, or
    waiting for a slot or for the experiments named in `after`)."""
    counts = Counter(r.state.value for r in data.runs)
    rows = [{"state": s, "n": counts[s]} for s in STATE_ORDER if counts.get(s)]
    rows += [{"state": s, "n": n} for s, n in sorted(counts.items()) if s not in STATE_ORDER]
    known = {r.key for r in data.runs if not r.state.finished}
    waiting = len({k for k, _ in data.queue if k not in known})
    if waiting:
        rows.append({"state": "not started", "n": waiting})
    return rows


def _leaderboard(data: ResultsInput, metric: str) -> list[dict[str, Any]]:
    if not metric:
        return []
    goal = data.goals.get(metric, "min")
    ranked = [(r, r.best[metric]) for r in data.runs if metric in r.best and math.isfinite(r.best[metric])]
    ranked.sort(key=lambda x: x[1], reverse=goal == "max")
    return [{"rank": i + 1, "key": r.key, "state": r.state.value, "best": v, "last": r.last.get(metric),
             "step": r.step, "runtime": r.runtime(data.now)} for i, (r, v) in enumerate(ranked[:DIGEST_TOP])]


def _resources(data: ResultsInput) -> dict[str, Any]:
    by_cluster: dict[str, list[RunRecord]] = {}
    for r in data.runs:
        by_cluster.setdefault(r.cluster or "?", []).append(r)
    clusters = []
    for name, runs in sorted(by_cluster.items()):
        rss = [r.peak_rss_mb for r in runs if r.peak_rss_mb is not None]
        gpu = [r.peak_gpu_mem_mb for r in runs if r.peak_gpu_mem_mb is not None]
        disk = [r.min_disk_free_mb for r in runs if r.min_disk_free_mb is not None]
        cpu_s = sum(r.runtime(data.now) or 0.0 for r in runs)
        clusters.append({
            "name": name, "live": sum(1 for r in runs if r.state.live), "runs": len(runs),
            "runtime": cpu_s, "peak_rss": max(rss) if rss else None, "peak_gpu": max(gpu) if gpu else None,
            "min_disk": min(disk) if disk else None,
        })
    hungry = sorted((r for r in data.runs if r.peak_rss_mb is not None), key=lambda r: -(r.peak_rss_mb or 0))[:3]
    return {"clusters": clusters, "hungry": [{"key": r.key, "rss": r.peak_rss_mb, "gpu": r.peak_gpu_mem_mb}
                                            for r in hungry]}


def _changes(data: ResultsInput, since: float | None) -> dict[str, Any]:
    events = [e for e in data.events if (since is None or e.time > since) and e.kind in CHANGE_KINDS]
    submitted = sum(1 for e in data.events if (since is None or e.time > since) and e.kind == "submitted")
    counts = Counter(e.kind for e in events)
    return {
        "counts": [{"kind": k, "n": counts[k]} for k in CHANGE_KINDS if counts.get(k)],
        "submitted": submitted, "total": len(events),
        "events": [{"time": e.time, "key": e.key, "kind": e.kind, "reason": e.reason, "attempt": e.attempt}
                   for e in events[-DIGEST_CHANGES:][::-1]],
    }


def _experiment_plots(data: ResultsInput, metric: str, token: str,
                      warnings: list[str]) -> tuple[list[dict[str, Any]], list[Part], int]:
    """One plot of `metric` (else the experiment's first metric) per experiment, the most
    recently active experiments first; returns (plots, images, experiments left out)."""
    last_seen: dict[str, float] = {}
    for r in data.runs:
        t = max(x for x in (r.ended_at, r.heartbeat_at, r.started_at, r.submitted_at, 0.0) if x is not None)
        last_seen[r.experiment] = max(last_seen.get(r.experiment, 0.0), t)
    experiments = sorted(last_seen, key=lambda e: -last_seen[e])
    plots: list[dict[str, Any]] = []
    images: list[Part] = []
    skipped = 0
    for experiment in experiments:
        runs = [r for r in data.runs if r.experiment == experiment]
        names = [m for r in runs for m, pts in data.histories.get(r.key, {}).items() if pts]
        if not names:
            continue
        if len(plots) >= DIGEST_PLOTS:
            skipped += 1
            continue
        chosen = metric if metric in names else sorted(set(names))[0]
        goal = data.goals.get(chosen, "min")
        try:
            png = experiment_curves_png(runs, data.histories, chosen, goal,
                                        f"{experiment}: {chosen} ({goal} is better)")
        except Exception as e:  # a plot must not cost the digest
            warnings.append(f"digest: no plot for {experiment}: {type(e).__name__}: {e}")
            continue
        if png is None:
            continue
        cid = _cid("experiment", len(plots), token)
        images.append(Part(png, f"{slug_name(experiment)}-{slug_name(chosen)}.png", cid=cid))
        plots.append({"experiment": experiment, "metric": chosen, "image": cid, "runs": len(runs)})
    return plots, images, skipped


def build_digest(data: ResultsInput, results_file: Path | None, since: float | None, project_dir: Path,
                 sender: str, recipients: tuple[str, ...], status: str, now: float,
                 warnings: list[str]) -> Mail:
    metric = _primary(data)
    msg_id = message_id("digest", sender)
    token = hashlib.blake2b(msg_id.encode(), digest_size=4).hexdigest()
    attachments: list[Part] = []
    attachment_note = ""
    if results_file is not None and results_file.is_file():
        size = results_file.stat().st_size
        if size <= ATTACH_MAX_BYTES:
            attachments.append(Part(results_file.read_bytes(), results_file.name, mime=XLSX))
        else:
            attachment_note = f"{results_file.name} is {size / 2**20:.0f} MB, too large to attach: {results_file}"
    else:
        attachment_note = "no results workbook yet (it is written by nero reconcile)"
    plots, images, skipped = _experiment_plots(data, metric, token, warnings)
    counts = _counts(data)
    live = sum(1 for r in data.runs if r.state.live)
    ctx = {
        "project": project_dir.name, "workbook": data.experiments_path, "now": now, "since": since,
        "counts": counts, "total": len(data.runs), "live": live,
        "summary": ", ".join(f"{c['n']} {c['state']}" for c in counts) or "no runs yet",
        "changes": _changes(data, since), "metric": metric, "goal": data.goals.get(metric, "min"),
        "leaders": _leaderboard(data, metric), "plots": plots, "plots_skipped": skipped,
        "resources": _resources(data), "attachment": attachments[0].filename if attachments else "",
        "attachment_note": attachment_note,
        "finished": sum(1 for r in data.runs if r.state in FINISHED_STATES),
    }
    subject = render_mail("digest.subject.j2", ctx, project_dir, warnings).strip()
    ctx["subject"] = subject
    text = render_mail("digest.txt.j2", ctx, project_dir, warnings)
    html = render_mail("digest.html.j2", ctx, project_dir, warnings)
    data_bytes = compose(subject=subject, sender=sender, recipients=recipients, text=text, html=html, images=images,
                         attachments=attachments, msg_id=msg_id, date=now,
                         headers={"X-Nero-Kind": "digest", "X-Nero-Project": project_dir.name})
    return Mail(kind="digest", subject=subject, message_id=msg_id, sender=sender, recipients=recipients,
                message=data_bytes, eml=f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}-{{id:06d}}-digest.eml",
                status=status)


# ---------------------------------------------------------------------------- delivery
class _Transport:
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


class _Broken(Exception):
    """The connection is gone; the remaining messages wait for the next try."""


class Mailer:
    """E-mail for one project: queues notices and digests, delivers the outbox. One per
    state store (`Mailer.of`), so the delivery back-off lives as long as the loop."""

    _by_store: weakref.WeakKeyDictionary[Store, Mailer] = weakref.WeakKeyDictionary()

    def __init__(self, store: Store, project_dir: str | Path, clock: Callable[[], float] = time.time,
                 environ: Mapping[str, str] | None = None,
                 keyring_get: Callable[[str, str], str | None] = _keyring_password):
        self.store = store
        self.project_dir = Path(project_dir)
        self.outbox = outbox_dir(self.project_dir)
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

    def _route(self, settings: Settings, warnings: list[str]) -> tuple[str, tuple[str, ...], str]:
        """Sender, recipients and the status new messages start in."""
        cfg = smtp_config(settings)
        if cfg is None:
            if settings.smtp_host and not settings.email_to and "no-to" not in self._warned:
                self._warned.add("no-to")
                warnings.append(f"e-mail: smtp_host is set but email_to is empty; messages are only written to "
                                f"{self.outbox}")
            return sender_address(settings), tuple(settings.email_to), "local"
        return cfg.sender, cfg.recipients, "queued"

    def queue_notices(self, specs: Sequence[RunSpec], workbook: Workbook, now: float,
                      warnings: list[str] | None = None) -> list[Mail]:
        warnings = [] if warnings is None else warnings
        raw = self.store.get_meta(CURSOR_KEY)
        cursor = int(raw) if raw else self.store.last_event_id(before=now)  # first use: this pass on
        new = self.store.events_after(cursor)
        if not new:
            if raw is None:
                self.store.set_meta(CURSOR_KEY, str(cursor))
            return []
        by_key = {s.key: s for s in specs}
        groups: dict[str, list[Event]] = {}
        for _, e in new:
            word = EVENT_WORDS.get(e.kind)
            spec = by_key.get(e.key)
            if word and spec is not None and word in spec.notify:
                groups.setdefault(word, []).append(e)
        sender, recipients, status = self._route(workbook.settings, warnings)
        mails: list[Mail] = []
        for events in groups.values():
            batches = [events] if len(events) > GROUP_OVER else [[e] for e in events]
            for batch in batches:
                try:
                    mails.append(_notice(self.store, batch, by_key, workbook, self.project_dir, sender, recipients,
                                         status, now, warnings))
                    continue
                except Exception as e:
                    warnings.append(f"e-mail: notice for {batch[0].key} {batch[0].kind} built without details: "
                                    f"{type(e).__name__}: {e}")
                    error = e
                for ev in batch:
                    try:
                        mails.append(_fallback_notice(ev, error, self.project_dir, sender, recipients, status, now))
                    except Exception as e2:  # the event must not block every later notice
                        warnings.append(f"e-mail: no notice for {ev.key} {ev.kind}: {type(e2).__name__}: {e2}")
        # compare-and-set on the cursor: two processes never queue the same events
        stored = self.store.enqueue_mail(mails, now, meta={CURSOR_KEY: str(new[-1][0])}, expect=(CURSOR_KEY, raw))
        self._write_files(stored, warnings)
        return stored

    # ------------------------------------------------------------ digests
    def digest(self, data: ResultsInput, results_file: Path | None, now: float, *, force: bool = False,
               warnings: list[str] | None = None) -> Mail | None:
        """Queue a digest (and remember its time); without `force` only if something
        happened since the last one or runs are live."""
        warnings = [] if warnings is None else warnings
        raw = self.store.get_meta(DIGEST_KEY)
        since = float(raw) if raw else None
        if not force:
            changed = any(e.time > since for e in data.events) if since is not None else bool(data.events)
            if not changed and not any(r.state.live for r in data.runs):
                return None
        sender, recipients, status = self._route(data.settings, warnings)
        mail = build_digest(data, results_file, since, self.project_dir, sender, recipients, status, now, warnings)
        stored = self.store.enqueue_mail([mail], now, meta={DIGEST_KEY: repr(now)})
        self._write_files(stored, warnings)
        return stored[0]

    def preview(self, data: ResultsInput, results_file: Path | None, now: float,
                warnings: list[str] | None = None) -> Mail:
        """The digest as it would be sent now, not queued (the next digest still covers the
        same period)."""
        warnings = [] if warnings is None else warnings
        raw = self.store.get_meta(DIGEST_KEY)
        sender, recipients, _ = self._route(data.settings, warnings)
        return build_digest(data, results_file, float(raw) if raw else None, self.project_dir, sender, recipients,
                            "preview", now, warnings)

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

    def _deliver(self, settings: Settings, now: float, force: bool) -> list[str]:
        from filelock import FileLock, Timeout

        cfg = smtp_config(settings)
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
                    delay = self._backoff(now)
                    warnings.append(f"e-mail: no password for {cfg.user} at {cfg.where}: set NERO_SMTP_PASSWORD or "
                                    f"run `keyring set nero {cfg.user}`; {len(queued)} message(s) wait in the outbox, "
                                    f"next try in {format_duration(delay)}")
                    return warnings
            try:
                transport = _Transport(cfg, password)
            except Exception as e:
                delay = self._backoff(now)
                warnings.append(f"e-mail: cannot deliver through {cfg.where} ({_smtp_error(e)}); {len(queued)} "
                                f"message(s) wait in the outbox, next try in {format_duration(delay)}")
                return warnings
            try:
                for m in queued:
                    try:
                        self._send(transport, m, now, warnings)
                    except _Broken as e:
                        left = len(self.store.mail(("queued",)))
                        delay = self._backoff(now)
                        warnings.append(f"e-mail: the connection to {cfg.where} broke ({e}); {left} message(s) "
                                        f"wait in the outbox, next try in {format_duration(delay)}")
                        return warnings
                self._failures, self._retry_at = 0, 0.0
            finally:
                transport.close()
        finally:
            lock.release()
        return warnings

    def _send(self, t: _Transport, m: Mail, now: float, warnings: list[str]) -> None:
        import smtplib

        smtp = t.smtp
        try:
            code, resp = smtp.mail(m.sender)
            if code != 250:
                raise smtplib.SMTPSenderRefused(code, resp, m.sender)
            refused = {}
            for r in m.recipients:
                code, resp = smtp.rcpt(r)
                if code not in (250, 251):
                    refused[r] = (code, resp)
            if len(refused) == len(m.recipients):
                code, resp = next(iter(refused.values())) if refused else (554, b"no recipients")
                raise smtplib.SMTPResponseException(code, resp)
            code, resp = smtp.docmd("data")
            if code != 354:
                raise smtplib.SMTPDataError(code, resp)
        except smtplib.SMTPResponseException as e:
            if e.smtp_code == -1:
                raise _Broken(_smtp_error(e)) from None
            with contextlib.suppress(Exception):
                smtp.rset()
            self._refused(m, e.smtp_code, _smtp_error(e), now, warnings, tried=True)
            return
        except (OSError, smtplib.SMTPException) as e:
            raise _Broken(_smtp_error(e)) from None
        if not self.store.claim_mail(m.id):
            with contextlib.suppress(Exception):
                smtp.rset()
            return
        try:
            smtp.send(_data(m.message))
            code, resp = smtp.getreply()
        except (OSError, smtplib.SMTPException) as e:
            self.store.settle_mail(m.id, "uncertain", now, _smtp_error(e))
            warnings.append(self._uncertain(m))
            raise _Broken(_smtp_error(e)) from None
        if code == 250:
            self.store.settle_mail(m.id, "sent", now)
            if refused:
                warnings.append(f"e-mail: {m.subject!r} was not accepted for " +
                                ", ".join(f"{r} ({c} {_decode(x)})" for r, (c, x) in refused.items()))
        else:  # the server answered the data with a refusal: it did not take the message
            self._refused(m, code, f"{code} {_one_line(_decode(resp), 160)}", now, warnings)

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


def _decode(b: bytes | str) -> str:
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b)


def _smtp_error(e: Exception) -> str:
    import smtplib

    if isinstance(e, smtplib.SMTPResponseException) and e.smtp_code != -1:
        return f"{e.smtp_code} {_one_line(_decode(e.smtp_error), 160)}"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, TimeoutError | socket.timeout):
        return f"no answer within {SMTP_TIMEOUT_S:.0f} s"
    return _one_line(f"{type(e).__name__}: {e}", 200)
