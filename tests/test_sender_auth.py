"""Sender authentication: Authentication-Results from the receiving server, and DKIM verified here."""

from __future__ import annotations

import base64
from pathlib import Path

import dkim
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devkit.dkim_signer import DkimSigner
from devkit.mail_factory import jira_notification
from include import sender_auth
from include.jira_mail import parse_message
from include.jira_mail.mime import header_fields
from include.sender_auth import (
    DEFAULT_TRUSTED_DKIM_DOMAINS,
    MODE_AUTHENTICATION_RESULTS,
    MODE_DKIM,
    MODE_NONE,
    SenderAuthPolicy,
    authentication_results_problem,
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
    assert dkim_policy.dkim_dns_seconds == 10.0
    assert (
        SenderAuthPolicy.from_extras({"sender_auth": "dkim", "dkim_dns_seconds": "2.5"}).dkim_dns_seconds
        == 2.5
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"sender_auth": "spf"}, "sender_auth must be one of"),
        ({"sender_auth": "authentication_results"}, "needs the authserv_id"),
        ({"authserv_id": 5}, "must be a string"),
        ({"sender_auth": "dkim", "trusted_dkim_domains": ["evil com"]}, "no domain name"),
        ({"sender_auth": "dkim", "trusted_dkim_domains": {"a": 1}}, "must be a list"),
        ({"sender_auth": "dkim", "dkim_max_message_bytes": "lots"}, "whole number"),
        ({"sender_auth": "dkim", "dkim_dns_seconds": "0"}, "dkim_dns_seconds must be a positive number"),
        ({"sender_auth": "dkim", "dkim_dns_seconds": "lots"}, "dkim_dns_seconds must be a positive number"),
        ({"sender_auth": "dkim", "dkim_dns_seconds": True}, "dkim_dns_seconds must be a positive number"),
        ({"sender_auth": "dkim", "dkim_dns_seconds": "inf"}, "dkim_dns_seconds must be a positive number"),
        ({"authserv_id": "mx.example", "authserv_one_header": "yes"}, "must be true or false"),
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


# --- Authentication-Results: which headers count (RFC 8601 §5) --------------------------------

AR = "Authentication-Results"
DKIM_PASS = f"dkim=pass header.d={SIGNER}"
DMARC_PASS = f"dmarc=pass header.from={SITE}"
BORDER_RECEIVED = (
    "Received: from mta.sparkpostmail.com by mx1.acme.test (Postfix) with ESMTPS id 4Rl; Tue, 12 Sep 2023"
)


def stack_fields(*lines: str) -> list[tuple[str, str]]:
    """The header fields of these header lines (topmost first), read by the parser's own reader."""
    return header_fields("".join(f"{line}\r\n" for line in lines).encode())


def problem_of(*lines: str) -> str | None:
    return authentication_results_problem(stack_fields(*lines), RESULTS, SITE)


# (why, header stack topmost first, accepted). Received, ARC-* and Received-SPF are what receiving
# hops write between their verdicts; any other header is a gap that ends the server's block.
STACKS = [
    ("the server's own dkim pass for the trusted signer", [f"{AR}: {SERVER}; {DKIM_PASS}"], True),
    ("the server's own dmarc pass for the From domain", [f"{AR}: {SERVER}; {DMARC_PASS}"], True),
    (
        "forged dkim pass right below the server's 'none': none means it authenticated nothing",
        [f"{AR}: {SERVER}; none", f"{AR}: {SERVER}; {DKIM_PASS}"],
        False,
    ),
    (
        "forged dkim pass below 'none' with a Received between: still after none",
        [f"{AR}: {SERVER}; none", BORDER_RECEIVED, f"{AR}: {SERVER}; {DKIM_PASS}"],
        False,
    ),
    (
        "forged dmarc pass below the server's spf=pass, after a gap header",
        [f"{AR}: {SERVER}; spf=pass smtp.mailfrom={SIGNER}", "X-Mailer: x", f"{AR}: {SERVER}; {DMARC_PASS}"],
        False,
    ),
    (
        "forged dkim pass below spf=pass, after the sender's own DKIM-Signature",
        [f"{AR}: {SERVER}; spf=pass", f"DKIM-Signature: v=1; d={SIGNER}", f"{AR}: {SERVER}; {DKIM_PASS}"],
        False,
    ),
    (
        "forged dkim pass among the message's own headers, below Subject",
        [f"{AR}: {SERVER}; spf=pass", "Subject: [JIRA] (ABC-1) S", f"{AR}: {SERVER}; {DKIM_PASS}"],
        False,
    ),
    (
        "another authserv-id between ends the block: the lower one with ours is the sender's",
        [f"{AR}: {SERVER}; spf=pass", f"{AR}: relay.example; {DKIM_PASS}", f"{AR}: {SERVER}; {DKIM_PASS}"],
        False,
    ),
    (
        "another authserv-id above the block: written later inside your own system, harmless",
        [f"{AR}: filter.internal; none", f"{AR}: {SERVER}; {DKIM_PASS}"],
        True,
    ),
    (
        "another authserv-id below the block does not change the server's verdict",
        [f"{AR}: {SERVER}; {DKIM_PASS}", f"{AR}: relay.example; dkim=fail"],
        True,
    ),
    (
        "Infomaniak's shape: dmarc, then the border's Received, then dkim, one block",
        [f"{AR}: {SERVER}; dmarc=none header.from={SITE}", BORDER_RECEIVED, f"{AR}: {SERVER}; {DKIM_PASS}"],
        True,
    ),
    (
        "Gmail's shape: ARC set, Received and Received-SPF above its verdict",
        [
            f"ARC-Authentication-Results: i=1; {SERVER}; {DKIM_PASS}",
            "ARC-Seal: i=1; cv=none; d=acme.test",
            BORDER_RECEIVED,
            "Received-SPF: pass (acme.test: domain designates 1.2.3.4)",
            f"{AR}: {SERVER}; {DKIM_PASS}",
        ],
        True,
    ),
    (
        "headers of your own system above the block (Delivered-To, X-Spam) do not matter",
        ["Delivered-To: jira@acme.test", "X-Spam-Status: No", f"{AR}: {SERVER}; {DKIM_PASS}"],
        True,
    ),
    (
        "within the block the topmost header decides: a pass below the server's fail is not read",
        [f"{AR}: {SERVER}; dkim=fail header.d={SIGNER}", f"{AR}: {SERVER}; {DKIM_PASS}"],
        False,
    ),
    ("dmarc=pass without header.from: about no named domain", [f"{AR}: {SERVER}; dmarc=pass"], False),
    ("dmarc=pass for another From domain", [f"{AR}: {SERVER}; dmarc=pass header.from=evil.example"], False),
    ("dkim pass of an untrusted signing domain", [f"{AR}: {SERVER}; dkim=pass header.d=evil.example"], False),
    ("dkim pass named by header.i only", [f"{AR}: {SERVER}; dkim=pass header.i=@{SIGNER}"], True),
    (
        "two signatures in one header: the trusted one passes",
        [f"{AR}: {SERVER}; dkim=fail header.d=evil.example; {DKIM_PASS}"],
        True,
    ),
    ("the authserv-id in capitals is the same id", [f"{AR}: {SERVER.upper()}; {DKIM_PASS}"], True),
    ("a comment before the authserv-id", [f"{AR}: (border filter) {SERVER}; {DKIM_PASS}"], True),
    ("an authserv-id with a version", [f"{AR}: {SERVER} 1; {DKIM_PASS}"], True),
    ("folded across lines with tabs", [f"{AR}:\r\n\t{SERVER}\r\n ;\tdkim=pass\r\n  header.d={SIGNER}"], True),
    (
        "'none' written in another case still ends the block",
        [f"{AR}: {SERVER}; NONE", f"{AR}: {SERVER.title()}; {DKIM_PASS}"],
        False,
    ),
    ("a look-alike authserv-id", [f"{AR}: {SERVER}.evil.example; {DKIM_PASS}"], False),
    ("the trusted id only inside a comment", [f"{AR}: ({SERVER}) evil.example; {DKIM_PASS}"], False),
    ("unreadable with the id: closed", [f"{AR}: {SERVER}; dkim=", f"{AR}: {SERVER}; {DKIM_PASS}"], False),
    ("no Authentication-Results at all", ["Subject: x"], False),
    ("ARC-Authentication-Results alone", [f"ARC-Authentication-Results: i=1; {SERVER}; {DKIM_PASS}"], False),
]  # fmt: skip


@pytest.mark.parametrize(("why", "stack", "accepted"), STACKS, ids=[why for why, _, _ in STACKS])
def test_only_the_servers_topmost_contiguous_block_of_authentication_results_decides(why, stack, accepted):
    problem = problem_of(*stack)
    assert (problem is None) is accepted, problem


def test_the_header_stack_table_covers_at_least_twenty_cases_each_way():
    assert len(STACKS) >= 20
    assert {accepted for _, _, accepted in STACKS} == {True, False}


@pytest.mark.parametrize(
    ("stack", "reason"),
    [
        ([f"{AR}: {SERVER}; none", f"{AR}: {SERVER}; {DKIM_PASS}"], f"{SERVER} says none"),
        ([f"{AR}: {SERVER}; dmarc=pass"], f"{SERVER} says dmarc=pass without header.from"),
        (
            [f"{AR}: {SERVER}; spf=pass", "X-Gap: 1", f"{AR}: {SERVER}; {DKIM_PASS}"],
            f"{SERVER} says neither dkim nor dmarc",
        ),
    ],
)
def test_the_reason_says_what_the_servers_own_block_reported(stack, reason):
    assert problem_of(*stack) == reason


def test_headers_below_the_block_are_logged_once_per_run_not_once_per_mail(monkeypatch, caplog):
    monkeypatch.setattr(sender_auth, "_REPORTED_IGNORED", set())
    forged = [f"{AR}: {SERVER}; spf=pass", "X-Gap: 1", f"{AR}: {SERVER}; {DKIM_PASS}"]
    with caplog.at_level("WARNING", logger="include.sender_auth"):
        for _ in range(3):
            assert problem_of(*forged) is not None
        assert problem_of(f"{AR}: {SERVER}; {DKIM_PASS}") is None
    ignored = [
        record for record in caplog.records if "below the receiving server's own block" in record.message
    ]
    assert len(ignored) == 1
    assert ignored[0].getMessage().startswith(f"Ignored 1 Authentication-Results claiming {SERVER}")


def test_the_real_infomaniak_mail_passes_on_its_block_and_its_lower_spf_header_is_ignored(
    monkeypatch, caplog
):
    # Fixture 04: dmarc=none, the border's Received, dkim=pass (one block); its spf=pass header sits
    # far below, under the message's own headers, where a sender could have written it.
    monkeypatch.setattr(sender_auth, "_REPORTED_IGNORED", set())
    with caplog.at_level("WARNING", logger="include.sender_auth"):
        result = parse_fixture(
            "04_jira_cloud_fr_updated_status_multipart.eml", "infomaniak.atlassian.net", "mx.infomaniak.com"
        )
    assert result.accepted, result.reason
    assert result.keys == ("FQA-123",)
    assert [r.getMessage()[:60] for r in caplog.records] == [
        "Ignored 1 Authentication-Results claiming mx.infomaniak.com "
    ]


def test_a_lower_header_cannot_join_a_server_that_writes_one_header():
    # Written right below the server's own header, nothing tells a forged header from a split
    # verdict; a server that writes one header (Gmail, Microsoft 365, rspamd) can say so.
    forged = [f"{AR}: {SERVER}; spf=pass", f"{AR}: {SERVER}; {DMARC_PASS}"]
    assert problem_of(*forged) is None
    one = SenderAuthPolicy(mode=MODE_AUTHENTICATION_RESULTS, authserv_id=SERVER, authserv_one_header=True)
    assert (
        authentication_results_problem(stack_fields(*forged), one, SITE)
        == f"{SERVER} says neither dkim nor dmarc"
    )
    assert authentication_results_problem(stack_fields(f"{AR}: {SERVER}; {DKIM_PASS}"), one, SITE) is None
    assert SenderAuthPolicy.from_extras({"authserv_id": SERVER, "authserv_one_header": "true"}) == one


# --- Authentication-Results, fuzzed ---------------------------------------------------------------

_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=60)
_OTHER_IDS = st.sampled_from(["relay.example", f"{SERVER}.evil.example", "mx.acme", "filter.internal"])
_TRUSTED_IDS = st.sampled_from([SERVER, SERVER.upper(), f"(border) {SERVER}", f"{SERVER} 1", f" {SERVER} "])
_READABLE_NO_PASS = st.sampled_from(
    [
        "none",
        f"spf=pass smtp.mailfrom={SIGNER}",
        f"dkim=fail header.d={SIGNER}",
        f"dkim=neutral header.d={SIGNER}",
        "dkim=pass header.d=evil.example",
        "dkim=pass",
        "dmarc=pass",
        f"dmarc=none header.from={SITE}",
        "dmarc=pass header.from=evil.example",
        f"dkim=temperror header.d={SIGNER}; spf=pass",
        f"arc=pass; dkim=policy header.d={SIGNER}",
    ]
)
_NO_PASS = st.one_of(_READABLE_NO_PASS, _TEXT.filter(lambda text: "pass" not in text.lower()))
_PASS = st.sampled_from([DKIM_PASS, DMARC_PASS, f"dkim=pass header.i=@{SIGNER}"])
_TRACE = st.sampled_from(sorted(sender_auth.TRACE_FIELDS - {"arc-authentication-results"}))
_GAP_NAMES = st.from_regex(r"X-[A-Za-z0-9-]{1,12}|Subject|From|DKIM-Signature|Message-ID", fullmatch=True)


def _line(name: str, value: str) -> str:
    return f"{name}: {value}"


def _trusted(verdict) -> st.SearchStrategy[str]:
    return st.builds(lambda sid, v: _line(AR, f"{sid}; {v}"), _TRUSTED_IDS, verdict)


_TRACE_LINE = st.builds(_line, _TRACE, _TEXT)
_OTHER_AR = st.builds(lambda sid, v: _line(AR, f"{sid}; {v}"), _OTHER_IDS, st.one_of(_NO_PASS, _PASS))
_GAP = st.one_of(st.builds(_line, _GAP_NAMES, _TEXT), _OTHER_AR)
# Above the server's block: anything your own system writes, never the server's id.
_PREFIX = st.lists(st.one_of(_TRACE_LINE, _GAP), max_size=4)
# Below a gap: anything at all, forged passes with the server's id included.
_TAIL = st.lists(st.one_of(_trusted(_PASS), _trusted(_NO_PASS), _TRACE_LINE, _GAP), max_size=8)
_BLOCK_REST = st.lists(st.one_of(_trusted(_NO_PASS), _TRACE_LINE), max_size=4)
# A header of the block that cannot be read fails the mail closed, so here they all can be.
_READABLE_BLOCK_REST = st.lists(st.one_of(_trusted(_READABLE_NO_PASS), _TRACE_LINE), max_size=4)

FUZZ = settings(max_examples=400, deadline=None, derandomize=True)
# The mail under the generated stacks: its own headers (From, Subject, ...) come after them.
FUZZ_MAIL = jira_notification("ABC-1", site=SITE)


@FUZZ
@given(
    st.lists(st.one_of(_TRACE_LINE, _GAP, _trusted(_PASS), _trusted(_NO_PASS), _trusted(_TEXT)), max_size=12)
)
def test_any_header_stack_gets_an_answer_and_never_raises(lines):
    problem = problem_of(*lines)
    assert problem is None or problem.startswith(("no Authentication-Results", "unreadable", SERVER))
    # A generated From or Subject may reject the mail for its own reason; never the other way.
    result = parse(with_headers(FUZZ_MAIL, *lines), RESULTS)
    assert problem is None or not result.accepted


@FUZZ
@given(_PREFIX, _trusted(_NO_PASS), _BLOCK_REST, _GAP, _TAIL)
def test_a_stack_whose_top_block_reports_no_pass_is_never_accepted(prefix, first, rest, gap, tail):
    stack = [*prefix, first, *rest, gap, *tail]
    assert problem_of(*stack) is not None
    result = parse(with_headers(FUZZ_MAIL, *stack), RESULTS)
    assert not result.accepted and result.keys == ()


@FUZZ
@given(_PREFIX, _trusted(_PASS), _READABLE_BLOCK_REST, _GAP, _TAIL)
def test_a_stack_whose_top_header_passes_is_accepted_whatever_lies_below_the_gap(
    prefix, first, rest, gap, tail
):
    assert problem_of(*prefix, first, *rest, gap, *tail) is None


# --- DKIM: replays, trust before DNS, one DNS time budget per mail ----------------------------------


@pytest.mark.parametrize("name", ["Subject", "From", "Date", "To", "Message-ID"])
def test_a_signed_mail_with_one_more_copy_of_a_signed_header_is_refused(name):
    raw = signed(jira_notification("ABC-1", site=SITE))
    assert parse(raw, DKIM_POLICY).accepted
    value = {"From": f"jira@{SITE}", "Subject": "[JIRA] (EVIL-1) Urgent"}.get(name, "x")
    replayed = f"{name}: {value}\r\n".encode() + raw
    result = parse(replayed, DKIM_POLICY)
    assert not result.accepted
    if name != "From":  # the parser refuses two From headers before any authentication
        assert result.reason == (
            f"unauthenticated_sender: 2 {name} headers, where a signed mail has one (a copy with one added)"
        )


class RecordingResolver:
    """dkimpy's dnsfunc over a simulated clock: each lookup takes `delay` seconds or its timeout."""

    def __init__(self, answer=None, delay: float = float("inf")) -> None:
        self.now = 0.0
        self.calls: list[tuple[bytes, float]] = []
        self.answer = answer
        self.delay = delay

    def clock(self) -> float:
        return self.now

    def __call__(self, name: bytes, timeout: float = 5) -> bytes | None:
        self.calls.append((name, timeout))
        if self.delay > timeout:
            self.now += timeout
            raise dkim.DnsTimeoutError(f"no answer within {timeout} s")
        self.now += self.delay
        return self.answer(name, timeout=timeout) if self.answer else None


def signed_by(raw: bytes, domains) -> bytes:
    for domain in domains:
        raw = signed(raw, domain=domain)
    return raw


def test_signatures_of_untrusted_domains_cost_no_dns_lookup():
    resolver = RecordingResolver()  # never answers
    policy = SenderAuthPolicy(mode=MODE_DKIM, dns_txt=resolver, clock=resolver.clock)
    raw = signed_by(jira_notification("ABC-1", site=SITE), [f"slow{n}.attacker.example" for n in range(8)])
    result = parse(raw, policy)
    assert resolver.calls == []
    assert result.reason == (
        "unauthenticated_sender: no DKIM signature of a trusted domain "
        "(signed by slow0.attacker.example, slow1.attacker.example, slow2.attacker.example)"
    )


def test_the_trusted_signature_among_untrusted_ones_is_the_only_one_looked_up():
    resolver = RecordingResolver(answer=key_lookup, delay=0.01)
    policy = SenderAuthPolicy(mode=MODE_DKIM, dns_txt=resolver, clock=resolver.clock)
    raw = signed_by(
        jira_notification("ABC-1", site=SITE), [SIGNER] + [f"slow{n}.attacker.example" for n in range(8)]
    )
    result = parse(raw, policy)
    assert result.accepted, result.reason
    assert [name for name, _ in resolver.calls] == [SIGNING.record_name]


@pytest.mark.parametrize(("budget", "timeouts"), [(10.0, [5, 5]), (7.0, [5, 2]), (3.0, [3])])
def test_a_slow_trusted_domain_gets_one_dns_time_budget_for_the_whole_mail(budget, timeouts):
    resolver = RecordingResolver()  # each lookup runs into its timeout
    policy = SenderAuthPolicy(mode=MODE_DKIM, dns_txt=resolver, clock=resolver.clock, dkim_dns_seconds=budget)
    raw = signed_by(jira_notification("ABC-1", site=SITE), [SIGNER] * 8)
    result = parse(raw, policy)
    assert [timeout for _, timeout in resolver.calls] == timeouts
    assert resolver.now <= budget
    assert result.reason.endswith(f"DNS lookups took the whole {budget:g} s allowed for one mail"), (
        result.reason
    )
