"""The jira_ticket table on SQLite or PostgreSQL: idempotent upserts where an older Jira update never wins."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from include.jira_rules import is_issue_key
from include.names import TICKET_TABLE
from include.store_db import (
    as_utc_datetime,
    check_dialect,
    create_missing,
    placeholder,
    read,
    sqlite_timestamp,
    transaction,
)
from include.store_db import table_exists as _table_exists

log = logging.getLogger(__name__)

TABLE = TICKET_TABLE
SOURCES = ("inbox", "sweep")
CHUNK_SIZE = 500
# Jira project keys start with a letter and go on with upper-case letters, digits or underscores;
# issue numbers start at 1.
_COLUMNS = ("key", "summary", "status", "assignee_email", "progress", "updated_at", "fetched_at", "source")

_DDL = {
    "sqlite": (
        f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    key TEXT PRIMARY KEY,
    summary TEXT NOT NULL,
    status TEXT NOT NULL,
    assignee_email TEXT,
    progress TEXT CHECK (progress IS NULL OR json_valid(progress)),
    updated_at TEXT NOT NULL,
    fetched_at TEXT NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('inbox', 'sweep'))
)""",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_updated_at_idx ON {TABLE} (updated_at)",
    ),
    "postgres": (
        f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    key TEXT PRIMARY KEY,
    summary TEXT NOT NULL,
    status TEXT NOT NULL,
    assignee_email TEXT,
    progress JSONB,
    updated_at TIMESTAMPTZ NOT NULL,
    fetched_at TIMESTAMPTZ NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('inbox', 'sweep'))
)""",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_updated_at_idx ON {TABLE} (updated_at)",
    ),
}


def _upsert_sql(dialect: str) -> str:
    # JSON goes over the wire as text and is cast on the server, so psycopg 3 and psycopg2 (either
    # can come out of PostgresHook) need no driver-specific JSON adapter.
    values = ", ".join(
        "%s::jsonb" if dialect == "postgres" and column == "progress" else placeholder(dialect)
        for column in _COLUMNS
    )
    updates = ", ".join(f"{column} = excluded.{column}" for column in _COLUMNS if column != "key")
    # An equal updated_at rewrites the same content (harmless, keeps reruns idempotent); only an
    # older one is skipped, so a late or replayed mail can never overwrite a newer state.
    return (
        f"INSERT INTO {TABLE} ({', '.join(_COLUMNS)}) VALUES ({values}) "
        f"ON CONFLICT (key) DO UPDATE SET {updates} "
        f"WHERE excluded.updated_at >= {TABLE}.updated_at"
    )


def _aware(value: Any, what: str) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{what} is not an ISO-8601 timestamp: {value!r}") from None
    else:
        raise ValueError(f"{what} must be an ISO-8601 string or datetime, got {type(value).__name__}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} has no UTC offset: {value!r}")
    return moment


def _text(ticket: Mapping[str, Any], field: str, key: str, *, nullable: bool = False) -> str | None:
    value = ticket.get(field)
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise ValueError(f"ticket {key}: {field} must be a string, got {type(value).__name__}")
    return value


def _row(ticket: Mapping[str, Any], dialect: str, source: str, fetched_at: datetime) -> tuple[Any, ...]:
    if not isinstance(ticket, Mapping):
        raise ValueError(f"a ticket must be a mapping, got {type(ticket).__name__}")
    key = ticket.get("key")
    if not is_issue_key(key):
        raise ValueError(f"not a Jira issue key: {key!r}")
    summary = _text(ticket, "summary", key)
    status = _text(ticket, "status", key)
    if not status:
        raise ValueError(f"ticket {key}: status must not be empty")
    assignee_email = _text(ticket, "assignee_email", key, nullable=True)
    progress = ticket.get("progress")
    if progress is not None and not isinstance(progress, Mapping):
        raise ValueError(f"ticket {key}: progress must be a dict or None, got {type(progress).__name__}")
    updated_at = _aware(ticket.get("updated_at"), f"ticket {key}: updated_at")
    progress_json = None
    if progress is not None:
        try:
            progress_json = json.dumps(dict(progress), sort_keys=True, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"ticket {key}: progress is not JSON-serialisable: {exc}") from None
    if dialect == "sqlite":
        return (
            key,
            summary,
            status,
            assignee_email,
            progress_json,
            sqlite_timestamp(updated_at),
            sqlite_timestamp(fetched_at),
            source,
        )
    return (key, summary, status, assignee_email, progress_json, updated_at, fetched_at, source)


def check_ticket(ticket: Mapping[str, Any]) -> None:
    """Raise ValueError for a ticket upsert_tickets would refuse, before it reaches a store.

    The fetch calls this per ticket, so one malformed answer from Jira fails only its own key instead
    of the whole store step.
    """
    _row(ticket, "sqlite", SOURCES[0], datetime.now(UTC))


def _chunks(items: Iterable[Mapping[str, Any]], size: int) -> Iterator[list[Mapping[str, Any]]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def ensure_table(conn: Any, dialect: str) -> None:
    """Create the table and its updated_at index if they are missing; safe to call every run."""
    check_dialect(dialect)
    create_missing(conn, dialect, TABLE, _DDL[dialect])


def table_exists(conn: Any, dialect: str) -> bool:
    return _table_exists(conn, dialect, TABLE)


@dataclass(frozen=True)
class UpsertResult:
    written: int
    stale_skipped: int


def upsert_tickets(
    conn: Any,
    dialect: str,
    tickets: Iterable[Mapping[str, Any]],
    *,
    source: str,
    fetched_at: datetime,
) -> UpsertResult:
    """Insert or update tickets by key in one transaction; only an equal or newer updated_at replaces a row.

    Each chunk of CHUNK_SIZE tickets is validated before it touches the database; a bad ticket
    (or any database error) rolls back everything written so far by this call.
    """
    check_dialect(dialect)
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if not isinstance(fetched_at, datetime):
        raise ValueError(f"fetched_at must be a datetime, got {type(fetched_at).__name__}")
    fetched_at = _aware(fetched_at, "fetched_at")
    statement = _upsert_sql(dialect)
    total = written = 0
    with transaction(conn, dialect) as cursor:
        for chunk in _chunks(tickets, CHUNK_SIZE):
            rows = [_row(ticket, dialect, source, fetched_at) for ticket in chunk]
            cursor.executemany(statement, rows)
            # Both drivers sum the affected rows over executemany; a stale row affects none.
            written += max(cursor.rowcount, 0)
            total += len(rows)
    result = UpsertResult(written=written, stale_skipped=total - written)
    log.info(
        "Upserted %s ticket(s) from %s: %s written, %s stale skipped",
        total,
        source,
        result.written,
        result.stale_skipped,
    )
    return result


def get_ticket(conn: Any, dialect: str, key: str) -> dict[str, Any] | None:
    """The stored ticket with progress as a dict (or None) and timestamps as aware UTC datetimes."""
    check_dialect(dialect)
    query = f"SELECT {', '.join(_COLUMNS)} FROM {TABLE} WHERE key = {placeholder(dialect)}"
    rows = read(conn, dialect, query, (key,))
    if not rows:
        return None
    ticket = dict(zip(_COLUMNS, rows[0], strict=True))
    if isinstance(ticket["progress"], str):
        ticket["progress"] = json.loads(ticket["progress"])
    ticket["updated_at"] = as_utc_datetime(ticket["updated_at"])
    ticket["fetched_at"] = as_utc_datetime(ticket["fetched_at"])
    return ticket


def count_tickets(conn: Any, dialect: str, *, source: str | None = None) -> int:
    """How many tickets are stored, optionally only those last written by `source`."""
    check_dialect(dialect)
    if source is not None and source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES} or None, got {source!r}")
    if source is None:
        rows = read(conn, dialect, f"SELECT COUNT(*) FROM {TABLE}", ())
    else:
        rows = read(
            conn, dialect, f"SELECT COUNT(*) FROM {TABLE} WHERE source = {placeholder(dialect)}", (source,)
        )
    return int(rows[0][0])
