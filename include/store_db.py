"""DB-API helpers that every table of the store shares, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

DIALECTS = ("sqlite", "postgres")


def check_dialect(dialect: str) -> None:
    if dialect not in DIALECTS:
        raise ValueError(f"dialect must be one of {DIALECTS}, got {dialect!r}")


def placeholder(dialect: str) -> str:
    return "?" if dialect == "sqlite" else "%s"


def sqlite_timestamp(moment: datetime) -> str:
    # One fixed width and offset, so that SQLite's string comparison is chronological.
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def timestamp_param(moment: datetime, dialect: str, what: str = "a timestamp") -> Any:
    """An aware datetime as the query parameter a timestamp column takes: SQLite text, else UTC datetime."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {moment!r}")
    return sqlite_timestamp(moment) if dialect == "sqlite" else moment.astimezone(UTC)


def as_utc_datetime(value: Any) -> datetime:
    """A stored timestamp (SQLite text or a PostgreSQL timestamptz) as an aware UTC datetime."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(UTC)


@contextmanager
def transaction(conn: Any, dialect: str) -> Iterator[Any]:
    """A cursor inside one transaction: committed when the block ends, rolled back if it raises."""
    # sqlite3 opens its implicit transaction only at the first INSERT and not at all with
    # isolation_level=None, and psycopg may be in autocommit mode: BEGIN explicitly in those cases
    # so that every chunk commits or rolls back together.
    cursor = conn.cursor()
    if dialect == "sqlite":
        if not conn.in_transaction:
            cursor.execute("BEGIN")
    elif getattr(conn, "autocommit", False):
        cursor.execute("BEGIN")
    try:
        yield cursor
    except BaseException:
        conn.rollback()
        raise
    else:
        conn.commit()
    finally:
        cursor.close()


def table_exists(conn: Any, dialect: str, table: str) -> bool:
    check_dialect(dialect)
    with transaction(conn, dialect) as cursor:
        return _exists(cursor, dialect, table)


def _exists(cursor: Any, dialect: str, table: str) -> bool:
    if dialect == "sqlite":
        cursor.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
    else:
        cursor.execute("SELECT count(*) FROM pg_catalog.pg_class WHERE oid = to_regclass(%s)", (table,))
    (found,) = cursor.fetchone()
    return bool(found)


def columns_query(dialect: str, table: str) -> tuple[str, tuple[str]]:
    """The query (and its parameters) listing a table's column names: no rows when the table is missing.

    Apart from table_columns, so a caller holding a schema lock can run it on the locked cursor.
    """
    check_dialect(dialect)
    if dialect == "sqlite":
        return "SELECT name FROM pragma_table_info(?)", (table,)
    return (
        "SELECT attname FROM pg_catalog.pg_attribute "
        "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
        (table,),
    )


def table_columns(conn: Any, dialect: str, table: str) -> set[str]:
    """The names of a table's columns (empty when the table is missing); a read, no DDL rights needed."""
    return {str(name) for (name,) in read(conn, dialect, *columns_query(dialect, table))}


def table_columns_in(cursor: Any, dialect: str, table: str) -> set[str]:
    """table_columns on an open cursor (inside schema_change, say, to look again under the lock)."""
    cursor.execute(*columns_query(dialect, table))
    return {str(name) for (name,) in cursor.fetchall()}


def _schema_lock_id(table: str) -> int:
    # One advisory lock per table, the same in every process (Python's hash() is salted per process).
    return zlib.crc32(f"jira-mail-sync schema {table}".encode())


@contextmanager
def schema_change(conn: Any, dialect: str, table: str) -> Iterator[Any]:
    """A transaction in which one process at a time changes `table`'s schema.

    Two first runs at once would otherwise both find the table missing and both CREATE it, and
    PostgreSQL fails the loser's `CREATE TABLE IF NOT EXISTS` with a unique violation on pg_type.
    PostgreSQL: a transaction-level advisory lock; SQLite: BEGIN IMMEDIATE, which takes the write
    lock at once (a deferred transaction upgraded later fails with "database is locked" instead of
    waiting). The caller looks again inside the block: the other process may have done the work.
    """
    check_dialect(dialect)
    if dialect == "sqlite" and not conn.in_transaction:
        conn.execute("BEGIN IMMEDIATE")
    with transaction(conn, dialect) as cursor:
        if dialect == "postgres":
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_schema_lock_id(table),))
        yield cursor


def create_missing(conn: Any, dialect: str, table: str, statements: tuple[str, ...]) -> None:
    """Run a table's DDL only when the table is missing.

    It looks first: even `CREATE ... IF NOT EXISTS` needs DDL rights and takes locks on PostgreSQL
    that wait behind open writers, so a deployment whose role has DML rights only keeps working.
    Concurrent first runs take turns (see schema_change), so only one of them creates the table.
    """
    if table_exists(conn, dialect, table):
        return
    with schema_change(conn, dialect, table) as cursor:
        if _exists(cursor, dialect, table):
            return
        for statement in statements:
            cursor.execute(statement)


def upgrade_missing(conn: Any, dialect: str, table: str, column: str, statements: tuple[str, ...]) -> bool:
    """Run an in-place upgrade's statements unless `table` already has `column`; True when this call ran them.

    One read when up to date (DML rights suffice). Otherwise, under the table's schema lock, it looks
    again (another first run may have upgraded it while this one waited) and runs the statements in
    one transaction: `column` must be one they add, so its presence means the whole step is done.
    """
    if column in table_columns(conn, dialect, table):
        return False
    with schema_change(conn, dialect, table) as cursor:
        if column in table_columns_in(cursor, dialect, table):
            return False
        for statement in statements:
            cursor.execute(statement)
    return True


def read(conn: Any, dialect: str, query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """Run one SELECT and return its rows, leaving no transaction open that was not open before."""
    # A psycopg SELECT outside a transaction would leave one open ("idle in transaction");
    # end it again, but never touch a transaction the caller already had open.
    was_idle = dialect == "postgres" and not getattr(conn, "autocommit", False) and _pg_idle(conn)
    cursor = conn.cursor()
    try:
        cursor.execute(query, params)
        return cursor.fetchall()
    finally:
        cursor.close()
        if was_idle:
            conn.rollback()


def _pg_idle(conn: Any) -> bool:
    # psycopg 3 and psycopg2 both expose libpq's PQtransactionStatus here; 0 is PQTRANS_IDLE.
    return conn.info.transaction_status == 0
