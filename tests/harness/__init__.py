"""Pytest fixtures over the dev kit's services (devkit/), one module per service, and when they may skip."""

from __future__ import annotations

import os

import pytest

ALLOW_SKIP_ENV = "JMS_ALLOW_SKIP"


def service_unavailable(message: str) -> None:
    """Fail the requesting test with `message`; skip instead only when JMS_ALLOW_SKIP=1 is set explicitly."""
    if os.environ.get(ALLOW_SKIP_ENV) == "1":
        pytest.skip(f"{message} ({ALLOW_SKIP_ENV}=1)")
    pytest.fail(f"{message}\n(set {ALLOW_SKIP_ENV}=1 to skip these tests instead of failing)", pytrace=False)
