"""The stand-in's issue changelogs: POST /rest/api/3/changelog/bulkfetch and GET /issue/{id}/changelog.

Shapes from Jira's OpenAPI document (/work/shared/reference/jira-openapi/swagger-v3.v3.json):
- the bulk request is BulkChangelogRequestBean (additionalProperties false): issueIdsOrKeys 1..1000
  (required), fieldIds 0..10 unique, maxResults 1..10000 (default 1000), nextPageToken; the answer is
  BulkChangelogResponseBean {issueChangeLogs: [{issueId, changeHistories: [Changelog]}], nextPageToken}
  with no token on the last page, "sorted by changelog date and issue IDs, starting from the oldest
  changelog and smallest issue ID"; 400 for input validation problems;
- the per-issue GET answers PageBeanChangelog {self, nextPage?, maxResults, startAt, total, isLast,
  values} with startAt/maxResults (default 100), and 404 for an issue the account cannot see;
- a Changelog is {id, author: UserDetails, created: date-time, items: [ChangeDetails]}, a
  ChangeDetails {field, fieldId, fieldtype, from, fromString, to, toString}.
Every edit of an issue in the stand-in (update_issue, add_issue over an existing key, move_issue)
appends one history with a growing id, as Jira does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from include.jira_rules import (
    CHANGELOG_BULK_DEFAULT_RESULTS,
    CHANGELOG_BULK_MAX_FIELDS,
    CHANGELOG_BULK_MAX_ISSUES,
    CHANGELOG_BULK_MAX_RESULTS,
    ISSUE_CHANGELOG_PAGE_DEFAULT,
)

FIRST_HISTORY_ID = 10000
BULK_BODY_FIELDS = {"issueIdsOrKeys", "fieldIds", "maxResults", "nextPageToken"}
# Jira caps a page of GET /issue/{id}/changelog at 100 whatever maxResults asks.
ISSUE_CHANGELOG_PAGE_MAX = 100


class ChangelogBadRequest(Exception):
    """A changelog request the stand-in answers with 400 and this message."""


@dataclass(frozen=True)
class History:
    id: int
    issue_id: int
    created: datetime
    author_email: str
    items: tuple[dict[str, Any], ...]


class ChangelogBook:
    """Every issue's histories, in the order they were made. Not thread-safe: the stand-in locks."""

    def __init__(self, token_key: bytes) -> None:
        self._key = token_key
        self._next_id = FIRST_HISTORY_ID
        self._by_issue: dict[int, list[History]] = {}

    def record(self, issue_id: int, created: datetime, author_email: str, items: Sequence[dict]) -> None:
        if not items:
            return
        history = History(self._next_id, issue_id, created, author_email, tuple(items))
        self._next_id += 1
        self._by_issue.setdefault(issue_id, []).append(history)

    def count(self, issue_id: int) -> int:
        return len(self._by_issue.get(issue_id, ()))

    # ------------------------------------------------------------------------------------ rendering

    @staticmethod
    def _rendered(
        history: History, items: Sequence[dict], render_user: Callable[[str], dict], render_time: Callable
    ) -> dict[str, Any]:
        return {
            "id": str(history.id),
            "author": render_user(history.author_email),
            "created": render_time(history.created),
            "items": [dict(item) for item in items],
        }

    # --------------------------------------------------------------------------------------- paging

    def _token(self, offset: int, request: str) -> str:
        body = json.dumps({"o": offset, "r": request}, separators=(",", ":")).encode()
        mac = hmac.new(self._key, body, hashlib.sha256).digest()[:12]
        return base64.urlsafe_b64encode(body + mac).decode().rstrip("=")

    def _offset(self, token: str, request: str) -> int:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            body, mac = raw[:-12], raw[-12:]
            if not hmac.compare_digest(mac, hmac.new(self._key, body, hashlib.sha256).digest()[:12]):
                raise ValueError
            data = json.loads(body)
            if data["r"] != request:
                raise ValueError
            return int(data["o"])
        except (ValueError, KeyError, TypeError):
            raise ChangelogBadRequest("The nextPageToken is invalid.") from None

    # ----------------------------------------------------------------------------------- endpoints

    def bulkfetch(
        self,
        payload: Mapping[str, Any],
        find: Callable[[str], Any],
        render_user: Callable[[str], dict],
        render_time: Callable[[datetime], str],
    ) -> dict[str, Any]:
        """The answer to one POST /rest/api/3/changelog/bulkfetch (ChangelogBadRequest for a 400)."""
        unknown = sorted(set(payload) - BULK_BODY_FIELDS)
        if unknown:
            raise ChangelogBadRequest(f'Unrecognized field "{unknown[0]}" in the request body.')
        wanted = payload.get("issueIdsOrKeys")
        if not isinstance(wanted, list) or not all(isinstance(item, str) for item in wanted):
            raise ChangelogBadRequest("'issueIdsOrKeys' must be an array of strings.")
        if not wanted:
            raise ChangelogBadRequest("At least one issue ID or key must be provided.")
        if len(wanted) > CHANGELOG_BULK_MAX_ISSUES:
            raise ChangelogBadRequest(
                f"The number of issue IDs or keys requested ({len(wanted)}) exceeds the maximum of "
                f"{CHANGELOG_BULK_MAX_ISSUES}."
            )
        field_ids = payload.get("fieldIds") or []
        if not isinstance(field_ids, list) or not all(isinstance(item, str) for item in field_ids):
            raise ChangelogBadRequest("'fieldIds' must be an array of strings.")
        if len(field_ids) > CHANGELOG_BULK_MAX_FIELDS:
            raise ChangelogBadRequest(
                f"The number of field IDs ({len(field_ids)}) exceeds the maximum of "
                f"{CHANGELOG_BULK_MAX_FIELDS}."
            )
        if len(set(field_ids)) != len(field_ids):
            raise ChangelogBadRequest("'fieldIds' must not contain duplicates.")
        max_results = payload.get("maxResults", CHANGELOG_BULK_DEFAULT_RESULTS)
        if (
            not isinstance(max_results, int)
            or isinstance(max_results, bool)
            or not 1 <= max_results <= CHANGELOG_BULK_MAX_RESULTS
        ):
            raise ChangelogBadRequest(f"'maxResults' must be between 1 and {CHANGELOG_BULK_MAX_RESULTS}.")
        token = payload.get("nextPageToken")
        if token is not None and not isinstance(token, str):
            raise ChangelogBadRequest("'nextPageToken' must be a string.")
        # Unknown and invisible issues are left out silently, as the issue bulk fetch does.
        ids = sorted({issue.id for issue in (find(item) for item in wanted) if issue is not None})
        request = hashlib.sha256(json.dumps([ids, sorted(field_ids)]).encode()).hexdigest()[:16]
        wanted_fields = set(field_ids)
        selected: list[tuple[History, list[dict]]] = []
        for issue_id in ids:
            for history in self._by_issue.get(issue_id, ()):
                items = [i for i in history.items if not wanted_fields or i.get("fieldId") in wanted_fields]
                if items:
                    selected.append((history, items))
        selected.sort(key=lambda pair: (pair[0].created, pair[0].issue_id, pair[0].id))
        offset = self._offset(token, request) if token else 0
        page = selected[offset : offset + max_results]
        logs: list[dict[str, Any]] = []
        for history, items in page:
            # Consecutive histories of one issue share one IssueChangeLog entry.
            if not logs or logs[-1]["issueId"] != str(history.issue_id):
                logs.append({"issueId": str(history.issue_id), "changeHistories": []})
            logs[-1]["changeHistories"].append(self._rendered(history, items, render_user, render_time))
        answer: dict[str, Any] = {"issueChangeLogs": logs}
        if offset + max_results < len(selected):
            answer["nextPageToken"] = self._token(offset + max_results, request)
        return answer

    def issue_changelog(
        self,
        issue: Any,
        params: Mapping[str, list[str]],
        self_url: str,
        render_user: Callable[[str], dict],
        render_time: Callable[[datetime], str],
    ) -> dict[str, Any]:
        """The answer to GET /rest/api/3/issue/{id}/changelog (PageBeanChangelog), oldest first."""

        def number(name: str, default: int) -> int:
            values = params.get(name)
            if not values or values[-1] == "":
                return default
            try:
                return int(values[-1])
            except ValueError:
                raise ChangelogBadRequest(f"'{name}' must be a number.") from None

        start = max(number("startAt", 0), 0)
        size = min(max(number("maxResults", ISSUE_CHANGELOG_PAGE_DEFAULT), 1), ISSUE_CHANGELOG_PAGE_MAX)
        histories = self._by_issue.get(issue.id, [])
        page = histories[start : start + size]
        last = start + len(page) >= len(histories)
        answer: dict[str, Any] = {
            "self": f"{self_url}?startAt={start}&maxResults={size}",
            "maxResults": size,
            "startAt": start,
            "total": len(histories),
            "isLast": last,
            "values": [self._rendered(h, h.items, render_user, render_time) for h in page],
        }
        if not last:
            answer["nextPage"] = f"{self_url}?startAt={start + size}&maxResults={size}"
        return answer


def edit_items(before: Any, after: Any, user_name: Callable[[str], str]) -> list[dict[str, Any]]:
    """The ChangeDetails of one edit of an issue (stand-in `_Issue` before and after)."""
    items: list[dict[str, Any]] = []
    if before.status != after.status:
        items.append(
            {
                "field": "status",
                "fieldId": "status",
                "fieldtype": "jira",
                "from": before.status_id,
                "fromString": before.status,
                "to": after.status_id,
                "toString": after.status,
            }
        )
    if before.assignee_email != after.assignee_email:
        items.append(
            {
                "field": "assignee",
                "fieldId": "assignee",
                "fieldtype": "jira",
                "from": before.assignee_account_id,
                "fromString": None if before.assignee_email is None else user_name(before.assignee_email),
                "to": after.assignee_account_id,
                "toString": None if after.assignee_email is None else user_name(after.assignee_email),
            }
        )
    if before.summary != after.summary:
        items.append(
            {
                "field": "summary",
                "fieldId": "summary",
                "fieldtype": "jira",
                "from": None,
                "fromString": before.summary,
                "to": None,
                "toString": after.summary,
            }
        )
    old, new = dict(before.custom_fields), dict(after.custom_fields)
    for field_id in sorted(set(old) | set(new)):
        if old.get(field_id) != new.get(field_id):
            items.append(
                {
                    "field": field_id,
                    "fieldId": field_id,
                    "fieldtype": "custom",
                    "from": None,
                    "fromString": None if old.get(field_id) is None else str(old[field_id]),
                    "to": None,
                    "toString": None if new.get(field_id) is None else str(new[field_id]),
                }
            )
    return items


def move_items(before: Any, after: Any) -> list[dict[str, Any]]:
    """The ChangeDetails Jira records when an issue moves to another project: its project and key."""
    items = [
        {
            "field": "Key",
            "fieldId": "key",
            "fieldtype": "jira",
            "from": None,
            "fromString": before.key,
            "to": None,
            "toString": after.key,
        }
    ]
    if before.project_key != after.project_key:
        items.insert(
            0,
            {
                "field": "project",
                "fieldId": "project",
                "fieldtype": "jira",
                "from": str(before.project_id),
                "fromString": before.project_name,
                "to": str(after.project_id),
                "toString": after.project_name,
            },
        )
    return items
