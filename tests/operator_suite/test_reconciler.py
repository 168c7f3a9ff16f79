"""One reconcile against an in-memory API: a refused child is reported and does not hold
back the others, and observed status fields never outlive a failed read.

The fake keeps what the reconciler writes the way the API server does: children by
(kind, name), the status by JSON merge patch (RFC 7386: a null deletes the key), so a
field the reconciler forgets to clear stays, as it would on a real cluster.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from cdcflow_operator import kube, reconciler
from cdcflow_operator.broker import DepthReadError
from cdcflow_operator.scaling import DepthReading
from tests.operator_suite.specs import SPECS, body

IMMUTABLE = (
    'StatefulSet.apps "p-rabbitmq" is invalid: spec: Forbidden: updates to statefulset spec '
    "for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', "
    "'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' "
    "are forbidden"
)


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class FakeCluster:
    """The Cluster calls a reconcile makes, in memory; ``refuse`` maps a kind to the
    error the server answers an apply of it with."""

    def __init__(self, refuse: dict[str, kube.KubeError] | None = None) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.status: dict[str, Any] = {}
        self.refuse = refuse or {}
        self.applied: list[tuple[str, str]] = []
        self.secrets = {("mongo", "uri"): "mongodb://m/"}

    def apply(self, manifest: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        key = (manifest["kind"], manifest["metadata"]["name"])
        if manifest["kind"] in self.refuse:
            raise self.refuse[manifest["kind"]]
        self.applied.append(key)
        self.objects[key] = copy.deepcopy(manifest)
        return manifest

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self.objects.pop((kind, name), None)

    def list_children(self, namespace: str, pipeline: str) -> list[dict[str, Any]]:
        return list(self.objects.values())

    def pods(self, namespace: str, selector: dict[str, str]) -> list[Any]:
        return []

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        return self.secrets.get((name, key))

    def create_secret(self, manifest: dict[str, Any]) -> bool:
        for key, value in (manifest.get("stringData") or {}).items():
            self.secrets[(manifest["metadata"]["name"], key)] = value
        return True

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.status = merge_patch(self.status, status)

    def event(self, *args: Any) -> None:
        pass

    def run(self, read: Any, *, scale: bool = True, now: float = 1000.0) -> None:
        pipeline = body("p", SPECS["defaults"])
        pipeline["status"] = copy.deepcopy(self.status)
        reconciler.reconcile(pipeline, self, now, scale=scale, read_depth=read)  # type: ignore[arg-type]


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def reads(depth: int) -> Any:
    return lambda url, vhost, queue: DepthReading(depth, 0, "rabbitmq-management test")


def fails(url: str, vhost: str, queue: str) -> DepthReading:
    raise DepthReadError("rabbitmq-management test: timed out")


def test_a_refused_child_is_reported_and_the_others_are_still_applied() -> None:
    refused = kube.KubeError(
        f"apply StatefulSet ns/p-rabbitmq: HTTP 422: {IMMUTABLE}", temporary=False, status=422
    )
    cluster = FakeCluster(refuse={"StatefulSet": refused})
    with pytest.raises(reconciler.ApplyFailed) as raised:
        cluster.run(reads(0))
    assert raised.value.temporary is False
    applied = {name for kind, name in cluster.applied if kind == "Deployment"}
    assert applied == {"p-producer", "p-consumer"}  # after the refused StatefulSets
    assert any(kind == "Job" for kind, _ in cluster.applied)
    reconciled = condition(cluster.status, "Reconciled")
    assert (reconciled["status"], reconciled["reason"]) == ("False", "ApplyFailed")
    assert IMMUTABLE in reconciled["message"]
    assert condition(cluster.status, "Ready")["reason"] == "ApplyFailed"
    assert cluster.status["phase"] == "Failed"


def test_a_temporary_refusal_asks_for_a_retry() -> None:
    busy = kube.KubeError("apply Service ns/p-rabbitmq: HTTP 503: busy", temporary=True)
    cluster = FakeCluster(refuse={"Service": busy})
    with pytest.raises(reconciler.ApplyFailed) as raised:
        cluster.run(reads(0))
    assert raised.value.temporary is True
    assert ("Deployment", "p-consumer") in cluster.applied


def test_the_servers_own_message_is_what_the_status_shows() -> None:
    error = ApiException(status=422, reason="Unprocessable Entity")
    error.body = json.dumps(
        {
            "kind": "Status",
            "status": "Failure",
            "reason": "Invalid",
            "code": 422,
            "message": IMMUTABLE,
        }
    )
    text = str(kube._error("apply StatefulSet ns/p-rabbitmq", error))
    assert text == f"apply StatefulSet ns/p-rabbitmq: HTTP 422: {IMMUTABLE}"


def test_observed_fields_are_cleared_when_reads_fail() -> None:
    cluster = FakeCluster()
    cluster.status = {
        "captureLagSeconds": 3.5,
        "resumeTokenAgeSeconds": 9.0,
    }  # from a producer that answered before
    cluster.run(reads(0))  # the first reconcile makes the broker's credentials Secret
    cluster.run(reads(42))
    assert cluster.status["queueDepth"] == 42
    assert cluster.status["scaling"]["depthSource"] == "rabbitmq-management test"
    assert "captureLagSeconds" not in cluster.status  # no producer pod answers here
    cluster.run(fails, now=1100.0)  # a later poll: the broker does not answer
    for key in reconciler.OBSERVED_FIELDS:
        assert key not in cluster.status, key
    assert "depthSource" not in cluster.status["scaling"]
    assert cluster.status["scaling"]["failedReads"] == 1  # the rest of scaling is kept


def test_a_paused_pipeline_keeps_what_was_last_observed() -> None:
    cluster = FakeCluster()
    cluster.run(reads(0))
    cluster.run(reads(7))
    paused = body("p", {**SPECS["defaults"], "paused": True})
    paused["status"] = copy.deepcopy(cluster.status)
    reconciler.reconcile(paused, cluster, 1200.0, read_depth=fails)  # type: ignore[arg-type]
    assert cluster.status["queueDepth"] == 7
    assert condition(cluster.status, "Paused")["status"] == "True"
