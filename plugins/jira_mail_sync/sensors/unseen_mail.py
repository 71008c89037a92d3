"""Sensor that finds UNSEEN Jira mail over IMAP without reading or flagging it, less what the ledger holds."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowSkipException

from include.imap_wire import MAX_UID
from include.inbox_run import Ledger, sense_mail
from include.names import DEFAULT_SITE, IMAP_CONN_ID, STORE_CONN_ID
from jira_mail_sync.hooks.imap import ImapInboxHook
from jira_mail_sync.hooks.ticket_store import TicketStoreHook
from jira_mail_sync.xcom_shapes import SensedMail


def _from_template(value: Any, name: str) -> Any:
    # The DAG renders these with `| tojson`, so a list stays a list and a bool a bool.
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else None
        except ValueError:
            raise ValueError(f"{name} must be JSON, got {value!r}") from None
    return value


def release_request(release_uids: Any, release_all: Any) -> tuple[list[int], bool]:
    """The UIDs and the flag a manual run asked to release, checked: UIDs 1..MAX_UID, a boolean."""
    uids = _from_template(release_uids, "release_uids") or []
    everything = _from_template(release_all, "release_all") or False
    if not isinstance(uids, list) or not all(
        isinstance(uid, int) and not isinstance(uid, bool) and 1 <= uid <= MAX_UID for uid in uids
    ):
        raise ValueError(
            f"release_uids must be a list of positive integers up to {MAX_UID} (IMAP UIDs), got {uids!r}"
        )
    if not isinstance(everything, bool):
        raise ValueError(f"release_all must be true or false, got {everything!r}")
    return uids, everything


class UnseenJiraMailSensor(BaseSensorOperator):
    """Look for UNSEEN messages the mail ledger does not hold, oldest first, at most `max_messages`.

    The search is include.inbox_run.sense_mail's: windows of UIDs (ESEARCH, then
    `UID SEARCH UNSEEN UID a:b`, so any number of unseen messages works in a bounded number of
    commands), leaving out, before the `max_messages` cap, the UIDs the mail ledger (on
    `store_conn_id`) holds in each window as rejected, quarantined or waiting for a retry: nothing
    depends on IMAP keywords, which Exchange Online and keyword-less servers cannot keep. The ledger
    rows are this mailbox's: its `site`, `imap_conn_id` and folder. A manual
    run's `release_uids` / `release_all` are applied first;
    rejected mail that was moved to the rejected mailbox is not released (it is no longer in the
    inbox): the log says where it is, to be moved back by hand. It pushes
    `{"imap_conn_id", "mailbox", "uidvalidity", "uids", "retrying"}` (see xcom_shapes.SensedMail), so
    the tasks after it read and mark the mailbox it sensed. With `skip_when_empty` (the default) an
    empty inbox skips the run at once: the schedule (the IMAP IDLE watcher, or the every-minute cron
    in poll mode) decides when to look, so no worker slot is held waiting for mail.
    """

    template_fields: Sequence[str] = (
        "imap_conn_id",
        "mailbox",
        "max_messages",
        "release_uids",
        "release_all",
    )
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        imap_conn_id: str = IMAP_CONN_ID,
        store_conn_id: str = STORE_CONN_ID,
        mailbox: str = "INBOX",
        max_messages: int | str = 200,
        release_uids: list[int] | str = (),
        release_all: bool | str = False,
        skip_when_empty: bool = True,
        site: str = DEFAULT_SITE,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        # The site whose mail ledger rows this mailbox has (with imap_conn_id and mailbox: its key).
        self.site = site
        self.imap_conn_id = imap_conn_id
        self.store_conn_id = store_conn_id
        self.mailbox = mailbox
        self.max_messages = max_messages
        self.release_uids = release_uids
        self.release_all = release_all
        self.skip_when_empty = skip_when_empty

    def poke(self, context) -> PokeReturnValue | bool:
        limit = int(self.max_messages)
        if limit < 1:
            raise ValueError(f"max_messages must be at least 1, got {limit}")
        release_uids, release_all = release_request(self.release_uids, self.release_all)
        dry_run = bool(context["params"].get("dry_run"))
        if (release_uids or release_all) and dry_run:
            self.log.info("Dry run: releasing nothing")
        with (
            ImapInboxHook(self.imap_conn_id).inbox(self.mailbox) as inbox,
            TicketStoreHook(self.store_conn_id).connect() as (conn, dialect),
        ):
            found = sense_mail(
                inbox,
                Ledger(conn, dialect, site=self.site, imap_conn_id=self.imap_conn_id),
                limit=limit,
                release_uids=release_uids,
                release_all=release_all,
                dry_run=dry_run,
            )
        if (release_uids or release_all) and not dry_run:
            self.log.info(
                "Released %d message(s) from the mail ledger for another try: uids %s%s",
                len(found.released),
                found.released,
                "" if release_all else f" (asked for {release_uids})",
            )
        for entry in found.not_releasable:
            self.log.warning(
                "uid %s was rejected and moved to %s%s: it is not in %s any more, so it is "
                "not released; move it back to %s by hand and it is read again as new mail",
                entry["uid"],
                entry["moved_to"],
                "" if entry["moved_uid"] is None else f" (uid {entry['moved_uid']} there)",
                self.mailbox,
                self.mailbox,
            )
        if found.held_back:
            self.log.info(
                "Leaving out %d message(s) the mail ledger holds (rejected, quarantined or waiting to retry)",
                found.held_back,
            )
        sensed = SensedMail(
            imap_conn_id=self.imap_conn_id,
            mailbox=self.mailbox,
            uidvalidity=found.uidvalidity,
            uids=found.uids,
            retrying=found.retrying,
        )
        if not sensed.uids:
            if self.skip_when_empty:
                raise AirflowSkipException(f"No unseen Jira mail in {self.mailbox}")
            return False
        self.log.info(
            "Found %d unseen message(s) in %s (limit %d), %d of them retried",
            len(sensed.uids),
            self.mailbox,
            limit,
            len(sensed.retrying),
        )
        return PokeReturnValue(is_done=True, xcom_value=sensed.to_xcom())
