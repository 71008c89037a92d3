"""The release params of jira_inbox as the sensor reads them: rendered with `| tojson`, checked strictly."""

from __future__ import annotations

import pytest
from jira_mail_sync.sensors.unseen_mail import release_request


def test_rendered_params_become_uids_and_a_flag():
    assert release_request("[812, 813]", "false") == ([812, 813], False)
    assert release_request("[]", "true") == ([], True)
    assert release_request([7], True) == ([7], True)  # as a DAG author may pass them unrendered


@pytest.mark.parametrize(
    ("uids", "everything", "message"),
    [
        ('["812"]', "false", "release_uids must be a list of positive integers"),
        ("[0]", "false", "release_uids must be a list of positive integers"),
        ("[true]", "false", "release_uids must be a list of positive integers"),
        ("812", "false", "release_uids must be a list of positive integers"),
        ("[1]", '"yes"', "release_all must be true or false"),
        ("[1", "false", "release_uids must be JSON"),
    ],
)
def test_bad_release_params_are_refused_with_a_clear_error(uids, everything, message):
    with pytest.raises(ValueError, match=message):
        release_request(uids, everything)
