"""Ticket records as fetch_batch hands them to the store, for tests that only need rows in jira_ticket."""

from __future__ import annotations

import zlib
from datetime import datetime
from typing import Any


def stored_ticket(key: str, *, updated_at: datetime, **fields: Any) -> dict[str, Any]:
    """A minimal ticket for `key`; its issue id is derived from the key, so distinct keys never share one."""
    return {
        "key": key,
        "issue_id": 10_000 + zlib.crc32(key.encode()),
        "summary": f"summary of {key}",
        "status": "Open",
        "assignee_email": None,
        "progress": None,
        "updated_at": updated_at,
    } | fields
