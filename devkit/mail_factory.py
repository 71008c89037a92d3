"""Builds Jira Cloud notification mail in the real format, for the demo, the benchmarks and the tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime


def jira_notification(
    key: str,
    *,
    site: str = "acme.atlassian.net",
    summary: str = "Something needs doing",
    actor: str = "Dana Developer",
    event: str = "updated",
    sender: str | None = None,
    display_name: str | None = None,
    sent_at: datetime | None = None,
    body_padding: int = 0,
    extra_body: str = "",
    extra_headers: dict[str, str] | None = None,
) -> bytes:
    """A Cloud-style notification like those in shared/fixtures/jira-emails/04 (2023 format).

    `sender` overrides the From address (for spoofing tests); `display_name` overrides the name part.
    """
    site_url = f"https://{site}"
    message = EmailMessage()
    from_addr = sender or f"jira@{site}"
    local, _, domain = from_addr.partition("@")
    message["From"] = Address(display_name or f"{actor} (Jira)", local, domain)
    message["Reply-To"] = message["From"]
    message["To"] = "jira-sync@example.com"
    message["Subject"] = f"[JIRA] ({key}) {summary}"
    message["Date"] = format_datetime(sent_at or datetime.now(UTC))
    message["Message-ID"] = f"<{uuid.uuid4()}@{site}>"
    message["Precedence"] = "bulk"
    message["X-JIRA-FingerPrint"] = uuid.uuid4().hex
    message["X-Atlassian-Mail-Message-Id"] = str(uuid.uuid4())
    message["Atl-Sent-Via"] = "jira-np-distributor"
    for name, value in (extra_headers or {}).items():
        message[name] = value
    link = f"{site_url}/browse/{key}?atlOrigin=eyJpIjoiMCIsInAiOiJqIn0"
    padding = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * (body_padding // 56 + 1))[
        :body_padding
    ]
    message.set_content(
        f"{actor} {event} an issue\n\n{key}: {summary}\n\nView issue: {link}\n\n{extra_body}{padding}\n"
        f"Get Jira notifications on your phone! Download the Jira Cloud app for Android or iOS.\n"
    )
    message.add_alternative(
        f"<html><body><p>{actor} <strong>{event}</strong> an issue</p>"
        f'<p><a href="{link}">{key}</a>: {summary}</p><p>{padding}</p></body></html>',
        subtype="html",
    )
    return message.as_bytes()
