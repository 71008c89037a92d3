"""The Jira stand-in answers like Jira Cloud: OpenAPI-valid shapes, JQL and time zones, paging, faults."""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from openapi_schema_validator import OAS30ReadValidator, oas30_format_checker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from devkit.jira_standin import JiraStandin
from devkit.jira_standin.demo import HIDDEN_PERSON, demo_issues
from devkit.jira_standin.jql import parse_jql

REPO = Path(__file__).resolve().parents[1]
SPEC_PATH = REPO.parent / "shared" / "reference" / "jira-openapi" / "swagger-v3.v3.json"
SPEC_URI = "urn:jira-cloud-platform-openapi"

# Quoted from Jira Cloud (see shared/FACTS.md and the brief), not from the stand-in's code.
NOT_FOUND_BODY = {
    "errorMessages": ["Issue does not exist or you do not have permission to see it."],
    "errors": {},
}
REMOVED_SEARCH_MESSAGE = (
    "The requested API has been removed. Please migrate to the /rest/api/3/search/jql API. A full migration "
    "guideline is available at https://developer.atlassian.com/changelog/#CHANGE-2046"
)
JIRA_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d{4}$")
T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


# ------------------------------------------------------------------------------------------- helpers


@functools.cache
def _spec() -> dict:
    if not SPEC_PATH.exists():
        pytest.fail(f"the Jira OpenAPI spec is missing at {SPEC_PATH}")
    return json.loads(SPEC_PATH.read_text())


@functools.cache
def _registry() -> Registry:
    return Registry().with_resource(SPEC_URI, Resource.from_contents(_spec(), default_specification=DRAFT4))


def schema_errors(schema_name: str, instance: object) -> list[str]:
    """Validation errors of a response body against a component schema of Atlassian's spec."""
    validator = OAS30ReadValidator(
        {"$ref": f"{SPEC_URI}#/components/schemas/{schema_name}"},
        registry=_registry(),
        format_checker=oas30_format_checker,
    )
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)]


def assert_schema(schema_name: str, instance: object) -> None:
    errors = schema_errors(schema_name, instance)
    assert not errors, f"{schema_name} violations: {errors}"


class Api:
    """Plain HTTP calls to the stand-in as the configured account."""

    def __init__(self, standin: JiraStandin) -> None:
        self.base = standin.url
        self.session = requests.Session()
        self.session.auth = (standin.email, standin.api_token)

    def get(self, path: str, **params: object) -> requests.Response:
        return self.session.get(self.base + path, params=params, timeout=10)

    def post(self, path: str, body: object) -> requests.Response:
        return self.session.post(self.base + path, json=body, timeout=10)

    def search(self, jql: str, **params: object) -> requests.Response:
        return self.get("/rest/api/3/search/jql", jql=jql, **params)

    def keys(self, jql: str) -> list[str]:
        response = self.search(jql, fields="key", maxResults=5000)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["isLast"] is True
        return [issue["key"] for issue in body["issues"]]


@pytest.fixture
def api(jira_standin: JiraStandin):
    client = Api(jira_standin)
    yield client
    client.session.close()


# ------------------------------------------------------------------------------------------- /myself


def test_myself_is_an_openapi_user_carrying_the_account_time_zone(jira_standin, api):
    jira_standin.set_time_zone("Europe/Berlin")

    response = api.get("/rest/api/3/myself")

    assert response.status_code == 200
    me = response.json()
    assert_schema("User", me)
    assert me["emailAddress"] == jira_standin.email
    assert me["timeZone"] == "Europe/Berlin"
    assert me["accountType"] == "atlassian" and me["active"] is True
    assert me["accountId"] and me["displayName"] and me["locale"] and me["self"].startswith(jira_standin.url)


# --------------------------------------------------------------------------------------------- issues


def test_issue_is_an_issuebean_with_only_the_requested_fields_in_v2_and_v3(jira_standin, api):
    jira_standin.add_issue("ABC-1", summary="Fix login", assignee_email="ann@example.com", updated=T0)

    for version in ("2", "3"):
        response = api.get(f"/rest/api/{version}/issue/ABC-1", fields="summary,status")
        assert response.status_code == 200
        issue = response.json()
        assert_schema("IssueBean", issue)
        assert issue["key"] == "ABC-1"
        assert set(issue["fields"]) == {"summary", "status"}
        assert issue["fields"]["summary"] == "Fix login"


def test_issue_without_fields_parameter_carries_every_ticket_field(jira_standin, api):
    jira_standin.add_issue("ABC-1", summary="s", assignee_email="ann@example.com", updated=T0)

    fields = api.get("/rest/api/3/issue/ABC-1").json()["fields"]

    assert {"summary", "status", "assignee", "progress", "updated", "created", "project"} <= set(fields)
    assert fields["project"]["key"] == "ABC"
    assert fields["status"]["name"] == "To Do" and fields["status"]["statusCategory"]["key"]


def test_issue_is_found_by_numeric_id_and_case_insensitive_key(jira_standin, api):
    created = jira_standin.add_issue("OPS-7", summary="s", updated=T0)

    assert api.get(f"/rest/api/3/issue/{created['id']}").json()["key"] == "OPS-7"
    assert api.get("/rest/api/3/issue/ops-7").json()["key"] == "OPS-7"


def test_unknown_issue_is_404_with_jiras_exact_body(jira_standin, api):
    jira_standin.add_issue("ABC-1", summary="s", updated=T0)

    for path in ("/rest/api/3/issue/ABC-2", "/rest/api/2/issue/NOPE-1", "/rest/api/3/issue/99999"):
        response = api.get(path)
        assert response.status_code == 404
        assert response.json() == NOT_FOUND_BODY


def test_assignee_is_a_user_null_when_unassigned_and_without_email_when_hidden(jira_standin, api):
    jira_standin.add_issue("ABC-1", summary="s", assignee_email="ann@example.com", updated=T0)
    jira_standin.add_issue("ABC-2", summary="s", assignee_email=None, updated=T0)
    jira_standin.add_issue(
        "ABC-3", summary="s", assignee_email="shy@example.com", assignee_hidden_email=True, updated=T0
    )

    assignees = {
        key: api.get(f"/rest/api/3/issue/{key}", fields="assignee").json()["fields"]["assignee"]
        for key in ("ABC-1", "ABC-2", "ABC-3")
    }

    assert assignees["ABC-1"]["emailAddress"] == "ann@example.com"
    assert assignees["ABC-2"] is None
    assert "emailAddress" not in assignees["ABC-3"] and assignees["ABC-3"]["accountId"]
    for user in (assignees["ABC-1"], assignees["ABC-3"]):
        assert_schema("User", user)


def test_progress_has_percent_only_when_total_is_not_zero(jira_standin, api):
    jira_standin.add_issue("ABC-1", summary="s", progress=(1800, 3600), updated=T0)
    jira_standin.add_issue("ABC-2", summary="s", progress=(0, 0), updated=T0)

    half = api.get("/rest/api/3/issue/ABC-1", fields="progress").json()["fields"]["progress"]
    none = api.get("/rest/api/3/issue/ABC-2", fields="progress").json()["fields"]["progress"]

    assert half == {"progress": 1800, "total": 3600, "percent": 50}
    assert none == {"progress": 0, "total": 0}


def test_timestamps_use_jiras_format_in_the_account_zone_and_keep_the_instant(jira_standin, api):
    jira_standin.set_time_zone("Europe/Berlin")
    updated = datetime(2026, 11, 27, 10, 14, 30, 123000, tzinfo=UTC)
    jira_standin.add_issue("ABC-1", summary="s", updated=updated, created=updated - timedelta(days=200))

    fields = api.get("/rest/api/3/issue/ABC-1", fields="updated,created").json()["fields"]

    assert JIRA_TIMESTAMP.match(fields["updated"]) and JIRA_TIMESTAMP.match(fields["created"])
    assert fields["updated"] == "2026-11-27T11:14:30.123+0100"  # CET in November
    assert fields["created"].endswith("+0200")  # CEST in May
    assert datetime.strptime(fields["updated"], "%Y-%m-%dT%H:%M:%S.%f%z") == updated


def test_update_issue_moves_updated_to_now_unless_given(jira_standin, api):
    jira_standin.add_issue("ABC-1", summary="old", updated=T0)
    before = datetime.now(UTC) - timedelta(seconds=1)

    jira_standin.update_issue("ABC-1", summary="new", status="Done")

    fields = api.get("/rest/api/3/issue/ABC-1", fields="summary,status,updated").json()["fields"]
    assert fields["summary"] == "new" and fields["status"]["name"] == "Done"
    assert datetime.strptime(fields["updated"], "%Y-%m-%dT%H:%M:%S.%f%z") >= before
    jira_standin.remove_issue("ABC-1")
    assert api.get("/rest/api/3/issue/ABC-1").status_code == 404


# ------------------------------------------------------------------------------------------ bulkfetch


def test_bulkfetch_returns_known_issues_in_ascending_id_order_and_omits_unknown_keys(jira_standin, api):
    ids = {
        key: int(jira_standin.add_issue(key, summary=key, updated=T0)["id"])
        for key in ("ABC-3", "ABC-1", "OPS-2")
    }

    response = api.post(
        "/rest/api/3/issue/bulkfetch",
        {"issueIdsOrKeys": ["OPS-2", "NOPE-1", "ABC-1", "ABC-3", "abc-1", "ABC-404"], "fields": ["summary"]},
    )

    assert response.status_code == 200
    body = response.json()
    assert [issue["key"] for issue in body["issues"]] == sorted(ids, key=ids.get)
    assert body["issueErrors"] == []
    assert all(set(issue["fields"]) == {"summary"} for issue in body["issues"])


def test_bulkfetch_matches_the_openapi_schema_apart_from_the_documented_expand(jira_standin, api):
    jira_standin.add_issue("ABC-1", summary="s", assignee_email="ann@example.com", updated=T0)
    # Atlassian's own 200 example carries a top-level "expand" that its BulkIssueResults schema
    # (additionalProperties: false) does not list; the stand-in follows the example, as Jira does.
    example = json.loads(
        _spec()["paths"]["/rest/api/3/issue/bulkfetch"]["post"]["responses"]["200"]["content"][
            "application/json"
        ]["example"]
    )
    assert "expand" in example

    body = api.post("/rest/api/3/issue/bulkfetch", {"issueIdsOrKeys": ["ABC-1"]}).json()

    assert set(body) - {"expand"} <= set(_spec()["components"]["schemas"]["BulkIssueResults"]["properties"])
    assert_schema("BulkIssueResults", {k: v for k, v in body.items() if k != "expand"})
    assert body["issues"][0]["fields"]["summary"] == "s"


def test_key_faults_fail_only_the_bulk_fetches_that_name_the_key_in_jiras_shapes(jira_standin, api):
    ids = {
        key: jira_standin.add_issue(key, summary=key, updated=T0)["id"]
        for key in ("BAD-1", "BAD-2", "BAD-3", "OK-1")
    }
    jira_standin.inject_key_fault("BAD-1", "server_error")
    jira_standin.inject_key_fault("bad-2", "issue_error")
    jira_standin.inject_key_fault("BAD-3", "no_updated")
    fetch = functools.partial(api.post, "/rest/api/3/issue/bulkfetch")

    assert fetch({"issueIdsOrKeys": ["OK-1", "BAD-1"]}).status_code == 500
    body = fetch({"issueIdsOrKeys": ["OK-1", "BAD-2", "BAD-3"], "fields": ["summary", "updated"]}).json()

    assert_schema("BulkIssueResults", {k: v for k, v in body.items() if k != "expand"})
    assert body["issueErrors"] == [
        {
            "id": ids["BAD-2"],
            "errorMessage": "An error occurred while retrieving this issue. Please retry the request.",
        }
    ]
    fields = {issue["key"]: issue["fields"] for issue in body["issues"]}
    assert sorted(fields) == ["BAD-3", "OK-1"]
    assert "updated" in fields["OK-1"] and "updated" not in fields["BAD-3"]
    assert jira_standin.bulk_fetch_requests() == [(("OK-1", "BAD-1"), 500), (("OK-1", "BAD-2", "BAD-3"), 200)]
    jira_standin.clear_faults()
    assert fetch({"issueIdsOrKeys": ["BAD-1", "BAD-2"]}).json()["issueErrors"] == []
    with pytest.raises(ValueError, match="key fault is one of"):
        jira_standin.inject_key_fault("BAD-1", "slow")


def test_bulkfetch_takes_100_keys_with_any_fields_and_rejects_101_with_error_messages(jira_standin, api):
    keys = [f"ABC-{n}" for n in range(1, 102)]
    for key in keys[:100]:
        jira_standin.add_issue(key, summary=key, updated=T0)

    hundred = api.post(
        "/rest/api/3/issue/bulkfetch", {"issueIdsOrKeys": keys[:100], "fields": ["*navigable"]}
    )
    too_many = api.post("/rest/api/3/issue/bulkfetch", {"issueIdsOrKeys": keys, "fields": ["*navigable"]})
    empty = api.post("/rest/api/3/issue/bulkfetch", {"issueIdsOrKeys": []})

    assert hundred.status_code == 200 and len(hundred.json()["issues"]) == 100
    for response in (too_many, empty):
        assert response.status_code == 400
        assert_schema("ErrorCollection", response.json())
        assert response.json()["errorMessages"]
    assert "maximum of 100." in too_many.json()["errorMessages"][0]


@pytest.fixture
def thousand_and_one(jira_standin):
    keys = [f"ABC-{n}" for n in range(1, 1002)]
    for key in keys:
        jira_standin.add_issue(key, summary=key, updated=T0)
    jira_standin.add_custom_field("customfield_10016", "Story Points", "number")
    jira_standin.add_custom_field("customfield_10020", "Teams", "multi-option")
    return keys


def test_bulkfetch_takes_1000_keys_when_fields_are_explicit_and_single_valued(
    jira_standin, api, thousand_and_one
):
    fields = ["summary", "status", "assignee", "progress", "updated", "customfield_10016"]
    thousand = api.post(
        "/rest/api/3/issue/bulkfetch", {"issueIdsOrKeys": thousand_and_one[:1000], "fields": fields}
    )
    too_many = api.post("/rest/api/3/issue/bulkfetch", {"issueIdsOrKeys": thousand_and_one, "fields": fields})

    assert thousand.status_code == 200 and len(thousand.json()["issues"]) == 1000
    assert too_many.status_code == 400
    assert "maximum of 1000." in too_many.json()["errorMessages"][0]


@pytest.mark.parametrize(
    "body",
    [
        {},  # no fields: Jira's default is *navigable, not explicit
        {"fields": ["*navigable"]},
        {"fields": ["*all"]},
        {"fields": ["summary", "-status"]},
        {"fields": ["summary", "comment"]},  # comments are multi-valued
        {"fields": ["summary", "labels"]},
        {"fields": ["summary", "customfield_10020"]},  # a multi-select custom field
        {"fields": [f"customfield_{10100 + n}" for n in range(101)]},  # more than 100 fields
        {"fields": ["summary"], "expand": "changelog"},
        {"fields": ["summary"], "expand": ["renderedFields"]},
    ],
)
def test_bulkfetch_of_more_than_100_keys_is_refused_unless_every_condition_holds(api, thousand_and_one, body):
    response = api.post("/rest/api/3/issue/bulkfetch", {"issueIdsOrKeys": thousand_and_one[:101], **body})

    assert response.status_code == 400
    assert "maximum of 100." in response.json()["errorMessages"][0]


def test_a_site_without_the_large_limit_refuses_101_even_with_explicit_fields(
    jira_standin, api, thousand_and_one
):
    jira_standin.large_bulk_fetch = False
    response = api.post(
        "/rest/api/3/issue/bulkfetch", {"issueIdsOrKeys": thousand_and_one[:101], "fields": ["summary"]}
    )

    assert response.status_code == 400


def test_field_list_has_system_and_custom_fields_in_the_spec_shape(jira_standin, api):
    jira_standin.add_custom_field("customfield_10016", "Story Points", "number")

    response = api.get("/rest/api/3/field")

    assert response.status_code == 200
    fields = {field["id"]: field for field in response.json()}
    for field in fields.values():
        assert_schema("FieldDetails", field)
    assert fields["customfield_10016"]["schema"]["type"] == "number" and fields["customfield_10016"]["custom"]
    assert fields["comment"]["schema"]["type"] == "comments-page"


def test_a_moved_issue_answers_its_old_key_under_the_new_one_with_the_same_id(jira_standin, api):
    before = jira_standin.add_issue("ABC-1", summary="Moves", updated=T0)
    jira_standin.move_issue("ABC-1", "XYZ-9")

    single = api.get("/rest/api/3/issue/ABC-1", params={"fields": "summary"})
    bulk = api.post("/rest/api/3/issue/bulkfetch", {"issueIdsOrKeys": ["ABC-1"], "fields": ["summary"]})

    assert single.status_code == 200 and (single.json()["key"], single.json()["id"]) == (
        "XYZ-9",
        before["id"],
    )
    assert [(i["key"], i["id"]) for i in bulk.json()["issues"]] == [("XYZ-9", before["id"])]
    jira_standin.remove_issue("XYZ-9")
    assert api.get("/rest/api/3/issue/ABC-1").status_code == 404


def test_custom_field_values_are_served_when_asked_for(jira_standin, api):
    jira_standin.add_custom_field("customfield_10016", "Story Points", "number")
    jira_standin.add_issue("ABC-1", summary="Pointed", updated=T0, custom_fields={"customfield_10016": 5.0})

    asked = api.post(
        "/rest/api/3/issue/bulkfetch", {"issueIdsOrKeys": ["ABC-1"], "fields": ["customfield_10016"]}
    )
    not_asked = api.post("/rest/api/3/issue/bulkfetch", {"issueIdsOrKeys": ["ABC-1"], "fields": ["summary"]})

    assert asked.json()["issues"][0]["fields"] == {"customfield_10016": 5.0}
    assert "customfield_10016" not in not_asked.json()["issues"][0]["fields"]


def test_bulkfetch_rejects_a_body_field_the_spec_does_not_define(jira_standin, api):
    spec_fields = set(_spec()["components"]["schemas"]["BulkFetchIssueRequestBean"]["properties"])
    assert "keys" not in spec_fields

    response = api.post("/rest/api/3/issue/bulkfetch", {"issueIdsOrKeys": ["ABC-1"], "keys": ["ABC-1"]})

    assert response.status_code == 400 and "keys" in response.json()["errorMessages"][0]


# ------------------------------------------------------------------------------------ search: paging


def test_search_pages_match_the_schema_carry_no_total_and_follow_tokens_to_is_last(jira_standin, api):
    expected = {f"ABC-{n}" for n in range(1, 8)}
    for key in sorted(expected):
        jira_standin.add_issue(key, summary=key, updated=T0)

    seen: list[str] = []
    token = None
    pages = 0
    while True:
        params = {"fields": "key,summary", "maxResults": 3}
        if token:
            params["nextPageToken"] = token
        body = api.search("project = ABC ORDER BY key ASC", **params).json()
        pages += 1
        assert_schema("SearchAndReconcileResults", body)
        assert "total" not in body
        seen.extend(issue["key"] for issue in body["issues"])
        if body["isLast"]:
            assert "nextPageToken" not in body
            break
        token = body["nextPageToken"]

    assert pages == 3
    assert sorted(seen) == sorted(expected) and len(seen) == len(expected)


def test_search_page_holds_5000_keys_but_only_100_issues_with_fields(jira_standin, api):
    for n in range(1, 5201):
        jira_standin.add_issue(f"BIG-{n}", summary="s", updated=T0)

    keys_page = api.search("project = BIG", fields="key", maxResults=10000).json()
    keys_rest = api.search(
        "project = BIG", fields="key", maxResults=10000, nextPageToken=keys_page["nextPageToken"]
    ).json()
    fields_page = api.search("project = BIG", fields="key,summary", maxResults=10000).json()
    default_page = api.search("project = BIG").json()

    assert len(keys_page["issues"]) == 5000 and keys_page["isLast"] is False
    assert len(keys_rest["issues"]) == 200 and keys_rest["isLast"] is True
    assert {i["key"] for i in keys_page["issues"]} | {i["key"] for i in keys_rest["issues"]} == {
        f"BIG-{n}" for n in range(1, 5201)
    }
    assert len(fields_page["issues"]) == 100 and fields_page["isLast"] is False
    default_max = _spec()["components"]["schemas"]["SearchAndReconcileRequestBean"]["properties"][
        "maxResults"
    ]
    assert len(default_page["issues"]) == default_max["default"]


def test_search_returns_only_ids_by_default(jira_standin, api):
    jira_standin.add_issue("ABC-1", summary="s", updated=T0)

    body = api.search("project = ABC").json()

    assert_schema("SearchAndReconcileResults", body)
    assert [set(issue) for issue in body["issues"]] == [{"id"}]


def test_next_page_token_is_opaque_and_a_tampered_or_foreign_token_is_400(jira_standin, api):
    for n in range(1, 4):
        jira_standin.add_issue(f"ABC-{n}", summary="s", updated=T0)
    token = api.search("project = ABC", maxResults=1).json()["nextPageToken"]
    assert not token.isdigit()

    flipped = token[:-1] + ("0" if token[-1] != "0" else "1")
    forged = base64.urlsafe_b64encode(json.dumps({"o": 0}).encode()).decode()
    for bad in (flipped, forged, "1", "not-a-token"):
        response = api.search("project = ABC", maxResults=1, nextPageToken=bad)
        assert response.status_code == 400, bad
        assert response.json()["errorMessages"]
    foreign = api.search("project = ABC AND status = 'To Do'", maxResults=1, nextPageToken=token)
    assert foreign.status_code == 400


def test_post_search_answers_like_get_and_rejects_unknown_body_fields(jira_standin, api):
    for n in range(1, 4):
        jira_standin.add_issue(f"ABC-{n}", summary=f"s{n}", updated=T0 + timedelta(minutes=n))
    jql = "project = ABC ORDER BY updated DESC"

    posted = api.post("/rest/api/3/search/jql", {"jql": jql, "fields": ["summary"], "maxResults": 2}).json()
    got = api.search(jql, fields="summary", maxResults=2).json()
    bad = api.post("/rest/api/3/search/jql", {"jql": jql, "startAt": 0})

    assert_schema("SearchAndReconcileResults", posted)
    assert [i["key"] for i in posted["issues"]] == [i["key"] for i in got["issues"]] == ["ABC-3", "ABC-2"]
    rest = api.post(
        "/rest/api/3/search/jql",
        {"jql": jql, "fields": ["summary"], "nextPageToken": posted["nextPageToken"], "maxResults": 2},
    ).json()
    assert [i["key"] for i in rest["issues"]] == ["ABC-1"] and rest["isLast"] is True
    assert bad.status_code == 400 and "startAt" in bad.json()["errorMessages"][0]


# -------------------------------------------------------------------------------- search: semantics


@pytest.fixture
def small_site(jira_standin):
    """Nine issues over three projects and four statuses; returns {key: (project, status)}."""
    data = {
        "ABC-1": "To Do",
        "ABC-2": "In Progress",
        "ABC-10": "Done",
        "OPS-1": "Done",
        "OPS-2": "In Review",
        "OPS-3": "To Do",
        "WEB-1": "In Progress",
        "WEB-2": "Done",
        "WEB-3": "To Do",
    }
    for n, (key, status) in enumerate(data.items()):
        jira_standin.add_issue(key, summary=key, status=status, updated=T0 + timedelta(minutes=n))
    return {key: (key.split("-")[0], status) for key, status in data.items()}


@pytest.mark.parametrize(
    ("jql", "predicate"),
    [
        ("project = ABC", lambda p, s: p == "ABC"),
        ("project = abc AND status = 'In Progress'", lambda p, s: p == "ABC" and s == "In Progress"),
        ('project in (ABC, "OPS") AND NOT status = Done', lambda p, s: p in ("ABC", "OPS") and s != "Done"),
        (
            "(project = ABC OR project = WEB) AND status in ('To Do', done)",
            lambda p, s: p in ("ABC", "WEB") and s in ("To Do", "Done"),
        ),
        (
            "project = OPS OR project = WEB AND status = Done",
            lambda p, s: p == "OPS" or (p == "WEB" and s == "Done"),
        ),
        (
            "project = ABC && status = Done || project = WEB",
            lambda p, s: (p == "ABC" and s == "Done") or p == "WEB",
        ),
        ("project not in (ABC) AND status != 'To Do'", lambda p, s: p != "ABC" and s != "To Do"),
        (
            "NOT (project = ABC OR status = Done) AND project in (ABC, OPS, WEB)",
            lambda p, s: not (p == "ABC" or s == "Done"),
        ),
        ("status = Done AND !(project = OPS)", lambda p, s: s == "Done" and p != "OPS"),
    ],
)
def test_jql_boolean_logic_selects_the_expected_issues(small_site, api, jql, predicate):
    expected = {key for key, (project, status) in small_site.items() if predicate(project, status)}

    assert set(api.keys(jql)) == expected


def test_jql_key_clauses_are_case_insensitive_and_unknown_keys_match_nothing(small_site, api):
    assert set(api.keys('key in (ABC-1, "abc-2", OPS-1, ABC-999)')) == {"ABC-1", "ABC-2", "OPS-1"}
    assert api.keys("issuekey = WEB-2") == ["WEB-2"]
    assert api.keys("key = ABC-999") == []
    assert set(api.keys("project = ABC AND key != ABC-1")) == {"ABC-2", "ABC-10"}


def test_jql_order_by_sorts_keys_numerically_and_by_several_fields(jira_standin, api):
    for key, minute in (("ABC-10", 1), ("ABC-2", 1), ("ABC-1", 0), ("ABC-3", 2)):
        jira_standin.add_issue(key, summary=key, updated=T0 + timedelta(minutes=minute))

    by_key = api.keys("project = ABC ORDER BY key ASC")
    by_key_desc = api.keys("project = ABC ORDER BY key DESC")
    by_updated = api.keys("project = ABC ORDER BY updated DESC, key ASC")

    assert by_key == ["ABC-1", "ABC-2", "ABC-3", "ABC-10"]
    assert by_key_desc == list(reversed(by_key))
    assert by_updated == ["ABC-3", "ABC-2", "ABC-10", "ABC-1"]


def test_jql_assignee_and_summary_clauses_follow_jira(jira_standin, api):
    tickets = {
        "ABC-1": ("ann@example.com", "Fix the Login page"),
        "ABC-2": ("bob@example.com", "Login rate limiter"),
        "ABC-3": (None, "Nightly backup"),
    }
    for key, (email, summary) in tickets.items():
        jira_standin.add_issue(key, summary=summary, assignee_email=email, updated=T0)
    ann_id = api.get("/rest/api/3/issue/ABC-1", fields="assignee").json()["fields"]["assignee"]["accountId"]

    assert api.keys("assignee = 'Ann@Example.com'") == ["ABC-1"]
    assert api.keys(f"assignee = {ann_id}") == ["ABC-1"]
    assert api.keys("project = ABC AND assignee is EMPTY") == ["ABC-3"]
    assert set(api.keys("project = ABC AND assignee is not EMPTY")) == {"ABC-1", "ABC-2"}
    # In Jira, != never matches an unassigned issue: EMPTY is not a value.
    assert api.keys("project = ABC AND assignee != ann@example.com") == ["ABC-2"]
    assert set(api.keys('summary ~ "login"')) == {"ABC-1", "ABC-2"}
    assert api.keys('summary ~ "page login"') == ["ABC-1"]
    assert api.keys("project = ABC AND summary !~ login") == ["ABC-3"]
    assert api.search('summary = "Nightly backup"').status_code == 400


def test_jql_quoted_values_honour_backslash_escapes(jira_standin, api):
    jira_standin.add_issue("ABC-1", summary="s", status='Won\'t "Fix"', updated=T0)
    jira_standin.add_issue("ABC-2", summary="s", status="Done", updated=T0)

    assert api.keys(r'status = "Won\'t \"Fix\""') == ["ABC-1"]
    assert api.keys(r"status = 'Won\'t \"Fix\"'") == ["ABC-1"]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40))
def test_any_value_survives_quoting_with_backslash_escapes(value):
    for quote in ('"', "'"):
        quoted = quote + value.replace("\\", "\\\\").replace(quote, "\\" + quote) + quote

        clause = parse_jql(f"status = {quoted} ORDER BY key").where

        assert clause.values[0].text == value and clause.values[0].quoted


def test_the_sweep_style_query_selects_its_window(jira_standin, api):
    jira_standin.set_time_zone("Europe/Berlin")
    window_start = datetime(2026, 11, 27, 10, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    for key, offset, status in (
        ("ABC-1", -1, "Done"),
        ("ABC-2", 0, "Done"),
        ("DEF-1", 899_999, "Done"),
        ("DEF-2", 900_000, "Done"),
        ("ABC-3", 60_000, "To Do"),
        ("WEB-1", 1, "Done"),
    ):
        jira_standin.add_issue(
            key, summary=key, status=status, updated=window_start + timedelta(milliseconds=offset)
        )

    keys = api.keys(
        'project in ("ABC", "DEF") AND updated >= "2026-11-27 10:00" AND updated < "2026-11-27 10:15" '
        'AND (status = "Done") ORDER BY updated ASC, key ASC'
    )

    assert keys == ["ABC-2", "DEF-1"]


# ------------------------------------------------------------------------------ search: time zones


def java_zoned_of_local(wall: datetime, zone: ZoneInfo) -> tuple[datetime, str]:
    """What Java's ZonedDateTime.ofLocal(wall, zone, null) gives, worked out from the zone's offsets alone.

    The valid offsets are those o for which (wall - o) shows `wall` again in the zone. One: that one.
    Two (a fold): the earlier offset, i.e. the one in force before the transition (the earlier instant).
    None (a gap): the wall time moves later by the gap's length, i.e. it keeps the offset from before.
    """
    naive_utc = wall.replace(tzinfo=UTC)
    offsets = {(naive_utc + timedelta(hours=h)).astimezone(zone).utcoffset() for h in range(-36, 37)}
    valid = sorted(
        (
            naive_utc - offset
            for offset in offsets
            if (naive_utc - offset).astimezone(zone).replace(tzinfo=None) == wall
        ),
    )
    if len(valid) == 1:
        return valid[0], "plain"
    if len(valid) == 2:
        return valid[0], "fold"
    before_gap = (naive_utc - timedelta(days=1)).astimezone(zone).utcoffset()
    after_gap = (naive_utc + timedelta(days=1)).astimezone(zone).utcoffset()
    gap = after_gap - before_gap
    return (wall + gap).replace(tzinfo=UTC) - after_gap, "gap"


TIME_ZONE_CASES = [
    ("Australia/Sydney", '"2026-04-05 02:30"', datetime(2026, 4, 5, 2, 30), "fold"),
    ("Australia/Sydney", '"2026-10-04 02:30"', datetime(2026, 10, 4, 2, 30), "gap"),
    ("America/New_York", '"2026-11-01 01:30"', datetime(2026, 11, 1, 1, 30), "fold"),
    ("America/New_York", '"2026-03-08 02:30"', datetime(2026, 3, 8, 2, 30), "gap"),
    ("America/New_York", '"2026-11-01"', datetime(2026, 11, 1), "plain"),
    ("Asia/Kathmandu", '"2026-11-27 10:00"', datetime(2026, 11, 27, 10, 0), "plain"),
    ("Europe/Berlin", '"2026/11/27 10:00"', datetime(2026, 11, 27, 10, 0), "plain"),
    ("Australia/Sydney", "2026-11-27", datetime(2026, 11, 27), "plain"),
]
COMPARISONS = {
    ">=": lambda at, bound: at >= bound,
    ">": lambda at, bound: at > bound,
    "<": lambda at, bound: at < bound,
    "<=": lambda at, bound: at <= bound,
    "=": lambda at, bound: at == bound,
    "!=": lambda at, bound: at != bound,
}


@pytest.mark.parametrize(("zone_name", "literal", "wall", "kind"), TIME_ZONE_CASES)
def test_jql_datetimes_are_read_in_the_account_zone_like_java(
    jira_standin, api, zone_name, literal, wall, kind
):
    zone = ZoneInfo(zone_name)
    bound, found_kind = java_zoned_of_local(wall, zone)
    assert found_kind == kind, f"{literal} in {zone_name} should be a {kind}, the zone data says {found_kind}"
    jira_standin.set_time_zone(zone_name)
    offsets = [timedelta(minutes=m) for m in (-120, -61, -60, -59, -1, 0, 1, 59, 60, 61, 120)]
    offsets += [timedelta(milliseconds=-1), timedelta(milliseconds=1)]
    instants = {f"TZ-{n}": bound + offset for n, offset in enumerate(offsets, start=1)}
    for key, at in instants.items():
        jira_standin.add_issue(key, summary=key, updated=at)

    for operator, compare in COMPARISONS.items():
        expected = {key for key, at in instants.items() if compare(at, bound)}
        assert set(api.keys(f"project = TZ AND updated {operator} {literal}")) == expected, operator


def test_jql_unquoted_number_is_epoch_milliseconds_and_a_quoted_one_is_not_a_date(jira_standin, api):
    jira_standin.set_time_zone("Asia/Kathmandu")
    bound = datetime(2026, 11, 27, 4, 15, tzinfo=UTC)
    millis = int(bound.timestamp() * 1000)
    jira_standin.add_issue("ABC-1", summary="s", updated=bound - timedelta(milliseconds=1))
    jira_standin.add_issue("ABC-2", summary="s", updated=bound)

    assert api.keys(f"project = ABC AND updated >= {millis}") == ["ABC-2"]
    assert api.keys(f"project = ABC AND created < {millis}") == ["ABC-1"]
    assert api.search(f'project = ABC AND updated >= "{millis}"').status_code == 400


def test_jql_relative_period_counts_back_from_now(jira_standin, api):
    now = datetime.now(UTC)
    jira_standin.add_issue("ABC-1", summary="recent", updated=now - timedelta(hours=2))
    jira_standin.add_issue("ABC-2", summary="old", updated=now - timedelta(days=3))

    assert api.keys("project = ABC AND updated >= -1d") == ["ABC-1"]
    assert api.keys('project = ABC AND updated >= "-4d 1h"') in (["ABC-1", "ABC-2"], ["ABC-2", "ABC-1"])


# ---------------------------------------------------------------------------------- search: errors


@pytest.mark.parametrize(
    ("jql", "mentions"),
    [
        ("foo = 1", "foo"),
        ("project = ABC AND updated > now()", "now"),
        ("project = ABC ORDER BY key garbage", "garbage"),
        ("project = ABC garbage", "garbage"),
        ('project = "ABC', "ABC"),
        ("(project = ABC", ")"),
        ("project = ABC)", ")"),
        ("project = ABC AND", "end of query"),
        ("project ABC", "ABC"),
        ("", "Unbounded"),
        ("ORDER BY key", "Unbounded"),
        ("project = NOPE", "NOPE"),
        ("status = Imaginary", "Imaginary"),
        ('project = ABC AND updated >= "2026-02-30 10:00"', "2026-02-30"),
        ('project = ABC AND updated >= "27.11.2026"', "27.11.2026"),
        ("project = ABC AND updated in (1, 2) AND project > ABC", ">"),
        ("key = 'not a key'", "not a key"),
        ("project = ABC ORDER BY summary", "summary"),
    ],
)
def test_bad_jql_is_400_with_a_clear_jira_error_collection(jira_standin, api, jql, mentions):
    jira_standin.add_issue("ABC-1", summary="s", updated=T0)

    for response in (api.search(jql), api.post("/rest/api/3/search/jql", {"jql": jql})):
        assert response.status_code == 400, response.text
        body = response.json()
        assert_schema("ErrorCollection", body)
        assert body["errors"] == {} and len(body["errorMessages"]) == 1
        assert mentions in body["errorMessages"][0]


@pytest.mark.parametrize("path", ["/rest/api/2/search", "/rest/api/3/search"])
def test_the_removed_search_api_is_410_gone_with_jiras_message(jira_standin, api, path):
    for response in (api.get(path, jql="project = ABC"), api.post(path, {"jql": "project = ABC"})):
        assert response.status_code == 410
        assert response.json() == {"errorMessages": [REMOVED_SEARCH_MESSAGE], "errors": {}}


# ------------------------------------------------------------------------------------------------ auth


def test_wrong_or_missing_credentials_are_401_without_echoing_them(jira_standin):
    url = jira_standin.url + "/rest/api/3/myself"
    wrong_token = "definitely-wrong-token-123"

    answers = [
        requests.get(url, auth=(jira_standin.email, wrong_token), timeout=5),
        requests.get(url, auth=("other@example.com", jira_standin.api_token), timeout=5),
        requests.get(url, timeout=5),
        requests.post(jira_standin.url + "/_standin/reset", timeout=5),
    ]

    for response in answers:
        assert response.status_code == 401
        assert wrong_token not in response.text and jira_standin.api_token not in response.text
    assert jira_standin.request_count("/rest/api/3/myself") == 3


# ---------------------------------------------------------------------------------------------- faults


def test_injected_429s_carry_retry_after_and_rate_limit_reset_then_service_resumes(jira_standin, api):
    jira_standin.add_issue("ABC-1", summary="s", updated=T0)
    jira_standin.inject_fault(429, count=2, retry_after=3, path_prefix="/rest/api/3/search/jql")

    other = api.get("/rest/api/3/myself")
    limited = [api.search("project = ABC"), api.search("project = ABC")]
    after = api.search("project = ABC")

    assert other.status_code == 200 and after.status_code == 200
    for response in limited:
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "3"
        reset = datetime.fromisoformat(response.headers["X-RateLimit-Reset"].replace("Z", "+00:00"))
        assert timedelta(seconds=1) < reset - datetime.now(UTC) <= timedelta(seconds=4)
    statuses = [entry.status for entry in jira_standin.requests if entry.path == "/rest/api/3/search/jql"]
    assert statuses == [429, 429, 200]


def test_injected_5xx_faults_come_in_queue_order(jira_standin, api):
    jira_standin.inject_fault(503, retry_after=7)
    jira_standin.inject_fault(502)
    jira_standin.inject_fault(500)

    answers = [api.get("/rest/api/3/myself") for _ in range(4)]

    assert [r.status_code for r in answers] == [503, 502, 500, 200]
    assert answers[0].headers["Retry-After"] == "7"
    assert "Retry-After" not in answers[2].headers
    assert jira_standin.pending_faults == 0


def test_latency_delays_every_api_request(jira_standin, api):
    jira_standin.latency = 0.3

    started = time.monotonic()
    response = api.get("/rest/api/3/myself")

    assert response.status_code == 200 and time.monotonic() - started >= 0.3


def test_request_log_counts_by_prefix_and_method_and_clears(jira_standin, api):
    jira_standin.add_issue("ABC-1", summary="s", updated=T0)
    api.get("/rest/api/3/issue/ABC-1")
    api.post("/rest/api/3/issue/bulkfetch", {"issueIdsOrKeys": ["ABC-1"]})
    api.search("project = ABC")

    log = jira_standin.requests
    log.clear()

    assert jira_standin.request_count() == 3
    assert jira_standin.request_count("/rest/api/3/issue") == 2
    assert jira_standin.request_count("/rest/api/3/issue", method="POST") == 1
    assert jira_standin.requests[2].query == "jql=project+%3D+ABC"
    jira_standin.clear_requests()
    assert jira_standin.request_count() == 0


# ------------------------------------------------------------------------------------- admin over HTTP


def test_admin_endpoints_let_another_process_drive_the_site(jira_standin, api):
    upserted = api.post(
        "/_standin/issues",
        {
            "key": "OPS-5",
            "summary": "From the generator",
            "status": "In Progress",
            "assignee_email": "gen@example.com",
            "progress": [60, 120],
            "updated": "2026-11-27T10:00:00+01:00",
        },
    )
    config = api.post("/_standin/config", {"time_zone": "America/New_York", "latency": 0})
    fault = api.post("/_standin/faults", {"status": 503, "count": 1, "retry_after": 1})

    faulted = api.get("/rest/api/3/issue/OPS-5", fields="summary")
    fields = api.get("/rest/api/3/issue/OPS-5").json()["fields"]
    log = api.get("/_standin/requests").json()["requests"]

    assert upserted.status_code == 200 and config.json()["time_zone"] == "America/New_York"
    assert fault.status_code == 200 and faulted.status_code == 503
    assert fields["summary"] == "From the generator" and fields["progress"]["percent"] == 50
    assert fields["updated"] == "2026-11-27T04:00:00.000-0500"
    assert [entry["status"] for entry in log] == [503, 200]  # admin calls are not logged
    assert api.post("/_standin/issues", {"key": "bad key", "summary": "x"}).status_code == 400
    assert api.post("/_standin/reset", {}).status_code == 204
    assert jira_standin.issue_count == 0 and jira_standin.time_zone == "UTC"


# ----------------------------------------------------------------------------------- demo and the CLI


def test_demo_site_is_deterministic_and_covers_every_ticket_shape():
    anchor = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)

    first = demo_issues(300, seed=1, anchor=anchor)

    assert first == demo_issues(300, seed=1, anchor=anchor)
    assert first != demo_issues(300, seed=2, anchor=anchor)
    assert len({issue["key"] for issue in first}) == 300
    assert {issue["key"].split("-")[0] for issue in first} >= {"ABC", "OPS", "WEB"}
    assert any(issue["assignee_email"] is None for issue in first)
    assert any(issue["assignee_hidden_email"] and issue["assignee_email"] == HIDDEN_PERSON for issue in first)
    assert any(issue["progress"][1] == 0 for issue in first) and any(issue["progress"][1] for issue in first)
    assert all(anchor - timedelta(days=14) <= issue["updated"] <= anchor for issue in first)


def _read_line(stream, deadline: float) -> str:
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 0.2)
        if ready:
            return stream.readline()
    raise AssertionError("the stand-in process printed nothing before the deadline")


@pytest.mark.service
def test_module_runs_a_demo_site_until_sigterm(tmp_path):
    anchor = "2026-11-27T10:00:00+00:00"
    token = "cli-demo-token-1"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devkit.jira_standin",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--email",
            "demo@example.com",
            "--api-token",
            token,
            "--time-zone",
            "Europe/Berlin",
            "--demo-issues",
            "60",
            "--seed",
            "7",
            "--anchor",
            anchor,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        line = _read_line(proc.stdout, time.monotonic() + 20)
        url = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        assert url, line
        session = requests.Session()
        session.auth = ("demo@example.com", token)
        me = session.get(url.group(1) + "/rest/api/3/myself", timeout=5).json()
        found = session.get(
            url.group(1) + "/rest/api/3/search/jql",
            timeout=5,
            params={
                "jql": "project in (ABC, OPS, WEB) ORDER BY key ASC",
                "fields": "key,summary",
                "maxResults": 100,
            },
        ).json()
        assert me["timeZone"] == "Europe/Berlin"
        expected = {
            i["key"]: i["summary"] for i in demo_issues(60, seed=7, anchor=datetime.fromisoformat(anchor))
        }
        assert {i["key"]: i["fields"]["summary"] for i in found["issues"]} == expected
        session.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            returncode = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        stderr = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert returncode == 0, stderr
    assert token not in stderr
