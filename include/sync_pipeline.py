"""The steps both DAGs run, as plain functions over an IMAP inbox, a Jira client and a DB-API connection.

The Airflow tasks in plugins/jira_mail_sync open those three from Airflow connections, call these
functions and the Inbox's own methods, and shape the results for XCom; the benchmark and the tests
drive exactly the same code.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from include.imap_inbox import REJECTED_KEYWORD, ImapError, Inbox, PeekedMessage
from include.isolating_fetch import error_text, fetch_isolating
from include.jira_cloud import JiraCloudClient, JiraRequestError, JiraUnavailable, ticket_details
from include.jira_mail import HEADERS_TOO_LARGE, ParsedMail, parse_message
from include.jira_mail.parser import MAX_MESSAGE_ID_CHARS
from include.mail_ledger import SENDER_MAX, SUBJECT_MAX, bounded_text
from include.names import CHANGE_FEED_MAX_KEYS
from include.sender_auth import UNAUTHENTICATED_SENDER, SenderAuthPolicy
from include.ticket_fields import TICKET_FIELDS
from include.ticket_store import check_ticket, ensure_table, mark_gone, upsert_tickets

log = logging.getLogger(__name__)

# imaplib buffers a whole FETCH response, and each message costs up to 64 KiB of header plus 256 KiB of
# body prefix, so one FETCH covers at most this many messages: at most ~160 MiB however hostile the
# mail, ~10 MiB for typical Jira mail. A run of up to 500 messages costs one FETCH.
PEEK_CHUNK = 500


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


def _about(uid: int, parsed: Any) -> dict[str, Any]:
    return {
        "uid": uid,
        # Bounded here already, since it travels in an XCom to the ledger's writer.
        "message_id": bounded_text(parsed.message_id, MAX_MESSAGE_ID_CHARS),
        "sender": bounded_text(parsed.sender, SENDER_MAX),
        "subject": bounded_text(parsed.subject, SUBJECT_MAX),
    }


def extract_keys(
    inbox: Inbox,
    uids: Sequence[int],
    *,
    uidvalidity: int,
    trusted_senders: Sequence[str],
    jira_url: str | None,
    label_rejected: bool = True,
    sender_auth: SenderAuthPolicy | None = None,
    retrying: Iterable[int] = (),
) -> Extraction:
    """Peek at headers and a bounded body prefix (never setting \\Seen), parse, and label rejected mail.

    A header that did not fit the peek is rejected as headers_too_large without being parsed: a
    prefix of it can say another sender than the whole. With DKIM sender authentication the whole
    message is fetched (one at a time, at most the policy's size) for the messages that need it.

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
            if not peeked.header_complete:
                extraction.rejected.append({"uid": peeked.uid, "reason": HEADERS_TOO_LARGE})
                continue
            parsed = _parse(inbox, peeked, trusted_senders, jira_url, sender_auth)
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


def fetch_batch(
    client: JiraCloudClient, keys: Sequence[str], extra_fields: Sequence[str] = ()
) -> dict[str, Any]:
    """Fetch one batch of tickets in one bulk request (the planner sized it), stamped with the fetch time.

    Keys that make the bulk request fail are isolated and reported in `failed` ({key: error}), see
    include.isolating_fetch; it raises only when Jira does not answer this account at all.
    Each key the bulk fetch left out is asked for on its own: a 404 confirms it gone (`not_found`,
    which the store marks deleted_at), an answer under another key is a move (the ticket carries its
    old key in `moved_from`). An error on that GET never makes a ticket gone: it fails only that key
    while Jira answers this account (GET /myself), and raises for Airflow to retry when it does not.
    """
    fetched_at = datetime.now(UTC)
    fields = (*TICKET_FIELDS, *extra_fields)
    result = fetch_isolating(
        client, keys, validate=check_ticket, fields=fields, extra_fields=extra_fields, per_request=len(keys)
    )
    tickets = {str(t["issue_id"]): t for t in result["tickets"]}
    gone: list[str] = []
    for old_key in result["not_found"]:
        try:
            missing = client.look_up_missing([old_key], fields)
        except JiraRequestError as exc:
            result["failed"][old_key] = error_text(exc)
            continue
        except JiraUnavailable as exc:
            # As in the isolation: the key is blamed only while Jira answers this account, else the
            # task fails and Airflow retries it. Either way nothing is marked gone.
            if not client.answers_this_account():
                raise exc from None
            result["failed"][old_key] = error_text(exc)
            continue
        gone.extend(missing.gone)
        for issue in missing.moved.values():
            try:
                details = ticket_details(issue, extra_fields)
                check_ticket(details)
            except (KeyError, TypeError, ValueError) as exc:
                result["failed"][old_key] = f"Jira's answer failed validation: {exc}"
                continue
            details = tickets.setdefault(str(details["issue_id"]), details)
            details.setdefault("moved_from", []).append(old_key)
    if gone:
        log.info("Not found in Jira (deleted, or not visible to this account): %s", ", ".join(gone))
    return result | {
        "tickets": list(tickets.values()),
        "not_found": gone,
        "fetched_at": fetched_at.isoformat(),
    }


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
    changed: list[str] = []
    stored: list[str] = []
    not_found: list[str] = []
    failed: dict[str, str] = {}
    unresolved: list[str] = []
    for batch in batches:
        if not batch:
            continue
        tickets = batch.get("tickets") or []
        missing = batch.get("not_found") or []
        # The time of the fetch, not of the store: the freshness the REST channel trusts.
        at = datetime.fromisoformat(batch["fetched_at"]) if batch.get("fetched_at") else fetched_at
        result = upsert_tickets(conn, dialect, tickets, source=source, fetched_at=at)
        marked = mark_gone(conn, dialect, missing, confirmed_at=at) if missing else []
        written += result.written
        stale += result.stale_skipped
        not_found_count += len(missing)
        changed.extend(result.changed)
        changed.extend(marked)
        failed.update(batch.get("failed") or {})
        unresolved.extend(batch.get("unresolved") or [])
        if return_keys:
            # A moved ticket settles the mail about its old key too.
            stored.extend(key for t in tickets for key in (t["key"], *(t.get("moved_from") or ())))
            not_found.extend(missing)
    changed_keys = sorted(set(changed))
    summary: dict[str, Any] = {
        "written": written,
        "stale_skipped": stale,
        "not_found_count": not_found_count,
        "changed_count": len(changed_keys),
        # Bounded: a sweep may change tens of thousands of tickets, and this travels as XCom.
        "changed": changed_keys[:CHANGE_FEED_MAX_KEYS],
        "failed": failed,
        "unresolved": unresolved,
    }
    if return_keys:
        summary["stored"] = stored
        summary["not_found"] = not_found
    return summary


def change_event(
    summary: Mapping[str, Any], *, source: str, run_id: str, window: Mapping[str, str | None]
) -> dict[str, Any]:
    """The extra of the store's asset event: what changed (count, at most CHANGE_FEED_MAX_KEYS keys), by
    which run, over which window. Consumers needing every key read rows by updated_at or fetched_at."""
    keys = list(summary.get("changed") or [])[:CHANGE_FEED_MAX_KEYS]
    count = int(summary.get("changed_count", len(keys)))
    return {
        "source": source,
        "run_id": run_id,
        "window_start": window.get("start"),
        "window_end": window.get("end"),
        "changed_count": count,
        "changed_keys": keys,
        "keys_truncated": count > len(keys),
    }


@dataclass(frozen=True)
class ChangeFeed:
    """What a downstream run learns from the store's asset events that triggered it."""

    keys: list[str]  # changed keys named by the events, de-duplicated, in event order
    changed_count: int  # the sum of the events' counts (a key changed in two runs counts twice)
    truncated: bool  # some event named fewer keys than it changed: read the rest from the table
    sources: list[str]
    windows: list[tuple[str | None, str | None]]


def read_change_events(extras: Iterable[Mapping[str, Any] | None]) -> ChangeFeed:
    """Merge the extras of the asset events (oldest first) that triggered one downstream run."""
    keys: dict[str, None] = {}
    count = 0
    truncated = False
    sources: list[str] = []
    windows: list[tuple[str | None, str | None]] = []
    for extra in extras:
        if not extra:
            continue
        for key in extra.get("changed_keys") or []:
            keys.setdefault(str(key), None)
        count += int(extra.get("changed_count") or 0)
        truncated = truncated or bool(extra.get("keys_truncated"))
        if extra.get("source") and extra["source"] not in sources:
            sources.append(str(extra["source"]))
        windows.append((extra.get("window_start"), extra.get("window_end")))
    return ChangeFeed(list(keys), count, truncated, sources, windows)


@dataclass
class Settlement:
    """What becomes of each accepted message once the run's fetches and the store are done."""

    settled: list[dict[str, Any]] = field(default_factory=list)  # every key stored or not found
    failed: list[dict[str, Any]] = field(default_factory=list)  # a key failed for good: "reason" says which
    # a key the split of a failing batch did not reach (its budget ran out): nothing is known against it
    deferred: list[dict[str, Any]] = field(default_factory=list)
    # a key whose fetch never finished (the fetch task failed: Jira did not answer): tried next run
    unfinished: list[dict[str, Any]] = field(default_factory=list)


def settle(messages: Iterable[Mapping[str, Any]], stored: Mapping[str, Any]) -> Settlement:
    """Sort the run's messages by what happened to their keys (store_batches' summary)."""
    handled = {*stored.get("stored", []), *stored.get("not_found", [])}
    failed: Mapping[str, str] = stored.get("failed") or {}
    unresolved = set(stored.get("unresolved") or [])
    settlement = Settlement()
    for message in messages:
        keys = list(message["keys"])
        bad = [key for key in keys if key in failed]
        if bad:
            reason = "; ".join(f"{key}: {failed[key]}" for key in bad[:3])
            settlement.failed.append(dict(message) | {"reason": reason})
        elif set(keys) <= handled:
            settlement.settled.append(dict(message))
        elif unresolved.intersection(keys):
            waiting = ", ".join(key for key in keys if key in unresolved)
            reason = f"{waiting}: not reached by the split of a failing batch (its request budget ran out)"
            settlement.deferred.append(dict(message) | {"reason": reason})
        else:
            settlement.unfinished.append(dict(message))
    return settlement
