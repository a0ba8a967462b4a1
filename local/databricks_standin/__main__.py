"""Local Databricks Jobs API stand-in (a development tool, not Databricks).

Serves the Jobs API subset the Airflow provider uses on 127.0.0.1 and runs the bundle's job on a
local Spark session. Prints ``databricks stand-in listening on http://127.0.0.1:P`` when ready.
Usage: ``python -m local.databricks_standin --port P --token-file F --warehouse DIR``
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from local.databricks_standin.bundle import BUNDLE_DIR, load_jobs
from local.databricks_standin.runs import Runner
from local.databricks_standin.server import JobsApi, make_server


def _token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise SystemExit(f"Cannot read the token file {path}: {error}") from None
    if not token:
        raise SystemExit(f"The token file {path} is empty: write the bearer token clients use.")
    return token


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m local.databricks_standin", description=__doc__.split("Usage:")[0]
    )
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--token-file", type=Path, required=True, help="file holding the token")
    parser.add_argument("--warehouse", type=Path, required=True, help="directory for the tables")
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint for s3:// job parameters")
    parser.add_argument("--bundle", type=Path, default=BUNDLE_DIR, help="bundle directory")
    parser.add_argument("--target", help="bundle target for ${var.*} (default: its default)")
    args = parser.parse_args(argv)

    token = _token(args.token_file)
    bundle, warehouse = args.bundle.resolve(), args.warehouse.resolve()
    jobs = dict(enumerate(load_jobs(bundle, args.target), start=1))
    warehouse.mkdir(parents=True, exist_ok=True)
    # Notebooks put their working directory on sys.path, as on Databricks: be in the bundle.
    os.chdir(bundle)

    from local.databricks_standin.spark import lean_session

    spark = lean_session(warehouse)
    spark.sparkContext.setLogLevel("ERROR")
    base_url = f"http://127.0.0.1:{args.port}"
    try:
        server = make_server(
            args.port, token, JobsApi(jobs, Runner(spark, args.s3_endpoint, base_url))
        )
    except OSError as error:
        spark.stop()
        raise SystemExit(f"Cannot listen on 127.0.0.1:{args.port}: {error}") from None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    names = ", ".join(f"{job.name} (job_id {job_id})" for job_id, job in jobs.items())
    print(f"jobs: {names}; warehouse: {warehouse}", flush=True)
    print(f"databricks stand-in listening on {base_url}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        spark.stop()


if __name__ == "__main__":
    main()
