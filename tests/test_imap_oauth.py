"""OAuth 2.0 tokens for IMAP: real authlib, msal and google-auth against the loopback stand-in and Dovecot."""

from __future__ import annotations

import contextlib
import imaplib
import json
import logging
import threading
import uuid
from collections.abc import Iterator

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devkit.dovecot import ImapAccount, TlsFiles, write_tls_files
from devkit.oauth_standin import (
    ENTRA_DISCOVERY,
    ENTRA_TOKEN,
    GENERIC_TOKEN,
    GMAIL_SCOPE,
    GOOGLE_TOKEN,
    INTROSPECT,
    OUTLOOK_SCOPE,
    OAuthStandin,
    start_oauth_standin,
)
from devkit.processes import free_port
from devkit.sasl import oauthbearer_string, sasl_responder, xoauth2_string
from include import imap_oauth
from include.imap_oauth import ImapAuthError, imap_auth_from_connection

SECRET = "S3cr3t-DO-NOT-LEAK-" + uuid.uuid4().hex
MAILBOX = "jira-inbox@example.com"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return write_tls_files(tmp_path_factory.mktemp("oauth-tls"))


@pytest.fixture
def standin(tls: TlsFiles) -> Iterator[OAuthStandin]:
    imap_oauth.clear_token_cache()
    with start_oauth_standin(tls.server_cert, tls.server_key) as server:
        yield server
    imap_oauth.clear_token_cache()


def connect(tls: TlsFiles, login: str, password: str | None, extra: dict) -> imap_oauth.ImapAuth:
    return imap_auth_from_connection(login, password, extra, verify=str(tls.ca_cert), timeout=5)


def generic_extra(standin: OAuthStandin, **more: object) -> dict:
    return {"auth_type": "xoauth2", "token_url": standin.token_url, "client_id": "app-1", **more}


def introspect(standin: OAuthStandin, token: str) -> dict:
    return requests.post(standin.introspection_url, data={"token": token}, timeout=5).json()


def rsa_key() -> tuple[str, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def service_account_info(standin: OAuthStandin, email: str, private_pem: str, key_id: str) -> dict:
    # The shape of a key file downloaded from Google Cloud's console (IAM > Service accounts > Keys).
    return {
        "type": "service_account",
        "project_id": "jms-test",
        "private_key_id": key_id,
        "private_key": private_pem,
        "client_email": email,
        "client_id": "1234567890",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": standin.google_token_uri,
    }


# --- the generic client-credentials source (authlib) ---------------------------------------------


def test_three_logins_need_exactly_one_token_request(standin, tls):
    standin.register_client("app-1", SECRET, MAILBOX)
    tokens = {connect(tls, MAILBOX, SECRET, generic_extra(standin)).access_token() for _ in range(3)}
    assert len(tokens) == 1
    assert standin.count(GENERIC_TOKEN) == 1
    (request,) = standin.requests
    assert (request.grant_type, request.client_id, request.client_auth) == (
        "client_credentials",
        "app-1",
        "basic",
    )
    assert introspect(standin, tokens.pop())["username"] == MAILBOX


def test_client_secret_post_sends_the_secret_in_the_body(standin, tls):
    standin.register_client("app-1", SECRET, MAILBOX, scopes={"imap"})
    extra = generic_extra(standin, token_endpoint_auth_method="client_secret_post", scope="imap")
    connect(tls, MAILBOX, SECRET, extra).access_token()
    (request,) = standin.requests
    assert (request.client_auth, request.scope, request.status) == ("body", None, 200)


class SteppedClock:
    """A clock that moves only when told: expiry is tested at exact instants, with no sleep."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_token_is_renewed_shortly_before_it_expires(standin, tls):
    standin.register_client("app-1", SECRET, MAILBOX, lifetime_s=2)
    auth = connect(tls, MAILBOX, SECRET, generic_extra(standin))
    auth.source.clock = clock = SteppedClock()
    first = auth.access_token()
    clock.advance(1.75)  # before 2 s minus the 10% margin: still the cached token
    assert auth.access_token() == first
    assert standin.count(GENERIC_TOKEN) == 1
    clock.advance(0.1)  # past the margin, before the token really expires
    second = auth.access_token()
    assert second != first
    assert standin.count(GENERIC_TOKEN) == 2
    assert introspect(standin, first)["active"] is True


def test_refresh_after_a_refusal_fetches_one_new_token_for_all_threads(standin, tls):
    standin.register_client("app-1", SECRET, MAILBOX)
    auth = connect(tls, MAILBOX, SECRET, generic_extra(standin))
    refused = auth.access_token()
    renewed: list[str] = []
    threads = [
        threading.Thread(target=lambda: renewed.append(auth.refresh(failed_token=refused))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(set(renewed)) == 1 and renewed[0] != refused
    assert standin.count(GENERIC_TOKEN) == 2


def test_invalidate_forgets_the_token(standin, tls):
    standin.register_client("app-1", SECRET, MAILBOX)
    auth = connect(tls, MAILBOX, SECRET, generic_extra(standin))
    first = auth.access_token()
    auth.invalidate()
    assert auth.access_token() != first
    assert standin.count(GENERIC_TOKEN) == 2


def test_a_rotated_secret_gets_its_own_token_source(standin, tls):
    standin.register_client("app-1", SECRET, MAILBOX)
    old = connect(tls, MAILBOX, SECRET, generic_extra(standin))
    standin.register_client("app-1", SECRET + "-v2", MAILBOX)
    new = connect(tls, MAILBOX, SECRET + "-v2", generic_extra(standin))
    assert old.source is not new.source
    assert connect(tls, MAILBOX, SECRET, generic_extra(standin)).source is old.source


def test_the_ca_bundle_can_come_from_requests_ca_bundle(standin, tls, monkeypatch):
    standin.register_client("app-1", SECRET, MAILBOX)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_cert))
    imap_auth_from_connection(MAILBOX, SECRET, generic_extra(standin)).access_token()
    assert standin.count(GENERIC_TOKEN, status=200) == 1


def test_an_untrusted_certificate_says_so(standin, tls, monkeypatch):
    standin.register_client("app-1", SECRET, MAILBOX)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with pytest.raises(ImapAuthError, match="TLS certificate could not be verified"):
        imap_auth_from_connection(MAILBOX, SECRET, generic_extra(standin)).access_token()


# --- errors that name the fix, and never a secret ------------------------------------------------


def _wrong_secret_case(kind: str, standin: OAuthStandin) -> tuple[dict, str]:
    if kind == "generic":
        standin.register_client("app-1", "the-right-one", MAILBOX)
        return generic_extra(standin), "refused the client credentials (invalid_client): check client_id"
    if kind == "microsoft":
        standin.register_client("app-1", "the-right-one", MAILBOX, tenant="contoso")
        extra = {
            "auth_type": "xoauth2",
            "oauth_provider": "microsoft",
            "tenant_id": "contoso",
            "client_id": "app-1",
            "authority_host": standin.base_url,
        }
        return extra, "refused the client credentials (invalid_client, AADSTS7000215): check client_id"
    standin.register_refresh_token("refresh-1", "google-client", "the-right-one", MAILBOX)
    extra = {
        "auth_type": "oauthbearer",
        "oauth_provider": "google",
        "client_id": "google-client",
        "refresh_token": "refresh-1",
        "token_uri": standin.google_token_uri,
    }
    return extra, "refused the client credentials (invalid_client: Unauthorized): check client_id"


@pytest.mark.parametrize("kind", ["generic", "microsoft", "google"])
def test_a_wrong_secret_names_the_fix_and_never_the_secret(standin, tls, caplog, kind):
    extra, message = _wrong_secret_case(kind, standin)
    caplog.set_level(logging.DEBUG)
    auth = connect(tls, MAILBOX, SECRET, extra)
    with pytest.raises(ImapAuthError) as caught:
        auth.access_token()
    assert message in str(caught.value)
    assert "secret in the connection password" in str(caught.value)
    for text in (str(caught.value), repr(caught.value), repr(auth), repr(auth.source), caplog.text):
        assert SECRET not in text
    assert (
        caught.value.__cause__ is None
        and caught.value.__context__ is None
        or SECRET not in repr(caught.value.__context__)
    )
    assert standin.requests[-1].status == 401


def test_tokens_never_reach_logs_or_reprs(standin, tls, caplog):
    standin.register_client("app-1", SECRET, MAILBOX)
    caplog.set_level(logging.DEBUG)
    auth = connect(tls, MAILBOX, SECRET, generic_extra(standin))
    token = auth.access_token()
    for text in (repr(auth), repr(auth.source), caplog.text):
        assert token not in text and SECRET not in text
    assert "Fetched an access token from the token endpoint" in caplog.text


@pytest.mark.parametrize("provider", [None, "microsoft"])
def test_an_unreachable_token_endpoint_is_reported_as_unreachable(tls, provider):
    imap_oauth.clear_token_cache()
    port = free_port()
    if provider is None:
        extra = {"auth_type": "xoauth2", "token_url": f"https://127.0.0.1:{port}/token", "client_id": "app-1"}
    else:
        extra = {
            "auth_type": "xoauth2",
            "oauth_provider": "microsoft",
            "tenant_id": "contoso",
            "client_id": "app-1",
            "authority_host": f"https://127.0.0.1:{port}",
        }
    with pytest.raises(ImapAuthError, match=r"could not be reached \(ConnectionError\)") as caught:
        connect(tls, MAILBOX, SECRET, extra).access_token()
    assert "refused" not in str(caught.value) and SECRET not in str(caught.value)


# --- Microsoft Entra ID through msal --------------------------------------------------------------


def microsoft_extra(standin: OAuthStandin, tenant: str = "contoso") -> dict:
    return {
        "auth_type": "xoauth2",
        "oauth_provider": "microsoft",
        "tenant_id": tenant,
        "client_id": "app-ms",
        "authority_host": standin.base_url,
    }


def test_msal_gets_an_outlook_token_once_for_three_logins(standin, tls):
    standin.register_client("app-ms", SECRET, MAILBOX, tenant="contoso")
    tokens = {connect(tls, MAILBOX, SECRET, microsoft_extra(standin)).access_token() for _ in range(3)}
    assert standin.counters() == {ENTRA_DISCOVERY: 1, ENTRA_TOKEN: 1}
    token_request = next(r for r in standin.requests if r.endpoint == ENTRA_TOKEN)
    assert (token_request.grant_type, token_request.scope, token_request.status) == (
        "client_credentials",
        OUTLOOK_SCOPE,
        200,
    )
    assert introspect(standin, tokens.pop())["username"] == MAILBOX


def test_msal_refresh_bypasses_its_own_token_cache(standin, tls):
    standin.register_client("app-ms", SECRET, MAILBOX, tenant="contoso")
    auth = connect(tls, MAILBOX, SECRET, microsoft_extra(standin))
    first = auth.access_token()
    assert auth.refresh(failed_token=first) != first
    assert standin.count(ENTRA_TOKEN) == 2


def test_msal_unknown_tenant_says_check_tenant_id(standin, tls):
    with pytest.raises(
        ImapAuthError, match="has no tenant at .*/nowhere: check tenant_id and authority_host"
    ):
        connect(tls, MAILBOX, SECRET, microsoft_extra(standin, tenant="nowhere")).access_token()


def test_msal_unknown_application_says_check_client_id(standin, tls):
    standin.register_client("another-app", SECRET, MAILBOX, tenant="contoso")
    with pytest.raises(ImapAuthError, match=r"AADSTS700016\): check client_id: the app is not registered"):
        connect(tls, MAILBOX, SECRET, microsoft_extra(standin)).access_token()


# --- Google through google-auth -------------------------------------------------------------------


def test_google_service_account_delegates_to_the_mailbox(standin, tls):
    private, public = rsa_key()
    email = "jira-sync@jms-test.iam.gserviceaccount.com"
    standin.register_service_account(email, "key-1", public, delegated_subjects={MAILBOX})
    extra = {
        "auth_type": "xoauth2",
        "oauth_provider": "google",
        "service_account_info": json.dumps(service_account_info(standin, email, private, "key-1")),
    }
    auth = connect(tls, MAILBOX, None, extra)
    token = auth.access_token()
    assert auth.access_token() == token
    (request,) = standin.requests
    assert (request.endpoint, request.grant_type, request.client_id, request.username, request.scope) == (
        GOOGLE_TOKEN,
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
        email,
        MAILBOX,
        GMAIL_SCOPE,
    )
    assert introspect(standin, token)["username"] == MAILBOX


def test_google_service_account_key_file_works_too(standin, tls, tmp_path):
    private, public = rsa_key()
    email = "sa@jms-test.iam.gserviceaccount.com"
    standin.register_service_account(email, "key-1", public, delegated_subjects={"other@example.com"})
    key_file = tmp_path / "key.json"
    key_file.write_text(json.dumps(service_account_info(standin, email, private, "key-1")))
    extra = {
        "auth_type": "xoauth2",
        "oauth_provider": "google",
        "service_account_file": str(key_file),
        "subject": "other@example.com",
    }
    connect(tls, MAILBOX, None, extra).access_token()
    assert standin.requests[0].username == "other@example.com"


def test_google_refuses_a_key_it_did_not_register(standin, tls):
    _, registered_public = rsa_key()
    forged_private, _ = rsa_key()
    email = "sa@jms-test.iam.gserviceaccount.com"
    standin.register_service_account(email, "key-1", registered_public, delegated_subjects={MAILBOX})
    info = service_account_info(standin, email, forged_private, "key-1")
    extra = {"auth_type": "xoauth2", "oauth_provider": "google", "service_account_info": info}
    with pytest.raises(
        ImapAuthError, match=r"refused the service-account key \(invalid_grant: Invalid JWT Signature"
    ) as caught:
        connect(tls, MAILBOX, None, extra).access_token()
    assert forged_private not in str(caught.value)
    assert standin.requests[0].status == 400


def test_google_without_delegation_for_the_mailbox_names_the_admin_console(standin, tls):
    private, public = rsa_key()
    email = "sa@jms-test.iam.gserviceaccount.com"
    standin.register_service_account(email, "key-1", public, delegated_subjects={"someone-else@example.com"})
    extra = {
        "auth_type": "xoauth2",
        "oauth_provider": "google",
        "service_account_info": service_account_info(standin, email, private, "key-1"),
    }
    with pytest.raises(
        ImapAuthError, match="refused domain-wide delegation .*grant the service account's client ID"
    ):
        connect(tls, MAILBOX, None, extra).access_token()


def test_google_refresh_token_gets_a_gmail_token(standin, tls):
    standin.register_refresh_token("refresh-1", "google-client", SECRET, MAILBOX, lifetime_s=3600)
    extra = {
        "auth_type": "oauthbearer",
        "oauth_provider": "google",
        "client_id": "google-client",
        "refresh_token": "refresh-1",
        "token_uri": standin.google_token_uri,
    }
    auth = connect(tls, MAILBOX, SECRET, extra)
    token = auth.access_token()
    assert auth.mechanism == "OAUTHBEARER"
    assert auth.access_token() == token
    (request,) = standin.requests
    assert (request.grant_type, request.client_id, request.username) == (
        "refresh_token",
        "google-client",
        MAILBOX,
    )


def test_google_revoked_refresh_token_says_authorize_again(standin, tls):
    standin.register_refresh_token("refresh-1", "google-client", SECRET, MAILBOX)
    extra = {
        "auth_type": "xoauth2",
        "oauth_provider": "google",
        "client_id": "google-client",
        "refresh_token": "refresh-0-revoked",
        "token_uri": standin.google_token_uri,
    }
    with pytest.raises(
        ImapAuthError, match="refused the refresh token .*expired or revoked; authorize again"
    ):
        connect(tls, MAILBOX, SECRET, extra).access_token()


# --- extras validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "password", "message"),
    [
        ({"auth_type": "kerberos"}, SECRET, "unknown auth_type 'kerberos'"),
        ({"auth_type": "xoauth2", "oauth_provider": "yahoo"}, SECRET, "unknown oauth_provider 'yahoo'"),
        ({"oauth_provider": "google"}, SECRET, "oauth_provider is set but auth_type is password"),
        ({"auth_type": "xoauth2", "client_id": "a"}, SECRET, "extra `token_url` is required"),
        (
            {"auth_type": "xoauth2", "token_url": "http://idp/token", "client_id": "a"},
            SECRET,
            "must be an https://",
        ),
        ({"auth_type": "xoauth2", "token_url": "https://idp/token"}, SECRET, "extra `client_id` is required"),
        (
            {"auth_type": "xoauth2", "token_url": "https://idp/t", "client_id": "a"},
            "",
            "password must hold the OAuth",
        ),
        (
            {
                "auth_type": "xoauth2",
                "token_url": "https://i/t",
                "client_id": "a",
                "token_endpoint_auth_method": "x",
            },
            SECRET,
            "token_endpoint_auth_method must be one of",
        ),
        (
            {"auth_type": "xoauth2", "oauth_provider": "microsoft", "client_id": "a"},
            SECRET,
            "`tenant_id` is required",
        ),
        (
            {"auth_type": "xoauth2", "oauth_provider": "microsoft", "tenant_id": "t"},
            SECRET,
            "`client_id` is required",
        ),
        (
            {"auth_type": "xoauth2", "oauth_provider": "microsoft", "tenant_id": "t", "client_id": "a"},
            None,
            "password must hold the app's client secret value",
        ),
        (
            {
                "auth_type": "xoauth2",
                "oauth_provider": "microsoft",
                "tenant_id": "t",
                "client_id": "a",
                "authority_host": "http://x",
            },
            SECRET,
            "`authority_host` must be an https://",
        ),
        (
            {"auth_type": "xoauth2", "oauth_provider": "google"},
            None,
            "exactly one of the extras service_account_info",
        ),
        (
            {
                "auth_type": "xoauth2",
                "oauth_provider": "google",
                "refresh_token": "r",
                "service_account_file": "/k",
            },
            None,
            "exactly one of",
        ),
        (
            {"auth_type": "xoauth2", "oauth_provider": "google", "refresh_token": "r"},
            SECRET,
            "`client_id` is required",
        ),
        (
            {"auth_type": "xoauth2", "oauth_provider": "google", "service_account_info": "{no"},
            None,
            "is not JSON",
        ),
        (
            {
                "auth_type": "xoauth2",
                "oauth_provider": "google",
                "service_account_info": {"type": "authorized_user"},
            },
            None,
            "must be a JSON object of type service_account",
        ),
        (
            {
                "auth_type": "xoauth2",
                "oauth_provider": "google",
                "service_account_file": "/nonexistent/key.json",
            },
            None,
            "cannot be read",
        ),
    ],
)
def test_invalid_extras_are_refused_with_what_to_fix(extra, password, message):
    with pytest.raises(ImapAuthError, match=message) as caught:
        imap_auth_from_connection(MAILBOX, password, extra)
    assert SECRET not in str(caught.value)


def test_a_malformed_service_account_key_is_refused_without_showing_it():
    extra = {
        "auth_type": "xoauth2",
        "oauth_provider": "google",
        "service_account_info": {"client_email": "x@y", "private_key": SECRET, "token_uri": "https://t/"},
    }
    with pytest.raises(ImapAuthError, match="not a valid Google key JSON") as caught:
        imap_auth_from_connection(MAILBOX, None, extra)
    assert SECRET not in str(caught.value) and caught.value.__cause__ is None


def test_password_is_the_default_auth_type():
    auth = imap_auth_from_connection(MAILBOX, SECRET, {"use_ssl": False})
    assert (auth.auth_type, auth.mechanism, auth.source) == ("password", None, None)
    with pytest.raises(ImapAuthError, match="logs in with a password"):
        auth.access_token()


def test_a_missing_login_says_it_must_be_the_mailbox():
    with pytest.raises(ImapAuthError, match="login must be the mailbox address"):
        imap_auth_from_connection("", SECRET, {"auth_type": "xoauth2"})


# --- SASL strings and the refresh-once-retry-once login ---------------------------------------------


def test_sasl_initial_responses_have_the_documented_shape():
    assert xoauth2_string("a@b.c", "tok") == "user=a@b.c\x01auth=Bearer tok\x01\x01"
    # Byte for byte what IMAPClient 4.1.0's oauthbearer_login sends (no host/port).
    assert oauthbearer_string("a=b,c@d", "tok") == "n,a=a=3Db=2Cc@d,\x01auth=Bearer tok\x01\x01"
    assert (
        oauthbearer_string("a@b.c", "tok", host="imap.b.c", port=993)
        == "n,a=a@b.c,\x01host=imap.b.c\x01port=993\x01auth=Bearer tok\x01\x01"
    )
    respond = sasl_responder("XOAUTH2", "a@b.c", "tok")
    assert (respond(b""), respond(b'{"status":"401"}')) == (b"user=a@b.c\x01auth=Bearer tok\x01\x01", b"")


class Refused(Exception):
    pass


def test_authenticate_refreshes_once_and_retries_once(standin, tls):
    standin.register_client("app-1", SECRET, MAILBOX)
    auth = connect(tls, MAILBOX, SECRET, generic_extra(standin))
    seen: list[str] = []

    def attempt(user: str, token: str) -> str:
        seen.append(token)
        if len(seen) == 1:
            raise Refused("NO [AUTHENTICATIONFAILED]")
        return "OK"

    assert auth.authenticate(attempt, (Refused,)) == "OK"
    assert len(seen) == 2 and seen[0] != seen[1]
    assert standin.count(GENERIC_TOKEN) == 2


@pytest.mark.parametrize(
    ("provider_setup", "fix"),
    [
        ("microsoft", "check IMAP.AccessAsApp and the mailbox permission"),
        ("generic", "check that the token endpoint's client may open this mailbox"),
    ],
)
def test_a_second_refusal_raises_the_fix_without_a_retry_storm(standin, tls, provider_setup, fix):
    if provider_setup == "microsoft":
        standin.register_client("app-ms", SECRET, MAILBOX, tenant="contoso")
        extra, endpoint = microsoft_extra(standin), ENTRA_TOKEN
    else:
        standin.register_client("app-1", SECRET, MAILBOX)
        extra, endpoint = generic_extra(standin), GENERIC_TOKEN
    auth = connect(tls, MAILBOX, SECRET, extra)
    attempts: list[str] = []

    def attempt(user: str, token: str) -> None:
        attempts.append(token)
        raise Refused(f"NO [AUTHENTICATIONFAILED] token {token}")

    with pytest.raises(ImapAuthError, match=fix) as caught:
        auth.authenticate(attempt, (Refused,))
    assert len(attempts) == 2 and standin.count(endpoint) == 2
    assert caught.value.__cause__ is None
    assert all(token not in str(caught.value) for token in attempts)


def test_google_refusal_names_scope_and_delegation(standin, tls):
    private, public = rsa_key()
    email = "sa@jms-test.iam.gserviceaccount.com"
    standin.register_service_account(email, "key-1", public, delegated_subjects={MAILBOX})
    extra = {
        "auth_type": "xoauth2",
        "oauth_provider": "google",
        "service_account_info": service_account_info(standin, email, private, "key-1"),
    }
    error = connect(tls, MAILBOX, None, extra).refused_error()
    assert "https://mail.google.com/ and the service account's domain-wide delegation" in str(error)


# --- the introspection endpoint and real Dovecot with its oauth2 passdb ------------------------------


def test_introspection_honours_expiry_revocation_and_refused_users(standin, tls, monkeypatch):
    monkeypatch.setattr(standin, "clock", clock := SteppedClock())
    standin.register_client("app-1", SECRET, MAILBOX, lifetime_s=1)
    standin.register_client("app-2", SECRET, "other@example.com")
    short = connect(tls, MAILBOX, SECRET, generic_extra(standin)).access_token()
    other = connect(
        tls, "other@example.com", SECRET, generic_extra(standin, client_id="app-2")
    ).access_token()
    active = introspect(standin, short)
    assert (active["active"], active["username"], active["token_type"]) == (True, MAILBOX, "Bearer")
    assert introspect(standin, "never-issued") == {"active": False}
    standin.refuse_user("other@example.com")
    assert introspect(standin, other) == {"active": False}
    standin.allow_user("other@example.com")
    standin.revoke_token(other)
    assert introspect(standin, other) == {"active": False}
    clock.advance(0.99)
    assert introspect(standin, short)["active"] is True
    clock.advance(0.01)  # the 1 s lifetime is over
    assert introspect(standin, short) == {"active": False}
    assert standin.count(INTROSPECT) == 6


@pytest.fixture
def oauth_account(oauth_imap_account: ImapAccount, oauth_standin: OAuthStandin) -> ImapAccount:
    """A mailbox on the harness's OAuth-enabled Dovecot, and a client whose 2 s tokens open it."""
    oauth_standin.register_client(
        f"app-{oauth_imap_account.user}", SECRET, oauth_imap_account.user, lifetime_s=2
    )
    return oauth_imap_account


def imap_login(account: ImapAccount, mechanism: str, user: str, token: str) -> imaplib.IMAP4:
    client = imaplib.IMAP4(account.host, account.port, timeout=10)
    try:
        client.authenticate(mechanism, sasl_responder(mechanism, user, token))
    except BaseException:
        with contextlib.suppress(Exception):
            client.shutdown()
        raise
    return client


@pytest.mark.parametrize("auth_type", ["xoauth2", "oauthbearer"])
def test_dovecot_accepts_a_token_from_the_standin(oauth_account, oauth_standin, oauth_tls, auth_type):
    extra = generic_extra(oauth_standin, auth_type=auth_type, client_id=f"app-{oauth_account.user}")
    auth = connect(oauth_tls, oauth_account.user, SECRET, extra)
    assert f"AUTH={auth.mechanism}" in imaplib.IMAP4(oauth_account.host, oauth_account.port).capabilities
    client = auth.authenticate(
        lambda u, t: imap_login(oauth_account, auth.mechanism, u, t), (imaplib.IMAP4.error,)
    )
    try:
        assert client.state == "AUTH"
        assert client.select("INBOX")[0] == "OK"
    finally:
        client.logout()
    # Password logins through the passwd-file passdb still work beside the oauth2 one.
    assert oauth_account.connect().state == "AUTH"


def test_dovecot_refuses_an_expired_token_and_a_run_renews_it(
    oauth_account, oauth_standin, oauth_tls, monkeypatch
):
    # One clock for the stand-in (which Dovecot asks) and the client: both see the lifetime end.
    clock = SteppedClock()
    monkeypatch.setattr(oauth_standin, "clock", clock)
    extra = generic_extra(oauth_standin, client_id=f"app-{oauth_account.user}")
    auth = connect(oauth_tls, oauth_account.user, SECRET, extra)
    auth.source.clock = clock
    first = auth.access_token()
    imap_login(oauth_account, "XOAUTH2", oauth_account.user, first).logout()
    clock.advance(2.0)  # the stand-in's 2 s lifetime is over
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imap_login(oauth_account, "XOAUTH2", oauth_account.user, first)
    client = auth.authenticate(
        lambda u, t: imap_login(oauth_account, "XOAUTH2", u, t), (imaplib.IMAP4.error,)
    )
    client.logout()
    assert auth.source is not None and auth.source.fetches == 2


def test_dovecot_refusing_the_mailbox_gives_the_fix_after_one_retry(oauth_account, oauth_standin, oauth_tls):
    extra = generic_extra(oauth_standin, client_id=f"app-{oauth_account.user}")
    auth = connect(oauth_tls, oauth_account.user, SECRET, extra)
    oauth_standin.refuse_user(oauth_account.user)
    oauth_standin.reset_log()
    with pytest.raises(ImapAuthError, match=f"the IMAP server refused the token for {oauth_account.user}"):
        auth.authenticate(lambda u, t: imap_login(oauth_account, "XOAUTH2", u, t), (imaplib.IMAP4.error,))
    assert oauth_standin.count(GENERIC_TOKEN) == 2
    assert oauth_standin.count(INTROSPECT) == 2
