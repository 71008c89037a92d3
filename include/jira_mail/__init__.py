"""Safe parsing of Jira notification mail into the issue keys it names, for trusted senders only."""

from __future__ import annotations

from include.jira_mail.parser import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_KEYS,
    HEADERS_TOO_LARGE,
    KEY_PATTERN,
    ParsedMail,
    default_trusted_senders,
    is_trusted_sender,
    parse_message,
)

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_MAX_KEYS",
    "HEADERS_TOO_LARGE",
    "KEY_PATTERN",
    "ParsedMail",
    "default_trusted_senders",
    "is_trusted_sender",
    "parse_message",
]
