"""One level-based reconcile: observe -> validate -> decide -> plan -> apply -> status.

Called the same way on create, update, resume and every timer tick, so a missed event
changes nothing: the next tick sees the difference and repairs it. The order follows
the Flink Kubernetes Operator's reconcile(): nothing is written before the spec is
known to be valid, and a paused Pipeline is only observed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from cdcflow import naming
from cdcflow_operator import manifests, observation, planning, scaling, status, validation
from cdcflow_operator.kube import Cluster, KubeError
from cdcflow_operator.manifests import clickhouse, rabbitmq
from cdcflow_operator.models import ConsumersStatus, Pipeline, PipelineStatus

log = logging.getLogger(__name__)


class InvalidSpec(Exception):
    """The spec cannot be reconciled; the message says what to change."""


class ApplyFailed(Exception):
    """The API server refused (or failed) one or more children; raised after the status
    says so (``Reconciled=False, reason=ApplyFailed``) and every other child was tried.
    ``temporary`` when retrying any of them may help (kopf then backs off and retries)."""

    def __init__(self, errors: list[KubeError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors
        self.temporary = any(e.temporary for e in errors)


@dataclass
class Outcome:
    """What one reconcile did: the status written, the actions, the scale decision."""

    status: dict[str, Any]
    actions: list[planning.Action] = field(default_factory=list)
    decision: scaling.ScaleDecision | None = None
    problems: list[str] = field(default_factory=list)
    failures: list[KubeError] = field(default_factory=list)


def spec_hash(body: Any) -> str:
    return hashlib.sha256(
        json.dumps(dict(body.get("spec") or {}), sort_keys=True, default=str).encode()
    ).hexdigest()[:12]


OBSERVED_FIELDS = ("queueDepth", "captureLagSeconds", "resumeTokenAgeSeconds")
OBSERVED_SCALING_FIELDS = ("depthSource",)
"""Status fields read from the world on each reconcile. The status is a merge patch, in
which an absent key keeps the stored value: when a read fails these are sent as explicit
nulls, so the status shows "unknown" instead of the last value ever read."""


def _write_status(
    cluster: Cluster, body: Any, pipeline_status: PipelineStatus, *, observed: bool = False
) -> dict[str, Any]:
    """Merge-patch the status; ``observed`` clears the observed fields that are unknown."""
    meta = body["metadata"]
    payload = pipeline_status.model_dump(by_alias=True, mode="json", exclude_none=True)
    if observed:
        for key in OBSERVED_FIELDS:
            payload.setdefault(key, None)
        scaling_payload = payload.setdefault("scaling", {})
        for key in OBSERVED_SCALING_FIELDS:
            scaling_payload.setdefault(key, None)
    cluster.patch_status(meta["namespace"], meta["name"], payload)
    return payload


def _previous_status(body: Any) -> PipelineStatus:
    try:
        return PipelineStatus.model_validate(observation_safe(dict(body.get("status") or {})))
    except ValueError:
        return PipelineStatus()


def observation_safe(raw: dict[str, Any]) -> dict[str, Any]:
    known = {f.alias or n for n, f in PipelineStatus.model_fields.items()}
    return {k: v for k, v in raw.items() if k in known}


def reconcile(
    body: Any,
    cluster: Cluster,
    now: float,
    *,
    scale: bool = True,
    read_depth: observation.DepthReader | None = None,
) -> Outcome:
    """Bring a Pipeline's children to its spec, scale consumers, write its status.

    ``scale=False`` (create/update) keeps the current consumer count: only the timer,
    at the spec's poll interval, moves it. Raises :class:`InvalidSpec` after writing
    ``Ready=False, reason=InvalidSpec`` when the spec cannot be reconciled.
    """
    meta = body["metadata"]
    generation = int(meta.get("generation") or 1)
    previous = _previous_status(body)
    conditions = list(previous.conditions)

    def cond(type_: str, state: status.Status, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = status.set_condition(
            conditions, type_, state, reason, message, now=now, generation=generation
        )

    pipeline, problems = validation.parse(body)
    if pipeline is not None:
        problems += validation.validate(pipeline)
    if pipeline is None or problems:
        message = "; ".join(problems)
        cond(status.READY, "False", "InvalidSpec", message)
        cond(status.RECONCILED, "False", "InvalidSpec", "no child was changed: fix the spec")
        new = previous.model_copy(
            update={"conditions": conditions, "observed_generation": generation}
        )
        new = new.model_copy(update={"phase": status.phase(conditions)})
        _write_status(cluster, body, new)
        raise InvalidSpec(message)

    if pipeline.spec.paused:
        cond(status.PAUSED, "True", "Paused", "spec.paused is true: no child is touched")
        cond(status.RECONCILED, "Unknown", "Paused", "reconcile is paused")
        new = previous.model_copy(
            update={
                "conditions": conditions,
                "observed_generation": generation,
                "phase": status.phase(conditions),
            }
        )
        return Outcome(_write_status(cluster, body, new))
    cond(status.PAUSED, "False", "Running", "reconciling")

    seen = observation.observe(pipeline, cluster, read_depth=read_depth)
    _ensure_credentials(pipeline, cluster, seen)

    current = seen.consumer_replicas
    if current is None:
        current = (
            pipeline.spec.scaling.min_replicas
            if pipeline.spec.scaling.enabled
            else pipeline.spec.consumer.replicas
        )
    history = scaling.history_from_status(
        previous.scaling.recommendations, previous.scaling.failed_reads
    )
    decision = scaling.desired_replicas(
        scaling.Observation(current, seen.reading, seen.read_error),
        pipeline.spec.scaling,
        history,
        now,
        consumer=pipeline.spec.consumer,
    )
    replicas = decision.replicas if (scale or not pipeline.spec.scaling.enabled) else current
    if pipeline.spec.warehouse.embedded is not None:
        replicas = min(replicas, 1)

    desired = manifests.build_all(pipeline, replicas)
    actions = planning.plan(desired, seen.children, observation.owned_children(seen, pipeline.uid))
    failures, refused = _apply(pipeline, cluster, actions)
    if ("Deployment", pipeline.child(naming.CONSUMER)) in refused:
        replicas = current  # the refused Deployment still runs the old count

    scaled = replicas != current
    scaling_status = previous.scaling
    if scale or not pipeline.spec.scaling.enabled:
        recs, failed = scaling.history_to_status(decision.history)
        scaling_status = scaling_status.model_copy(
            update={
                "recommendations": recs,
                "failed_reads": failed,
                "depth_source": seen.reading.source if seen.reading else None,
            }
        )
    if scaled:
        scaling_status = scaling_status.model_copy(
            update={
                "last_scale_time": status.timestamp(now),
                "last_scale_reason": f"{decision.reason}: {decision.message}",
            }
        )
        cluster.event(
            pipeline.namespace,
            pipeline.name,
            pipeline.uid,
            "Normal",
            decision.reason,
            f"consumers {current} -> {replicas}: {decision.message}",
        )
    for action in actions:
        if action.verb == "repair" and (action.kind, action.name) not in refused:
            cluster.event(
                pipeline.namespace,
                pipeline.name,
                pipeline.uid,
                "Normal",
                "Repaired",
                action.describe(),
            )

    components = {c: seen.components.get(c) for c in _expected_components(pipeline)}
    not_ready = [c for c, s in components.items() if s is None or not s.ok]
    done = [a for a in actions if (a.kind, a.name) not in refused]
    fresh = [a for a in done if a.verb != "delete"]
    if failures:
        cond(
            status.RECONCILED,
            "False",
            "ApplyFailed",
            f"{len(failures)} of {len(actions)} children refused: "
            + "; ".join(str(e) for e in failures),
        )
    else:
        cond(
            status.RECONCILED,
            "True",
            "Applied" if actions else "UpToDate",
            f"{len(fresh)} children applied, {len(done) - len(fresh)} deleted"
            if actions
            else "every child matches the spec",
        )
    if seen.missing_secrets:
        cond(
            status.DEGRADED,
            "True",
            "SecretMissing",
            "; ".join(seen.missing_secrets) + ": create it, or fix the reference",
        )
    elif seen.read_error and decision.reason in ("FallbackReplicas", "DepthUnknown"):
        cond(status.DEGRADED, "True", "DepthUnavailable", decision.message)
    else:
        cond(status.DEGRADED, "False", "AsExpected", "no problem seen")
    ready_count = sum(1 for c in components.values() if c is not None and c.ok)
    if failures:
        cond(status.READY, "False", "ApplyFailed", "a child was refused: see Reconciled")
    elif not_ready or actions:
        cond(
            status.READY,
            "False",
            "ComponentsNotReady" if not_ready else "Applying",
            ("waiting for " + ", ".join(not_ready)) if not_ready else "children being applied",
        )
    else:
        cond(status.READY, "True", "AllComponentsReady", "every component is ready")
    consumer_state = seen.components.get(naming.CONSUMER)
    scaling_now = scaled or (consumer_state is not None and consumer_state.ready != replicas)
    cond(
        status.SCALING,
        "True" if scaling_now else "False",
        decision.reason if scaled or not scaling_now else "ReplicasChanging",
        decision.message,
    )
    new = PipelineStatus(
        observed_generation=generation,
        conditions=conditions,
        ready=f"{ready_count}/{len(components)}",
        selector=",".join(
            f"{k}={v}" for k, v in naming.selector(pipeline.name, naming.CONSUMER).items()
        ),
        replicas=consumer_state.ready if consumer_state else 0,
        consumers=ConsumersStatus(
            desired=replicas, ready=consumer_state.ready if consumer_state else 0
        ),
        queue_depth=seen.reading.depth if seen.reading else None,
        capture_lag_seconds=seen.capture_lag_seconds,
        resume_token_age_seconds=seen.resume_token_age_seconds,
        scaling=scaling_status,
        reconciled_spec_hash=spec_hash(body),
    )
    new = new.model_copy(update={"phase": status.phase(conditions)})
    outcome = Outcome(
        _write_status(cluster, body, new, observed=True), actions, decision, failures=failures
    )
    if failures:
        raise ApplyFailed(failures)
    return outcome


def _expected_components(pipeline: Pipeline) -> list[str]:
    out = [naming.PRODUCER, naming.CONSUMER]
    if pipeline.spec.broker.managed is not None:
        out.append(naming.BROKER)
    if pipeline.spec.warehouse.managed is not None:
        out.append(naming.WAREHOUSE)
    if pipeline.spec.warehouse.embedded is None:
        out.append(naming.SCHEMA_JOB)
    return out


def _ensure_credentials(pipeline: Pipeline, cluster: Cluster, seen: observation.Observed) -> None:
    """Managed services' logins: generated once, stored in a Secret, never logged."""
    if seen.credentials.get("broker") is False:
        cluster.create_secret(
            rabbitmq.credentials_secret(
                pipeline, secrets.token_urlsafe(24), secrets.token_urlsafe(32)
            )
        )
    if seen.credentials.get("warehouse") is False:
        cluster.create_secret(clickhouse.credentials_secret(pipeline, secrets.token_urlsafe(24)))


def _apply(
    pipeline: Pipeline, cluster: Cluster, actions: list[planning.Action]
) -> tuple[list[KubeError], set[planning.Key]]:
    """Every action is tried: one refused child (an immutable field, a quota) must not
    hold back the others, such as the producer or consumer update. Returns the errors
    and the (kind, name) of the children they were for."""
    errors: list[KubeError] = []
    failed: set[planning.Key] = set()
    for action in actions:
        log.info("%s/%s: %s", pipeline.namespace, pipeline.name, action.describe())
        try:
            if action.verb == "delete":
                cluster.delete(action.api_version, action.kind, pipeline.namespace, action.name)
            elif action.manifest is not None:
                cluster.apply(action.manifest)
        except KubeError as error:
            log.warning("%s/%s: %s", pipeline.namespace, pipeline.name, error)
            errors.append(error)
            failed.add((action.kind, action.name))
    return errors, failed
