"""Registers jira-mail-sync with Airflow's api-server: the ticket lookup and the "Jira sync" page."""

from __future__ import annotations

import logging

from airflow.plugins_manager import AirflowPlugin
from jira_mail_sync.rest_api import app
from jira_mail_sync.settings import SettingError, read_settings
from jira_mail_sync.status_page import PAGE_NAME, router

log = logging.getLogger(__name__)

URL_PREFIX = "/jira-mail-sync"
# Where the page lives inside the UI: /plugin/<url_route>, an iframe over `href`.
PAGE_ROUTE = "jira-sync"

app.include_router(router)


def settings_are_valid() -> bool:
    """True when every [jira_mail_sync] option parses; otherwise one error log line names the bad one.

    Refusing to mount beats serving: routes reading a bad value would answer 500 on every request,
    while a missing app answers 404 and the api-server log and the DAG import errors say why.
    """
    try:
        read_settings()
    except SettingError as exc:
        log.error("jira-mail-sync: not serving the ticket lookup or the Jira sync page: %s", exc)
        return False
    return True


MOUNTED = settings_are_valid()


class JiraMailSyncPlugin(AirflowPlugin):
    """Serves the ticket lookup and the status page; the app checks Airflow tokens itself (see rest_api)."""

    name = "jira_mail_sync"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "jira-mail-sync"}] if MOUNTED else []
    # A top-level entry of the UI's navigation. The page is served by the app above, on the same
    # api-server, so the browser sends the UI's session cookie with it: no second login.
    external_views = (
        [
            {
                "name": PAGE_NAME,
                "href": f"{URL_PREFIX}/status/page",
                "destination": "nav",
                "url_route": PAGE_ROUTE,
                "nav_top_level": True,
            }
        ]
        if MOUNTED
        else []
    )
