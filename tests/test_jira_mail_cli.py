"""Tests of `python -m include.jira_mail`, run as a real subprocess from the repository root."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "jira-emails"

# Read by eye from each fixture: its From address and the key in its subject.
FIXTURE_SENDERS_AND_KEYS = {
    "01_jira_server_atlassian_created_html.eml": ("jira@atlassian.com", "HCPUB-579"),
    "02_jira_server_atlassian_updated_html.eml": ("jira@atlassian.com", "HCPUB-579"),
    "03_jira_server_atlassian_commented_html.eml": ("jira@atlassian.com", "JRA-60612"),
    "04_jira_cloud_fr_updated_status_multipart.eml": ("jira@infomaniak.atlassian.net", "FQA-123"),
    "05_jira_apache_server_commented_html_fullheaders.eml": ("jira@apache.org", "ZOOKEEPER-2024"),
    "06b_jira_cloud_2018_priority_change_RECONSTRUCTED.eml": ("jira@axioscode.atlassian.net", "SITE-372"),
    "07_jira_service_desk_cloud_2017_commented_resolved_plain_html.eml": (
        "jira@securitysd.atlassian.net",
        "SEC-1732",
    ),
    "08_jira_dc_redhat_jsm_2025_commented_maillist.eml": ("jira-issues@redhat.com", "PSIRTSUPT-567"),
}
REQUIRED_FIELDS = {"file", "accepted", "keys", "event", "reason"}


def run_cli(*args: str, address_space_limit: int | None = None) -> subprocess.CompletedProcess[str]:
    def limit_memory() -> None:
        if address_space_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address_space_limit, address_space_limit))

    return subprocess.run(
        [sys.executable, "-m", "include.jira_mail", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit_memory,
        check=False,
    )


def json_lines(output: str) -> list[dict]:
    records = [json.loads(line) for line in output.splitlines()]
    for record in records:
        assert REQUIRED_FIELDS <= record.keys()
    return records


def test_all_fixtures_are_accepted_when_their_senders_are_trusted():
    names = sorted(FIXTURE_SENDERS_AND_KEYS)
    senders = sorted({sender for sender, _key in FIXTURE_SENDERS_AND_KEYS.values()})
    trust = [arg for sender in senders for arg in ("--trusted-sender", sender)]
    result = run_cli(*trust, *(str(FIXTURES / name) for name in names))
    assert result.returncode == 0, result.stderr
    records = json_lines(result.stdout)
    assert [record["file"] for record in records] == [str(FIXTURES / name) for name in names]
    for name, record in zip(names, records, strict=True):
        assert record["accepted"] is True, record
        assert record["reason"] is None
        assert record["keys"][0] == FIXTURE_SENDERS_AND_KEYS[name][1]


def test_jira_url_alone_trusts_jira_at_its_host_only():
    cloud = FIXTURES / "04_jira_cloud_fr_updated_status_multipart.eml"
    apache = FIXTURES / "05_jira_apache_server_commented_html_fullheaders.eml"
    result = run_cli("--jira-url", "https://infomaniak.atlassian.net", str(cloud), str(apache))
    assert result.returncode == 0, result.stderr
    accepted, rejected = json_lines(result.stdout)
    assert accepted["accepted"] is True
    assert accepted["keys"] == ["FQA-123"]
    assert accepted["event"] == "updated"
    assert rejected["accepted"] is False
    assert rejected["keys"] == []
    assert rejected["reason"] == "untrusted_sender: jira@apache.org"


def test_bare_domain_trusted_sender_is_accepted():
    result = run_cli(
        "--trusted-sender", "redhat.com", str(FIXTURES / "08_jira_dc_redhat_jsm_2025_commented_maillist.eml")
    )
    assert result.returncode == 0, result.stderr
    (record,) = json_lines(result.stdout)
    assert record["keys"] == ["PSIRTSUPT-567"]


def test_without_jira_url_or_trusted_sender_it_is_a_usage_error():
    result = run_cli(str(FIXTURES / "04_jira_cloud_fr_updated_status_multipart.eml"))
    assert result.returncode == 2
    assert result.stdout == ""
    assert "--trusted-sender" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_jira_url_is_a_usage_error():
    result = run_cli(
        "--jira-url", "not a url", str(FIXTURES / "04_jira_cloud_fr_updated_status_multipart.eml")
    )
    assert result.returncode == 2
    assert "jira_url" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_and_unreadable_files_are_reported_and_fail_the_run(tmp_path):
    good = FIXTURES / "03_jira_server_atlassian_commented_html.eml"
    missing = tmp_path / "missing.eml"
    result = run_cli("--trusted-sender", "jira@atlassian.com", str(missing), str(tmp_path), str(good))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    missing_record, directory_record, good_record = json_lines(result.stdout)
    for record in (missing_record, directory_record):
        assert record["accepted"] is False
        assert record["keys"] == []
        assert record["reason"].startswith("unreadable_file")
    assert missing_record["file"] == str(missing)
    assert good_record["accepted"] is True
    assert good_record["keys"] == ["JRA-60612"]


def test_huge_file_is_read_only_up_to_the_bound(tmp_path):
    # A 2 GiB sparse file under a 512 MiB address-space limit: reading it whole would fail.
    huge = tmp_path / "huge.eml"
    with huge.open("wb") as handle:
        handle.write(
            b'From: "Ann (Jira)" <jira@acme.atlassian.net>\r\nSubject: [JIRA] (HUGE-1) big\r\n\r\n'
            b"https://acme.atlassian.net/browse/HUGE-2\r\n"
        )
        handle.truncate(2 * 1024**3)
    result = run_cli("--jira-url", "https://acme.atlassian.net", str(huge), address_space_limit=512 * 1024**2)
    assert result.returncode == 0, result.stderr
    (record,) = json_lines(result.stdout)
    assert record["accepted"] is True
    assert record["keys"] == ["HUGE-1", "HUGE-2"]


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00" * 4096, b"\xff\xfe garbage \x80\x81", b"From: <jira@acme.atlassian.net>\n"],
    ids=["empty", "nuls", "binary", "from-only"],
)
def test_garbage_files_are_rejected_with_a_reason_not_a_traceback(tmp_path, content):
    path = tmp_path / "garbage.eml"
    path.write_bytes(content)
    result = run_cli("--trusted-sender", "acme.atlassian.net", str(path))
    assert result.returncode == 0, result.stderr
    (record,) = json_lines(result.stdout)
    assert record["accepted"] is False
    assert record["keys"] == []
    assert record["reason"]


def test_max_keys_option_caps_the_keys(tmp_path):
    path = tmp_path / "flood.eml"
    links = "".join(f"https://acme.atlassian.net/browse/FLOOD-{n}\r\n" for n in range(1, 501))
    path.write_bytes(
        b"From: <jira@acme.atlassian.net>\r\nSubject: [JIRA] (ABC-1) flood\r\n\r\n" + links.encode()
    )
    result = run_cli("--jira-url", "https://acme.atlassian.net", "--max-keys", "3", str(path))
    (record,) = json_lines(result.stdout)
    assert record["keys"] == ["ABC-1", "FLOOD-1", "FLOOD-2"]
    assert record["keys_truncated"] is True


def test_authserv_id_checks_the_receiving_servers_verdict():
    fixture = str(FIXTURES / "04_jira_cloud_fr_updated_status_multipart.eml")
    site = ["--jira-url", "https://infomaniak.atlassian.net"]
    passed = run_cli(*site, "--authserv-id", "mx.infomaniak.com", fixture)
    other = run_cli(*site, "--authserv-id", "mx.google.com", fixture)
    assert passed.returncode == other.returncode == 0, passed.stderr + other.stderr
    assert json.loads(passed.stdout)["accepted"] is True
    refused = json.loads(other.stdout)
    assert (refused["accepted"], refused["reason"]) == (
        False,
        "unauthenticated_sender: no Authentication-Results from mx.google.com",
    )


def test_authserv_one_header_reads_only_the_servers_topmost_header():
    # Infomaniak splits its verdicts: the topmost says dmarc=none, the dkim=pass is in the next one.
    fixture = str(FIXTURES / "04_jira_cloud_fr_updated_status_multipart.eml")
    site = ["--jira-url", "https://infomaniak.atlassian.net", "--authserv-id", "mx.infomaniak.com"]
    result = run_cli(*site, "--authserv-one-header", fixture)
    assert result.returncode == 0, result.stderr
    refused = json.loads(result.stdout)
    assert (refused["accepted"], refused["reason"]) == (
        False,
        "unauthenticated_sender: mx.infomaniak.com says dmarc=none header.from=infomaniak.atlassian.net",
    )


def test_a_wrong_sender_auth_option_is_a_usage_error():
    result = run_cli(
        "--jira-url", "https://acme.atlassian.net", "--sender-auth", "authentication_results", "x.eml"
    )
    assert result.returncode == 2
    assert "needs the authserv_id" in result.stderr
