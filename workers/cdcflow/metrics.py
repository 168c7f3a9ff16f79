"""Every metric cdcflow exports, defined once.

Dashboards (``helm/cdcflow/dashboards``) and alert rules are generated from or
checked against this module, so a metric renamed here breaks a test rather than a
graph. Names follow Prometheus conventions: ``cdcflow_<what>_<unit>``, counters end
in ``_total``, durations are in seconds. Labels are small closed sets (operation,
reason code, queue kind, service), never document ids.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.metrics import MetricWrapperBase

# Every counter would also export a `<name>_created` timestamp series: noise for
# dashboards and alerts that never read it.
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_FRESHNESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0)
_BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000)
_PACK_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 200, 500, 1000)

BUILD_INFO = Info("cdcflow_build", "Version and role of this cdcflow process.", registry=REGISTRY)


def record_build(role: str) -> None:
    """Set ``cdcflow_build_info{version,role,python}``: which release runs where (the
    dashboards' versions panel, and a rollout visible as two versions at once)."""
    from cdcflow import __version__

    BUILD_INFO.info({"version": __version__, "role": role, "python": platform.python_version()})


# --- producer -----------------------------------------------------------------------
EVENTS_CAPTURED = Counter(
    "cdcflow_events_captured_total",
    "Change events read from the change stream (snapshot reads have op=snapshot).",
    ["op"],
    registry=REGISTRY,
)
EVENTS_PUBLISHED = Counter(
    "cdcflow_events_published_total",
    "Events the broker confirmed (publisher confirms).",
    registry=REGISTRY,
)
EVENTS_SKIPPED = Counter(
    "cdcflow_events_skipped_total",
    "Change events not published, by reason (e.g. unsupported operation type).",
    ["reason"],
    registry=REGISTRY,
)
EVENTS_FAILED = Counter(
    "cdcflow_events_failed_total",
    "Change events the producer could not publish, recorded in the failed queue, by reason.",
    ["reason"],
    registry=REGISTRY,
)
CAPTURE_STOPPED = Gauge(
    "cdcflow_capture_stopped",
    "1 while capture of the collection is stopped (drop, rename, dropDatabase, invalidate).",
    ["reason"],
    registry=REGISTRY,
)
PUBLISH_CONFIRM_SECONDS = Histogram(
    "cdcflow_publish_confirm_seconds",
    "Time from publish to the broker's confirm.",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
PUBLISH_UNCONFIRMED = Gauge(
    "cdcflow_publish_unconfirmed_messages",
    "Publishes waiting for a broker confirm.",
    registry=REGISTRY,
)
CAPTURE_LAG_SECONDS = Gauge(
    "cdcflow_capture_lag_seconds",
    "Now minus the cluster time of the last captured event (0 when caught up and idle).",
    registry=REGISTRY,
)
RESUME_TOKEN_AGE_SECONDS = Gauge(
    "cdcflow_resume_token_age_seconds",
    "Seconds since the saved resume token was last known current.",
    registry=REGISTRY,
)
RESUME_TOKEN_SAVES = Counter(
    "cdcflow_resume_token_saves_total",
    "Resume tokens saved to the offsets collection.",
    registry=REGISTRY,
)
SNAPSHOT_DOCUMENTS = Counter(
    "cdcflow_snapshot_documents_total",
    "Documents read by snapshots.",
    registry=REGISTRY,
)
SNAPSHOT_RUNNING = Gauge(
    "cdcflow_snapshot_running",
    "1 while a snapshot is being read.",
    registry=REGISTRY,
)
SNAPSHOTS = Counter(
    "cdcflow_snapshots_total",
    "Snapshots started, by reason (initial, history_lost, stream_invalidated).",
    ["reason"],
    registry=REGISTRY,
)
HISTORY_LOST = Counter(
    "cdcflow_history_lost_total",
    "Times the change stream could not resume (error 286 or a gap in nx-27017 tokens).",
    registry=REGISTRY,
)
LAST_CAPTURE_TIMESTAMP = Gauge(
    "cdcflow_last_capture_timestamp_seconds",
    "Unix time of the last captured event.",
    registry=REGISTRY,
)

# --- shared -------------------------------------------------------------------------
RECONNECTS = Counter(
    "cdcflow_reconnects_total",
    "Connections re-established after a failure, by service (mongodb, rabbitmq, clickhouse).",
    ["service"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "cdcflow_queue_depth_messages",
    "Messages ready in a queue, by kind (main, failed).",
    ["queue"],
    registry=REGISTRY,
)

# --- consumer -----------------------------------------------------------------------
MESSAGES_CONSUMED = Counter(
    "cdcflow_messages_consumed_total",
    "Messages delivered to the consumer (redeliveries included).",
    registry=REGISTRY,
)
MESSAGES_ACKED = Counter(
    "cdcflow_messages_acked_total",
    "Messages acknowledged after their rows were durable (or dead-lettered).",
    registry=REGISTRY,
)
CHANGES_ACKED = Counter(
    "cdcflow_changes_acked_total",
    "Changes in the messages acknowledged (a batch message carries many).",
    registry=REGISTRY,
)
CHANGES_PER_MESSAGE = Histogram(
    "cdcflow_changes_per_message",
    "Changes carried per consumed message (1 without batching): queue depth counts "
    "messages, so depth x this mean is the backlog in changes (the operator's scaler "
    "reads it).",
    buckets=_PACK_BUCKETS,
    registry=REGISTRY,
)
ROWS_LOADED = Counter(
    "cdcflow_rows_loaded_total",
    "Rows inserted into the warehouse, by operation (delete rows have is_deleted=1).",
    ["op"],
    registry=REGISTRY,
)
ROWS_FIXED = Counter(
    "cdcflow_rows_fixed_total",
    "Values fixed by a cleaning rule, by rule code.",
    ["rule"],
    registry=REGISTRY,
)
MESSAGES_DEAD_LETTERED = Counter(
    "cdcflow_messages_dead_lettered_total",
    "Messages sent to the failed queue, by reason code.",
    ["reason"],
    registry=REGISTRY,
)
MESSAGES_IGNORED = Counter(
    "cdcflow_messages_ignored_total",
    "Messages acknowledged without a row, by reason (e.g. update_without_document).",
    ["reason"],
    registry=REGISTRY,
)
ROWS_SWEPT = Counter(
    "cdcflow_rows_swept_total",
    "Tombstones written by snapshot sweeps (documents deleted while unobserved).",
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "cdcflow_batch_messages",
    "Messages per consumer bundle.",
    buckets=_BATCH_BUCKETS,
    registry=REGISTRY,
)
LOAD_SECONDS = Histogram(
    "cdcflow_load_seconds",
    "Time to insert one batch into the warehouse.",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
FRESHNESS_SECONDS = Histogram(
    "cdcflow_freshness_seconds",
    "Load time minus source cluster time, per loaded change.",
    buckets=_FRESHNESS_BUCKETS,
    registry=REGISTRY,
)
WAREHOUSE_RETRIES = Counter(
    "cdcflow_warehouse_retries_total",
    "Warehouse writes retried after a transient failure.",
    registry=REGISTRY,
)
LAST_LOAD_TIMESTAMP = Gauge(
    "cdcflow_last_load_timestamp_seconds",
    "Unix time of the last warehouse insert.",
    registry=REGISTRY,
)

# --- simulator ----------------------------------------------------------------------
SIMULATOR_WRITES = Counter(
    "cdcflow_simulator_writes_total",
    "Writes the simulator made, by operation (bad documents included).",
    ["op"],
    registry=REGISTRY,
)


# Known label values exist from the start at 0, so dashboards and rate() see a
# series before the first event instead of "no data".
for _op in ("insert", "update", "replace", "delete", "snapshot"):
    EVENTS_CAPTURED.labels(op=_op)
    ROWS_LOADED.labels(op=_op)
for _queue in ("main", "failed"):
    QUEUE_DEPTH.labels(queue=_queue)
for _service in ("mongodb", "rabbitmq", "clickhouse"):
    RECONNECTS.labels(service=_service)


def upper_bounds(histogram: Histogram) -> tuple[float, ...]:
    """A histogram's bucket bounds, ``+Inf`` last (for :func:`observe_cumulative`)."""
    return tuple(histogram._upper_bounds)


def observe_cumulative(histogram: Histogram, cumulative: Sequence[int], total: float) -> None:
    """Many observations in one step: ``cumulative[i]`` of them are at most
    ``upper_bounds(histogram)[i]``, ``total`` is their sum.

    The exported series are those ``histogram.observe`` of each value gives (a test
    holds the two equal): prometheus_client keeps one count per bucket, each value
    counted in the first bucket whose bound it does not exceed, and the sum. The
    consumer observes freshness per loaded row; counting a bundle's rows per bucket
    column-wise and adding here costs one step per bucket instead of one per row.
    """
    buckets = histogram._buckets
    if len(cumulative) != len(buckets):
        raise ValueError(f"{len(cumulative)} cumulative counts for {len(buckets)} buckets")
    below = 0
    for bucket, count in zip(buckets, cumulative, strict=True):
        if count > below:
            bucket.inc(count - below)
            below = count
    histogram._sum.inc(total)


@dataclass(frozen=True)
class MetricInfo:
    name: str  # the exposed family name (counters without the _total suffix in prometheus_client)
    kind: str
    help: str
    labels: tuple[str, ...]


def catalog() -> list[MetricInfo]:
    """Every metric this module defines, with the sample names Prometheus will see."""
    infos: list[MetricInfo] = []
    for collector in list(REGISTRY._collector_to_names):
        for family in collector.describe():  # type: ignore[attr-defined]
            labels: tuple[str, ...] = tuple(getattr(collector, "_labelnames", ()))
            infos.append(MetricInfo(family.name, family.type, family.documentation, labels))
    return sorted(infos, key=lambda info: info.name)


def exposed_names() -> set[str]:
    """Sample names as they appear in /metrics and PromQL (``_total``, ``_bucket`` ...)."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "gauge": ("",),
        "info": ("_info",),
    }
    names: set[str] = set()
    for info in catalog():
        for suffix in suffixes.get(info.kind, ("",)):
            names.add(info.name + suffix)
    return names


def sample_name(collector: MetricWrapperBase, suffix: str | None = None) -> str:
    """The PromQL sample name of a collector defined above: how every other module
    (status, demo, the benchmarks, dashboards, alert rules) names a metric.

    Counters get ``_total`` by default, Info ``_info``; histograms give their base
    name (``_bucket``/``_sum``/``_count`` as ``suffix``). Raises if the result is not
    a name the registry exposes, so a typo cannot reach a query.
    """
    family = next(iter(collector.describe()))
    if suffix is None:
        suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
    name = f"{family.name}{suffix}"
    if name not in exposed_names() and f"{name}_bucket" not in exposed_names():
        raise ValueError(f"{name} is not exposed by cdcflow.metrics")
    return str(name)
