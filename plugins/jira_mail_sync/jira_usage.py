"""Writes what a task asked of Jira (requests, 429s) into the store when its Jira client closes."""

from __future__ import annotations

import logging
from dataclasses import replace

from airflow.sdk import get_current_context

from include.api_usage import record_usage
from include.jira_cloud import JiraCloudClient
from include.names import JIRA_CONN_ID, STORE_CONN_ID
from jira_mail_sync.hooks.ticket_store import TicketStoreHook

log = logging.getLogger(__name__)


def _task_name() -> str:
    try:
        ti = get_current_context()["ti"]
    except Exception:
        # Outside a task (a script using the same client): still counted, under a plain name.
        return "outside a task"
    map_index = getattr(ti, "map_index", -1)
    mapped = f"[{map_index}]" if map_index is not None and map_index >= 0 else ""
    return f"{ti.dag_id}.{ti.task_id}{mapped}"


def record_jira_usage(
    client: JiraCloudClient, store_conn_id: str = STORE_CONN_ID, jira_conn_id: str = JIRA_CONN_ID
) -> None:
    """One usage row per task, in the store of the task's site, naming the Jira connection it asked; a
    store that cannot take it costs a warning, never the task's result."""
    usage = replace(client.usage(_task_name()), jira_conn_id=jira_conn_id)
    if usage.requests == 0:
        return
    try:
        with TicketStoreHook(store_conn_id).connect() as (conn, dialect):
            record_usage(conn, dialect, usage)
    except Exception as exc:
        # The figures only feed the status page; failing the fetch over them would redo Jira's work.
        log.warning(
            "Could not record %d Jira request(s) of %s: %s: %s",
            usage.requests,
            usage.task,
            type(exc).__name__,
            exc,
        )
