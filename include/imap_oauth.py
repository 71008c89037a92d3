"""OAuth 2.0 access tokens for IMAP (SASL XOAUTH2 / OAUTHBEARER), chosen from an `imap` connection's fields.

No Airflow import: the hook passes the connection's plain values,
`imap_auth_from_connection(login, password, extra)`, and gets an `ImapAuth`.

The `extra` names (a contract, documented in the README's connection table):

| extra | for | meaning |
|---|---|---|
| `auth_type` | all | `password` (default: IMAP LOGIN), `xoauth2` or `oauthbearer` |
| `oauth_provider` | oauth | absent (generic RFC 6749 client credentials), `microsoft` or `google` |
| `token_url` | generic | the HTTPS token endpoint |
| `client_id` | generic, microsoft, google refresh token | the OAuth client (application) id |
| `scope` | generic | optional, space-separated |
| `token_endpoint_auth_method` | generic | `client_secret_basic` (default) or `client_secret_post` |
| `tenant_id` | microsoft | the Entra ID tenant (GUID or domain) |
| `authority_host` | microsoft | default `https://login.microsoftonline.com`; national clouds, tests |
| `service_account_info` | google | the service-account key JSON (object or string) |
| `service_account_file` | google | or a path to that JSON file |
| `subject` | google service account | the delegated mailbox; defaults to the login |
| `refresh_token` | google | or a user's refresh token (with `client_id`) |
| `token_uri` | google | overrides the key's `token_uri` / `https://oauth2.googleapis.com/token` |
| `allow_insecure_transport` | all | `true`: a login may go out without verified TLS (test servers only) |

The connection's login is always the mailbox address; its password is the client secret (generic,
Microsoft, Google refresh token). A service-account key needs no password.

Tokens are fetched by the libraries made for each provider (authlib, msal, google-auth), cached
once per process per source, reused until shortly before expiry, and never logged or put in an
exception. When the IMAP server refuses a token, `ImapAuth.authenticate` fetches a new one and
retries once, then raises an `ImapAuthError` that names what to fix.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

AUTH_TYPES = ("password", "xoauth2", "oauthbearer")
PROVIDERS = ("microsoft", "google")
MECHANISMS = {"xoauth2": "XOAUTH2", "oauthbearer": "OAUTHBEARER"}
OUTLOOK_SCOPE = "https://outlook.office365.com/.default"
GMAIL_SCOPE = "https://mail.google.com/"
MICROSOFT_AUTHORITY_HOST = "https://login.microsoftonline.com"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
TOKEN_AUTH_METHODS = ("client_secret_basic", "client_secret_post")
# A token is renewed this long before it expires, or at 10% of its lifetime when that is shorter.
EXPIRY_MARGIN_S = 60.0
EXPIRY_MARGIN_FRACTION = 0.1
HTTP_TIMEOUT_S = 30.0

T = TypeVar("T")


class ImapAuthError(Exception):
    """An IMAP login problem, worded as what to fix. Never carries a secret or a token.

    As such it is a configuration problem: asking again with the same settings gets the same answer.
    """


class ImapAuthUnavailable(ImapAuthError):
    """The token endpoint could not be reached or failed on its side: a later retry may succeed."""


INSECURE_TRANSPORT_EXTRA = "allow_insecure_transport"


def insecure_transport_allowed(extra: Mapping[str, Any], *, use_ssl: bool, ssl_context: str) -> bool:
    """Whether a login may go out over this transport; True when it is insecure but explicitly allowed.

    A password or token is sent only inside TLS whose certificate is verified (`use_ssl` true and
    `ssl_context` "default"): plain IMAP shows it to anyone on the path, and unverified TLS to anyone
    who can answer in the server's place. The hook never STARTTLSes, so without `use_ssl` the session
    is plain throughout. `allow_insecure_transport: true` accepts either risk, for loopback test
    servers; otherwise ImapAuthError names the fix (and never the secret).
    """
    allowed = extra.get(INSECURE_TRANSPORT_EXTRA, False)
    if not isinstance(allowed, bool):
        raise ImapAuthError(
            f"the imap connection's extra `{INSECURE_TRANSPORT_EXTRA}` must be true or false, got {allowed!r}"
        )
    if use_ssl and ssl_context == "default":
        return False
    if allowed:
        return True
    if not use_ssl:
        why = "the extra use_ssl is false, so the session is plain IMAP (no TLS, no STARTTLS)"
        fix = 'set the extra use_ssl to true (IMAPS, port 993) with ssl_context "default"'
    else:
        why = f"ssl_context is {ssl_context!r}, so the server's certificate is not verified"
        fix = (
            'set ssl_context to "default" (a private CA goes into SSL_CERT_FILE or SSL_CERT_DIR of the '
            "Airflow processes)"
        )
    raise ImapAuthError(
        f"refusing to send the login's password or token: {why}; {fix}, or, for a test server only, set "
        f"the extra {INSECURE_TRANSPORT_EXTRA}: true"
    )


def _unreachable(what: str, exc: BaseException) -> ImapAuthError:
    import requests

    if isinstance(exc, requests.exceptions.SSLError):
        return ImapAuthError(
            f"{what}: its TLS certificate could not be verified (trust its CA, e.g. REQUESTS_CA_BUNDLE)"
        )
    return ImapAuthUnavailable(
        f"{what} could not be reached ({type(exc).__name__}): check the URL and the network"
    )


def _credentials_refused(what: str, detail: str, fix: str) -> ImapAuthError:
    return ImapAuthError(f"{what} refused the client credentials ({detail}): {fix}")


def _requests_session(verify: bool | str, timeout: float) -> Any:
    """A requests session that applies `verify` and `timeout` to every request.

    Set per request because requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE override a session's
    `verify` (psf/requests#3829), and neither msal nor google-auth pass one themselves.
    """
    import functools

    import requests

    session = requests.Session()
    # msal mounts the same minimal retry on its own sessions.
    adapter = requests.adapters.HTTPAdapter(max_retries=1)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    defaults: dict[str, Any] = {"timeout": timeout}
    if verify is not True:
        defaults["verify"] = verify
    session.request = functools.partial(session.request, **defaults)  # type: ignore[method-assign]
    return session


def _digest(*parts: object) -> str:
    """Identifies a secret in a cache key without keeping it there."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class TokenSource:
    """One access token at a time, fetched on demand and reused until shortly before it expires.

    Thread-safe. Subclasses implement `_fetch()` -> (token, lifetime in seconds).
    """

    kind = "oauth"

    def __init__(self, description: str) -> None:
        self.description = description  # the endpoint and client id, never a secret
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0
        self.fetches = 0
        # Seconds on a clock that never goes back; swappable, so expiry can be tested without waiting.
        self.clock: Callable[[], float] = time.monotonic

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"

    def _fetch(self) -> tuple[str, float]:
        raise NotImplementedError

    def access_token(self) -> str:
        """A valid access token: the cached one, or a new one when it is near its expiry."""
        with self._lock:
            if self._token is None or self.clock() >= self._renew_at:
                started = self.clock()
                token, lifetime = self._fetch()
                self.fetches += 1
                margin = min(EXPIRY_MARGIN_S, max(lifetime, 0.0) * EXPIRY_MARGIN_FRACTION)
                self._token, self._renew_at = token, started + lifetime - margin
                log.info("Fetched an access token from %s (valid %.0f s)", self.description, lifetime)
            return self._token

    def invalidate(self, failed_token: str | None = None) -> None:
        """Forget the cached token (only if it is still `failed_token`, when given)."""
        with self._lock:
            if failed_token is None or failed_token == self._token:
                self._token = None
                self._forget()

    def _forget(self) -> None:
        """Drop any token the library caches on its own."""

    def refresh(self, failed_token: str | None = None) -> str:
        """A new token after the server refused `failed_token` (another thread may already have one)."""
        self.invalidate(failed_token)
        return self.access_token()


class ClientCredentialsSource(TokenSource):
    """RFC 6749 §4.4 client-credentials grant through authlib's requests client."""

    kind = "generic"

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str | None,
        auth_method: str,
        verify: bool | str,
        timeout: float,
    ) -> None:
        super().__init__(f"the token endpoint {token_url} (client_id {client_id})")
        self._token_url, self._client_id, self._scope = token_url, client_id, scope
        self._secret = client_secret
        self._auth_method, self._verify, self._timeout = auth_method, verify, timeout

    def _fetch(self) -> tuple[str, float]:
        import requests
        from authlib.integrations.base_client import OAuthError
        from authlib.integrations.requests_client import OAuth2Session

        what = f"the token endpoint {self._token_url}"
        with OAuth2Session(
            self._client_id,
            self._secret,
            scope=self._scope,
            token_endpoint_auth_method=self._auth_method,
        ) as session:
            try:
                token = session.fetch_token(
                    self._token_url,
                    grant_type="client_credentials",
                    timeout=self._timeout,
                    verify=self._verify,
                )
            except OAuthError as exc:
                raise _token_endpoint_error(what, exc.error, exc.description, "client_id") from None
            except requests.ConnectionError as exc:
                raise _unreachable(what, exc) from None
            except requests.Timeout as exc:
                raise _unreachable(what, exc) from None
            except requests.HTTPError as exc:
                status = exc.response.status_code
                error_class = ImapAuthUnavailable if status >= 500 or status == 429 else ImapAuthError
                raise error_class(f"{what} answered HTTP {status} without an OAuth error") from None
            except ValueError:
                raise ImapAuthError(
                    f"{what} did not answer with an OAuth 2.0 token response (JSON)"
                ) from None
        return token["access_token"], float(token.get("expires_in") or 3600)


def _token_endpoint_error(
    what: str, error: str | None, description: str | None, client_field: str
) -> ImapAuthError:
    detail = error or "error"
    if error in ("invalid_client", "unauthorized_client"):
        return _credentials_refused(
            what, detail, f"check {client_field} and the secret in the connection password"
        )
    if error == "invalid_scope":
        return ImapAuthError(f"{what} refused the requested scope ({detail}): check the `scope` extra")
    if error == "temporarily_unavailable":
        return ImapAuthUnavailable(f"{what} is temporarily unavailable ({detail})")
    return ImapAuthError(f"{what} refused the token request ({detail}: {description or 'no description'})")


class MicrosoftSource(TokenSource):
    """Entra ID client credentials through msal, scope https://outlook.office365.com/.default."""

    kind = "microsoft"

    def __init__(
        self,
        tenant_id: str,
        client_id: str,
        client_secret: str,
        authority_host: str | None,
        verify: bool | str,
        timeout: float,
    ) -> None:
        host = (authority_host or MICROSOFT_AUTHORITY_HOST).rstrip("/")
        self._authority = f"{host}/{tenant_id}"
        super().__init__(f"Microsoft Entra ID {self._authority} (client_id {client_id})")
        self._tenant_id, self._client_id, self._secret = tenant_id, client_id, client_secret
        # msal's instance discovery asks login.microsoftonline.com whether an authority host is
        # Microsoft's. The national clouds are on msal's built-in list and skip it anyway; a host
        # the operator names in `authority_host` is trusted as configured (msal's documented
        # "known authorities" pattern), so discovery is off for it.
        self._instance_discovery = None if authority_host is None else False
        self._verify, self._timeout = verify, timeout
        self._app: Any = None

    def _application(self) -> Any:
        import msal
        import requests

        if self._app is None:
            try:
                self._app = msal.ConfidentialClientApplication(
                    self._client_id,
                    client_credential=self._secret,
                    authority=self._authority,
                    instance_discovery=self._instance_discovery,
                    http_client=_requests_session(self._verify, self._timeout),
                    token_cache=msal.TokenCache(),
                )
            except requests.RequestException as exc:
                raise _unreachable(f"Microsoft Entra ID at {self._authority}", exc) from None
            except ValueError:
                raise ImapAuthError(
                    f"Microsoft Entra ID has no tenant at {self._authority}: check tenant_id"
                    + (" and authority_host" if self._instance_discovery is False else "")
                ) from None
        return self._app

    def _fetch(self) -> tuple[str, float]:
        import requests

        app = self._application()
        try:
            result = app.acquire_token_for_client(scopes=[OUTLOOK_SCOPE])
        except requests.RequestException as exc:
            raise _unreachable(f"Microsoft Entra ID at {self._authority}", exc) from None
        if "access_token" in result:
            return result["access_token"], float(result.get("expires_in") or 3600)
        error, codes = result.get("error"), result.get("error_codes") or []
        what = f"Microsoft Entra ID ({self._authority})"
        detail = f"{error}, AADSTS{codes[0]}" if codes else str(error)
        if error == "invalid_client":
            raise _credentials_refused(
                what,
                detail,
                "check client_id and the secret in the connection password (the secret's value, not its ID)",
            )
        if error == "unauthorized_client" or 700016 in codes:
            raise _credentials_refused(
                what, detail, "check client_id: the app is not registered in tenant_id"
            )
        if 90002 in codes:
            raise ImapAuthError(f"{what} does not know the tenant ({detail}): check tenant_id")
        if error == "temporarily_unavailable":
            raise ImapAuthUnavailable(f"{what} is temporarily unavailable ({detail})")
        raise ImapAuthError(f"{what} refused the token request ({detail})")

    def _forget(self) -> None:
        if self._app is not None:
            cache = self._app.token_cache
            for entry in list(cache.search(cache.CredentialType.ACCESS_TOKEN)):
                cache.remove_at(entry)


class GoogleSource(TokenSource):
    """A google-auth credential: a service account with domain-wide delegation, or a user's refresh token."""

    kind = "google"

    def __init__(
        self, credentials: Any, description: str, flow: str, verify: bool | str, timeout: float
    ) -> None:
        super().__init__(description)
        self._credentials, self.flow = credentials, flow
        self._verify, self._timeout = verify, timeout

    def _fetch(self) -> tuple[str, float]:
        import google.auth.exceptions
        from google.auth.transport.requests import Request

        session = _requests_session(self._verify, self._timeout)
        what = f"Google's token endpoint ({self.description})"
        try:
            with session:
                self._credentials.refresh(Request(session))
        except google.auth.exceptions.RefreshError as exc:
            data = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], Mapping) else {}
            if getattr(exc, "retryable", False):  # google-auth marks 5xx and rate limits retryable
                raise ImapAuthUnavailable(f"{what} failed on its side; a later retry may succeed") from None
            raise _google_error(what, self.flow, data.get("error"), data.get("error_description")) from None
        except google.auth.exceptions.TransportError as exc:
            raise _unreachable(what, exc.__cause__ or exc) from None
        expiry = self._credentials.expiry  # naive UTC, as google-auth keeps it
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        lifetime = (expiry - now).total_seconds() if expiry else 3600.0
        return self._credentials.token, lifetime


def _google_error(what: str, flow: str, error: str | None, description: str | None) -> ImapAuthError:
    detail = f"{error}: {description}" if description else str(error)
    if flow == "service_account":
        if error == "unauthorized_client":
            return ImapAuthError(
                f"{what} refused domain-wide delegation ({detail}): in the Admin console, grant the service "
                f"account's client ID the scope {GMAIL_SCOPE}, and check the mailbox (subject)"
            )
        if error == "invalid_grant":
            return ImapAuthError(
                f"{what} refused the service-account key ({detail}): check that the key in "
                "service_account_info/service_account_file is current and not deleted"
            )
    elif error == "invalid_client":
        return _credentials_refused(what, detail, "check client_id and the secret in the connection password")
    elif error == "invalid_grant":
        return ImapAuthError(
            f"{what} refused the refresh token ({detail}): it is expired or revoked; authorize again"
        )
    return ImapAuthError(f"{what} refused the token request ({detail})")


@dataclass(frozen=True)
class ImapAuth:
    """How to log in to one mailbox: LOGIN with a password, or SASL with a cached OAuth 2.0 token."""

    auth_type: str
    user: str
    provider: str | None = None  # None (generic), "microsoft" or "google"
    source: TokenSource | None = field(default=None, repr=False)

    @property
    def mechanism(self) -> str | None:
        """ "XOAUTH2", "OAUTHBEARER", or None for a password login."""
        return MECHANISMS.get(self.auth_type)

    def _require_source(self) -> TokenSource:
        if self.source is None:
            raise ImapAuthError(
                "this connection logs in with a password (auth_type password): there is no token"
            )
        return self.source

    def access_token(self) -> str:
        return self._require_source().access_token()

    def invalidate(self, failed_token: str | None = None) -> None:
        self._require_source().invalidate(failed_token)

    def refresh(self, failed_token: str | None = None) -> str:
        return self._require_source().refresh(failed_token)

    def refused_error(self) -> ImapAuthError:
        """The error for an IMAP server that refused a fresh token, naming what to fix."""
        head = f"the IMAP server refused the token for {self.user}"
        if self.provider == "microsoft":
            return ImapAuthError(
                f"{head}: check IMAP.AccessAsApp and the mailbox permission (the app's service principal "
                "needs New-ServicePrincipal and Add-MailboxPermission for this mailbox)"
            )
        if self.provider == "google":
            flow = getattr(self.source, "flow", "")
            if flow == "service_account":
                return ImapAuthError(
                    f"{head}: check the scope {GMAIL_SCOPE} and the service account's domain-wide delegation "
                    "for this mailbox, and that IMAP is enabled for it"
                )
            return ImapAuthError(
                f"{head}: check that the refresh token was granted {GMAIL_SCOPE} for this user"
            )
        return ImapAuthError(
            f"{head}: check that the token endpoint's client may open this mailbox (and the `scope` extra)"
        )

    def authenticate(self, attempt: Callable[[str, str], T], refused: tuple[type[BaseException], ...]) -> T:
        """Run `attempt(user, token)`; when it raises one of `refused`, get a new token and retry once.

        A second refusal raises `refused_error()`; nothing else is retried.
        """
        token = self.access_token()
        try:
            return attempt(self.user, token)
        except refused:
            log.warning(
                "The IMAP server refused the token for %s; fetching a new one and retrying once", self.user
            )
        token = self.refresh(failed_token=token)
        try:
            return attempt(self.user, token)
        except refused:
            raise self.refused_error() from None


_SOURCES: dict[tuple[object, ...], TokenSource] = {}
_SOURCES_LOCK = threading.Lock()


def clear_token_cache() -> None:
    """Forget every process-wide token source (tests; a rotated secret gets a new source anyway)."""
    with _SOURCES_LOCK:
        _SOURCES.clear()


def _shared(key: tuple[object, ...], build: Callable[[], TokenSource]) -> TokenSource:
    with _SOURCES_LOCK:
        source = _SOURCES.get(key)
        if source is None:
            source = _SOURCES[key] = build()
        return source


def _text(extra: Mapping[str, Any], name: str, why: str) -> str:
    value = extra.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ImapAuthError(f"the imap connection's extra `{name}` is required {why}")
    return value.strip()


def _https_url(value: str, name: str) -> str:
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.netloc:
        raise ImapAuthError(f"the imap connection's extra `{name}` must be an https:// URL")
    return value


def imap_auth_from_connection(
    login: str | None,
    password: str | None,
    extra: Mapping[str, Any] | None,
    *,
    verify: bool | str = True,
    timeout: float = HTTP_TIMEOUT_S,
) -> ImapAuth:
    """Validate an `imap` connection's fields and return how to log in; no network until a token is asked for.

    `verify` is passed to requests (True: the default trust store, which REQUESTS_CA_BUNDLE overrides;
    or a CA bundle path). The token source is shared by every call with the same settings in this process.
    """
    extra = dict(extra or {})
    auth_type = str(extra.get("auth_type") or "password").lower()
    if auth_type not in AUTH_TYPES:
        raise ImapAuthError(
            f"unknown auth_type {auth_type!r} in the imap connection's extra: use one of {AUTH_TYPES}"
        )
    provider = extra.get("oauth_provider")
    provider = str(provider).lower() if provider else None
    if provider is not None and provider not in PROVIDERS:
        raise ImapAuthError(
            f"unknown oauth_provider {provider!r}: use {PROVIDERS[0]!r}, {PROVIDERS[1]!r} or none"
        )
    if not login:
        raise ImapAuthError("the imap connection's login must be the mailbox address")
    if auth_type == "password":
        if provider is not None:
            raise ImapAuthError(
                "oauth_provider is set but auth_type is password: set auth_type xoauth2 or oauthbearer"
            )
        return ImapAuth(auth_type, login)

    secret = password or ""
    if provider is None:
        token_url = _https_url(_text(extra, "token_url", "for OAuth without oauth_provider"), "token_url")
        client_id = _text(extra, "client_id", "for OAuth without oauth_provider")
        scope = extra.get("scope") or None
        if isinstance(scope, list | tuple):
            scope = " ".join(str(part) for part in scope)
        method = extra.get("token_endpoint_auth_method") or "client_secret_basic"
        if method not in TOKEN_AUTH_METHODS:
            raise ImapAuthError(f"token_endpoint_auth_method must be one of {TOKEN_AUTH_METHODS}")
        if not secret:
            raise ImapAuthError("the imap connection's password must hold the OAuth client secret")
        key = ("generic", token_url, client_id, scope, method, verify, _digest(secret))
        source = _shared(
            key, lambda: ClientCredentialsSource(token_url, client_id, secret, scope, method, verify, timeout)
        )
    elif provider == "microsoft":
        tenant_id = _text(extra, "tenant_id", "for oauth_provider microsoft")
        client_id = _text(extra, "client_id", "for oauth_provider microsoft")
        host = extra.get("authority_host") or None
        if host is not None:
            _https_url(host, "authority_host")  # msal refuses anything but HTTPS
        if not secret:
            raise ImapAuthError("the imap connection's password must hold the app's client secret value")
        key = ("microsoft", host, tenant_id, client_id, verify, _digest(secret))
        source = _shared(key, lambda: MicrosoftSource(tenant_id, client_id, secret, host, verify, timeout))
    else:
        source = _google_source(login, secret, extra, verify, timeout)
    return ImapAuth(auth_type, login, provider, source)


def _google_source(
    login: str, secret: str, extra: Mapping[str, Any], verify: bool | str, timeout: float
) -> TokenSource:
    chosen = [
        name for name in ("service_account_info", "service_account_file", "refresh_token") if extra.get(name)
    ]
    if len(chosen) != 1:
        raise ImapAuthError(
            "oauth_provider google needs exactly one of the extras service_account_info, "
            f"service_account_file or refresh_token (found {chosen or 'none'})"
        )
    token_uri = extra.get("token_uri") or None
    if token_uri is not None:
        _https_url(token_uri, "token_uri")
    if chosen[0] == "refresh_token":
        client_id = _text(extra, "client_id", "with a Google refresh token")
        if not secret:
            raise ImapAuthError("the imap connection's password must hold the Google OAuth client secret")
        refresh_token = str(extra["refresh_token"])
        uri = token_uri or GOOGLE_TOKEN_URI

        def build_user() -> TokenSource:
            from google.oauth2.credentials import Credentials

            credentials = Credentials(
                None,
                refresh_token=refresh_token,
                client_id=client_id,
                client_secret=secret,
                token_uri=uri,
                scopes=[GMAIL_SCOPE],
            )
            return GoogleSource(
                credentials, f"{uri} (client_id {client_id})", "refresh_token", verify, timeout
            )

        return _shared(
            ("google-user", uri, client_id, login, verify, _digest(secret, refresh_token)), build_user
        )

    info = _service_account_info(extra, chosen[0])
    subject = str(extra.get("subject") or login)
    uri = token_uri or info.get("token_uri") or GOOGLE_TOKEN_URI
    email = info.get("client_email", "?")

    def build_sa() -> TokenSource:
        from google.oauth2 import service_account

        try:
            credentials = service_account.Credentials.from_service_account_info(
                {**info, "token_uri": uri}, scopes=[GMAIL_SCOPE], subject=subject
            )
        except (ValueError, KeyError, TypeError):
            raise ImapAuthError(
                f"the service-account key in {chosen[0]} is not a valid Google key JSON "
                "(needs client_email, private_key, token_uri)"
            ) from None
        return GoogleSource(
            credentials,
            f"{uri} (service account {email}, subject {subject})",
            "service_account",
            verify,
            timeout,
        )

    return _shared(("google-sa", uri, email, subject, verify, _digest(info)), build_sa)


def _service_account_info(extra: Mapping[str, Any], name: str) -> dict[str, Any]:
    raw: Any = extra[name]
    if name == "service_account_file":
        try:
            raw = Path(str(raw)).read_text()
        except OSError as exc:
            raise ImapAuthError(
                f"service_account_file {str(extra[name])!r} cannot be read ({exc.strerror})"
            ) from None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise ImapAuthError(f"the service-account key in {name} is not JSON") from None
    if not isinstance(raw, Mapping) or raw.get("type", "service_account") != "service_account":
        raise ImapAuthError(
            f"the service-account key in {name} must be a JSON object of type service_account"
        )
    return dict(raw)
