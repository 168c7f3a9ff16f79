"""The producer Deployment, the consumer Deployment and the schema Job.

All three run the workers image (``cdcflow produce|consume|init-warehouse``) configured
by ``CDCFLOW_*`` env rendered from the spec's sections, secrets only as references.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cdcflow import config, naming
from cdcflow_operator.manifests.common import (
    CHDB_PATH,
    FLINK_JOB_SERVER_JAR,
    WORKERS_ACCOUNT,
    Manifest,
    amqp_secret,
    clickhouse_secret,
    metadata,
    scrape_annotations,
    worker_container,
    worker_env,
    worker_pod_spec,
)
from cdcflow_operator.models import DEFAULT_FLINK_IMAGE, ConsumerRunner, DeletionPolicy, Pipeline

CHDB_CLAIM = "warehouse"


def _sections(pipeline: Pipeline) -> dict[str, config.Section]:
    spec = pipeline.spec
    return {
        "source": spec.source.to_section(),
        "broker": spec.broker.to_section(),
        "warehouse": spec.warehouse.to_section(),
        "producer": spec.producer.to_section(),
        "consumer": spec.consumer.to_section(),
    }


def _secrets(pipeline: Pipeline, *fields: str) -> dict[str, config.SecretKeyRef]:
    refs: dict[str, config.SecretKeyRef | None] = {
        "mongo_uri": pipeline.spec.source.uri_secret.to_config(),
        "amqp_url": amqp_secret(pipeline),
        "clickhouse_url": clickhouse_secret(pipeline),
    }
    return {f: ref for f in fields if (ref := refs[f]) is not None}


def _template(pipeline: Pipeline, component: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {
            "labels": naming.labels(pipeline.name, component),
            "annotations": scrape_annotations(),
        },
        "spec": spec,
    }


def build_producer(pipeline: Pipeline) -> Manifest:
    """Exactly one producer, replaced with ``Recreate``: never two readers of one stream."""
    s = _sections(pipeline)
    env = worker_env(
        pipeline,
        s["source"],
        s["broker"],
        s["producer"],
        **_secrets(pipeline, "mongo_uri", "amqp_url"),
    )
    container = worker_container(
        pipeline,
        naming.PRODUCER,
        ["produce"],
        env,
        pipeline.spec.producer.resources.to_k8s(),
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(pipeline, naming.PRODUCER),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": naming.selector(pipeline.name, naming.PRODUCER)},
            "template": _template(
                pipeline,
                naming.PRODUCER,
                worker_pod_spec([container], service_account=pipeline.child(WORKERS_ACCOUNT)),
            ),
        },
    }


def consumer_env(pipeline: Pipeline) -> list[dict[str, Any]]:
    s = _sections(pipeline)
    env = worker_env(
        pipeline,
        s["source"],
        s["broker"],
        s["warehouse"],
        s["consumer"],
        **_secrets(pipeline, "amqp_url", "clickhouse_url"),
    )
    if pipeline.spec.consumer.runner is ConsumerRunner.flink_embedded:
        env += [
            {"name": "CDCFLOW_RUNNER", "value": config.Runner.flink.value},
            {"name": "CDCFLOW_FLINK_MASTER", "value": "[local]"},
            {"name": "CDCFLOW_FLINK_JOB_SERVER_JAR", "value": FLINK_JOB_SERVER_JAR},
        ]
    else:
        env.append({"name": "CDCFLOW_RUNNER", "value": config.Runner.inprocess.value})
    return env


def consumer_image(pipeline: Pipeline) -> str:
    """The consumer's image: the one named, else the one its runner needs.

    The Flink runner needs Java and the job server's jars, which the workers image
    (also the producer's) does not carry.
    """
    spec = pipeline.spec
    if spec.consumer.image:
        return spec.consumer.image
    if spec.consumer.runner is ConsumerRunner.flink_embedded:
        return DEFAULT_FLINK_IMAGE
    return spec.image


def build_consumer(pipeline: Pipeline, replicas: int) -> Manifest:
    """Competing consumers of the one queue; ``replicas`` comes from the autoscaler.

    With an embedded chdb warehouse there is one consumer at most, on a volume, and
    it is replaced with ``Recreate`` (chdb locks its folder: one process at a time).
    """
    spec = pipeline.spec
    embedded = spec.warehouse.embedded is not None
    volumes = []
    mounts = []
    if embedded:
        volumes.append(
            {"name": CHDB_CLAIM, "persistentVolumeClaim": {"claimName": pipeline.child(CHDB_CLAIM)}}
        )
        mounts.append({"name": CHDB_CLAIM, "mountPath": CHDB_PATH.rsplit("/", 1)[0]})
    container = worker_container(
        pipeline,
        naming.CONSUMER,
        ["consume"],
        consumer_env(pipeline),
        spec.consumer.resources.to_k8s(),
        image=consumer_image(pipeline),
        mounts=mounts,
    )
    strategy: dict[str, Any] = (
        {"type": "Recreate"}
        if embedded
        else {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(pipeline, naming.CONSUMER),
        "spec": {
            "replicas": min(replicas, 1) if embedded else replicas,
            "strategy": strategy,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": naming.selector(pipeline.name, naming.CONSUMER)},
            "template": _template(
                pipeline,
                naming.CONSUMER,
                worker_pod_spec(
                    [container], volumes=volumes, service_account=pipeline.child(WORKERS_ACCOUNT)
                ),
            ),
        },
    }


def build_chdb_claim(pipeline: Pipeline) -> Manifest | None:
    """The embedded warehouse's volume; owned (deleted with the Pipeline) only for Delete."""
    embedded = pipeline.spec.warehouse.embedded
    if embedded is None:
        return None
    owned = pipeline.spec.deletion_policy is DeletionPolicy.delete
    claim: Manifest = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(pipeline, naming.CONSUMER, pipeline.child(CHDB_CLAIM), owned=owned),
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": str(embedded.storage)}},
        },
    }
    if embedded.storage_class_name:
        claim["spec"]["storageClassName"] = embedded.storage_class_name
    return claim


def schema_hash(template: dict[str, Any]) -> str:
    """Short hash of the Job's whole pod template: a Job's template is immutable, so any
    change to it (image, env from any section, pull policy, resources) needs a new Job,
    and hashing only some inputs left a changed spec stuck on a refused apply."""
    text = json.dumps(template, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def build_schema_job(pipeline: Pipeline) -> Manifest | None:
    """``cdcflow init-warehouse``: the data plane applies its own DDL (one SQL source).

    None for an embedded chdb, which only the consumer process may open (it applies
    the same DDL at start).
    """
    if pipeline.spec.warehouse.embedded is not None:
        return None
    s = _sections(pipeline)
    env = worker_env(pipeline, s["source"], s["warehouse"], **_secrets(pipeline, "clickhouse_url"))
    container = worker_container(
        pipeline,
        naming.SCHEMA_JOB,
        ["init-warehouse"],
        env,
        {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
        probes=False,
    )
    pod = worker_pod_spec(
        [container], restart="OnFailure", service_account=pipeline.child(WORKERS_ACCOUNT)
    )
    template = {
        "metadata": {"labels": naming.labels(pipeline.name, naming.SCHEMA_JOB)},
        "spec": pod,
    }
    name = f"{pipeline.child(naming.SCHEMA_JOB)}-{schema_hash(template)}"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(pipeline, naming.SCHEMA_JOB, name),
        "spec": {"backoffLimit": 10, "template": template},
    }
