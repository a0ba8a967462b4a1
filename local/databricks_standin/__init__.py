"""A local stand-in for the Databricks Jobs API: a development tool, not Databricks.

It serves the Jobs API 2.2 and 2.1 calls that the Airflow Databricks provider, the Databricks SDK
for Python and the Databricks CLI make for our job, with Databricks' run lifecycle and error
shapes; it loads the job from the bundle in ``notebooks/`` and runs its notebook tasks on one
local Spark session.
Tables are Parquet directories under the warehouse (see ``medallion.tables``);
``read_table`` reads one without Spark. Start it with ``python -m local.databricks_standin``.
"""

from __future__ import annotations

from local.databricks_standin.tables import read_table

__all__ = ["read_table"]
