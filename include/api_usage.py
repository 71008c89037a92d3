"""How much the sync asks of Jira: one row per task that called it, for the "Jira sync" page.

Each task that talks to Jira writes one row when its client closes: how many requests it sent, how
many Jira answered 429 (Too Many Requests), and the last such answer with its `Retry-After`. The page
sums the last hour and shows the latest 429, so a user sees whether Jira is throttling the sync.

Each row names the Jira connection the requests went to (`jira_conn_id`): Jira rate-limits each site
on its own, and sites of a sites file may share a store, so the page shows each site its own figures.
Rows written before the column existed are the plain site's (`jira_default`): it is added in place
with that default.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from include.names import API_USAGE_TABLE, JIRA_CONN_ID
from include.store_db import (
    as_utc_datetime,
    check_dialect,
    create_missing,
    placeholder,
    read,
    table_columns,
    table_exists,
    timestamp_param,
    transaction,
    upgrade_missing,
)

TABLE = API_USAGE_TABLE
MAX_TASK_CHARS = 250

_DDL = {
    "sqlite": (
        f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recorded_at TEXT NOT NULL,
    task TEXT NOT NULL,
    requests INTEGER NOT NULL CHECK (requests >= 0),
    throttled INTEGER NOT NULL CHECK (throttled >= 0),
    last_throttled_at TEXT,
    last_retry_after_seconds REAL,
    jira_conn_id TEXT NOT NULL DEFAULT '{JIRA_CONN_ID}'
)""",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_recorded_at_idx ON {TABLE} (recorded_at)",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_last_throttled_at_idx ON {TABLE} (last_throttled_at)",
    ),
    "postgres": (
        f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    id BIGSERIAL PRIMARY KEY,
    recorded_at TIMESTAMPTZ NOT NULL,
    task TEXT NOT NULL,
    requests INTEGER NOT NULL CHECK (requests >= 0),
    throttled INTEGER NOT NULL CHECK (throttled >= 0),
    last_throttled_at TIMESTAMPTZ,
    last_retry_after_seconds DOUBLE PRECISION,
    jira_conn_id TEXT NOT NULL DEFAULT '{JIRA_CONN_ID}'
)""",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_recorded_at_idx ON {TABLE} (recorded_at)",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_last_throttled_at_idx ON {TABLE} (last_throttled_at)",
    ),
}


@dataclass(frozen=True)
class Throttle:
    """One 429 answer from Jira: when, and how long it asked the sync to wait (None if it did not say)."""

    at: datetime
    retry_after_seconds: float | None


@dataclass(frozen=True)
class Usage:
    """What one task asked of Jira."""

    task: str
    requests: int
    throttled: int = 0
    last_throttle: Throttle | None = None
    # The Jira connection (so the site) the requests went to.
    jira_conn_id: str = JIRA_CONN_ID


CONN_COLUMN = "jira_conn_id"
CONN_COLUMN_DDL = f"ALTER TABLE {TABLE} ADD COLUMN {CONN_COLUMN} TEXT NOT NULL DEFAULT '{JIRA_CONN_ID}'"


def ensure_table(conn: Any, dialect: str) -> None:
    """Create the table, or add `jira_conn_id` to an older one in place (one read when up to date)."""
    check_dialect(dialect)
    create_missing(conn, dialect, TABLE, _DDL[dialect])
    upgrade_missing(conn, dialect, TABLE, CONN_COLUMN, (CONN_COLUMN_DDL,))


def _moment(value: datetime | None, dialect: str) -> Any:
    return None if value is None else timestamp_param(value, dialect, "a usage timestamp")


def record_usage(conn: Any, dialect: str, usage: Usage, *, now: datetime | None = None) -> None:
    """Write one task's figures (a task that sent nothing writes nothing)."""
    if usage.requests < 0 or usage.throttled < 0 or usage.throttled > usage.requests:
        raise ValueError(f"requests and throttled must satisfy 0 <= throttled <= requests, got {usage!r}")
    if usage.requests == 0:
        return
    ensure_table(conn, dialect)
    throttle = usage.last_throttle
    p = placeholder(dialect)
    with transaction(conn, dialect) as cursor:
        cursor.execute(
            f"INSERT INTO {TABLE} (recorded_at, task, requests, throttled, last_throttled_at, "
            f"last_retry_after_seconds, {CONN_COLUMN}) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p})",
            (
                _moment(now or datetime.now(UTC), dialect),
                usage.task[:MAX_TASK_CHARS],
                usage.requests,
                usage.throttled,
                _moment(throttle.at if throttle else None, dialect),
                throttle.retry_after_seconds if throttle else None,
                usage.jira_conn_id,
            ),
        )


def usage_since(
    conn: Any, dialect: str, since: datetime, *, jira_conn_id: str | None = None
) -> dict[str, Any]:
    """Requests and 429s recorded since `since`, and the latest 429 ever recorded (or None).

    `jira_conn_id` narrows them to the requests sent to that connection's Jira (None: every one).
    Read-only: a store the sync has not written to yet answers zeros instead of creating the table,
    and a table without `jira_conn_id` yet holds the plain site's rows only.
    """
    check_dialect(dialect)
    empty = {"requests": 0, "throttled": 0, "last_throttle": None}
    if not table_exists(conn, dialect, TABLE):
        return empty
    p = placeholder(dialect)
    mine, narrowed = "", ()
    if jira_conn_id is not None:
        if CONN_COLUMN in table_columns(conn, dialect, TABLE):
            mine, narrowed = f" AND {CONN_COLUMN} = {p}", (jira_conn_id,)
        elif jira_conn_id != JIRA_CONN_ID:
            return empty
    ((requests, throttled),) = read(
        conn,
        dialect,
        f"SELECT coalesce(sum(requests), 0), coalesce(sum(throttled), 0) FROM {TABLE} "
        f"WHERE recorded_at >= {p}{mine}",
        (_moment(since, dialect), *narrowed),
    )
    latest = read(
        conn,
        dialect,
        f"SELECT last_throttled_at, last_retry_after_seconds, task FROM {TABLE} "
        f"WHERE last_throttled_at IS NOT NULL{mine} ORDER BY last_throttled_at DESC LIMIT 1",
        narrowed,
    )
    last = None
    if latest:
        at, retry_after, task = latest[0]
        last = {"at": as_utc_datetime(at), "retry_after_seconds": retry_after, "task": task}
    return {"requests": int(requests), "throttled": int(throttled), "last_throttle": last}
