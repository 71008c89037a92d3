"""The mail ledger and the watch state keyed by site and mailbox (#23), on real SQLite and PostgreSQL.

Two mailboxes are `INBOX` on two IMAP accounts (of one site, or of two sites sharing one store), with
the same UIDVALIDITY: Dovecot derives it from the creation time, so accounts made in the same second
share it. Neither may see, hold, settle, release or prune the other's rows. An older ledger, keyed by
(mailbox, uidvalidity, uid), is upgraded in place to the plain site's identity.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from devkit.counting_db import CountingConnection
from include import mail_ledger, watch_state
from include.mail_ledger import (
    KEY_COLUMNS,
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
)
from include.names import DEFAULT_SITE, IMAP_CONN_ID
from include.store_db import sqlite_timestamp, table_columns
from include.sync_status import ledger_figures, uids_held_back

T0 = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)
UIDVALIDITY = 1765184400
# Two mailboxes that only their site and IMAP connection tell apart.
ACME = {"site": "acme", "imap_conn_id": "imap_acme", "mailbox": "INBOX", "uidvalidity": UIDVALIDITY}
DESK = {"site": "acme", "imap_conn_id": "imap_desk", "mailbox": "INBOX", "uidvalidity": UIDVALIDITY}
GLOBEX = {"site": "globex", "imap_conn_id": "imap_acme", "mailbox": "INBOX", "uidvalidity": UIDVALIDITY}
PLAIN = {"mailbox": "INBOX", "uidvalidity": UIDVALIDITY}

# The ledger as it was before #23 (include/mail_ledger.py at the sites merge), word for word apart
# from the dialect's timestamp type: keyed by folder, UIDVALIDITY and UID.
OLD_LEDGER = """CREATE TABLE jira_mail_ledger (
    mailbox TEXT NOT NULL,
    uidvalidity BIGINT NOT NULL,
    uid BIGINT NOT NULL,
    message_id TEXT,
    sender TEXT,
    subject TEXT CHECK (subject IS NULL OR length(subject) <= 200),
    ticket_keys TEXT,
    state TEXT NOT NULL CHECK (state IN ('rejected', 'failed', 'quarantined', 'settled')),
    reason TEXT CHECK (reason IS NULL OR length(reason) <= 500),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try_at {moment},
    first_seen_at {moment} NOT NULL,
    updated_at {moment} NOT NULL{location},
    PRIMARY KEY (mailbox, uidvalidity, uid)
)"""
OLD_INDEX = "CREATE INDEX jira_mail_ledger_state_updated_idx ON jira_mail_ledger (state, updated_at)"
OLD_WATCH = """CREATE TABLE jira_imap_watch (
    imap_conn_id TEXT NOT NULL,
    mailbox TEXT NOT NULL,
    refused_since {moment} NOT NULL,
    next_try_at {moment} NOT NULL,
    detail TEXT,
    PRIMARY KEY (imap_conn_id, mailbox)
)"""


@pytest.fixture
def ledger(store_backend):
    return store_backend.connect(), store_backend.dialect


def _moment(dialect: str) -> str:
    return "TEXT" if dialect == "sqlite" else "TIMESTAMPTZ"


def _stamp(dialect: str) -> str:
    return sqlite_timestamp(T0) if dialect == "sqlite" else T0.isoformat()


def _old_ledger(conn, dialect: str, *, location: bool = True) -> None:
    """An old ledger with two rows: a rejected and a quarantined mail of the plain INBOX."""
    cursor = conn.cursor()
    columns = ",\n    moved_to TEXT,\n    moved_uidvalidity BIGINT,\n    moved_uid BIGINT" if location else ""
    cursor.execute(OLD_LEDGER.format(moment=_moment(dialect), location=columns))
    cursor.execute(OLD_INDEX)
    p = "?" if dialect == "sqlite" else "%s"
    for uid, state, attempts in ((7, "rejected", 0), (8, "quarantined", 5)):
        cursor.execute(
            f"INSERT INTO {TABLE} (mailbox, uidvalidity, uid, state, attempts, reason, first_seen_at, "
            f"updated_at) VALUES ('INBOX', {UIDVALIDITY}, {p}, {p}, {p}, 'old', {p}, {p})",
            (uid, state, attempts, _stamp(dialect), _stamp(dialect)),
        )
    conn.commit()
    cursor.close()


def _primary_key(conn, dialect: str, table: str = TABLE) -> list[str]:
    cursor = conn.cursor()
    if dialect == "sqlite":
        cursor.execute(f"SELECT name, pk FROM pragma_table_info('{table}') WHERE pk > 0 ORDER BY pk")
        key = [name for name, _ in cursor.fetchall()]
    else:
        cursor.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(%s) AND i.indisprimary "
            "ORDER BY array_position(i.indkey, a.attnum)",
            (table,),
        )
        key = [name for (name,) in cursor.fetchall()]
    conn.commit()
    return key


def _indexes(conn, dialect: str) -> set[str]:
    cursor = conn.cursor()
    if dialect == "sqlite":
        cursor.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?", (TABLE,))
    else:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", (TABLE,))
    names = {name for (name,) in cursor.fetchall()}
    conn.commit()
    return names


def _rows(conn) -> list[tuple]:
    cursor = conn.cursor()
    cursor.execute(
        f"SELECT site, imap_conn_id, mailbox, uidvalidity, uid, state, attempts FROM {TABLE} ORDER BY uid"
    )
    rows = [tuple(row) for row in cursor.fetchall()]
    conn.commit()
    return rows


# --- the upgrade of an older ledger ------------------------------------------------------------


@pytest.mark.parametrize("location", [True, False], ids=["with-location", "oldest"])
def test_an_old_ledger_is_keyed_by_site_and_mailbox_in_place_and_keeps_its_rows(ledger, location, caplog):
    conn, dialect = ledger
    _old_ledger(conn, dialect, location=location)
    assert _primary_key(conn, dialect) == ["mailbox", "uidvalidity", "uid"]

    with caplog.at_level(logging.WARNING, logger=mail_ledger.__name__):
        ensure_table(conn, dialect)
    assert "site" in caplog.text and "imap_conn_id" in caplog.text

    assert _primary_key(conn, dialect) == list(KEY_COLUMNS)
    assert "jira_mail_ledger_state_updated_idx" in _indexes(conn, dialect)
    assert set(mail_ledger._LISTED) <= table_columns(conn, dialect, TABLE)
    # The rows are the plain site's: the only mailbox an old ledger can have served.
    assert _rows(conn) == [
        (DEFAULT_SITE, IMAP_CONN_ID, "INBOX", UIDVALIDITY, 7, "rejected", 0),
        (DEFAULT_SITE, IMAP_CONN_ID, "INBOX", UIDVALIDITY, 8, "quarantined", 5),
    ]
    # The plain inbox still holds them back, as before the upgrade.
    assert excluded_uids(conn, dialect, "INBOX", UIDVALIDITY, T0) == {7, 8}
    # And another mailbox's UID 7 under the same UIDVALIDITY is its own row now.
    record_rejected(conn, dialect, **ACME, entries=[{"uid": 7, "reason": "untrusted sender"}], now=T0)
    assert excluded_uids(conn, dialect, "INBOX", UIDVALIDITY, T0, site="acme", imap_conn_id="imap_acme") == {
        7
    }
    assert len(_rows(conn)) == 3


def test_a_second_ensure_of_an_upgraded_ledger_reads_its_columns_and_changes_nothing(ledger, caplog):
    conn, dialect = ledger
    _old_ledger(conn, dialect)
    ensure_table(conn, dialect)
    before = _rows(conn)
    counting = CountingConnection(conn)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=mail_ledger.__name__):
        ensure_table(counting, dialect)
    assert counting.count() == 1, counting.statements  # the column list, nothing else
    assert not any(word in sql.upper() for sql in counting.statements for word in ("ALTER", "CREATE", "LOCK"))
    assert "Upgraded" not in caplog.text
    assert _rows(conn) == before and _primary_key(conn, dialect) == list(KEY_COLUMNS)


def test_a_fresh_ledger_has_the_upgraded_shape(ledger):
    conn, dialect = ledger
    ensure_table(conn, dialect)
    assert _primary_key(conn, dialect) == list(KEY_COLUMNS)
    assert set(mail_ledger._LISTED) == table_columns(conn, dialect, TABLE)
    assert "jira_mail_ledger_state_updated_idx" in _indexes(conn, dialect)
    # A row written without the identity (a hand-made insert) takes the plain site's, as upgraded rows do.
    cursor = conn.cursor()
    cursor.execute(
        f"INSERT INTO {TABLE} (mailbox, uidvalidity, uid, state, first_seen_at, updated_at) "
        f"VALUES ('INBOX', 1, 1, 'settled', '{_stamp(dialect)}', '{_stamp(dialect)}')"
    )
    conn.commit()
    assert _rows(conn)[0][:2] == (DEFAULT_SITE, IMAP_CONN_ID)


def test_readers_of_a_ledger_not_upgraded_yet_read_it_as_the_plain_sites_and_change_nothing(ledger):
    conn, dialect = ledger
    _old_ledger(conn, dialect)
    before = table_columns(conn, dialect, TABLE)
    assert count_by_state(conn, dialect, site=DEFAULT_SITE, imap_conn_id=IMAP_CONN_ID)["quarantined"] == 1
    assert count_by_state(conn, dialect, site="acme")["quarantined"] == 0
    (entry, _) = sorted(list_entries(conn, dialect), key=lambda e: e["uid"])
    assert (entry["site"], entry["imap_conn_id"], entry["uid"]) == (DEFAULT_SITE, IMAP_CONN_ID, 7)
    assert list_entries(conn, dialect, site="acme") == []
    assert uids_held_back(conn, dialect, **PLAIN, uids=[7, 8, 9], now=T0) == {7, 8}
    assert uids_held_back(conn, dialect, **PLAIN, uids=[7, 8], now=T0, site="acme", imap_conn_id="x") == set()
    assert table_columns(conn, dialect, TABLE) == before, "a reader upgraded the table"


# --- two mailboxes with the same folder and UIDVALIDITY ----------------------------------------


@pytest.mark.parametrize("other", [DESK, GLOBEX], ids=["same-site-other-account", "other-site-same-conn-id"])
def test_held_mail_of_one_mailbox_never_holds_the_same_uid_of_another(ledger, other):
    conn, dialect = ledger
    record_rejected(conn, dialect, **ACME, entries=[{"uid": 1, "reason": "untrusted sender"}], now=T0)
    record_failures(
        conn,
        dialect,
        **ACME,
        entries=[{"uid": 2, "keys": ["ABC-2"], "reason": "500"}],
        max_attempts=1,
        now=T0,
    )
    record_failures(conn, dialect, **ACME, entries=[{"uid": 3, "keys": ["ABC-3"], "reason": "500"}], now=T0)

    def held(box):
        identity = {"site": box["site"], "imap_conn_id": box["imap_conn_id"]}
        return excluded_uids(conn, dialect, box["mailbox"], box["uidvalidity"], T0, **identity)

    assert held(ACME) == {1, 2, 3}
    assert held(other) == set()
    assert held_uids(conn, dialect, **other, now=T0 + timedelta(days=1)) == {
        "excluded": set(),
        "retrying": set(),
    }
    assert held(PLAIN | {"site": DEFAULT_SITE, "imap_conn_id": IMAP_CONN_ID}) == set()

    # The other mailbox's own UID 3 fails: its first attempt, not the acme mailbox's second.
    (outcome,) = record_failures(
        conn, dialect, **other, entries=[{"uid": 3, "keys": ["XYZ-3"], "reason": "500"}], now=T0
    )
    assert outcome["attempts"] == 1
    # It settles UIDs 1 and 2: acme's rejected and quarantined rows with those UIDs stay as they were.
    record_settled(
        conn, dialect, **other, entries=[{"uid": 1, "keys": ["XYZ-1"]}, {"uid": 2, "keys": []}], now=T0
    )
    assert held(ACME) == {1, 2, 3}
    assert count_by_state(conn, dialect, **ACME) == {
        "rejected": 1,
        "failed": 1,
        "quarantined": 1,
        "settled": 0,
    }
    assert count_by_state(conn, dialect, **other) == {
        "rejected": 0,
        "failed": 1,
        "quarantined": 0,
        "settled": 2,
    }
    # A folder alone is no mailbox: both accounts' INBOX together.
    assert count_by_state(conn, dialect, mailbox="INBOX", uidvalidity=UIDVALIDITY)["failed"] == 2

    # Releasing all of the other mailbox's held mail releases only its own UID 3.
    assert release(conn, dialect, **other, now=T0, release_all=True) == [3]
    assert held(ACME) == {1, 2, 3}
    assert release(conn, dialect, **ACME, now=T0, uids=[1, 2]) == [1, 2]
    assert held(ACME) == {3}


def test_moves_listings_and_pruning_stay_within_their_own_mailbox(ledger):
    conn, dialect = ledger
    for box in (ACME, DESK):
        record_rejected(
            conn, dialect, **box, entries=[{"uid": 5, "reason": f"from {box['imap_conn_id']}"}], now=T0
        )
    record_moved(
        conn, dialect, **ACME, uids=[5], moved_to="Jira/Rejected", moved_uidvalidity=9, new_uids={5: 1}
    )
    assert moved_away(conn, dialect, **ACME, release_all=True) == [
        {"uid": 5, "moved_to": "Jira/Rejected", "moved_uid": 1}
    ]
    assert moved_away(conn, dialect, **DESK, release_all=True) == []
    # The desk's row was not moved, so a manual run releases it; acme's moved row stays.
    assert release(conn, dialect, **DESK, now=T0, release_all=True) == [5]
    assert release(conn, dialect, **ACME, now=T0, release_all=True) == []

    entries = list_entries(conn, dialect, states=["rejected", "failed"])
    assert {(e["site"], e["imap_conn_id"], e["mailbox"], e["uid"], e["state"]) for e in entries} == {
        ("acme", "imap_acme", "INBOX", 5, "rejected"),
        ("acme", "imap_desk", "INBOX", 5, "failed"),
    }
    assert [
        e["imap_conn_id"]
        for e in list_entries(conn, dialect, states=["rejected", "failed"], imap_conn_id="imap_desk")
    ] == ["imap_desk"]
    figures = ledger_figures(conn, dialect, site="acme", imap_conn_id="imap_acme")
    assert (figures["rejected"], figures["failed"], len(figures["entries"])) == (1, 0, 1)

    # A settle of the desk long after prunes the desk's old rows only; acme prunes its own in its run.
    record_settled(conn, dialect, **DESK, entries=[{"uid": 6, "keys": []}], now=T0)
    later = T0 + mail_ledger.DEFAULT_RETENTION + timedelta(days=1)
    record_rejected(conn, dialect, **DESK, entries=[{"uid": 7, "reason": "old"}], now=T0)
    record_settled(conn, dialect, **DESK, entries=[], now=later)
    assert count_by_state(conn, dialect, **DESK) == {
        "rejected": 0,
        "failed": 1,
        "quarantined": 0,
        "settled": 0,
    }
    assert count_by_state(conn, dialect, **ACME)["rejected"] == 1
    record_settled(conn, dialect, **ACME, entries=[], now=later)
    assert count_by_state(conn, dialect, **ACME)["rejected"] == 0


@pytest.mark.parametrize("bad", ["", None, 7])
def test_a_mailbox_without_a_site_or_connection_is_refused(ledger, bad):
    with pytest.raises(ValueError, match="site must be a non-empty string"):
        record_rejected(*ledger, **(ACME | {"site": bad}), entries=[{"uid": 1, "reason": "r"}], now=T0)
    with pytest.raises(ValueError, match="imap_conn_id must be a non-empty string"):
        held_uids(*ledger, **(ACME | {"imap_conn_id": bad}), now=T0)


# --- the watch state ---------------------------------------------------------------------------


def _refused(since: float = 1_800_000_000.0) -> watch_state.RefusedLogins:
    refusals = watch_state.RefusedLogins(clock=lambda: since)
    refusals.refused("the server refused the password login")
    return refusals


def test_an_old_watch_state_gets_its_site_in_place_and_a_watcher_writes_its_own(ledger):
    conn, dialect = ledger
    cursor = conn.cursor()
    cursor.execute(OLD_WATCH.format(moment=_moment(dialect)))
    p = "?" if dialect == "sqlite" else "%s"
    cursor.execute(
        f"INSERT INTO {watch_state.TABLE} VALUES ('imap_default', 'INBOX', {p}, {p}, 'refused')",
        (_stamp(dialect), _stamp(dialect)),
    )
    conn.commit()
    # A reader of the old table names the plain site and changes nothing.
    assert [r["site"] for r in watch_state.read_refused_logins(conn, dialect)] == [DEFAULT_SITE]
    assert "site" not in table_columns(conn, dialect, watch_state.TABLE)

    watch_state.save_refused_login(
        conn, dialect, imap_conn_id="imap_acme", mailbox="INBOX", refusals=_refused(), site="acme"
    )
    assert "site" in table_columns(conn, dialect, watch_state.TABLE)
    assert _primary_key(conn, dialect, watch_state.TABLE) == ["imap_conn_id", "mailbox"]
    shown = watch_state.read_refused_logins(conn, dialect)
    assert [(r["site"], r["imap_conn_id"], r["mailbox"], r["detail"]) for r in shown] == [
        ("acme", "imap_acme", "INBOX", "the server refused the password login"),
        (DEFAULT_SITE, "imap_default", "INBOX", "refused"),
    ]
    # Its mailbox moved to another site in the sites file: the row follows it, none is left behind.
    watch_state.save_refused_login(
        conn, dialect, imap_conn_id="imap_acme", mailbox="INBOX", refusals=_refused(), site="globex"
    )
    assert [r["site"] for r in watch_state.read_refused_logins(conn, dialect)] == ["globex", DEFAULT_SITE]
    counting = CountingConnection(conn)
    watch_state.ensure_table(counting, dialect)
    assert counting.count() == 1, counting.statements
