"""E-mail: event notices and progress digests, the outbox and its delivery."""

from .content import (
    DIGEST_KEY,
    EVENT_WORDS,
    GROUP_OVER,
    MAIL_STATUSES,
    Mailer,
    compose,
    digest_overdue,
    html_with_data_uris,
    message_id,
    parse_digest,
    smtp_config,
    text_of,
)

__all__ = [
    "DIGEST_KEY", "EVENT_WORDS", "GROUP_OVER", "MAIL_STATUSES", "Mailer", "compose", "digest_overdue",
    "html_with_data_uris", "message_id", "parse_digest", "smtp_config", "text_of",
]
