"""Where the sites file is, and the sites it configures (include/sites.py does the checking).

The path is `[jira_mail_sync] sites_file`, or `jira_sites.yaml` in `[core] dags_folder` when that is
empty. The DAG files call `read_sites()` at import, so a bad file is their import error.
"""

from __future__ import annotations

from pathlib import Path

from airflow.providers.common.compat.sdk import conf

from include.names import CONFIG_SECTION
from include.sites import SITES_FILE_NAME, Site, SitesFileError, configured_sites
from jira_mail_sync.settings import Settings, read_settings


def sites_file_path(settings: Settings | None = None) -> Path:
    settings = settings or read_settings()
    if settings.sites_file:
        return Path(settings.sites_file).expanduser()
    return Path(conf.get("core", "dags_folder")).expanduser() / SITES_FILE_NAME


def sites_file_in_use(settings: Settings | None = None) -> Path | None:
    """The sites file when there is one; None means the plain single site.

    A `sites_file` that is set but missing is an error, not the plain site: a mistyped path would
    otherwise quietly replace every site's DAGs with jira_inbox and jira_sweep.
    """
    settings = settings or read_settings()
    path = sites_file_path(settings)
    if path.exists():
        return path
    if settings.sites_file:
        raise SitesFileError(f"[{CONFIG_SECTION}] sites_file names {str(path)!r}, which does not exist")
    return None


def read_sites(settings: Settings | None = None) -> tuple[Site, ...]:
    """Every configured site: the file's entries, or the plain site when there is no file."""
    return configured_sites(sites_file_in_use(settings))
