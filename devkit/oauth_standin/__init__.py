"""A loopback OAuth 2.0 identity provider (generic, Entra ID, Google, introspection) for tests."""

from devkit.oauth_standin.server import (
    ENTRA_DISCOVERY,
    ENTRA_TOKEN,
    GENERIC_TOKEN,
    GMAIL_SCOPE,
    GOOGLE_TOKEN,
    INTROSPECT,
    OUTLOOK_SCOPE,
    OAuthStandin,
    RequestRecord,
    start_oauth_standin,
)

__all__ = [
    "ENTRA_DISCOVERY",
    "ENTRA_TOKEN",
    "GENERIC_TOKEN",
    "GMAIL_SCOPE",
    "GOOGLE_TOKEN",
    "INTROSPECT",
    "OUTLOOK_SCOPE",
    "OAuthStandin",
    "RequestRecord",
    "start_oauth_standin",
]
