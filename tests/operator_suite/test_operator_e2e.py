"""The operator end to end on the real control plane, under the chart's RBAC.

API server, controllers (Deployment, StatefulSet, Job, garbage collector, PV binder)
and scheduler are real; kwok marks pods Running and Ready (no container runs), so a
child's pods being Running shows the manifests were admitted (namespace enforces the
``restricted`` Pod Security Standard), scheduled and bound to volumes.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pika
import pytest

from cdcflow import naming
from tests.control_plane import ControlPlane, wait_for
from tests.operator_suite.conftest import Pipelines, gone, secret
from tests.operator_suite.specs import MONGO

MONGO_PASSWORD = "hunter2-never-in-a-manifest"
TICKS = 5.0  # seconds = five operator timer ticks (CDCFLOW_OPERATOR_INTERVAL_S=1)


def deployment(plane: ControlPlane, ns: str, name: str) -> Any:
    return plane.apps_v1().read_namespaced_deployment(name, ns)


def env_of(dep: Any) -> dict[str, str | None]:
    return {e.name: e.value for e in dep.spec.template.spec.containers[0].env}


def events(plane: ControlPlane, ns: str, name: str) -> list[Any]:
    selector = f"involvedObject.name={name},involvedObject.kind=Pipeline"
    return list(plane.core_v1().list_namespaced_event(ns, field_selector=selector).items)


def test_lifecycle(
    control_plane: ControlPlane, k8s_namespace: str, pipelines: Pipelines, run_operator
) -> None:
    ns, plane = k8s_namespace, control_plane
    plane.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    storage = plane.provision_volumes(ns, 2)
    secret(plane, ns, "mongo", {"uri": f"mongodb://cdc:{MONGO_PASSWORD}@mongo.example:27017/"})
    operator = run_operator()
    spec = {
        "source": MONGO,
        "broker": {"managed": {"storage": "1Gi", "storageClassName": storage}},
        "warehouse": {"managed": {"storage": "1Gi", "storageClassName": storage}},
        "scaling": {"minReplicas": 1, "maxReplicas": 3, "pollIntervalSeconds": 1},
    }
    uid = pipelines.create("shop", spec)["metadata"]["uid"]

    # create -> children exist, owned; pods Running on kwok nodes; Ready and Reconciled
    pipelines.wait_condition("shop", "Ready", "True", timeout=240)
    pipelines.wait_condition("shop", "Reconciled", "True")
    status = pipelines.get("shop")["status"]
    assert status["observedGeneration"] == 1
    # The operator runs outside the cluster here: the managed broker's Service name does
    # not resolve, so its depth is unknown and the Pipeline says so (on a cluster it
    # reads it; the external-broker test below reads a real one).
    degraded = pipelines.condition("shop", "Degraded")
    assert degraded is not None and degraded["reason"] == "DepthUnavailable"
    assert "shop-rabbitmq" in degraded["message"]
    assert status["phase"] == "Degraded"
    assert status["ready"] == "5/5"
    listed = json.loads(
        plane.kubectl(
            "get",
            "deploy,sts,svc,job,cm,sa,pdb,netpol,role,rolebinding",
            "-n",
            ns,
            "-l",
            f"{naming.PIPELINE_LABEL}=shop",
            "-o",
            "json",
        ).stdout
    )["items"]
    kinds = {item["kind"] for item in listed}
    assert kinds >= {
        "Deployment",
        "StatefulSet",
        "Service",
        "Job",
        "ConfigMap",
        "ServiceAccount",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Role",
    }
    for item in listed:
        owners = item["metadata"].get("ownerReferences") or []
        assert [o["uid"] for o in owners] == [uid], item["metadata"]["name"]
    pods = plane.core_v1().list_namespaced_pod(ns, label_selector=f"{naming.PIPELINE_LABEL}=shop")
    running = {
        p.metadata.labels[naming.COMPONENT_LABEL]
        for p in pods.items
        if p.status.phase == "Running" and p.spec.node_name in plane.node_names
    }
    assert running >= {"producer", "consumer", "rabbitmq", "clickhouse"}
    # Secrets by reference only: no password in any child or Event.
    assert MONGO_PASSWORD not in json.dumps(listed)
    assert all(MONGO_PASSWORD not in (e.message or "") for e in events(plane, ns, "shop"))
    # printer columns
    table = plane.kubectl("get", "pl", "-n", ns).stdout
    assert table.split()[:7] == ["NAME", "PHASE", "READY", "CONSUMERS", "QUEUE", "LAG", "AGE"]
    assert "shop" in table and "Degraded" in table

    # spec update -> children change
    pipelines.patch("shop", {"spec": {"producer": {"publishWindow": 500}}})
    wait_for(
        "the producer to get publishWindow 500",
        lambda: (
            env_of(deployment(plane, ns, "shop-producer")).get("CDCFLOW_PUBLISH_WINDOW") == "500"
        ),
    )
    wait_for(
        "observedGeneration 2", lambda: pipelines.get("shop")["status"]["observedGeneration"] == 2
    )

    # drift: a child deleted by hand, and one edited by hand, are repaired
    old_uid = deployment(plane, ns, "shop-consumer").metadata.uid
    plane.apps_v1().delete_namespaced_deployment("shop-consumer", ns)
    wait_for(
        "the consumer Deployment to be recreated",
        lambda: (
            not gone(deployment, plane, ns, "shop-consumer")
            and deployment(plane, ns, "shop-consumer").metadata.uid != old_uid
        ),
    )
    plane.apps_v1().patch_namespaced_deployment_scale(
        "shop-producer", ns, {"spec": {"replicas": 3}}
    )
    wait_for(
        "the producer back at one replica",
        lambda: deployment(plane, ns, "shop-producer").spec.replicas == 1,
    )
    assert any(e.reason == "Repaired" for e in events(plane, ns, "shop"))

    # paused -> nothing touched (a deleted child stays deleted), and the status says so
    pipelines.patch("shop", {"spec": {"paused": True}})
    pipelines.wait_condition("shop", "Paused", "True")
    assert pipelines.get("shop")["status"]["phase"] == "Paused"
    plane.apps_v1().delete_namespaced_deployment("shop-producer", ns)
    time.sleep(TICKS)  # give the operator ticks in which it must not act
    assert gone(deployment, plane, ns, "shop-producer")
    pipelines.patch("shop", {"spec": {"paused": False}})
    wait_for(
        "the producer recreated after unpausing",
        lambda: not gone(deployment, plane, ns, "shop-producer"),
    )

    # invalid spec the CRD cannot catch -> InvalidSpec, nothing applied
    version = deployment(plane, ns, "shop-producer").metadata.resource_version
    pipelines.patch(
        "shop",
        {
            "spec": {
                "producer": {
                    "publishWindow": 700,
                    "resources": {
                        "requests": {"cpu": "2"},
                        "limits": {"cpu": "1", "memory": "1Gi"},
                    },
                }
            }
        },
    )
    invalid = pipelines.wait_condition("shop", "Ready", "False", "InvalidSpec")
    assert "cpu request 2 exceeds its limit 1" in invalid["message"]
    assert pipelines.get("shop")["status"]["phase"] == "Failed"
    time.sleep(TICKS)
    assert deployment(plane, ns, "shop-producer").metadata.resource_version == version
    assert env_of(deployment(plane, ns, "shop-producer"))["CDCFLOW_PUBLISH_WINDOW"] == "500"
    pipelines.patch("shop", {"spec": {"producer": {"resources": {"requests": {"cpu": "500m"}}}}})
    pipelines.wait_condition("shop", "Ready", "True", timeout=180)
    assert env_of(deployment(plane, ns, "shop-producer"))["CDCFLOW_PUBLISH_WINDOW"] == "700"

    # delete -> children collected; volumes retained (deletionPolicy Retain)
    claims_before = {
        c.metadata.name for c in plane.core_v1().list_namespaced_persistent_volume_claim(ns).items
    }
    assert len(claims_before) == 2
    pipelines.delete("shop")
    wait_for(
        "the children to be garbage-collected",
        lambda: (
            all(gone(deployment, plane, ns, name) for name in ("shop-producer", "shop-consumer"))
            and not plane.apps_v1().list_namespaced_stateful_set(ns).items
        ),
        timeout=180,
    )
    claims_after = {
        c.metadata.name for c in plane.core_v1().list_namespaced_persistent_volume_claim(ns).items
    }
    assert claims_after == claims_before
    assert operator.process.poll() is None, operator.tail()


@pytest.fixture
def queue_channel(amqp_url: str, broker_names):
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.queue_declare(broker_names.queue, durable=True)
    yield channel
    connection.close()


def test_consumers_follow_queue_depth(
    control_plane: ControlPlane,
    k8s_namespace: str,
    pipelines: Pipelines,
    run_operator,
    rabbitmq_node,
    amqp_url: str,
    broker_names,
    queue_channel,
) -> None:
    ns, plane = k8s_namespace, control_plane
    management = rabbitmq_node.management_url.replace("http://", "http://guest:guest@")
    secret(plane, ns, "mongo", {"uri": "mongodb://127.0.0.1:27017/"})
    secret(plane, ns, "amqp", {"url": amqp_url, "management": management})
    secret(plane, ns, "clickhouse", {"url": "http://default:pw@clickhouse.example:8123"})
    run_operator()
    pipelines.create(
        "scaled",
        {
            "source": {**MONGO, "mongoCollection": broker_names.collection},
            "broker": {
                "external": {
                    "urlSecret": {"name": "amqp", "key": "url"},
                    "managementUrlSecret": {"name": "amqp", "key": "management"},
                }
            },
            "warehouse": {"external": {"urlSecret": {"name": "clickhouse", "key": "url"}}},
            "scaling": {
                "minReplicas": 1,
                "maxReplicas": 4,
                "targetMessagesPerReplica": 100,
                "pollIntervalSeconds": 1,
                "scaleDownStabilizationSeconds": 5,
            },
        },
    )
    wait_for(
        "one consumer",
        lambda: (
            not gone(deployment, plane, ns, "scaled-consumer")
            and deployment(plane, ns, "scaled-consumer").spec.replicas == 1
        ),
    )
    for i in range(350):
        queue_channel.basic_publish("", broker_names.queue, f'{{"n": {i}}}'.encode())

    wait_for("four consumers", lambda: deployment(plane, ns, "scaled-consumer").spec.replicas == 4)
    # One reconcile scales the Deployment, then writes the status: the status may still
    # be the previous tick's for a moment.
    status = wait_for(
        "the status of the reconcile that scaled",
        lambda: (s := pipelines.get("scaled")["status"]).get("queueDepth") == 350 and s,
    )
    assert status["scaling"]["lastScaleReason"].startswith("ScaledUp")
    assert "rabbitmq-management" in status["scaling"]["depthSource"]
    scaled = [e for e in events(plane, ns, "scaled") if e.reason == "ScaledUp"]
    assert scaled and "consumers 1 -> 4" in scaled[-1].message

    queue_channel.queue_purge(broker_names.queue)
    wait_for(
        "back to one consumer after the window",
        lambda: deployment(plane, ns, "scaled-consumer").spec.replicas == 1,
        timeout=120,
    )
    down = pipelines.get("scaled")["status"]["scaling"]
    assert down["lastScaleReason"].startswith("ScaledDown")
    assert any(e.reason == "ScaledDown" for e in events(plane, ns, "scaled"))


def test_kubectl_scale_and_delete_policy(
    control_plane: ControlPlane, k8s_namespace: str, pipelines: Pipelines, run_operator
) -> None:
    ns, plane = k8s_namespace, control_plane
    storage = plane.provision_volumes(ns, 1)
    secret(plane, ns, "mongo", {"uri": "mongodb://127.0.0.1:27017/"})
    secret(plane, ns, "clickhouse", {"url": "http://default:pw@clickhouse.example:8123"})
    run_operator()
    pipelines.create(
        "manual",
        {
            "source": MONGO,
            "broker": {"managed": {"storage": "1Gi", "storageClassName": storage}},
            "warehouse": {"external": {"urlSecret": {"name": "clickhouse", "key": "url"}}},
            "scaling": {"enabled": False},
            "deletionPolicy": "Delete",
        },
    )
    pipelines.wait_condition("manual", "Ready", "True", timeout=240)
    plane.kubectl("scale", "pl", "manual", "-n", ns, "--replicas=3")
    wait_for("three consumers", lambda: deployment(plane, ns, "manual-consumer").spec.replicas == 3)
    wait_for(
        "status.replicas 3 (scale subresource)",
        lambda: pipelines.get("manual")["status"].get("replicas") == 3,
    )
    scale = plane.custom_objects().get_namespaced_custom_object_scale(
        "cdcflow.io", "v1alpha1", ns, "pipelines", "manual"
    )
    assert scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == ",".join(
        f"{k}={v}" for k, v in naming.selector("manual", naming.CONSUMER).items()
    )
    assert len(plane.core_v1().list_namespaced_persistent_volume_claim(ns).items) == 1
    pipelines.delete("manual")
    wait_for(
        "the broker's volume deleted with the Pipeline (deletionPolicy Delete)",
        lambda: not plane.core_v1().list_namespaced_persistent_volume_claim(ns).items,
        timeout=180,
    )
