"""The steps both DAGs run, as plain functions over an IMAP inbox, a Jira client and a DB-API connection.

The Airflow tasks in plugins/jira_mail_sync open those three from Airflow connections, call these
functions and the Inbox's own methods, and shape the results for XCom; the benchmark and the tests
drive exactly the same code.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from include.imap_inbox import REJECTED_KEYWORD, Inbox, PeekedMessage
from include.jira_cloud import JiraCloudClient, ticket_details
from include.jira_mail import HEADERS_TOO_LARGE, ParsedMail, parse_message
from include.sender_auth import UNAUTHENTICATED_SENDER, SenderAuthPolicy
from include.ticket_store import ensure_table, upsert_tickets

log = logging.getLogger(__name__)

# imaplib buffers a whole FETCH response, and each message costs up to 64 KiB of header plus 256 KiB of
# body prefix, so one FETCH covers at most this many messages: at most ~160 MiB however hostile the
# mail, ~10 MiB for typical Jira mail. A run of up to 500 messages costs one FETCH.
PEEK_CHUNK = 500


@dataclass
class Extraction:
    """What the inbox step learned from a set of unseen messages."""

    uidvalidity: int
    messages: list[dict[str, Any]] = field(default_factory=list)  # accepted: {"uid", "keys"}
    rejected: list[dict[str, Any]] = field(default_factory=list)  # {"uid", "reason"}
    keys: list[str] = field(default_factory=list)  # de-duplicated across the run, in arrival order


def extract_keys(
    inbox: Inbox,
    uids: Sequence[int],
    *,
    uidvalidity: int,
    trusted_senders: Sequence[str],
    jira_url: str | None,
    label_rejected: bool = True,
    sender_auth: SenderAuthPolicy | None = None,
) -> Extraction:
    """Peek at headers and a bounded body prefix (never setting \\Seen), parse, and label rejected mail.

    A header that did not fit the peek is rejected as headers_too_large without being parsed: a
    prefix of it can say another sender than the whole. With DKIM sender authentication the whole
    message is fetched (one at a time, at most the policy's size) for the messages that need it.
    """
    extraction = Extraction(uidvalidity=uidvalidity)
    if not uids:
        return extraction
    seen_keys: set[str] = set()
    for start in range(0, len(uids), PEEK_CHUNK):
        for peeked in inbox.peek(uids[start : start + PEEK_CHUNK]):
            if not peeked.header_complete:
                extraction.rejected.append({"uid": peeked.uid, "reason": HEADERS_TOO_LARGE})
                continue
            parsed = _parse(inbox, peeked, trusted_senders, jira_url, sender_auth)
            if not parsed.accepted:
                extraction.rejected.append({"uid": peeked.uid, "reason": parsed.reason})
                continue
            extraction.messages.append({"uid": peeked.uid, "keys": list(parsed.keys)})
            for key in parsed.keys:
                if key not in seen_keys:
                    seen_keys.add(key)
                    extraction.keys.append(key)
    if extraction.rejected:
        log.warning(
            "Rejected %d message(s), left for a human with keyword %s: %s",
            len(extraction.rejected),
            REJECTED_KEYWORD,
            ", ".join(f"uid {r['uid']} ({r['reason']})" for r in extraction.rejected[:20]),
        )
        if label_rejected:
            inbox.add_keyword(
                [r["uid"] for r in extraction.rejected],
                REJECTED_KEYWORD,
                expected_uidvalidity=uidvalidity,
            )
    return extraction


def _parse(
    inbox: Inbox,
    peeked: PeekedMessage,
    trusted_senders: Sequence[str],
    jira_url: str | None,
    sender_auth: SenderAuthPolicy | None,
) -> ParsedMail:
    """Parse the peek; for DKIM, parse again over the whole message once the peek passes.

    The whole message is fetched only for mail that passed every other check, so spam and
    foreign mail never cost more than the peek.
    """
    whole_needed = sender_auth is not None and sender_auth.needs_whole_message
    parsed = parse_message(
        peeked.raw,
        trusted_senders=trusted_senders,
        jira_url=jira_url,
        sender_auth=None if whole_needed else sender_auth,
    )
    if not parsed.accepted or not whole_needed:
        return parsed
    raw = peeked.raw
    if peeked.size > len(raw):
        if peeked.size > sender_auth.dkim_max_message_bytes:
            return _unauthenticated(
                parsed,
                f"message too large to verify its DKIM signature ({peeked.size} bytes, "
                f"more than {sender_auth.dkim_max_message_bytes})",
            )
        whole = inbox.fetch_whole(peeked.uid)
        if whole is None:
            return _unauthenticated(parsed, "the message vanished before its DKIM signature was checked")
        raw = whole
    return parse_message(raw, trusted_senders=trusted_senders, jira_url=jira_url, sender_auth=sender_auth)


def _unauthenticated(parsed: ParsedMail, why: str) -> ParsedMail:
    return replace(
        parsed, accepted=False, keys=(), keys_truncated=False, reason=f"{UNAUTHENTICATED_SENDER}: {why}"
    )


def fetch_batch(client: JiraCloudClient, keys: Sequence[str]) -> dict[str, list]:
    """Fetch one batch of tickets; keys Jira does not return are reported as not found, not raised."""
    result = client.bulk_fetch(list(keys))
    tickets = [ticket_details(issue) for issue in result.issues]
    if result.not_found:
        log.info("Not found in Jira (deleted, moved or not visible): %s", ", ".join(result.not_found))
    return {"tickets": tickets, "not_found": list(result.not_found)}


def store_batches(
    conn: Any,
    dialect: str,
    batches: Iterable[Mapping[str, Any] | None],
    *,
    source: str,
    fetched_at: datetime,
    return_keys: bool = True,
) -> dict[str, Any]:
    """Upsert fetched batches one at a time (so a large sweep never sits in memory whole).

    `batches` may be Airflow's lazy sequence of mapped XComs; a None entry (a skipped instance) is
    ignored. Returns the keys handled when asked, so the inbox can settle exactly those messages.
    """
    ensure_table(conn, dialect)
    written = stale = not_found_count = 0
    stored: list[str] = []
    not_found: list[str] = []
    for batch in batches:
        if not batch:
            continue
        tickets = batch.get("tickets") or []
        missing = batch.get("not_found") or []
        result = upsert_tickets(conn, dialect, tickets, source=source, fetched_at=fetched_at)
        written += result.written
        stale += result.stale_skipped
        not_found_count += len(missing)
        if return_keys:
            stored.extend(t["key"] for t in tickets)
            not_found.extend(missing)
    summary: dict[str, Any] = {"written": written, "stale_skipped": stale, "not_found_count": not_found_count}
    if return_keys:
        summary["stored"] = stored
        summary["not_found"] = not_found
    return summary


def settled_uids(messages: Iterable[Mapping[str, Any]], handled_keys: Iterable[str]) -> list[int]:
    """The messages all of whose keys were stored or confirmed not found: only these may be marked seen."""
    handled = set(handled_keys)
    return sorted(int(m["uid"]) for m in messages if set(m["keys"]) <= handled)
