"""SASL initial responses for logging in to IMAP with a token by hand (imaplib), as tests do.

The product logs in through IMAPClient's oauth2_login / oauthbearer_login, which build these
strings themselves; tests use these to drive a server directly and to pin the wire format.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def xoauth2_string(user: str, token: str) -> str:
    """SASL XOAUTH2 initial response (Google's and Microsoft's format; IMAPClient.oauth2_login sends it)."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01"


def oauthbearer_string(user: str, token: str, host: str | None = None, port: int | None = None) -> str:
    """RFC 7628 §3.1 OAUTHBEARER initial response; IMAPClient.oauthbearer_login sends it without host/port."""
    authzid = user.replace("=", "=3D").replace(",", "=2C")  # RFC 5801 saslname
    pairs = ([f"host={host}"] if host else []) + ([f"port={port}"] if port else [])
    return f"n,a={authzid},\x01" + "".join(f"{p}\x01" for p in pairs) + f"auth=Bearer {token}\x01\x01"


def sasl_responder(mechanism: str, user: str, token: str, **hostport: Any) -> Callable[[bytes], bytes]:
    """An imaplib `authenticate()` callback: the initial response, then an empty reply to an error challenge.

    XOAUTH2 and OAUTHBEARER servers answer a refused token with a JSON challenge that the client must
    acknowledge with an empty response (RFC 7628 §3.2.3) before the tagged NO.
    """
    first = (
        xoauth2_string(user, token) if mechanism == "XOAUTH2" else oauthbearer_string(user, token, **hostport)
    )
    sent = False

    def respond(_challenge: bytes) -> bytes:
        nonlocal sent
        if sent:
            return b""
        sent = True
        return first.encode()

    return respond
