"""Children built from a table of specs: strict-valid for Kubernetes 1.32-1.37, and shaped
as the architecture says (one producer, restricted pods, probes, secrets by reference)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from cdcflow import naming
from cdcflow_operator.manifests import build_all
from cdcflow_operator.manifests.workers import build_consumer, build_producer, build_schema_job
from cdcflow_operator.models import DEFAULT_FLINK_IMAGE, DEFAULT_IMAGE, Pipeline
from tests.operator_suite.specs import MONGO, SPECS, body

VERSIONS = ["1.32", "1.33", "1.34", "1.35", "1.36", "1.37"]


def children(name: str, replicas: int = 2) -> list[dict[str, Any]]:
    return build_all(Pipeline.from_body(body(name, SPECS[name])), replicas)


def pods(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m["spec"]["template"]["spec"] for m in manifests if "template" in m.get("spec", {})]


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("version", VERSIONS)
def test_every_child_is_strict_valid(name: str, version: str) -> None:
    for manifest in children(name):
        kubernetes_validate.validate(manifest, version, strict=True)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_pods_are_restricted_with_resources_and_probes(name: str) -> None:
    for pod in pods(children(name)):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert container["resources"]["requests"]  # limits: defaults, or as the user set
            if container["name"] in (naming.PRODUCER, naming.CONSUMER):
                assert container["livenessProbe"]["httpGet"]["path"] == naming.LIVENESS_PATH
                assert container["readinessProbe"]["httpGet"]["path"] == naming.READINESS_PATH
                assert container["livenessProbe"]["httpGet"]["port"] == naming.METRICS_PORT


@pytest.mark.parametrize("name", sorted(SPECS))
def test_secrets_are_only_references(name: str) -> None:
    for pod in pods(children(name)):
        for container in pod["containers"]:
            for var in container.get("env", []):
                if (
                    var["name"] in ("CDCFLOW_MONGO_URI", "CDCFLOW_AMQP_URL")
                    or "PASS" in var["name"]
                ):
                    assert "value" not in var and "secretKeyRef" in var["valueFrom"], var
                if var["name"] == "CDCFLOW_CLICKHOUSE_URL" and "value" in var:
                    assert var["value"].startswith("chdb://")  # embedded: no password


def test_secret_references_point_at_the_spec_secrets() -> None:
    env = {
        v["name"]: v
        for v in build_producer(Pipeline.from_body(body("p", SPECS["external-everything"])))[
            "spec"
        ]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["CDCFLOW_MONGO_URI"]["valueFrom"]["secretKeyRef"] == {"name": "mongo", "key": "uri"}
    assert env["CDCFLOW_AMQP_URL"]["valueFrom"]["secretKeyRef"] == {"name": "amqp", "key": "url"}
    assert env["CDCFLOW_QUEUE"]["value"] == "views_q"


def test_one_producer_replaced_with_recreate() -> None:
    for name in SPECS:
        producer = build_producer(Pipeline.from_body(body(name, SPECS[name])))
        assert producer["spec"]["replicas"] == 1
        assert producer["spec"]["strategy"] == {"type": "Recreate"}


def test_consumer_replicas_and_runner() -> None:
    flink = build_consumer(Pipeline.from_body(body("p", SPECS["defaults"])), 4)
    assert flink["spec"]["replicas"] == 4
    env = {
        v["name"]: v.get("value") for v in flink["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["CDCFLOW_RUNNER"] == "flink" and env["CDCFLOW_FLINK_MASTER"] == "[local]"
    assert env["CDCFLOW_METRICS_PORT"] == str(naming.METRICS_PORT)
    chdb = build_consumer(Pipeline.from_body(body("p", SPECS["embedded-chdb"])), 4)
    assert chdb["spec"]["replicas"] == 1 and chdb["spec"]["strategy"] == {"type": "Recreate"}


def test_the_consumer_image_is_the_one_its_runner_needs() -> None:
    """The workers image has no Java: a Flink consumer on it could never start."""

    def image(spec: dict[str, Any]) -> str:
        consumer = build_consumer(Pipeline.from_body(body("p", spec)), 1)
        return str(consumer["spec"]["template"]["spec"]["containers"][0]["image"])

    source = SPECS["defaults"]["source"]
    assert image({"source": source}) == DEFAULT_FLINK_IMAGE != DEFAULT_IMAGE
    assert image({"source": source, "image": "me/workers:2"}) == DEFAULT_FLINK_IMAGE
    assert image(
        {"source": source, "image": "me/workers:2", "consumer": {"runner": "inprocess"}}
    ) == ("me/workers:2")
    assert image({"source": source, "consumer": {"image": "me/flink:2"}}) == "me/flink:2"
    producer = build_producer(Pipeline.from_body(body("p", {"source": source})))
    assert producer["spec"]["template"]["spec"]["containers"][0]["image"] == DEFAULT_IMAGE


def test_every_child_is_owned_and_labelled() -> None:
    for name in SPECS:
        for manifest in children(name):
            meta = manifest["metadata"]
            assert meta["labels"][naming.PIPELINE_LABEL] == name
            if manifest["kind"] != "PersistentVolumeClaim":
                assert meta["ownerReferences"][0]["uid"] == "uid-1"
                assert meta["ownerReferences"][0]["controller"] is True


def test_deletion_policy_sets_claim_retention() -> None:
    kept = {m["kind"] + m["metadata"]["name"]: m for m in children("defaults")}
    gone = {m["kind"] + m["metadata"]["name"]: m for m in children("three-node-broker")}
    policy = "persistentVolumeClaimRetentionPolicy"
    assert kept["StatefulSetdefaults-rabbitmq"]["spec"][policy]["whenDeleted"] == "Retain"
    assert gone["StatefulSetthree-node-broker-rabbitmq"]["spec"][policy]["whenDeleted"] == "Delete"
    chdb = next(m for m in children("embedded-chdb") if m["kind"] == "PersistentVolumeClaim")
    assert "ownerReferences" not in chdb["metadata"]  # Retain: the volume outlives the Pipeline


def test_network_policies_allow_only_the_architecture_flows() -> None:
    policies = {
        m["metadata"]["labels"][naming.COMPONENT_LABEL]: m["spec"]
        for m in children("defaults")
        if m["kind"] == "NetworkPolicy"
    }
    assert set(policies) == {"producer", "consumer", "schema", "rabbitmq", "clickhouse"}
    warehouse_from = [
        peer["podSelector"]["matchLabels"][naming.COMPONENT_LABEL]
        for rule in policies["clickhouse"]["ingress"]
        for peer in rule["from"]
        if "podSelector" in peer
    ]
    assert sorted(warehouse_from) == ["consumer", "schema"]  # never the producer
    producer_to = [
        peer.get("podSelector", {}).get("matchLabels", {}).get(naming.COMPONENT_LABEL)
        for rule in policies["producer"]["egress"]
        for peer in rule.get("to", [])
    ]
    assert "clickhouse" not in producer_to and "rabbitmq" in producer_to
    for spec in policies.values():
        assert spec["policyTypes"] == ["Ingress", "Egress"]


def test_schema_job_is_renamed_by_any_change_to_its_pod_template() -> None:
    """A Job's pod template is immutable: every change to it must make a new Job (a new
    name), or the apply is refused and the Pipeline stays stuck; other changes must not."""

    def job(spec: dict[str, Any]) -> dict[str, Any]:
        built = build_schema_job(Pipeline.from_body(body("p", spec)))
        assert built is not None
        return built

    base = {"source": MONGO}
    names = {
        "base": job(base)["metadata"]["name"],
        "pull": job({**base, "imagePullPolicy": "Always"})["metadata"]["name"],
        "source": job({"source": {**MONGO, "offsetsCollection": "offsets2"}})["metadata"]["name"],
        "table": job({**base, "warehouse": {"managed": {}, "clickhouseTable": "t2"}})["metadata"][
            "name"
        ],
    }
    assert len(set(names.values())) == len(names), names
    unrelated = job({**base, "scaling": {"maxReplicas": 7}, "paused": True})
    assert unrelated["metadata"]["name"] == names["base"]
    assert unrelated["metadata"]["name"].startswith("p-schema-")


def test_each_statefulset_is_governed_by_a_headless_service() -> None:
    """A StatefulSet's serviceName must name a headless Service (stable pod DNS names);
    a ClusterIP Service there gives the pods none."""
    for name in ("defaults", "three-node-broker"):
        built = children(name)
        services = {m["metadata"]["name"]: m for m in built if m["kind"] == "Service"}
        sets = [m for m in built if m["kind"] == "StatefulSet"]
        assert len(sets) == 2
        for statefulset in sets:
            governing = services[statefulset["spec"]["serviceName"]]
            assert governing["spec"]["clusterIP"] == "None"
            assert governing["spec"]["selector"] == statefulset["spec"]["selector"]["matchLabels"]
