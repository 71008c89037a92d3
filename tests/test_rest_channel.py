"""The REST channel served by a real `airflow api-server`: Airflow tokens required, store first, then Jira."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jira_mail_sync.rest_api import JIRA_MAX_RETRIES, MAX_BODY_BYTES

from devkit.jira_standin import JiraStandin
from devkit.processes import LOOPBACK, free_port, stop_process_group
from devkit.unavailable import service_unavailable
from include.jira_cloud import JiraCloudClient, ticket_details
from include.ticket_store import ensure_table, get_ticket, mark_gone, upsert_tickets
from tests.harness.api_server import start_api_server

REPO = Path(__file__).resolve().parents[1]
TICKET_PATH = "/jira-mail-sync/ticket"
# Not the default on purpose: a row older than the default but younger than this is served from the
# store only if the api-server really reads the setting.
STORE_MAX_AGE = timedelta(seconds=900)
STARTUP_TIMEOUT_S = 90
MAX_CONCURRENT_LOOKUPS = 2
NOT_FOUND_CACHE_SECONDS = 60
REQUEST_TIMEOUT_S = 30

pytestmark = pytest.mark.airflow


@dataclass
class RestServer:
    """A running api-server with the plugin, its stand-in Jira and SQLite store, and an admin token."""

    url: str
    standin: JiraStandin
    store_path: Path
    jwt_secret: str = field(repr=False)
    log_path: Path
    token: str = field(default="", repr=False)
    tokens_sent: list[str] = field(default_factory=list, repr=False)

    def post_ticket(self, body: Any, token: str | None = None, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            self.tokens_sent.append(token)
            headers["Authorization"] = f"Bearer {token}"
        data = body if isinstance(body, str | bytes) else json.dumps(body)
        return requests.post(
            self.url + TICKET_PATH, data=data, headers=headers, timeout=REQUEST_TIMEOUT_S, **kwargs
        )

    def log_tail(self, max_chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-max_chars:] if self.log_path.exists() else ""

    def store(self) -> sqlite3.Connection:
        return sqlite3.connect(self.store_path)


@pytest.fixture(scope="module")
def rest_server(airflow_db: str, dovecot) -> Iterator[RestServer]:
    """`airflow api-server` on a free loopback port, simple auth manager, connections as env vars.

    `imap_default` is a Dovecot account, for the status routes the same app serves.
    """
    work = Path(tempfile.mkdtemp(prefix="jms-rest-"))
    standin = JiraStandin(
        LOOPBACK, 0, email="bot@example.com", api_token=f"standin-{secrets.token_hex(12)}", time_zone="UTC"
    )
    try:
        standin.start()
    except OSError as exc:
        service_unavailable(f"the Jira stand-in could not listen on {LOOPBACK}: {exc}")
    store_path = work / "jira_store.db"
    with contextlib.closing(sqlite3.connect(store_path)) as conn:
        ensure_table(conn, "sqlite")
    admin_password = secrets.token_urlsafe(12)
    passwords_file = work / "passwords.json"
    passwords_file.write_text(json.dumps({"admin": admin_password}))
    port = free_port()
    server = RestServer(
        url=f"http://{LOOPBACK}:{port}",
        standin=standin,
        store_path=store_path,
        jwt_secret=secrets.token_urlsafe(64),
        log_path=work / "api-server.log",
    )
    process = None
    try:
        process = start_api_server(
            port=port,
            jwt_secret=server.jwt_secret,
            passwords_file=passwords_file,
            log_path=server.log_path,
            cwd=work,
            settings={
                "AIRFLOW__JIRA_MAIL_SYNC__STORE_MAX_AGE_SECONDS": str(int(STORE_MAX_AGE.total_seconds())),
                "AIRFLOW__JIRA_MAIL_SYNC__REST_MAX_CONCURRENT_LOOKUPS": str(MAX_CONCURRENT_LOOKUPS),
                "AIRFLOW__JIRA_MAIL_SYNC__REST_NOT_FOUND_CACHE_SECONDS": str(NOT_FOUND_CACHE_SECONDS),
                "AIRFLOW__JIRA_MAIL_SYNC__REST_PROJECTS": "ABC, ops",
                "AIRFLOW_CONN_JIRA_STORE": json.dumps({"conn_type": "sqlite", "host": str(store_path)}),
                "AIRFLOW_CONN_JIRA_DEFAULT": json.dumps(standin.airflow_conn()),
                "AIRFLOW_CONN_IMAP_DEFAULT": json.dumps(dovecot.create_account().airflow_conn()),
            },
        )
        answer = requests.post(
            f"{server.url}/auth/token",
            json={"username": "admin", "password": admin_password},
            timeout=REQUEST_TIMEOUT_S,
        )
        assert answer.status_code == 201, f"POST /auth/token: {answer.status_code} {answer.text}"
        server.token = answer.json()["access_token"]
        yield server
    finally:
        if process is not None:
            stop_process_group(process, timeout_s=20)
        if os.environ.get("JMS_KEEP_REST_LOG"):
            shutil.copy(server.log_path, os.environ["JMS_KEEP_REST_LOG"])
        standin.stop()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def server(rest_server: RestServer) -> Iterator[RestServer]:
    """The module's server with an empty Jira and an empty store."""
    rest_server.standin.reset()
    with contextlib.closing(rest_server.store()) as conn, conn:
        conn.execute("DELETE FROM jira_ticket")
    yield rest_server
    rest_server.standin.clear_faults()


def store_ticket(server: RestServer, jira_issue: dict[str, Any], *, fetched_at: datetime) -> dict[str, Any]:
    """Put Jira's view of an issue into the store as the sweep would, and return the stored row."""
    with contextlib.closing(server.store()) as conn:
        upsert_tickets(conn, "sqlite", [ticket_details(jira_issue)], source="sweep", fetched_at=fetched_at)
        stored = get_ticket(conn, "sqlite", jira_issue["key"])
    assert stored is not None
    return stored


def issue_requests(server: RestServer) -> int:
    return server.standin.request_count("/rest/api/3/issue/", method="GET")


def minted_token(server: RestServer, *, secret: str | None = None, **claim_changes: Any) -> str:
    """A token like the one /auth/token issued, re-signed by Airflow's own JWTGenerator with changes."""
    from airflow.api_fastapi.auth.tokens import JWTGenerator

    issued = jwt.decode(server.token, options={"verify_signature": False})
    algorithm = jwt.get_unverified_header(server.token)["alg"]
    lifetime = claim_changes.pop("valid_for", issued["exp"] - issued["iat"])
    audience = claim_changes.pop("aud", issued.get("aud"))
    user_claims = {k: v for k, v in issued.items() if k not in {"jti", "iss", "aud", "nbf", "exp", "iat"}}
    generator = JWTGenerator(
        secret_key=secret or server.jwt_secret,
        valid_for=lifetime,
        audience=audience,
        issuer=issued.get("iss"),
        algorithm=algorithm,
    )
    return generator.generate(extras={**user_claims, **claim_changes})


def test_request_without_a_token_is_refused_with_a_bearer_challenge(server: RestServer) -> None:
    server.standin.add_issue("ABC-123", summary="Seed ticket", assignee_email="dev@example.com")

    missing = server.post_ticket({"key": "ABC-123"})
    not_bearer = server.post_ticket({"key": "ABC-123"}, headers={"Authorization": "Basic YWRtaW46YWRtaW4="})

    for answer in (missing, not_bearer):
        assert answer.status_code == 401, answer.text
        assert answer.headers["WWW-Authenticate"] == "Bearer"
        assert "/auth/token" in answer.json()["detail"]
    assert issue_requests(server) == 0


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda s: "not-a-jwt", id="garbage"),
        pytest.param(lambda s: minted_token(s, secret=secrets.token_urlsafe(64)), id="other-signing-key"),
        pytest.param(lambda s: minted_token(s, aud="some-other-service"), id="wrong-audience"),
        pytest.param(lambda s: minted_token(s, valid_for=-3600), id="expired"),
    ],
)
def test_token_airflow_rejects_is_refused_as_invalid_token(server: RestServer, make_token) -> None:
    server.standin.add_issue("ABC-123", summary="Seed ticket", assignee_email="dev@example.com")
    token = make_token(server)
    # Airflow's own API is the reference for which tokens are bad; it says 401 or 403.
    airflow_answer = requests.get(
        f"{server.url}/api/v2/dags", headers={"Authorization": f"Bearer {token}"}, timeout=REQUEST_TIMEOUT_S
    )
    assert airflow_answer.status_code in (401, 403), airflow_answer.text

    answer = server.post_ticket({"key": "ABC-123"}, token=token)

    assert answer.status_code == 401, answer.text
    assert answer.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    assert token not in answer.text
    assert issue_requests(server) == 0


def test_expired_token_is_told_apart_from_a_forged_one(server: RestServer) -> None:
    expired = server.post_ticket({"key": "ABC-123"}, token=minted_token(server, valid_for=-3600))
    forged = server.post_ticket(
        {"key": "ABC-123"}, token=minted_token(server, secret=secrets.token_urlsafe(64))
    )

    assert expired.status_code == forged.status_code == 401
    assert "expired" in expired.json()["detail"]
    assert "expired" not in forged.json()["detail"]


def test_token_minted_like_airflows_is_accepted(server: RestServer) -> None:
    # Proves the rejections above are due to the one claim or key that was changed, nothing else.
    issue = server.standin.add_issue("ABC-123", summary="Seed ticket", assignee_email="dev@example.com")

    answer = server.post_ticket({"key": "ABC-123"}, token=minted_token(server))

    assert answer.status_code == 200, answer.text
    assert answer.json()["key"] == issue["key"]


def test_fresh_store_row_answers_the_seed_request_without_asking_jira(server: RestServer) -> None:
    jira_now = server.standin.add_issue(
        "ABC-123",
        summary="Seed ticket",
        assignee_email="zato@example.com",
        progress=(10, 30),
        updated=datetime(2026, 11, 27, 9, 30, tzinfo=UTC),
    )
    # Older than the default max age, younger than the configured one.
    stored = store_ticket(server, jira_now, fetched_at=datetime.now(UTC) - STORE_MAX_AGE / 2)
    # Jira moved on since; a fresh row is still what the channel answers.
    server.standin.update_issue("ABC-123", assignee_email="someone-else@example.com", progress=(20, 30))
    server.standin.clear_requests()

    # As in the seed: `curl -d '{"key":"ABC-123"}'`, which says the body is a form.
    answer = server.post_ticket(
        '{"key":"ABC-123"}',
        token=server.token,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["assigned_to"] == stored["assignee_email"] == "zato@example.com"
    assert body["progress_info"] == stored["progress"]
    assert {"progress": 10, "total": 30}.items() <= body["progress_info"].items()
    assert body["source"] == "store"
    assert body["key"] == "ABC-123"
    assert datetime.fromisoformat(body["updated_at"]) == stored["updated_at"]
    assert issue_requests(server) == 0


def test_stale_store_row_is_answered_from_jira_and_left_as_it_was(server: RestServer) -> None:
    before = server.standin.add_issue(
        "ABC-7", summary="Old", assignee_email="old@example.com", progress=(1, 8)
    )
    stored = store_ticket(server, before, fetched_at=datetime.now(UTC) - 2 * STORE_MAX_AGE)
    now = server.standin.update_issue("ABC-7", assignee_email="b@example.com", progress=(6, 8))
    expected = ticket_details(now)

    answer = server.post_ticket({"key": "ABC-7"}, token=server.token)

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["source"] == "jira"
    assert body["assigned_to"] == expected["assignee_email"] == "b@example.com"
    assert body["progress_info"] == expected["progress"]
    assert body["status"] == expected["status"]
    assert issue_requests(server) == 1
    with contextlib.closing(server.store()) as conn:
        assert get_ticket(conn, "sqlite", "ABC-7") == stored


def test_a_fresh_row_jira_confirmed_gone_is_not_served_jira_answers_404(server: RestServer) -> None:
    issue = server.standin.add_issue("ABC-8", summary="Soon gone")
    store_ticket(server, issue, fetched_at=datetime.now(UTC) - STORE_MAX_AGE / 2)
    with contextlib.closing(server.store()) as conn:
        assert mark_gone(conn, "sqlite", ["ABC-8"], confirmed_at=datetime.now(UTC)) == ["ABC-8"]
    server.standin.remove_issue("ABC-8")

    answer = server.post_ticket({"key": "ABC-8"}, token=server.token)

    assert answer.status_code == 404, answer.text
    assert issue_requests(server) == 1


def test_key_missing_from_the_store_is_looked_up_in_jira_case_insensitively(server: RestServer) -> None:
    issue = server.standin.add_issue("OPS-42", summary="Disk full", progress=(0, 0))
    expected = ticket_details(issue)

    answer = server.post_ticket({"key": " ops-42 "}, token=server.token)

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["key"] == "OPS-42"
    assert body["assigned_to"] is None
    assert body["progress_info"] == expected["progress"]
    assert body["summary"] == expected["summary"]
    assert body["source"] == "jira"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"key": "ABC123"}, id="no-dash"),
        pytest.param({"key": "ABC-0"}, id="issue-number-zero"),
        pytest.param({"key": "1BC-5"}, id="project-starts-with-digit"),
        pytest.param({"key": "ABC-5/../../myself"}, id="path-injection"),
        pytest.param({"key": ""}, id="empty"),
        pytest.param({"key": 123}, id="not-a-string"),
        pytest.param({"id": "ABC-5"}, id="no-key"),
        pytest.param('{"key": "ABC-5"', id="not-json"),
    ],
)
def test_malformed_request_is_rejected_with_422_before_jira_is_asked(server: RestServer, body) -> None:
    answer = server.post_ticket(body, token=server.token)

    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert isinstance(detail, list) and detail and all(error["loc"][0] == "body" for error in detail)
    assert server.standin.requests == []


def test_unknown_key_is_404(server: RestServer) -> None:
    server.standin.add_issue("ABC-1", summary="Another issue")

    answer = server.post_ticket({"key": "ABC-999"}, token=server.token)

    assert answer.status_code == 404, answer.text
    assert "ABC-999" in answer.json()["detail"]
    assert issue_requests(server) == 1  # a 404 is an answer, not retried


def test_a_404_is_remembered_so_repeated_misses_do_not_each_ask_jira(server: RestServer) -> None:
    answers = [server.post_ticket({"key": "ABC-404"}, token=server.token) for _ in range(3)]

    assert [answer.status_code for answer in answers] == [404, 404, 404]
    assert issue_requests(server) == 1


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_remembered_404_is_forgotten_once_the_setting_s_seconds_have_passed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jira_mail_sync.rest_api import LookupLimits

    monkeypatch.setenv("AIRFLOW__JIRA_MAIL_SYNC__REST_NOT_FOUND_CACHE_SECONDS", "60")
    clock = FakeClock()
    limits = LookupLimits(clock=clock)
    limits.remember_missing("ABC-404")

    clock.now += 59.9
    assert limits.known_missing("ABC-404")
    clock.now += 0.1
    assert not limits.known_missing("ABC-404")
    assert not limits.known_missing("ABC-405")


def test_a_404_is_not_remembered_when_the_setting_is_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    from jira_mail_sync.rest_api import LookupLimits

    monkeypatch.setenv("AIRFLOW__JIRA_MAIL_SYNC__REST_NOT_FOUND_CACHE_SECONDS", "0")
    limits = LookupLimits(clock=FakeClock())
    limits.remember_missing("ABC-404")

    assert not limits.known_missing("ABC-404")


def test_key_of_a_project_outside_rest_projects_is_403_without_store_or_jira(server: RestServer) -> None:
    server.standin.add_issue("HR-7", summary="Salary review")

    answer = server.post_ticket({"key": "HR-7"}, token=server.token)

    assert answer.status_code == 403, answer.text
    assert answer.json()["detail"] == "This channel answers only for the synced projects (ABC, OPS)"
    assert server.standin.requests == []


@pytest.mark.parametrize("row", ["missing", "stale"])
def test_an_issue_moved_out_of_the_synced_projects_is_403_and_shows_nothing_of_it(
    server: RestServer, row: str
) -> None:
    issue = server.standin.add_issue("ABC-31", summary="Public at first", assignee_email="dev@example.com")
    if row == "stale":
        store_ticket(server, issue, fetched_at=datetime.now(UTC) - 2 * STORE_MAX_AGE)
    server.standin.move_issue("ABC-31", "HR-9")
    server.standin.update_issue("HR-9", summary="Salary of the CEO", assignee_email="hr-boss@example.com")

    answer = server.post_ticket({"key": "ABC-31"}, token=server.token)

    assert answer.status_code == 403, answer.text
    assert answer.json() == {"detail": "This channel answers only for the synced projects (ABC, OPS)"}
    assert issue_requests(server) == 1  # it was Jira's answer that showed the move


def test_an_issue_moved_between_synced_projects_is_answered_under_its_new_key(server: RestServer) -> None:
    server.standin.add_issue("ABC-32", summary="Moving on", assignee_email="dev@example.com")
    server.standin.move_issue("ABC-32", "OPS-77")

    answer = server.post_ticket({"key": "ABC-32"}, token=server.token)

    assert answer.status_code == 200, answer.text
    assert (answer.json()["key"], answer.json()["assigned_to"]) == ("OPS-77", "dev@example.com")


def test_a_body_over_4_kib_is_413_before_it_is_read(server: RestServer) -> None:
    padded = json.dumps({"key": "ABC-1", "pad": "x" * MAX_BODY_BYTES})
    just_fits = json.dumps({"key": "ABC-1", "pad": "x" * (MAX_BODY_BYTES - 30)})
    assert len(just_fits) <= MAX_BODY_BYTES < len(padded)

    declared = server.post_ticket(padded, token=server.token)
    # A generator makes requests send it chunked, without Content-Length: only counting can tell.
    chunked = requests.post(
        server.url + TICKET_PATH,
        data=(padded[i : i + 512].encode() for i in range(0, len(padded), 512)),
        headers={"Authorization": f"Bearer {server.token}"},
        timeout=REQUEST_TIMEOUT_S,
    )
    assert "Content-Length" not in chunked.request.headers
    fits = server.post_ticket(just_fits, token=server.token)

    for answer in (declared, chunked):
        assert answer.status_code == 413, answer.text
        assert str(MAX_BODY_BYTES) in answer.json()["detail"]
    assert fits.status_code == 404, fits.text  # read whole, validated, asked Jira
    assert issue_requests(server) == 1


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("[" * (MAX_BODY_BYTES - 1), id="deep-arrays"),
        pytest.param('{"key":' * 500 + '"ABC-1"' + "}" * 500, id="deep-objects"),
        pytest.param(b"\xff\xfe{}", id="not-utf-8"),
        pytest.param(b"", id="empty"),
        pytest.param('{"key": "\\ud800"}', id="lone-surrogate"),
    ],
)
def test_hostile_json_is_422_not_a_server_error(server: RestServer, body) -> None:
    answer = server.post_ticket(body, token=server.token)

    assert answer.status_code == 422, answer.text
    assert all(error["loc"][0] == "body" for error in answer.json()["detail"])
    assert server.standin.requests == []


def test_lookups_beyond_the_concurrency_bound_get_503_with_retry_after_at_once(server: RestServer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    keys = [f"ABC-{n}" for n in range(11, 15)]
    for key in keys:
        server.standin.add_issue(key, summary=key)
    finished: list[int] = []  # status codes in the order the answers arrived (list.append is atomic)

    def look_up(key: str) -> requests.Response:
        answer = server.post_ticket({"key": key}, token=server.token)
        finished.append(answer.status_code)
        return answer

    server.standin.latency = 2.0  # Jira is slow: the first lookups hold their places meanwhile
    try:
        with ThreadPoolExecutor(len(keys)) as pool:
            answers = list(pool.map(look_up, keys))
    finally:
        server.standin.latency = 0.0

    refused = len(keys) - MAX_CONCURRENT_LOOKUPS
    assert sorted(finished) == [200] * MAX_CONCURRENT_LOOKUPS + [503] * refused
    # Told no before any admitted lookup is done: a refused lookup does not wait for a place.
    assert finished == [503] * refused + [200] * MAX_CONCURRENT_LOOKUPS
    assert all(answer.headers["Retry-After"] == "2" for answer in answers if answer.status_code == 503)
    assert issue_requests(server) == MAX_CONCURRENT_LOOKUPS


@pytest.fixture
def jira_api_pool(rest_server: RestServer) -> Iterator[Any]:
    """Sets the jira_api pool's slots in the metadata database the api-server reads; restores it after."""
    from airflow.models.pool import Pool

    from include.names import JIRA_API_POOL

    before = Pool.get_pool(JIRA_API_POOL)
    saved = None if before is None else (before.slots, before.description, before.include_deferred)

    def set_slots(slots: int) -> None:
        Pool.create_or_update_pool(JIRA_API_POOL, slots, "test", include_deferred=False)

    yield set_slots
    if saved is None:
        Pool.delete_pool(JIRA_API_POOL)
    else:
        Pool.create_or_update_pool(JIRA_API_POOL, saved[0], saved[1], include_deferred=saved[2])


def test_jira_lookups_wait_for_room_in_the_jira_api_pool(server: RestServer, jira_api_pool) -> None:
    issue = server.standin.add_issue("ABC-21", summary="Needs Jira")
    fresh = server.standin.add_issue("ABC-22", summary="Stored")
    store_ticket(server, fresh, fetched_at=datetime.now(UTC))
    jira_api_pool(0)  # every slot taken (here: none at all): the sync's tasks have the whole budget

    busy = server.post_ticket({"key": "ABC-21"}, token=server.token)
    stored = server.post_ticket({"key": "ABC-22"}, token=server.token)

    assert busy.status_code == 503, busy.text
    assert busy.headers["Retry-After"] == "2"
    assert "jira_api" in busy.json()["detail"]
    assert (stored.status_code, stored.json()["source"]) == (200, "store")
    assert issue_requests(server) == 0
    jira_api_pool(1)
    answer = server.post_ticket({"key": "ABC-21"}, token=server.token)
    assert (answer.status_code, answer.json()["summary"]) == (200, ticket_details(issue)["summary"])


def test_a_silent_postgresql_store_is_given_up_after_the_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket
    import threading

    from jira_mail_sync import rest_api

    listener = socket.create_server((LOOPBACK, 0))  # accepts (backlog), never says a word
    port = listener.getsockname()[1]
    store = {
        "conn_type": "postgres",
        "host": LOOPBACK,
        "port": port,
        "login": "u",
        "password": "p",
        "schema": "d",
    }
    monkeypatch.setenv("AIRFLOW_CONN_JIRA_STORE", json.dumps(store))
    monkeypatch.setenv("AIRFLOW__JIRA_MAIL_SYNC__REST_STORE_CONNECT_TIMEOUT_SECONDS", "1")
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(rest_api._stored_ticket("ABC-1")), daemon=True)
    try:
        started = time.monotonic()
        worker.start()
        worker.join(timeout=20)
        elapsed = time.monotonic() - started
    finally:
        listener.close()
    assert not worker.is_alive(), "the store connect was not bounded"
    assert outcome == [None]  # the store is only a cache: its failure means asking Jira
    assert elapsed < 10


@pytest.mark.parametrize(
    ("fault", "retry_after", "expected"),
    [
        pytest.param(503, None, (503, "2"), id="503-without-retry-after"),
        pytest.param(429, 0.2, (503, "1"), id="429-retry-after-rounded-up"),
        pytest.param(502, None, (502, None), id="502"),
        pytest.param(500, None, (502, None), id="500"),
    ],
)
@pytest.mark.parametrize("row", ["stale", "missing"])
def test_jira_failing_without_a_fresh_row_is_a_gateway_error(
    server: RestServer, fault: int, retry_after: float | None, expected: tuple, row: str
) -> None:
    issue = server.standin.add_issue("ABC-123", summary="Seed ticket", assignee_email="dev@example.com")
    if row == "stale":
        store_ticket(server, issue, fetched_at=datetime.now(UTC) - 2 * STORE_MAX_AGE)
    server.standin.inject_fault(fault, count=50, retry_after=retry_after, path_prefix="/rest/api/3/issue/")

    answer = server.post_ticket({"key": "ABC-123"}, token=server.token)

    assert (answer.status_code, answer.headers.get("Retry-After")) == expected, answer.text
    assert "ABC-123" in answer.json()["detail"]
    assert server.standin.api_token not in answer.text
    assert server.standin.url not in answer.text
    assert issue_requests(server) == 1 + JIRA_MAX_RETRIES


@pytest.mark.parametrize("fault", [401, 403])
def test_jira_refusing_the_sync_account_is_502(server: RestServer, fault: int) -> None:
    server.standin.add_issue("ABC-123", summary="Seed ticket")
    server.standin.inject_fault(fault, count=5, path_prefix="/rest/api/3/issue/")

    answer = server.post_ticket({"key": "ABC-123"}, token=server.token)

    assert answer.status_code == 502, answer.text
    assert f"HTTP {fault}" in answer.json()["detail"]
    assert server.standin.api_token not in answer.text


def test_jira_not_answering_in_time_is_504(server: RestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi import HTTPException
    from jira_mail_sync import rest_api

    # In this process, with the api-server's code: its 10 s timeout would make a slow test.
    monkeypatch.setattr(rest_api, "JIRA_TIMEOUT_SECONDS", 0.3)
    monkeypatch.setenv("AIRFLOW_CONN_JIRA_DEFAULT", json.dumps(server.standin.airflow_conn()))
    server.standin.add_issue("ABC-123", summary="Seed ticket")
    server.standin.latency = 1.0
    try:
        with pytest.raises(HTTPException) as raised:
            rest_api._from_jira("ABC-123")
    finally:
        server.standin.latency = 0.0

    assert raised.value.status_code == 504
    assert "did not answer in time" in raised.value.detail


def test_jira_answering_something_that_is_no_issue_is_502(
    server: RestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi import HTTPException
    from jira_mail_sync import rest_api

    monkeypatch.setenv("AIRFLOW_CONN_JIRA_DEFAULT", json.dumps(server.standin.airflow_conn()))
    server.standin.add_issue("ABC-123", summary="Seed ticket")
    # The stand-in's real issue with its key made odd on the way back, as a broken proxy might.
    real_get_issue = JiraCloudClient.get_issue
    monkeypatch.setattr(
        JiraCloudClient, "get_issue", lambda client, key: {**real_get_issue(client, key), "key": 7}
    )

    with pytest.raises(HTTPException) as raised:
        rest_api._from_jira("ABC-123")

    assert raised.value.status_code == 502
    assert raised.value.detail == "Jira's answer for ABC-123 was unusable"


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
_FIELD_VALUES = {
    "summary": _JSON,
    "status": _JSON | st.fixed_dictionaries({"name": _JSON}),
    "assignee": _JSON | st.fixed_dictionaries({"emailAddress": _JSON}),
    "progress": _JSON
    | st.fixed_dictionaries({"progress": _JSON, "total": _JSON}, optional={"percent": _JSON}),
    "updated": _JSON | st.text(alphabet="0123456789-:T.+Z", max_size=30),
}
_ODD_ISSUES = _JSON | st.fixed_dictionaries(
    {"key": st.just("ABC-1") | _JSON},
    optional={"id": _JSON, "fields": _JSON | st.fixed_dictionaries({}, optional=_FIELD_VALUES)},
)


@settings(max_examples=400, derandomize=True, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(issue=_ODD_ISSUES)
def test_any_jira_answer_becomes_a_ticket_or_a_502_never_a_crash(issue: Any) -> None:
    from fastapi import HTTPException
    from jira_mail_sync.rest_api import details_from_jira

    try:
        answer = details_from_jira("ABC-1", issue)
    except HTTPException as exc:
        assert exc.status_code == 502
    else:
        # What the route would send: it must encode, and carry the issue's own key.
        assert json.loads(answer.model_dump_json())["key"] == issue["key"]


def test_unreadable_store_falls_back_to_jira(server: RestServer) -> None:
    issue = server.standin.add_issue("ABC-123", summary="Seed ticket", assignee_email="dev@example.com")
    store_ticket(server, issue, fetched_at=datetime.now(UTC))
    with contextlib.closing(server.store()) as conn, conn:
        conn.execute("ALTER TABLE jira_ticket RENAME TO jira_ticket_away")
    try:
        answer = server.post_ticket({"key": "ABC-123"}, token=server.token)
    finally:
        with contextlib.closing(server.store()) as conn, conn:
            conn.execute("ALTER TABLE jira_ticket_away RENAME TO jira_ticket")

    assert answer.status_code == 200, answer.text
    assert answer.json()["source"] == "jira"
    assert answer.json()["assigned_to"] == ticket_details(issue)["assignee_email"]
    assert "jira_ticket" in server.log_tail(), "the store failure should be logged"


def test_server_log_never_shows_a_token(server: RestServer) -> None:
    # Last in this module, so the log also holds every earlier test's requests.
    for token in (
        server.token,
        "not-a-jwt",
        minted_token(server, valid_for=-3600),
        minted_token(server, secret=secrets.token_urlsafe(64)),
    ):
        server.post_ticket({"key": "ABC-1"}, token=token)
    log_text = server.log_path.read_text(errors="replace")

    assert "/jira-mail-sync/ticket" in log_text, "the access log should show the channel was called"
    leaked = [token for token in set(server.tokens_sent) if token in log_text]
    assert leaked == []
    assert server.standin.api_token not in log_text
