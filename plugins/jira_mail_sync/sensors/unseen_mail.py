"""Sensor that finds UNSEEN Jira mail over IMAP without reading or flagging it."""

from __future__ import annotations

from collections.abc import Sequence

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowSkipException

from include.names import IMAP_CONN_ID
from jira_mail_sync.hooks.imap import ImapInboxHook
from jira_mail_sync.xcom_shapes import SensedMail


class UnseenJiraMailSensor(BaseSensorOperator):
    """Look for UNSEEN messages not labelled as rejected, oldest first, at most `max_messages`.

    It runs one `UID SEARCH` and pushes `{"imap_conn_id", "mailbox", "uidvalidity", "uids"}` (see
    xcom_shapes.SensedMail), so the tasks after it read and mark the mailbox it sensed. With
    `skip_when_empty` (the default) an empty inbox skips the run at once: the schedule (the IMAP
    IDLE watcher, or the every-minute cron in poll mode) decides when to look, so no worker slot is
    held waiting for mail.
    """

    template_fields: Sequence[str] = ("imap_conn_id", "mailbox", "max_messages")
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        imap_conn_id: str = IMAP_CONN_ID,
        mailbox: str = "INBOX",
        max_messages: int | str = 200,
        skip_when_empty: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.imap_conn_id = imap_conn_id
        self.mailbox = mailbox
        self.max_messages = max_messages
        self.skip_when_empty = skip_when_empty

    def poke(self, context) -> PokeReturnValue | bool:
        limit = int(self.max_messages)
        if limit < 1:
            raise ValueError(f"max_messages must be at least 1, got {limit}")
        with ImapInboxHook(self.imap_conn_id).inbox(self.mailbox) as inbox:
            sensed = SensedMail(
                imap_conn_id=self.imap_conn_id,
                mailbox=self.mailbox,
                uidvalidity=inbox.open(readonly=True),
                uids=inbox.unseen_uids(limit=limit),
            )
        if not sensed.uids:
            if self.skip_when_empty:
                raise AirflowSkipException(f"No unseen Jira mail in {self.mailbox}")
            return False
        self.log.info("Found %d unseen message(s) in %s (limit %d)", len(sensed.uids), self.mailbox, limit)
        return PokeReturnValue(is_done=True, xcom_value=sensed.to_xcom())
