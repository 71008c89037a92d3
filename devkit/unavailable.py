"""What a test does when a real service it needs cannot start: fail, or skip only when asked to."""

from __future__ import annotations

import os

ALLOW_SKIP_ENV = "JMS_ALLOW_SKIP"


def service_unavailable(message: str) -> None:
    """Fail the requesting test with `message`; skip instead only when JMS_ALLOW_SKIP=1 is set explicitly."""
    import pytest

    if os.environ.get(ALLOW_SKIP_ENV) == "1":
        pytest.skip(f"{message} ({ALLOW_SKIP_ENV}=1)")
    pytest.fail(f"{message}\n(set {ALLOW_SKIP_ENV}=1 to skip these tests instead of failing)", pytrace=False)
