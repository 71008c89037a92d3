"""Starts PostgreSQL, Redis and every Airflow component of docker-compose.yaml as local processes on loopback.

The topology is the compose file's CeleryExecutor stack: one PostgreSQL cluster (the metadata database
and, as a second database, the `jira_store` ticket store), Redis as the Celery broker, and
`airflow api-server`, `scheduler`, `dag-processor`, `triggerer` and N `celery worker` processes that
share their configuration (environment variables, no airflow.cfg), the database and the broker, and,
being on one machine, the task log folder. Every process gets its own process group, is recorded in
the ledger named by $JMS_PROCESS_LEDGER (so a shell trap can clean up after a killed test run), and
is stopped with SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import requests

from devkit.airflow_env import (
    CELERY_WORKER_PRELOAD,
    DAG_IDS,
    SCHEDULER_IDLE_SLEEP_S,
    airflow_env,
)
from devkit.airflow_rest import AirflowRest
from devkit.postgres import PostgresDatabase, PostgresServer, PostgresStartError, start_postgres
from devkit.processes import LOOPBACK, free_port, log_tail, spawn, stop_process_groups
from devkit.redis import RedisStartError, start_redis
from include.names import JIRA_API_POOL, STORE_CONN_ID
from scripts.distributed.hostname import HOSTNAME_ENV

log = logging.getLogger(__name__)

LEDGER_ENV = "JMS_PROCESS_LEDGER"
HOSTNAME_CALLABLE = "scripts.distributed.hostname.component_hostname"
ADMIN_USER = "admin"


class StackError(RuntimeError):
    """A component did not come up or died; the message names it and carries the tail of its log."""


@dataclass(frozen=True)
class StackSettings:
    workers: int = 2
    worker_concurrency: int = 2
    jira_pool_slots: int = 2
    # The compose stack's defaults would start 32 task slots and 4 API workers: far too many for 2 cores.
    parallelism: int = 8
    start_timeout_s: float = 240.0
    migrate_timeout_s: float = 300.0
    stop_timeout_s: float = 20.0
    # More AIRFLOW__* settings for every component (a project option such as extra_fields, say).
    airflow_settings: Mapping[str, str] = field(default_factory=dict)
    # [jira_mail_sync] inbox_mode: "idle" (IMAP IDLE watcher + safety cron) or "poll" (every minute).
    inbox_mode: str = "idle"
    # The compose file's worker preload and scheduler idle sleep; False gives Airflow's defaults
    # (bench/idle_latency.py measures both).
    latency_settings: bool = True
    # Many sites (#23): a sites file for every component ([jira_mail_sync] sites_file). Its pools are
    # then made by `check_connections --sites --create-pools`, sized as the file says, instead of the
    # plain `jira_api` pool, and readiness waits for `dag_ids` (the file's DAGs) instead of DAG_IDS.
    sites_file: Path | None = None
    dag_ids: tuple[str, ...] = DAG_IDS
    # Each of these store connections gets a database of its own on the stack's PostgreSQL.
    store_conn_ids: tuple[str, ...] = (STORE_CONN_ID,)


def _ledger_append(line: str) -> None:
    ledger = os.environ.get(LEDGER_ENV)
    if ledger:
        with open(ledger, "a", encoding="utf-8") as out:
            out.write(line + "\n")


def record_process_group(pgid: int, name: str) -> None:
    """Note a process group in the ledger, so `scripts/test_distributed.sh` can end it if pytest cannot."""
    _ledger_append(f"group\t{pgid}\t{name}")


def record_scratch_dir(path: Path) -> None:
    """Note a temporary directory in the ledger, removed by `scripts/test_distributed.sh` if pytest cannot."""
    _ledger_append(f"dir\t{path}")


@dataclass
class Component:
    """One long-running process of the stack, with its own log file and process group."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(repr=False)
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, cwd: Path) -> None:
        self.process = spawn(self.argv, self.log_path, env=self.env, cwd=cwd)
        record_process_group(self.process.pid, self.name)

    @property
    def exit_status(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log_tail(self, max_lines: int = 40) -> str:
        return log_tail(self.log_path, max_lines)


class DistributedStack:
    """The compose topology as local processes: use as a context manager, or start() and stop().

    `connections` maps connection ids to their JSON form (as in AIRFLOW_CONN_*); `jira_store` (or
    each of `settings.store_conn_ids`) is added, pointing at a database of its own on the stack's
    PostgreSQL.
    """

    def __init__(
        self,
        root: Path,
        connections: Mapping[str, Mapping[str, Any]],
        settings: StackSettings = StackSettings(),
    ) -> None:
        self.root = root
        self.settings = settings
        self._connections = {conn_id: dict(conn) for conn_id, conn in connections.items()}
        self._admin_password = secrets.token_urlsafe(18)
        self.postgres: PostgresServer | None = None
        self.metadata: PostgresDatabase | None = None
        self.store: PostgresDatabase | None = None
        # Every store database by its connection id; `store` is the first of them.
        self.stores: dict[str, PostgresDatabase] = {}
        self.components: dict[str, Component] = {}
        self.api_port = 0
        self.redis_port = 0
        self.timings: dict[str, float] = {}
        self.rest: AirflowRest | None = None
        self._health: dict[str, Any] = {}

    # ----------------------------------------------------------------------------------------- naming

    @property
    def home(self) -> Path:
        return self.root / "airflow-home"

    @property
    def api_url(self) -> str:
        return f"http://{LOOPBACK}:{self.api_port}"

    def worker_hostname(self, number: int) -> str:
        return f"jms-worker-{number}"

    @property
    def worker_hostnames(self) -> list[str]:
        return [self.worker_hostname(n) for n in range(1, self.settings.workers + 1)]

    # --------------------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> DistributedStack:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> DistributedStack:
        """Bring every component up and wait until each is healthy; on any failure stop what started."""
        started = time.monotonic()
        try:
            self._start_postgres()
            self._start_redis()
            env = self._airflow_env()
            self._migrate(env)
            self._start_airflow(env)
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        self.timings["start_total_s"] = time.monotonic() - started
        log.info("Distributed stack ready in %.1f s: %s", self.timings["start_total_s"], self.api_url)
        return self

    def stop(self) -> list[str]:
        """Stop every process this stack started; returns the components that needed SIGKILL."""
        if not self.components and self.postgres is None:
            return []
        started = time.monotonic()
        if self.rest is not None:
            # An open keep-alive connection would hold up the api-server's graceful shutdown.
            self.rest.close()
        killed: list[str] = []
        for phase in self._stop_phases():
            phase_began = time.monotonic()
            started_here = {name: self.components[name].process for name in phase}
            running = {name: proc for name, proc in started_here.items() if proc is not None}
            killed += stop_process_groups(running, self.settings.stop_timeout_s)
            self.timings[f"stop_{'+'.join(phase)}_s"] = time.monotonic() - phase_began
        self.components.clear()
        if self.postgres is not None:
            phase_began = time.monotonic()
            self.postgres.stop()
            self.postgres = None
            self.timings["stop_postgres_s"] = time.monotonic() - phase_began
        self.timings["stop_s"] = time.monotonic() - started
        if killed:
            log.warning("Needed SIGKILL after %.0f s: %s", self.settings.stop_timeout_s, ", ".join(killed))
        return killed

    def _stop_phases(self) -> list[list[str]]:
        """Components in stopping order: first nothing new is scheduled, then workers finish what they
        run (a task still reports to the api-server, and Celery acks over Redis), then the rest."""
        order = (
            ("scheduler", "dag-processor", "pools-set"),
            # The triggerer takes ~10 s to wind down its trigger runner: it overlaps the workers' wait.
            ("triggerer", *(name for name in self.components if name.startswith("worker-"))),
            ("api-server",),
            ("redis",),
        )
        phases = [[name for name in phase if name in self.components] for phase in order]
        placed = {name for phase in phases for name in phase}
        phases.append([name for name in self.components if name not in placed])
        return [phase for phase in phases if phase]

    # ------------------------------------------------------------------------------------ start steps

    def _timed(self, label: str) -> Callable[[], None]:
        began = time.monotonic()

        def done() -> None:
            self.timings[label] = time.monotonic() - began

        return done

    def _start_postgres(self) -> None:
        done = self._timed("postgres_s")
        try:
            self.postgres = start_postgres()
        except (PostgresStartError, OSError, psycopg.Error) as exc:
            raise StackError(f"PostgreSQL could not start: {exc}") from exc
        record_scratch_dir(self.postgres.root)
        pid_file = self.postgres.data_dir / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            # pg_ctl starts the postmaster in its own session, so its pid is its process group.
            record_process_group(int(pid_file.read_text().splitlines()[0]), "postgres")
        self.metadata = self.postgres.create_database()
        for conn_id in self.settings.store_conn_ids:
            self.stores[conn_id] = self.postgres.create_database()
            self._connections[conn_id] = self.stores[conn_id].airflow_conn()
        self.store = self.stores[self.settings.store_conn_ids[0]]
        done()

    def _start_redis(self) -> None:
        done = self._timed("redis_s")
        try:
            redis = start_redis(self.root / "redis", self.root / "redis.log", env=dict(os.environ))
        except RedisStartError as exc:
            raise StackError(str(exc)) from exc
        record_process_group(redis.process.pid, "redis")
        self.redis_port = redis.port
        # A component like the others, so it is checked while the rest starts and stopped in its phase.
        self.components["redis"] = Component(
            "redis", list(redis.process.args), {}, redis.log_path, redis.process
        )
        done()

    def _airflow_env(self) -> dict[str, str]:
        assert self.metadata is not None
        self.home.mkdir(parents=True, exist_ok=True)
        passwords_file = self.home / "simple_auth_manager_passwords.json"
        passwords_file.touch(mode=0o600)
        passwords_file.write_text(json.dumps({ADMIN_USER: self._admin_password}))
        db = self.metadata
        credentials = f"{quote(db.user, safe='')}:{quote(db.password, safe='')}"
        database_url = f"postgresql+psycopg://{credentials}@{db.host}:{db.port}/{db.dbname}"
        self.api_port = free_port()
        return airflow_env(
            os.environ,
            home=self.home,
            database_url=database_url,
            connections=self._connections,
            api_port=self.api_port,
            admin_user=ADMIN_USER,
            jwt_secret=secrets.token_urlsafe(64),
            settings={
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
                # Celery's database result backend is SQLAlchemy too: the same psycopg 3 driver.
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{database_url}",
                "AIRFLOW__CELERY__BROKER_URL": f"redis://{LOOPBACK}:{self.redis_port}/0",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.settings.worker_concurrency),
                "AIRFLOW__CORE__FERNET_KEY": _fernet_key(),
                "AIRFLOW__CORE__PARALLELISM": str(self.settings.parallelism),
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": HOSTNAME_CALLABLE,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
                "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
                "AIRFLOW__JIRA_MAIL_SYNC__INBOX_MODE": self.settings.inbox_mode,
                **(
                    {"AIRFLOW__JIRA_MAIL_SYNC__SITES_FILE": str(self.settings.sites_file)}
                    if self.settings.sites_file is not None
                    else {}
                ),
                **(
                    {
                        "AIRFLOW__CELERY__EXTRA_CELERY_CONFIG": CELERY_WORKER_PRELOAD,
                        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": SCHEDULER_IDLE_SLEEP_S,
                    }
                    if self.settings.latency_settings
                    else {}
                ),
                **self.settings.airflow_settings,
            },
        )

    def _airflow(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "airflow", *args]

    def _migrate(self, env: dict[str, str]) -> None:
        done = self._timed("db_migrate_s")
        log_path = self.root / "airflow-db-migrate.log"
        with open(log_path, "wb") as log_file:
            try:
                result = subprocess.run(
                    self._airflow("db", "migrate"),
                    cwd=self.root,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    timeout=self.settings.migrate_timeout_s,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise StackError(f"`airflow db migrate` timed out\n{log_tail(log_path)}") from exc
        if result.returncode != 0:
            raise StackError(f"`airflow db migrate` exited with {result.returncode}\n{log_tail(log_path)}")
        done()

    def _start_airflow(self, env: dict[str, str]) -> None:
        def add(name: str, args: list[str], hostname: str | None = None) -> None:
            component_env = dict(env)
            component_env[HOSTNAME_ENV] = hostname or f"jms-{name}"
            component = Component(name, self._airflow(*args), component_env, self.root / f"{name}.log")
            self.components[name] = component
            component.start(self.root)

        self.timings["airflow_launch_at"] = time.monotonic()
        # Log servers would listen on 0.0.0.0 and collide between workers; every component shares one
        # log folder on this machine, so the api-server reads task logs from disk instead.
        add("api-server", ["api-server", "--host", LOOPBACK, "--port", str(self.api_port)])
        add("scheduler", ["scheduler", "--skip-serve-logs"])
        add("dag-processor", ["dag-processor"])
        add("triggerer", ["triggerer", "--skip-serve-logs"])
        for number, hostname in enumerate(self.worker_hostnames, start=1):
            add(
                f"worker-{number}",
                [
                    "celery",
                    "worker",
                    "--celery-hostname",
                    f"{hostname}@%h",
                    "--concurrency",
                    str(self.settings.worker_concurrency),
                    "--skip-serve-logs",
                ],
                hostname,
            )
        if self.settings.sites_file is None:
            add(
                "pools-set",
                [
                    "pools",
                    "set",
                    JIRA_API_POOL,
                    str(self.settings.jira_pool_slots),
                    "Concurrent Jira requests",
                ],
            )
        else:
            # What README tells an operator to run: every site's pool, sized as the sites file says.
            name = "pools-set"
            component = Component(
                name,
                [sys.executable, "-m", "jira_mail_sync.check_connections", "--sites", "--create-pools"],
                {**env, HOSTNAME_ENV: f"jms-{name}"},
                self.root / f"{name}.log",
            )
            self.components[name] = component
            component.start(self.root)

    # ------------------------------------------------------------------------------------- readiness

    def _check_alive(self, allow_exit: tuple[str, ...] = ()) -> None:
        for component in self.components.values():
            status = component.exit_status
            if status is None or (component.name in allow_exit and status == 0):
                continue
            raise StackError(
                f"{component.name} exited with status {status}\n"
                f"--- last lines of {component.log_path} ---\n{component.log_tail()}"
            )

    def _wait_until_ready(self) -> None:
        assert self.rest is None
        self.rest = AirflowRest(self.api_url, ADMIN_USER, self._admin_password)
        launched = self.timings["airflow_launch_at"]
        deadline = launched + self.settings.start_timeout_s
        pending = self._readiness_checks()
        while pending:
            self._check_alive(allow_exit=("pools-set",))
            for name, ready in list(pending.items()):
                if ready():
                    self.timings[f"ready_{name}_s"] = time.monotonic() - launched
                    del pending[name]
            if pending and time.monotonic() > deadline:
                raise StackError(self._not_ready_message(sorted(pending)))
            time.sleep(0.5)
        self._check_import_errors()

    def _readiness_checks(self) -> dict[str, Callable[[], bool]]:
        return {
            "pools-set": lambda: self.components["pools-set"].exit_status == 0,
            "api-server": self._api_healthy,
            "scheduler": lambda: self._health_of("scheduler"),
            "triggerer": lambda: self._health_of("triggerer"),
            "dag-processor": lambda: self._health_of("dag_processor"),
            "workers": self._workers_answer,
            "dags": self._dags_serialized,
        }

    def _not_ready_message(self, waiting: list[str]) -> str:
        logs = {
            "api-server": ["api-server"],
            "scheduler": ["scheduler"],
            "triggerer": ["triggerer"],
            "dag-processor": ["dag-processor"],
            "workers": [name for name in self.components if name.startswith("worker-")],
            "dags": ["dag-processor"],
            "pools-set": ["pools-set"],
        }
        parts = [f"not ready after {self.settings.start_timeout_s:.0f} s: {', '.join(waiting)}"]
        if self._health:
            parts.append(f"last /api/v2/monitor/health: {json.dumps(self._health)}")
        shown = [c for name in waiting for c in logs.get(name, []) if c in self.components]
        for component_name in dict.fromkeys(shown or self.components):
            component = self.components[component_name]
            parts.append(f"--- last lines of {component.log_path} ---\n{component.log_tail()}")
        return "\n".join(parts)

    def _api_healthy(self) -> bool:
        assert self.rest is not None
        health = self.rest.health()
        if health is None:
            return False
        self._health = health
        return self._health.get("metadatabase", {}).get("status") == "healthy"

    def _health_of(self, part: str) -> bool:
        return (self._health.get(part) or {}).get("status") == "healthy"

    def _workers_answer(self) -> bool:
        """Each worker answers a Celery control ping over the broker (what compose's healthcheck runs)."""
        from celery import Celery

        app = Celery(broker=f"redis://{LOOPBACK}:{self.redis_port}/0")
        try:
            replies = app.control.ping(timeout=1.0)
        except Exception:  # the broker connection itself failing is just "not yet"
            return False
        finally:
            app.close()
        # Node names are "<celery hostname>@<machine>", as given by --celery-hostname NAME@%h.
        answered = {node.partition("@")[0] for reply in replies for node in reply}
        return set(self.worker_hostnames) <= answered

    def _dags_serialized(self) -> bool:
        if not self._api_healthy():
            return False
        assert self.rest is not None
        try:
            return all(self.rest.has_dag(dag_id) for dag_id in self.settings.dag_ids)
        except requests.RequestException:
            return False

    def _check_import_errors(self) -> None:
        assert self.rest is not None
        errors = self.rest.import_errors()
        if errors:
            raise StackError(f"DAG import errors: {json.dumps(errors, indent=2)}")

    # --------------------------------------------------------------------------------------- queries

    def metadata_rows(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only query on the Airflow metadata database."""
        assert self.metadata is not None
        with self.metadata.connect() as conn:
            return conn.execute(query, params).fetchall()

    def store_rows(
        self, query: str, params: tuple[Any, ...] = (), *, conn_id: str | None = None
    ) -> list[tuple[Any, ...]]:
        """Rows of a read-only query on a ticket store (default: the first, `jira_store`); [] while the
        table is missing."""
        store = self.store if conn_id is None else self.stores[conn_id]
        assert store is not None
        with store.connect() as conn:
            try:
                return conn.execute(query, params).fetchall()
            except psycopg.errors.UndefinedTable:  # the first store_tickets creates it
                return []

    def component_log(self, name: str) -> str:
        """Everything component `name` has logged so far."""
        return self.components[name].log_path.read_text(errors="replace")

    def diagnostics(self, max_lines: int = 25) -> str:
        """Every component's state and log tail, for a failure message."""
        parts = []
        for component in self.components.values():
            status = component.exit_status
            state = "running" if status is None else f"exited {status}"
            parts.append(
                f"--- {component.name} ({state}), {component.log_path} ---\n{component.log_tail(max_lines)}"
            )
        return "\n".join(parts)


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()
