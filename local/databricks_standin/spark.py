"""One lean local Spark session for a 2-core machine (tests and the stand-in share the recipe)."""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import SparkSession

# C1-only JIT: short Spark jobs spend most of their time compiling; this roughly halves wall time.
DRIVER_JAVA_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xss4m"


def lean_session(warehouse: Path, app_name: str = "databricks-standin") -> SparkSession:
    """A local[2] session bound to 127.0.0.1, UTC, 2 shuffle partitions, no UI."""
    return (
        SparkSession.builder.master("local[2]")
        .appName(app_name)
        .config("spark.driver.extraJavaOptions", DRIVER_JAVA_OPTIONS)
        .config("spark.driver.memory", "1g")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.warehouse.dir", str(Path(warehouse).resolve()))
        .getOrCreate()
    )
