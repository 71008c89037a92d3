"""The XCom values jira_inbox's tasks hand each other: sensed mail, taken mail and settled mail.

Each of the first two carries the IMAP connection id and the mailbox it was read from, so that every
later task opens that same mailbox, never a default one. The typed values are include.inbox_run's;
here is only their XCom form (plain JSON-like values that Airflow's serializer carries).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from include.inbox_run import RejectedMessage, SettledMail, TakenMail, TakenMessage


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


def _message_xcom(message: TakenMessage | RejectedMessage) -> dict[str, Any]:
    return message.ledger_entry()


def _optional_text(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class TakenMailXcom:
    """What mark_mail_seen needs from extract_ticket_keys: the connection, the run's mode and the mail."""

    imap_conn_id: str
    taken: TakenMail
    dry_run: bool = False

    def to_xcom(self) -> dict[str, Any]:
        taken = self.taken
        return {
            "imap_conn_id": self.imap_conn_id,
            "mailbox": taken.mailbox,
            "uidvalidity": taken.uidvalidity,
            "messages": [_message_xcom(m) for m in taken.messages],
            "rejected": [_message_xcom(r) for r in taken.rejected],
            "keys": list(taken.keys),
            "retry_keys": list(taken.retry_keys),
            "left_for_next_run": list(taken.left_for_next_run),
            "dry_run": self.dry_run,
        }

    @classmethod
    def from_xcom(cls, value: dict[str, Any]) -> TakenMailXcom:
        about = ("message_id", "sender", "subject")
        taken = TakenMail(
            mailbox=str(value["mailbox"]),
            uidvalidity=int(value["uidvalidity"]),
            messages=[
                TakenMessage(
                    uid=int(m["uid"]),
                    keys=tuple(str(k) for k in m["keys"]),
                    **{name: _optional_text(m.get(name)) for name in about},
                )
                for m in value["messages"]
            ],
            rejected=[
                RejectedMessage(
                    uid=int(r["uid"]),
                    reason=str(r["reason"]),
                    **{name: _optional_text(r.get(name)) for name in about},
                )
                for r in value.get("rejected", [])
            ],
            keys=[str(k) for k in value.get("keys", [])],
            retry_keys=[str(k) for k in value.get("retry_keys", [])],
            left_for_next_run=[int(u) for u in value.get("left_for_next_run", [])],
        )
        return cls(imap_conn_id=str(value["imap_conn_id"]), taken=taken, dry_run=bool(value.get("dry_run")))


def settled_mail_xcom(settled: SettledMail) -> dict[str, Any]:
    """What report_unsettled_mail reads: UIDs marked seen, and the ledger's outcome for the rest."""
    return {
        "marked_seen": list(settled.marked_seen),
        "left_unseen": list(settled.left_unseen),
        "failed": list(settled.failed),
        "quarantined": list(settled.quarantined),
        "unfinished": [{"uid": m.uid, "keys": list(m.keys)} for m in settled.unfinished],
    }
