"""The planner's diff and the status conditions: pure, no cluster."""

from __future__ import annotations

from typing import Any

import pytest

from cdcflow_operator import status
from cdcflow_operator.planning import drift, plan

DEPLOY: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "p-producer", "labels": {"a": "b"}},
    "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "c", "args": ["x"]}]}}},
}


def live(**spec_overrides: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        **DEPLOY,
        "metadata": {**DEPLOY["metadata"], "uid": "u", "resourceVersion": "9"},
        "spec": {**DEPLOY["spec"], "strategy": {"type": "Recreate"}, **spec_overrides},
        "status": {"readyReplicas": 1},
    }
    return obj


def test_server_added_fields_are_not_drift() -> None:
    assert drift(DEPLOY, live()) is None


def test_edits_by_hand_are_drift_at_their_path() -> None:
    assert drift(DEPLOY, live(replicas=3)) == ".spec.replicas"
    edited = live(template={"spec": {"containers": [{"name": "c", "args": ["y"]}]}})
    assert drift(DEPLOY, edited) == ".spec.template.spec.containers[0].args[0]"


def _with_resources(resources: dict[str, Any], storage: str) -> dict[str, Any]:
    return {
        "kind": "StatefulSet",
        "metadata": {"name": "s"},
        "spec": {
            "template": {"spec": {"containers": [{"name": "c", "resources": resources}]}},
            "volumeClaimTemplates": [{"spec": {"resources": {"requests": {"storage": storage}}}}],
        },
    }


@pytest.mark.parametrize(
    ("ours", "servers"),
    [("0.5", "500m"), ("1000m", "1"), ("1", 1), ("1024Mi", "1Gi"), ("2048Ki", "2Mi")],
)
def test_quantities_the_server_normalised_are_not_drift(ours: Any, servers: Any) -> None:
    """The API server stores quantities in canonical form; comparing strings re-applied
    such children on every tick (and recorded a Repaired event each time)."""
    desired = _with_resources(
        {"requests": {"cpu": ours, "memory": ours}, "limits": {"memory": ours}}, str(ours)
    )
    stored = _with_resources(
        {"requests": {"cpu": servers, "memory": servers}, "limits": {"memory": servers}},
        str(servers),
    )
    assert drift(desired, stored) is None


def test_a_changed_quantity_is_still_drift() -> None:
    desired = _with_resources({"requests": {"cpu": "500m"}}, "1Gi")
    assert (
        drift(desired, _with_resources({"requests": {"cpu": "0.6"}}, "1Gi"))
        == ".spec.template.spec.containers[0].resources.requests.cpu"
    )
    assert (
        drift(desired, _with_resources({"requests": {"cpu": "0.5"}}, "1025Mi"))
        == ".spec.volumeClaimTemplates[0].spec.resources.requests.storage"
    )


def test_only_quantity_fields_are_compared_as_quantities() -> None:
    assert drift({"spec": {"replicas": "1"}}, {"spec": {"replicas": "1000m"}}) == ".spec.replicas"
    assert drift({"data": {"x": "1Gi"}}, {"data": {"x": "1024Mi"}}) == ".data.x"


def test_empty_lists_the_server_omits_are_not_drift() -> None:
    policy = {"kind": "NetworkPolicy", "metadata": {"name": "n"}, "spec": {"ingress": []}}
    assert drift(policy, {"kind": "NetworkPolicy", "metadata": {"name": "n"}, "spec": {}}) is None


def test_plan_creates_repairs_and_deletes_only_owned_leftovers() -> None:
    old_job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "p-schema-old"}}
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "p-rabbitmq"}}
    actions = plan(
        [DEPLOY, service],
        {("Deployment", "p-producer"): live(replicas=2)},
        {("Job", "p-schema-old"): old_job, ("PersistentVolumeClaim", "data"): claim},
    )
    assert [(a.verb, a.kind, a.name) for a in actions] == [
        ("repair", "Deployment", "p-producer"),
        ("create", "Service", "p-rabbitmq"),
        ("delete", "Job", "p-schema-old"),  # volumes are never deleted by the planner
    ]
    assert plan([DEPLOY], {("Deployment", "p-producer"): live()}, {}) == []


def test_transition_time_moves_only_when_status_flips() -> None:
    first = status.set_condition([], "Ready", "False", "ComponentsNotReady", "m", now=100)
    same = status.set_condition(first, "Ready", "False", "Applying", "other", now=200)
    assert same[0].last_transition_time == first[0].last_transition_time
    assert same[0].reason == "Applying"
    flipped = status.set_condition(same, "Ready", "True", "AllComponentsReady", "", now=300)
    assert flipped[0].last_transition_time == status.timestamp(300)


def test_phase_is_derived_from_conditions() -> None:
    conditions = status.set_condition([], "Ready", "True", "AllComponentsReady", "", now=1)
    assert status.phase(conditions) == "Running"
    scaling = status.set_condition(conditions, "Scaling", "True", "ScaledUp", "", now=2)
    assert status.phase(scaling) == "Scaling"
    invalid = status.set_condition(scaling, "Ready", "False", "InvalidSpec", "", now=3)
    assert status.phase(invalid) == "Failed"
    paused = status.set_condition(invalid, "Paused", "True", "Paused", "", now=4)
    assert status.phase(paused) == "Paused"
