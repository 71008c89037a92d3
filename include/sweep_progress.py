"""How far the scheduled sweep has got: one watermark row in the store, moved forward only."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from include.store_db import (
    as_utc_datetime,
    check_dialect,
    create_missing,
    placeholder,
    read,
    table_exists,
    timestamp_param,
    transaction,
)

TABLE = "jira_sweep_watermark"
# The scheduled sweep over every project; manual runs (since/until, projects, a filter) never move it.
SCHEDULED_SCOPE = "scheduled"


# --- #23 many sites: one watermark per site ---
def site_scope(site: str) -> str:
    """The watermark scope of `site`'s scheduled sweep; sites sharing a store never move each other's.

    The plain site keeps SCHEDULED_SCOPE, so a store written before sites existed needs no migration.
    """
    from include.names import DEFAULT_SITE

    return SCHEDULED_SCOPE if site == DEFAULT_SITE else f"{SCHEDULED_SCOPE}@{site}"


_DDL = {
    "sqlite": (
        f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    scope TEXT PRIMARY KEY,
    reached_at TEXT NOT NULL,
    recorded_at TEXT NOT NULL
)""",
    ),
    "postgres": (
        f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    scope TEXT PRIMARY KEY,
    reached_at TIMESTAMPTZ NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL
)""",
    ),
}


def ensure_table(conn: Any, dialect: str) -> None:
    check_dialect(dialect)
    create_missing(conn, dialect, TABLE, _DDL[dialect])


def _value(moment: datetime, dialect: str) -> Any:
    return timestamp_param(moment, dialect, "a watermark")


def get_watermark(conn: Any, dialect: str, scope: str = SCHEDULED_SCOPE) -> datetime | None:
    """The end of the contiguous span the sweep has stored, or None before its first recorded run.

    A reader never creates the table (the status page reads with a read-only role too): no table
    means no run recorded yet.
    """
    check_dialect(dialect)
    if not table_exists(conn, dialect, TABLE):
        return None
    rows = read(
        conn, dialect, f"SELECT reached_at FROM {TABLE} WHERE scope = {placeholder(dialect)}", (scope,)
    )
    return as_utc_datetime(rows[0][0]) if rows else None


def advance_watermark(
    conn: Any, dialect: str, reached: datetime, *, scope: str = SCHEDULED_SCOPE, now: datetime | None = None
) -> datetime:
    """Move the watermark to `reached` unless it is already later; returns the watermark now stored.

    The comparison happens in the database, so two runs finishing together can only move it forward.
    """
    ensure_table(conn, dialect)
    p = placeholder(dialect)
    recorded = _value(now or datetime.now(UTC), dialect)
    with transaction(conn, dialect) as cursor:
        cursor.execute(
            f"INSERT INTO {TABLE} (scope, reached_at, recorded_at) VALUES ({p}, {p}, {p}) "
            f"ON CONFLICT (scope) DO UPDATE SET reached_at = excluded.reached_at, "
            f"recorded_at = excluded.recorded_at WHERE excluded.reached_at > {TABLE}.reached_at",
            (scope, _value(reached, dialect), recorded),
        )
    stored = get_watermark(conn, dialect, scope)
    assert stored is not None  # the row was just written or was already later
    return stored
