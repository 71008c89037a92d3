"""Jira Cloud's rules that every part of the project must agree on: key shapes and request limits.

The parser, the client, the store, the sweep's params and the Jira stand-in all read them from here,
so they can never disagree about what an issue key is or how many keys one request may carry.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Jira Cloud project keys start with an upper-case letter, go on with upper-case letters, digits or
# underscores, and are 2 to 10 characters long; issue numbers start at 1.
PROJECT_KEY_PATTERN = r"[A-Z][A-Z0-9_]{1,9}"
ISSUE_NUMBER_PATTERN = r"[1-9][0-9]{0,9}"
ISSUE_KEY_PATTERN = rf"{PROJECT_KEY_PATTERN}-{ISSUE_NUMBER_PATTERN}"

PROJECT_KEY = re.compile(PROJECT_KEY_PATTERN)
ISSUE_KEY = re.compile(ISSUE_KEY_PATTERN)

# POST /rest/api/3/issue/bulkfetch takes at most BULK_FETCH_LIMIT_ANY_FIELDS keys whatever the fields,
# and up to BULK_FETCH_LIMIT_PLAIN_FIELDS when `fields` names at most BULK_FETCH_LARGE_MAX_FIELDS fields
# explicitly, none of them multi-valued, and `expand` asks for none of BULK_FETCH_HEAVY_EXPANDS; a
# larger request than allowed answers 400.
BULK_FETCH_LIMIT_ANY_FIELDS = 100
BULK_FETCH_LIMIT_PLAIN_FIELDS = 1000
BULK_FETCH_LARGE_MAX_FIELDS = 100
BULK_FETCH_HEAVY_EXPANDS = frozenset(
    {"changelog", "editmeta", "operations", "renderedFields", "transitions", "versionedRepresentations"}
)
# System fields that hold lists of items. Custom fields are multi-valued when /rest/api/3/field gives
# them an array schema (include/ticket_fields.py reads that).
MULTI_VALUED_SYSTEM_FIELDS = frozenset(
    {
        "attachment",
        "comment",
        "components",
        "fixVersions",
        "issuelinks",
        "labels",
        "subtasks",
        "versions",
        "worklog",
    }
)
# GET /rest/api/3/search/jql pages: up to 5000 results when only id/key are asked for, else 100.
SEARCH_PAGE_LIMIT_KEYS_ONLY = 5000
SEARCH_PAGE_LIMIT_WITH_FIELDS = 100


def is_issue_key(value: object) -> bool:
    """True for a string that is exactly one Jira issue key, e.g. "ABC-123"."""
    return isinstance(value, str) and ISSUE_KEY.fullmatch(value) is not None


def normalise_key(value: object) -> str:
    """A key as Jira writes it, surrounding blanks dropped and upper-cased: " abc-1" -> "ABC-1"."""
    return str(value).strip().upper()


def is_project_key(value: object) -> bool:
    """True for a string that is exactly one Jira project key, e.g. "ABC"."""
    return isinstance(value, str) and PROJECT_KEY.fullmatch(value) is not None


def bulk_fetch_limit(
    fields: Iterable[str], *, multi_valued: Iterable[str] = (), expand: Iterable[str] = ()
) -> int:
    """How many issues one bulk fetch may ask for with these `fields` and `expand` (1000 or 100).

    `multi_valued` names the custom fields known to be multi-valued, beside the system ones. Field
    wildcards (`*all`, `*navigable`), exclusions (`-summary`) or no fields at all are not explicit.
    """
    names = [str(name).strip() for name in fields]
    heavy = {str(option).strip() for option in expand} & BULK_FETCH_HEAVY_EXPANDS
    explicit = bool(names) and not any(not name or name[0] in "*-" for name in names)
    listed = MULTI_VALUED_SYSTEM_FIELDS | set(multi_valued)
    if explicit and len(set(names)) <= BULK_FETCH_LARGE_MAX_FIELDS and not heavy and not listed & set(names):
        return BULK_FETCH_LIMIT_PLAIN_FIELDS
    return BULK_FETCH_LIMIT_ANY_FIELDS


# POST /rest/api/3/changelog/bulkfetch (BulkChangelogRequestBean in Jira's OpenAPI document):
# issueIdsOrKeys 1..1000, fieldIds 0..10 (unique), maxResults 1..10000 (default 1000), nextPageToken.
CHANGELOG_BULK_MAX_ISSUES = 1000
CHANGELOG_BULK_MAX_FIELDS = 10
CHANGELOG_BULK_MAX_RESULTS = 10000
CHANGELOG_BULK_DEFAULT_RESULTS = 1000
# GET /rest/api/3/issue/{issueIdOrKey}/changelog pages with startAt/maxResults (default 100).
ISSUE_CHANGELOG_PAGE_DEFAULT = 100
