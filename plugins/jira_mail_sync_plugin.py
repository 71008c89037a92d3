"""Registers jira-mail-sync's ticket lookup (POST /jira-mail-sync/ticket) with Airflow's api-server."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from jira_mail_sync.rest_api import app

URL_PREFIX = "/jira-mail-sync"


class JiraMailSyncPlugin(AirflowPlugin):
    """Serves the ticket lookup; the app checks Airflow access tokens itself (see rest_api)."""

    name = "jira_mail_sync"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "jira-mail-sync"}]
