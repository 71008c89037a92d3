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

from include.imap_inbox import REJECTED_KEYWORD, ImapError, Inbox
from include.isolating_fetch import fetch_isolating
from include.jira_cloud import JiraCloudClient
from include.jira_mail import parse_message
from include.ticket_store import check_ticket, ensure_table, upsert_tickets

log = logging.getLogger(__name__)

# imaplib buffers a whole FETCH response, and each message costs up to 64 KiB of header plus 256 KiB of
# body prefix, so one FETCH covers at most this many messages: at most ~160 MiB however hostile the
# mail, ~10 MiB for typical Jira mail. A run of up to 500 messages costs one FETCH.
PEEK_CHUNK = 500
# What a message's ledger row keeps about it; bounded here already, since it travels in an XCom.
_SUBJECT_MAX = 200
_HEADER_MAX = 320


@dataclass
class Extraction:
    """What the inbox step learned from a set of unseen messages."""

    uidvalidity: int
    # accepted: {"uid", "keys", "message_id", "sender", "subject"}; rejected: the same with "reason"
    messages: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # de-duplicated across the run, in arrival order
    # Keys named only by messages that failed before and are due again; fetched in batches of their
    # own, so a key that failed before never shares a bulk request with fresh mail's keys.
    retry_keys: list[str] = field(default_factory=list)


def _bounded(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _about(uid: int, parsed: Any) -> dict[str, Any]:
    return {
        "uid": uid,
        "message_id": _bounded(parsed.message_id, _HEADER_MAX),
        "sender": _bounded(parsed.sender, _HEADER_MAX),
        "subject": _bounded(parsed.subject, _SUBJECT_MAX),
    }


def extract_keys(
    inbox: Inbox,
    uids: Sequence[int],
    *,
    uidvalidity: int,
    trusted_senders: Sequence[str],
    jira_url: str | None,
    label_rejected: bool = True,
    retrying: Iterable[int] = (),
) -> Extraction:
    """Peek at headers and a bounded body prefix (never setting \\Seen), parse, and label rejected mail.

    `retrying` are UIDs that failed in an earlier run; their keys go to `retry_keys` unless fresh mail
    names them too. The label is for humans only and is skipped where the server keeps no keywords.
    """
    extraction = Extraction(uidvalidity=uidvalidity)
    if not uids:
        return extraction
    retry_uids = set(retrying)
    fresh: dict[str, None] = {}
    again: dict[str, None] = {}
    for start in range(0, len(uids), PEEK_CHUNK):
        for peeked in inbox.peek(uids[start : start + PEEK_CHUNK]):
            parsed = parse_message(peeked.raw, trusted_senders=trusted_senders, jira_url=jira_url)
            if not parsed.accepted:
                extraction.rejected.append(_about(peeked.uid, parsed) | {"reason": parsed.reason})
                continue
            extraction.messages.append(_about(peeked.uid, parsed) | {"keys": list(parsed.keys)})
            (again if peeked.uid in retry_uids else fresh).update(dict.fromkeys(parsed.keys))
    extraction.keys = [*fresh, *(key for key in again if key not in fresh)]
    extraction.retry_keys = [key for key in again if key not in fresh]
    if extraction.rejected:
        log.warning(
            "Rejected %d message(s), left unseen for a human: %s",
            len(extraction.rejected),
            ", ".join(f"uid {r['uid']} ({r['reason']})" for r in extraction.rejected[:20]),
        )
        if label_rejected:
            label(inbox, [r["uid"] for r in extraction.rejected], REJECTED_KEYWORD, uidvalidity=uidvalidity)
    return extraction


def label(inbox: Inbox, uids: Sequence[int], keyword: str, *, uidvalidity: int) -> list[int]:
    """Set a keyword for humans (never together with \\Seen) where the server keeps keywords.

    The ledger, not the label, is what the sensor goes by, so a server without keywords (Exchange
    Online, Courier with IMAP_KEYWORDS=0) or one that refuses the STORE loses only the label.
    """
    if not uids:
        return []
    try:
        if inbox.keywords_allowed is None:
            inbox.open(readonly=False)  # only a read-write SELECT tells whether keywords are kept
        if not inbox.keywords_allowed:
            log.info(
                "%s keeps no custom keywords (PERMANENTFLAGS %s): %d message(s) not labelled %s",
                inbox.mailbox,
                " ".join(inbox.permanent_flags) or "()",
                len(uids),
                keyword,
            )
            return []
        return inbox.add_keyword(uids, keyword, expected_uidvalidity=uidvalidity)
    except ImapError as exc:
        log.warning("Could not label %d message(s) %s: %s", len(uids), keyword, exc)
        return []


def fetch_batch(client: JiraCloudClient, keys: Sequence[str]) -> dict[str, Any]:
    """Fetch one batch of tickets; keys Jira does not return are reported as not found, not raised.

    Keys that make the bulk request fail are isolated and reported in `failed` ({key: error}), see
    include.isolating_fetch; it raises only when Jira does not answer this account at all.
    """
    result = fetch_isolating(client, keys, validate=check_ticket)
    if result["not_found"]:
        log.info("Not found in Jira (deleted, moved or not visible): %s", ", ".join(result["not_found"]))
    return result


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
    failed: dict[str, str] = {}
    unresolved: list[str] = []
    for batch in batches:
        if not batch:
            continue
        tickets = batch.get("tickets") or []
        missing = batch.get("not_found") or []
        result = upsert_tickets(conn, dialect, tickets, source=source, fetched_at=fetched_at)
        written += result.written
        stale += result.stale_skipped
        not_found_count += len(missing)
        failed.update(batch.get("failed") or {})
        unresolved.extend(batch.get("unresolved") or [])
        if return_keys:
            stored.extend(t["key"] for t in tickets)
            not_found.extend(missing)
    summary: dict[str, Any] = {
        "written": written,
        "stale_skipped": stale,
        "not_found_count": not_found_count,
        "failed": failed,
        "unresolved": unresolved,
    }
    if return_keys:
        summary["stored"] = stored
        summary["not_found"] = not_found
    return summary


def settled_uids(messages: Iterable[Mapping[str, Any]], handled_keys: Iterable[str]) -> list[int]:
    """The messages all of whose keys were stored or confirmed not found: only these may be marked seen."""
    handled = set(handled_keys)
    return sorted(int(m["uid"]) for m in messages if set(m["keys"]) <= handled)


@dataclass
class Settlement:
    """What becomes of each accepted message once the run's fetches and the store are done."""

    settled: list[dict[str, Any]] = field(default_factory=list)  # every key stored or not found
    failed: list[dict[str, Any]] = field(default_factory=list)  # a key failed for good: "reason" says which
    # a key's fetch never finished, or its failing batch's split did not reach it: tried again next run
    unfinished: list[dict[str, Any]] = field(default_factory=list)


def settle(messages: Iterable[Mapping[str, Any]], stored: Mapping[str, Any]) -> Settlement:
    """Sort the run's messages by what happened to their keys (store_batches' summary)."""
    handled = {*stored.get("stored", []), *stored.get("not_found", [])}
    failed: Mapping[str, str] = stored.get("failed") or {}
    settlement = Settlement()
    for message in messages:
        keys = list(message["keys"])
        bad = [key for key in keys if key in failed]
        if bad:
            reason = "; ".join(f"{key}: {failed[key]}" for key in bad[:3])
            settlement.failed.append(dict(message) | {"reason": reason})
        elif set(keys) <= handled:
            settlement.settled.append(dict(message))
        else:
            settlement.unfinished.append(dict(message))
    return settlement
