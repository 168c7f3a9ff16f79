"""Every child of a Pipeline, built by pure functions: ``build_*(pipeline) -> dict``.

:func:`build_all` is the desired state the planner compares with what it observes.
Credentials Secrets of managed services are not here: they are made once, with
generated passwords, by the reconciler (see :mod:`cdcflow_operator.planning`).
"""

from __future__ import annotations

from cdcflow_operator.manifests import clickhouse, policies, rabbitmq, workers
from cdcflow_operator.manifests.common import Manifest
from cdcflow_operator.models import Pipeline

__all__ = ["Manifest", "build_all"]


def build_all(pipeline: Pipeline, consumer_replicas: int) -> list[Manifest]:
    """The desired children, in apply order (accounts and config before workloads)."""
    spec = pipeline.spec
    out: list[Manifest] = [*policies.build_service_accounts(pipeline)]
    if spec.broker.managed is not None:
        out += [rabbitmq.build_config(pipeline), *rabbitmq.build_services(pipeline)]
        out.append(rabbitmq.build_statefulset(pipeline))
    if spec.warehouse.managed is not None:
        out += [
            clickhouse.build_config(pipeline),
            clickhouse.build_headless_service(pipeline),
            clickhouse.build_service(pipeline),
        ]
        out.append(clickhouse.build_statefulset(pipeline))
    claim = workers.build_chdb_claim(pipeline)
    if claim is not None:
        out.append(claim)
    job = workers.build_schema_job(pipeline)
    if job is not None:
        out.append(job)
    out.append(workers.build_producer(pipeline))
    out.append(workers.build_consumer(pipeline, consumer_replicas))
    out += policies.build_disruption_budgets(pipeline)
    out += policies.build_network_policies(pipeline)
    return out
