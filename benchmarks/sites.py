"""The scheduler's cost per mapped site: ``sites=["all"]`` over N tiny sites, against the sum of
the same N single-site ingests called directly.

Both against a local HTTP mirror (generated file list) and moto's S3 server. The DAG runs with
``dag.test()`` (tasks one after another, in-process), so the difference is what Airflow adds per
mapped site (two mapped task instances, XCom, asset events), not parallelism. Usage:
``python -m benchmarks.sites [--sites 50]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=50)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-sites-") as tmp:
        home = Path(tmp) / "airflow"
        home.mkdir()
        os.environ.update({
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "STACKEXCHANGE_ALLOWED_HOSTS": "127.0.0.1,localhost",
        })  # fmt: skip
        _run(Path(tmp), args.sites)


def _run(tmp: Path, count: int) -> None:
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.models import DagBag
    from airflow.utils import db

    from local import services
    from local.sample_dump import build_dump, write_file_list
    from local.stack.state import REPO
    from stackexchange import ingest
    from stackexchange.settings import Storage
    from tests.http_fixtures import DumpServer

    item = tmp / "mirror" / "stackexchange"
    item.mkdir(parents=True)
    one = build_dump(tmp / "one.7z", posts=4, users=2, other_files=False).read_bytes()
    sites = [f"s{n:03d}.stackexchange.com" for n in range(count)]
    for site in sites:
        (item / f"{site}.7z").write_bytes(one)
    write_file_list(item)
    with services.MotoS3() as moto, DumpServer(tmp / "mirror") as server:
        os.environ["AIRFLOW_CONN_AWS_CONN"] = services.aws_conn(moto.url)
        client = services.s3_client(moto.url)
        storage = Storage()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=storage.bucket)
        base = f"{server.url}/stackexchange"

        started = time.monotonic()
        for site in sites:
            ingest.ingest(site, base, "aws_conn", f"direct#{site}", Storage(prefix="direct"))
        direct = time.monotonic() - started

        db.initdb()
        DagBundlesManager().sync_bundles_to_db()
        bag = DagBag(dag_folder=str(REPO / "dags"), include_examples=False)
        bag.sync_to_db("dags-folder", None)
        conf = {"sites": ["all"], "source_base_url": base, "force": False,
                "include_meta": False, "dry_run": False}  # fmt: skip
        started = time.monotonic()
        run = bag.dags["produce_data_asset"].test(run_conf=conf)
        mapped = time.monotonic() - started
        assert run.state == "success", run.state
    per_site = (mapped - direct) / count
    print(f"{count} tiny sites ({os.cpu_count()} CPUs):")
    print(f"  sum of single-site ingests (direct calls)   {direct:7.1f} s")
    print(f"  one DAG run, sites=all (dag.test, mapped)   {mapped:7.1f} s")
    print(f"  Airflow's cost per mapped site              {per_site:7.2f} s")


if __name__ == "__main__":
    main()
