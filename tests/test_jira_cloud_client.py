"""JiraCloudClient against the Jira stand-in: chunked bulk fetch, paging, bounded retries, no secrets."""

from __future__ import annotations

import base64
import logging
import socket
import time
import traceback
from datetime import UTC, datetime, timedelta

import pytest
import requests
from atlassian import Jira

from include.jira_cloud import (
    TICKET_FIELDS,
    JiraCloudClient,
    JiraError,
    JiraNotFound,
    JiraRequestError,
    JiraUnavailable,
    ticket_details,
)

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


@pytest.fixture
def client(jira_standin):
    jira_client = JiraCloudClient(
        jira_standin.url,
        jira_standin.email,
        jira_standin.api_token,
        timeout=5,
        max_retries=3,
        max_retry_wait=10,
    )
    yield jira_client
    jira_client.close()


def make_client(jira_standin, **options) -> JiraCloudClient:
    return JiraCloudClient(jira_standin.url, jira_standin.email, jira_standin.api_token, **options)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_requests(jira_standin, count: int, timeout: float = 5.0) -> None:
    """Let requests the client gave up on finish server-side, so they do not land in the next test's log."""
    deadline = time.monotonic() + timeout
    while jira_standin.request_count() < count and time.monotonic() < deadline:
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------ reading


def test_bulk_fetch_of_2500_keys_takes_3_requests_and_reports_the_missing(jira_standin, client):
    present = [f"ABC-{n}" for n in range(1, 2491)]
    missing = [f"ABC-{n}" for n in range(2491, 2501)]
    for key in present:
        jira_standin.add_issue(key, summary=f"Ticket {key}", updated=T0)

    result = client.bulk_fetch(present + missing)

    assert jira_standin.request_count("/rest/api/3/issue/bulkfetch") == 3
    assert client.request_count == result.requests == 3
    assert sorted(issue["key"] for issue in result.issues) == sorted(present)
    assert result.not_found == missing
    assert set(result.issues[0]["fields"]) == set(TICKET_FIELDS)


@pytest.mark.parametrize(
    ("fields", "per_request", "requests"),
    [
        (TICKET_FIELDS, None, 1),
        (TICKET_FIELDS, 100, 3),
        ((*TICKET_FIELDS, "comment"), None, 3),  # a multi-valued field: 100 per request
        (("*navigable",), None, 3),  # not explicit
    ],
)
def test_bulk_fetch_size_follows_jiras_rule(jira_standin, client, fields, per_request, requests):
    keys = [f"ABC-{n}" for n in range(1, 251)]
    for key in keys:
        jira_standin.add_issue(key, summary="s", updated=T0)

    result = client.bulk_fetch(keys, fields, per_request=per_request)

    assert len(result.issues) == 250 and result.not_found == []
    assert jira_standin.request_count("/rest/api/3/issue/bulkfetch") == requests


def test_a_site_refusing_1000_gets_100_once_refused_and_for_the_rest_of_the_process(
    jira_standin, client, caplog
):
    jira_standin.large_bulk_fetch = False
    keys = [f"ABC-{n}" for n in range(1, 1201)]
    for key in keys:
        jira_standin.add_issue(key, summary="s", updated=T0)

    with caplog.at_level(logging.WARNING, logger="include.jira_cloud"):
        first = client.bulk_fetch(keys)
    second = make_client(jira_standin).bulk_fetch(keys[:300])

    statuses = [(entry.status, entry.path) for entry in jira_standin.requests]
    # 1000 refused once, then 12 requests of 100 for the 1200; the next client asks 100 at once.
    assert statuses.count((400, "/rest/api/3/issue/bulkfetch")) == 1
    assert statuses.count((200, "/rest/api/3/issue/bulkfetch")) == 12 + 3
    assert (first.requests, second.requests) == (13, 3)
    assert len(first.issues) == 1200 and first.not_found == []
    assert "refused a bulk fetch of 1000 issues" in caplog.text


def test_a_400_to_a_request_of_100_is_raised_not_retried_smaller(jira_standin, client):
    jira_standin.add_issue("ABC-1", summary="s", updated=T0)
    jira_standin.inject_fault(400, path_prefix="/rest/api/3/issue/bulkfetch")

    with pytest.raises(JiraRequestError) as caught:
        client.bulk_fetch(["ABC-1"])
    assert caught.value.status == 400
    assert jira_standin.request_count() == 1


def test_look_up_missing_tells_gone_from_moved_and_never_counts_a_transport_error_as_gone(
    jira_standin, client
):
    jira_standin.add_issue("ABC-1", summary="s", updated=T0)
    jira_standin.move_issue("ABC-1", "XYZ-9")

    missing = client.look_up_missing(["ABC-1", "ABC-2"])

    assert missing.gone == ["ABC-2"]
    assert {old: issue["key"] for old, issue in missing.moved.items()} == {"ABC-1": "XYZ-9"}
    jira_standin.inject_fault(503, count=10, path_prefix="/rest/api/3/issue/ABC-2")
    with pytest.raises(JiraUnavailable):
        make_client(jira_standin, max_retries=1, max_retry_wait=1).look_up_missing(["ABC-2"])


def test_fields_catalogue_lists_custom_fields(jira_standin, client):
    jira_standin.add_custom_field("customfield_10016", "Story Points")

    ids = {field["id"] for field in client.fields_catalogue()}

    assert {"summary", "customfield_10016"} <= ids


def test_bulk_fetch_dedupes_case_insensitively_and_never_sends_malformed_keys(jira_standin, client):
    jira_standin.add_issue("ABC-1", summary="s", updated=T0)

    result = client.bulk_fetch(["abc-1", "ABC-1", " ABC-1 ", "ABC-2", "not a key", "../myself"])

    assert [issue["key"] for issue in result.issues] == ["ABC-1"]
    assert result.not_found == ["ABC-2", "NOT A KEY", "../MYSELF"]
    assert jira_standin.request_count() == 1


def test_bulk_fetch_of_nothing_sends_nothing(jira_standin, client):
    result = client.bulk_fetch([])

    assert result.issues == [] and result.not_found == []
    assert jira_standin.request_count() == 0


def test_search_keys_follows_next_page_token_until_is_last(jira_standin, client):
    expected = [f"BIG-{n}" for n in range(1, 12_001)]
    for n, key in enumerate(expected):
        jira_standin.add_issue(key, summary="s", updated=T0 + timedelta(milliseconds=n))

    keys = list(client.search_keys("project = BIG ORDER BY updated ASC, key ASC", page_size=5000))

    assert keys == expected
    assert jira_standin.request_count("/rest/api/3/search/jql") == 3
    queries = [entry.query for entry in jira_standin.requests]
    assert "nextPageToken" not in queries[0] and all("nextPageToken" in q for q in queries[1:])
    assert all("fields=key" in q and "maxResults=5000" in q for q in queries)


def test_search_keys_stops_at_the_page_limit(jira_standin, client):
    for n in range(1, 6):
        jira_standin.add_issue(f"ABC-{n}", summary="s", updated=T0)

    with pytest.raises(JiraError, match="2 pages"):
        list(client.search_keys("project = ABC", page_size=1, max_pages=2))
    assert jira_standin.request_count() == 2


def test_bad_jql_raises_a_request_error_with_jiras_message_and_is_not_retried(jira_standin, client):
    jira_standin.add_issue("ABC-1", summary="s", updated=T0)

    with pytest.raises(JiraRequestError) as caught:
        list(client.search_keys("project = ABC AND bogus_field = 1"))

    assert caught.value.status == 400
    assert any("bogus_field" in message for message in caught.value.error_messages)
    assert "bogus_field" in str(caught.value)
    assert jira_standin.request_count() == 1


def test_get_issue_returns_the_ticket_fields_and_raises_not_found(jira_standin, client):
    jira_standin.add_issue("ABC-1", summary="Hello", status="Done", updated=T0)

    issue = client.get_issue("abc-1")

    assert issue["key"] == "ABC-1" and set(issue["fields"]) == set(TICKET_FIELDS)
    assert issue["fields"]["status"]["name"] == "Done"
    with pytest.raises(JiraNotFound) as caught:
        client.get_issue("ABC-2")
    assert caught.value.key == "ABC-2"
    assert jira_standin.request_count("/rest/api/3/issue/") == 2


def test_account_time_zone_comes_from_myself_once_per_client(jira_standin, client):
    jira_standin.set_time_zone("Asia/Kathmandu")

    assert client.account_time_zone() == "Asia/Kathmandu"
    assert client.account_time_zone() == "Asia/Kathmandu"
    assert client.myself()["emailAddress"] == jira_standin.email
    assert jira_standin.request_count("/rest/api/3/myself") == 2


def test_the_legacy_client_the_provider_builds_cannot_search_jira_cloud(jira_standin):
    # The provider's JiraHook hands out this client; its jql() uses the search API Jira Cloud removed.
    legacy = Jira(url=jira_standin.url, username=jira_standin.email, password=jira_standin.api_token)

    with pytest.raises(requests.HTTPError, match="has been removed"):
        legacy.jql("project = ABC")
    assert jira_standin.requests[-1].path == "/rest/api/2/search"
    legacy.close()


# ------------------------------------------------------------------------------------------ retries


def test_retry_after_is_honoured_before_retrying_a_429(jira_standin, client):
    jira_standin.add_issue("ABC-1", summary="s", updated=T0)
    jira_standin.inject_fault(429, count=1, retry_after=1, path_prefix="/rest/api/3/issue/bulkfetch")

    started = time.monotonic()
    result = client.bulk_fetch(["ABC-1"])

    assert time.monotonic() - started >= 1.0
    assert [issue["key"] for issue in result.issues] == ["ABC-1"]
    assert [entry.status for entry in jira_standin.requests] == [429, 200]
    assert client.request_count == 2


def test_a_503_with_retry_after_is_retried_after_that_wait(jira_standin, client):
    jira_standin.inject_fault(503, count=1, retry_after=1)

    started = time.monotonic()
    zone = client.account_time_zone()

    assert zone == "UTC" and time.monotonic() - started >= 1.0
    assert [entry.status for entry in jira_standin.requests] == [503, 200]


def test_429_past_max_retries_raises_unavailable(jira_standin):
    jira_standin.inject_fault(429, count=10, retry_after=0.1)
    jira_client = make_client(jira_standin, max_retries=2, max_retry_wait=10)

    with pytest.raises(JiraUnavailable, match="429"):
        jira_client.myself()
    assert jira_standin.request_count() == 3 and jira_client.request_count == 3


def test_a_retry_after_beyond_the_wait_budget_gives_up_at_once(jira_standin):
    jira_standin.inject_fault(429, count=1, retry_after=30)
    jira_client = make_client(jira_standin, max_retries=3, max_retry_wait=5)

    started = time.monotonic()
    with pytest.raises(JiraUnavailable, match="30.0s"):
        jira_client.myself()

    assert time.monotonic() - started < 1.0
    assert jira_standin.request_count() == 1


def test_other_5xx_are_retried_with_short_backoff(jira_standin, client):
    jira_standin.inject_fault(502, count=1)
    jira_standin.inject_fault(500, count=1)

    started = time.monotonic()
    me = client.myself()

    assert me["emailAddress"] == jira_standin.email
    assert [entry.status for entry in jira_standin.requests] == [502, 500, 200]
    assert time.monotonic() - started < 3.0


def test_5xx_past_max_retries_raises_unavailable(jira_standin):
    jira_standin.inject_fault(500, count=10)
    jira_client = make_client(jira_standin, max_retries=1)

    with pytest.raises(JiraUnavailable, match="HTTP 500"):
        jira_client.get_issue("ABC-1")
    assert jira_standin.request_count() == 2


def test_a_closed_port_raises_unavailable_quickly():
    jira_client = JiraCloudClient(
        f"http://127.0.0.1:{closed_port()}", "bot@example.com", "closed-port-token", max_retries=2
    )

    started = time.monotonic()
    with pytest.raises(JiraUnavailable, match="could not be reached"):
        jira_client.myself()

    assert time.monotonic() - started < 3.0
    assert jira_client.request_count == 3


def test_a_slow_server_times_out_into_unavailable(jira_standin):
    jira_standin.latency = 1.0
    jira_client = make_client(jira_standin, timeout=0.2, max_retries=1)

    started = time.monotonic()
    with pytest.raises(JiraUnavailable, match="timed out"):
        jira_client.myself()

    assert time.monotonic() - started < 1.5
    assert jira_client.request_count == 2
    wait_for_requests(jira_standin, 2)


def test_client_errors_are_raised_at_once_without_retry(jira_standin):
    jira_standin.inject_fault(403, count=5)
    jira_client = make_client(jira_standin)

    with pytest.raises(JiraRequestError) as caught:
        jira_client.myself()

    assert caught.value.status == 403
    assert jira_standin.request_count() == 1


# ------------------------------------------------------------------------------------------ secrets


def test_no_secret_reaches_errors_reprs_or_logs(jira_standin, caplog):
    caplog.set_level(logging.DEBUG)
    token = jira_standin.api_token
    wrong = "wrong-token-0123456789"
    secrets = [token, wrong]
    for secret, email in ((token, jira_standin.email), (wrong, jira_standin.email)):
        secrets.append(base64.b64encode(f"{email}:{secret}".encode()).decode())
    good = make_client(jira_standin, max_retries=1, max_retry_wait=1)
    bad = JiraCloudClient(jira_standin.url, jira_standin.email, wrong, max_retries=1)
    unreachable = JiraCloudClient(
        f"http://127.0.0.1:{closed_port()}", jira_standin.email, token, max_retries=1
    )
    jira_standin.add_issue("ABC-1", summary="s", updated=T0)

    failures: list[BaseException] = []
    attempts = [
        lambda: bad.myself(),
        lambda: unreachable.myself(),
        lambda: good.get_issue("ABC-404"),
        lambda: list(good.search_keys("project = ABC AND nope = 1")),
        lambda: (jira_standin.inject_fault(429, count=2, retry_after=0.05), good.myself()),
        lambda: (jira_standin.inject_fault(503, count=1, retry_after=5), good.bulk_fetch(["ABC-1"])),
    ]
    for attempt in attempts:
        jira_standin.clear_faults()
        with pytest.raises(JiraError) as caught:
            attempt()
        failures.append(caught.value)
    jira_standin.clear_faults()
    good.bulk_fetch(["ABC-1"])  # a success logs at DEBUG too

    assert "bulkfetch" in caplog.text and "retry 1 of 1" in caplog.text  # the logs were captured
    shown = [caplog.text, repr(good), repr(bad), repr(unreachable)]
    for failure in failures:
        shown += [str(failure), repr(failure), "".join(traceback.format_exception(failure))]
    for text in shown:
        for secret in secrets:
            assert secret not in text
    assert isinstance(failures[0], JiraRequestError) and failures[0].status == 401
    assert jira_standin.email in str(failures[0])


def test_site_url_with_credentials_is_refused():
    with pytest.raises(ValueError, match="credentials") as caught:
        JiraCloudClient("https://bot:s3cret-token@acme.atlassian.net", "bot@example.com", "s3cret-token")
    assert "s3cret-token" not in str(caught.value)


# ------------------------------------------------------------------------------------ ticket_details


def test_ticket_details_compacts_assigned_unassigned_hidden_and_untracked_tickets(jira_standin, client):
    jira_standin.set_time_zone("Europe/Berlin")
    updated = datetime(2026, 11, 27, 10, 14, 30, 123000, tzinfo=UTC)
    jira_standin.add_issue(
        "ABC-1",
        summary="Assigned",
        status="In Progress",
        assignee_email="ann@example.com",
        progress=(1800, 7200),
        updated=updated,
    )
    jira_standin.add_issue("ABC-2", summary="Unassigned", updated=updated)
    jira_standin.add_issue(
        "ABC-3",
        summary="Hidden",
        status="Done",
        assignee_email="shy@example.com",
        assignee_hidden_email=True,
        progress=(0, 0),
        updated=updated,
    )

    details = {
        d["key"]: d for d in map(ticket_details, client.bulk_fetch(["ABC-1", "ABC-2", "ABC-3"]).issues)
    }

    assert details["ABC-1"] == {
        "key": "ABC-1",
        "issue_id": jira_standin.issue("ABC-1")["id"],
        "summary": "Assigned",
        "status": "In Progress",
        "assignee_email": "ann@example.com",
        "progress": {"progress": 1800, "total": 7200, "percent": 25},
        "updated_at": "2026-11-27T10:14:30.123000+00:00",
    }
    assert details["ABC-2"]["assignee_email"] is None and details["ABC-2"]["status"] == "To Do"
    assert details["ABC-3"]["assignee_email"] is None
    assert details["ABC-3"]["progress"] == {"progress": 0, "total": 0}
    assert all(datetime.fromisoformat(d["updated_at"]) == updated for d in details.values())


def test_ticket_details_carry_the_chosen_extra_fields_raw():
    issue = {"id": "10001", "key": "ABC-1", "fields": {"summary": "s", "customfield_10016": 5.0}}

    details = ticket_details(issue, ("customfield_10016", "duedate"))

    assert details["fields"] == {"customfield_10016": 5.0, "duedate": None}
    assert "fields" not in ticket_details(issue)


def test_ticket_details_tolerate_missing_fields():
    details = ticket_details({"key": "ABC-9", "fields": {"summary": "Only a summary"}})

    assert details == {
        "key": "ABC-9",
        "issue_id": None,
        "summary": "Only a summary",
        "status": None,
        "assignee_email": None,
        "progress": None,
        "updated_at": None,
    }
