"""``cdcflow demo``: the whole pipeline on one machine, end to end, then verified.

Starts nx-27017 (MongoDB) under ``<data_dir>/demo``, checks the local RabbitMQ,
runs the producer and the Beam consumer as child processes (as Kubernetes would
run them: configured by environment, stopped by SIGTERM), drives the simulator,
shows live progress from the workers' ``/metrics``, waits for the queue to drain,
stops the consumer (chdb lets one process hold the warehouse) and then verifies,
prints analytics and writes the report. Everything it started is stopped, even
on Ctrl-C; every run starts from fresh demo data, so it can run twice in a row.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from cdcflow import broker, localstack, naming
from cdcflow.config import Settings
from cdcflow.errors import ServiceUnavailable
from cdcflow.metrics import (
    CAPTURE_LAG_SECONDS,
    CHANGES_ACKED,
    CHANGES_PER_MESSAGE,
    EVENTS_CAPTURED,
    EVENTS_PUBLISHED,
    MESSAGES_DEAD_LETTERED,
    PUBLISH_UNCONFIRMED,
    QUEUE_DEPTH,
    ROWS_LOADED,
    sample_name,
)
from cdcflow.scrape import Scrape

DEMO_EXCHANGE = "cdcflow-demo"
DEMO_QUEUE = "cdcflow-demo.viewing_logs"
DRAIN_TIMEOUT_S = 180.0


@dataclass
class Progress:
    written: int = 0
    captured: float = 0
    published: float = 0
    consumed: float = 0
    loaded: float = 0
    dead_lettered: float = 0
    queue_depth: float = 0
    unconfirmed: float = 0
    lag_s: float = 0
    acked: float = 0

    def table(self, phase: str) -> Table:
        table = Table(title=f"cdcflow demo: {phase}", show_edge=False)
        for column in (
            "written",
            "captured",
            "published",
            "loaded",
            "dead-lettered",
            "queue depth",
            "capture lag",
        ):
            table.add_column(column, justify="right")
        table.add_row(
            f"{self.written:,}",
            f"{self.captured:,.0f}",
            f"{self.published:,.0f}",
            f"{self.loaded:,.0f}",
            f"{self.dead_lettered:,.0f}",
            f"{self.queue_depth:,.0f}",
            f"{self.lag_s:.2f} s",
        )
        return table


def _demo_settings(settings: Settings, root: Path) -> Settings:
    return settings.with_overrides(
        mongo_collection="viewing_logs",
        exchange=DEMO_EXCHANGE,
        queue=DEMO_QUEUE,
        clickhouse_url=f"chdb://{root / 'warehouse'}",
    )


def _start_worker(command: str, settings: Settings, root: Path) -> localstack.WorkerProcess:
    """A worker for the demo: its own log under ``<data_dir>/demo/logs``, INFO level,
    whatever level the demo itself prints at."""
    name = naming.PRODUCER if command == "produce" else naming.CONSUMER
    return localstack.start_worker(
        command,
        settings,
        root / "logs" / f"{name}.log",
        name=name,
        log_level="INFO",
        log_format="text",
    )


def _observe(progress: Progress, producer: Scrape, consumer: Scrape) -> None:
    if producer.ok:
        progress.captured = producer.value(sample_name(EVENTS_CAPTURED))
        progress.published = producer.value(sample_name(EVENTS_PUBLISHED))
        progress.unconfirmed = producer.value(sample_name(PUBLISH_UNCONFIRMED))
        progress.lag_s = producer.value(sample_name(CAPTURE_LAG_SECONDS))
    if consumer.ok:
        # Changes, as published counts them (a batch message carries many).
        progress.consumed = consumer.value(sample_name(CHANGES_PER_MESSAGE, "_sum"))
        progress.acked = consumer.value(sample_name(CHANGES_ACKED))
        progress.loaded = consumer.value(sample_name(ROWS_LOADED))
        progress.dead_lettered = consumer.value(sample_name(MESSAGES_DEAD_LETTERED))
        progress.queue_depth = consumer.value(sample_name(QUEUE_DEPTH), queue="main")


def _queue_ready_messages(settings: Settings) -> int:
    with broker.channel(settings) as ch:
        depth = broker.queue_depth(ch, settings.queue_name)
    return depth.messages or 0


def _drained(progress: Progress, settings: Settings) -> bool:
    """Every written change captured, confirmed, delivered and acked."""
    return (
        progress.captured >= progress.written
        and progress.unconfirmed == 0
        and progress.published >= progress.captured - 0.5
        and progress.consumed >= progress.published
        and progress.acked >= progress.consumed
        and _queue_ready_messages(settings) == 0
    )


@contextlib.contextmanager
def _live(console: Console) -> Iterator[Live | None]:
    if console.is_terminal:
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            yield live
    else:
        yield None


def run_demo(settings: Settings, console: Console, *, broker_configured: bool) -> bool:
    """Run the demo; True when verify found the warehouse equal to the source.

    The broker is the configured one (``broker_configured``: CDCFLOW_AMQP_URL or
    ``--amqp-url``), else one answering at 127.0.0.1:5672, else a private node
    under ``<data dir>/rabbitmq`` that lives as long as the demo.
    """
    with localstack.local_broker(
        settings,
        settings.data_dir.resolve() / "rabbitmq",
        configured=broker_configured,
        reuse_default=True,
        say=lambda line: console.print(line, highlight=False),
    ) as local:
        return _run_pipeline(local.settings, console, private_broker=local.node is not None)


def _run_pipeline(settings: Settings, console: Console, *, private_broker: bool) -> bool:
    from cdcflow.report import analytics_tables, write_report
    from cdcflow.simulator import Simulator
    from cdcflow.verify import verify
    from cdcflow.warehouse.client import Warehouse

    root = settings.data_dir.resolve() / "demo"
    for stale in ("mongo", "warehouse", "logs"):
        shutil.rmtree(root / stale, ignore_errors=True)
    mongo = localstack.start_mongo(root / "mongo")
    settings = _demo_settings(settings.with_overrides(mongo_uri=mongo.uri), root)
    with broker.channel(settings) as ch:  # a fresh queue: nothing left from an aborted run
        for queue in (settings.queue_name, settings.failed_queue_name):
            ch.queue_delete(queue)
    workers: list[localstack.WorkerProcess] = []
    started = time.monotonic()
    try:
        console.print(
            f"MongoDB (nx-27017) on 127.0.0.1:{mongo.port}; RabbitMQ at "
            f"{settings.amqp_url.where}; warehouse {settings.clickhouse_url.local_path()}"
        )
        producer = _start_worker("produce", settings, root)
        workers.append(producer)
        producer.wait_ready(timeout=60)
        consumer = _start_worker("consume", settings, root)
        workers.append(consumer)
        consumer.wait_ready(timeout=60)
        console.print(
            f"producer metrics: {producer.metrics_url}{naming.METRICS_PATH}   "
            f"consumer metrics: {consumer.metrics_url}{naming.METRICS_PATH}   logs: {root / 'logs'}"
        )
        progress = Progress()
        simulator_done = threading.Event()
        target = settings.events or 0

        def simulate() -> None:
            try:
                stats = Simulator(settings).run(
                    on_progress=lambda s: setattr(progress, "written", s.events)
                )
                progress.written = stats.events
            finally:
                simulator_done.set()

        thread = threading.Thread(target=simulate, name="simulator", daemon=True)
        thread.start()
        last_print = 0.0
        with _live(console) as live:
            deadline: float | None = None
            while True:
                _observe(progress, producer.scrape(), consumer.scrape())
                phase = "simulating" if not simulator_done.is_set() else "draining"
                if live is not None:
                    live.update(progress.table(phase))
                elif time.monotonic() - last_print > 5:
                    console.print(
                        f"{phase}: written {progress.written:,} captured {progress.captured:,.0f} "
                        f"published {progress.published:,.0f} loaded {progress.loaded:,.0f} "
                        f"queue {progress.queue_depth:,.0f} lag {progress.lag_s:.2f}s"
                    )
                    last_print = time.monotonic()
                for worker in workers:
                    if not worker.alive():
                        raise worker.exited()
                if simulator_done.is_set():
                    deadline = deadline or time.monotonic() + DRAIN_TIMEOUT_S
                    if _drained(progress, settings):
                        break
                    if time.monotonic() > deadline:
                        raise ServiceUnavailable(
                            "cdcflow pipeline",
                            str(root),
                            f"the queue did not drain in {DRAIN_TIMEOUT_S:.0f} s",
                            f"see the logs in {root / 'logs'}",
                        )
                time.sleep(0.5)
        thread.join()
        console.print(
            f"simulated {progress.written:,} events (target {target:,}); captured "
            f"{progress.captured:,.0f}, loaded {progress.loaded:,.0f} rows, dead-lettered "
            f"{progress.dead_lettered:,.0f}"
        )
        for worker in reversed(workers):
            code = worker.terminate()
            if code != 0:
                console.print(f"[yellow]{worker.name} exited with {code}: see {worker.log_path}")
        workers.clear()
        report = verify(settings)
        console.print(report.summary(), highlight=False)
        for example in report.examples:
            console.print(f"  {example.kind:9} {example.doc_id}: {example.detail}", highlight=False)
        with Warehouse(settings) as warehouse:
            for table in analytics_tables(warehouse):
                console.print(table)
            files = write_report(warehouse, settings.data_dir.resolve() / "report")
        console.print(f"report: {files.html}")
        for png in files.pngs:
            console.print(f"  chart: {png}")
        console.print(f"demo finished in {time.monotonic() - started:.0f} s")
        inspect = f"cdcflow dlq inspect --exchange {DEMO_EXCHANGE} --queue {DEMO_QUEUE}"
        if private_broker:
            console.print(
                "failed queue kept in the private node's data: start the node with "
                f"`cdcflow broker` and run `CDCFLOW_AMQP_URL=<its URL> {inspect}`"
            )
        else:
            console.print(f"failed queue kept for inspection: {inspect}")
        return report.equal
    finally:
        for worker in workers:
            worker.terminate()
        mongo.stop()
