"""Observe a Pipeline's world, read only: its children, their readiness, the queue.

Everything the planner and the autoscaler need is gathered here, once per reconcile;
nothing is written. The API is reached through :class:`cdcflow_operator.kube.Cluster`,
the broker through :mod:`cdcflow_operator.broker`.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from cdcflow import metrics, naming
from cdcflow.urls import scrub
from cdcflow_operator import broker
from cdcflow_operator.kube import Cluster
from cdcflow_operator.manifests.common import (
    AMQP_URL_KEY,
    BROKER_CREDENTIALS,
    MANAGEMENT_URL_KEY,
    WAREHOUSE_CREDENTIALS,
)
from cdcflow_operator.models import Pipeline, SecretRef
from cdcflow_operator.scaling import DepthReading

DepthReader = Callable[[str, str, str], DepthReading]
MetricsReader = Callable[[str], dict[str, float]]
METRICS_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class ComponentState:
    ready: int
    desired: int

    @property
    def ok(self) -> bool:
        return self.ready >= self.desired


@dataclass
class Observed:
    """One look at a Pipeline's children and its queue."""

    children: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    missing_secrets: list[str] = field(default_factory=list)
    credentials: dict[str, bool] = field(default_factory=dict)
    components: dict[str, ComponentState] = field(default_factory=dict)
    consumer_replicas: int | None = None
    reading: DepthReading | None = None
    read_error: str | None = None
    capture_lag_seconds: float | None = None
    resume_token_age_seconds: float | None = None


def read_metrics(url: str) -> dict[str, float]:
    """A worker's /metrics as {name: value} (first sample of each), with a timeout."""
    with urllib.request.urlopen(url, timeout=METRICS_TIMEOUT_S) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values.setdefault(sample.name, sample.value)
    return values


def _state(obj: dict[str, Any]) -> ComponentState:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if obj["kind"] == "Job":
        return ComponentState(1 if status.get("succeeded") else 0, 1)
    return ComponentState(int(status.get("readyReplicas") or 0), int(spec.get("replicas") or 0))


def _owned_by(obj: dict[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


def _secret_refs(pipeline: Pipeline) -> list[tuple[str, SecretRef]]:
    spec = pipeline.spec
    refs = [("source.uriSecret", spec.source.uri_secret)]
    if spec.broker.external is not None:
        refs.append(("broker.external.urlSecret", spec.broker.external.url_secret))
        if spec.broker.external.management_url_secret is not None:
            refs.append(
                ("broker.external.managementUrlSecret", spec.broker.external.management_url_secret)
            )
    if spec.warehouse.external is not None:
        refs.append(("warehouse.external.urlSecret", spec.warehouse.external.url_secret))
    return refs


def management_endpoint(pipeline: Pipeline, cluster: Cluster) -> tuple[str, str] | None:
    """(management URL, vhost) of the Pipeline's broker, from Secrets; None if unknown."""
    ns = pipeline.namespace
    external = pipeline.spec.broker.external
    if external is None:
        name = pipeline.child(BROKER_CREDENTIALS)
        url = cluster.secret_value(ns, name, MANAGEMENT_URL_KEY)
        amqp = cluster.secret_value(ns, name, AMQP_URL_KEY)
        return (url, broker.vhost_of(amqp)) if url and amqp else None
    amqp = cluster.secret_value(ns, external.url_secret.name, external.url_secret.key)
    if amqp is None:
        return None
    ref = external.management_url_secret
    url = cluster.secret_value(ns, ref.name, ref.key) if ref else None
    return (url or broker.management_url_from_amqp(amqp), broker.vhost_of(amqp))


def observe(
    pipeline: Pipeline,
    cluster: Cluster,
    *,
    read_depth: DepthReader | None = None,
    read_producer_metrics: MetricsReader | None = None,
    read_consumer_metrics: MetricsReader | None = None,
) -> Observed:
    """Children owned by the Pipeline, their readiness, referenced Secrets, depth, lag."""
    seen = Observed()
    ns = pipeline.namespace
    for obj in cluster.list_children(ns, pipeline.name):
        meta = obj["metadata"]
        seen.children[(obj["kind"], meta["name"])] = obj
        component = (meta.get("labels") or {}).get(naming.COMPONENT_LABEL)
        if obj["kind"] in ("Deployment", "StatefulSet", "Job") and component:
            seen.components[component] = _state(obj)
    consumer = seen.children.get(("Deployment", pipeline.child(naming.CONSUMER)))
    if consumer is not None:
        seen.consumer_replicas = int((consumer.get("spec") or {}).get("replicas") or 0)
    for where, ref in _secret_refs(pipeline):
        if cluster.secret_value(ns, ref.name, ref.key) is None:
            seen.missing_secrets.append(f"spec.{where}: Secret {ref.name!r} key {ref.key!r}")
    if pipeline.spec.broker.managed is not None:
        seen.credentials["broker"] = (
            cluster.secret_value(ns, pipeline.child(BROKER_CREDENTIALS), AMQP_URL_KEY) is not None
        )
    if pipeline.spec.warehouse.managed is not None:
        seen.credentials["warehouse"] = (
            cluster.secret_value(ns, pipeline.child(WAREHOUSE_CREDENTIALS), "url") is not None
        )
    _observe_depth(pipeline, cluster, seen, read_depth or broker.read_depth)
    _observe_producer(pipeline, cluster, seen, read_producer_metrics or read_metrics)
    _observe_changes_per_message(pipeline, cluster, seen, read_consumer_metrics or read_metrics)
    return seen


def _observe_depth(pipeline: Pipeline, cluster: Cluster, seen: Observed, read: DepthReader) -> None:
    try:
        endpoint = management_endpoint(pipeline, cluster)
    except ValueError as error:  # a malformed URL in a Secret: report it, do not crash
        seen.read_error = scrub(f"the broker's URL in its Secret is malformed: {error}")
        return
    if endpoint is None:
        seen.read_error = "the broker's URL Secret is missing"
        return
    url, vhost = endpoint
    try:
        seen.reading = read(url, vhost, pipeline.queue)
    except broker.DepthReadError as error:
        seen.read_error = str(error)


def _pod_metrics(
    pipeline: Pipeline, cluster: Cluster, component: str, read: MetricsReader
) -> Iterator[dict[str, float]]:
    """The /metrics of each Running pod of a component that answers.

    Pods that do not answer (simulated nodes, a pod starting) are skipped: what they
    would say stays unknown rather than failing the reconcile.
    """
    for pod in cluster.pods(pipeline.namespace, naming.selector(pipeline.name, component)):
        ip = getattr(pod.status, "pod_ip", None)
        if not ip or getattr(pod.status, "phase", None) != "Running":
            continue
        try:
            yield read(f"http://{ip}:{naming.METRICS_PORT}{naming.METRICS_PATH}")
        except (OSError, ValueError):
            continue


def _observe_producer(
    pipeline: Pipeline, cluster: Cluster, seen: Observed, read: MetricsReader
) -> None:
    """Capture lag and resume-token age from the producer pod's /metrics, if reachable."""
    for values in _pod_metrics(pipeline, cluster, naming.PRODUCER, read):
        seen.capture_lag_seconds = values.get(metrics.sample_name(metrics.CAPTURE_LAG_SECONDS))
        seen.resume_token_age_seconds = values.get(
            metrics.sample_name(metrics.RESUME_TOKEN_AGE_SECONDS)
        )
        return


def _observe_changes_per_message(
    pipeline: Pipeline, cluster: Cluster, seen: Observed, read: MetricsReader
) -> None:
    """Mean changes per consumed message over the running consumer pods (for the
    scaler: queue depth counts messages). Left unknown when no consumer answers."""
    if seen.reading is None:
        return
    total = messages = 0.0
    for values in _pod_metrics(pipeline, cluster, naming.CONSUMER, read):
        total += values.get(metrics.sample_name(metrics.CHANGES_PER_MESSAGE, "_sum"), 0.0)
        messages += values.get(metrics.sample_name(metrics.CHANGES_PER_MESSAGE, "_count"), 0.0)
    if messages > 0:
        seen.reading = replace(seen.reading, changes_per_message=total / messages)


def owned_children(seen: Observed, uid: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The observed children whose owner is this Pipeline (what may be deleted)."""
    return {key: obj for key, obj in seen.children.items() if _owned_by(obj, uid)}
