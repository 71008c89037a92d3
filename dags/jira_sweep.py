"""
### Jira sweep of the plain connections (`jira_default` → `jira_store`), every 15 minutes

The DAG and its doc are built by `jira_mail_sync.sweep_dag.build_sweep_dag`, the one definition
every site's sweep DAG shares. With a sites file (`dags/jira_sites.yaml`, or
`[jira_mail_sync] sites_file`) this file builds nothing: `jira_sites.py` builds one sweep per site.
"""

from __future__ import annotations

# (The words "airflow" and "dag" in this file are what [core] dag_discovery_safe_mode looks for.)
from jira_mail_sync.settings import read_settings
from jira_mail_sync.sites_config import sites_file_in_use
from jira_mail_sync.sweep_dag import build_sweep_dag

from include.sites import default_site

# Every [jira_mail_sync] option, parsed now: a bad value is this file's import error in the UI.
SETTINGS = read_settings()

if sites_file_in_use(SETTINGS) is None:
    jira_sweep = build_sweep_dag(default_site(), fileloc=__file__)
