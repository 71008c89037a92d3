"""The census DAG of one site: the one definition jira_census and every jira_census__<site> share."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param, dag

from include.census import DEFAULT_MAX_GONE_FRACTION
from include.jira_rules import PROJECT_KEY_PATTERN
from include.sites import Site
from jira_mail_sync.assets import ticket_asset
from jira_mail_sync.census_tasks import plan_census, take_census
from jira_mail_sync.history_tasks import ticket_history

CENSUS_DAG_PREFIX = "jira_census"

# The doc_md of every census DAG.
CENSUS_DOC = """
### Jira census: the store matches Jira exactly

Jira has no deletion feed: a deleted, archived or newly hidden issue just drops out of search. Once a
day this DAG counts every synced project and makes `jira_ticket` agree with it:

1. **plan_census** picks the projects: the `projects` param, else `[jira_mail_sync] census_projects`,
   else the projects of the tickets the store holds.
2. **take_census** lists every issue id of each project (`/rest/api/3/search/jql` with
   `fields=id,key`, 5000 a page) and compares them with the store's live rows:
   - a stored ticket Jira no longer lists is looked up (one bulk fetch per 1000, then a single GET
     for those it leaves out) and marked with `gone_reason`:
     `deleted_or_hidden` (404: deleted, or no longer visible to the sync account; `deleted_at` set),
     `not_visible` (403; `deleted_at` set), `archived` (reachable, but absent from search;
     `archived_at` set) or `moved_out` (now in a project outside the census: the row is renamed to
     the new key, the old one kept in `previous_keys`);
   - a ticket Jira lists and the store lacks (a lost mail, a sweep gap) is fetched and stored;
   - every row Jira listed gets `census_at`, when a census last confirmed it.
3. **plan_ticket_history**, **fetch_history**, **announce_history** then read the change history of
   every stored ticket whose history is behind (`jira_ticket_change`; skipped when
   `[jira_mail_sync] history_fields` is empty): the backfill of ticket history.

Rows are never removed. A later fetch that returns a ticket clears its gone state.

**The guard:** if more than `max_gone_fraction` (5%) of a project's stored tickets are missing from
Jira's listing, the run fails before changing anything and names the count: a revoked permission, a
wrong scope or an outage answering empty pages looks just like that. If Jira is right, trigger a run
with `confirm_mass_change: true`.

The store's asset event (source `census`) names the changed rows; the Jira sync page shows each
project's last census.
"""


def census_doc(site: Site) -> str:
    projects = ", ".join(site.projects) or "the projects of the stored tickets"
    return site.doc_naming_it(CENSUS_DOC, f": {site.connections_text()}; projects: {projects}.")


def census_params() -> dict[str, Param]:
    return {
        "projects": Param(
            [],
            type=["null", "array"],
            items={"type": "string", "pattern": f"^{PROJECT_KEY_PATTERN}$"},
            maxItems=100,
            title="Projects",
            description=(
                "Count only these project keys (e.g. ABC). Empty: [jira_mail_sync] census_projects, "
                "else the projects of the stored tickets."
            ),
        ),
        "max_gone_fraction": Param(
            DEFAULT_MAX_GONE_FRACTION,
            type="number",
            minimum=0,
            maximum=1,
            title="Most a project may lose in one run",
            description=(
                "The share of a project's stored tickets (0.05 = 5%) a run may mark gone; above it the "
                "run changes nothing and fails."
            ),
        ),
        "confirm_mass_change": Param(
            False,
            type="boolean",
            title="Confirm a mass change",
            description=(
                "Mark tickets gone even above that share: only after checking that Jira is right "
                "(the sync account's permissions, Jira's status)."
            ),
        ),
    }


def build_census_dag(site: Site, *, fileloc: str) -> DAG:
    """The census DAG of `site`, as if written in the DAG file `fileloc`."""

    @dag(
        dag_id=site.dag_id(CENSUS_DAG_PREFIX),
        doc_md=census_doc(site),
        schedule="@daily",
        start_date=datetime(2026, 1, 1),
        # A census looks at Jira as it is now: running it for past days would only repeat today's.
        catchup=False,
        max_active_runs=1,
        dagrun_timeout=timedelta(hours=6),
        tags=["jira", "census"] if site.plain else ["jira", "census", f"site:{site.name}"],
        default_args={
            "owner": "integrations",
            "retries": 2,
            "retry_delay": timedelta(minutes=5),
            "execution_timeout": timedelta(hours=4),
        },
        params=census_params(),
    )
    def jira_census():
        plan = plan_census(
            store_conn_id=site.store_conn_id, site_projects=list(site.projects), site=site.name
        )
        census = take_census.override(pool=site.pool, outlets=[ticket_asset(site.store_conn_id)])(
            plan, jira_conn_id=site.jira_conn_id, store_conn_id=site.store_conn_id, site=site.name
        )
        # The whole store's history (a backfill), after the census settled which tickets exist.
        ticket_history(
            None,
            census,
            jira_conn_id=site.jira_conn_id,
            store_conn_id=site.store_conn_id,
            pool=site.pool,
            site=site.name,
        )

    built = jira_census()
    # The @dag decorator takes this module for the DAG's file; the task runner must parse the DAG file.
    built.fileloc = fileloc
    return built
