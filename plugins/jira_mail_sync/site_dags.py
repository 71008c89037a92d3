"""Every DAG the configured sites need, by DAG id, so that a task process builds only its own.

`site_dag_builders(sites)` lists, for each site, a DAG id and how to build it: the sweep, then one
inbox per mailbox, then the census.
`build_site_dags(..., only=dag_id)` builds just the DAG of that id: the generating DAG file passes
`get_parsing_context().dag_id`, which a task run sets and the DAG processor does not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import partial

from airflow.sdk import DAG

from include.sites import Site
from jira_mail_sync.census_dag import CENSUS_DAG_PREFIX, build_census_dag
from jira_mail_sync.inbox_dag import build_inbox_dag
from jira_mail_sync.settings import Settings
from jira_mail_sync.sweep_dag import build_sweep_dag


def site_dag_builders(
    sites: Iterable[Site], *, settings: Settings, fileloc: str
) -> Iterator[tuple[str, Callable[[], DAG]]]:
    for site in sites:
        yield site.sweep_dag_id(), partial(build_sweep_dag, site, fileloc=fileloc)
        for mailbox in site.mailboxes:
            yield (
                site.inbox_dag_id(mailbox),
                partial(build_inbox_dag, site, mailbox, settings=settings, fileloc=fileloc),
            )
        yield site.dag_id(CENSUS_DAG_PREFIX), partial(build_census_dag, site, fileloc=fileloc)


def build_site_dags(
    sites: Iterable[Site], *, settings: Settings, fileloc: str, only: str | None = None
) -> list[DAG]:
    """The DAGs of `sites`; with `only`, just the DAG of that id (none when no site has it)."""
    return [
        build()
        for dag_id, build in site_dag_builders(sites, settings=settings, fileloc=fileloc)
        if only is None or dag_id == only
    ]
