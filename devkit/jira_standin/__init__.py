"""A local stand-in for Jira Cloud's REST API (myself, issues, bulk fetch, JQL search) for tests and demos."""

from __future__ import annotations

from .jql import JqlError, jira_local_to_instant
from .server import (
    ISSUE_NOT_FOUND_MESSAGE,
    SEARCH_REMOVED_MESSAGE,
    JiraStandin,
    LoggedRequest,
    jira_timestamp,
)

__all__ = [
    "ISSUE_NOT_FOUND_MESSAGE",
    "SEARCH_REMOVED_MESSAGE",
    "JiraStandin",
    "JqlError",
    "LoggedRequest",
    "jira_local_to_instant",
    "jira_timestamp",
]
