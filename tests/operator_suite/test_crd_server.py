"""The generated CRD on the real API server: defaults, schema and CEL rejections, and
every child of a table of specs accepted by a server-side dry run."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from cdcflow_operator.kube import Cluster
from cdcflow_operator.manifests import build_all
from cdcflow_operator.models import Pipeline
from tests.control_plane import ControlPlane, api_message
from tests.operator_suite.conftest import Pipelines
from tests.operator_suite.specs import MONGO, SPECS, body


def test_server_applies_the_defaults(pipelines: Pipelines) -> None:
    created = pipelines.create("defaults", {"source": {"uriSecret": MONGO["uriSecret"]}})
    spec = created["spec"]
    assert spec["source"]["mongoDb"] == "media"
    assert spec["source"]["mongoCollection"] == "viewing_logs"
    assert spec["broker"]["managed"]["replicas"] == 1
    assert spec["broker"]["managed"]["resources"]["limits"]["memory"] == "1Gi"
    assert spec["warehouse"]["managed"]["storage"] == "20Gi"
    assert spec["consumer"]["runner"] == "flink-embedded"
    assert spec["scaling"]["scaleDownStabilizationSeconds"] == 300
    assert spec["producer"]["publishWindow"] == 1000
    assert spec["deletionPolicy"] == "Retain"
    # What the server stored is what the operator's model parses, unchanged.
    assert Pipeline.from_body({**created, "metadata": {**created["metadata"]}}).spec.paused is False


def _with(path: str, value: Any) -> dict[str, Any]:
    spec: dict[str, Any] = copy.deepcopy({"source": MONGO})
    node = spec
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return spec


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("no-source", {}, "spec.source: Required value"),
    ("no-uri", {"source": {"mongoCollection": "x"}}, "uriSecret: Required value"),
    (
        "min-over-max",
        _with("scaling", {"minReplicas": 5, "maxReplicas": 2}),
        "scaling.minReplicas must be <= scaling.maxReplicas",
    ),
    (
        "fallback-over-max",
        _with("scaling", {"maxReplicas": 2, "fallbackReplicas": 3}),
        "scaling.fallbackReplicas must be <= scaling.maxReplicas",
    ),
    (
        "chdb-many",
        {**_with("warehouse", {"embedded": {}}), "scaling": {"maxReplicas": 4}},
        "more than one consumer needs a server warehouse",
    ),
    (
        "chdb-parallel",
        {
            **_with("warehouse", {"embedded": {}}),
            "scaling": {"maxReplicas": 1},
            "consumer": {"parallelism": 2},
        },
        "consumer.parallelism > 1 needs a server warehouse",
    ),
    (
        "two-brokers",
        _with("broker", {"managed": {}, "external": {"urlSecret": {"name": "a", "key": "b"}}}),
        "set exactly one of broker.managed and broker.external",
    ),
    (
        "two-warehouses",
        _with("warehouse", {"managed": {}, "embedded": {}}),
        "set exactly one of warehouse.managed, warehouse.external and warehouse.embedded",
    ),
    ("broker-two-nodes", _with("broker", {"managed": {"replicas": 2}}), "Unsupported value: 2"),
    ("bad-runner", _with("consumer", {"runner": "spark"}), 'Unsupported value: "spark"'),
    ("bad-policy", {"source": MONGO, "deletionPolicy": "Shred"}, 'Unsupported value: "Shred"'),
    (
        "window-zero",
        _with("producer", {"publishWindow": 0}),
        "should be greater than or equal to 1",
    ),
    ("unknown-field", {"source": MONGO, "replicas": 3}, 'unknown field "spec.replicas"'),
    ("name-too-long-" + "x" * 30, {"source": MONGO}, "at most 40 characters"),
]


@pytest.fixture(scope="module")
def shared_namespace(control_plane: ControlPlane) -> Iterator[str]:
    """One namespace for the tests that only create (or fail to create) objects."""
    name = control_plane.create_namespace("crd")
    try:
        yield name
    finally:
        control_plane.delete_namespace(name)


@pytest.mark.parametrize(("name", "spec", "message"), BAD, ids=[b[0][:20] for b in BAD])
def test_bad_pipelines_are_rejected_with_the_rule_message(
    control_plane: ControlPlane, shared_namespace: str, pipeline_crd: str, name, spec, message
) -> None:
    api = control_plane.custom_objects()
    pipeline = {
        "apiVersion": "cdcflow.io/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": name},
        "spec": spec,
    }
    with pytest.raises(ApiException) as raised:
        api.create_namespaced_custom_object(
            "cdcflow.io",
            "v1alpha1",
            shared_namespace,
            "pipelines",
            pipeline,
            field_validation="Strict",
        )
    assert raised.value.status in (400, 422), api_message(raised.value)
    assert message in api_message(raised.value)


def test_source_collection_cannot_change(pipelines: Pipelines) -> None:
    pipelines.create("fixed", {"source": MONGO})
    with pytest.raises(ApiException) as raised:
        pipelines.patch("fixed", {"spec": {"source": {"mongoCollection": "other"}}})
    assert "cannot change: create a new Pipeline" in api_message(raised.value)


@pytest.mark.parametrize(
    ("name", "part", "managed", "change"),
    [
        ("vol-b-size", "broker", {"storage": "2Gi"}, {"storage": "3Gi"}),
        ("vol-b-class", "broker", {"storage": "2Gi"}, {"storageClassName": "fast"}),
        (
            "vol-w-class",
            "warehouse",
            {"storage": "2Gi", "storageClassName": "slow"},
            {"storageClassName": "fast"},
        ),
        ("vol-w-size", "warehouse", {"storage": "2Gi"}, {"storage": "4Gi"}),
    ],
)
def test_statefulset_volumes_cannot_change(
    pipelines: Pipelines, name: str, part: str, managed: dict[str, Any], change: dict[str, Any]
) -> None:
    """volumeClaimTemplates are immutable: the server refuses the edit, saying why,
    instead of accepting a spec the operator could never apply (other fields still can)."""
    pipelines.create(name, {"source": MONGO, part: {"managed": managed}})
    pipelines.patch(
        name, {"spec": {part: {"managed": {"resources": {"limits": {"memory": "2Gi"}}}}}}
    )
    with pytest.raises(ApiException) as raised:
        pipelines.patch(name, {"spec": {part: {"managed": change}}})
    message = api_message(raised.value)
    assert f"{part}.managed.storage and {part}.managed.storageClassName cannot change" in message


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_child_is_accepted_by_the_server(
    control_plane: ControlPlane, shared_namespace: str, name: str
) -> None:
    cluster = Cluster(control_plane.api_client())
    pipeline = Pipeline.from_body(body(name, SPECS[name], namespace=shared_namespace))
    for manifest in build_all(pipeline, 2):
        applied = cluster.apply(manifest, dry_run=True)
        assert applied["metadata"]["name"] == manifest["metadata"]["name"]
