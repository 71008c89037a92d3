"""Refused IMAP logins of the IDLE watcher: when to try again (at most hourly), and what the sync page shows.

A refused login (a wrong password, a revoked OAuth grant) is not fixed by retrying, and retrying
every few minutes can get the mailbox locked by the provider. So after a refusal the watcher tries
again once an hour, logs once an hour, and writes its state to the store database, where the Jira
sync page reads it (`read_refused_logins`). The decision (`RefusedLogins`) takes its clock as an
argument, so tests drive time without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from include.names import WATCH_STATE_TABLE
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

TABLE = WATCH_STATE_TABLE
# At most one login attempt, and one log line, per hour while logins are refused.
REFUSED_LOGIN_RETRY_S = 3600.0
DETAIL_MAX = 500

_DDL = {
    dialect: (
        f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    imap_conn_id TEXT NOT NULL,
    mailbox TEXT NOT NULL,
    refused_since {kind} NOT NULL,
    next_try_at {kind} NOT NULL,
    detail TEXT,
    PRIMARY KEY (imap_conn_id, mailbox)
)""",
    )
    for dialect, kind in (("sqlite", "TEXT"), ("postgres", "TIMESTAMPTZ"))
}


@dataclass
class RefusedLogins:
    """The refused-login state of one watcher. `clock` answers seconds since the epoch."""

    clock: Callable[[], float] = time.time
    retry_s: float = REFUSED_LOGIN_RETRY_S
    since: float | None = None
    last_logged: float | None = None
    detail: str = ""

    def refused(self, detail: str) -> bool:
        """Note a refused login; True when it is to be logged (the first, then at most once per retry_s)."""
        now = self.clock()
        self.detail = detail[:DETAIL_MAX]
        if self.since is None:
            self.since = now
        if self.last_logged is None or now - self.last_logged >= self.retry_s:
            self.last_logged = now
            return True
        return False

    def accepted(self) -> bool:
        """Note a login that worked; True if logins had been refused until now (worth one log line)."""
        was_refused = self.since is not None
        self.since = self.last_logged = None
        self.detail = ""
        return was_refused

    @property
    def is_refused(self) -> bool:
        return self.since is not None

    def next_try_at(self) -> float:
        return self.clock() + self.retry_s


def _moment(seconds: float, dialect: str) -> Any:
    return timestamp_param(datetime.fromtimestamp(seconds, UTC), dialect, "a watcher timestamp")


def save_refused_login(
    conn: Any, dialect: str, *, imap_conn_id: str, mailbox: str, refusals: RefusedLogins
) -> None:
    """Write (refused) or clear (accepted) the watcher's row; one statement once the table exists."""
    check_dialect(dialect)
    if not refusals.is_refused:
        if table_exists(conn, dialect, TABLE):
            p = placeholder(dialect)
            with transaction(conn, dialect) as cursor:
                cursor.execute(
                    f"DELETE FROM {TABLE} WHERE imap_conn_id = {p} AND mailbox = {p}", (imap_conn_id, mailbox)
                )
        return
    create_missing(conn, dialect, TABLE, _DDL[dialect])
    p = placeholder(dialect)
    assert refusals.since is not None
    with transaction(conn, dialect) as cursor:
        cursor.execute(
            f"INSERT INTO {TABLE} (imap_conn_id, mailbox, refused_since, next_try_at, detail) "
            f"VALUES ({p}, {p}, {p}, {p}, {p}) ON CONFLICT (imap_conn_id, mailbox) DO UPDATE SET "
            "next_try_at = excluded.next_try_at, detail = excluded.detail",
            (
                imap_conn_id,
                mailbox,
                _moment(refusals.since, dialect),
                _moment(refusals.next_try_at(), dialect),
                refusals.detail,
            ),
        )


def read_refused_logins(conn: Any, dialect: str) -> list[dict[str, Any]]:
    """For the Jira sync page: every watcher whose login is refused, as {"imap_conn_id", "mailbox",
    "refused_since", "next_try_at", "detail"} (aware UTC datetimes). A reader: no table, no rows."""
    check_dialect(dialect)
    if not table_exists(conn, dialect, TABLE):
        return []
    rows = read(
        conn,
        dialect,
        f"SELECT imap_conn_id, mailbox, refused_since, next_try_at, detail FROM {TABLE} "
        "ORDER BY imap_conn_id, mailbox",
        (),
    )
    return [
        {
            "imap_conn_id": conn_id,
            "mailbox": mailbox,
            "refused_since": as_utc_datetime(since),
            "next_try_at": as_utc_datetime(next_try),
            "detail": detail,
        }
        for conn_id, mailbox, since, next_try, detail in rows
    ]
