"""A minimal mail ledger to the shared contract, for the status tests and bench until mail_ledger lands.

The contract (the lead's, shared by the ledger and ui work): table `jira_mail_ledger` with
(mailbox, uidvalidity, uid) as key, `state` one of rejected/failed/quarantined/settled, and the two read
functions `count_by_state` and `list_entries`. When the real module exists, `ledger_module()` returns it
and `create_table` uses its DDL if it has one; this file then only adds rows, as the DAG would.
"""

from __future__ import annotations

import importlib
import json
import sys
import types
from datetime import UTC, datetime
from typing import Any

from include.names import MAIL_LEDGER_TABLE
from include.store_db import as_utc_datetime, placeholder, read, sqlite_timestamp, transaction

STATES = ("rejected", "failed", "quarantined", "settled")
_TIME = {"sqlite": "TEXT", "postgres": "TIMESTAMPTZ"}


def _ddl(dialect: str) -> tuple[str, ...]:
    time_type = _TIME[dialect]
    return (
        f"""CREATE TABLE IF NOT EXISTS {MAIL_LEDGER_TABLE} (
    mailbox TEXT NOT NULL, uidvalidity BIGINT NOT NULL, uid BIGINT NOT NULL,
    message_id TEXT, sender TEXT, subject TEXT, ticket_keys TEXT,
    state TEXT NOT NULL CHECK (state IN ('rejected', 'failed', 'quarantined', 'settled')),
    reason TEXT, attempts INTEGER NOT NULL DEFAULT 0, next_try_at {time_type},
    first_seen_at {time_type} NOT NULL, updated_at {time_type} NOT NULL,
    PRIMARY KEY (mailbox, uidvalidity, uid)
)""",
        f"CREATE INDEX IF NOT EXISTS {MAIL_LEDGER_TABLE}_state_idx "
        f"ON {MAIL_LEDGER_TABLE} (state, updated_at)",
    )


def _value(moment: datetime, dialect: str) -> Any:
    return sqlite_timestamp(moment) if dialect == "sqlite" else moment.astimezone(UTC)


def count_by_state(conn: Any, dialect: str, *, mailbox: str | None = None) -> dict[str, int]:
    p = placeholder(dialect)
    where, params = (f" WHERE mailbox = {p}", (mailbox,)) if mailbox else ("", ())
    rows = read(
        conn, dialect, f"SELECT state, count(*) FROM {MAIL_LEDGER_TABLE}{where} GROUP BY state", params
    )
    return {state: int(count) for state, count in rows}


_COLUMNS = (
    "mailbox", "uidvalidity", "uid", "message_id", "sender", "subject", "ticket_keys", "state", "reason",
    "attempts", "next_try_at", "first_seen_at", "updated_at",
)  # fmt: skip


def list_entries(conn: Any, dialect: str, *, states: Any, limit: int = 100) -> list[dict[str, Any]]:
    p = placeholder(dialect)
    rows = read(
        conn,
        dialect,
        f"SELECT {', '.join(_COLUMNS)} FROM {MAIL_LEDGER_TABLE} "
        f"WHERE state IN ({', '.join(p for _ in states)}) "
        f"ORDER BY updated_at DESC LIMIT {int(limit)}",
        tuple(states),
    )
    entries = []
    for row in rows:
        entry = dict(zip(_COLUMNS, row, strict=True))
        for column in ("next_try_at", "first_seen_at", "updated_at"):
            if entry[column] is not None:
                entry[column] = as_utc_datetime(entry[column])
        entry["ticket_keys"] = json.loads(entry["ticket_keys"]) if entry["ticket_keys"] else []
        entries.append(entry)
    return entries


def ledger_module() -> types.ModuleType:
    """include.mail_ledger if it exists, else this contract module registered under that name."""
    try:
        return importlib.import_module("include.mail_ledger")
    except ModuleNotFoundError:
        module = sys.modules[__name__]
        sys.modules["include.mail_ledger"] = module
        return module


def forget_stand_in() -> None:
    if sys.modules.get("include.mail_ledger") is sys.modules[__name__]:
        del sys.modules["include.mail_ledger"]


def create_table(conn: Any, dialect: str) -> None:
    real = ledger_module()
    if real is not sys.modules[__name__] and hasattr(real, "ensure_table"):
        real.ensure_table(conn, dialect)
        return
    with transaction(conn, dialect) as cursor:
        for statement in _ddl(dialect):
            cursor.execute(statement)


def add_entries(conn: Any, dialect: str, entries: list[dict[str, Any]]) -> None:
    """Insert rows as the DAG would leave them (columns of the contract; defaults filled in)."""
    p = placeholder(dialect)
    now = datetime.now(UTC)
    with transaction(conn, dialect) as cursor:
        for entry in entries:
            row = {
                "mailbox": "INBOX", "message_id": None, "sender": None, "subject": None, "ticket_keys": None,
                "reason": None, "attempts": 0, "next_try_at": None, "first_seen_at": now, "updated_at": now,
                **entry,
            }  # fmt: skip
            if isinstance(row["ticket_keys"], list):
                row["ticket_keys"] = json.dumps(row["ticket_keys"])
            for column in ("next_try_at", "first_seen_at", "updated_at"):
                if row[column] is not None:
                    row[column] = _value(row[column], dialect)
            cursor.execute(
                f"INSERT INTO {MAIL_LEDGER_TABLE} ({', '.join(_COLUMNS)}) "
                f"VALUES ({', '.join(p for _ in _COLUMNS)})",
                tuple(row[column] for column in _COLUMNS),
            )
