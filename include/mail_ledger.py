"""The mail ledger: what became of each Jira mail, by site, IMAP connection, mailbox, UIDVALIDITY and UID.

A mailbox is named by its site, its IMAP connection id and its folder, never by the folder alone: two
accounts' `INBOX` (of one site, or of two sites sharing a store) may even share a UIDVALIDITY (Dovecot
derives it from the creation time), and then a folder-only key would let one mailbox's rejected mail
hold back the other's and a settle of one overwrite the other's rows. The plain site's rows are
(`default`, `imap_default`); an older ledger is upgraded in place to that (see ensure_table).

The ledger, not IMAP keywords, decides which unseen messages the inbox leaves out: servers such as
Exchange Online and keyword-less Courier cannot keep `$JiraRejected`, so a label cannot be the memory.

States:
- `rejected`: the parser refused the mail (untrusted sender, no key, ...); never retried by itself.
- `failed`: a key it names could not be fetched or stored; retried after `next_try_at`, with a delay
  that doubles on each attempt; while it waits it takes no place in the run's window.
- `quarantined`: failed `max_attempts` times; never retried and never marked seen by itself.
- `settled`: every key it names was stored or confirmed not found, and the mail was marked seen.

A manual run releases rejected, failed or quarantined mail (`release`): it becomes `failed` with no
attempts and no waiting, so the next sensing takes it again.

Rejected mail that was moved out of the inbox (include.imap_inbox.Inbox.set_aside) keeps its row,
with where it went: `moved_to` (the server's mailbox name), `moved_uidvalidity` and `moved_uid` (from
the server's COPYUID, where it sent one). Such a row is not released by a manual run: the message
is no longer in the inbox, so a human moves it back (it is then new mail, with a new UID, and is
read again); see `moved_away`.

Settled and rejected rows are deleted `retention` after their last change (DEFAULT_RETENTION, or
the `[jira_mail_sync] ledger_retention_days` option the inbox task passes), at most PRUNE_BATCH
rows per run; failed and quarantined rows stay until mail is settled or a human acts.

Every write takes a whole run's messages and costs a fixed number of statements (one `executemany`
UPSERT per state, plus one SELECT for the attempt counts), never one per message. Rows under an
earlier UIDVALIDITY are kept for audit and never match a UID of the recreated mailbox, because the
UIDVALIDITY is part of the key and of every query.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from include.imap_wire import MAX_UID
from include.jira_mail.parser import MAX_MESSAGE_ID_CHARS
from include.names import DEFAULT_SITE, IMAP_CONN_ID, MAIL_LEDGER_TABLE
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

log = logging.getLogger(__name__)

TABLE = MAIL_LEDGER_TABLE
STATES = ("rejected", "failed", "quarantined", "settled")
# What the sensor leaves out: everything but settled mail (a settled message is seen anyway; if a
# human marks it unread again it is simply processed again, which the idempotent store allows).
HELD_STATES = ("rejected", "failed", "quarantined")
RELEASABLE_STATES = HELD_STATES
SUBJECT_MAX = 200
# An address is at most 254 characters (RFC 5321); with a display name, a From stays within this.
SENDER_MAX = 320
REASON_MAX = 500
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_RETRY_DELAY = timedelta(minutes=5)
# The doubling delay stops growing here, so a long Jira incident never parks mail for days.
MAX_RETRY_DELAY = timedelta(hours=6)
# Settled and rejected rows older than this are deleted by record_settled (one DELETE), so the table
# does not grow with every mail ever read; failed and quarantined rows stay until a human acts.
DEFAULT_RETENTION = timedelta(days=30)
PRUNED_STATES = ("settled", "rejected")
# The most rows one run deletes: the first run after a long outage (or a spam flood) does not hold
# locks on the whole table; later runs delete the rest.
PRUNE_BATCH = 10_000

# The mailbox identity (site, IMAP connection, folder) and the message (UIDVALIDITY, UID): the key.
KEY_COLUMNS = ("site", "imap_conn_id", "mailbox", "uidvalidity", "uid")
_IDENTITY_DEFAULTS = {"site": DEFAULT_SITE, "imap_conn_id": IMAP_CONN_ID}
_COLUMNS = (
    "site",
    "imap_conn_id",
    "mailbox",
    "uidvalidity",
    "uid",
    "message_id",
    "sender",
    "subject",
    "ticket_keys",
    "state",
    "reason",
    "attempts",
    "next_try_at",
    "first_seen_at",
    "updated_at",
)
# Where rejected mail went when it was moved out of the inbox; added in place to older tables.
_LOCATION_COLUMNS = {"moved_to": "TEXT", "moved_uidvalidity": "BIGINT", "moved_uid": "BIGINT"}
_LOCATION_DDL = ",\n    ".join(f"{name} {kind}" for name, kind in _LOCATION_COLUMNS.items())
_LISTED = (*_COLUMNS, *_LOCATION_COLUMNS)
_UID_AT = _COLUMNS.index("uid")
_STATE_CHECK = "CHECK (state IN ('rejected', 'failed', 'quarantined', 'settled'))"
_KEY = ", ".join(KEY_COLUMNS)
_INDEX = f"CREATE INDEX IF NOT EXISTS {TABLE}_state_updated_idx ON {TABLE} (state, updated_at)"


def _create_sql(dialect: str, name: str = TABLE) -> str:
    """The CREATE TABLE of the current ledger under `name` (the SQLite upgrade builds a copy first)."""
    text, moment = ("TEXT", "TEXT") if dialect == "sqlite" else ("TEXT", "TIMESTAMPTZ")
    # SQLite checks the JSON itself; PostgreSQL's column stays plain text, as it always was.
    keys_check = " CHECK (ticket_keys IS NULL OR json_valid(ticket_keys))" if dialect == "sqlite" else ""
    return f"""CREATE TABLE IF NOT EXISTS {name} (
    site TEXT NOT NULL DEFAULT '{DEFAULT_SITE}',
    imap_conn_id TEXT NOT NULL DEFAULT '{IMAP_CONN_ID}',
    mailbox TEXT NOT NULL,
    uidvalidity BIGINT NOT NULL,
    uid BIGINT NOT NULL,
    message_id TEXT,
    sender TEXT,
    subject TEXT CHECK (subject IS NULL OR length(subject) <= {SUBJECT_MAX}),
    ticket_keys {text}{keys_check},
    state TEXT NOT NULL {_STATE_CHECK},
    reason TEXT CHECK (reason IS NULL OR length(reason) <= {REASON_MAX}),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try_at {moment},
    first_seen_at {moment} NOT NULL,
    updated_at {moment} NOT NULL,
    {_LOCATION_DDL},
    PRIMARY KEY ({_KEY})
)"""


_DDL = {dialect: (_create_sql(dialect), _INDEX) for dialect in ("sqlite", "postgres")}


def ensure_table(conn: Any, dialect: str) -> None:
    """Create the ledger, or upgrade an older one in place, when needed.

    One read (its column list) when it is up to date, so DML rights suffice then. Upgrades, under
    the table's schema lock (include.store_db.schema_change), in one transaction:
    - the location columns (moved_to, ...) are added where missing;
    - a ledger keyed by (mailbox, uidvalidity, uid) gets `site` and `imap_conn_id`, its rows filled
      with the plain site's (`default`, `imap_default`: the only mailbox such a ledger can have
      served), and the key (site, imap_conn_id, mailbox, uidvalidity, uid). PostgreSQL alters the
      table; SQLite cannot alter a primary key, so the table is rebuilt (copy, drop, rename).
    """
    check_dialect(dialect)
    columns = table_columns(conn, dialect, TABLE)
    if not columns:
        create_missing(conn, dialect, TABLE, _DDL[dialect])
        return
    if not set(_LISTED) - columns:
        return
    with schema_change(conn, dialect, TABLE) as cursor:
        # Looked at again under the lock: another process may have upgraded it meanwhile.
        present = table_columns_in(cursor, dialect, TABLE)
        missing = sorted(set(_LISTED) - present)
        if not missing:
            return
        if set(_IDENTITY_DEFAULTS) - present:
            _key_by_mailbox(cursor, dialect, present)
        else:
            for name in missing:
                cursor.execute(f"ALTER TABLE {TABLE} ADD COLUMN {name} {_LOCATION_COLUMNS[name]}")
    log.warning("Upgraded table %s in place: added column(s) %s", TABLE, ", ".join(missing))


def _key_by_mailbox(cursor: Any, dialect: str, present: set[str]) -> None:
    """Add `site` and `imap_conn_id` to a ledger keyed by folder only, and make them part of its key."""
    if dialect == "sqlite":
        kept = [column for column in _LISTED if column in present]
        rebuilt = f"{TABLE}_upgrade"
        cursor.execute(f"DROP TABLE IF EXISTS {rebuilt}")
        cursor.execute(_create_sql(dialect, rebuilt))
        # The new columns take their defaults: the plain site's identity.
        cursor.execute(f"INSERT INTO {rebuilt} ({', '.join(kept)}) SELECT {', '.join(kept)} FROM {TABLE}")
        cursor.execute(f"DROP TABLE {TABLE}")
        cursor.execute(f"ALTER TABLE {rebuilt} RENAME TO {TABLE}")
        cursor.execute(_INDEX)
        return
    for name, default in _IDENTITY_DEFAULTS.items():
        if name not in present:
            cursor.execute(f"ALTER TABLE {TABLE} ADD COLUMN {name} TEXT NOT NULL DEFAULT '{default}'")
    for name in sorted(set(_LOCATION_COLUMNS) - present):
        cursor.execute(f"ALTER TABLE {TABLE} ADD COLUMN {name} {_LOCATION_COLUMNS[name]}")
    cursor.execute(
        "SELECT conname FROM pg_catalog.pg_constraint WHERE conrelid = to_regclass(%s) AND contype = 'p'",
        (TABLE,),
    )
    for (constraint,) in cursor.fetchall():
        cursor.execute(f'ALTER TABLE {TABLE} DROP CONSTRAINT "{constraint}"')
    cursor.execute(f"ALTER TABLE {TABLE} ADD PRIMARY KEY ({_KEY})")


def _moment(value: datetime, dialect: str) -> Any:
    return timestamp_param(value, dialect, "a ledger timestamp")


# What no store, XCom or log can hold: lone surrogates (UTF-8 cannot encode them, so sqlite3, psycopg
# and msgpack raise UnicodeEncodeError) and NUL (PostgreSQL refuses it in text).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(value: str) -> str:
    """`value` with every code point that a store, an XCom or a log cannot hold replaced by U+FFFD."""
    return _UNSTORABLE.sub("\ufffd", value)


def bounded_text(value: Any, limit: int) -> str | None:
    """`value` as storable text of at most `limit` characters, cut with an ellipsis; None stays None."""
    if value is None:
        return None
    text = storable_text(str(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _uid(value: Any) -> int:
    # RFC 3501's nz-number: a larger value is no UID, and SQLite could not even bind it (OverflowError).
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_UID:
        raise ValueError(f"an IMAP UID must be an integer from 1 to {MAX_UID}, got {value!r}")
    return value


def _mailbox_key(site: str, imap_conn_id: str, mailbox: str, uidvalidity: int) -> tuple[str, str, str, int]:
    """The checked (site, imap_conn_id, mailbox, uidvalidity): the first four parts of every row's key."""
    for name, value in (("site", site), ("imap_conn_id", imap_conn_id), ("mailbox", mailbox)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    if isinstance(uidvalidity, bool) or not isinstance(uidvalidity, int) or uidvalidity < 1:
        raise ValueError(f"uidvalidity must be a positive integer, got {uidvalidity!r}")
    return site, imap_conn_id, mailbox, uidvalidity


# The WHERE of one mailbox generation's rows; its parameters are _mailbox_key's four values.
def _generation(dialect: str) -> str:
    p = placeholder(dialect)
    return f"site = {p} AND imap_conn_id = {p} AND mailbox = {p} AND uidvalidity = {p}"


def _keys_json(keys: Any) -> str | None:
    if keys is None:
        return None
    return json.dumps([str(k) for k in keys])


def _upsert_sql(dialect: str, updates: Sequence[str]) -> str:
    p = placeholder(dialect)
    values = ", ".join(p for _ in _COLUMNS)
    # Metadata the run did not learn (None) keeps what an earlier run recorded.
    keep = [
        f"{c} = COALESCE(excluded.{c}, {TABLE}.{c})"
        for c in ("message_id", "sender", "subject", "ticket_keys")
    ]
    return (
        f"INSERT INTO {TABLE} ({', '.join(_COLUMNS)}) VALUES ({values}) "
        f"ON CONFLICT ({_KEY}) DO UPDATE SET {', '.join([*keep, *updates])}"
    )


def _write(conn: Any, dialect: str, sql: str, rows: list[tuple[Any, ...]]) -> None:
    if not rows:
        return
    with transaction(conn, dialect) as cursor:
        cursor.executemany(sql, rows)


def _rows(
    entries: Iterable[Mapping[str, Any]],
    where: tuple[str, str, str, int],
    *,
    state: str,
    now: Any,
    attempts: Mapping[int, int] | None = None,
    next_try: Mapping[int, Any] | None = None,
) -> list[tuple[Any, ...]]:
    rows: dict[int, tuple[Any, ...]] = {}
    for entry in entries:
        uid = _uid(entry.get("uid"))
        rows[uid] = (
            *where,
            uid,
            bounded_text(entry.get("message_id"), MAX_MESSAGE_ID_CHARS),
            bounded_text(entry.get("sender"), SENDER_MAX),
            bounded_text(entry.get("subject"), SUBJECT_MAX),
            _keys_json(entry.get("keys")),
            state,
            bounded_text(entry.get("reason"), REASON_MAX),
            (attempts or {}).get(uid, 0),
            (next_try or {}).get(uid),
            now,
            now,
        )
    # Sorted by key, so two writers never take row locks in opposite orders.
    return [rows[uid] for uid in sorted(rows)]


def record_rejected(
    conn: Any,
    dialect: str,
    *,
    mailbox: str,
    uidvalidity: int,
    entries: Iterable[Mapping[str, Any]],
    now: datetime,
    site: str = DEFAULT_SITE,
    imap_conn_id: str = IMAP_CONN_ID,
) -> int:
    """Record refused mail ({"uid", "reason", "message_id"?, "sender"?, "subject"?}); one statement."""
    where = _mailbox_key(site, imap_conn_id, mailbox, uidvalidity)
    ensure_table(conn, dialect)
    rows = _rows(entries, where, state="rejected", now=_moment(now, dialect))
    sql = _upsert_sql(
        dialect,
        [
            "state = excluded.state",
            "reason = excluded.reason",
            "next_try_at = NULL",
            "updated_at = excluded.updated_at",
        ],
    )
    _write(conn, dialect, sql, rows)
    return len(rows)


def retry_delay(attempts: int, first_delay: timedelta) -> timedelta:
    """The wait after the `attempts`-th failure: first_delay, doubled each time, at most MAX_RETRY_DELAY."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    if first_delay < timedelta(0):
        raise ValueError(f"the retry delay must not be negative, got {first_delay}")
    # Capped before multiplying, so a large attempt count cannot overflow timedelta.
    return min(first_delay * 2 ** min(attempts - 1, 30), MAX_RETRY_DELAY)


def record_failures(
    conn: Any,
    dialect: str,
    *,
    mailbox: str,
    uidvalidity: int,
    entries: Iterable[Mapping[str, Any]],
    now: datetime,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    first_delay: timedelta = DEFAULT_RETRY_DELAY,
    count_attempt: bool = True,
    site: str = DEFAULT_SITE,
    imap_conn_id: str = IMAP_CONN_ID,
) -> list[dict[str, Any]]:
    """Count one more failed attempt for each message ({"uid", "keys", "reason", ...}).

    Below `max_attempts` a message becomes `failed`, due again after retry_delay(); at `max_attempts`
    it becomes `quarantined`. With `count_attempt=False` (nothing is known against the message: its
    keys were not reached this run) it only waits, as `failed` with its attempts unchanged, and is
    never quarantined for it. Returns one {"uid", "state", "attempts", "next_try_at", "keys", "reason"}
    per message, for the run's log. Two statements: one SELECT of the earlier attempt counts, one
    executemany UPSERT.
    """
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(f"max_attempts must be a positive integer, got {max_attempts!r}")
    where = _mailbox_key(site, imap_conn_id, mailbox, uidvalidity)
    entries = list(entries)
    if not entries:
        return []
    ensure_table(conn, dialect)
    uids = sorted({_uid(e.get("uid")) for e in entries})
    p = placeholder(dialect)
    earlier = dict(
        read(
            conn,
            dialect,
            f"SELECT uid, attempts FROM {TABLE} WHERE {_generation(dialect)} "
            f"AND uid IN ({', '.join(p for _ in uids)})",
            (*where, *uids),
        )
    )
    attempts = {uid: int(earlier.get(uid) or 0) + (1 if count_attempt else 0) for uid in uids}
    if not count_attempt:
        max_attempts = max([max_attempts, *(n + 1 for n in attempts.values())])
    due = {uid: now + retry_delay(max(n, 1), first_delay) for uid, n in attempts.items() if n < max_attempts}
    quarantined = [e for e in entries if attempts[e["uid"]] >= max_attempts]
    failed = [e for e in entries if attempts[e["uid"]] < max_attempts]
    stamp = _moment(now, dialect)
    rows = _rows(
        failed,
        where,
        state="failed",
        now=stamp,
        attempts=attempts,
        next_try={uid: _moment(at, dialect) for uid, at in due.items()},
    ) + _rows(quarantined, where, state="quarantined", now=stamp, attempts=attempts)
    rows.sort(key=lambda row: row[_UID_AT])
    sql = _upsert_sql(
        dialect,
        [
            "state = excluded.state",
            "reason = excluded.reason",
            "attempts = excluded.attempts",
            "next_try_at = excluded.next_try_at",
            "updated_at = excluded.updated_at",
        ],
    )
    _write(conn, dialect, sql, rows)
    outcome = []
    for entry in sorted(entries, key=lambda e: e["uid"]):
        uid = entry["uid"]
        outcome.append(
            {
                "uid": uid,
                "state": "failed" if uid in due else "quarantined",
                "attempts": attempts[uid],
                "next_try_at": due[uid].isoformat() if uid in due else None,
                "keys": list(entry.get("keys") or []),
                "reason": bounded_text(entry.get("reason"), REASON_MAX),
            }
        )
    return outcome


def record_settled(
    conn: Any,
    dialect: str,
    *,
    mailbox: str,
    uidvalidity: int,
    entries: Iterable[Mapping[str, Any]],
    now: datetime,
    retention: timedelta = DEFAULT_RETENTION,
    site: str = DEFAULT_SITE,
    imap_conn_id: str = IMAP_CONN_ID,
) -> int:
    """Record mail marked seen ({"uid", "keys", ...}) and drop this mailbox's settled and rejected rows
    older than `retention` (at most PRUNE_BATCH of them, of every UIDVALIDITY it had).

    Two statements: one executemany UPSERT and one bounded DELETE (the (state, updated_at) index
    serves its inner SELECT).
    The attempt count stays, so the audit shows how many tries a message needed.
    """
    where = _mailbox_key(site, imap_conn_id, mailbox, uidvalidity)
    ensure_table(conn, dialect)
    stamp = _moment(now, dialect)
    rows = _rows(entries, where, state="settled", now=stamp)
    sql = _upsert_sql(
        dialect,
        ["state = excluded.state", "reason = NULL", "next_try_at = NULL", "updated_at = excluded.updated_at"],
    )
    p = placeholder(dialect)
    with transaction(conn, dialect) as cursor:
        if rows:
            cursor.executemany(sql, rows)
        pruned = ", ".join(f"'{state}'" for state in PRUNED_STATES)
        # Only this mailbox's rows: another mailbox's run prunes its own, under its own retention.
        cursor.execute(
            f"DELETE FROM {TABLE} WHERE ({_KEY}) IN ("
            f"SELECT {_KEY} FROM {TABLE} WHERE site = {p} AND imap_conn_id = {p} AND mailbox = {p} "
            f"AND state IN ({pruned}) AND updated_at < {p} ORDER BY updated_at LIMIT {PRUNE_BATCH})",
            (*where[:3], _moment(now - retention, dialect)),
        )
    return len(rows)


def record_moved(
    conn: Any,
    dialect: str,
    *,
    mailbox: str,
    uidvalidity: int,
    uids: Sequence[int],
    moved_to: str,
    moved_uidvalidity: int | None,
    new_uids: Mapping[int, int],
    site: str = DEFAULT_SITE,
    imap_conn_id: str = IMAP_CONN_ID,
) -> int:
    """Note where rejected mail went (`moved_to`, and each UID's new UID where the server said).

    One executemany UPDATE; rows the ledger does not hold are left alone.
    """
    where = _mailbox_key(site, imap_conn_id, mailbox, uidvalidity)
    wanted = sorted({_uid(u) for u in uids})
    if not wanted:
        return 0
    ensure_table(conn, dialect)
    p = placeholder(dialect)
    rows = [(moved_to, moved_uidvalidity, new_uids.get(uid), *where, uid) for uid in wanted]
    _write(
        conn,
        dialect,
        f"UPDATE {TABLE} SET moved_to = {p}, moved_uidvalidity = {p}, moved_uid = {p} "
        f"WHERE {_generation(dialect)} AND uid = {p}",
        rows,
    )
    return len(rows)


def _held(
    conn: Any,
    dialect: str,
    where: tuple[str, str, str, int],
    uid_range: tuple[int, int] | None,
    present: set[str] | None = None,
) -> list[tuple[int, str, Any]]:
    """The held rows of one mailbox generation. `present`: a reader's column list (nothing is created
    or upgraded then); None: a writer's, which makes the table current first."""
    if present is None:
        ensure_table(conn, dialect)
        generation = _generation(dialect)
    else:
        p = placeholder(dialect)
        generation = " AND ".join(f"{_column_or_default(c, present)} = {p}" for c in KEY_COLUMNS[:4])
    p = placeholder(dialect)
    states = ", ".join(f"'{s}'" for s in HELD_STATES)
    window, params = "", ()
    if uid_range is not None:
        window, params = f" AND uid BETWEEN {p} AND {p}", (_uid(uid_range[0]), _uid(uid_range[1]))
    return read(
        conn,
        dialect,
        f"SELECT uid, state, next_try_at FROM {TABLE} WHERE {generation} AND state IN ({states}){window}",
        (*where, *params),
    )


def _due_again(state: str, next_try_at: Any, now: datetime) -> bool:
    """A held row the sensor takes again: failed mail whose wait is over (the rest stays excluded)."""
    return state == "failed" and (next_try_at is None or as_utc_datetime(next_try_at) <= now)


def held_uids(
    conn: Any,
    dialect: str,
    *,
    mailbox: str,
    uidvalidity: int,
    now: datetime,
    uid_range: tuple[int, int] | None = None,
    site: str = DEFAULT_SITE,
    imap_conn_id: str = IMAP_CONN_ID,
) -> dict[str, set[int]]:
    """In one SELECT: {"excluded": UIDs the sensor leaves out, "retrying": failed UIDs due again now}.

    Excluded are rejected and quarantined mail and failed mail whose next try is still ahead.
    `uid_range` (first, last) reads only the rows of that window of UIDs (the primary key serves it).
    """
    excluded: set[int] = set()
    retrying: set[int] = set()
    where = _mailbox_key(site, imap_conn_id, mailbox, uidvalidity)
    for uid, state, next_try_at in _held(conn, dialect, where, uid_range):
        if _due_again(state, next_try_at, now):
            retrying.add(int(uid))
        else:
            excluded.add(int(uid))
    return {"excluded": excluded, "retrying": retrying}


def excluded_uids(
    conn: Any,
    dialect: str,
    mailbox: str,
    uidvalidity: int,
    now: datetime,
    *,
    site: str = DEFAULT_SITE,
    imap_conn_id: str = IMAP_CONN_ID,
) -> set[int]:
    """UIDs the sensor leaves out before its max_messages cap: rejected, quarantined, failed and waiting.

    A reader (for the Jira sync page): it creates and upgrades nothing; no table holds nothing, and
    a ledger not upgraded yet holds only the plain site's mail.
    """
    where = _mailbox_key(site, imap_conn_id, mailbox, uidvalidity)
    present = table_columns(conn, dialect, TABLE)
    if not present:
        return set()
    return {
        int(uid)
        for uid, state, next_try_at in _held(conn, dialect, where, None, present)
        if not _due_again(state, next_try_at, now)
    }


def _release_selection(
    dialect: str, generation: tuple[str, str, str, int], wanted: list[int], release_all: bool, condition: str
) -> tuple[str, list[Any]]:
    """The WHERE clause and parameters of a manual run's selection: `wanted` UIDs, or all."""
    p = placeholder(dialect)
    where = f"{_generation(dialect)} AND {condition}"
    params: list[Any] = list(generation)
    if not release_all:
        where += f" AND uid IN ({', '.join(p for _ in wanted)})"
        params += wanted
    return where, params


def release(
    conn: Any,
    dialect: str,
    *,
    mailbox: str,
    uidvalidity: int,
    now: datetime,
    uids: Sequence[int] = (),
    release_all: bool = False,
    site: str = DEFAULT_SITE,
    imap_conn_id: str = IMAP_CONN_ID,
) -> list[int]:
    """Put rejected, failed or quarantined mail back into play: `uids`, or all of them with release_all.

    A released message becomes `failed` with no attempts and nothing to wait for, so the next sensing
    takes it again and it gets `max_attempts` fresh tries. Settled mail and UIDs the ledger does not
    hold are left alone. Returns the UIDs released. One statement.
    """
    generation = _mailbox_key(site, imap_conn_id, mailbox, uidvalidity)
    wanted = sorted({_uid(u) for u in uids})
    if not wanted and not release_all:
        return []
    ensure_table(conn, dialect)
    p = placeholder(dialect)
    states = ", ".join(f"'{s}'" for s in RELEASABLE_STATES)
    # Moved mail is no longer in the inbox: releasing its row would make the sensor wait for a UID
    # that is gone; see moved_away.
    where, params = _release_selection(
        dialect, generation, wanted, release_all, f"state IN ({states}) AND moved_to IS NULL"
    )
    # The earlier state stays readable in the reason, for the audit.
    reason = (
        "'released by a manual run (was ' || state || COALESCE(': ' || substr(reason, 1, 400), '') || ')'"
    )
    with transaction(conn, dialect) as cursor:
        cursor.execute(
            f"UPDATE {TABLE} SET state = 'failed', attempts = 0, next_try_at = NULL, reason = {reason}, "
            f"updated_at = {p} WHERE {where} RETURNING uid",
            (_moment(now, dialect), *params),
        )
        released = sorted(int(row[0]) for row in cursor.fetchall())
    return released


def moved_away(
    conn: Any,
    dialect: str,
    *,
    mailbox: str,
    uidvalidity: int,
    uids: Sequence[int] = (),
    release_all: bool = False,
    site: str = DEFAULT_SITE,
    imap_conn_id: str = IMAP_CONN_ID,
) -> list[dict[str, Any]]:
    """The rows among `uids` (or all, with release_all) whose mail was moved out of the inbox, as
    {"uid", "moved_to", "moved_uid"}: what a manual release cannot put back. One SELECT; a reader."""
    generation = _mailbox_key(site, imap_conn_id, mailbox, uidvalidity)
    wanted = sorted({_uid(u) for u in uids})
    if (not wanted and not release_all) or not table_exists(conn, dialect, TABLE):
        return []
    where, params = _release_selection(dialect, generation, wanted, release_all, "moved_to IS NOT NULL")
    rows = read(
        conn,
        dialect,
        f"SELECT uid, moved_to, moved_uid FROM {TABLE} WHERE {where} ORDER BY uid",
        tuple(params),
    )
    return [
        {"uid": int(uid), "moved_to": moved_to, "moved_uid": None if new is None else int(new)}
        for uid, moved_to, new in rows
    ]


def _column_or_default(column: str, present: set[str]) -> str:
    """`column` in a reader's SQL; on a ledger no writer has upgraded yet, the plain site's value it
    will be filled with (such a ledger served only the plain site's mailbox)."""
    if column in present or column not in _IDENTITY_DEFAULTS:
        return column
    return f"'{_IDENTITY_DEFAULTS[column]}'"


def _narrowed(dialect: str, present: set[str], narrowed: Mapping[str, Any]) -> tuple[str, tuple[Any, ...]]:
    """A WHERE (with a leading space) matching the given values; None leaves a column unconstrained."""
    p = placeholder(dialect)
    chosen = {column: value for column, value in narrowed.items() if value is not None}
    conditions = [f"{_column_or_default(column, present)} = {p}" for column in chosen]
    return (f" WHERE {' AND '.join(conditions)}" if conditions else ""), tuple(chosen.values())


def count_by_state(
    conn: Any,
    dialect: str,
    *,
    mailbox: str | None = None,
    uidvalidity: int | None = None,
    site: str | None = None,
    imap_conn_id: str | None = None,
) -> dict[str, int]:
    """How many ledger rows are in each state (every state present, zero included), in one SELECT.

    `site`, `imap_conn_id`, `mailbox` and `uidvalidity` narrow the count (None: any); with all four
    it covers only one mailbox's current generation (rows kept for audit under an earlier UIDVALIDITY
    name no message there any more). A folder alone is no mailbox: `INBOX` of every account.
    A reader: before the first run has created the table it answers zeros and creates nothing.
    """
    counts = dict.fromkeys(STATES, 0)
    present = table_columns(conn, dialect, TABLE)
    if not present:
        return counts
    narrowed = {"site": site, "imap_conn_id": imap_conn_id, "mailbox": mailbox, "uidvalidity": uidvalidity}
    where, params = _narrowed(dialect, present, narrowed)
    for state, count in read(
        conn, dialect, f"SELECT state, count(*) FROM {TABLE}{where} GROUP BY state", params
    ):
        counts[state] = int(count)
    return counts


def list_entries(
    conn: Any,
    dialect: str,
    *,
    states: Sequence[str] = HELD_STATES,
    limit: int = 100,
    site: str | None = None,
    imap_conn_id: str | None = None,
    mailbox: str | None = None,
) -> list[dict[str, Any]]:
    """The most recently updated rows in `states`, newest first, as dicts (timestamps as aware UTC),
    each naming its mailbox by "site", "imap_conn_id" and "mailbox".

    `site`, `imap_conn_id` and `mailbox` narrow the list (None: any).
    A reader: before the first run has created the table it answers [] and creates nothing.
    """
    unknown = sorted(set(states) - set(STATES))
    if unknown or not states:
        raise ValueError(f"states must be a non-empty selection of {STATES}, got {list(states)!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
        raise ValueError(f"limit must be an integer in 1..10000, got {limit!r}")
    present = table_columns(conn, dialect, TABLE)
    if not present:
        return []
    # A table no writer has upgraded yet lacks the location columns (they read as None) and the
    # identity columns (they read as the plain site's).
    listed = [column for column in _LISTED if column in present or column in _IDENTITY_DEFAULTS]
    selected = ", ".join(_column_or_default(column, present) for column in listed)
    where, params = _narrowed(
        dialect, present, {"site": site, "imap_conn_id": imap_conn_id, "mailbox": mailbox}
    )
    p = placeholder(dialect)
    in_states = f"state IN ({', '.join(p for _ in states)})"
    where = f"{where} AND {in_states}" if where else f" WHERE {in_states}"
    # (PostgreSQL refuses a constant in ORDER BY: a column not there yet is left out of the order.)
    order = "".join(f"{column}, " for column in ("site", "imap_conn_id") if column in present)
    rows = read(
        conn,
        dialect,
        f"SELECT {selected} FROM {TABLE}{where} "
        f"ORDER BY updated_at DESC, {order}mailbox, uidvalidity, uid DESC LIMIT {limit}",
        (*params, *states),
    )
    entries = []
    for row in rows:
        entry = dict.fromkeys(_LOCATION_COLUMNS) | dict(zip(listed, row, strict=True))
        entry["ticket_keys"] = json.loads(entry["ticket_keys"]) if entry["ticket_keys"] else None
        for column in ("next_try_at", "first_seen_at", "updated_at"):
            if entry[column] is not None:
                entry[column] = as_utc_datetime(entry[column])
        entry["uidvalidity"], entry["uid"] = int(entry["uidvalidity"]), int(entry["uid"])
        for column in ("moved_uidvalidity", "moved_uid"):
            entry[column] = None if entry[column] is None else int(entry[column])
        entries.append(entry)
    return entries
