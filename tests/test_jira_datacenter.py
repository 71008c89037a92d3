"""JiraDataCenterClient and the connection's flavour against the stand-in's Data Center mode (#24)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import requests
from jira_mail_sync.hooks.jira_cloud import JiraCloudHook

from devkit.jira_standin.jql import jira_local_to_instant
from include.jira_cloud import JiraCloudClient, JiraRequestError, ticket_details
from include.jira_datacenter import JiraDataCenterClient, check_flavor, detect_flavor
from include.sweep_window import build_sweep_jql, jql_datetime_bounds, make_window
from tests.harness.jira_standin import DC_PERSONAL_ACCESS_TOKEN

ORDER = "ORDER BY updated ASC, key ASC"


def dc_client(standin, **options) -> JiraDataCenterClient:
    options = {"timeout": 5, "max_retries": 3, "max_retry_wait": 10, **options}
    return JiraDataCenterClient(standin.url, "", DC_PERSONAL_ACCESS_TOKEN, **options)


def add_issues(standin, keys, start: datetime, step: timedelta) -> None:
    for index, key in enumerate(keys):
        standin.add_issue(key, summary=f"Issue {key}", updated=start + index * step)


# ------------------------------------------------------------------------------------ auth, flavour


def test_a_personal_access_token_is_sent_as_bearer_and_basic_auth_works_beside_it(jira_dc_standin):
    with dc_client(jira_dc_standin) as client:
        me = client.myself()
    # Data Center users have name and key, not accountId.
    assert me["name"] == "bot" and me["key"].startswith("JIRAUSER") and "accountId" not in me
    basic = JiraDataCenterClient(jira_dc_standin.url, jira_dc_standin.email, jira_dc_standin.api_token)
    assert basic.myself()["emailAddress"] == jira_dc_standin.email


def test_a_wrong_token_is_a_clear_401_that_never_shows_the_token(jira_dc_standin):
    wrong = "not-the-pat-" + "x" * 20
    client = JiraDataCenterClient(jira_dc_standin.url, "", wrong, max_retries=0)
    with pytest.raises(JiraRequestError) as caught:
        client.myself()
    assert caught.value.status == 401
    assert "personal access token was not accepted" in str(caught.value)
    assert wrong not in str(caught.value) and wrong not in repr(client)


def test_the_cloud_endpoints_are_404_on_data_center(jira_dc_standin):
    jira_dc_standin.add_issue("ABC-1", summary="one")
    cloud = JiraCloudClient(jira_dc_standin.url, jira_dc_standin.email, jira_dc_standin.api_token)
    with pytest.raises(JiraRequestError) as search:
        list(cloud.search_keys(f"project = ABC {ORDER}"))
    with pytest.raises(JiraRequestError) as fetch:
        cloud.bulk_fetch(["ABC-1"])
    assert search.value.status == 404 and fetch.value.status == 404


@pytest.mark.parametrize(
    ("value", "flavor"),
    [
        (None, "cloud"),
        ("", "cloud"),
        ("Cloud", "cloud"),
        ("datacenter", "datacenter"),
        ("server", "datacenter"),
    ],
)
def test_the_flavor_extra_reads_its_words(value, flavor):
    assert check_flavor(value) == flavor


def test_an_unknown_flavor_is_refused():
    with pytest.raises(ValueError, match="flavor must be one of cloud, datacenter, auto"):
        check_flavor("onprem")


@pytest.mark.parametrize("deployment", ["Server", "DataCenter"])
def test_auto_asks_server_info_once_per_process(jira_dc_standin, monkeypatch, deployment):
    jira_dc_standin.dc.deployment_type = deployment
    conn = {**jira_dc_standin.airflow_conn(), "extra": {"flavor": "auto"}}
    monkeypatch.setenv("AIRFLOW_CONN_JIRA_AUTO", json.dumps(conn))

    clients = [JiraCloudHook("jira_auto").get_conn() for _ in range(3)]

    assert all(isinstance(client, JiraDataCenterClient) for client in clients)
    assert jira_dc_standin.request_count("/rest/api/2/serverInfo") == 1


def test_auto_finds_cloud_too(jira_standin, monkeypatch):
    conn = {**jira_standin.airflow_conn(), "extra": {"flavor": "auto"}}
    monkeypatch.setenv("AIRFLOW_CONN_JIRA_AUTO", json.dumps(conn))

    client = JiraCloudHook("jira_auto").get_conn()

    assert type(client) is JiraCloudClient
    assert client.myself()["emailAddress"] == jira_standin.email


def test_detect_flavor_refuses_an_unknown_deployment_type(jira_dc_standin):
    jira_dc_standin.dc.deployment_type = "Mainframe"
    with pytest.raises(Exception, match="deploymentType 'Mainframe'"):
        detect_flavor(dc_client(jira_dc_standin))


def test_a_datacenter_connection_without_a_token_is_refused(monkeypatch):
    conn = {"conn_type": "jira", "host": "https://jira.example", "extra": {"flavor": "datacenter"}}
    monkeypatch.setenv("AIRFLOW_CONN_JIRA_EMPTY", json.dumps(conn))
    with pytest.raises(ValueError, match="personal access token as password"):
        JiraCloudHook("jira_empty").get_conn()


# ------------------------------------------------------------------------------------------ fetch


def test_fetch_is_a_key_in_search_and_moves_come_back_under_their_new_key(jira_dc_standin):
    add_issues(jira_dc_standin, ["ABC-1", "ABC-2", "ABC-3"], datetime(2026, 11, 27, tzinfo=UTC), timedelta(1))
    jira_dc_standin.move_issue("ABC-3", "XYZ-1")
    with dc_client(jira_dc_standin) as client:
        result = client.bulk_fetch(["abc-1", "ABC-2", "ABC-3", "ABC-404", "not a key"])
        missing = client.look_up_missing(result.not_found)

    assert sorted(issue["key"] for issue in result.issues) == ["ABC-1", "ABC-2", "XYZ-1"]
    assert result.not_found == ["ABC-3", "ABC-404", "NOT A KEY"] and result.requests == 1
    assert missing.gone == ["ABC-404", "NOT A KEY"] and missing.moved["ABC-3"]["key"] == "XYZ-1"
    assert jira_dc_standin.request_count("/rest/api/2/search", "POST") == 1


def test_fetch_adapts_to_the_servers_page_size(jira_dc_standin):
    keys = [f"ABC-{n}" for n in range(1, 8)]
    add_issues(jira_dc_standin, keys, datetime(2026, 11, 27, tzinfo=UTC), timedelta(minutes=1))
    jira_dc_standin.dc.search_max = 3  # jira.search.views.default.max lowered by the admin
    with dc_client(jira_dc_standin) as client:
        first = client.bulk_fetch(keys)
        second = client.bulk_fetch(keys)

    assert sorted(issue["key"] for issue in first.issues) == sorted(keys) and not first.not_found
    # One request of 7 learns the cap (answer's maxResults 3), then 3 + 3 + 1; the next fetch knows it.
    assert first.requests == 4 and second.requests == 3 and client.search_cap == 3


def test_data_center_fields_are_stored_as_they_come(jira_dc_standin):
    jira_dc_standin.add_issue("ABC-1", summary="shown", assignee_email="ann@example.com", progress=(30, 120))
    jira_dc_standin.add_issue(
        "ABC-2", summary="hidden", assignee_email="bob@example.com", assignee_hidden_email=True
    )
    with dc_client(jira_dc_standin) as client:
        issues = {i["key"]: i for i in client.bulk_fetch(["ABC-1", "ABC-2"]).issues}
        catalogue = {field["id"] for field in client.fields_catalogue()}

    shown, hidden = ticket_details(issues["ABC-1"]), ticket_details(issues["ABC-2"])
    assert issues["ABC-1"]["fields"]["assignee"]["name"] == "ann"
    assert shown["assignee_email"] == "ann@example.com"
    assert shown["progress"] == {"progress": 30, "total": 120, "percent": 25}
    # A hidden address stays None: a user name is not an e-mail address.
    assert issues["ABC-2"]["fields"]["assignee"]["name"] == "bob" and hidden["assignee_email"] is None
    assert {"summary", "status", "assignee", "progress", "updated"} <= catalogue
    assert jira_dc_standin.request_count("/rest/api/2/field") == 1


# ----------------------------------------------------------------------------------------- search


def test_search_misses_nothing_while_issues_change_between_pages(jira_dc_standin):
    """The proof of the moving lower bound: edits between pages move issues to the end."""
    start = datetime.now(UTC) - timedelta(hours=2)
    keys = [f"ABC-{n}" for n in range(1, 41)]
    # 40 issues; 12 of them in one minute (more than a page), the rest a minute apart.
    for index, key in enumerate(keys):
        at = start + timedelta(seconds=index * 4) if index < 12 else start + timedelta(minutes=index)
        jira_dc_standin.add_issue(key, summary=key, updated=at)
    edited: list[str] = []

    def edit(page: int, _jql: str) -> None:
        # After each page: edit one issue already seen and one not yet seen (early in the order).
        for index in (page - 1, page * 5 + 2):
            if index < len(keys):
                jira_dc_standin.update_issue(keys[index], summary=f"edited after page {page}")
                edited.append(keys[index])

    jira_dc_standin.between_pages = edit
    with dc_client(jira_dc_standin) as client:
        found = list(client.search_keys(f'updated >= "2000-01-01 00:00" {ORDER}', page_size=5))

    assert len(found) == len(set(found))
    assert sorted(found) == sorted(keys)
    assert jira_dc_standin.dc_search_pages > 8 and len(edited) > 10


def test_offset_paging_would_skip_under_the_same_edits(jira_dc_standin):
    """Why the bound exists: plain startAt paging on the same stand-in loses issues."""
    start = datetime.now(UTC) - timedelta(hours=2)
    keys = [f"ABC-{n}" for n in range(1, 21)]
    add_issues(jira_dc_standin, keys, start, timedelta(minutes=1))
    jira_dc_standin.between_pages = lambda page, _jql: jira_dc_standin.update_issue(keys[0], summary="x")
    headers = {"Authorization": f"Bearer {DC_PERSONAL_ACCESS_TOKEN}"}
    found: list[str] = []
    for start_at in range(0, 20, 5):
        answer = requests.post(
            f"{jira_dc_standin.url}/rest/api/2/search",
            json={"jql": f"project = ABC {ORDER}", "startAt": start_at, "maxResults": 5, "fields": ["key"]},
            headers=headers,
            timeout=5,
        ).json()
        found.extend(issue["key"] for issue in answer["issues"])
    assert set(keys) - set(found)  # edits between pages shift the offsets: some issues never come


def test_a_search_without_the_sweep_order_is_refused(jira_dc_standin):
    with pytest.raises(ValueError, match="ORDER BY updated ASC, key ASC"):
        list(dc_client(jira_dc_standin).search_keys("project = ABC"))


@pytest.mark.parametrize(
    ("zone", "start", "end"),
    [
        # Sydney leaves DST on 5 April 2026 at 03:00 local (16:00 UTC on the 4th): the fold.
        (
            "Australia/Sydney",
            datetime(2026, 4, 4, 15, 10, tzinfo=UTC),
            datetime(2026, 4, 4, 16, 50, tzinfo=UTC),
        ),
        # New York enters DST on 8 March 2026 at 02:00 local (07:00 UTC): the gap.
        (
            "America/New_York",
            datetime(2026, 3, 8, 6, 20, tzinfo=UTC),
            datetime(2026, 3, 8, 7, 40, tzinfo=UTC),
        ),
    ],
)
def test_the_sweep_window_is_zone_correct_across_dst(jira_dc_standin, zone, start, end):
    jira_dc_standin.set_time_zone(zone)
    times = [
        start + timedelta(minutes=m) for m in range(-30, int((end - start).total_seconds() // 60) + 30, 7)
    ]
    for index, at in enumerate(times, 1):
        jira_dc_standin.add_issue(f"ABC-{index}", summary="t", updated=at)
    with dc_client(jira_dc_standin) as client:
        tz = client.account_time_zone()
        window = make_window(start, end, lookback_minutes=0)
        jql, bounds = build_sweep_jql(window, tz), jql_datetime_bounds(window, tz)
        found = set(client.search_keys(jql, page_size=4))
    low, high = (
        jira_local_to_instant(datetime.strptime(b.strip('"'), "%Y-%m-%d %H:%M"), zone) for b in bounds
    )
    inside = {f"ABC-{index}" for index, at in enumerate(times, 1) if start <= at < end}
    expected = {f"ABC-{index}" for index, at in enumerate(times, 1) if low <= at < high}
    assert tz == zone and inside
    # Exactly what the window's JQL bounds name, read in the account's zone (a DST fold widens one):
    # the moving bound's literals are in that zone too, or pages would lose or repeat issues.
    assert found == expected and inside <= found and len(expected) < len(times)


# ----------------------------------------------------------------------------------- rate limits


def test_a_429_with_retry_after_is_waited_out(jira_dc_standin):
    jira_dc_standin.add_issue("ABC-1", summary="one")
    jira_dc_standin.inject_fault(429, retry_after=0.2, path_prefix="/rest/api/2/search")
    with dc_client(jira_dc_standin) as client:
        result = client.bulk_fetch(["ABC-1"])
    assert [issue["key"] for issue in result.issues] == ["ABC-1"]
    assert client.throttled_count == 1 and client.last_throttle.retry_after_seconds == pytest.approx(0.2)


def test_an_empty_token_bucket_pauses_instead_of_drawing_429s(jira_dc_standin):
    jira_dc_standin.add_issue("ABC-1", summary="one")
    jira_dc_standin.dc.rate_limit = (3, 3.0, 1.0)  # at most 3 tokens, 3 more each second
    jira_dc_standin.dc.tokens = 3
    with dc_client(jira_dc_standin) as client:
        for _ in range(5):
            client.get_issue("ABC-1")
    assert jira_dc_standin.dc.throttled == 0 and client.throttled_count == 0
    assert client.paced_seconds > 0.1


def test_the_stand_in_validates_keys_like_data_center_unless_told_not_to(jira_dc_standin):
    """Why the client sends validateQuery false: by default a key that does not exist fails the search."""
    jira_dc_standin.add_issue("ABC-1", summary="one")
    headers = {"Authorization": f"Bearer {DC_PERSONAL_ACCESS_TOKEN}"}
    url = f"{jira_dc_standin.url}/rest/api/2/search"
    strict = requests.get(url, params={"jql": "key in (ABC-1, ABC-404)"}, headers=headers, timeout=5)
    lenient = requests.get(
        url, params={"jql": "key in (ABC-1, ABC-404)", "validateQuery": "false"}, headers=headers, timeout=5
    )
    message = "An issue with key 'ABC-404' does not exist for field 'key'."
    assert strict.status_code == 400 and strict.json()["errorMessages"] == [message]
    answer = lenient.json()
    assert [issue["key"] for issue in answer["issues"]] == ["ABC-1"] and answer["warningMessages"] == [
        message
    ]
    assert (answer["startAt"], answer["maxResults"], answer["total"]) == (0, 50, 1)


def test_the_cloud_only_calls_are_refused_before_anything_is_sent(jira_dc_standin):
    from include.jira_cloud import JiraCloudOnly

    client = dc_client(jira_dc_standin)
    jira_dc_standin.clear_requests()
    for call in (
        lambda: list(client.search_ids("project = ABC")),
        lambda: client.bulk_fetch_ids([10000], ["summary"]),
        lambda: client.changelog_bulkfetch(["10000"]),
    ):
        with pytest.raises(JiraCloudOnly, match="Jira Data Center or Server"):
            call()
    assert client.has_cloud_apis is False and jira_dc_standin.requests == []
