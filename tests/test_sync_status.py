"""The status page's figures from a real store (SQLite and PostgreSQL) and a real mailbox (Dovecot)."""

from __future__ import annotations

import imaplib
from datetime import UTC, datetime, timedelta

import pytest

from devkit.imap_account import adopt_imaplib
from devkit.mail_factory import jira_notification
from include.imap_inbox import REJECTED_KEYWORD, Inbox
from include.mail_ledger import record_failures, record_rejected, record_settled
from include.names import MAIL_LEDGER_TABLE, TICKET_TABLE
from include.store_db import table_exists
from include.sweep_progress import advance_watermark, get_watermark
from include.sync_status import (
    inbox_figures,
    ledger_figures,
    ticket_figures,
    uids_held_back,
)
from include.ticket_store import ensure_table, mark_gone, upsert_tickets
from tests.harness.tickets import stored_ticket

NOW = datetime.now(UTC).replace(microsecond=0)


def test_tickets_are_counted_by_source_with_the_rows_written_in_the_last_hour(store_backend):
    conn, dialect = store_backend.connect(), store_backend.dialect
    ensure_table(conn, dialect)
    upsert_tickets(
        conn,
        dialect,
        [stored_ticket(updated_at=NOW - timedelta(days=1), key=f"ABC-{n}") for n in (1, 2, 3)],
        source="sweep",
        fetched_at=NOW - timedelta(hours=2),
    )
    upsert_tickets(
        conn,
        dialect,
        [stored_ticket(updated_at=NOW - timedelta(days=1), key=f"OPS-{n}") for n in (1, 2)],
        source="inbox",
        fetched_at=NOW - timedelta(minutes=5),
    )

    figures = ticket_figures(conn, dialect, now=NOW)

    assert figures["total"] == 5
    assert figures["by_source"] == {"inbox": 2, "sweep": 3}
    assert figures["changed_last_hour"] == 2


def test_deleted_rows_are_counted(store_backend):
    conn, dialect = store_backend.connect(), store_backend.dialect
    ensure_table(conn, dialect)
    upsert_tickets(
        conn,
        dialect,
        [stored_ticket("ABC-1", updated_at=NOW), stored_ticket("ABC-2", updated_at=NOW)],
        source="sweep",
        fetched_at=NOW,
    )
    assert ticket_figures(conn, dialect, now=NOW)["deleted"] == 0
    mark_gone(conn, dialect, ["ABC-2"], confirmed_at=NOW)

    assert ticket_figures(conn, dialect, now=NOW)["deleted"] == 1


def test_an_empty_store_reads_as_empty_and_no_table_is_created(store_backend):
    conn, dialect = store_backend.connect(), store_backend.dialect

    assert ticket_figures(conn, dialect, now=NOW) == {
        "total": 0,
        "by_source": {},
        "changed_last_hour": 0,
        "deleted": None,
    }
    assert get_watermark(conn, dialect) is None
    assert ledger_figures(conn, dialect) == {
        "rejected": 0,
        "failed": 0,
        "quarantined": 0,
        "settled": 0,
        "entries": [],
    }
    assert uids_held_back(conn, dialect, mailbox="INBOX", uidvalidity=1, uids=[1, 2], now=NOW) == set()
    assert not table_exists(conn, dialect, TICKET_TABLE)
    assert not table_exists(conn, dialect, MAIL_LEDGER_TABLE)


def test_the_watermark_is_the_sweeps(store_backend):
    conn, dialect = store_backend.connect(), store_backend.dialect
    advance_watermark(conn, dialect, NOW - timedelta(minutes=15))
    assert get_watermark(conn, dialect) == NOW - timedelta(minutes=15)


def test_ledger_counts_every_state_and_lists_only_held_back_mail_newest_first(store_backend):
    conn, dialect = store_backend.connect(), store_backend.dialect
    # Written as the DAG writes them: through the mail ledger's own record functions.
    box = {"mailbox": "INBOX", "uidvalidity": 7}
    record_rejected(
        conn,
        dialect,
        **box,
        entries=[
            {
                "uid": 1,
                "sender": "mallory@evil.example",
                "subject": "[JIRA] (ABC-1) spoofed",
                "reason": "untrusted sender",
            }
        ],
        now=NOW - timedelta(hours=3),
    )
    poison = {
        "uid": 2,
        "sender": "jira@acme.atlassian.net",
        "subject": "[JIRA] (ABC-2) poison",
        "keys": ["ABC-2"],
        "reason": "HTTP 400 from Jira",
    }
    for minutes_later in range(5):  # the fifth failure of five allowed quarantines it
        (outcome,) = record_failures(
            conn,
            dialect,
            **box,
            entries=[poison],
            now=NOW - timedelta(hours=1, minutes=4 - minutes_later),
            max_attempts=5,
        )
    assert (outcome["state"], outcome["attempts"]) == ("quarantined", 5)
    record_failures(
        conn, dialect, **box, entries=[{"uid": 3, "keys": ["ABC-3"], "reason": "HTTP 503"}], now=NOW
    )
    record_settled(
        conn, dialect, **box, entries=[{"uid": 4, "keys": ["ABC-4"]}, {"uid": 5, "keys": ["ABC-5"]}], now=NOW
    )

    figures = ledger_figures(conn, dialect)

    assert {state: figures[state] for state in ("rejected", "quarantined", "failed", "settled")} == {
        "rejected": 1,
        "quarantined": 1,
        "failed": 1,
        "settled": 2,
    }
    assert [(e["uid"], e["state"]) for e in figures["entries"]] == [(2, "quarantined"), (1, "rejected")]
    quarantined = figures["entries"][0]
    assert (quarantined["reason"], quarantined["attempts"], quarantined["sender"]) == (
        "HTTP 400 from Jira",
        5,
        "jira@acme.atlassian.net",
    )
    assert quarantined["ticket_keys"] == ["ABC-2"]
    # Failed mail is held back while it waits for its next try (5 minutes after the first failure).
    assert uids_held_back(conn, dialect, **box, uids=[1, 2, 3, 4, 9], now=NOW) == {1, 2, 3}
    later = NOW + timedelta(minutes=5)
    assert uids_held_back(conn, dialect, **box, uids=[1, 2, 3, 4, 9], now=later) == {1, 2}
    # Another UIDVALIDITY is another mailbox generation: its UIDs name other messages.
    assert uids_held_back(conn, dialect, mailbox="INBOX", uidvalidity=8, uids=[1, 2], now=NOW) == set()


def _append_at(session: imaplib.IMAP4, raw: bytes, arrived: datetime, flags: str | None = None) -> None:
    typ, data = session.append("INBOX", flags, imaplib.Time2Internaldate(arrived.timestamp()), raw)
    assert typ == "OK", data


def test_inbox_counts_waiting_mail_and_the_age_of_the_oldest_without_reading_it(imap_account):
    session = imap_account.connect()
    _append_at(session, jira_notification("ABC-1"), NOW - timedelta(hours=5), "\\Seen")
    # A label alone holds nothing back (the sensor ignores keywords): only the ledger does.
    _append_at(session, jira_notification("ABC-2"), NOW - timedelta(hours=4), REJECTED_KEYWORD)
    _append_at(session, jira_notification("ABC-3"), NOW - timedelta(hours=3))  # held back by the ledger
    _append_at(session, jira_notification("ABC-4"), NOW - timedelta(hours=2))
    _append_at(session, jira_notification("ABC-5"), NOW - timedelta(minutes=1))
    flags_before = imap_account.flags_by_uid()
    held_uid = sorted(flags_before)[2]
    asked = []

    def held(uidvalidity: int, uids: list[int]) -> set[int]:
        asked.append((uidvalidity, sorted(uids)))
        return {held_uid}

    with Inbox(adopt_imaplib(imap_account.connect())) as inbox:
        figures = inbox_figures(inbox, now=NOW, held=held)

    assert figures["unseen"] == 3
    assert figures["oldest_unseen_age_seconds"] == pytest.approx(4 * 3600, abs=2)
    assert asked == [(imap_account.uidvalidity(), sorted(flags_before)[1:])]
    assert imap_account.flags_by_uid() == flags_before


def test_an_empty_inbox_has_no_oldest_mail(imap_account):
    with Inbox(adopt_imaplib(imap_account.connect())) as inbox:
        figures = inbox_figures(inbox, now=NOW)
    assert (figures["unseen"], figures["oldest_unseen_age_seconds"]) == (0, None)
