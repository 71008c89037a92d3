"""A stdlib HTTP stand-in for the parts of Jira Cloud's REST API the sync uses, with programmable faults."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from include.jira_rules import (
    BULK_FETCH_LIMIT_ANY_FIELDS,
    SEARCH_PAGE_LIMIT_KEYS_ONLY,
    SEARCH_PAGE_LIMIT_WITH_FIELDS,
    bulk_fetch_limit,
    is_project_key,
    normalise_key,
)

from . import datacenter
from .census_model import NO_PERMISSION_MESSAGE, CensusModel
from .changelog import ChangelogBadRequest, ChangelogBook, edit_items, move_items
from .jql import JqlContext, JqlError, compile_jql, issue_key_parts

logger = logging.getLogger(__name__)

ISSUE_NOT_FOUND_MESSAGE = "Issue does not exist or you do not have permission to see it."
SEARCH_REMOVED_MESSAGE = (
    "The requested API has been removed. Please migrate to the /rest/api/3/search/jql API. "
    "A full migration guideline is available at https://developer.atlassian.com/changelog/#CHANGE-2046"
)
UNAUTHORIZED_BODY = "Client must be authenticated to access this resource."
SEARCH_DEFAULT_PAGE = 50
FIRST_ID = 10000
ISSUE_FIELDS = ("summary", "status", "assignee", "progress", "updated", "created", "project")
ADMIN_PREFIX = "/_standin/"
# Atlassian's API gateway: https://api.atlassian.com/ex/jira/{cloudId}/rest/api/3/...; the site's
# unauthenticated /_edge/tenant_info names the cloudId.
GATEWAY_PREFIX = "/ex/jira/"
TENANT_INFO_PATH = "/_edge/tenant_info"

_JSON_TYPE = "application/json;charset=UTF-8"
_ISSUE_EXPAND = "renderedFields,names,schema,operations,editmeta,changelog,versionedRepresentations"
_API = r"^/rest/api/(2|3|latest)"
_MYSELF_PATH = re.compile(_API + r"/myself/?$")
_FIELD_PATH = re.compile(_API + r"/field/?$")
_BULKFETCH_PATH = re.compile(_API + r"/issue/bulkfetch/?$")
_ISSUE_PATH = re.compile(_API + r"/issue/([^/]+)/?$")
_SEARCH_JQL_PATH = re.compile(_API + r"/search/jql/?$")
# Ticket history (#25): devkit/jira_standin/changelog.py serves these.
_CHANGELOG_BULK_PATH = re.compile(_API + r"/changelog/bulkfetch/?$")
_ISSUE_CHANGELOG_PATH = re.compile(_API + r"/issue/([^/]+)/changelog/?$")
_REMOVED_SEARCH_PATH = re.compile(_API + r"/search/?$")
_SEARCH_BODY_FIELDS = {
    "jql",
    "nextPageToken",
    "maxResults",
    "fields",
    "expand",
    "properties",
    "fieldsByKeys",
    "reconcileIssues",
}
_EDITABLE_FIELDS = {
    "custom_fields",
    "summary",
    "status",
    "assignee_email",
    "assignee_hidden_email",
    "progress",
    "updated",
    "created",
}
_BULKFETCH_BODY_FIELDS = {"issueIdsOrKeys", "fields", "expand", "properties", "fieldsByKeys"}
# Faults tied to one issue key, for the poison-isolation tests: a 500 for every bulk fetch that names
# the key; an issueErrors entry for it (BulkIssueResults.issueErrors in Jira's OpenAPI document:
# {"id": issue id, "errorMessage"}, the issue left out of "issues"); or the issue served without its
# "updated" field, which the sync's validation refuses.
KEY_FAULTS = ("server_error", "issue_error", "no_updated")
ISSUE_ERROR_MESSAGE = "An error occurred while retrieving this issue. Please retry the request."

# name -> (id, category key); the ids are those of a new Jira Cloud site's default workflow.
_DEFAULT_STATUSES = {
    "To Do": ("10000", "new"),
    "In Progress": ("3", "indeterminate"),
    "In Review": ("10002", "indeterminate"),
    "Done": ("10001", "done"),
}
_STATUS_CATEGORIES = {
    "new": (2, "blue-gray", "To Do"),
    "indeterminate": (4, "yellow", "In Progress"),
    "done": (3, "green", "Done"),
}
_DONE_WORDS = {"done", "closed", "resolved", "cancelled", "canceled", "won't do", "rejected"}

# GET /rest/api/3/field: the system fields a new Cloud site lists, with the schema shapes Jira gives
# them (a few; the OpenAPI example and Atlassian's field reference). Custom fields are added per test.
_SYSTEM_FIELDS: tuple[dict[str, Any], ...] = (
    {"id": "summary", "name": "Summary", "schema": {"type": "string", "system": "summary"}},
    {"id": "status", "name": "Status", "schema": {"type": "status", "system": "status"}},
    {"id": "assignee", "name": "Assignee", "schema": {"type": "user", "system": "assignee"}},
    {"id": "progress", "name": "Progress", "schema": {"type": "progress", "system": "progress"}},
    {"id": "updated", "name": "Updated", "schema": {"type": "datetime", "system": "updated"}},
    {"id": "created", "name": "Created", "schema": {"type": "datetime", "system": "created"}},
    {"id": "project", "name": "Project", "schema": {"type": "project", "system": "project"}},
    {"id": "duedate", "name": "Due date", "schema": {"type": "date", "system": "duedate"}},
    {"id": "labels", "name": "Labels", "schema": {"type": "array", "items": "string", "system": "labels"}},
    {"id": "comment", "name": "Comment", "schema": {"type": "comments-page", "system": "comment"}},
    {
        "id": "worklog",
        "name": "Log Work",
        "schema": {"type": "array", "items": "worklog", "system": "worklog"},
    },
    {
        "id": "attachment",
        "name": "Attachment",
        "schema": {"type": "array", "items": "attachment", "system": "attachment"},
    },
)
_CUSTOM_TYPES = {
    "number": ({"type": "number"}, "com.atlassian.jira.plugin.system.customfieldtypes:float"),
    "string": ({"type": "string"}, "com.atlassian.jira.plugin.system.customfieldtypes:textfield"),
    "date": ({"type": "date"}, "com.atlassian.jira.plugin.system.customfieldtypes:datepicker"),
    "option": ({"type": "option"}, "com.atlassian.jira.plugin.system.customfieldtypes:select"),
    "multi-option": (
        {"type": "array", "items": "option"},
        "com.atlassian.jira.plugin.system.customfieldtypes:multiselect",
    ),
}


# Ticket history (#25): the rest of the default [jira_mail_sync] history_fields, as a new Cloud site
# lists them. Sprint is a custom field whose id differs per site (customfield_10020 on many); it is 10010
# here because the tests use 10020 for a Teams field. Its schema as Jira gives it.
_HISTORY_SYSTEM_FIELDS: tuple[dict[str, Any], ...] = (
    {"id": "priority", "name": "Priority", "schema": {"type": "priority", "system": "priority"}},
    {"id": "resolution", "name": "Resolution", "schema": {"type": "resolution", "system": "resolution"}},
    {
        "id": "fixVersions",
        "name": "Fix versions",
        "schema": {"type": "array", "items": "version", "system": "fixVersions"},
    },
    {"id": "issuetype", "name": "Issue Type", "schema": {"type": "issuetype", "system": "issuetype"}},
)
_SPRINT_FIELD = {
    "id": "customfield_10010",
    "key": "customfield_10010",
    "name": "Sprint",
    "custom": True,
    "orderable": True,
    "navigable": True,
    "searchable": True,
    "clauseNames": ["cf[10010]", "Sprint"],
    "schema": {
        "type": "array",
        "items": "json",
        "custom": "com.pyxis.greenhopper.jira:gh-sprint",
        "customId": 10010,
    },
}


class LoggedRequest(NamedTuple):
    """One API request the stand-in answered (admin requests under /_standin/ are not logged)."""

    method: str
    path: str
    query: str
    status: int


@dataclass(frozen=True)
class _Issue:
    id: int
    key: str
    project_key: str
    project_id: int
    project_name: str
    summary: str
    status: str
    status_id: str
    assignee_email: str | None
    assignee_hidden_email: bool
    progress: tuple[int, int]
    updated: datetime
    created: datetime
    custom_fields: tuple[tuple[str, Any], ...] = ()

    @property
    def assignee_account_id(self) -> str | None:
        return None if self.assignee_email is None else _account_id(self.assignee_email)


@dataclass
class _Fault:
    status: int
    remaining: int
    retry_after: float | None
    path_prefix: str | None


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes = b""
    content_type: str = _JSON_TYPE
    headers: tuple[tuple[str, str], ...] = ()


def _json_reply(status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> _Reply:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return _Reply(status, body, _JSON_TYPE, tuple(headers))


def _error_reply(status: int, *messages: str, headers: Iterable[tuple[str, str]] = ()) -> _Reply:
    return _json_reply(status, {"errorMessages": list(messages), "errors": {}}, headers)


class _BadRequest(Exception):
    """A request the stand-in answers with 400 and this message."""


def _aware(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")
    # Jira keeps milliseconds; truncating here makes what we store equal what we render.
    at = value.astimezone(UTC)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def _zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"unknown time zone {name!r} (expected an IANA name like 'Europe/Berlin')") from None
    return name


def jira_timestamp(at: datetime, time_zone: str) -> str:
    """Jira's rendering of an instant, in the account's zone: 2026-11-27T11:14:30.123+0100."""
    local = at.astimezone(ZoneInfo(time_zone))
    return f"{local:%Y-%m-%dT%H:%M:%S}.{local.microsecond // 1000:03d}{local:%z}"


def _account_id(email: str) -> str:
    return hashlib.sha256(email.lower().encode()).hexdigest()[:24]


def _display_name(email: str) -> str:
    local = email.split("@", 1)[0]
    return " ".join(part.capitalize() for part in re.split(r"[._+-]+", local) if part) or local


def _split_fields(raw: Iterable[str]) -> list[str]:
    return [token.strip() for part in raw for token in str(part).split(",") if token.strip()]


def _selected_fields(tokens: list[str], custom: Iterable[str] = ()) -> set[str]:
    """The issue fields a `fields` list asks for, with Jira's *all, *navigable and -exclusions."""
    selected: set[str] = set()
    excluded: set[str] = set()
    known = set(ISSUE_FIELDS) | set(custom)
    for token in tokens:
        if token in ("*all", "*navigable"):
            selected.update(known)
        elif token.startswith("-"):
            excluded.add(token[1:])
        elif token in known:
            selected.add(token)
        # Jira silently ignores field names it does not know; so do we.
    return selected - excluded


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], standin: JiraStandin) -> None:
        self.standin = standin
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "JiraStandin/1.0"
    # An idle keep-alive connection gives its thread back after this many seconds.
    timeout = 60
    # Headers and body go out as two writes; with Nagle's algorithm the second waits for the client's
    # delayed ACK (about 40 ms on Linux loopback), which made every keep-alive request cost ~50 ms.
    disable_nagle_algorithm = True
    server: _Server

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        reply = self.server.standin._answer(method, split.path, split.query, body, self.headers)
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        logger.debug("jira stand-in: " + format, *args)


class JiraStandin(CensusModel):
    """An in-process Jira Cloud site: issues, an account, a JQL search, faults, and a request log.

    Use it as a context manager, or call start() and stop(). All methods are thread-safe. Another
    process can drive it over HTTP, with the same basic auth, under /_standin/: POST issues (an
    add_issue() body with ISO 8601 times), DELETE issues/KEY, POST faults ({"status", "count",
    "retry_after", "path_prefix"}), POST key_faults ({"key", "kind"}, see KEY_FAULTS), DELETE faults
    (both kinds), GET or DELETE requests, POST reset, and GET or POST
    config ({"time_zone", "latency", "scoped_token"}). Those admin calls skip latency and faults and
    are not logged.

    Like Jira Cloud it serves the unauthenticated `/_edge/tenant_info` ({"cloudId"}) and the REST API
    under the API gateway's prefix `/ex/jira/<cloud_id>` as well as on the site path; with
    `scoped_token` (the account's token is a scoped one) the site path answers 401 and only the
    gateway prefix works. Faults match the path after that prefix; the log keeps the full path.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        email: str,
        api_token: str,
        time_zone: str = "UTC",
        scoped_token: bool = False,
        cloud_id: str | None = None,
        flavor: str = "cloud",
        personal_access_token: str | None = None,
    ) -> None:
        if not email or not api_token:
            raise ValueError("the stand-in needs an account e-mail and an API token")
        # Jira Data Center mode (devkit/jira_standin/datacenter.py): REST v2 search, PATs, no bulkfetch.
        self._initial_flavor = (datacenter.check_flavor(flavor), personal_access_token)
        self.cloud_id = cloud_id or str(uuid.uuid4())
        self._initial_scoped = bool(scoped_token)
        self._request_base = threading.local()
        self.email = email
        self.api_token = api_token
        self._host = host
        self._port = port
        self._initial_time_zone = _zone(time_zone)
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        # Page tokens are signed so that a client cannot forge or edit one: Jira's are opaque too.
        self._token_key = secrets.token_bytes(32)
        self._expected_auth = "Basic " + base64.b64encode(f"{email}:{api_token}".encode()).decode()
        self._clear_state()

    def _clear_state(self) -> None:
        with self._lock:
            self._issues: dict[str, _Issue] = {}
            self._ids: dict[int, str] = {}
            # Keys an issue had before it moved: Jira answers them with the issue under its new key.
            self._former_keys: dict[str, int] = {}
            # Issues this account may no longer browse (a permission change): 404, left out everywhere.
            self._hidden: set[int] = set()
            self._custom_fields: dict[str, dict[str, Any]] = {}
            self._large_bulk_fetch = True
            self._projects: dict[str, tuple[int, str]] = {}
            self._statuses: dict[str, tuple[str, str]] = dict(_DEFAULT_STATUSES)
            self._next_issue_id = FIRST_ID
            self._next_project_id = FIRST_ID
            self._next_status_id = FIRST_ID + 100
            self._faults: list[_Fault] = []
            self._key_faults: dict[str, str] = {}
            self._log: list[LoggedRequest] = []
            self._bulk_requests: list[tuple[tuple[str, ...], int]] = []
            self._latency = 0.0
            self._time_zone = self._initial_time_zone
            self._scoped = self._initial_scoped
            # Ticket history (#25): every edit and move appends a history here.
            self._changelog = ChangelogBook(self._token_key)
            # Data Center mode (datacenter.py); reset() restores the flavour given to the constructor.
            self.flavor, self.personal_access_token = self._initial_flavor
            self.dc = datacenter.DataCenterState()
            self.between_pages: Callable[[int, str], None] | None = None
            self.dc_search_pages = 0
            self._clear_census_state()  # archived issues, denied projects (census_model.py)

    # ---------------------------------------------------------------------------------- lifecycle

    def start(self) -> JiraStandin:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server((self._host, self._port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="jira-standin", daemon=True
        )
        self._thread.start()
        logger.info("Jira stand-in listening on %s", self.url)
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> JiraStandin:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self._server is not None else "stopped"
        return f"JiraStandin({where}, email={self.email!r})"

    @property
    def url(self) -> str:
        """The site URL, e.g. http://127.0.0.1:40123 (no trailing slash)."""
        if self._server is None:
            raise RuntimeError("the Jira stand-in is not running; call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def airflow_conn(self, *, scoped: bool = False) -> dict[str, Any]:
        """The JSON form of an Airflow `jira` connection to this site (for AIRFLOW_CONN_JIRA_DEFAULT).

        `scoped=True` gives the scoped-token form: the extra `scoped_token`, and `api_base_url` set to
        this server, which plays the API gateway too (the cloudId is left to discovery).
        """
        conn: dict[str, Any] = {
            "conn_type": "jira",
            "host": self.url,
            "login": self.email,
            "password": self.api_token,
        }
        if scoped:
            conn["extra"] = {"scoped_token": True, "api_base_url": self.url}
        if self.flavor == "datacenter" and self.personal_access_token:
            conn.update(login="", password=self.personal_access_token, extra={"flavor": "datacenter"})
        return conn

    @property
    def gateway_prefix(self) -> str:
        """The path prefix of this site on the API gateway: /ex/jira/<cloudId>."""
        return f"{GATEWAY_PREFIX}{self.cloud_id}"

    @property
    def scoped_token(self) -> bool:
        """True: the API token is a scoped one, which Jira accepts only through the gateway prefix."""
        with self._lock:
            return self._scoped

    @scoped_token.setter
    def scoped_token(self, value: bool) -> None:
        with self._lock:
            self._scoped = bool(value)

    def use_flavor(self, flavor: str, *, personal_access_token: str | None = None) -> None:
        """Serve as Jira Cloud or Data Center from now on (until reset(); see datacenter.py)."""
        with self._lock:
            self.flavor = datacenter.check_flavor(flavor)
            self.personal_access_token = personal_access_token

    def _base_url(self) -> str:
        base = self.url if self._server is not None else f"http://{self._host}:{self._port}"
        # Behind the gateway, Jira's `self` links point at the gateway too.
        return base + getattr(self._request_base, "prefix", "")

    # ------------------------------------------------------------------------------- configuration

    def reset(self) -> None:
        """Back to an empty site: no issues or projects, no faults, no latency, initial zone, empty log."""
        self._clear_state()

    @property
    def time_zone(self) -> str:
        with self._lock:
            return self._time_zone

    def set_time_zone(self, time_zone: str) -> None:
        """The account's profile zone: /myself reports it, JQL reads local datetimes in it."""
        with self._lock:
            self._time_zone = _zone(time_zone)

    @property
    def latency(self) -> float:
        with self._lock:
            return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("latency cannot be negative")
        with self._lock:
            self._latency = float(seconds)

    def inject_fault(
        self,
        status: int,
        *,
        count: int = 1,
        retry_after: float | None = None,
        path_prefix: str | None = None,
    ) -> None:
        """Answer the next `count` API requests (under `path_prefix`, if given) with `status`.

        429 carries Retry-After (when given) and X-RateLimit-Reset; 503 carries Retry-After when given.
        Faults queue up in order; a request takes the first one whose prefix matches its path.
        """
        if not 400 <= int(status) <= 599:
            raise ValueError(f"a fault must be an HTTP error status, got {status}")
        if count < 1:
            raise ValueError("count must be at least 1")
        if retry_after is not None and retry_after < 0:
            raise ValueError("retry_after cannot be negative")
        with self._lock:
            self._faults.append(_Fault(int(status), int(count), retry_after, path_prefix))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._key_faults.clear()

    def inject_key_fault(self, key: str, kind: str) -> None:
        """Make every bulk fetch that names `key` fail in one of KEY_FAULTS ways, until cleared."""
        if kind not in KEY_FAULTS:
            raise ValueError(f"a key fault is one of {KEY_FAULTS}, got {kind!r}")
        with self._lock:
            self._key_faults[normalise_key(key)] = kind

    def bulk_fetch_requests(self) -> list[tuple[tuple[str, ...], int]]:
        """Each bulk fetch answered: the keys it named (upper-cased, as sent) and its HTTP status."""
        with self._lock:
            return list(self._bulk_requests)

    @property
    def pending_faults(self) -> int:
        """How many faulty answers are still queued."""
        with self._lock:
            return sum(fault.remaining for fault in self._faults)

    # ------------------------------------------------------------------------------------ request log

    @property
    def requests(self) -> list[LoggedRequest]:
        """A copy of the request log: (method, path, query, status), oldest first."""
        with self._lock:
            return list(self._log)

    def request_count(self, path_prefix: str | None = None, method: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for entry in self._log
                if (path_prefix is None or entry.path.startswith(path_prefix))
                and (method is None or entry.method == method.upper())
            )

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()
            self._bulk_requests.clear()

    # ------------------------------------------------------------------------------------------ issues

    def add_project(self, key: str, name: str | None = None) -> dict[str, Any]:
        """Create a project (add_issue does so implicitly); JQL naming an unknown project is a 400."""
        project_key = normalise_key(key)
        if not is_project_key(project_key):
            raise ValueError(f"invalid project key {key!r}: an upper-case letter, then 1-9 letters/digits/_")
        with self._lock:
            if project_key not in self._projects:
                self._projects[project_key] = (self._next_project_id, name or f"Project {project_key}")
                self._next_project_id += 1
            elif name:
                self._projects[project_key] = (self._projects[project_key][0], name)
            project_id, project_name = self._projects[project_key]
        return {"id": str(project_id), "key": project_key, "name": project_name}

    def _status_id(self, name: str) -> str:
        for known, (status_id, _category) in self._statuses.items():
            if known.lower() == name.lower():
                return status_id
        status_id = str(self._next_status_id)
        self._next_status_id += 1
        category = "done" if name.lower() in _DONE_WORDS else "indeterminate"
        self._statuses[name] = (status_id, category)
        return status_id

    def _status_name(self, name: str) -> str:
        return next((known for known in self._statuses if known.lower() == name.lower()), name)

    def add_issue(
        self,
        key: str,
        *,
        summary: str,
        status: str = "To Do",
        assignee_email: str | None = None,
        assignee_hidden_email: bool = False,
        progress: tuple[int, int] = (0, 0),
        updated: datetime | None = None,
        created: datetime | None = None,
        project_name: str | None = None,
        custom_fields: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Create or replace an issue; returns it as GET /rest/api/3/issue/{key} would.

        `updated` defaults to now; `created` to `updated`. Times are kept to the millisecond.
        `assignee_hidden_email` hides the assignee's e-mail as a profile privacy setting does.
        """
        issue_key = normalise_key(key)
        parts = issue_key_parts(issue_key)
        if parts is None:
            raise ValueError(f"invalid issue key {key!r}: expected PROJECT-123")
        if not isinstance(summary, str) or not summary.strip():
            raise ValueError("summary must be a non-empty string")
        if not isinstance(status, str) or not status.strip():
            raise ValueError("status must be a non-empty string")
        spent, total = (int(v) for v in progress)
        if spent < 0 or total < 0 or spent > total:
            raise ValueError(f"progress must be (spent, total) with 0 <= spent <= total, got {progress!r}")
        if assignee_email is not None and "@" not in str(assignee_email):
            raise ValueError(f"assignee_email must be an e-mail address, got {assignee_email!r}")
        updated_at = _aware(updated, "updated") if updated is not None else _aware(datetime.now(UTC), "now")
        custom = tuple(sorted(dict(custom_fields or {}).items()))
        with self._lock:
            unknown = [field_id for field_id, _ in custom if field_id not in self._custom_fields]
        if unknown:
            raise ValueError(f"unknown custom field(s) {unknown}: add_custom_field() first")
        self.add_project(parts[0], project_name)
        with self._lock:
            previous = self._issues.get(issue_key)
            if created is not None:
                created_at = _aware(created, "created")
            elif previous is not None:
                created_at = previous.created
            else:
                created_at = updated_at
            if previous is None and issue_key in self._former_keys:
                raise ValueError(f"{issue_key} is the former key of a moved issue; Jira never reuses it")
            issue_id = previous.id if previous is not None else self._next_issue_id
            if previous is None:
                self._next_issue_id += 1
            project_id, name = self._projects[parts[0]]
            issue = _Issue(
                id=issue_id,
                key=issue_key,
                project_key=parts[0],
                project_id=project_id,
                project_name=name,
                summary=summary,
                status=self._status_name(status.strip()),
                status_id=self._status_id(status.strip()),
                assignee_email=assignee_email,
                assignee_hidden_email=bool(assignee_hidden_email),
                progress=(spent, total),
                updated=updated_at,
                created=created_at,
                custom_fields=custom,
            )
            self._issues[issue_key] = issue
            self._ids[issue_id] = issue_key
            if previous is not None:
                self._changelog.record(
                    issue_id, updated_at, self.email, edit_items(previous, issue, _display_name)
                )
            return self._issue_json(issue, set(ISSUE_FIELDS), "3", self._base_url(), self._time_zone)

    def update_issue(self, key: str, **changes: Any) -> dict[str, Any]:
        """Change some of an issue's fields; `updated` moves to now unless given, as an edit in Jira does."""
        unknown = set(changes) - _EDITABLE_FIELDS
        if unknown:
            raise TypeError(f"update_issue() got unknown field(s): {', '.join(sorted(unknown))}")
        with self._lock:
            current = self._issues.get(normalise_key(key))
            if current is None:
                raise KeyError(f"no issue {key!r}")
            values = {
                "summary": current.summary,
                "status": current.status,
                "assignee_email": current.assignee_email,
                "assignee_hidden_email": current.assignee_hidden_email,
                "progress": current.progress,
                "updated": datetime.now(UTC),
                "created": current.created,
                "custom_fields": dict(current.custom_fields),
            }
            values.update(changes)
            return self.add_issue(current.key, **values)

    def remove_issue(self, key: str) -> None:
        """Delete an issue: its keys, current and former, answer 404 from now on."""
        with self._lock:
            issue = self._issues.pop(normalise_key(key), None)
            if issue is None:
                raise KeyError(f"no issue {key!r}")
            del self._ids[issue.id]
            for former in [k for k, issue_id in self._former_keys.items() if issue_id == issue.id]:
                del self._former_keys[former]

    def set_hidden(self, key: str, hidden: bool = True) -> None:
        """Hide an issue from the account (a permission or security-level change) or show it again.

        Hidden, it is answered exactly as a deleted one: 404 on GET, left out of bulk fetch and search.
        """
        with self._lock:
            issue = self._issues.get(normalise_key(key))
            if issue is None:
                raise KeyError(f"no issue {key!r}")
            (self._hidden.add if hidden else self._hidden.discard)(issue.id)

    def move_issue(self, key: str, new_key: str) -> dict[str, Any]:
        """Move an issue to another project, as Jira does: same id, a new key, `updated` now.

        The old key keeps answering (bulk fetch and GET return the issue under its new key).
        """
        new = normalise_key(new_key)
        parts = issue_key_parts(new)
        if parts is None:
            raise ValueError(f"invalid issue key {new_key!r}: expected PROJECT-123")
        self.add_project(parts[0])
        with self._lock:
            current = self._issues.get(normalise_key(key))
            if current is None:
                raise KeyError(f"no issue {key!r}")
            if new in self._issues or new in self._former_keys:
                raise ValueError(f"{new} is taken")
            project_id, name = self._projects[parts[0]]
            moved = dataclasses.replace(
                current,
                key=new,
                project_key=parts[0],
                project_id=project_id,
                project_name=name,
                updated=_aware(datetime.now(UTC), "now"),
            )
            del self._issues[current.key]
            self._issues[new] = moved
            self._ids[moved.id] = new
            self._former_keys[current.key] = moved.id
            self._changelog.record(moved.id, moved.updated, self.email, move_items(current, moved))
            return self._issue_json(moved, set(ISSUE_FIELDS), "3", self._base_url(), self._time_zone)

    def add_custom_field(self, field_id: str, name: str, kind: str = "number") -> dict[str, Any]:
        """A custom field, as GET /rest/api/3/field lists it; `kind` is one of number, string, date,
        option, multi-option (the last is multi-valued: a bulk fetch naming it is limited to 100)."""
        if not re.fullmatch(r"customfield_[1-9][0-9]{4,9}", str(field_id)):
            raise ValueError(f"a custom field id looks like customfield_10016, got {field_id!r}")
        if kind not in _CUSTOM_TYPES:
            raise ValueError(f"kind must be one of {sorted(_CUSTOM_TYPES)}, got {kind!r}")
        schema, custom_type = _CUSTOM_TYPES[kind]
        number = int(field_id.rsplit("_", 1)[1])
        field = {
            "id": field_id,
            "key": field_id,
            "name": name,
            "custom": True,
            "orderable": True,
            "navigable": True,
            "searchable": True,
            "clauseNames": [f"cf[{number}]", name],
            "schema": {**schema, "custom": custom_type, "customId": number},
        }
        with self._lock:
            self._custom_fields[field_id] = field
        return dict(field)

    @property
    def large_bulk_fetch(self) -> bool:
        """True (the default): bulk fetch allows 1000 issues when the fields permit (Jira's current rule).
        False models a site still on the old limit of 100 for every request."""
        with self._lock:
            return self._large_bulk_fetch

    @large_bulk_fetch.setter
    def large_bulk_fetch(self, value: bool) -> None:
        with self._lock:
            self._large_bulk_fetch = bool(value)

    def issue(self, key: str) -> dict[str, Any] | None:
        """The issue as GET /rest/api/3/issue/{key} would return it, or None."""
        with self._lock:
            issue = self._issues.get(normalise_key(key))
            if issue is None:
                return None
            return self._issue_json(issue, set(ISSUE_FIELDS), "3", self._base_url(), self._time_zone)

    @property
    def issue_count(self) -> int:
        with self._lock:
            return len(self._issues)

    # -------------------------------------------------------------------------------------- rendering

    def _user_json(self, email: str, hidden: bool, base: str, time_zone: str) -> dict[str, Any]:
        if self.flavor == "datacenter":
            return datacenter.user_json(email, hidden, base, time_zone, _display_name(email))
        account_id = _account_id(email)
        user: dict[str, Any] = {
            "self": f"{base}/rest/api/3/user?accountId={account_id}",
            "accountId": account_id,
            "displayName": _display_name(email),
            "active": True,
            "timeZone": time_zone,
            "accountType": "atlassian",
        }
        if not hidden:
            user["emailAddress"] = email
        return user

    def _issue_json(
        self, issue: _Issue, fields: set[str], api_version: str, base: str, time_zone: str
    ) -> dict[str, Any]:
        rendered: dict[str, Any] = {}
        if "summary" in fields:
            rendered["summary"] = issue.summary
        if "status" in fields:
            category_key = self._statuses.get(issue.status, ("", "indeterminate"))[1]
            category_id, colour, category_name = _STATUS_CATEGORIES[category_key]
            rendered["status"] = {
                "self": f"{base}/rest/api/{api_version}/status/{issue.status_id}",
                "description": "",
                "iconUrl": f"{base}/images/icons/statuses/generic.png",
                "name": issue.status,
                "id": issue.status_id,
                "statusCategory": {
                    "self": f"{base}/rest/api/{api_version}/statuscategory/{category_id}",
                    "id": category_id,
                    "key": category_key,
                    "colorName": colour,
                    "name": category_name,
                },
            }
        if "assignee" in fields:
            rendered["assignee"] = (
                None
                if issue.assignee_email is None
                else self._user_json(issue.assignee_email, issue.assignee_hidden_email, base, time_zone)
            )
        if "progress" in fields:
            spent, total = issue.progress
            progress: dict[str, int] = {"progress": spent, "total": total}
            if total:
                progress["percent"] = spent * 100 // total
            rendered["progress"] = progress
        if "updated" in fields:
            rendered["updated"] = jira_timestamp(issue.updated, time_zone)
        if "created" in fields:
            rendered["created"] = jira_timestamp(issue.created, time_zone)
        for field_id, value in issue.custom_fields:
            if field_id in fields:
                rendered[field_id] = value
        if "project" in fields:
            rendered["project"] = {
                "self": f"{base}/rest/api/{api_version}/project/{issue.project_id}",
                "id": str(issue.project_id),
                "key": issue.project_key,
                "name": issue.project_name,
                "projectTypeKey": "software",
                "simplified": False,
            }
        return {
            "expand": _ISSUE_EXPAND,
            "id": str(issue.id),
            "self": f"{base}/rest/api/{api_version}/issue/{issue.id}",
            "key": issue.key,
            "fields": rendered,
        }

    # --------------------------------------------------------------------------------------- serving

    def _answer(self, method: str, path: str, query: str, body: bytes, headers: Mapping[str, str]) -> _Reply:
        if path.startswith(ADMIN_PREFIX):
            if not self._authorized(headers.get("Authorization")):
                return self._unauthorized()
            return self._guarded(lambda: self._admin(method, path, query, body))
        with self._lock:
            latency = self._latency
        if latency and self._stopping.wait(latency):
            return _error_reply(503, "The Jira stand-in is shutting down.")
        if path == TENANT_INFO_PATH:
            # Unauthenticated, like Jira's; answers the same in either token mode.
            reply = _json_reply(200, {"cloudId": self.cloud_id}) if method == "GET" else _Reply(405)
        else:
            reply = self._serve_api(method, path, query, body, headers)
        # Logged before the reply is sent, so a client that has its answer always finds it in the log.
        with self._lock:
            self._log.append(LoggedRequest(method, path, query, reply.status))
        return reply

    def _serve_api(
        self, method: str, path: str, query: str, body: bytes, headers: Mapping[str, str]
    ) -> _Reply:
        through_gateway = path.startswith(self.gateway_prefix + "/")
        if path.startswith(GATEWAY_PREFIX) and not through_gateway:
            return _json_reply(404, {"code": 404, "message": "Not Found"})  # another site's cloudId
        api_path = path[len(self.gateway_prefix) :] if through_gateway else path
        reply = self._take_fault(api_path)
        if reply is not None:
            return reply
        if not self._authorized(headers.get("Authorization")) or (self.scoped_token and not through_gateway):
            # A scoped token on the site URL gets the same 401 as a wrong one.
            return self._unauthorized()
        with self._lock:
            limited, limit_headers = datacenter.take_token(self)
        if limited is not None:
            return limited
        self._request_base.prefix = self.gateway_prefix if through_gateway else ""
        try:
            reply = self._guarded(lambda: self._route(method, api_path, query, body))
        finally:
            self._request_base.prefix = ""
        return dataclasses.replace(reply, headers=reply.headers + limit_headers) if limit_headers else reply

    def _guarded(self, handler: Callable[[], _Reply]) -> _Reply:
        try:
            return handler()
        except _BadRequest as exc:
            return _error_reply(400, str(exc))
        except Exception:
            logger.exception("Jira stand-in failed on a request")
            return _error_reply(500, "Internal server error")

    def _authorized(self, header: str | None) -> bool:
        if header is None:
            return False
        if self.flavor == "datacenter" and self.personal_access_token and header.startswith("Bearer "):
            return hmac.compare_digest(header.encode(), f"Bearer {self.personal_access_token}".encode())
        return hmac.compare_digest(header.encode(), self._expected_auth.encode())

    @staticmethod
    def _unauthorized() -> _Reply:
        return _Reply(
            401,
            UNAUTHORIZED_BODY.encode(),
            "text/plain;charset=UTF-8",
            (("X-Seraph-LoginReason", "AUTHENTICATED_FAILED"),),
        )

    def _take_fault(self, path: str) -> _Reply | None:
        with self._lock:
            fault = next(
                (f for f in self._faults if f.path_prefix is None or path.startswith(f.path_prefix)), None
            )
            if fault is None:
                return None
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._faults.remove(fault)
        headers: list[tuple[str, str]] = []
        if fault.retry_after is not None and fault.status in (429, 503):
            headers.append(("Retry-After", format(fault.retry_after, "g")))
        if fault.status == 429:
            reset = datetime.now(UTC) + timedelta(seconds=fault.retry_after or 0)
            headers.append(("X-RateLimit-Reset", reset.strftime("%Y-%m-%dT%H:%M:%SZ")))
            headers.append(("RateLimit-Reason", "jira-burst-based"))
            return _error_reply(429, "Rate limit exceeded.", headers=headers)
        if fault.status == 502:
            return _Reply(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html", ())
        if fault.status == 503:
            return _error_reply(503, "Service Unavailable", headers=headers)
        if fault.status >= 500:
            return _error_reply(fault.status, "Internal server error")
        return _error_reply(fault.status, f"Injected fault: HTTP {fault.status}.")

    def _route(self, method: str, path: str, query: str, body: bytes) -> _Reply:
        reply = datacenter.route(self, method, path, query, body)
        if reply is not None:
            return reply
        params = parse_qs(query, keep_blank_values=True)
        match = _MYSELF_PATH.match(path)
        if match:
            return self._myself() if method == "GET" else _Reply(405)
        if _FIELD_PATH.match(path):
            return self._fields() if method == "GET" else _Reply(405)
        match = _BULKFETCH_PATH.match(path)
        if match:
            return self._bulkfetch(body, self._version(match)) if method == "POST" else _Reply(405)
        match = _CHANGELOG_BULK_PATH.match(path) or _ISSUE_CHANGELOG_PATH.match(path)
        if match:
            return self._changelog_route(method, match, params, body)
        match = _ISSUE_PATH.match(path)
        if match:
            if method != "GET":
                return _Reply(405)
            return self._get_issue(unquote(match.group(2)), params, self._version(match))
        match = _SEARCH_JQL_PATH.match(path)
        if match:
            if method == "GET":
                return self._search(self._search_params_from_query(params), self._version(match))
            if method == "POST":
                return self._search(self._search_params_from_body(body), self._version(match))
            return _Reply(405)
        if _REMOVED_SEARCH_PATH.match(path):
            return _error_reply(410, SEARCH_REMOVED_MESSAGE)
        return _error_reply(404, "null for uri: " + path)

    def _changelog_route(
        self, method: str, match: re.Match[str], params: dict[str, list[str]], body: bytes
    ) -> _Reply:
        """Ticket history (#25): the bulk changelog fetch and one issue's changelog pages."""
        bulk = match.re is _CHANGELOG_BULK_PATH
        if method != ("POST" if bulk else "GET"):
            return _Reply(405)
        version, base = self._version(match), self._base_url()
        with self._lock:
            zone = self._time_zone

            def user(email: str) -> dict[str, Any]:
                return self._user_json(email, False, base, zone)

            def when(at: datetime) -> str:
                return jira_timestamp(at, zone)

            try:
                if bulk:
                    answer = self._changelog.bulkfetch(self._json_body(body), self._find, user, when)
                else:
                    issue = self._find(unquote(match.group(2)))
                    if issue is None:
                        return _error_reply(404, ISSUE_NOT_FOUND_MESSAGE)
                    url = f"{base}/rest/api/{version}/issue/{issue.id}/changelog"
                    answer = self._changelog.issue_changelog(issue, params, url, user, when)
            except ChangelogBadRequest as exc:
                return _error_reply(400, str(exc))
        return _json_reply(200, answer)

    @staticmethod
    def _version(match: re.Match[str]) -> str:
        return "2" if match.group(1) == "latest" else match.group(1)

    def _myself(self) -> _Reply:
        with self._lock:
            time_zone = self._time_zone
        base = self._base_url()
        user = self._user_json(self.email, False, base, time_zone)
        user.update({"locale": "en_US", "expand": "groups,applicationRoles"})
        return _json_reply(200, user)

    def _fields(self) -> _Reply:
        with self._lock:
            custom = [dict(field) for field in self._custom_fields.values()]
        if _SPRINT_FIELD["id"] not in {field["id"] for field in custom}:
            custom.insert(0, dict(_SPRINT_FIELD))  # ticket history (#25); a test may replace the id
        system = [
            {
                **field,
                "custom": False,
                "orderable": True,
                "navigable": True,
                "searchable": True,
                "clauseNames": [field["id"]],
            }
            for field in (*_SYSTEM_FIELDS, *_HISTORY_SYSTEM_FIELDS)
        ]
        return _json_reply(200, system + custom)

    def _multi_valued_custom(self) -> set[str]:
        return {
            f["id"] for f in self._custom_fields.values() if f["schema"]["type"] in ("array", "comments-page")
        }

    def _get_issue(self, id_or_key: str, params: dict[str, list[str]], api_version: str) -> _Reply:
        tokens = _split_fields(params.get("fields", []))
        with self._lock:
            fields = _selected_fields(tokens, self._custom_fields) if tokens else set(ISSUE_FIELDS)
            issue = self._find(id_or_key, direct=True)
            if issue is None:
                return _error_reply(404, ISSUE_NOT_FOUND_MESSAGE)
            if issue.project_key in self._denied_projects:
                return _error_reply(403, NO_PERMISSION_MESSAGE)
            rendered = self._issue_json(issue, fields, api_version, self._base_url(), self._time_zone)
            rendered["fields"].update(self._archive_fields(issue, tokens, self._base_url(), self._time_zone))
        return _json_reply(200, rendered)

    def _find(self, id_or_key: str, *, direct: bool = False) -> _Issue | None:
        # `direct`: a GET, which also reaches archived issues and those of denied projects.
        text = str(id_or_key).strip()
        if text.isdigit():
            key = self._ids.get(int(text))
            issue = self._issues.get(key) if key else None
        else:
            issue = self._issues.get(text.upper())
            if issue is None and text.upper() in self._former_keys:
                # A moved issue: Jira answers its old key with the issue under the new key, no redirect.
                issue = self._issues.get(self._ids[self._former_keys[text.upper()]])
        if issue is None or issue.id in self._hidden or not (direct or self._listable(issue)):
            return None
        return issue

    @staticmethod
    def _json_body(body: bytes) -> dict[str, Any]:
        try:
            payload = json.loads(body or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            raise _BadRequest(f"The request body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise _BadRequest("The request body must be a JSON object.")
        return payload

    @staticmethod
    def _reject_unknown(payload: Mapping[str, Any], known: set[str]) -> None:
        unknown = sorted(set(payload) - known)
        if unknown:
            raise _BadRequest(f'Unrecognized field "{unknown[0]}" in the request body.')

    @staticmethod
    def _string_list(value: Any, name: str) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise _BadRequest(f"'{name}' must be an array of strings.")
        return value

    def _bulkfetch(self, body: bytes, api_version: str) -> _Reply:
        payload = self._json_body(body)
        self._reject_unknown(payload, _BULKFETCH_BODY_FIELDS)
        if "issueIdsOrKeys" not in payload:
            raise _BadRequest("'issueIdsOrKeys' is required.")
        wanted = self._string_list(payload["issueIdsOrKeys"], "issueIdsOrKeys")
        if not wanted:
            raise _BadRequest("At least one issue ID or key must be provided.")
        raw_fields = _split_fields(self._string_list(payload.get("fields"), "fields"))
        tokens = raw_fields or ["*navigable"]
        expand = _split_fields(
            [payload["expand"]]
            if isinstance(payload.get("expand"), str)
            else self._string_list(payload.get("expand"), "expand")
        )
        with self._lock:
            # Jira's rule: 1000 when `fields` names at most 100 fields explicitly, none multi-valued,
            # and `expand` has none of the heavy options; 100 otherwise (and on a site without it).
            limit = (
                bulk_fetch_limit(raw_fields, multi_valued=self._multi_valued_custom(), expand=expand)
                if self._large_bulk_fetch
                else BULK_FETCH_LIMIT_ANY_FIELDS
            )
            fields = _selected_fields(tokens, self._custom_fields)
        if len(wanted) > limit:
            raise _BadRequest(
                f"The number of issue IDs or keys requested ({len(wanted)}) exceeds the maximum of {limit}."
            )
        with self._lock:
            named = tuple(normalise_key(item) for item in wanted)
            faults = {self._key_faults[key] for key in named if key in self._key_faults}
            if "server_error" in faults:
                self._bulk_requests.append((named, 500))
                return _error_reply(500, "Internal server error")
            # Unknown and invisible issues are left out silently, as Jira does; issueErrors is for others.
            found = {issue.id: issue for issue in (self._find(item) for item in wanted) if issue is not None}
            base, time_zone = self._base_url(), self._time_zone
            issues, issue_errors = [], []
            for issue_id in sorted(found):
                fault = self._key_faults.get(found[issue_id].key)
                if fault == "issue_error":
                    issue_errors.append({"id": str(issue_id), "errorMessage": ISSUE_ERROR_MESSAGE})
                    continue
                rendered = self._issue_json(found[issue_id], fields, api_version, base, time_zone)
                if fault == "no_updated":
                    rendered["fields"].pop("updated", None)
                issues.append(rendered)
            self._bulk_requests.append((named, 200))
        return _json_reply(200, {"expand": "schema,names", "issues": issues, "issueErrors": issue_errors})

    @staticmethod
    def _search_params_from_query(params: dict[str, list[str]]) -> dict[str, Any]:
        def last(name: str) -> str | None:
            values = params.get(name)
            return values[-1] if values else None

        return {
            "jql": last("jql"),
            "nextPageToken": last("nextPageToken"),
            "maxResults": last("maxResults"),
            "fields": params.get("fields", []),
        }

    def _search_params_from_body(self, body: bytes) -> dict[str, Any]:
        payload = self._json_body(body)
        self._reject_unknown(payload, _SEARCH_BODY_FIELDS)
        return {
            "jql": payload.get("jql"),
            "nextPageToken": payload.get("nextPageToken"),
            "maxResults": payload.get("maxResults"),
            "fields": self._string_list(payload.get("fields"), "fields"),
        }

    def _page_token(self, offset: int, jql: str) -> str:
        cursor = json.dumps({"o": offset, "q": hashlib.sha256(jql.encode()).hexdigest()[:16]}).encode()
        signature = hmac.new(self._token_key, cursor, hashlib.sha256).hexdigest()[:32]
        return base64.urlsafe_b64encode(cursor).decode().rstrip("=") + "." + signature

    def _page_offset(self, token: str, jql: str) -> int:
        invalid = _BadRequest("The provided next page token is invalid or expired.")
        try:
            encoded, signature = token.split(".", 1)
            cursor = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except (ValueError, binascii.Error):
            raise invalid from None
        expected = hmac.new(self._token_key, cursor, hashlib.sha256).hexdigest()[:32]
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            raise invalid
        data = json.loads(cursor)
        if data.get("q") != hashlib.sha256(jql.encode()).hexdigest()[:16]:
            raise _BadRequest("The next page token belongs to a different JQL query.")
        return int(data["o"])

    def _search(self, params: dict[str, Any], api_version: str) -> _Reply:
        jql = params["jql"] if params["jql"] is not None else ""
        if not isinstance(jql, str):
            raise _BadRequest("'jql' must be a string.")
        tokens = _split_fields(params["fields"]) or ["id"]
        ids_only = set(tokens) <= {"id", "key"}
        limit = SEARCH_PAGE_LIMIT_KEYS_ONLY if ids_only else SEARCH_PAGE_LIMIT_WITH_FIELDS
        raw_max = params["maxResults"]
        try:
            max_results = SEARCH_DEFAULT_PAGE if raw_max in (None, "") else int(raw_max)
        except (TypeError, ValueError):
            raise _BadRequest(f"maxResults must be a whole number, got '{raw_max}'.") from None
        if max_results < 1:
            raise _BadRequest("maxResults must be at least 1.")
        page_size = min(max_results, limit)
        with self._lock:
            context = JqlContext(
                time_zone=self._time_zone,
                now=datetime.now(UTC),
                projects=dict(self._projects),
                statuses={name.lower(): status_id for name, (status_id, _) in self._statuses.items()},
            )
            try:
                compiled = compile_jql(jql, context)
            except JqlError as exc:
                return _error_reply(400, str(exc))
            token = params["nextPageToken"]
            offset = self._page_offset(str(token), jql) if token not in (None, "") else 0
            matched = compiled.select(
                i for i in self._issues.values() if i.id not in self._hidden and self._listable(i)
            )
            page = matched[offset : offset + page_size]
            fields = _selected_fields(tokens, self._custom_fields)
            base, time_zone = self._base_url(), self._time_zone
            if set(tokens) == {"id"}:
                issues = [{"id": str(issue.id)} for issue in page]
            else:
                issues = [self._issue_json(issue, fields, api_version, base, time_zone) for issue in page]
        result: dict[str, Any] = {"issues": issues}
        next_offset = offset + len(page)
        if next_offset < len(matched):
            result["nextPageToken"] = self._page_token(next_offset, jql)
            result["isLast"] = False
        else:
            result["isLast"] = True
        return _json_reply(200, result)

    # ----------------------------------------------------------------------------------------- admin

    def _admin(self, method: str, path: str, query: str, body: bytes) -> _Reply:
        route = path[len(ADMIN_PREFIX) :].strip("/")
        if route == "issues" and method == "POST":
            payload = self._json_body(body)
            return _json_reply(200, self._admin_upsert(payload))
        if route.startswith("issues/") and method == "DELETE":
            try:
                self.remove_issue(route.split("/", 1)[1])
            except KeyError:
                return _error_reply(404, ISSUE_NOT_FOUND_MESSAGE)
            return _Reply(204)
        if route == "faults" and method == "POST":
            payload = self._json_body(body)
            try:
                self.inject_fault(
                    int(payload["status"]),
                    count=int(payload.get("count", 1)),
                    retry_after=payload.get("retry_after"),
                    path_prefix=payload.get("path_prefix"),
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise _BadRequest(f"Invalid fault: {exc}") from None
            return _json_reply(200, {"pending_faults": self.pending_faults})
        if route == "key_faults" and method == "POST":
            payload = self._json_body(body)
            try:
                self.inject_key_fault(str(payload["key"]), str(payload["kind"]))
            except (KeyError, ValueError) as exc:
                raise _BadRequest(f"Invalid key fault: {exc}") from None
            return _Reply(204)
        if route == "faults" and method == "DELETE":
            self.clear_faults()
            return _Reply(204)
        if route == "requests" and method == "GET":
            return _json_reply(200, {"requests": [entry._asdict() for entry in self.requests]})
        if route == "requests" and method == "DELETE":
            self.clear_requests()
            return _Reply(204)
        if route == "reset" and method == "POST":
            self.reset()
            return _Reply(204)
        if route == "config" and method == "POST":
            payload = self._json_body(body)
            self._reject_unknown(payload, {"time_zone", "latency", "scoped_token", "large_bulk_fetch"})
            try:
                if "large_bulk_fetch" in payload:
                    self.large_bulk_fetch = bool(payload["large_bulk_fetch"])
                if "scoped_token" in payload:
                    self.scoped_token = bool(payload["scoped_token"])
                if "time_zone" in payload:
                    self.set_time_zone(payload["time_zone"])
                if "latency" in payload:
                    self.latency = float(payload["latency"])
            except (TypeError, ValueError) as exc:
                raise _BadRequest(str(exc)) from None
            return _json_reply(200, {"time_zone": self.time_zone, "latency": self.latency})
        if route == "config" and method == "GET":
            return _json_reply(200, {"time_zone": self.time_zone, "latency": self.latency})
        return _error_reply(404, f"No stand-in admin endpoint {method} {path}")

    def _admin_upsert(self, payload: dict[str, Any]) -> dict[str, Any]:
        self._reject_unknown(payload, _EDITABLE_FIELDS | {"key", "project_name"})
        try:
            plain = (_EDITABLE_FIELDS | {"project_name"}) - {"updated", "created"}
            kwargs: dict[str, Any] = {name: payload[name] for name in plain if name in payload}
            if "progress" in kwargs:
                kwargs["progress"] = tuple(kwargs["progress"])
            for name in ("updated", "created"):
                if payload.get(name):
                    kwargs[name] = datetime.fromisoformat(str(payload[name]))
            return self.add_issue(payload["key"], **kwargs)
        except (KeyError, TypeError, ValueError) as exc:
            raise _BadRequest(f"Invalid issue: {exc}") from None
