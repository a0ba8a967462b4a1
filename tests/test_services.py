"""local/services.py: moto's S3 server starts, answers, stops; waits, ports and connections."""

from __future__ import annotations

import io
import json
import socket
import time

import psutil
import pytest

from local import services
from local.services import MotoS3, WaitTimeout


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_moto_starts_answers_and_stops_without_leftovers() -> None:
    moto = MotoS3()
    assert not services.port_in_use(moto.port)
    with moto:
        assert moto.answers()
        assert services.port_in_use(moto.port)
        assert moto._process is not None
        server = psutil.Process(moto._process.pid)
        family = [server, *server.children(recursive=True)]
        moto.create_bucket("roundtrip")
        body = b"x" * (6 << 20)  # above the transfer threshold: a real multipart upload
        s3 = moto.client()
        s3.upload_fileobj(io.BytesIO(body), "roundtrip", "big.bin")
        assert s3.get_object(Bucket="roundtrip", Key="big.bin")["Body"].read() == body
    assert all(_gone(process) for process in family)
    assert not services.port_in_use(moto.port)
    assert not moto.answers()
    moto.stop()  # a second stop is a no-op


def test_moto_on_a_taken_port_fails_with_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        moto = MotoS3(taken.getsockname()[1])
        with pytest.raises(RuntimeError, match=rf"exited .* on {moto.url} \(is port"):
            moto.start(timeout=60)
    assert moto._process is None


def test_free_port_is_bindable_and_port_in_use_sees_listeners() -> None:
    port = services.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        assert not services.port_in_use(port)
        sock.listen()
        assert services.port_in_use(port)
    assert not services.port_in_use(port)


def test_wait_until_returns_the_first_truthy_result() -> None:
    answers = iter([None, "", {"state": "success"}])
    assert services.wait_until("a result", lambda: next(answers), timeout=5, interval=0.01) == {
        "state": "success"
    }


def test_wait_until_times_out_naming_what_it_waited_for() -> None:
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match="timed out after 0s waiting for the moon"):
        services.wait_until("the moon", lambda: False, timeout=0.3, interval=0.05)
    assert 0.3 <= time.monotonic() - started < 2


def test_wait_until_does_not_retry_an_error() -> None:
    calls = []

    def broken() -> bool:
        calls.append(1)
        raise ValueError("the server died")

    with pytest.raises(ValueError, match="the server died"):
        services.wait_until("anything", broken, timeout=5, interval=0.01)
    assert len(calls) == 1


def test_aws_conn_reaches_moto_through_airflow(
    moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection as Airflow reads it from the environment drives the real S3Hook."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    monkeypatch.setenv("AIRFLOW_CONN_AWS_CONN", services.aws_conn(moto_server))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    hook = S3Hook(aws_conn_id="aws_conn")
    hook.create_bucket("conn-check")
    hook.load_string("hello", key="k", bucket_name="conn-check")
    assert (
        services.s3_client(moto_server).get_object(Bucket="conn-check", Key="k")["Body"].read()
        == b"hello"
    )


def test_databricks_conn_is_what_the_provider_builds_urls_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.providers.databricks.hooks.databricks import DatabricksHook

    env = services.connections_env("http://127.0.0.1:9", "http://127.0.0.1:4567", "tok")
    monkeypatch.setenv("AIRFLOW_CONN_DATABRICKS_CONN", env["AIRFLOW_CONN_DATABRICKS_CONN"])
    hook = DatabricksHook("databricks_conn")
    assert hook._endpoint_url("api/2.1/jobs/list") == "http://127.0.0.1:4567/api/2.1/jobs/list"
    assert hook.databricks_conn.password == "tok"
    assert json.loads(env["AIRFLOW_CONN_AWS_CONN"])["extra"]["endpoint_url"] == "http://127.0.0.1:9"


def test_databricks_conn_refuses_a_url_without_a_port() -> None:
    with pytest.raises(ValueError, match=r"http://127.0.0.1:PORT, not 'localhost'"):
        services.databricks_conn("localhost", "tok")
