"""The Jira sync page's rules for text a stranger controls: `released=`, the Origin of a release, `?mailbox=`.

In process, no services: the rules are plain functions of the request. Hypothesis runs derandomized,
so every run tries the same examples.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi import HTTPException
from hypothesis import given, settings
from hypothesis import strategies as st
from jira_mail_sync import status_page
from jira_mail_sync.status_page import checked_mailbox, release_run_id, same_origin, shown_release
from starlette.requests import Request

FUZZ = settings(max_examples=300, deadline=None, derandomize=True)
KNOWN = ("INBOX", "Jira")


def _request(host: str, headers: dict[str, str], scheme: str = "http") -> Request:
    raw = [(b"host", host.encode("latin-1"))]
    raw += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
    return Request({"type": "http", "method": "POST", "scheme": scheme, "path": "/", "headers": raw})


def test_the_run_id_of_a_release_is_shown() -> None:
    run_id = release_run_id(datetime(2026, 12, 7, 10, 11, 12, 345678, tzinfo=UTC))
    assert run_id == "release__20261207T101112345678"
    assert shown_release(run_id) == run_id


@FUZZ
@given(st.text(max_size=80))
def test_no_other_released_text_is_shown(text: str) -> None:
    shown = shown_release(text)
    assert shown is None or (shown == text and len(text) == 30 and text.startswith("release__"))
    assert shown_release("release__20261207T101112345678" + text) in (None, "release__20261207T101112345678")
    assert shown_release(text + "<b>") is None


@pytest.mark.parametrize(
    ("origin", "same"),
    [
        pytest.param("http://127.0.0.1:8080", True, id="own"),
        pytest.param("http://127.0.0.1:8080/jira-mail-sync/status/page", True, id="own-referer-path"),
        pytest.param("https://127.0.0.1:8080", False, id="other-scheme"),
        pytest.param("http://127.0.0.1:8081", False, id="other-port"),
        pytest.param("https://evil.example", False, id="other-site"),
        pytest.param("null", False, id="opaque"),
    ],
)
def test_a_release_origin_is_this_airflows_own(origin: str, same: bool, monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "")
    assert same_origin(_request("127.0.0.1:8080", {"Origin": origin})) is same


def test_forwarded_host_counts_only_once_the_api_server_applied_the_forwarded_scheme(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "")
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "airflow.example.test"}
    origin = {"Origin": "https://airflow.example.test"}

    # --proxy-headers: uvicorn has set the scheme from X-Forwarded-Proto.
    assert same_origin(_request("10.0.0.5:8080", forwarded | origin, scheme="https"))
    # Without it the scheme stays http, and the proxy's headers are not taken.
    assert not same_origin(_request("10.0.0.5:8080", forwarded | origin, scheme="http"))
    # Not even their host: a header the api-server did not apply is not trusted for the other.
    plain_origin = {"Origin": "http://airflow.example.test"}
    assert not same_origin(_request("10.0.0.5:8080", forwarded | plain_origin, scheme="http"))


def test_the_public_origin_of_base_url_is_accepted_without_proxy_headers(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.test/airflow")
    assert same_origin(_request("10.0.0.5:8080", {"Origin": "https://airflow.example.test"}))
    assert not same_origin(_request("10.0.0.5:8080", {"Origin": "https://other.example.test"}))


@FUZZ
@given(
    origin=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60),
    forwarded_host=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30),
)
def test_a_fuzzed_origin_passes_only_when_it_is_one_of_this_sites(origin: str, forwarded_host: str) -> None:
    request = _request(
        "127.0.0.1:8080",
        {"Origin": origin, "X-Forwarded-Proto": "https", "X-Forwarded-Host": forwarded_host},
        scheme="https",
    )
    allowed = {"https://127.0.0.1:8080", f"https://{forwarded_host.split(',')[0].strip()}"}
    if same_origin(request):
        from urllib.parse import urlsplit

        parts = urlsplit(origin)
        assert f"{parts.scheme}://{parts.netloc}" in allowed


@FUZZ
@given(st.text(max_size=60))
def test_a_mailbox_no_dag_reads_is_refused_before_any_imap(name: str) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(status_page, "known_mailboxes", lambda: KNOWN)
        try:
            chosen = checked_mailbox(name)
        except HTTPException as exc:
            assert exc.status_code in (404, 422)
            assert name not in KNOWN
        else:
            assert chosen in KNOWN


@pytest.mark.parametrize("headers", [{"Origin": ""}, {"Referer": ""}, {"Origin": "null"}], ids=str)
def test_an_empty_or_opaque_origin_is_refused(headers: dict[str, str], monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "")
    assert not same_origin(_request("127.0.0.1:8080", headers))


def test_a_client_that_sends_no_origin_passes(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "")
    assert same_origin(_request("127.0.0.1:8080", {}))


# ------------------------------------------------------------------ the site selector (#23), in process

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
        "mailboxes": [{"imap_conn_id": "imap_b"}, {"imap_conn_id": "imap_b", "mailbox": "Service Desk"}],
    },
    {
        "name": "c",
        "jira_conn_id": "jira_c",
        "store_conn_id": "store_c",
        "mailboxes": [{"imap_conn_id": "imap_a", "mailbox": "Archive"}],
    },
]


class _User:
    def get_name(self) -> str:
        return "someone"


@pytest.fixture
def sites_file(tmp_path, monkeypatch):
    """A sites file of `SITES`, and an auth manager stand-in that grants every DAG but `refused`."""
    import yaml
    from jira_mail_sync import auth

    def write(sites: list[dict]) -> None:
        path = tmp_path / "jira_sites.yaml"
        path.write_text(yaml.safe_dump({"sites": sites}))
        monkeypatch.setenv("AIRFLOW__JIRA_MAIL_SYNC__SITES_FILE", str(path))

    refused: set[str] = set()
    asked: list[str] = []

    def may_access_dag(user, dag_id, *, entity=None, method="GET"):
        asked.append(dag_id)
        return dag_id not in refused

    monkeypatch.setattr(auth, "may_access_dag", may_access_dag)
    monkeypatch.setattr(status_page, "may_access_dag", may_access_dag)
    write(SITES)
    return write, refused, asked


def _status(exc: pytest.ExceptionInfo[HTTPException]) -> tuple[int, str]:
    return exc.value.status_code, str(exc.value.detail)


def test_the_site_parameter_chooses_the_site_and_its_first_mailbox(sites_file) -> None:
    chosen = status_page.select(_User(), "b", None)

    assert (chosen.site.name, chosen.mailbox.mailbox, chosen.selected_by) == ("b", "INBOX", "site parameter")
    assert chosen.read_dags == ("jira_inbox__b__inbox", "jira_sweep__b")
    assert chosen.query() == "site=b&mailbox=INBOX"
    desk = status_page.select(_User(), "b", "service-desk")
    assert desk.inbox_dag_id == "jira_inbox__b__service-desk" and desk.mailbox.mailbox == "Service Desk"
    assert status_page.select(_User(), "b", "Service Desk").inbox_dag_id == "jira_inbox__b__service-desk"
    assert status_page.select(_User(), "c", None).mailbox.imap_conn_id == "imap_a"


def test_without_a_site_parameter_the_first_readable_site_is_chosen_and_says_so(sites_file) -> None:
    _, refused, _ = sites_file
    assert status_page.select(_User(), None, None).site.name == "a"
    refused.add("jira_sweep__a")
    chosen = status_page.select(_User(), None, None)
    assert (chosen.site.name, chosen.selected_by) == ("b", "first")


def test_an_unknown_site_or_mailbox_is_404_naming_no_other_site(sites_file) -> None:
    with pytest.raises(HTTPException) as unknown_site:
        status_page.select(_User(), "zz", None)
    with pytest.raises(HTTPException) as unknown_mailbox:
        status_page.select(_User(), "b", "Jira")
    with pytest.raises(HTTPException) as bad_name:
        status_page.select(_User(), "b", "a\r\nb")

    code, detail = _status(unknown_site)
    assert code == 404 and "'zz'" in detail and "jira_sweep__a" not in detail and "'a'" not in detail
    assert _status(unknown_mailbox)[0] == 404 and "Service Desk (service-desk)" in _status(unknown_mailbox)[1]
    assert _status(bad_name)[0] == 422


def test_reading_a_site_needs_its_own_dags_not_the_plain_ones(sites_file) -> None:
    _, refused, _ = sites_file
    refused.update({"jira_inbox", "jira_sweep", "jira_inbox__b__service-desk"})
    assert status_page.select(_User(), "b", None).site.name == "b"
    with pytest.raises(HTTPException) as desk:
        status_page.select(_User(), "b", "service-desk")
    assert _status(desk) == (403, "This user may not read the jira_inbox__b__service-desk DAG")
    refused.add("jira_sweep__c")
    with pytest.raises(HTTPException) as site_c:
        status_page.select(_User(), "c", None)
    assert _status(site_c) == (403, "This user may not read the jira_sweep__c DAG")


def test_the_site_list_shows_what_the_user_may_read_and_stays_bounded(sites_file) -> None:
    write, refused, asked = sites_file
    refused.update({"jira_sweep__c", "jira_inbox__b__service-desk"})
    chosen = status_page.select(_User(), "a", None)
    listing = status_page.site_listing(_User(), chosen)

    assert [site["name"] for site in listing["sites"]] == ["a", "b"]
    (b,) = [site for site in listing["sites"] if site["name"] == "b"]
    assert b["mailboxes"] == [
        {
            "imap_conn_id": "imap_b",
            "mailbox": "INBOX",
            "slug": "inbox",
            "inbox_dag_id": "jira_inbox__b__inbox",
        }
    ]
    assert (b["sweep_dag_id"], b["census_dag_id"], b["pool"]) == (
        "jira_sweep__b",
        "jira_census__b",
        "jira_api_b",
    )
    assert listing["sites_truncated"] is False and listing["sites_configured"] == 3

    many = [
        {
            "name": f"s{n}",
            "jira_conn_id": "j",
            "store_conn_id": f"store{n}",
            "mailboxes": [{"imap_conn_id": f"i{n}"}],
        }
        for n in range(status_page.MAX_SITES_SHOWN + 10)
    ]
    write(many)
    refused.clear()
    last = status_page.select(_User(), f"s{len(many) - 1}", None)
    asked.clear()
    listing = status_page.site_listing(_User(), last)
    assert len(listing["sites"]) == status_page.MAX_SITES_SHOWN + 1  # the bound, and the chosen one
    assert listing["sites"][-1]["name"] == last.site.name and listing["sites_truncated"] is True
    assert len(asked) <= 2 * (status_page.MAX_SITES_SHOWN + 1)


def test_a_bad_sites_file_is_503_naming_the_entry_not_a_500(sites_file) -> None:
    write, _, _ = sites_file
    write([{"name": "a", "jira_conn_id": "jira_a", "store_conn_id": "s", "mailboxes": []}])
    with pytest.raises(HTTPException) as bad:
        status_page.select(_User(), None, None)
    assert bad.value.status_code == 503 and "sites[0] (a), field mailboxes" in bad.value.detail


def test_without_a_sites_file_the_plain_site_keeps_todays_names(monkeypatch) -> None:
    from jira_mail_sync import auth

    monkeypatch.delenv("AIRFLOW__JIRA_MAIL_SYNC__SITES_FILE", raising=False)
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", "/nonexistent-dags-folder")
    monkeypatch.setattr(auth, "may_access_dag", lambda *a, **k: True)
    monkeypatch.setattr(status_page, "may_access_dag", lambda *a, **k: True)
    monkeypatch.setattr(status_page, "known_mailboxes", lambda: KNOWN)
    chosen = status_page.select(_User(), None, None)

    assert chosen.site.plain and chosen.read_dags == ("jira_inbox", "jira_sweep")
    assert chosen.query() == "mailbox=INBOX" and chosen.mailbox.imap_conn_id == "imap_default"
    assert status_page.select(_User(), "default", "Jira").mailbox.mailbox == "Jira"
    listing = status_page.site_listing(_User(), chosen)
    assert listing["from_sites_file"] is False
    assert [box["inbox_dag_id"] for box in listing["sites"][0]["mailboxes"]] == ["jira_inbox"]
