"""GET /jira-mail-sync/status and the "Jira sync" page, served by a real `airflow api-server`.

Real pieces: the api-server with the plugin and the simple auth manager (an admin and a viewer; the
harness's subclass refuses the viewer jira_inbox's task logs and XCom, and a third user DAG runs), a
SQLite store, Dovecot as `imap_default` behind a relay that counts IMAP sessions or stalls them, and
the session's metadata database (the release creates a real `jira_inbox` run in it). A second
api-server runs under `[api] base_url` /airflow with --proxy-headers behind a tiny TLS-terminating
reverse proxy. Adds about 50 s (two api-server starts and one `dags reserialize`).
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from devkit.imap_relay import ImapRelay
from devkit.mail_factory import jira_notification
from devkit.processes import LOOPBACK, free_port, stop_process_group
from include.api_usage import Throttle, Usage, record_usage
from include.census import record_runs
from include.mail_ledger import record_rejected
from include.sweep_progress import advance_watermark, get_watermark
from include.ticket_store import ensure_table, upsert_tickets
from tests.harness.airflow_env import airflow_cli
from tests.harness.api_server import start_api_server
from tests.harness.auth_manager import CLASS_PATH as REFUSING_AUTH_MANAGER
from tests.harness.auth_manager import REFUSED_ENTITIES_ENV
from tests.harness.reverse_proxy import ReverseProxy
from tests.harness.tickets import stored_ticket
from tests.test_rest_channel import minted_token

REPO = Path(__file__).resolve().parents[1]
STATUS = "/jira-mail-sync/status"
PAGE = "/jira-mail-sync/status/page"
RELEASE = "/jira-mail-sync/status/release"
REQUEST_TIMEOUT_S = 30
BASE_PATH = "/airflow"
PUBLIC_HOST = "airflow.example.test"
# The watcher may read both DAGs and their runs, not jira_inbox's logs or XCom; "runless" (a minted
# token's user with the viewer role) may not read DAG runs either.
RUNLESS = "runless"
REFUSED_ENTITIES = {"watcher": ["TASK_LOGS", "XCOM"], RUNLESS: ["RUN", "TASK_LOGS", "XCOM"]}
REJECTED_SENDER = "mallory@spam.example"
REJECTED_SUBJECT = "Cheap watches for the Jira team"
REJECTED_MESSAGE_ID = "<cheap-watches@spam.example>"
NOW = datetime.now(UTC).replace(microsecond=0)

pytestmark = pytest.mark.airflow


@dataclass
class StatusServer:
    url: str
    store_path: Path
    jwt_secret: str = field(repr=False)
    log_path: Path
    imap: Any
    relay: ImapRelay
    passwords: dict[str, str] = field(repr=False)
    token: str = field(default="", repr=False)  # the admin's (minted_token reads it)
    base_path: str = ""  # [api] base_url's path: Airflow mounts its auth routes under it

    def token_for(self, user: str) -> str:
        answer = requests.post(
            f"{self.url}{self.base_path}/auth/token",
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


def _fill_store(store_path: Path) -> None:
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
        # The last census of ABC (include/census.py), as jira_census records it.
        census_counts = {"listed": 9, "stored": 7, "healed": 2, "deleted_or_hidden": 3, "archived": 1}
        record_runs(conn, "sqlite", {"ABC": census_counts}, at=NOW - timedelta(hours=5), run_id="census-1")
        record_usage(
            conn,
            "sqlite",
            Usage("jira_inbox.fetch_tickets[0]", 12, 1, Throttle(NOW - timedelta(minutes=5), 42.0)),
            now=NOW - timedelta(minutes=5),
        )
        record_usage(conn, "sqlite", Usage("jira_sweep.plan_sweep", 100), now=NOW - timedelta(hours=2))
        record_rejected(
            conn,
            "sqlite",
            mailbox="INBOX",
            uidvalidity=1,
            entries=[
                {
                    "uid": 3,
                    "reason": f"untrusted_sender: {REJECTED_SENDER}",
                    "message_id": REJECTED_MESSAGE_ID,
                    "sender": REJECTED_SENDER,
                    "subject": REJECTED_SUBJECT,
                }
            ],
            now=NOW - timedelta(minutes=1),
        )
        conn.commit()


@contextlib.contextmanager
def _status_server(
    dovecot: Any, *, cache_seconds: float, base_path: str = "", options: tuple[str, ...] = ()
) -> Iterator[StatusServer]:
    """An api-server with the plugin over a filled SQLite store and a Dovecot account behind a relay."""
    work = Path(tempfile.mkdtemp(prefix="jms-status-"))
    store_path = work / "jira_store.db"
    _fill_store(store_path)
    imap = dovecot.create_account()
    passwords = {"admin": secrets.token_urlsafe(12), "watcher": secrets.token_urlsafe(12)}
    passwords_file = work / "passwords.json"
    passwords_file.write_text(json.dumps(passwords))
    port = free_port()
    with ImapRelay(imap.host, imap.port) as relay:
        server = StatusServer(
            url=f"http://{LOOPBACK}:{port}",
            store_path=store_path,
            jwt_secret=secrets.token_urlsafe(64),
            log_path=work / "api-server.log",
            imap=imap,
            relay=relay,
            passwords=passwords,
            base_path=base_path,
        )
        process = start_api_server(
            port=port,
            jwt_secret=server.jwt_secret,
            passwords_file=passwords_file,
            log_path=server.log_path,
            cwd=work,
            users="admin:admin,watcher:viewer",
            settings={
                "AIRFLOW__CORE__AUTH_MANAGER": REFUSING_AUTH_MANAGER,
                REFUSED_ENTITIES_ENV: json.dumps(REFUSED_ENTITIES),
                "AIRFLOW__JIRA_MAIL_SYNC__STATUS_MAILBOX_CACHE_SECONDS": str(cache_seconds),
                "AIRFLOW_CONN_JIRA_STORE": json.dumps({"conn_type": "sqlite", "host": str(store_path)}),
                "AIRFLOW_CONN_IMAP_DEFAULT": json.dumps({**imap.airflow_conn(), "port": relay.port}),
                # Airflow's public address; the api-server itself also answers without the path.
                "AIRFLOW__API__BASE_URL": f"http://{LOOPBACK}:{port}{base_path}",
            },
            options=options,
        )
        try:
            server.token = server.token_for("admin")
            yield server
        finally:
            stop_process_group(process, timeout_s=20)
            shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def reserialized_dags(airflow_db: str) -> None:
    # The DAGs must be in the metadata database for a release to trigger jira_inbox (and for the
    # page to read jira_inbox's mailbox param).
    reserialized = airflow_cli("dags", "reserialize")
    assert reserialized.returncode == 0, reserialized.stderr[-3000:]


@pytest.fixture(scope="module")
def status_server(reserialized_dags: None, dovecot) -> Iterator[StatusServer]:
    # A long cache: the tests count the IMAP sessions; the cache's expiry is tested with a clock below.
    with _status_server(dovecot, cache_seconds=3600) as server:
        yield server


@pytest.fixture(scope="module")
def proxied_server(reserialized_dags: None, dovecot) -> Iterator[StatusServer]:
    """Under `[api] base_url` /airflow, with --proxy-headers, behind a TLS-terminating proxy; no cache."""
    with _status_server(
        dovecot, cache_seconds=0, base_path=BASE_PATH, options=("--proxy-headers",)
    ) as server:
        yield server


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
    (census,) = figures["census"]
    assert (census["project"], census["listed"], census["healed"], census["deleted_or_hidden"]) == (
        "ABC",
        9,
        2,
        3,
    )
    assert (census["not_visible"], census["archived"], census["moved_out"]) == (0, 1, 0)


def test_mailbox_figures_come_from_the_mailbox_and_are_kept_for_the_cache_time(
    status_server: StatusServer,
) -> None:
    imap, relay = status_server.imap, status_server.relay
    first = status_server.get(STATUS, token=status_server.token).json()["inbox"]
    sessions = relay.sessions
    imap.append(jira_notification("ABC-1"))
    again = [status_server.get(STATUS, token=status_server.token).json()["inbox"] for _ in range(5)]

    assert first["unseen"] is not None and first.get("error") is None, first
    # Within the cache time the mailbox is not asked again: no session, the new mail not counted yet.
    assert relay.sessions == sessions
    assert {(view["unseen"], view["checked_at"]) for view in again} == {
        (first["unseen"], first["checked_at"])
    }
    assert imap.unseen_count() == first["unseen"] + 1


def test_the_page_opened_with_the_ui_session_cookie_shows_the_figures(status_server: StatusServer) -> None:
    page = status_server.get(PAGE, cookies={"_token": status_server.token})

    assert page.status_code == 200, page.text
    assert page.headers["Cache-Control"] == "no-store"
    assert 'data-figure="tickets.total">10<' in page.text
    assert 'data-figure="tickets.by_source.sweep">7<' in page.text
    assert 'data-figure="jira.requests_last_hour">12<' in page.text
    census_row = page.text[page.text.index('<tr data-project="ABC">') :]
    census_row = census_row[: census_row.index("</tr>")]
    assert [cell.split(">", 1)[1] for cell in census_row.split("</td>")[2:-1]] == [
        "9",
        "7",
        "2",
        "3",
        "0",
        "1",
        "0",
    ]


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


# ------------------------------------------------------------------------------- hardened (#20.3)


def test_fifty_made_up_mailbox_names_are_404_and_open_no_imap_session(status_server: StatusServer) -> None:
    sessions = status_server.relay.sessions
    answers = [
        status_server.get(STATUS, token=status_server.token, params={"mailbox": f"Folder-{n}"})
        for n in range(50)
    ]

    assert [answer.status_code for answer in answers] == [404] * 50
    assert "INBOX" in answers[0].json()["detail"]
    assert status_server.relay.sessions == sessions
    page = status_server.get(PAGE, cookies={"_token": status_server.token}, params={"mailbox": "Folder-x"})
    assert page.status_code == 404 and status_server.relay.sessions == sessions


def test_a_user_without_log_or_xcom_read_sees_counts_but_no_sender_or_subject(
    status_server: StatusServer,
) -> None:
    viewer = status_server.token_for("watcher")
    admin_json = status_server.get(STATUS, token=status_server.token)
    viewer_json = status_server.get(STATUS, token=viewer)
    admin_page = status_server.get(PAGE, cookies={"_token": status_server.token})
    viewer_page = status_server.get(PAGE, cookies={"_token": viewer})

    assert admin_json.json()["ledger"]["rejected"] == viewer_json.json()["ledger"]["rejected"] == 1
    for admin_answer in (admin_json, admin_page):
        assert REJECTED_SENDER in admin_answer.text and REJECTED_SUBJECT in admin_answer.text
    for viewer_answer in (viewer_json, viewer_page):
        assert viewer_answer.status_code == 200, viewer_answer.text
        for secret_text in (REJECTED_SENDER, REJECTED_SUBJECT, REJECTED_MESSAGE_ID, "spam.example"):
            assert secret_text not in viewer_answer.text
    assert viewer_json.json()["ledger"]["entries"] == []
    assert 'id="ledger-details-hidden"' in viewer_page.text
    assert 'data-figure="ledger.rejected">1<' in viewer_page.text


def test_run_figures_need_the_right_to_read_dag_runs(status_server: StatusServer) -> None:
    released = status_server.post(RELEASE, token=status_server.token, json={"mailbox": "INBOX", "uids": [5]})
    assert released.status_code == 200, released.text
    runless = minted_token(status_server, sub=RUNLESS, role="viewer")

    admin = status_server.get(STATUS, token=status_server.token).json()
    blind = status_server.get(STATUS, token=runless)
    blind_page = status_server.get(PAGE, cookies={"_token": runless})

    assert admin["runs_shown"] == {"jira_inbox": True, "jira_sweep": True}
    assert admin["inbox"]["last_run"]["run_id"] == released.json()["dag_run_id"]
    assert blind.status_code == 200, blind.text
    figures = blind.json()
    assert figures["runs_shown"] == {"jira_inbox": False, "jira_sweep": False}
    assert figures["inbox"]["last_run"] is None and figures["sweep"]["last_run"] is None
    assert figures["sweep"]["pending"] is None and figures["sweep"]["pending_count"] is None
    assert released.json()["dag_run_id"] not in blind.text + blind_page.text
    assert figures["tickets"]["total"] == 10


@pytest.mark.parametrize(
    "reflected",
    [
        pytest.param("Call the helpdesk at +1 555 0100 now", id="plain-text"),
        pytest.param('<img src=x onerror="alert(1)">', id="markup"),
        pytest.param("release__20261207T101010123456 and more", id="a-run-id-with-a-tail"),
    ],
)
def test_a_released_text_the_page_did_not_redirect_with_is_not_shown(
    status_server: StatusServer, reflected: str
) -> None:
    page = status_server.get(PAGE, cookies={"_token": status_server.token}, params={"released": reflected})

    assert page.status_code == 200, page.text
    assert 'id="released"' not in page.text
    assert reflected not in page.text and requests.utils.quote(reflected) not in page.text


def test_the_released_run_of_the_pages_own_redirect_is_shown(status_server: StatusServer) -> None:
    answer = status_server.post(
        RELEASE,
        cookies={"_token": status_server.token},
        data={"mailbox": "INBOX", "uid": ["8"]},
        headers={"Origin": status_server.url},
    )
    page = status_server.get(
        f"/jira-mail-sync/status/{answer.headers['Location']}", cookies={"_token": status_server.token}
    )

    run_id = requests.utils.unquote(answer.headers["Location"].split("released=")[1])
    assert 'id="released"' in page.text and f"<strong>{run_id}</strong>" in page.text


def test_the_page_and_the_json_may_only_be_framed_by_airflow_itself(status_server: StatusServer) -> None:
    answers = [
        status_server.get(PAGE, cookies={"_token": status_server.token}),
        status_server.get(PAGE),
        status_server.get(STATUS, token=status_server.token),
    ]
    for answer in answers:
        assert answer.headers["Content-Security-Policy"] == "frame-ancestors 'self'", answer.status_code


def test_the_page_links_stay_under_airflows_base_url(proxied_server: StatusServer) -> None:
    released = proxied_server.post(
        BASE_PATH + RELEASE, token=proxied_server.token, json={"mailbox": "INBOX", "uids": [6]}
    )
    run_id = released.json()["dag_run_id"]
    page = proxied_server.get(
        BASE_PATH + PAGE, cookies={"_token": proxied_server.token}, params={"released": run_id}
    )
    refused = proxied_server.get(BASE_PATH + PAGE)

    assert page.status_code == 200, page.text
    links = re.findall(r'(?:href|action)="([^"]+)"', page.text)
    assert f"{BASE_PATH}/dags/jira_inbox/runs/{run_id}" in links
    # Every link is either relative to the page or starts with the base path.
    assert all(not link.startswith("/") or link.startswith(BASE_PATH + "/") for link in links), links
    assert "../status?mailbox=INBOX" in links and "release" in links
    assert refused.status_code == 401 and f'href="{BASE_PATH}/auth/login?next=' in refused.text
    json_link = requests.compat.urljoin(proxied_server.url + BASE_PATH + PAGE, "../status?mailbox=INBOX")
    assert requests.get(json_link, headers={"Authorization": f"Bearer {proxied_server.token}"}, timeout=30).ok


def test_a_release_through_a_tls_terminating_proxy_passes_the_same_origin_check(
    proxied_server: StatusServer,
) -> None:
    public_origin = f"https://{PUBLIC_HOST}"
    with ReverseProxy(int(proxied_server.url.rsplit(":", 1)[1]), public_host=PUBLIC_HOST) as proxy:

        def release(origin: str) -> requests.Response:
            return requests.post(
                proxy.url + BASE_PATH + RELEASE,
                cookies={"_token": proxied_server.token},
                data={"mailbox": "INBOX", "uid": ["7"]},
                headers={"Origin": origin},
                allow_redirects=False,
                timeout=REQUEST_TIMEOUT_S,
            )

        accepted = release(public_origin)
        foreign = release("https://evil.example")
        # The browser's origin is https; the same host over plain http is another origin.
        downgraded = release(f"http://{PUBLIC_HOST}")

    assert accepted.status_code == 303, f"{accepted.text}\n{proxied_server.log_tail()}"
    assert accepted.headers["Location"].startswith("page?mailbox=INBOX&released=release__")
    assert foreign.status_code == downgraded.status_code == 403


def test_readers_of_a_stalled_imap_server_get_503_and_airflow_keeps_answering(
    proxied_server: StatusServer,
) -> None:
    relay = proxied_server.relay
    relay.stalled = True
    answers: list[tuple[float, requests.Response]] = []

    def read() -> None:
        started = time.monotonic()
        answer = proxied_server.get(BASE_PATH + STATUS, token=proxied_server.token)
        answers.append((time.monotonic() - started, answer))

    readers = [threading.Thread(target=read) for _ in range(20)]
    try:
        for reader in readers:
            reader.start()
        time.sleep(0.5)  # not a timing window: only lets the readers reach the api-server first
        version_seconds = []
        for _ in range(5):
            started = time.monotonic()
            version = proxied_server.get("/api/v2/version", token=proxied_server.token)
            version_seconds.append(time.monotonic() - started)
            assert version.status_code == 200, version.text
        for reader in readers:
            reader.join(timeout=60)
    finally:
        relay.stalled = False
        relay.wait_until_stalled_clients_left(timeout_s=30)

    assert max(version_seconds) < 1.0, version_seconds
    codes = sorted(answer.status_code for _, answer in answers)
    assert codes == [200] + [503] * 19, codes
    busy = [(seconds, answer) for seconds, answer in answers if answer.status_code == 503]
    assert all(answer.headers["Retry-After"] == "5" for _, answer in busy)
    # They were told at once (the bounded wait), not queued behind the stalled login.
    assert max(seconds for seconds, _ in busy) < 6.0, [seconds for seconds, _ in busy]
    (stalled,) = [answer.json() for _, answer in answers if answer.status_code == 200]
    assert stalled["inbox"]["unseen"] is None and "could not be read" in stalled["inbox"]["error"]


# --------------------------------------------------------------------------- the cache, in process


def test_the_mailbox_cache_reads_again_once_the_cache_time_has_passed(
    dovecot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jira_mail_sync.status_page import MailboxCache

    imap = dovecot.create_account()
    with ImapRelay(imap.host, imap.port) as relay:
        monkeypatch.setenv(
            "AIRFLOW_CONN_IMAP_DEFAULT", json.dumps({**imap.airflow_conn(), "port": relay.port})
        )
        monkeypatch.setenv(
            "AIRFLOW_CONN_JIRA_STORE", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "s.db")})
        )
        monkeypatch.setenv("AIRFLOW__JIRA_MAIL_SYNC__STATUS_MAILBOX_CACHE_SECONDS", "30")
        now = [1000.0]
        cache = MailboxCache(clock=lambda: now[0])

        first = cache.get("imap_default", "INBOX")
        imap.append(jira_notification("ABC-1"))
        now[0] += 29.9
        cached = cache.get("imap_default", "INBOX")
        now[0] += 0.1
        fresh = cache.get("imap_default", "INBOX")

    assert cached is first and relay.sessions == cache.logins == 2
    assert fresh["unseen"] == first["unseen"] + 1 == imap.unseen_count()
