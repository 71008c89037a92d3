"""include/census.py: the comparison, the guard, and a whole census against the stand-in and a real store."""

from __future__ import annotations

from array import array
from datetime import UTC, datetime

import pytest

from include.census import (
    MassChangeRefused,
    compare,
    guard,
    last_runs,
    record_runs,
    run_census,
    stored_projects,
)
from include.jira_cloud import JiraCloudClient
from include.ticket_store import get_ticket
from tests import census_scenario
from tests.harness.jira_standin import STANDIN_EMAIL


def client_for(jira) -> JiraCloudClient:
    return JiraCloudClient(jira.url, STANDIN_EMAIL, jira.api_token, max_retry_wait=1)


def test_compare_marks_listed_ids_once_and_collects_the_unstored():
    stored = array("q", [3, 5, 9, 12])
    listing = [(5, "A-5"), (9, "A-9"), (5, "A-5"), (7, "A-7"), (7, "A-7")]  # pages overlap
    result = compare("A", stored, listing)
    assert list(result.unlisted()) == [3, 12]
    assert list(result.confirmed()) == [5, 9]
    assert result.unstored == {7: "A-7"}
    assert result.listed == 3


def test_compare_refuses_unsorted_stored_ids():
    with pytest.raises(ValueError, match="strictly ascending"):
        compare("A", array("q", [5, 3]), [])


def test_the_guard_names_each_project_over_the_fraction_and_ignores_moves_within():
    a = compare("A", array("q", range(1, 101)), [(i, f"A-{i}") for i in range(1, 95)])  # 6 missing
    b = compare("B", array("q", range(101, 201)), [(i, f"B-{i}") for i in range(101, 196)])  # 5 missing
    assert guard([a, b], set(), 0.05) == ["A: 6 of 100 stored tickets (6.0%) are missing from Jira's listing"]
    assert guard([a, b], {95}, 0.05) == []  # one of A's moved to another synced project
    assert guard([a, b], set(), 0.06) == []


def test_one_census_gets_every_row_right_and_a_second_changes_nothing(jira_standin, store_backend):
    conn = store_backend.connect()
    scenario = census_scenario.build(jira_standin, conn, store_backend.dialect, 600)
    client = client_for(jira_standin)
    projects = stored_projects(conn, store_backend.dialect)
    assert projects == list(census_scenario.PROJECTS)

    first = run_census(client, conn, store_backend.dialect, projects)

    census_scenario.check_rows(scenario, census_scenario.store_rows(conn))
    assert not first.failed
    counts = first.counts
    # The 4 lost tickets, and the one that moved between synced projects (its row renamed).
    assert sum(c["healed"] for c in counts.values()) == 5
    assert sum(c["deleted_or_hidden"] for c in counts.values()) == 8
    assert sum(c["archived"] for c in counts.values()) == 3
    assert sum(c["moved_out"] for c in counts.values()) == 2
    moved = get_ticket(conn, store_backend.dialect, "OUT-1")
    assert moved["previous_keys"] == [next(iter(scenario.moved_out))]
    archived = get_ticket(conn, store_backend.dialect, scenario.archived[0])
    assert archived["archived_at"] == datetime(2026, 11, 4, 9, 0, tzinfo=UTC)  # the archiveddate Jira gave

    rows = census_scenario.store_rows(conn)
    second = run_census(client_for(jira_standin), conn, store_backend.dialect, projects)
    assert second.changed_count == 0 and not second.failed
    again = census_scenario.store_rows(conn)
    # Only census_at moves: the rows are confirmed again.
    assert {k: v[:3] + v[4:] for k, v in again.items()} == {k: v[:3] + v[4:] for k, v in rows.items()}
    assert all(c["healed"] == 0 and c["deleted_or_hidden"] == 0 for c in second.counts.values())
    conn.close()


def test_lost_access_to_a_project_is_refused_then_marked_when_confirmed(jira_standin, store_backend):
    conn = store_backend.connect()
    census_scenario.build(jira_standin, conn, store_backend.dialect, 90, changes=False)
    jira_standin.deny_project("BET")  # 403 on GET, out of search and bulk fetch
    before = census_scenario.store_rows(conn)

    with pytest.raises(MassChangeRefused, match=r"BET: 30 of 30 stored tickets \(100.0%\)") as refused:
        run_census(client_for(jira_standin), conn, store_backend.dialect, list(census_scenario.PROJECTS))
    assert "confirm_mass_change" in str(refused.value)
    assert census_scenario.store_rows(conn) == before  # nothing written, not even census_at

    confirmed = run_census(
        client_for(jira_standin),
        conn,
        store_backend.dialect,
        list(census_scenario.PROJECTS),
        confirm_mass_change=True,
    )
    rows = census_scenario.store_rows(conn)
    bet = {k: v for k, v in rows.items() if k.startswith("BET-")}
    assert bet and all(v[0] == "not_visible" and v[1] is not None for v in bet.values())
    assert confirmed.counts["BET"]["not_visible"] == len(bet)
    conn.close()


def test_a_ticket_fetched_after_the_census_comes_back_alive(jira_standin, store_backend):
    conn = store_backend.connect()
    scenario = census_scenario.build(jira_standin, conn, store_backend.dialect, 600)
    run_census(client_for(jira_standin), conn, store_backend.dialect, list(census_scenario.PROJECTS))
    key = scenario.archived[0]
    assert get_ticket(conn, store_backend.dialect, key)["gone_reason"] == "archived"
    jira_standin.unarchive_issue(key)

    run_census(client_for(jira_standin), conn, store_backend.dialect, list(census_scenario.PROJECTS))

    row = get_ticket(conn, store_backend.dialect, key)
    assert row["gone_reason"] is None and row["archived_at"] is None
    conn.close()


def test_the_last_census_per_project_is_kept(store_backend):
    conn = store_backend.connect()
    at = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
    counts = {"ABC": {"listed": 10, "stored": 9, "healed": 1, "archived": 2}}
    record_runs(conn, store_backend.dialect, counts, at=at, run_id="r1")
    record_runs(conn, store_backend.dialect, {"ABC": {"listed": 11, "stored": 11}}, at=at, run_id="r2")
    (row,) = last_runs(conn, store_backend.dialect)
    assert row["project"] == "ABC" and row["run_id"] == "r2" and row["listed"] == 11 and row["archived"] == 0
    assert row["census_at"] == at
    conn.close()


def test_a_version_2_store_gets_the_census_columns_in_place_with_its_rows(store_backend):
    from include.store_db import table_columns
    from include.ticket_store import _V1_DDL, CENSUS_COLUMNS, ensure_table, upgrade_statements

    conn = store_backend.connect()
    dialect = store_backend.dialect
    cursor = conn.cursor()
    for statement in (_V1_DDL[dialect], *upgrade_statements(dialect)):
        cursor.execute(statement)
    mark = "?" if dialect == "sqlite" else "%s"
    cursor.execute(
        f"INSERT INTO jira_ticket (key, issue_id, summary, status, updated_at, fetched_at, source) "
        f"VALUES ({', '.join([mark] * 7)})",
        ("ABC-1", 10001, "kept", "Done", "2026-11-27T10:00:00+00:00", "2026-11-27T10:00:00+00:00", "sweep"),
    )
    conn.commit()
    assert not set(CENSUS_COLUMNS[dialect]) & table_columns(conn, dialect, "jira_ticket")

    ensure_table(conn, dialect)

    assert set(CENSUS_COLUMNS[dialect]) <= table_columns(conn, dialect, "jira_ticket")
    row = get_ticket(conn, dialect, "ABC-1")
    assert row["summary"] == "kept" and row["gone_reason"] is None and row["census_at"] is None
    conn.close()


def test_the_stand_in_archives_and_denies_as_jira_does(jira_standin):
    import requests

    jira_standin.add_issue("ABC-1", summary="archived")
    jira_standin.add_issue("ABC-2", summary="alive")
    jira_standin.add_issue("DEN-1", summary="in a project the account lost")
    jira_standin.archive_issue("ABC-1", at=datetime(2026, 11, 4, 9, 0, tzinfo=UTC))
    jira_standin.deny_project("DEN")
    client = client_for(jira_standin)

    listed = list(client.search_ids('project in ("ABC", "DEN")'))
    assert [key for _, key in listed] == ["ABC-2"]
    found = client.bulk_fetch_ids([10000, 10001, 10002], ["summary", "archiveddate"])
    assert [issue["key"] for issue in found] == ["ABC-2"]
    archived = client.get_issue("ABC-1", ["summary", "archiveddate", "archivedby"])
    assert archived["fields"]["archiveddate"] == "2026-11-04T09:00:00.000+0000"
    assert archived["fields"]["archivedby"]["emailAddress"] == STANDIN_EMAIL
    assert "archiveddate" not in client.get_issue("ABC-2", ["summary", "archiveddate"])["fields"]
    answer = requests.get(
        f"{jira_standin.url}/rest/api/3/issue/DEN-1", auth=(STANDIN_EMAIL, jira_standin.api_token), timeout=5
    )
    assert answer.status_code == 403
    assert answer.json() == {
        "errorMessages": ["You do not have the permission to see the specified issue."],
        "errors": {},
    }


def test_a_live_ticket_the_search_has_not_indexed_yet_is_left_alone(jira_standin):
    from include.census import classify

    jira_standin.add_issue("ABC-1", summary="created a moment ago")
    jira_standin.add_issue("ABC-2", summary="archived")
    jira_standin.archive_issue("ABC-2")
    client = client_for(jira_standin)
    at = datetime(2026, 12, 7, tzinfo=UTC)

    findings, failed, not_yet_listed = classify(client, {10000: "ABC-1", 10001: "ABC-2"}, {"ABC"}, at=at)

    assert not_yet_listed == ["ABC-1"] and not failed
    assert [(f.stored_key, f.reason) for f in findings] == [("ABC-2", "archived")]


def test_ids_are_bulk_fetched_100_at_a_time_from_a_site_still_on_the_old_limit(jira_standin):
    for n in range(1, 251):
        jira_standin.add_issue(f"ABC-{n}", summary=f"t{n}")
    jira_standin.large_bulk_fetch = False
    client = client_for(jira_standin)

    issues = client.bulk_fetch_ids(range(10000, 10250), ["summary"])

    assert len(issues) == 250
    # One request of 250 refused with 400, then 100, 100 and 50.
    assert jira_standin.request_count("/rest/api/3/issue/bulkfetch") == 4
    assert [(len(keys), status) for keys, status in jira_standin.bulk_fetch_requests()] == [
        (100, 200),
        (100, 200),
        (50, 200),
    ]
