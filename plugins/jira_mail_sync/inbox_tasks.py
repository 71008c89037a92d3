"""TaskFlow tasks of jira_inbox: read unseen Jira mail without flagging it, then settle it once stored."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from datetime import timedelta
from typing import Any

from airflow.sdk import get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from include.imap_inbox import UidValidityChanged
from include.inbox_run import Ledger, settle_mail, take_mail
from include.jira_mail import default_trusted_senders
from include.mail_ledger import DEFAULT_MAX_ATTEMPTS, DEFAULT_RETRY_DELAY
from include.names import DEFAULT_SITE, JIRA_API_POOL
from jira_mail_sync.hooks.imap import ImapInboxHook
from jira_mail_sync.hooks.jira_cloud import JiraCloudHook
from jira_mail_sync.hooks.ticket_store import TicketStoreHook
from jira_mail_sync.settings import read_settings
from jira_mail_sync.ticket_tasks import plan_batches
from jira_mail_sync.xcom_shapes import SensedMail, TakenMailXcom, settled_mail_xcom

log = logging.getLogger(__name__)

# A run may take thousands of keys; the log names the first ones, the XCom holds them all.
LOGGED_KEYS = 50


def _trusted_senders(params: dict[str, Any], site_url: str) -> list[str]:
    configured = [s.strip() for s in (params.get("trusted_senders") or []) if s and s.strip()]
    return configured or default_trusted_senders(site_url)


# With chosen extra fields it checks them against Jira's field list (one request) to size the fetch
# batches, so it takes a jira_api slot like every task that calls Jira.
# The DAG builder gives it the site's pool (.override) and the site's connections as arguments.
@task(pool=JIRA_API_POOL)
def extract_ticket_keys(
    sensed_xcom: dict[str, Any],
    *,
    jira_conn_id: str,
    store_conn_id: str,
    rejected_mailbox: str | None = None,
    site: str = DEFAULT_SITE,
) -> list[list[str]]:
    """Parse the unseen messages' headers and body prefix; record rejected mail and batch the keys.

    It reads the connection and mailbox the sensor sensed (carried in its XCom), not the defaults.
    `rejected_mailbox` is the sites file's folder for rejected mail; None leaves it to the IMAP
    connection's `rejected_mailbox` extra. Its ledger rows are `site`'s, of the sensed connection
    and mailbox.
    Rejected mail goes to the mail ledger as it is found, gets the $JiraRejected label where the
    server keeps keywords, and is moved to the `rejected_mailbox` extra's folder; mail the run's time
    budget does not reach waits for the next run (see include.inbox_run.take_mail). Keys named only
    by retried mail are batched apart from fresh mail's.

    Returns the key batches (what fetch_tickets is mapped over: a mapped task can only expand a
    return value) and pushes the accepted messages under the XCom key `settlement` for mark_mail_seen.
    """
    context = get_current_context()
    params = context["params"]
    site_url = JiraCloudHook(jira_conn_id).site_url
    dry_run = bool(params.get("dry_run"))
    sensed = SensedMail.from_xcom(sensed_xcom)
    imap_hook = ImapInboxHook(sensed.imap_conn_id)
    # A dry run records nothing, so it needs no store.
    store = nullcontext((None, None)) if dry_run else TicketStoreHook(store_conn_id).connect()
    with imap_hook.inbox(sensed.mailbox) as inbox, store as (conn, dialect):
        if inbox.open(readonly=True) != sensed.uidvalidity:
            raise AirflowSkipException("UIDVALIDITY changed since sensing; the next run starts over")
        taken = take_mail(
            inbox,
            None if dry_run else Ledger(conn, dialect, site=site, imap_conn_id=sensed.imap_conn_id),
            sensed.uids,
            mailbox=sensed.mailbox,
            uidvalidity=sensed.uidvalidity,
            trusted_senders=_trusted_senders(params, site_url),
            jira_url=site_url,
            sender_auth=imap_hook.sender_auth(),
            retrying=sensed.retrying,
            rejected_mailbox=rejected_mailbox or imap_hook.rejected_mailbox(sensed.mailbox),
        )
    log.info(
        "%d message(s) accepted, %d rejected; %d distinct key(s)%s: %s",
        len(taken.messages),
        len(taken.rejected),
        len(taken.keys),
        " (dry run: nothing is fetched, stored or marked)" if dry_run else "",
        ", ".join(taken.keys[:LOGGED_KEYS]) + (" …" if len(taken.keys) > LOGGED_KEYS else ""),
    )
    settlement = TakenMailXcom(imap_conn_id=sensed.imap_conn_id, taken=taken, dry_run=dry_run)
    context["ti"].xcom_push(key="settlement", value=settlement.to_xcom())
    if dry_run or not taken.keys:
        return []
    # Keys that failed before get bulk requests of their own: they never hold back fresh mail's keys.
    return plan_batches(
        taken.fresh_keys, taken.retry_keys, jira_conn_id=jira_conn_id, store_conn_id=store_conn_id
    )


def _ledger_settings(params: dict[str, Any]) -> tuple[int, timedelta]:
    max_attempts = params.get("max_attempts")
    minutes = params.get("retry_delay_minutes")
    return (
        DEFAULT_MAX_ATTEMPTS if max_attempts is None else int(max_attempts),
        DEFAULT_RETRY_DELAY if minutes is None else timedelta(minutes=float(minutes)),
    )


@task
def mark_mail_seen(
    settlement: dict[str, Any], stored: dict[str, Any], *, store_conn_id: str, site: str = DEFAULT_SITE
) -> dict[str, Any]:
    """Set \\Seen, in one UID STORE, on the messages whose keys were all stored or confirmed not found.

    It marks the mailbox the messages were read from (carried in the settlement), not a default one,
    and writes that mailbox's ledger rows (`site`, the settlement's connection and folder).
    Then it writes the run to the mail ledger: settled messages, and messages whose keys failed for
    good (one more attempt; quarantined, and labelled for humans where keywords are kept, at
    max_attempts). Messages with a key that a failing batch's split did not reach wait as failed mail
    does, with no attempt counted. Messages with a key whose fetch task failed (Jira did not answer)
    are left unseen and unrecorded, and taken again by the next run.
    """
    run = TakenMailXcom.from_xcom(settlement)
    max_attempts, first_delay = _ledger_settings(get_current_context()["params"])
    with (
        ImapInboxHook(run.imap_conn_id).inbox(run.taken.mailbox) as inbox,
        TicketStoreHook(store_conn_id).connect() as (conn, dialect),
    ):
        try:
            settled = settle_mail(
                inbox,
                Ledger(conn, dialect, site=site, imap_conn_id=run.imap_conn_id),
                run.taken,
                stored,
                max_attempts=max_attempts,
                first_delay=first_delay,
                retention=timedelta(days=read_settings().ledger_retention_days),
            )
        except UidValidityChanged as exc:
            raise AirflowSkipException(
                f"UIDVALIDITY changed since sensing ({exc}); marking nothing, the next run starts over"
            ) from exc
    return settled_mail_xcom(settled)


# Lines of detail in the failure message; the ledger and mark_mail_seen's log hold them all.
REPORTED = 20


@task
def report_unsettled_mail(marked: dict[str, Any]) -> dict[str, int]:
    """Fail the run, for all to see, when some mail could not be settled; the rest is already stored and seen.

    Mail that failed waits in the mail ledger for its next try; quarantined mail waits for a human.
    """
    failed, quarantined, unfinished = marked["failed"], marked["quarantined"], marked["unfinished"]
    counts = {
        "marked_seen": len(marked["marked_seen"]),
        "failed": len(failed),
        "quarantined": len(quarantined),
        "unfinished": len(unfinished),
    }
    if not (failed or quarantined or unfinished):
        log.info("Every message of this run was settled (%d marked seen)", counts["marked_seen"])
        return counts
    lines = [
        *(
            f"uid {e['uid']}: quarantined after {e['attempts']} attempt(s): {e['reason']}"
            for e in quarantined
        ),
        *(
            f"uid {e['uid']}: attempt {e['attempts']} failed, next try at {e['next_try_at']}: {e['reason']}"
            for e in failed
        ),
        *(
            f"uid {e['uid']}: the fetch of {', '.join(e['keys'])} failed (see fetch_tickets), tried next run"
            for e in unfinished
        ),
    ]
    for line in lines:
        log.error("%s", line)
    more = f" (and {len(lines) - REPORTED} more)" if len(lines) > REPORTED else ""
    raise AirflowFailException(
        f"{counts['failed'] + counts['quarantined'] + counts['unfinished']} message(s) left unseen, "
        f"{counts['marked_seen']} marked seen: " + "; ".join(lines[:REPORTED]) + more
    )
