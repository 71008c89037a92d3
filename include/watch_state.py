"""Refused IMAP logins of the IDLE watcher: when to try again (at most hourly), and what the sync page shows.

A refused login (a wrong password, a revoked OAuth grant) is not fixed by retrying, and retrying
every few minutes can get the mailbox locked by the provider. So after a refusal the watcher tries
again once an hour, logs once an hour, and writes its state to the store database, where the Jira
sync page reads it (`read_refused_logins`). The decision (`RefusedLogins`) takes its clock as an
argument, so tests drive time without sleeping.

One row per watched mailbox, keyed by (imap_conn_id, mailbox) as before sites existed, with the
`site` it feeds beside it. The key is kept, not widened by the site: the sites file lets one mailbox
feed one site only, so the pair already names one watcher; and a mailbox moved from one site to
another in the file then overwrites its row instead of leaving the old site's refusal on the page.
An older table gets `site` in place, its rows filled with the plain site's name (`default`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from include.names import DEFAULT_SITE, WATCH_STATE_TABLE
from include.store_db import (
    as_utc_datetime,
    check_dialect,
    create_missing,
    placeholder,
    read,
    schema_change,
    table_columns,
    table_columns_in,
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
    site TEXT NOT NULL DEFAULT '{DEFAULT_SITE}',
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


def ensure_table(conn: Any, dialect: str) -> None:
    """Create the table, or add `site` to an older one (under the schema lock); one read when current."""
    check_dialect(dialect)
    columns = table_columns(conn, dialect, TABLE)
    if not columns:
        create_missing(conn, dialect, TABLE, _DDL[dialect])
        return
    if "site" in columns:
        return
    with schema_change(conn, dialect, TABLE) as cursor:
        # Looked at again under the lock: another watcher may have added it meanwhile.
        if "site" not in table_columns_in(cursor, dialect, TABLE):
            cursor.execute(f"ALTER TABLE {TABLE} ADD COLUMN site TEXT NOT NULL DEFAULT '{DEFAULT_SITE}'")


def _moment(seconds: float, dialect: str) -> Any:
    return timestamp_param(datetime.fromtimestamp(seconds, UTC), dialect, "a watcher timestamp")


def save_refused_login(
    conn: Any,
    dialect: str,
    *,
    imap_conn_id: str,
    mailbox: str,
    refusals: RefusedLogins,
    site: str = DEFAULT_SITE,
) -> None:
    """Write (refused) or clear (accepted) the watcher's row, naming the `site` the mailbox feeds; one
    statement once the table is current."""
    check_dialect(dialect)
    if not refusals.is_refused:
        if table_exists(conn, dialect, TABLE):
            p = placeholder(dialect)
            with transaction(conn, dialect) as cursor:
                cursor.execute(
                    f"DELETE FROM {TABLE} WHERE imap_conn_id = {p} AND mailbox = {p}", (imap_conn_id, mailbox)
                )
        return
    ensure_table(conn, dialect)
    p = placeholder(dialect)
    assert refusals.since is not None
    with transaction(conn, dialect) as cursor:
        cursor.execute(
            f"INSERT INTO {TABLE} (site, imap_conn_id, mailbox, refused_since, next_try_at, detail) "
            f"VALUES ({p}, {p}, {p}, {p}, {p}, {p}) ON CONFLICT (imap_conn_id, mailbox) DO UPDATE SET "
            "site = excluded.site, next_try_at = excluded.next_try_at, detail = excluded.detail",
            (
                site,
                imap_conn_id,
                mailbox,
                _moment(refusals.since, dialect),
                _moment(refusals.next_try_at(), dialect),
                refusals.detail,
            ),
        )


def read_refused_logins(conn: Any, dialect: str) -> list[dict[str, Any]]:
    """For the Jira sync page: every watcher whose login is refused, as {"site", "imap_conn_id",
    "mailbox", "refused_since", "next_try_at", "detail"} (aware UTC datetimes). A reader: no table,
    no rows; a table no watcher has upgraded yet names the plain site."""
    check_dialect(dialect)
    columns = table_columns(conn, dialect, TABLE)
    if not columns:
        return []
    site = "site" if "site" in columns else f"'{DEFAULT_SITE}'"
    rows = read(
        conn,
        dialect,
        f"SELECT {site}, imap_conn_id, mailbox, refused_since, next_try_at, detail FROM {TABLE} "
        "ORDER BY imap_conn_id, mailbox",
        (),
    )
    return [
        {
            "site": site_name,
            "imap_conn_id": conn_id,
            "mailbox": mailbox,
            "refused_since": as_utc_datetime(since),
            "next_try_at": as_utc_datetime(next_try),
            "detail": detail,
        }
        for site_name, conn_id, mailbox, since, next_try, detail in rows
    ]
