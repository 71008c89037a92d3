"""How much the sync asks of Jira: one row per task that called it, for the "Jira sync" page.

Each task that talks to Jira writes one row when its client closes: how many requests it sent, how
many Jira answered 429 (Too Many Requests), and the last such answer with its `Retry-After`. The page
sums the last hour and shows the latest 429, so a user sees whether Jira is throttling the sync.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from include.names import API_USAGE_TABLE
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
    last_retry_after_seconds REAL
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
    last_retry_after_seconds DOUBLE PRECISION
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


def ensure_table(conn: Any, dialect: str) -> None:
    check_dialect(dialect)
    create_missing(conn, dialect, TABLE, _DDL[dialect])


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
            f"last_retry_after_seconds) VALUES ({p}, {p}, {p}, {p}, {p}, {p})",
            (
                _moment(now or datetime.now(UTC), dialect),
                usage.task[:MAX_TASK_CHARS],
                usage.requests,
                usage.throttled,
                _moment(throttle.at if throttle else None, dialect),
                throttle.retry_after_seconds if throttle else None,
            ),
        )


def usage_since(conn: Any, dialect: str, since: datetime) -> dict[str, Any]:
    """Requests and 429s recorded since `since`, and the latest 429 ever recorded (or None).

    Read-only: a store the sync has not written to yet answers zeros instead of creating the table.
    """
    check_dialect(dialect)
    if not table_exists(conn, dialect, TABLE):
        return {"requests": 0, "throttled": 0, "last_throttle": None}
    p = placeholder(dialect)
    ((requests, throttled),) = read(
        conn,
        dialect,
        f"SELECT coalesce(sum(requests), 0), coalesce(sum(throttled), 0) FROM {TABLE} "
        f"WHERE recorded_at >= {p}",
        (_moment(since, dialect),),
    )
    latest = read(
        conn,
        dialect,
        f"SELECT last_throttled_at, last_retry_after_seconds, task FROM {TABLE} "
        "WHERE last_throttled_at IS NOT NULL ORDER BY last_throttled_at DESC LIMIT 1",
        (),
    )
    last = None
    if latest:
        at, retry_after, task = latest[0]
        last = {"at": as_utc_datetime(at), "retry_after_seconds": retry_after, "task": task}
    return {"requests": int(requests), "throttled": int(throttled), "last_throttle": last}
