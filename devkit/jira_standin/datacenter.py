"""The stand-in's Jira Data Center / Server mode, and the serverInfo both modes answer.

Selected per instance: `JiraStandin(..., flavor="datacenter", personal_access_token=...)`. Shapes are
those of the Jira Server/Data Center REST API v2 reference (docs.atlassian.com/software/jira/docs/api/
REST/9.x, "api/2/search", "api/2/serverInfo", "api/2/myself"), not invented for the client:
- `GET|POST /rest/api/2/search` pages by `startAt`/`maxResults` and answers
  `{"expand", "startAt", "maxResults", "total", "issues"}`; `maxResults` is capped by the server's
  `jira.search.views.default.max` (1000 by default) and the answer says the cap it applied;
  `validateQuery` (default true) makes a key that does not exist a 400, false a `warningMessages` entry;
- there is no `/rest/api/3`, no `/search/jql` and no `/issue/bulkfetch`: 404;
- personal access tokens as `Authorization: Bearer`, basic auth beside them;
- users by `name`/`key` (no accountId), `emailAddress` only when visible;
- the admin-set token bucket (confluence.atlassian.com/doc/_ratelimiting_httpheaders-992678779.html):
  `X-RateLimit-Limit/Remaining/Interval-Seconds/FillRate` and `Retry-After` (0 while tokens are left,
  else the seconds until the next batch of FillRate tokens) on every answer; 429 when it is empty.
A `server_error` key fault (server.KEY_FAULTS) makes every `key in (...)` search naming the key
answer 500, as it does for Cloud's bulk fetch. A test may edit issues between search pages through
`JiraStandin.between_pages` (called with the page number and the JQL after a page is computed,
before it is sent).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from .jql import JqlContext, JqlError, compile_jql

if TYPE_CHECKING:
    from .server import JiraStandin, _Reply

FLAVORS = ("cloud", "datacenter")
DEPLOYMENT_TYPES = ("Server", "DataCenter")
DC_SEARCH_DEFAULT_MAX = 1000  # jira.search.views.default.max
DC_SEARCH_DEFAULT_PAGE = 50
DC_VERSION = "9.12.15"
_API = r"^/rest/api/(2|latest)"
_SERVER_INFO_PATH = re.compile(r"^/rest/api/(2|3|latest)/serverInfo/?$")
_SEARCH_PATH = re.compile(_API + r"/search/?$")
_NOT_ON_DC = re.compile(r"^/rest/api/(3/|(2|latest)/search/jql/?$|(2|latest)/issue/bulkfetch/?$)")
_KEY_IN = re.compile(r"\bkey\s+in\s*\(([^)]*)\)", re.IGNORECASE)
_SEARCH_BODY_FIELDS = {
    "jql",
    "startAt",
    "maxResults",
    "fields",
    "expand",
    "validateQuery",
    "properties",
    "fieldsByKeys",
}


@dataclass
class DataCenterState:
    """Per-instance Data Center settings and the token bucket."""

    deployment_type: str = "DataCenter"
    search_max: int = DC_SEARCH_DEFAULT_MAX
    # (capacity, fill_rate, interval_seconds) or None for no limit.
    rate_limit: tuple[int, float, float] | None = None
    tokens: float = 0.0
    refilled_at: float = field(default_factory=time.monotonic)
    throttled: int = 0


def check_flavor(flavor: str) -> str:
    if flavor not in FLAVORS:
        raise ValueError(f"flavor must be one of {FLAVORS}, got {flavor!r}")
    return flavor


def user_key(email: str) -> str:
    """A Data Center user key (JIRAUSER + a number, as Jira 8+ makes them), stable per e-mail."""
    return "JIRAUSER" + str(10000 + int.from_bytes(email.lower().encode()[:6].ljust(6, b"\0"), "big") % 90000)


def user_name(email: str) -> str:
    return email.split("@", 1)[0].lower()


def user_json(email: str, hidden: bool, base: str, time_zone: str, display_name: str) -> dict[str, Any]:
    """A user as Data Center renders one (api/2 UserJsonBean): name and key, the address when visible."""
    name = user_name(email)
    user: dict[str, Any] = {
        "self": f"{base}/rest/api/2/user?username={name}",
        "name": name,
        "key": user_key(email),
        "avatarUrls": {"48x48": f"{base}/secure/useravatar?ownerId={name}&avatarId=10122"},
        "displayName": display_name,
        "active": True,
        "timeZone": time_zone,
    }
    if not hidden:
        user["emailAddress"] = email
    return user


def server_info(standin: JiraStandin) -> dict[str, Any]:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")
    if standin.flavor == "cloud":
        return {
            "baseUrl": standin.url,
            "version": "1001.0.0-SNAPSHOT",
            "versionNumbers": [1001, 0, 0],
            "deploymentType": "Cloud",
            "buildNumber": 100300,
            "serverTime": now,
            "scmInfo": "0",
            "serverTitle": "Jira",
        }
    return {
        "baseUrl": standin.url,
        "version": DC_VERSION,
        "versionNumbers": [int(part) for part in DC_VERSION.split(".")],
        "deploymentType": standin.dc.deployment_type,
        "buildNumber": 9120015,
        "buildDate": "2024-11-20T00:00:00.000+0000",
        "serverTime": now,
        "scmInfo": "0",
        "serverTitle": "Jira",
    }


def route(standin: JiraStandin, method: str, path: str, query: str, body: bytes) -> _Reply | None:
    """The answer of Data Center mode (or serverInfo in either mode), or None to use the Cloud routes."""
    from .server import _error_reply, _json_reply, _Reply

    dc = standin.flavor == "datacenter"
    if _SERVER_INFO_PATH.match(path) and not (dc and path.startswith("/rest/api/3/")):
        return _json_reply(200, server_info(standin)) if method == "GET" else _Reply(405)
    if standin.flavor != "datacenter":
        return None
    if _NOT_ON_DC.match(path):
        return _error_reply(404, "null for uri: " + path)
    if _SEARCH_PATH.match(path):
        if method == "GET":
            params = parse_qs(query, keep_blank_values=True)
            request = {name: values[-1] for name, values in params.items() if name != "fields"}
            request["fields"] = params.get("fields", [])
        elif method == "POST":
            request = standin._json_body(body)
            standin._reject_unknown(request, _SEARCH_BODY_FIELDS)
            request["fields"] = standin._string_list(request.get("fields"), "fields")
        else:
            return _Reply(405)
        return _search(standin, request)
    return None


def _whole(value: Any, name: str, default: int) -> int:
    from .server import _BadRequest

    if value in (None, ""):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _BadRequest(f"{name} must be a whole number, got '{value}'.") from None


def _search(standin: JiraStandin, request: dict[str, Any]) -> _Reply:
    from .server import ISSUE_FIELDS, _BadRequest, _error_reply, _json_reply, _selected_fields, _split_fields

    jql = request.get("jql") or ""
    if not isinstance(jql, str):
        raise _BadRequest("'jql' must be a string.")
    start_at = max(0, _whole(request.get("startAt"), "startAt", 0))
    asked = _whole(request.get("maxResults"), "maxResults", DC_SEARCH_DEFAULT_PAGE)
    validate = str(request.get("validateQuery", True)).lower() not in ("false", "warn", "none")
    tokens = _split_fields(request.get("fields") or []) or ["*navigable"]
    with standin._lock:
        cap = standin.dc.search_max
        max_results = cap if asked < 0 else min(asked, cap)
        hidden = standin._hidden
        key_ids = {key: issue.id for key, issue in standin._issues.items() if issue.id not in hidden}
        key_ids.update({key: ident for key, ident in standin._former_keys.items() if ident not in hidden})
        warnings: list[str] | None = None if validate else []
        context = JqlContext(
            time_zone=standin._time_zone,
            now=datetime.now(UTC),
            projects=dict(standin._projects),
            statuses={name.lower(): status_id for name, (status_id, _) in standin._statuses.items()},
            key_ids=key_ids,
            warnings=warnings,
        )
        try:
            # Data Center searches with an empty JQL too (every issue); Cloud refuses unbounded ones.
            compiled = compile_jql(jql or "created is not empty", context)
        except JqlError as exc:
            return _error_reply(400, str(exc))
        named = {key.strip().upper() for group in _KEY_IN.findall(jql) for key in group.split(",")}
        if any(standin._key_faults.get(key) == "server_error" for key in named):
            # The key fault of the poison tests: Data Center's fetch is a `key in (...)` search.
            return _error_reply(500, "Internal server error")
        matched = compiled.select(i for i in standin._issues.values() if i.id not in standin._hidden)
        page = matched[start_at : start_at + max_results]
        fields = _selected_fields(tokens, standin._custom_fields) if tokens else set(ISSUE_FIELDS)
        base, time_zone = standin._base_url(), standin._time_zone
        issues = [standin._issue_json(issue, fields, "2", base, time_zone) for issue in page]
        standin.dc_search_pages += 1
        number = standin.dc_search_pages
        callback: Callable[[int, str], None] | None = standin.between_pages
    if callback is not None:
        callback(number, jql)
    answer: dict[str, Any] = {
        "expand": "schema,names",
        "startAt": start_at,
        "maxResults": max_results,
        "total": len(matched),
        "issues": issues,
    }
    if warnings:
        answer["warningMessages"] = warnings
    return _json_reply(200, answer)


def take_token(standin: JiraStandin) -> tuple[_Reply | None, tuple[tuple[str, str], ...]]:
    """Draw one token from the bucket: (a 429 when empty, else None) and the rate-limit headers."""
    from .server import _error_reply

    state = standin.dc
    if standin.flavor != "datacenter" or state.rate_limit is None:
        return None, ()
    capacity, fill_rate, interval = state.rate_limit
    now = time.monotonic()
    # Tokens come in batches: FillRate of them at the end of each whole interval, up to the Limit.
    intervals = math.floor((now - state.refilled_at) / interval)
    if intervals:
        state.tokens = min(capacity, state.tokens + intervals * fill_rate)
        state.refilled_at += intervals * interval
    limited = state.tokens < 1
    if not limited:
        state.tokens -= 1
    # Retry-After is on every answer: 0 while tokens are left, else the whole seconds to the next batch.
    wait = 0 if state.tokens >= 1 else math.ceil(state.refilled_at + interval - now)
    headers = (
        ("X-RateLimit-Limit", str(capacity)),
        ("X-RateLimit-Remaining", str(math.floor(state.tokens))),
        ("X-RateLimit-Interval-Seconds", format(interval, "g")),
        ("X-RateLimit-FillRate", format(fill_rate, "g")),
        ("Retry-After", str(wait)),
    )
    if not limited:
        return None, headers
    state.throttled += 1
    return _error_reply(429, "Rate limit exceeded.", headers=headers), headers
