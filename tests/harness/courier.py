"""Pytest fixtures: a keyword-less real Courier IMAP (devkit.courier, IMAP_KEYWORDS=0), a login per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devkit.courier import CourierAccount, CourierServer, CourierStartError, start_courier
from devkit.unavailable import service_unavailable


@pytest.fixture(scope="session")
def keywordless_courier() -> Iterator[CourierServer]:
    """One Courier for the session that, like Exchange Online, keeps no custom keywords."""
    try:
        server = start_courier(keywords=False)
    except (CourierStartError, OSError) as exc:
        service_unavailable(f"Courier IMAP could not start: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def courier_account(keywordless_courier: CourierServer) -> Iterator[CourierAccount]:
    """A fresh login with an empty Maildir on the keyword-less Courier."""
    account = keywordless_courier.create_account()
    try:
        yield account
    finally:
        account.close()
