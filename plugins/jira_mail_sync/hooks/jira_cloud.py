"""An Airflow hook that opens a Jira client (Cloud REST v3, or Data Center v2) from a `jira` connection."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from airflow.sdk import BaseHook

from include.jira_cloud import ATLASSIAN_API_BASE_URL, JiraCloudClient, site_url_problem
from include.jira_datacenter import (
    FLAVOR_AUTO,
    FLAVOR_CLOUD,
    FLAVOR_DATACENTER,
    JiraDataCenterClient,
    check_flavor,
    detect_flavor,
)
from include.names import JIRA_CONN_ID

_TRUE_WORDS = {"true", "1", "yes", "on"}
_FALSE_WORDS = {"false", "0", "no", "off"}


def site_url_from_host(host: str | None, port: int | None = None) -> str:
    """The site URL of a connection's host: https:// when no scheme is given, plus the port if set."""
    text = (host or "").strip().rstrip("/")
    if not text:
        raise ValueError(
            "the Jira connection has no host; set it to the site URL, e.g. https://acme.atlassian.net"
        )
    if "://" not in text:
        text = f"https://{text}"
    problem = site_url_problem(text)
    if problem is not None:
        # Never the value itself: a credential typed into the host field would end up in the log.
        raise ValueError(
            f"the Jira connection's host must be the site URL, like https://acme.atlassian.net, "
            f"but {problem} (the value is not shown, in case it holds a credential)"
        )
    if port and urlsplit(text).port is None:
        text = f"{text}:{port}"
    return text


def flag_option(extra: dict[str, Any], name: str) -> bool:
    """A boolean extra given as true/false or as a word ("true", "yes", "1", ...); ValueError otherwise."""
    value = extra.get(name, False)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE_WORDS:
        return True
    if text in _FALSE_WORDS or not text:
        return False
    raise ValueError(f"the Jira connection's extra {name} must be true or false, got {value!r}")


def verify_option(extra: dict[str, Any]) -> bool | str:
    """The `verify` extra as requests takes it: a bool, or the path of a CA bundle (like the provider's)."""
    value = extra.get("verify", True)
    if isinstance(value, bool):
        return value
    text = str(value).strip()
    if text.lower() in _TRUE_WORDS:
        return True
    if text.lower() in _FALSE_WORDS:
        return False
    return text


class JiraCloudHook(BaseHook):
    """Jira Cloud through REST v3 (/search/jql, /issue/bulkfetch), from a `jira` connection.

    The connection's host is the site URL, its login the account e-mail and its password an API token;
    the extra `verify` is a bool or a CA bundle path. With the extra `scoped_token: true` (a scoped API
    token, e.g. a service account's) REST calls go to `<api_base_url>/ex/jira/<cloud_id>/...`
    (extras `api_base_url`, default https://api.atlassian.com, and `cloud_id`, default: read from
    `<host>/_edge/tenant_info`); the host still names the site whose mail is trusted. Unlike the
    provider's JiraHook, constructing this hook touches nothing: the client is built on the first
    get_conn(), so DAG parsing stays cheap.

    The extra `flavor` picks the Jira: `cloud` (default), `datacenter` (Data Center or Server, REST v2,
    include/jira_datacenter.py) or `auto` (GET /rest/api/2/serverInfo once per process). On Data
    Center an empty login with a personal access token as password authenticates with Bearer; a
    login and password use basic auth.

    Airflow resolves the conn type `jira` to the provider's JiraHook (a plugin cannot register a
    hook), so this class has no connection-form or Test-button methods: they would never be
    called. `python -m jira_mail_sync.check_connections` checks the connection instead.
    """

    conn_name_attr = "jira_conn_id"
    default_conn_name = JIRA_CONN_ID
    conn_type = "jira"
    hook_name = "Jira Cloud (REST v3) or Data Center (REST v2)"

    def __init__(
        self,
        jira_conn_id: str = default_conn_name,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        max_retry_wait: float = 60.0,
    ) -> None:
        super().__init__()
        self.jira_conn_id = jira_conn_id
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self._client: JiraCloudClient | None = None
        self._site_url: str | None = None

    @property
    def site_url(self) -> str:
        """The connection's site URL (looked up on first use, without contacting Jira)."""
        if self._site_url is None:
            conn = self.get_connection(self.jira_conn_id)
            self._site_url = site_url_from_host(conn.host, conn.port)
        return self._site_url

    def get_conn(self) -> JiraCloudClient:
        if self._client is None:
            conn = self.get_connection(self.jira_conn_id)
            extra = conn.extra_dejson
            flavor = check_flavor(extra.get("flavor"))
            self._site_url = site_url_from_host(conn.host, conn.port)
            if flavor == FLAVOR_AUTO:
                if not conn.password:
                    raise ValueError(f"Jira connection {self.jira_conn_id!r} needs a password or token")
                probe = self._datacenter_client(conn, extra)
                flavor = detect_flavor(probe)
                if flavor == FLAVOR_DATACENTER:
                    self._client = probe
                else:
                    probe.close()
            if flavor == FLAVOR_DATACENTER and self._client is None:
                if not conn.password:
                    raise ValueError(
                        f"Jira connection {self.jira_conn_id!r} (flavor datacenter) needs a personal access "
                        "token as password with login empty, or a user name as login and its password"
                    )
                if flag_option(extra, "scoped_token"):
                    raise ValueError("the extra scoped_token is for Jira Cloud only, not flavor datacenter")
                self._client = self._datacenter_client(conn, extra)
            if flavor == FLAVOR_CLOUD:
                self._client = self._cloud_client(conn, extra)
            self.log.debug("Jira %s client for %s", flavor, self._site_url)
        return self._client

    def _datacenter_client(self, conn: Any, extra: dict[str, Any]) -> JiraDataCenterClient:
        return JiraDataCenterClient(
            self.site_url,
            conn.login or "",
            conn.password,
            timeout=self.timeout,
            max_retries=self.max_retries,
            max_retry_wait=self.max_retry_wait,
            verify=verify_option(extra),
        )

    def _cloud_client(self, conn: Any, extra: dict[str, Any]) -> JiraCloudClient:
        if not conn.login or not conn.password:
            raise ValueError(
                f"Jira connection {self.jira_conn_id!r} needs the account e-mail as login "
                "and an API token as password (or the extra flavor: datacenter for Jira Data Center)"
            )
        return JiraCloudClient(
            self.site_url,
            conn.login,
            conn.password,
            timeout=self.timeout,
            max_retries=self.max_retries,
            max_retry_wait=self.max_retry_wait,
            verify=verify_option(extra),
            scoped_token=flag_option(extra, "scoped_token"),
            cloud_id=extra.get("cloud_id") or None,
            api_base_url=extra.get("api_base_url") or ATLASSIAN_API_BASE_URL,
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> JiraCloudHook:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
