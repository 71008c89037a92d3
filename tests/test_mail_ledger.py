"""include.mail_ledger on real SQLite and PostgreSQL: states, backoff, quarantine, release, batched writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from devkit.counting_db import CountingConnection
from include import mail_ledger
from include.mail_ledger import (
    TABLE,
    count_by_state,
    ensure_table,
    excluded_uids,
    held_uids,
    list_entries,
    moved_away,
    record_failures,
    record_moved,
    record_rejected,
    record_settled,
    release,
    retry_delay,
)
from include.names import MAIL_LEDGER_TABLE
from include.store_db import table_columns, table_exists

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
BOX = {"mailbox": "INBOX", "uidvalidity": 1764662400}
MINUTE = timedelta(minutes=1)


@pytest.fixture
def ledger(store_backend):
    conn = store_backend.connect()
    return conn, store_backend.dialect


def _failing(uid: int, key: str = "BAD-1", reason: str = "HTTP 500 from Jira") -> dict:
    return {"uid": uid, "keys": [key], "reason": reason, "subject": f"[JIRA] ({key}) mail {uid}"}


def _all_rows(conn) -> list[tuple]:
    cursor = conn.cursor()
    cursor.execute(
        f"SELECT mailbox, uidvalidity, uid, state, attempts FROM {TABLE} ORDER BY uidvalidity, uid"
    )
    rows = cursor.fetchall()
    conn.commit()
    return [tuple(int(v) if isinstance(v, int) else v for v in row) for row in rows]


def test_the_table_name_is_the_shared_constant():
    assert TABLE == MAIL_LEDGER_TABLE == "jira_mail_ledger"


def test_an_empty_ledger_counts_zero_in_every_state_and_reading_creates_no_table(ledger):
    assert count_by_state(*ledger) == {"rejected": 0, "failed": 0, "quarantined": 0, "settled": 0}
    assert list_entries(*ledger, states=["failed"]) == []
    assert not table_exists(*ledger, TABLE)
    ensure_table(*ledger)
    assert count_by_state(*ledger) == {"rejected": 0, "failed": 0, "quarantined": 0, "settled": 0}


def test_rejected_mail_is_excluded_and_listed_with_its_reason(ledger):
    record_rejected(
        *ledger,
        **BOX,
        entries=[{"uid": 7, "reason": "untrusted sender", "sender": "eve@evil.test", "subject": "x" * 300}],
        now=T0,
    )
    assert excluded_uids(*ledger, "INBOX", BOX["uidvalidity"], T0) == {7}
    (entry,) = list_entries(*ledger, states=["rejected"])
    assert entry["uid"] == 7 and entry["state"] == "rejected" and entry["reason"] == "untrusted sender"
    assert entry["sender"] == "eve@evil.test"
    assert len(entry["subject"]) == 200 and entry["subject"].endswith("…")
    assert entry["first_seen_at"] == T0 and entry["updated_at"] == T0 and entry["attempts"] == 0


def test_a_failure_waits_a_doubling_delay_then_is_quarantined_at_max_attempts(ledger):
    now = T0
    for attempt in range(1, 4):
        (outcome,) = record_failures(
            *ledger, **BOX, entries=[_failing(5)], now=now, max_attempts=4, first_delay=MINUTE
        )
        assert outcome["state"] == "failed" and outcome["attempts"] == attempt
        due = now + MINUTE * 2 ** (attempt - 1)
        assert outcome["next_try_at"] == due.isoformat()
        # Waiting: out of the window; due: back in it (as a retry).
        assert held_uids(*ledger, **BOX, now=due - timedelta(seconds=1)) == {
            "excluded": {5},
            "retrying": set(),
        }
        assert held_uids(*ledger, **BOX, now=due) == {"excluded": set(), "retrying": {5}}
        now = due
    (outcome,) = record_failures(
        *ledger, **BOX, entries=[_failing(5)], now=now, max_attempts=4, first_delay=MINUTE
    )
    assert outcome == {
        "uid": 5,
        "state": "quarantined",
        "attempts": 4,
        "next_try_at": None,
        "keys": ["BAD-1"],
        "reason": "HTTP 500 from Jira",
    }
    assert excluded_uids(*ledger, "INBOX", BOX["uidvalidity"], now + timedelta(days=365)) == {5}
    assert count_by_state(*ledger) == {"rejected": 0, "failed": 0, "quarantined": 1, "settled": 0}
    (entry,) = list_entries(*ledger, states=["quarantined"])
    assert entry["ticket_keys"] == ["BAD-1"] and entry["next_try_at"] is None
    assert entry["first_seen_at"] == T0 and entry["updated_at"] == now


def test_mail_not_reached_waits_without_an_attempt_counted_and_is_never_quarantined_for_it(ledger):
    record_failures(*ledger, **BOX, entries=[_failing(5)], now=T0, max_attempts=2, first_delay=MINUTE)
    for _ in range(3):
        (outcome,) = record_failures(
            *ledger,
            **BOX,
            entries=[_failing(5), _failing(6)][:1],
            now=T0,
            max_attempts=2,
            count_attempt=False,
        )
        assert (outcome["state"], outcome["attempts"]) == ("failed", 1)
    (fresh,) = record_failures(
        *ledger, **BOX, entries=[_failing(6)], now=T0, first_delay=MINUTE, count_attempt=False
    )
    assert (fresh["state"], fresh["attempts"], fresh["next_try_at"]) == (
        "failed",
        0,
        (T0 + MINUTE).isoformat(),
    )
    assert excluded_uids(*ledger, "INBOX", BOX["uidvalidity"], T0) == {5, 6}


def test_the_retry_delay_doubles_up_to_its_cap():
    assert [retry_delay(n, MINUTE) for n in (1, 2, 3)] == [MINUTE, 2 * MINUTE, 4 * MINUTE]
    assert retry_delay(10_000, MINUTE) == mail_ledger.MAX_RETRY_DELAY
    with pytest.raises(ValueError, match="at least 1"):
        retry_delay(0, MINUTE)


def test_release_puts_quarantined_and_rejected_mail_back_with_fresh_attempts(ledger):
    record_rejected(*ledger, **BOX, entries=[{"uid": 1, "reason": "no ticket key"}], now=T0)
    record_failures(*ledger, **BOX, entries=[_failing(2), _failing(3)], now=T0, max_attempts=1)
    record_settled(*ledger, **BOX, entries=[{"uid": 4, "keys": ["OK-1"]}], now=T0)
    assert excluded_uids(*ledger, "INBOX", BOX["uidvalidity"], T0) == {1, 2, 3}

    assert release(*ledger, **BOX, now=T0 + MINUTE, uids=[2, 4, 99]) == [2]
    assert held_uids(*ledger, **BOX, now=T0 + MINUTE) == {"excluded": {1, 3}, "retrying": {2}}
    (released,) = [e for e in list_entries(*ledger, states=["failed"]) if e["uid"] == 2]
    assert (
        released["attempts"] == 0
        and released["reason"] == "released by a manual run (was quarantined: HTTP 500 from Jira)"
    )

    assert release(*ledger, **BOX, now=T0 + MINUTE, release_all=True) == [1, 2, 3]
    assert held_uids(*ledger, **BOX, now=T0 + MINUTE) == {"excluded": set(), "retrying": {1, 2, 3}}
    assert count_by_state(*ledger)["settled"] == 1
    # A released message fails anew from attempt 1, and is quarantined again at max_attempts.
    (again,) = record_failures(*ledger, **BOX, entries=[_failing(2)], now=T0 + 2 * MINUTE, max_attempts=2)
    assert again["attempts"] == 1 and again["state"] == "failed"


def test_release_with_nothing_named_releases_nothing(ledger):
    record_rejected(*ledger, **BOX, entries=[{"uid": 1, "reason": "no ticket key"}], now=T0)
    assert release(*ledger, **BOX, now=T0) == []
    assert excluded_uids(*ledger, "INBOX", BOX["uidvalidity"], T0) == {1}


def test_rows_of_an_earlier_uidvalidity_are_kept_but_never_match_the_new_mailbox(ledger):
    record_failures(*ledger, **BOX, entries=[_failing(1)], now=T0, max_attempts=1)
    renewed = {"mailbox": "INBOX", "uidvalidity": BOX["uidvalidity"] + 1}
    assert excluded_uids(*ledger, renewed["mailbox"], renewed["uidvalidity"], T0) == set()
    assert release(*ledger, **renewed, now=T0, release_all=True) == []
    record_settled(*ledger, **renewed, entries=[{"uid": 1, "keys": ["OK-1"]}], now=T0)
    conn, _ = ledger
    assert _all_rows(conn) == [
        ("INBOX", BOX["uidvalidity"], 1, "quarantined", 1),
        ("INBOX", renewed["uidvalidity"], 1, "settled", 0),
    ]


def test_settling_a_retried_message_keeps_its_attempts_and_a_rerun_adds_no_rows(ledger):
    record_failures(*ledger, **BOX, entries=[_failing(3)], now=T0)
    for _ in range(2):
        record_settled(
            *ledger, **BOX, entries=[{"uid": 3, "keys": ["OK-1"]}, {"uid": 4, "keys": ["OK-2"]}], now=T0
        )
    conn, _ = ledger
    assert _all_rows(conn) == [
        ("INBOX", BOX["uidvalidity"], 3, "settled", 1),
        ("INBOX", BOX["uidvalidity"], 4, "settled", 0),
    ]
    (entry,) = [e for e in list_entries(*ledger, states=["settled"]) if e["uid"] == 3]
    assert entry["reason"] is None and entry["next_try_at"] is None and entry["ticket_keys"] == ["OK-1"]


def test_settled_and_rejected_rows_past_the_retention_are_dropped_and_waiting_rows_are_not(ledger):
    record_settled(*ledger, **BOX, entries=[{"uid": 1, "keys": ["OK-1"]}], now=T0)
    record_rejected(*ledger, **BOX, entries=[{"uid": 2, "reason": "no ticket key"}], now=T0)
    record_failures(*ledger, **BOX, entries=[_failing(4)], now=T0)
    record_failures(*ledger, **BOX, entries=[_failing(5)], now=T0, max_attempts=1)
    later = T0 + mail_ledger.DEFAULT_RETENTION + MINUTE
    record_settled(*ledger, **BOX, entries=[{"uid": 3, "keys": ["OK-3"]}], now=later)
    assert count_by_state(*ledger) == {"rejected": 0, "failed": 1, "quarantined": 1, "settled": 1}
    assert [e["uid"] for e in list_entries(*ledger, states=["settled"])] == [3]


def test_rows_inside_the_retention_are_kept(ledger):
    record_rejected(*ledger, **BOX, entries=[{"uid": 2, "reason": "no ticket key"}], now=T0)
    just_inside = T0 + timedelta(days=7) - MINUTE
    record_settled(*ledger, **BOX, entries=[], now=just_inside, retention=timedelta(days=7))
    assert count_by_state(*ledger)["rejected"] == 1
    record_settled(*ledger, **BOX, entries=[], now=just_inside + 2 * MINUTE, retention=timedelta(days=7))
    assert count_by_state(*ledger)["rejected"] == 0


def test_one_run_prunes_at_most_a_batch_of_rows_oldest_first(ledger, monkeypatch):
    monkeypatch.setattr(mail_ledger, "PRUNE_BATCH", 3)
    for uid in range(1, 8):
        record_rejected(*ledger, **BOX, entries=[{"uid": uid, "reason": "r"}], now=T0 + uid * MINUTE)
    later = T0 + mail_ledger.DEFAULT_RETENTION + timedelta(days=1)
    record_settled(*ledger, **BOX, entries=[], now=later)
    assert sorted(e["uid"] for e in list_entries(*ledger, states=["rejected"])) == [4, 5, 6, 7]
    record_settled(*ledger, **BOX, entries=[], now=later)
    assert sorted(e["uid"] for e in list_entries(*ledger, states=["rejected"])) == [7]


def test_an_older_ledger_gets_the_location_columns_in_place_and_keeps_its_rows(ledger):
    conn, dialect = ledger
    old_ddl = mail_ledger._DDL[dialect][0].replace(f"{mail_ledger._LOCATION_DDL},", "")
    cursor = conn.cursor()
    cursor.execute(old_ddl)
    cursor.execute(
        f"INSERT INTO {TABLE} (mailbox, uidvalidity, uid, state, first_seen_at, updated_at) "
        + ("VALUES ('INBOX', 1764662400, 9, 'rejected', '2026-12-02 09:00:00', '2026-12-02 09:00:00')"),
    )
    conn.commit()
    assert "moved_to" not in table_columns(conn, dialect, TABLE)
    (before,) = list_entries(conn, dialect, states=["rejected"])
    assert before["moved_to"] is None, "a reader of an older table reads the location as unknown"
    record_moved(
        conn, dialect, **BOX, uids=[9], moved_to="Jira.Rejected", moved_uidvalidity=77, new_uids={9: 3}
    )
    assert {"moved_to", "moved_uidvalidity", "moved_uid"} <= table_columns(conn, dialect, TABLE)
    (entry,) = list_entries(conn, dialect, states=["rejected"])
    assert (entry["uid"], entry["moved_to"], entry["moved_uidvalidity"], entry["moved_uid"]) == (
        9,
        "Jira.Rejected",
        77,
        3,
    )


def test_moved_mail_keeps_its_row_with_its_new_place_and_is_not_released(ledger):
    record_rejected(*ledger, **BOX, entries=[{"uid": u, "reason": "r"} for u in (1, 2, 3)], now=T0)
    record_moved(
        *ledger, **BOX, uids=[1, 2], moved_to="INBOX.Jira.Rejected", moved_uidvalidity=5, new_uids={1: 40}
    )
    assert moved_away(*ledger, **BOX, uids=[1, 2, 3]) == [
        {"uid": 1, "moved_to": "INBOX.Jira.Rejected", "moved_uid": 40},
        {"uid": 2, "moved_to": "INBOX.Jira.Rejected", "moved_uid": None},
    ]
    assert moved_away(*ledger, **BOX, release_all=True) == moved_away(*ledger, **BOX, uids=[1, 2])
    assert release(*ledger, **BOX, now=T0, uids=[1, 2, 3]) == [3]
    assert release(*ledger, **BOX, now=T0, release_all=True) == [3]
    assert count_by_state(*ledger, **BOX) == {"rejected": 2, "failed": 1, "quarantined": 0, "settled": 0}


def test_the_held_rows_can_be_read_for_one_window_of_uids(ledger):
    record_rejected(*ledger, **BOX, entries=[{"uid": u, "reason": "r"} for u in (5, 50, 500)], now=T0)
    record_failures(*ledger, **BOX, entries=[_failing(60)], now=T0, first_delay=timedelta(0))
    assert held_uids(*ledger, **BOX, now=T0, uid_range=(10, 100)) == {"excluded": {50}, "retrying": {60}}
    assert held_uids(*ledger, **BOX, now=T0, uid_range=(5, 5)) == {"excluded": {5}, "retrying": set()}
    assert held_uids(*ledger, **BOX, now=T0)["excluded"] == {5, 50, 500}


def test_counts_can_be_limited_to_one_mailbox_and_one_generation_of_it(ledger):
    record_rejected(*ledger, **BOX, entries=[{"uid": 1, "reason": "r"}], now=T0)
    record_rejected(*ledger, mailbox="Jira", uidvalidity=9, entries=[{"uid": 1, "reason": "r"}], now=T0)
    record_rejected(*ledger, mailbox="Jira", uidvalidity=10, entries=[{"uid": 1, "reason": "r"}], now=T0)
    assert count_by_state(*ledger)["rejected"] == 3
    assert count_by_state(*ledger, mailbox="Jira")["rejected"] == 2
    assert count_by_state(*ledger, mailbox="Jira", uidvalidity=10)["rejected"] == 1
    assert count_by_state(*ledger, mailbox="INBOX", uidvalidity=10)["rejected"] == 0


def test_list_entries_is_newest_first_and_bounded(ledger):
    for minute in range(5):
        record_rejected(
            *ledger, **BOX, entries=[{"uid": minute + 1, "reason": "r"}], now=T0 + minute * MINUTE
        )
    assert [e["uid"] for e in list_entries(*ledger, states=["rejected"], limit=3)] == [5, 4, 3]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c, d: list_entries(c, d, states=["lost"]), "states must be"),
        (lambda c, d: list_entries(c, d, states=["failed"], limit=0), "limit must be"),
        (lambda c, d: record_rejected(c, d, **BOX, entries=[{"uid": 0}], now=T0), "integer from 1 to"),
        (lambda c, d: record_rejected(c, d, mailbox="", uidvalidity=1, entries=[], now=T0), "mailbox"),
        (
            lambda c, d: record_failures(c, d, **BOX, entries=[_failing(1)], now=T0, max_attempts=0),
            "max_attempts",
        ),
        (lambda c, d: record_settled(c, d, **BOX, entries=[], now=datetime(2026, 1, 1)), "timezone-aware"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(ledger, call, message):
    with pytest.raises(ValueError, match=message):
        call(*ledger)


def test_a_whole_run_costs_a_fixed_number_of_statements(ledger):
    conn, dialect = ledger
    ensure_table(conn, dialect)
    counting = CountingConnection(conn)

    def cost(write, **kwargs) -> int:
        counting.statements.clear()
        write(counting, dialect, **BOX, now=T0, **kwargs)
        return counting.count()

    for size in (10, 2000):
        uids = range(size * 10, size * 11)
        rejected = [{"uid": u, "reason": "r"} for u in uids]
        # ensure_table's existence check is one of them: no DDL runs once the table is there.
        assert cost(record_rejected, entries=rejected) == 2
        assert cost(release, release_all=True) == 2
        failing = [_failing(u) for u in uids]
        assert cost(record_failures, entries=failing) == 3
        settled = [{"uid": u, "keys": ["OK-1"]} for u in uids]
        assert cost(record_settled, entries=settled) == 3
        assert cost(held_uids) == 2
        assert cost(held_uids, uid_range=(1, 2**32 - 1)) == 2
        counting.statements.clear()
        record_moved(
            counting, dialect, **BOX, uids=uids, moved_to="Jira.Rejected", moved_uidvalidity=1, new_uids={}
        )
        assert counting.count() == 2
    assert count_by_state(conn, dialect)["settled"] == 2010
