"""The figures of the "Jira sync" page that live in the store and the mailbox, read cheaply and read-only.

Each function answers one panel of the page (tickets, sweep, ledger, Jira usage, inbox) from a DB-API
connection or an open Inbox. None of them creates a table: the page may run with read-only rights on
the store, and a store the DAGs have not written yet simply reads as empty. Deleted tickets, which a
store not yet upgraded to v2 does not record, are reported as None, so the page can say "not
available" instead of a misleading zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from include.api_usage import usage_since
from include.imap_inbox import Inbox
from include.mail_ledger import count_by_state, excluded_uids, list_entries
from include.names import DEFAULT_SITE, IMAP_CONN_ID, MAIL_LEDGER_TABLE, TICKET_TABLE
from include.store_db import (
    check_dialect,
    placeholder,
    read,
    table_columns,
    table_exists,
    timestamp_param,
)

# The mail ledger states the page lists: mail that needs a person (failed mail is retried by itself).
LISTED_STATES = ("rejected", "quarantined")
RECENT = timedelta(hours=1)
# The oldest unseen mail is among the lowest UIDs; this many are enough to find it, whatever the backlog.
OLDEST_PROBE = 50


def ticket_figures(conn: Any, dialect: str, *, now: datetime, site: str = DEFAULT_SITE) -> dict[str, Any]:
    """`site`'s tickets by source, rows fetched from Jira in the last hour, and deleted rows where recorded.

    `changed_last_hour` counts `fetched_at`: a row is fetched again whenever its mail or a sweep names it,
    so this is fetch activity, not the number of tickets Jira changed. A table not yet keyed by site
    (the DAGs of this version upgrade it on their first run) holds the plain site's rows only.
    """
    check_dialect(dialect)
    empty = {"total": 0, "by_source": {}, "changed_last_hour": 0, "deleted": None}
    if not table_exists(conn, dialect, TICKET_TABLE):
        return empty
    columns = table_columns(conn, dialect, TICKET_TABLE)
    mark = placeholder(dialect)
    if "site" in columns:
        mine, params = f"site = {mark}", (site,)
    elif site == DEFAULT_SITE:
        mine, params = "1 = 1", ()
    else:
        return empty
    by_source = dict(
        read(
            conn, dialect, f"SELECT source, count(*) FROM {TICKET_TABLE} WHERE {mine} GROUP BY source", params
        )
    )
    ((changed,),) = read(
        conn,
        dialect,
        f"SELECT count(*) FROM {TICKET_TABLE} WHERE {mine} AND fetched_at >= {mark}",
        (*params, timestamp_param(now - RECENT, dialect)),
    )
    deleted = None
    if "deleted_at" in columns:
        ((deleted,),) = read(
            conn,
            dialect,
            f"SELECT count(*) FROM {TICKET_TABLE} WHERE {mine} AND deleted_at IS NOT NULL",
            params,
        )
    return {
        "total": sum(by_source.values()),
        "by_source": {source: int(count) for source, count in sorted(by_source.items())},
        "changed_last_hour": int(changed),
        "deleted": None if deleted is None else int(deleted),
    }


def jira_figures(
    conn: Any, dialect: str, *, now: datetime, jira_conn_id: str | None = None
) -> dict[str, Any]:
    """The last hour's requests and 429s sent to `jira_conn_id`'s Jira (None: every Jira of the store)."""
    usage = usage_since(conn, dialect, now - RECENT, jira_conn_id=jira_conn_id)
    return {
        "requests_last_hour": usage["requests"],
        "throttled_last_hour": usage["throttled"],
        "last_429": usage["last_throttle"],
    }


def ledger_figures(
    conn: Any,
    dialect: str,
    *,
    limit: int = 100,
    site: str | None = None,
    imap_conn_id: str | None = None,
    mailbox: str | None = None,
) -> dict[str, Any]:
    """Mail by ledger state and the latest rejected and quarantined entries (zeros before the first run).

    `site`, `imap_conn_id` and `mailbox` narrow both to one site or one mailbox (None: the whole
    store, which several sites may share); each entry names its "site", "imap_conn_id" and "mailbox".
    """
    check_dialect(dialect)
    narrowed = {"site": site, "imap_conn_id": imap_conn_id, "mailbox": mailbox}
    return {
        **count_by_state(conn, dialect, **narrowed),
        "entries": list_entries(conn, dialect, states=LISTED_STATES, limit=limit, **narrowed),
    }


def uids_held_back(
    conn: Any,
    dialect: str,
    *,
    mailbox: str,
    uidvalidity: int,
    uids: Sequence[int],
    now: datetime | None = None,
    site: str = DEFAULT_SITE,
    imap_conn_id: str = IMAP_CONN_ID,
) -> set[int]:
    """Which of `uids` the mail ledger holds back from jira_inbox: not waiting, so not counted as such.

    The ledger's own rule, the one the sensor applies (failed mail waiting for its next try too), for
    the mailbox `mailbox` on `imap_conn_id` of `site` (default: the plain site's).
    """
    # The table_exists check first: the ledger's writers create the table, and the page creates nothing.
    if not uids or not table_exists(conn, dialect, MAIL_LEDGER_TABLE):
        return set()
    now = now or datetime.now(UTC)
    where = {"site": site, "imap_conn_id": imap_conn_id}
    return excluded_uids(conn, dialect, mailbox, uidvalidity, now, **where) & set(uids)


def inbox_figures(
    inbox: Inbox, *, now: datetime, held: Any = None, max_uids: int = 1_000_000
) -> dict[str, Any]:
    """Unseen mail waiting for `jira_inbox` and the age of the oldest: one EXAMINE, one FETCH, and
    Inbox.unseen_uids' windowed searches (which work past IMAP's one-line limit).

    `held(uidvalidity, uids)` names the UIDs the mail ledger holds back; they are not counted as waiting.
    Keywords count for nothing, as in the sensor: a mail labelled `$JiraRejected` that the ledger
    does not hold (labelled before the ledger existed, say) is taken by the next run, so it waits.
    """
    uidvalidity = inbox.open(readonly=True)
    unseen = inbox.unseen_uids(limit=max_uids, exclude_keyword=None)
    held_back: set[int] = set()
    if held is not None and unseen:
        held_back = held(uidvalidity, unseen)
    waiting = [uid for uid in unseen if uid not in held_back]
    oldest_age = None
    arrivals = inbox.arrival_times(waiting[:OLDEST_PROBE])
    if arrivals:
        oldest_age = max(0.0, (now - min(arrivals.values())).total_seconds())
    return {
        "mailbox": inbox.mailbox,
        "uidvalidity": uidvalidity,
        "unseen": len(waiting),
        "oldest_unseen_age_seconds": oldest_age,
    }


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def as_json(value: Any) -> Any:
    """`value` with datetimes as ISO 8601 text, for the JSON answer."""
    if isinstance(value, dict):
        return {key: as_json(item) for key, item in value.items()}
    if isinstance(value, Iterable) and not isinstance(value, str | bytes):
        return [as_json(item) for item in value]
    return _iso(value)
