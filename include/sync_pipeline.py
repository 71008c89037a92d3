"""The steps both DAGs run, as plain functions over an IMAP inbox, a Jira client and a DB-API connection.

The Airflow tasks in plugins/jira_mail_sync open those three from Airflow connections, call these
functions and the Inbox's own methods, and shape the results for XCom; the benchmark and the tests
drive exactly the same code.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from include.imap_inbox import REJECTED_KEYWORD, Inbox
from include.jira_cloud import JiraCloudClient, ticket_details
from include.jira_mail import parse_message
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
) -> Extraction:
    """Peek at headers and a bounded body prefix (never setting \\Seen), parse, and label rejected mail."""
    extraction = Extraction(uidvalidity=uidvalidity)
    if not uids:
        return extraction
    seen_keys: set[str] = set()
    for start in range(0, len(uids), PEEK_CHUNK):
        for peeked in inbox.peek(uids[start : start + PEEK_CHUNK]):
            parsed = parse_message(peeked.raw, trusted_senders=trusted_senders, jira_url=jira_url)
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
