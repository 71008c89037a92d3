"""
### Jira sites: a sweep DAG per site and an inbox DAG per mailbox of the sites file

Reads `dags/jira_sites.yaml` (or `[jira_mail_sync] sites_file`; see `dags/jira_sites.example.yaml`)
and builds, per entry, `jira_sweep__<name>` and `jira_inbox__<name>__<mailbox slug>`, each from the
same definition as `jira_sweep` and `jira_inbox`. A bad file is this file's one import error,
naming the entry and the field; no DAG of it is built. A task run builds only its own DAG
(`get_parsing_context().dag_id`). With no sites file this file builds nothing.
"""

from __future__ import annotations

from airflow.sdk import get_parsing_context
from jira_mail_sync.settings import read_settings
from jira_mail_sync.site_dags import build_site_dags
from jira_mail_sync.sites_config import sites_file_in_use

from include.sites import load_sites_file

# Every [jira_mail_sync] option, parsed now: a bad value is this file's import error in the UI.
SETTINGS = read_settings()
SITES_FILE = sites_file_in_use(SETTINGS)

if SITES_FILE is not None:
    # The whole file is checked before any DAG is built: never a half-built set.
    SITES = load_sites_file(SITES_FILE)
    for _dag in build_site_dags(
        SITES, settings=SETTINGS, fileloc=__file__, only=get_parsing_context().dag_id
    ):
        globals()[_dag.dag_id] = _dag
