"""The e-mail commands: `nero digest` (preview or send the progress digest now) and
`nero mail` (the outbox: what was sent, what waits, resending)."""

from __future__ import annotations

import json
import sys
import time

import click

from ..errors import NeroError
from .console import console, escape
from .group import WORKBOOK_ARG, main, open_project, warn

__all__ = ["digest", "mail"]


@main.command()
@WORKBOOK_ARG
@click.option("--preview", "mode", flag_value="preview", default=True,
              help="Build the digest as it would be sent now and show it (default); nothing is sent.")
@click.option("--send", "mode", flag_value="send", help="Build a digest now and e-mail it (or write it to the outbox).")
@click.option("--open", "open_browser", is_flag=True, help="With --preview: open the HTML in a web browser.")
def digest(workbook: str | None, mode: str, open_browser: bool) -> None:
    """The progress digest: counts by state, what changed since the last digest, the top
    runs by primary_metric, learning curves per experiment, resources, and the results
    workbook attached.

    \b
    --preview  prints the text version and writes .nero/preview/digest.html (with its
               plots) and digest.eml beside it; the next digest still covers the same period
    --send     e-mails it now through Settings smtp_host to email_to (password from
               NERO_SMTP_PASSWORD or the keyring); without SMTP settings it is written to
               .nero/outbox/ as an .eml file. Exit code 1 if it could not be delivered
               (it stays queued and the next `nero reconcile` retries).

    Settings `digest` (every 6 hours, daily at 08:00, off) sends it from `nero reconcile --watch`.
    """
    from ..mail import html_with_data_uris, text_of

    project = open_project(workbook)
    try:
        try:
            current_plan = project.plan()
        except NeroError:
            current_plan = None
        project.release_plan()  # the digest reads every run next: not with every spec still held
        mailer = project.mailer()
        warnings: list[str] = []
        now = project.clock()
        data, runs = project.digest_input(current_plan)
        if mode == "preview":
            mail = mailer.preview(data, project.results_path(), now, warnings, runs=runs)
            folder = project.paths.preview
            folder.mkdir(parents=True, exist_ok=True)
            eml, page = folder / "digest.eml", folder / "digest.html"
            eml.write_bytes(mail.message)
            page.write_text(html_with_data_uris(mail.message), encoding="utf-8")
            for w in warnings:
                warn(w)
            click.echo(f"Subject: {mail.subject}\n")
            click.echo(text_of(mail.message).rstrip())
            click.echo(f"\nHTML with its plots: {page}\nThe message as it would be sent: {eml}")
            if open_browser:
                click.launch(str(page))
            return
        mail = mailer.digest(data, project.results_path(), now, force=True, warnings=warnings, runs=runs)
        assert mail is not None
        warnings += mailer.deliver(project.workbook.settings, now, force=True)
        for w in warnings:
            warn(w)
        status = next((m.status for m in project.messages(kind="digest", limit=5, newest_first=True)
                       if m.id == mail.id), "queued")
        path = mailer.eml_path(mail)
        if status == "sent":
            click.echo(f"Sent {mail.subject!r} to {', '.join(mail.recipients)} (a copy: {path}).")
        elif status == "local":
            click.echo(f"Wrote {path}: no SMTP configured (set smtp_host and email_to in Settings to e-mail it).")
        else:
            click.echo(f"The digest is not delivered ({status}); it waits in {path} and the next "
                       "`nero reconcile` retries.", err=True)
            sys.exit(1)
    finally:
        project.close()


MAIL_STYLE = {"sent": "green", "queued": "cyan", "sending": "cyan", "failed": "red", "uncertain": "yellow",
              "local": "dim"}


@main.command()
@WORKBOOK_ARG
@click.option("--resend", multiple=True, type=int, metavar="ID",
              help="Put this failed, uncertain or outbox-only message back in the queue and send it now (repeatable).")
@click.option("-y", "--yes", is_flag=True, help="Resend uncertain messages without asking.")
@click.option("-n", "--last", type=int, default=30, show_default=True, help="How many of the newest messages to list.")
@click.option("--json", "as_json", is_flag=True, help="The list as JSON.")
def mail(workbook: str | None, resend: tuple[int, ...], yes: bool, last: int, as_json: bool) -> None:
    """The e-mail outbox: what nero sent, what waits and what did not go out.

    \b
    status    sent: the server took it · queued: waits for the next delivery (a pass of
              `nero reconcile`) · failed: the server refused it · uncertain: the
              connection broke after the message went out, so it may have arrived; nero
              never resends it by itself · local: no SMTP configured, only the .eml file
              in .nero/outbox/ was written

    --resend ID sends a failed, uncertain or local message again now, with its original
    Message-ID (a mail program that got it already shows it once). An uncertain one may
    reach people twice: nero asks first unless --yes.
    """
    from ..mail import smtp_config

    project = open_project(workbook)
    try:
        assert project.workbook is not None
        mailer = project.mailer()
        if resend:
            if smtp_config(project.workbook.settings) is None:
                raise click.ClickException("no SMTP server is configured, so nothing can be sent: set smtp_host "
                                           "(and email_to, email_from) in the workbook's Settings")
            known = {m.id: m for m in project.messages()}
            risky = [i for i in resend if i in known and known[i].status == "uncertain"]
            question = (f"Message(s) {', '.join(map(str, risky))} may have been delivered already; resending may "
                        "reach people twice. Resend?")
            skipped = []
            if risky and not yes and not (sys.stdin.isatty() and click.confirm(question, default=False, err=True)):
                skipped = [f"message {i} is uncertain (it may have arrived): not resent; --yes resends it"
                           for i in risky]
                resend = tuple(i for i in resend if i not in risky)
            done, problems = mailer.requeue(resend)
            problems = skipped + problems
            for problem in problems:
                click.echo(f"error: {problem}", err=True)
            warnings = mailer.deliver(project.workbook.settings, force=True) if done else []
            for w in warnings:
                warn(w)
            now_known = {m.id: m for m in project.messages()}
            failed = bool(problems)
            for m in done:
                status = now_known[m.id].status
                if status == "sent":
                    click.echo(f"Sent message {m.id} {m.subject!r} to {', '.join(m.recipients)}.")
                else:
                    failed = True
                    if status == "queued":
                        hint = "the next `nero reconcile` tries again (see the warning above)"
                    else:
                        hint = "see the warning above"
                    click.echo(f"Message {m.id} {m.subject!r} is {status}, not sent: {hint}.", err=True)
            sys.exit(1 if failed or (resend and not done) else 0)
        mails = project.messages(limit=max(1, last), newest_first=True)
        if as_json:
            click.echo(json.dumps([{"id": m.id, "created": m.created_at, "kind": m.kind, "status": m.status,
                                    "subject": m.subject, "to": list(m.recipients), "tries": m.tries,
                                    "error": m.last_error, "sent": m.sent_at, "eml": str(mailer.eml_path(m))}
                                   for m in mails], indent=2))
            return
        if not mails:
            click.echo("The outbox is empty: no e-mail yet (rows' `notify` and Settings `digest` ask for them).")
            return
        from rich.table import Table

        t = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
        for col in ("id", "created", "kind", "status", "to", "subject", "error"):
            t.add_column(col, overflow="fold", justify="right" if col == "id" else "left")
        for m in mails:
            style = MAIL_STYLE.get(m.status, "")
            t.add_row(str(m.id), time.strftime("%Y-%m-%d %H:%M", time.localtime(m.created_at)), m.kind,
                      f"[{style}]{m.status}[/]", escape(", ".join(m.recipients)), escape(m.subject),
                      escape(m.last_error))
        con = console()
        con.print(t)
        stuck = [m.id for m in mails if m.status in ("failed", "uncertain")]
        if any(m.status == "local" for m in mails):
            con.print(f"local: written to {mailer.outbox} only (no SMTP server was configured; set smtp_host and "
                      "email_to in Settings to e-mail them).")
        if stuck:
            con.print(f"{len(stuck)} not delivered: `nero mail --resend {stuck[0]}` sends one again "
                      f"(copies in {mailer.outbox}).")
    finally:
        project.close()
