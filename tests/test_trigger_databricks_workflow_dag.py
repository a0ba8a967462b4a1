"""The consumer DAG drives the real DatabricksRunNowOperator against the local stand-in.

``dag.test()`` runs the tasks in-process and the trigger inline (Airflow 3.0.2). It creates a
manual run; a scheduler would attach the asset events that triggered the run, so the test
attaches real ``AssetEvent`` rows (registered through Airflow's AssetManager) to that run. The
pairs the events announce are written to moto's S3 server as the producer writes them (a
generation per ingest, the site's manifest naming it), which the stand-in reads too.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from local import services
from local.sample_dump import write_site
from local.services import s3_client
from stackexchange.assets import POSTS, USERS, raw_assets
from stackexchange.settings import Storage
from tests.databricks_fixtures import StandIn

DAGS = Path(__file__).resolve().parents[1] / "dags"
SITE = "conlang.example"
OTHER = "poetry.example"
STORAGE = Storage()
RAW = raw_assets(STORAGE)
RAW_POSTS, RAW_USERS = RAW[POSTS], RAW[USERS]


@pytest.fixture(scope="module")
def dump(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("dump")
    write_site(directory, posts=400, users=60, tag_style="pipe", seed=5, other_files=False)
    return {"posts": directory / "Posts.xml", "users": directory / "Users.xml"}


@pytest.fixture(scope="module")
def other_dump(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("other")
    write_site(directory, posts=150, users=30, tag_style="angle", seed=9, other_files=False)
    return {"posts": directory / "Posts.xml", "users": directory / "Users.xml"}


@pytest.fixture
def databricks_conn(databricks_standin: StandIn, monkeypatch: pytest.MonkeyPatch) -> StandIn:
    """``databricks_conn`` pointing at the stand-in; ``schema: http`` is the hook's URL scheme."""
    conn = services.databricks_conn(f"http://127.0.0.1:{databricks_standin.port}",
                                    databricks_standin.token)  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_DATABRICKS_CONN", conn)
    return databricks_standin


def _put(s3, uri: str, body: bytes) -> dict[str, str]:
    """Write ``body`` at ``uri``; the object's ETag (unquoted), VersionId and LastModified, as
    the producer announces them."""
    bucket, key = urlsplit(uri).netloc, urlsplit(uri).path.lstrip("/")
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    head = s3.head_object(Bucket=bucket, Key=key)
    return {
        "etag": head["ETag"].strip('"'),
        "version_id": head.get("VersionId"),
        "last_modified": head["LastModified"].astimezone(UTC).isoformat(),
    }


@pytest.fixture
def publish(aws_conn: str) -> Callable[..., tuple[dict, dict]]:
    """``publish(posts, users, site=SITE)``: write a pair as one ingest of ``site`` does (its own
    generation, then the site's manifest naming it); the two events' extras."""
    from stackexchange import publish as commit

    s3 = s3_client(aws_conn)
    s3.create_bucket(Bucket=STORAGE.bucket)  # idempotent in us-east-1: other tests made it

    def publish(posts: bytes, users: bytes, site: str = SITE) -> tuple[dict, dict]:
        keys = commit.SiteKeys.of(STORAGE, site)
        ingest_id = f"run-{uuid.uuid4().hex}#1"
        generation = commit.new_generation(ingest_id)
        extras, objects = [], {}
        for name, data in ((POSTS, posts), (USERS, users)):
            uri = keys.uri(keys.key(generation, name))
            identity = _put(s3, uri, data)
            extras.append({
                "uri": uri, "site": site, "bytes": len(data), "rows": data.count(b"<row "),
                "sha256": hashlib.sha256(data).hexdigest(), **identity,
                "source_url": "file:///dump.7z", "source_version": "test",
                "ingest_id": ingest_id, "generation": generation,
            })  # fmt: skip
            objects[name] = commit.PublishedObject(
                name, uri, identity["etag"], identity["version_id"], identity["last_modified"],
                len(data), 0, extras[-1]["sha256"], "file:///dump.7z", "test", 5 << 20,
            )  # fmt: skip
        manifest = commit.Manifest(site, ingest_id, generation, "now", objects)
        s3.put_object(Bucket=keys.bucket, Key=keys.manifest, Body=manifest.to_json())
        return extras[0], extras[1]

    return publish


@pytest.fixture
def published(publish, dump: dict[str, Path]) -> tuple[dict, dict]:
    """The generated dump published as the producer does: the two events' extras."""
    return publish(dump["posts"].read_bytes(), dump["users"].read_bytes())


@pytest.fixture
def run_on_events(airflow_db, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """Run a DAG with ``dag.test()`` as if the given raw-asset events had triggered it:
    ``run(dag, posts_extra, users_extra, ...)``, Posts and Users extras alternating."""
    monkeypatch.setenv("COLUMNS", "400")  # fewer wrapped lines in tracebacks
    from airflow.assets.manager import AssetManager
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.models import dag as dag_module
    from airflow.models.dagbag import DagBag
    from airflow.utils.session import create_session

    def run(dag, *extras: dict):
        DagBundlesManager().sync_bundles_to_db()
        bag = DagBag(dag_folder="/dev/null", include_examples=False)
        bag.bag_dag(dag)
        bag.sync_to_db("dags-folder", None)
        assets = [RAW_POSTS, RAW_USERS] * (len(extras) // 2)
        with create_session() as session:
            events = [
                AssetManager.register_asset_change(asset=asset, extra=extra, session=session)
                for asset, extra in zip(assets, extras, strict=True)
            ]
            event_ids = [event.id for event in events]
        original = dag_module._create_orm_dagrun

        def with_events(**kwargs):
            from airflow.models.asset import AssetEvent

            session = kwargs["session"]
            run = original(**kwargs)
            run.consumed_asset_events = list(
                session.query(AssetEvent).filter(AssetEvent.id.in_(event_ids))
            )
            session.flush()
            return run

        monkeypatch.setattr(dag_module, "_create_orm_dagrun", with_events)
        return dag.test()

    yield run


def _dag(parameters: dict[str, str] | None = None, **operator_kwargs):
    """The DAG file's DAG (fast polling, no retries), or just its operator on ``parameters``
    with other arguments (no check of the objects before the job run)."""
    from airflow.models.dagbag import DagBag
    from airflow.sdk import DAG

    from stackexchange.databricks_operator import RunJobOnAssetEventsOperator

    bag = DagBag(str(DAGS / "trigger_databricks_workflow_dag.py"), bundle_path=DAGS)
    dag = bag.dags["trigger_databricks_workflow_dag"]
    if parameters is None:
        for task in dag.tasks:
            task.retries = 0
        dag.get_task("run_medallion_job").partial_kwargs["polling_period_seconds"] = 1
        return dag
    name = abs(hash((frozenset(operator_kwargs.items()), frozenset(parameters.items()))))
    with DAG(dag_id=f"test_consumer_{name}", schedule=dag.timetable.asset_condition) as variant:
        RunJobOnAssetEventsOperator(
            task_id="run_medallion_job",
            databricks_conn_id="databricks_conn",
            polling_period_seconds=1,
            execution_timeout=timedelta(minutes=5),
            job_parameters=parameters,
            **operator_kwargs,
        )
    variant.relative_fileloc = Path(__file__).name
    return variant


def _parameters_of(posts: dict, users: dict) -> dict[str, str]:
    from stackexchange.databricks_job import job_parameters

    now = datetime.now(UTC)
    return job_parameters(_events((RAW_POSTS, posts, now), (RAW_USERS, users, now)), STORAGE)[0]


def _log(capfd: pytest.CaptureFixture[str]) -> str:
    """What the run printed, without colours and line wrapping of the rich traceback."""
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", capfd.readouterr().out).split())


def _states(dag_run) -> dict[str, str]:
    """Task states; a mapped task's instances by their name (the site)."""
    return {
        ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.rendered_map_index}]": ti.state
        for ti in dag_run.get_task_instances()
    }


def test_deferrable_run_processes_the_published_data(
    databricks_conn: StandIn, published: tuple[dict, dict], run_on_events, capfd
) -> None:
    from local.databricks_standin import read_table

    posts, users = published
    dag_run = run_on_events(_dag(), posts, users)
    out = _log(capfd)
    assert _states(dag_run) == {
        "check_announced_objects": "success",
        f"run_medallion_job[{SITE}]": "success",
    }, out[-3000:]
    assert "running trigger in line" in out  # the wait happened in the trigger
    assert f"{databricks_conn.url}/runs/" in out

    bronze = read_table(databricks_conn.warehouse, "bronze_posts").to_pylist()
    lineage = {(r["_source_uri"], r["_source_etag"], r["_source_sha256"]) for r in bronze}
    assert lineage == {(posts["uri"], posts["etag"], posts["sha256"])}
    assert {row["site"] for row in bronze} == {SITE}
    tags = read_table(databricks_conn.warehouse, "gold_most_popular_tags").to_pylist()
    assert [row["Rank"] for row in tags] == list(range(1, len(tags) + 1))


def test_two_sites_in_one_run_get_one_job_run_each_on_their_own_objects(
    databricks_conn: StandIn, publish, dump, other_dump, run_on_events, capfd
) -> None:
    """Two sites finished together: one consumer run, one job run per site, each on exactly
    its own pair; the tables keep both sites side by side."""
    from local.databricks_standin import read_table

    first = publish(dump["posts"].read_bytes(), dump["users"].read_bytes())
    second = publish(other_dump["posts"].read_bytes(), other_dump["users"].read_bytes(), OTHER)
    dag_run = run_on_events(_dag(), *first, *second)
    out = _log(capfd)
    assert _states(dag_run) == {
        "check_announced_objects": "success",
        f"run_medallion_job[{SITE}]": "success",
        f"run_medallion_job[{OTHER}]": "success",
    }, out[-3000:]
    bronze = read_table(databricks_conn.warehouse, "bronze_posts").to_pylist()
    by_site: dict[str, set] = {}
    for row in bronze:
        by_site.setdefault(row["site"], set()).add(row["_source_uri"])
    assert by_site == {SITE: {first[0]["uri"]}, OTHER: {second[0]["uri"]}}
    assert sum(1 for r in bronze if r["site"] == OTHER) == other_dump["posts"].read_bytes().count(
        b"<row "
    )
    gold = read_table(databricks_conn.warehouse, "gold_most_popular_tags").to_pylist()
    assert {row["site"] for row in gold} == {SITE, OTHER}


def test_a_superseded_pair_skips_the_run_before_databricks(
    databricks_conn: StandIn, publish, dump: dict[str, Path], run_on_events, capfd
) -> None:
    posts, users = publish(dump["posts"].read_bytes(), dump["users"].read_bytes())
    newer = publish(dump["posts"].read_bytes(), dump["users"].read_bytes() + b"\n")
    dag_run = run_on_events(_dag(), posts, users)
    out = _log(capfd)
    assert _states(dag_run)["check_announced_objects"] == "skipped"
    assert "superseded by a newer ingest" in out
    assert newer[0]["uri"] in out  # what the manifest names now
    assert "Run submitted" not in out


def test_an_event_naming_a_foreign_object_fails_before_databricks(
    databricks_conn: StandIn, published: tuple[dict, dict], run_on_events, capfd
) -> None:
    posts, users = published
    foreign = {**posts, "uri": "s3://another-teams-bucket/raw/stackexchange/Posts.xml"}
    dag_run = run_on_events(_dag(), foreign, users)
    out = _log(capfd)
    assert _states(dag_run)["check_announced_objects"] == "failed"
    assert "announces 's3://another-teams-bucket/raw/stackexchange/Posts.xml'" in out
    assert "Run submitted" not in out


@pytest.mark.parametrize("compared", ["etag", "size and last_modified"])
def test_bronze_refuses_an_object_replaced_after_the_dag_checked_it(
    databricks_conn: StandIn,
    publish,
    aws_conn: str,
    dump: dict[str, Path],
    run_on_events,
    capfd,
    compared: str,
) -> None:
    """The operator alone (no check before): bronze's own check catches an object overwritten
    since its event, by ETag, or without one (what serverless compares) by size and
    last_modified."""
    posts, users = publish(dump["posts"].read_bytes(), dump["users"].read_bytes())
    newer = _put(s3_client(aws_conn), posts["uri"], dump["posts"].read_bytes() + b"\n")
    if compared == "etag":
        expected = f"announced ETag {posts['etag']}, now ETag {newer['etag']}"
    else:
        posts = {**posts, "etag": None, "version_id": None}
        expected = (
            f"announced {posts['bytes']} bytes, last modified {posts['last_modified']}, "
            f"now {posts['bytes'] + 1} bytes, last modified {newer['last_modified']}"
        )
    dag = _dag(_parameters_of(posts, users), job_name="stackexchange_medallion", deferrable=False)
    dag_run = run_on_events(dag, posts, users)
    out = _log(capfd)
    assert _states(dag_run) == {"run_medallion_job": "failed"}
    assert "'task_key': 'bronze_posts'" in out
    assert (
        f"{posts['uri']} was superseded by a newer ingest ({expected}); its own asset events "
        "trigger a run"
    ) in out


def test_failed_notebook_fails_the_task_with_url_and_message(
    databricks_conn: StandIn, publish, dump: dict[str, Path], run_on_events, capfd
) -> None:
    malformed = b'<posts>\r\n  <row Id="not-a-number" />\r\n</posts>'
    dag_run = run_on_events(_dag(), *publish(malformed, dump["users"].read_bytes()))
    out = _log(capfd)
    assert _states(dag_run)[f"run_medallion_job[{SITE}]"] == "failed"
    assert "Task bronze_posts failed with message" in out
    assert "FAILED_READ_FILE" in out  # the failing task's own error, from runs/get-output
    assert f"{databricks_conn.url}/runs/" in out


def test_one_sites_failed_job_run_fails_its_own_task_only(
    databricks_conn: StandIn, publish, dump, other_dump, run_on_events, capfd
) -> None:
    malformed = b'<posts>\r\n  <row Id="not-a-number" />\r\n</posts>'
    bad = publish(malformed, dump["users"].read_bytes())
    good = publish(other_dump["posts"].read_bytes(), other_dump["users"].read_bytes(), OTHER)
    dag_run = run_on_events(_dag(), *bad, *good)
    states = _states(dag_run)
    assert states[f"run_medallion_job[{SITE}]"] == "failed"
    assert states[f"run_medallion_job[{OTHER}]"] == "success", _log(capfd)[-3000:]


def test_not_deferrable_run_succeeds(
    databricks_conn: StandIn, published: tuple[dict, dict], run_on_events, capfd
) -> None:
    dag = _dag(_parameters_of(*published), job_name="stackexchange_medallion", deferrable=False)
    dag_run = run_on_events(dag, *published)
    out = _log(capfd)
    assert _states(dag_run) == {"run_medallion_job": "success"}, out[-3000:]
    assert "run_medallion_job completed successfully" in out
    assert "running trigger in line" not in out


@pytest.mark.parametrize("deferrable", [True, False])
def test_unknown_job_name_is_a_clear_error(
    databricks_conn: StandIn, published: tuple[dict, dict], run_on_events, capfd, deferrable: bool
) -> None:
    dag = _dag(_parameters_of(*published), job_name="no_such_job", deferrable=deferrable)
    dag_run = run_on_events(dag, *published)
    assert _states(dag_run) == {"run_medallion_job": "failed"}
    assert "Job ID for job name no_such_job can not be found" in _log(capfd)


def _events(*events: tuple) -> object:
    """Airflow's own accessor over (asset, extra, timestamp) events, as the task context has."""
    from airflow.sdk.api.datamodels._generated import AssetReferenceAssetEventDagRun
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    return TriggeringAssetEventsAccessor.build(
        AssetEventDagRunReferenceResult(
            asset=AssetReferenceAssetEventDagRun(name=asset.name, uri=asset.uri, extra={}),
            extra=extra,
            source_aliases=[],
            timestamp=timestamp,
        )
        for asset, extra, timestamp in events
    )


def _extra(asset, site: str = "s", ingest: str = "i#1", **values: object) -> dict[str, object]:
    member = asset.uri.rsplit("/", 1)[-1]
    uri = f"s3://{STORAGE.bucket}/{STORAGE.prefix}/{site}/g-{ingest[0]}/{member}"
    return {"site": site, "uri": uri, "sha256": "x", "ingest_id": ingest, **values}


def test_job_parameters_come_from_the_newest_pair_of_each_site() -> None:
    from stackexchange.databricks_job import job_parameters

    old, new = datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC)
    events = _events(
        (RAW_POSTS, _extra(RAW_POSTS, ingest="n#1", sha256="p2", etag="e2-3", version_id="v2",
                           bytes=2048, last_modified="2025-02-01T00:00:07+00:00"), new),
        (RAW_USERS, _extra(RAW_USERS, ingest="n#1", sha256="u2", etag="eu2", version_id=None,
                           bytes=0, last_modified="2025-02-01T00:00:03+00:00"), new),
        (RAW_POSTS, _extra(RAW_POSTS, ingest="o#1", sha256="p1"), old),
        (RAW_USERS, _extra(RAW_USERS, ingest="o#1", sha256="u1"), old),
        (RAW_POSTS, _extra(RAW_POSTS, site="t", ingest="t#1", sha256="tp"), old),
        (RAW_USERS, _extra(RAW_USERS, site="t", ingest="t#1", sha256="tu"), old),
    )  # fmt: skip
    runs = job_parameters(events, STORAGE)
    assert [run["site"] for run in runs] == ["s", "t"]  # one job run per site
    assert runs[0] == {
        "posts_uri": f"s3://{STORAGE.bucket}/{STORAGE.prefix}/s/g-n/Posts.xml",
        "users_uri": f"s3://{STORAGE.bucket}/{STORAGE.prefix}/s/g-n/Users.xml",
        "site": "s",
        "posts_sha256": "p2",
        "users_sha256": "u2",
        "posts_etag": "e2-3",
        "users_etag": "eu2",
        "posts_version_id": "v2",
        "users_version_id": "",
        "posts_bytes": "2048",
        "users_bytes": "0",
        "posts_last_modified": "2025-02-01T00:00:07+00:00",
        "users_last_modified": "2025-02-01T00:00:03+00:00",
    }
    assert (runs[1]["posts_sha256"], runs[1]["users_sha256"]) == ("tp", "tu")


def test_a_site_with_only_one_file_announced_gets_no_job_run() -> None:
    from stackexchange.databricks_job import job_parameters

    now = datetime.now(UTC)
    events = _events(
        (RAW_POSTS, _extra(RAW_POSTS, ingest="a#1"), now),
        (RAW_USERS, _extra(RAW_USERS, ingest="b#1"), now),
    )
    assert job_parameters(events, STORAGE) == []


def test_events_of_older_producers_leave_what_they_lack_empty() -> None:
    from stackexchange.databricks_job import job_parameters

    now = datetime.now(UTC)

    def identity(posts: dict, users: dict) -> dict[str, str]:
        events = _events((RAW_POSTS, posts, now), (RAW_USERS, users, now))
        parameters = job_parameters(events, STORAGE)[0]
        keys = ("etag", "version_id", "bytes", "last_modified")
        return {f"{p}_{k}": parameters[f"{p}_{k}"] for p in ("posts", "users") for k in keys}

    sha256_only = identity(_extra(RAW_POSTS), _extra(RAW_USERS))
    assert set(sha256_only.values()) == {""}
    etag_era = identity(
        _extra(RAW_POSTS, etag="e1", version_id=None, bytes=8),
        _extra(RAW_USERS, etag="e2", version_id=None, bytes=9),
    )
    assert etag_era == {
        "posts_etag": "e1", "posts_version_id": "", "posts_bytes": "8", "posts_last_modified": "",
        "users_etag": "e2", "users_version_id": "", "users_bytes": "9", "users_last_modified": "",
    }  # fmt: skip


@pytest.mark.parametrize(
    "uri",
    [
        "s3://another-teams-bucket/Users.xml",
        f"s3://{STORAGE.bucket}/{STORAGE.prefix}/other-site/g/Users.xml",
        f"s3://{STORAGE.bucket}/{STORAGE.prefix}/s/Users.xml",
        f"s3://{STORAGE.bucket}/{STORAGE.prefix}/s/g/Posts.xml",
    ],
    ids=["bucket", "another site", "no generation", "another table"],
)
def test_an_event_announcing_another_object_is_refused(uri: str) -> None:
    from airflow.exceptions import AirflowFailException

    from stackexchange.databricks_job import job_parameters

    now = datetime.now(UTC)
    forged = _extra(RAW_USERS, uri=uri)
    with pytest.raises(AirflowFailException) as raised:
        job_parameters(_events((RAW_POSTS, _extra(RAW_POSTS), now), (RAW_USERS, forged, now)),
                       STORAGE)  # fmt: skip
    message = str(raised.value)
    assert f"Asset event of stackexchange_raw_users announces {uri!r}" in message
    assert "which is not a Users.xml of site 's'" in message


def test_job_parameters_name_what_is_missing() -> None:
    from airflow.exceptions import AirflowFailException

    from stackexchange.databricks_job import job_parameters

    now = datetime.now(UTC)
    with pytest.raises(AirflowFailException, match="No triggering event for asset .*users"):
        job_parameters(_events((RAW_POSTS, _extra(RAW_POSTS), now)), STORAGE)
    lacking = _events((RAW_POSTS, _extra(RAW_POSTS), now), (RAW_USERS, {"site": "s"}, now))
    with pytest.raises(AirflowFailException, match=r"lacks \['sha256', 'uri'\]"):
        job_parameters(lacking, STORAGE)


def test_still_published_keeps_current_pairs_and_leaves_out_superseded_ones(
    publish, dump: dict[str, Path], caplog
) -> None:
    from airflow.exceptions import AirflowSkipException

    from stackexchange.databricks_job import still_published

    posts, users = publish(dump["posts"].read_bytes(), dump["users"].read_bytes())
    current = _parameters_of(posts, users)
    other = _parameters_of(*publish(b"<posts/>", b"<users/>", OTHER))
    assert still_published([current, other], "aws_conn", STORAGE) == [current, other]
    publish(b"<posts/>", b"<users>newer</users>")  # a newer ingest of SITE
    with caplog.at_level(logging.WARNING, logger="stackexchange.databricks_job"):
        assert still_published([current, other], "aws_conn", STORAGE) == [other]
    assert f"{SITE}: its manifest" in caplog.text and "superseded" in caplog.text
    with pytest.raises(AirflowSkipException, match="every announced pair was superseded"):
        still_published([current], "aws_conn", STORAGE)


@pytest.mark.parametrize("producer", ["current", "older (no etag in its events)"])
def test_an_announced_object_overwritten_in_place_fails(
    publish, aws_conn: str, producer: str
) -> None:
    """Checked against the manifest's record, so also when the events carry no ETag."""
    from airflow.exceptions import AirflowFailException

    from stackexchange.databricks_job import still_published

    posts, users = publish(b"<posts/>", b"<users/>")
    if producer != "current":
        posts, users = ({**extra, "etag": None, "version_id": None} for extra in (posts, users))
    _put(s3_client(aws_conn), users["uri"], b"<users>foreign</users>")
    with pytest.raises(AirflowFailException, match="something else wrote") as raised:
        still_published([_parameters_of(posts, users)], "aws_conn", STORAGE)
    assert f"{users['uri']} is not the object the manifest records" in str(raised.value)


def test_an_announced_object_deleted_fails(publish, aws_conn: str) -> None:
    from airflow.exceptions import AirflowFailException

    from stackexchange.databricks_job import still_published

    posts, users = publish(b"<posts/>", b"<users/>")
    bucket, key = urlsplit(posts["uri"]).netloc, urlsplit(posts["uri"]).path.lstrip("/")
    s3_client(aws_conn).delete_object(Bucket=bucket, Key=key)
    with pytest.raises(AirflowFailException, match=f"{posts['uri']} is missing") as raised:
        still_published([_parameters_of(posts, users)], "aws_conn", STORAGE)
    assert f"the manifest of {SITE} names it" in str(raised.value)
    assert "with force=true" in str(raised.value)


def test_a_missing_aws_conn_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.exceptions import AirflowFailException

    from stackexchange.databricks_job import still_published

    monkeypatch.delenv("AIRFLOW_CONN_AWS_CONN", raising=False)
    with pytest.raises(AirflowFailException, match="connection 'aws_conn' is not defined"):
        still_published([{"site": SITE}], "aws_conn", STORAGE)


def test_job_id_from_the_environment_replaces_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from stackexchange.databricks_job import job_lookup

    monkeypatch.setenv("DATABRICKS_JOB_ID", " 123 ")
    assert job_lookup() == {"job_id": "123"}
    monkeypatch.setenv("DATABRICKS_JOB_ID", "stackexchange_medallion")
    with pytest.raises(ValueError, match="DATABRICKS_JOB_ID must be a numeric"):
        job_lookup()


def test_the_poll_period_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from stackexchange.databricks_job import poll_seconds

    monkeypatch.delenv("DATABRICKS_POLL_SECONDS", raising=False)
    assert poll_seconds() == 30
    monkeypatch.setenv("DATABRICKS_POLL_SECONDS", " 5 ")
    assert poll_seconds() == 5
    for bad in ("0", "-1", "2.5", "soon"):
        monkeypatch.setenv("DATABRICKS_POLL_SECONDS", bad)
        with pytest.raises(ValueError, match="DATABRICKS_POLL_SECONDS must be a whole number"):
            poll_seconds()


def test_the_dag_waits_for_both_assets(airflow_db) -> None:
    from airflow.assets.evaluation import AssetEvaluator
    from airflow.sdk.definitions.asset import AssetUniqueKey
    from airflow.utils.session import create_session

    condition = _dag().timetable.asset_condition
    posts, users = AssetUniqueKey.from_asset(RAW_POSTS), AssetUniqueKey.from_asset(RAW_USERS)
    with create_session() as session:  # the scheduler's evaluator of asset conditions
        ready = AssetEvaluator(session).run
        assert not ready(condition, {posts: True, users: False})
        assert not ready(condition, {posts: False, users: True})
        assert ready(condition, {posts: True, users: True})
