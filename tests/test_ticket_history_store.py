"""jira_ticket_change, its cursor and the status-interval view on real SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from include.names import STATUS_INTERVAL_VIEW, TICKET_CHANGE_TABLE
from include.ticket_history import (
    changes_of,
    count_changes,
    ensure_history_tables,
    issues_needing_history,
    median_seconds_by_status,
    parse_change_time,
    parse_history_fields,
    resolve_history_fields,
    status_intervals,
    store_history,
)
from include.ticket_store import upsert_tickets

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
FIELDS = ("status", "assignee")


def jira_time(at: datetime, zone: str) -> str:
    """Jira's rendering of an instant in an account's zone: 2026-11-02T20:00:00.000+1100."""
    local = at.astimezone(ZoneInfo(zone))
    return f"{local:%Y-%m-%dT%H:%M:%S}.{local.microsecond // 1000:03d}{local:%z}"


def status_change(change_id: int, at: datetime, old: str, new: str, zone: str = "UTC") -> dict:
    return {
        "id": str(change_id),
        "author": {"accountId": "5b10a2844c20165700ede21g", "displayName": "Mia"},
        "created": jira_time(at, zone),
        "items": [
            {
                "field": "status",
                "fieldId": "status",
                "fieldtype": "jira",
                "from": "1",
                "fromString": old,
                "to": "3",
                "toString": new,
            }
        ],
    }


def ticket(key: str, issue_id: int, updated: datetime) -> dict:
    return {
        "key": key,
        "issue_id": str(issue_id),
        "summary": f"Summary of {key}",
        "status": "Done",
        "assignee_email": None,
        "progress": None,
        "updated_at": updated.isoformat(),
    }


@pytest.fixture
def history_store(store):
    conn, dialect = store
    ensure_history_tables(conn, dialect)
    return conn, dialect


# The hand-checked fixture: To Do (until +1h) -> In Progress for 2h30m -> In Review for 45m 30.250s
# -> In Progress for 1 day -> Done (current).
FIXTURE = [
    (20001, T0 + timedelta(hours=1), "To Do", "In Progress"),
    (20002, T0 + timedelta(hours=3, minutes=30), "In Progress", "In Review"),
    (20003, T0 + timedelta(hours=4, minutes=15, seconds=30, milliseconds=250), "In Review", "In Progress"),
    (20004, T0 + timedelta(days=1, hours=4, minutes=15, seconds=30, milliseconds=250), "In Progress", "Done"),
]
EXPECTED = [
    (0, "To Do", None, T0 + timedelta(hours=1), None),
    (1, "In Progress", T0 + timedelta(hours=1), T0 + timedelta(hours=3, minutes=30), 9000.0),
    (2, "In Review", FIXTURE[1][1], FIXTURE[2][1], 2730.25),
    (3, "In Progress", FIXTURE[2][1], FIXTURE[3][1], 86400.0),
    (4, "Done", FIXTURE[3][1], None, None),
]


@pytest.mark.parametrize("zone", ["UTC", "Australia/Sydney"])
def test_the_status_view_gives_hand_checked_durations_in_any_account_time_zone(history_store, zone):
    conn, dialect = history_store
    # Given in a shuffled order: the view orders by time, not by insertion.
    histories = [status_change(cid, at, old, new, zone) for cid, at, old, new in reversed(FIXTURE)]
    store_history(conn, dialect, changes_of("10001", histories), synced={}, fields=FIELDS)

    rows = status_intervals(conn, dialect)

    got = [(r["stay"], r["status"], r["entered_at"], r["left_at"], r["duration_seconds"]) for r in rows]
    assert got == EXPECTED


def test_the_view_is_plain_sql_a_user_can_query(history_store):
    conn, dialect = history_store
    histories = [status_change(cid, at, old, new) for cid, at, old, new in FIXTURE]
    store_history(conn, dialect, changes_of("10001", histories), synced={}, fields=FIELDS)
    cursor = conn.cursor()
    cursor.execute(
        f"SELECT status, SUM(duration_seconds) FROM {STATUS_INTERVAL_VIEW} "
        "WHERE duration_seconds IS NOT NULL GROUP BY status ORDER BY status"
    )
    assert [(s, float(d)) for s, d in cursor.fetchall()] == [("In Progress", 95400.0), ("In Review", 2730.25)]
    conn.commit()


def test_storing_the_same_history_twice_adds_nothing_the_second_time(history_store):
    conn, dialect = history_store
    histories = [status_change(cid, at, old, new) for cid, at, old, new in FIXTURE]

    first = store_history(conn, dialect, changes_of("10001", histories), synced={}, fields=FIELDS)
    second = store_history(conn, dialect, changes_of("10001", histories), synced={}, fields=FIELDS)

    assert (first.inserted, first.issues_with_new) == (4, (10001,))
    assert (second.inserted, second.issues_with_new) == (0, ())
    assert count_changes(conn, dialect) == 4


def test_a_history_with_several_items_gives_one_row_per_field(history_store):
    conn, dialect = history_store
    history = status_change(30001, T0, "To Do", "Done")
    history["items"].append(
        {"field": "assignee", "fieldId": "assignee", "from": None, "to": "abc", "toString": "Ann"}
    )
    written = store_history(conn, dialect, changes_of(10002, [history]), synced={}, fields=FIELDS)
    assert written.inserted == 2
    cursor = conn.cursor()
    cursor.execute(f"SELECT field_id, from_string, to_string, author_account_id FROM {TICKET_CHANGE_TABLE}")
    assert sorted(cursor.fetchall()) == [
        ("assignee", None, "Ann", "5b10a2844c20165700ede21g"),
        ("status", "To Do", "Done", "5b10a2844c20165700ede21g"),
    ]
    conn.commit()


def test_an_issue_is_asked_again_only_when_its_ticket_is_newer_than_its_stored_history(history_store):
    conn, dialect = history_store
    upsert_tickets(
        conn,
        dialect,
        [ticket("ABC-1", 10001, T0), ticket("ABC-2", 10002, T0)],
        source="sweep",
        fetched_at=T0,
    )
    assert list(issues_needing_history(conn, dialect, [10001, 10002], FIELDS)) == [10001, 10002]

    store_history(conn, dialect, [], synced={10001: T0, 10002: T0}, fields=FIELDS)
    assert issues_needing_history(conn, dialect, [10001, 10002], FIELDS) == {}
    # Other fields: the stored history does not cover them, so both are asked again.
    assert list(issues_needing_history(conn, dialect, None, ("status", "labels"))) == [10001, 10002]

    upsert_tickets(
        conn, dialect, [ticket("ABC-2", 10002, T0 + timedelta(minutes=1))], source="inbox", fetched_at=T0
    )
    assert issues_needing_history(conn, dialect, None, FIELDS) == {10002: T0 + timedelta(minutes=1)}
    # A cursor never moves back: a late write of an older read leaves ABC-1 up to date.
    store_history(conn, dialect, [], synced={10001: T0 - timedelta(days=1)}, fields=FIELDS)
    assert 10001 not in issues_needing_history(conn, dialect, None, FIELDS)


def test_ensure_is_idempotent_and_creates_the_view(store):
    conn, dialect = store
    ensure_history_tables(conn, dialect)
    ensure_history_tables(conn, dialect)
    assert status_intervals(conn, dialect) == []


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-11-02T20:00:00.123+1100", datetime(2026, 11, 2, 9, 0, 0, 123000, tzinfo=UTC)),
        (1492070429, datetime(2017, 4, 13, 8, 0, 29, tzinfo=UTC)),  # the OpenAPI example's form
        (1492070429000, datetime(2017, 4, 13, 8, 0, 29, tzinfo=UTC)),
    ],
)
def test_change_times_are_read_as_utc(raw, expected):
    assert parse_change_time(raw) == expected


@pytest.mark.parametrize(
    ("issue_id", "history", "message"),
    [
        ("ABC-1", {"id": "1", "created": "2026-11-02T20:00:00.000+0000"}, "issueId"),
        ("1", {"id": "x", "created": "2026-11-02T20:00:00.000+0000"}, "changelog id"),
        ("1", {"id": "2", "created": "2026-11-02T20:00:00"}, "offset"),
        ("1", {"id": "2", "created": "2026-11-02T20:00:00Z", "items": [{"from": "a"}]}, "names no field"),
    ],
)
def test_malformed_changelogs_are_refused_with_a_clear_error(issue_id, history, message):
    with pytest.raises(ValueError, match=message):
        changes_of(issue_id, [history])


def test_the_median_time_in_status_counts_finished_stays_only(history_store):
    conn, dialect = history_store
    histories = [status_change(cid, at, old, new) for cid, at, old, new in FIXTURE]
    store_history(conn, dialect, changes_of("10001", histories), synced={}, fields=FIELDS)
    second = [
        status_change(cid + 100, at + timedelta(hours=1), old, new) for cid, at, old, new in FIXTURE[:2]
    ]
    store_history(conn, dialect, changes_of("10002", second), synced={}, fields=FIELDS)

    medians = median_seconds_by_status(status_intervals(conn, dialect))

    # In Progress: 9000 and 86400 (10001) and 9000 (10002); In Review only for 10001 (10002's is current).
    assert medians == {"In Progress": 9000.0, "In Review": 2730.25}


CATALOGUE = [
    {"id": "status", "name": "Status"},
    {"id": "assignee", "name": "Assignee"},
    {"id": "customfield_10020", "name": "Sprint"},
    {"id": "customfield_10030", "name": "Team"},
    {"id": "customfield_10031", "name": "Team"},
]


def test_history_fields_are_checked_against_jira_and_sprint_is_found_by_its_name():
    assert resolve_history_fields(("status", "sprint", "assignee"), CATALOGUE) == (
        "status",
        "customfield_10020",
        "assignee",
    )
    with pytest.raises(ValueError, match="Jira has no field priority, team"):
        resolve_history_fields(("status", "priority", "team"), CATALOGUE)  # team: two fields of that name


def test_the_history_fields_setting_allows_at_most_ten_field_ids():
    assert parse_history_fields(" status, assignee ,status ") == ("status", "assignee")
    assert parse_history_fields("") == ()
    with pytest.raises(ValueError, match="at most 10"):
        parse_history_fields(",".join(f"field{n}" for n in range(11)))
    with pytest.raises(ValueError, match="not a Jira field id"):
        parse_history_fields("status, fix-version")
