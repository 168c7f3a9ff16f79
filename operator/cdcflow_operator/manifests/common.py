"""Shapes every child shares: metadata with owner references, security, probes, env.

Pure functions of a :class:`~cdcflow_operator.models.Pipeline`; no API calls.
"""

from __future__ import annotations

from typing import Any, Final

from cdcflow import config, naming
from cdcflow_operator.models import API_VERSION, KIND, DeletionPolicy, Pipeline

Manifest = dict[str, Any]

WORKERS_UID: Final = 10001  # images/workers.Dockerfile's user
RABBITMQ_UID: Final = 999  # the rabbitmq image's user
CLICKHOUSE_UID: Final = 101  # the clickhouse-server image's user
FLINK_JOB_SERVER_JAR: Final = "/opt/cdcflow/flink/cdcflow-flink-job-server.jar"
"""Where the flink image (images/workers.Dockerfile, target flink) ships Beam's Flink
job server; nothing is downloaded in a pod."""

# Secrets the operator creates once for a managed broker or warehouse (never updated).
BROKER_CREDENTIALS: Final = "rabbitmq-credentials"
WAREHOUSE_CREDENTIALS: Final = "clickhouse-credentials"
AMQP_URL_KEY: Final = "amqp-url"
MANAGEMENT_URL_KEY: Final = "management-url"
CLICKHOUSE_URL_KEY: Final = "url"
PASSWORD_KEY: Final = "password"
USERNAME_KEY: Final = "username"
ERLANG_COOKIE_KEY: Final = "erlang-cookie"
WORKERS_ACCOUNT: Final = "workers"


def owner_reference(pipeline: Pipeline) -> dict[str, Any]:
    """The Pipeline as controller of a child: garbage collection follows it."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": pipeline.name,
        "uid": pipeline.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(
    pipeline: Pipeline, component: str, name: str | None = None, *, owned: bool = True
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name or pipeline.child(component),
        "namespace": pipeline.namespace,
        "labels": naming.labels(pipeline.name, component),
    }
    if owned:
        meta["ownerReferences"] = [owner_reference(pipeline)]
    return meta


def pod_security(uid: int) -> dict[str, Any]:
    """Pod-level context that the ``restricted`` Pod Security Standard admits."""
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security(*, read_only_root: bool = True) -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": read_only_root,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def worker_probes() -> dict[str, Any]:
    """Liveness on /healthz, readiness on /readyz: the workers' own health server."""
    port = naming.METRICS_PORT
    return {
        "livenessProbe": {
            "httpGet": {"path": naming.LIVENESS_PATH, "port": port},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "readinessProbe": {
            "httpGet": {"path": naming.READINESS_PATH, "port": port},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "startupProbe": {
            "httpGet": {"path": naming.LIVENESS_PATH, "port": port},
            "periodSeconds": 5,
            "failureThreshold": 60,
        },
    }


def scrape_annotations(
    port: int = naming.METRICS_PORT, path: str = naming.METRICS_PATH
) -> dict[str, str]:
    """Annotations Prometheus' kubernetes_sd relabelling keys on (prometheus.io/*)."""
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": path,
    }


def secret_ref(name: str, key: str) -> config.SecretKeyRef:
    return config.SecretKeyRef(name, key)


def amqp_secret(pipeline: Pipeline) -> config.SecretKeyRef:
    """Where pods find the AMQP URL: the user's Secret, or the managed broker's."""
    external = pipeline.spec.broker.external
    if external is not None:
        return external.url_secret.to_config()
    return secret_ref(pipeline.child(BROKER_CREDENTIALS), AMQP_URL_KEY)


def clickhouse_secret(pipeline: Pipeline) -> config.SecretKeyRef | None:
    """Where pods find the ClickHouse URL; None for embedded chdb (no password)."""
    warehouse = pipeline.spec.warehouse
    if warehouse.external is not None:
        return warehouse.external.url_secret.to_config()
    if warehouse.managed is not None:
        return secret_ref(pipeline.child(WAREHOUSE_CREDENTIALS), CLICKHOUSE_URL_KEY)
    return None


CHDB_PATH: Final = "/var/lib/cdcflow/warehouse"


def worker_env(
    pipeline: Pipeline, *sections: config.Section, **secrets: config.SecretKeyRef
) -> list[dict[str, Any]]:
    """A worker container's env: the sections' values, secrets as references only.

    The metrics port is always written: the consumer's CLI default differs from the
    producer's (both run on one laptop), but in a pod both serve on naming.METRICS_PORT.
    """
    env = config.container_env(sections, secrets)
    env.append({"name": "CDCFLOW_METRICS_PORT", "value": str(naming.METRICS_PORT)})
    env.append({"name": "CDCFLOW_LOG_FORMAT", "value": "json"})
    if pipeline.spec.warehouse.embedded is not None and any(
        isinstance(s, config.WarehouseSettings) for s in sections
    ):
        env.append({"name": "CDCFLOW_CLICKHOUSE_URL", "value": f"chdb://{CHDB_PATH}"})
    return env


def worker_container(
    pipeline: Pipeline,
    name: str,
    args: list[str],
    env: list[dict[str, Any]],
    resources: dict[str, Any],
    *,
    image: str | None = None,
    probes: bool = True,
    mounts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": image or pipeline.spec.image,
        "imagePullPolicy": pipeline.spec.image_pull_policy,
        "args": args,
        "env": env,
        "resources": resources,
        "securityContext": container_security(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *(mounts or [])],
    }
    if probes:
        container["ports"] = [
            {"name": "metrics", "containerPort": naming.METRICS_PORT, "protocol": "TCP"}
        ]
        container.update(worker_probes())
    return container


def worker_pod_spec(
    containers: list[dict[str, Any]],
    *,
    volumes: list[dict[str, Any]] | None = None,
    restart: str = "Always",
    service_account: str,
) -> dict[str, Any]:
    return {
        "serviceAccountName": service_account,
        "automountServiceAccountToken": False,
        "securityContext": pod_security(WORKERS_UID),
        "restartPolicy": restart,
        "terminationGracePeriodSeconds": 60,
        "containers": containers,
        "volumes": [{"name": "tmp", "emptyDir": {}}, *(volumes or [])],
    }


DATA_CLAIM: Final = "data"
"""The volume claim template of the managed broker's and warehouse's StatefulSets."""


def data_volume(
    pipeline: Pipeline, component: str, storage: int | str, storage_class: str | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """A StatefulSet's data claim template and its retention policy.

    The claims outlive their pods; whether they outlive the Pipeline is the spec's
    deletion policy (``Retain`` keeps the data for a re-created Pipeline to find).
    """
    claim: dict[str, Any] = {
        "metadata": {"name": DATA_CLAIM, "labels": naming.labels(pipeline.name, component)},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": str(storage)}},
        },
    }
    if storage_class:
        claim["spec"]["storageClassName"] = storage_class
    when_deleted = "Delete" if pipeline.spec.deletion_policy is DeletionPolicy.delete else "Retain"
    return claim, {"whenDeleted": when_deleted, "whenScaled": "Retain"}
