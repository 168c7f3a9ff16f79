"""Checks of a Pipeline the CRD's schema and CEL rules cannot make.

``validate(body) -> problems``: pure, each problem one sentence that says what to
change. A spec with problems gets ``Ready=False, reason=InvalidSpec`` and no child is
touched. The CEL rules are checked here again, for specs that reach the operator
another way (an older CRD left in a cluster: Helm never upgrades ``crds/``).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from cdcflow import naming
from cdcflow_operator.crd import NAME_LIMIT
from cdcflow_operator.models import Pipeline, PipelineSpec

_QUANTITY = re.compile(r"^([0-9.]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_FACTORS = {
    None: 1.0,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def quantity(value: int | str) -> float | None:
    """A Kubernetes quantity as a number (None when it is not one)."""
    match = _QUANTITY.match(str(value))
    if not match:
        return None
    return float(match.group(1)) * _FACTORS[match.group(2)]


def _field(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc if not isinstance(part, int)) or "spec"


def parse(body: Any) -> tuple[Pipeline | None, list[str]]:
    """The Pipeline, or the problems that stop it from being parsed."""
    try:
        return Pipeline.from_body(body), []
    except ValidationError as error:
        return None, [
            f"spec.{_field(e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
            for e in error.errors()
        ]


def validate(pipeline: Pipeline) -> list[str]:
    """Problems of a parsed Pipeline, each with what to do."""
    spec: PipelineSpec = pipeline.spec
    problems: list[str] = []
    if len(pipeline.name) > NAME_LIMIT:
        problems.append(f"metadata.name: at most {NAME_LIMIT} characters (children add suffixes)")
    scaling = spec.scaling
    if scaling.min_replicas > scaling.max_replicas:
        problems.append("spec.scaling: minReplicas must be <= maxReplicas")
    if scaling.fallback_replicas > scaling.max_replicas:
        problems.append("spec.scaling: fallbackReplicas must be <= maxReplicas")
    if (spec.broker.managed is None) == (spec.broker.external is None):
        problems.append("spec.broker: set exactly one of managed and external")
    modes = [spec.warehouse.managed, spec.warehouse.external, spec.warehouse.embedded]
    if sum(m is not None for m in modes) != 1:
        problems.append("spec.warehouse: set exactly one of managed, external and embedded")
    if spec.warehouse.embedded is not None:
        many = (scaling.enabled and scaling.max_replicas > 1) or spec.consumer.replicas > 1
        if many or spec.consumer.parallelism > 1:
            problems.append(
                "spec.warehouse.embedded: chdb is single-process; use warehouse.managed or "
                "warehouse.external for more than one consumer"
            )
    queue = pipeline.queue
    if queue.endswith(naming.FAILED_QUEUE_SUFFIX):
        problems.append(
            f"spec.broker.queue: {queue!r} ends with {naming.FAILED_QUEUE_SUFFIX!r}, the suffix "
            "of dead-letter queues: choose another name"
        )
    for where, resources in _resources(spec):
        # Requests are checked with or without a limit: a bad request alone is refused by
        # the server only when the Deployment is applied, too late for InvalidSpec.
        for kind, values in (("requests", resources.requests), ("limits", resources.limits)):
            for name, value in values.items():
                if quantity(value) is None:
                    problems.append(
                        f"spec.{where}.resources.{kind}.{name}: {value!r} is not a Kubernetes "
                        "quantity such as 500m or 1Gi"
                    )
        for name, limit in resources.limits.items():
            request = resources.requests.get(name)
            low, high = quantity(request) if request is not None else None, quantity(limit)
            if low is not None and high is not None and low > high:
                problems.append(
                    f"spec.{where}.resources: {name} request {request} exceeds its limit {limit}"
                )
    for where, storage in _storage(spec):
        if quantity(storage) is None:
            problems.append(f"spec.{where}.storage: {storage!r} is not a quantity such as 10Gi")
    return problems


def _resources(spec: PipelineSpec) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = [
        ("producer", spec.producer.resources),
        ("consumer", spec.consumer.resources),
    ]
    if spec.broker.managed is not None:
        out.append(("broker.managed", spec.broker.managed.resources))
    if spec.warehouse.managed is not None:
        out.append(("warehouse.managed", spec.warehouse.managed.resources))
    return out


def _storage(spec: PipelineSpec) -> list[tuple[str, int | str]]:
    out: list[tuple[str, int | str]] = []
    if spec.broker.managed is not None:
        out.append(("broker.managed", spec.broker.managed.storage))
    if spec.warehouse.managed is not None:
        out.append(("warehouse.managed", spec.warehouse.managed.storage))
    if spec.warehouse.embedded is not None:
        out.append(("warehouse.embedded", spec.warehouse.embedded.storage))
    return out
