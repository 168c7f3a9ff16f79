"""A managed RabbitMQ: StatefulSet, headless and client Services, config, credentials.

Nodes find each other through Kubernetes peer discovery (the ``rabbitmq_peer_discovery_k8s``
plugin reads the headless Service's endpoints with the pod's ServiceAccount). The workers
declare their queues as quorum queues, so with three nodes a queue survives a node loss.
"""

from __future__ import annotations

from typing import Any, Final

from cdcflow import naming
from cdcflow_operator.manifests.common import (
    AMQP_URL_KEY,
    BROKER_CREDENTIALS,
    DATA_CLAIM,
    ERLANG_COOKIE_KEY,
    MANAGEMENT_URL_KEY,
    PASSWORD_KEY,
    RABBITMQ_UID,
    USERNAME_KEY,
    Manifest,
    container_security,
    data_volume,
    metadata,
    pod_security,
    scrape_annotations,
)
from cdcflow_operator.models import Pipeline

AMQP_PORT: Final = 5672
MANAGEMENT_PORT: Final = 15672
PROMETHEUS_PORT: Final = 15692
EPMD_PORT: Final = 4369
DIST_PORT: Final = 25672
USERNAME: Final = "cdcflow"


def headless_name(pipeline: Pipeline) -> str:
    return f"{pipeline.child(naming.BROKER)}-nodes"


def client_host(pipeline: Pipeline) -> str:
    return f"{pipeline.child(naming.BROKER)}.{pipeline.namespace}.svc"


def credentials_secret(pipeline: Pipeline, password: str, cookie: str) -> Manifest:
    """The managed broker's login, made once by the operator (never logged, never updated)."""
    host = client_host(pipeline)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(pipeline, naming.BROKER, pipeline.child(BROKER_CREDENTIALS)),
        "type": "Opaque",
        "stringData": {
            USERNAME_KEY: USERNAME,
            PASSWORD_KEY: password,
            ERLANG_COOKIE_KEY: cookie,
            AMQP_URL_KEY: f"amqp://{USERNAME}:{password}@{host}:{AMQP_PORT}/%2F",
            MANAGEMENT_URL_KEY: f"http://{USERNAME}:{password}@{host}:{MANAGEMENT_PORT}/",
        },
    }


def build_config(pipeline: Pipeline) -> Manifest:
    suffix = f".{headless_name(pipeline)}.{pipeline.namespace}.svc.cluster.local"
    conf = "\n".join(
        [
            "cluster_formation.peer_discovery_backend = kubernetes",
            "cluster_formation.k8s.host = kubernetes.default.svc.cluster.local",
            "cluster_formation.k8s.address_type = hostname",
            f"cluster_formation.k8s.service_name = {headless_name(pipeline)}",
            f"cluster_formation.k8s.hostname_suffix = {suffix}",
            "cluster_formation.node_cleanup.only_log_warning = true",
            "cluster_partition_handling = pause_minority",
            "queue_master_locator = min-masters",
            "loopback_users.guest = false",
            f"listeners.tcp.default = {AMQP_PORT}",
            f"management.tcp.port = {MANAGEMENT_PORT}",
            f"prometheus.tcp.port = {PROMETHEUS_PORT}",
            "vm_memory_high_watermark.relative = 0.6",
            "",
        ]
    )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(pipeline, naming.BROKER),
        "data": {
            "rabbitmq.conf": conf,
            "enabled_plugins": "[rabbitmq_management,rabbitmq_peer_discovery_k8s,"
            "rabbitmq_prometheus].\n",
        },
    }


def _port(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "port": port, "targetPort": port, "protocol": "TCP"}


def build_services(pipeline: Pipeline) -> list[Manifest]:
    """The headless Service (stable pod DNS for clustering) and the client Service."""
    selector = naming.selector(pipeline.name, naming.BROKER)
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(pipeline, naming.BROKER, headless_name(pipeline)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector,
            "ports": [
                _port("epmd", EPMD_PORT),
                _port("cluster", DIST_PORT),
                _port("amqp", AMQP_PORT),
            ],
        },
    }
    client = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(pipeline, naming.BROKER),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [
                _port("amqp", AMQP_PORT),
                _port("management", MANAGEMENT_PORT),
                _port("prometheus", PROMETHEUS_PORT),
            ],
        },
    }
    return [headless, client]


def build_statefulset(pipeline: Pipeline) -> Manifest:
    managed = pipeline.spec.broker.managed
    assert managed is not None, "build_statefulset needs broker.managed"
    name = pipeline.child(naming.BROKER)
    secret = pipeline.child(BROKER_CREDENTIALS)

    def from_secret(variable: str, key: str) -> dict[str, Any]:
        return {"name": variable, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}

    env = [
        {"name": "MY_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "RABBITMQ_USE_LONGNAME", "value": "true"},
        {
            "name": "RABBITMQ_NODENAME",
            "value": f"rabbit@$(MY_POD_NAME).{headless_name(pipeline)}."
            f"{pipeline.namespace}.svc.cluster.local",
        },
        {"name": "RABBITMQ_CONFIG_FILE", "value": "/etc/rabbitmq/conf.d/rabbitmq.conf"},
        {"name": "RABBITMQ_ENABLED_PLUGINS_FILE", "value": "/etc/rabbitmq/conf.d/enabled_plugins"},
        from_secret("RABBITMQ_DEFAULT_USER", USERNAME_KEY),
        from_secret("RABBITMQ_DEFAULT_PASS", PASSWORD_KEY),
        from_secret("RABBITMQ_ERLANG_COOKIE", ERLANG_COOKIE_KEY),
    ]
    container = {
        "name": "rabbitmq",
        "image": managed.image,
        "imagePullPolicy": pipeline.spec.image_pull_policy,
        "env": env,
        "ports": [
            {"name": "amqp", "containerPort": AMQP_PORT},
            {"name": "management", "containerPort": MANAGEMENT_PORT},
            {"name": "prometheus", "containerPort": PROMETHEUS_PORT},
            {"name": "epmd", "containerPort": EPMD_PORT},
            {"name": "cluster", "containerPort": DIST_PORT},
        ],
        "resources": managed.resources.to_k8s(),
        "securityContext": container_security(read_only_root=False),
        "livenessProbe": {
            "exec": {"command": ["rabbitmq-diagnostics", "-q", "status"]},
            "initialDelaySeconds": 60,
            "periodSeconds": 30,
            "timeoutSeconds": 15,
        },
        "readinessProbe": {
            "exec": {"command": ["rabbitmq-diagnostics", "-q", "check_port_connectivity"]},
            "initialDelaySeconds": 10,
            "periodSeconds": 15,
            "timeoutSeconds": 10,
        },
        "volumeMounts": [
            {"name": DATA_CLAIM, "mountPath": "/var/lib/rabbitmq"},
            {"name": "config", "mountPath": "/etc/rabbitmq/conf.d"},
        ],
    }
    claim, retention = data_volume(
        pipeline, naming.BROKER, managed.storage, managed.storage_class_name
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(pipeline, naming.BROKER),
        "spec": {
            "serviceName": headless_name(pipeline),
            "replicas": managed.replicas,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": naming.selector(pipeline.name, naming.BROKER)},
            "persistentVolumeClaimRetentionPolicy": retention,
            "template": {
                "metadata": {
                    "labels": naming.labels(pipeline.name, naming.BROKER),
                    "annotations": scrape_annotations(PROMETHEUS_PORT, "/metrics"),
                },
                "spec": {
                    "serviceAccountName": name,
                    "securityContext": pod_security(RABBITMQ_UID),
                    "terminationGracePeriodSeconds": 120,
                    "containers": [container],
                    "volumes": [{"name": "config", "configMap": {"name": name}}],
                },
            },
            "volumeClaimTemplates": [claim],
        },
    }
