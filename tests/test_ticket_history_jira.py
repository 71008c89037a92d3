"""POST /rest/api/3/changelog/bulkfetch: the stand-in checked against Jira's OpenAPI schemas; the client."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import tests.test_jira_standin as standin_tests
from include.jira_cloud import JiraCloudClient
from include.ticket_history import changes_of, count_changes, ensure_history_tables, store_history
from tests.test_jira_standin import Api, assert_schema

# The spec sits beside the repository (../shared); a git worktree elsewhere reads the shared copy.
if not standin_tests.SPEC_PATH.exists():
    standin_tests.SPEC_PATH = Path("/work/shared/reference/jira-openapi/swagger-v3.v3.json")

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
BULK = "/rest/api/3/changelog/bulkfetch"
CYCLE = ("In Progress", "In Review", "To Do")


@pytest.fixture
def api(jira_standin):
    return Api(jira_standin)


@pytest.fixture
def client(jira_standin):
    with JiraCloudClient(jira_standin.url, jira_standin.email, jira_standin.api_token) as jira_client:
        yield jira_client


def spec_shaped(answer: dict) -> dict:
    """The answer with each history's `created` as RFC 3339, for the schema check only.

    Jira renders changelog times as 2026-11-02T09:00:30.000+0000 (as it renders `updated`), which the
    spec's "date-time" format does not accept without the colon in the offset; the client reads both.
    """
    logs = answer.get("issueChangeLogs")
    histories = answer["values"] if logs is None else [h for log in logs for h in log["changeHistories"]]
    for history in histories:
        created = history["created"]
        history["created"] = f"{created[:-2]}:{created[-2:]}"
    return answer


def with_status_changes(standin, key: str, count: int, start: datetime = T0) -> int:
    """An issue created at `start` that then changes status `count` times, a minute apart; its id."""
    issue_id = int(standin.add_issue(key, summary=f"{key} moves a lot", updated=start)["id"])
    for n in range(count):
        standin.update_issue(key, status=CYCLE[n % 3], updated=start + timedelta(minutes=n + 1))
    return issue_id


def test_an_issue_with_250_status_changes_gets_all_of_them_over_several_pages(jira_standin, client, store):
    issue_id = with_status_changes(jira_standin, "ABC-1", 250)
    jira_standin.clear_requests()

    result = client.changelog_bulkfetch([str(issue_id)], ["status"], max_results=100)

    histories = result.histories[str(issue_id)]
    assert (len(histories), result.pages, result.requests) == (250, 3, 3)
    assert jira_standin.request_count(BULK, "POST") == 3
    assert [h["items"][0]["toString"] for h in histories[:4]] == [*CYCLE, "In Progress"]
    ids = [int(h["id"]) for h in histories]
    assert ids == sorted(ids) and len(set(ids)) == 250  # oldest first, growing ids
    conn, dialect = store
    ensure_history_tables(conn, dialect)
    store_history(conn, dialect, changes_of(issue_id, histories), synced={}, fields=["status"])
    assert count_changes(conn, dialect, issue_id) == 250


def test_the_bulk_answer_has_the_spec_shape_and_pages_oldest_first_by_time_then_issue(jira_standin, api):
    first = with_status_changes(jira_standin, "ABC-1", 2, start=T0)
    second = with_status_changes(jira_standin, "ABC-2", 2, start=T0 - timedelta(seconds=30))
    jira_standin.update_issue("ABC-1", summary="renamed", updated=T0 + timedelta(hours=1))

    pages, token = [], None
    while True:
        body = {"issueIdsOrKeys": ["ABC-1", "ABC-2"], "fieldIds": ["status"], "maxResults": 1}
        if token:
            body["nextPageToken"] = token
        response = api.post(BULK, body)
        assert response.status_code == 200, response.text
        assert_schema("BulkChangelogResponseBean", spec_shaped(response.json()))
        pages.append(response.json())
        token = response.json().get("nextPageToken")
        if not token:
            break

    order = [
        (log["issueId"], h["created"])
        for page in pages
        for log in page["issueChangeLogs"]
        for h in log["changeHistories"]
    ]
    # ABC-2's changes are 30 s older than ABC-1's; the summary change is filtered out by fieldIds.
    assert [issue for issue, _ in order] == [str(second), str(first), str(second), str(first)]
    assert len(pages) == 4


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"issueIdsOrKeys": []}, "At least one issue"),
        ({"fieldIds": ["status"]}, "issueIdsOrKeys"),
        ({"issueIdsOrKeys": [str(n) for n in range(10000, 11001)]}, "exceeds the maximum of 1000"),
        ({"issueIdsOrKeys": ["ABC-1"], "fieldIds": [f"f{n}" for n in range(11)]}, "maximum of 10"),
        ({"issueIdsOrKeys": ["ABC-1"], "fieldIds": ["status", "status"]}, "duplicates"),
        ({"issueIdsOrKeys": ["ABC-1"], "maxResults": 0}, "maxResults"),
        ({"issueIdsOrKeys": ["ABC-1"], "maxResults": 10001}, "maxResults"),
        ({"issueIdsOrKeys": ["ABC-1"], "nextPageToken": "forged"}, "nextPageToken"),
        ({"issueIdsOrKeys": ["ABC-1"], "expand": "changelog"}, "Unrecognized field"),
    ],
)
def test_bad_bulk_requests_get_400_with_a_message(jira_standin, api, body, message):
    jira_standin.add_issue("ABC-1", summary="s", updated=T0)
    response = api.post(BULK, body)
    assert response.status_code == 400
    assert message in response.json()["errorMessages"][0]


def test_a_moved_issue_keeps_one_history_under_its_id_with_the_move_in_it(jira_standin, client):
    issue_id = with_status_changes(jira_standin, "ABC-1", 3)
    jira_standin.move_issue("ABC-1", "XYZ-9")
    jira_standin.update_issue("XYZ-9", status="Done")

    by_old_key = client.changelog_bulkfetch(["ABC-1"]).histories
    by_id = client.changelog_bulkfetch([str(issue_id)]).histories

    assert by_old_key == by_id and list(by_id) == [str(issue_id)]
    fields = [item["fieldId"] for h in by_id[str(issue_id)] for item in h["items"]]
    assert fields == ["status", "status", "status", "project", "key", "status"]


def test_unknown_and_hidden_issues_are_left_out(jira_standin, client):
    visible = with_status_changes(jira_standin, "ABC-1", 1)
    with_status_changes(jira_standin, "ABC-2", 1)
    jira_standin.set_hidden("ABC-2")
    assert list(client.changelog_bulkfetch(["ABC-1", "ABC-2", "ABC-77"]).histories) == [str(visible)]


def test_the_per_issue_changelog_pages_with_start_at_in_the_spec_shape(jira_standin, api):
    with_status_changes(jira_standin, "ABC-1", 150)
    first = api.get("/rest/api/3/issue/ABC-1/changelog")
    second = api.get("/rest/api/3/issue/ABC-1/changelog", startAt=100)
    assert first.status_code == second.status_code == 200
    for page in (first.json(), second.json()):
        assert_schema("PageBeanChangelog", spec_shaped(page))
    assert (len(first.json()["values"]), first.json()["isLast"], first.json()["total"]) == (100, False, 150)
    assert (len(second.json()["values"]), second.json()["isLast"]) == (50, True)
    assert api.get("/rest/api/3/issue/ABC-404/changelog").status_code == 404


def test_the_client_refuses_requests_jira_would_refuse_without_sending_them(jira_standin, client):
    with pytest.raises(ValueError, match="1 to 1000"):
        client.changelog_bulkfetch([str(n) for n in range(1001)])
    with pytest.raises(ValueError, match="at most 10"):
        client.changelog_bulkfetch(["ABC-1"], [f"f{n}" for n in range(11)])
    assert jira_standin.request_count(BULK) == 0


def test_a_moved_issue_keeps_one_stored_history_and_a_reread_adds_only_the_new_changes(
    jira_standin, client, store
):
    from include.history_sync import fetch_and_store_history, plan_history_chunks
    from include.jira_cloud import ticket_details
    from include.ticket_store import upsert_tickets

    conn, dialect = store
    fields = ("status", "project", "key")
    issue_id = with_status_changes(jira_standin, "ABC-1", 3)
    upsert_tickets(
        conn, dialect, [ticket_details(jira_standin.issue("ABC-1"))], source="sweep", fetched_at=T0
    )
    (chunk,) = plan_history_chunks(conn, dialect, [issue_id], fields)
    first = fetch_and_store_history(client, conn, dialect, chunk, fields=fields, field_ids=fields)
    assert plan_history_chunks(conn, dialect, [issue_id], fields) == []  # up to date: nothing to ask

    jira_standin.move_issue("ABC-1", "XYZ-9")
    moved = ticket_details(jira_standin.issue("XYZ-9")) | {"moved_from": ["ABC-1"]}
    upsert_tickets(conn, dialect, [moved], source="sweep", fetched_at=T0 + timedelta(days=1))
    (chunk,) = plan_history_chunks(conn, dialect, [issue_id], fields)
    again = fetch_and_store_history(client, conn, dialect, chunk, fields=fields, field_ids=fields)

    assert (first["inserted"], again["inserted"]) == (3, 2)  # the move: project and key
    assert again["keys_with_new"] == ["XYZ-9"] and again["issues_with_new"] == [str(issue_id)]
    assert count_changes(conn, dialect, issue_id) == 5


def test_an_edit_through_the_admin_api_the_demo_uses_appends_a_history(jira_standin, api):
    jira_standin.add_issue("ABC-1", summary="s", updated=T0)
    admin = api.session.post(
        f"{jira_standin.url}/_standin/issues",
        json={
            "key": "ABC-1",
            "summary": "s",
            "status": "Done",
            "updated": (T0 + timedelta(hours=1)).isoformat(),
        },
        timeout=10,
    )
    assert admin.status_code == 200, admin.text

    answer = api.post(BULK, {"issueIdsOrKeys": ["ABC-1"]}).json()

    (log,) = answer["issueChangeLogs"]
    (history,) = log["changeHistories"]
    assert [(i["fieldId"], i["fromString"], i["toString"]) for i in history["items"]] == [
        ("status", "To Do", "Done")
    ]
    assert history["created"] == "2026-11-02T10:00:00.000+0000"
