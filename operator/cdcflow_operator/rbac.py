"""The operator's RBAC: exactly what it needs, as the chart ships it (one source).

``cdcflow-operator rbac`` prints the ClusterRole; the chart (helm/cdcflow) renders
these same rules (files/rbac-rules.yaml, written by ``make crds``), and the end-to-end
tests run the operator with nothing more. tests/chart/test_install.py compares them with
the requests the operator makes (the API server's audit log) and the calls in kube.py:
a grant that neither uses fails it.

Children: ``list`` (drift and leftovers), ``patch`` and ``create`` (server-side apply;
an apply that creates is authorized as a create), ``delete`` (leftovers); never get,
watch or update. Secrets: ``get`` to check the references and read the broker's URL for
queue depth, ``create`` for the credentials of managed RabbitMQ and ClickHouse; never
list, watch, update or delete. The Pipeline: kopf lists, watches and patches it
(finalizer, progress annotations); the reconciler patches its status. Namespaces and
CRDs: kopf's observers list and watch them. ``endpoints get`` is held because the
operator grants it to the managed RabbitMQ's peer discovery (RBAC forbids granting
what one lacks).
"""

from __future__ import annotations

from typing import Any

from cdcflow import naming
from cdcflow_operator.models import GROUP, PLURAL

CHANGE = ["list", "create", "patch", "delete"]
OBSERVE = ["list", "watch"]

RULES: list[dict[str, Any]] = [
    {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["list", "watch", "patch"]},
    {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["patch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {
        "apiGroups": [""],
        "resources": ["services", "configmaps", "serviceaccounts", "persistentvolumeclaims"],
        "verbs": CHANGE,
    },
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["endpoints"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": OBSERVE},
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
        "verbs": OBSERVE,
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
