"""The ``Pipeline`` resource (``cdcflow.io/v1alpha1``) as typed models.

One source for the CRD's schema (:mod:`cdcflow_operator.crd`), the spec reference in
docs/operator.md and the operator's own parsing. The data plane's settings sections
(:mod:`cdcflow.config`) are embedded, not retyped: a field such as
``producer.publishWindow`` takes its name, description, default and bounds from
``ProducerSettings.publish_window``, so a bound changed in the data plane changes the
CRD on the next ``make crds``. Fields that may carry passwords never appear: the
spec names a Secret and a key instead (:class:`SecretRef`).
"""

from __future__ import annotations

import copy
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic.alias_generators import to_camel

from cdcflow import config, naming

GROUP = naming.GROUP
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Pipeline"
PLURAL = "pipelines"
SINGULAR = "pipeline"
SHORT_NAMES = ("pl",)

DEFAULT_IMAGE = "cdcflow/workers:0.1.0"
DEFAULT_FLINK_IMAGE = "cdcflow/flink:0.1.0"  # the workers image + Java 17 + the job server
DEFAULT_RABBITMQ_IMAGE = "rabbitmq:3.13-management"
DEFAULT_CLICKHOUSE_IMAGE = "clickhouse/clickhouse-server:25.8"

Quantity = Annotated[
    int | str,
    Field(description="A Kubernetes quantity: 500m, 1, 2Gi."),
]


class Model(BaseModel):
    """camelCase on the wire (Kubernetes' convention), snake_case in Python."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


def _volumes_fixed(component: str, what: str) -> tuple[str, str]:
    """A CEL transition rule: ``storage`` and ``storageClassName`` of a StatefulSet's
    volumes cannot change. volumeClaimTemplates are immutable, so the server would refuse
    the StatefulSet and the Pipeline would be stuck; refusing the edit says why at once."""
    return (
        # has() on both: the server also checks the rule against the CRD's own default
        # for the parent object, which leaves these keys out (nested defaults come later).
        "has(self.storage) == has(oldSelf.storage) && "
        "(!has(self.storage) || self.storage == oldSelf.storage) && "
        "has(self.storageClassName) == has(oldSelf.storageClassName) && "
        "(!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)",
        f"{component}.storage and {component}.storageClassName cannot change: the {what} "
        "StatefulSet's volumeClaimTemplates are immutable (resize its PersistentVolumeClaims "
        "by hand, or create a new Pipeline)",
    )


def rules(*pairs: tuple[str, str]) -> ConfigDict:
    """CEL rules (``x-kubernetes-validations``) a model's CRD schema carries.

    The API server enforces them; :mod:`cdcflow_operator.validation` checks the same
    conditions in Python, so specs that reach the operator another way are held to them.
    """
    return ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [{"rule": rule, "message": msg} for rule, msg in pairs]
        }
    )


class SecretRef(Model):
    """A key of a Secret in the Pipeline's namespace: how secrets enter a pod, by reference."""

    name: str = Field(
        min_length=1, max_length=253, description="Name of the Secret (same namespace)."
    )
    key: str = Field(min_length=1, max_length=253, description="Key in the Secret.")

    def to_config(self) -> config.SecretKeyRef:
        return config.SecretKeyRef(self.name, self.key)


class Resources(Model):
    """Compute resources of a container, as in a Pod spec."""

    requests: dict[str, Quantity] = Field(
        default_factory=dict, description="Guaranteed resources (cpu, memory)."
    )
    limits: dict[str, Quantity] = Field(default_factory=dict, description="Ceilings (cpu, memory).")

    def to_k8s(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.requests:
            out["requests"] = {k: str(v) for k, v in self.requests.items()}
        if self.limits:
            out["limits"] = {k: str(v) for k, v in self.limits.items()}
        return out


def _resources(cpu: str, memory: str, cpu_limit: str | None, memory_limit: str) -> Any:
    limits: dict[str, str] = {"memory": memory_limit}
    if cpu_limit:
        limits["cpu"] = cpu_limit
    return Field(
        default_factory=lambda: Resources(requests={"cpu": cpu, "memory": memory}, limits=limits),
        description="Container resources (requests and limits).",
    )


def embedded(
    section: type[config.Section], *, exclude: frozenset[str] = frozenset(), name: str
) -> type[Model]:
    """A camelCase model with ``section``'s fields (less ``exclude``), validated by it.

    Names, descriptions, defaults and bounds are copied from the data plane's section;
    the section's own validators run on every value (:meth:`to_section`), so a spec
    the workers would refuse is refused here too, with the same message.
    """
    fields: dict[str, Any] = {}
    for field_name, info in section.model_fields.items():
        if field_name in exclude or field_name in config.SECRET_FIELDS:
            continue
        info = copy.deepcopy(info)
        info.alias = None
        info.validation_alias = None
        info.serialization_alias = None
        fields[field_name] = (info.annotation, info)

    own = frozenset(fields)

    def to_section(self: Model) -> config.Section:
        return section.model_validate(self.model_dump(include=set(own), exclude_none=True))

    def _check(self: Model) -> Model:
        to_section(self)
        return self

    validators: dict[str, Any] = {"_check_section": model_validator(mode="after")(_check)}
    model: type[Model] = create_model(
        name, __base__=Model, __doc__=section.__doc__, __validators__=validators, **fields
    )
    setattr(model, "to_section", to_section)  # noqa: B010  (a method added to a built model)
    setattr(model, "section", section)  # noqa: B010
    return model


# --- source ----------------------------------------------------------------------------


class SnapshotMode(StrEnum):
    """When the producer reads the whole collection."""

    initial = "initial"  # with no saved resume token, or after history was lost


class DropPolicy(StrEnum):
    """What the producer does when the collection is dropped, renamed or invalidated."""

    resnapshot = "resnapshot"  # start a fresh stream; snapshot; rows not seen are tombstoned


_SourceBase = embedded(
    config.SourceSettings,
    exclude=frozenset({"mongo_tls_ca_file", "mongo_tls_cert_key_file"}),
    name="SourceSettingsSpec",
)


class SourceSpec(_SourceBase):  # type: ignore[misc,valid-type]
    """The MongoDB collection to capture; the URI (it may hold a password) from a Secret."""

    model_config = rules(
        (
            "self.mongoCollection == oldSelf.mongoCollection && self.mongoDb == oldSelf.mongoDb",
            "source.mongoDb and source.mongoCollection cannot change: create a new Pipeline",
        ),
    )

    uri_secret: SecretRef = Field(
        description="Secret key holding the MongoDB URI (mongodb:// or mongodb+srv://)."
    )
    snapshot: SnapshotMode = Field(
        SnapshotMode.initial,
        description="When to snapshot the collection: initial (no saved resume token, or "
        "history lost). The only mode the producer implements today.",
    )
    drop_policy: DropPolicy = Field(
        DropPolicy.resnapshot,
        description="On drop, rename or invalidate: resnapshot (fresh stream, snapshot, "
        "rows the snapshot did not see are tombstoned).",
    )


# --- broker ----------------------------------------------------------------------------


class ManagedBroker(Model):
    """A RabbitMQ StatefulSet owned by the Pipeline: quorum queues, Kubernetes peer discovery."""

    model_config = rules(_volumes_fixed("broker.managed", "RabbitMQ"))

    replicas: Literal[1, 3] = Field(
        1, description="RabbitMQ nodes: 1, or 3 for quorum queues that survive a node."
    )
    image: str = Field(DEFAULT_RABBITMQ_IMAGE, description="RabbitMQ image (management plugin).")
    storage: Quantity = Field("8Gi", description="Volume per node (PersistentVolumeClaim).")
    storage_class_name: str | None = Field(None, description="StorageClass of the volumes.")
    resources: Resources = _resources("250m", "512Mi", None, "1Gi")


class ExternalBroker(Model):
    """A RabbitMQ that exists already; its URLs (with passwords) come from Secrets."""

    url_secret: SecretRef = Field(description="Secret key holding the amqp:// or amqps:// URL.")
    management_url_secret: SecretRef | None = Field(
        None,
        description="Secret key holding the management API's URL (http(s)://user:pass@host:"
        "port/), for queue depth. Default: the AMQP host on port 15672 with its credentials.",
    )


_BrokerBase = embedded(
    config.BrokerSettings,
    exclude=frozenset({"amqp_tls_ca_file", "amqp_tls_cert_file", "amqp_tls_key_file"}),
    name="BrokerSettingsSpec",
)


class BrokerSpec(_BrokerBase):  # type: ignore[misc,valid-type]
    """RabbitMQ: managed by the operator, or external. Exactly one of the two."""

    model_config = rules(
        (
            "has(self.managed) != has(self.external)",
            "set exactly one of broker.managed and broker.external",
        ),
    )

    managed: ManagedBroker | None = Field(None, description="Run RabbitMQ for this Pipeline.")
    external: ExternalBroker | None = Field(None, description="Use an existing RabbitMQ.")


# --- warehouse -------------------------------------------------------------------------


class ManagedWarehouse(Model):
    """A ClickHouse server StatefulSet owned by the Pipeline."""

    model_config = rules(_volumes_fixed("warehouse.managed", "ClickHouse"))

    image: str = Field(DEFAULT_CLICKHOUSE_IMAGE, description="ClickHouse server image.")
    storage: Quantity = Field("20Gi", description="Data volume (PersistentVolumeClaim).")
    storage_class_name: str | None = Field(None, description="StorageClass of the volume.")
    resources: Resources = _resources("500m", "1Gi", None, "4Gi")


class ExternalWarehouse(Model):
    """A ClickHouse server that exists already; its URL (with a password) from a Secret."""

    url_secret: SecretRef = Field(description="Secret key holding the http(s):// URL.")


class EmbeddedWarehouse(Model):
    """chdb inside the one consumer pod, on a volume: single process, so one consumer."""

    storage: Quantity = Field("10Gi", description="Volume for the chdb data folder.")
    storage_class_name: str | None = Field(None, description="StorageClass of the volume.")


_WarehouseBase = embedded(
    config.WarehouseSettings,
    exclude=frozenset({"clickhouse_tls_ca_file"}),
    name="WarehouseSettingsSpec",
)


class WarehouseSpec(_WarehouseBase):  # type: ignore[misc,valid-type]
    """ClickHouse: managed server, external server, or embedded chdb. Exactly one."""

    model_config = rules(
        (
            "(has(self.managed) ? 1 : 0) + (has(self.external) ? 1 : 0) + "
            "(has(self.embedded) ? 1 : 0) == 1",
            "set exactly one of warehouse.managed, warehouse.external and warehouse.embedded",
        ),
    )

    managed: ManagedWarehouse | None = Field(None, description="Run ClickHouse for this Pipeline.")
    external: ExternalWarehouse | None = Field(None, description="Use an existing server.")
    embedded: EmbeddedWarehouse | None = Field(
        None, description="chdb in the consumer pod (one consumer at most)."
    )

    @property
    def is_server(self) -> bool:
        return self.embedded is None


# --- producer and consumer -------------------------------------------------------------

_ProducerBase = embedded(config.ProducerSettings, name="ProducerSettingsSpec")


class ProducerSpec(_ProducerBase):  # type: ignore[misc,valid-type]
    """The change-stream reader: always exactly one replica (one stream, one writer)."""

    resources: Resources = _resources("100m", "256Mi", None, "512Mi")


class ConsumerRunner(StrEnum):
    """How each consumer pod runs the Beam pipeline."""

    flink_embedded = "flink-embedded"  # Beam's Flink runner, Flink embedded in the pod
    inprocess = "inprocess"  # Beam's in-process runner


_ConsumerBase = embedded(
    config.ConsumerSettings,
    exclude=frozenset(
        {"runner", "idle_exit_s", "max_messages", "flink_master", "flink_job_server_jar"}
    ),
    name="ConsumerSettingsSpec",
)


class ConsumerSpec(_ConsumerBase):  # type: ignore[misc,valid-type]
    """The Beam consumers: competing consumers of the one queue, scaled from its depth."""

    runner: ConsumerRunner = Field(
        ConsumerRunner.flink_embedded,
        description="flink-embedded (Flink in each pod, LOOPBACK SDK harness) or inprocess.",
    )
    image: str | None = Field(
        None,
        description=(
            f"Consumer image; default: {DEFAULT_FLINK_IMAGE} (Java 17 and Beam's Flink job"
            " server) for flink-embedded, spec.image for inprocess."
        ),
    )
    replicas: int = Field(
        1,
        ge=0,
        le=1000,
        description="Consumer pods when scaling is off (the scale subresource writes it).",
    )
    resources: Resources = _resources("500m", "1Gi", None, "2Gi")


# --- scaling ---------------------------------------------------------------------------


class ScalingSpec(Model):
    """Consumer replicas from queue depth (ready + unacknowledged), KEDA-style and beyond."""

    enabled: bool = Field(True, description="Scale consumers from queue depth.")
    min_replicas: int = Field(1, ge=0, le=1000, description="Fewest consumers (0: scale to zero).")
    max_replicas: int = Field(10, ge=1, le=1000, description="Most consumers.")
    target_changes_per_replica: int = Field(
        1000,
        ge=1,
        description="Backlog in changes one consumer is expected to handle. Queue depth "
        "counts messages, and a message carries many changes (producer.packMaxChanges): "
        "the target in messages is this divided by the consumers' observed changes per "
        "message (1 until observed).",
    )
    target_messages_per_replica: int | None = Field(
        None,
        ge=1,
        description="Queue depth in messages one consumer is expected to handle; when set, "
        "used as is instead of targetChangesPerReplica.",
    )
    activation_threshold: int = Field(
        0,
        ge=0,
        description="From zero replicas, scale up only when depth exceeds this (running "
        "consumers are not stopped by it: they scale to zero only on an empty queue).",
    )
    scale_up_stabilization_seconds: int = Field(
        0, ge=0, le=3600, description="Scale up to the lowest recommendation of this window."
    )
    scale_down_stabilization_seconds: int = Field(
        300, ge=0, le=3600, description="Scale down to the highest recommendation of this window."
    )
    max_step: int = Field(
        4, ge=1, le=1000, description="Most replicas added or removed in one step."
    )
    fallback_replicas: int = Field(
        1, ge=0, le=1000, description="Replicas after failureThreshold failed depth reads."
    )
    failure_threshold: int = Field(
        3, ge=1, le=100, description="Failed depth reads in a row before falling back."
    )
    poll_interval_seconds: int = Field(
        15, ge=1, le=3600, description="Seconds between depth reads."
    )


class DeletionPolicy(StrEnum):
    """What happens to data volumes when the Pipeline is deleted."""

    retain = "Retain"
    delete = "Delete"


class PipelineSpec(Model):
    """What a user declares: one collection captured into one table."""

    image: str = Field(DEFAULT_IMAGE, description="Workers image (produce, consume, schema).")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="Pull policy of every cdcflow container."
    )
    source: SourceSpec = Field(description="The MongoDB collection to capture.")
    broker: BrokerSpec = Field(
        default_factory=lambda: BrokerSpec(managed=ManagedBroker()),
        description="RabbitMQ: managed or external.",
    )
    warehouse: WarehouseSpec = Field(
        default_factory=lambda: WarehouseSpec(managed=ManagedWarehouse()),
        description="ClickHouse: managed, external or embedded.",
    )
    producer: ProducerSpec = Field(
        default_factory=lambda: ProducerSpec(), description="The change-stream producer."
    )
    consumer: ConsumerSpec = Field(
        default_factory=lambda: ConsumerSpec(), description="The Beam consumers."
    )
    scaling: ScalingSpec = Field(
        default_factory=lambda: ScalingSpec(), description="Consumer autoscaling."
    )
    paused: bool = Field(False, description="Touch no child while true (status says so).")
    deletion_policy: DeletionPolicy = Field(
        DeletionPolicy.retain,
        description="Data volumes on delete: Retain (kept, unowned) or Delete.",
    )

    model_config = rules(
        (
            "!has(self.scaling) || self.scaling.minReplicas <= self.scaling.maxReplicas",
            "scaling.minReplicas must be <= scaling.maxReplicas",
        ),
        (
            "!has(self.scaling) || (self.scaling.fallbackReplicas <= self.scaling.maxReplicas)",
            "scaling.fallbackReplicas must be <= scaling.maxReplicas",
        ),
        (
            "!has(self.warehouse) || !has(self.warehouse.embedded) || "
            "((!has(self.scaling) || !self.scaling.enabled || self.scaling.maxReplicas <= 1) && "
            "(!has(self.consumer) || self.consumer.replicas <= 1))",
            "more than one consumer needs a server warehouse (warehouse.managed or "
            "warehouse.external): chdb (warehouse.embedded) is single-process",
        ),
        (
            "!has(self.warehouse) || !has(self.warehouse.embedded) || "
            "!has(self.consumer) || self.consumer.parallelism == 1",
            "consumer.parallelism > 1 needs a server warehouse: chdb is single-process",
        ),
    )


# --- status ----------------------------------------------------------------------------


class Condition(Model):
    """One condition, as core controllers write them."""

    type: str = Field(description="Ready, Reconciled, Scaling, Degraded or Paused.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="One CamelCase word a program can match.")
    message: str = Field("", description="What happened and what to do, for a person.")
    last_transition_time: str = Field(description="When status last flipped (RFC 3339).")
    observed_generation: int | None = Field(
        None, description="The generation this condition was computed from."
    )


class ConsumersStatus(Model):
    desired: int = Field(0, description="Replicas the operator asked for.")
    ready: int = Field(0, description="Consumer pods ready.")


class ScalingStatus(Model):
    last_scale_time: str | None = Field(None, description="When replicas last changed.")
    last_scale_reason: str | None = Field(None, description="Why they changed.")
    depth_source: str | None = Field(None, description="Where the last depth read came from.")
    failed_reads: int = Field(0, description="Failed depth reads in a row.")
    recommendations: list[list[float]] = Field(
        default_factory=list,
        description="[unix time, replicas] recommendations inside the stabilization windows.",
    )


class PipelineStatus(Model):
    """What the operator observed, for a person at a glance and for programs."""

    observed_generation: int | None = Field(None, description="Generation last reconciled.")
    phase: str | None = Field(
        None, description="Pending, Running, Scaling, Degraded, Paused or Failed."
    )
    ready: str | None = Field(None, description="Ready components over all, e.g. 4/4.")
    selector: str | None = Field(None, description="Consumer pods' selector (scale).")
    replicas: int | None = Field(None, description="Consumer pods ready (scale subresource).")
    conditions: list[Condition] = Field(default_factory=list, description="Conditions.")
    consumers: ConsumersStatus = Field(default_factory=lambda: ConsumersStatus())
    queue_depth: int | None = Field(None, description="Ready + unacknowledged messages.")
    capture_lag_seconds: float | None = Field(None, description="Producer's capture lag.")
    resume_token_age_seconds: float | None = Field(None, description="Producer's token age.")
    scaling: ScalingStatus = Field(default_factory=lambda: ScalingStatus())
    reconciled_spec_hash: str | None = Field(None, description="Hash of the spec last applied.")


class Pipeline(Model):
    """A whole ``Pipeline`` object as the operator sees it."""

    name: str
    namespace: str
    uid: str
    generation: int = 1
    spec: PipelineSpec
    status: PipelineStatus = Field(default_factory=lambda: PipelineStatus())

    @classmethod
    def from_body(cls, body: Any) -> Pipeline:
        """Parse a kopf body (or a plain dict) of a Pipeline."""
        meta = body["metadata"]
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta.get("uid", ""),
            generation=meta.get("generation", 1),
            spec=PipelineSpec.model_validate(dict(body.get("spec") or {})),
            status=PipelineStatus.model_validate(_known_status(dict(body.get("status") or {}))),
        )

    # Names ------------------------------------------------------------------------------
    def child(self, component: str) -> str:
        return naming.child_name(self.name, component)

    @property
    def queue(self) -> str:
        return naming.queue_name(self.spec.source.mongo_collection, self.spec.broker.queue)

    @property
    def failed_queue(self) -> str:
        return naming.failed_queue_name(self.queue)

    @property
    def table(self) -> str:
        return naming.table_name(
            self.spec.source.mongo_collection, self.spec.warehouse.clickhouse_table
        )


def _known_status(raw: dict[str, Any]) -> dict[str, Any]:
    """Status fields this model knows (kopf may keep its own keys there)."""
    known = {f.alias or n for n, f in PipelineStatus.model_fields.items()} | set(
        PipelineStatus.model_fields
    )
    return {k: v for k, v in raw.items() if k in known}
