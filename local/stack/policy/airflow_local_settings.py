"""Airflow cluster policy of the local stack: time-based schedules are off, asset schedules stay.

On unpause, ``produce_data_asset``'s ``@daily`` schedule would start a run with the default
parameters (archive.org) beside the demo's run on the sample dump, and race it for the same S3
objects and tables. Here only the demo's trigger and the asset events start runs; the DAG code is
the one that runs on Kubernetes. Airflow imports this module because the stack puts this folder
on the components' PYTHONPATH.
"""

from __future__ import annotations

from airflow.sdk import DAG
from airflow.timetables.simple import AssetTriggeredTimetable, NullTimetable


def dag_policy(dag: DAG) -> None:
    if not isinstance(dag.timetable, AssetTriggeredTimetable):
        dag.timetable = NullTimetable()
