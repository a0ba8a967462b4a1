"""Runtime of the medallion job on the local Databricks stand-in, on a generated 100k-post dump.

Starts ``python -m local.databricks_standin`` as the local stack does, runs the job twice through
the Jobs API (the first run includes JIT warm-up of the fresh Spark session) and prints figures.
Usage: ``python -m benchmarks.databricks_job [--posts N] [--users M]``
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from local.databricks_standin import read_table
from local.sample_dump import write_site
from local.services import free_port, wait_until

REPO = Path(__file__).resolve().parents[1]
JOB_TIMEOUT = 3600


def _run_job(base: str, token: str, parameters: dict[str, str]) -> tuple[float, str]:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    jobs = session.get(f"{base}/api/2.1/jobs/list", params={"name": "stackexchange_medallion"})
    job_id = jobs.json()["jobs"][0]["job_id"]
    started = time.perf_counter()
    run = session.post(
        f"{base}/api/2.1/jobs/run-now", json={"job_id": job_id, "job_parameters": parameters}
    )
    run_id = run.json()["run_id"]

    def terminated() -> dict | None:
        state = session.get(f"{base}/api/2.1/jobs/runs/get", params={"run_id": run_id}).json()
        return state["state"] if state["state"]["life_cycle_state"] == "TERMINATED" else None

    final = wait_until(f"job run {run_id} to end", terminated, timeout=JOB_TIMEOUT, interval=0.2)
    return time.perf_counter() - started, final.get("result_state", "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=10_000)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-databricks-") as tmp:
        work = Path(tmp)
        write_site(work / "dump", posts=args.posts, users=args.users, other_files=False)
        posts_mb = (work / "dump" / "Posts.xml").stat().st_size / 1e6
        token = secrets.token_hex(16)
        (work / "token").write_text(token)
        port = free_port()
        command = [
            sys.executable, "-m", "local.databricks_standin", "--port", str(port),
            "--token-file", str(work / "token"), "--warehouse", str(work / "warehouse"),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "notebooks"), str(REPO)])}
        started = time.perf_counter()
        with (
            open(work / "standin.log", "w") as log,
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env) as p,
        ):
            try:
                assert p.stdout is not None
                if not any(line.startswith("databricks stand-in listening") for line in p.stdout):
                    raise SystemExit(f"stand-in did not start; see {work / 'standin.log'}")
                startup = time.perf_counter() - started
                base = f"http://127.0.0.1:{port}"
                parameters = {
                    "posts_uri": str(work / "dump" / "Posts.xml"),
                    "users_uri": str(work / "dump" / "Users.xml"),
                    "site": "bench.example",
                    "posts_sha256": "0" * 64,
                    "users_sha256": "0" * 64,
                }
                first, first_result = _run_job(base, token, parameters)
                second, second_result = _run_job(base, token, parameters)
            finally:
                p.terminate()
                p.wait(timeout=60)
        rows = read_table(work / "warehouse", "silver_posts").num_rows

    print(f"dump: {args.posts} posts ({posts_mb:.0f} MB Posts.xml), {args.users} users")
    print(f"stand-in startup (until it listens; Spark starts in run 1): {startup:.1f} s")
    print(f"job run 1 (fresh JVM): {first:.1f} s {first_result}")
    print(f"job run 2 (warm, silver upsert of unchanged rows): {second:.1f} s {second_result}")
    print(f"silver_posts rows: {rows}")


if __name__ == "__main__":
    main()
