"""One settings model for every worker, the CLI and (later) the operator.

Every option comes from, in order of precedence: a CLI flag, a ``CDCFLOW_*``
environment variable, a ``.env`` file in the working directory, the default here.
Kubernetes pods are configured with environment variables only, so nothing a
worker needs may exist solely as a CLI flag.

The defaults run the local stack: MongoDB (nx-27017) on 127.0.0.1:27017, the
local RabbitMQ, Beam's in-process runner and an embedded ClickHouse (chdb) under
``.cdcflow/warehouse``.
"""

from __future__ import annotations

import math
import re
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cdcflow.urls import ServiceUrl, Url

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class Runner(StrEnum):
    """Beam runners the consumer knows how to configure."""

    inprocess = "inprocess"  # Beam's FnApiRunner: local demo and tests
    flink = "flink"  # portable Flink runner (embedded or a cluster): see docs/runners.md


class LogFormat(StrEnum):
    text = "text"
    json = "json"


class Settings(BaseSettings):
    """Configuration of cdcflow. Field docs are shown in ``--help`` and the README."""

    model_config = SettingsConfigDict(
        env_prefix="CDCFLOW_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    # --- source -------------------------------------------------------------------
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
    server_timeout_s: float = Field(
        5.0, gt=0, description="Seconds to wait for a service at start before giving up."
    )

    # --- broker -------------------------------------------------------------------
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

    # --- warehouse ----------------------------------------------------------------
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

    # --- producer -----------------------------------------------------------------
    publish_window: int = Field(
        1000, ge=1, le=65535, description="Publishes awaiting a broker confirm, at most."
    )
    offset_flush_s: float = Field(
        1.0, gt=0, description="Seconds between saves of the confirmed resume token."
    )
    snapshot_batch: int = Field(1000, ge=1, description="Documents per snapshot read batch.")
    stream_batch: int = Field(1000, ge=1, description="Change-stream cursor batch size.")

    # --- consumer -----------------------------------------------------------------
    runner: Runner = Field(
        Runner.inprocess,
        description="Beam runner: inprocess (FnApiRunner) or flink (embedded Flink; `make flink`).",
    )
    prefetch: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="RabbitMQ consumer prefetch (QoS). Default: 2000 in-process; on Flink, "
        "consume_rate x (checkpoint interval + 1 s) + a batch, since acks wait for checkpoints.",
    )
    consume_rate: float = Field(
        4000.0,
        gt=0,
        description="Messages/s the Flink consumer must sustain; sizes its default prefetch.",
    )
    batch_max_messages: int = Field(
        1000, ge=1, description="Messages per bundle (one warehouse insert)."
    )
    batch_max_s: float = Field(
        0.2, gt=0, description="Seconds a batch keeps filling after its first message."
    )
    idle_exit_s: float | None = Field(
        None, gt=0, description="Stop the consumer after this many idle seconds (demo, tests)."
    )
    max_messages: int | None = Field(
        None, ge=1, description="Stop the consumer after this many messages (demo, tests)."
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

    # --- simulator ----------------------------------------------------------------
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

    # --- observability ------------------------------------------------------------
    metrics_port: int = Field(
        9464, ge=0, le=65535, description="Port for /metrics, /healthz, /readyz (0: off)."
    )
    metrics_host: str = Field("0.0.0.0", description="Interface for the metrics server.")
    log_format: LogFormat = Field(LogFormat.text, description="Log format: text or json.")
    log_level: str = Field("INFO", description="Log level: DEBUG, INFO, WARNING, ERROR.")
    data_dir: Path = Field(Path(".cdcflow"), description="Local state of the demo (git-ignored).")
    producer_metrics_url: Url = Field(
        default="http://127.0.0.1:9464/metrics",  # type: ignore[assignment]
        description="Where `cdcflow status` reads the producer.",
    )
    consumer_metrics_url: Url = Field(
        default="http://127.0.0.1:9465/metrics",  # type: ignore[assignment]
        description="Where `cdcflow status` reads the consumer.",
    )

    @field_validator("mongo_uri")
    @classmethod
    def _mongo_scheme(cls, url: ServiceUrl) -> ServiceUrl:
        if url.scheme not in ("mongodb", "mongodb+srv"):
            raise ValueError("MongoDB URI must start with mongodb:// or mongodb+srv://")
        return url

    @field_validator("amqp_url")
    @classmethod
    def _amqp_scheme(cls, url: ServiceUrl) -> ServiceUrl:
        if url.scheme not in ("amqp", "amqps"):
            raise ValueError("RabbitMQ URL must start with amqp:// or amqps://")
        return url

    @field_validator("clickhouse_url")
    @classmethod
    def _clickhouse_scheme(cls, url: ServiceUrl) -> ServiceUrl:
        if url.scheme not in ("chdb", "http", "https"):
            raise ValueError("ClickHouse URL must start with chdb://, http:// or https://")
        return url

    @field_validator("producer_metrics_url", "consumer_metrics_url")
    @classmethod
    def _http_scheme(cls, url: ServiceUrl) -> ServiceUrl:
        if url.scheme not in ("http", "https"):
            raise ValueError("a metrics URL must start with http:// or https://")
        return url

    @field_validator("mongo_db", "mongo_collection", "offsets_collection", "clickhouse_database")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(f"{name!r}: use letters, digits and underscores only")
        return name

    @field_validator(
        "mongo_tls_ca_file",
        "mongo_tls_cert_key_file",
        "amqp_tls_ca_file",
        "amqp_tls_cert_file",
        "amqp_tls_key_file",
        "clickhouse_tls_ca_file",
    )
    @classmethod
    def _file_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"{path} does not exist or is not a file")
        return path

    @field_validator("log_level")
    @classmethod
    def _level(cls, level: str) -> str:
        level = level.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("log level must be DEBUG, INFO, WARNING or ERROR")
        return level

    @model_validator(mode="after")
    def _mix_sums_to_one(self) -> Settings:
        total = self.insert_ratio + self.update_ratio + self.delete_ratio
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"insert/update/delete ratios must add up to 1 (they add up to {total:g})"
            )
        if self.clickhouse_table is not None and not _NAME.match(self.clickhouse_table):
            raise ValueError(f"{self.clickhouse_table!r}: use letters, digits and underscores")
        return self

    # --- derived names ------------------------------------------------------------
    @property
    def queue_name(self) -> str:
        """The main queue: named after the collection unless set."""
        return self.queue or self.mongo_collection

    @property
    def failed_queue_name(self) -> str:
        return f"{self.queue_name}.failed"

    @property
    def routing_key(self) -> str:
        return self.mongo_collection

    @property
    def table_name(self) -> str:
        return self.clickhouse_table or self.mongo_collection

    @property
    def source_namespace(self) -> str:
        return f"{self.mongo_db}.{self.mongo_collection}"

    @property
    def effective_prefetch(self) -> int:
        """The prefetch the consumer asks for (see the ``prefetch`` field)."""
        if self.prefetch is not None:
            return self.prefetch
        if self.runner is Runner.flink:
            between_acks_s = self.checkpointing_interval_ms / 1000 + 1
            needed = math.ceil(self.consume_rate * between_acks_s) + self.batch_max_messages
            return min(65535, max(2000, needed))
        return 2000

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with the given fields replaced (those not None), validated again."""
        values = {name: getattr(self, name) for name in type(self).model_fields}
        values.update({key: value for key, value in overrides.items() if value is not None})
        return Settings(**values)


def load_settings(**overrides: Any) -> Settings:
    """Settings from CLI overrides (those not None), then environment, ``.env``, defaults."""
    return Settings(**{key: value for key, value in overrides.items() if value is not None})


def settings_env(settings: Settings) -> dict[str, str]:
    """``CDCFLOW_*`` variables that make a child process load these same settings.

    How the demo, the benchmarks and the tests start workers: as Kubernetes does,
    by environment only. Passwords are revealed here, for the child's environment.
    """
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, ServiceUrl):
            text = value.reveal()
        elif isinstance(value, StrEnum):
            text = value.value
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        env[f"CDCFLOW_{name.upper()}"] = text
    return env


def settings_markdown() -> str:
    """The configuration table of the README, generated from the fields above."""
    lines = ["| environment variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, StrEnum):
            default = default.value
        shown = "" if default is None else f"`{default}`"
        lines.append(f"| `CDCFLOW_{name.upper()}` | {shown} | {field.description or ''} |")
    return "\n".join(lines)
