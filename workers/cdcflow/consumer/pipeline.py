"""The consumer: one Beam pipeline, built once, run until stopped.

    ReadFromRabbitMQ ─▶ TransformBatch ─▶ WriteToClickHouse ─▶ PublishDeadLetters
    (batch per bundle)  (parse, clean,    (insert, sweeps;     (failed queue,
                         enrich: Arrow)    retried)             confirmed)

No GroupByKey or window sits between source and sink, so the four steps fuse
into one stage: the in-process runner (which runs a stage to completion before
the next) streams, and a bundle's finalizer (the ack) runs only after its rows
and dead letters are durable.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from cdcflow import broker, metrics
from cdcflow.config import Runner, Settings
from cdcflow.consumer import runtime
from cdcflow.consumer.sink import PublishDeadLetters, TransformBatch, WriteToClickHouse
from cdcflow.consumer.source import ReadFromRabbitMQ
from cdcflow.errors import ConfigError
from cdcflow.health import Health
from cdcflow.metrics import (
    MESSAGES_ACKED,
    MESSAGES_CONSUMED,
    ROWS_SWEPT,
    sample_name,
)
from cdcflow.warehouse.client import Warehouse

log = logging.getLogger(__name__)

IN_PROCESS_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
STATE_SAMPLING_MS = 10


def _shorten_state_sampling() -> None:
    """Make the end of each bundle wait at most ~10 ms instead of up to 200 ms.

    Beam's SDK worker starts a state-sampling thread per bundle and joins it when the
    bundle ends; the thread sleeps up to its sampling period (200 ms, fixed: the
    bundle processor passes no option). With one bundle per batch, that join was
    ~8% of every bundle and most of the consumer's idle time between batches
    (measured: 4,758 -> 5,445 messages/s draining a backlog). The samples only feed
    Beam's own per-step timing counters, which cdcflow does not use. Applied to the
    in-process runner only, whose SDK worker runs in this process; if Beam changes
    the class, nothing is patched.
    """
    from apache_beam.runners.worker import statesampler

    initializer = statesampler.StateSampler.__init__
    if initializer.__defaults__ == (statesampler.DEFAULT_SAMPLING_PERIOD_MS,):
        initializer.__defaults__ = (STATE_SAMPLING_MS,)


def pipeline_options(settings: Settings) -> PipelineOptions:
    """Runner options. Flink acks only after checkpoints, so checkpointing is on."""
    if settings.runner is Runner.inprocess:
        # flags=[]: never parse this process's own argv as Beam options.
        return PipelineOptions(
            flags=[], runner=IN_PROCESS_RUNNER, streaming=False, save_main_session=False
        )
    args = [
        "--runner=FlinkRunner",
        f"--flink_master={settings.flink_master}",
        f"--flink_version={settings.flink_version}",
        "--streaming",
        f"--checkpointing_interval={settings.checkpointing_interval_ms}",
        f"--parallelism={settings.parallelism}",
        "--environment_type=LOOPBACK",
        # Prefetch must cover what arrives between two checkpoints, or the source
        # starves waiting for acks that only come after the next checkpoint.
        "--experiments=beam_fn_api",
    ]
    if settings.flink_job_server_jar is not None:
        if not settings.flink_job_server_jar.exists():
            raise ConfigError(
                f"Flink job-server jar {settings.flink_job_server_jar} not found: the consumer "
                "image ships it; locally use --runner inprocess"
            )
        args.append(f"--flink_job_server_jar={settings.flink_job_server_jar}")
    elif settings.flink_master == "[local]":
        raise ConfigError(
            "--runner flink with an embedded Flink needs CDCFLOW_FLINK_JOB_SERVER_JAR "
            "(nothing is downloaded at run time); locally use --runner inprocess"
        )
    return PipelineOptions(args)


def build_pipeline(settings: Settings, options: PipelineOptions | None = None) -> beam.Pipeline:
    """The consumer pipeline (not yet run)."""
    if settings.runner is Runner.inprocess:
        _shorten_state_sampling()
    pipeline = beam.Pipeline(options=options or pipeline_options(settings))
    consumers = settings.parallelism if settings.runner is Runner.inprocess else 1
    (
        pipeline
        | "ReadFromRabbitMQ" >> ReadFromRabbitMQ(settings, consumers=consumers)
        | "TransformBatch" >> TransformBatch(settings)
        | "WriteToClickHouse" >> WriteToClickHouse(settings)
        | "PublishDeadLetters" >> PublishDeadLetters(settings)
    )
    return pipeline


@dataclass
class ConsumerResult:
    seconds: float
    abandoned: bool = False
    counters: dict[str, float] = field(default_factory=dict)


def _sample(name: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name)
    return float(value or 0.0)


def _labelled_total(counter: Any) -> float:
    return float(
        sum(
            sample.value
            for family in counter.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        )
    )


def counters() -> dict[str, float]:
    """This process's consumer counters (for results, status and tests)."""
    return {
        "consumed": _sample(sample_name(MESSAGES_CONSUMED)),
        "acked": _sample(sample_name(MESSAGES_ACKED)),
        "loaded": _labelled_total(metrics.ROWS_LOADED),
        "dead_lettered": _labelled_total(metrics.MESSAGES_DEAD_LETTERED),
        "ignored": _labelled_total(metrics.MESSAGES_IGNORED),
        "swept": _sample(sample_name(ROWS_SWEPT)),
    }


def _watch_queue(settings: Settings, health: Health, stop: threading.Event) -> None:
    """Publish queue depths as gauges and readiness, every few seconds, until stopped."""
    connection = None
    while not stop.is_set():
        try:
            if connection is None or not connection.is_open:
                connection = broker.connect(settings)
            main, failed = broker.queue_depths(
                connection, settings.queue_name, settings.failed_queue_name
            )
            metrics.QUEUE_DEPTH.labels(queue="main").set(main.messages or 0)
            metrics.QUEUE_DEPTH.labels(queue="failed").set(failed.messages or 0)
            health.set_ready("rabbitmq", True)
        except Exception:  # reported as not ready; the consumer itself reconnects
            health.set_ready("rabbitmq", False)
            connection = None
        health.beat()
        stop.wait(2.0)
    if connection is not None and connection.is_open:
        connection.close()


def run_consumer(settings: Settings, *, health: Health | None = None) -> ConsumerResult:
    """Create the warehouse schema, then run the pipeline until a stop condition.

    Returns normally on ``--idle-exit``/``--max-messages`` and on SIGTERM
    (:data:`runtime.STOP`): a batch abandoned by a stop was not acked and will be
    delivered again.
    """
    health = health or Health("consumer")
    with Warehouse(settings) as warehouse:  # fails fast, with a hint, if unreachable
        warehouse.init_schema()
    health.set_ready("clickhouse", True)
    broker.ensure_topology(settings)
    started = time.monotonic()
    stop_watch = threading.Event()
    watcher = threading.Thread(
        target=_watch_queue, args=(settings, health, stop_watch), daemon=True, name="queue-watch"
    )
    watcher.start()
    abandoned = False
    try:
        log.info(
            "consuming %s (runner %s, batch %d, prefetch %d)",
            settings.queue_name,
            settings.runner.value,
            settings.batch_max_messages,
            settings.prefetch,
            extra={"stage": "consumer"},
        )
        build_pipeline(settings).run().wait_until_finish()
    except Exception as error:
        if not runtime.STOP.is_set():
            raise
        abandoned = True
        log.info(
            "stopped mid-batch (%s); its messages were not acked and will be redelivered",
            type(error).__name__,
            extra={"stage": "consumer"},
        )
    finally:
        stop_watch.set()
        runtime.close_all()
        watcher.join(5)
    return ConsumerResult(time.monotonic() - started, abandoned, counters())
