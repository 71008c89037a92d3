"""
### Jira inbox: unseen Jira notification mail → ticket details in the store

Jira mails a notification for every new or updated ticket. This DAG runs within seconds of such
mail arriving (an IMAP IDLE watcher in the triggerer), and every 10 minutes in case a connection was
lost; with `[jira_mail_sync] inbox_mode = poll` it runs every minute instead. Each run:

1. **wait_for_unseen_mail** runs one IMAP `UID SEARCH UNSEEN` on `imap_default` (skipping mail
   already labelled `$JiraRejected`), oldest first, at most `max_messages`. An empty inbox skips
   the run at once.
2. **extract_ticket_keys** peeks at headers and a bounded body prefix (`BODY.PEEK`, nothing is
   marked seen), trusts only `trusted_senders` (default `jira@<host of jira_default>`), takes the
   ticket keys, and labels rejected mail `$JiraRejected` for a human. Keys are de-duplicated.
3. **fetch_tickets** is mapped over batches of up to 100 keys: one Jira bulk fetch each, labelled
   with its keys in the UI. Keys Jira does not return are recorded as not found.
4. **store_tickets** upserts the details into `jira_ticket` on `jira_store`; an older update never
   overwrites a newer one, and a rerun changes nothing.
5. **mark_mail_seen** sets `\\Seen`, in one `UID STORE`, only on messages whose keys were all stored
   or confirmed not found. A failure anywhere earlier leaves the mail UNSEEN for the next run.

`dry_run` reports the keys it would fetch and touches nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Param, dag
from jira_mail_sync.inbox_schedule import inbox_schedule
from jira_mail_sync.inbox_tasks import extract_ticket_keys, mark_mail_seen
from jira_mail_sync.sensors.unseen_mail import UnseenJiraMailSensor
from jira_mail_sync.ticket_tasks import fetch_tickets, store_tickets


@dag(
    dag_id=Path(__file__).stem,
    doc_md=__doc__,
    schedule=inbox_schedule(),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=15),
    tags=["jira", "imap", "inbox"],
    default_args={
        "owner": "integrations",
        "retries": 2,
        "retry_delay": timedelta(seconds=20),
        "execution_timeout": timedelta(minutes=10),
    },
    params={
        "mailbox": Param(
            "INBOX",
            type="string",
            minLength=1,
            maxLength=200,
            title="Mailbox",
            description="IMAP folder that receives the Jira notification mail.",
            section="Mail",
        ),
        "max_messages": Param(
            200,
            type="integer",
            minimum=1,
            maximum=2000,
            title="Messages per run",
            description=(
                "At most this many unseen messages are taken, oldest first; the rest wait for the next run."
            ),
            section="Mail",
        ),
        "trusted_senders": Param(
            [],
            type=["null", "array"],
            items={"type": "string", "minLength": 3, "maxLength": 254},
            maxItems=50,
            title="Trusted senders",
            description=(
                "Addresses (jira@acme.atlassian.net) or exact domains (acme.atlassian.net) whose mail is "
                "trusted. Empty means jira@<host of the jira_default connection>."
            ),
            section="Mail",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Only report the keys that would be fetched: no Jira call, no store, no flags.",
            section="Run",
        ),
    },
)
def jira_inbox():
    sensed = UnseenJiraMailSensor(
        task_id="wait_for_unseen_mail",
        mailbox="{{ params.mailbox }}",
        max_messages="{{ params.max_messages }}",
        mode="reschedule",
    )
    key_batches = extract_ticket_keys(sensed.output)
    fetched = fetch_tickets.expand(keys=key_batches)
    stored = store_tickets(fetched, source="inbox")
    mark_mail_seen(key_batches["settlement"], stored)


jira_inbox()
