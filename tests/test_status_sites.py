"""The Jira sync page and the status JSON with a sites file of three sites, served by a real api-server.

Real pieces: `airflow api-server` with the plugin, three sites in a sites file (a, b with two mailboxes,
c), one SQLite store per site (the sites file refuses a shared store until the tables are keyed by
site), two Dovecot accounts, and the session's metadata database with the generated DAGs serialized
(`dags reserialize` with the sites file), so a release creates a real run of a site's own inbox DAG.
The users: an admin, a viewer, and "operator", an admin refused POST on `jira_inbox__b__inbox` alone
(tests/harness/auth_manager.py). Adds about 40 s (two `dags reserialize` and one api-server start).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from devkit.processes import LOOPBACK, free_port, stop_process_group
from include.mail_ledger import record_rejected
from include.sweep_progress import SCHEDULED_SCOPE, advance_watermark, site_scope
from include.ticket_store import ensure_table, upsert_tickets
from include.watch_state import RefusedLogins, save_refused_login
from tests.harness.airflow_env import airflow_cli
from tests.harness.api_server import start_api_server
from tests.harness.auth_manager import CLASS_PATH as REFUSING_AUTH_MANAGER
from tests.harness.auth_manager import REFUSED_METHODS_ENV
from tests.harness.tickets import stored_ticket
from tests.test_status_api import PAGE, RELEASE, STATUS, StatusServer

pytestmark = pytest.mark.airflow
NOW = datetime.now(UTC).replace(microsecond=0)
OPERATOR = "operator"
# May read every DAG but site b's sweep: the REST channel must not answer it with b's tickets.
NOT_B = "not_b"
TICKET = "/jira-mail-sync/ticket"
B_INBOX = "jira_inbox__b__inbox"
B_DESK = "jira_inbox__b__service-desk"
SITES = [
    {
        "name": "a",
        "jira_conn_id": "jira_a",
        "store_conn_id": "store_a",
        "mailboxes": [{"imap_conn_id": "imap_a"}],
    },
    {
        "name": "b",
        "jira_conn_id": "jira_b",
        "store_conn_id": "store_b",
        "pool": "budget_b",
        "mailboxes": [{"imap_conn_id": "imap_b"}, {"imap_conn_id": "imap_b", "mailbox": "Service Desk"}],
    },
    {
        "name": "c",
        "jira_conn_id": "jira_c",
        "store_conn_id": "store_c",
        "mailboxes": [{"imap_conn_id": "imap_a", "mailbox": "Archive"}],
    },
]
# Each site's store holds figures no other site's has: the counts tell whose store was read.
TICKETS = {"a": 2, "b": 5, "c": 0}
REJECTED = {"a": [3], "b": [4, 5], "c": []}
WATERMARK = {"a": NOW - timedelta(minutes=10), "b": NOW - timedelta(minutes=40)}


def _fill(store: Path, site: str) -> None:
    with contextlib.closing(sqlite3.connect(store)) as conn:
        ensure_table(conn, "sqlite")
        upsert_tickets(
            conn,
            "sqlite",
            [
                stored_ticket(updated_at=NOW - timedelta(days=1), key=f"ABC-{n}")
                for n in range(1, TICKETS[site] + 1)
            ],
            source="sweep",
            fetched_at=NOW - timedelta(hours=3),
            site=site,
        )
        if site in WATERMARK:
            advance_watermark(conn, "sqlite", WATERMARK[site], scope=site_scope(site))
        # The plain site's scope, far behind: a page reading it instead of the site's would show it.
        advance_watermark(conn, "sqlite", NOW - timedelta(days=3), scope=SCHEDULED_SCOPE)
        if REJECTED[site]:
            record_rejected(
                conn,
                "sqlite",
                mailbox="INBOX",
                uidvalidity=1,
                site=site,
                imap_conn_id=f"imap_{site}",
                entries=[
                    {
                        "uid": uid,
                        "reason": "untrusted_sender: x@spam.example",
                        "sender": f"{site}@spam.example",
                    }
                    for uid in REJECTED[site]
                ],
                now=NOW - timedelta(minutes=1),
            )
        if site == "b":
            # b's watcher of Service Desk is refused, and a row of a watcher no mailbox of b has.
            for conn_id, mailbox in (("imap_b", "Service Desk"), ("imap_elsewhere", "INBOX")):
                refusals = RefusedLogins(clock=lambda: NOW.timestamp())
                refusals.refused("NO [AUTHENTICATIONFAILED]")
                save_refused_login(conn, "sqlite", imap_conn_id=conn_id, mailbox=mailbox, refusals=refusals)
        conn.commit()


@pytest.fixture(scope="module")
def sites_env(airflow_db: str, dovecot) -> Iterator[dict[str, Any]]:
    """The sites file, stores and connections, in this process's environment too (for reserialize)."""
    work = Path(tempfile.mkdtemp(prefix="jms-status-sites-"))
    sites_file = work / "jira_sites.yaml"
    sites_file.write_text(yaml.safe_dump({"sites": SITES}))
    accounts = {name: dovecot.create_account() for name in ("a", "b")}
    env = {
        "AIRFLOW__JIRA_MAIL_SYNC__SITES_FILE": str(sites_file),
        "AIRFLOW__JIRA_MAIL_SYNC__INBOX_MODE": "poll",
        "AIRFLOW__JIRA_MAIL_SYNC__STATUS_MAILBOX_CACHE_SECONDS": "3600",
    }
    stores = {}
    for site in ("a", "b", "c"):
        stores[site] = work / f"store_{site}.db"
        _fill(stores[site], site)
        env[f"AIRFLOW_CONN_STORE_{site.upper()}"] = json.dumps(
            {"conn_type": "sqlite", "host": str(stores[site])}
        )
    for name, account in accounts.items():
        env[f"AIRFLOW_CONN_IMAP_{name.upper()}"] = json.dumps(account.airflow_conn())
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        reserialized = airflow_cli("dags", "reserialize")
        assert reserialized.returncode == 0, reserialized.stderr[-3000:]
        try:
            yield {"env": env, "stores": stores, "work": work, "accounts": accounts}
        finally:
            for account in accounts.values():
                account.close()
    # The later modules find the plain DAGs serialized again, as they were.
    restored = airflow_cli("dags", "reserialize")
    assert restored.returncode == 0, restored.stderr[-3000:]
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def server(sites_env: dict[str, Any]) -> Iterator[StatusServer]:
    work = sites_env["work"]
    passwords = {name: secrets.token_urlsafe(12) for name in ("admin", "watcher", OPERATOR, NOT_B)}
    passwords_file = work / "passwords.json"
    passwords_file.write_text(json.dumps(passwords))
    port = free_port()
    server = StatusServer(
        url=f"http://{LOOPBACK}:{port}",
        store_path=sites_env["stores"]["a"],
        jwt_secret=secrets.token_urlsafe(64),
        log_path=work / "api-server.log",
        imap=None,
        relay=None,
        passwords=passwords,
    )
    process = start_api_server(
        port=port,
        jwt_secret=server.jwt_secret,
        passwords_file=passwords_file,
        log_path=server.log_path,
        cwd=work,
        users=f"admin:admin,watcher:viewer,{OPERATOR}:admin,{NOT_B}:viewer",
        settings={
            **sites_env["env"],
            "AIRFLOW__CORE__AUTH_MANAGER": REFUSING_AUTH_MANAGER,
            REFUSED_METHODS_ENV: json.dumps(
                {OPERATOR: {B_INBOX: ["POST"]}, NOT_B: {"jira_sweep__b": ["GET"]}}
            ),
            # The fixtures' rows are 3 hours old: served from the store, no Jira asked.
            "AIRFLOW__JIRA_MAIL_SYNC__STORE_MAX_AGE_SECONDS": str(24 * 3600),
            "AIRFLOW__API__BASE_URL": f"http://{LOOPBACK}:{port}",
        },
    )
    try:
        server.token = server.token_for("admin")
        yield server
    finally:
        stop_process_group(process, timeout_s=20)


def _status(server: StatusServer, token: str | None = None, **params: str) -> requests.Response:
    return server.get(STATUS, token=token or server.token, params=params)


def _run_conf(dag_id: str, run_id: str) -> dict[str, Any] | None:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        dag_run = session.query(DagRun).filter_by(dag_id=dag_id, run_id=run_id).one_or_none()
        return None if dag_run is None else dict(dag_run.conf or {})


# ------------------------------------------------------------------------------------ the site list


def test_the_json_lists_every_site_and_mailbox_and_says_which_site_it_chose(server: StatusServer) -> None:
    answer = _status(server)

    assert answer.status_code == 200, f"{answer.text}\n{server.log_tail()}"
    figures = answer.json()
    assert [site["name"] for site in figures["sites"]] == ["a", "b", "c"]
    assert figures["sites_configured"] == 3 and figures["from_sites_file"] is True
    by_name = {site["name"]: site for site in figures["sites"]}
    assert by_name["b"]["mailboxes"] == [
        {"imap_conn_id": "imap_b", "mailbox": "INBOX", "slug": "inbox", "inbox_dag_id": B_INBOX},
        {"imap_conn_id": "imap_b", "mailbox": "Service Desk", "slug": "service-desk", "inbox_dag_id": B_DESK},
    ]
    assert [box["inbox_dag_id"] for box in by_name["c"]["mailboxes"]] == ["jira_inbox__c__archive"]
    assert (by_name["b"]["pool"], by_name["a"]["pool"]) == ("budget_b", "jira_api_a")
    assert (by_name["b"]["sweep_dag_id"], by_name["b"]["census_dag_id"]) == (
        "jira_sweep__b",
        "jira_census__b",
    )
    assert (by_name["b"]["jira_conn_id"], by_name["b"]["store_conn_id"]) == ("jira_b", "store_b")
    # No ?site=: the first site, and the answer says it was chosen so.
    assert (figures["site"]["name"], figures["site"]["selected_by"]) == ("a", "first")
    assert _status(server, site="a").json()["site"]["selected_by"] == "site parameter"


def test_each_site_reads_its_own_store_watermark_watchers_and_dag_runs(server: StatusServer) -> None:
    released = server.post(RELEASE, token=server.token, json={"site": "b", "uids": [4]})
    assert released.status_code == 200, f"{released.text}\n{server.log_tail()}"

    a = _status(server, site="a").json()
    b = _status(server, site="b").json()

    assert (a["tickets"]["total"], b["tickets"]["total"]) == (TICKETS["a"], TICKETS["b"])
    assert (a["ledger"]["rejected"], b["ledger"]["rejected"]) == (1, 2)
    assert {e["uid"] for e in b["ledger"]["entries"]} == {4, 5}
    assert datetime.fromisoformat(a["sweep"]["watermark"]) == WATERMARK["a"]
    assert datetime.fromisoformat(b["sweep"]["watermark"]) == WATERMARK["b"]
    assert (a["inbox"]["dag_id"], b["inbox"]["dag_id"]) == ("jira_inbox__a__inbox", B_INBOX)
    assert (a["sweep"]["dag_id"], b["sweep"]["dag_id"]) == ("jira_sweep__a", "jira_sweep__b")
    assert b["runs_shown"] == {B_INBOX: True, "jira_sweep__b": True}
    assert b["inbox"]["last_run"]["run_id"] == released.json()["dag_run_id"]
    assert a["inbox"]["last_run"] is None
    assert (a["inbox"]["imap_conn_id"], b["inbox"]["imap_conn_id"]) == ("imap_a", "imap_b")
    assert a["inbox"].get("error") is None and b["inbox"].get("error") is None, (a["inbox"], b["inbox"])
    # b's watcher state: its own refused mailbox, not the other row of its store; a's store has none.
    assert [(r["imap_conn_id"], r["mailbox"]) for r in b["inbox"]["refused_logins"]] == [
        ("imap_b", "Service Desk")
    ]
    assert a["inbox"]["refused_logins"] == []


def test_a_mailbox_is_chosen_by_slug_or_folder_within_its_site(server: StatusServer) -> None:
    by_slug = _status(server, site="b", mailbox="service-desk").json()
    by_folder = _status(server, site="b", mailbox="Service Desk").json()
    elsewhere = _status(server, site="a", mailbox="Service Desk")

    assert by_slug["inbox"]["dag_id"] == by_folder["inbox"]["dag_id"] == B_DESK
    assert by_slug["inbox"]["mailbox"] == "Service Desk"
    assert elsewhere.status_code == 404 and "INBOX (inbox)" in elsewhere.json()["detail"]


def test_an_unknown_site_is_404_for_the_json_the_page_and_a_release(server: StatusServer) -> None:
    json_answer = _status(server, site="nope")
    page = server.get(PAGE, cookies={"_token": server.token}, params={"site": "nope"})
    release = server.post(RELEASE, token=server.token, json={"site": "nope", "uids": [1]})

    assert json_answer.status_code == page.status_code == release.status_code == 404
    assert "No site is called 'nope'" in json_answer.json()["detail"]
    assert "No site is called" in page.text and 'data-status="404"' in page.text


# ------------------------------------------------------------------------------------------- the page


def test_the_page_shows_the_selector_and_the_chosen_sites_figures(server: StatusServer) -> None:
    page = server.get(PAGE, cookies={"_token": server.token}, params={"site": "b"})

    assert page.status_code == 200, page.text
    assert 'id="site-selector"' in page.text
    assert '<option value="b" selected>b</option>' in page.text
    assert '<option value="a">a</option>' in page.text and '<option value="c">c</option>' in page.text
    assert (
        f'data-inbox-dag="{B_DESK}"' in page.text and 'data-inbox-dag="jira_inbox__c__archive"' in page.text
    )
    assert f'data-figure="tickets.total">{TICKETS["b"]}<' in page.text
    assert '<input type="hidden" name="site" value="b">' in page.text
    assert "../status?site=b&amp;mailbox=INBOX" in page.text
    first = server.get(PAGE, cookies={"_token": server.token})
    assert f'data-figure="tickets.total">{TICKETS["a"]}<' in first.text and 'id="site-first"' in first.text


# ------------------------------------------------------------------------------------------ releases


def test_a_release_triggers_the_chosen_mailboxs_own_inbox_dag(server: StatusServer) -> None:
    answer = server.post(RELEASE, token=server.token, json={"site": "b", "uids": [5, 4]})
    form = server.post(
        RELEASE,
        cookies={"_token": server.token},
        data={"site": "b", "mailbox": "service-desk", "uid": ["9"]},
        headers={"Origin": server.url},
    )

    assert answer.status_code == 200, answer.text
    assert (answer.json()["site"], answer.json()["dag_id"]) == ("b", B_INBOX)
    assert _run_conf(B_INBOX, answer.json()["dag_run_id"]) == {
        "mailbox": "INBOX",
        "release_uids": [4, 5],
        "release_all": False,
    }
    assert form.status_code == 303, form.text
    location = form.headers["Location"]
    assert location.startswith("page?site=b&mailbox=Service%20Desk&released=release__"), location
    run_id = requests.utils.unquote(location.split("released=")[1])
    assert _run_conf(B_DESK, run_id) == {"mailbox": "Service Desk", "release_uids": [9], "release_all": False}
    assert _run_conf("jira_inbox", run_id) is None


def test_a_release_needs_the_right_to_trigger_that_sites_inbox_dag(server: StatusServer) -> None:
    operator = server.token_for(OPERATOR)
    refused = server.post(RELEASE, token=operator, json={"site": "b", "uids": [4]})
    allowed_a = server.post(RELEASE, token=operator, json={"site": "a", "uids": [3]})
    allowed_desk = server.post(
        RELEASE, token=operator, json={"site": "b", "mailbox": "service-desk", "uids": [4]}
    )
    page_b = server.get(PAGE, cookies={"_token": operator}, params={"site": "b"})
    page_a = server.get(PAGE, cookies={"_token": operator}, params={"site": "a"})

    assert refused.status_code == 403, refused.text
    assert refused.json()["detail"] == f"This user may not trigger the {B_INBOX} DAG"
    assert allowed_a.status_code == allowed_desk.status_code == 200, (allowed_a.text, allowed_desk.text)
    assert allowed_a.json()["dag_id"] == "jira_inbox__a__inbox"
    # The page offers the release only where the user may trigger the mailbox's inbox DAG.
    assert page_b.status_code == page_a.status_code == 200
    assert 'id="release"' not in page_b.text and f"needs the right to trigger {B_INBOX}" in page_b.text
    assert 'id="release"' in page_a.text


def test_a_viewer_reads_every_site_but_releases_none(server: StatusServer) -> None:
    viewer = server.token_for("watcher")
    answers = [_status(server, token=viewer, site=site) for site in ("a", "b", "c")]
    releases = [server.post(RELEASE, token=viewer, json={"site": site, "uids": [1]}) for site in ("a", "b")]

    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert [answer.status_code for answer in releases] == [403, 403]
    assert "jira_inbox__a__inbox" in releases[0].text and B_INBOX in releases[1].text


# ------------------------------------------------------------------------------------ the REST lookup


def test_the_rest_lookup_answers_from_the_named_sites_store_and_needs_the_right_to_read_that_site(
    server: StatusServer,
) -> None:
    def lookup(key: str, token: str, **params: str) -> requests.Response:
        return server.post(TICKET, token=token, json={"key": key}, params=params)

    # ABC-5 is in b's store only (a holds ABC-1..2): b answers it from its store, a does not have it.
    from_b = lookup("ABC-5", server.token, site="b")
    assert from_b.status_code == 200, f"{from_b.text}\n{server.log_tail()}"
    assert from_b.json()["key"] == "ABC-5"
    from_a = lookup("ABC-5", server.token, site="a")
    assert from_a.status_code != 200, from_a.text  # a's Jira connection is not set up here
    several = lookup("ABC-1", server.token)
    assert several.status_code == 400 and "one of: a, b, c" in several.json()["detail"], several.text

    not_b = server.token_for(NOT_B)
    refused = lookup("ABC-5", not_b, site="b")
    assert refused.status_code == 403, refused.text
    assert refused.json()["detail"] == "This user may not read the jira_sweep__b DAG"
    assert lookup("ABC-1", not_b, site="a").status_code == 200
    # The sites this user is told about are the ones it may read.
    unnamed = lookup("ABC-1", not_b)
    assert unnamed.status_code == 400 and "one of: a, c" in unnamed.json()["detail"], unnamed.text
