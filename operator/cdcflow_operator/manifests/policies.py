"""ServiceAccounts, the broker's peer-discovery Role, PodDisruptionBudgets, NetworkPolicies.

Network policies allow only the flows the architecture has::

    producer ──5672──▶ rabbitmq ◀──5672── consumer ──8123──▶ clickhouse ◀──8123── schema job
    producer ──▶ MongoDB (outside)      rabbitmq ◀─4369/25672─▶ rabbitmq, rabbitmq ──▶ API server
    operator ──15672──▶ rabbitmq (depth),  operator ──9464──▶ producer (lag)
    Prometheus ──metrics ports──▶ every pod;  every pod ──53──▶ DNS

An external broker or warehouse has an address the operator cannot know without reading
its Secret, so egress to it is allowed to any address (on any port).
"""

from __future__ import annotations

from typing import Any

from cdcflow import naming
from cdcflow_operator.manifests import clickhouse, rabbitmq
from cdcflow_operator.manifests.common import WORKERS_ACCOUNT, Manifest, metadata
from cdcflow_operator.models import Pipeline

OPERATOR_PODS = dict(naming.OPERATOR_POD_LABELS)
MONGODB_PORT = 27017
API_SERVER_PORTS = (443, 6443)


def build_service_accounts(pipeline: Pipeline) -> list[Manifest]:
    """One account for the workers (no API access, no token) and one for RabbitMQ."""
    workers = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(pipeline, naming.PRODUCER, pipeline.child(WORKERS_ACCOUNT)),
        "automountServiceAccountToken": False,
    }
    out = [workers]
    if pipeline.spec.broker.managed is not None:
        name = pipeline.child(naming.BROKER)
        out += [
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": metadata(pipeline, naming.BROKER),
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": metadata(pipeline, naming.BROKER),
                "rules": [{"apiGroups": [""], "resources": ["endpoints"], "verbs": ["get"]}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": metadata(pipeline, naming.BROKER),
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [
                    {"kind": "ServiceAccount", "name": name, "namespace": pipeline.namespace}
                ],
            },
        ]
    return out


def _pdb(pipeline: Pipeline, component: str, max_unavailable: int) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(pipeline, component),
        "spec": {
            "maxUnavailable": max_unavailable,
            "selector": {"matchLabels": naming.selector(pipeline.name, component)},
        },
    }


def build_disruption_budgets(pipeline: Pipeline) -> list[Manifest]:
    """A drain takes one consumer at a time, and one RabbitMQ node of three (quorum kept).

    A single producer, RabbitMQ node or ClickHouse server gets none: a budget of zero
    would block every node drain, and Recreate already accepts the short gap.
    """
    out = [_pdb(pipeline, naming.CONSUMER, 1)]
    managed = pipeline.spec.broker.managed
    if managed is not None and managed.replicas > 1:
        out.append(_pdb(pipeline, naming.BROKER, 1))
    return out


def _pods(pipeline: Pipeline, component: str) -> dict[str, Any]:
    return {"podSelector": {"matchLabels": naming.selector(pipeline.name, component)}}


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port} for port in ports]


_DNS: dict[str, Any] = {
    "to": [{"namespaceSelector": {}}],
    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
}
_ANYWHERE: list[dict[str, Any]] = [
    {"ipBlock": {"cidr": "0.0.0.0/0"}},
    {"ipBlock": {"cidr": "::/0"}},
]
_PROMETHEUS_FROM: list[dict[str, Any]] = [{"namespaceSelector": {}}]  # any namespace's Prometheus


def _operator_from() -> list[dict[str, Any]]:
    return [{"namespaceSelector": {}, "podSelector": {"matchLabels": OPERATOR_PODS}}]


def _policy(
    pipeline: Pipeline, component: str, ingress: list[dict[str, Any]], egress: list[dict[str, Any]]
) -> Manifest:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(pipeline, component),
        "spec": {
            "podSelector": {"matchLabels": naming.selector(pipeline.name, component)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": [_DNS, *egress],
        },
    }


def _to_broker(pipeline: Pipeline) -> dict[str, Any]:
    if pipeline.spec.broker.managed is not None:
        return {"to": [_pods(pipeline, naming.BROKER)], "ports": _tcp(rabbitmq.AMQP_PORT)}
    return {"to": _ANYWHERE}


def _to_warehouse(pipeline: Pipeline) -> list[dict[str, Any]]:
    warehouse = pipeline.spec.warehouse
    if warehouse.managed is not None:
        return [{"to": [_pods(pipeline, naming.WAREHOUSE)], "ports": _tcp(clickhouse.HTTP_PORT)}]
    if warehouse.external is not None:
        return [{"to": _ANYWHERE}]
    return []  # embedded chdb: a file in the pod


def build_network_policies(pipeline: Pipeline) -> list[Manifest]:
    metrics = {"from": _PROMETHEUS_FROM, "ports": _tcp(naming.METRICS_PORT)}
    out = [
        _policy(
            pipeline,
            naming.PRODUCER,
            [metrics],
            [{"to": _ANYWHERE, "ports": _tcp(MONGODB_PORT)}, _to_broker(pipeline)],
        ),
        _policy(
            pipeline,
            naming.CONSUMER,
            [metrics],
            [_to_broker(pipeline), *_to_warehouse(pipeline)],
        ),
    ]
    if pipeline.spec.warehouse.embedded is None:
        out.append(_policy(pipeline, naming.SCHEMA_JOB, [], _to_warehouse(pipeline)))
    if pipeline.spec.broker.managed is not None:
        peers = _pods(pipeline, naming.BROKER)
        cluster_ports = _tcp(rabbitmq.EPMD_PORT, rabbitmq.DIST_PORT, rabbitmq.AMQP_PORT)
        out.append(
            _policy(
                pipeline,
                naming.BROKER,
                [
                    {
                        "from": [
                            _pods(pipeline, naming.PRODUCER),
                            _pods(pipeline, naming.CONSUMER),
                        ],
                        "ports": _tcp(rabbitmq.AMQP_PORT),
                    },
                    {"from": [peers], "ports": cluster_ports},
                    {"from": _operator_from(), "ports": _tcp(rabbitmq.MANAGEMENT_PORT)},
                    {"from": _PROMETHEUS_FROM, "ports": _tcp(rabbitmq.PROMETHEUS_PORT)},
                ],
                [
                    {"to": [peers], "ports": cluster_ports},
                    {"to": _ANYWHERE, "ports": _tcp(*API_SERVER_PORTS)},  # peer discovery
                ],
            )
        )
    if pipeline.spec.warehouse.managed is not None:
        out.append(
            _policy(
                pipeline,
                naming.WAREHOUSE,
                [
                    {
                        "from": [
                            _pods(pipeline, naming.CONSUMER),
                            _pods(pipeline, naming.SCHEMA_JOB),
                        ],
                        "ports": _tcp(clickhouse.HTTP_PORT),
                    },
                    {"from": _PROMETHEUS_FROM, "ports": _tcp(clickhouse.PROMETHEUS_PORT)},
                ],
                [],
            )
        )
    # The producer's metrics are read by the operator for capture lag.
    out[0]["spec"]["ingress"].append({"from": _operator_from(), "ports": _tcp(naming.METRICS_PORT)})
    return out
