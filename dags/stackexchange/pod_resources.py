"""The ingest task's pod on the KubernetesExecutor, sized in one place.

Every task pod starts from the chart's pod template (chart/values.yaml ``workers``: 100m/384Mi
requested, limits 1 CPU/1536Mi, a 512Mi ``/tmp``). The ingest overlaps download,
decompression, validation and upload, so it asks for more through its ``executor_config``
``pod_override``, which the executor merges into that template (the provider's
``PodGenerator.reconcile_pods``: the override's ``resources`` replace the template's; volumes,
mounts and env are appended, so the override brings its own scratch volume instead of resizing
the template's ``/tmp``, and points ``TMPDIR`` at it).

Settings (environment of the Airflow components, set from ``.env`` by the install; read when the
DAG file is parsed, because the scheduler builds the pod from the parsed DAG):

- ``STACKEXCHANGE_INGEST_CPU`` (default 2): CPU requested. No CPU limit: a limit only throttles
  the pipeline; the request reserves the two cores it uses.
- ``STACKEXCHANGE_INGEST_MEMORY`` (default 1Gi): memory requested and limit. Measured: the
  ingest holds 161-193 MiB above the interpreter (``make bench``, 1 and 4 GiB dumps, flat in the
  dump size), the task runner and its supervisor about 140 MiB each (``/usr/bin/time -v``,
  Airflow and the ingest's imports): about 0.5 GiB, with headroom to 1 GiB.
- ``STACKEXCHANGE_INGEST_EPHEMERAL_STORAGE`` (default 512Mi): ephemeral storage requested and
  limit (scratch, ``/tmp``, logs); at least the scratch size.
- ``STACKEXCHANGE_INGEST_TMP_SIZE`` (default 256Mi): ``sizeLimit`` of the scratch volume the
  ingest stages in (``TMPDIR``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from kubernetes.client import models as k8s
from kubernetes.utils import parse_quantity

SCRATCH_VOLUME = "ingest-tmp"
SCRATCH_DIR = "/opt/airflow/ingest-tmp"
BASE_CONTAINER = "base"  # the KubernetesExecutor's task container


@dataclass(frozen=True)
class IngestPodSettings:
    cpu: str = "2"
    memory: str = "1Gi"
    ephemeral_storage: str = "512Mi"
    tmp_size: str = "256Mi"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> IngestPodSettings:
        values = {}
        for field in fields(cls):
            name = f"STACKEXCHANGE_INGEST_{field.name.upper()}"
            raw = environ.get(name, "").strip() or field.default
            try:
                amount = parse_quantity(raw)
            except ValueError:
                amount = 0
            if amount <= 0:
                raise ValueError(
                    f"{name}={raw!r} is not a positive Kubernetes quantity (e.g. 2, 500m, 1Gi); "
                    f"unset it for the default {field.default}"
                )
            values[field.name] = raw
        settings = cls(**values)
        if parse_quantity(settings.ephemeral_storage) < parse_quantity(settings.tmp_size):
            raise ValueError(
                f"STACKEXCHANGE_INGEST_EPHEMERAL_STORAGE={settings.ephemeral_storage} is less than "
                f"STACKEXCHANGE_INGEST_TMP_SIZE={settings.tmp_size}: the pod's storage limit must "
                "hold its scratch volume; raise the first or lower the second"
            )
        return settings


def ingest_executor_config(settings: IngestPodSettings) -> dict[str, Any]:
    """The ingest task's ``executor_config``: its pod override."""
    storage = settings.ephemeral_storage
    container = k8s.V1Container(
        name=BASE_CONTAINER,
        resources=k8s.V1ResourceRequirements(
            requests={"cpu": settings.cpu, "memory": settings.memory, "ephemeral-storage": storage},
            limits={"memory": settings.memory, "ephemeral-storage": storage},
        ),
        env=[k8s.V1EnvVar(name="TMPDIR", value=SCRATCH_DIR)],
        volume_mounts=[k8s.V1VolumeMount(name=SCRATCH_VOLUME, mount_path=SCRATCH_DIR)],
    )
    scratch = k8s.V1Volume(
        name=SCRATCH_VOLUME, empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=settings.tmp_size)
    )
    spec = k8s.V1PodSpec(containers=[container], volumes=[scratch])
    return {"pod_override": k8s.V1Pod(spec=spec)}
