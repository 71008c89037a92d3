"""TaskFlow tasks of ticket history: plan which issues' changelogs to read, read them, announce them.

`ticket_history(fetched, stored)` wires the three tasks after a store in a DAG file (jira_inbox and
jira_sweep); `ticket_history()` with no arguments plans over the whole store (the backfill a census
DAG can run). With `[jira_mail_sync] history_fields` empty, plan_ticket_history is skipped, and so
is everything after it.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from include.history_sync import fetch_and_store_history, history_event, plan_history_chunks
from include.names import (
    CONFIG_SECTION,
    DEFAULT_SITE,
    HISTORY_FIELDS_OPTION,
    JIRA_API_POOL,
    JIRA_CONN_ID,
    STORE_CONN_ID,
    TICKET_CHANGE_ASSET_NAME,
    TICKET_CHANGE_ASSET_URI,
)
from include.ticket_history import resolve_history_fields
from jira_mail_sync.assets import asset_on_store
from jira_mail_sync.hooks.ticket_store import TicketStoreHook
from jira_mail_sync.settings import SettingError, read_settings
from jira_mail_sync.ticket_tasks import every_batch, jira_client

log = logging.getLogger(__name__)

# Its events name the issues that got new rows in jira_ticket_change (include.history_sync.history_event).
TICKET_CHANGE_ASSET = Asset(name=TICKET_CHANGE_ASSET_NAME, uri=TICKET_CHANGE_ASSET_URI)


def configured_history_fields() -> tuple[str, ...]:
    try:
        return read_settings().history_fields
    except SettingError as exc:
        raise AirflowFailException(str(exc)) from exc


def _issue_ids(fetched: Any) -> list[str]:
    return [
        str(ticket["issue_id"])
        for batch in every_batch(fetched)
        if batch
        for ticket in batch.get("tickets") or []
        if ticket.get("issue_id")
    ]


# It asks Jira for the field list (GET /rest/api/3/field) when there is history to read.
@task(pool=JIRA_API_POOL)
def plan_ticket_history(
    fetched: Any = None,
    stored: Any = None,
    *,
    jira_conn_id: str = JIRA_CONN_ID,
    store_conn_id: str = STORE_CONN_ID,
    site: str = DEFAULT_SITE,
) -> list[dict[str, Any]]:
    """Which issues need their changelog read: this run's fetched tickets, or every stored one.

    Every stored ticket when `fetched` is None (a census) or the run's `history_backfill` param is
    true. Tickets whose stored history is as new as the ticket are left out. The fields are checked
    against Jira's field list (one request) only when there is something to read. One entry per
    fetch_history instance (its keyword arguments); `stored` only orders this task after the store.
    """
    fields = configured_history_fields()
    if not fields:
        raise AirflowSkipException(f"[{CONFIG_SECTION}] {HISTORY_FIELDS_OPTION} is empty: no ticket history")
    params = get_current_context().get("params") or {}
    whole_store = fetched is None or bool(params.get("history_backfill"))
    ids = None if whole_store else _issue_ids(fetched)
    with TicketStoreHook(store_conn_id).connect() as (conn, dialect):
        chunks = plan_history_chunks(conn, dialect, ids, fields, site=site)
    field_ids: list[str] = []
    if chunks:
        with jira_client(jira_conn_id, store_conn_id) as client:
            if not client.has_cloud_apis:
                # Skipped, not failed: the inbox and the sweep work on Data Center; only history is missing.
                raise AirflowSkipException(
                    "Ticket history reads Jira Cloud's changelog bulk fetch, which Jira Data Center and "
                    f"Server do not have: no history for {client.site_url} (empty [{CONFIG_SECTION}] "
                    f"{HISTORY_FIELDS_OPTION} to stop this task)"
                )
            try:
                field_ids = list(resolve_history_fields(fields, client.fields_catalogue()))
            except ValueError as exc:
                raise AirflowFailException(f"[{CONFIG_SECTION}] {exc}") from exc
    planned = sum(len(chunk) for chunk in chunks)
    log.info(
        "%d issue(s) need their history read (%s), in %d request chunk(s); fields %s",
        planned,
        "whole store" if whole_store else "this run's tickets",
        len(chunks),
        ", ".join(field_ids or fields),
    )
    connections = {"jira_conn_id": jira_conn_id, "store_conn_id": store_conn_id, "site": site}
    return [
        {"issue_ids": chunk, "field_ids": field_ids, "fields": list(fields), **connections}
        for chunk in chunks
    ]


@task(
    pool=JIRA_API_POOL,
    map_index_template="{{ history_label }}",
    retry_delay=timedelta(seconds=30),
    retry_exponential_backoff=2.0,
)
def fetch_history(
    issue_ids: list[str],
    field_ids: list[str],
    fields: list[str],
    jira_conn_id: str = JIRA_CONN_ID,
    store_conn_id: str = STORE_CONN_ID,
    site: str = DEFAULT_SITE,
) -> dict[str, Any]:
    """Read every changelog page of up to 1000 issues and insert the changes the table lacks."""
    get_current_context()["history_label"] = f"{len(issue_ids)} issues from {issue_ids[0]}"
    with (
        jira_client(jira_conn_id, store_conn_id) as client,
        TicketStoreHook(store_conn_id).connect() as (
            conn,
            dialect,
        ),
    ):
        result = fetch_and_store_history(
            client, conn, dialect, issue_ids, fields=fields, field_ids=field_ids, site=site
        )
    log.info(
        "%d issue(s): %d change row(s) read in %d request(s), %d new, for %d issue(s)",
        result["issues"],
        result["changes_read"],
        result["requests"],
        result["inserted"],
        result["issues_with_new_count"],
    )
    return result


def ticket_change_asset(store_conn_id: str = STORE_CONN_ID) -> Asset:
    """The asset of jira_ticket_change on `store_conn_id`: TICKET_CHANGE_ASSET for the plain store."""
    return asset_on_store(TICKET_CHANGE_ASSET, store_conn_id)


@task(outlets=[TICKET_CHANGE_ASSET])
def announce_history(results: Any, *, site: str = DEFAULT_SITE) -> dict[str, Any]:
    """Emit the ticket-change asset event naming `site`'s issues with new history (skipped when none)."""
    context = get_current_context()
    event = history_event(every_batch(results), run_id=context["run_id"]) | {"site": site}
    if not event["rows_inserted"]:
        raise AirflowSkipException("No new history: no asset event")
    # The task's one outlet: TICKET_CHANGE_ASSET, or the site store's asset (ticket_history).
    (outlet,) = context["task"].outlets
    context["outlet_events"][outlet].extra = event
    return event


def ticket_history(
    fetched: Any = None,
    stored: Any = None,
    *,
    trigger_rule: str | None = None,
    jira_conn_id: str = JIRA_CONN_ID,
    store_conn_id: str = STORE_CONN_ID,
    pool: str = JIRA_API_POOL,
    site: str = DEFAULT_SITE,
) -> Any:
    """Wire plan → mapped fetch_history → announce for one site's connections, pool and rows.

    Returns the announce task's output.
    """
    plan_options: dict[str, Any] = {"pool": pool}
    if trigger_rule:
        plan_options["trigger_rule"] = trigger_rule
    plan = plan_ticket_history.override(**plan_options)(
        fetched, stored, jira_conn_id=jira_conn_id, store_conn_id=store_conn_id, site=site
    )
    results = fetch_history.override(pool=pool).expand_kwargs(plan)
    return announce_history.override(outlets=[ticket_change_asset(store_conn_id)])(results, site=site)
