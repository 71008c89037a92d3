"""A loopback identity provider: RFC 6749 client credentials, Entra ID v2.0, Google, RFC 7662 introspection.

Wire shapes follow the published documents, cited beside each handler:
- RFC 6749 §4.4 (client credentials), §5.1 (token response), §5.2 (error response), §2.3.1 (client auth);
- RFC 7523 §2.1 / Google "Using OAuth 2.0 for Server to Server Applications" (JWT-bearer grant);
- Google "Using OAuth 2.0 for Web Server Applications", "Refreshing an access token";
- Microsoft identity platform "OAuth 2.0 client credentials flow" (token and error responses) and
  "OpenID Connect on the Microsoft identity platform" (the v2.0 discovery document);
- RFC 7662 §2.1/§2.2 (introspection request and response), which Dovecot's `oauth2` passdb calls.

Every access token is bound to one mailbox (`username` in introspection): the client's granted
mailbox for client credentials (Exchange's `Add-MailboxPermission`), the delegated `sub` for a
Google service account, the user for a refresh token. Nothing here is meant for production.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jwt

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
DEFAULT_LIFETIME_S = 3600
OUTLOOK_SCOPE = "https://outlook.office365.com/.default"
GMAIL_SCOPE = "https://mail.google.com/"
# google-auth always signs this audience, whatever token_uri it posts to (Google documents the same).
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Google refuses assertions that live longer than an hour (with a little clock skew).
GOOGLE_MAX_ASSERTION_S = 3600
CLOCK_SKEW_S = 300

# Endpoint labels used in the request log and the counters.
GENERIC_TOKEN = "generic-token"
ENTRA_DISCOVERY = "entra-openid-configuration"
ENTRA_TOKEN = "entra-token"
GOOGLE_TOKEN = "google-token"
INTROSPECT = "introspect"


@dataclass(frozen=True)
class RequestRecord:
    """One request as the stand-in saw it; never holds a secret, an assertion or a token."""

    endpoint: str
    method: str
    path: str
    status: int
    grant_type: str | None = None
    client_id: str | None = None
    client_auth: str | None = None  # "basic", "body" or None
    username: str | None = None  # the mailbox a token was issued for, or introspected as
    error: str | None = None
    scope: str | None = None


@dataclass
class _Client:
    client_id: str
    secret: str = field(repr=False)
    mailbox: str
    scopes: frozenset[str] | None  # None: any scope
    tenant: str | None  # Entra tenant; None for the generic endpoint
    lifetime_s: int | None


@dataclass
class _ServiceAccount:
    email: str
    key_id: str
    public_key_pem: bytes = field(repr=False)
    delegated: set[str]  # subjects granted through domain-wide delegation
    scopes: frozenset[str]
    lifetime_s: int | None


@dataclass
class _RefreshGrant:
    client_id: str
    client_secret: str = field(repr=False)
    user: str
    lifetime_s: int | None


@dataclass
class _Token:
    username: str
    client_id: str
    scope: str
    expires_at: float


class _OAuthError(Exception):
    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None):
        super().__init__(body.get("error"))
        self.status, self.body, self.headers = status, body, headers or {}


def _entra_error(status: int, error: str, code: int, text: str) -> _OAuthError:
    # https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow#error-response
    now = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
    return _OAuthError(
        status,
        {
            "error": error,
            "error_description": (
                f"AADSTS{code}: {text} Trace ID: {trace} Correlation ID: {correlation} Timestamp: {now}"
            ),
            "error_codes": [code],
            "timestamp": now,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": f"https://login.microsoftonline.com/error?code={code}",
        },
    )


class OAuthStandin:
    """The identity provider's state plus its two loopback listeners (HTTPS, and HTTP for Dovecot).

    Start it with `start_oauth_standin(certfile, keyfile)` or use it as a context manager; register
    clients, service accounts and refresh tokens, then point the libraries at `base_url` and Dovecot
    at `introspection_url`.
    """

    def __init__(self, certfile: str | Path, keyfile: str | Path) -> None:
        self._lock = threading.Lock()
        self._clients: dict[tuple[str | None, str], _Client] = {}
        self._service_accounts: dict[str, _ServiceAccount] = {}
        self._refresh_grants: dict[str, _RefreshGrant] = {}
        self._google_clients: dict[str, str] = {}
        self._tokens: dict[str, _Token] = {}
        self._refused_users: set[str] = set()
        self._revoked_tokens: set[str] = set()
        self._log: list[RequestRecord] = []
        self.default_lifetime_s = DEFAULT_LIFETIME_S
        self.tenants: set[str] = set()
        # When tokens expire; tests swap in a clock they advance, instead of sleeping past a lifetime.
        self.clock: Callable[[], float] = time.time

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(certfile), str(keyfile))
        self._https = ThreadingHTTPServer((LOOPBACK, 0), _handler_for(self))
        self._https.socket = context.wrap_socket(self._https.socket, server_side=True)
        self._http = ThreadingHTTPServer((LOOPBACK, 0), _handler_for(self))
        self._threads = [
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            for server in (self._https, self._http)
        ]
        for thread in self._threads:
            thread.start()

    # --- addresses -------------------------------------------------------------------------------
    @property
    def https_port(self) -> int:
        return self._https.server_address[1]

    @property
    def http_port(self) -> int:
        return self._http.server_address[1]

    @property
    def base_url(self) -> str:
        """HTTPS root; Entra lives at `{base_url}/{tenant}/...`, msal's `authority_host` is this."""
        return f"https://{LOOPBACK}:{self.https_port}"

    @property
    def token_url(self) -> str:
        """The generic RFC 6749 token endpoint."""
        return f"{self.base_url}/oauth2/token"

    @property
    def google_token_uri(self) -> str:
        return f"{self.base_url}/google/token"

    @property
    def introspection_url(self) -> str:
        """Plain HTTP, for Dovecot's `oauth2` passdb (`introspection_mode = post`)."""
        return f"http://{LOOPBACK}:{self.http_port}/introspect"

    # --- registration ----------------------------------------------------------------------------
    def register_client(
        self,
        client_id: str,
        secret: str,
        mailbox: str,
        *,
        tenant: str | None = None,
        scopes: set[str] | frozenset[str] | None = None,
        lifetime_s: int | None = None,
    ) -> None:
        """A confidential client whose tokens open `mailbox`; with `tenant`, an Entra app registration."""
        with self._lock:
            if tenant is not None:
                self.tenants.add(tenant)
                scopes = frozenset(scopes or {OUTLOOK_SCOPE})
            self._clients[(tenant, client_id)] = _Client(
                client_id,
                secret,
                mailbox,
                frozenset(scopes) if scopes is not None else None,
                tenant,
                lifetime_s,
            )

    def register_service_account(
        self,
        email: str,
        key_id: str,
        public_key_pem: bytes,
        *,
        delegated_subjects: set[str] | frozenset[str] = frozenset(),
        scopes: set[str] | frozenset[str] = frozenset({GMAIL_SCOPE}),
        lifetime_s: int | None = None,
    ) -> None:
        """A Google service account key, with domain-wide delegation to `delegated_subjects`."""
        with self._lock:
            self._service_accounts[email] = _ServiceAccount(
                email, key_id, public_key_pem, set(delegated_subjects), frozenset(scopes), lifetime_s
            )

    def register_refresh_token(
        self,
        refresh_token: str,
        client_id: str,
        client_secret: str,
        user: str,
        *,
        lifetime_s: int | None = None,
    ) -> None:
        """A Google OAuth client and a user's refresh token for it."""
        with self._lock:
            self._google_clients[client_id] = client_secret
            self._refresh_grants[refresh_token] = _RefreshGrant(client_id, client_secret, user, lifetime_s)

    def refuse_user(self, mailbox: str) -> None:
        """Introspection answers inactive for every token of `mailbox` (the mailbox is not granted)."""
        with self._lock:
            self._refused_users.add(mailbox)

    def allow_user(self, mailbox: str) -> None:
        with self._lock:
            self._refused_users.discard(mailbox)

    def revoke_token(self, token: str) -> None:
        with self._lock:
            self._revoked_tokens.add(token)

    def revoke_all_tokens(self) -> None:
        with self._lock:
            self._revoked_tokens.update(self._tokens)

    # --- observation -----------------------------------------------------------------------------
    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._log)

    def count(self, endpoint: str, *, status: int | None = None) -> int:
        """How many requests reached `endpoint` (one of the module's endpoint labels)."""
        return sum(
            1 for r in self.requests if r.endpoint == endpoint and (status is None or r.status == status)
        )

    def counters(self) -> Counter[str]:
        return Counter(r.endpoint for r in self.requests)

    def issued_tokens(self) -> list[str]:
        with self._lock:
            return list(self._tokens)

    def reset_log(self) -> None:
        with self._lock:
            self._log.clear()

    # --- life cycle ------------------------------------------------------------------------------
    def stop(self) -> None:
        for server in (self._https, self._http):
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> OAuthStandin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- helpers for the handler -----------------------------------------------------------------
    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._log.append(record)
        log.debug("oauth stand-in %s %s -> %s (%s)", record.method, record.path, record.status, record.error)

    def _issue(self, username: str, client_id: str, scope: str, lifetime_s: int | None) -> dict[str, Any]:
        lifetime = lifetime_s if lifetime_s is not None else self.default_lifetime_s
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = _Token(username, client_id, scope, self.clock() + lifetime)
        # RFC 6749 §5.1
        return {"access_token": token, "token_type": "Bearer", "expires_in": lifetime}

    # RFC 6749 §4.4.2 and §2.3.1: client_secret_basic or client_secret_post, never both.
    def generic_token(
        self, form: dict[str, str], basic: tuple[str, str] | None, info: dict[str, Any]
    ) -> dict[str, Any]:
        info["grant_type"] = form.get("grant_type")
        if basic and ("client_secret" in form):
            raise _OAuthError(
                400, {"error": "invalid_request", "error_description": "more than one client auth"}
            )
        if basic:
            client_id, secret = basic
            info["client_auth"] = "basic"
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
            info["client_auth"] = "body" if secret else None
        info["client_id"] = client_id
        with self._lock:
            client = self._clients.get((None, client_id))
        if client is None or not secrets.compare_digest(client.secret, secret):
            # §5.2: 401 with WWW-Authenticate when the client used the Authorization header.
            status = 401 if basic else 400
            headers = {"WWW-Authenticate": 'Basic realm="oauth-standin"'} if basic else {}
            raise _OAuthError(
                status,
                {"error": "invalid_client", "error_description": "Client authentication failed."},
                headers,
            )
        if form.get("grant_type") != "client_credentials":
            raise _OAuthError(400, {"error": "unsupported_grant_type"})
        requested = set(form.get("scope", "").split())
        if client.scopes is not None and not requested <= client.scopes:
            raise _OAuthError(400, {"error": "invalid_scope"})
        info["username"] = client.mailbox
        body = self._issue(client.mailbox, client_id, " ".join(sorted(requested)), client.lifetime_s)
        if requested:
            body["scope"] = " ".join(sorted(requested))
        return body

    def entra_token(
        self, tenant: str, form: dict[str, str], basic: tuple[str, str] | None, info: dict[str, Any]
    ) -> dict[str, Any]:
        # https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow
        client_id = basic[0] if basic else form.get("client_id", "")
        secret = basic[1] if basic else form.get("client_secret", "")
        info.update(
            grant_type=form.get("grant_type"),
            client_id=client_id,
            client_auth="basic" if basic else "body",
            scope=form.get("scope"),
        )
        if tenant not in self.tenants:
            raise _entra_error(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
        if form.get("grant_type") != "client_credentials":
            raise _entra_error(
                400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type."
            )
        with self._lock:
            client = self._clients.get((tenant, client_id))
        if client is None:
            raise _entra_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory '{tenant}'.",
            )
        if not secrets.compare_digest(client.secret, secret):
            raise _entra_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client "
                f"secret value, not the client secret ID, for a secret added to app '{client_id}'.",
            )
        scope = form.get("scope", "")
        if set(scope.split()) - set(client.scopes or ()):
            raise _entra_error(
                400, "invalid_scope", 1002012, f"The provided value for scope {scope} is not valid."
            )
        info["username"] = client.mailbox
        body = self._issue(client.mailbox, client_id, scope, client.lifetime_s)
        body["ext_expires_in"] = body["expires_in"]
        return body

    def entra_discovery(self, tenant: str) -> dict[str, Any]:
        # https://login.microsoftonline.com/{tenant}/v2.0/.well-known/openid-configuration (abridged);
        # msal reads token_endpoint, authorization_endpoint, device_authorization_endpoint and issuer.
        if tenant not in self.tenants:
            raise _entra_error(400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found.")
        root = f"{self.base_url}/{tenant}"
        return {
            "token_endpoint": f"{root}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": f"{self.base_url}/{tenant}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{root}/v2.0",
            "request_uri_parameter_supported": False,
            "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{root}/oauth2/v2.0/devicecode",
            "end_session_endpoint": f"{root}/oauth2/v2.0/logout",
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
        }

    def google_token(self, form: dict[str, str], info: dict[str, Any]) -> dict[str, Any]:
        grant = form.get("grant_type")
        if grant == JWT_BEARER:
            return self._google_jwt_bearer(form.get("assertion", ""), info)
        if grant == "refresh_token":
            return self._google_refresh(form, info)
        raise _OAuthError(
            400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type: "}
        )

    def _google_jwt_bearer(self, assertion: str, info: dict[str, Any]) -> dict[str, Any]:
        # https://developers.google.com/identity/protocols/oauth2/service-account#authorizingrequests
        info["grant_type"] = JWT_BEARER
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError as exc:
            raise _OAuthError(400, {"error": "invalid_grant", "error_description": "Invalid JWT."}) from exc
        email = unverified.get("iss", "")
        info["client_id"] = email
        with self._lock:
            account = self._service_accounts.get(email)
        if account is None:
            raise _OAuthError(
                400, {"error": "invalid_grant", "error_description": "Invalid grant: account not found"}
            )
        if header.get("kid") not in (None, account.key_id):
            raise _OAuthError(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
        try:
            claims = jwt.decode(
                assertion,
                account.public_key_pem,
                algorithms=["RS256"],
                audience=GOOGLE_TOKEN_AUDIENCE,
                issuer=email,
                options={"require": ["iss", "aud", "exp", "iat", "scope"]},
                leeway=CLOCK_SKEW_S,
            )
        except jwt.InvalidSignatureError as exc:
            raise _OAuthError(
                400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
            ) from exc
        except jwt.PyJWTError as exc:
            raise _OAuthError(
                400,
                {
                    "error": "invalid_grant",
                    "error_description": "Invalid JWT: Token must be a short-lived token (60 minutes) "
                    "and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
                },
            ) from exc
        if claims["exp"] - claims["iat"] > GOOGLE_MAX_ASSERTION_S:
            raise _OAuthError(400, {"error": "invalid_grant", "error_description": "Invalid JWT: lifetime"})
        subject = claims.get("sub")
        info["username"] = subject
        info["scope"] = claims["scope"]
        requested = set(claims["scope"].split())
        if not subject or subject not in account.delegated or not requested <= account.scopes:
            raise _OAuthError(
                401,
                {
                    "error": "unauthorized_client",
                    "error_description": "Client is unauthorized to retrieve access tokens using this "
                    "method, or client not authorized for any of the scopes requested.",
                },
            )
        body = self._issue(subject, email, claims["scope"], account.lifetime_s)
        return body

    def _google_refresh(self, form: dict[str, str], info: dict[str, Any]) -> dict[str, Any]:
        # https://developers.google.com/identity/protocols/oauth2/web-server#offline
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        info.update(grant_type="refresh_token", client_id=client_id, client_auth="body")
        with self._lock:
            known_secret = self._google_clients.get(client_id)
            grant = self._refresh_grants.get(form.get("refresh_token", ""))
        if known_secret is None:
            raise _OAuthError(
                401, {"error": "invalid_client", "error_description": "The OAuth client was not found."}
            )
        if not secrets.compare_digest(known_secret, secret):
            raise _OAuthError(401, {"error": "invalid_client", "error_description": "Unauthorized"})
        if grant is None or grant.client_id != client_id:
            raise _OAuthError(
                400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
            )
        info["username"] = grant.user
        body = self._issue(grant.user, client_id, GMAIL_SCOPE, grant.lifetime_s)
        body["scope"] = GMAIL_SCOPE
        return body

    def introspect(self, form: dict[str, str], info: dict[str, Any]) -> dict[str, Any]:
        # RFC 7662 §2.2: inactive tokens answer only {"active": false}.
        token = form.get("token", "")
        with self._lock:
            record = self._tokens.get(token)
            refused = record is not None and (
                token in self._revoked_tokens or record.username in self._refused_users
            )
        info["username"] = record.username if record else None
        if record is None or refused or record.expires_at <= self.clock():
            info["error"] = "inactive"
            return {"active": False}
        return {
            "active": True,
            "username": record.username,
            "sub": record.username,
            "client_id": record.client_id,
            "scope": record.scope,
            "token_type": "Bearer",
            "exp": int(record.expires_at),
        }


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    # RFC 6749 §2.3.1: client_id and secret are form-urlencoded before Basic encoding.
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, _, secret = decoded.partition(":")
    return unquote(client_id.replace("+", " ")), unquote(secret.replace("+", " "))


def _handler_for(standin: OAuthStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            pass  # the stand-in keeps its own request log, without secrets

        def _form(self) -> dict[str, str]:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode() if length else ""
            return {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}

        def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            # RFC 6749 §5.1: token responses are not cached.
            self.send_header("Cache-Control", "no-store")
            self.send_header("Pragma", "no-cache")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def _route(self, method: str) -> None:
            path = urlsplit(self.path).path
            parts = [p for p in path.split("/") if p]
            endpoint, info = "unknown", {}
            basic = _basic_credentials(self.headers.get("Authorization"))
            headers: dict[str, str] = {}
            status = 200
            try:
                if (
                    method == "GET"
                    and len(parts) == 4
                    and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]
                ):
                    endpoint = ENTRA_DISCOVERY
                    body = standin.entra_discovery(parts[0])
                elif method != "POST":
                    raise _OAuthError(404, {"error": "not_found"})
                elif parts == ["oauth2", "token"]:
                    endpoint = GENERIC_TOKEN
                    body = standin.generic_token(self._form(), basic, info)
                elif len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"]:
                    endpoint = ENTRA_TOKEN
                    body = standin.entra_token(parts[0], self._form(), basic, info)
                elif parts == ["google", "token"]:
                    endpoint = GOOGLE_TOKEN
                    body = standin.google_token(self._form(), info)
                elif parts == ["introspect"]:
                    endpoint = INTROSPECT
                    body = standin.introspect(self._form(), info)
                else:
                    raise _OAuthError(404, {"error": "not_found"})
            except _OAuthError as exc:
                status, body, headers = exc.status, exc.body, exc.headers
                info["error"] = exc.body.get("error")
            standin._record(RequestRecord(endpoint=endpoint, method=method, path=path, status=status, **info))
            self._send(status, body, headers)

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self._route("GET")

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            self._route("POST")

    return Handler


def start_oauth_standin(certfile: str | Path, keyfile: str | Path) -> OAuthStandin:
    """Start both listeners on free loopback ports; stop with `.stop()` or a `with` block."""
    return OAuthStandin(certfile, keyfile)
