"""Pytest fixtures: the session's Dovecot (devkit.dovecot), a fresh mail account per test."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from devkit.dovecot import DovecotServer, DovecotStartError, ImapAccount, start_dovecot
from devkit.unavailable import service_unavailable


def _running_dovecot() -> Iterator[DovecotServer]:
    try:
        server = start_dovecot()
    except (DovecotStartError, OSError) as exc:
        service_unavailable(f"Dovecot could not start: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def dovecot() -> Iterator[DovecotServer]:
    """One real Dovecot for the whole session (IMAP on `port`, IMAPS on `ssl_port`)."""
    yield from _running_dovecot()


@pytest.fixture
def private_dovecot() -> Iterator[DovecotServer]:
    """A Dovecot of the test's own, for tests that restart or reconfigure the server."""
    yield from _running_dovecot()


@pytest.fixture
def imap_account(dovecot: DovecotServer) -> Iterator[ImapAccount]:
    """A fresh user with an empty Maildir, removed after the test."""
    account = dovecot.create_account()
    try:
        yield account
    finally:
        account.close()


@pytest.fixture
def imap_conn_env(imap_account: ImapAccount, monkeypatch: pytest.MonkeyPatch) -> ImapAccount:
    """`imap_account`, reachable from Airflow as the `imap_default` connection (plain IMAP)."""
    monkeypatch.setenv("AIRFLOW_CONN_IMAP_DEFAULT", json.dumps(imap_account.airflow_conn()))
    return imap_account
