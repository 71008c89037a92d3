"""Jira Cloud's rules that every part of the project must agree on: key shapes and request limits.

The parser, the client, the store, the sweep's params and the Jira stand-in all read them from here,
so they can never disagree about what an issue key is or how many keys one request may carry.
"""

from __future__ import annotations

import re

# Jira Cloud project keys start with an upper-case letter, go on with upper-case letters, digits or
# underscores, and are 2 to 10 characters long; issue numbers start at 1.
PROJECT_KEY_PATTERN = r"[A-Z][A-Z0-9_]{1,9}"
ISSUE_NUMBER_PATTERN = r"[1-9][0-9]{0,9}"
ISSUE_KEY_PATTERN = rf"{PROJECT_KEY_PATTERN}-{ISSUE_NUMBER_PATTERN}"

PROJECT_KEY = re.compile(PROJECT_KEY_PATTERN)
ISSUE_KEY = re.compile(ISSUE_KEY_PATTERN)

# POST /rest/api/3/issue/bulkfetch takes at most this many keys (a larger request answers 400).
BULK_FETCH_LIMIT = 100
# GET /rest/api/3/search/jql pages: up to 5000 results when only id/key are asked for, else 100.
SEARCH_PAGE_LIMIT_KEYS_ONLY = 5000
SEARCH_PAGE_LIMIT_WITH_FIELDS = 100


def is_issue_key(value: object) -> bool:
    """True for a string that is exactly one Jira issue key, e.g. "ABC-123"."""
    return isinstance(value, str) and ISSUE_KEY.fullmatch(value) is not None


def is_project_key(value: object) -> bool:
    """True for a string that is exactly one Jira project key, e.g. "ABC"."""
    return isinstance(value, str) and PROJECT_KEY.fullmatch(value) is not None
