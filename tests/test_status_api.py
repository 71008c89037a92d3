"""GET /jira-mail-sync/status and the "Jira sync" page, served by a real `airflow api-server`.

Real pieces: the api-server with the plugin and the simple auth manager (an admin and a viewer), a
SQLite store, Dovecot as `imap_default`, and the session's metadata database (the release creates a
real `jira_inbox` run in it). Adds about 25 s (the api-server start and one `dags reserialize`).
"""

from __future__ import annotations

import contextlib
import json
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

import pytest
import requests

from devkit.mail_factory import jira_notification
from devkit.processes import LOOPBACK, free_port, stop_process_group
from include.api_usage import Throttle, Usage, record_usage
from include.sweep_progress import advance_watermark, get_watermark
from include.ticket_store import ensure_table, upsert_tickets
from tests.harness.airflow_env import airflow_cli
from tests.harness.api_server import start_api_server
from tests.harness.tickets import stored_ticket
from tests.test_rest_channel import minted_token

REPO = Path(__file__).resolve().parents[1]
STATUS = "/jira-mail-sync/status"
PAGE = "/jira-mail-sync/status/page"
RELEASE = "/jira-mail-sync/status/release"
CACHE_SECONDS = 2.0
REQUEST_TIMEOUT_S = 30
NOW = datetime.now(UTC).replace(microsecond=0)

pytestmark = pytest.mark.airflow


@dataclass
class StatusServer:
    url: str
    store_path: Path
    jwt_secret: str = field(repr=False)
    log_path: Path
    imap: Any
    passwords: dict[str, str] = field(repr=False)
    token: str = field(default="", repr=False)  # the admin's (minted_token reads it)

    def token_for(self, user: str) -> str:
        answer = requests.post(
            f"{self.url}/auth/token",
            json={"username": user, "password": self.passwords[user]},
            timeout=REQUEST_TIMEOUT_S,
        )
        assert answer.status_code == 201, answer.text
        return answer.json()["access_token"]

    def get(self, path: str, token: str | None = None, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return requests.get(self.url + path, headers=headers, timeout=REQUEST_TIMEOUT_S, **kwargs)

    def post(self, path: str, token: str | None = None, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return requests.post(
            self.url + path, headers=headers, timeout=REQUEST_TIMEOUT_S, allow_redirects=False, **kwargs
        )

    def store(self) -> sqlite3.Connection:
        return sqlite3.connect(self.store_path)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


@pytest.fixture(scope="module")
def status_server(airflow_db: str, dovecot) -> Iterator[StatusServer]:
    work = Path(tempfile.mkdtemp(prefix="jms-status-"))
    store_path = work / "jira_store.db"
    with contextlib.closing(sqlite3.connect(store_path)) as conn:
        ensure_table(conn, "sqlite")
        upsert_tickets(
            conn,
            "sqlite",
            [stored_ticket(updated_at=NOW - timedelta(days=2), key=f"ABC-{n}") for n in range(1, 8)],
            source="sweep",
            fetched_at=NOW - timedelta(hours=3),
        )
        upsert_tickets(
            conn,
            "sqlite",
            [stored_ticket(updated_at=NOW - timedelta(days=2), key=f"OPS-{n}") for n in range(1, 4)],
            source="inbox",
            fetched_at=NOW - timedelta(minutes=10),
        )
        advance_watermark(conn, "sqlite", NOW - timedelta(minutes=30))
        record_usage(
            conn,
            "sqlite",
            Usage("jira_inbox.fetch_tickets[0]", 12, 1, Throttle(NOW - timedelta(minutes=5), 42.0)),
            now=NOW - timedelta(minutes=5),
        )
        record_usage(conn, "sqlite", Usage("jira_sweep.plan_sweep", 100), now=NOW - timedelta(hours=2))
    # The DAGs must be in the metadata database for a release to trigger jira_inbox.
    reserialized = airflow_cli("dags", "reserialize")
    assert reserialized.returncode == 0, reserialized.stderr[-3000:]
    imap = dovecot.create_account()
    passwords = {"admin": secrets.token_urlsafe(12), "watcher": secrets.token_urlsafe(12)}
    passwords_file = work / "passwords.json"
    passwords_file.write_text(json.dumps(passwords))
    port = free_port()
    server = StatusServer(
        url=f"http://{LOOPBACK}:{port}",
        store_path=store_path,
        jwt_secret=secrets.token_urlsafe(64),
        log_path=work / "api-server.log",
        imap=imap,
        passwords=passwords,
    )
    process = start_api_server(
        port=port,
        jwt_secret=server.jwt_secret,
        passwords_file=passwords_file,
        log_path=server.log_path,
        cwd=work,
        users="admin:admin,watcher:viewer",
        settings={
            "AIRFLOW__JIRA_MAIL_SYNC__STATUS_MAILBOX_CACHE_SECONDS": str(CACHE_SECONDS),
            "AIRFLOW_CONN_JIRA_STORE": json.dumps({"conn_type": "sqlite", "host": str(store_path)}),
            "AIRFLOW_CONN_IMAP_DEFAULT": json.dumps(imap.airflow_conn()),
        },
    )
    try:
        server.token = server.token_for("admin")
        yield server
    finally:
        stop_process_group(process, timeout_s=20)
        shutil.rmtree(work, ignore_errors=True)


def _wait_past_cache() -> None:
    time.sleep(CACHE_SECONDS + 0.5)


# ------------------------------------------------------------------------------------------ who asks


def test_no_token_is_401_for_the_json_and_the_page(status_server: StatusServer) -> None:
    json_answer = status_server.get(STATUS)
    page = status_server.get(PAGE)

    assert json_answer.status_code == 401, json_answer.text
    assert json_answer.headers["WWW-Authenticate"] == "Bearer"
    assert page.status_code == 401
    assert "not logged in" in page.text and "/auth/login?next=" in page.text
    # Nothing of the figures leaks to an anonymous caller.
    assert "ABC-" not in page.text and "tickets" not in json_answer.text


def test_a_forged_session_cookie_is_401(status_server: StatusServer) -> None:
    forged = minted_token(status_server, secret=secrets.token_urlsafe(64))
    answer = status_server.get(PAGE, cookies={"_token": forged})
    assert answer.status_code == 401
    assert forged not in answer.text


def test_a_user_without_rights_on_the_dags_is_403(status_server: StatusServer) -> None:
    # A valid token (Airflow's own key) whose user has no role: the auth manager grants no DAG.
    nobody = minted_token(status_server, role=None)
    assert status_server.get("/api/v2/dags/jira_inbox", token=nobody).status_code == 403

    for answer in (
        status_server.get(STATUS, token=nobody),
        status_server.get(PAGE, cookies={"_token": nobody}),
        status_server.post(RELEASE, token=nobody, json={"uids": [1]}),
    ):
        assert answer.status_code == 403, answer.text
        assert "jira_inbox" in answer.text


def test_a_viewer_reads_the_status_but_may_not_release(status_server: StatusServer) -> None:
    viewer = status_server.token_for("watcher")

    assert status_server.get(STATUS, token=viewer).status_code == 200
    page = status_server.get(PAGE, cookies={"_token": viewer})
    refused = status_server.post(RELEASE, token=viewer, json={"uids": [1]})

    assert page.status_code == 200
    assert 'id="release"' not in page.text
    assert refused.status_code == 403
    assert refused.json()["detail"] == "This user may not trigger the jira_inbox DAG"


# ------------------------------------------------------------------------------------------ figures


def test_json_figures_are_the_stores(status_server: StatusServer) -> None:
    answer = status_server.get(STATUS, token=status_server.token)

    assert answer.status_code == 200, answer.text
    figures = answer.json()
    with contextlib.closing(status_server.store()) as conn:
        by_source = dict(conn.execute("SELECT source, count(*) FROM jira_ticket GROUP BY source").fetchall())
        watermark = get_watermark(conn, "sqlite")
    assert figures["tickets"]["total"] == sum(by_source.values()) == 10
    assert figures["tickets"]["by_source"] == by_source == {"inbox": 3, "sweep": 7}
    assert figures["tickets"]["changed_last_hour"] == 3
    assert datetime.fromisoformat(figures["sweep"]["watermark"]) == watermark
    assert figures["jira"]["requests_last_hour"] == 12
    assert figures["jira"]["last_429"]["retry_after_seconds"] == 42.0
    assert datetime.fromisoformat(figures["jira"]["last_429"]["at"]) == NOW - timedelta(minutes=5)
    assert figures["inbox"]["mode"] in ("poll", "idle")
    assert set(figures["ledger"]) >= {"rejected", "quarantined"}


def test_mailbox_figures_come_from_the_mailbox_and_are_cached_briefly(status_server: StatusServer) -> None:
    imap = status_server.imap
    _wait_past_cache()
    before = status_server.get(STATUS, token=status_server.token).json()["inbox"]
    assert before["unseen"] == imap.unseen_count()

    imap.append(jira_notification("ABC-1"))
    imap.append(jira_notification("ABC-2"))
    cached = status_server.get(STATUS, token=status_server.token).json()["inbox"]
    _wait_past_cache()
    fresh = status_server.get(STATUS, token=status_server.token).json()["inbox"]

    # Within the cache time the mailbox is not asked again: the new mail is not counted yet.
    assert (cached["unseen"], cached["checked_at"]) == (before["unseen"], before["checked_at"])
    assert fresh["unseen"] == before["unseen"] + 2 == imap.unseen_count()
    assert fresh["oldest_unseen_age_seconds"] is not None and fresh["oldest_unseen_age_seconds"] < 600


def test_the_page_opened_with_the_ui_session_cookie_shows_the_figures(status_server: StatusServer) -> None:
    page = status_server.get(PAGE, cookies={"_token": status_server.token})

    assert page.status_code == 200, page.text
    assert page.headers["Cache-Control"] == "no-store"
    assert 'data-figure="tickets.total">10<' in page.text
    assert 'data-figure="tickets.by_source.sweep">7<' in page.text
    assert 'data-figure="jira.requests_last_hour">12<' in page.text


def test_json_needs_no_cookie_and_a_bad_mailbox_name_is_422(status_server: StatusServer) -> None:
    answer = status_server.get(STATUS, token=status_server.token, params={"mailbox": "a\r\nb"})
    assert answer.status_code == 422


# ------------------------------------------------------------------------------------------ release


def _dag_run_conf(run_id: str) -> dict[str, Any] | None:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        dag_run = session.query(DagRun).filter_by(dag_id="jira_inbox", run_id=run_id).one_or_none()
        return None if dag_run is None else dict(dag_run.conf or {})


def test_release_triggers_a_jira_inbox_run_with_the_release_params(status_server: StatusServer) -> None:
    answer = status_server.post(
        RELEASE, token=status_server.token, json={"mailbox": "INBOX", "uids": [9, 4, 9]}
    )

    assert answer.status_code == 200, f"{answer.text}\n{status_server.log_tail()}"
    run_id = answer.json()["dag_run_id"]
    assert _dag_run_conf(run_id) == {"mailbox": "INBOX", "release_uids": [4, 9], "release_all": False}


def test_release_from_the_pages_form_redirects_back_to_the_page(status_server: StatusServer) -> None:
    origin = status_server.url
    answer = status_server.post(
        RELEASE,
        cookies={"_token": status_server.token},
        data={"mailbox": "INBOX", "uid": ["7"]},
        headers={"Origin": origin},
    )

    assert answer.status_code == 303, answer.text
    location = answer.headers["Location"]
    assert location.startswith("page?mailbox=INBOX&released=")
    run_id = requests.utils.unquote(location.split("released=")[1])
    assert _dag_run_conf(run_id) == {"mailbox": "INBOX", "release_uids": [7], "release_all": False}


def test_a_release_posted_from_another_site_is_refused(status_server: StatusServer) -> None:
    answer = status_server.post(
        RELEASE,
        cookies={"_token": status_server.token},
        data={"mailbox": "INBOX", "uid": ["7"]},
        headers={"Origin": "https://evil.example"},
    )
    assert answer.status_code == 403
    assert "this Airflow's own page" in answer.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"uids": []}, id="none"),
        pytest.param({"uids": [0]}, id="zero"),
        pytest.param({"uids": ["x"]}, id="not-a-number"),
        pytest.param({"uids": list(range(1, 1002))}, id="too-many"),
        pytest.param({"mailbox": "a\r\nb", "uids": [1]}, id="bad-mailbox"),
    ],
)
def test_a_malformed_release_is_422_and_triggers_nothing(status_server: StatusServer, body: dict) -> None:
    runs_before = _inbox_run_count()
    answer = status_server.post(RELEASE, token=status_server.token, json=body)
    assert answer.status_code == 422, answer.text
    assert _inbox_run_count() == runs_before


def _inbox_run_count() -> int:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.query(DagRun).filter_by(dag_id="jira_inbox").count()
