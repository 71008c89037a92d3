"""The steps both DAGs run, as plain functions over an IMAP inbox, a Jira client and a DB-API connection.

The Airflow tasks in plugins/jira_mail_sync are thin wrappers that open those three from Airflow
connections and call these functions, so the benchmark and the tests drive exactly the same code.
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

# One Jira bulk fetch takes at most 100 keys; one mapped fetch instance makes one such request.
BULK_FETCH_LIMIT = 100
# Airflow's default [core] max_map_length; batches are sized so that a run never comes near it.
MAX_MAP_LENGTH = 1024
MAX_MAPPED_FETCHES = 500
# imaplib buffers a whole FETCH response, and each message costs up to 64 KiB of header plus 256 KiB of
# body prefix, so one FETCH covers at most this many messages: at most ~160 MiB however hostile the
# mail, ~10 MiB for typical Jira mail. A run of up to 500 messages costs one FETCH.
PEEK_CHUNK = 500


@dataclass(frozen=True)
class SensedMail:
    uidvalidity: int
    uids: list[int]


@dataclass
class Extraction:
    """What the inbox step learned from a set of unseen messages."""

    uidvalidity: int
    messages: list[dict[str, Any]] = field(default_factory=list)  # accepted: {"uid", "keys"}
    rejected: list[dict[str, Any]] = field(default_factory=list)  # {"uid", "reason"}
    keys: list[str] = field(default_factory=list)  # de-duplicated across the run, in arrival order

    def to_xcom(self) -> dict[str, Any]:
        return {
            "uidvalidity": self.uidvalidity,
            "messages": self.messages,
            "rejected": self.rejected,
            "keys": self.keys,
        }


def sense_unseen(inbox: Inbox, *, limit: int) -> SensedMail:
    """Find the oldest `limit` UNSEEN messages not yet labelled as rejected, without reading them."""
    if limit < 1:
        raise ValueError(f"max_messages must be at least 1, got {limit}")
    uidvalidity = inbox.open(readonly=True)
    return SensedMail(uidvalidity=uidvalidity, uids=inbox.unseen_uids(limit=limit))


def extract_keys(
    inbox: Inbox,
    sensed: SensedMail,
    *,
    trusted_senders: Sequence[str],
    jira_url: str | None,
    label_rejected: bool = True,
) -> Extraction:
    """Peek at headers and a bounded body prefix (never setting \\Seen), parse, and label rejected mail."""
    extraction = Extraction(uidvalidity=sensed.uidvalidity)
    if not sensed.uids:
        return extraction
    seen_keys: set[str] = set()
    for start in range(0, len(sensed.uids), PEEK_CHUNK):
        for peeked in inbox.peek(sensed.uids[start : start + PEEK_CHUNK]):
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
                expected_uidvalidity=sensed.uidvalidity,
            )
    return extraction


def batch_keys(keys: Sequence[str], *, max_batches: int = MAX_MAPPED_FETCHES) -> list[list[str]]:
    """Split keys into batches for mapped fetch instances: 100 keys each (one bulk request), growing in
    steps of 100 only when that would need more than `max_batches` instances, so the mapping stays far
    below max_map_length however many keys a sweep finds."""
    if max_batches < 1 or max_batches > MAX_MAP_LENGTH:
        raise ValueError(f"max_batches must be in 1..{MAX_MAP_LENGTH}, got {max_batches}")
    unique = list(dict.fromkeys(keys))
    if not unique:
        return []
    per_batch = BULK_FETCH_LIMIT
    while -(-len(unique) // per_batch) > max_batches:
        per_batch += BULK_FETCH_LIMIT
    return [unique[i : i + per_batch] for i in range(0, len(unique), per_batch)]


def describe_batch(keys: Sequence[str]) -> str:
    """The label a mapped fetch instance shows in the UI instead of its index."""
    if not keys:
        return "no keys"
    if len(keys) <= 3:
        return ", ".join(keys)
    return f"{keys[0]} … {keys[-1]} ({len(keys)} keys)"


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


def mark_settled_seen(inbox: Inbox, uids: Sequence[int], *, uidvalidity: int) -> list[int]:
    """Set \\Seen on the settled messages in one UID STORE; raises UidValidityChanged to mark nothing."""
    if not uids:
        return []
    return inbox.mark_seen(list(uids), expected_uidvalidity=uidvalidity)
