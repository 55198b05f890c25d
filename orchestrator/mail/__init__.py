"""E-mail: event notices and progress digests, the outbox and its delivery.

    content.py   what a notice and a digest say, from plain data
    digest.py    what a digest shows of the runs, learnt a batch of runs at a time
    compose.py   templates rendered and the MIME bytes built
    outbox.py    `Mailer`: queueing, the outbox files, delivery at most once
    smtp.py      where to deliver, the password, one SMTP connection (yagmail, smtplib)
    schedule.py  the digest schedule (Settings `digest`)
    formats.py   numbers, sizes, durations and times as e-mails show them
"""

from ..digest_schedule import DigestSchedule, digest_overdue, parse_digest
from .compose import Part, compose, html_with_data_uris, message_id, render_mail, text_of
from .content import EVENT_WORDS, GROUP_OVER
from .digest import DigestRuns
from .outbox import DIGEST_KEY, MAIL_STATUSES, Mailer, tail
from .smtp import SmtpConfig, sender_address, smtp_config, smtp_password

__all__ = [
    "DIGEST_KEY", "EVENT_WORDS", "GROUP_OVER", "MAIL_STATUSES", "DigestRuns", "DigestSchedule", "Mailer", "Part", "SmtpConfig",
    "compose", "digest_overdue", "html_with_data_uris", "message_id", "parse_digest", "render_mail",
    "sender_address", "smtp_config", "smtp_password", "tail", "text_of",
]
