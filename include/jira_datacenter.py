"""A Jira Data Center (and Server) REST v2 client with the Cloud client's methods, for the same DAGs.

Data Center has neither `/rest/api/3/search/jql` (404) nor `POST /rest/api/3/issue/bulkfetch`, and
authenticates with a personal access token sent as `Authorization: Bearer` (or basic auth where the
admin allows it). This client subclasses JiraCloudClient, so the transport, the retry policy with its
bounded wait, Retry-After, redaction and usage counting are the same code; what differs is here:

- search: `POST /rest/api/2/search` paged by a moving lower bound on `updated` instead of `startAt`
  offsets (see search_keys), so issues that change mid-sweep are neither skipped nor repeated;
- fetch: `key in (...)` searches of up to the server's `maxResults` (jira.search.views.default.max,
  1000 unless the admin changed it; the answer's `maxResults` says, and the client adapts);
- rate limits: Data Center's token bucket (`X-RateLimit-Remaining`, and the `Retry-After` it sends on
  every answer): when the bucket is empty the next request waits for new tokens instead of drawing
  a 429.

Fields come as Data Center gives them: users carry `name`/`key` (and `emailAddress` when visible),
description and comments are wiki text, not ADF.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import requests
from atlassian import Jira

from include.jira_cloud import (
    BulkFetchResult,
    JiraCloudClient,
    JiraCloudOnly,
    JiraError,
    JiraRequestError,
    _retry_after_seconds,
    parse_jira_datetime,
)
from include.jira_rules import is_issue_key, normalise_key
from include.sweep_window import jql_lower_bound
from include.ticket_fields import TICKET_FIELDS

logger = logging.getLogger(__name__)

FLAVOR_CLOUD = "cloud"
FLAVOR_DATACENTER = "datacenter"
FLAVOR_AUTO = "auto"
FLAVORS = (FLAVOR_CLOUD, FLAVOR_DATACENTER, FLAVOR_AUTO)
# GET /rest/api/2/serverInfo's deploymentType, and the flavour each one means.
_DEPLOYMENT_FLAVORS = {"cloud": FLAVOR_CLOUD, "server": FLAVOR_DATACENTER, "datacenter": FLAVOR_DATACENTER}
# jira.search.views.default.max, Data Center's default cap on one search page.
DC_SEARCH_MAX_RESULTS = 1000
# The order the moving lower bound relies on; the sweep's JQL ends with it.
SWEEP_ORDER = "ORDER BY updated ASC, key ASC"
DEFAULT_MAX_PAGES = 1000

_flavors: dict[str, str] = {}
_search_caps: dict[str, int] = {}
_lock = threading.Lock()


def forget_flavors() -> None:
    """Forget the flavours and search caps learned in this process (tests)."""
    with _lock:
        _flavors.clear()
        _search_caps.clear()


def check_flavor(value: Any) -> str:
    """The connection extra `flavor` as one of FLAVORS (default cloud); ValueError for anything else."""
    text = str(value if value is not None else FLAVOR_CLOUD).strip().lower().replace(" ", "")
    text = {"": FLAVOR_CLOUD, "dc": FLAVOR_DATACENTER, "server": FLAVOR_DATACENTER}.get(text, text)
    if text not in FLAVORS:
        raise ValueError(
            f"the Jira connection's extra flavor must be one of {', '.join(FLAVORS)}, got {value!r}"
        )
    return text


class JiraDataCenterClient(JiraCloudClient):
    """Reads issues from Jira Data Center or Server: a PAT (`login` empty) or basic auth (`login` set)."""

    api_version = "2"
    has_cloud_apis = False

    def __init__(
        self,
        site_url: str,
        login: str | None,
        secret: str,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        max_retry_wait: float = 60.0,
        verify: bool | str = True,
    ) -> None:
        super().__init__(
            site_url,
            login or "",
            secret,
            timeout=timeout,
            max_retries=max_retries,
            max_retry_wait=max_retry_wait,
            verify=verify,
        )
        self.uses_token = not login
        # When the rate-limit bucket is empty: the monotonic time before which no request is sent.
        self._not_before = 0.0
        self.paced_seconds = 0.0

    @staticmethod
    def _check_credentials(email: str, api_token: str) -> None:
        if not api_token:
            raise ValueError(
                "Jira Data Center needs a personal access token as password (login empty), "
                "or a user name as login and its password"
            )

    def __repr__(self) -> str:
        who = "personal access token" if self.uses_token else f"login={self.email!r}"
        return f"JiraDataCenterClient(site_url={self.site_url!r}, {who})"

    @property
    def _api(self) -> Jira:
        if self._client is None:
            # As for Cloud: the library's retrying is off and advanced_mode hands back raw responses,
            # so the inherited _send decides what each status means. token= sends Bearer (a PAT).
            auth: dict[str, Any] = {"token": self._secret}
            if not self.uses_token:
                auth = {"username": self.email, "password": self._secret}
            client = Jira(
                url=self.site_url,
                cloud=False,
                api_version=2,
                verify_ssl=self.verify,
                advanced_mode=True,
                backoff_and_retry=False,
                retry_with_header=False,
                **auth,
            )
            client.timeout = self.timeout  # the library keeps int(timeout); see JiraCloudClient._api
            self._client = client
        return self._client

    def _request_error(self, what: str, response: requests.Response) -> JiraRequestError:
        if response.status_code != 401:
            return super()._request_error(what, response)
        how = (
            "the personal access token was not accepted: check that it is current and belongs to an "
            "account that may browse the projects"
            if self.uses_token
            else f"the user {self.email} and password were not accepted (is basic auth allowed on this "
            "server? otherwise leave login empty and put a personal access token in password)"
        )
        return JiraRequestError(f"Jira at {self.where} refused {what} with HTTP 401: {how}", status=401)

    def _request_myself(self) -> requests.Response:
        return self._api.myself()

    def _request_fields(self) -> requests.Response:
        return self._api.get_all_fields()

    def server_info(self) -> dict[str, Any]:
        """GET /rest/api/2/serverInfo (version, deploymentType)."""
        return self._json("GET /rest/api/2/serverInfo", self._api.get_server_info)

    # ------------------------------------------------------------------------------- rate limiting

    def _pace(self) -> None:
        wait = self._not_before - time.monotonic()
        if wait > 0:
            logger.info("Jira at %s: rate-limit bucket empty, waiting %.2fs for a token", self.where, wait)
            time.sleep(wait)
            self.paced_seconds += wait

    def _observe(self, response: requests.Response) -> None:
        """Data Center's token bucket: when X-RateLimit-Remaining is 0, wait before the next request.

        Data Center sends Retry-After on every answer (0 while tokens are left, else the seconds until
        the next batch of FillRate tokens); without it, one token's share of the interval is waited.
        """
        headers = response.headers
        try:
            remaining = int(headers["X-RateLimit-Remaining"])
        except (KeyError, ValueError):
            return
        if remaining > 0 or response.status_code == 429:  # a 429's Retry-After is _send's to honour
            return
        wait = _retry_after_seconds(headers.get("Retry-After"))
        if wait is None:
            try:
                wait = float(headers["X-RateLimit-Interval-Seconds"]) / float(headers["X-RateLimit-FillRate"])
            except (KeyError, ValueError, ZeroDivisionError):
                return
        # Never longer than the retry budget: a longer wait would look like a hang; a 429 then tells.
        self._not_before = time.monotonic() + min(max(wait, 0.0), self.max_retry_wait)

    # ------------------------------------------------------------------------------------- search

    @property
    def search_cap(self) -> int:
        """The most issues one search page may hold here: 1000 until the server's answer says less."""
        with _lock:
            return _search_caps.get(self.site_url, DC_SEARCH_MAX_RESULTS)

    def _search_page(self, what: str, jql: str, fields: Sequence[str], max_results: int) -> dict[str, Any]:
        # By hand, not the library's jql(): that one is a GET, and a `key in (...)` of 1000 keys (or a
        # long exclusion list) would pass the URL length servers accept; POST carries it in the body.
        # validateQuery false: a key that no longer exists (deleted, moved, hidden) is a warning,
        # not a 400 that would fail the whole request.
        body = {
            "jql": jql,
            "startAt": 0,
            "maxResults": max_results,
            "fields": list(fields),
            "validateQuery": False,
        }
        answer = self._json(what, lambda: self._api.post(self._api.resource_url("search"), data=body))
        if not isinstance(answer, dict) or not isinstance(answer.get("issues"), list):
            raise JiraError(f"Jira at {self.where} answered {what} without a list of issues")
        cap = answer.get("maxResults")
        if isinstance(cap, int) and 0 < cap < max_results:
            with _lock:
                if _search_caps.get(self.site_url, DC_SEARCH_MAX_RESULTS) > cap:
                    logger.info("Jira at %s answers at most %d issues a search page", self.where, cap)
                    _search_caps[self.site_url] = cap
        return answer

    def bulk_fetch(
        self, keys: Sequence[str], fields: Sequence[str] = TICKET_FIELDS, *, per_request: int | None = None
    ) -> BulkFetchResult:
        """Fetch any number of issues by `key in (...)` searches of up to the server's page size.

        Same contract as the Cloud client's: keys are compared case-insensitively and de-duplicated,
        a malformed key is not found without asking, and a moved issue comes back under its new key,
        so its old key is reported not found (look_up_missing then tells moved from gone).
        """
        wanted = list(dict.fromkeys(normalise_key(key) for key in keys))
        valid = [key for key in wanted if is_issue_key(key)]
        issues: list[dict[str, Any]] = []
        requests_before = self.request_count
        start = 0
        while start < len(valid):
            size = max(1, min(self.search_cap, per_request or DC_SEARCH_MAX_RESULTS))
            chunk = valid[start : start + size]
            what = f"POST /rest/api/2/search (key in {len(chunk)} keys)"
            answer = self._search_page(what, f"key in ({', '.join(chunk)})", fields, len(chunk))
            found = answer["issues"]
            total = answer.get("total")
            if isinstance(total, int) and total > len(found):
                # The server pages smaller than asked (its cap is now learned): ask again in pieces.
                continue
            issues.extend(found)
            start += len(chunk)
        returned = {str(issue.get("key", "")).upper() for issue in issues}
        not_found = [key for key in wanted if key not in returned]
        used = self.request_count - requests_before
        return BulkFetchResult(issues=issues, not_found=not_found, requests=used)

    def search_keys(
        self, jql: str, *, page_size: int = DC_SEARCH_MAX_RESULTS, max_pages: int = DEFAULT_MAX_PAGES
    ) -> Iterator[str]:
        """The keys of the issues matching `jql` (which must end with ORDER BY updated ASC, key ASC).

        Offset paging (`startAt`) over a result set that changes skips an issue each time an earlier
        one is edited (it moves to the end, everything after it shifts down by one). So every page is
        asked from the start, with a lower bound that moves: `updated >=` the minute of the last issue
        seen (JQL cannot say anything finer than a minute, in the account's zone), excluding by key the
        issues already seen whose `updated` is at or after that minute's reading. An issue edited
        mid-search moves past the bound and comes again later (yielded once); no unseen issue can
        be below the bound, since `updated` only grows. A key is yielded once.
        """
        base = jql.strip()
        if not base.upper().endswith(SWEEP_ORDER.upper()):
            raise ValueError(
                f"a Data Center search pages by a moving bound: the JQL must end in {SWEEP_ORDER}"
            )
        base = base[: -len(SWEEP_ORDER)].strip()
        if not 1 <= page_size:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        zone = self.account_time_zone()
        # key -> the latest `updated` seen for it (an edit mid-search moves it forward).
        seen: dict[str, datetime] = {}
        bound: tuple[str, datetime] | None = None
        for page in range(1, max_pages + 1):
            clauses = [f"({base})"] if base else []
            if bound is not None:
                literal, reading = bound
                clauses.append(f"updated >= {literal}")
                at_bound = [key for key, at in seen.items() if at >= reading]
                if at_bound:
                    clauses.append(f"key not in ({', '.join(at_bound)})")
            size = min(page_size, self.search_cap)
            answer = self._search_page(
                f"POST /rest/api/2/search (page {page})",
                " AND ".join(clauses) + " " + SWEEP_ORDER,
                ("key", "updated"),
                size,
            )
            found = answer["issues"]
            last: datetime | None = None
            for issue in found:
                key = str(issue.get("key") or "").upper()
                updated = (issue.get("fields") or {}).get("updated")
                if not key or not updated:
                    raise JiraError(
                        f"Jira at {self.where} answered a search with an issue lacking key or updated"
                    )
                at = parse_jira_datetime(updated)
                if key not in seen:
                    yield key
                seen[key] = at
                last = at if last is None or at > last else last
            total = answer.get("total")
            if not found or (isinstance(total, int) and total <= len(found)):
                return
            bound = jql_lower_bound(last, zone)
        raise JiraError(f"Jira search at {self.site_url} did not finish within {max_pages} pages")

    # ------------------------------------------------------- Jira Cloud's APIs that DC does not have
    # The census lists ids with /rest/api/3/search/jql and bulk-fetches by id; ticket history reads
    # /rest/api/3/changelog/bulkfetch. Data Center has neither: refuse before sending anything, with
    # a message a user can act on, rather than letting a 404 look like an outage.

    def _cloud_only(self, feature: str) -> JiraCloudOnly:
        return JiraCloudOnly(
            f"{feature} needs Jira Cloud's REST API v3; {self.site_url} is Jira Data Center or Server"
        )

    def search_ids(self, *_args: Any, **_kwargs: Any) -> Any:
        raise self._cloud_only("The census (id listing)")

    def bulk_fetch_ids(self, *_args: Any, **_kwargs: Any) -> Any:
        raise self._cloud_only("The census (bulk fetch by id)")

    def changelog_bulkfetch(self, *_args: Any, **_kwargs: Any) -> Any:
        raise self._cloud_only("Ticket history (POST /rest/api/3/changelog/bulkfetch)")


def detect_flavor(client: JiraDataCenterClient) -> str:
    """cloud or datacenter, from GET /rest/api/2/serverInfo's deploymentType (asked once per process)."""
    with _lock:
        known = _flavors.get(client.site_url)
    if known:
        return known
    deployment = str(client.server_info().get("deploymentType") or "")
    flavor = _DEPLOYMENT_FLAVORS.get(deployment.lower())
    if flavor is None:
        raise JiraError(
            f"Jira at {client.site_url} reported deploymentType {deployment!r}; set the connection's "
            "extra flavor to cloud or datacenter"
        )
    with _lock:
        _flavors[client.site_url] = flavor
    logger.info("Jira at %s is %s (deploymentType %s)", client.site_url, flavor, deployment)
    return flavor
