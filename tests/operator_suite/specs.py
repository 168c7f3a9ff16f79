"""A table of Pipeline specs the operator tests share: each mode of each part."""

from __future__ import annotations

from typing import Any

MONGO = {"uriSecret": {"name": "mongo", "key": "uri"}, "mongoCollection": "views"}


def body(
    name: str, spec: dict[str, Any], namespace: str = "ns", uid: str = "uid-1"
) -> dict[str, Any]:
    return {
        "apiVersion": "cdcflow.io/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "generation": 1},
        "spec": spec,
    }


SPECS: dict[str, dict[str, Any]] = {
    "defaults": {"source": MONGO},
    "three-node-broker": {
        "source": MONGO,
        "broker": {"managed": {"replicas": 3, "storage": "2Gi", "storageClassName": "fast"}},
        "deletionPolicy": "Delete",
    },
    "external-everything": {
        "source": MONGO,
        "broker": {
            "external": {
                "urlSecret": {"name": "amqp", "key": "url"},
                "managementUrlSecret": {"name": "amqp", "key": "management"},
            },
            "queue": "views_q",
        },
        "warehouse": {"external": {"urlSecret": {"name": "ch", "key": "url"}}},
        "consumer": {"runner": "inprocess", "image": "example/consumer:1", "parallelism": 2},
        "scaling": {"minReplicas": 0, "maxReplicas": 20, "targetMessagesPerReplica": 5000},
    },
    "embedded-chdb": {
        "source": MONGO,
        "warehouse": {"embedded": {"storage": "5Gi"}},
        "scaling": {"minReplicas": 1, "maxReplicas": 1},
    },
    "manual-replicas": {
        "source": MONGO,
        "consumer": {"replicas": 3, "resources": {"requests": {"cpu": 1, "memory": "2Gi"}}},
        "scaling": {"enabled": False},
    },
}
