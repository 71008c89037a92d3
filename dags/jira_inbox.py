"""
### Jira inbox of the plain connections (`imap_default` → `jira_default` → `jira_store`)

The DAG and its doc are built by `jira_mail_sync.inbox_dag.build_inbox_dag`, the one definition
every site's inbox DAG shares. With a sites file (`dags/jira_sites.yaml`, or
`[jira_mail_sync] sites_file`) this file builds nothing: `jira_sites.py` builds one inbox DAG per
mailbox of the file instead.
"""

from __future__ import annotations

# (The words "airflow" and "dag" in this file are what [core] dag_discovery_safe_mode looks for.)
from jira_mail_sync.inbox_dag import build_inbox_dag
from jira_mail_sync.settings import read_settings
from jira_mail_sync.sites_config import sites_file_in_use

from include.sites import default_site

# Every [jira_mail_sync] option, parsed now: a bad value is this file's import error in the UI.
SETTINGS = read_settings()

if sites_file_in_use(SETTINGS) is None:
    SITE = default_site()
    jira_inbox = build_inbox_dag(SITE, SITE.mailboxes[0], settings=SETTINGS, fileloc=__file__)
