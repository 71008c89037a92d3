"""The census: make jira_ticket match Jira exactly, project by project, from an id-only listing.

Jira has no deletion feed. A deleted, archived or newly hidden issue just drops out of search, so
once a day the census lists every issue id of each synced project (`fields=id,key`, 5000 a page) and
compares the ids with the store's live rows of that project:

- an id the store has and Jira's listing lacks is classified with one bulk fetch per 1000 ids, then a
  single GET only for those the bulk fetch left out: 404 `deleted_or_hidden`, 403 `not_visible`, found
  in a project outside the census `moved_out`; in a synced project, answered by a GET after the bulk
  fetch left it out, or carrying the archive date, `archived` (Jira's archive keeps issues reachable
  directly, not in search or bulk fetch); a live issue the bulk fetch returns is only Jira's search
  index lagging, and is left alone;
- an id Jira lists and the store lacks is fetched and stored (a lost mail or a sweep gap, healed);
- an id unlisted in one synced project and listed in another moved between them: the heal's fetch
  renames its row (the store's move handling), nothing is marked.

The guard: before anything is written, a project whose unlisted rows exceed `max_gone_fraction` of its
live rows stops the run (a revoked permission, a wrong JQL or an outage answering empty pages look
exactly like that), unless a human passed `confirm_mass_change`.

Memory: the store's live ids of a project are read in id order (the database sorts) into an
`array('q')`, 8 bytes an id, plus one byte a row for "seen"; Jira's pages are streamed through a
binary search of that array and never kept. Only the differences are held as Python objects.
"""

from __future__ import annotations

import itertools
import logging
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from include.jira_cloud import (
    JiraCloudClient,
    JiraNotFound,
    JiraRequestError,
    parse_jira_datetime,
    ticket_details,
)
from include.jira_rules import BULK_FETCH_LIMIT_PLAIN_FIELDS, is_project_key, normalise_key
from include.names import CENSUS_RUN_TABLE, CHANGE_FEED_MAX_KEYS, DEFAULT_SITE
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
from include.sync_pipeline import fetch_batch, store_batches
from include.ticket_fields import TICKET_FIELDS
from include.ticket_store import GONE_REASONS, SITE_COLUMN, TABLE, check_site, ensure_table

log = logging.getLogger(__name__)

DEFAULT_MAX_GONE_FRACTION = 0.05
# The archival fields: Jira's OpenAPI document names `ArchivedBy` and `ArchivedDate` as the
# "archival-specific fields" of an archived issue (PUT /rest/api/3/issues/archive/export); as issue
# fields their ids are lower-case. Asked for in the classification, so an archived issue a bulk fetch
# or GET does return carries its archive date; their absence never decides anything on its own.
ARCHIVE_FIELDS = ("archiveddate", "archivedby")
# How many ids one UPDATE or SELECT names (well under SQLite's 32766 bound parameters).
ID_CHUNK = 500
HEAL_SOURCE = "sweep"  # the store's source CHECK allows inbox and sweep; a heal is a sweep of a gap


class MassChangeRefused(Exception):
    """The census would mark more of a project gone than `max_gone_fraction` allows; nothing was written."""


def census_jql(project: str) -> str:
    """The id-only listing's JQL for one project (the key is validated: it cannot carry JQL)."""
    if not is_project_key(project):
        raise ValueError(f"not a Jira project key: {project!r}")
    return f'project = "{project}"'


def validate_projects(projects: Iterable[str]) -> list[str]:
    """Project keys upper-cased, de-duplicated, in order; ValueError naming the first bad one."""
    keys = list(dict.fromkeys(normalise_key(project) for project in projects))
    bad = [key for key in keys if not is_project_key(key)]
    if bad:
        raise ValueError(f"not a Jira project key: {bad[0]!r} (expected e.g. ABC)")
    return keys


def check_fraction(value: Any) -> float:
    fraction = float(value)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"max_gone_fraction must be between 0 and 1, got {value!r}")
    return fraction


# ----------------------------------------------------------------------------------------- comparing


@dataclass
class Comparison:
    """One project's listing against its stored live ids (sorted)."""

    project: str
    stored: array  # the live rows' issue ids, ascending
    seen: bytearray  # 1 where the listing had stored[i]
    unstored: dict[int, str] = field(default_factory=dict)  # listed, not stored live: id -> key
    listed: int = 0  # distinct ids Jira listed

    def unlisted(self) -> Iterator[int]:
        return (issue_id for issue_id, seen in zip(self.stored, self.seen, strict=True) if not seen)

    def confirmed(self) -> Iterator[int]:
        return (issue_id for issue_id, seen in zip(self.stored, self.seen, strict=True) if seen)


def compare(project: str, stored: array, listing: Iterable[tuple[int, str]]) -> Comparison:
    """Stream `listing` ((id, key) as Jira pages it) through a binary search of the sorted `stored` ids.

    An id seen on two overlapping pages counts once; an unsorted `stored` is refused (the binary search
    would silently miss ids and the census would mark alive rows gone).
    """
    if any(stored[i] >= stored[i + 1] for i in range(len(stored) - 1)):
        raise ValueError(f"project {project}: the stored ids must be strictly ascending")
    result = Comparison(project, stored, bytearray(len(stored)))
    size = len(stored)
    for issue_id, key in listing:
        at = bisect_left(stored, issue_id)
        if at < size and stored[at] == issue_id:
            if not result.seen[at]:
                result.seen[at] = 1
                result.listed += 1
        elif issue_id not in result.unstored:
            result.unstored[issue_id] = key
            result.listed += 1
    return result


@dataclass(frozen=True)
class Finding:
    """What the classification found for one stored id that the listing lacked."""

    issue_id: int
    stored_key: str
    reason: str  # one of GONE_REASONS
    archived_at: datetime | None = None
    issue: dict[str, Any] | None = None  # Jira's answer (moved_out: stored under its new key)


def guard(comparisons: Sequence[Comparison], moved_within: set[int], max_gone_fraction: float) -> list[str]:
    """The projects (as sentences) where more than `max_gone_fraction` of the live rows would go."""
    refused = []
    for comparison in comparisons:
        stored = len(comparison.stored)
        candidates = sum(1 for issue_id in comparison.unlisted() if issue_id not in moved_within)
        if stored and candidates > max_gone_fraction * stored:
            refused.append(
                f"{comparison.project}: {candidates} of {stored} stored tickets "
                f"({candidates / stored:.1%}) are missing from Jira's listing"
            )
    return refused


def _project_of(key: str) -> str:
    return key.rsplit("-", 1)[0]


def _archived_at(issue: Mapping[str, Any], default: datetime) -> datetime:
    raw = (issue.get("fields") or {}).get("archiveddate")
    if isinstance(raw, str):
        try:
            return parse_jira_datetime(raw).astimezone(UTC)
        except ValueError:
            log.warning("Issue %s has an unreadable archiveddate %r", issue.get("key"), raw)
    return default


def _finding(
    issue_id: int, stored_key: str, issue: dict[str, Any], projects: set[str], at: datetime
) -> Finding:
    if _project_of(str(issue.get("key", ""))) not in projects:
        return Finding(issue_id, stored_key, "moved_out", issue=issue)
    # Reachable directly but absent from its project's search: what Jira's archive does.
    return Finding(issue_id, stored_key, "archived", archived_at=_archived_at(issue, at), issue=issue)


def classify(
    client: JiraCloudClient,
    candidates: Mapping[int, str],
    projects: set[str],
    *,
    at: datetime,
    extra_fields: Sequence[str] = (),
) -> tuple[list[Finding], dict[str, str], list[str]]:
    """Classify stored ids Jira's listing lacked ({id: stored key}): one bulk fetch per 1000 ids, then a
    GET only for those it left out. Returns the findings, {key: error} for ids Jira refused to say
    anything about, and the keys of live issues its search has not caught up with (neither marked).
    JiraUnavailable propagates: an outage never marks anything."""
    fields = (*TICKET_FIELDS, *extra_fields, *ARCHIVE_FIELDS)
    ids = sorted(candidates)
    found: dict[int, dict[str, Any]] = {}
    for start in range(0, len(ids), BULK_FETCH_LIMIT_PLAIN_FIELDS):
        for issue in client.bulk_fetch_ids(ids[start : start + BULK_FETCH_LIMIT_PLAIN_FIELDS], fields):
            found[int(issue["id"])] = issue
    findings: list[Finding] = []
    unresolved: dict[str, str] = {}
    not_yet_listed: list[str] = []
    for issue_id in ids:
        key = candidates[issue_id]
        issue = found.get(issue_id)
        if (
            issue is not None
            and _project_of(str(issue.get("key", ""))) in projects
            and not (issue.get("fields") or {}).get("archiveddate")
        ):
            # A bulk fetch leaves archived issues out, so a live issue of a synced project that its
            # search missed is Jira's eventually consistent index (a ticket created or moved moments
            # ago): nothing to mark; the next census sees it listed.
            not_yet_listed.append(key)
            continue
        if issue is None:
            try:
                issue = client.get_issue(key, fields)
            except JiraNotFound:
                findings.append(Finding(issue_id, key, "deleted_or_hidden"))
                continue
            except JiraRequestError as exc:
                if exc.status == 403:
                    findings.append(Finding(issue_id, key, "not_visible"))
                else:
                    unresolved[key] = str(exc)
                continue
            if str(issue.get("id")) != str(issue_id):
                # The stored key now names another issue: say so rather than guess.
                unresolved[key] = f"Jira gives {key} to issue {issue.get('id')}, the store to {issue_id}"
                continue
        findings.append(_finding(issue_id, key, issue, projects, at))
    if not_yet_listed:
        log.info("Alive in Jira but not in its search yet (left as they are): %s", ", ".join(not_yet_listed))
    return findings, unresolved, not_yet_listed


# ------------------------------------------------------------------------------------------ the store

_RUN_DDL = {
    "sqlite": f"""CREATE TABLE IF NOT EXISTS {CENSUS_RUN_TABLE} (
    project TEXT PRIMARY KEY,
    census_at TEXT NOT NULL,
    run_id TEXT,
    listed INTEGER NOT NULL,
    stored INTEGER NOT NULL,
    healed INTEGER NOT NULL,
    deleted_or_hidden INTEGER NOT NULL,
    not_visible INTEGER NOT NULL,
    archived INTEGER NOT NULL,
    moved_out INTEGER NOT NULL
)""",
    "postgres": f"""CREATE TABLE IF NOT EXISTS {CENSUS_RUN_TABLE} (
    project TEXT PRIMARY KEY,
    census_at TIMESTAMPTZ NOT NULL,
    run_id TEXT,
    listed INTEGER NOT NULL,
    stored INTEGER NOT NULL,
    healed INTEGER NOT NULL,
    deleted_or_hidden INTEGER NOT NULL,
    not_visible INTEGER NOT NULL,
    archived INTEGER NOT NULL,
    moved_out INTEGER NOT NULL
)""",
}
RUN_COUNTS = ("listed", "stored", "healed", *GONE_REASONS)
_RUN_COLUMNS = ("project", "census_at", "run_id", *RUN_COUNTS)


def run_site_upgrade_statements(dialect: str) -> list[str]:
    """The DDL that keys jira_census_run by (site, project); existing rows become site 'default'.

    PostgreSQL alters the key in place; SQLite cannot, so the table is rebuilt (in one transaction).
    A fresh table is created by its first DDL plus these, so fresh and upgraded never differ.
    """
    check_dialect(dialect)
    if dialect == "postgres":
        return [
            f"ALTER TABLE {CENSUS_RUN_TABLE} ADD COLUMN {SITE_COLUMN}",
            f"ALTER TABLE {CENSUS_RUN_TABLE} DROP CONSTRAINT {CENSUS_RUN_TABLE}_pkey",
            f"ALTER TABLE {CENSUS_RUN_TABLE} ADD CONSTRAINT {CENSUS_RUN_TABLE}_pkey "
            "PRIMARY KEY (site, project)",
        ]
    new = f"{CENSUS_RUN_TABLE}_new"
    first = _RUN_DDL["sqlite"].replace(f"IF NOT EXISTS {CENSUS_RUN_TABLE} (", f"{new} (", 1)
    ddl = first.replace("project TEXT PRIMARY KEY,", f"{SITE_COLUMN},\n    project TEXT NOT NULL,", 1)
    ddl = ddl[: ddl.rindex("\n)")] + ",\n    PRIMARY KEY (site, project)\n)"
    copied = ", ".join(_RUN_COLUMNS)
    return [
        f"DROP TABLE IF EXISTS {new}",
        ddl,
        f"INSERT INTO {new} (site, {copied}) SELECT '{DEFAULT_SITE}', {copied} FROM {CENSUS_RUN_TABLE}",
        f"DROP TABLE {CENSUS_RUN_TABLE}",
        f"ALTER TABLE {new} RENAME TO {CENSUS_RUN_TABLE}",
    ]


def _live(dialect: str) -> str:
    """Live rows of one site's project; binds _prefix(site, project). Not LIKE: `_` in a project key is
    a LIKE wildcard, and SQLite's LIKE ignores case."""
    mark = placeholder(dialect)
    return f"site = {mark} AND substr(key, 1, {mark}) = {mark} AND deleted_at IS NULL AND gone_reason IS NULL"


def _prefix(site: str, project: str) -> tuple[str, int, str]:
    return site, len(project) + 1, f"{project}-"


def stored_projects(conn: Any, dialect: str, *, site: str = DEFAULT_SITE) -> list[str]:
    """The projects of the keys `site` holds live in the store (the census's default scope)."""
    rows = read(
        conn,
        dialect,
        f"SELECT DISTINCT key FROM {TABLE} WHERE site = {placeholder(dialect)} "
        "AND deleted_at IS NULL AND gone_reason IS NULL",
        (check_site(site),),
    )
    return sorted({_project_of(str(key)) for (key,) in rows})


def live_ids(
    conn: Any, dialect: str, project: str, *, chunk: int = 10_000, site: str = DEFAULT_SITE
) -> array:
    """A site's project's live rows' issue ids, ascending, read in pages by the database's own order."""
    mark = placeholder(dialect)
    ids = array("q")
    last = 0
    while True:
        rows = read(
            conn,
            dialect,
            f"SELECT issue_id FROM {TABLE} WHERE {_live(dialect)} AND issue_id > {mark} "
            f"ORDER BY issue_id LIMIT {int(chunk)}",
            (*_prefix(site, project), last),
        )
        ids.extend(int(issue_id) for (issue_id,) in rows)
        if len(rows) < chunk:
            return ids
        last = ids[-1]


def keys_without_id(conn: Any, dialect: str, project: str, *, site: str = DEFAULT_SITE) -> list[str]:
    """Live rows written before version 2 (no issue_id): the census refreshes them by key."""
    rows = read(
        conn,
        dialect,
        f"SELECT key FROM {TABLE} WHERE {_live(dialect)} AND issue_id IS NULL",
        _prefix(site, project),
    )
    return sorted(str(key) for (key,) in rows)


def keys_of(conn: Any, dialect: str, issue_ids: Iterable[int], *, site: str = DEFAULT_SITE) -> dict[int, str]:
    mark = placeholder(dialect)
    wanted = sorted(set(issue_ids))
    keys: dict[int, str] = {}
    for start in range(0, len(wanted), ID_CHUNK):
        chunk = wanted[start : start + ID_CHUNK]
        rows = read(
            conn,
            dialect,
            f"SELECT issue_id, key FROM {TABLE} WHERE site = {mark} "
            f"AND issue_id IN ({', '.join([mark] * len(chunk))})",
            (site, *chunk),
        )
        keys.update((int(issue_id), str(key)) for issue_id, key in rows)
    return keys


def mark_findings(
    conn: Any, dialect: str, findings: Sequence[Finding], *, at: datetime, site: str = DEFAULT_SITE
) -> list[str]:
    """Write what the census found, in one transaction; returns the keys newly marked.

    deleted_or_hidden and not_visible set deleted_at (the row is kept), archived sets archived_at,
    moved_out only the reason (its row was renamed to the new key by the store's move handling).
    A row fetched after `at` is left alone: that later fetch saw the ticket.
    """
    check_dialect(dialect)
    mark = placeholder(dialect)
    stamp = timestamp_param(at, dialect, "census_at")
    marked: list[str] = []
    with transaction(conn, dialect) as cursor:
        for finding in sorted(findings, key=lambda f: f.issue_id):
            if finding.reason not in GONE_REASONS:
                raise ValueError(f"unknown gone reason {finding.reason!r}")
            sets = [f"gone_reason = {mark}", f"census_at = {mark}"]
            values: list[Any] = [finding.reason, stamp]
            if finding.reason in ("deleted_or_hidden", "not_visible"):
                sets.append(f"deleted_at = {mark}")
                values.append(stamp)
            elif finding.reason == "archived":
                sets.append(f"archived_at = {mark}")
                values.append(timestamp_param(finding.archived_at or at, dialect, "archived_at"))
            cursor.execute(
                f"UPDATE {TABLE} SET {', '.join(sets)} WHERE site = {mark} AND issue_id = {mark} "
                f"AND deleted_at IS NULL AND gone_reason IS NULL AND fetched_at <= {mark} RETURNING key",
                (*values, site, finding.issue_id, stamp),
            )
            marked.extend(str(row[0]) for row in cursor.fetchall())
    return marked


def stamp_confirmed(
    conn: Any, dialect: str, issue_ids: Iterable[int], *, at: datetime, site: str = DEFAULT_SITE
) -> int:
    """Set census_at on `site`'s live rows its Jira listed: when a census last confirmed them."""
    mark = placeholder(dialect)
    stamp = timestamp_param(at, dialect, "census_at")
    count = 0
    chunk: list[int] = []

    def flush(cursor: Any) -> int:
        cursor.execute(
            f"UPDATE {TABLE} SET census_at = {mark} WHERE site = {mark} "
            f"AND issue_id IN ({', '.join([mark] * len(chunk))}) "
            "AND deleted_at IS NULL AND gone_reason IS NULL",
            (stamp, site, *chunk),
        )
        chunk.clear()
        return max(cursor.rowcount, 0)

    with transaction(conn, dialect) as cursor:
        for issue_id in issue_ids:
            chunk.append(issue_id)
            if len(chunk) >= ID_CHUNK:
                count += flush(cursor)
        if chunk:
            count += flush(cursor)
    return count


def ensure_run_table(conn: Any, dialect: str) -> None:
    """Create jira_census_run, or key an earlier one by site in place; only reads when up to date."""
    check_dialect(dialect)
    create_missing(
        conn, dialect, CENSUS_RUN_TABLE, (_RUN_DDL[dialect], *run_site_upgrade_statements(dialect))
    )
    if upgrade_missing(conn, dialect, CENSUS_RUN_TABLE, "site", run_site_upgrade_statements(dialect)):
        log.warning(
            "Upgraded table %s in place: keyed by (site, project); existing rows are site %r",
            CENSUS_RUN_TABLE,
            DEFAULT_SITE,
        )


def record_runs(
    conn: Any,
    dialect: str,
    counts: Mapping[str, Mapping[str, int]],
    *,
    at: datetime,
    run_id: str | None,
    site: str = DEFAULT_SITE,
) -> None:
    """Keep each project's last census of `site` (one row a site and project) for the Jira sync page."""
    site = check_site(site)
    ensure_run_table(conn, dialect)
    mark = placeholder(dialect)
    columns = ("site", *_RUN_COLUMNS)
    updates = ", ".join(f"{c} = excluded.{c}" for c in _RUN_COLUMNS[1:])
    statement = (
        f"INSERT INTO {CENSUS_RUN_TABLE} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))}) "
        f"ON CONFLICT (site, project) DO UPDATE SET {updates}"
    )
    stamp = timestamp_param(at, dialect, "census_at")
    with transaction(conn, dialect) as cursor:
        for project in sorted(counts):
            row = counts[project]
            cursor.execute(
                statement, (site, project, stamp, run_id, *(int(row.get(c, 0)) for c in RUN_COUNTS))
            )


def last_runs(conn: Any, dialect: str, *, site: str = DEFAULT_SITE) -> list[dict[str, Any]]:
    """Each project's last census of `site`, by project; empty before the first census.

    Read-only (the Jira sync page calls it): a table a census of an earlier version wrote, not yet
    keyed by site, holds the plain site's rows only.
    """
    if not table_exists(conn, dialect, CENSUS_RUN_TABLE):
        return []
    query = f"SELECT {', '.join(_RUN_COLUMNS)} FROM {CENSUS_RUN_TABLE}"
    params: tuple[Any, ...] = ()
    if "site" in table_columns(conn, dialect, CENSUS_RUN_TABLE):
        query += f" WHERE site = {placeholder(dialect)}"
        params = (check_site(site),)
    elif site != DEFAULT_SITE:
        return []
    rows = read(conn, dialect, query + " ORDER BY project", params)
    result = []
    for row in rows:
        item = dict(zip(_RUN_COLUMNS, row, strict=True))
        item["census_at"] = as_utc_datetime(item["census_at"])
        result.append(item)
    return result


# ------------------------------------------------------------------------------------------ the run


@dataclass
class CensusResult:
    counts: dict[str, dict[str, int]]  # project -> listed, stored, healed, and each gone reason
    changed: list[str]  # keys whose row changed (healed, moved, marked), sorted; may be truncated
    changed_count: int
    failed: dict[str, str]  # key -> why it could not be classified or healed
    requests: int  # requests made to Jira
    at: datetime  # the census's time: census_at of every row it confirmed or marked
    not_yet_listed: list[str] = field(default_factory=list)  # alive, not in Jira's search yet

    def summary(self) -> dict[str, Any]:
        return {
            "counts": self.counts,
            "changed_count": self.changed_count,
            "changed": self.changed[:CHANGE_FEED_MAX_KEYS],
            "failed": self.failed,
            "requests": self.requests,
            "not_yet_listed": self.not_yet_listed[:CHANGE_FEED_MAX_KEYS],
        }


def run_census(
    client: JiraCloudClient,
    conn: Any,
    dialect: str,
    projects: Sequence[str],
    *,
    max_gone_fraction: float = DEFAULT_MAX_GONE_FRACTION,
    confirm_mass_change: bool = False,
    extra_fields: Sequence[str] = (),
    bulk_size: int = BULK_FETCH_LIMIT_PLAIN_FIELDS,
    at: datetime | None = None,
    site: str = DEFAULT_SITE,
) -> CensusResult:
    """One census of `site`'s `projects`: list, compare, guard, classify, heal, mark, stamp (see the
    module doc). `client` is that site's Jira; only that site's rows are read and written.

    Raises MassChangeRefused before writing anything when the guard stops it. Ids Jira refused to
    classify or heal are returned in `failed`; everything else is written.
    """
    at = at or datetime.now(UTC)
    projects = validate_projects(projects)
    max_gone_fraction = check_fraction(max_gone_fraction)
    site = check_site(site)
    requests_before = client.request_count
    ensure_table(conn, dialect)
    comparisons: list[Comparison] = []
    old_keys: dict[str, list[str]] = {}
    for project in projects:
        stored = live_ids(conn, dialect, project, site=site)
        comparison = compare(project, stored, client.search_ids(census_jql(project)))
        comparisons.append(comparison)
        old_keys[project] = keys_without_id(conn, dialect, project, site=site)
        log.info(
            "Census of %s on site %s: Jira lists %d issue(s), the store holds %d live; "
            "%d listed but not stored",
            project,
            site,
            comparison.listed,
            len(stored),
            len(comparison.unstored),
        )
    unstored = {issue_id: key for c in comparisons for issue_id, key in c.unstored.items()}
    moved_within = {issue_id for c in comparisons for issue_id in c.unlisted() if issue_id in unstored}
    refused = guard(comparisons, moved_within, max_gone_fraction)
    if refused and not confirm_mass_change:
        raise MassChangeRefused(
            f"The census would mark more than {max_gone_fraction:.0%} of a project's tickets gone, so it "
            f"changed nothing: {'; '.join(refused)}. If Jira is right (check the sync account's "
            "permissions and Jira's status first), run again with confirm_mass_change: true."
        )
    if refused:
        log.warning("Mass change confirmed by the run's params: %s", "; ".join(refused))

    candidate_ids = [i for c in comparisons for i in c.unlisted() if i not in moved_within]
    candidates = keys_of(conn, dialect, candidate_ids, site=site)
    findings, failed, not_yet_listed = classify(
        client, candidates, set(projects), at=at, extra_fields=extra_fields
    )

    # Heal: the listed ids the store lacks, the old rows without an id, and the moved-out issues (their
    # rows are renamed to the new key). One store call, so its summary names every change.
    heal_keys = sorted(set(unstored.values()) | {k for keys in old_keys.values() for k in keys})
    moved_out = [f for f in findings if f.reason == "moved_out" and f.issue is not None]
    batches = [
        fetch_batch(client, heal_keys[i : i + bulk_size], extra_fields)
        for i in range(0, len(heal_keys), bulk_size)
    ]
    moved_tickets = []
    for finding in moved_out:
        details = ticket_details(finding.issue, extra_fields)
        details["moved_from"] = [finding.stored_key]
        moved_tickets.append(details)
    if moved_tickets:
        batches.append({"tickets": moved_tickets, "fetched_at": at.isoformat()})
    stored_summary = store_batches(conn, dialect, batches, source=HEAL_SOURCE, fetched_at=at, site=site)
    failed.update(stored_summary["failed"])
    failed.update({key: "not reached" for key in stored_summary["unresolved"]})

    marked = mark_findings(conn, dialect, findings, at=at, site=site)
    # Confirmed: the rows Jira listed, those just healed included.
    confirmed = itertools.chain((i for c in comparisons for i in c.confirmed()), unstored)
    stamp_confirmed(conn, dialect, confirmed, at=at, site=site)

    healed_keys = {key for key in unstored.values() if key not in failed}
    counts: dict[str, dict[str, int]] = {}
    for comparison in comparisons:
        project = comparison.project
        row = {"listed": comparison.listed, "stored": len(comparison.stored)}
        row["healed"] = sum(1 for key in comparison.unstored.values() if key in healed_keys)
        for reason in GONE_REASONS:
            row[reason] = sum(
                1 for f in findings if f.reason == reason and _project_of(f.stored_key) == project
            )
        counts[project] = row
    # store_batches names at most CHANGE_FEED_MAX_KEYS keys but counts them all.
    healed_changed = set(stored_summary.get("changed") or [])
    changed = sorted(healed_changed | set(marked))
    changed_count = int(stored_summary.get("changed_count", 0)) + len(set(marked) - healed_changed)
    result = CensusResult(
        counts, changed, changed_count, failed, client.request_count - requests_before, at, not_yet_listed
    )
    log.info("Census done: %s; %d request(s) to Jira", counts, result.requests)
    return result
