"""A managed ClickHouse server: StatefulSet (one replica), Service, config, credentials."""

from __future__ import annotations

from typing import Any, Final

from cdcflow import naming
from cdcflow_operator.manifests.common import (
    CLICKHOUSE_UID,
    CLICKHOUSE_URL_KEY,
    DATA_CLAIM,
    PASSWORD_KEY,
    USERNAME_KEY,
    WAREHOUSE_CREDENTIALS,
    Manifest,
    container_security,
    data_volume,
    metadata,
    pod_security,
    scrape_annotations,
)
from cdcflow_operator.models import Pipeline

HTTP_PORT: Final = 8123
NATIVE_PORT: Final = 9000
PROMETHEUS_PORT: Final = 9363
USERNAME: Final = "cdcflow"


def host(pipeline: Pipeline) -> str:
    return f"{pipeline.child(naming.WAREHOUSE)}.{pipeline.namespace}.svc"


def credentials_secret(pipeline: Pipeline, password: str) -> Manifest:
    """The managed server's login, made once by the operator (never logged, never updated)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(pipeline, naming.WAREHOUSE, pipeline.child(WAREHOUSE_CREDENTIALS)),
        "type": "Opaque",
        "stringData": {
            USERNAME_KEY: USERNAME,
            PASSWORD_KEY: password,
            CLICKHOUSE_URL_KEY: f"http://{USERNAME}:{password}@{host(pipeline)}:{HTTP_PORT}",
        },
    }


def build_config(pipeline: Pipeline) -> Manifest:
    """Server settings: Prometheus endpoint on, logs to stdout (no log files in the volume)."""
    xml = (
        "<clickhouse>\n"
        "  <logger><console>1</console><level>information</level></logger>\n"
        "  <listen_host>0.0.0.0</listen_host>\n"
        f"  <prometheus><endpoint>/metrics</endpoint><port>{PROMETHEUS_PORT}</port>"
        "<metrics>true</metrics><events>true</events><asynchronous_metrics>true"
        "</asynchronous_metrics></prometheus>\n"
        "</clickhouse>\n"
    )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(pipeline, naming.WAREHOUSE),
        "data": {"cdcflow.xml": xml},
    }


def headless_name(pipeline: Pipeline) -> str:
    return f"{pipeline.child(naming.WAREHOUSE)}-nodes"


def _server_ports() -> list[dict[str, object]]:
    """ClickHouse's HTTP and native ports, as both Services expose them."""
    return [
        {"name": name, "port": port, "targetPort": port, "protocol": "TCP"}
        for name, port in (("http", HTTP_PORT), ("native", NATIVE_PORT))
    ]


def build_headless_service(pipeline: Pipeline) -> Manifest:
    """The StatefulSet's governing Service: headless, so its pod gets a stable DNS name
    (``<name>-clickhouse-0.<name>-clickhouse-nodes``), as a StatefulSet's serviceName
    expects; clients keep the ClusterIP Service of :func:`build_service`."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(pipeline, naming.WAREHOUSE, headless_name(pipeline)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": naming.selector(pipeline.name, naming.WAREHOUSE),
            "ports": _server_ports(),
        },
    }


def build_service(pipeline: Pipeline) -> Manifest:
    """The client Service (a ClusterIP) the workers' URL names."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(pipeline, naming.WAREHOUSE),
        "spec": {
            "type": "ClusterIP",
            "selector": naming.selector(pipeline.name, naming.WAREHOUSE),
            "ports": [
                *_server_ports(),
                {
                    "name": "prometheus",
                    "port": PROMETHEUS_PORT,
                    "targetPort": PROMETHEUS_PORT,
                    "protocol": "TCP",
                },
            ],
        },
    }


def build_statefulset(pipeline: Pipeline) -> Manifest:
    managed = pipeline.spec.warehouse.managed
    if managed is None:
        raise ValueError("build_statefulset needs warehouse.managed")
    secret = pipeline.child(WAREHOUSE_CREDENTIALS)
    name = pipeline.child(naming.WAREHOUSE)
    probe: dict[str, Any] = {"httpGet": {"path": "/ping", "port": HTTP_PORT}}
    container = {
        "name": "clickhouse",
        "image": managed.image,
        "imagePullPolicy": pipeline.spec.image_pull_policy,
        "env": [
            {"name": "CLICKHOUSE_USER", "value": USERNAME},
            {
                "name": "CLICKHOUSE_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": secret, "key": PASSWORD_KEY}},
            },
            {"name": "CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT", "value": "1"},
        ],
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT},
            {"name": "native", "containerPort": NATIVE_PORT},
            {"name": "prometheus", "containerPort": PROMETHEUS_PORT},
        ],
        "resources": managed.resources.to_k8s(),
        "securityContext": container_security(read_only_root=False),
        "livenessProbe": {**probe, "initialDelaySeconds": 30, "periodSeconds": 15},
        "readinessProbe": {**probe, "periodSeconds": 5},
        "volumeMounts": [
            {"name": DATA_CLAIM, "mountPath": "/var/lib/clickhouse"},
            {
                "name": "config",
                "mountPath": "/etc/clickhouse-server/config.d/cdcflow.xml",
                "subPath": "cdcflow.xml",
            },
        ],
    }
    claim, retention = data_volume(
        pipeline, naming.WAREHOUSE, managed.storage, managed.storage_class_name
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(pipeline, naming.WAREHOUSE),
        "spec": {
            "serviceName": headless_name(pipeline),
            "replicas": 1,
            "selector": {"matchLabels": naming.selector(pipeline.name, naming.WAREHOUSE)},
            "persistentVolumeClaimRetentionPolicy": retention,
            "template": {
                "metadata": {
                    "labels": naming.labels(pipeline.name, naming.WAREHOUSE),
                    "annotations": scrape_annotations(PROMETHEUS_PORT, "/metrics"),
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security(CLICKHOUSE_UID),
                    "containers": [container],
                    "volumes": [{"name": "config", "configMap": {"name": name}}],
                },
            },
            "volumeClaimTemplates": [claim],
        },
    }
