"""The steps both DAGs share, as plain functions over a Jira client and a DB-API connection.

Fetching batches of tickets, storing them, and the change feed of the store's asset events. The
Airflow tasks in plugins/jira_mail_sync open those from Airflow connections and call these
functions; the benchmarks and the tests drive exactly the same code. The inbox's own steps are in
include.inbox_run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from include.isolating_fetch import error_text, fetch_isolating
from include.jira_cloud import JiraCloudClient, JiraRequestError, JiraUnavailable, ticket_details
from include.names import CHANGE_FEED_MAX_KEYS, DEFAULT_SITE
from include.ticket_fields import TICKET_FIELDS
from include.ticket_store import check_ticket, ensure_table, mark_gone, upsert_tickets

log = logging.getLogger(__name__)


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
    site: str = DEFAULT_SITE,
) -> dict[str, Any]:
    """Upsert fetched batches into `site`'s rows, one at a time (so a large sweep never sits in memory whole).

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
        result = upsert_tickets(conn, dialect, tickets, source=source, fetched_at=at, site=site)
        marked = mark_gone(conn, dialect, missing, confirmed_at=at, site=site) if missing else []
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
