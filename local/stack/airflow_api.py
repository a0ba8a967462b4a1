"""The few calls of Airflow's REST API (v2) the local stack makes, as the demo user."""

from __future__ import annotations

from typing import Any

import requests


class AirflowApi:
    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        response = self.session.post(
            f"{self.base_url}/auth/token",
            json={"username": username, "password": password},
            timeout=30,
        )
        response.raise_for_status()
        self.session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.session.request(
            method, f"{self.base_url}/api/v2/{path}", timeout=30, **kwargs
        )
        response.raise_for_status()
        return response.json()

    def dag_ids(self) -> set[str]:
        return {dag["dag_id"] for dag in self._call("GET", "dags", params={"limit": 100})["dags"]}

    def import_errors(self) -> list[dict[str, Any]]:
        return self._call("GET", "importErrors")["import_errors"]

    def unpause(self, dag_id: str) -> None:
        self._call("PATCH", f"dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> dict[str, Any]:
        body = {"logical_date": None, "conf": conf}
        return self._call("POST", f"dags/{dag_id}/dagRuns", json=body)

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self._call("GET", f"dags/{dag_id}/dagRuns/{run_id}")

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        params = {"order_by": "-run_after", "limit": 20}
        return self._call("GET", f"dags/{dag_id}/dagRuns", params=params)["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"dags/{dag_id}/dagRuns/{run_id}/taskInstances"
        return self._call("GET", path)["task_instances"]

    def asset_events(self, source_dag_id: str, source_run_id: str) -> list[dict[str, Any]]:
        params = {"source_dag_id": source_dag_id, "source_run_id": source_run_id}
        return self._call("GET", "assets/events", params=params)["asset_events"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str, map_index: int = -1) -> Any:
        """The value the task instance pushed under ``key``."""
        path = f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        return self._call("GET", path, params={"map_index": map_index})["value"]
