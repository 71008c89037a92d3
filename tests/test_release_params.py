"""Releasing held mail by UID: the sensor's params, the DAG's param schema, the page's form and the ledger."""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import UTC, datetime

import pytest
from jira_mail_sync.sensors.unseen_mail import release_request

from include.imap_wire import MAX_UID
from include.mail_ledger import record_rejected, release

# RFC 3501: a UID is an nz-number, 1..2**32-1; one past it overflows SQLite's binding.
TOO_BIG = MAX_UID + 1
T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
BOX = {"mailbox": "INBOX", "uidvalidity": 1764662400}


def test_rendered_params_become_uids_and_a_flag():
    assert release_request("[812, 813]", "false") == ([812, 813], False)
    assert release_request("[]", "true") == ([], True)
    assert release_request([7], True) == ([7], True)  # as a DAG author may pass them unrendered
    assert release_request(f"[{MAX_UID}]", "false") == ([MAX_UID], False)


@pytest.mark.parametrize(
    ("uids", "everything", "message"),
    [
        ('["812"]', "false", "release_uids must be a list of positive integers"),
        ("[0]", "false", "release_uids must be a list of positive integers"),
        ("[true]", "false", "release_uids must be a list of positive integers"),
        ("812", "false", "release_uids must be a list of positive integers"),
        (f"[{TOO_BIG}]", "false", f"positive integers up to {MAX_UID}"),
        ("[1]", '"yes"', "release_all must be true or false"),
        ("[1", "false", "release_uids must be JSON"),
    ],
)
def test_bad_release_params_are_refused_with_a_clear_error(uids, everything, message):
    with pytest.raises(ValueError, match=message):
        release_request(uids, everything)


def test_the_trigger_form_refuses_a_uid_beyond_the_imap_range():
    from airflow.sdk.definitions.param import ParamValidationError

    from dags.jira_inbox import jira_inbox

    param = jira_inbox.params.get_param("release_uids")

    assert param.resolve([MAX_UID]) == [MAX_UID]
    with pytest.raises(ParamValidationError, match=str(MAX_UID)):
        param.resolve([TOO_BIG])


def test_the_status_page_release_refuses_a_uid_beyond_the_imap_range():
    from jira_mail_sync.status_page import ReleaseRequest
    from pydantic import ValidationError

    assert ReleaseRequest(uids=[MAX_UID]).uids == [MAX_UID]
    with pytest.raises(ValidationError, match="less than or equal to 4294967295"):
        ReleaseRequest(uids=[TOO_BIG])


@pytest.mark.parametrize("uid", [TOO_BIG, 2**63, 2**64])
def test_the_ledger_release_refuses_a_uid_beyond_the_imap_range_before_sqlite_sees_it(uid):
    with contextlib.closing(sqlite3.connect(":memory:")) as conn:
        record_rejected(conn, "sqlite", **BOX, entries=[{"uid": MAX_UID, "reason": "not Jira"}], now=T0)

        with pytest.raises(ValueError, match=f"an IMAP UID must be an integer from 1 to {MAX_UID}"):
            release(conn, "sqlite", **BOX, now=T0, uids=[uid])
        assert release(conn, "sqlite", **BOX, now=T0, uids=[MAX_UID]) == [MAX_UID]
