"""Registers jira-mail-sync with Airflow's api-server: the ticket lookup and the "Jira sync" page."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from jira_mail_sync.rest_api import app
from jira_mail_sync.status_page import PAGE_NAME, router

URL_PREFIX = "/jira-mail-sync"
# Where the page lives inside the UI: /plugin/<url_route>, an iframe over `href`.
PAGE_ROUTE = "jira-sync"

app.include_router(router)


class JiraMailSyncPlugin(AirflowPlugin):
    """Serves the ticket lookup and the status page; the app checks Airflow tokens itself (see rest_api)."""

    name = "jira_mail_sync"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "jira-mail-sync"}]
    # A top-level entry of the UI's navigation. The page is served by the app above, on the same
    # api-server, so the browser sends the UI's session cookie with it: no second login.
    external_views = [
        {
            "name": PAGE_NAME,
            "href": f"{URL_PREFIX}/status/page",
            "destination": "nav",
            "url_route": PAGE_ROUTE,
            "nav_top_level": True,
        }
    ]
