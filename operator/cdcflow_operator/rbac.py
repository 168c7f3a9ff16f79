"""The operator's RBAC: exactly what it needs, as the chart ships it (one source).

``cdcflow-operator rbac`` prints the ClusterRole; the chart (helm/cdcflow) renders
these same rules, and the end-to-end tests run the operator with nothing more.
Secrets: ``get`` to check the references and read the broker's URL for queue depth,
``create`` for the credentials of managed RabbitMQ and ClickHouse; never list,
watch, update or delete. ``endpoints get`` is held because the operator grants it
to the managed RabbitMQ's peer discovery (RBAC forbids granting what one lacks).
"""

from __future__ import annotations

from typing import Any

from cdcflow import naming
from cdcflow_operator.models import GROUP, PLURAL

CHANGE = ["get", "list", "watch", "create", "patch", "update", "delete"]
READ = ["get", "list", "watch"]

RULES: list[dict[str, Any]] = [
    {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "patch", "update"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    {
        "apiGroups": [""],
        "resources": ["services", "configmaps", "serviceaccounts", "persistentvolumeclaims"],
        "verbs": CHANGE,
    },
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": READ},
    {"apiGroups": [""], "resources": ["endpoints"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": READ},
    {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets"], "verbs": CHANGE},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": CHANGE},
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": CHANGE},
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": CHANGE},
    {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["roles", "rolebindings"],
        "verbs": CHANGE,
    },
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": READ,
    },
]


def cluster_role(name: str = naming.OPERATOR) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": {naming.NAME_LABEL: naming.OPERATOR}},
        "rules": RULES,
    }


def cluster_role_binding(
    namespace: str, account: str, name: str = naming.OPERATOR
) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": {naming.NAME_LABEL: naming.OPERATOR}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
    }
