"""Store v2 on real SQLite and PostgreSQL: identity by issue id, moves, deletions, v1 upgrade, concurrency."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from include.ticket_store import (
    TABLE,
    census_upgrade_statements,
    count_tickets,
    ensure_table,
    get_ticket,
    mark_gone,
    site_upgrade_statements,
    upgrade_statements,
    upsert_tickets,
)

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

# Version 1 of the table and its upsert, exactly as main wrote them before store v2 (copied here,
# not imported: the product no longer writes this shape, and the test must not follow its changes).
V1_DDL = {
    "sqlite": (
        """CREATE TABLE IF NOT EXISTS jira_ticket (
    key TEXT PRIMARY KEY,
    summary TEXT NOT NULL,
    status TEXT NOT NULL,
    assignee_email TEXT,
    progress TEXT CHECK (progress IS NULL OR json_valid(progress)),
    updated_at TEXT NOT NULL,
    fetched_at TEXT NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('inbox', 'sweep'))
)""",
        "CREATE INDEX IF NOT EXISTS jira_ticket_updated_at_idx ON jira_ticket (updated_at)",
    ),
    "postgres": (
        """CREATE TABLE IF NOT EXISTS jira_ticket (
    key TEXT PRIMARY KEY,
    summary TEXT NOT NULL,
    status TEXT NOT NULL,
    assignee_email TEXT,
    progress JSONB,
    updated_at TIMESTAMPTZ NOT NULL,
    fetched_at TIMESTAMPTZ NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('inbox', 'sweep'))
)""",
        "CREATE INDEX IF NOT EXISTS jira_ticket_updated_at_idx ON jira_ticket (updated_at)",
    ),
}
V1_INSERT = {
    "sqlite": "INSERT INTO jira_ticket (key, summary, status, assignee_email, progress, updated_at, "
    "fetched_at, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "postgres": "INSERT INTO jira_ticket (key, summary, status, assignee_email, progress, updated_at, "
    "fetched_at, source) VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s, %s)",
}


def _v1_timestamp(moment: datetime, dialect: str):
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00") if dialect == "sqlite" else moment


def write_v1_store(conn, dialect: str, rows: list[tuple[str, str, str]]) -> None:
    """A v1 store as today's code leaves it: (key, status, updated_at ISO) rows."""
    cursor = conn.cursor()
    for statement in V1_DDL[dialect]:
        cursor.execute(statement)
    for key, status, updated in rows:
        at = datetime.fromisoformat(updated)
        cursor.execute(
            V1_INSERT[dialect],
            (
                key,
                f"Summary of {key}",
                status,
                "ann@example.com",
                json.dumps({"progress": 60, "total": 120, "percent": 50}),
                _v1_timestamp(at, dialect),
                _v1_timestamp(T0 - timedelta(days=1), dialect),
                "sweep",
            ),
        )
    conn.commit()
    cursor.close()


def ticket(key: str, issue_id: str, updated: str, **overrides) -> dict:
    values = {
        "key": key,
        "issue_id": issue_id,
        "summary": f"Summary of {key}",
        "status": "In Progress",
        "assignee_email": None,
        "progress": None,
        "updated_at": updated,
    }
    values.update(overrides)
    return values


def all_keys(conn) -> list[str]:
    cursor = conn.cursor()
    cursor.execute(f"SELECT key FROM {TABLE} ORDER BY key")
    keys = [row[0] for row in cursor.fetchall()]
    conn.commit()
    return keys


# ------------------------------------------------------------------------------------------ identity


def test_a_moved_ticket_keeps_one_row_under_its_new_key_with_the_old_key_remembered(store):
    conn, dialect = store
    upsert_tickets(
        conn, dialect, [ticket("ABC-1", "10001", "2026-11-27T10:00:00+00:00")], source="inbox", fetched_at=T0
    )

    result = upsert_tickets(
        conn,
        dialect,
        [ticket("XYZ-9", "10001", "2026-11-27T11:00:00+00:00", status="Done")],
        source="sweep",
        fetched_at=T0 + timedelta(minutes=5),
    )

    assert all_keys(conn) == ["XYZ-9"]
    assert (result.moved, result.changed) == (1, ("XYZ-9",))
    row = get_ticket(conn, dialect, "XYZ-9")
    assert (row["issue_id"], row["status"], row["previous_keys"]) == (10001, "Done", ["ABC-1"])
    # Mail about the old key finds the same row.
    assert get_ticket(conn, dialect, "ABC-1") == row


def test_a_ticket_moved_twice_remembers_both_former_keys_in_order(store):
    conn, dialect = store
    for n, key in enumerate(("ABC-1", "DEF-4", "XYZ-9")):
        upsert_tickets(
            conn,
            dialect,
            [ticket(key, "10001", f"2026-11-27T1{n}:00:00+00:00")],
            source="sweep",
            fetched_at=T0,
        )

    assert all_keys(conn) == ["XYZ-9"]
    assert get_ticket(conn, dialect, "XYZ-9")["previous_keys"] == ["ABC-1", "DEF-4"]


def test_a_late_stale_copy_under_the_old_key_does_not_bring_the_old_key_back(store):
    conn, dialect = store
    upsert_tickets(
        conn, dialect, [ticket("XYZ-9", "10001", "2026-11-27T11:00:00+00:00")], source="sweep", fetched_at=T0
    )
    # An inbox run fetched the issue before it moved, and stores after the sweep.
    result = upsert_tickets(
        conn,
        dialect,
        [ticket("ABC-1", "10001", "2026-11-27T10:00:00+00:00", status="Old")],
        source="inbox",
        fetched_at=T0 - timedelta(minutes=1),
    )

    # The row follows the key Jira gave last, the content stays the newer one.
    row = get_ticket(conn, dialect, "ABC-1")
    assert result.stale_skipped == 1
    assert row["status"] == "In Progress" and row["updated_at"] == datetime(2026, 11, 27, 11, tzinfo=UTC)
    assert count_tickets(conn, dialect) == 1


def test_one_key_given_to_another_issue_is_refused_and_nothing_is_written(store):
    conn, dialect = store
    upsert_tickets(
        conn, dialect, [ticket("ABC-1", "10001", "2026-11-27T10:00:00+00:00")], source="sweep", fetched_at=T0
    )

    with pytest.raises(ValueError, match="belongs to issue 10001"):
        upsert_tickets(
            conn,
            dialect,
            [
                ticket("ABC-2", "10002", "2026-11-27T10:00:00+00:00"),
                ticket("ABC-1", "10003", "2026-11-27T11:00:00+00:00"),
            ],
            source="sweep",
            fetched_at=T0,
        )
    assert all_keys(conn) == ["ABC-1"]


@pytest.mark.parametrize("bad", [None, "", "ABC", "-5", "0", True, 3.5])
def test_a_ticket_without_a_jira_issue_id_is_refused(store, bad):
    conn, dialect = store
    with pytest.raises(ValueError, match="issue_id must be Jira's numeric issue id"):
        upsert_tickets(
            conn, dialect, [ticket("ABC-1", bad, "2026-11-27T10:00:00+00:00")], source="sweep", fetched_at=T0
        )


def test_extra_fields_are_stored_as_json(store):
    conn, dialect = store
    extra = {
        "customfield_10016": 5.0,
        "duedate": "2026-12-24",
        "customfield_10001": {"id": "7", "name": "Red"},
    }
    upsert_tickets(
        conn,
        dialect,
        [ticket("ABC-1", "10001", "2026-11-27T10:00:00+00:00", fields=extra)],
        source="sweep",
        fetched_at=T0,
    )

    assert get_ticket(conn, dialect, "ABC-1")["fields"] == extra


# ----------------------------------------------------------------------------------------- deletions


def test_a_ticket_confirmed_gone_keeps_its_row_with_deleted_at_until_jira_shows_it_again(store):
    conn, dialect = store
    upsert_tickets(
        conn, dialect, [ticket("ABC-1", "10001", "2026-11-27T10:00:00+00:00")], source="sweep", fetched_at=T0
    )
    gone_at = T0 + timedelta(minutes=1)

    assert mark_gone(conn, dialect, ["ABC-1", "ABC-404"], confirmed_at=gone_at) == ["ABC-1"]
    assert mark_gone(conn, dialect, ["ABC-1"], confirmed_at=gone_at + timedelta(minutes=1)) == []
    row = get_ticket(conn, dialect, "ABC-1")
    assert row["deleted_at"] == gone_at and row["status"] == "In Progress"
    assert count_tickets(conn, dialect) == 1

    # Restored in Jira (same updated, e.g. un-hidden): the next fetch clears deleted_at.
    result = upsert_tickets(
        conn,
        dialect,
        [ticket("ABC-1", "10001", "2026-11-27T10:00:00+00:00")],
        source="sweep",
        fetched_at=gone_at + timedelta(minutes=5),
    )
    assert result.changed == ("ABC-1",)
    assert get_ticket(conn, dialect, "ABC-1")["deleted_at"] is None


def test_a_fetch_older_than_the_deletion_does_not_revive_the_row(store):
    conn, dialect = store
    upsert_tickets(
        conn, dialect, [ticket("ABC-1", "10001", "2026-11-27T10:00:00+00:00")], source="sweep", fetched_at=T0
    )
    mark_gone(conn, dialect, ["ABC-1"], confirmed_at=T0 + timedelta(minutes=2))

    upsert_tickets(
        conn,
        dialect,
        [ticket("ABC-1", "10001", "2026-11-27T10:00:00+00:00")],
        source="inbox",
        fetched_at=T0 + timedelta(minutes=1),
    )

    assert get_ticket(conn, dialect, "ABC-1")["deleted_at"] == T0 + timedelta(minutes=2)


def test_a_confirmation_older_than_the_last_fetch_marks_nothing(store):
    conn, dialect = store
    upsert_tickets(
        conn, dialect, [ticket("ABC-1", "10001", "2026-11-27T10:00:00+00:00")], source="sweep", fetched_at=T0
    )

    assert mark_gone(conn, dialect, ["ABC-1"], confirmed_at=T0 - timedelta(seconds=1)) == []
    assert get_ticket(conn, dialect, "ABC-1")["deleted_at"] is None


def test_a_moved_then_deleted_ticket_is_found_by_its_old_key(store):
    conn, dialect = store
    upsert_tickets(
        conn, dialect, [ticket("ABC-1", "10001", "2026-11-27T10:00:00+00:00")], source="sweep", fetched_at=T0
    )
    upsert_tickets(
        conn, dialect, [ticket("XYZ-9", "10001", "2026-11-27T11:00:00+00:00")], source="sweep", fetched_at=T0
    )

    assert mark_gone(conn, dialect, ["ABC-1"], confirmed_at=T0 + timedelta(minutes=1)) == ["XYZ-9"]


# ----------------------------------------------------------------------------------------- migration


def test_a_v1_store_is_upgraded_in_place_with_no_row_lost(store_backend):
    dialect = store_backend.dialect
    conn = store_backend.connect()
    write_v1_store(
        conn,
        dialect,
        [
            ("ABC-1", "Done", "2026-11-27T09:00:00+00:00"),
            ("ABC-2", "To Do", "2026-11-27T09:30:00+00:00"),
            ("XYZ-9", "In Progress", "2026-11-27T10:00:00+00:00"),
        ],
    )

    ensure_table(conn, dialect)
    ensure_table(conn, dialect)  # a second run finds nothing to do

    assert all_keys(conn) == ["ABC-1", "ABC-2", "XYZ-9"]
    old = get_ticket(conn, dialect, "ABC-1")
    assert (old["status"], old["issue_id"], old["previous_keys"], old["deleted_at"], old["fields"]) == (
        "Done",
        None,
        [],
        None,
        None,
    )
    assert old["progress"] == {"progress": 60, "total": 120, "percent": 50}
    assert old["updated_at"] == datetime(2026, 11, 27, 9, tzinfo=UTC)


def test_after_the_upgrade_v1_rows_get_their_id_and_a_stale_old_key_row_folds_into_the_new_one(store_backend):
    """v1 left ABC-1 (before the move) and XYZ-9 (after it) as two rows of one issue: v2 makes them one."""
    dialect = store_backend.dialect
    conn = store_backend.connect()
    write_v1_store(
        conn,
        dialect,
        [
            ("ABC-1", "To Do", "2026-11-27T09:00:00+00:00"),
            ("XYZ-9", "In Progress", "2026-11-27T10:00:00+00:00"),
        ],
    )
    ensure_table(conn, dialect)

    # The sweep refetches XYZ-9 (it gets its id); then mail about ABC-1 is answered with XYZ-9.
    upsert_tickets(
        conn, dialect, [ticket("XYZ-9", "10001", "2026-11-27T10:00:00+00:00")], source="sweep", fetched_at=T0
    )
    assert all_keys(conn) == ["ABC-1", "XYZ-9"]
    result = upsert_tickets(
        conn,
        dialect,
        [ticket("XYZ-9", "10001", "2026-11-27T10:00:00+00:00", moved_from=["ABC-1"])],
        source="inbox",
        fetched_at=T0,
    )

    assert all_keys(conn) == ["XYZ-9"]
    assert result.moved == 1
    row = get_ticket(conn, dialect, "ABC-1")
    assert (row["key"], row["issue_id"], row["previous_keys"]) == ("XYZ-9", 10001, ["ABC-1"])


def test_an_upgraded_postgres_store_needs_only_dml_rights_afterwards(postgres_db):
    import secrets

    from psycopg.conninfo import make_conninfo

    role, password = f"sync_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    with postgres_db.connect(autocommit=True) as admin:
        write_v1_store(admin, "postgres", [("ABC-1", "Done", "2026-11-27T09:00:00+00:00")])
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        admin.execute(f"GRANT SELECT, INSERT, UPDATE ON jira_ticket TO {role}")
    dsn = make_conninfo(postgres_db.dsn, user=role, password=password)

    with psycopg.connect(dsn) as limited:
        # Before the one-time DDL: a clear refusal, nothing half-done.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            ensure_table(limited, "postgres")
        limited.rollback()
    with postgres_db.connect(autocommit=True) as admin:
        # What the README gives a DBA: the version-2 statements, the census columns, the site key.
        for statement in [
            *upgrade_statements("postgres"),
            *census_upgrade_statements("postgres"),
            *site_upgrade_statements("postgres"),
        ]:
            admin.execute(statement)
    with psycopg.connect(dsn) as limited:
        ensure_table(limited, "postgres")
        result = upsert_tickets(
            limited,
            "postgres",
            [ticket("ABC-1", "10001", "2026-11-27T10:00:00+00:00")],
            source="sweep",
            fetched_at=T0,
        )
        assert result.written == 1
        assert get_ticket(limited, "postgres", "ABC-1")["issue_id"] == 10001


# --------------------------------------------------------------------------------------- concurrency


def _slow_writes(conn, seconds: float) -> None:
    """Make every row write sleep, so two transactions hold their first row lock while asking for the next."""
    conn.execute(
        f"""CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN PERFORM pg_sleep({seconds}); RETURN NEW; END $$"""
    )
    conn.execute(f"CREATE TRIGGER slow_row BEFORE UPDATE ON {TABLE} FOR EACH ROW EXECUTE FUNCTION slow_row()")


def test_concurrent_inbox_and_sweep_writes_of_the_same_tickets_never_deadlock_on_postgres(postgres_db):
    keys = [f"ABC-{n}" for n in range(1, 7)]
    ids = {key: str(10000 + n) for n, key in enumerate(keys, start=1)}
    with postgres_db.connect(autocommit=True) as admin:
        ensure_table(admin, "postgres")
        upsert_tickets(
            admin,
            "postgres",
            [ticket(k, ids[k], "2026-11-27T09:00:00+00:00") for k in keys],
            source="sweep",
            fetched_at=T0,
        )
        _slow_writes(admin, 0.05)
    # The inbox meets the keys in mail order, the sweep in search order: opposite orders.
    orders = {"inbox": keys, "sweep": list(reversed(keys))}
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def write(source: str) -> None:
        with postgres_db.connect() as conn:
            conn.execute("SET deadlock_timeout = '100ms'")
            conn.commit()
            start.wait()
            try:
                upsert_tickets(
                    conn,
                    "postgres",
                    [ticket(k, ids[k], "2026-11-27T10:00:00+00:00", status=source) for k in orders[source]],
                    source=source,
                    fetched_at=T0,
                )
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

    threads = [threading.Thread(target=write, args=(source,)) for source in orders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    with postgres_db.connect() as conn:
        statuses = {get_ticket(conn, "postgres", k)["status"] for k in keys}
    # One transaction waited for the other and then wrote every row: all rows carry the same source.
    assert len(statuses) == 1 and statuses <= {"inbox", "sweep"}


@pytest.mark.parametrize("table_state", ["missing", "v1"])
def test_two_first_runs_at_once_do_not_race_on_the_schema_on_postgres(postgres_db, table_state):
    rounds = 6
    for round_number in range(rounds):
        with postgres_db.connect(autocommit=True) as admin:
            admin.execute(f"DROP TABLE IF EXISTS {TABLE}")
            if table_state == "v1":
                write_v1_store(admin, "postgres", [("ABC-1", "Done", "2026-11-27T09:00:00+00:00")])
        start = threading.Barrier(4)
        errors: list[BaseException] = []

        def first_run(start: threading.Barrier = start, errors: list[BaseException] = errors) -> None:
            with postgres_db.connect() as conn:
                start.wait()
                try:
                    ensure_table(conn, "postgres")
                except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                    errors.append(exc)

        threads = [threading.Thread(target=first_run) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert errors == [], f"round {round_number}: {errors!r}"
    with postgres_db.connect() as conn:
        upsert_tickets(
            conn,
            "postgres",
            [ticket("ABC-1", "10001", "2026-11-27T10:00:00+00:00")],
            source="sweep",
            fetched_at=T0,
        )
        assert get_ticket(conn, "postgres", "ABC-1")["issue_id"] == 10001


@pytest.mark.parametrize("table_state", ["missing", "v1"])
def test_two_first_runs_at_once_do_not_race_on_the_schema_on_sqlite(tmp_path, table_state):
    # A few rounds: without the schema lock one round in two or three fails ("database is locked",
    # or a duplicate column), so six rounds make a regression show almost surely.
    for round_number in range(6):
        path = tmp_path / f"store-{round_number}.db"
        conns = [sqlite3.connect(path, timeout=10, check_same_thread=False) for _ in range(4)]
        if table_state == "v1":
            write_v1_store(conns[0], "sqlite", [("ABC-1", "Done", "2026-11-27T09:00:00+00:00")])
        start = threading.Barrier(4)
        errors: list[BaseException] = []

        def first_run(conn, start: threading.Barrier = start, errors: list[BaseException] = errors) -> None:
            start.wait()
            try:
                ensure_table(conn, "sqlite")
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=first_run, args=(conn,)) for conn in conns]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        for conn in conns[1:]:
            conn.close()

        assert errors == [], f"round {round_number}: {errors!r}"
        upsert_tickets(
            conns[0],
            "sqlite",
            [ticket("ABC-1", "10001", "2026-11-27T10:00:00+00:00")],
            source="sweep",
            fetched_at=T0,
        )
        assert get_ticket(conns[0], "sqlite", "ABC-1")["issue_id"] == 10001
        conns[0].close()


def test_the_readme_prints_exactly_the_one_time_ddl_the_upgrade_runs():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Upgrading a store written by an earlier version") :]
    block = section[
        section.index("```sql\n") + len("```sql\n") : section.index("\n```", section.index("```sql"))
    ]

    assert [line.rstrip(";") for line in block.splitlines()] == upgrade_statements("postgres")
