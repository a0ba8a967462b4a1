"""Where the job's tables live: the one Delta-specific module.

Every table holds many sites side by side: its ``site`` column is the clustering key, and a job
run writes only its own site's rows. On Databricks (``DATABRICKS_RUNTIME_VERSION`` is set)
tables are Unity Catalog Delta tables ``catalog.schema.name``, written by the SQL statements the
pure functions below produce (``CREATE TABLE IF NOT EXISTS ... CLUSTER BY (site)``,
``INSERT INTO ... REPLACE WHERE site = ...``, Delta ``MERGE INTO`` with the site in its
condition); ``_run_on_delta`` is the only code that executes them, and the tests parse the same
text with Spark's SQL parser and apply the same specs to a real Delta table (``deltalake``).
Elsewhere (the local stand-in, tests) a table is a directory
``<spark.sql.warehouse.dir>/<catalog>/<schema>/<name>/<site>/`` of Parquet files per site, each
site's directory replaced atomically by a rename, with the same semantics.
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


SITE = "site"


def sql_string(value: str) -> str:
    """``value`` as a Spark SQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def site_condition(site: str, alias: str | None = None) -> str:
    column = f"{alias}.{quote(SITE)}" if alias else quote(SITE)
    return f"{column} = {sql_string(site)}"


@dataclass(frozen=True)
class Upsert:
    """How a batch (alias ``s``) of one ``site`` with one row per ``keys`` merges into a table
    (alias ``t``). Only the site's rows are matched (the site is in the condition); matched rows
    are rewritten only when ``hash_column`` differs; new keys are inserted; rows the batch lacks
    stay. So re-running the same batch changes nothing, and no other site's row is touched.
    """

    keys: tuple[str, ...]
    hash_column: str
    site: str

    @property
    def condition(self) -> str:
        joined = [f"{TARGET}.{quote(key)} = {SOURCE}.{quote(key)}" for key in self.keys]
        return " AND ".join([site_condition(self.site, TARGET), *joined])

    @property
    def changed(self) -> str:
        return f"{TARGET}.{quote(self.hash_column)} <> {SOURCE}.{quote(self.hash_column)}"


def create_schema_sql(table: Table) -> str:
    return f"CREATE SCHEMA IF NOT EXISTS {quote(table.catalog)}.{quote(table.schema)}"


def create_sql(table: Table, source_view: str) -> str:
    """Create the table, empty, with the view's columns, clustered by site, if it is missing."""
    return (
        f"CREATE TABLE IF NOT EXISTS {table.full_name} USING DELTA CLUSTER BY ({quote(SITE)}) "
        f"AS SELECT * FROM {quote(source_view)} WHERE false"
    )


def replace_site_sql(table: Table, source_view: str, site: str) -> str:
    """Replace the site's rows with the view's in one Delta commit; other sites' stay."""
    return (
        f"INSERT INTO {table.full_name} REPLACE WHERE {site_condition(site)} "
        f"SELECT * FROM {quote(source_view)}"
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


def _site_path(spark: SparkSession, table: Table, site: str) -> Path:
    if not site or "/" in site or site.startswith("."):
        raise ValueError(f"{site!r} is not a site name")
    return table.local_path(spark) / site


def read(spark: SparkSession, table: Table, site: str | None = None) -> DataFrame:
    """The table, or only ``site``'s rows."""
    if on_databricks():
        df = spark.read.table(table.full_name)
        return df.where(site_condition(site)) if site else df
    if not exists(spark, table):
        raise FileNotFoundError(
            f"Table {table.catalog}.{table.schema}.{table.name} does not exist "
            f"(no directory {table.local_path(spark)}): run the task that writes it first."
        )
    path = _site_path(spark, table, site) if site else table.local_path(spark)
    if site and not path.is_dir():
        raise FileNotFoundError(
            f"Table {table.catalog}.{table.schema}.{table.name} has no rows of {site} "
            f"(no directory {path}): run the task that writes them first."
        )
    return spark.read.option("recursiveFileLookup", "true").parquet(str(path))


def _ensure_one_site(df: DataFrame, site: str) -> DataFrame:
    """``df`` with its ``site`` column checked at write time: every row must be ``site``'s."""
    from pyspark.sql import functions as F

    message = f"a row of another site than {site} in a batch of {site}"
    check = F.assert_true(F.col(SITE) == F.lit(site), F.lit(message))
    return df.where(check.isNull())


def replace_site(df: DataFrame, table: Table, site: str) -> None:
    """Replace ``site``'s rows of ``table`` with ``df`` (all of them ``site``'s), all or nothing;
    the other sites' rows are not touched."""
    checked = _ensure_one_site(df, site)
    if on_databricks():
        _run_on_delta(checked, lambda view: [
            create_schema_sql(table), create_sql(table, view), replace_site_sql(table, view, site),
        ])  # fmt: skip
        return
    _replace_local(checked, _site_path(df.sparkSession, table, site))


def upsert(
    batch: DataFrame, table: Table, *, keys: tuple[str, ...], hash_column: str, site: str
) -> None:
    """Insert new keys of ``site``, rewrite its rows whose ``hash_column`` changed, leave the
    rest (and every other site) untouched.

    ``batch`` must hold one row per key, all of ``site``. Re-running it changes nothing.
    """
    spark = batch.sparkSession
    spec = Upsert(keys, hash_column, site)
    if on_databricks():
        if not exists(spark, table):
            replace_site(batch, table, site)
            return
        _run_on_delta(_ensure_one_site(batch, site), lambda view: [merge_sql(table, view, spec)])
        return
    if not _site_path(spark, table, site).is_dir():
        replace_site(batch, table, site)
        return
    current = read(spark, table, site)
    columns = [*keys, hash_column]
    changed = batch.join(current.select(*columns), columns, "left_anti")
    merged = current.join(changed.select(*keys), list(keys), "left_anti").unionByName(changed)
    replace_site(merged, table, site)


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
