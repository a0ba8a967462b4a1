"""Where the job's tables live: the one Delta-specific module.

On Databricks (``DATABRICKS_RUNTIME_VERSION`` is set) tables are Unity Catalog Delta tables
``catalog.schema.name``, written by the SQL statements the pure functions below produce
(``CREATE OR REPLACE TABLE ... AS SELECT``, Delta ``MERGE INTO``); ``_run_on_delta`` is the only
code that executes them, and the tests parse the same text with Spark's SQL parser and apply the
same merge spec to a real Delta table (``deltalake``). Elsewhere (the local stand-in, tests) a
table is a Parquet directory ``<spark.sql.warehouse.dir>/<catalog>/<schema>/<name>``, replaced
atomically by a rename, with the same upsert semantics.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pyspark.sql import DataFrame, SparkSession

# Aliases of the merge's target table and source batch in every condition below.
TARGET, SOURCE = "t", "s"


def on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def quote(identifier: str) -> str:
    """One SQL identifier in backticks (a backtick inside is doubled)."""
    return "`" + identifier.replace("`", "``") + "`"


@dataclass(frozen=True)
class Table:
    catalog: str
    schema: str
    name: str

    @property
    def full_name(self) -> str:
        return f"{quote(self.catalog)}.{quote(self.schema)}.{quote(self.name)}"

    def local_path(self, spark: SparkSession) -> Path:
        warehouse = spark.conf.get("spark.sql.warehouse.dir") or "spark-warehouse"
        return Path(urlsplit(warehouse).path) / self.catalog / self.schema / self.name


@dataclass(frozen=True)
class Upsert:
    """How a batch (alias ``s``) with one row per ``key`` merges into a table (alias ``t``).

    Matched rows are rewritten only when ``hash_column`` differs; new keys are inserted; rows
    the batch lacks stay. So re-running the same batch changes nothing.
    """

    key: str
    hash_column: str

    @property
    def condition(self) -> str:
        return f"{TARGET}.{quote(self.key)} = {SOURCE}.{quote(self.key)}"

    @property
    def changed(self) -> str:
        return f"{TARGET}.{quote(self.hash_column)} <> {SOURCE}.{quote(self.hash_column)}"


def create_schema_sql(table: Table) -> str:
    return f"CREATE SCHEMA IF NOT EXISTS {quote(table.catalog)}.{quote(table.schema)}"


def replace_sql(table: Table, source_view: str) -> str:
    """Replace the table's content and schema with the view's rows in one Delta commit."""
    return (
        f"CREATE OR REPLACE TABLE {table.full_name} USING DELTA "
        f"AS SELECT * FROM {quote(source_view)}"
    )


def merge_sql(table: Table, source_view: str, upsert: Upsert) -> str:
    return (
        f"MERGE INTO {table.full_name} AS {TARGET} USING {quote(source_view)} AS {SOURCE} "
        f"ON {upsert.condition} "
        f"WHEN MATCHED AND {upsert.changed} THEN UPDATE SET * "
        "WHEN NOT MATCHED THEN INSERT *"
    )


def exists(spark: SparkSession, table: Table) -> bool:
    if on_databricks():
        return spark.catalog.tableExists(table.full_name)
    return table.local_path(spark).is_dir()


def read(spark: SparkSession, table: Table) -> DataFrame:
    if on_databricks():
        return spark.read.table(table.full_name)
    if not exists(spark, table):
        raise FileNotFoundError(
            f"Table {table.catalog}.{table.schema}.{table.name} does not exist "
            f"(no directory {table.local_path(spark)}): run the task that writes it first."
        )
    return spark.read.parquet(str(table.local_path(spark)))


def overwrite(df: DataFrame, table: Table) -> None:
    """Replace the table's content (and schema) with ``df``, all or nothing."""
    if on_databricks():
        _run_on_delta(df, lambda view: [create_schema_sql(table), replace_sql(table, view)])
        return
    _replace_local(df, table.local_path(df.sparkSession))


def upsert(batch: DataFrame, table: Table, *, key: str, hash_column: str) -> None:
    """Insert new keys, rewrite rows whose ``hash_column`` changed, leave the rest untouched.

    ``batch`` must hold one row per key. Re-running with the same batch changes nothing.
    """
    spark = batch.sparkSession
    if not exists(spark, table):
        overwrite(batch, table)
        return
    if on_databricks():
        _run_on_delta(batch, lambda view: [merge_sql(table, view, Upsert(key, hash_column))])
        return
    current = read(spark, table)
    changed = batch.join(current.select(key, hash_column), [key, hash_column], "left_anti")
    merged = current.join(changed.select(key), key, "left_anti").unionByName(changed)
    _replace_local(merged, table.local_path(spark))


def _run_on_delta(df: DataFrame, statements: Callable[[str], list[str]]) -> None:
    """Run ``statements(view)`` in order, ``view`` being a temporary view of ``df``."""
    spark = df.sparkSession
    view = f"batch_{uuid.uuid4().hex}"
    df.createOrReplaceTempView(view)
    try:
        for statement in statements(view):
            spark.sql(statement)
    finally:
        spark.catalog.dropTempView(view)


def _replace_local(df: DataFrame, path: Path) -> None:
    """Write next to ``path`` and swap by rename: readers never see a half-written table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.new")
    retired = path.with_name(f".{path.name}.{uuid.uuid4().hex}.old")
    try:
        df.write.mode("errorifexists").parquet(str(staging))
        if path.exists():
            path.rename(retired)
        staging.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
