"""A client of Airflow's public REST API (/api/v2) that logs in with the simple auth manager's token."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import requests

HTTP_TIMEOUT_S = 30.0


class AirflowRestError(RuntimeError):
    """The api-server answered a status the caller did not expect; the message carries its answer."""


class AirflowRest:
    """Calls the api-server as one user, fetching a token on first use and again when it expires."""

    def __init__(
        self, base_url: str, username: str, password: str, timeout_s: float = HTTP_TIMEOUT_S
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._username = username
        self._password = password
        self._timeout_s = timeout_s
        self._token: str | None = None
        self._session = requests.Session()

    def __repr__(self) -> str:
        return f"AirflowRest({self.base_url!r}, user={self._username!r})"

    def __enter__(self) -> AirflowRest:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def token(self) -> str:
        """An access token from POST /auth/token; AirflowRestError if the login is refused."""
        if self._token is None:
            response = self._session.post(
                f"{self.base_url}/auth/token",
                json={"username": self._username, "password": self._password},
                timeout=self._timeout_s,
            )
            if response.status_code not in (200, 201):
                raise AirflowRestError(
                    f"POST /auth/token answered {response.status_code}: {response.text[:500]}"
                )
            self._token = response.json()["access_token"]
        return self._token

    def request(self, method: str, path: str, *, expected: tuple[int, ...] = (200,), **kwargs: Any) -> Any:
        """Call `path` (under the base URL) and return its JSON; other statuses raise AirflowRestError.

        A refused connection raises requests.ConnectionError (an OSError).
        """
        for attempt in (1, 2):
            response = self._session.request(
                method,
                f"{self.base_url}{path}",
                headers={"Authorization": f"Bearer {self.token()}"},
                timeout=self._timeout_s,
                **kwargs,
            )
            if response.status_code == 401 and attempt == 1:
                self._token = None
                continue
            break
        if response.status_code not in expected:
            raise AirflowRestError(f"{method} {path} answered {response.status_code}: {response.text[:1000]}")
        return response.json() if response.content else None

    def close(self) -> None:
        """Close the keep-alive connection (an open one holds up the api-server's graceful shutdown)."""
        self._session.close()

    def health(self) -> dict[str, Any] | None:
        """/api/v2/monitor/health (no login needed), or None while it does not answer 200."""
        try:
            response = self._session.get(f"{self.base_url}/api/v2/monitor/health", timeout=self._timeout_s)
        except requests.RequestException:
            return None
        return response.json() if response.status_code == 200 else None

    def has_dag(self, dag_id: str) -> bool:
        """Whether the DAG is parsed and serialized (GET /api/v2/dags/ID answers 200)."""
        try:
            self.request("GET", f"/api/v2/dags/{dag_id}")
        except AirflowRestError:
            return False
        return True

    def import_errors(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/v2/importErrors")["import_errors"]

    def set_pool(self, name: str, slots: int, description: str) -> None:
        """Create the pool, or set its slots and description if it exists."""
        pool = {"name": name, "slots": slots, "description": description}
        try:
            self.request("POST", "/api/v2/pools", json=pool, expected=(200, 201))
        except AirflowRestError:  # 409: it exists already
            self.request("PATCH", f"/api/v2/pools/{name}", json=pool)

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.request("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": paused})

    def trigger(self, dag_id: str, conf: Mapping[str, Any], **run: Any) -> str:
        """Create a manual run (no logical date, like the UI's trigger form) and return its run_id.

        `run` adds other fields of the request body, such as `dag_run_id` or `note`.
        """
        body = {**run, "logical_date": None, "conf": dict(conf)}
        return self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body)["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, list[str | None]]:
        """States of the run's task instances by task id (one entry per map index)."""
        found = self.request(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000}
        )
        states: dict[str, list[str | None]] = {}
        for ti in sorted(found["task_instances"], key=lambda t: (t["task_id"], t["map_index"])):
            states.setdefault(ti["task_id"], []).append(ti["state"])
        return states

    def wait_for_run(self, dag_id: str, run_id: str, timeout_s: float) -> str:
        """Poll until the run is success or failed; a timeout returns its last state."""
        deadline = time.monotonic() + timeout_s
        state = self.run_state(dag_id, run_id)
        while state not in ("success", "failed") and time.monotonic() < deadline:
            time.sleep(1.0)
            state = self.run_state(dag_id, run_id)
        return state
