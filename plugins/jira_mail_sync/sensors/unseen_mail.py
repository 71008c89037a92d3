"""Sensor that finds UNSEEN Jira mail over IMAP without reading or flagging it."""

from __future__ import annotations

from collections.abc import Sequence

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowSkipException

from include.sync_pipeline import sense_unseen
from jira_mail_sync.hooks.imap import BoundedImapHook


class UnseenJiraMailSensor(BaseSensorOperator):
    """Look for UNSEEN messages not labelled as rejected, oldest first, at most `max_messages`.

    It runs one `UID SEARCH` and pushes `{"uidvalidity", "uids"}`. With `skip_when_empty` (the
    default) an empty inbox skips the run at once: the every-minute schedule is the polling loop,
    so no worker slot is held waiting for mail.
    """

    template_fields: Sequence[str] = ("mailbox", "max_messages")
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        imap_conn_id: str = BoundedImapHook.default_conn_name,
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
        with BoundedImapHook(self.imap_conn_id).inbox(self.mailbox) as inbox:
            sensed = sense_unseen(inbox, limit=limit)
        if not sensed.uids:
            if self.skip_when_empty:
                raise AirflowSkipException(f"No unseen Jira mail in {self.mailbox}")
            return False
        self.log.info("Found %d unseen message(s) in %s (limit %d)", len(sensed.uids), self.mailbox, limit)
        return PokeReturnValue(
            is_done=True, xcom_value={"uidvalidity": sensed.uidvalidity, "uids": sensed.uids}
        )
