"""TaskFlow tasks of jira_sweep: plan the JQL window, then list the changed keys page by page."""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from include.names import JIRA_API_POOL
from include.sweep_window import (
    build_sweep_jql,
    make_window,
    parse_iso_instant,
    validate_jql_filter,
    validate_projects,
)
from jira_mail_sync.mapping import batch_keys
from jira_mail_sync.ticket_tasks import jira_client

log = logging.getLogger(__name__)

# The key list travels to the mapped fetch as one XCom (about 12 bytes a key); past this many keys
# it would near 1 MB, so a window that large must be split (narrower since/until, or a backfill).
MAX_KEYS_PER_SWEEP = 50_000


def _window_bounds(context: dict[str, Any]) -> tuple[Any, Any]:
    params = context["params"]
    start = context.get("data_interval_start")
    end = context.get("data_interval_end")
    if params.get("since"):
        start = parse_iso_instant(params["since"], name="since")
    else:
        # With catchup off, intervals missed while the scheduler was down (or whose runs failed) are
        # never run: start where the last successful sweep ended, so no gap is left between windows.
        # A lazy proxy: it is never None itself, so test its truth (False when there is no such run).
        previous_end = context.get("prev_data_interval_end_success")
        if start is not None and previous_end and previous_end < start:
            log.warning(
                "The last successful sweep ended at %s, before this window's start %s: sweeping the gap too",
                previous_end,
                start,
            )
            start = previous_end
    if params.get("until"):
        end = parse_iso_instant(params["until"], name="until")
    if start is None or end is None:
        raise ValueError("This run has no data interval: give both `since` and `until`")
    return start, end


@task(pool=JIRA_API_POOL)
def plan_sweep() -> dict[str, Any]:
    """Validate the params, read the account's time zone from Jira, and build the window's JQL."""
    context = get_current_context()
    params = context["params"]
    try:
        start, end = _window_bounds(context)
        window = make_window(start, end, lookback_minutes=int(params["lookback_minutes"]))
        projects = validate_projects(params.get("projects") or [])
        jql_filter = validate_jql_filter(params.get("jql_filter"))
    except ValueError as exc:
        # Bad input is not worth a retry: fail at once with the reason.
        raise AirflowFailException(f"Invalid sweep parameters: {exc}") from exc
    with jira_client() as client:
        account_tz = client.account_time_zone()
    jql = build_sweep_jql(window, account_tz, projects=projects, jql_filter=jql_filter)
    log.info(
        "Sweeping %s → %s (lookback %s), account time zone %s: %s",
        window.start,
        window.end,
        window.lookback,
        account_tz,
        jql,
    )
    return {
        "jql": jql,
        "window_start": window.start.isoformat(),
        "window_end": window.end.isoformat(),
        "query_start": window.query_start.isoformat(),
        "account_time_zone": account_tz,
    }


@task(pool=JIRA_API_POOL)
def list_changed_keys(plan: dict[str, Any]) -> list[list[str]]:
    """Page through /search/jql asking only for keys (up to 5000 a page) and batch them for the fetch."""
    keys: list[str] = []
    with jira_client() as client:
        for key in client.search_keys(plan["jql"]):
            keys.append(key)
            if len(keys) > MAX_KEYS_PER_SWEEP:
                raise AirflowFailException(
                    f"More than {MAX_KEYS_PER_SWEEP} tickets changed between {plan['query_start']} and "
                    f"{plan['window_end']}: sweep it in smaller windows (since/until, or a backfill)"
                )
    batches = batch_keys(keys)
    log.info("%d changed ticket(s) in %d batch(es)", len(keys), len(batches))
    return batches
