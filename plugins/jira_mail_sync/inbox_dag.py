"""The inbox DAG of one site and mailbox, built from one definition for the plain site and every entry
of the sites file (dags/jira_inbox.py, dags/jira_sites.py).

The tasks get the site's connections as arguments and its pool through `.override(pool=...)`, so
nothing in a run falls back on the plain connections of include/names.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Param, dag

from include.imap_inbox import DEFAULT_REJECTED_MAILBOX
from include.imap_wire import MAX_UID
from include.mail_ledger import DEFAULT_MAX_ATTEMPTS, DEFAULT_RETRY_DELAY, MAX_RETRY_DELAY
from include.sites import DAG_ID_SEPARATOR, Mailbox, Site
from jira_mail_sync.assets import ticket_asset
from jira_mail_sync.history_tasks import ticket_history
from jira_mail_sync.inbox_schedule import inbox_schedule, unseen_mail_asset
from jira_mail_sync.inbox_tasks import extract_ticket_keys, mark_mail_seen, report_unsettled_mail
from jira_mail_sync.sensors.unseen_mail import UnseenJiraMailSensor
from jira_mail_sync.settings import Settings
from jira_mail_sync.ticket_tasks import fetch_tickets, store_tickets

# The doc_md of every inbox DAG; the names in braces are the DAG's own.
INBOX_DOC = """
### Jira inbox: unseen Jira notification mail → ticket details in the store

Jira mails a notification for every new or updated ticket. This DAG runs within seconds of such
mail arriving (an IMAP IDLE watcher in the triggerer), and every 10 minutes in case a connection was
lost; with `[jira_mail_sync] inbox_mode = poll` it runs every minute instead. Each run:

1. **wait_for_unseen_mail** searches the unseen mail on `{imap_conn_id}` in windows of UIDs (any
   number of unseen messages costs a few IMAP commands), leaves out the mail the **mail ledger**
   (`jira_mail_ledger` on `{store_conn_id}`) holds as rejected, quarantined or waiting for a retry, and
   takes the oldest `max_messages` of the rest. An empty inbox skips the run at once. A manual run's
   `release_uids` / `release_all` put held mail back into play first.
2. **extract_ticket_keys** peeks at headers and a bounded body prefix (`BODY.PEEK`, nothing is
   marked seen), trusts only `trusted_senders` (default `jira@<host of {jira_conn_id}>`), takes the
   ticket keys, and records rejected mail in the ledger as it goes, whatever its bytes, then moves
   it to the `rejected_mailbox` folder ({rejected}; labelled `$JiraRejected` where the server
   keeps keywords). Keys are de-duplicated; keys of retried mail get batches of their own.
3. **fetch_tickets** is mapped over batches of up to 1000 keys (100 when a chosen extra field is
   multi-valued): one Jira bulk fetch each, labelled with its keys in the UI. A key Jira leaves out
   is asked for on its own: a move to a new key is followed, a 404 confirms it gone. A batch that
   keeps failing is split until the failing keys stand alone: they are reported, the rest is fetched.
4. **store_tickets** upserts the details into `jira_ticket` on `{store_conn_id}` (one row per Jira issue;
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
`airflow dags trigger {dag_id} --conf '{{"release_uids": [812, 813]}}'` (or `{{"release_all": true}}`).
"""


def inbox_doc(site: Site, mailbox: Mailbox) -> str:
    rejected = (
        f"`{mailbox.rejected_mailbox}`" if mailbox.rejected_mailbox else f"`{DEFAULT_REJECTED_MAILBOX}`"
    )
    text = INBOX_DOC.format(
        dag_id=site.inbox_dag_id(mailbox),
        imap_conn_id=mailbox.imap_conn_id,
        store_conn_id=site.store_conn_id,
        jira_conn_id=site.jira_conn_id,
        rejected=rejected,
    )
    where = f", mailbox `{mailbox.mailbox}` on `{mailbox.imap_conn_id}`: {site.connections_text()}."
    return site.doc_naming_it(text, where)


def inbox_params(site: Site, mailbox: Mailbox) -> dict[str, Param]:
    """The params of an inbox DAG; the mailbox and trusted senders default to the site's."""
    return {
        "mailbox": Param(
            mailbox.mailbox,
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
            list(mailbox.trusted_senders),
            type=["null", "array"],
            items={"type": "string", "minLength": 3, "maxLength": 254},
            maxItems=50,
            title="Trusted senders",
            description=(
                "Addresses (jira@acme.atlassian.net) or exact domains (acme.atlassian.net) whose mail is "
                f"trusted. Empty means jira@<host of the {site.jira_conn_id} connection>."
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
    }


def inbox_tags(site: Site) -> list[str]:
    tags = ["jira", "imap", "inbox"]
    return tags if site.plain else [*tags, f"site:{site.name}"]


def build_inbox_dag(site: Site, mailbox: Mailbox, *, settings: Settings, fileloc: str) -> DAG:
    """The inbox DAG of `mailbox` on `site`, as if written in the DAG file `fileloc`."""
    mode = mailbox.inbox_mode or settings.inbox_mode
    # The plain site keeps today's asset and watcher names; a site's mailbox gets its own.
    suffix = "" if site.plain else DAG_ID_SEPARATOR + DAG_ID_SEPARATOR.join((site.name, mailbox.slug))
    asset = unseen_mail_asset(
        mailbox.imap_conn_id, mailbox.mailbox, suffix=suffix, store_conn_id=site.store_conn_id, site=site.name
    )
    pooled: dict[str, Any] = {"pool": site.pool}

    @dag(
        dag_id=site.inbox_dag_id(mailbox),
        doc_md=inbox_doc(site, mailbox),
        schedule=inbox_schedule(mode, asset),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        dagrun_timeout=timedelta(minutes=15),
        tags=inbox_tags(site),
        default_args={
            "owner": "integrations",
            "retries": 2,
            "retry_delay": timedelta(seconds=20),
            "execution_timeout": timedelta(minutes=10),
        },
        params=inbox_params(site, mailbox),
    )
    def jira_inbox():
        sensed = UnseenJiraMailSensor(
            task_id="wait_for_unseen_mail",
            imap_conn_id=mailbox.imap_conn_id,
            store_conn_id=site.store_conn_id,
            mailbox="{{ params.mailbox }}",
            max_messages="{{ params.max_messages }}",
            release_uids="{{ params.release_uids | tojson }}",
            release_all="{{ params.release_all | tojson }}",
            mode="reschedule",
            site=site.name,
        )
        key_batches = extract_ticket_keys.override(**pooled)(
            sensed.output,
            jira_conn_id=site.jira_conn_id,
            store_conn_id=site.store_conn_id,
            rejected_mailbox=mailbox.rejected_mailbox,
            site=site.name,
        )
        fetched = (
            fetch_tickets.override(**pooled)
            .partial(jira_conn_id=site.jira_conn_id, store_conn_id=site.store_conn_id)
            .expand(keys=key_batches)
        )
        # A fetch batch that failed outright does not stop the store and the marking of everything else.
        stored = store_tickets.override(
            trigger_rule="none_skipped", outlets=[ticket_asset(site.store_conn_id)]
        )(
            fetched,
            source="inbox",
            fail_on_failed_keys=False,
            store_conn_id=site.store_conn_id,
            site=site.name,
        )
        marked = mark_mail_seen(
            key_batches["settlement"], stored, store_conn_id=site.store_conn_id, site=site.name
        )
        report_unsettled_mail(marked)
        ticket_history(
            fetched,
            stored,
            trigger_rule="none_skipped",
            jira_conn_id=site.jira_conn_id,
            store_conn_id=site.store_conn_id,
            pool=site.pool,
            site=site.name,
        )

    built = jira_inbox()
    # The @dag decorator takes this module for the DAG's file; the task runner must parse the DAG file.
    built.fileloc = fileloc
    return built
