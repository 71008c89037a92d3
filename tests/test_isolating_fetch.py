"""include.isolating_fetch on the Jira stand-in: failing keys cost O(log n) requests; the rest is fetched."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from include.isolating_fetch import SPLIT_RETRIES, fetch_isolating, split_budget
from include.jira_cloud import JiraCloudClient, JiraUnavailable
from include.sync_pipeline import fetch_batch
from include.ticket_store import check_ticket

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
KEYS = [f"OPS-{n}" for n in range(1, 101)]  # one bulk request
LEVELS = math.ceil(math.log2(len(KEYS)))


@pytest.fixture
def site(jira_standin):
    for key in KEYS:
        jira_standin.add_issue(key, summary=f"Ticket {key}", updated=T0)
    client = JiraCloudClient(
        jira_standin.url,
        jira_standin.email,
        jira_standin.api_token,
        timeout=5,
        max_retries=2,
        max_retry_wait=5,
    )
    yield jira_standin, client
    client.close()


def test_a_clean_batch_is_one_request(site):
    standin, client = site
    result = fetch_isolating(client, KEYS, validate=check_ticket)
    assert sorted(t["key"] for t in result["tickets"]) == sorted(KEYS)
    assert result["failed"] == {} and result["not_found"] == [] and result["requests"] == 1
    assert len(standin.bulk_fetch_requests()) == 1


@pytest.mark.parametrize("kind", ["server_error", "issue_error", "no_updated"])
def test_one_bad_key_fails_alone_and_costs_logarithmic_requests(site, kind):
    standin, client = site
    standin.inject_key_fault("OPS-37", kind)

    result = fetch_isolating(client, [*KEYS[:-1], "OPS-404"], validate=check_ticket)

    assert list(result["failed"]) == ["OPS-37"]
    assert sorted(t["key"] for t in result["tickets"]) == sorted(set(KEYS[:-1]) - {"OPS-37"})
    assert result["not_found"] == ["OPS-404"]
    sent = standin.bulk_fetch_requests()
    if kind == "no_updated":
        # The answer arrives whole: only the ticket's own key fails, with no split and no probe.
        assert "failed validation" in result["failed"]["OPS-37"]
        assert result["requests"] == len(sent) == 1
        return
    # The first request with its retries (a 500; issueErrors is answered 200 and not retried), the
    # /myself probe, then per halving level one request naming the key (with its retry) and at most
    # one for the other half.
    first = 1 + client.max_retries if kind == "server_error" else 1
    per_split = 1 + SPLIT_RETRIES if kind == "server_error" else 1
    naming = sum(1 for keys, _ in sent if "OPS-37" in keys)
    assert naming <= first + per_split * LEVELS
    assert len(sent) <= naming + LEVELS
    assert result["requests"] == len(sent) + 1  # the probe


def test_several_bad_keys_are_all_isolated_and_every_good_key_fetched(site):
    standin, client = site
    bad = {"OPS-3": "server_error", "OPS-50": "issue_error", "OPS-99": "server_error"}
    for key, kind in bad.items():
        standin.inject_key_fault(key, kind)

    result = fetch_isolating(client, KEYS, validate=check_ticket)

    assert sorted(result["failed"]) == sorted(bad)
    assert len(result["tickets"]) == len(KEYS) - len(bad)
    assert "HTTP 500" in result["failed"]["OPS-3"] and "could not load 1 of 1" in result["failed"]["OPS-50"]


def test_an_all_bad_batch_stays_within_the_split_budget(site):
    standin, client = site
    for key in KEYS:
        standin.inject_key_fault(key, "server_error")
    client.max_retries = (
        0  # each failing request would otherwise wait out its retries: the count is the point
    )

    result = fetch_isolating(client, KEYS, validate=check_ticket)

    calls = 1 + split_budget(len(KEYS))  # bulk fetch calls, each sent once: no retries here
    assert len(standin.bulk_fetch_requests()) == calls
    assert result["requests"] == calls + 1  # and the probe
    # Keys reached alone failed; the rest is unresolved (for the next run), none lost, none fetched.
    assert result["failed"] and result["unresolved"] and result["tickets"] == []
    assert sorted([*result["failed"], *result["unresolved"]]) == sorted(KEYS)
    assert all("HTTP 500" in why for why in result["failed"].values())


def test_a_passing_hiccup_of_the_bulk_endpoint_is_split_at_once_and_blames_no_key(site):
    standin, client = site
    # The whole batch's request and its retries fail; Jira still answers /myself; then it recovers.
    standin.inject_fault(500, count=1 + client.max_retries, path_prefix="/rest/api/3/issue/bulkfetch")
    result = fetch_batch(client, KEYS)
    assert result["failed"] == {} and len(result["tickets"]) == len(KEYS)
    # The failed request and its retries, the probe, the two halves.
    assert result["requests"] == 1 + client.max_retries + 1 + 2


def test_an_unreachable_jira_is_raised_and_blames_no_key(site):
    standin, client = site
    standin.inject_fault(503, count=1000)
    with pytest.raises(JiraUnavailable):
        fetch_isolating(client, KEYS, validate=check_ticket)
    # The whole batch (with its retries) and one /myself probe (with its retries): no split requests.
    assert standin.request_count("/rest/api/3/issue/bulkfetch") == 1 + client.max_retries
    assert standin.request_count("/rest/api/3/myself") == 1 + client.max_retries


def test_a_refused_request_is_split_and_the_client_keeps_its_retries(site):
    standin, client = site
    standin.inject_fault(400, count=1, path_prefix="/rest/api/3/issue/bulkfetch")
    result = fetch_isolating(client, KEYS, validate=check_ticket)
    # The refusal was for that one request: the refused request, the probe, the two halves.
    assert result["failed"] == {} and len(result["tickets"]) == len(KEYS) and result["requests"] == 4
    assert client.max_retries == 2  # restored after the split
