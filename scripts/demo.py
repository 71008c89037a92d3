"""Runs jira-mail-sync live on this machine, all state under .demo/: `start`, `stop`, `check`, `info`.

The demo runs two Jira sites, `acme` and `globex` (DEMO_SITES), from a sites file it writes to
.demo/jira_sites.yaml (`[jira_mail_sync] sites_file`): each site has its own Jira stand-in, its own
mailbox, its own SQLite store and its own pool, and so its own DAGs (`jira_sweep__acme`,
`jira_inbox__acme__inbox`, ...). `acme` keeps the plain connection ids (`jira_default`,
`imap_default`, `jira_store`), as a deployment that had one site and then added a second would;
`globex` has its own.

`start` (what `make demo` runs) starts, each in a session of its own with its PID in .demo/pids/:

- Dovecot on loopback with one mailbox account per site (plain IMAP);
- one Jira Cloud stand-in per site, each with its own generated demo site (the same projects, so
  both have an ABC-1, but different tickets);
- PostgreSQL on loopback, holding Airflow's metadata database (the ticket stores stay SQLite);
- `airflow standalone` (LocalExecutor) on 127.0.0.1;
- one activity generator per site (scripts/activity.py), which edits its tickets and mails their
  notifications to its mailbox.

It waits (bounded) until the api-server answers, every component is healthy and every site's DAGs
are parsed, then creates each site's pool with the size the sites file gives it, unpauses each site's
inbox and sweep DAGs, triggers one run of each site's sweep over its whole history (the initial load)
and prints how to use it all. `check` asserts, by exit code, that the demo is ready and that, for each
site, its store holds tickets from both of its DAGs and its mailbox has settled mail. `stop` ends
every process `start` began, session by session, and is safe to run any number of times.

Why PostgreSQL for the metadata: Airflow refuses to create a backfill on SQLite while other writers are
busy ("Database is locked. Backfill creation is not supported on SQLite under concurrent access"), so on
a SQLite demo the UI's Backfill button failed with 503 about every other time.

Every variable the caller exported whose name starts with AIRFLOW is dropped: the demo configures its
own Airflow, and a stray AIRFLOW_HOME or connection (a test session's, say) must not leak into it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# Only the standard library at the top: `stop` must work without .venv (see scripts/demo.sh).
from devkit.airflow_env import SCHEDULER_IDLE_SLEEP_S, airflow_env  # noqa: E402
from devkit.processes import (  # noqa: E402
    LOOPBACK,
    free_port,
    log_tail,
    port_is_free,
    proc_stat,
    session_members,
    spawn,
    terminate,
)
from include.names import (  # noqa: E402
    IMAP_CONN_ID,
    JIRA_CONN_ID,
    MAIL_LEDGER_TABLE,
    STORE_CONN_ID,
    TICKET_TABLE,
)

DEMO = REPO / ".demo"
PIDS = DEMO / "pids"
LOGS = DEMO / "logs"
STATE = DEMO / "state.json"
SITES_FILE = DEMO / "jira_sites.yaml"
AIRFLOW_HOME = DEMO / "airflow"
# Every process the demo starts carries this variable, so `stop` can find any that left its session.
MARKER_ENV = "JMS_DEMO_ROOT"

DEFAULT_API_PORT = 8080
ADMIN_USER = "admin"
JIRA_EMAIL = "sync-bot@example.com"


@dataclass(frozen=True)
class DemoSite:
    """One Jira site of the demo: its generated tickets, its connection ids and its pool's size."""

    name: str
    issues: int
    seed: int
    time_zone: str
    jira_conn_id: str
    imap_conn_id: str
    store_conn_id: str
    pool_slots: int

    @property
    def store_path(self) -> Path:
        """The site's SQLite store. The one place the demo chooses stores: one file per site (sites may
        share a store, but SQLite takes one writer at a time, and two sites' DAGs write at once here)."""
        return DEMO / f"store_{self.name}.db"


# Different seeds and sizes give different tickets; both sites draw from the same projects (ABC, OPS,
# WEB), so both have an ABC-1: one key, two sites, two rows in two stores. Different time zones show
# each site's JQL is written in its own account's zone. Pools of 3 and 2 slots within parallelism 4:
# neither site's Jira tasks can take every worker from the other.
DEMO_SITES = (
    DemoSite("acme", 300, 1, "Europe/Berlin", JIRA_CONN_ID, IMAP_CONN_ID, STORE_CONN_ID, 3),
    DemoSite("globex", 200, 2, "America/New_York", "jira_globex", "imap_globex", "jira_store_globex", 2),
)
# Two cores: four LocalExecutor workers keep the scheduler and the api-server responsive.
PARALLELISM = 4
# The order `stop` ends them in: producers first, so nothing writes into a service that is going away.
# PostgreSQL last: Airflow writes into it until it has stopped.
SERVICES = (
    *(f"activity-{site.name}" for site in DEMO_SITES),
    "airflow",
    *(f"jira-{site.name}" for site in DEMO_SITES),
    "dovecot",
    "postgres",
)

READY_TIMEOUT_S = float(os.environ.get("DEMO_READY_TIMEOUT", "240"))
SERVICE_START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 10.0


class DemoError(RuntimeError):
    """The demo could not do what was asked; the message says why and where to look."""


# ------------------------------------------------------------------------------------------- processes


def _marked_processes() -> list[int]:
    """PIDs of live processes started by this demo (they carry MARKER_ENV), other than this one."""
    marker = f"{MARKER_ENV}={DEMO}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        stat = proc_stat(int(entry.name))
        if marker in environ.split(b"\0") and stat is not None and stat.state != "Z":
            found.append(int(entry.name))
    return found


def _record(name: str, process: subprocess.Popen[bytes]) -> None:
    """Note the session a service leads in .demo/pids/NAME.pid, for `stop` (a later process)."""
    stat = proc_stat(process.pid)
    # The start time guards `stop` against a recycled PID: it only signals the process it started.
    (PIDS / f"{name}.pid").write_text(f"{process.pid} {stat.start_time if stat else 0}\n")


def _spawn(name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start `argv` as the leader of a new session, output to .demo/logs/NAME.log, PID recorded."""
    process = spawn(argv, LOGS / f"{name}.log", env=_marked(env), cwd=REPO)
    _record(name, process)
    return process


def _marked(env: dict[str, str]) -> dict[str, str]:
    return {**env, MARKER_ENV: str(DEMO)}


def _recorded(name: str) -> tuple[int, int] | None:
    try:
        pid, started = (PIDS / f"{name}.pid").read_text().split()
        return int(pid), int(started)
    except (FileNotFoundError, ValueError):
        return None


def _running(name: str) -> bool:
    recorded = _recorded(name)
    if recorded is None:
        return False
    stat = proc_stat(recorded[0])
    return stat is not None and stat.state != "Z" and stat.start_time == recorded[1]


def _stop_service(name: str) -> bool:
    """SIGTERM every process of the service's session, SIGKILL what is left after STOP_TIMEOUT_S.

    Returns whether anything was running.
    """
    recorded = _recorded(name)
    pid_file = PIDS / f"{name}.pid"
    pid_file.unlink(missing_ok=True)
    if recorded is None:
        return False
    sid, started = recorded
    stat = proc_stat(sid)
    # The leader may be gone while its session lives on; a recycled PID (other start time) is not ours.
    if stat is not None and stat.start_time != started:
        return False
    if not session_members(sid):
        return False
    # airflow standalone ignores SIGINT when backgrounded; every component handles SIGTERM.
    began = time.monotonic()
    killed = terminate(lambda: session_members(sid), STOP_TIMEOUT_S)
    if killed:
        print(f"  {name}: {len(killed)} process(es) still running after {STOP_TIMEOUT_S:.0f} s: SIGKILL")
    else:
        print(f"  {name}: stopped in {time.monotonic() - began:.1f} s", flush=True)
    return True


def stop(*, quiet: bool = False) -> int:
    if not DEMO.exists():
        print("The demo is not running (no .demo/).")
        return 0
    stopped = []
    for name in SERVICES:
        if _stop_service(name):
            stopped.append(name)
    # A process that started a session of its own is outside every session above.
    terminate(_marked_processes, 10)
    if stopped:
        print(f"Stopped: {', '.join(stopped)}. Logs and the store stay in .demo/ until the next start.")
    elif not quiet:
        print("The demo is not running.")
    return 0


# ---------------------------------------------------------------------------------------------- HTTP


def _api_port() -> int:
    wanted = os.environ.get("DEMO_PORT")
    if wanted:
        if not port_is_free(int(wanted)):
            raise DemoError(f"DEMO_PORT={wanted} is in use")
        return int(wanted)
    return DEFAULT_API_PORT if port_is_free(DEFAULT_API_PORT) else free_port()


# ---------------------------------------------------------------------------------------------- state


def _load_state() -> dict[str, Any]:
    try:
        return json.loads(STATE.read_text())
    except FileNotFoundError:
        raise DemoError("The demo has not been started: run `make demo`.") from None


def _write_private(path: Path, text: str) -> None:
    path.touch(mode=0o600)
    os.chmod(path, 0o600)
    path.write_text(text)


def _base_env() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("AIRFLOW")}
    env.pop("PYTHONPATH", None)
    return env


# ----------------------------------------------------------------------------------------- services


DOVECOT_LINK = DEMO / "dovecot"
# PostgreSQL's cluster lives in a temporary directory of devkit.postgres (owned by its OS user); linked here.
POSTGRES_LINK = DEMO / "postgres"


def _dovecot_dir() -> Path:
    """Where Dovecot's config, accounts and mail live: .demo/dovecot, or a /tmp directory it links to.

    Run as root, Dovecot reads accounts and mail as the dovecot user, which must be able to pass
    through every directory above them; a checkout under a 0700 directory (/root, a mktemp -d) does
    not allow that, so the files then go to a 0711 directory under /tmp instead.
    """
    if os.geteuid() != 0 or all(parent.stat().st_mode & 0o001 for parent in DEMO.resolve().parents):
        DOVECOT_LINK.mkdir()
        return DOVECOT_LINK
    import tempfile

    outside = Path(tempfile.mkdtemp(prefix="jms-demo-dovecot-"))
    DOVECOT_LINK.symlink_to(outside, target_is_directory=True)
    return outside


def _remove_demo_dir() -> None:
    for link in (DOVECOT_LINK, POSTGRES_LINK):
        if link.is_symlink():
            shutil.rmtree(link.resolve(), ignore_errors=True)
            link.unlink()
    shutil.rmtree(DEMO)


def _start_dovecot(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Dovecot with one account per site, started as the tests start it, living in .demo/dovecot."""
    from devkit.dovecot import DOVECOT_BINARY, DovecotStartError, start_dovecot

    if not os.access(DOVECOT_BINARY, os.X_OK):
        raise DemoError(f"{DOVECOT_BINARY} is missing: run `make system-deps`")
    root = _dovecot_dir()
    # Dovecot's auth and mail processes run as the dovecot user and must pass through .demo/.
    os.chmod(DEMO, 0o711)
    try:
        server = start_dovecot(
            root, env=_marked(env), output_path=LOGS / "dovecot.log", timeout_s=SERVICE_START_TIMEOUT_S
        )
    except DovecotStartError as exc:
        raise DemoError(f"Dovecot did not start (see .demo/logs/dovecot.log): {exc}") from exc
    _record("dovecot", server.process)
    mailboxes = {}
    for site in DEMO_SITES:
        account = server.create_account()
        mailboxes[site.name] = {
            "host": server.host,
            "port": server.port,
            "login": account.user,
            "password": account.password,
            "mailbox": "INBOX",
        }
    return mailboxes


def _start_postgres() -> dict[str, Any]:
    """A PostgreSQL cluster on a free loopback port with one database for Airflow's metadata."""
    import psycopg

    from devkit.postgres import PostgresStartError, start_postgres

    try:
        server = start_postgres()
    except (PostgresStartError, OSError, psycopg.Error) as exc:
        raise DemoError(f"PostgreSQL did not start: {exc}") from exc
    POSTGRES_LINK.symlink_to(server.root, target_is_directory=True)
    # pg_ctl starts the postmaster as the leader of a session of its own: `stop` ends that session.
    postmaster = int((server.data_dir / "postmaster.pid").read_text().splitlines()[0])
    stat = proc_stat(postmaster)
    (PIDS / "postgres.pid").write_text(f"{postmaster} {stat.start_time if stat else 0}\n")
    database = server.create_database()
    return {
        "host": database.host,
        "port": database.port,
        "user": database.user,
        "password": database.password,
        "dbname": database.dbname,
    }


def _metadata_url(postgres: dict[str, Any]) -> str:
    from urllib.parse import quote

    credentials = f"{quote(postgres['user'], safe='')}:{quote(postgres['password'], safe='')}"
    return f"postgresql+psycopg://{credentials}@{postgres['host']}:{postgres['port']}/{postgres['dbname']}"


def _spawn_jira_standin(site: DemoSite, env: dict[str, str], anchor: datetime) -> dict[str, Any]:
    """Start the site's stand-in with its generated tickets; returns what `_wait_for_jira` needs."""
    port = free_port()
    token = secrets.token_urlsafe(24)
    process = _spawn(
        f"jira-{site.name}",
        [
            sys.executable,
            "-m",
            "devkit.jira_standin",
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--email",
            JIRA_EMAIL,
            "--time-zone",
            site.time_zone,
            "--demo-issues",
            str(site.issues),
            "--seed",
            str(site.seed),
            "--anchor",
            anchor.isoformat(),
        ],
        {**env, "PYTHONPATH": str(REPO), "JIRA_STANDIN_API_TOKEN": token},
    )
    return {
        "url": f"http://{LOOPBACK}:{port}",
        "email": JIRA_EMAIL,
        "api_token": token,
        "time_zone": site.time_zone,
        "demo_issues": site.issues,
        "seed": site.seed,
        "anchor": anchor.isoformat(),
        "_process": process,
    }


def _wait_for_jira(site: DemoSite, jira: dict[str, Any]) -> dict[str, Any]:
    """Wait until the site's stand-in answers `myself`; returns its state entry (without the process)."""
    import requests

    process = jira.pop("_process")
    log = f".demo/logs/jira-{site.name}.log"
    deadline = time.monotonic() + SERVICE_START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise DemoError(f"The Jira stand-in of {site.name} exited: see {log}")
        with contextlib.suppress(requests.RequestException):
            myself = requests.get(
                f"{jira['url']}/rest/api/3/myself",
                auth=(jira["email"], jira["api_token"]),
                timeout=HTTP_TIMEOUT_S,
            )
            if myself.status_code == 200:
                return jira
        if time.monotonic() > deadline:
            raise DemoError(f"The Jira stand-in of {site.name} did not answer on {jira['url']}: see {log}")
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------ the sites


def sites_file_data(stores: dict[str, str] | None = None) -> dict[str, Any]:
    """The demo's sites file: each site's connections, pool and one mailbox (the account's INBOX).

    The inbox mode and trusted senders are left to their defaults: `[jira_mail_sync] inbox_mode`
    (idle, below) and `jira@<host of the site's Jira connection>`, the sender the activity generator
    mails from.
    """
    return {
        "sites": [
            {
                "name": site.name,
                "jira_conn_id": site.jira_conn_id,
                "store_conn_id": site.store_conn_id,
                "pool_slots": site.pool_slots,
                "mailboxes": [{"imap_conn_id": site.imap_conn_id, "mailbox": "INBOX"}],
            }
            for site in DEMO_SITES
        ]
    }


def write_sites_file(path: Path = SITES_FILE) -> tuple[Any, ...]:
    """Write the sites file and read it back as the DAG files will; returns its include.sites.Site list.

    Read back through include/sites.py (the schema and its rules), so a mistake here fails the start
    at once, naming the entry and the field, instead of as an import error in the UI.
    """
    import yaml

    from include.sites import SitesFileError, load_sites_file

    header = "# Written by `make demo` (scripts/demo.py); read by dags/jira_sites.py.\n"
    path.write_text(header + yaml.safe_dump(sites_file_data(), sort_keys=False))
    try:
        return load_sites_file(path)
    except SitesFileError as exc:
        raise DemoError(f"The demo's sites file is wrong: {exc}") from exc


def _site_state(state: dict[str, Any], site: DemoSite) -> dict[str, Any]:
    return state["sites"][site.name]


def site_dag_ids(state: dict[str, Any]) -> list[str]:
    """Every site's sweep and inbox DAG ids, as the state file records them."""
    return [
        dag_id
        for site in DEMO_SITES
        for dag_id in (_site_state(state, site)["sweep_dag_id"], *_site_state(state, site)["inbox_dag_ids"])
    ]


def _airflow_env(env: dict[str, str], state: dict[str, Any]) -> dict[str, str]:
    api = state["airflow"]
    venv_bin = str(Path(sys.executable).parent)
    connections: dict[str, dict[str, Any]] = {}
    for site in DEMO_SITES:
        entry = _site_state(state, site)
        jira, imap = entry["jira"], entry["imap"]
        connections[site.imap_conn_id] = {
            "conn_type": "imap",
            "host": imap["host"],
            "port": imap["port"],
            "login": imap["login"],
            "password": imap["password"],
            # Plain IMAP, on loopback only, so said explicitly; a real mailbox takes IMAPS on 993.
            "extra": {"use_ssl": False, "allow_insecure_transport": True},
        }
        connections[site.jira_conn_id] = {
            "conn_type": "jira",
            "host": jira["url"],
            "login": jira["email"],
            "password": jira["api_token"],
        }
        connections[site.store_conn_id] = {"conn_type": "sqlite", "host": entry["store"]}
    return airflow_env(
        env,
        home=AIRFLOW_HOME,
        database_url=_metadata_url(state["postgres"]),
        connections=connections,
        api_port=api["port"],
        admin_user=ADMIN_USER,
        jwt_secret=api["jwt_secret"],
        settings={
            # standalone starts its components as plain `airflow`, found on PATH.
            "PATH": f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(PARALLELISM),
            "AIRFLOW__API__BASE_URL": api["url"],
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(api["worker_log_port"]),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(api["trigger_log_port"]),
            # Spelled out although it is the default: the demo shows the IMAP IDLE watcher, which
            # runs in the triggerer that `airflow standalone` starts.
            "AIRFLOW__JIRA_MAIL_SYNC__INBOX_MODE": "idle",
            # Two sites from one file: jira_sites.py builds their DAGs, the plain DAG files none.
            "AIRFLOW__JIRA_MAIL_SYNC__SITES_FILE": state["sites_file"],
            # As in docker-compose.yaml: each task of a run is scheduled sooner after the one before.
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": SCHEDULER_IDLE_SLEEP_S,
        },
    )


def _rest(state: dict[str, Any]):
    """A REST client of the demo's api-server, logged in as the admin (requests lives in .venv)."""
    from devkit.airflow_rest import AirflowRest

    api = state["airflow"]
    return AirflowRest(api["url"], ADMIN_USER, api["password"], timeout_s=HTTP_TIMEOUT_S)


def readiness(state: dict[str, Any]) -> tuple[bool, str]:
    """Whether the api-server answers, every component is healthy and every site's DAGs parsed; why not."""
    from devkit.airflow_rest import AirflowRestError

    with _rest(state) as rest:
        health = rest.health()
        if health is None:
            return False, "the api-server is not answering yet"
        unhealthy = sorted(name for name, part in health.items() if (part or {}).get("status") != "healthy")
        if unhealthy:
            return False, f"waiting for {', '.join(unhealthy)}"
        try:
            rest.token()
        except AirflowRestError:
            return False, "the admin login is not accepted yet"
        except OSError as exc:
            return False, f"the api-server dropped a request ({exc})"
        try:
            missing = [dag for dag in site_dag_ids(state) if not rest.has_dag(dag)]
            if missing:
                errors = rest.import_errors()
                if errors:
                    details = "; ".join(
                        f"{error['filename']}: {error['stack_trace'][-300:]}" for error in errors
                    )
                    raise DemoError(f"The DAGs do not import: {details}")
                return False, f"waiting for the DAG processor to parse {', '.join(missing)}"
        except OSError as exc:
            return False, f"the api-server dropped a request ({exc})"
    return True, "ready"


def _wait_until_ready(state: dict[str, Any], airflow: subprocess.Popen[bytes], launched: float) -> float:
    """Seconds from launch until `readiness` holds; raises DemoError if Airflow exits or times out."""
    deadline = launched + READY_TIMEOUT_S
    last = ""
    while True:
        if airflow.poll() is not None:
            raise DemoError(
                f"airflow standalone exited with status {airflow.returncode}:\n"
                f"{log_tail(LOGS / 'airflow.log', 30)}"
            )
        ready, why = readiness(state)
        if ready:
            return time.monotonic() - launched
        if why != last:
            print(f"  [{time.monotonic() - launched:5.1f} s] {why}", flush=True)
            last = why
        if time.monotonic() > deadline:
            raise DemoError(
                f"Airflow was not ready within {READY_TIMEOUT_S:.0f} s ({why}).\n"
                f"{log_tail(LOGS / 'airflow.log', 30)}"
            )
        time.sleep(1.0)


def _set_up_airflow(state: dict[str, Any]) -> dict[str, str]:
    """Create each site's pool, unpause its DAGs and trigger its initial-load sweep; run id by site."""
    from devkit.airflow_rest import AirflowRestError

    now = datetime.now(UTC).replace(microsecond=0)
    run_ids = {}
    try:
        with _rest(state) as rest:
            for site in DEMO_SITES:
                entry = _site_state(state, site)
                # The size the sites file gives the pool (what check_connections --create-pools sets).
                pool = entry["pool"]
                rest.set_pool(
                    pool["name"], pool["slots"], f"Concurrent Jira REST requests of site {site.name}"
                )
                for dag_id in (entry["sweep_dag_id"], *entry["inbox_dag_ids"]):
                    rest.set_paused(dag_id, False)
            for site in DEMO_SITES:
                entry = _site_state(state, site)
                # The site's tickets were updated over the 14 days before the anchor: one sweep loads
                # them all, as a first backfill would; from then on the inbox keeps the store current.
                since = datetime.fromisoformat(entry["jira"]["anchor"]) - timedelta(days=15)
                run_ids[site.name] = rest.trigger(
                    entry["sweep_dag_id"],
                    {"since": since.isoformat(), "until": now.isoformat()},
                    dag_run_id=f"demo_initial_load__{now:%Y%m%dT%H%M%S}",
                    note=f"Initial load triggered by `make demo`: every ticket of the demo site {site.name}.",
                )
    except AirflowRestError as exc:
        raise DemoError(f"Setting up Airflow failed: {exc}") from exc
    return run_ids


def start() -> int:
    running = [name for name in SERVICES if _running(name)]
    if running and len(running) == len(SERVICES) and STATE.exists():
        print("The demo is already running (`make demo-stop` stops it).\n")
        print(info_text(_load_state()))
        return 0
    if running:
        stopped = ", ".join(name for name in SERVICES if name not in running)
        print(f"The demo is only partly running ({stopped} stopped): starting it afresh.", flush=True)
    began = time.monotonic()
    if DEMO.exists():
        # A fresh site every time: the stand-in keeps its tickets in memory, so an old store would disagree.
        stop(quiet=True)
        print("Removing the previous demo's .demo/ …", flush=True)
        _remove_demo_dir()
    for directory in (DEMO, PIDS, LOGS, AIRFLOW_HOME):
        directory.mkdir(parents=True, exist_ok=True)
    started_at = datetime.now(UTC)
    env = _base_env()
    try:
        names = ", ".join(site.name for site in DEMO_SITES)
        # Spawned first: they generate their tickets while Dovecot and PostgreSQL start.
        print(f"Starting a Jira stand-in per site ({names}) …", flush=True)
        anchor = started_at.replace(second=0, microsecond=0)
        standins = {site.name: _spawn_jira_standin(site, env, anchor) for site in DEMO_SITES}
        print("Starting Dovecot (IMAP, a mailbox account per site) …", flush=True)
        imap = _start_dovecot(env)
        print("Starting PostgreSQL (Airflow's metadata database) …", flush=True)
        postgres = _start_postgres()
        jira = {site.name: _wait_for_jira(site, standins[site.name]) for site in DEMO_SITES}
        configured = {site.name: site for site in write_sites_file()}
        sites: dict[str, Any] = {}
        for site in DEMO_SITES:
            parsed = configured[site.name]
            sites[site.name] = {
                "name": site.name,
                "jira": jira[site.name],
                "imap": imap[site.name],
                "store": str(site.store_path),
                "connections": {
                    "jira": site.jira_conn_id,
                    "imap": site.imap_conn_id,
                    "store": site.store_conn_id,
                },
                "pool": {"name": parsed.pool, "slots": parsed.pool_slots},
                "sweep_dag_id": parsed.sweep_dag_id(),
                "inbox_dag_ids": [parsed.inbox_dag_id(mailbox) for mailbox in parsed.mailboxes],
            }
        api_port = _api_port()
        state: dict[str, Any] = {
            "started_at": started_at.isoformat(),
            "postgres": postgres,
            "sites_file": str(SITES_FILE),
            "sites": sites,
            "airflow": {
                "url": f"http://{LOOPBACK}:{api_port}",
                "port": api_port,
                "user": ADMIN_USER,
                "password": secrets.token_urlsafe(12),
                "home": str(AIRFLOW_HOME),
                "jwt_secret": secrets.token_urlsafe(48),
                "worker_log_port": free_port(),
                "trigger_log_port": free_port(),
            },
        }
        _write_private(STATE, json.dumps(state, indent=2) + "\n")
        # The simple auth manager keeps an existing password from this file instead of generating one.
        _write_private(
            AIRFLOW_HOME / "simple_auth_manager_passwords.json.generated",
            json.dumps({ADMIN_USER: state["airflow"]["password"]}) + "\n",
        )
        print("Starting an activity generator per site …", flush=True)
        for site in DEMO_SITES:
            _spawn(
                f"activity-{site.name}",
                [
                    sys.executable,
                    str(REPO / "scripts" / "activity.py"),
                    "--state",
                    str(STATE),
                    "--site",
                    site.name,
                ],
                {**env, "PYTHONPATH": str(REPO)},
            )
        print(
            f"Starting airflow standalone on {state['airflow']['url']} (up to {READY_TIMEOUT_S:.0f} s) …",
            flush=True,
        )
        launched = time.monotonic()
        airflow = _spawn(
            "airflow", [str(Path(sys.executable).parent / "airflow"), "standalone"], _airflow_env(env, state)
        )
        ready_after = _wait_until_ready(state, airflow, launched)
        run_ids = _set_up_airflow(state)
    except BaseException:
        print("Start failed; stopping what was started (logs stay in .demo/logs/).", file=sys.stderr)
        stop(quiet=True)
        raise
    state["ready_after_s"] = round(ready_after, 1)
    state["start_took_s"] = round(time.monotonic() - began, 1)
    _write_private(STATE, json.dumps(state, indent=2) + "\n")
    triggered = ", ".join(
        f"{_site_state(state, site)['sweep_dag_id']} run {run_ids[site.name]}" for site in DEMO_SITES
    )
    print(
        f"\nAirflow was ready {ready_after:.0f} s after launch"
        f" ({state['start_took_s']:.0f} s for the whole start). Triggered {triggered}.\n"
    )
    print(info_text(state))
    return 0


# ------------------------------------------------------------------------------------------ reporting


def _read_store(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of a read-only query; none while the store or its table does not exist yet."""
    if not path.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []


def store_counts(path: Path) -> dict[str, int]:
    """Rows of jira_ticket by source (inbox, sweep) in one site's store."""
    return dict(_read_store(path, f"SELECT source, count(*) FROM {TICKET_TABLE} GROUP BY source"))


def ledger_counts(path: Path, mailbox: str) -> dict[str, int]:
    """Rows of the mail ledger by state (settled, rejected, ...) for one mailbox of one site's store."""
    quoted = mailbox.replace("'", "''")
    return dict(
        _read_store(
            path, f"SELECT state, count(*) FROM {MAIL_LEDGER_TABLE} WHERE mailbox = '{quoted}' GROUP BY state"
        )
    )


def site_progress(state: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """Per site: (name, settled, what it shows). Settled: rows from both DAGs and settled mail.

    Each site is read from its own store, so a sweep or mail that landed under the wrong site leaves
    the right one short and the check failing.
    """
    found = []
    for site in DEMO_SITES:
        entry = _site_state(state, site)
        store, mailbox = Path(entry["store"]), entry["imap"]["mailbox"]
        tickets, ledger = store_counts(store), ledger_counts(store, mailbox)
        inbox, sweep, settled = tickets.get("inbox", 0), tickets.get("sweep", 0), ledger.get("settled", 0)
        shown = (
            f"{site.name}: {inbox} ticket(s) from {', '.join(entry['inbox_dag_ids'])}, {sweep} from "
            f"{entry['sweep_dag_id']}; {settled} settled mail in {mailbox}"
            f" ({ledger.get('rejected', 0)} rejected)"
        )
        found.append((site.name, inbox > 0 and sweep > 0 and settled > 0, shown))
    return found


def check(wait_s: float) -> int:
    """Exit 0 once the demo is ready and every site has settled (site_progress); 1 if not within wait_s."""
    state = _load_state()
    started = datetime.fromisoformat(state["started_at"])
    deadline = time.monotonic() + wait_s
    while True:
        try:
            ready, why = readiness(state)
        except DemoError as exc:
            ready, why = False, str(exc)
        progress = site_progress(state)
        since_start = (datetime.now(UTC) - started).total_seconds()
        shown = "; ".join(text for _, _, text in progress)
        if ready and all(ok for _, ok, _ in progress):
            print(f"OK: Airflow ready, every site's DAGs parsed; {shown} ({since_start:.0f} s after start).")
            return 0
        if time.monotonic() >= deadline:
            waiting = ", ".join(name for name, ok, _ in progress if not ok) or "none"
            print(
                f"NOT OK: {'Airflow ready' if ready else why}; sites not settled: {waiting}; {shown}"
                f" ({since_start:.0f} s after start)."
            )
            return 1
        time.sleep(5)


def _store_shown(state: dict[str, Any], site: DemoSite) -> Path:
    """The site's store as a path from the repository, as the printed commands use it."""
    return Path(_site_state(state, site)["store"]).relative_to(REPO)


STORE_QUERY = f"select key, status, assignee_email, progress, source from {TICKET_TABLE}"


def info_text(state: dict[str, Any]) -> str:
    """What `start` prints once everything is up: addresses, logins and commands to try."""
    api = state["airflow"]
    url, user, password = api["url"], api["user"], api["password"]
    py = ".venv/bin/python"
    login_body = json.dumps({"username": user, "password": password})
    read_token = f"{py} -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])'"
    lines = [
        "jira-mail-sync demo is running (state and logs in .demo/)",
        "",
        f"  Airflow UI     {url}   login: {user} / {password}",
        f"  Sites file     {Path(state['sites_file']).relative_to(REPO)}"
        f"   ({len(DEMO_SITES)} sites: {', '.join(site.name for site in DEMO_SITES)})",
        "  Activity       every minute a few tickets of each site change and their Jira mail arrives"
        " in the site's mailbox (.demo/logs/activity-<site>.log)",
        "  Inbox mode     idle: the triggerer runs one IMAP IDLE watcher per mailbox, which starts that"
        " mailbox's inbox DAG within seconds of new mail (asset jira_unseen_mail__<site>__<mailbox>)",
    ]
    for site in DEMO_SITES:
        entry = _site_state(state, site)
        jira, imap, conns = entry["jira"], entry["imap"], entry["connections"]
        store = _store_shown(state, site)
        lines += [
            "",
            f"Site {site.name}:",
            f"  DAGs           {entry['sweep_dag_id']} (sweep, pool {entry['pool']['name']}"
            f" with {entry['pool']['slots']} slots), {', '.join(entry['inbox_dag_ids'])} (inbox)",
            f"  Jira stand-in  {jira['url']}   ({jira['demo_issues']} demo tickets in ABC, OPS, WEB;"
            f" time zone {jira['time_zone']}; connection {conns['jira']})",
            f"  IMAP mailbox   {imap['host']}:{imap['port']} {imap['mailbox']}   login: {imap['login']} /"
            f" {imap['password']}   (connection {conns['imap']})",
            f"  Store          {store}   (connection {conns['store']})",
            f"                 {py} -c \"import sqlite3; [print(r) for r in sqlite3.connect('{store}')"
            f".execute('{STORE_QUERY} order by updated_at desc limit 20')]\"",
        ]
    first = DEMO_SITES[0]
    first_store = _store_shown(state, first)
    lines += [
        "",
        "The same key on both sites is two rows, one in each site's store:",
        *(
            f"  {py} -c \"import sqlite3; print(sqlite3.connect('{_store_shown(state, site)}')"
            f".execute('{STORE_QUERY} where key = ?', ('ABC-1',)).fetchall())\""
            for site in DEMO_SITES
        ),
        "",
        f"The REST ticket lookup (an Airflow token, then a key; `?site=` names the site, here {first.name},"
        f" whose store is {first_store}):",
        f"  TOKEN=$(curl -s -X POST {url}/auth/token -H 'Content-Type: application/json' \\",
        f"          -d '{login_body}' | {read_token})",
        f'  curl -s -X POST "{url}/jira-mail-sync/ticket?site={first.name}" -H "Authorization: Bearer $TOKEN"'
        """ -d '{"key": "OPS-1"}'""",
        "",
        f'The status page: "Jira sync" in the UI\'s navigation ({url}/plugin/jira-sync);',
        f'  as JSON: curl -s {url}/jira-mail-sync/status -H "Authorization: Bearer $TOKEN"',
        "",
        "Check it:  bash scripts/demo.sh check --wait 180",
        "Again:     bash scripts/demo.sh info",
        "Stop it:   make demo-stop",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo.sh", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("start", help="start everything and wait until it is ready")
    commands.add_parser("stop", help="stop every process the demo started")
    check_parser = commands.add_parser(
        "check", help="exit 0 if ready and every site's store has rows from both its DAGs and settled mail"
    )
    check_parser.add_argument("--wait", type=float, default=0.0, help="keep trying this many seconds")
    commands.add_parser("info", help="print the addresses and logins again")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            return start()
        if args.command == "stop":
            return stop()
        if args.command == "check":
            return check(args.wait)
        print(info_text(_load_state()))
        return 0
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
