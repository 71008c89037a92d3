"""DB-API helpers that every table of the store shares, on SQLite and PostgreSQL alike."""

from __future__ import annotations

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
        if dialect == "sqlite":
            cursor.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
        else:
            cursor.execute("SELECT count(*) FROM pg_catalog.pg_class WHERE oid = to_regclass(%s)", (table,))
        (found,) = cursor.fetchone()
    return bool(found)


def create_missing(conn: Any, dialect: str, table: str, statements: tuple[str, ...]) -> None:
    """Run a table's DDL only when the table is missing.

    It looks first: even `CREATE ... IF NOT EXISTS` needs DDL rights and takes locks on PostgreSQL
    that wait behind open writers, so a deployment whose role has DML rights only keeps working.
    """
    if table_exists(conn, dialect, table):
        return
    with transaction(conn, dialect) as cursor:
        for statement in statements:
            cursor.execute(statement)


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
