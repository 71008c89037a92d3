"""TaskFlow tasks of jira_inbox: read unseen Jira mail without flagging it, then settle it once stored."""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from include.imap_inbox import UidValidityChanged
from include.jira_mail import default_trusted_senders
from include.names import JIRA_API_POOL
from include.sync_pipeline import extract_keys, settled_uids
from jira_mail_sync.hooks.imap import ImapInboxHook
from jira_mail_sync.hooks.jira_cloud import JiraCloudHook
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
    """Parse the unseen messages' headers and body prefix; label rejected mail and batch the keys.

    It reads the connection and mailbox the sensor sensed (carried in its XCom), not the defaults.

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
    return [] if dry_run else plan_batches(extraction.keys)


@task
def mark_mail_seen(settlement: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    """Set \\Seen, in one UID STORE, on the messages whose keys were all stored or confirmed not found.

    It marks the mailbox the messages were read from (carried in the settlement), not a default one.
    """
    messages, uidvalidity = settlement["messages"], settlement["uidvalidity"]
    handled = [*stored.get("stored", []), *stored.get("not_found", [])]
    uids = settled_uids(messages, handled)
    unsettled = sorted({int(m["uid"]) for m in messages} - set(uids))
    if unsettled:
        log.warning("Leaving %d message(s) UNSEEN for the next run: uids %s", len(unsettled), unsettled)
    with ImapInboxHook(settlement["imap_conn_id"]).inbox(settlement["mailbox"]) as inbox:
        try:
            marked = inbox.mark_seen(uids, expected_uidvalidity=uidvalidity)
        except UidValidityChanged as exc:
            raise AirflowSkipException(
                f"UIDVALIDITY changed since sensing ({exc}); marking nothing, the next run starts over"
            ) from exc
    log.info("Marked %d message(s) seen", len(marked))
    return {"marked_seen": marked, "left_unseen": unsettled}
