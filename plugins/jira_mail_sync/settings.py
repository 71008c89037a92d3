"""Every `[jira_mail_sync]` option of the Airflow configuration: its default, what it allows, one parser.

Options are read from airflow.cfg or the environment (`AIRFLOW__JIRA_MAIL_SYNC__<OPTION>`).
`read_settings()` parses all of them at once and raises `SettingError`, naming the option, its
environment variable and the values it allows, at the first bad one. One failure policy follows:

- The DAG files call `read_settings()` at import, so a bad value is the DAG's import error, shown
  under the UI's "DAG Import Errors" and by `airflow dags list-import-errors`, before any run.
- The api-server reads them when it loads the plugin; with a bad value the plugin mounts neither
  the ticket lookup nor the Jira sync page and logs one error naming the option (its routes then
  answer 404), instead of answering 500 on every request.
- Tasks and routes call `read_settings()` again where they need a value, so the value they use is
  the one this parser accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from airflow.providers.common.compat.sdk import conf

from include.jira_rules import is_project_key, normalise_key
from include.mail_ledger import DEFAULT_RETENTION
from include.names import CONFIG_SECTION, EXTRA_FIELDS_OPTION, HISTORY_FIELDS_OPTION
from include.ticket_fields import MAX_EXTRA_FIELDS, parse_extra_fields
from include.ticket_history import DEFAULT_HISTORY_FIELDS, parse_history_fields

INBOX_MODES = ("idle", "poll")


class SettingError(ValueError):
    """A `[jira_mail_sync]` option holds a value it does not allow."""


def env_variable(option: str) -> str:
    """The environment variable that sets `option`, e.g. AIRFLOW__JIRA_MAIL_SYNC__INBOX_MODE."""
    return f"AIRFLOW__{CONFIG_SECTION.upper()}__{option.upper()}"


def _one_of(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError
        return value

    return parse


def _whole_number(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError from None  # int()'s own message adds nothing to "must be a whole number"
        if value < minimum:
            raise ValueError
        return value

    return parse


def _seconds(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError from None  # float()'s own message adds nothing to "must be a number"
    # `not >=` also refuses NaN, which compares false with everything.
    if not value >= 0 or value == float("inf"):
        raise ValueError
    return value


def _project_keys(raw: str) -> frozenset[str] | None:
    projects = frozenset(normalise_key(part) for part in raw.split(",") if part.strip())
    if not all(is_project_key(project) for project in projects):
        raise ValueError
    return projects or None


def _sites_file(raw: str) -> str | None:
    # Only the path: whether the file exists and what it holds is include.sites' to say, when the
    # DAG files load it, so that a bad file is their import error naming the entry and the field.
    value = raw.strip()
    if "\x00" in value:
        raise ValueError
    return value or None


def _extra_fields(raw: str) -> tuple[str, ...]:
    # parse_extra_fields says which field id is wrong and why; SettingError adds the option's name.
    return parse_extra_fields(raw)


@dataclass(frozen=True)
class Option:
    """One option: its name, its default as written in airflow.cfg, what it allows, what it does."""

    name: str
    default: str
    allowed: str
    meaning: str
    parse: Callable[[str], Any]


OPTIONS: tuple[Option, ...] = (
    Option(
        "inbox_mode",
        "idle",
        "one of idle, poll",
        "When jira_inbox runs: woken by IMAP IDLE in the triggerer plus a run every 10 minutes "
        "(idle), or every minute (poll, for deployments without a triggerer).",
        _one_of(*INBOX_MODES),
    ),
    Option(
        EXTRA_FIELDS_OPTION,
        "",
        f"Jira field ids, comma-separated, at most {MAX_EXTRA_FIELDS}",
        "Jira fields stored in jira_ticket.fields besides the fixed columns, e.g. customfield_10016. "
        "Checked against Jira's field list when a run starts.",
        _extra_fields,
    ),
    Option(
        "store_max_age_seconds",
        "300",
        "a whole number >= 0",
        "How old a stored ticket may be and still be answered by POST /jira-mail-sync/ticket "
        "without asking Jira (0: always ask Jira).",
        _whole_number(0),
    ),
    Option(
        "rest_max_concurrent_lookups",
        "4",
        "a whole number >= 1",
        "Ticket lookups one api-server process serves at once; one more is answered 503 with Retry-After.",
        _whole_number(1),
    ),
    Option(
        "rest_store_connect_timeout_seconds",
        "5",
        "a whole number >= 1",
        "How long a ticket lookup or the Jira sync page waits to open a PostgreSQL store that sets no "
        "connect_timeout of its own.",
        _whole_number(1),
    ),
    Option(
        "rest_not_found_cache_seconds",
        "60",
        "a whole number >= 0",
        "How long a ticket lookup remembers that Jira has no such issue (0: never).",
        _whole_number(0),
    ),
    Option(
        "rest_projects",
        "",
        "Jira project keys, comma-separated (empty: every project)",
        "The projects ticket lookups answer for; other keys get 403 without a store read or a Jira request.",
        _project_keys,
    ),
    Option(
        "census_projects",
        "",
        "Jira project keys, comma-separated (empty: the projects of the stored tickets)",
        "The projects the daily jira_census compares with the store, unless a run's projects param "
        "names others.",
        _project_keys,
    ),
    Option(
        "ledger_retention_days",
        str(DEFAULT_RETENTION.days),
        "a whole number >= 1",
        "How long the mail ledger keeps the rows of settled and rejected mail after their last change; "
        "failed and quarantined rows stay until the mail is settled or released.",
        _whole_number(1),
    ),
    Option(
        "status_mailbox_cache_seconds",
        "30",
        "a number of seconds >= 0",
        "How long the Jira sync page keeps the mailbox figures before it logs in to IMAP again.",
        _seconds,
    ),
    # Ticket history (#25).
    Option(
        HISTORY_FIELDS_OPTION,
        ",".join(DEFAULT_HISTORY_FIELDS),
        "Jira field ids, comma-separated, at most 10 (empty: no history)",
        "The fields whose every change is kept in jira_ticket_change (fetch_history, after store_tickets). "
        "Checked against Jira's field list when history is fetched; sprint finds the site's Sprint field.",
        parse_history_fields,
    ),
    # --- #23 many sites: the sites file (include/sites.py) ---
    Option(
        "sites_file",
        "",
        "a file path (empty: jira_sites.yaml in the DAGs folder)",
        "The Jira sites and mailboxes file (README: Many sites and mailboxes). With no such file, one "
        "site from the plain connections: jira_inbox and jira_sweep as before.",
        _sites_file,
    ),
)


@dataclass(frozen=True)
class Settings:
    """The parsed options; each field is named after its option."""

    inbox_mode: str
    extra_fields: tuple[str, ...]
    store_max_age_seconds: int
    rest_max_concurrent_lookups: int
    rest_store_connect_timeout_seconds: int
    rest_not_found_cache_seconds: int
    rest_projects: frozenset[str] | None
    census_projects: frozenset[str] | None
    ledger_retention_days: int
    status_mailbox_cache_seconds: float
    history_fields: tuple[str, ...]
    sites_file: str | None


def parse_option(option: Option, raw: object) -> Any:
    """`raw` parsed as `option`; SettingError names the option, its variable and what it allows."""
    text = option.default if raw is None else str(raw)
    try:
        return option.parse(text)
    except ValueError as exc:
        why = f" ({exc})" if str(exc) else ""
        raise SettingError(
            f"[{CONFIG_SECTION}] {option.name} ({env_variable(option.name)}) must be {option.allowed}, "
            f"got {text!r}{why}"
        ) from None


def read_settings(get: Callable[..., object] | None = None) -> Settings:
    """Every option parsed from the Airflow configuration (or from `get(section, option, fallback=)`)."""
    get = get or conf.get
    values = {
        option.name: parse_option(option, get(CONFIG_SECTION, option.name, fallback=None))
        for option in OPTIONS
    }
    return Settings(**values)
