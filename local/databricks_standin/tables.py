"""Read a table the stand-in wrote, without Spark (Parquet directory, see ``medallion.tables``)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from local.databricks_standin.bundle import target_variables


def table_path(
    warehouse: Path, name: str, *, catalog: str | None = None, schema: str | None = None
) -> Path:
    """``<warehouse>/<catalog>/<schema>/<name>``; catalog and schema default to the bundle's."""
    variables = target_variables()
    return (
        Path(warehouse) / (catalog or variables["catalog"]) / (schema or variables["schema"]) / name
    )


def read_table(
    warehouse: Path, name: str, *, catalog: str | None = None, schema: str | None = None
) -> pa.Table:
    """The table ``name`` (e.g. ``gold_most_popular_tags``) as a pyarrow Table."""
    path = table_path(warehouse, name, catalog=catalog, schema=schema)
    if not path.is_dir():
        raise FileNotFoundError(f"No table {name} at {path}: has the job run successfully?")
    return pq.read_table(path)
