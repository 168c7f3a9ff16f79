"""Settings in sections, composed into one flat model for workers and the CLI.

Every option comes from, in order of precedence: a CLI flag, a ``CDCFLOW_*``
environment variable, a ``.env`` file in the working directory, the default here.
Kubernetes pods are configured with environment variables only, so nothing a
worker needs may exist solely as a CLI flag.

The defaults run the local stack: MongoDB (nx-27017) on 127.0.0.1:27017, the
local RabbitMQ, Beam's in-process runner and an embedded ClickHouse (chdb) under
``.cdcflow/warehouse``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cdcflow import naming
from cdcflow.errors import ConfigError
from cdcflow.naming import LOCAL_CONSUMER_METRICS_PORT, METRICS_PATH, METRICS_PORT
from cdcflow.urls import ServiceUrl, Url

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class Runner(StrEnum):
    """Beam runners the consumer knows how to configure."""

    inprocess = "inprocess"  # Beam's FnApiRunner: local demo and tests
    flink = "flink"  # portable Flink runner (embedded or a cluster): see docs/runners.md


class LogFormat(StrEnum):
    text = "text"
    json = "json"


class Section(BaseModel):
    """One group of settings: what one part of cdcflow needs, and only that.

    Sections are the single source of every option's name, description, default and
    bounds. :class:`Settings` composes them into the flat ``CDCFLOW_*`` environment
    that workers and the CLI read; the operator's Pipeline spec embeds the same
    sections; Beam transforms and DoFns receive only the sections they use. Nothing
    here touches the filesystem: files named here exist inside pods, not where a spec
    is validated, so :meth:`Settings.check_files` runs at worker start instead.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True)

    @classmethod
    def of(cls: type[_S], settings: BaseModel) -> _S:
        """This section's values out of composed settings (or another section)."""
        return cls.model_validate({name: getattr(settings, name) for name in cls.model_fields})

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled without passwords: Beam pickles every DoFn with what it holds and
        ships the bytes to its workers (a Flink job's graph, a worker pool). A URL's
        password stays in this process; unpickling elsewhere takes it from that
        worker's own ``CDCFLOW_*`` environment (in a pod: a Secret reference)."""
        values: dict[str, Any] = {}
        sealed: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, ServiceUrl) and value.password is not None:
                value, sealed[name] = _seal(value)
            values[name] = value
        return (_unseal, (type(self), values, sealed))


_SEALED: dict[str, ServiceUrl] = {}  # token -> URL with its password, this process only
_TOKENS: dict[str, str] = {}  # revealed URL -> its token, so pickling again reuses it


def _seal(url: ServiceUrl) -> tuple[ServiceUrl, str]:
    """The URL without its password, and a random token that finds it in this process."""
    token = _TOKENS.setdefault(url.reveal(), uuid.uuid4().hex)
    _SEALED[token] = url
    return dataclasses.replace(url, password=None), token


def _unseal(cls: type[_S], values: dict[str, Any], sealed: dict[str, str]) -> _S:
    for name, token in sealed.items():
        url = _SEALED.get(token)
        if url is None:
            variable = f"CDCFLOW_{name.upper()}"
            from_env = os.environ.get(variable)
            if not from_env:
                raise ConfigError(
                    f"{cls.__name__}.{name} was pickled without its password, which stays in "
                    f"the process that pickled it: set {variable} in this worker's "
                    "environment (in Kubernetes, from a Secret reference)"
                )
            url = ServiceUrl.parse(from_env)
        values[name] = url
    return cls.model_validate(values)


_S = TypeVar("_S", bound=Section)


def _plain(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"{name!r}: use letters, digits and underscores only")
    return name


class SourceSettings(Section):
    """The MongoDB collection to capture."""

    mongo_uri: Url = Field(
        default="mongodb://127.0.0.1:27017/?directConnection=true",  # type: ignore[assignment]
        description="MongoDB URI: mongodb:// or mongodb+srv:// (Atlas; TLS on by default).",
    )
    mongo_tls_ca_file: Path | None = Field(None, description="CA bundle for MongoDB TLS.")
    mongo_tls_cert_key_file: Path | None = Field(
        None, description="Client certificate + key (PEM) for MongoDB X.509 auth."
    )
    mongo_db: str = Field("media", description="Source database.")
    mongo_collection: str = Field("viewing_logs", description="Source collection to capture.")
    offsets_collection: str = Field(
        "cdcflow_offsets", description="Collection (in the source database) holding resume tokens."
    )

    @field_validator("mongo_uri")
    @classmethod
    def _mongo_scheme(cls, url: ServiceUrl) -> ServiceUrl:
        if url.scheme not in ("mongodb", "mongodb+srv"):
            raise ValueError("MongoDB URI must start with mongodb:// or mongodb+srv://")
        return url

    @field_validator("mongo_db", "mongo_collection", "offsets_collection")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        return _plain(name)


class ConnectionSettings(Section):
    """How long any client waits for its service (MongoDB, RabbitMQ, ClickHouse)."""

    server_timeout_s: float = Field(
        5.0, gt=0, description="Seconds to wait for a service at start before giving up."
    )


class BrokerSettings(Section):
    """RabbitMQ: where to publish and consume, and the queue's dead-lettering."""

    amqp_url: Url = Field(
        default="amqp://guest:guest@127.0.0.1:5672/%2F",  # type: ignore[assignment]
        description="RabbitMQ URL: amqp:// or amqps:// (TLS); the path is the vhost.",
    )
    amqp_tls_ca_file: Path | None = Field(None, description="CA bundle for amqps://.")
    amqp_tls_cert_file: Path | None = Field(None, description="Client certificate for amqps://.")
    amqp_tls_key_file: Path | None = Field(None, description="Client key for amqps://.")
    exchange: str = Field(
        "cdcflow", description="Durable direct exchange the producer publishes to."
    )
    queue: str | None = Field(
        None, description="Queue name; defaults to the collection name (bound with it as key)."
    )
    delivery_limit: int = Field(
        20,
        ge=1,
        description="Quorum-queue x-delivery-limit: deliveries before the broker dead-letters "
        "a message that keeps failing (crashes and restarts count as deliveries).",
    )

    @field_validator("amqp_url")
    @classmethod
    def _amqp_scheme(cls, url: ServiceUrl) -> ServiceUrl:
        if url.scheme not in ("amqp", "amqps"):
            raise ValueError("RabbitMQ URL must start with amqp:// or amqps://")
        return url


class WarehouseSettings(Section):
    """ClickHouse: the embedded chdb or a server, and the table to load."""

    clickhouse_url: Url = Field(
        default="chdb://.cdcflow/warehouse",  # type: ignore[assignment]
        description="ClickHouse: chdb:///abs/dir or chdb://rel/dir (embedded), http(s)://host:8123.",
    )
    clickhouse_database: str = Field("cdcflow", description="Warehouse database.")
    clickhouse_table: str | None = Field(
        None, description="Warehouse table; defaults to the collection name."
    )
    clickhouse_tls_ca_file: Path | None = Field(None, description="CA bundle for https://.")
    clickhouse_tls_verify: bool = Field(True, description="Verify the server certificate (https).")

    @field_validator("clickhouse_url")
    @classmethod
    def _clickhouse_scheme(cls, url: ServiceUrl) -> ServiceUrl:
        if url.scheme not in ("chdb", "http", "https"):
            raise ValueError("ClickHouse URL must start with chdb://, http:// or https://")
        return url

    @field_validator("clickhouse_database")
    @classmethod
    def _plain_database(cls, name: str) -> str:
        return _plain(name)

    @field_validator("clickhouse_table")
    @classmethod
    def _plain_table(cls, name: str | None) -> str | None:
        return None if name is None else _plain(name)


class ProducerSettings(Section):
    """Change capture and publishing."""

    publish_window: int = Field(
        1000, ge=1, le=65535, description="Publishes awaiting a broker confirm, at most."
    )
    offset_flush_s: float = Field(
        1.0, gt=0, description="Seconds between saves of the confirmed resume token."
    )
    snapshot_batch: int = Field(1000, ge=1, description="Documents per snapshot read batch.")
    stream_batch: int = Field(1000, ge=1, description="Change-stream cursor batch size.")
    pack_max_changes: int = Field(
        100,
        ge=1,
        le=10000,
        description="Changes packed into one AMQP message, at most (1: one change per "
        "message). Queue depth then counts messages, not changes.",
    )
    pack_max_bytes: int = Field(
        120_000,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Bytes of one packed message, at most (a change larger than this "
        "travels alone); the default fits one AMQP frame (128 KiB).",
    )
    pack_linger_s: float = Field(
        0.01,
        ge=0,
        le=1.0,
        description="Seconds a partly filled message waits for more changes before it is "
        "published (a burst fills it at once; a trickle pays at most this in freshness).",
    )
    mirror_drop_as_deletes: bool = Field(
        False,
        description="When the source collection is dropped, mark every warehouse row of it "
        "deleted (default: keep the warehouse as it is and stop capture).",
    )


class ConsumerSettings(Section):
    """The Beam pipeline: runner, bundles, stop conditions."""

    runner: Runner = Field(
        Runner.inprocess,
        description="Beam runner: inprocess (FnApiRunner) or flink (embedded Flink; `make flink`).",
    )
    prefetch: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="RabbitMQ consumer prefetch (QoS), in messages. Default: 2000 in-process; "
        "on Flink, since acks wait for checkpoints, enough messages for consume_rate x "
        "(checkpoint interval + 1 s) + a batch of changes, counting pack_max_changes changes "
        "per message (full batch messages, as at high rates), and at least 2000 (which "
        "covers the partly filled messages of a trickle).",
    )
    consume_rate: float = Field(
        4000.0,
        gt=0,
        description="Changes/s the Flink consumer must sustain; sizes its default prefetch.",
    )
    batch_max_messages: int = Field(
        5000,
        ge=1,
        description="Changes per bundle (one warehouse insert): a bundle takes messages until "
        "they carry this many changes (a batch message counts all of its own). A trickle "
        "closes a bundle after batch_max_s; larger inserts cost less per row.",
    )
    batch_max_s: float = Field(
        0.2, gt=0, description="Seconds a batch keeps filling after its first message."
    )
    idle_exit_s: float | None = Field(
        None, gt=0, description="Stop the consumer after this many idle seconds (demo, tests)."
    )
    max_messages: int | None = Field(
        None,
        ge=1,
        description="Stop the consumer after this many changes, counted per message (demo, tests).",
    )
    flink_master: str = Field(
        "[local]", description="Flink master for --runner flink: [local] embeds Flink."
    )
    flink_version: str = Field("1.19", description="Flink version of the job server.")
    flink_job_server_jar: Path | None = Field(
        None,
        description="Beam Flink job-server jar; default: the one `make flink` puts in "
        "~/.cache/cdcflow/flink (nothing is downloaded at run time).",
    )
    flink_job_server_heap_mb: int = Field(
        1024, ge=256, description="Java heap of the Flink job server (embedded Flink)."
    )
    checkpointing_interval_ms: int = Field(
        5000, ge=1000, description="Flink checkpoint interval; acks happen after checkpoints."
    )
    parallelism: int = Field(1, ge=1, description="Competing RabbitMQ consumers per pipeline.")


class SimulatorSettings(Section):
    """The workload ``cdcflow simulate`` (and the demo) writes."""

    rate: float = Field(350.0, gt=0, description="Target write rate in events/s (simulate, demo).")
    duration_s: float | None = Field(None, gt=0, description="Stop simulating after seconds.")
    events: int | None = Field(None, ge=1, description="Stop simulating after this many events.")
    insert_ratio: float = Field(0.6, ge=0, le=1, description="Share of inserts in the mix.")
    update_ratio: float = Field(0.3, ge=0, le=1, description="Share of updates in the mix.")
    delete_ratio: float = Field(0.1, ge=0, le=1, description="Share of deletes in the mix.")
    bad_ratio: float = Field(
        0.0, ge=0, le=1, description="Share of writes that break the cleaning rules."
    )
    seed: int = Field(42, description="Random seed: same seed, same workload.")
    catalog_size: int = Field(500, ge=1, description="Videos in the Zipf-like catalog.")
    users: int = Field(5000, ge=1, description="Distinct simulated users.")
    write_batch: int = Field(500, ge=1, description="Operations per bulk_write.")

    @model_validator(mode="after")
    def _mix_sums_to_one(self) -> Self:
        total = self.insert_ratio + self.update_ratio + self.delete_ratio
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"insert/update/delete ratios must add up to 1 (they add up to {total:g})"
            )
        return self


class ObservabilitySettings(Section):
    """What every worker exposes: metrics and health endpoints, logs."""

    metrics_port: int = Field(
        METRICS_PORT, ge=0, le=65535, description="Port for /metrics, /healthz, /readyz (0: off)."
    )
    metrics_host: str = Field("0.0.0.0", description="Interface for the metrics server.")
    log_format: LogFormat = Field(LogFormat.text, description="Log format: text or json.")
    log_level: str = Field("INFO", description="Log level: DEBUG, INFO, WARNING, ERROR.")

    @field_validator("log_level")
    @classmethod
    def _level(cls, level: str) -> str:
        level = level.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("log level must be DEBUG, INFO, WARNING or ERROR")
        return level


class ToolSettings(Section):
    """Options of the local tools: the demo's folder, where ``cdcflow status`` looks."""

    data_dir: Path = Field(Path(".cdcflow"), description="Local state of the demo (git-ignored).")
    producer_metrics_url: Url = Field(
        default=f"http://127.0.0.1:{METRICS_PORT}{METRICS_PATH}",  # type: ignore[assignment]
        description="Where `cdcflow status` reads the producer.",
    )
    consumer_metrics_url: Url = Field(
        default=f"http://127.0.0.1:{LOCAL_CONSUMER_METRICS_PORT}{METRICS_PATH}",  # type: ignore[assignment]
        description="Where `cdcflow status` reads the consumer.",
    )

    @field_validator("producer_metrics_url", "consumer_metrics_url")
    @classmethod
    def _http_scheme(cls, url: ServiceUrl) -> ServiceUrl:
        if url.scheme not in ("http", "https"):
            raise ValueError("a metrics URL must start with http:// or https://")
        return url


class QueueSettings(ConnectionSettings, BrokerSettings):
    """The broker and connection sections with the derived queue names: all a client of
    the pipeline's queues needs. What the consumer's DoFns hold instead of
    :class:`Settings`, so Beam pickles no source URI, warehouse URL or tool option."""

    queue_name: str = Field(description="The main queue (see naming.queue_name).")
    failed_queue_name: str = Field(description="The failed queue of the main queue.")
    routing_key: str = Field(description="The key binding the main queue to the exchange.")


class TableSettings(ConnectionSettings, WarehouseSettings):
    """The warehouse and connection sections with the derived table name: all a client
    of the pipeline's table needs (the consumer's write DoFn holds this, nothing more)."""

    table_name: str = Field(description="The warehouse table (see naming.table_name).")


SECTIONS: dict[str, type[Section]] = {
    "source": SourceSettings,
    "connection": ConnectionSettings,
    "broker": BrokerSettings,
    "warehouse": WarehouseSettings,
    "producer": ProducerSettings,
    "consumer": ConsumerSettings,
    "simulator": SimulatorSettings,
    "observability": ObservabilitySettings,
    "tools": ToolSettings,
}
"""Every section by name, in the order the README lists them."""

SECRET_FIELDS = frozenset({"mongo_uri", "amqp_url", "clickhouse_url"})
"""Fields whose value may carry a password: rendered for pods only as Secret references."""

FILE_FIELDS = (
    "mongo_tls_ca_file",
    "mongo_tls_cert_key_file",
    "amqp_tls_ca_file",
    "amqp_tls_cert_file",
    "amqp_tls_key_file",
    "clickhouse_tls_ca_file",
)


class Settings(  # the MRO lists sections last-first: fields come out in SECTIONS order
    BaseSettings,
    ToolSettings,
    ObservabilitySettings,
    SimulatorSettings,
    ConsumerSettings,
    ProducerSettings,
    WarehouseSettings,
    BrokerSettings,
    ConnectionSettings,
    SourceSettings,
):
    """Every section composed into one flat model, loaded from ``CDCFLOW_*``.

    Field docs are shown in ``--help`` and the README. Use a section
    (``settings.broker``, ``SourceSettings.of(settings)``) wherever a part needs
    only its own options, above all in anything Beam pickles.
    """

    model_config = SettingsConfigDict(
        env_prefix="CDCFLOW_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    # --- sections -----------------------------------------------------------------
    @property
    def source(self) -> SourceSettings:
        return SourceSettings.of(self)

    @property
    def connection(self) -> ConnectionSettings:
        return ConnectionSettings.of(self)

    @property
    def broker(self) -> BrokerSettings:
        return BrokerSettings.of(self)

    @property
    def warehouse(self) -> WarehouseSettings:
        return WarehouseSettings.of(self)

    @property
    def producer(self) -> ProducerSettings:
        return ProducerSettings.of(self)

    @property
    def consumer(self) -> ConsumerSettings:
        return ConsumerSettings.of(self)

    @property
    def simulator(self) -> SimulatorSettings:
        return SimulatorSettings.of(self)

    @property
    def observability(self) -> ObservabilitySettings:
        return ObservabilitySettings.of(self)

    def check_files(self) -> None:
        """Every TLS file named exists: run at worker start, where the files live."""
        missing = [
            f"CDCFLOW_{name.upper()}={path}"
            for name in FILE_FIELDS
            if (path := getattr(self, name)) is not None and not Path(path).is_file()
        ]
        if missing:
            raise ConfigError(f"files not found: {', '.join(missing)}: mount them or fix the paths")

    # --- derived names ------------------------------------------------------------
    @property
    def queue_name(self) -> str:
        """The main queue: named after the collection unless set."""
        return naming.queue_name(self.mongo_collection, self.queue)

    @property
    def effective_prefetch(self) -> int:
        """The prefetch the consumer asks for (see the ``prefetch`` field)."""
        if self.prefetch is not None:
            return self.prefetch
        if self.runner is Runner.flink:
            # Changes read between two acks: the rate over a checkpoint interval (plus a
            # second for the checkpoint itself), and the bundle in flight. The prefetch
            # counts messages: assume they are full (pack_max_changes changes, the
            # producer's bound and so the fewest messages for those changes). A trickle
            # fills them partly but is slow; 2000 messages still cover it.
            between_acks_s = self.checkpointing_interval_ms / 1000 + 1
            changes = self.consume_rate * between_acks_s + self.batch_max_messages
            needed = math.ceil(changes / self.pack_max_changes)
            return min(65535, max(2000, needed))
        return 2000

    @property
    def failed_queue_name(self) -> str:
        return naming.failed_queue_name(self.queue_name)

    @property
    def routing_key(self) -> str:
        return naming.routing_key(self.mongo_collection)

    @property
    def table_name(self) -> str:
        return naming.table_name(self.mongo_collection, self.clickhouse_table)

    @property
    def source_namespace(self) -> str:
        return f"{self.mongo_db}.{self.mongo_collection}"

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with the given fields replaced (those not None), validated again."""
        values = {name: getattr(self, name) for name in type(self).model_fields}
        values.update({key: value for key, value in overrides.items() if value is not None})
        return Settings(**values)


def load_settings(**overrides: Any) -> Settings:
    """Settings from CLI overrides (those not None), then environment, ``.env``, defaults."""
    return Settings(**{key: value for key, value in overrides.items() if value is not None})


def settings_env(settings: Settings) -> dict[str, str]:
    """``CDCFLOW_*`` variables that make a local child process load these same settings.

    How the demo, the benchmarks and the tests start workers: as Kubernetes does,
    by environment only. Passwords are revealed here, for the child's environment
    on this machine: manifests use :func:`container_env`, which never does.
    """
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is not None:
            env[f"CDCFLOW_{name.upper()}"] = _env_text(value)
    return env


@dataclass(frozen=True)
class SecretKeyRef:
    """Where a pod finds a secret value: a key of a Kubernetes Secret."""

    name: str
    key: str


def _env_text(value: Any) -> str:
    if isinstance(value, ServiceUrl):
        return value.reveal()
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def container_env(
    sections: Iterable[Section], secrets: Mapping[str, SecretKeyRef]
) -> list[dict[str, Any]]:
    """The ``env`` of a container that loads these sections, secrets by reference.

    Fields that may carry a password (:data:`SECRET_FIELDS`) are rendered only as
    ``valueFrom.secretKeyRef`` from ``secrets``, never inline, so a manifest, an
    event or a log line of the operator cannot hold one. A secret field left at
    its default (no password: the local stack's) is omitted unless referenced; one
    set to anything else with no reference raises :class:`ConfigError`, since
    leaving it out would start the worker against the default service instead.
    Fields at their default are omitted too: the worker's own default applies.
    """
    env: list[dict[str, Any]] = []
    for section in sections:
        for name, field in type(section).model_fields.items():
            variable = f"CDCFLOW_{name.upper()}"
            if name in SECRET_FIELDS:
                if name in secrets:
                    ref = secrets[name]
                    env.append(
                        {
                            "name": variable,
                            "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
                        }
                    )
                elif _env_text(getattr(section, name)) != str(field.default):
                    raise ConfigError(
                        f"{type(section).__name__}.{name} is set but no Secret reference names "
                        f"it: {variable} is never rendered inline; pass a SecretKeyRef for "
                        f"{name!r} (or leave it at its default)"
                    )
                continue
            value = getattr(section, name)
            if value is None or value == field.default:
                continue
            env.append({"name": variable, "value": _env_text(value)})
    return env


def settings_markdown() -> str:
    """The configuration table of the README, generated from the sections above."""
    lines = [
        "| environment variable | section | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for section_name, section in SECTIONS.items():
        for name, field in section.model_fields.items():
            default = field.default
            if isinstance(default, StrEnum):
                default = default.value
            shown = "" if default is None else f"`{default}`"
            lines.append(
                f"| `CDCFLOW_{name.upper()}` | {section_name} | {shown} | "
                f"{field.description or ''} |"
            )
    return "\n".join(lines)
