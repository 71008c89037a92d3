"""The ticket-history steps as plain functions over a Jira client and a DB-API connection.

Planning which issues need their changelog read, reading it (POST /rest/api/3/changelog/bulkfetch,
1000 issues a request), and storing it (include.ticket_history). The Airflow tasks in
plugins/jira_mail_sync/history_tasks.py, the benchmark and the tests all drive these.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from include.jira_cloud import JiraCloudClient
from include.jira_rules import CHANGELOG_BULK_MAX_ISSUES, CHANGELOG_BULK_MAX_RESULTS
from include.names import CHANGE_FEED_MAX_KEYS, DEFAULT_SITE
from include.ticket_history import (
    changes_of,
    ensure_history_tables,
    issue_keys,
    issues_needing_history,
    store_history,
    ticket_updated,
)

log = logging.getLogger(__name__)

# Airflow's max_map_length is 1024: one run maps at most this many chunks of 1000 issues; a larger
# backfill continues in the next run (the cursor remembers what is done).
MAX_HISTORY_CHUNKS = 1000


def plan_history_chunks(
    conn: Any,
    dialect: str,
    issue_ids: Iterable[Any] | None,
    fields: Sequence[str],
    *,
    site: str = DEFAULT_SITE,
    chunk_size: int = CHANGELOG_BULK_MAX_ISSUES,
) -> list[list[str]]:
    """The issues (of `issue_ids`, or of the whole store when None) whose history is behind, in chunks.

    Issues whose stored history covers their stored `updated` (for the same fields) are left out, so a
    rerun over unchanged tickets plans nothing and asks Jira nothing.
    """
    ensure_history_tables(conn, dialect)
    wanted = None if issue_ids is None else sorted({int(i) for i in issue_ids})
    needing = [str(i) for i in issues_needing_history(conn, dialect, wanted, fields, site=site)]
    chunks = [needing[i : i + chunk_size] for i in range(0, len(needing), chunk_size)]
    if len(chunks) > MAX_HISTORY_CHUNKS:
        log.warning(
            "%d issues need their history: this run reads the first %d, the next runs continue",
            len(needing),
            MAX_HISTORY_CHUNKS * chunk_size,
        )
        chunks = chunks[:MAX_HISTORY_CHUNKS]
    return chunks


def fetch_and_store_history(
    client: JiraCloudClient,
    conn: Any,
    dialect: str,
    issue_ids: Sequence[str],
    *,
    fields: Sequence[str],
    field_ids: Sequence[str],
    site: str = DEFAULT_SITE,
) -> dict[str, Any]:
    """Read the changelogs of up to 1000 issues (every page) and insert what the table does not hold.

    `fields` is the setting (what the cursor records), `field_ids` the ids Jira was checked to have.
    The stored `updated` is read before asking Jira, so a ticket edited meanwhile stays behind and is
    read again next time. Returns counts and the issues that got new rows (ids and keys, bounded).
    """
    ensure_history_tables(conn, dialect)
    ids = [int(i) for i in issue_ids]
    updated = ticket_updated(conn, dialect, ids, site=site)
    # The largest page the endpoint allows: 1000 issues × 10 changes fit in one (Jira may send fewer).
    result = client.changelog_bulkfetch(
        [str(i) for i in ids], list(field_ids), max_results=CHANGELOG_BULK_MAX_RESULTS
    )
    changes = [
        change
        for issue_id, histories in result.histories.items()
        for change in changes_of(issue_id, histories)
    ]
    written = store_history(conn, dialect, changes, synced=updated, fields=fields, site=site)
    keys = issue_keys(conn, dialect, list(written.issues_with_new[:CHANGE_FEED_MAX_KEYS]), site=site)
    return {
        "issues": len(ids),
        "requests": result.requests,
        "pages": result.pages,
        "changes_read": len(changes),
        "inserted": written.inserted,
        "issues_with_new_count": len(written.issues_with_new),
        "issues_with_new": [str(i) for i in written.issues_with_new[:CHANGE_FEED_MAX_KEYS]],
        "keys_with_new": [keys[i] for i in written.issues_with_new[:CHANGE_FEED_MAX_KEYS] if i in keys],
    }


def history_event(results: Iterable[dict[str, Any] | None], *, run_id: str) -> dict[str, Any]:
    """The extra of the ticket-change asset event: which issues got new history, by which run."""
    ids: dict[str, None] = {}
    keys: dict[str, None] = {}
    count = inserted = 0
    for result in results:
        if not result:
            continue
        count += int(result.get("issues_with_new_count") or 0)
        inserted += int(result.get("inserted") or 0)
        for issue_id in result.get("issues_with_new") or []:
            ids.setdefault(str(issue_id), None)
        for key in result.get("keys_with_new") or []:
            keys.setdefault(str(key), None)
    named_ids = list(ids)[:CHANGE_FEED_MAX_KEYS]
    return {
        "run_id": run_id,
        "rows_inserted": inserted,
        "issues_with_new_history_count": count,
        "issue_ids": named_ids,
        "issue_keys": list(keys)[:CHANGE_FEED_MAX_KEYS],
        "keys_truncated": count > len(named_ids),
    }
