"""The Jira sites and mailboxes a deployment syncs: `dags/jira_sites.yaml`, checked, as dataclasses.

With no file there is one site, `default_site()`, made of the plain connections (`jira_default`,
`imap_default`, `jira_store`, the `jira_api` pool): exactly what the package did before sites existed.
With a file, its entries are every site: each gets a sweep DAG and one inbox DAG per mailbox.

The file is checked against the shipped JSON Schema (`include/jira_sites.schema.json`) and then
against the rules a schema cannot say (unique names, unique mailboxes, a valid cron). Any fault is one
`SitesFileError` naming the entry and the field, so a bad file is one import error and never a
half-built set of DAGs. Pure Python: no Airflow import, so it is unit-tested and used by
`check_connections --sites` alike.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from include.jira_rules import PROJECT_KEY_PATTERN
from include.names import DEFAULT_SITE, IMAP_CONN_ID, JIRA_API_POOL, JIRA_CONN_ID, STORE_CONN_ID

SCHEMA_PATH = Path(__file__).with_name("jira_sites.schema.json")
SITES_FILE_NAME = "jira_sites.yaml"

# The sweep's defaults, for the plain site and for entries that do not set them.
DEFAULT_SWEEP_SCHEDULE = "*/15 * * * *"
DEFAULT_LOOKBACK_MINUTES = 5
DEFAULT_MAILBOX = "INBOX"
# The size README tells users to give the `jira_api` pool; a site's own pool gets the same by default.
DEFAULT_POOL_SLOTS = 4

# Generated DAG ids join their parts with a double underscore, which names and slugs never contain,
# so a DAG id always splits back into its site and mailbox.
DAG_ID_SEPARATOR = "__"
INBOX_DAG_PREFIX = "jira_inbox"
SWEEP_DAG_PREFIX = "jira_sweep"


class SitesFileError(ValueError):
    """The sites file is unreadable or breaks a rule; the message names the entry and the field."""


@dataclass(frozen=True)
class Mailbox:
    """One IMAP folder that receives a site's Jira notification mail."""

    imap_conn_id: str
    mailbox: str = DEFAULT_MAILBOX
    slug: str = "inbox"
    trusted_senders: tuple[str, ...] = ()
    # None: the IMAP connection's `rejected_mailbox` extra decides (default Jira/Rejected).
    rejected_mailbox: str | None = None
    # None: the `[jira_mail_sync] inbox_mode` setting decides.
    inbox_mode: str | None = None


@dataclass(frozen=True)
class Site:
    """One Jira site: its connections, its pool, its sweep and its mailboxes."""

    name: str
    jira_conn_id: str
    store_conn_id: str
    pool: str
    mailboxes: tuple[Mailbox, ...]
    pool_slots: int = DEFAULT_POOL_SLOTS
    schedule: str = DEFAULT_SWEEP_SCHEDULE
    lookback_minutes: int = DEFAULT_LOOKBACK_MINUTES
    projects: tuple[str, ...] = ()
    # The plain site keeps today's DAG ids (jira_inbox, jira_sweep); file entries get suffixed ones.
    plain: bool = field(default=False, compare=False)

    def dag_id(self, prefix: str) -> str:
        """The id of this site's DAG of one kind: `prefix` for the plain site, `<prefix>__<name>` else."""
        return prefix if self.plain else DAG_ID_SEPARATOR.join((prefix, self.name))

    def sweep_dag_id(self) -> str:
        return self.dag_id(SWEEP_DAG_PREFIX)

    def inbox_dag_id(self, mailbox: Mailbox) -> str:
        if self.plain:
            return INBOX_DAG_PREFIX
        return DAG_ID_SEPARATOR.join((INBOX_DAG_PREFIX, self.name, mailbox.slug))

    def doc_naming_it(self, doc: str, where: str) -> str:
        """A DAG's `doc` with a line after its title naming this site and `where` it reads and writes.

        The plain site's doc is left as it is (its DAGs keep today's docs). Shared by every builder.
        """
        if self.plain:
            return doc
        title, rest = doc.strip("\n").split("\n", 1)
        return f"\n{title}\n\n**Site `{self.name}`**{where}\n{rest}\n"

    def connections_text(self) -> str:
        return f"Jira `{self.jira_conn_id}`, store `{self.store_conn_id}`, pool `{self.pool}`"


def default_site() -> Site:
    """The one site of a deployment without a sites file: the plain connections and the `jira_api` pool."""
    return Site(
        name=DEFAULT_SITE,
        jira_conn_id=JIRA_CONN_ID,
        store_conn_id=STORE_CONN_ID,
        pool=JIRA_API_POOL,
        mailboxes=(Mailbox(imap_conn_id=IMAP_CONN_ID),),
        plain=True,
    )


def default_pool(name: str) -> str:
    return f"{JIRA_API_POOL}_{name}"


def mailbox_slug(folder: str) -> str:
    """A folder name as a DAG id part: lower case, every run of other characters one dash (INBOX → inbox)."""
    return re.sub(r"[^a-z0-9]+", "-", folder.lower()).strip("-")[:40].strip("-")


@cache
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def _where(data: Any, path: Iterable[Any]) -> str:
    """`sites[1] (acme), field mailboxes[0].imap_conn_id` for a JSON path into the file."""
    parts = list(path)
    if not parts:
        return "the file"
    if parts[0] != "sites" or len(parts) < 2:
        return f"field {'.'.join(map(str, parts))}"
    index = parts[1]
    entry = f"sites[{index}]"
    try:
        name = data["sites"][index].get("name")
    except (AttributeError, IndexError, KeyError, TypeError):
        name = None
    if isinstance(name, str):
        entry += f" ({name})"
    rest = ""
    for part in parts[2:]:
        rest += f"[{part}]" if isinstance(part, int) else (f".{part}" if rest else part)
    return f"{entry}, field {rest}" if rest else entry


def _schema_error(data: Any) -> str | None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if not errors:
        return None
    # The deepest error names the field; best_match picks the one most likely meant.
    error = jsonschema.exceptions.best_match(errors)
    path = list(error.absolute_path)
    if error.validator == "required":
        missing = re.match(r"'([^']+)'", error.message)
        if missing:
            path.append(missing.group(1))
            return f"{_where(data, path)}: is required"
    if error.validator == "additionalProperties":
        return f"{_where(data, path)}: {error.message}"
    return f"{_where(data, path)}: {error.message}"


def _valid_cron(expression: str) -> bool:
    from croniter import croniter

    return croniter.is_valid(expression)


def parse_sites(data: Any, *, source: str = SITES_FILE_NAME) -> tuple[Site, ...]:
    """The sites of a parsed file (a mapping with `sites`), checked; SitesFileError names what is wrong."""

    def fail(why: str) -> SitesFileError:
        return SitesFileError(f"{source}: {why}")

    problem = _schema_error(data)
    if problem:
        raise fail(problem)
    sites: list[Site] = []
    seen_names: dict[str, int] = {}
    seen_mailboxes: dict[tuple[str, str], str] = {}
    seen_pools: dict[str, str] = {}
    for index, entry in enumerate(data["sites"]):
        name = entry["name"]

        def at(path: str, index=index, name=name) -> str:
            return f"sites[{index}] ({name}), field {path}"

        if name in seen_names:
            raise fail(f"{at('name')}: {name!r} is already the name of sites[{seen_names[name]}]")
        seen_names[name] = index
        schedule = entry.get("schedule", DEFAULT_SWEEP_SCHEDULE)
        if not _valid_cron(schedule):
            raise fail(f"{at('schedule')}: {schedule!r} is not a cron expression (e.g. */15 * * * *)")
        pool = entry.get("pool") or default_pool(name)
        if pool in seen_pools:
            # Two sites in one pool would share one site's budget: exactly what pools per site avoid.
            raise fail(f"{at('pool')}: the pool {pool!r} is already the pool of site {seen_pools[pool]!r}")
        seen_pools[pool] = name
        # Sites may share a store_conn_id: every store table keys its rows by site (jira_ticket by
        # (site, key) and (site, issue_id)), so one site's ABC-1 never touches another's.
        mailboxes: list[Mailbox] = []
        slugs: dict[str, int] = {}
        for position, raw in enumerate(entry["mailboxes"]):
            folder = raw.get("mailbox", DEFAULT_MAILBOX)
            slug = raw.get("slug") or mailbox_slug(folder)
            where = f"mailboxes[{position}]"
            if not slug:
                raise fail(f"{at(where + '.mailbox')}: {folder!r} gives no DAG id part: set `slug`")
            if slug in slugs:
                raise fail(
                    f"{at(where + '.slug')}: {slug!r} is already the slug of mailboxes[{slugs[slug]}]: "
                    "give one of them its own `slug`"
                )
            slugs[slug] = position
            watched = (raw["imap_conn_id"], folder)
            if watched in seen_mailboxes:
                raise fail(
                    f"{at(where)}: {folder!r} on {raw['imap_conn_id']!r} is already synced by "
                    f"{seen_mailboxes[watched]}: one mailbox feeds one site"
                )
            seen_mailboxes[watched] = f"site {name!r}"
            rejected = raw.get("rejected_mailbox")
            if rejected is not None and rejected == folder:
                raise fail(f"{at(where + '.rejected_mailbox')}: must name a folder other than {folder!r}")
            mailboxes.append(
                Mailbox(
                    imap_conn_id=raw["imap_conn_id"],
                    mailbox=folder,
                    slug=slug,
                    trusted_senders=tuple(s.strip() for s in raw.get("trusted_senders", ()) if s.strip()),
                    rejected_mailbox=rejected,
                    inbox_mode=raw.get("inbox_mode"),
                )
            )
        sites.append(
            Site(
                name=name,
                jira_conn_id=entry["jira_conn_id"],
                store_conn_id=entry["store_conn_id"],
                pool=pool,
                pool_slots=entry.get("pool_slots", DEFAULT_POOL_SLOTS),
                mailboxes=tuple(mailboxes),
                schedule=schedule,
                lookback_minutes=entry.get("lookback_minutes", DEFAULT_LOOKBACK_MINUTES),
                projects=tuple(entry.get("projects", ())),
            )
        )
    return tuple(sites)


def load_sites_file(path: str | Path) -> tuple[Site, ...]:
    """The sites of the YAML file at `path`, checked (SitesFileError when unreadable or wrong)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SitesFileError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SitesFileError(f"{path}: is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return parse_sites(data, source=str(path))


def configured_sites(path: str | Path | None) -> tuple[Site, ...]:
    """The sites of the file at `path` when it exists, else the plain `default_site()`."""
    if path is None or not Path(path).exists():
        return (default_site(),)
    return load_sites_file(path)


def find_mailbox(sites: Iterable[Site], dag_id: str) -> tuple[Site, Mailbox] | None:
    """The site and mailbox whose inbox DAG is `dag_id`, if any."""
    for site in sites:
        for mailbox in site.mailboxes:
            if site.inbox_dag_id(mailbox) == dag_id:
                return site, mailbox
    return None


def schema_project_pattern(document: Mapping[str, Any] | None = None) -> str:
    """The project key pattern the schema holds (a test checks it is include.jira_rules')."""
    document = document or schema()
    return document["$defs"]["site"]["properties"]["projects"]["items"]["pattern"]


EXPECTED_PROJECT_PATTERN = f"^{PROJECT_KEY_PATTERN}$"
