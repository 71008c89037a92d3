"""Tests of the safe Jira mail parser against real Jira mail and against hostile or broken input."""

from __future__ import annotations

import base64
import json
import quopri
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.jira_mail import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_KEYS,
    KEY_PATTERN,
    ParsedMail,
    default_trusted_senders,
    is_trusted_sender,
    parse_message,
)
from include.jira_mail import parser as parser_module

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "jira-emails"
SITE = "https://acme.atlassian.net"
TRUSTED = ["jira@acme.atlassian.net"]
NON_KEYS = ("CVE-2024-3094", "UTF-8", "ISO-8859-1", "SHA-256")


@dataclass(frozen=True)
class Expected:
    """What a fixture says, read from the file by eye: its From address, site, subject key, the keys
    of the site's /browse/ or portal links in its body (subject key first) and Jira's event line."""

    sender: str
    site: str
    subject_key: str
    keys: tuple[str, ...]
    event: str


EXPECTED = {
    # Body also links JRA-60612 from the description ("...browse/JRA-60612").
    "01_jira_server_atlassian_created_html.eml": Expected(
        "jira@atlassian.com", "https://jira.atlassian.com", "HCPUB-579", ("HCPUB-579", "JRA-60612"), "created"
    ),
    "02_jira_server_atlassian_updated_html.eml": Expected(
        "jira@atlassian.com", "https://jira.atlassian.com", "HCPUB-579", ("HCPUB-579",), "updated"
    ),
    "03_jira_server_atlassian_commented_html.eml": Expected(
        "jira@atlassian.com", "https://jira.atlassian.com", "JRA-60612", ("JRA-60612",), "commented"
    ),
    # RFC 2047 base64 subject split over two encoded words; "made 1 update".
    "04_jira_cloud_fr_updated_status_multipart.eml": Expected(
        "jira@infomaniak.atlassian.net",
        "https://infomaniak.atlassian.net",
        "FQA-123",
        ("FQA-123",),
        "updated",
    ),
    # "[jira] [Commented] (...)" subject, folded; Jira lives under the /jira context path.
    "05_jira_apache_server_commented_html_fullheaders.eml": Expected(
        "jira@apache.org",
        "https://issues.apache.org/jira",
        "ZOOKEEPER-2024",
        ("ZOOKEEPER-2024",),
        "Commented",
    ),
    "06b_jira_cloud_2018_priority_change_RECONSTRUCTED.eml": Expected(
        "jira@axioscode.atlassian.net",
        "https://axioscode.atlassian.net",
        "SITE-372",
        ("SITE-372",),
        "updated",
    ),
    # Service Management: no [JIRA] prefix, portal links only.
    "07_jira_service_desk_cloud_2017_commented_resolved_plain_html.eml": Expected(
        "jira@securitysd.atlassian.net",
        "https://securitysd.atlassian.net",
        "SEC-1732",
        ("SEC-1732",),
        "commented",
    ),
    "08_jira_dc_redhat_jsm_2025_commented_maillist.eml": Expected(
        "jira-issues@redhat.com",
        "https://issues.redhat.com",
        "PSIRTSUPT-567",
        ("PSIRTSUPT-567",),
        "commented",
    ),
}


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def make_mail(
    *,
    subject: str | bytes = "[JIRA] (ABC-12) Summary",
    sender: str | bytes | None = '"Ann Example (Jira)" <jira@acme.atlassian.net>',
    body: str | bytes = "",
    content_type: str = "text/plain; charset=utf-8",
    extra_headers: tuple[str | bytes, ...] = (),
) -> bytes:
    """A mail built byte by byte, so that tests control exactly what the parser sees."""

    def as_bytes(value: str | bytes) -> bytes:
        return value if isinstance(value, bytes) else value.encode("utf-8")

    lines = [b"Date: Mon, 6 Aug 2018 16:46:12 +0000", b"Message-ID: <test.1@acme.atlassian.net>"]
    if sender is not None:
        lines.append(b"From: " + as_bytes(sender))
    lines.append(b"Subject: " + as_bytes(subject))
    lines.append(b"MIME-Version: 1.0")
    lines.append(b"Content-Type: " + content_type.encode())
    lines.extend(as_bytes(header) for header in extra_headers)
    return b"\r\n".join(lines) + b"\r\n\r\n" + as_bytes(body)


def parse(raw: bytes, **kwargs) -> ParsedMail:
    kwargs.setdefault("trusted_senders", TRUSTED)
    kwargs.setdefault("jira_url", SITE)
    return parse_message(raw, **kwargs)


def assert_rejected(result: ParsedMail, reason_prefix: str) -> None:
    assert not result.accepted
    assert result.keys == ()
    assert result.reason is not None and result.reason.startswith(reason_prefix), result.reason


# --- the real fixtures -------------------------------------------------------------------------


def test_every_fixture_file_has_an_expectation():
    assert sorted(path.name for path in FIXTURES.glob("*.eml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_gives_its_subject_key_first_when_its_own_sender_is_trusted(name):
    expected = EXPECTED[name]
    result = parse(fixture_bytes(name), trusted_senders=[expected.sender], jira_url=expected.site)
    assert result.accepted, result.reason
    assert result.reason is None
    assert result.keys == expected.keys
    assert result.keys[0] == expected.subject_key
    assert result.sender == expected.sender
    assert result.event == expected.event
    assert result.message_id is not None and result.message_id.startswith("<")
    assert expected.subject_key in (result.subject or "")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_from_another_site_is_rejected_without_keys(name):
    result = parse(fixture_bytes(name))
    assert_rejected(result, "untrusted_sender: ")
    assert result.reason == f"untrusted_sender: {EXPECTED[name].sender}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_headers_alone_give_the_subject_key(name):
    # The IMAP side may hand over BODY.PEEK[HEADER] with an empty or missing text part.
    raw = fixture_bytes(name)
    header_end = raw.find(b"\n\n") + 2 if raw.find(b"\n\n") >= 0 else raw.find(b"\r\n\r\n") + 4
    expected = EXPECTED[name]
    result = parse(raw[:header_end], trusted_senders=[expected.sender], jira_url=expected.site)
    assert result.accepted
    assert result.keys == (expected.subject_key,)


@pytest.mark.parametrize("fraction", [0.5, 0.7, 0.9, 0.97])
def test_truncated_multipart_fixture_still_gives_its_key(fraction):
    raw = fixture_bytes("04_jira_cloud_fr_updated_status_multipart.eml")
    result = parse(
        raw[: int(len(raw) * fraction)],
        trusted_senders=["jira@infomaniak.atlassian.net"],
        jira_url="https://infomaniak.atlassian.net",
    )
    assert result.accepted
    assert result.keys == ("FQA-123",)


def test_subject_key_counts_even_when_body_links_point_to_another_site():
    raw = fixture_bytes("01_jira_server_atlassian_created_html.eml")
    result = parse(raw, trusted_senders=["jira@atlassian.com"], jira_url="https://other.atlassian.net")
    assert result.accepted
    assert result.keys == ("HCPUB-579",)


def test_links_on_any_host_count_when_no_site_is_configured():
    raw = fixture_bytes("01_jira_server_atlassian_created_html.eml")
    result = parse(raw, trusted_senders=["jira@atlassian.com"], jira_url=None)
    assert result.keys == ("HCPUB-579", "JRA-60612")


def test_bare_domain_trusts_a_fixtures_sender():
    raw = fixture_bytes("05_jira_apache_server_commented_html_fullheaders.eml")
    assert parse(raw, trusted_senders=["apache.org"], jira_url=None).keys == ("ZOOKEEPER-2024",)


def test_fixture_subject_is_decoded_and_unfolded():
    cloud = parse(
        fixture_bytes("04_jira_cloud_fr_updated_status_multipart.eml"),
        trusted_senders=["jira@infomaniak.atlassian.net"],
    )
    # Two adjacent base64 encoded words split "univers"; the space between them is not text.
    assert cloud.subject == "[JIRA] (FQA-123) [Breadcrumb] effet hover univers Web & Domaines pas présent"
    apache = parse(
        fixture_bytes("05_jira_apache_server_commented_html_fullheaders.eml"),
        trusted_senders=["jira@apache.org"],
    )
    assert (
        apache.subject
        == "[jira] [Commented] (ZOOKEEPER-2024) Major throughput improvement with mixed workloads"
    )


# --- subject styles ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "key", "event"),
    [
        ("[JIRA] (ABC-12) Summary", "ABC-12", None),
        ("[Jira] (AB_2C-7) Summary with (XYZ-9) in it", "AB_2C-7", None),
        ("[jira] [Commented] (ZOOKEEPER-2024) Major throughput", "ZOOKEEPER-2024", "Commented"),
        ("[jira] [Resolved] (ABC-3) Done", "ABC-3", "Resolved"),
        ("SEC-1732 DWF/CVE - Acceptance of MITRE Terms", "SEC-1732", None),
        ("PSIRTSUPT-567", "PSIRTSUPT-567", None),
        ("[JIRA] Kiran Aware mentioned you on RAM-1543", "RAM-1543", "mentioned"),
        ("[JIRA] Kiran Aware mentioned you on RAM-1543 (Fix the build)", "RAM-1543", "mentioned"),
    ],
)
def test_each_jira_subject_style_gives_its_key(subject, key, event):
    result = parse(make_mail(subject=subject))
    assert result.accepted
    assert result.keys == (key,)
    assert result.event == event


def test_rfc2047_encoded_and_folded_subject_is_decoded():
    summary = "[JIRA] (ABC-42) Café résumé — naïve ünïcode summary that is long enough to fold"
    encoded = base64.b64encode(summary.encode()).decode()
    first, second = encoded[:40], encoded[40:]
    # Folded between two encoded words; each word must decode on its own, so split at 4-char units.
    subject = f"=?UTF-8?B?{first}?=\r\n =?UTF-8?B?{second}?="
    result = parse(make_mail(subject=subject))
    assert result.accepted
    assert result.keys == ("ABC-42",)
    assert result.subject == summary


def test_quoted_printable_encoded_subject_is_decoded():
    summary = "[jira] [Updated] (ABC-5) Prix: 10 € / unité"
    encoded = quopri.encodestring(summary.encode(), header=True).decode()
    result = parse(make_mail(subject=f"=?utf-8?Q?{encoded}?="))
    assert result.keys == ("ABC-5",)
    assert result.event == "Updated"
    assert result.subject == summary


def test_subject_is_bounded_in_length():
    result = parse(make_mail(subject="[JIRA] (ABC-1) " + "x" * 20_000))
    assert result.keys == ("ABC-1",)
    assert result.subject is not None and len(result.subject) < 1000


def test_subject_control_characters_are_removed():
    result = parse(make_mail(subject="[JIRA] (ABC-1) evil\x00\x1b[31m\u202ered"))
    assert result.keys == ("ABC-1",)
    assert result.subject is not None
    assert not any(ord(char) < 32 or char == "\u202e" for char in result.subject)


# --- senders -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("from_value", "reason"),
    [
        ('"jira@acme.atlassian.net" <evil@attacker.com>', "untrusted_sender: evil@attacker.com"),
        (
            "=?utf-8?q?jira=40acme=2Eatlassian=2Enet?= <evil@attacker.com>",
            "untrusted_sender: evil@attacker.com",
        ),
        ("evil@attacker.com (jira@acme.atlassian.net)", "untrusted_sender: evil@attacker.com"),
        ("jira@acme.atlassian.net <evil@attacker.com>", "invalid_from"),
        ("jira@acme.atlassian.net, evil@attacker.com", "multiple_from"),
        ("jira@acme.atlassian.net)<evil@attacker.com>", "invalid_from"),
        ('"evil@attacker.com"@acme.atlassian.net', "invalid_from"),
        ("undisclosed-recipients", "invalid_from"),
        ("", "invalid_from"),
    ],
)
def test_display_name_and_malformed_from_cannot_borrow_a_trusted_address(from_value, reason):
    result = parse(make_mail(sender=from_value))
    assert_rejected(result, reason)
    assert result.reason == reason


@pytest.mark.parametrize(
    "from_value",
    [
        '"jira@acme.atlassian.net"',  # a quoted string only: a display name with no address
        "jira@acme.atlassian.net (unclosed comment",
        "(jira@acme.atlassian.net",
        "Jira <jira@acme.atlassian.net",  # an unclosed angle address
        "jira@acme.atlassian.net;",
        "group: jira@acme.atlassian.net;",  # a group is not a mailbox
    ],
)
def test_from_without_exactly_one_strictly_parsed_mailbox_is_refused(from_value):
    assert_rejected(parse(make_mail(sender=from_value)), "invalid_from")


@pytest.mark.parametrize(
    "from_value",
    [
        '"Ann Example (Jira)" <jira@acme.atlassian.net>',
        "Ann Example <jira@acme.atlassian.net>",
        "Ann Q. Example <jira@acme.atlassian.net>",  # an obsolete but harmless period in the name
        "jira@acme.atlassian.net (Jira)",
        "<jira@acme.atlassian.net>",
    ],
)
def test_well_formed_from_of_one_mailbox_is_accepted(from_value):
    result = parse(make_mail(sender=from_value))
    assert result.accepted, result.reason
    assert result.sender == "jira@acme.atlassian.net"


def test_untrusted_sender_is_rejected_without_keys():
    result = parse(make_mail(sender="Mallory <mallory@example.com>"))
    assert_rejected(result, "untrusted_sender: ")
    assert result.sender == "mallory@example.com"
    assert result.subject == "[JIRA] (ABC-12) Summary"


def test_sender_address_is_lower_cased_and_matched_case_insensitively():
    result = parse(make_mail(sender='"Ann (Jira)" <JIRA@Acme.Atlassian.NET>'))
    assert result.accepted
    assert result.sender == "jira@acme.atlassian.net"


def test_missing_from_is_rejected():
    assert_rejected(parse(make_mail(sender=None)), "no_from")


def test_two_from_headers_are_rejected():
    raw = make_mail(extra_headers=("From: evil@attacker.com",))
    assert_rejected(parse(raw), "multiple_from")


@pytest.mark.parametrize(
    "sender",
    [
        "jira@acme.atlassian.net.evil.com",
        "jira@evilacme.atlassian.net",
        "jira@sub.acme.atlassian.net",
        "jira@acme-atlassian.net",
        "jira@acme.atlassian.net.",
        "jira@xacme.atlassian.net",
        "jira.acme.atlassian.net@evil.com",
    ],
)
def test_look_alike_domains_are_not_trusted_by_a_bare_domain(sender):
    assert not is_trusted_sender(sender, ["acme.atlassian.net"])
    assert not is_trusted_sender(sender, ["jira@acme.atlassian.net"])
    result = parse(make_mail(sender=f"<{sender}>"), trusted_senders=["acme.atlassian.net"])
    assert_rejected(result, "")
    # A trailing dot is not even a valid address here; everything else is a well-formed stranger.
    assert result.reason in {f"untrusted_sender: {sender}", "invalid_from"}


def test_trusted_entries_match_exactly():
    assert is_trusted_sender("jira@acme.atlassian.net", ["acme.atlassian.net"])
    assert is_trusted_sender("anyone@acme.atlassian.net", ["@acme.atlassian.net"])
    assert is_trusted_sender("Jira@ACME.atlassian.net", [" JIRA@acme.atlassian.net "])
    assert not is_trusted_sender("other@acme.atlassian.net", ["jira@acme.atlassian.net"])
    assert not is_trusted_sender("jira@acme.atlassian.net", [])
    assert not is_trusted_sender("jira@acme.atlassian.net", ["", "atlassian.net"])
    assert not is_trusted_sender('"jira@acme.atlassian.net" <evil@x.com>', ["acme.atlassian.net"])


def test_non_ascii_look_alikes_are_never_trusted():
    # KELVIN SIGN lower-cases to an ASCII "k".
    assert "\u212a".lower() == "k"
    assert not is_trusted_sender("jira@\u212aey.example", ["jira@key.example"])
    assert not is_trusted_sender("jira@key.example", ["jira@\u212aey.example"])
    assert not is_trusted_sender("jira@аcme.atlassian.net", ["acme.atlassian.net"])  # Cyrillic "а"


def test_default_trusted_sender_is_jira_at_the_site_host():
    assert default_trusted_senders("https://Acme.atlassian.net/") == ["jira@acme.atlassian.net"]
    assert default_trusted_senders("https://issues.apache.org/jira") == ["jira@issues.apache.org"]
    with pytest.raises(ValueError):
        default_trusted_senders("not a url")


def test_a_single_string_of_trusted_senders_is_refused():
    with pytest.raises(TypeError):
        parse_message(make_mail(), trusted_senders="jira@acme.atlassian.net")


# --- X-Atl-Mail-Meta -----------------------------------------------------------------------------

SEED_META = (
    'X-Atl-Mail-Meta: user_id="123456:12d80508-dcd0-42a2-a2cd-c07f230030e5",\r\n'
    ' event_type="Issue Created",\r\n'
    ' tenant="{tenant}"'
)


def test_mail_meta_event_type_becomes_the_event():
    raw = make_mail(subject="[JIRA] (ABC-7) Summary", extra_headers=(SEED_META.format(tenant=SITE),))
    result = parse(raw)
    assert result.accepted
    assert result.event == "Issue Created"


def test_mail_meta_event_type_wins_over_subject_tag():
    raw = make_mail(subject="[jira] [Commented] (ABC-7) S", extra_headers=(SEED_META.format(tenant=SITE),))
    assert parse(raw).event == "Issue Created"


def test_mail_meta_of_a_foreign_tenant_is_rejected():
    raw = make_mail(extra_headers=(SEED_META.format(tenant="https://example.atlassian.net"),))
    result = parse(raw)
    assert_rejected(result, "foreign_tenant: ")
    assert result.reason == "foreign_tenant: example.atlassian.net"


def test_mail_meta_tenant_is_compared_by_host_not_by_prefix():
    raw = make_mail(extra_headers=(SEED_META.format(tenant="https://acme.atlassian.net.evil.com"),))
    assert_rejected(parse(raw), "foreign_tenant: ")


def test_mail_meta_with_two_tenants_is_rejected_when_any_is_foreign():
    for first, second in (("https://evil.atlassian.net", SITE), (SITE, "https://evil.atlassian.net")):
        meta = f'X-Atl-Mail-Meta: event_type="Issue Created", tenant="{first}", tenant="{second}"'
        assert_rejected(parse(make_mail(extra_headers=(meta,))), "foreign_tenant: evil.atlassian.net")


def test_mail_meta_with_two_equal_tenants_of_the_site_is_accepted():
    meta = f'X-Atl-Mail-Meta: tenant="{SITE}", tenant="{SITE}"'
    assert parse(make_mail(extra_headers=(meta,))).accepted


# --- what is and is not a key --------------------------------------------------------------------


@pytest.mark.parametrize("text", ["ABC-1", "AB-12", "A_B-3", "ZOOKEEPER-2024", "A1-9"])
def test_key_pattern_accepts_jira_keys(text):
    assert KEY_PATTERN.fullmatch(text)


@pytest.mark.parametrize(
    "text", ["A-1", "ABC-0", "ABC-01", "abc-1", "1AB-2", "ABC-", "ABC1", "CVE-2024-3094", "ISO-8859-1"]
)
def test_key_pattern_rejects_non_keys(text):
    assert not KEY_PATTERN.fullmatch(text)
    assert not KEY_PATTERN.search(text)


@pytest.mark.parametrize("non_key", NON_KEYS)
def test_non_keys_leading_a_subject_are_not_keys(non_key):
    result = parse(make_mail(subject=f"{non_key} in the changelog"))
    assert_rejected(result, "no_key")


@pytest.mark.parametrize("non_key", NON_KEYS)
def test_non_keys_in_a_summary_or_body_are_not_keys(non_key):
    body = (
        f"Fix {non_key} handling ({non_key}), see {non_key}.\r\n"
        f"Checksum {non_key}: deadbeef. https://nvd.nist.gov/vuln/detail/{non_key}\r\n"
        f"https://acme.atlassian.net/wiki/{non_key} and https://acme.atlassian.net/browse/ABC-12\r\n"
    )
    result = parse(make_mail(subject=f"[JIRA] (ABC-12) {non_key} {non_key} broken", body=body))
    assert result.keys == ("ABC-12",)


def test_free_text_keys_are_not_taken():
    body = "Related to XYZ-9 and DEF-3, mentioned in GHI-77.\r\n"
    assert parse(make_mail(body=body)).keys == ("ABC-12",)
    assert_rejected(parse(make_mail(subject="[JIRA] Updates", body=body)), "no_key")


# --- body links ----------------------------------------------------------------------------------


def test_browse_and_portal_links_on_the_site_give_keys_and_other_hosts_are_ignored():
    body = (
        '<a href="https://acme.atlassian.net/browse/DEF-3?atlOrigin=x&amp;y=1">DEF-3</a>\n'
        '<a href="https://evil.example/browse/EVIL-1">EVIL-1</a>\n'
        '<a href="https://acme.atlassian.net.evil.example/browse/EVIL-2">x</a>\n'
        '<a href="https://acme.atlassian.net/servicedesk/customer/portal/4/HELP-77?token=t">x</a>\n'
        '<a href="https://acme.atlassian.net/browse/ABC-12#add-comment">again</a>\n'
        '<a href="/browse/REL-5">relative</a>\n'
    )
    result = parse(make_mail(body=body, content_type="text/html; charset=utf-8"))
    assert result.keys == ("ABC-12", "DEF-3", "HELP-77")


def test_links_in_quoted_plain_text_replies_give_no_keys():
    body = (
        "Ann commented on ABC-12: https://acme.atlassian.net/browse/DEF-3\n"
        "> https://acme.atlassian.net/browse/EVIL-1\n"
        "   >> https://acme.atlassian.net/browse/EVIL-2\n"
    )
    assert parse(make_mail(body=body)).keys == ("ABC-12", "DEF-3")


def test_links_in_html_comments_and_blockquotes_give_no_keys():
    body = (
        '<p><a href="https://acme.atlassian.net/browse/DEF-3">DEF-3</a></p>'
        '<!-- <a href="https://acme.atlassian.net/browse/EVIL-1">hidden</a> -->'
        '<BLOCKQUOTE type="cite"><a href="https://acme.atlassian.net/browse/EVIL-2">quoted</a>'
        '<blockquote><a href="https://acme.atlassian.net/browse/EVIL-3">nested</a></blockquote>'
        '<a href="https://acme.atlassian.net/browse/EVIL-4">still quoted</a></blockquote>'
        '<a href="https://acme.atlassian.net/browse/GHI-9">after the quote</a>'
        '<!-- unterminated <a href="https://acme.atlassian.net/browse/EVIL-5">x</a>'
    )
    result = parse(make_mail(body=body, content_type="text/html; charset=utf-8"))
    assert result.keys == ("ABC-12", "DEF-3", "GHI-9")


def test_html_only_mail_without_subject_key_is_accepted_from_its_links():
    html_body = '<html><body><a href="https://acme.atlassian.net/browse/QRS-8">View</a></body></html>'
    encoded = quopri.encodestring(html_body.encode()).decode()
    raw = make_mail(
        subject="[JIRA] Updates for your issues",
        body=encoded,
        content_type="text/html; charset=utf-8",
        extra_headers=("Content-Transfer-Encoding: quoted-printable",),
    )
    result = parse(raw)
    assert result.accepted
    assert result.keys == ("QRS-8",)


def test_base64_text_part_inside_multipart_is_decoded():
    text = "Ann updated an issue\r\nhttps://acme.atlassian.net/browse/TUV-4\r\n"
    body = (
        "--b1\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.b64encode(b"https://acme.atlassian.net/browse/IMG-1").decode()
        + "\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.b64encode(text.encode()).decode()
        + "\r\n--b1--\r\n"
    )
    result = parse(make_mail(subject="[JIRA] news", body=body, content_type='multipart/mixed; boundary="b1"'))
    assert result.keys == ("TUV-4",)
    assert result.event == "updated"


def test_link_beyond_the_body_limit_is_not_read():
    body = "x" * 2000 + "\r\nhttps://acme.atlassian.net/browse/FAR-1\r\n"
    near = parse(make_mail(subject="[JIRA] news", body=body), max_body_bytes=4096)
    far = parse(make_mail(subject="[JIRA] news", body=body), max_body_bytes=1024)
    assert near.keys == ("FAR-1",)
    assert_rejected(far, "no_key")


# --- bounded work --------------------------------------------------------------------------------


def test_25_mb_message_is_parsed_with_bounded_memory():
    head = make_mail(subject="[JIRA] (BIG-1) Huge", content_type="text/html; charset=utf-8")
    line = b'<p><a href="https://acme.atlassian.net/browse/BIG-2">BIG-2</a> filler &amp; more filler</p>\r\n'
    tail = b'<a href="https://acme.atlassian.net/browse/END-9">never read</a>\r\n'
    raw = head + line * (25 * 1024 * 1024 // len(line)) + tail
    assert len(raw) >= 25 * 1024 * 1024

    tracemalloc.start()
    try:
        started = time.perf_counter()
        result = parse(raw)
        elapsed = time.perf_counter() - started
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result.keys == ("BIG-1", "BIG-2")
    assert peak < len(raw) // 4, f"peak {peak} bytes for a {len(raw)}-byte message"
    assert elapsed < 5


def test_flood_of_key_links_is_capped():
    links = "".join(
        f'<a href="https://acme.atlassian.net/browse/FLOOD-{n}">x</a>\n' for n in range(1, 10_001)
    )
    raw = make_mail(subject="[JIRA] (ABC-12) flood", body=links, content_type="text/html")
    started = time.perf_counter()
    result = parse(raw)
    assert time.perf_counter() - started < 2
    assert result.accepted
    assert len(result.keys) == DEFAULT_MAX_KEYS
    assert result.keys[0] == "ABC-12"
    assert result.keys[1:] == tuple(f"FLOOD-{n}" for n in range(1, DEFAULT_MAX_KEYS))
    assert result.keys_truncated


def test_repeated_links_to_one_key_are_not_a_flood():
    links = '<a href="https://acme.atlassian.net/browse/ABC-12">x</a>\n' * 10_000
    result = parse(make_mail(body=links, content_type="text/html"), max_keys=1)
    assert result.keys == ("ABC-12",)
    assert not result.keys_truncated


def test_max_keys_is_honoured():
    # "K-n" is not a key (one-letter project), so it neither counts nor triggers the cap.
    links = "".join(
        f"https://acme.atlassian.net/browse/K-{n} https://acme.atlassian.net/browse/KK-{n}\n"
        for n in (1, 2, 3)
    )
    result = parse(make_mail(body=links), max_keys=3)
    assert result.keys == ("ABC-12", "KK-1", "KK-2")
    assert result.keys_truncated


def test_oversized_header_block_is_rejected():
    padding = tuple(f"X-Padding-{n}: {'p' * 1000}" for n in range(DEFAULT_MAX_HEADER_BYTES // 1000 + 2))
    result = parse(make_mail(extra_headers=padding))
    assert_rejected(result, "headers_too_large")


def test_header_block_just_under_the_limit_is_read():
    padding = tuple(f"X-Padding-{n}: {'p' * 1000}" for n in range(DEFAULT_MAX_HEADER_BYTES // 1000 - 3))
    assert parse(make_mail(extra_headers=padding)).keys == ("ABC-12",)


def test_a_key_past_the_body_limit_is_not_read():
    def body_with_a_link_after(padding_bytes: int) -> str:
        lines = ("x" * 75 + "\n") * (padding_bytes // 76)
        return lines + "https://acme.atlassian.net/browse/KK-1\n"

    assert "KK-1" in parse(make_mail(body=body_with_a_link_after(DEFAULT_MAX_BODY_BYTES - 2000))).keys
    assert "KK-1" not in parse(make_mail(body=body_with_a_link_after(DEFAULT_MAX_BODY_BYTES + 2000))).keys


# --- broken input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/mixed", "no boundary at all https://acme.atlassian.net/browse/ABC-12"),
        ('multipart/mixed; boundary="b"', "--b\r\nContent-Type: text/plain\r\n\r\nnever closed"),
        ('multipart/alternative; boundary="b"', "--c\r\nwrong boundary\r\n--c--"),
        ("text/plain; charset=utf-8", "\x00\x00\x00 NULs \x00"),
        ('text/plain; charset="=?x?"; format=\x00', "odd params"),
        ("multipart/", "half a type"),
        ("", "empty type"),
    ],
)
def test_broken_mime_still_gives_the_subject_key(content_type, body):
    result = parse(make_mail(content_type=content_type, body=body))
    assert result.accepted
    assert result.keys[0] == "ABC-12"


def test_absurdly_nested_multipart_is_read_without_error():
    depth = 3000
    nested = "".join(
        f'--b{n}\r\nContent-Type: multipart/mixed; boundary="b{n + 1}"\r\n\r\n' for n in range(depth)
    )
    raw = make_mail(
        subject="[JIRA] nested",
        content_type='multipart/mixed; boundary="b0"',
        body=nested + "https://acme.atlassian.net/browse/DEEP-1\r\n",
    )
    result = parse(raw)
    assert result.accepted
    assert result.keys == ("DEEP-1",)


def test_bad_base64_and_unknown_transfer_encoding_do_not_fail():
    raw = make_mail(body="!!!*** not base64 ***", extra_headers=("Content-Transfer-Encoding: base64",))
    assert parse(raw).keys == ("ABC-12",)
    raw = make_mail(
        body="https://acme.atlassian.net/browse/DEF-1", extra_headers=("Content-Transfer-Encoding: x-zip",)
    )
    assert parse(raw).keys == ("ABC-12", "DEF-1")


@pytest.mark.parametrize("charset", ["x-unknown-42", "base64", "rot13", "idna", "utf-8\x00", "a" * 300])
def test_unknown_or_hostile_charsets_fall_back_without_failing(charset):
    body = "voil\xe0 https://acme.atlassian.net/browse/DEF-1".encode("latin-1")
    result = parse(make_mail(body=body, content_type=f'text/plain; charset="{charset}"'))
    assert result.keys == ("ABC-12", "DEF-1")
    encoded_subject = f"=?{charset[:60]}?q?=5BJIRA=5D_=28XYZ-5=29_Caf=E9?="
    result = parse(make_mail(subject=encoded_subject))
    assert result.keys == ("XYZ-5",)


@pytest.mark.parametrize("charset", ["punycode", "idna", "unicode_escape"])
def test_codecs_that_are_no_mail_charset_are_not_used(charset):
    # Punycode decodes in quadratic time: 250 KB of it would take over ten seconds
    # (its cost is in the digits after the last "-"); unicode_escape would turn "\u0041" into "A".
    body = b"https://acme.atlassian.net/browse/DEF-1\\u0041\r\n-" + b"9" * 250_000
    started = time.perf_counter()
    result = parse(make_mail(body=body, content_type=f"text/plain; charset={charset}"))
    assert time.perf_counter() - started < 1
    assert result.keys == ("ABC-12", "DEF-1")


def test_eight_bit_header_bytes_are_read_as_utf8_or_replaced():
    utf8 = parse(
        make_mail(
            subject="[JIRA] (ABC-3) Café naïve".encode(), sender='"Zoë" <jira@acme.atlassian.net>'.encode()
        )
    )
    assert utf8.accepted
    assert utf8.subject == "[JIRA] (ABC-3) Café naïve"
    latin1 = parse(
        make_mail(
            subject="[JIRA] (ABC-4) Caf\xe9".encode("latin-1"), sender=b'"Zo\xeb" <jira@acme.atlassian.net>'
        )
    )
    assert latin1.accepted
    assert latin1.keys == ("ABC-4",)
    assert latin1.subject == "[JIRA] (ABC-4) Caf\ufffd"


def test_eight_bit_bytes_in_the_from_address_are_not_trusted():
    result = parse(make_mail(sender=b"<jira@acme.atlassian.n\xe9t>"), trusted_senders=["acme.atlassian.net"])
    assert_rejected(result, "invalid_from")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty_message"),
        (b"\r\n\r\nbody only", "no_headers"),
        (b"\x00" * 100, "no_headers"),
        (b"not a header line\nnor this", "no_headers"),
        (b"Subject: [JIRA] (ABC-1) x\n", "no_from"),
    ],
)
def test_unreadable_input_is_rejected_with_a_reason(raw, reason):
    assert_rejected(parse(raw), reason)


def test_mbox_from_line_and_bare_lf_line_endings_are_tolerated():
    raw = make_mail().replace(b"\r\n", b"\n")
    assert parse(b"From jira@acme.atlassian.net Mon Aug  6 16:46:12 2018\n" + raw).keys == ("ABC-12",)


def test_unexpected_internal_failure_becomes_a_rejection(monkeypatch):
    def explode(_block: bytes) -> dict[str, list[str]]:
        raise RuntimeError("boom")

    monkeypatch.setattr(parser_module, "parse_headers", explode)
    assert_rejected(parse(make_mail()), "parse_error")


def test_non_bytes_input_is_a_type_error():
    with pytest.raises(TypeError):
        parse_message("Subject: x", trusted_senders=TRUSTED)  # type: ignore[arg-type]


def test_bytearray_and_memoryview_are_accepted():
    raw = make_mail()
    assert parse(bytearray(raw)).keys == ("ABC-12",)
    assert parse(memoryview(raw)).keys == ("ABC-12",)


def test_result_is_json_serialisable():
    result = parse(make_mail())
    data = json.loads(json.dumps(result.to_json()))
    assert data["accepted"] is True
    assert data["keys"] == ["ABC-12"]
    assert data["reason"] is None
    assert data["sender"] == "jira@acme.atlassian.net"


# --- fuzzing -------------------------------------------------------------------------------------


def assert_invariants(result: ParsedMail, trusted: list[str]) -> None:
    assert isinstance(result, ParsedMail)
    json.dumps(result.to_json())
    if result.accepted:
        assert result.reason is None
        assert 1 <= len(result.keys) <= DEFAULT_MAX_KEYS
        assert all(KEY_PATTERN.fullmatch(key) for key in result.keys)
        assert result.sender is not None and is_trusted_sender(result.sender, trusted)
    else:
        assert result.keys == ()
        assert result.reason


FUZZ_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ_SETTINGS
@given(st.binary(max_size=8192))
def test_arbitrary_bytes_never_raise(raw):
    assert_invariants(parse(raw), TRUSTED)


header_names = st.sampled_from(
    [
        "From",
        "Subject",
        "Content-Type",
        "Content-Transfer-Encoding",
        "X-Atl-Mail-Meta",
        "Message-ID",
        "X-Junk",
    ]
)
header_values = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(
        [
            b'"x" <jira@acme.atlassian.net>',
            b"[JIRA] (ABC-1) s",
            b"=?utf-8?b?W0pJUkFdIChBQkMtMSk=?=",
            b"=?bogus?q?=FF=FE?=",
            b'multipart/mixed; boundary="b"',
            b"text/html; charset=koi8-r",
            b"base64",
            b"quoted-printable",
            b'event_type="x", tenant="https://acme.atlassian.net"',
        ]
    ),
)
body_fragments = st.lists(
    st.one_of(
        st.binary(max_size=200),
        st.sampled_from(
            [
                b"--b\r\n",
                b"--b--\r\n",
                b"Content-Type: text/html\r\n\r\n",
                b"Content-Transfer-Encoding: base64\r\n\r\n",
                b"https://acme.atlassian.net/browse/ABC-2",
                b'<a href="https://acme.atlassian.net/servicedesk/customer/portal/1/ABC-3">',
                b"=\r\n=3D",
                b"\x00\xff\xfe",
            ]
        ),
    ),
    max_size=30,
)


@FUZZ_SETTINGS
@given(st.lists(st.tuples(header_names, header_values), max_size=12), body_fragments)
def test_mail_shaped_garbage_never_raises(headers, fragments):
    raw = (
        b"".join(name.encode() + b": " + value + b"\r\n" for name, value in headers)
        + b"\r\n"
        + b"".join(fragments)
    )
    assert_invariants(parse(raw), TRUSTED)


@FUZZ_SETTINGS
@given(
    st.sampled_from(sorted(EXPECTED)),
    st.integers(min_value=0, max_value=40_000),
    st.integers(min_value=0, max_value=40_000),
    st.binary(max_size=64),
)
def test_mutated_fixtures_never_raise(name, cut, insert_at, inserted):
    raw = fixture_bytes(name)[:cut]
    raw = raw[:insert_at] + inserted + raw[insert_at:]
    trusted = [EXPECTED[name].sender]
    assert_invariants(parse(raw, trusted_senders=trusted, jira_url=EXPECTED[name].site), trusted)


@pytest.mark.parametrize(
    "text", ["ABCDEFGHIJ-1", "ABCDEFGHIJK-1", "AB-1234567890", "AB-12345678901", "A_-1", "AB-0", "ABC-1"]
)
def test_key_pattern_accepts_exactly_the_shared_issue_key_rule(text):
    from include.jira_rules import is_issue_key

    assert bool(KEY_PATTERN.fullmatch(text)) is is_issue_key(text)
