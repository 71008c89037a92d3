"""Airflow's simple auth manager with some DAG entities refused to named users, for permission tests.

The simple auth manager grants a viewer every entity of a DAG (runs, task logs, XCom) alike. Real
deployments split them (FAB roles, Keycloak or AWS policies), so the tests need a user who may read
a DAG but not its logs, or not its runs. Everything else (users, passwords, tokens, the login page)
is the simple auth manager's own.

`JMS_REFUSED_DAG_ENTITIES`: JSON `{"username": ["TASK_LOGS", "XCOM", "RUN", ...]}` (DagAccessEntity names).
`JMS_REFUSED_DAG_METHODS`: JSON `{"username": {"dag_id": ["POST", ...]}}`: those methods refused on that
DAG alone (a user who may trigger one site's inbox DAG and not another's; tests/test_status_sites.py).
"""

from __future__ import annotations

import json
import os
from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

REFUSED_ENTITIES_ENV = "JMS_REFUSED_DAG_ENTITIES"
REFUSED_METHODS_ENV = "JMS_REFUSED_DAG_METHODS"
CLASS_PATH = "tests.harness.auth_manager.EntityRefusingAuthManager"


class EntityRefusingAuthManager(SimpleAuthManager):
    def is_authorized_dag(
        self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None
    ) -> bool:
        refused = json.loads(os.environ.get(REFUSED_ENTITIES_ENV) or "{}").get(user.get_name(), [])
        if access_entity is not None and access_entity.name in refused:
            return False
        by_dag = json.loads(os.environ.get(REFUSED_METHODS_ENV) or "{}").get(user.get_name(), {})
        dag_id = getattr(details, "id", None)
        if dag_id in by_dag and str(getattr(method, "value", method)) in by_dag[dag_id]:
            return False
        return super().is_authorized_dag(
            method=method, user=user, access_entity=access_entity, details=details
        )
