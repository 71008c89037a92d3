"""TaskFlow tasks of jira_sweep: plan the JQL window, list the changed keys, record how far it got."""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from include.names import JIRA_API_POOL
from include.sweep_progress import advance_watermark, get_watermark, site_scope
from include.sweep_window import (
    WindowTooDense,
    build_sweep_jql,
    furthest_fitting_end,
    make_window,
    parse_iso_instant,
    validate_jql_filter,
    validate_projects,
)
from jira_mail_sync.hooks.ticket_store import TicketStoreHook
from jira_mail_sync.ticket_tasks import jira_client, plan_batches

log = logging.getLogger(__name__)

# The key list travels to the mapped fetch as one XCom (about 12 bytes a key); past this many keys
# it would near 1 MB. A scheduled run takes the oldest part of its window that fits and records how
# far it got; a manual window that large fails and asks for a smaller one.
MAX_KEYS_PER_SWEEP = 50_000


def _overridden(params: dict[str, Any]) -> bool:
    """A run narrowed or moved by its params sweeps only what it was asked to, and records nothing."""
    return bool(
        params.get("since") or params.get("until") or params.get("projects") or params.get("jql_filter")
    )


def _window_bounds(context: dict[str, Any], watermark: Any) -> tuple[Any, Any]:
    params = context["params"]
    start = context.get("data_interval_start")
    end = context.get("data_interval_end")
    if params.get("since"):
        start = parse_iso_instant(params["since"], name="since")
    elif not _is_backfill(context) and not _overridden(params):
        # With catchup off, intervals missed while the scheduler was down, whose runs failed, or that a
        # busy run could not finish are never run on their own: start where the sweep has got to, so
        # no gap is left between windows. Before the first recorded watermark, the end of the last
        # successful run stands in (a lazy proxy, never None itself: test its truth).
        reached = watermark or context.get("prev_data_interval_end_success")
        if start is not None and reached and reached < start:
            log.warning(
                "The sweep has stored everything up to %s, before this window's start %s: "
                "sweeping the gap too",
                reached,
                start,
            )
            start = reached
    if params.get("until"):
        end = parse_iso_instant(params["until"], name="until")
    if start is None or end is None:
        raise ValueError("This run has no data interval: give both `since` and `until`")
    return start, end


def _is_backfill(context: dict[str, Any]) -> bool:
    dag_run = context.get("dag_run")
    return str(getattr(getattr(dag_run, "run_type", None), "value", "")) == "backfill"


def _read_watermark(store_conn_id: str, site: str) -> Any:
    with TicketStoreHook(store_conn_id).connect() as (conn, dialect):
        return get_watermark(conn, dialect, site_scope(site))


# The DAG builder gives these tasks the site's pool (.override) and the site's connections as arguments.
@task(pool=JIRA_API_POOL)
def plan_sweep(*, jira_conn_id: str, store_conn_id: str, site: str) -> dict[str, Any]:
    """Validate the params, read the account's time zone from Jira, and build the window's JQL."""
    context = get_current_context()
    params = context["params"]
    watermark = _read_watermark(store_conn_id, site)
    try:
        start, end = _window_bounds(context, watermark)
        window = make_window(start, end, lookback_minutes=int(params["lookback_minutes"]))
        projects = validate_projects(params.get("projects") or [])
        jql_filter = validate_jql_filter(params.get("jql_filter"))
    except ValueError as exc:
        # Bad input is not worth a retry: fail at once with the reason.
        raise AirflowFailException(f"Invalid sweep parameters: {exc}") from exc
    with jira_client(jira_conn_id, store_conn_id) as client:
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
        "lookback_minutes": int(params["lookback_minutes"]),
        "account_time_zone": account_tz,
        "watermark": watermark.isoformat() if watermark else None,
        # Whether this run may move the watermark: it sweeps the default scope, and its window is
        # contiguous with what is stored (a backfill of old intervals never moves it back, and
        # never sets a first one far in the past).
        "records_progress": not _overridden(params)
        and (window.start <= watermark if watermark else not _is_backfill(context)),
    }


def _keys_up_to(client: Any, jql: str, limit: int) -> list[str] | None:
    """The keys `jql` finds, or None as soon as there are more than `limit` (the search stops there)."""
    keys: list[str] = []
    for key in client.search_keys(jql):
        keys.append(key)
        if len(keys) > limit:
            return None
    return keys


@task(pool=JIRA_API_POOL)
def list_changed_keys(plan: dict[str, Any], *, jira_conn_id: str, store_conn_id: str) -> list[list[str]]:
    """Page through /search/jql asking only for keys (up to 5000 a page) and batch them for the fetch.

    When the window holds more than one run may take, a run that records progress takes its oldest
    part that fits (found by bisection) and pushes the end it reached under the XCom key `reached`;
    the next run continues from there.
    """
    start = parse_iso_instant(plan["window_start"], name="window_start")
    end = parse_iso_instant(plan["window_end"], name="window_end")
    with jira_client(jira_conn_id, store_conn_id) as client:
        keys = _keys_up_to(client, plan["jql"], MAX_KEYS_PER_SWEEP)
        reached = end
        if keys is None:
            if not plan["records_progress"]:
                raise AirflowFailException(
                    f"More than {MAX_KEYS_PER_SWEEP} tickets changed between {plan['query_start']} and "
                    f"{plan['window_end']}: sweep it in smaller windows (since/until, or a backfill)"
                )

            def keys_until(sub_end: Any) -> list[str] | None:
                window = make_window(start, sub_end, lookback_minutes=plan["lookback_minutes"])
                return _keys_up_to(
                    client, build_sweep_jql(window, plan["account_time_zone"]), MAX_KEYS_PER_SWEEP
                )

            try:
                reached, keys = furthest_fitting_end(start, end, keys_until)
            except WindowTooDense as exc:
                raise AirflowFailException(f"Cannot sweep this window: {exc}") from exc
            log.warning(
                "More than %d tickets changed between %s and %s: "
                "this run sweeps up to %s, the next runs continue",
                MAX_KEYS_PER_SWEEP,
                plan["query_start"],
                plan["window_end"],
                reached.isoformat(),
            )
        batches = plan_batches(keys, client=client)
    get_current_context()["ti"].xcom_push(key="reached", value=reached.isoformat())
    log.info("%d changed ticket(s) in %d batch(es)", len(keys), len(batches))
    return batches


# An empty window skips the fetch and the store; it still counts as swept. A failure upstream does not.
@task(trigger_rule="none_failed")
def record_sweep_progress(
    plan: dict[str, Any], reached: str, stored: dict[str, Any], *, store_conn_id: str, site: str
) -> str | None:
    """Move the sweep's watermark to the end this run reached, once everything before it is stored."""
    if not plan["records_progress"]:
        log.info("This run's window was chosen by hand (or is an old backfill): the watermark stays")
        return plan["watermark"]
    with TicketStoreHook(store_conn_id).connect() as (conn, dialect):
        watermark = advance_watermark(
            conn, dialect, parse_iso_instant(reached, name="reached"), scope=site_scope(site)
        )
    log.info("The sweep has stored every change up to %s", watermark.isoformat())
    return watermark.isoformat()
