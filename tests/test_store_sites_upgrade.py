"""The in-place upgrade that keys jira_ticket and jira_census_run by site, on real SQLite and PostgreSQL.

A store written before sites (version 2 with the census columns, and a census run table keyed by
project) is upgraded by the first ensure_table: no row lost, every row site 'default', the primary
key (site, key) and the unique index (site, issue_id); a second run changes nothing, concurrent first
runs take turns, and a fresh table has exactly the upgraded shape.
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime

import pytest

from include.census import ensure_run_table, last_runs, record_runs
from include.ticket_store import TABLE, count_tickets, ensure_table, get_ticket, upsert_tickets

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

# The table as the code before sites left it (version 1, the version-2 columns and index, the census
# columns), copied here and not imported: the product no longer writes this shape.
BEFORE_SITES = {
    "sqlite": (
        """CREATE TABLE jira_ticket (
    key TEXT PRIMARY KEY,
    summary TEXT NOT NULL,
    status TEXT NOT NULL,
    assignee_email TEXT,
    progress TEXT CHECK (progress IS NULL OR json_valid(progress)),
    updated_at TEXT NOT NULL,
    fetched_at TEXT NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('inbox', 'sweep'))
)""",
        "ALTER TABLE jira_ticket ADD COLUMN issue_id INTEGER",
        "ALTER TABLE jira_ticket ADD COLUMN previous_keys TEXT NOT NULL DEFAULT '[]' "
        "CHECK (json_valid(previous_keys))",
        "ALTER TABLE jira_ticket ADD COLUMN fields TEXT CHECK (fields IS NULL OR json_valid(fields))",
        "ALTER TABLE jira_ticket ADD COLUMN deleted_at TEXT",
        "CREATE UNIQUE INDEX jira_ticket_issue_id_key ON jira_ticket (issue_id)",
        "CREATE INDEX jira_ticket_updated_at_idx ON jira_ticket (updated_at)",
        "ALTER TABLE jira_ticket ADD COLUMN archived_at TEXT",
        "ALTER TABLE jira_ticket ADD COLUMN gone_reason TEXT",
        "ALTER TABLE jira_ticket ADD COLUMN census_at TEXT",
        """CREATE TABLE jira_census_run (
    project TEXT PRIMARY KEY, census_at TEXT NOT NULL, run_id TEXT, listed INTEGER NOT NULL,
    stored INTEGER NOT NULL, healed INTEGER NOT NULL, deleted_or_hidden INTEGER NOT NULL,
    not_visible INTEGER NOT NULL, archived INTEGER NOT NULL, moved_out INTEGER NOT NULL
)""",
    ),
    "postgres": (
        """CREATE TABLE jira_ticket (
    key TEXT PRIMARY KEY,
    summary TEXT NOT NULL,
    status TEXT NOT NULL,
    assignee_email TEXT,
    progress JSONB,
    updated_at TIMESTAMPTZ NOT NULL,
    fetched_at TIMESTAMPTZ NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('inbox', 'sweep'))
)""",
        "ALTER TABLE jira_ticket ADD COLUMN issue_id BIGINT",
        "ALTER TABLE jira_ticket ADD COLUMN previous_keys JSONB NOT NULL DEFAULT '[]'::jsonb",
        "ALTER TABLE jira_ticket ADD COLUMN fields JSONB",
        "ALTER TABLE jira_ticket ADD COLUMN deleted_at TIMESTAMPTZ",
        "CREATE UNIQUE INDEX jira_ticket_issue_id_key ON jira_ticket (issue_id)",
        "CREATE INDEX jira_ticket_updated_at_idx ON jira_ticket (updated_at)",
        "ALTER TABLE jira_ticket ADD COLUMN archived_at TIMESTAMPTZ",
        "ALTER TABLE jira_ticket ADD COLUMN gone_reason TEXT",
        "ALTER TABLE jira_ticket ADD COLUMN census_at TIMESTAMPTZ",
        """CREATE TABLE jira_census_run (
    project TEXT PRIMARY KEY, census_at TIMESTAMPTZ NOT NULL, run_id TEXT, listed INTEGER NOT NULL,
    stored INTEGER NOT NULL, healed INTEGER NOT NULL, deleted_or_hidden INTEGER NOT NULL,
    not_visible INTEGER NOT NULL, archived INTEGER NOT NULL, moved_out INTEGER NOT NULL
)""",
    ),
}
ROWS = [
    ("ABC-1", 10001, "Done", "2026-11-27T09:00:00+00:00", '["OLD-1"]', "2026-11-26T09:00:00+00:00"),
    ("ABC-2", 10002, "To Do", "2026-11-27T09:30:00+00:00", "[]", None),
    ("XYZ-9", None, "In Progress", "2026-11-27T10:00:00+00:00", "[]", None),
]


def write_store_before_sites(conn, dialect: str) -> None:
    mark = "?" if dialect == "sqlite" else "%s"
    json_mark = "?" if dialect == "sqlite" else "%s::jsonb"
    cursor = conn.cursor()
    for statement in BEFORE_SITES[dialect]:
        cursor.execute(statement)
    for key, issue_id, status, updated, previous, deleted in ROWS:
        cursor.execute(
            "INSERT INTO jira_ticket (key, issue_id, summary, status, updated_at, fetched_at, source, "
            f"previous_keys, deleted_at) VALUES ({mark}, {mark}, {mark}, {mark}, {mark}, {mark}, {mark}, "
            f"{json_mark}, {mark})",
            (
                key,
                issue_id,
                f"Summary of {key}",
                status,
                updated,
                "2026-11-27T11:00:00+00:00",
                "sweep",
                previous,
                deleted,
            ),
        )
    cursor.execute(
        "INSERT INTO jira_census_run VALUES "
        f"({mark}, {mark}, {mark}, {mark}, {mark}, {mark}, {mark}, {mark}, {mark}, {mark})",
        ("ABC", "2026-11-27T11:00:00+00:00", "run-1", 2, 2, 0, 0, 0, 0, 0),
    )
    conn.commit()
    cursor.close()


def query(conn, sql: str, params: tuple = ()) -> list[tuple]:
    cursor = conn.cursor()
    cursor.execute(sql, params)
    rows = cursor.fetchall()
    conn.commit()
    cursor.close()
    return rows


def primary_key(conn, dialect: str, table: str) -> list[str]:
    if dialect == "sqlite":
        rows = query(conn, "SELECT name, pk FROM pragma_table_info(?) WHERE pk > 0", (table,))
        return [name for name, _ in sorted(rows, key=lambda r: r[1])]
    rows = query(
        conn,
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(%s) AND i.indisprimary "
        "ORDER BY array_position(i.indkey, a.attnum)",
        (table,),
    )
    return [name for (name,) in rows]


def unique_indexes(conn, dialect: str) -> dict[str, list[str]]:
    """The table's unique indexes other than the primary key: name -> columns."""
    if dialect == "sqlite":
        names = [
            name
            for _, name, unique, origin, *_ in query(conn, f"PRAGMA index_list({TABLE})")
            if unique and origin == "c"
        ]
        return {name: [row[2] for row in query(conn, f"PRAGMA index_info({name})")] for name in names}
    rows = query(
        conn,
        "SELECT c.relname, a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = to_regclass(%s) AND i.indisunique AND NOT i.indisprimary "
        "ORDER BY c.relname, array_position(i.indkey, a.attnum)",
        (TABLE,),
    )
    found: dict[str, list[str]] = {}
    for name, column in rows:
        found.setdefault(name, []).append(column)
    return found


def schema_text(conn, dialect: str) -> list[tuple]:
    """Everything that defines the two tables' shape, to compare a fresh store with an upgraded one."""
    if dialect == "sqlite":
        return sorted(
            (str(name), " ".join(str(sql).replace('"', "").split()))
            for name, sql in query(
                conn,
                "SELECT name, sql FROM sqlite_master WHERE tbl_name IN ('jira_ticket', 'jira_census_run')",
            )
        )
    columns = query(
        conn,
        "SELECT table_name, column_name, data_type, is_nullable, column_default "
        "FROM information_schema.columns WHERE table_name IN ('jira_ticket', 'jira_census_run') "
        "ORDER BY table_name, column_name",
    )
    indexes = query(
        conn,
        "SELECT tablename, indexname, indexdef FROM pg_indexes "
        "WHERE tablename IN ('jira_ticket', 'jira_census_run') ORDER BY indexname",
    )
    return sorted(map(tuple, columns)) + sorted(map(tuple, indexes))


def ticket(key: str, issue_id: str, summary: str) -> dict:
    return {
        "key": key,
        "issue_id": issue_id,
        "summary": summary,
        "status": "To Do",
        "assignee_email": None,
        "progress": None,
        "updated_at": "2026-11-28T09:00:00+00:00",
    }


def test_a_store_from_before_sites_is_keyed_by_site_in_place_with_no_row_lost(store_backend):
    dialect = store_backend.dialect
    conn = store_backend.connect()
    write_store_before_sites(conn, dialect)
    assert primary_key(conn, dialect, TABLE) == ["key"]

    ensure_table(conn, dialect)
    ensure_run_table(conn, dialect)
    upgraded = schema_text(conn, dialect)
    ensure_table(conn, dialect)  # a second run finds nothing to do
    ensure_run_table(conn, dialect)
    assert schema_text(conn, dialect) == upgraded

    assert sorted(query(conn, f"SELECT site, key, issue_id, status FROM {TABLE}")) == [
        ("default", "ABC-1", 10001, "Done"),
        ("default", "ABC-2", 10002, "To Do"),
        ("default", "XYZ-9", None, "In Progress"),
    ]
    old = get_ticket(conn, dialect, "OLD-1")  # found by its former key, as before
    assert (old["key"], old["previous_keys"], old["deleted_at"]) == (
        "ABC-1",
        ["OLD-1"],
        datetime(2026, 11, 26, 9, tzinfo=UTC),
    )
    assert primary_key(conn, dialect, TABLE) == ["site", "key"]
    assert unique_indexes(conn, dialect) == {"jira_ticket_site_issue_id_key": ["site", "issue_id"]}
    assert primary_key(conn, dialect, "jira_census_run") == ["site", "project"]
    assert [(r["project"], r["run_id"]) for r in last_runs(conn, dialect)] == [("ABC", "run-1")]

    # Now another site may hold the same key and the same id in the same store.
    upsert_tickets(
        conn, dialect, [ticket("ABC-1", "10001", "other")], source="sweep", fetched_at=T0, site="other"
    )
    record_runs(conn, dialect, {"ABC": {"listed": 1}}, at=T0, run_id="run-2", site="other")
    assert count_tickets(conn, dialect) == 3 and count_tickets(conn, dialect, site="other") == 1
    assert get_ticket(conn, dialect, "ABC-1")["summary"] == "Summary of ABC-1"
    assert get_ticket(conn, dialect, "ABC-1", site="other")["summary"] == "other"
    assert [r["run_id"] for r in last_runs(conn, dialect)] == ["run-1"]
    assert [r["run_id"] for r in last_runs(conn, dialect, site="other")] == ["run-2"]


def test_a_fresh_store_has_exactly_the_shape_of_an_upgraded_one(store_backend, tmp_path, request):
    dialect = store_backend.dialect
    upgraded_conn = store_backend.connect()
    write_store_before_sites(upgraded_conn, dialect)
    cursor = upgraded_conn.cursor()
    cursor.execute(f"DELETE FROM {TABLE}")
    cursor.execute("DELETE FROM jira_census_run")
    upgraded_conn.commit()
    ensure_table(upgraded_conn, dialect)
    ensure_run_table(upgraded_conn, dialect)
    if dialect == "sqlite":
        fresh_conn = sqlite3.connect(tmp_path / "fresh.db")
    else:
        postgres_server = request.getfixturevalue("postgres_server")
        fresh_db = postgres_server.create_database()
        fresh_conn = fresh_db.connect()
    try:
        ensure_table(fresh_conn, dialect)
        ensure_run_table(fresh_conn, dialect)
        fresh = schema_text(fresh_conn, dialect)
    finally:
        fresh_conn.close()
        if dialect == "postgres":
            postgres_server.drop_database(fresh_db.dbname)
    assert fresh == schema_text(upgraded_conn, dialect)


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_concurrent_first_runs_upgrade_a_store_from_before_sites_once(dialect, tmp_path, request):
    for round_number in range(4):
        if dialect == "sqlite":
            path = tmp_path / f"store-{round_number}.db"
            conns = [sqlite3.connect(path, timeout=10, check_same_thread=False) for _ in range(4)]
        else:
            database = request.getfixturevalue("postgres_server").create_database()
            conns = [database.connect() for _ in range(4)]
        write_store_before_sites(conns[0], dialect)
        start = threading.Barrier(4)
        errors: list[BaseException] = []

        def first_run(conn, start=start, errors=errors) -> None:
            start.wait()
            try:
                ensure_table(conn, dialect)
                ensure_run_table(conn, dialect)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=first_run, args=(conn,)) for conn in conns]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == [], f"round {round_number}: {errors!r}"
        assert count_tickets(conns[0], dialect) == len(ROWS)
        assert primary_key(conns[0], dialect, TABLE) == ["site", "key"]
        assert primary_key(conns[0], dialect, "jira_census_run") == ["site", "project"]
        for conn in conns:
            conn.close()
        if dialect == "postgres":
            request.getfixturevalue("postgres_server").drop_database(database.dbname)


def test_the_readme_prints_exactly_the_site_ddl_the_upgrade_runs():
    from pathlib import Path

    from include.census import run_site_upgrade_statements
    from include.ticket_store import site_upgrade_statements

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("Sites (several Jira sites in one store") :]
    start = section.index("```sql\n") + len("```sql\n")
    block = section[start : section.index("\n```", start)]

    assert [line.rstrip(";") for line in block.splitlines()] == [
        *site_upgrade_statements("postgres"),
        *run_site_upgrade_statements("postgres"),
    ]
