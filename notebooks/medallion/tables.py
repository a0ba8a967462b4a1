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

Tables the single-site version created have no ``site`` column; before its first write to one,
each branch brings it to this layout as :func:`evolution` decides from its columns (README:
"Upgrading from the single-site layout").
"""

from __future__ import annotations

import enum
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
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
# The single-site version's lineage column in bronze (and so silver): the rows' site.
LEGACY_SITE = "_site"


class Evolution(enum.Enum):
    """What an existing table needs before this version writes it."""

    NONE = "has the site column"
    KEEP_ROWS = "renames the single-site version's _site column to site, keeping every row"
    DROP_ROWS = "no column says its rows' site: recreated empty"


def evolution(columns: Sequence[str] | None) -> Evolution:
    """Decide from an existing table's columns (None: no table).

    Bronze and silver rows of the single-site version name their site in ``_site``: they are
    kept, as that site's. Its gold rows do not (``Rank, Tag, Posts``; the post-users join):
    they cannot be told apart from another site's, and gold is recomputed from silver per site
    by each run, so the table starts empty (on Delta its old rows stay in the table's history).
    """
    if columns is None or SITE in columns:
        return Evolution.NONE
    return Evolution.KEEP_ROWS if LEGACY_SITE in columns else Evolution.DROP_ROWS


def evolution_sql(table: Table, columns: Sequence[str] | None, source_view: str) -> list[str]:
    """The Delta statement bringing ``table`` (its ``columns``) to this version's layout: one
    ``CREATE OR REPLACE TABLE ... CLUSTER BY (site)``, one commit, so a kill leaves the old
    table or the new one. The column order stays (``_site`` is where ``site`` now is), as
    ``INSERT INTO ... REPLACE WHERE`` matches columns by position."""
    decided = evolution(columns)
    if decided is Evolution.NONE:
        return []
    head = f"CREATE OR REPLACE TABLE {table.full_name} USING DELTA CLUSTER BY ({quote(SITE)}) AS "
    if decided is Evolution.DROP_ROWS:
        return [head + f"SELECT * FROM {quote(source_view)} WHERE false"]
    assert columns is not None
    projection = ", ".join(
        f"{quote(LEGACY_SITE)} AS {quote(SITE)}" if name == LEGACY_SITE else quote(name)
        for name in columns
    )
    return [head + f"SELECT {projection} FROM {table.full_name}"]


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
    spark = df.sparkSession
    if on_databricks():
        columns = _delta_columns(spark, table)
        _run_on_delta(checked, lambda view: [
            create_schema_sql(table), *evolution_sql(table, columns, view),
            create_sql(table, view), replace_site_sql(table, view, site),
        ])  # fmt: skip
        return
    _evolve_local(spark, table)
    _replace_local(checked, _site_path(spark, table, site))


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
        columns = _delta_columns(spark, table)
        if columns is None:
            replace_site(batch, table, site)
            return
        _run_on_delta(_ensure_one_site(batch, site), lambda view: [
            *evolution_sql(table, columns, view), merge_sql(table, view, spec),
        ])  # fmt: skip
        return
    _evolve_local(spark, table)
    if not _site_path(spark, table, site).is_dir():
        replace_site(batch, table, site)
        return
    current = read(spark, table, site)
    columns = [*keys, hash_column]
    changed = batch.join(current.select(*columns), columns, "left_anti")
    merged = current.join(changed.select(*keys), list(keys), "left_anti").unionByName(changed)
    replace_site(merged, table, site)


def _delta_columns(spark: SparkSession, table: Table) -> list[str] | None:
    """The Delta table's columns; None if it does not exist."""
    return spark.read.table(table.full_name).columns if exists(spark, table) else None


def _evolve_local(spark: SparkSession, table: Table) -> None:
    """The local branch of :func:`evolution`: the single-site version's table is Parquet files
    right in the table's directory; its rows move to their site's directory (``KEEP_ROWS``) or
    go (``DROP_ROWS``). The old files are deleted last, so a kill before repeats the move."""
    path = table.local_path(spark)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else []
    if not files:
        return
    legacy = spark.read.parquet(*map(str, files))
    if evolution(legacy.columns) is Evolution.KEEP_ROWS:
        rows = legacy.withColumnRenamed(LEGACY_SITE, SITE)
        for (site,) in rows.select(SITE).distinct().collect():
            _replace_local(rows.where(site_condition(site)), _site_path(spark, table, site))
    for item in path.iterdir():
        if item.is_file():
            item.unlink()


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
