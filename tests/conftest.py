"""Shared pytest set-up: an isolated AIRFLOW_HOME, a metadata DB, a moto S3 server over HTTP,
and the ``spark`` and ``k8s`` markers (``make test-fast`` leaves those tests out).

The environment is set at import time, before any test module imports Airflow.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from local import services

# The Databricks half's fixtures: `spark` (one local session) and `databricks_standin`.
pytest_plugins = ["tests.databricks_fixtures"]

REPO = Path(__file__).resolve().parents[1]
DAGS_FOLDER = REPO / "dags"

# In memory where there is a tmpfs: each SQLite commit on a disk waits for its fsync (~20 ms here,
# under 1 ms on /dev/shm), and a dag.test() run commits hundreds of times.
_AIRFLOW_HOME = Path(
    tempfile.mkdtemp(prefix="airflow-tests-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
)
os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME}/airflow.db",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(_AIRFLOW_HOME / "logs"),
        # The tests' dump servers listen on 127.0.0.1, which the producer refuses by default.
        **services.LOCAL_SOURCE_ENV,
    }
)
# `make test-fast` leaves out tests that start Spark (directly or through the stand-in); the
# Kubernetes tooling's test modules mark themselves `k8s`.
SPARK_FIXTURES = {"spark", "databricks_standin"}
# Session fixtures too heavy to start once per pytest-xdist worker: every test that uses one runs
# on the same worker (`--dist loadgroup`), which starts it once.
HEAVY_FIXTURES = {"spark": SPARK_FIXTURES, "local-stack": {"local_stack"}}


def _read_botocore_data_once() -> None:
    """Every boto3 client is made in a new botocore session, whose loader parses botocore's JSON
    models again (S3's service model, endpoints, rulesets: ~0.2 s of CPU) and lists its data
    directories again (~400 services). The tasks make one per check_source and ingest (~150 in
    the 50-site run), the tests many more. Parse each file and list each search path once per
    process: the loader already shares both between the clients of one session, and the files
    are installed, so what each client gets is unchanged."""
    import functools

    from botocore import loaders

    parse = functools.cache(loaders.JSONFileLoader().load_file)
    loaders.JSONFileLoader.load_file = lambda _, file_path: parse(file_path)
    listing = loaders.Loader.list_available_services  # botocore caches it per loader only
    listed: dict[tuple[tuple[str, ...], str], list[str]] = {}

    def list_available_services(self: loaders.Loader, type_name: str) -> list[str]:
        key = (tuple(self.search_paths), type_name)
        if key not in listed:
            listed[key] = listing(self, type_name)
        return listed[key]

    loaders.Loader.list_available_services = list_available_services


def _find_the_aws_callers_by_walking_frames() -> None:
    """The Amazon provider names the calling operator and executor in each client's user agent
    (``AwsGenericHook._get_caller``) by ``inspect.stack()``, which reads the source file of every
    frame on the stack: 40-100 ms per ``get_conn()`` in a test process that imported every test
    module, more than the client itself. The same frames walked with ``f_back`` give the same
    names (the function name, ``self`` and the globals need no source)."""
    import sys

    from airflow.providers.amazon.aws.hooks.base_aws import AwsGenericHook

    def frames() -> Iterator[object]:
        frame = sys._getframe(1)
        while frame is not None:
            yield frame
            frame = frame.f_back

    def operator_class_name(target_function_name: str) -> str | None:
        for frame in frames():
            if frame.f_code.co_name == target_function_name:
                return frame.f_locals["self"].__class__.__name__
        return None

    def executor_class_name() -> str | None:
        for frame in frames():
            classes = [name for name, obj in frame.f_globals.items() if isinstance(obj, type)]
            if "BaseExecutor" in classes:
                return classes[-1]
        return None

    AwsGenericHook._find_operator_class_name = staticmethod(operator_class_name)
    AwsGenericHook._find_executor_class_name = staticmethod(executor_class_name)


_read_botocore_data_once()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_AIRFLOW_HOME, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if SPARK_FIXTURES & fixtures:
            item.add_marker(pytest.mark.spark)
        for group, names in HEAVY_FIXTURES.items():
            if names & fixtures:
                item.add_marker(pytest.mark.xdist_group(group))
                break


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """A fresh Airflow metadata DB (SQLite) for the session."""
    from airflow.utils import db

    db.initdb()
    _reuse_the_in_process_execution_api()
    _serialize_the_dag_once_per_test_run()


def _reuse_the_in_process_execution_api() -> None:
    """``dag.test()`` in Airflow 3.0.2 builds a new in-process Execution API (a FastAPI app with
    Cadwyn's versioned routers, ~0.8 s here) for every task it runs: 50 mapped sites cost minutes.
    Airflow caches it since apache/airflow#65235 (one app per process, the DAG override replaced on
    each call); this backports that cache. What the tasks do and what the API answers is unchanged.
    """
    import functools

    from airflow.sdk.execution_time import supervisor

    if not hasattr(supervisor.in_process_api_server, "cache_info"):
        supervisor.in_process_api_server = functools.lru_cache(maxsize=1)(
            supervisor.in_process_api_server
        )


def _serialize_the_dag_once_per_test_run() -> None:
    """``dag.test()`` in Airflow 3.0.2 also serializes the DAG again for every task it runs (the
    Execution API reads its structure: upstream map indexes, fail_fast), ~150 times in the 50-site
    run. The DAG does not change during one ``dag.test()`` call, so its serialized copy is made
    for the first task of the call and handed to the API again for the others. (Later Airflow
    reads the serialized DAG from the metadata DB instead.)
    """
    import functools

    from airflow.api_fastapi.common.dagbag import dag_bag_from_app
    from airflow.sdk.definitions.dag import DAG
    from airflow.sdk.execution_time import supervisor

    if hasattr(DAG.test, "__wrapped__"):
        return
    api_client = supervisor.InProcessTestSupervisor._api_client
    overrides: dict[int, object] = {}  # id(dag) -> its DagBag override, during one dag.test()

    @functools.wraps(DAG.test)
    def test(self: DAG, *args: object, **kwargs: object) -> object:
        overrides.clear()
        try:
            return test.__wrapped__(self, *args, **kwargs)
        finally:
            overrides.clear()

    def client_of_this_run(dag: DAG | None = None) -> object:
        app = supervisor.in_process_api_server().app
        if dag is None or id(dag) not in overrides:
            client = api_client(dag)  # serializes the DAG (when given) for the API
            if dag is not None:
                overrides[id(dag)] = app.dependency_overrides[dag_bag_from_app]
            return client
        app.dependency_overrides[dag_bag_from_app] = overrides[id(dag)]
        return api_client(None)

    DAG.test = test
    supervisor.InProcessTestSupervisor._api_client = staticmethod(client_of_this_run)


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TMPDIR, where every temporary file of the code under test lands. ``tempfile``
    reads TMPDIR once and caches the directory (``tempfile.tempdir``): the cache is reset too,
    or the setting would be ignored."""
    directory = tmp_path / "tmpdir"
    directory.mkdir()
    monkeypatch.setenv("TMPDIR", str(directory))
    monkeypatch.setattr(tempfile, "tempdir", None)
    return directory


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's S3 server (a child process): real HTTP on 127.0.0.1; yields its URL. Once per
    process, before any AWS client is made: the provider's cheaper caller lookup (imported here,
    not at collection)."""
    _find_the_aws_callers_by_walking_frames()
    with services.MotoS3() as moto:
        yield moto.url


@pytest.fixture
def aws_conn(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The `aws_conn` Airflow connection pointing at the moto server (as an env var)."""
    monkeypatch.setenv("AIRFLOW_CONN_AWS_CONN", services.aws_conn(moto_server))
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    return moto_server
