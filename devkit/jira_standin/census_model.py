"""What the census must tell apart, modelled on the stand-in: archived issues and lost project access.

Jira Cloud (Premium/Enterprise) archives issues with PUT /rest/api/3/issue/archive: an archived issue
drops out of search and of bulk fetch, and a direct GET still answers 200. Jira's OpenAPI document
gives it no IssueBean property; the only archival-specific fields it names are `ArchivedBy` and
`ArchivedDate` (PUT /rest/api/3/issues/archive/export), served here as the issue fields `archivedby`
(a User) and `archiveddate` (a Jira timestamp), when asked for by name or by *all / *navigable.

A project the sync account lost access to (its Browse permission revoked) drops out of search and
bulk fetch; a GET answers 403 with Jira's permission message, unlike a hidden issue (`set_hidden`,
answered 404 exactly as a deleted one).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from include.jira_rules import normalise_key

ARCHIVE_FIELDS = ("archiveddate", "archivedby")
NO_PERMISSION_MESSAGE = "You do not have the permission to see the specified issue."


class CensusModel:
    """Mixed into JiraStandin; its state lives under the stand-in's lock like the rest."""

    def _clear_census_state(self) -> None:
        self._archived: dict[int, tuple[datetime, str]] = {}  # issue id -> (when, by whom)
        self._denied_projects: set[str] = set()

    def archive_issue(self, key: str, *, by: str | None = None, at: datetime | None = None) -> None:
        """Archive an issue: absent from search and bulk fetch, 200 on GET with the archive fields."""
        with self._lock:
            issue = self._issues.get(normalise_key(key))
            if issue is None:
                raise KeyError(f"no issue {key!r}")
            self._archived[issue.id] = (at or datetime.now(UTC), by or self.email)

    def unarchive_issue(self, key: str) -> None:
        with self._lock:
            issue = self._issues.get(normalise_key(key))
            if issue is None:
                raise KeyError(f"no issue {key!r}")
            self._archived.pop(issue.id, None)

    def deny_project(self, project: str, denied: bool = True) -> None:
        """Revoke (or give back) the account's access to a whole project: 403 on GET, out of search."""
        with self._lock:
            (self._denied_projects.add if denied else self._denied_projects.discard)(normalise_key(project))

    def _listable(self, issue: Any) -> bool:
        """Whether search and bulk fetch show this issue (hidden issues are handled by the caller)."""
        return issue.id not in self._archived and issue.project_key not in self._denied_projects

    def _archive_fields(self, issue: Any, tokens: list[str], base: str, time_zone: str) -> dict[str, Any]:
        """The archive fields of an archived issue that `tokens` ask for (none for a live one)."""
        from .server import jira_timestamp

        if issue.id not in self._archived:
            return {}
        wanted = set(tokens)
        every = bool(wanted & {"*all", "*navigable"}) or not tokens
        when, by = self._archived[issue.id]
        fields: dict[str, Any] = {}
        if every or "archiveddate" in wanted:
            fields["archiveddate"] = jira_timestamp(when, time_zone)
        if every or "archivedby" in wanted:
            fields["archivedby"] = self._user_json(by, False, base, time_zone)
        return fields
