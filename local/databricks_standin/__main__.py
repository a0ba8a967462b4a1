"""Local Databricks Jobs API stand-in (a development tool, not Databricks).

Serves, on 127.0.0.1, the Jobs API 2.2/2.1/2.0 calls the Airflow provider, the Databricks SDK and
CLI make for the bundle's job, and runs that job's notebooks on a local Spark session (started by
the first notebook that uses it). Runs are kept in the state directory, so run ids never repeat
across restarts. Prints ``databricks stand-in listening on http://127.0.0.1:P`` when ready.
Usage: ``python -m local.databricks_standin --port P --token-file F --warehouse DIR``
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from local.databricks_standin.bundle import BUNDLE_DIR, load_jobs
from local.databricks_standin.runs import Runner
from local.databricks_standin.server import JobsApi, make_server
from local.databricks_standin.store import StateDir, StateDirInUse

DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "standin", "AWS_SECRET_ACCESS_KEY": "standin"}


def _token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise SystemExit(f"Cannot read the token file {path}: {error}") from None
    if not token:
        raise SystemExit(f"The token file {path} is empty: write the bearer token clients use.")
    return token


def _use_s3_endpoint(endpoint: str) -> None:
    """Point boto3 in this process at ``endpoint``: the notebooks run here check S3 objects.

    Credentials already in the environment are kept; without any, dummy ones are set (an
    S3-compatible test server such as moto accepts any).
    """
    os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
    if not any(name in os.environ for name in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE")):
        os.environ.update(DUMMY_CREDENTIALS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m local.databricks_standin", description=__doc__.split("Usage:")[0]
    )
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--token-file", type=Path, required=True, help="file holding the token")
    parser.add_argument("--warehouse", type=Path, required=True, help="directory for the tables")
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="directory keeping the runs across restarts and the runs' s3:// downloads "
        "(default: WAREHOUSE/.databricks-state)",
    )
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint for s3:// job parameters")
    parser.add_argument("--bundle", type=Path, default=BUNDLE_DIR, help="bundle directory")
    parser.add_argument("--target", help="bundle target for ${var.*} (default: its default)")
    parser.add_argument(
        "--start-spark",
        action="store_true",
        help="start the Spark session now, in the background, not with the first notebook "
        "(the local stack: the JVM starts while Airflow does)",
    )
    parser.add_argument(
        "--phase-seconds",
        type=float,
        default=0.2,
        help="least time a run spends PENDING, RUNNING and TERMINATING (default 0.2)",
    )
    args = parser.parse_args(argv)
    if args.phase_seconds < 0:
        parser.error(f"--phase-seconds must be >= 0, not {args.phase_seconds}")

    token = _token(args.token_file)
    bundle, warehouse = args.bundle.resolve(), args.warehouse.resolve()
    # One warehouse, one workspace: by default the runs live with the tables.
    state_dir = (args.state_dir or warehouse / ".databricks-state").resolve()
    jobs = dict(enumerate(load_jobs(bundle, args.target), start=1))
    warehouse.mkdir(parents=True, exist_ok=True)
    # Notebooks put their working directory on sys.path, as on Databricks: be in the bundle.
    os.chdir(bundle)
    if args.s3_endpoint:
        _use_s3_endpoint(args.s3_endpoint)

    from local.databricks_standin.notebooks import NotebookTasks
    from local.databricks_standin.spark import lean_session

    def session():  # -> SparkSession, started by the first notebook that uses it
        spark = lean_session(warehouse)
        spark.sparkContext.setLogLevel("ERROR")
        return spark

    base_url = f"http://127.0.0.1:{args.port}"
    try:
        state = StateDir(state_dir)
    except (StateDirInUse, OSError) as error:
        raise SystemExit(str(error)) from None
    notebooks = NotebookTasks(session, args.s3_endpoint, state.downloads)
    try:
        runner = Runner(notebooks, base_url, args.phase_seconds, state)
        server = make_server(args.port, token, JobsApi(jobs, runner))
    except ValueError as error:  # an unreadable state file
        raise SystemExit(str(error)) from None
    except OSError as error:
        raise SystemExit(f"Cannot listen on 127.0.0.1:{args.port}: {error}") from None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    names = ", ".join(f"{job.name} (job_id {job_id})" for job_id, job in jobs.items())
    print(f"jobs: {names}; warehouse: {warehouse}; state: {state_dir}", flush=True)
    print(f"databricks stand-in listening on {base_url}", flush=True)
    if args.start_spark:  # a failure here is the first notebook's to report: it starts it again
        threading.Thread(target=notebooks.session, name="start-spark", daemon=True).start()
    try:
        server.serve_forever()
    finally:
        server.server_close()
        notebooks.stop()


if __name__ == "__main__":
    main()
