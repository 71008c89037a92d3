"""TaskFlow tasks of jira_census: choose the projects, then take the census (include/census.py)."""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from include.census import (
    MassChangeRefused,
    check_fraction,
    record_runs,
    run_census,
    stored_projects,
    validate_projects,
)
from include.names import DEFAULT_SITE, JIRA_API_POOL, JIRA_CONN_ID, STORE_CONN_ID
from include.sync_pipeline import change_event
from jira_mail_sync.assets import TICKET_ASSET
from jira_mail_sync.hooks.ticket_store import TicketStoreHook
from jira_mail_sync.settings import SettingError, read_settings
from jira_mail_sync.ticket_tasks import configured_extra_fields, jira_client, planned_fields

log = logging.getLogger(__name__)

CENSUS_SOURCE = "census"


@task
def plan_census(
    *, store_conn_id: str = STORE_CONN_ID, site_projects: list[str] | None = None, site: str = DEFAULT_SITE
) -> dict[str, Any]:
    """The projects to count: the `projects` param, else `[jira_mail_sync] census_projects`, else the
    projects of the tickets the store holds. A site of the sites file counts its `projects` when it names
    some, before the setting. Bad params fail at once, without retries."""
    params = get_current_context()["params"]
    try:
        fraction = check_fraction(params.get("max_gone_fraction", 0.05))
        chosen = validate_projects(params.get("projects") or [])
        configured = read_settings().census_projects
    except (ValueError, SettingError) as exc:
        raise AirflowFailException(f"Invalid census parameters: {exc}") from exc
    if chosen:
        projects, why = chosen, "the run's projects param"
    elif site_projects:
        projects, why = sorted(site_projects), "the site's projects in the sites file"
    elif configured:
        projects, why = sorted(configured), "[jira_mail_sync] census_projects"
    else:
        with TicketStoreHook(store_conn_id).connect() as (conn, dialect):
            projects, why = (
                stored_projects(conn, dialect, site=site),
                "the projects of the site's stored tickets",
            )
    log.info("Census of %s (from %s)", ", ".join(projects) or "no project", why)
    return {
        "projects": projects,
        "max_gone_fraction": fraction,
        "confirm_mass_change": bool(params.get("confirm_mass_change")),
    }


@task(pool=JIRA_API_POOL, outlets=[TICKET_ASSET])
def take_census(
    plan: dict[str, Any],
    *,
    jira_conn_id: str = JIRA_CONN_ID,
    store_conn_id: str = STORE_CONN_ID,
    site: str = DEFAULT_SITE,
) -> dict[str, Any]:
    """List every issue id of each project, compare with the store, guard, classify, heal and mark.

    Fails without writing anything when the guard stops it (the message names each project's count);
    fails after writing the rest when Jira refused to say anything about some ids. Its asset event
    (source `census`) names the rows the census changed.
    """
    context = get_current_context()
    if not plan["projects"]:
        log.info("No project to count: the store holds no ticket and none was named")
        return {"counts": {}, "changed_count": 0, "changed": [], "failed": {}, "requests": 0}
    extra = configured_extra_fields()
    with (
        jira_client(jira_conn_id, store_conn_id) as client,
        TicketStoreHook(store_conn_id).connect() as (
            conn,
            dialect,
        ),
    ):
        if not client.has_cloud_apis:
            raise AirflowFailException(
                "The census lists ids with Jira Cloud's /rest/api/3/search/jql and bulk-fetches them by id; "
                f"{client.site_url} is Jira Data Center or Server, which has neither: pause jira_census there"
            )
        bulk_size = planned_fields(client, store_conn_id=store_conn_id).bulk_size
        try:
            result = run_census(
                client,
                conn,
                dialect,
                plan["projects"],
                max_gone_fraction=plan["max_gone_fraction"],
                confirm_mass_change=plan["confirm_mass_change"],
                extra_fields=extra,
                bulk_size=bulk_size,
                site=site,
            )
        except MassChangeRefused as exc:
            raise AirflowFailException(str(exc)) from exc
        record_runs(conn, dialect, result.counts, at=result.at, run_id=context["run_id"], site=site)
    summary = result.summary()
    for project, counts in result.counts.items():
        log.info("Census of %s: %s", project, ", ".join(f"{name} {value}" for name, value in counts.items()))
    window = {"start": None, "end": result.at.isoformat()}
    # The task's one outlet: TICKET_ASSET, or the site store's asset (census_dag.build_census_dag).
    (outlet,) = context["task"].outlets
    context["outlet_events"][outlet].extra = change_event(
        summary, source=CENSUS_SOURCE, run_id=context["run_id"], window=window
    ) | {"census": result.counts, "site": site}
    if result.failed:
        detail = "; ".join(f"{key}: {why}" for key, why in list(result.failed.items())[:10])
        raise AirflowFailException(
            f"{len(result.failed)} ticket(s) could not be classified or healed; the rest is written: {detail}"
        )
    return summary
