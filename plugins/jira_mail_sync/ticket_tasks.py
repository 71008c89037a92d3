"""TaskFlow tasks that both DAGs share: the batched, mapped Jira fetch and the idempotent store."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from include.jira_cloud import JiraCloudClient
from include.names import JIRA_API_POOL, JIRA_CONN_ID
from include.sync_pipeline import fetch_batch, store_batches
from jira_mail_sync.hooks.jira_cloud import JiraCloudHook
from jira_mail_sync.hooks.ticket_store import TicketStoreHook
from jira_mail_sync.jira_usage import record_jira_usage
from jira_mail_sync.mapping import describe_batch

log = logging.getLogger(__name__)


@contextmanager
def jira_client(jira_conn_id: str = JIRA_CONN_ID) -> Iterator[JiraCloudClient]:
    hook = JiraCloudHook(jira_conn_id)
    with hook:
        client = hook.get_conn()
        try:
            yield client
        finally:
            record_jira_usage(client)


@task(
    pool=JIRA_API_POOL,
    map_index_template="{{ batch_label }}",
    # A batch's details (up to 100 tickets) would flood the task log; the store task logs the counts.
    show_return_value_in_logs=False,
    retry_delay=timedelta(seconds=30),
    retry_exponential_backoff=2.0,
)
def fetch_tickets(keys: list[str]) -> dict[str, Any]:
    """Fetch one batch of tickets with one Jira bulk request; missing keys come back as not found.

    If the request fails as a whole while Jira answers this account, the batch is split to isolate
    the failing keys, which come back in `failed` while the rest is fetched (include.isolating_fetch).
    It fails, for Airflow to retry, only when Jira does not answer at all.
    """
    get_current_context()["batch_label"] = describe_batch(keys)
    with jira_client() as client:
        return fetch_batch(client, keys)


def every_batch(fetched: Any) -> Iterator[Any]:
    """Yield each mapped fetch result, failing loudly if one cannot be read.

    Iterating Airflow's lazy XCom sequence ends quietly at the first item the API server fails to
    return (its iterator turns IndexError into StopIteration), which would store part of a run and
    still succeed. Indexing up to its length makes such a failure a task failure instead.
    """
    total = len(fetched)
    for index in range(total):
        try:
            yield fetched[index]
        except IndexError as exc:
            raise RuntimeError(
                f"Could not read fetched batch {index} of {total}; nothing is skipped"
            ) from exc


@task
def store_tickets(
    fetched: Any, *, source: str, return_keys: bool = True, fail_on_failed_keys: bool = True
) -> dict[str, Any]:
    """Upsert every fetched batch into `jira_ticket`, one batch at a time; older updates never win.

    Keys whose fetch failed for good are listed in the summary's `failed` (and keys the isolation of
    a failing batch did not reach in `unresolved`). With `fail_on_failed_keys`
    (the sweep's way: its watermark must not pass them) the task fails once the rest is stored; the
    inbox passes False and settles its mail message by message instead.
    """
    with TicketStoreHook().connect() as (conn, dialect):
        summary = store_batches(
            conn,
            dialect,
            every_batch(fetched),
            source=source,
            fetched_at=datetime.now(UTC),
            return_keys=return_keys,
        )
    log.info(
        "Stored %d ticket(s); %d older update(s) ignored; %d key(s) not found in Jira",
        summary["written"],
        summary["stale_skipped"],
        summary["not_found_count"],
    )
    failed, unresolved = summary["failed"], summary["unresolved"]
    if (failed or unresolved) and fail_on_failed_keys:
        detail = "; ".join(f"{key}: {why}" for key, why in list(failed.items())[:10])
        raise AirflowFailException(
            f"{len(failed)} key(s) could not be fetched and {len(unresolved)} were not reached; the rest "
            f"is stored: {detail}"
        )
    return summary
