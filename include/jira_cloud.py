"""A Jira Cloud REST v3 client for the sync: bulk fetch, JQL key search, bounded retries, no secrets shown.

It is built on atlassian-python-api's `JiraCloud`, which has the Cloud endpoints (`get_current_user`,
`get_issue`, `bulk_fetch_issues`, `enhanced_jql`) that the provider's legacy `Jira` lacks or routes to the
removed /rest/api/2/search. What the library does not do the way a scheduled sync needs, this module adds:
a retry policy with a bounded total wait, errors that carry Jira's messages but never the API token, and
chunking of bulk fetches.

Scoped API tokens (the only kind an Atlassian service account can have) are refused on the site URL; with
`scoped_token=True` every REST call goes through Atlassian's API gateway,
`<api_base_url>/ex/jira/<cloudId>/rest/api/3/...`, and the cloudId is read once per process from the site's
unauthenticated `<site>/_edge/tenant_info` unless it is given. The site URL stays the client's identity
(the tenant whose mail is trusted); only the REST traffic moves.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from atlassian.jira import JiraCloud

from include.api_usage import Throttle, Usage
from include.jira_rules import (
    BULK_FETCH_LIMIT_ANY_FIELDS,
    BULK_FETCH_LIMIT_PLAIN_FIELDS,
    CHANGELOG_BULK_DEFAULT_RESULTS,
    CHANGELOG_BULK_MAX_FIELDS,
    CHANGELOG_BULK_MAX_ISSUES,
    CHANGELOG_BULK_MAX_RESULTS,
    SEARCH_PAGE_LIMIT_KEYS_ONLY,
    bulk_fetch_limit,
    is_issue_key,
    normalise_key,
)
from include.ticket_fields import TICKET_FIELDS, extra_values

logger = logging.getLogger(__name__)

DEFAULT_MAX_PAGES = 1000
# First wait before retrying a 5xx or a transport failure; it doubles on each further attempt.
RETRY_BACKOFF_BASE = 0.25
_TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
ATLASSIAN_API_BASE_URL = "https://api.atlassian.com"
TENANT_INFO_PATH = "/_edge/tenant_info"
# Cloud ids are UUIDs; anything outside this set could not be one and must not reach a URL path.
_CLOUD_ID = re.compile(r"[A-Za-z0-9-]{8,64}")
# What the sync reads, by the scopes Jira's OpenAPI document (x-atlassian-oauth2-scopes) names for
# GET /search/jql, POST /issue/bulkfetch, GET /issue/{key} and GET /myself; named in 401/403 errors.
CLASSIC_READ_SCOPES = ("read:jira-work", "read:jira-user")

_cloud_ids: dict[str, str] = {}
_cloud_ids_lock = threading.Lock()
# Sites that answered 400 to a bulk fetch of more than 100 issues: this worker process asks them for
# 100 at a time from then on (a site may not have the 1000-issue limit yet, or count a field as
# multi-valued that we do not).
_small_bulk_sites: set[str] = set()


class JiraError(Exception):
    """Something went wrong talking to Jira; the message never contains the API token."""


class JiraNotFound(JiraError):
    """get_issue: the issue does not exist, or the account may not see it."""

    def __init__(self, key: str) -> None:
        super().__init__(f"Jira issue {key} does not exist or is not visible to this account")
        self.key = key


class JiraUnavailable(JiraError):
    """Jira could not be reached, or kept failing (5xx, 429) past the bounded retries: try again later.

    `status` is Jira's last HTTP status (None when no answer came), `timed_out` whether the last
    attempt ran out of time, and `retry_after` the seconds Jira's last Retry-After asked for, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        timed_out: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.timed_out = timed_out
        self.retry_after = retry_after


class JiraCloudOnly(JiraError):
    """A Jira Cloud API that Jira Data Center and Server do not have (the census's id listing and bulk
    fetch, the changelog bulk fetch): the feature is not available against this Jira."""


class JiraRequestError(JiraError):
    """Jira refused the request (400, 401, 403, 410, ...); retrying the same request will not help."""

    def __init__(self, message: str, *, status: int, error_messages: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.error_messages = list(error_messages)


@dataclass(frozen=True)
class BulkFetchResult:
    issues: list[dict[str, Any]]
    not_found: list[str]
    requests: int = 0


@dataclass(frozen=True)
class ChangelogResult:
    """What POST /rest/api/3/changelog/bulkfetch returned over all its pages."""

    # issue id (Jira's decimal string) -> its changelog histories, oldest first, as Jira sent them
    histories: dict[str, list[dict[str, Any]]]
    requests: int
    pages: int


@dataclass(frozen=True)
class MissingKeys:
    """What single GETs said about keys a bulk fetch left out."""

    gone: list[str]  # 404: deleted, or no longer visible to this account
    moved: dict[str, dict[str, Any]]  # old key -> the issue Jira answered with, under its new key


_SITE_HOST = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")


def site_url_problem(site_url: str) -> str | None:
    """What is wrong with a Jira site URL, in words that never repeat the value; None when fine.

    The value is never shown because people paste credentials into the host field ("user:token@",
    "?token=", a token instead of the host): such a value must not reach a log or an exception.
    A site URL is a scheme, a host name, optionally a port and a context path, nothing else.
    """
    text = str(site_url or "").strip().rstrip("/")
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError for a port that is no number ("host:token")
    except ValueError:
        return "it is not a URL with a valid port"
    if parts.scheme not in ("http", "https"):
        return "it does not start with https:// (or http://)"
    if "@" in parts.netloc:
        return "it carries credentials; put the e-mail in login and the API token in password"
    if not parts.hostname or not _SITE_HOST.fullmatch(parts.hostname):
        return "it has no valid host name"
    if parts.query or parts.fragment or any(char.isspace() for char in text):
        return "it has a query, a fragment or spaces"
    if port == 0:
        return "its port is 0"
    return None


def _normalise_site_url(site_url: str) -> str:
    problem = site_url_problem(site_url)
    if problem is not None:
        raise ValueError(
            f"Jira site URL must look like https://acme.atlassian.net, but {problem} "
            "(the value is not shown, in case it holds a credential)"
        )
    return str(site_url).strip().rstrip("/")


def _normalise_api_base_url(api_base_url: str) -> str:
    text = str(api_base_url or "").strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        raise ValueError(
            "api_base_url must be http(s)://host without credentials (the value is not shown, in case it "
            "holds one)"
        )
    return text


def check_cloud_id(cloud_id: str) -> str:
    """`cloud_id` if it can be a Jira cloudId (a UUID such as 3f0c...-...), else ValueError."""
    text = str(cloud_id or "").strip()
    if not _CLOUD_ID.fullmatch(text):
        raise ValueError(
            f"cloud_id must be the site's cloudId (a UUID from <site>{TENANT_INFO_PATH}), got {text!r}"
        )
    return text


def forget_cloud_ids() -> None:
    """Forget the cloudIds discovered in this process (tests; a site keeps its cloudId for life)."""
    with _cloud_ids_lock:
        _cloud_ids.clear()


def forget_bulk_limits() -> None:
    """Forget which sites refused 1000-issue bulk fetches in this process (tests)."""
    with _cloud_ids_lock:
        _small_bulk_sites.clear()


def _retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), or None when absent or unreadable.

    The library has a parser, but it is private and clamps long waits to its own maximum, which would
    hide the one case we must see: a server asking for longer than our retry budget allows.
    """
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            at = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        seconds = (at - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _jira_messages(response: requests.Response) -> list[str]:
    try:
        payload = response.json()
    except ValueError:
        return []
    if not isinstance(payload, dict):
        return []
    messages = [str(m) for m in payload.get("errorMessages") or []]
    if not messages and isinstance(payload.get("message"), str):
        messages.append(payload["message"])  # the API gateway's {"code": 401, "message": "..."}
    errors = payload.get("errors")
    if isinstance(errors, dict):
        messages.extend(f"{field}: {text}" for field, text in errors.items())
    return messages


class JiraCloudClient:
    """Reads issues from one Jira Cloud site with an account e-mail and API token (basic auth).

    With `scoped_token=True` the requests go through `<api_base_url>/ex/jira/<cloud_id>` (the cloudId
    is discovered at `<site_url>/_edge/tenant_info` when not given); nothing is sent before the first call.
    """

    # Which REST version the calls (and the request names in messages) use; Data Center's is 2.
    api_version = "3"
    # Whether the Cloud-only APIs exist (JiraCloudOnly): the census and ticket history need them.
    has_cloud_apis = True

    def __init__(
        self,
        site_url: str,
        email: str,
        api_token: str,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        max_retry_wait: float = 60.0,
        verify: bool | str = True,
        scoped_token: bool = False,
        cloud_id: str | None = None,
        api_base_url: str = ATLASSIAN_API_BASE_URL,
    ) -> None:
        self._check_credentials(email, api_token)
        if timeout <= 0 or max_retries < 0 or max_retry_wait < 0:
            raise ValueError("timeout must be positive; max_retries and max_retry_wait not negative")
        self.site_url = _normalise_site_url(site_url)
        self.email = email
        self.verify = verify
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.max_retry_wait = float(max_retry_wait)
        self.scoped_token = bool(scoped_token)
        self.api_base_url = _normalise_api_base_url(api_base_url)
        self._cloud_id = check_cloud_id(cloud_id) if cloud_id else None
        self.request_count = 0
        # What the "Jira sync" page shows: how often Jira answered 429, and the last time it did.
        self.throttled_count = 0
        self.last_throttle: Throttle | None = None
        self._secret = api_token
        self._time_zone: str | None = None
        self._client: JiraCloud | None = None

    @staticmethod
    def _check_credentials(email: str, api_token: str) -> None:
        if not email or not api_token:
            raise ValueError("Jira needs the account e-mail and an API token")

    def __repr__(self) -> str:
        scoped = ", scoped_token=True" if self.scoped_token else ""
        return f"JiraCloudClient(site_url={self.site_url!r}, email={self.email!r}{scoped})"

    def __enter__(self) -> JiraCloudClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # ------------------------------------------------------------------------------- where requests go

    @property
    def cloud_id(self) -> str:
        """The site's cloudId: given, or read once per process from `<site>/_edge/tenant_info` (no auth)."""
        if self._cloud_id is None:
            with _cloud_ids_lock:
                known = _cloud_ids.get(self.site_url)
            self._cloud_id = known or self._discover_cloud_id()
        return self._cloud_id

    def _discover_cloud_id(self) -> str:
        url = f"{self.site_url}{TENANT_INFO_PATH}"
        what = f"GET {TENANT_INFO_PATH}"
        response = self._send(
            what, lambda: requests.get(url, timeout=self.timeout, verify=self.verify, allow_redirects=False)
        )
        fix = "check the host, or set the connection's extra cloud_id"
        if response.status_code != 200:
            raise JiraRequestError(
                f"Jira at {self.site_url} did not tell its cloudId ({what} answered HTTP "
                f"{response.status_code}): {fix}",
                status=response.status_code,
            )
        try:
            cloud_id = check_cloud_id(response.json().get("cloudId"))
        except (ValueError, AttributeError):
            raise JiraRequestError(
                f"Jira at {self.site_url} answered {what} without a cloudId: {fix}",
                status=response.status_code,
            ) from None
        with _cloud_ids_lock:
            _cloud_ids[self.site_url] = cloud_id
        logger.info(
            "Jira site %s has cloudId %s; REST calls go through %s",
            self.site_url,
            cloud_id,
            self.api_base_url,
        )
        return cloud_id

    @property
    def rest_base_url(self) -> str:
        """Where the REST calls go: the site URL, or `<api_base_url>/ex/jira/<cloudId>` for scoped tokens."""
        if not self.scoped_token:
            return self.site_url
        return f"{self.api_base_url}/ex/jira/{self.cloud_id}"

    @property
    def where(self) -> str:
        """The site, and the gateway when scoped, for messages (never a secret)."""
        if not self.scoped_token:
            return self.site_url
        return f"{self.site_url} (through {self.api_base_url}/ex/jira/{self._cloud_id or '<cloudId>'})"

    @property
    def _api(self) -> JiraCloud:
        if self._client is None:
            # The library's own retrying is switched off: it retries a 429 only once, sleeping whatever
            # Retry-After says up to 30 minutes, and its urllib3 backoff knows no total wait budget nor 5xx
            # beyond 503. advanced_mode hands back the raw response, so this class decides what a status
            # means.
            client = JiraCloud(
                url=self.rest_base_url,
                username=self.email,
                password=self._secret,
                api_version=3,
                verify_ssl=self.verify,
                advanced_mode=True,
                backoff_and_retry=False,
                retry_with_header=False,
            )
            # The library stores int(timeout), turning a sub-second timeout into 0, which requests rejects;
            # it reads this attribute on every request, so the float is put back here.
            client.timeout = self.timeout
            self._client = client
        return self._client

    # ------------------------------------------------------------------------------------- transport

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _send(self, what: str, call: Callable[[], requests.Response]) -> requests.Response:
        """Run one request with the retry policy; returns the final response unless it is transient."""
        waited = 0.0
        attempt = 0
        while True:
            attempt += 1
            self.request_count += 1
            retry_after: float | None = None
            status: int | None = None
            timed_out = False
            self._pace()
            try:
                response = call()
            except (
                requests.Timeout,
                requests.ConnectionError,
                requests.exceptions.ChunkedEncodingError,
            ) as exc:
                timed_out = isinstance(exc, requests.Timeout)
                failure = "timed out" if timed_out else "could not be reached"
                failure = f"{failure} ({type(exc).__name__})"
            else:
                self._observe(response)
                if response.status_code not in _TRANSIENT_STATUSES:
                    return response
                status = response.status_code
                failure = f"answered HTTP {response.status_code}"
                if response.status_code in (429, 503):
                    retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
                if response.status_code == 429:
                    self.throttled_count += 1
                    self.last_throttle = Throttle(datetime.now(UTC), retry_after)
                response.close()
            budget_left = self.max_retry_wait - waited
            last = {"status": status, "timed_out": timed_out, "retry_after": retry_after}
            if attempt > self.max_retries:
                raise JiraUnavailable(
                    f"Jira at {self.where} {failure} on {what}; gave up after {attempt} attempt(s)", **last
                )
            delay = retry_after if retry_after is not None else RETRY_BACKOFF_BASE * 2 ** (attempt - 1)
            if delay > budget_left:
                why = "Retry-After asks for" if retry_after is not None else "the next retry would wait"
                raise JiraUnavailable(
                    f"Jira at {self.where} {failure} on {what}; {why} {delay:.1f}s, more than the "
                    f"{budget_left:.1f}s left of the {self.max_retry_wait:.1f}s retry budget",
                    **last,
                )
            logger.warning(
                "Jira %s on %s; retry %d of %d in %.2fs", failure, what, attempt, self.max_retries, delay
            )
            time.sleep(delay)
            waited += delay

    def _pace(self) -> None:
        """Called before each request; Data Center's client waits here when its rate limit is spent."""

    def _observe(self, response: requests.Response) -> None:
        """Called with each answer; Data Center's client reads its rate-limit headers here."""

    def usage(self, task: str) -> Usage:
        """What this client has asked of Jira so far, for include/api_usage."""
        return Usage(task, self.request_count, self.throttled_count, self.last_throttle)

    def _json(self, what: str, call: Callable[[], requests.Response]) -> Any:
        response = self._send(what, call)
        if response.status_code >= 400:
            raise self._request_error(what, response)
        try:
            return response.json()
        except ValueError:
            raise JiraUnavailable(
                f"Jira at {self.where} answered {what} with HTTP {response.status_code} but no JSON body"
            ) from None

    def _request_error(self, what: str, response: requests.Response) -> JiraRequestError:
        messages = [self._redact(m) for m in _jira_messages(response)]
        status = response.status_code
        said = f" ({'; '.join(messages)})" if messages else ""
        if status == 401 and self.scoped_token:
            detail = (
                f"the e-mail {self.email} and scoped API token were not accepted{said}: check that the token "
                f"is current, was made for this site, and has the scopes {', '.join(CLASSIC_READ_SCOPES)} "
                "(or their granular equivalents, see the README)"
            )
        elif status == 401:
            detail = (
                f"the e-mail {self.email} and API token were not accepted{said}: check both (a scoped API "
                "token, the only kind a service account has, needs the extra scoped_token: true)"
            )
        elif status == 403:
            detail = f"the account lacks permission{said}"
        else:
            detail = "; ".join(messages) or response.reason or "no details"
        return JiraRequestError(
            f"Jira at {self.where} refused {what} with HTTP {status}: {detail}",
            status=status,
            error_messages=messages,
        )

    # ------------------------------------------------------------------------------------------ API

    # The library names these two differently on its Cloud and Server classes; a subclass overrides them.
    def _request_myself(self) -> requests.Response:
        return self._api.get_current_user()

    def _request_fields(self) -> requests.Response:
        return self._api.get_fields()

    def myself(self) -> dict[str, Any]:
        """The account the token belongs to (GET /rest/api/3/myself)."""
        return self._json(f"GET /rest/api/{self.api_version}/myself", self._request_myself)

    def answers_this_account(self) -> bool:
        """Whether Jira is up for this account (one GET /rest/api/3/myself, with the client's retries).

        Asked after a failure, before blaming the keys of a request: when Jira does not answer the
        account at all, the fault is Jira's or the connection's, not the keys'.
        """
        try:
            self.myself()
        except JiraError:
            return False
        return True

    def account_time_zone(self) -> str:
        """The account's profile time zone, in which Jira reads zone-less JQL datetimes (cached)."""
        if self._time_zone is None:
            zone = self.myself().get("timeZone")
            if not zone:
                raise JiraError(f"Jira at {self.site_url} reported no timeZone for {self.email}")
            self._time_zone = str(zone)
        return self._time_zone

    def get_issue(self, key: str, fields: Sequence[str] = TICKET_FIELDS) -> dict[str, Any]:
        """One issue (GET /rest/api/3/issue/{key}); raises JiraNotFound when Jira does not show it."""
        normalised = normalise_key(key)
        if not is_issue_key(normalised):
            # Not a key Jira could have; asking would only put arbitrary text into the URL path.
            raise JiraNotFound(normalised)
        what = f"GET /rest/api/{self.api_version}/issue/{normalised}"
        response = self._send(what, lambda: self._api.get_issue(normalised, fields=",".join(fields)))
        if response.status_code == 404:
            raise JiraNotFound(normalised)
        if response.status_code >= 400:
            raise self._request_error(what, response)
        try:
            issue = response.json()
        except ValueError:
            issue = None
        if not isinstance(issue, dict):
            raise JiraError(
                f"Jira at {self.where} answered {what} with HTTP {response.status_code} but no issue"
            )
        return issue

    def fields_catalogue(self) -> list[dict[str, Any]]:
        """Every field this account can see, system and custom (GET /rest/api/3/field)."""
        what = f"GET /rest/api/{self.api_version}/field"
        answer = self._json(what, self._request_fields)
        if not isinstance(answer, list):
            raise JiraUnavailable(f"Jira at {self.where} answered {what} without a list")
        return answer

    @property
    def bulk_limit_refused(self) -> bool:
        """True once this site answered 400 to a bulk fetch of more than 100 issues (in this process)."""
        with _cloud_ids_lock:
            return self.site_url in _small_bulk_sites

    def bulk_fetch(
        self, keys: Sequence[str], fields: Sequence[str] = TICKET_FIELDS, *, per_request: int | None = None
    ) -> BulkFetchResult:
        """Fetch any number of issues, up to 1000 per request (100 when `fields` do not allow more).

        `per_request` caps the request size further (the planner sized the batch for one request).
        If the site answers 400 to a request of more than 100, that request is repeated in requests of
        100, and every later one in this process is 100 too. Keys are compared case-insensitively and
        de-duplicated. A malformed key is reported as not found without asking Jira. An issue moved to
        another project comes back under its new key, so its old key is reported as not found.
        """
        wanted = list(dict.fromkeys(normalise_key(key) for key in keys))
        valid = [key for key in wanted if is_issue_key(key)]
        size = min(
            bulk_fetch_limit(fields),
            per_request or BULK_FETCH_LIMIT_PLAIN_FIELDS,
            BULK_FETCH_LIMIT_PLAIN_FIELDS,
        )
        issues: list[dict[str, Any]] = []
        requests_before = self.request_count
        start = 0
        while start < len(valid):
            if self.bulk_limit_refused:
                size = min(size, BULK_FETCH_LIMIT_ANY_FIELDS)
            chunk = valid[start : start + max(size, 1)]
            try:
                issues.extend(self._bulk_request(chunk, fields))
            except JiraRequestError as exc:
                if exc.status != 400 or len(chunk) <= BULK_FETCH_LIMIT_ANY_FIELDS:
                    raise
                logger.warning(
                    "Jira at %s refused a bulk fetch of %d issues (%s); asking for %d at a time from now on",
                    self.where,
                    len(chunk),
                    "; ".join(exc.error_messages) or "HTTP 400",
                    BULK_FETCH_LIMIT_ANY_FIELDS,
                )
                with _cloud_ids_lock:
                    _small_bulk_sites.add(self.site_url)
                continue
            start += len(chunk)
        returned = {str(issue.get("key", "")).upper() for issue in issues}
        not_found = [key for key in wanted if key not in returned]
        return BulkFetchResult(
            issues=issues, not_found=not_found, requests=self.request_count - requests_before
        )

    def _bulk_request(self, chunk: list[str], fields: Sequence[str]) -> list[dict[str, Any]]:
        payload = {"issueIdsOrKeys": chunk, "fields": list(fields)}
        result = self._json(
            f"POST /rest/api/3/issue/bulkfetch ({len(chunk)} keys)",
            lambda: self._api.bulk_fetch_issues(data=payload),
        )
        errors = result.get("issueErrors") or []
        if errors:
            # Jira lists here only issues it failed to load (retriable errors); calling them "not
            # found" could make a caller forget tickets that exist, so the whole call fails instead.
            raise JiraUnavailable(
                f"Jira at {self.site_url} could not load {len(errors)} of {len(chunk)} issues in a bulk "
                f"fetch: {'; '.join(str(e.get('errorMessage', e)) for e in errors[:3])}"
            )
        return list(result.get("issues") or [])

    def look_up_missing(self, keys: Sequence[str], fields: Sequence[str] = TICKET_FIELDS) -> MissingKeys:
        """Ask for each key a bulk fetch left out on its own: 404 means gone, 200 a move to a new key.

        Jira has no deletion feed, and a bulk fetch leaves out deleted, hidden and unknown keys alike
        without saying which; only a single GET tells them apart. A transport failure or any other
        error raises (JiraUnavailable, JiraRequestError): it never counts as gone.
        """
        gone: list[str] = []
        moved: dict[str, dict[str, Any]] = {}
        for key in keys:
            try:
                issue = self.get_issue(key, fields)
            except JiraNotFound:
                gone.append(normalise_key(key))
                continue
            moved[normalise_key(key)] = issue
        return MissingKeys(gone=gone, moved=moved)

    def _search_pages(
        self, jql: str, fields: str, page_size: int, max_pages: int
    ) -> Iterator[list[dict[str, Any]]]:
        """The `issues` of each /search/jql page, following nextPageToken until Jira says isLast.

        More than `max_pages` pages, or a repeated token, raises JiraError.
        """
        if not 1 <= page_size <= SEARCH_PAGE_LIMIT_KEYS_ONLY:
            raise ValueError(f"page_size must be in 1..{SEARCH_PAGE_LIMIT_KEYS_ONLY}, got {page_size}")
        tokens: set[str] = set()
        token: str | None = None
        for page in range(1, max_pages + 1):
            result = self._json(
                f"GET /rest/api/3/search/jql (page {page})",
                lambda token=token: self._api.enhanced_jql(
                    jql, fields=fields, nextPageToken=token, limit=page_size
                ),
            )
            yield result.get("issues") or []
            token = result.get("nextPageToken")
            if result.get("isLast", token is None) or not token:
                return
            if token in tokens:
                raise JiraError(f"Jira at {self.site_url} repeated a search page token; stopping the search")
            tokens.add(token)
        raise JiraError(f"Jira search at {self.site_url} did not finish within {max_pages} pages")

    def search_keys(
        self, jql: str, *, page_size: int = SEARCH_PAGE_LIMIT_KEYS_ONLY, max_pages: int = DEFAULT_MAX_PAGES
    ) -> Iterator[str]:
        """The keys of the issues matching `jql`, following nextPageToken until Jira says isLast.

        Results are eventually consistent and pages can overlap when issues change mid-search, so a
        key is yielded only once. More than `max_pages` pages, or a repeated token, raises JiraError.
        """
        seen: set[str] = set()
        for issues in self._search_pages(jql, "key", page_size, max_pages):
            for issue in issues:
                key = issue.get("key")
                if key and key not in seen:
                    seen.add(key)
                    yield key

    # ------------------------------------------------------------- changelogs (ticket history, #25)

    def changelog_bulkfetch(
        self,
        issue_ids_or_keys: Sequence[str],
        field_ids: Sequence[str] = (),
        *,
        max_results: int = CHANGELOG_BULK_DEFAULT_RESULTS,
        max_pages: int = DEFAULT_MAX_PAGES,
    ) -> ChangelogResult:
        """Every changelog history of up to 1000 issues, for up to 10 field ids, following nextPageToken.

        POST /rest/api/3/changelog/bulkfetch (BulkChangelogRequestBean: issueIdsOrKeys 1..1000,
        fieldIds 0..10 unique, maxResults 1..10000, nextPageToken). Pages come oldest first; one issue's
        histories may span pages and are joined. The request has no "since": it always reads whole
        changelogs. Issues Jira does not show are left out. A repeated page token, or more than
        `max_pages` pages, raises JiraError.
        """
        wanted = list(dict.fromkeys(str(item).strip() for item in issue_ids_or_keys))
        if not 1 <= len(wanted) <= CHANGELOG_BULK_MAX_ISSUES or not all(wanted):
            raise ValueError(
                f"a changelog bulk fetch takes 1 to {CHANGELOG_BULK_MAX_ISSUES} issue ids or keys, "
                f"got {len(wanted)}"
            )
        fields = list(dict.fromkeys(str(field) for field in field_ids))
        if len(fields) > CHANGELOG_BULK_MAX_FIELDS:
            raise ValueError(
                f"a changelog bulk fetch filters by at most {CHANGELOG_BULK_MAX_FIELDS} field ids, "
                f"got {len(fields)}"
            )
        if not 1 <= max_results <= CHANGELOG_BULK_MAX_RESULTS:
            raise ValueError(f"max_results must be in 1..{CHANGELOG_BULK_MAX_RESULTS}, got {max_results}")
        url = self._api.resource_url("changelog/bulkfetch", api_root="rest/api", api_version=3)
        histories: dict[str, list[dict[str, Any]]] = {}
        requests_before = self.request_count
        tokens: set[str] = set()
        token: str | None = None
        for page in range(1, max_pages + 1):
            payload: dict[str, Any] = {"issueIdsOrKeys": wanted, "maxResults": max_results}
            if fields:
                payload["fieldIds"] = fields
            if token:
                payload["nextPageToken"] = token
            result = self._json(
                f"POST /rest/api/3/changelog/bulkfetch ({len(wanted)} issues, page {page})",
                lambda payload=payload: self._api.post(url, data=payload),
            )
            if not isinstance(result, dict):
                raise JiraUnavailable(
                    f"Jira at {self.where} answered a changelog bulk fetch without an object"
                )
            for entry in result.get("issueChangeLogs") or []:
                issue_id = str(entry.get("issueId") or "")
                if not issue_id:
                    raise JiraError(f"Jira at {self.where} sent a changelog without its issueId")
                histories.setdefault(issue_id, []).extend(entry.get("changeHistories") or [])
            token = result.get("nextPageToken")
            if not token:
                return ChangelogResult(histories, self.request_count - requests_before, page)
            if token in tokens:
                raise JiraError(f"Jira at {self.where} repeated a changelog page token; stopping")
            tokens.add(token)
        raise JiraError(f"Jira changelog bulk fetch at {self.where} did not finish within {max_pages} pages")

    # ------------------------------------------------------------------- the census (issue #22)

    def search_ids(
        self, jql: str, *, page_size: int = SEARCH_PAGE_LIMIT_KEYS_ONLY, max_pages: int = DEFAULT_MAX_PAGES
    ) -> Iterator[tuple[int, str]]:
        """(issue id, key) of every issue matching `jql`, page by page (`fields=id,key`, 5000 a page).

        The census streams these into its comparison, so no page is kept once read. Unlike search_keys,
        an issue seen on two overlapping pages is yielded once per page it is on: the caller's
        comparison is idempotent, and remembering every id here would cost the memory it saves.
        """
        for issues in self._search_pages(jql, "id,key", page_size, max_pages):
            for issue in issues:
                issue_id, key = str(issue.get("id") or ""), issue.get("key")
                if not issue_id.isdigit() or not is_issue_key(key):
                    raise JiraError(
                        f"Jira at {self.site_url} listed an issue without a numeric id and a key: {issue!r}"
                    )
                yield int(issue_id), key

    def bulk_fetch_ids(self, issue_ids: Sequence[int], fields: Sequence[str]) -> list[dict[str, Any]]:
        """The issues with these ids that a bulk fetch returns (1000 a request when `fields` allow).

        POST /issue/bulkfetch takes ids as well as keys (BulkFetchIssueRequestBean.issueIdsOrKeys in
        Jira's OpenAPI document); ids never change when an issue moves, so the census asks by id.
        Deleted, hidden and archived issues are silently left out, as with keys.
        """
        wanted = [str(int(issue_id)) for issue_id in dict.fromkeys(issue_ids)]
        size = min(bulk_fetch_limit(fields), BULK_FETCH_LIMIT_PLAIN_FIELDS)
        issues: list[dict[str, Any]] = []
        start = 0
        while start < len(wanted):
            if self.bulk_limit_refused:
                size = min(size, BULK_FETCH_LIMIT_ANY_FIELDS)
            chunk = wanted[start : start + size]
            try:
                issues.extend(self._bulk_request(chunk, fields))
            except JiraRequestError as exc:
                # As in bulk_fetch: a site still on the limit of 100 is asked 100 at a time from now on.
                if exc.status != 400 or len(chunk) <= BULK_FETCH_LIMIT_ANY_FIELDS:
                    raise
                with _cloud_ids_lock:
                    _small_bulk_sites.add(self.site_url)
                continue
            start += len(chunk)
        return issues


def parse_jira_datetime(text: str) -> datetime:
    """An aware datetime from Jira's `2026-11-27T10:14:30.123+0000` (or any ISO 8601 with an offset)."""
    at = datetime.fromisoformat(text)
    if at.tzinfo is None:
        raise ValueError(f"Jira datetime without an offset: {text!r}")
    return at


def ticket_details(issue: dict[str, Any], extra_fields: Sequence[str] = ()) -> dict[str, Any]:
    """The compact, JSON-able record the store keeps for one issue from get_issue or bulk_fetch.

    With `extra_fields`, their raw values go under "fields" (a JSON column of the store).
    """
    fields = issue.get("fields") or {}
    status = fields.get("status") or {}
    assignee = fields.get("assignee")
    progress = fields.get("progress")
    updated = fields.get("updated")
    compact_progress: dict[str, int] | None = None
    if isinstance(progress, dict):
        compact_progress = {
            "progress": int(progress.get("progress") or 0),
            "total": int(progress.get("total") or 0),
        }
        if progress.get("percent") is not None:
            compact_progress["percent"] = int(progress["percent"])
    details = {
        "key": issue["key"],
        # Jira's id never changes, even when the issue moves to another project and gets a new key.
        "issue_id": None if issue.get("id") is None else str(issue["id"]),
        "summary": fields.get("summary"),
        "status": status.get("name"),
        # None both when unassigned and when the assignee's privacy settings hide the address.
        "assignee_email": (assignee or {}).get("emailAddress") or None,
        "progress": compact_progress,
        # Fixed-width UTC text, so that string order is time order wherever it is stored.
        "updated_at": (
            parse_jira_datetime(updated).astimezone(UTC).isoformat(timespec="microseconds")
            if updated
            else None
        ),
    }
    if extra_fields:
        details["fields"] = extra_values(issue, extra_fields)
    return details
