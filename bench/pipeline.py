"""The pipeline itself: end-to-end throughput, freshness at a steady rate, backlog memory.

The producer and the consumer run as production runs them (``python -m cdcflow
produce|consume`` child processes, configured by environment) against a fresh
nx-27017, the local RabbitMQ and a fresh chdb folder; progress is read from their
``/metrics``, memory from /proc.

* **Throughput**: the simulator writes a fixed workload at unbounded rate; the
  figure is events ÷ (wall time of the last warehouse insert − wall time just
  before the first write), once every change is acked and the queue is empty.
* **Freshness**: the same workers, then the simulator at a steady rate for a
  while; after the consumer stops (chdb lets one process hold the warehouse)
  the warehouse itself is asked, per row, ``loaded_at − updated_at`` (the
  simulator stamps ``updated_at`` at write time: source write to warehouse) and
  ``loaded_at − cluster_time`` (what the consumer's freshness metric observes;
  on nx-27017 cluster time is stamped when the producer *reads* the event).
* **Backlog memory**: a collection of N documents exists before the producer
  starts, so it snapshots and publishes N changes as fast as it can (its peak
  RSS is sampled meanwhile); then the consumer starts on that N-change backlog
  (fewer messages: the producer packs them) and its peak RSS is sampled until the
  queue is drained.
* **CPU**: per event, from /proc, of every process during the end-to-end run:
  the pipeline (producer, broker, consumer) against the source (MongoDB and the
  writer), and how many changes each message carried.

Progress is counted in changes (``cdcflow_events_published_total``,
``cdcflow_changes_acked_total``), never in messages.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import stack
from bench.stack import BenchError, RssSampler, Scratch, Worker
from cdcflow.config import Settings
from cdcflow.metrics import (
    BATCH_SIZE,
    CHANGES_ACKED,
    CHANGES_PER_MESSAGE,
    EVENTS_PUBLISHED,
    LAST_LOAD_TIMESTAMP,
    sample_name,
)
from cdcflow.mongo import open_mongo_client
from cdcflow.simulator import Simulator
from cdcflow.warehouse.client import Warehouse

log = logging.getLogger(__name__)

ACKED = sample_name(CHANGES_ACKED)  # changes: a batch message carries many
PACKED_CHANGES = sample_name(CHANGES_PER_MESSAGE, "_sum")
PACKED_MESSAGES = sample_name(CHANGES_PER_MESSAGE, "_count")
PIPELINE_PROCESSES = ("producer", "rabbitmq", "consumer")
SOURCE_PROCESSES = ("mongodb", "simulator+bench")
PUBLISHED = sample_name(EVENTS_PUBLISHED)
LAST_LOAD = sample_name(LAST_LOAD_TIMESTAMP)
DRAIN_TIMEOUT_S = 300.0
# Each poll scrapes the workers' /metrics (a few ms of their CPU): often enough to
# notice the end, rarely enough not to weigh on what is measured. The end itself
# is read from the consumer's own clock (its last-load gauge), not from the poll.
POLL_S = 0.25


@dataclass
class PipelineResult:
    figures: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)


# A hook for the profiler: called with the workers once they are ready and
# their run is about to start (see bench.profiling); returns a finisher.
Attach = Callable[[list[Worker], str], Callable[[], None]]


def no_profile(workers: list[Worker], phase: str) -> Callable[[], None]:
    """The :data:`Attach` hook that profiles nothing."""
    return lambda: None


def _drained(producer: Worker, consumer: Worker, settings: Settings, expected: float) -> bool:
    """Everything published was acked after its rows loaded, and nothing waits."""
    published = producer.value(PUBLISHED)
    acked = consumer.value(ACKED)
    return published >= expected and acked >= published and stack.queue_ready(settings) == 0


def _meter(
    producer: Worker, consumer: Worker, mongo_pid: int, broker_pid: int | None
) -> stack.CpuMeter:
    pids = {
        "producer": producer.pid,
        "consumer": consumer.pid,
        "mongodb": mongo_pid,
        "simulator+bench": os.getpid(),
    }
    broker_pid = broker_pid or stack.rabbitmq_pid()
    if broker_pid is not None:
        pids["rabbitmq"] = broker_pid
    return stack.CpuMeter(pids)


def _packing(consumer: Worker) -> tuple[float, float]:
    """(changes, messages) the consumer has received so far."""
    scraped = consumer.scrape()
    return scraped.value(PACKED_CHANGES), scraped.value(PACKED_MESSAGES)


def _changes_per_message(consumer: Worker, since: tuple[float, float]) -> float:
    changes, messages = _packing(consumer)
    changes, messages = changes - since[0], messages - since[1]
    return round(changes / messages, 1) if messages else 0.0


def split_cpu(cpu_us_per_event: dict[str, float]) -> dict[str, float]:
    """The pipeline's CPU per event (producer, broker, consumer) against the source's
    (MongoDB and the writer: the simulator, in the benchmark's own process with its
    few metric scrapes), and their ratio."""
    pipeline_us = sum(cpu_us_per_event.get(name, 0.0) for name in PIPELINE_PROCESSES)
    source_us = sum(cpu_us_per_event.get(name, 0.0) for name in SOURCE_PROCESSES)
    return {
        "pipeline_cpu_us_per_event": pipeline_us,
        "source_cpu_us_per_event": source_us,
        "pipeline_vs_source_cpu": pipeline_us / source_us if source_us else math.inf,
    }


def _batches(consumer: Worker) -> tuple[float, float]:
    """(bundles, messages) the consumer has read so far."""
    scraped = consumer.scrape()
    bundles = scraped.value(sample_name(BATCH_SIZE, "_count"))
    return bundles, scraped.value(sample_name(BATCH_SIZE, "_sum"))


def _mean_batch(consumer: Worker, since: tuple[float, float] = (0.0, 0.0)) -> float:
    """Messages per bundle since ``since`` (a :func:`_batches` reading)."""
    bundles, messages = _batches(consumer)
    bundles, messages = bundles - since[0], messages - since[1]
    return round(messages / bundles, 1) if bundles else 0.0


def _start_pair(
    settings: Settings, logs: Path, started: list[Worker], timeout: float = 60.0
) -> tuple[Worker, Worker]:
    producer = stack.start_worker("producer", "produce", settings, logs)
    started.append(producer)
    producer.wait_ready()
    consumer = stack.start_worker("consumer", "consume", settings, logs)
    started.append(consumer)
    consumer.wait_ready()
    # The initial snapshot of the empty collection (one snapshot_end) must be through.
    stack.wait_until(
        lambda: _drained(producer, consumer, settings, 1),
        timeout=timeout,
        what="the initial snapshot to pass",
        interval=POLL_S,
    )
    return producer, consumer


def throughput_and_freshness(
    scratch: Scratch,
    *,
    events: int,
    rate: float,
    freshness_s: float,
    attach: Attach = no_profile,
    name: str = "e2e",
    overrides: dict[str, Any] | None = None,
    burst: bool = True,
    start_timeout: float = 60.0,
) -> PipelineResult:
    """End-to-end events/s at unbounded write rate, then freshness at ``rate``.

    ``overrides``: settings of this measurement (the Flink runs: runner, checkpoint
    interval); ``burst=False`` measures freshness only. ``start_timeout`` covers
    the consumer's start (a Flink job takes tens of seconds).
    """
    result = PipelineResult()
    folder = scratch.folder(name)
    with stack.mongo(folder) as server, stack.workers() as started:
        settings = scratch.settings(name, mongo_uri=server.uri, **(overrides or {}))
        began = time.monotonic()
        producer, consumer = _start_pair(settings, folder / "logs", started, start_timeout)
        result.notes["start_s"] = round(time.monotonic() - began, 1)
        client = open_mongo_client(settings)
        try:
            base = producer.value(PUBLISHED)
            if burst:
                _burst(
                    result,
                    scratch,
                    server.process.pid,
                    producer,
                    consumer,
                    settings,
                    events,
                    client=client,
                    attach=attach,
                )
                result.notes["e2e_events"] = events

            base = producer.value(PUBLISHED)
            batches_before = _batches(consumer)
            steady = settings.with_overrides(rate=rate, duration_s=freshness_s, events=10**9)
            simulator = Simulator(steady, client=client)
            stats = simulator.run()
            stack.wait_until(
                lambda: _drained(producer, consumer, settings, base + stats.events),
                timeout=DRAIN_TIMEOUT_S,
                what="the steady-rate changes to reach the warehouse",
                interval=POLL_S,
            )
            result.notes["freshness_events"] = stats.events
            result.notes["freshness_mean_batch"] = _mean_batch(consumer, batches_before)
            result.figures["freshness_rate_events_per_s"] = stats.rate
        finally:
            client.close()
        consumer.terminate(timeout=30.0)  # chdb: the warehouse opens in one process at a time
        producer.terminate(timeout=30.0)
    _freshness_from_warehouse(settings, simulator.run_tag, result)
    return result


def _burst(
    result: PipelineResult,
    scratch: Scratch,
    mongo_pid: int,
    producer: Worker,
    consumer: Worker,
    settings: Settings,
    events: int,
    *,
    client: Any,
    attach: Attach = no_profile,
) -> None:
    """``events`` changes at unbounded write rate: end-to-end events/s."""
    base = producer.value(PUBLISHED)
    packing_before = _packing(consumer)
    finish_profile = attach([producer, consumer], "e2e")
    burst = settings.with_overrides(rate=math.inf, events=events)
    meter = _meter(producer, consumer, mongo_pid, scratch.broker_pid)
    first_write = time.time()
    stats = Simulator(burst, client=client).run()
    stack.wait_until(
        lambda: _drained(producer, consumer, settings, base + stats.events),
        timeout=DRAIN_TIMEOUT_S,
        what=f"{stats.events} changes to reach the warehouse",
        interval=POLL_S,
    )
    cpu = meter.stop()
    finish_profile()
    result.notes["e2e_cpu_us_per_event"] = {
        process: round(seconds / stats.events * 1e6, 1)
        for process, seconds in cpu.items()
        if process != "wall"
    }
    result.notes["e2e_mean_batch"] = _mean_batch(consumer)
    if "rabbitmq" not in cpu:
        result.notes["pipeline_cpu_without_broker"] = "the broker's process was not found"
    result.figures.update(split_cpu(result.notes["e2e_cpu_us_per_event"]))
    result.figures["changes_per_message"] = _changes_per_message(consumer, packing_before)
    last_load = consumer.value(LAST_LOAD)
    result.figures["e2e_events_per_s"] = stats.events / (last_load - first_write)
    result.notes["e2e_seconds"] = last_load - first_write
    result.notes["e2e_write_events_per_s"] = stats.rate


def _freshness_from_warehouse(settings: Settings, run_tag: str, result: PipelineResult) -> None:
    """Per-row staleness of the steady-rate run, read back from the warehouse.

    Besides the two figures, the path is split at the producer's read
    (``captured_at``): source write → captured, and captured → loaded.
    """
    table = f"{settings.clickhouse_database}.{settings.table_name}"

    def seconds(since: str, until: str = "loaded_at") -> str:
        return f"dateDiff('microsecond', {since}, {until}) / 1e6"

    sql = (
        f"SELECT quantilesExactIf(0.5, 0.99)({seconds('updated_at')}, updated_at IS NOT NULL), "
        f"quantilesExactIf(0.5, 0.99)({seconds('cluster_time')}, cluster_time IS NOT NULL), "
        f"quantilesExactIf(0.5, 0.99)({seconds('updated_at', 'captured_at')}, "
        f"updated_at IS NOT NULL), "
        f"quantilesExact(0.5, 0.99)({seconds('captured_at')}), "
        f"maxIf({seconds('updated_at')}, updated_at IS NOT NULL), count() "
        f"FROM {table} WHERE startsWith(doc_id, %(prefix)s)"
    )
    with Warehouse(settings) as warehouse:
        ((write_q, read_q, capture_q, deliver_q, write_max, rows),) = warehouse.rows(
            sql, {"prefix": f"{run_tag}-"}
        )
    if not rows:
        raise BenchError("no rows of the steady-rate run in the warehouse")
    result.figures["freshness_p50_s"] = float(write_q[0])
    result.figures["freshness_p99_s"] = float(write_q[1])
    result.figures["freshness_max_s"] = float(write_max)
    result.figures["freshness_cluster_p50_s"] = float(read_q[0])
    result.figures["freshness_cluster_p99_s"] = float(read_q[1])
    result.notes["freshness_write_to_capture_p50_p99_s"] = [round(float(q), 3) for q in capture_q]
    result.notes["freshness_capture_to_load_p50_p99_s"] = [round(float(q), 3) for q in deliver_q]
    result.notes["freshness_rows"] = int(rows)


def backlog_memory(
    scratch: Scratch,
    *,
    backlog: int,
    attach: Attach = no_profile,
    name: str = "backlog",
    overrides: dict[str, Any] | None = None,
) -> PipelineResult:
    """Peak RSS of the producer publishing, then the consumer draining, a backlog.

    The consumer's RSS is its process tree's: on Flink that includes the job
    server's JVM (the embedded Flink), which the consumer starts and stops.
    """
    result = PipelineResult()
    folder = scratch.folder(name)
    with stack.mongo(folder) as server, stack.workers() as started:
        settings = scratch.settings(name, mongo_uri=server.uri, **(overrides or {}))
        inserts = settings.with_overrides(
            rate=math.inf, events=backlog, insert_ratio=1.0, update_ratio=0.0, delete_ratio=0.0
        )
        stats = Simulator(inserts).run()
        expected = stats.events + 1  # every document, then the snapshot's end marker
        logs = folder / "logs"
        producer = stack.start_worker("producer", "produce", settings, logs)
        started.append(producer)
        sampler = RssSampler(producer.pid).start()
        producer.wait_ready()
        began = time.monotonic()
        stack.wait_until(
            lambda: producer.value(PUBLISHED) >= expected,
            timeout=DRAIN_TIMEOUT_S,
            what=f"the producer to publish a {expected}-message snapshot",
            interval=POLL_S,
        )
        result.figures["producer_peak_rss_mb"] = sampler.stop()
        result.notes["producer_snapshot_msgs_per_s"] = expected / (time.monotonic() - began)
        producer.terminate(timeout=30.0)
        result.notes["backlog_messages"] = stack.queue_ready(settings)

        consumer = stack.start_worker("consumer", "consume", settings, logs)
        started.append(consumer)
        sampler = RssSampler(consumer.pid, tree=True).start()
        consumer.wait_ready()
        began = time.monotonic()
        meter = stack.CpuMeter({"consumer": consumer.pid})
        finish_profile = attach([consumer], "backlog")
        stack.wait_until(
            lambda: consumer.value(ACKED) >= expected and stack.queue_ready(settings) == 0,
            timeout=DRAIN_TIMEOUT_S,
            what=f"the consumer to drain a {expected}-message backlog",
            interval=POLL_S,
        )
        cpu = meter.stop()
        finish_profile()
        result.notes["consumer_backlog_cpu_us_per_msg"] = round(cpu["consumer"] / expected * 1e6, 1)
        result.notes["consumer_backlog_mean_batch"] = _mean_batch(consumer)
        result.figures["consumer_peak_rss_mb"] = sampler.stop()
        if sampler.peak_by_process:
            result.notes["consumer_peak_rss_by_process_mb"] = {
                name: round(mb) for name, mb in sampler.peak_by_process.items()
            }
        result.notes["consumer_backlog_msgs_per_s"] = expected / (time.monotonic() - began)
        consumer.terminate(timeout=30.0)
    return result
