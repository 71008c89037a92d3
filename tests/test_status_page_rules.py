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
