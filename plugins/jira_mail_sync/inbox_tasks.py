"""TaskFlow tasks of jira_inbox: read unseen Jira mail without flagging it, then settle it once stored."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import conf, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from include.imap_inbox import QUARANTINED_KEYWORD, UidValidityChanged
from include.jira_mail import default_trusted_senders
from include.mail_ledger import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_RETRY_DELAY,
    RETENTION_OPTION,
    record_failures,
    record_rejected,
    record_settled,
    retention_setting,
)
from include.names import CONFIG_SECTION, JIRA_API_POOL
from include.rejected_mail import set_rejected_aside
from include.sync_pipeline import extract_keys, label, settle
from jira_mail_sync.hooks.imap import ImapInboxHook
from jira_mail_sync.hooks.jira_cloud import JiraCloudHook
from jira_mail_sync.hooks.ticket_store import TicketStoreHook
from jira_mail_sync.ticket_tasks import plan_batches
from jira_mail_sync.xcom_shapes import SensedMail, settlement_xcom

log = logging.getLogger(__name__)

# A run may take thousands of keys; the log names the first ones, the XCom holds them all.
LOGGED_KEYS = 50


def _trusted_senders(params: dict[str, Any], site_url: str) -> list[str]:
    configured = [s.strip() for s in (params.get("trusted_senders") or []) if s and s.strip()]
    return configured or default_trusted_senders(site_url)


# With chosen extra fields it checks them against Jira's field list (one request) to size the fetch
# batches, so it takes a jira_api slot like every task that calls Jira.
@task(pool=JIRA_API_POOL)
def extract_ticket_keys(sensed_xcom: dict[str, Any]) -> list[list[str]]:
    """Parse the unseen messages' headers and body prefix; record rejected mail and batch the keys.

    It reads the connection and mailbox the sensor sensed (carried in its XCom), not the defaults.
    Rejected mail goes to the mail ledger (and gets the $JiraRejected label where the server keeps
    keywords), then is moved to the `rejected_mailbox` extra's folder (include/rejected_mail.py).
    Keys named only by retried mail are batched apart from fresh mail's keys.

    Returns the key batches (what fetch_tickets is mapped over: a mapped task can only expand a
    return value) and pushes the accepted messages under the XCom key `settlement` for mark_mail_seen.
    """
    context = get_current_context()
    params = context["params"]
    site_url = JiraCloudHook().site_url
    trusted = _trusted_senders(params, site_url)
    dry_run = bool(params.get("dry_run"))
    sensed = SensedMail.from_xcom(sensed_xcom)
    imap_hook = ImapInboxHook(sensed.imap_conn_id)
    sender_auth = imap_hook.sender_auth()
    rejected_mailbox = imap_hook.rejected_mailbox(sensed.mailbox)
    with imap_hook.inbox(sensed.mailbox) as inbox:
        if inbox.open(readonly=True) != sensed.uidvalidity:
            raise AirflowSkipException("UIDVALIDITY changed since sensing; the next run starts over")
        extraction = extract_keys(
            inbox,
            sensed.uids,
            uidvalidity=sensed.uidvalidity,
            trusted_senders=trusted,
            jira_url=site_url,
            label_rejected=not dry_run,
            sender_auth=sender_auth,
            retrying=sensed.retrying,
        )
        if extraction.rejected and not dry_run:
            # Before anything else can fail: rejected mail must leave the window even if the fetch breaks.
            with TicketStoreHook().connect() as (conn, dialect):
                record_rejected(
                    conn,
                    dialect,
                    mailbox=sensed.mailbox,
                    uidvalidity=sensed.uidvalidity,
                    entries=extraction.rejected,
                    now=datetime.now(UTC),
                )
                set_rejected_aside(
                    inbox,
                    conn,
                    dialect,
                    uids=[r["uid"] for r in extraction.rejected],
                    uidvalidity=sensed.uidvalidity,
                    destination=rejected_mailbox,
                )
    log.info(
        "%d message(s) accepted, %d rejected; %d distinct key(s)%s: %s",
        len(extraction.messages),
        len(extraction.rejected),
        len(extraction.keys),
        " (dry run: nothing is fetched, stored or marked)" if dry_run else "",
        ", ".join(extraction.keys[:LOGGED_KEYS]) + (" …" if len(extraction.keys) > LOGGED_KEYS else ""),
    )
    context["ti"].xcom_push(key="settlement", value=settlement_xcom(sensed, extraction, dry_run=dry_run))
    if dry_run or not extraction.keys:
        return []
    retry_keys = set(extraction.retry_keys)
    fresh = [key for key in extraction.keys if key not in retry_keys]
    # Keys that failed before get bulk requests of their own: they never hold back fresh mail's keys.
    return plan_batches(fresh, extraction.retry_keys)


def ledger_retention() -> timedelta:
    """`[jira_mail_sync] ledger_retention_days` (default 30): how long settled and rejected rows stay."""
    return retention_setting(conf.get(CONFIG_SECTION, RETENTION_OPTION, fallback=None))


def _ledger_settings(params: dict[str, Any]) -> tuple[int, timedelta]:
    max_attempts = params.get("max_attempts")
    minutes = params.get("retry_delay_minutes")
    return (
        DEFAULT_MAX_ATTEMPTS if max_attempts is None else int(max_attempts),
        DEFAULT_RETRY_DELAY if minutes is None else timedelta(minutes=float(minutes)),
    )


@task
def mark_mail_seen(settlement: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    """Set \\Seen, in one UID STORE, on the messages whose keys were all stored or confirmed not found.

    It marks the mailbox the messages were read from (carried in the settlement), not a default one.
    Then it writes the run to the mail ledger: settled messages, and messages whose keys failed for
    good (one more attempt; quarantined, and labelled for humans where keywords are kept, at
    max_attempts). Messages with a key that a failing batch's split did not reach wait as failed mail
    does, with no attempt counted. Messages with a key whose fetch task failed (Jira did not answer)
    are left unseen and unrecorded, and taken again by the next run.
    """
    messages, uidvalidity = settlement["messages"], settlement["uidvalidity"]
    mailbox = settlement["mailbox"]
    plan = settle(messages, stored)
    uids = sorted(int(m["uid"]) for m in plan.settled)
    left_unseen = sorted(int(m["uid"]) for m in [*plan.failed, *plan.deferred, *plan.unfinished])
    if left_unseen:
        log.warning("Leaving %d message(s) UNSEEN: uids %s", len(left_unseen), left_unseen)
    max_attempts, first_delay = _ledger_settings(get_current_context()["params"])
    with ImapInboxHook(settlement["imap_conn_id"]).inbox(mailbox) as inbox:
        try:
            marked = inbox.mark_seen(uids, expected_uidvalidity=uidvalidity)
        except UidValidityChanged as exc:
            raise AirflowSkipException(
                f"UIDVALIDITY changed since sensing ({exc}); marking nothing, the next run starts over"
            ) from exc
        log.info("Marked %d message(s) seen", len(marked))
        now = datetime.now(UTC)
        with TicketStoreHook().connect() as (conn, dialect):
            where = {"mailbox": mailbox, "uidvalidity": uidvalidity, "now": now}
            record_settled(conn, dialect, entries=plan.settled, retention=ledger_retention(), **where)
            outcome = record_failures(
                conn,
                dialect,
                entries=plan.failed,
                max_attempts=max_attempts,
                first_delay=first_delay,
                **where,
            )
            # Not reached this run: they wait like failed mail, so they leave the window to the mail
            # behind them, but no attempt is counted against them.
            deferred = record_failures(
                conn, dialect, entries=plan.deferred, first_delay=first_delay, count_attempt=False, **where
            )
        quarantined = [o for o in outcome if o["state"] == "quarantined"]
        label(inbox, [o["uid"] for o in quarantined], QUARANTINED_KEYWORD, uidvalidity=uidvalidity)
    for entry in quarantined:
        log.error(
            "Quarantined uid %s after %s attempt(s): keys %s; last error: %s. It stays unseen and is not "
            "retried until a run releases it (release_uids).",
            entry["uid"],
            entry["attempts"],
            ", ".join(entry["keys"]),
            entry["reason"],
        )
    return {
        "marked_seen": marked,
        "left_unseen": left_unseen,
        "failed": [o for o in [*outcome, *deferred] if o["state"] == "failed"],
        "quarantined": quarantined,
        "unfinished": [{"uid": m["uid"], "keys": m["keys"]} for m in plan.unfinished],
    }


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
