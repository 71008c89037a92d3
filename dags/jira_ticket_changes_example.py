"""
### Example: a DAG that runs whenever Jira tickets changed in the store

An example to copy, **paused** when it first appears. It is scheduled on the `jira_ticket` asset
(`jira-mail-sync://jira_store/jira_ticket`), which the `store_tickets` task of `jira_inbox` and of
`jira_sweep` updates on every successful store. Each asset event's extra says what changed:

| key | meaning |
|---|---|
| `changed_count` | how many tickets that store changed (new, newer in Jira, moved, or confirmed gone) |
| `changed_keys` | up to 500 of those keys, sorted; `keys_truncated` is true when there were more |
| `source`, `run_id` | `inbox` or `sweep`, and the run that stored them |
| `window_start`, `window_end` | the sweep's window, or the inbox run's data interval |

Several events may be merged into one run of this DAG when stores come faster than it runs.
**read_changed_tickets** reads those rows from `jira_ticket` (through `jira_store`) and logs them:
replace it with what your system needs (push to a CRM, a warehouse, a chat channel, ...). When
`keys_truncated` is set, read the rows by `fetched_at` over the window instead.

It also runs on the `jira_ticket_change` asset, which **announce_history** updates when ticket history
arrived (its extra names the `issue_ids` and `issue_keys` with new history). **median_time_in_status**
then logs, from the view `jira_ticket_status_interval`, the median time those tickets spent in each
status (finished stays only).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import dag, get_current_context, task
from jira_mail_sync.assets import TICKET_ASSET
from jira_mail_sync.history_tasks import TICKET_CHANGE_ASSET
from jira_mail_sync.hooks.ticket_store import TicketStoreHook

from include.sync_pipeline import read_change_events
from include.ticket_history import median_seconds_by_status, status_intervals
from include.ticket_store import get_ticket

log = logging.getLogger(__name__)


@dag(
    dag_id=Path(__file__).stem,
    doc_md=__doc__,
    schedule=TICKET_ASSET | TICKET_CHANGE_ASSET,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    is_paused_upon_creation=True,
    max_active_runs=1,
    tags=["jira", "example"],
    default_args={"owner": "integrations", "retries": 2, "retry_delay": timedelta(seconds=30)},
)
def jira_ticket_changes_example():
    @task
    def read_changed_tickets() -> dict[str, Any]:
        """Read the changed tickets the triggering asset events name, and log their state."""
        events = get_current_context()["triggering_asset_events"][TICKET_ASSET]
        feed = read_change_events(event.extra for event in events)
        with TicketStoreHook().connect() as (conn, dialect):
            rows = {key: get_ticket(conn, dialect, key) for key in feed.keys}
        for key, row in rows.items():
            if row is None:
                log.info("%s: no longer stored", key)
            elif row["deleted_at"] is not None:
                log.info("%s: gone from Jira since %s", key, row["deleted_at"].isoformat())
            else:
                log.info("%s (%s): %s, %s", key, row["key"], row["status"], row["summary"])
        return {
            "events": len(events),
            "sources": feed.sources,
            "changed_count": feed.changed_count,
            "keys_truncated": feed.truncated,
            "statuses": {key: None if row is None else row["status"] for key, row in rows.items()},
        }

    @task
    def median_time_in_status() -> dict[str, float]:
        """Log the median time in each status of the tickets whose history just arrived."""
        events = get_current_context()["triggering_asset_events"][TICKET_CHANGE_ASSET]
        ids = sorted({int(i) for event in events for i in (event.extra or {}).get("issue_ids") or []})
        with TicketStoreHook().connect() as (conn, dialect):
            medians = median_seconds_by_status(status_intervals(conn, dialect, ids)) if ids else {}
        for status, seconds in medians.items():
            log.info("%s: median %.1f hours over %d ticket(s)", status, seconds / 3600, len(ids))
        return medians

    read_changed_tickets()
    median_time_in_status()


jira_ticket_changes_example()
