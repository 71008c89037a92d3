"""Sender authentication: Authentication-Results from the receiving server, and DKIM verified here."""

from __future__ import annotations

import base64
from pathlib import Path

import dkim
import pytest

from devkit.dkim_signer import DkimSigner
from devkit.mail_factory import jira_notification
from include.jira_mail import parse_message
from include.sender_auth import (
    DEFAULT_TRUSTED_DKIM_DOMAINS,
    MODE_AUTHENTICATION_RESULTS,
    MODE_DKIM,
    MODE_NONE,
    SenderAuthPolicy,
)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "jira-emails"
SITE = "acme.atlassian.net"
SIGNER = "mail-us.atlassian.net"
SELECTOR = b"test2026"
SERVER = "mx.acme.test"


def parse(raw: bytes, policy: SenderAuthPolicy, trusted=(f"jira@{SITE}",), site=f"https://{SITE}"):
    return parse_message(raw, trusted_senders=list(trusted), jira_url=site, sender_auth=policy)


def with_headers(raw: bytes, *headers: str) -> bytes:
    """The mail with headers put on top, in the order given (the first is the topmost)."""
    return "".join(f"{header}\r\n" for header in headers).encode() + raw


RESULTS = SenderAuthPolicy(mode=MODE_AUTHENTICATION_RESULTS, authserv_id=SERVER)


# --- the connection extras ---------------------------------------------------------------------


def test_extras_choose_the_mode_and_default_to_none():
    assert SenderAuthPolicy.from_extras({}).mode == MODE_NONE
    policy = SenderAuthPolicy.from_extras({"authserv_id": " MX.Google.com "})
    assert (policy.mode, policy.authserv_id) == (MODE_AUTHENTICATION_RESULTS, "mx.google.com")
    assert policy.trusted_dkim_domains == DEFAULT_TRUSTED_DKIM_DOMAINS == ("mail-us.atlassian.net",)
    dkim_policy = SenderAuthPolicy.from_extras(
        {"sender_auth": "dkim", "trusted_dkim_domains": "mail-us.atlassian.net, Atlassian.NET."}
    )
    assert dkim_policy.mode == MODE_DKIM
    assert dkim_policy.trusted_dkim_domains == ("mail-us.atlassian.net", "atlassian.net")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"sender_auth": "spf"}, "sender_auth must be one of"),
        ({"sender_auth": "authentication_results"}, "needs the authserv_id"),
        ({"authserv_id": 5}, "must be a string"),
        ({"sender_auth": "dkim", "trusted_dkim_domains": ["evil com"]}, "no domain name"),
        ({"sender_auth": "dkim", "trusted_dkim_domains": {"a": 1}}, "must be a list"),
        ({"sender_auth": "dkim", "dkim_max_message_bytes": "lots"}, "whole number"),
    ],
)
def test_wrong_extras_are_refused_with_a_clear_message(extra, message):
    with pytest.raises(ValueError, match=message):
        SenderAuthPolicy.from_extras(extra)


# --- Authentication-Results ----------------------------------------------------------------------


def parse_fixture(name: str, site: str, authserv_id: str):
    """A real mail of `site` under the authserv-id given, its site's Jira sender trusted."""
    raw = (FIXTURES / name).read_bytes()
    policy = SenderAuthPolicy(mode=MODE_AUTHENTICATION_RESULTS, authserv_id=authserv_id)
    return parse(raw, policy, trusted=(f"jira@{site}",), site=f"https://{site}")


@pytest.mark.parametrize(
    ("name", "site", "authserv_id", "key"),
    [
        # Infomaniak writes dmarc=none in its topmost header and dkim=pass in the next.
        ("04_jira_cloud_fr_updated_status_multipart.eml", "infomaniak.atlassian.net", "mx.infomaniak.com",
         "FQA-123"),
        # Gmail names the signer by header.i only.
        ("06b_jira_cloud_2018_priority_change_RECONSTRUCTED.eml", "axioscode.atlassian.net", "mx.google.com",
         "SITE-372"),
    ],
)  # fmt: skip
def test_real_cloud_mail_passes_on_the_receiving_servers_dkim_verdict(name, site, authserv_id, key):
    result = parse_fixture(name, site, authserv_id)
    assert result.accepted, result.reason
    assert result.keys[0] == key


def test_results_of_another_authserv_id_do_not_count():
    result = parse_fixture(
        "04_jira_cloud_fr_updated_status_multipart.eml", "infomaniak.atlassian.net", "mx.google.com"
    )
    assert result.reason == "unauthenticated_sender: no Authentication-Results from mx.google.com"
    assert result.keys == ()


@pytest.mark.parametrize(
    ("headers", "accepted"),
    [
        ((f"Authentication-Results: {SERVER}; dkim=pass header.d={SIGNER}",), True),
        ((f"Authentication-Results: {SERVER.upper()}; dkim=pass header.i=@{SIGNER}",), True),
        ((f"Authentication-Results: {SERVER}; dmarc=pass header.from={SITE}",), True),
        ((f"Authentication-Results: {SERVER}; dkim=pass header.d=evil.example",), False),
        ((f"Authentication-Results: {SERVER}; dkim=fail header.d={SIGNER}",), False),
        ((f"Authentication-Results: {SERVER}; dmarc=pass header.from=evil.example",), False),
        ((f"Authentication-Results: {SERVER}; spf=pass smtp.mailfrom={SIGNER}",), False),
        ((f"Authentication-Results: {SERVER}; none",), False),
        ((f"Authentication-Results: mx.evil.example; dkim=pass header.d={SIGNER}",), False),
        ((f"ARC-Authentication-Results: i=1; {SERVER}; dkim=pass header.d={SIGNER}",), False),
        ((), False),
        # The sender's forged verdicts sit below the server's own: the server's topmost one decides.
        (
            (
                f"Authentication-Results: {SERVER}; dkim=fail header.d={SIGNER}; dmarc=none",
                f"Authentication-Results: {SERVER}; dkim=pass header.d={SIGNER}; dmarc=pass",
            ),
            False,
        ),
        # A header that claims the server's id but cannot be read fails closed.
        (
            (f"Authentication-Results: {SERVER}; dkim=", f"Authentication-Results: {SERVER}; dmarc=pass"),
            False,
        ),
    ],
)
def test_only_the_servers_topmost_dkim_or_dmarc_pass_authenticates(headers, accepted):
    result = parse(with_headers(jira_notification("ABC-1", site=SITE), *headers), RESULTS)
    assert result.accepted is accepted, result.reason
    if not accepted:
        assert result.reason.startswith("unauthenticated_sender: ")
        assert result.keys == ()


def test_untrusted_from_is_refused_before_its_authentication_is_looked_at():
    raw = with_headers(
        jira_notification("ABC-1", site=SITE, sender="jira@evil.example"),
        f"Authentication-Results: {SERVER}; dmarc=pass header.from=evil.example",
    )
    assert parse(raw, RESULTS).reason == "untrusted_sender: jira@evil.example"


# --- DKIM ---------------------------------------------------------------------------------------


# One key for the whole session: generating a 2048-bit key takes a noticeable fraction of a second.
SIGNING = DkimSigner.generate(SIGNER, SELECTOR)
key_lookup = SIGNING.dns_txt
signed = SIGNING.sign


DKIM_POLICY = SenderAuthPolicy(mode=MODE_DKIM, dns_txt=key_lookup)


def test_mail_signed_by_the_trusted_domain_verifies():
    result = parse(signed(jira_notification("ABC-1", site=SITE)), DKIM_POLICY)
    assert result.accepted, result.reason
    assert result.keys == ("ABC-1",)


@pytest.mark.parametrize(
    ("tamper", "why"),
    [
        (lambda raw: raw.replace(b"/browse/ABC-1", b"/browse/EVIL-1"), "invalid (body hash mismatch)"),
        (lambda raw: raw.replace(b"[JIRA] (ABC-1)", b"[JIRA] (EVIL-1)"), "does not verify"),
        (lambda raw: raw.replace(b"Dana Developer (Jira)", b"Your Admin (Jira)", 1), "does not verify"),
    ],
)
def test_changed_body_subject_or_from_breaks_the_signature(tamper, why):
    result = parse(tamper(signed(jira_notification("ABC-1", site=SITE))), DKIM_POLICY)
    assert not result.accepted
    assert result.reason.startswith("unauthenticated_sender: ") and why in result.reason, result.reason


def test_signature_of_another_domain_or_unknown_key_does_not_count():
    other = parse(signed(jira_notification("ABC-1", site=SITE), domain="evil.example"), DKIM_POLICY)
    assert not other.accepted and "evil.example" in other.reason, other.reason
    unsigned = parse(jira_notification("ABC-1", site=SITE), DKIM_POLICY)
    assert unsigned.reason == "unauthenticated_sender: no DKIM signature"


def test_signature_with_a_body_length_limit_is_not_trusted():
    raw = signed(jira_notification("ABC-1", site=SITE), length=True)
    appended = raw + f"https://{SITE}/browse/EVIL-1\r\n".encode()
    result = parse(appended, DKIM_POLICY)
    assert not result.accepted
    assert "l=" in result.reason, result.reason


def signature_without_from(raw: bytes) -> bytes:
    """A valid DKIM-Signature whose h= leaves From out (dkimpy's sign() refuses to make one).

    Built from dkimpy's own pieces, as its sign() does, minus the "From MUST be signed" check: the
    kind of signature a careless or hostile signer could publish.
    """
    import time

    from dkim.canonicalization import CanonicalizationPolicy
    from dkim.crypto import HASH_ALGORITHMS, parse_pem_private_key

    signer = dkim.DKIM(raw)
    policy = CanonicalizationPolicy.from_c_value(b"relaxed/simple")
    include = (b"subject", b"date")
    body_hash = base64.b64encode(
        HASH_ALGORITHMS[b"rsa-sha256"](policy.canonicalize_body(signer.body)).digest()
    )
    fields = [
        (b"v", b"1"), (b"a", b"rsa-sha256"), (b"c", policy.to_c_value()), (b"d", SIGNER.encode()),
        (b"s", SELECTOR), (b"t", str(int(time.time())).encode()), (b"h", b" : ".join(include)),
        (b"bh", body_hash), (b"b", b"0" * 60),
    ]  # fmt: skip
    signer.hasher = HASH_ALGORITHMS[b"rsa-sha256"]
    key = parse_pem_private_key(SIGNING.private_pem)
    return b"DKIM-Signature: " + signer.gen_header(fields, include, policy, b"DKIM-Signature", key)


def test_signature_that_leaves_from_unsigned_is_not_trusted():
    base = jira_notification("ABC-1", site=SITE).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    raw = signature_without_from(base) + base
    # The signature itself is valid: dkimpy alone would call this mail verified.
    assert dkim.verify(raw, dnsfunc=key_lookup)
    result = parse(raw, DKIM_POLICY)
    assert not result.accepted
    assert result.reason.endswith("does not sign From"), result.reason


def test_a_body_prefix_never_verifies():
    raw = signed(jira_notification("ABC-1", site=SITE, body_padding=300 * 1024))
    assert parse(raw, DKIM_POLICY).accepted
    prefix = raw[: len(raw) - 1000]
    assert parse(prefix, DKIM_POLICY).reason.endswith("invalid (body hash mismatch)")
