"""Pytest fixtures for OAuth 2.0 IMAP logins: the identity-provider stand-in, a Dovecot taking its tokens."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devkit.dovecot import (
    DovecotServer,
    DovecotStartError,
    ImapAccount,
    TlsFiles,
    start_dovecot,
    write_tls_files,
)
from devkit.oauth_standin import OAuthStandin, start_oauth_standin
from devkit.unavailable import service_unavailable


@pytest.fixture(scope="session")
def oauth_tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A throw-away CA and a localhost/127.0.0.1 certificate for the stand-in's HTTPS listener."""
    return write_tls_files(tmp_path_factory.mktemp("oauth-tls"))


@pytest.fixture(scope="session")
def oauth_standin_server(oauth_tls: TlsFiles) -> Iterator[OAuthStandin]:
    """The session's identity provider: HTTPS token endpoints, plain-HTTP introspection for Dovecot."""
    with start_oauth_standin(oauth_tls.server_cert, oauth_tls.server_key) as server:
        yield server


@pytest.fixture
def oauth_standin(
    oauth_standin_server: OAuthStandin, oauth_tls: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> Iterator[OAuthStandin]:
    """The stand-in with an empty request log, trusted by requests (REQUESTS_CA_BUNDLE), and this
    process's cached tokens forgotten before and after the test."""
    from include import imap_oauth

    imap_oauth.clear_token_cache()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(oauth_tls.ca_cert))
    oauth_standin_server.reset_log()
    yield oauth_standin_server
    imap_oauth.clear_token_cache()


@pytest.fixture(scope="session")
def oauth_dovecot(oauth_standin_server: OAuthStandin) -> Iterator[DovecotServer]:
    """A real Dovecot whose oauth2 passdb introspects tokens at the stand-in (passwords work too)."""
    try:
        server = start_dovecot(oauth2_introspection_url=oauth_standin_server.introspection_url)
    except (DovecotStartError, OSError) as exc:
        service_unavailable(f"Dovecot (oauth2 passdb) could not start: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def oauth_imap_account(oauth_dovecot: DovecotServer) -> Iterator[ImapAccount]:
    """A fresh mailbox on the OAuth-enabled Dovecot; register a client for `account.user` to log in."""
    account = oauth_dovecot.create_account()
    try:
        yield account
    finally:
        account.close()
