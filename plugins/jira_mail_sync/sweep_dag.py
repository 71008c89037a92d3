"""The sweep DAG of one site, built from one definition for the plain site and every entry of the
sites file (dags/jira_sweep.py, dags/jira_sites.py).

The tasks get the site's connections as arguments and its pool through `.override(pool=...)`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, CronDataIntervalTimetable, Param, dag

from include.jira_rules import PROJECT_KEY_PATTERN
from include.sites import Site
from jira_mail_sync.assets import ticket_asset
from jira_mail_sync.history_tasks import ticket_history
from jira_mail_sync.sweep_tasks import list_changed_keys, plan_sweep, record_sweep_progress
from jira_mail_sync.ticket_tasks import fetch_tickets, store_tickets

# The doc_md of every sweep DAG; the names in braces are the DAG's own.
SWEEP_DOC = """
### Jira sweep: every ticket updated in the data interval → the store

Every ticket that changed in a period, found with a JQL search. On `{schedule}` (UTC)
this DAG sweeps the run's data interval (a real interval, so backfills sweep history):

1. **plan_sweep** validates the params, reads the Jira account's time zone (`GET /myself`), and
   writes `updated >= LOW AND updated < HIGH` in that zone, to the minute, over the half-open window
   widened by `lookback_minutes` (Jira's search index is eventually consistent).
2. **list_changed_keys** pages through `/rest/api/3/search/jql` asking only for keys (up to 5000 a
   page, following `nextPageToken`) and batches them.
3. **fetch_tickets** and **store_tickets** are the same tasks as in `jira_inbox`: mapped bulk fetches
   of up to 1000 tickets each, and an idempotent upsert into `jira_ticket` with `source = 'sweep'`.
   The lookback overlap never duplicates rows. The store's asset event names this window.
4. **record_sweep_progress** moves the watermark (table `jira_sweep_watermark`) to the end this run
   reached, once everything before it is stored.
5. **plan_ticket_history**, **fetch_history** and **announce_history** (beside the watermark, which
   never waits for them) read the changelogs of the stored tickets whose history is behind, 1000 issues
   per `POST /rest/api/3/changelog/bulkfetch`, into `jira_ticket_change` (fields:
   `[jira_mail_sync] history_fields`; skipped when it is empty). A manual run with `history_backfill`
   does so for every stored ticket.

A scheduled run whose window starts after the watermark (the scheduler was down, runs failed, or a
busy window was too large for one run: catchup is off) starts at the watermark instead, so no
interval is left unswept. A window with more than 50,000 changed tickets is swept oldest first in
the largest part that fits, and the next runs continue from where it stopped.

Manual runs may override the window with `since`/`until`, narrow it to `projects`, or add a
validated `jql_filter` clause. Backfill with
`airflow backfill create --dag-id {dag_id} --from-date ... --to-date ...`.
"""


def sweep_doc(site: Site) -> str:
    text = SWEEP_DOC.format(dag_id=site.sweep_dag_id(), schedule=site.schedule)
    projects = ", ".join(site.projects) or "every project the account can see"
    return site.doc_naming_it(text, f": {site.connections_text()}; projects: {projects}.")


def sweep_params(site: Site) -> dict[str, Param]:
    """The params of a sweep DAG; the lookback and projects default to the site's."""
    return {
        "since": Param(
            None,
            type=["null", "string"],
            format="date-time",
            title="Since",
            description=(
                "Override the window start (ISO 8601 with offset, e.g. 2026-11-27T00:00:00+00:00). Inclusive."
            ),
            section="Window",
        ),
        "until": Param(
            None,
            type=["null", "string"],
            format="date-time",
            title="Until",
            description="Override the window end (ISO 8601 with offset). Exclusive.",
            section="Window",
        ),
        "lookback_minutes": Param(
            site.lookback_minutes,
            type="integer",
            minimum=0,
            maximum=1440,
            title="Lookback (minutes)",
            description=(
                "Also sweep this many minutes before the window, for Jira's eventually consistent search."
            ),
            section="Window",
        ),
        "projects": Param(
            list(site.projects),
            type=["null", "array"],
            items={"type": "string", "pattern": f"^{PROJECT_KEY_PATTERN}$"},
            maxItems=100,
            title="Projects",
            description="Only these project keys (e.g. ABC). Empty means every project the account can see.",
            section="Filter",
        ),
        "jql_filter": Param(
            None,
            type=["null", "string"],
            maxLength=1000,
            title="Extra JQL clause",
            description=(
                'ANDed with the window, e.g. status = "Done". '
                "No ORDER BY, no unbalanced quotes or parentheses."
            ),
            section="Filter",
        ),
        "history_backfill": Param(
            False,
            type="boolean",
            title="Backfill ticket history",
            description=(
                "Also read the change history of every stored ticket whose history is missing or behind "
                "(1000 tickets per Jira request), not only of this window's tickets."
            ),
            section="Ticket history",
        ),
    }


def sweep_tags(site: Site) -> list[str]:
    tags = ["jira", "jql", "sweep"]
    return tags if site.plain else [*tags, f"site:{site.name}"]


def build_sweep_dag(site: Site, *, fileloc: str) -> DAG:
    """The sweep DAG of `site`, as if written in the DAG file `fileloc`."""
    pooled: dict[str, Any] = {"pool": site.pool}

    @dag(
        dag_id=site.sweep_dag_id(),
        doc_md=sweep_doc(site),
        # A plain cron string would give zero-length data intervals (CronTriggerTimetable).
        schedule=CronDataIntervalTimetable(site.schedule, timezone="UTC"),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=2,
        dagrun_timeout=timedelta(hours=1),
        tags=sweep_tags(site),
        default_args={
            "owner": "integrations",
            "retries": 2,
            "retry_delay": timedelta(minutes=1),
            "execution_timeout": timedelta(minutes=30),
        },
        params=sweep_params(site),
    )
    def jira_sweep():
        plan = plan_sweep.override(**pooled)(
            jira_conn_id=site.jira_conn_id, store_conn_id=site.store_conn_id, site=site.name
        )
        batches = list_changed_keys.override(**pooled)(
            plan, jira_conn_id=site.jira_conn_id, store_conn_id=site.store_conn_id
        )
        fetched = (
            fetch_tickets.override(**pooled)
            .partial(jira_conn_id=site.jira_conn_id, store_conn_id=site.store_conn_id)
            .expand(keys=batches)
        )
        stored = store_tickets.override(outlets=[ticket_asset(site.store_conn_id)])(
            fetched,
            source="sweep",
            return_keys=False,
            window=plan,
            store_conn_id=site.store_conn_id,
            site=site.name,
        )
        record_sweep_progress(
            plan, batches["reached"], stored, store_conn_id=site.store_conn_id, site=site.name
        )
        # Runs after an empty window too, so a backfill needs no changed ticket.
        ticket_history(
            fetched,
            stored,
            trigger_rule="none_failed",
            jira_conn_id=site.jira_conn_id,
            store_conn_id=site.store_conn_id,
            pool=site.pool,
            site=site.name,
        )

    built = jira_sweep()
    # The @dag decorator takes this module for the DAG's file; the task runner must parse the DAG file.
    built.fileloc = fileloc
    return built
