"""Jira scoped API tokens: cloudId discovery, every call through the API gateway, the site path refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from jira_mail_sync.hooks.jira_cloud import JiraCloudHook

from devkit.jira_standin.server import TENANT_INFO_PATH
from devkit.mail_factory import jira_notification
from include import jira_cloud
from include.jira_cloud import JiraCloudClient, JiraRequestError
from include.ticket_store import ensure_table, get_ticket
from tests.harness.airflow_env import load_dag, run_dag

T0 = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)


@pytest.fixture
def scoped_site(jira_standin, monkeypatch):
    """The stand-in with a scoped token (site path refused), `jira_default` in its scoped form."""
    jira_cloud.forget_cloud_ids()
    jira_standin.scoped_token = True
    monkeypatch.setenv("AIRFLOW_CONN_JIRA_DEFAULT", json.dumps(jira_standin.airflow_conn(scoped=True)))
    yield jira_standin
    jira_cloud.forget_cloud_ids()


def scoped_client(standin, **options) -> JiraCloudClient:
    return JiraCloudClient(
        standin.url, standin.email, standin.api_token, scoped_token=True, api_base_url=standin.url, **options
    )


def paths(standin) -> list[str]:
    return [entry.path for entry in standin.requests]


def test_the_cloud_id_is_discovered_once_per_process_and_every_call_goes_through_the_gateway(scoped_site):
    scoped_site.add_issue("ABC-1", summary="Through the gateway", updated=T0)
    with scoped_client(scoped_site) as client:
        assert client.myself()["emailAddress"] == scoped_site.email
        assert [i["key"] for i in client.bulk_fetch(["ABC-1"]).issues] == ["ABC-1"]
        assert list(client.search_keys("project = ABC")) == ["ABC-1"]
        assert client.get_issue("ABC-1")["self"].startswith(f"{scoped_site.url}{scoped_site.gateway_prefix}/")
        assert client.rest_base_url == f"{scoped_site.url}/ex/jira/{scoped_site.cloud_id}"
    with scoped_client(scoped_site) as second:
        second.myself()

    prefix = scoped_site.gateway_prefix
    assert paths(scoped_site) == [
        TENANT_INFO_PATH,
        f"{prefix}/rest/api/3/myself",
        f"{prefix}/rest/api/3/issue/bulkfetch",
        f"{prefix}/rest/api/3/search/jql",
        f"{prefix}/rest/api/3/issue/ABC-1",
        f"{prefix}/rest/api/3/myself",
    ]
    assert {entry.status for entry in scoped_site.requests} == {200}


def test_a_given_cloud_id_needs_no_discovery(scoped_site):
    with scoped_client(scoped_site, cloud_id=scoped_site.cloud_id) as client:
        client.myself()
    assert paths(scoped_site) == [f"{scoped_site.gateway_prefix}/rest/api/3/myself"]


def test_the_site_path_refuses_a_scoped_token_and_the_error_names_the_extra(scoped_site):
    with JiraCloudClient(scoped_site.url, scoped_site.email, scoped_site.api_token) as client:
        with pytest.raises(JiraRequestError) as caught:
            client.myself()

    assert caught.value.status == 401
    assert (
        "a scoped API token, the only kind a service account has, needs the extra scoped_token: true"
        in str(caught.value)
    )
    assert scoped_site.api_token not in str(caught.value)
    assert paths(scoped_site) == ["/rest/api/3/myself"]


def test_a_wrong_scoped_token_on_the_gateway_names_the_scopes(scoped_site):
    client = JiraCloudClient(
        scoped_site.url, scoped_site.email, "not-the-token", scoped_token=True, api_base_url=scoped_site.url
    )
    with pytest.raises(JiraRequestError, match="scoped API token were not accepted") as caught:
        client.myself()
    assert "read:jira-work, read:jira-user" in str(caught.value)
    assert caught.value.status == 401


def test_another_sites_cloud_id_is_not_found_on_the_gateway(scoped_site):
    with scoped_client(scoped_site, cloud_id="00000000-0000-4000-8000-000000000000") as client:
        with pytest.raises(JiraRequestError, match="HTTP 404: Not Found") as caught:
            client.myself()
    assert "through " in str(caught.value) and "/ex/jira/00000000-0000-4000-8000-000000000000" in str(
        caught.value
    )


def test_a_site_without_tenant_info_says_to_set_cloud_id(scoped_site):
    client = JiraCloudClient(
        f"{scoped_site.url}/not-a-site", scoped_site.email, scoped_site.api_token, scoped_token=True
    )
    with pytest.raises(
        JiraRequestError, match=r"answered HTTP 401\): check the host, or set the connection's extra cloud_id"
    ):
        client.myself()


@pytest.mark.parametrize("bad", ["../../rest", "x" * 80, "abc"])
def test_a_cloud_id_that_cannot_be_one_is_refused_before_any_request(scoped_site, bad):
    with pytest.raises(ValueError, match="cloud_id must be the site's cloudId"):
        scoped_client(scoped_site, cloud_id=bad)
    assert paths(scoped_site) == []


def test_the_hook_reads_the_scoped_extras_and_keeps_the_site_as_the_tenant(scoped_site, monkeypatch):
    conn = scoped_site.airflow_conn(scoped=True)
    conn["extra"] = {"scoped_token": "yes", "api_base_url": scoped_site.url, "cloud_id": scoped_site.cloud_id}
    monkeypatch.setenv("AIRFLOW_CONN_JIRA_SCOPED", json.dumps(conn))
    hook = JiraCloudHook("jira_scoped")

    client = hook.get_conn()

    assert (client.scoped_token, client.cloud_id, hook.site_url) == (
        True,
        scoped_site.cloud_id,
        scoped_site.url,
    )
    monkeypatch.setenv("AIRFLOW_CONN_JIRA_SCOPED", json.dumps(conn | {"extra": {"scoped_token": "maybe"}}))
    with pytest.raises(ValueError, match="extra scoped_token must be true or false, got 'maybe'"):
        JiraCloudHook("jira_scoped").get_conn()


def test_the_rest_channels_jira_lookup_goes_through_the_gateway(scoped_site):
    from jira_mail_sync.rest_api import _from_jira

    scoped_site.add_issue("ABC-7", summary="Asked over REST", updated=T0)

    assert _from_jira("ABC-7").summary == "Asked over REST"
    assert paths(scoped_site) == [TENANT_INFO_PATH, f"{scoped_site.gateway_prefix}/rest/api/3/issue/ABC-7"]


def test_check_connections_reports_the_gateway(scoped_site):
    from jira_mail_sync.check_connections import check_jira

    ok, message = check_jira()

    assert ok is True
    assert message.startswith(f"{scoped_site.url} through {scoped_site.url}/ex/jira/{scoped_site.cloud_id}: ")


def stored(store_backend, key):
    conn = store_backend.connect()
    try:
        ensure_table(conn, store_backend.dialect)
        return get_ticket(conn, store_backend.dialect, key)
    finally:
        conn.close()


@pytest.mark.airflow
@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_jira_inbox_runs_end_to_end_with_a_scoped_token(
    airflow_db, scoped_site, imap_conn_env, store_conn_env
):
    scoped_site.add_issue("ABC-3", summary="Scoped inbox", updated=T0)
    # The mail comes from the site (the connection's host), which stays the trusted sender by default.
    imap_conn_env.append(jira_notification("ABC-3", site="127.0.0.1"))

    result = run_dag(load_dag("jira_inbox"), conf={})

    assert result.state == "success", result.states
    assert stored(store_conn_env, "ABC-3")["summary"] == "Scoped inbox"
    assert imap_conn_env.unseen_count() == 0
    api_paths = [p for p in paths(scoped_site) if p != TENANT_INFO_PATH]
    assert api_paths and all(p.startswith(f"{scoped_site.gateway_prefix}/rest/api/3/") for p in api_paths)
    assert {entry.status for entry in scoped_site.requests} == {200}


@pytest.mark.airflow
@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_jira_sweep_runs_end_to_end_with_a_scoped_token(airflow_db, scoped_site, store_conn_env):
    scoped_site.add_issue("ABC-4", summary="Scoped sweep", updated=T0)
    since, until = T0 - timedelta(minutes=10), T0 + timedelta(minutes=5)

    result = run_dag(
        load_dag("jira_sweep"),
        conf={"since": since.isoformat(), "until": until.isoformat(), "lookback_minutes": 0},
    )

    assert result.state == "success", result.states
    assert stored(store_conn_env, "ABC-4")["summary"] == "Scoped sweep"
    prefix = scoped_site.gateway_prefix
    api_paths = [p for p in paths(scoped_site) if p != TENANT_INFO_PATH]
    assert {p.removeprefix(prefix) for p in api_paths} == {
        "/rest/api/3/myself",
        "/rest/api/3/search/jql",
        "/rest/api/3/issue/bulkfetch",
    }
    assert all(p.startswith(prefix) for p in api_paths)
