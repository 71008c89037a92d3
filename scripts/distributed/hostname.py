"""Airflow `hostname_callable` that lets several components on one machine report distinct hostnames."""

from __future__ import annotations

import os
import socket

HOSTNAME_ENV = "JMS_COMPONENT_HOSTNAME"


def component_hostname() -> str:
    """The name the distributed stack gave this process (e.g. one per Celery worker), else the FQDN.

    In the compose stack every container has its own hostname; natively, two workers share one, and
    task_instance.hostname could not tell them apart.
    """
    return os.environ.get(HOSTNAME_ENV) or socket.getfqdn()
