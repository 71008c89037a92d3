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
from include.names import CONFIG_SECTION, JIRA_API_POOL, JIRA_CONN_ID, STORE_CONN_ID
from include.sync_pipeline import change_event, fetch_batch, store_batches
from include.ticket_fields import FieldPlan, plan_fields
from jira_mail_sync.assets import TICKET_ASSET, ticket_asset
from jira_mail_sync.hooks.jira_cloud import JiraCloudHook
from jira_mail_sync.hooks.ticket_store import TicketStoreHook
from jira_mail_sync.jira_usage import record_jira_usage
from jira_mail_sync.mapping import batch_keys, describe_batch
from jira_mail_sync.settings import SettingError, read_settings

log = logging.getLogger(__name__)


@contextmanager
def jira_client(
    jira_conn_id: str = JIRA_CONN_ID, store_conn_id: str = STORE_CONN_ID
) -> Iterator[JiraCloudClient]:
    """A client on `jira_conn_id`; what it asked of Jira is recorded in `store_conn_id` when it closes."""
    hook = JiraCloudHook(jira_conn_id)
    with hook:
        client = hook.get_conn()
        try:
            yield client
        finally:
            record_jira_usage(client, store_conn_id, jira_conn_id)


def configured_extra_fields() -> tuple[str, ...]:
    """The `[jira_mail_sync] extra_fields` setting as field ids.

    The DAG files parse every setting at import, so a bad value is their import error; a worker whose
    configuration differs from the DAG processor's fails the task at once, with the same message.
    """
    try:
        return read_settings().extra_fields
    except SettingError as exc:
        raise AirflowFailException(str(exc)) from exc


def planned_fields(
    client: JiraCloudClient | None = None,
    *,
    jira_conn_id: str | None = None,
    store_conn_id: str = STORE_CONN_ID,
) -> FieldPlan:
    """The run's fields, checked against Jira's field list (one GET /rest/api/3/field) when extras are set.

    Without a `client` it opens one on `jira_conn_id`, the site's connection the DAG builder wired in.
    """
    extra = configured_extra_fields()
    if not extra:
        return FieldPlan()
    if client is None:
        if jira_conn_id is None:
            raise ValueError("planned_fields needs a Jira client or the site's jira_conn_id")
        with jira_client(jira_conn_id, store_conn_id) as own:
            return planned_fields(own)
    try:
        plan = plan_fields(extra, client.fields_catalogue())
    except ValueError as exc:
        raise AirflowFailException(f"[{CONFIG_SECTION}] {exc}") from exc
    if plan.multi_valued:
        log.warning(
            "Extra field(s) %s hold several values: bulk fetches carry %d issues instead of 1000",
            ", ".join(plan.multi_valued),
            plan.bulk_size,
        )
    return plan


def plan_batches(
    *key_groups: list[str],
    client: JiraCloudClient | None = None,
    jira_conn_id: str | None = None,
    store_conn_id: str = STORE_CONN_ID,
) -> list[list[str]]:
    """Each group of keys as mapped fetch batches of one bulk request each, sized for this run's fields.

    Groups never share a batch: the inbox passes fresh mail's keys and retried keys apart, so keys
    that failed before never hold back fresh ones. The fields are planned once for all groups.
    """
    if not any(key_groups):
        return []
    size = planned_fields(client, jira_conn_id=jira_conn_id, store_conn_id=store_conn_id).bulk_size
    return [batch for keys in key_groups for batch in batch_keys(keys, per_request=size)]


# The pool and the connections here are the plain site's; the DAG builders (inbox_dag, sweep_dag) give
# every DAG its site's pool with .override(pool=...) and its connections as arguments.
@task(
    pool=JIRA_API_POOL,
    map_index_template="{{ batch_label }}",
    # A batch's details (up to 100 tickets) would flood the task log; the store task logs the counts.
    show_return_value_in_logs=False,
    retry_delay=timedelta(seconds=30),
    retry_exponential_backoff=2.0,
)
def fetch_tickets(keys: list[str], *, jira_conn_id: str, store_conn_id: str) -> dict[str, Any]:
    """Fetch one batch of tickets with one Jira bulk request; missing keys come back as not found.

    If the request fails as a whole while Jira answers this account, the batch is split to isolate
    the failing keys, which come back in `failed` while the rest is fetched (include.isolating_fetch).
    It fails, for Airflow to retry, only when Jira does not answer at all.
    """
    get_current_context()["batch_label"] = describe_batch(keys)
    extra = configured_extra_fields()
    with jira_client(jira_conn_id, store_conn_id) as client:
        return fetch_batch(client, keys, extra)


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


def _window(context: Any, window: dict[str, Any] | None) -> dict[str, str | None]:
    if window:
        return {"start": window.get("window_start"), "end": window.get("window_end")}
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    return {"start": start.isoformat() if start else None, "end": end.isoformat() if end else None}


@task(outlets=[TICKET_ASSET])
def store_tickets(
    fetched: Any,
    *,
    source: str,
    store_conn_id: str,
    site: str,
    return_keys: bool = True,
    window: dict[str, Any] | None = None,
    fail_on_failed_keys: bool = True,
) -> dict[str, Any]:
    """Upsert every fetched batch into `jira_ticket`, one batch at a time; older updates never win.

    Its asset event tells downstream DAGs what changed: the count and up to 500 keys, the source, and
    the window (the sweep's planned window, else the run's data interval).

    Keys whose fetch failed for good are listed in the summary's `failed` (and keys the isolation of
    a failing batch did not reach in `unresolved`). With `fail_on_failed_keys` (the sweep's way: its
    watermark must not pass them) the task fails once the rest is stored, and so emits no asset
    event; the inbox passes False and settles its mail message by message instead.
    """
    context = get_current_context()
    with TicketStoreHook(store_conn_id).connect() as (conn, dialect):
        summary = store_batches(
            conn,
            dialect,
            every_batch(fetched),
            source=source,
            fetched_at=datetime.now(UTC),
            return_keys=return_keys,
            site=site,
        )
    log.info(
        "Site %s: stored %d ticket(s); %d older update(s) ignored; %d key(s) not found in Jira; %d changed",
        site,
        summary["written"],
        summary["stale_skipped"],
        summary["not_found_count"],
        summary["changed_count"],
    )
    # `site` tells the sites sharing one store (and so one asset) apart.
    event = change_event(
        summary, source=source, run_id=context["run_id"], window=_window(context, window)
    ) | {"site": site}
    context["outlet_events"][ticket_asset(store_conn_id)].extra = event
    failed, unresolved = summary["failed"], summary["unresolved"]
    if (failed or unresolved) and fail_on_failed_keys:
        detail = "; ".join(f"{key}: {why}" for key, why in list(failed.items())[:10])
        raise AirflowFailException(
            f"{len(failed)} key(s) could not be fetched and {len(unresolved)} were not reached; the rest "
            f"is stored: {detail}"
        )
    return summary
