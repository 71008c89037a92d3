"""pytest fixtures for the Jira Cloud stand-in: one server per session, reset before every test."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import pytest

from devkit.jira_standin import JiraStandin

STANDIN_EMAIL = "bot@example.com"


@pytest.fixture(scope="session")
def jira_standin_server() -> Iterator[JiraStandin]:
    """The session's stand-in, listening on a free loopback port."""
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
    yield standin
    standin.stop()


@pytest.fixture
def jira_standin(jira_standin_server: JiraStandin) -> Iterator[JiraStandin]:
    """The stand-in, empty: no issues or projects, no faults, no latency, UTC, an empty request log.

    The client's per-process memory of a site refusing 1000-issue bulk fetches is cleared too: every
    test's site is the same URL.
    """
    from include.jira_cloud import forget_bulk_limits

    jira_standin_server.reset()
    forget_bulk_limits()
    yield jira_standin_server
    jira_standin_server.reset()
    forget_bulk_limits()


@pytest.fixture
def jira_conn_env(jira_standin: JiraStandin, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """AIRFLOW_CONN_JIRA_DEFAULT pointing at the stand-in; returns the connection dict."""
    conn = jira_standin.airflow_conn()
    monkeypatch.setenv("AIRFLOW_CONN_JIRA_DEFAULT", json.dumps(conn))
    return conn
