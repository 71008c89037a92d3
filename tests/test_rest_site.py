"""Which site a REST ticket lookup is for: the `site` query parameter against the configured sites."""

from __future__ import annotations

import pytest
from fastapi import HTTPException
from jira_mail_sync.rest_api import ERROR_RESPONSES, choose_site

from include.sites import Mailbox, Site, default_site


def _site(name: str) -> Site:
    return Site(
        name=name,
        jira_conn_id=f"jira_{name}",
        store_conn_id="jira_store",
        pool=f"jira_api_{name}",
        mailboxes=(Mailbox(imap_conn_id=f"imap_{name}"),),
    )


def test_without_a_sites_file_a_missing_site_is_the_plain_one_and_default_names_it():
    plain = default_site()
    assert choose_site((plain,), None) is plain
    assert choose_site((plain,), "") is plain
    assert choose_site((plain,), "default") is plain


def test_one_site_in_the_file_needs_no_name_but_several_do():
    acme, globex = _site("acme"), _site("globex")
    assert choose_site((acme,), None) is acme
    assert choose_site((acme, globex), "globex") is globex
    with pytest.raises(HTTPException) as missing:
        choose_site((acme, globex), None)
    assert missing.value.status_code == 400
    assert (
        missing.value.detail
        == "Several Jira sites are configured: name one with ?site= (one of: acme, globex)"
    )


def test_an_unknown_site_is_404_naming_the_sites_and_hostile_names_are_not_echoed():
    sites = (_site("acme"), _site("globex"))
    with pytest.raises(HTTPException) as unknown:
        choose_site(sites, "initech")
    assert (unknown.value.status_code, unknown.value.detail) == (
        404,
        "No Jira site is called 'initech': the sites are acme, globex",
    )
    with pytest.raises(HTTPException) as hostile:
        choose_site(sites, "x\r\nSet-Cookie: a=b")
    assert hostile.value.detail == "No Jira site is called that name: the sites are acme, globex"
    # The OpenAPI document declares both answers.
    assert 400 in ERROR_RESPONSES and "site" in ERROR_RESPONSES[404]["description"]
