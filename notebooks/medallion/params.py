"""Checks on the job parameters a notebook received through its widgets."""

from __future__ import annotations


def require(**values: str) -> None:
    """Fail with the names of empty job parameters (they have no usable default)."""
    missing = sorted(name for name, value in values.items() if not value.strip())
    if missing:
        raise ValueError(
            f"Job parameter(s) {', '.join(missing)} empty: run the job with them set "
            "(the Airflow DAG trigger_databricks_workflow_dag passes them from the asset events)."
        )
