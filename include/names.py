"""Names that users, scripts and the DAGs rely on: connection ids, the pool and the tables."""

from __future__ import annotations

IMAP_CONN_ID = "imap_default"
JIRA_CONN_ID = "jira_default"
STORE_CONN_ID = "jira_store"

# Every task that calls Jira takes a slot of this pool, so all workers together never run more
# concurrent Jira requests than it has slots (Jira Cloud's burst limits are per account).
JIRA_API_POOL = "jira_api"

TICKET_TABLE = "jira_ticket"

# The section of airflow.cfg (AIRFLOW__JIRA_MAIL_SYNC__*) that holds this integration's settings.
CONFIG_SECTION = "jira_mail_sync"
