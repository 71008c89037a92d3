"""Names that users, scripts and the DAGs rely on: connection ids, the pool and the tables."""

from __future__ import annotations

IMAP_CONN_ID = "imap_default"
JIRA_CONN_ID = "jira_default"
STORE_CONN_ID = "jira_store"

# Every task that calls Jira takes a slot of this pool, so all workers together never run more
# concurrent Jira requests than it has slots (Jira Cloud's burst limits are per account).
JIRA_API_POOL = "jira_api"

TICKET_TABLE = "jira_ticket"

# The site name of the single site configured by the plain connections (no dags/jira_sites.yaml):
# what the `site` column of every table holds for it, so one-site stores need no migration of meaning.
DEFAULT_SITE = "default"

# The Airflow config section of this project's settings ([jira_mail_sync] in airflow.cfg, or
# AIRFLOW__JIRA_MAIL_SYNC__<OPTION> in the environment).
CONFIG_SECTION = "jira_mail_sync"
# [jira_mail_sync] extra_fields: the Jira fields stored in jira_ticket.fields (include/ticket_fields.py).
EXTRA_FIELDS_OPTION = "extra_fields"

# The Asset store_tickets updates: downstream DAGs scheduled on it run when tickets changed.
TICKET_ASSET_NAME = TICKET_TABLE
TICKET_ASSET_URI = "jira-mail-sync://jira_store/jira_ticket"
# An asset event names at most this many changed keys (and always their count).
CHANGE_FEED_MAX_KEYS = 500

# What became of each Jira mail (rejected, failed, quarantined, settled): include/mail_ledger.py.
MAIL_LEDGER_TABLE = "jira_mail_ledger"
# What the IMAP IDLE watcher tells the Jira sync page (refused logins), one row per watched mailbox.
WATCH_STATE_TABLE = "jira_imap_watch"

# How many requests each task made to Jira, and the last time Jira throttled one (include/api_usage.py).
API_USAGE_TABLE = "jira_api_usage"

# The DAG ids (the DAG files are named after them); the status page checks a user's rights on them.
INBOX_DAG_ID = "jira_inbox"
SWEEP_DAG_ID = "jira_sweep"

# ----------------------------------------------------------------------------- ticket history (#25)
# Every change Jira's changelog records for the chosen fields, one row per changed field
# (include/ticket_history.py), and the view of status stays built on it.
TICKET_CHANGE_TABLE = "jira_ticket_change"
STATUS_INTERVAL_VIEW = "jira_ticket_status_interval"
# Per issue: the ticket `updated` up to which its history is stored (unchanged issues are not asked again).
HISTORY_CURSOR_TABLE = "jira_ticket_history_cursor"
# [jira_mail_sync] history_fields: the field ids whose changes are kept (empty: no history).
HISTORY_FIELDS_OPTION = "history_fields"
# The Asset fetch_history updates: its events name the issues that got new history rows.
TICKET_CHANGE_ASSET_NAME = TICKET_CHANGE_TABLE
TICKET_CHANGE_ASSET_URI = "jira-mail-sync://jira_store/jira_ticket_change"

# The census (include/census.py): its DAG, and the table keeping each project's last census.
CENSUS_DAG_ID = "jira_census"
CENSUS_RUN_TABLE = "jira_census_run"
