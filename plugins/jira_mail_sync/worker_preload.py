"""What a Celery worker imports once, at start, so that every task process it forks starts sooner.

Airflow 3 runs each task instance in a new process forked from the Celery worker. Before the task
can begin, that process imports Airflow's DAG-parsing machinery (`airflow.dag_processing.dagbag`,
which pulls in the serialization and ORM modules) and then the modules the DAG file imports: about
0.6 s of a jira_inbox task's 1 s on two cores. Whatever the worker imported before forking is
inherited instead of imported again, so a deployment names this module in Celery's `imports`
setting (modules the worker imports when it starts):

    AIRFLOW__CELERY__EXTRA_CELERY_CONFIG='{"imports": ["jira_mail_sync.worker_preload"]}'

docker-compose.yaml and the native Celery stack set it; bench/idle_latency.py measures it.

Only modules are imported here: nothing connects, reads a connection or parses a DAG (the task
process still parses its DAG file itself, fresh). A module that cannot be imported stops the
worker at start, where a missing dependency is best found. tests/test_worker_preload.py checks
that every product module a DAG file imports is listed.
"""

from __future__ import annotations

# What the task runner's parse() imports in every task process (airflow.sdk.execution_time.task_runner).
import airflow.dag_processing.dagbag  # noqa: F401
import jsonschema  # noqa: F401
import yaml  # noqa: F401

# The modules the DAG files import, and with them the clients they use (IMAPClient, requests,
# atlassian-python-api, SQLAlchemy, psycopg).
import include.census  # noqa: F401
import include.history_sync  # noqa: F401
import include.inbox_run  # noqa: F401
import include.jira_rules  # noqa: F401
import include.mail_ledger  # noqa: F401
import include.sites  # noqa: F401  (the sites file's loader; jsonschema and yaml above are its parsers)
import include.sync_pipeline  # noqa: F401
import include.ticket_store  # noqa: F401
import jira_mail_sync.assets  # noqa: F401
import jira_mail_sync.census_dag  # noqa: F401
import jira_mail_sync.census_tasks  # noqa: F401
import jira_mail_sync.history_tasks  # noqa: F401
import jira_mail_sync.hooks.imap  # noqa: F401
import jira_mail_sync.hooks.jira_cloud  # noqa: F401
import jira_mail_sync.hooks.ticket_store  # noqa: F401
import jira_mail_sync.inbox_dag  # noqa: F401
import jira_mail_sync.inbox_schedule  # noqa: F401
import jira_mail_sync.inbox_tasks  # noqa: F401
import jira_mail_sync.sensors.unseen_mail  # noqa: F401
import jira_mail_sync.site_dags  # noqa: F401
import jira_mail_sync.sites_config  # noqa: F401
import jira_mail_sync.sweep_dag  # noqa: F401
import jira_mail_sync.sweep_tasks  # noqa: F401
import jira_mail_sync.ticket_tasks  # noqa: F401
