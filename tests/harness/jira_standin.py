"""pytest fixtures for the Jira Cloud stand-in: one server per session, reset before every test."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import pytest

from devkit.jira_standin import JiraStandin

STANDIN_EMAIL = "bot@example.com"


def _started_standin() -> JiraStandin:
    """A fresh stand-in listening on a free loopback port."""
    standin = JiraStandin(
        "127.0.0.1",
        0,
        email=STANDIN_EMAIL,
        api_token=f"standin-token-{secrets.token_hex(12)}",
        time_zone="UTC",
    )
    try:
        standin.start()
    except OSError as exc:
        pytest.fail(f"the Jira stand-in could not listen on 127.0.0.1: {exc}")
    return standin


@pytest.fixture(scope="session")
def jira_standin_server() -> Iterator[JiraStandin]:
    """The session's stand-in, listening on a free loopback port."""
    standin = _started_standin()
    yield standin
    standin.stop()


@pytest.fixture
def second_jira_standin() -> Iterator[JiraStandin]:
    """A second Jira site (#23): its own stand-in on its own port, its own issues and request log."""
    standin = _started_standin()
    try:
        yield standin
    finally:
        standin.stop()


@pytest.fixture
def jira_standin(jira_standin_server: JiraStandin) -> Iterator[JiraStandin]:
    """The stand-in, empty: no issues or projects, no faults, no latency, UTC, an empty request log.

    The client's per-process memory of a site refusing 1000-issue bulk fetches is cleared too: every
    test's site is the same URL.
    """
    from include.jira_cloud import forget_bulk_limits
    from include.jira_datacenter import forget_flavors

    jira_standin_server.reset()
    forget_bulk_limits()
    forget_flavors()
    yield jira_standin_server
    jira_standin_server.reset()
    forget_bulk_limits()
    forget_flavors()


@pytest.fixture
def jira_conn_env(jira_standin: JiraStandin, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """AIRFLOW_CONN_JIRA_DEFAULT pointing at the stand-in; returns the connection dict."""
    conn = jira_standin.airflow_conn()
    monkeypatch.setenv("AIRFLOW_CONN_JIRA_DEFAULT", json.dumps(conn))
    return conn


# Jira Data Center (#24): the same session stand-in, switched to its Data Center mode for one test.
DC_PERSONAL_ACCESS_TOKEN = "standin-pat-" + secrets.token_hex(12)


@pytest.fixture
def jira_dc_standin(jira_standin: JiraStandin) -> JiraStandin:
    """The empty stand-in serving as Jira Data Center, with a personal access token (Bearer)."""
    jira_standin.use_flavor("datacenter", personal_access_token=DC_PERSONAL_ACCESS_TOKEN)
    return jira_standin


@pytest.fixture(params=["cloud", "datacenter"])
def jira_flavor(
    request: pytest.FixtureRequest, jira_standin: JiraStandin, monkeypatch: pytest.MonkeyPatch
) -> str:
    """Run a test once against Jira Cloud and once against Data Center: the stand-in and the
    jira_default connection (PAT, extra flavor) follow; either fixture order works."""
    if request.param == "datacenter":
        jira_standin.use_flavor("datacenter", personal_access_token=DC_PERSONAL_ACCESS_TOKEN)
    monkeypatch.setenv("AIRFLOW_CONN_JIRA_DEFAULT", json.dumps(jira_standin.airflow_conn()))
    return request.param
