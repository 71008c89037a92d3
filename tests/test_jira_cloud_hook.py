"""JiraCloudHook: cheap to construct, builds its client lazily from an Airflow `jira` connection."""

from __future__ import annotations

import json
import logging

import pytest
from airflow.sdk.exceptions import AirflowNotFoundException
from jira_mail_sync.hooks.jira_cloud import JiraCloudHook

from include.jira_cloud import JiraCloudClient, JiraUnavailable


def set_connection(monkeypatch, conn_id: str, **conn) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "jira", **conn}))


def test_constructing_the_hook_looks_nothing_up(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_NO_SUCH_JIRA", raising=False)

    hook = JiraCloudHook("no_such_jira")

    assert hook.jira_conn_id == "no_such_jira"
    with pytest.raises(AirflowNotFoundException):
        hook.get_conn()


def test_get_conn_builds_one_client_from_the_connection_and_reaches_jira(jira_conn_env, jira_standin):
    jira_standin.set_time_zone("Australia/Sydney")
    hook = JiraCloudHook()

    client = hook.get_conn()

    assert isinstance(client, JiraCloudClient) and hook.get_conn() is client
    assert hook.site_url == jira_conn_env["host"]
    assert client.account_time_zone() == "Australia/Sydney"
    assert client.myself()["emailAddress"] == jira_conn_env["login"]
    hook.close()


def test_site_url_needs_no_jira_request_and_adds_https_when_the_scheme_is_missing(monkeypatch, jira_standin):
    set_connection(
        monkeypatch, "jira_bare", host="acme.atlassian.net", login="bot@example.com", password="t-1"
    )
    set_connection(
        monkeypatch,
        "jira_port",
        host="jira.internal.example",
        port=8443,
        login="bot@example.com",
        password="t-2",
    )

    assert JiraCloudHook("jira_bare").site_url == "https://acme.atlassian.net"
    assert JiraCloudHook("jira_port").site_url == "https://jira.internal.example:8443"
    assert JiraCloudHook("jira_bare").get_conn().site_url == "https://acme.atlassian.net"
    assert jira_standin.request_count() == 0


SECRET = "ATATT3xFfGF0-not-a-real-token"


@pytest.mark.parametrize(
    "host",
    [
        f"bot@example.com:{SECRET}",  # e-mail and token typed into the host field
        f"https://bot:{SECRET}@acme.atlassian.net",
        f"https://acme.atlassian.net?token={SECRET}",
        f"{SECRET} acme.atlassian.net",
        SECRET + "@",
    ],
)
def test_a_credential_typed_into_the_host_is_refused_and_never_echoed(monkeypatch, jira_standin, host):
    set_connection(monkeypatch, "jira_leaky", host=host, login="bot@example.com", password="t-9")
    hook = JiraCloudHook("jira_leaky")
    for attempt in (lambda: hook.site_url, hook.get_conn):
        with pytest.raises(ValueError) as caught:
            attempt()
        assert "site URL" in str(caught.value)
        assert SECRET not in str(caught.value) and "ATATT" not in repr(caught.value)
    assert jira_standin.request_count() == 0


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (None, True),
        ({"verify": False}, False),
        ({"verify": "false"}, False),
        ({"verify": "True"}, True),
        ({"verify": "/etc/ssl/certs/corporate-ca.pem"}, "/etc/ssl/certs/corporate-ca.pem"),
    ],
)
def test_verify_extra_is_a_bool_or_a_ca_bundle_path(monkeypatch, extra, expected):
    conn = {"host": "https://acme.atlassian.net", "login": "bot@example.com", "password": "t-3"}
    if extra is not None:
        conn["extra"] = extra
    set_connection(monkeypatch, "jira_verify", **conn)

    assert JiraCloudHook("jira_verify").get_conn().verify == expected


def test_hook_options_reach_the_client(jira_conn_env, jira_standin):
    jira_standin.inject_fault(500, count=5)
    hook = JiraCloudHook(timeout=2.5, max_retries=0, max_retry_wait=1.0)

    client = hook.get_conn()
    with pytest.raises(JiraUnavailable):
        client.myself()

    assert (client.timeout, client.max_retries, client.max_retry_wait) == (2.5, 0, 1.0)
    assert jira_standin.request_count() == 1


def test_context_manager_closes_the_client_and_a_later_get_conn_builds_a_new_one(jira_conn_env):
    with JiraCloudHook() as hook:
        first = hook.get_conn()
        assert first.myself()["emailAddress"] == jira_conn_env["login"]

    assert hook.get_conn() is not first
    hook.close()


def test_a_connection_without_token_is_a_clear_error(monkeypatch):
    set_connection(monkeypatch, "jira_half", host="https://acme.atlassian.net", login="bot@example.com")

    with pytest.raises(ValueError, match="API token"):
        JiraCloudHook("jira_half").get_conn()


def test_the_hook_has_no_connection_form_methods_airflow_would_never_call():
    # Conn type `jira` resolves to the provider's JiraHook; check_connections does the checking.
    assert {"test_connection", "get_ui_field_behaviour"} & set(vars(JiraCloudHook)) == set()
    assert JiraCloudHook.default_conn_name == "jira_default"


def test_the_api_token_stays_out_of_the_hook_logs(jira_conn_env, caplog, capfd):
    caplog.set_level(logging.DEBUG)

    with JiraCloudHook() as hook:
        hook.get_conn().myself()

    out, err = capfd.readouterr()
    assert "rest/api/3/myself" in caplog.text  # the client's request was logged
    assert jira_conn_env["password"] not in caplog.text + out + err
