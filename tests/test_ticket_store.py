"""include.ticket_store on real SQLite and PostgreSQL: idempotent upserts; an older Jira update never wins."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from include.ticket_store import (
    TABLE,
    UpsertResult,
    count_tickets,
    ensure_table,
    get_ticket,
    upsert_tickets,
)

FETCHED = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


_ISSUE_IDS: dict[str, str] = {}


def _issue_id(key: str) -> str:
    """One stable Jira id per key in this module, as Jira gives each issue one id for life."""
    return _ISSUE_IDS.setdefault(key, str(10000 + len(_ISSUE_IDS)))


def _ticket(key: str, updated_at: str, **overrides) -> dict:
    ticket = {
        "key": key,
        "issue_id": _issue_id(key),
        "summary": f"Summary of {key}",
        "status": "In Progress",
        "assignee_email": "ann@example.com",
        # Jira's progress field shape: seconds, with percent only when total > 0.
        "progress": {"progress": 1800, "total": 7200, "percent": 25},
        "updated_at": updated_at,
    }
    ticket.update(overrides)
    return ticket


def _table_exists(conn, dialect: str) -> bool:
    cursor = conn.cursor()
    if dialect == "sqlite":
        cursor.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,))
    else:
        cursor.execute("SELECT count(*) FROM pg_tables WHERE tablename = %s", (TABLE,))
    exists = cursor.fetchone()[0] == 1
    conn.commit()
    return exists


def _all_rows(conn) -> list[tuple]:
    cursor = conn.cursor()
    cursor.execute(f"SELECT * FROM {TABLE} ORDER BY key")
    rows = cursor.fetchall()
    conn.commit()
    return rows


def test_table_is_created_when_missing_and_ensure_table_is_idempotent(store_backend):
    conn = store_backend.connect()
    assert not _table_exists(conn, store_backend.dialect)

    ensure_table(conn, store_backend.dialect)
    ensure_table(conn, store_backend.dialect)

    assert _table_exists(store_backend.connect(), store_backend.dialect)
    assert count_tickets(conn, store_backend.dialect) == 0


def test_rerunning_the_same_batch_stores_the_same_rows(store):
    conn, dialect = store
    batch = [_ticket(f"ABC-{n}", f"2026-11-27T10:{n:02d}:00.000+0000") for n in range(1, 6)]

    first = upsert_tickets(conn, dialect, batch, source="sweep", fetched_at=FETCHED)
    rows_after_first = _all_rows(conn)
    second = upsert_tickets(conn, dialect, batch, source="sweep", fetched_at=FETCHED)

    assert first == UpsertResult(
        written=5, stale_skipped=0, changed=("ABC-1", "ABC-2", "ABC-3", "ABC-4", "ABC-5")
    )
    # A rerun rewrites equal content: nothing changed, so no downstream consumer is woken.
    assert second == UpsertResult(written=5, stale_skipped=0, changed=())
    assert _all_rows(conn) == rows_after_first
    assert count_tickets(conn, dialect) == 5


def test_an_older_update_never_overwrites_a_newer_one(store):
    conn, dialect = store
    upsert_tickets(
        conn,
        dialect,
        [_ticket("ABC-1", "2026-11-27T10:30:00.000+0000", status="Done")],
        source="sweep",
        fetched_at=FETCHED,
    )

    result = upsert_tickets(
        conn,
        dialect,
        [_ticket("ABC-1", "2026-11-27T10:29:59.999+0000", status="In Progress")],
        source="inbox",
        fetched_at=FETCHED + timedelta(minutes=5),
    )

    stored = get_ticket(conn, dialect, "ABC-1")
    assert result == UpsertResult(written=0, stale_skipped=1)
    assert stored["status"] == "Done"
    assert stored["source"] == "sweep"
    assert stored["fetched_at"] == FETCHED


def test_a_newer_update_wins(store):
    conn, dialect = store
    upsert_tickets(
        conn, dialect, [_ticket("ABC-1", "2026-11-27T10:00:00.000+0000")], source="sweep", fetched_at=FETCHED
    )

    result = upsert_tickets(
        conn,
        dialect,
        [_ticket("ABC-1", "2026-11-27T10:00:00.001+0000", status="Done", assignee_email=None, progress=None)],
        source="inbox",
        fetched_at=FETCHED + timedelta(minutes=1),
    )

    stored = get_ticket(conn, dialect, "ABC-1")
    assert result == UpsertResult(written=1, stale_skipped=0, changed=("ABC-1",))
    assert (stored["status"], stored["assignee_email"], stored["progress"]) == ("Done", None, None)
    assert stored["source"] == "inbox"
    assert stored["updated_at"] == datetime(2026, 11, 27, 10, 0, 0, 1000, tzinfo=UTC)


def test_offsets_are_compared_as_instants_not_as_text(store):
    conn, dialect = store
    # 10:14 at +01:00 is 09:14 UTC: older than 09:20 UTC although its text sorts later.
    upsert_tickets(
        conn,
        dialect,
        [_ticket("ABC-1", "2026-11-27T09:20:00.000+0000", status="Newer")],
        source="sweep",
        fetched_at=FETCHED,
    )

    result = upsert_tickets(
        conn,
        dialect,
        [_ticket("ABC-1", "2026-11-27T10:14:00.000+0100", status="Older")],
        source="sweep",
        fetched_at=FETCHED,
    )

    assert result.stale_skipped == 1
    assert get_ticket(conn, dialect, "ABC-1")["status"] == "Newer"


def test_an_equal_updated_at_rewrite_is_harmless(store):
    conn, dialect = store
    ticket = _ticket("ABC-7", "2026-11-27T10:14:30.123+0000")
    upsert_tickets(conn, dialect, [ticket], source="sweep", fetched_at=FETCHED)
    before = get_ticket(conn, dialect, "ABC-7")

    later = FETCHED + timedelta(hours=1)
    result = upsert_tickets(conn, dialect, [ticket], source="inbox", fetched_at=later)

    after = get_ticket(conn, dialect, "ABC-7")
    assert result.stale_skipped == 0
    assert {k: v for k, v in after.items() if k not in ("fetched_at", "source")} == {
        k: v for k, v in before.items() if k not in ("fetched_at", "source")
    }
    assert after["fetched_at"] == later
    assert count_tickets(conn, dialect) == 1


@pytest.mark.parametrize(
    "progress",
    [None, {"progress": 1800, "total": 7200, "percent": 25}, {"progress": 0, "total": 0}],
    ids=["null", "with-percent", "zero-total-without-percent"],
)
def test_progress_round_trips(store, progress):
    conn, dialect = store
    upsert_tickets(
        conn,
        dialect,
        [_ticket("RT-1", "2026-11-27T10:14:30.123+0000", progress=progress)],
        source="inbox",
        fetched_at=FETCHED,
    )
    assert get_ticket(conn, dialect, "RT-1")["progress"] == progress


def test_get_ticket_returns_aware_utc_timestamps_and_none_for_unknown_keys(store):
    conn, dialect = store
    upsert_tickets(
        conn,
        dialect,
        [_ticket("TZ-1", "2026-11-27T10:14:30.123-0500")],
        source="sweep",
        fetched_at=datetime(2026, 11, 27, 13, 0, tzinfo=UTC),
    )

    stored = get_ticket(conn, dialect, "TZ-1")

    assert stored["updated_at"] == datetime(2026, 11, 27, 15, 14, 30, 123000, tzinfo=UTC)
    assert stored["updated_at"].utcoffset() == timedelta(0)
    assert stored["fetched_at"] == datetime(2026, 11, 27, 13, 0, tzinfo=UTC)
    assert get_ticket(conn, dialect, "TZ-2") is None


def test_count_tickets_by_source(store):
    conn, dialect = store
    upsert_tickets(
        conn,
        dialect,
        [_ticket(f"AA-{n}", "2026-11-27T10:00:00+00:00") for n in range(1, 4)],
        source="inbox",
        fetched_at=FETCHED,
    )
    upsert_tickets(
        conn, dialect, [_ticket("BB-1", "2026-11-27T10:00:00+00:00")], source="sweep", fetched_at=FETCHED
    )
    assert (
        count_tickets(conn, dialect),
        count_tickets(conn, dialect, source="inbox"),
        count_tickets(conn, dialect, source="sweep"),
    ) == (4, 3, 1)


@pytest.mark.parametrize(
    ("bad_ticket", "message"),
    [
        ({"key": "abc-1"}, "issue key"),
        ({"key": "ABC-0"}, "issue key"),
        ({"key": "ABC-1; DROP TABLE jira_ticket"}, "issue key"),
        ({"updated_at": "2026-11-27T10:00:00"}, "UTC offset"),
        ({"updated_at": "yesterday"}, "ISO-8601"),
        ({"updated_at": None}, "ISO-8601"),
        ({"progress": [1, 2]}, "progress"),
        ({"summary": None}, "summary"),
        ({"status": ""}, "status"),
    ],
)
def test_invalid_tickets_raise_value_error_and_write_nothing(store, bad_ticket, message):
    conn, dialect = store
    batch = [
        _ticket("OK-1", "2026-11-27T10:00:00+00:00"),
        {**_ticket("OK-2", "2026-11-27T10:00:00+00:00"), **bad_ticket},
    ]
    with pytest.raises(ValueError, match=message):
        upsert_tickets(conn, dialect, batch, source="sweep", fetched_at=FETCHED)
    assert count_tickets(conn, dialect) == 0


@pytest.mark.parametrize(
    ("source", "fetched_at", "message"),
    [
        ("email", FETCHED, "source"),
        ("inbox", datetime(2026, 11, 27, 12, 0), "UTC offset"),
        ("inbox", "2026-11-27T12:00:00+00:00", "datetime"),
    ],
)
def test_invalid_source_or_fetched_at_raise_value_error(store, source, fetched_at, message):
    conn, dialect = store
    with pytest.raises(ValueError, match=message):
        upsert_tickets(
            conn,
            dialect,
            [_ticket("OK-1", "2026-11-27T10:00:00+00:00")],
            source=source,
            fetched_at=fetched_at,
        )
    assert count_tickets(conn, dialect) == 0


def test_an_invalid_ticket_late_in_a_large_batch_rolls_back_the_earlier_chunks(store):
    conn, dialect = store
    upsert_tickets(
        conn, dialect, [_ticket("KEEP-1", "2026-11-27T09:00:00+00:00")], source="sweep", fetched_at=FETCHED
    )

    def tickets():
        for n in range(1, 1300):
            yield _ticket(f"BULK-{n}", "2026-11-27T10:00:00+00:00")
        yield _ticket("BULK-1300", "not a timestamp")

    with pytest.raises(ValueError, match="BULK-1300"):
        upsert_tickets(conn, dialect, tickets(), source="sweep", fetched_at=FETCHED)

    assert count_tickets(conn, dialect) == 1
    assert get_ticket(conn, dialect, "KEEP-1") is not None


def test_a_database_error_mid_batch_rolls_back_the_whole_transaction(store):
    conn, dialect = store
    cursor = conn.cursor()
    # A constraint the store does not know about makes the database itself refuse row 1100.
    cursor.execute(f"CREATE UNIQUE INDEX summary_must_be_unique ON {TABLE} (summary)")
    conn.commit()
    batch = [_ticket(f"DB-{n}", "2026-11-27T10:00:00+00:00") for n in range(1, 1200)]
    batch[1099]["summary"] = batch[0]["summary"]

    with pytest.raises(Exception, match="(?i)unique"):
        upsert_tickets(conn, dialect, batch, source="sweep", fetched_at=FETCHED)

    assert count_tickets(conn, dialect) == 0
    assert upsert_tickets(conn, dialect, batch[:10], source="sweep", fetched_at=FETCHED).written == 10


def test_autocommit_connections_still_get_one_transaction(store_backend):
    conn = store_backend.connect()
    if store_backend.dialect == "sqlite":
        conn.isolation_level = None
    else:
        conn.autocommit = True
    ensure_table(conn, store_backend.dialect)
    batch = [_ticket(f"AC-{n}", "2026-11-27T10:00:00+00:00") for n in range(1, 600)]
    batch.append(_ticket("AC-600", "2026-11-27T10:00:00"))

    with pytest.raises(ValueError):
        upsert_tickets(conn, store_backend.dialect, batch, source="inbox", fetched_at=FETCHED)

    assert count_tickets(store_backend.connect(), store_backend.dialect) == 0


def test_writes_are_committed_for_other_connections(store_backend):
    writer = store_backend.connect()
    ensure_table(writer, store_backend.dialect)
    upsert_tickets(
        writer,
        store_backend.dialect,
        [_ticket("VIS-1", "2026-11-27T10:00:00+00:00")],
        source="inbox",
        fetched_at=FETCHED,
    )

    reader = store_backend.connect()

    assert get_ticket(reader, store_backend.dialect, "VIS-1")["summary"] == "Summary of VIS-1"


def test_unknown_dialect_is_refused(store_backend):
    with pytest.raises(ValueError, match="dialect"):
        ensure_table(store_backend.connect(), "mysql")


def test_psycopg2_connections_behave_like_psycopg_3(postgres_db):
    # PostgresHook hands out psycopg2 connections when SQLAlchemy < 2 is installed.
    import psycopg2

    conn = psycopg2.connect(postgres_db.dsn)
    try:
        ensure_table(conn, "postgres")
        first = upsert_tickets(
            conn,
            "postgres",
            [_ticket("PG-1", "2026-11-27T10:00:00+00:00")],
            source="inbox",
            fetched_at=FETCHED,
        )
        stale = upsert_tickets(
            conn,
            "postgres",
            [_ticket("PG-1", "2026-11-27T09:00:00+00:00", status="Old")],
            source="sweep",
            fetched_at=FETCHED,
        )
        stored = get_ticket(conn, "postgres", "PG-1")
        assert (first.written, stale.stale_skipped) == (1, 1)
        assert stored["progress"] == {"progress": 1800, "total": 7200, "percent": 25}
        assert stored["updated_at"] == datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
        assert conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    finally:
        conn.close()


def test_a_role_with_only_read_and_write_rights_can_store_once_the_table_exists(postgres_db):
    """Production stores often forbid DDL to the sync account: an existing table must need none."""
    import secrets

    from psycopg.conninfo import make_conninfo

    from include.ticket_store import ensure_table, get_ticket, upsert_tickets

    role, password = f"sync_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    with postgres_db.connect(autocommit=True) as admin:
        ensure_table(admin, "postgres")
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        admin.execute(f"GRANT SELECT, INSERT, UPDATE ON jira_ticket TO {role}")
    dsn = make_conninfo(postgres_db.dsn, user=role, password=password)
    import psycopg

    with psycopg.connect(dsn) as limited:
        ensure_table(limited, "postgres")
        ticket = {
            "key": "ABC-1",
            "issue_id": "10001",
            "summary": "s",
            "status": "Done",
            "assignee_email": None,
            "progress": None,
            "updated_at": "2026-11-27T10:00:00+00:00",
        }
        result = upsert_tickets(limited, "postgres", [ticket], source="sweep", fetched_at=datetime.now(UTC))
        assert result.written == 1
        assert get_ticket(limited, "postgres", "ABC-1")["status"] == "Done"
