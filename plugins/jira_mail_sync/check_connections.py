"""Command line: check that the jira, imap and store connections work, without touching any mail or ticket.

    PYTHONPATH=plugins python -m jira_mail_sync.check_connections [--mailbox INBOX] [--jira-conn-id ...]
    PYTHONPATH=plugins python -m jira_mail_sync.check_connections --sites [--sites-file PATH] \
        [--mailboxes | --connections]

Airflow's connection form cannot do this for us: the conn types `jira` and `imap` belong to the
providers' hooks (a plugin cannot register a hook, and when two providers declare one conn type,
the first by package name wins), so the form's Test button never reaches our code. The command
reads the connections the way the tasks do (environment, secrets backend or metadata database),
prints one line per connection, and exits 1 when any check fails. No secret is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from include.jira_cloud import JiraError
from include.names import DEFAULT_SITE, IMAP_CONN_ID, JIRA_CONN_ID, STORE_CONN_ID

if TYPE_CHECKING:
    from include.sites import Site

Check = tuple[bool, str]


def check_jira(conn_id: str = JIRA_CONN_ID) -> Check:
    """GET /myself: whom the API token belongs to, and the account's time zone (JQL windows use it).

    With `scoped_token` the call goes through the API gateway, as the tasks' calls do, and the line
    says so (a wrong cloudId or a missing scope shows up here, not in the first run).
    """
    from jira_mail_sync.hooks.jira_cloud import JiraCloudHook

    try:
        with JiraCloudHook(conn_id) as hook:
            client = hook.get_conn()
            me = client.myself()
            site = hook.site_url
            if client.scoped_token:
                site = f"{site} through {client.rest_base_url}"
    except (JiraError, ValueError) as exc:
        return False, str(exc)
    return True, (
        f"{site}: connected as {me.get('displayName')} ({me.get('emailAddress')}), "
        f"time zone {me.get('timeZone')}"
    )


def check_imap(
    conn_id: str = IMAP_CONN_ID,
    mailbox: str = "INBOX",
    store_conn_id: str = STORE_CONN_ID,
    site: str = DEFAULT_SITE,
) -> Check:
    """Log in as the tasks do (per `auth_type`: password, XOAUTH2 or OAUTHBEARER with a fresh token) and
    EXAMINE `mailbox` read-only: its UIDVALIDITY, its unseen count (nothing is flagged) and how many
    of its messages the mail ledger in the store holds back (the rows of this mailbox: `site`,
    `conn_id` and folder; another account's INBOX in the same store is not counted)."""
    import imaplib

    from include.imap_inbox import ImapError
    from include.sender_auth import MODE_AUTHENTICATION_RESULTS, MODE_DKIM
    from jira_mail_sync.hooks.imap import ImapInboxHook, ImapLoginError, ImapLoginUnavailable

    hook = ImapInboxHook(conn_id)
    try:
        sender_auth = hook.sender_auth()  # a wrong extra is reported before any login
        with hook.inbox(mailbox) as inbox:
            uidvalidity = inbox.open(readonly=True)
            # Every unseen message, keyword or not: the mail ledger, not a label, decides what is held.
            # One short answer (ESEARCH COUNT or STATUS), however many: a full SEARCH breaks past ~160,000.
            unseen = inbox.unseen_summary().count
    except (ImapLoginError, ImapLoginUnavailable) as exc:  # already worded as what to fix
        return False, str(exc)
    except (ImapError, OSError, ValueError, imaplib.IMAP4.error) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    checked = ""
    if sender_auth.mode == MODE_AUTHENTICATION_RESULTS:
        checked = f"; senders checked by the Authentication-Results of {sender_auth.authserv_id}"
    elif sender_auth.mode == MODE_DKIM:
        checked = f"; senders checked by DKIM ({', '.join(sender_auth.trusted_dkim_domains)})"
    return True, (
        f"{mailbox}: logged in ({hook.auth_type}), UIDVALIDITY {uidvalidity}, "
        f"{unseen} unseen message(s); "
        f"{_held_back(store_conn_id, site, conn_id, mailbox, uidvalidity)}{checked}"
    )


def _held_back(store_conn_id: str, site: str, imap_conn_id: str, mailbox: str, uidvalidity: int) -> str:
    """The mail ledger's held-back counts for this generation of `mailbox`, read without creating anything."""
    from include.mail_ledger import HELD_STATES, count_by_state
    from jira_mail_sync.hooks.ticket_store import TicketStoreHook

    try:
        with TicketStoreHook(store_conn_id).connect() as (conn, dialect):
            counts = count_by_state(
                conn, dialect, site=site, imap_conn_id=imap_conn_id, mailbox=mailbox, uidvalidity=uidvalidity
            )
    except Exception as exc:  # any DB-API driver's error, or a missing connection
        # The mailbox itself is fine; the store's own check says what is wrong with the store. Only the
        # error's type here: a driver's message may carry the host or the login.
        return f"the mail ledger on {store_conn_id} could not be read ({type(exc).__name__})"
    return "held back by the mail ledger: " + ", ".join(f"{counts[state]} {state}" for state in HELD_STATES)


def check_store(conn_id: str = STORE_CONN_ID, *, site: str = DEFAULT_SITE) -> Check:
    """Open the store and count `site`'s tickets (or say the table is not created yet)."""
    from include.ticket_store import count_tickets, table_exists
    from jira_mail_sync.hooks.ticket_store import TicketStoreHook

    try:
        with TicketStoreHook(conn_id).connect() as (conn, dialect):
            if not table_exists(conn, dialect):
                return True, f"{dialect}: reachable; the ticket table is created on the first run"
            stored = count_tickets(conn, dialect, site=site)
            whose = "" if site == DEFAULT_SITE else f" for site {site}"
            return True, f"{dialect}: reachable, {stored} ticket(s) stored{whose}"
    except Exception as exc:  # any DB-API driver's error
        return False, f"{type(exc).__name__}: {exc}"


# --- #23 many sites: `--sites` checks the sites file against the schema and lists what it configures ---
def check_sites(path: str | None = None) -> tuple[bool, list[str]]:
    """Validate the sites file (default: the configured one) and describe each site and mailbox."""
    from pathlib import Path

    from include.sites import SitesFileError, load_sites_file
    from jira_mail_sync.sites_config import sites_file_path

    file = Path(path) if path else sites_file_path()
    if not file.exists():
        if path:
            return False, [f"{file}: no such file"]
        return True, [f"{file}: no sites file; one site from the plain connections (jira_inbox, jira_sweep)"]
    try:
        sites = load_sites_file(file)
    except SitesFileError as exc:
        return False, [str(exc)]
    lines = [f"{file}: valid, {len(sites)} site(s)"]
    for site in sites:
        sweep = f"{site.sweep_dag_id()} ({site.schedule}, lookback {site.lookback_minutes} min)"
        pool = f"pool {site.pool} ({site.pool_slots} slots)"
        lines.append(
            f"site {site.name}: {sweep}, jira {site.jira_conn_id}, store {site.store_conn_id}, {pool}"
        )
        for mailbox in site.mailboxes:
            reads = f"reads {mailbox.mailbox} on {mailbox.imap_conn_id}"
            lines.append(f"site {site.name}: {site.inbox_dag_id(mailbox)} {reads}")
    return True, lines


def _site_checks(site: Site, kinds: Sequence[str]) -> list[tuple[str, str, Callable[[], Check]]]:
    """The checks of `kinds` (jira, store, imap) for one site: (kind, connection id, check)."""
    checks: list[tuple[str, str, Callable[[], Check]]] = []
    if "jira" in kinds:
        checks.append(("jira", site.jira_conn_id, lambda: check_jira(site.jira_conn_id)))
    if "store" in kinds:
        checks.append(("store", site.store_conn_id, lambda: check_store(site.store_conn_id, site=site.name)))
    if "imap" in kinds:
        for mailbox in site.mailboxes:
            checks.append(
                (
                    "imap",
                    mailbox.imap_conn_id,
                    lambda mailbox=mailbox: check_imap(
                        mailbox.imap_conn_id, mailbox.mailbox, site.store_conn_id, site=site.name
                    ),
                )
            )
    return checks


def check_site_connections(
    path: str | None = None, *, kinds: Sequence[str] = ("imap",)
) -> tuple[bool, list[str]]:
    """Check every configured site's connections of `kinds`: one line each.

    jira as --only jira does, on the site's Jira connection; store on the site's store, counting the
    site's own tickets; imap for each of its mailboxes, counting its own ledger rows in its store.
    """
    from pathlib import Path

    from include.sites import configured_sites
    from jira_mail_sync.sites_config import sites_file_in_use

    ok, lines = True, []
    for site in configured_sites(Path(path) if path else sites_file_in_use()):
        for kind, conn_id, check in _site_checks(site, kinds):
            try:
                passed, message = check()
            except Exception as exc:  # a missing connection (AirflowNotFoundException) and the like
                passed, message = False, f"{type(exc).__name__}: {exc}"
            ok &= passed
            status = "ok  " if passed else "FAIL"
            lines.append(f"{status} {kind:5} site {site.name} {conn_id}: {message}")
    return ok, lines


def create_site_pools(path: str | None = None) -> list[str]:
    """Create each configured site's pool, sized as the sites file says; one line per pool.

    A file's pool is set to its `pool_slots` (the file is where its size lives); the plain `jira_api`
    pool, with no file, is only created when missing, so a size an operator chose stays.
    """
    from pathlib import Path

    from airflow.models.pool import Pool

    from include.sites import configured_sites
    from jira_mail_sync.sites_config import sites_file_in_use

    lines = []
    for site in configured_sites(Path(path) if path else sites_file_in_use()):
        existing = Pool.get_pool(site.pool)
        if site.plain and existing is not None:
            lines.append(f"pool {site.pool}: kept ({existing.slots} slots)")
            continue
        Pool.create_or_update_pool(
            name=site.pool,
            slots=site.pool_slots,
            description=f"Concurrent Jira REST requests of site {site.name}",
            include_deferred=False,
        )
        verb = "created" if existing is None else f"set from {existing.slots}"
        lines.append(f"pool {site.pool}: {verb} ({site.pool_slots} slots) for site {site.name}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jira_mail_sync.check_connections", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--jira-conn-id", default=JIRA_CONN_ID)
    parser.add_argument("--imap-conn-id", default=IMAP_CONN_ID)
    parser.add_argument("--store-conn-id", default=STORE_CONN_ID)
    parser.add_argument("--mailbox", default="INBOX")
    parser.add_argument(
        "--only", choices=("jira", "imap", "store"), action="append", help="check only these (repeatable)"
    )
    parser.add_argument(
        "--sites", action="store_true", help="check the sites file against its schema (no connection is used)"
    )
    parser.add_argument("--sites-file", help="the sites file to check (default: [jira_mail_sync] sites_file)")
    parser.add_argument(
        "--create-pools",
        action="store_true",
        help="with --sites: create each site's pool in the metadata database, sized as the file says",
    )
    parser.add_argument(
        "--mailboxes",
        action="store_true",
        help=(
            "with --sites: also check every site's mailboxes as --only imap does (log in, EXAMINE, and "
            "the mail held back by the mail ledger in the site's store, per mailbox)"
        ),
    )
    parser.add_argument(
        "--connections",
        action="store_true",
        help=(
            "with --sites: check every site's Jira connection, store (its own tickets) and mailboxes, "
            "as the plain checks do"
        ),
    )
    args = parser.parse_args(argv)
    if args.sites or args.sites_file:
        ok, lines = check_sites(args.sites_file)
        for line in lines:
            print(f"{'ok  ' if ok else 'FAIL'} sites {line}", flush=True)
        mailboxes_ok = True
        if ok and (args.mailboxes or args.connections):
            kinds = ("jira", "store", "imap") if args.connections else ("imap",)
            with contextlib.redirect_stdout(sys.stderr):
                mailboxes_ok, lines = check_site_connections(args.sites_file, kinds=kinds)
            for line in lines:
                print(line, flush=True)
        if ok and args.create_pools:
            with contextlib.redirect_stdout(sys.stderr):
                pools = create_site_pools(args.sites_file)
            for line in pools:
                print(f"ok   pools {line}", flush=True)
        return 0 if ok and mailboxes_ok else 1
    checks: dict[str, tuple[str, Callable[[], Check]]] = {
        "jira": (args.jira_conn_id, lambda: check_jira(args.jira_conn_id)),
        "imap": (
            args.imap_conn_id,
            lambda: check_imap(args.imap_conn_id, args.mailbox, args.store_conn_id),
        ),
        "store": (args.store_conn_id, lambda: check_store(args.store_conn_id)),
    }
    failed = False
    for name in args.only or checks:
        conn_id, check = checks[name]
        try:
            # Airflow logs to stdout; its lines (a login, a token fetch) go to stderr here, so that
            # stdout holds exactly one line per check.
            with contextlib.redirect_stdout(sys.stderr):
                ok, message = check()
        except Exception as exc:  # a missing connection (AirflowNotFoundException) and the like
            ok, message = False, f"{type(exc).__name__}: {exc}"
        failed |= not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name:5} {conn_id}: {message}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
