"""Where the job's tables live: the one Delta-specific module.

On Databricks (``DATABRICKS_RUNTIME_VERSION`` is set) tables are Unity Catalog Delta tables
``catalog.schema.name`` and the upsert is a Delta ``MERGE``. Elsewhere (the local stand-in,
tests) a table is a Parquet directory ``<spark.sql.warehouse.dir>/<catalog>/<schema>/<name>``,
replaced atomically by a rename, with the same upsert semantics.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pyspark.sql import DataFrame, SparkSession


def on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


@dataclass(frozen=True)
class Table:
    catalog: str
    schema: str
    name: str

    @property
    def full_name(self) -> str:
        return f"`{self.catalog}`.`{self.schema}`.`{self.name}`"

    def local_path(self, spark: SparkSession) -> Path:
        warehouse = spark.conf.get("spark.sql.warehouse.dir") or "spark-warehouse"
        return Path(urlsplit(warehouse).path) / self.catalog / self.schema / self.name


def exists(spark: SparkSession, table: Table) -> bool:
    if on_databricks():
        return spark.catalog.tableExists(f"{table.catalog}.{table.schema}.{table.name}")
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
    spark = df.sparkSession
    if on_databricks():
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS `{table.catalog}`.`{table.schema}`")
        (
            df.write.format("delta")
            .mode("overwrite")
            .option("overwriteSchema", "true")
            .saveAsTable(table.full_name)
        )
        return
    _replace_local(df, table.local_path(spark))


def upsert(batch: DataFrame, table: Table, *, key: str, hash_column: str) -> None:
    """Insert new keys, rewrite rows whose ``hash_column`` changed, leave the rest untouched.

    ``batch`` must hold one row per key. Re-running with the same batch changes nothing.
    """
    spark = batch.sparkSession
    if not exists(spark, table):
        overwrite(batch, table)
        return
    if on_databricks():
        view = f"upsert_{uuid.uuid4().hex}"
        batch.createOrReplaceTempView(view)
        try:
            spark.sql(
                f"MERGE INTO {table.full_name} AS t USING {view} AS s ON t.`{key}` = s.`{key}` "
                f"WHEN MATCHED AND t.`{hash_column}` <> s.`{hash_column}` THEN UPDATE SET * "
                "WHEN NOT MATCHED THEN INSERT *"
            )
        finally:
            spark.catalog.dropTempView(view)
        return
    current = read(spark, table)
    changed = batch.join(current.select(key, hash_column), [key, hash_column], "left_anti")
    merged = current.join(changed.select(key), key, "left_anti").unionByName(changed)
    _replace_local(merged, table.local_path(spark))


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
