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

import contextlib
import logging
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pipeline import Pipeline

from cdcflow import broker, metrics, naming
from cdcflow.config import QueueSettings, Runner, Settings, TableSettings
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


FLINK_MAX_BUNDLE_MS = 50
"""How long Flink keeps a bundle open. The source's bundle is one batch (it
self-checkpoints after each), but Flink closes a bundle only on its own timer:
at Flink's default (1 s) every batch would wait out the second."""


def pipeline_options(settings: Settings, job_endpoint: str | None = None) -> PipelineOptions:
    """Runner options. Flink acks only after checkpoints, so checkpointing is on.

    ``job_endpoint``: the job server cdcflow started (:mod:`cdcflow.consumer.flink`).
    """
    if settings.runner is Runner.inprocess:
        # flags=[]: never parse this process's own argv as Beam options.
        return PipelineOptions(
            flags=[], runner=IN_PROCESS_RUNNER, streaming=False, save_main_session=False
        )
    if job_endpoint is None:
        raise ConfigError("--runner flink needs a job server: run the consumer with run_consumer")
    args = [
        "--runner=PortableRunner",
        f"--job_endpoint={job_endpoint}",
        "--environment_type=LOOPBACK",
        "--streaming",
        # Bundle finalization (the ack) runs after a completed checkpoint, and only
        # in streaming mode with checkpointing on: without it nothing is ever acked.
        f"--checkpointing_interval={settings.checkpointing_interval_ms}",
        f"--parallelism={settings.parallelism}",
        f"--max_bundle_time_mills={FLINK_MAX_BUNDLE_MS}",
        "--job_name=cdcflow-consumer",
        # LOOPBACK runs the SDK harness here: nothing to install, so no `pip freeze`
        # (a uv-made environment has no pip, and Beam warns twice per submission).
        "--experiments=disable_logging_submission_environment",
    ]
    # flags=args only: never parse this process's own argv as Beam options.
    return PipelineOptions(flags=args)


def build_pipeline(settings: Settings, options: PipelineOptions | None = None) -> Pipeline:
    """The consumer pipeline (not yet run).

    Each transform gets only the sections and names it uses: Beam pickles its DoFns
    (and ships them to a Flink job), so none holds the source URI or a tool option.
    """
    if settings.runner is Runner.inprocess:
        _shorten_state_sampling()
    pipeline = Pipeline(options=options or pipeline_options(settings))
    consumers = settings.parallelism
    (
        pipeline
        | "ReadFromRabbitMQ"
        >> ReadFromRabbitMQ(
            QueueSettings.of(settings),
            settings.consumer,
            prefetch=settings.effective_prefetch,
            consumers=consumers,
        )
        | "TransformBatch" >> TransformBatch(settings.mongo_collection)
        | "WriteToClickHouse" >> WriteToClickHouse(TableSettings.of(settings))
        | "PublishDeadLetters" >> PublishDeadLetters(settings.failed_queue_name)
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
        "changes_acked": _sample(sample_name(metrics.CHANGES_ACKED)),
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


@contextlib.contextmanager
def own_temp_folder() -> Iterator[str]:
    """Point this process's :mod:`tempfile` at a folder of its own, removed on exit.

    Beam leaves temporary folders behind: two per portable (Flink) submission,
    which it never removes (``environments.python_sdk_dependencies``), and its
    pipeline folder whenever the process stops inside ``Pipeline.run``. A consumer
    restarted for weeks would fill ``/tmp`` with them; in one folder of its own
    they go when it stops (a SIGKILL leaves that one folder).
    """
    previous = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix="cdcflow-consumer-") as folder:
        tempfile.tempdir = folder
        try:
            yield folder
        finally:
            tempfile.tempdir = previous


def run_consumer(settings: Settings, *, health: Health | None = None) -> ConsumerResult:
    """Create the warehouse schema, then run the pipeline until a stop condition.

    Returns normally on ``--idle-exit``/``--max-messages`` and on SIGTERM
    (:data:`runtime.STOP`): a batch abandoned by a stop was not acked and will be
    delivered again.
    """
    with own_temp_folder():
        return _run_consumer(settings, health)


def _run_consumer(settings: Settings, health: Health | None) -> ConsumerResult:
    health = health or Health(naming.CONSUMER)
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
            "consuming %s (runner %s, batch %d, prefetch %d%s)",
            settings.queue_name,
            settings.runner.value,
            settings.batch_max_messages,
            settings.effective_prefetch,
            f", checkpoint every {settings.checkpointing_interval_ms} ms"
            if settings.runner is Runner.flink
            else "",
            extra={"stage": "consumer"},
        )
        if settings.runner is Runner.flink:
            abandoned = _run_on_flink(settings)
        else:
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


_TERMINAL = {"DONE", "FAILED", "CANCELLED", "UPDATED", "DRAINED"}


def _run_on_flink(settings: Settings) -> bool:
    """Run the pipeline on an embedded Flink until a stop condition; True if abandoned.

    A streaming Flink job never ends by itself (its impulse source stays up so that
    checkpoints go on), so this watches the source instead: once every restriction
    has ended (``--idle-exit``, ``--max-messages``, SIGTERM), it waits for the acks
    of the last bundles (they come with the next completed checkpoint), cancels the
    job and stops the job server. A failed bundle makes Flink restart the job from
    its last checkpoint (the unacked messages come again); ``FAILED`` means Flink
    gave up, and is raised.
    """
    from cdcflow.consumer.flink import JobServer

    _check_flink_prefetch(settings)
    server = JobServer(settings).start()
    result: Any = None
    try:
        result = build_pipeline(settings, pipeline_options(settings, server.endpoint)).run()
        log.info(
            "Flink job submitted to the job server at %s (pid %s)",
            server.endpoint,
            server.pid,
            extra={"stage": "consumer"},
        )
        state = str(result.state)
        while state not in _TERMINAL:
            if runtime.finished_slots() >= settings.parallelism or runtime.STOP.is_set():
                break
            time.sleep(0.25)
            state = str(result.state)
        if state in _TERMINAL:
            result = None
            if state != "DONE":
                raise RuntimeError(f"the Flink job ended {state}; see {server.log_file}")
            return False
        # Every restriction ended, or SIGTERM: the last bundles' acks come with the
        # next completed checkpoint. Two intervals and a margin, then cancel anyway
        # (what is not acked by then is delivered again: a duplicate, not a loss).
        grace_s = 2 * settings.checkpointing_interval_ms / 1000 + 5
        if not runtime.wait_for_acks(grace_s):
            log.warning(
                "%d batches not acked %.0f s after the source stopped; they will be redelivered",
                runtime.pending_acks(),
                grace_s,
                extra={"stage": "consumer"},
            )
        return runtime.STOP.is_set() and runtime.pending_acks() > 0
    finally:
        with _quiet_harness_shutdown():
            if result is not None:
                with contextlib.suppress(Exception):  # the job server may be gone already
                    result.cancel()
                    _wait_terminal(result, timeout=15.0)
            server.stop()  # whoever starts the job server stops it


def _wait_terminal(result: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while str(result.state) not in _TERMINAL and time.monotonic() < deadline:
        time.sleep(0.2)


@contextlib.contextmanager
def _quiet_harness_shutdown() -> Iterator[None]:
    """Cancelling the job closes the SDK harness's gRPC streams under it: its threads
    then log and raise "Socket closed" errors that mean nothing. Mute those (Beam's
    worker loggers and its harness threads' uncaught exceptions) from the cancel on;
    anything else still reaches the log."""
    worker_log = logging.getLogger("apache_beam.runners.worker")
    level = worker_log.level
    previous_hook = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if "grpc" in type(args.exc_value).__module__ or "Rendezvous" in repr(args.exc_type):
            return
        previous_hook(args)

    worker_log.setLevel(logging.CRITICAL)
    threading.excepthook = hook
    try:
        yield
        time.sleep(0.5)  # the harness threads fail within moments of the server's end
    finally:
        worker_log.setLevel(level)
        threading.excepthook = previous_hook


def _check_flink_prefetch(settings: Settings) -> None:
    """Warn when the prefetch caps the throughput: acks only come after checkpoints."""
    between_acks_s = settings.checkpointing_interval_ms / 1000 + 1
    # changes/s, even if every message were full (pack_max_changes changes)
    cap = settings.effective_prefetch * settings.pack_max_changes / between_acks_s
    if cap < settings.consume_rate:
        log.warning(
            "prefetch %d with a checkpoint every %.1f s caps this consumer at about %.0f "
            "changes/s at best (acks come after checkpoints); raise CDCFLOW_PREFETCH or leave "
            "it unset",
            settings.effective_prefetch,
            settings.checkpointing_interval_ms / 1000,
            cap,
            extra={"stage": "consumer"},
        )
