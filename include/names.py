"""Names that users, scripts and the DAGs rely on: connection ids, the pool and the tables."""

from __future__ import annotations

IMAP_CONN_ID = "imap_default"
JIRA_CONN_ID = "jira_default"
STORE_CONN_ID = "jira_store"

# Every task that calls Jira takes a slot of this pool, so all workers together never run more
# concurrent Jira requests than it has slots (Jira Cloud's burst limits are per account).
JIRA_API_POOL = "jira_api"

TICKET_TABLE = "jira_ticket"
# What became of each Jira mail (rejected, failed, quarantined, settled): include/mail_ledger.py.
MAIL_LEDGER_TABLE = "jira_mail_ledger"

# How many requests each task made to Jira, and the last time Jira throttled one (include/api_usage.py).
API_USAGE_TABLE = "jira_api_usage"

# The DAG ids (the DAG files are named after them); the status page checks a user's rights on them.
INBOX_DAG_ID = "jira_inbox"
SWEEP_DAG_ID = "jira_sweep"
