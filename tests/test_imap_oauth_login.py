"""ImapInboxHook logins (password, XOAUTH2, OAUTHBEARER) on real Dovecot and the token stand-in."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jira_mail_sync.hooks.imap import ImapInboxHook, ImapLoginError, ImapLoginUnavailable

from devkit.mail_factory import jira_notification
from devkit.oauth_standin import ENTRA_TOKEN, GENERIC_TOKEN, GOOGLE_TOKEN, INTROSPECT
from devkit.processes import free_port
from include.imap_oauth import clear_token_cache

SECRET = "client-secret-DO-NOT-LEAK-" + uuid.uuid4().hex


def use_connection(monkeypatch, conn: dict) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_IMAP_DEFAULT", json.dumps(conn))


def generic_extra(standin, account, auth_type: str = "xoauth2") -> dict:
    return {"auth_type": auth_type, "token_url": standin.token_url, "client_id": f"app-{account.user}"}


def read_mailbox() -> tuple[str | None, int, int]:
    hook = ImapInboxHook()
    with hook.inbox("INBOX") as inbox:
        uidvalidity = inbox.open(readonly=True)
        return hook.auth_type, uidvalidity, len(inbox.unseen_uids(limit=100))


@pytest.fixture
def seeded(oauth_imap_account):
    """The OAuth-enabled mailbox with one unseen Jira mail, to prove logins read it and failures leave it."""
    oauth_imap_account.append(jira_notification("ABC-1", site="acme.atlassian.net"))
    return oauth_imap_account


@pytest.mark.parametrize(("auth_type", "mechanism"), [("xoauth2", "XOAUTH2"), ("oauthbearer", "OAUTHBEARER")])
def test_three_sessions_share_one_token_and_each_logs_in_with_it(
    seeded, oauth_standin, monkeypatch, caplog, auth_type, mechanism
):
    oauth_standin.register_client(f"app-{seeded.user}", SECRET, seeded.user)
    use_connection(
        monkeypatch, seeded.airflow_oauth_conn(generic_extra(oauth_standin, seeded, auth_type), SECRET)
    )
    caplog.set_level(logging.DEBUG)

    results = [read_mailbox() for _ in range(3)]

    assert [r[0] for r in results] == [auth_type] * 3
    assert [r[2] for r in results] == [1, 1, 1]
    assert oauth_standin.count(GENERIC_TOKEN) == 1
    # Dovecot checked the one token at every login (force_introspection).
    assert oauth_standin.count(INTROSPECT, status=200) == 3
    # The whole SASL exchange at DEBUG (imapclient and imaplib log it) shows neither token nor secret.
    assert caplog.text.count("AUTHENTICATE **REDACTED**") == 3
    assert [m for m in seeded.login_methods() if m != "PLAIN"] == [mechanism] * 3
    (token,) = oauth_standin.issued_tokens()[-1:]
    assert token not in caplog.text and SECRET not in caplog.text
    assert seeded.unseen_count() == 1


def test_password_logins_still_work_on_the_same_server(seeded, monkeypatch):
    use_connection(monkeypatch, seeded.airflow_conn())
    assert read_mailbox()[0::2] == ("password", 1)


def test_microsoft_entra_token_from_msal_opens_the_mailbox(seeded, oauth_standin, monkeypatch):
    oauth_standin.register_client("entra-app", SECRET, seeded.user, tenant="contoso")
    extra = {
        "auth_type": "xoauth2",
        "oauth_provider": "microsoft",
        "tenant_id": "contoso",
        "client_id": "entra-app",
        "authority_host": oauth_standin.base_url,
    }
    use_connection(monkeypatch, seeded.airflow_oauth_conn(extra, SECRET))

    assert read_mailbox()[0::2] == ("xoauth2", 1)
    assert oauth_standin.count(ENTRA_TOKEN, status=200) == 1


def rsa_key_pair() -> tuple[str, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def test_google_service_account_token_from_google_auth_opens_the_mailbox(seeded, oauth_standin, monkeypatch):
    private, public = rsa_key_pair()
    email = "jira-sync@jms-test.iam.gserviceaccount.com"
    oauth_standin.register_service_account(email, "key-1", public, delegated_subjects={seeded.user})
    key = {
        "type": "service_account",
        "project_id": "jms-test",
        "private_key_id": "key-1",
        "private_key": private,
        "client_email": email,
        "client_id": "1234567890",
        "token_uri": oauth_standin.google_token_uri,
    }
    extra = {"auth_type": "oauthbearer", "oauth_provider": "google", "service_account_info": key}
    use_connection(monkeypatch, seeded.airflow_oauth_conn(extra, None))

    assert read_mailbox()[0::2] == ("oauthbearer", 1)
    (request,) = [r for r in oauth_standin.requests if r.endpoint == GOOGLE_TOKEN]
    assert (request.username, request.status) == (seeded.user, 200)


def google_refresh_extra(standin, refresh_token: str) -> dict:
    return {
        "auth_type": "xoauth2",
        "oauth_provider": "google",
        "client_id": "gmail-client",
        "refresh_token": refresh_token,
        "token_uri": standin.google_token_uri,
    }


def test_google_refresh_token_opens_the_mailbox(seeded, oauth_standin, monkeypatch):
    refresh_token = f"refresh-{seeded.user}"
    oauth_standin.register_refresh_token(refresh_token, "gmail-client", SECRET, seeded.user)
    use_connection(
        monkeypatch, seeded.airflow_oauth_conn(google_refresh_extra(oauth_standin, refresh_token), SECRET)
    )

    assert read_mailbox()[0::2] == ("xoauth2", 1)


def test_an_expired_refresh_token_says_authorize_again(seeded, oauth_standin, monkeypatch):
    oauth_standin.register_refresh_token(f"refresh-{seeded.user}", "gmail-client", SECRET, seeded.user)
    conn = seeded.airflow_oauth_conn(google_refresh_extra(oauth_standin, "refresh-expired-long-ago"), SECRET)
    use_connection(monkeypatch, conn)

    with pytest.raises(
        ImapLoginError, match="refused the refresh token .*expired or revoked; authorize again"
    ):
        read_mailbox()
    assert oauth_standin.count(INTROSPECT) == 0
    assert seeded.unseen_count() == 1


def test_a_wrong_client_secret_fails_once_naming_the_fix_and_never_the_secret(
    seeded, oauth_standin, monkeypatch, caplog
):
    oauth_standin.register_client(f"app-{seeded.user}", "the-right-secret", seeded.user)
    use_connection(monkeypatch, seeded.airflow_oauth_conn(generic_extra(oauth_standin, seeded), SECRET))
    caplog.set_level(logging.DEBUG)

    with pytest.raises(ImapLoginError) as caught:
        read_mailbox()

    assert str(caught.value) == (
        f"IMAP connection 'imap_default': the token endpoint {oauth_standin.token_url} refused the client "
        "credentials (invalid_client): check client_id and the secret in the connection password"
    )
    assert (oauth_standin.count(GENERIC_TOKEN), oauth_standin.count(INTROSPECT)) == (1, 0)
    assert SECRET not in caplog.text and caught.value.__cause__ is None
    assert seeded.unseen_count() == 1


def test_a_refused_token_is_renewed_once_then_fails_naming_the_mailbox_permission(
    seeded, oauth_standin, monkeypatch
):
    oauth_standin.register_client("entra-app", SECRET, seeded.user, tenant="contoso")
    oauth_standin.refuse_user(seeded.user)  # like a mailbox the app was never granted
    extra = {
        "auth_type": "xoauth2",
        "oauth_provider": "microsoft",
        "tenant_id": "contoso",
        "client_id": "entra-app",
        "authority_host": oauth_standin.base_url,
    }
    use_connection(monkeypatch, seeded.airflow_oauth_conn(extra, SECRET))

    with pytest.raises(ImapLoginError) as caught:
        read_mailbox()

    message = str(caught.value)
    assert message.startswith(
        f"IMAP connection 'imap_default': the IMAP server refused the token for {seeded.user}: "
        "check IMAP.AccessAsApp and the mailbox permission"
    )
    assert "AUTHENTICATIONFAILED" in message
    # One token, one refresh, one login attempt with each: no retry storm.
    assert (oauth_standin.count(ENTRA_TOKEN), oauth_standin.count(INTROSPECT)) == (2, 2)
    assert all(token not in message for token in oauth_standin.issued_tokens())
    assert seeded.unseen_count() == 1


def test_a_revoked_token_is_replaced_by_one_fresh_token_and_the_login_succeeds(
    seeded, oauth_standin, monkeypatch
):
    oauth_standin.register_client(f"app-{seeded.user}", SECRET, seeded.user)
    use_connection(monkeypatch, seeded.airflow_oauth_conn(generic_extra(oauth_standin, seeded), SECRET))
    read_mailbox()
    oauth_standin.revoke_all_tokens()  # the cached token is still "valid" by its lifetime, but dead

    assert read_mailbox()[0::2] == ("xoauth2", 1)
    assert oauth_standin.count(GENERIC_TOKEN) == 2
    assert [r.status for r in oauth_standin.requests if r.endpoint == INTROSPECT] == [200, 200, 200]
    assert [r.error for r in oauth_standin.requests if r.endpoint == INTROSPECT] == [None, "inactive", None]


def test_a_server_without_the_sasl_mechanism_says_which_it_offers(imap_account, oauth_standin, monkeypatch):
    # The session's plain Dovecot has no oauth2 passdb: it offers AUTH=PLAIN and AUTH=LOGIN only.
    oauth_standin.register_client(f"app-{imap_account.user}", SECRET, imap_account.user)
    conn = imap_account.airflow_conn()
    conn["extra"] = {**conn["extra"], **generic_extra(oauth_standin, imap_account, "oauthbearer")}
    conn["password"] = SECRET
    use_connection(monkeypatch, conn)

    with pytest.raises(
        ImapLoginError, match=r"does not offer AUTH=OAUTHBEARER \(it offers AUTH=LOGIN, AUTH=PLAIN\)"
    ):
        read_mailbox()


def test_a_wrong_password_fails_at_once_with_the_servers_answer(seeded, monkeypatch):
    conn = seeded.airflow_conn()
    conn["password"] = "not-the-password-" + uuid.uuid4().hex
    use_connection(monkeypatch, conn)

    with pytest.raises(ImapLoginError) as caught:
        read_mailbox()

    message = str(caught.value)
    assert message.startswith(
        "IMAP connection 'imap_default': the IMAP server 127.0.0.1 refused the password login "
        f"for {seeded.user}"
    )
    assert "AUTHENTICATIONFAILED" in message and "check the connection's login and password" in message
    assert conn["password"] not in message


def test_an_unreachable_token_endpoint_is_left_to_airflows_retries(seeded, monkeypatch):
    clear_token_cache()
    extra = {"auth_type": "xoauth2", "token_url": f"https://127.0.0.1:{free_port()}/token", "client_id": "a"}
    use_connection(monkeypatch, seeded.airflow_oauth_conn(extra, SECRET))

    with pytest.raises(ImapLoginUnavailable, match=r"could not be reached \(ConnectionError\)"):
        read_mailbox()
    assert not isinstance(ImapLoginUnavailable("x"), ImapLoginError)


def test_an_invalid_auth_type_fails_before_any_connection(seeded, monkeypatch):
    conn = seeded.airflow_conn()
    conn["extra"] = {**conn["extra"], "auth_type": "ntlm"}
    use_connection(monkeypatch, conn)

    with pytest.raises(ImapLoginError, match="unknown auth_type 'ntlm' in the imap connection's extra"):
        read_mailbox()


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("auth_type", ["password", "xoauth2", "oauthbearer"])
def test_check_connections_logs_in_with_every_auth_type(
    seeded, oauth_standin, store_conn_env, monkeypatch, auth_type
):
    from jira_mail_sync.check_connections import check_imap

    if auth_type == "password":
        use_connection(monkeypatch, seeded.airflow_conn())
    else:
        oauth_standin.register_client(f"app-{seeded.user}", SECRET, seeded.user)
        use_connection(
            monkeypatch, seeded.airflow_oauth_conn(generic_extra(oauth_standin, seeded, auth_type), SECRET)
        )

    assert check_imap() == (
        True,
        f"INBOX: logged in ({auth_type}), UIDVALIDITY {seeded.uidvalidity()}, "
        "1 unseen message(s); held back by the mail ledger: 0 rejected, 0 failed, 0 quarantined",
    )


def test_check_connections_reports_a_refused_token_like_the_tasks(seeded, oauth_standin, monkeypatch):
    from jira_mail_sync.check_connections import check_imap

    oauth_standin.register_client(f"app-{seeded.user}", SECRET, seeded.user)
    oauth_standin.refuse_user(seeded.user)
    use_connection(monkeypatch, seeded.airflow_oauth_conn(generic_extra(oauth_standin, seeded), SECRET))

    ok, message = check_imap()

    assert ok is False
    assert message.startswith(
        f"IMAP connection 'imap_default': the IMAP server refused the token for {seeded.user}: check that"
    )
    assert SECRET not in message and seeded.unseen_count() == 1
