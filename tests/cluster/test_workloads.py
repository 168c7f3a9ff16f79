"""Workload controllers on the real control plane: kwok runs the pods' lifecycle.

What is real: the API server, the Deployment/ReplicaSet/StatefulSet controllers, the
scheduler, the PersistentVolume binder. What kwok simulates: the kubelet (pods are marked
Running and Ready; no container runs).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from tests.control_plane import ControlPlane, wait_for

# kwok's --cidr in scripts/cluster/start.sh: pod addresses stay on this machine.
POD_RANGE = ipaddress.ip_network("127.201.0.0/24")


def _labels(app: str) -> dict[str, str]:
    return {"app": app}


def _pod_template(app: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": _labels(app)},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "registry.invalid/cdcflow/never-pulled:1",
                    "readinessProbe": {"exec": {"command": ["true"]}},
                }
            ]
        },
    }


def _running_ready(core: Any, namespace: str, app: str) -> list[Any]:
    """Pods of ``app`` that are Running with condition Ready=True."""
    pods = core.list_namespaced_pod(namespace, label_selector=f"app={app}").items
    return [
        pod
        for pod in pods
        if pod.status.phase == "Running"
        and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
    ]


def _wait_running_ready(core: Any, namespace: str, app: str, count: int) -> list[Any]:
    def probe() -> list[Any] | None:
        pods = _running_ready(core, namespace, app)
        return pods if len(pods) == count else None

    return wait_for(f"{count} Running and Ready pods of {app}", probe, timeout=180)


def test_deployment_pods_run_on_kwok_nodes_and_scaling_adds_pods(
    control_plane: ControlPlane, k8s_namespace: str
) -> None:
    core, apps = control_plane.core_v1(), control_plane.apps_v1()
    control_plane.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": _labels("web")},
                "template": _pod_template("web"),
            },
        },
        namespace=k8s_namespace,
    )

    pods = _wait_running_ready(core, k8s_namespace, "web", 2)
    for pod in pods:
        assert pod.spec.node_name in control_plane.node_names
        assert ipaddress.ip_address(pod.status.pod_ip) in POD_RANGE
    wait_for(
        "deployment web to report 2 ready replicas",
        lambda: (
            apps.read_namespaced_deployment_status("web", k8s_namespace).status.ready_replicas == 2
        ),
    )

    # Through the scale subresource, as `kubectl scale` (and an autoscaler) does it.
    control_plane.kubectl("scale", "deployment/web", "--replicas=5", "-n", k8s_namespace)
    scaled = _wait_running_ready(core, k8s_namespace, "web", 5)
    assert {pod.metadata.name for pod in pods} < {pod.metadata.name for pod in scaled}
    assert all(pod.spec.node_name in control_plane.node_names for pod in scaled)
    # The scheduler spreads them: more than one fake node is used.
    assert len({pod.spec.node_name for pod in scaled}) > 1


def test_statefulset_claims_are_bound_and_pods_run(
    control_plane: ControlPlane, k8s_namespace: str
) -> None:
    core = control_plane.core_v1()
    storage_class = control_plane.provision_volumes(k8s_namespace, 2, capacity="1Gi")
    control_plane.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "db"},
            "spec": {
                "replicas": 2,
                "serviceName": "db",
                "selector": {"matchLabels": _labels("db")},
                "template": _pod_template("db"),
                "volumeClaimTemplates": [
                    {
                        "metadata": {"name": "data"},
                        "spec": {
                            "accessModes": ["ReadWriteOnce"],
                            "storageClassName": storage_class,
                            "resources": {"requests": {"storage": "500Mi"}},
                        },
                    }
                ],
            },
        },
        namespace=k8s_namespace,
    )

    def bound_claims() -> dict[str, str] | None:
        claims = core.list_namespaced_persistent_volume_claim(k8s_namespace).items
        bound = {c.metadata.name: c.spec.volume_name for c in claims if c.status.phase == "Bound"}
        return bound if len(bound) == 2 else None

    bound = wait_for("both claims of statefulset db to be Bound", bound_claims, timeout=180)
    assert set(bound) == {"data-db-0", "data-db-1"}
    assert set(bound.values()) == {f"{k8s_namespace}-pv-0", f"{k8s_namespace}-pv-1"}

    pods = _wait_running_ready(core, k8s_namespace, "db", 2)
    assert sorted(pod.metadata.name for pod in pods) == ["db-0", "db-1"]
    for pod in pods:
        claim = next(v.persistent_volume_claim for v in pod.spec.volumes if v.name == "data")
        assert claim.claim_name == f"data-{pod.metadata.name}"


def test_deleting_a_namespace_removes_its_pods_claims_and_volumes(
    control_plane: ControlPlane,
) -> None:
    # What the k8s_namespace fixture does after each test, waited for this once.
    namespace = control_plane.create_namespace("cleanup")
    core = control_plane.core_v1()
    storage_class = control_plane.provision_volumes(namespace, 1)
    control_plane.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "data"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": storage_class,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": _labels("web")},
                    "template": _pod_template("web"),
                },
            },
        ],
        namespace=namespace,
    )
    _wait_running_ready(core, namespace, "web", 1)
    wait_for(
        "the claim to be Bound",
        lambda: (
            core.read_namespaced_persistent_volume_claim("data", namespace).status.phase == "Bound"
        ),
    )

    control_plane.delete_namespace(namespace, wait=True)
    assert namespace not in [n.metadata.name for n in core.list_namespace().items]
    assert not core.list_persistent_volume(
        label_selector=f"cdcflow.test/namespace={namespace}"
    ).items
