"""The jira_ticket table on SQLite or PostgreSQL: one row per Jira issue; upserts, moves, deletions.

A row is keyed by (site, the issue's current key) and identified by (site, Jira's issue id): two Jira
sites sharing one store each have their own ABC-1, and every function here reads and writes one site's
rows only (`site`, default `include.names.DEFAULT_SITE`). A ticket moved to another project (ABC-1
becomes XYZ-9, same id) keeps its one row under the new key, with the former keys in
`previous_keys`; a move is settled within its site. A ticket Jira confirms gone keeps its row with
`deleted_at` set; that is cleared when Jira shows the ticket again. An older Jira
update never overwrites a newer one.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from include.jira_rules import is_issue_key
from include.names import DEFAULT_SITE, TICKET_TABLE
from include.store_db import (
    as_utc_datetime,
    check_dialect,
    create_missing,
    placeholder,
    read,
    schema_change,
    table_columns,
    table_columns_in,
    timestamp_param,
    transaction,
    upgrade_missing,
)
from include.store_db import table_exists as _table_exists

log = logging.getLogger(__name__)

TABLE = TICKET_TABLE
SOURCES = ("inbox", "sweep")
CHUNK_SIZE = 500
# What upsert_tickets writes; previous_keys is kept by the move step, deleted_at by mark_gone.
_WRITTEN = (
    "site",
    "key",
    "issue_id",
    "summary",
    "status",
    "assignee_email",
    "progress",
    "fields",
    "updated_at",
    "fetched_at",
    "source",
)
_JSON_COLUMNS = ("progress", "fields", "previous_keys")
_READ = (*_WRITTEN, "previous_keys", "deleted_at", "archived_at", "gone_reason", "census_at")
ISSUE_ID_INDEX = f"{TABLE}_issue_id_key"
# Since sites: the unique index of (site, issue_id), which replaces ISSUE_ID_INDEX.
SITE_ISSUE_ID_INDEX = f"{TABLE}_site_issue_id_key"
UPDATED_AT_INDEX = f"{TABLE}_updated_at_idx"

_V1_DDL = {
    "sqlite": f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    key TEXT PRIMARY KEY,
    summary TEXT NOT NULL,
    status TEXT NOT NULL,
    assignee_email TEXT,
    progress TEXT CHECK (progress IS NULL OR json_valid(progress)),
    updated_at TEXT NOT NULL,
    fetched_at TEXT NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('inbox', 'sweep'))
)""",
    "postgres": f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    key TEXT PRIMARY KEY,
    summary TEXT NOT NULL,
    status TEXT NOT NULL,
    assignee_email TEXT,
    progress JSONB,
    updated_at TIMESTAMPTZ NOT NULL,
    fetched_at TIMESTAMPTZ NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('inbox', 'sweep'))
)""",
}

# Version 2 adds these columns to version 1's table. A new table is created as version 1 plus these
# same statements, so a fresh store and an upgraded one can never differ. issue_id stays nullable:
# rows written by version 1 get it the next time Jira returns their ticket.
V2_COLUMNS = {
    "sqlite": {
        "issue_id": "INTEGER",
        "previous_keys": "TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(previous_keys))",
        "fields": "TEXT CHECK (fields IS NULL OR json_valid(fields))",
        "deleted_at": "TEXT",
    },
    "postgres": {
        "issue_id": "BIGINT",
        "previous_keys": "JSONB NOT NULL DEFAULT '[]'::jsonb",
        "fields": "JSONB",
        "deleted_at": "TIMESTAMPTZ",
    },
}
_V2_INDEXES = (
    f"CREATE UNIQUE INDEX IF NOT EXISTS {ISSUE_ID_INDEX} ON {TABLE} (issue_id)",
    f"CREATE INDEX IF NOT EXISTS {UPDATED_AT_INDEX} ON {TABLE} (updated_at)",
)


# The census (include/census.py) adds these columns, in the same way as version 2: `archived_at` when
# Jira archived the ticket, `gone_reason` why a census found it gone (GONE_REASONS), `census_at` when a
# census last confirmed the row (alive, or gone for that reason). A fresh table gets them too.
GONE_REASONS = ("deleted_or_hidden", "not_visible", "archived", "moved_out")
_REASONS_SQL = ", ".join(f"'{reason}'" for reason in GONE_REASONS)
CENSUS_COLUMNS = {
    "sqlite": {
        "archived_at": "TEXT",
        "gone_reason": f"TEXT CHECK (gone_reason IS NULL OR gone_reason IN ({_REASONS_SQL}))",
        "census_at": "TEXT",
    },
    "postgres": {
        "archived_at": "TIMESTAMPTZ",
        "gone_reason": f"TEXT CHECK (gone_reason IS NULL OR gone_reason IN ({_REASONS_SQL}))",
        "census_at": "TIMESTAMPTZ",
    },
}


def census_upgrade_statements(dialect: str, missing: Iterable[str] | None = None) -> list[str]:
    """The DDL that adds the census columns to a version-2 table (the README prints it for DBAs)."""
    check_dialect(dialect)
    columns = CENSUS_COLUMNS[dialect]
    wanted = list(columns) if missing is None else [name for name in columns if name in set(missing)]
    return [f"ALTER TABLE {TABLE} ADD COLUMN {name} {columns[name]}" for name in wanted]


# Sites (issue #23): every row belongs to a site, `site TEXT NOT NULL DEFAULT 'default'`; the primary
# key becomes (site, key) and the unique index (site, issue_id), so two sites sharing a store may both
# have an ABC-1. Existing rows are the plain site's ('default'). PostgreSQL alters the table in place;
# SQLite cannot alter a primary key, so the table is rebuilt (SQLite's documented procedure: create the
# new table, copy, drop, rename, recreate the indexes), in one transaction. A fresh table is created
# by the same statements as an upgraded one, so the two never differ.
SITE_COLUMN = f"site TEXT NOT NULL DEFAULT '{DEFAULT_SITE}'"
# Every column of the table before sites, in the order the rebuild copies them.
_PRE_SITE_COLUMNS = (
    "key",
    "summary",
    "status",
    "assignee_email",
    "progress",
    "updated_at",
    "fetched_at",
    "source",
    *V2_COLUMNS["sqlite"],
    *CENSUS_COLUMNS["sqlite"],
)
_SQLITE_V1_COLUMNS = {
    "key": "TEXT NOT NULL",
    "summary": "TEXT NOT NULL",
    "status": "TEXT NOT NULL",
    "assignee_email": "TEXT",
    "progress": "TEXT CHECK (progress IS NULL OR json_valid(progress))",
    "updated_at": "TEXT NOT NULL",
    "fetched_at": "TEXT NOT NULL",
    "source": "TEXT NOT NULL CHECK (source IN ('inbox', 'sweep'))",
}
_SITE_INDEXES = (
    f"CREATE UNIQUE INDEX IF NOT EXISTS {SITE_ISSUE_ID_INDEX} ON {TABLE} (site, issue_id)",
    f"CREATE INDEX IF NOT EXISTS {UPDATED_AT_INDEX} ON {TABLE} (updated_at)",
)


def _sqlite_site_ddl(table: str) -> str:
    """The whole SQLite table as it is since sites (the rebuild's target)."""
    columns = {**_SQLITE_V1_COLUMNS, **V2_COLUMNS["sqlite"], **CENSUS_COLUMNS["sqlite"]}
    lines = [
        SITE_COLUMN,
        *(f"{name} {columns[name]}" for name in _PRE_SITE_COLUMNS),
        "PRIMARY KEY (site, key)",
    ]
    return f"CREATE TABLE {table} (\n    " + ",\n    ".join(lines) + "\n)"


def site_upgrade_statements(dialect: str) -> list[str]:
    """The DDL that keys a version-2 table with the census columns by site (the README prints it).

    Existing rows get site 'default' (the plain site). On SQLite these statements rebuild the table
    and must run in one transaction (ensure_table does; so should a DBA).
    """
    check_dialect(dialect)
    if dialect == "postgres":
        return [
            f"ALTER TABLE {TABLE} ADD COLUMN {SITE_COLUMN}",
            f"ALTER TABLE {TABLE} DROP CONSTRAINT {TABLE}_pkey",
            f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_pkey PRIMARY KEY (site, key)",
            f"DROP INDEX IF EXISTS {ISSUE_ID_INDEX}",
            _SITE_INDEXES[0],
        ]
    new = f"{TABLE}_new"
    copied = ", ".join(_PRE_SITE_COLUMNS)
    return [
        f"DROP TABLE IF EXISTS {new}",
        _sqlite_site_ddl(new),
        f"INSERT INTO {new} (site, {copied}) SELECT '{DEFAULT_SITE}', {copied} FROM {TABLE}",
        f"DROP TABLE {TABLE}",
        f"ALTER TABLE {new} RENAME TO {TABLE}",
        *_SITE_INDEXES,
    ]


def upgrade_statements(dialect: str, missing: Iterable[str] | None = None) -> list[str]:
    """The DDL that brings a version-1 table to version 2 (the README prints it for DBAs)."""
    check_dialect(dialect)
    columns = V2_COLUMNS[dialect]
    wanted = list(columns) if missing is None else [name for name in columns if name in set(missing)]
    return [f"ALTER TABLE {TABLE} ADD COLUMN {name} {columns[name]}" for name in wanted] + list(_V2_INDEXES)


def _json_value(dialect: str) -> str:
    # JSON goes over the wire as text and is cast on the server, so psycopg 3 and psycopg2 (either
    # can come out of PostgresHook) need no driver-specific JSON adapter.
    return "%s::jsonb" if dialect == "postgres" else "?"


def _upsert_sql(dialect: str) -> str:
    values = ", ".join(
        _json_value(dialect) if column in _JSON_COLUMNS else placeholder(dialect) for column in _WRITTEN
    )
    updates = ", ".join(
        f"{column} = excluded.{column}" for column in _WRITTEN if column not in ("site", "key")
    )
    # An equal updated_at rewrites the same content (harmless, keeps reruns idempotent); only an
    # older one is skipped, so a late or replayed mail can never overwrite a newer state. A ticket
    # marked gone comes back when a fetch made after that confirmation returns it.
    return (
        f"INSERT INTO {TABLE} ({', '.join(_WRITTEN)}) VALUES ({values}) "
        f"ON CONFLICT (site, key) DO UPDATE SET {updates}, deleted_at = CASE "
        f"WHEN excluded.fetched_at > {TABLE}.deleted_at THEN NULL ELSE {TABLE}.deleted_at END, "
        # The census's gone state (archived, moved out, not visible) clears the same way: a fetch made
        # after the census that found it gone returned the ticket.
        f"archived_at = CASE WHEN excluded.fetched_at > {TABLE}.census_at THEN NULL "
        f"ELSE {TABLE}.archived_at END, "
        f"gone_reason = CASE WHEN excluded.fetched_at > {TABLE}.census_at THEN NULL "
        f"ELSE {TABLE}.gone_reason END "
        f"WHERE excluded.updated_at >= {TABLE}.updated_at OR excluded.fetched_at > {TABLE}.deleted_at "
        f"OR ({TABLE}.gone_reason IS NOT NULL AND excluded.fetched_at > {TABLE}.census_at)"
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


def _text(ticket: Mapping[str, Any], name: str, key: str, *, nullable: bool = False) -> str | None:
    value = ticket.get(name)
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise ValueError(f"ticket {key}: {name} must be a string, got {type(value).__name__}")
    return value


def _issue_id(value: Any, key: str) -> int:
    # Jira sends ids as decimal strings ("10042"); anything else cannot be an issue id.
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if not text.isascii() or not text.isdigit() or int(text) < 1 or int(text) >= 2**63:
        raise ValueError(f"ticket {key}: issue_id must be Jira's numeric issue id, got {value!r}")
    return int(text)


def _json_text(value: Any, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON-serialisable: {exc}") from None


@dataclass(frozen=True)
class _Ticket:
    key: str
    issue_id: int
    row: tuple[Any, ...]
    updated_at: datetime
    moved_from: tuple[str, ...]


def _ticket(
    ticket: Mapping[str, Any], dialect: str, source: str, fetched_at: datetime, site: str = DEFAULT_SITE
) -> _Ticket:
    if not isinstance(ticket, Mapping):
        raise ValueError(f"a ticket must be a mapping, got {type(ticket).__name__}")
    key = ticket.get("key")
    if not is_issue_key(key):
        raise ValueError(f"not a Jira issue key: {key!r}")
    issue_id = _issue_id(ticket.get("issue_id"), key)
    summary = _text(ticket, "summary", key)
    status = _text(ticket, "status", key)
    if not status:
        raise ValueError(f"ticket {key}: status must not be empty")
    assignee_email = _text(ticket, "assignee_email", key, nullable=True)
    progress = ticket.get("progress")
    if progress is not None and not isinstance(progress, Mapping):
        raise ValueError(f"ticket {key}: progress must be a dict or None, got {type(progress).__name__}")
    extra = ticket.get("fields")
    if extra is not None and not isinstance(extra, Mapping):
        raise ValueError(f"ticket {key}: fields must be a dict or None, got {type(extra).__name__}")
    moved_from = ticket.get("moved_from") or ()
    if not isinstance(moved_from, list | tuple) or not all(is_issue_key(k) for k in moved_from):
        raise ValueError(f"ticket {key}: moved_from must be a list of issue keys, got {moved_from!r}")
    updated_at = _aware(ticket.get("updated_at"), f"ticket {key}: updated_at")
    progress_json = None if progress is None else _json_text(dict(progress), f"ticket {key}: progress")
    fields_json = None if extra is None else _json_text(dict(extra), f"ticket {key}: fields")
    row = (
        site,
        key,
        issue_id,
        summary,
        status,
        assignee_email,
        progress_json,
        fields_json,
        timestamp_param(updated_at, dialect, "updated_at"),
        timestamp_param(fetched_at, dialect, "fetched_at"),
        source,
    )
    return _Ticket(key, issue_id, row, updated_at, tuple(k for k in moved_from if k != key))


def check_ticket(ticket: Mapping[str, Any]) -> None:
    """Raise ValueError for a ticket upsert_tickets would refuse, before it reaches a store.

    The fetch calls this per ticket, so one malformed answer from Jira fails only its own key instead
    of the whole store step.
    """
    _ticket(ticket, "sqlite", SOURCES[0], datetime.now(UTC))


def _chunks(items: Sequence[_Ticket], size: int) -> Iterator[list[_Ticket]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def check_site(site: Any) -> str:
    """A site name as the store keys it; ValueError for anything that is not a non-empty string."""
    if not isinstance(site, str) or not site.strip():
        raise ValueError(f"site must be a site's name, got {site!r}")
    return site


def ensure_table(conn: Any, dialect: str) -> None:
    """Create the table, or upgrade an earlier version's in place, when needed; safe to call every run.

    An up-to-date table is only read (its column list), so a role with DML rights only keeps
    working once the one-time DDL has run. Concurrent first runs take turns on the schema lock.
    """
    check_dialect(dialect)
    create_missing(
        conn,
        dialect,
        TABLE,
        (
            _V1_DDL[dialect],
            *upgrade_statements(dialect),
            *census_upgrade_statements(dialect),
            *site_upgrade_statements(dialect),
        ),
    )
    present = table_columns(conn, dialect, TABLE)
    missing = set(V2_COLUMNS[dialect]) - present
    if missing:
        with schema_change(conn, dialect, TABLE) as cursor:
            missing &= _v2_columns_missing(cursor, dialect)
            for statement in upgrade_statements(dialect, missing):
                cursor.execute(statement)
        log.warning("Upgraded table %s in place: added column(s) %s", TABLE, ", ".join(sorted(missing)))
        present = table_columns(conn, dialect, TABLE)
    _ensure_census_columns(conn, dialect, present)
    # The site column is added in the same transaction as the keys change: its presence means done.
    keyed = "site" in present
    if not keyed and upgrade_missing(conn, dialect, TABLE, "site", site_upgrade_statements(dialect)):
        log.warning(
            "Upgraded table %s in place: keyed by (site, key) and (site, issue_id); rows are site %r",
            TABLE,
            DEFAULT_SITE,
        )


def _ensure_census_columns(conn: Any, dialect: str, present: set[str]) -> None:
    """Add the census columns to a table that lacks them, in place, under the schema lock."""
    if not set(CENSUS_COLUMNS[dialect]) - present:
        return
    with schema_change(conn, dialect, TABLE) as cursor:
        missing = set(CENSUS_COLUMNS[dialect]) - table_columns_in(cursor, dialect, TABLE)
        for statement in census_upgrade_statements(dialect, missing):
            cursor.execute(statement)
    if missing:
        log.warning("Upgraded table %s in place: added column(s) %s", TABLE, ", ".join(sorted(missing)))


def _v2_columns_missing(cursor: Any, dialect: str) -> set[str]:
    """Inside the schema lock: the v2 columns still missing (another process may have added them)."""
    return set(V2_COLUMNS[dialect]) - table_columns_in(cursor, dialect, TABLE)


def table_exists(conn: Any, dialect: str) -> bool:
    return _table_exists(conn, dialect, TABLE)


@dataclass(frozen=True)
class UpsertResult:
    written: int
    stale_skipped: int
    # Keys whose stored row changed: new, newer in Jira, moved, or back from deleted. Sorted.
    changed: tuple[str, ...] = field(default=())
    moved: int = 0


def _decoded_list(value: Any) -> list[str]:
    if value is None:
        return []
    return list(json.loads(value) if isinstance(value, str) else value)


@dataclass
class _Stored:
    key: str
    issue_id: int | None
    previous_keys: list[str]
    updated_at: datetime
    deleted: bool


def _stored_rows(cursor: Any, dialect: str, chunk: list[_Ticket], site: str) -> list[_Stored]:
    """The site's stored rows of these tickets: by key, by former key asked for, or by issue id."""
    keys = sorted({t.key for t in chunk} | {k for t in chunk for k in t.moved_from})
    ids = sorted({t.issue_id for t in chunk})
    mark = placeholder(dialect)
    cursor.execute(
        # A row gone by a census's finding (gone_reason) comes back as a change, like a deleted one.
        f"SELECT key, issue_id, previous_keys, updated_at, "
        f"CASE WHEN deleted_at IS NOT NULL OR gone_reason IS NOT NULL THEN 1 END FROM {TABLE} "
        f"WHERE site = {mark} AND (key IN ({', '.join([mark] * len(keys))}) "
        f"OR issue_id IN ({', '.join([mark] * len(ids))}))",
        (site, *keys, *ids),
    )
    return [
        _Stored(
            key, None if issue_id is None else int(issue_id), _decoded_list(prev), as_utc_datetime(at), gone
        )
        for key, issue_id, prev, at, gone in (
            (r[0], r[1], r[2], r[3], r[4] is not None) for r in cursor.fetchall()
        )
    ]


def _settle_identity(
    cursor: Any, dialect: str, ticket: _Ticket, stored: list[_Stored], *, site: str = DEFAULT_SITE
) -> bool:
    """Fold every stored row of this issue into one row under its current key; True if one moved.

    `stored` holds the rows of `site` only (_stored_rows), and only that site's rows are changed:
    another site's row under the same key or id is another issue.

    The rows of one issue are: the row with its id, the row with its current key, and rows under the
    keys it was asked for (`moved_from`) that have no id yet (written before version 2). Jira never
    gives a key to two issues, so the others are duplicates of this one: they are removed, their keys
    kept in `previous_keys`, and the fresh content is written by the upsert that follows.
    """
    mine = [
        row
        for row in stored
        if row.issue_id == ticket.issue_id
        or (row.issue_id is None and (row.key == ticket.key or row.key in ticket.moved_from))
    ]
    clash = next((row for row in stored if row.key == ticket.key and row not in mine), None)
    if clash is not None:
        raise ValueError(
            f"ticket {ticket.key}: the stored row under that key belongs to issue {clash.issue_id}, "
            f"but Jira gives the key to issue {ticket.issue_id}"
        )
    if not mine or (len(mine) == 1 and mine[0].key == ticket.key):
        return False
    keep = next((row for row in mine if row.key == ticket.key), None) or next(
        (row for row in mine if row.issue_id == ticket.issue_id), mine[0]
    )
    former = list(keep.previous_keys)
    for row in sorted(mine, key=lambda r: r.key):
        for key in (row.key, *row.previous_keys):
            if key != ticket.key and key not in former:
                former.append(key)
    mark = placeholder(dialect)
    for row in sorted(mine, key=lambda r: r.key):
        if row is not keep:
            cursor.execute(f"DELETE FROM {TABLE} WHERE site = {mark} AND key = {mark}", (site, row.key))
            stored.remove(row)
    cursor.execute(
        f"UPDATE {TABLE} SET key = {mark}, issue_id = {mark}, previous_keys = {_json_value(dialect)} "
        f"WHERE site = {mark} AND key = {mark}",
        (ticket.key, ticket.issue_id, json.dumps(former), site, keep.key),
    )
    log.info(
        "Site %s: ticket %s (issue %s) was stored as %s: moved to its current key",
        site,
        ticket.key,
        ticket.issue_id,
        former,
    )
    keep.key, keep.issue_id, keep.previous_keys = ticket.key, ticket.issue_id, former
    return True


def upsert_tickets(
    conn: Any,
    dialect: str,
    tickets: Iterable[Mapping[str, Any]],
    *,
    source: str,
    fetched_at: datetime,
    site: str = DEFAULT_SITE,
) -> UpsertResult:
    """Insert or update `site`'s tickets in one transaction; only an equal or newer updated_at replaces a row.

    Each ticket carries its `issue_id`; one that moved (a new key for a stored id, or a stored old key
    in `moved_from`) has its row renamed first. Rows are written in key order, so two transactions
    writing overlapping tickets (the inbox and the sweep) wait for each other instead of deadlocking.
    Every ticket is validated before anything is written; a bad ticket (or any database error) rolls
    back everything this call wrote.
    """
    check_dialect(dialect)
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if not isinstance(fetched_at, datetime):
        raise ValueError(f"fetched_at must be a datetime, got {type(fetched_at).__name__}")
    fetched_at = _aware(fetched_at, "fetched_at")
    site = check_site(site)
    # The last of several copies of one key wins, as it would row by row; then key order (see above).
    by_key = {t.key: t for t in (_ticket(ticket, dialect, source, fetched_at, site) for ticket in tickets)}
    ordered = [by_key[key] for key in sorted(by_key)]
    statement = _upsert_sql(dialect)
    written = moved = 0
    changed: list[str] = []
    with transaction(conn, dialect) as cursor:
        for chunk in _chunks(ordered, CHUNK_SIZE):
            stored = _stored_rows(cursor, dialect, chunk, site)
            for ticket in chunk:
                if _settle_identity(cursor, dialect, ticket, stored, site=site):
                    moved += 1
                    changed.append(ticket.key)
            current = {row.key: row for row in stored}
            for ticket in chunk:
                row = current.get(ticket.key)
                if (
                    row is None or ticket.updated_at > row.updated_at or row.deleted
                ) and ticket.key not in changed:
                    changed.append(ticket.key)
            cursor.executemany(statement, [ticket.row for ticket in chunk])
            # Both drivers sum the affected rows over executemany; a stale row affects none.
            written += max(cursor.rowcount, 0)
    result = UpsertResult(
        written=written, stale_skipped=len(ordered) - written, changed=tuple(sorted(changed)), moved=moved
    )
    log.info(
        "Site %s: upserted %s ticket(s) from %s: %s written, %s stale skipped, %s moved",
        site,
        len(ordered),
        source,
        result.written,
        result.stale_skipped,
        result.moved,
    )
    return result


def _had_key(dialect: str) -> str:
    """A condition true for rows whose previous_keys hold the key bound to the one placeholder."""
    if dialect == "sqlite":
        return "EXISTS (SELECT 1 FROM json_each(previous_keys) WHERE value = ?)"
    return "previous_keys @> jsonb_build_array(%s::text)"


def mark_gone(
    conn: Any, dialect: str, keys: Iterable[str], *, confirmed_at: datetime, site: str = DEFAULT_SITE
) -> list[str]:
    """Set deleted_at on `site`'s rows of tickets its Jira confirmed gone (a 404 after a bulk fetch left
    them out).

    A key matches a row by its current key or one of its previous keys. Rows are kept, never removed;
    a row fetched after `confirmed_at` is left alone (that later fetch saw the ticket). Returns the
    stored keys newly marked.
    """
    check_dialect(dialect)
    confirmed_at = _aware(confirmed_at, "confirmed_at")
    site = check_site(site)
    wanted = sorted({str(key).upper() for key in keys if is_issue_key(str(key).upper())})
    if not wanted:
        return []
    mark = placeholder(dialect)
    former = _had_key(dialect)
    at = timestamp_param(confirmed_at, dialect, "confirmed_at")
    marked: list[str] = []
    with transaction(conn, dialect) as cursor:
        for key in wanted:
            cursor.execute(
                f"UPDATE {TABLE} SET deleted_at = {mark} WHERE site = {mark} AND deleted_at IS NULL "
                f"AND fetched_at <= {mark} AND (key = {mark} OR {former}) RETURNING key",
                (at, site, at, key, key),
            )
            marked.extend(row[0] for row in cursor.fetchall())
    if marked:
        log.warning(
            "Site %s: Jira confirmed %d ticket(s) gone (deleted, or hidden from this account): %s",
            site,
            len(marked),
            ", ".join(marked),
        )
    return marked


def _decoded(row: Sequence[Any]) -> dict[str, Any]:
    ticket = dict(zip(_READ, row, strict=True))
    for column in ("progress", "fields"):
        if isinstance(ticket[column], str):
            ticket[column] = json.loads(ticket[column])
    ticket["previous_keys"] = _decoded_list(ticket["previous_keys"])
    for column in ("updated_at", "fetched_at", "deleted_at", "archived_at", "census_at"):
        if ticket[column] is not None:
            ticket[column] = as_utc_datetime(ticket[column])
    return ticket


def get_ticket(conn: Any, dialect: str, key: str, *, site: str = DEFAULT_SITE) -> dict[str, Any] | None:
    """`site`'s stored ticket under its current key, or under a key it had before it moved; else None.

    progress and fields come back as dicts (or None), previous_keys as a list, timestamps as aware
    UTC datetimes; deleted_at is None unless Jira confirmed the ticket gone.
    """
    check_dialect(dialect)
    mark = placeholder(dialect)
    columns = ", ".join(_READ)
    site = check_site(site)
    rows = read(
        conn, dialect, f"SELECT {columns} FROM {TABLE} WHERE site = {mark} AND key = {mark}", (site, key)
    )
    if not rows and is_issue_key(key):
        rows = read(
            conn,
            dialect,
            f"SELECT {columns} FROM {TABLE} WHERE site = {mark} AND {_had_key(dialect)}",
            (site, key),
        )
    return _decoded(rows[0]) if rows else None


def count_tickets(conn: Any, dialect: str, *, source: str | None = None, site: str = DEFAULT_SITE) -> int:
    """How many tickets `site` has stored, optionally only those last written by `source`."""
    check_dialect(dialect)
    if source is not None and source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES} or None, got {source!r}")
    mark = placeholder(dialect)
    site = check_site(site)
    if source is None:
        rows = read(conn, dialect, f"SELECT COUNT(*) FROM {TABLE} WHERE site = {mark}", (site,))
    else:
        rows = read(
            conn,
            dialect,
            f"SELECT COUNT(*) FROM {TABLE} WHERE site = {mark} AND source = {mark}",
            (site, source),
        )
    return int(rows[0][0])
