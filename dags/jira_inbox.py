"""
### Jira inbox: unseen Jira notification mail → ticket details in the store

Jira mails a notification for every new or updated ticket. This DAG runs within seconds of such
mail arriving (an IMAP IDLE watcher in the triggerer), and every 10 minutes in case a connection was
lost; with `[jira_mail_sync] inbox_mode = poll` it runs every minute instead. Each run:

1. **wait_for_unseen_mail** searches the unseen mail on `imap_default` in windows of UIDs (any
   number of unseen messages costs a few IMAP commands), leaves out the mail the **mail ledger**
   (`jira_mail_ledger` on `jira_store`) holds as rejected, quarantined or waiting for a retry, and
   takes the oldest `max_messages` of the rest. An empty inbox skips the run at once. A manual run's
   `release_uids` / `release_all` put held mail back into play first.
2. **extract_ticket_keys** peeks at headers and a bounded body prefix (`BODY.PEEK`, nothing is
   marked seen), trusts only `trusted_senders` (default `jira@<host of jira_default>`), takes the
   ticket keys, and records rejected mail in the ledger as it goes, whatever its bytes, then moves
   it to the `rejected_mailbox` folder (`Jira/Rejected`; labelled `$JiraRejected` where the server
   keeps keywords). Keys are de-duplicated; keys of retried mail get batches of their own.
3. **fetch_tickets** is mapped over batches of up to 1000 keys (100 when a chosen extra field is
   multi-valued): one Jira bulk fetch each, labelled with its keys in the UI. A key Jira leaves out
   is asked for on its own: a move to a new key is followed, a 404 confirms it gone. A batch that
   keeps failing is split until the failing keys stand alone: they are reported, the rest is fetched.
4. **store_tickets** upserts the details into `jira_ticket` on `jira_store` (one row per Jira issue;
   gone tickets keep theirs with `deleted_at`); an older update never overwrites a newer one, and a
   rerun changes nothing. Its asset event names the changed keys for downstream DAGs.
5. **mark_mail_seen** sets `\\Seen`, in one `UID STORE`, on every message whose keys were all stored
   or confirmed not found, even when other keys failed. A message whose key failed is left unseen
   and retried in a later run after a doubling delay (`retry_delay_minutes`), taking no place in the
   window while it waits; after `max_attempts` it is quarantined for a human.
6. **report_unsettled_mail** fails the run when any message was left unseen, naming the messages,
   keys and errors, so nobody misses it.
7. **plan_ticket_history**, **fetch_history** and **announce_history** run beside the marking (the mail
   is safe once its tickets are stored, so history never delays it): the changelogs of the stored
   tickets whose history is behind go into `jira_ticket_change`, 1000 issues per Jira request
   (`[jira_mail_sync] history_fields`; skipped when it is empty).

`dry_run` reports the keys it would fetch and touches nothing. Release held mail from the CLI:
`airflow dags trigger jira_inbox --conf '{"release_uids": [812, 813]}'` (or `{"release_all": true}`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Param, dag
from jira_mail_sync.history_tasks import ticket_history
from jira_mail_sync.inbox_schedule import inbox_schedule
from jira_mail_sync.inbox_tasks import extract_ticket_keys, mark_mail_seen, report_unsettled_mail
from jira_mail_sync.sensors.unseen_mail import UnseenJiraMailSensor
from jira_mail_sync.settings import read_settings
from jira_mail_sync.ticket_tasks import fetch_tickets, store_tickets

from include.imap_wire import MAX_UID
from include.mail_ledger import DEFAULT_MAX_ATTEMPTS, DEFAULT_RETRY_DELAY, MAX_RETRY_DELAY

# Every [jira_mail_sync] option, parsed now: a bad value is this file's import error in the UI.
SETTINGS = read_settings()


@dag(
    dag_id=Path(__file__).stem,
    doc_md=__doc__,
    schedule=inbox_schedule(SETTINGS.inbox_mode),
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
        "max_attempts": Param(
            DEFAULT_MAX_ATTEMPTS,
            type="integer",
            minimum=1,
            maximum=100,
            title="Attempts before quarantine",
            description=(
                "A message whose ticket keys keep failing is retried in later runs; after this many "
                "failed attempts it is quarantined: never marked seen, never retried until released."
            ),
            section="Mail ledger",
        ),
        "retry_delay_minutes": Param(
            DEFAULT_RETRY_DELAY // timedelta(minutes=1),
            type="number",
            minimum=0,
            maximum=MAX_RETRY_DELAY // timedelta(minutes=1),
            title="First retry delay (minutes)",
            description=(
                "How long a failed message waits before its next try; the wait doubles with each "
                "attempt (at most 6 hours). A waiting message takes no place in a run's window."
            ),
            section="Mail ledger",
        ),
        "release_uids": Param(
            [],
            type="array",
            items={"type": "integer", "minimum": 1, "maximum": MAX_UID},
            maxItems=2000,
            title="Release these UIDs",
            description=(
                "IMAP UIDs of rejected, failed or quarantined mail in this mailbox to try again now, with "
                "fresh attempts (the Jira sync page and the mail ledger table list them)."
            ),
            section="Mail ledger",
        ),
        "release_all": Param(
            False,
            type="boolean",
            title="Release all held mail",
            description="Try every rejected, failed and quarantined message of this mailbox again now.",
            section="Mail ledger",
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
        release_uids="{{ params.release_uids | tojson }}",
        release_all="{{ params.release_all | tojson }}",
        mode="reschedule",
    )
    key_batches = extract_ticket_keys(sensed.output)
    fetched = fetch_tickets.expand(keys=key_batches)
    # A fetch batch that failed outright does not stop the store and the marking of everything else.
    stored = store_tickets.override(trigger_rule="none_skipped")(
        fetched, source="inbox", fail_on_failed_keys=False
    )
    marked = mark_mail_seen(key_batches["settlement"], stored)
    report_unsettled_mail(marked)
    ticket_history(fetched, stored, trigger_rule="none_skipped")


jira_inbox()
