"""Ticket history on SQLite or PostgreSQL: every changelog item of the chosen fields, and status stays.

Three objects, created on first use (existing stores gain them in place; `jira_ticket` is untouched):

- `jira_ticket_change`: one row per changed field of one Jira changelog history, keyed by
  (site, issue_id, change_id, field_id) and indexed by (site, issue_id, created). Jira's issue id and
  history id never change, so an issue moved to another key keeps one history, and inserting the same
  history twice adds nothing (ON CONFLICT DO NOTHING).
- `jira_ticket_history_cursor`: per issue, the ticket's `updated` up to which its history is stored,
  and for which fields. POST /rest/api/3/changelog/bulkfetch has no "since" parameter (Jira's OpenAPI
  document lists issueIdsOrKeys, fieldIds, maxResults and nextPageToken only), so "only the changes
  newer than the newest stored one" cannot be asked for per issue. Instead an issue is not asked for
  at all while its stored ticket is not newer than its cursor (and the fields are the same); when it
  is, its whole changelog is read again and only the new histories are inserted.
- the view `jira_ticket_status_interval`: one row per issue per status stay (see STATUS_VIEW_DOC).
"""

from __future__ import annotations

import logging
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from include.jira_rules import CHANGELOG_BULK_MAX_FIELDS
from include.names import (
    DEFAULT_SITE,
    HISTORY_CURSOR_TABLE,
    STATUS_INTERVAL_VIEW,
    TICKET_CHANGE_TABLE,
    TICKET_TABLE,
)
from include.store_db import (
    as_utc_datetime,
    check_dialect,
    create_missing,
    placeholder,
    read,
    schema_change,
    timestamp_param,
    transaction,
)
from include.ticket_fields import split_field_ids

log = logging.getLogger(__name__)

CHANGE_COLUMNS = (
    "site",
    "issue_id",
    "change_id",
    "created",
    "author_account_id",
    "field",
    "field_id",
    "from_value",
    "from_string",
    "to_value",
    "to_string",
)
STATUS_FIELD_ID = "status"

_CHANGE_DDL = {
    "sqlite": f"""CREATE TABLE IF NOT EXISTS {TICKET_CHANGE_TABLE} (
    site TEXT NOT NULL DEFAULT '{DEFAULT_SITE}',
    issue_id INTEGER NOT NULL,
    change_id INTEGER NOT NULL,
    created TEXT NOT NULL,
    author_account_id TEXT,
    field TEXT NOT NULL,
    field_id TEXT NOT NULL,
    from_value TEXT,
    from_string TEXT,
    to_value TEXT,
    to_string TEXT,
    UNIQUE (site, issue_id, change_id, field_id)
)""",
    "postgres": f"""CREATE TABLE IF NOT EXISTS {TICKET_CHANGE_TABLE} (
    site TEXT NOT NULL DEFAULT '{DEFAULT_SITE}',
    issue_id BIGINT NOT NULL,
    change_id BIGINT NOT NULL,
    created TIMESTAMPTZ NOT NULL,
    author_account_id TEXT,
    field TEXT NOT NULL,
    field_id TEXT NOT NULL,
    from_value TEXT,
    from_string TEXT,
    to_value TEXT,
    to_string TEXT,
    UNIQUE (site, issue_id, change_id, field_id)
)""",
}
_CHANGE_INDEX = (
    f"CREATE INDEX IF NOT EXISTS {TICKET_CHANGE_TABLE}_issue_created_idx "
    f"ON {TICKET_CHANGE_TABLE} (site, issue_id, created)"
)
_CURSOR_DDL = {
    "sqlite": f"""CREATE TABLE IF NOT EXISTS {HISTORY_CURSOR_TABLE} (
    site TEXT NOT NULL DEFAULT '{DEFAULT_SITE}',
    issue_id INTEGER NOT NULL,
    synced_updated_at TEXT NOT NULL,
    fields TEXT NOT NULL,
    synced_at TEXT NOT NULL,
    PRIMARY KEY (site, issue_id)
)""",
    "postgres": f"""CREATE TABLE IF NOT EXISTS {HISTORY_CURSOR_TABLE} (
    site TEXT NOT NULL DEFAULT '{DEFAULT_SITE}',
    issue_id BIGINT NOT NULL,
    synced_updated_at TIMESTAMPTZ NOT NULL,
    fields TEXT NOT NULL,
    synced_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (site, issue_id)
)""",
}

STATUS_VIEW_DOC = """\
One row per issue per status stay, from the `status` rows of jira_ticket_change, ordered by
(created, change_id): `stay` 1, 2, ... is the status a change moved the issue into, `entered_at` that
change's time and `left_at` the next status change's (NULL while it is the current status). Stay 0
is the status before the first recorded change (that change's from_string): its `entered_at` is NULL,
because the store does not know when the issue was created. `duration_seconds` is left_at - entered_at
in seconds (milliseconds kept), NULL when either end is NULL: a current stay has no duration in the
view (compute now() - entered_at yourself), so the same query gives the same answer whenever it runs.
Times are UTC, whatever the Jira account's time zone. An issue with no status change has no row."""


def _seconds_between(dialect: str, start: str, end: str) -> str:
    if dialect == "sqlite":
        # julianday() reads the stored fixed-width UTC text; * 86400 turns days into seconds.
        return f"ROUND((julianday({end}) - julianday({start})) * 86400.0, 3)"
    return f"ROUND(CAST(EXTRACT(EPOCH FROM ({end} - {start})) AS NUMERIC), 3)::double precision"


def view_sql(dialect: str) -> str:
    """The SELECT behind the status-interval view (window functions: SQLite >= 3.25, PostgreSQL)."""
    check_dialect(dialect)
    null_time = "NULL" if dialect == "sqlite" else "CAST(NULL AS TIMESTAMPTZ)"
    null_seconds = "NULL" if dialect == "sqlite" else "CAST(NULL AS DOUBLE PRECISION)"
    order = "PARTITION BY site, issue_id ORDER BY created, change_id"
    return (
        "WITH changes AS ("
        f"SELECT site, issue_id, created, from_string, to_string, "
        f"ROW_NUMBER() OVER ({order}) AS stay, LEAD(created) OVER ({order}) AS next_created "
        f"FROM {TICKET_CHANGE_TABLE} WHERE field_id = '{STATUS_FIELD_ID}') "
        f"SELECT site, issue_id, 0 AS stay, from_string AS status, {null_time} AS entered_at, "
        f"created AS left_at, {null_seconds} AS duration_seconds FROM changes WHERE stay = 1 "
        "UNION ALL "
        "SELECT site, issue_id, stay, to_string AS status, created AS entered_at, next_created AS left_at, "
        f"{_seconds_between(dialect, 'created', 'next_created')} AS duration_seconds FROM changes"
    )


def _view_ddl(dialect: str) -> str:
    if dialect == "sqlite":
        return f"CREATE VIEW IF NOT EXISTS {STATUS_INTERVAL_VIEW} AS {view_sql(dialect)}"
    return f"CREATE OR REPLACE VIEW {STATUS_INTERVAL_VIEW} AS {view_sql(dialect)}"


def _view_exists(conn: Any, dialect: str) -> bool:
    if dialect == "sqlite":
        query = "SELECT count(*) FROM sqlite_master WHERE type = 'view' AND name = ?"
    else:
        query = "SELECT count(*) FROM pg_catalog.pg_views WHERE viewname = %s"
    return bool(read(conn, dialect, query, (STATUS_INTERVAL_VIEW,))[0][0])


def ensure_history_tables(conn: Any, dialect: str) -> None:
    """Create the change table, the cursor table and the view when missing; safe to call every run.

    Up to date, it only reads the catalogue, so a role with DML rights only keeps working once the
    one-time DDL has run; concurrent first runs take turns on the schema lock (include.store_db).
    """
    check_dialect(dialect)
    create_missing(conn, dialect, TICKET_CHANGE_TABLE, (_CHANGE_DDL[dialect], _CHANGE_INDEX))
    create_missing(conn, dialect, HISTORY_CURSOR_TABLE, (_CURSOR_DDL[dialect],))
    if not _view_exists(conn, dialect):
        with schema_change(conn, dialect, STATUS_INTERVAL_VIEW) as cursor:
            cursor.execute(_view_ddl(dialect))


# ------------------------------------------------------------------------------------ parsing Jira


def _positive_id(value: Any, what: str) -> int:
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 2**63:
        raise ValueError(f"{what} must be Jira's numeric id, got {value!r}")
    return int(text)


def parse_change_time(value: Any) -> datetime:
    """A changelog `created` as an aware UTC datetime.

    The schema says date-time (Jira sends `2026-11-27T10:14:30.123+0000`); the OpenAPI example of
    the bulk endpoint shows a number, read here as epoch seconds (milliseconds when above 10^11).
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value / 1000 if value > 1e11 else value
        return datetime.fromtimestamp(seconds, UTC)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"changelog created is not an ISO-8601 time: {value!r}") from None
        if moment.tzinfo is not None and moment.utcoffset() is not None:
            return moment.astimezone(UTC)
    raise ValueError(f"changelog created must be a time with an offset, got {value!r}")


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class Change:
    """One changed field of one changelog history (one row of jira_ticket_change, site aside)."""

    issue_id: int
    change_id: int
    created: datetime
    author_account_id: str | None
    field: str
    field_id: str
    from_value: str | None
    from_string: str | None
    to_value: str | None
    to_string: str | None


def changes_of(issue_id: Any, histories: Iterable[Mapping[str, Any]]) -> list[Change]:
    """The rows of one issue's changelog histories (the `Changelog` schema); ValueError when malformed.

    An item without a fieldId (Jira leaves it out on a few legacy items) is keyed by its field name.
    """
    issue = _positive_id(issue_id, "issueId")
    rows: list[Change] = []
    for history in histories:
        if not isinstance(history, Mapping):
            raise ValueError(f"issue {issue}: a changelog history must be an object")
        change_id = _positive_id(history.get("id"), f"issue {issue}: changelog id")
        created = parse_change_time(history.get("created"))
        author = history.get("author") or {}
        account = author.get("accountId") if isinstance(author, Mapping) else None
        for item in history.get("items") or []:
            if not isinstance(item, Mapping):
                raise ValueError(f"issue {issue}, change {change_id}: an item must be an object")
            field = _text_or_none(item.get("field"))
            field_id = _text_or_none(item.get("fieldId")) or field
            if not field_id:
                raise ValueError(f"issue {issue}, change {change_id}: an item names no field")
            rows.append(
                Change(
                    issue,
                    change_id,
                    created,
                    _text_or_none(account),
                    field or field_id,
                    field_id,
                    _text_or_none(item.get("from")),
                    _text_or_none(item.get("fromString")),
                    _text_or_none(item.get("to")),
                    _text_or_none(item.get("toString")),
                )
            )
    return rows


# ------------------------------------------------------------------------------------------ writing


@dataclass(frozen=True)
class HistoryWrite:
    inserted: int
    # The issues that got at least one new row, sorted.
    issues_with_new: tuple[int, ...]


def fields_signature(fields: Sequence[str]) -> str:
    """How the cursor records the fields a history was fetched for (order does not matter)."""
    return ",".join(sorted(set(fields)))


def store_history(
    conn: Any,
    dialect: str,
    changes: Iterable[Change],
    *,
    synced: Mapping[int, datetime],
    fields: Sequence[str],
    site: str = DEFAULT_SITE,
    synced_at: datetime | None = None,
) -> HistoryWrite:
    """Insert the changes no row has yet and move the cursors of the `synced` issues, in one transaction.

    `synced` maps each issue whose whole changelog was read to the ticket `updated` it was read for;
    an issue's cursor never moves back. Returns how many rows were new and for which issues.
    """
    check_dialect(dialect)
    mark = placeholder(dialect)
    at = synced_at or datetime.now(UTC)
    insert = (
        f"INSERT INTO {TICKET_CHANGE_TABLE} ({', '.join(CHANGE_COLUMNS)}) "
        f"VALUES ({', '.join([mark] * len(CHANGE_COLUMNS))}) "
        "ON CONFLICT (site, issue_id, change_id, field_id) DO NOTHING"
    )
    cursor_upsert = (
        f"INSERT INTO {HISTORY_CURSOR_TABLE} (site, issue_id, synced_updated_at, fields, synced_at) "
        f"VALUES ({mark}, {mark}, {mark}, {mark}, {mark}) ON CONFLICT (site, issue_id) DO UPDATE SET "
        "synced_updated_at = CASE WHEN excluded.synced_updated_at > "
        f"{HISTORY_CURSOR_TABLE}.synced_updated_at OR excluded.fields <> {HISTORY_CURSOR_TABLE}.fields "
        f"THEN excluded.synced_updated_at ELSE {HISTORY_CURSOR_TABLE}.synced_updated_at END, "
        "fields = excluded.fields, synced_at = excluded.synced_at"
    )
    inserted = 0
    new_for: set[int] = set()
    # Rows in key order, so two runs writing the same issues wait for each other instead of deadlocking.
    ordered = sorted(changes, key=lambda c: (c.issue_id, c.change_id, c.field_id))
    with transaction(conn, dialect) as cursor:
        for change in ordered:
            cursor.execute(
                insert,
                (
                    site,
                    change.issue_id,
                    change.change_id,
                    timestamp_param(change.created, dialect, "changelog created"),
                    change.author_account_id,
                    change.field,
                    change.field_id,
                    change.from_value,
                    change.from_string,
                    change.to_value,
                    change.to_string,
                ),
            )
            if cursor.rowcount and cursor.rowcount > 0:
                inserted += cursor.rowcount
                new_for.add(change.issue_id)
        signature = fields_signature(fields)
        for issue_id in sorted(synced):
            cursor.execute(
                cursor_upsert,
                (
                    site,
                    issue_id,
                    timestamp_param(synced[issue_id], dialect, "synced updated"),
                    signature,
                    timestamp_param(at, dialect, "synced_at"),
                ),
            )
    return HistoryWrite(inserted, tuple(sorted(new_for)))


# ------------------------------------------------------------------------------------------ reading


def _in_list(dialect: str, count: int) -> str:
    return ", ".join([placeholder(dialect)] * count)


def issues_needing_history(
    conn: Any,
    dialect: str,
    issue_ids: Iterable[int] | None,
    fields: Sequence[str],
    *,
    site: str = DEFAULT_SITE,
) -> dict[int, datetime]:
    """`site`'s stored, not deleted tickets whose history is missing or older than the ticket: id -> updated.

    `issue_ids` None means every stored ticket (the backfill). A ticket whose cursor holds its current
    `updated` for the same fields is left out: nothing changed in Jira since its history was read.
    """
    check_dialect(dialect)
    mark = placeholder(dialect)
    base = (
        # The ticket and its cursor are of one site: another site's issue may have the same id.
        f"SELECT t.issue_id, t.updated_at, c.synced_updated_at, c.fields FROM {TICKET_TABLE} t "
        f"LEFT JOIN {HISTORY_CURSOR_TABLE} c ON c.site = t.site AND c.issue_id = t.issue_id "
        f"WHERE t.site = {mark} AND t.issue_id IS NOT NULL AND t.deleted_at IS NULL"
    )
    signature = fields_signature(fields)
    rows: list[tuple[Any, ...]] = []
    if issue_ids is None:
        rows = read(conn, dialect, base, (site,))
    else:
        wanted = sorted({int(i) for i in issue_ids})
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows.extend(
                read(
                    conn,
                    dialect,
                    f"{base} AND t.issue_id IN ({_in_list(dialect, len(chunk))})",
                    (site, *chunk),
                )
            )
    needing: dict[int, datetime] = {}
    for issue_id, updated, synced, synced_fields in rows:
        updated_at = as_utc_datetime(updated)
        if synced is None or synced_fields != signature or as_utc_datetime(synced) < updated_at:
            needing[int(issue_id)] = updated_at
    return dict(sorted(needing.items()))


def ticket_updated(
    conn: Any, dialect: str, issue_ids: Sequence[int], *, site: str = DEFAULT_SITE
) -> dict[int, datetime]:
    """The stored `updated` of these tickets of `site` (those stored), by issue id."""
    check_dialect(dialect)
    found: dict[int, datetime] = {}
    wanted = sorted({int(i) for i in issue_ids})
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        where = f"site = {placeholder(dialect)} AND issue_id IN ({_in_list(dialect, len(chunk))})"
        query = f"SELECT issue_id, updated_at FROM {TICKET_TABLE} WHERE {where}"
        for issue_id, updated in read(conn, dialect, query, (site, *chunk)):
            found[int(issue_id)] = as_utc_datetime(updated)
    return found


def issue_keys(
    conn: Any, dialect: str, issue_ids: Sequence[int], *, site: str = DEFAULT_SITE
) -> dict[int, str]:
    """The current key of each stored issue id of `site` (for asset events and logs)."""
    check_dialect(dialect)
    keys: dict[int, str] = {}
    wanted = sorted({int(i) for i in issue_ids})
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        for issue_id, key in read(
            conn,
            dialect,
            f"SELECT issue_id, key FROM {TICKET_TABLE} "
            f"WHERE site = {placeholder(dialect)} AND issue_id IN ({_in_list(dialect, len(chunk))})",
            (site, *chunk),
        ):
            keys[int(issue_id)] = str(key)
    return keys


def count_changes(conn: Any, dialect: str, issue_id: int | None = None, *, site: str = DEFAULT_SITE) -> int:
    check_dialect(dialect)
    mark = placeholder(dialect)
    if issue_id is None:
        rows = read(conn, dialect, f"SELECT COUNT(*) FROM {TICKET_CHANGE_TABLE} WHERE site = {mark}", (site,))
    else:
        rows = read(
            conn,
            dialect,
            f"SELECT COUNT(*) FROM {TICKET_CHANGE_TABLE} WHERE site = {mark} AND issue_id = {mark}",
            (site, int(issue_id)),
        )
    return int(rows[0][0])


def status_intervals(
    conn: Any, dialect: str, issue_ids: Sequence[int] | None = None, *, site: str = DEFAULT_SITE
) -> list[dict[str, Any]]:
    """Rows of the status-interval view (optionally for some issues), in issue and stay order."""
    check_dialect(dialect)
    mark = placeholder(dialect)
    query = (
        f"SELECT issue_id, stay, status, entered_at, left_at, duration_seconds FROM {STATUS_INTERVAL_VIEW} "
        f"WHERE site = {mark}"
    )
    params: tuple[Any, ...] = (site,)
    if issue_ids is not None:
        ids = sorted({int(i) for i in issue_ids})
        if not ids:
            return []
        query += f" AND issue_id IN ({_in_list(dialect, len(ids))})"
        params += tuple(ids)
    rows = read(conn, dialect, query + " ORDER BY issue_id, stay", params)
    return [
        {
            "issue_id": int(issue_id),
            "stay": int(stay),
            "status": status,
            "entered_at": None if entered is None else as_utc_datetime(entered),
            "left_at": None if left is None else as_utc_datetime(left),
            "duration_seconds": None if seconds is None else float(seconds),
        }
        for issue_id, stay, status, entered, left, seconds in rows
    ]


# ------------------------------------------------------------------------------- the fields setting

# [jira_mail_sync] history_fields by default: what flow metrics need (time in status, reassignments,
# re-prioritisation, resolution, sprint and version moves, relabelling, retyping, moves, renames).
DEFAULT_HISTORY_FIELDS = (
    "status",
    "assignee",
    "priority",
    "resolution",
    "sprint",
    "fixVersions",
    "labels",
    "issuetype",
    "project",
    "summary",
)
_HISTORY_FIELD = re.compile(r"customfield_[1-9][0-9]{0,9}|[a-zA-Z][A-Za-z0-9]{1,49}")


def parse_history_fields(text: str | None) -> tuple[str, ...]:
    """The configured history field ids, in order, de-duplicated; at most 10 (the endpoint's limit)."""
    ids = split_field_ids(text, "history_fields", _HISTORY_FIELD, "status or customfield_10020")
    if len(ids) > CHANGELOG_BULK_MAX_FIELDS:
        raise ValueError(
            f"history_fields: {len(ids)} fields given, at most {CHANGELOG_BULK_MAX_FIELDS} are allowed "
            "(Jira's changelog bulk fetch filters by at most 10)"
        )
    return tuple(ids)


def resolve_history_fields(fields: Sequence[str], catalogue: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """The field ids to ask the changelog for, checked against GET /rest/api/3/field.

    A field id Jira lists is kept. Sprint has a different custom field id on every site
    (customfield_10020 on many), so an entry Jira does not list as an id but that matches exactly one
    field's name (`sprint` -> Sprint) is resolved to that field's id. Anything else raises ValueError.
    """
    known = {str(field.get("id")): field for field in catalogue if isinstance(field, Mapping)}
    by_name: dict[str, list[str]] = {}
    for field_id, field in known.items():
        by_name.setdefault(str(field.get("name", "")).casefold(), []).append(field_id)
    resolved: list[str] = []
    unknown: list[str] = []
    for field_id in fields:
        if field_id in known:
            chosen = field_id
        elif len(by_name.get(field_id.casefold(), [])) == 1:
            chosen = by_name[field_id.casefold()][0]
        else:
            unknown.append(field_id)
            continue
        if chosen not in resolved:
            resolved.append(chosen)
    if unknown:
        raise ValueError(
            f"history_fields: Jira has no field {', '.join(unknown)}, or this account cannot see it "
            "(GET /rest/api/3/field lists the ids)"
        )
    return tuple(resolved)


def median_seconds_by_status(stays: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The median finished stay per status (rows of status_intervals); current stays do not count."""
    durations: dict[str, list[float]] = {}
    for stay in stays:
        if stay.get("duration_seconds") is not None:
            durations.setdefault(str(stay["status"]), []).append(float(stay["duration_seconds"]))
    return {status: statistics.median(values) for status, values in sorted(durations.items())}
