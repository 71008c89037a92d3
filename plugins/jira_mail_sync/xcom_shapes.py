"""The XCom values jira_inbox's tasks hand each other: sensed mail and the settlement, with their mailbox.

Each carries the IMAP connection id and the mailbox it was read from, so that every later task
opens that same mailbox, never a default one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from include.sync_pipeline import Extraction


@dataclass(frozen=True)
class SensedMail:
    """What the sensor found: unseen UIDs under one UIDVALIDITY of one mailbox on one connection.

    `retrying` are those of `uids` that failed in an earlier run and are due again (the mail ledger).
    """

    imap_conn_id: str
    mailbox: str
    uidvalidity: int
    uids: list[int]
    retrying: list[int] = field(default_factory=list)

    def to_xcom(self) -> dict[str, Any]:
        return {
            "imap_conn_id": self.imap_conn_id,
            "mailbox": self.mailbox,
            "uidvalidity": self.uidvalidity,
            "uids": list(self.uids),
            "retrying": list(self.retrying),
        }

    @classmethod
    def from_xcom(cls, value: dict[str, Any]) -> SensedMail:
        return cls(
            imap_conn_id=str(value["imap_conn_id"]),
            mailbox=str(value["mailbox"]),
            uidvalidity=int(value["uidvalidity"]),
            uids=[int(uid) for uid in value["uids"]],
            retrying=[int(uid) for uid in value.get("retrying", [])],
        )


def settlement_xcom(sensed: SensedMail, extraction: Extraction, *, dry_run: bool) -> dict[str, Any]:
    """What mark_mail_seen needs: where the mail is, and which messages named which keys."""
    return {
        "imap_conn_id": sensed.imap_conn_id,
        "mailbox": sensed.mailbox,
        "uidvalidity": extraction.uidvalidity,
        "messages": extraction.messages,
        "rejected": extraction.rejected,
        "keys": extraction.keys,
        "dry_run": dry_run,
    }
