"""Raw limits of each stage, on the same changes the pipeline carries.

One corpus flows through every stage, so the figures compare like with like:
the simulator writes N mixed events to a fresh nx-27017 (``write``), a change
stream opened before the writes reads them back (``capture``), each event is
encoded into the producer's envelope (``encode``, not a stage of its own but the
producer's CPU per event), plain pika publishes and consumes those bodies
(:mod:`bench.raw_amqp`), the consumer's pure batch transform turns them into
warehouse rows (``transform``), and chdb loads the rows (``load``) in the
consumer's batch size and in 10k-row batches.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from bench import raw_amqp, stack
from bench.stack import BenchError, Scratch, cpu_seconds
from cdcflow.config import ProducerSettings
from cdcflow.consumer.batches import ProcessedBatch, process_batch
from cdcflow.events import CONTENT_TYPE, EncodedChange, encode_change
from cdcflow.mongo import open_mongo_client
from cdcflow.packing import chunks
from cdcflow.simulator import Simulator
from cdcflow.warehouse import ddl
from cdcflow.warehouse.client import Warehouse

log = logging.getLogger(__name__)

CONSUMER_BATCH = 1000  # the consumer's default batch_max_messages
BIG_BATCH = 10_000
STREAM_BATCH: int = ProducerSettings.model_fields["stream_batch"].default  # the producer's


@dataclass
class RawResult:
    """Figures in events (or messages, or rows) per second."""

    figures: dict[str, float] = field(default_factory=dict)
    changes: list[EncodedChange] = field(default_factory=list)
    collection: str = ""  # where the corpus was captured (the envelopes' ns.coll)
    notes: dict[str, Any] = field(default_factory=dict)
    body_bytes_mean: float = 0.0


def _read_stream(stream: Any, expected: int, timeout: float = 120.0) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(events) < expected:
        event = stream.try_next()
        if event is None:
            if time.monotonic() > deadline:
                raise BenchError(f"capture: read {len(events)} of {expected} events")
            continue
        events.append(event)
    return events


def write_and_capture(scratch: Scratch, events: int, result: RawResult) -> None:
    """Simulator writes at unbounded rate; then one change stream reads them all."""
    name = "raw_mongo"
    with stack.mongo(scratch.folder(name)) as server:
        settings = scratch.settings(name, mongo_uri=server.uri, rate=math.inf, events=events)
        result.collection = settings.mongo_collection
        client = open_mongo_client(settings)
        try:
            collection = client[settings.mongo_db][settings.mongo_collection]
            # nx-27017 captures a collection only from its first watch(): open it first,
            # as the producer does, so the writes pay for capture like in production.
            with collection.watch(full_document="updateLookup", batch_size=STREAM_BATCH) as stream:
                stats = Simulator(settings, client=client).run()
                result.figures["raw_write_events_per_s"] = stats.events / stats.seconds
                started = time.perf_counter()
                raw = _read_stream(stream, stats.events)
                seconds = time.perf_counter() - started
            result.figures["raw_capture_events_per_s"] = len(raw) / seconds
        finally:
            client.close()
    started = time.perf_counter()
    result.changes = [encode_change(event) for event in raw]
    result.figures["raw_encode_events_per_s"] = len(raw) / (time.perf_counter() - started)
    result.body_bytes_mean = sum(len(c.body) for c in result.changes) / max(1, len(raw))


def write_while_captured(scratch: Scratch, events: int, result: RawResult) -> None:
    """The same writes into a fresh nx-27017 while a bare change stream drains them.

    A change-data-capture pipeline cannot carry more than its source sustains while
    it is being read: on nx-27017 (one Python process) serving the change stream
    costs the server per change, on the writer's time. The reader
    (:mod:`bench.drain`, the producer's own reader and nothing else of the
    pipeline) runs in a process of its own, as the producer does.
    """
    name = "raw_mongo_captured"
    with stack.mongo(scratch.folder(name)) as server:
        settings = scratch.settings(name, mongo_uri=server.uri, rate=math.inf, events=events)
        client = open_mongo_client(settings)
        reader = subprocess.Popen(
            [sys.executable, "-m", "bench.drain", server.uri, settings.mongo_db,
             settings.mongo_collection],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,  # where ``bench`` imports from
        )  # fmt: skip
        try:
            assert reader.stdout is not None
            if reader.stdout.readline().strip() != "ready":
                raise BenchError("the bare change-stream reader did not start")
            mongo_before, reader_before = cpu_seconds(server.process.pid), cpu_seconds(reader.pid)
            stats = Simulator(settings, client=client).run()
            mongo_cpu = cpu_seconds(server.process.pid) - mongo_before
            reader_cpu = cpu_seconds(reader.pid) - reader_before
            try:
                out, _ = reader.communicate(f"{stats.events}\n", timeout=120)
            except subprocess.TimeoutExpired as error:
                raise BenchError("the bare reader did not drain the writes in time") from error
            read = int(out.split()[1]) if out.startswith("read ") else 0
            if reader.returncode != 0 or read < stats.events:
                raise BenchError(f"the bare change-stream reader read {read} of {stats.events}")
        finally:
            if reader.poll() is None:
                reader.kill()
                reader.wait(10)
            client.close()
    result.figures["raw_write_captured_events_per_s"] = stats.events / stats.seconds
    # What the source and a bare reader cost per change while the writes ran: the
    # end-to-end run's figures for the same processes compare with these.
    result.notes["captured_write_cpu_us_per_event"] = {
        "mongodb": round(mongo_cpu / stats.events * 1e6, 1),
        "bare reader": round(reader_cpu / stats.events * 1e6, 1),
    }


def publish_and_consume(scratch: Scratch, result: RawResult) -> None:
    """Plain pika into and out of a quorum queue shaped like the pipeline's."""
    settings = scratch.settings("raw_amqp")
    result.figures["raw_publish_msgs_per_s"] = raw_amqp.publish(settings, result.changes)
    result.figures["raw_consume_msgs_per_s"] = raw_amqp.consume(settings, len(result.changes))


def _with_loaded_at(table: pa.Table) -> pa.Table:
    now = pa.array([time.time() * 1_000_000] * table.num_rows, pa.int64())
    return table.append_column("loaded_at", now.cast(pa.timestamp("us", tz="UTC")))


def transform_and_load(scratch: Scratch, collection: str, result: RawResult) -> None:
    """The consumer's transform alone, then chdb inserts of its output."""
    processed: list[ProcessedBatch] = []
    started = time.perf_counter()
    for bodies in chunks((change.body for change in result.changes), CONSUMER_BATCH):
        processed.append(process_batch(bodies, [CONTENT_TYPE] * len(bodies), collection=collection))
    seconds = time.perf_counter() - started
    tables = [_with_loaded_at(batch.rows) for batch in processed if batch.rows.num_rows]
    if not tables:
        raise BenchError("transform produced no rows")
    rows = sum(table.num_rows for table in tables)
    result.figures["raw_transform_rows_per_s"] = rows / seconds
    settings = scratch.settings("raw_load")
    with Warehouse(settings) as warehouse:
        warehouse.init_schema()
        started = time.perf_counter()
        for table in tables:
            warehouse.insert(table)
        result.figures["raw_load_rows_per_s"] = rows / (time.perf_counter() - started)
        big_table = f"{settings.table_name}_10k"
        ddl.apply_schema(warehouse.client, settings.clickhouse_database, big_table)
        whole = pa.concat_tables(tables)
        started = time.perf_counter()
        for at in range(0, whole.num_rows, BIG_BATCH):
            warehouse.client.insert_arrow(
                f"{settings.clickhouse_database}.{big_table}", whole.slice(at, BIG_BATCH)
            )
        result.figures["raw_load_10k_rows_per_s"] = rows / (time.perf_counter() - started)


def run(scratch: Scratch, events: int) -> RawResult:
    """Every raw stage on one corpus of ``events`` mixed changes."""
    result = RawResult()
    write_and_capture(scratch, events, result)
    write_while_captured(scratch, events, result)
    publish_and_consume(scratch, result)
    transform_and_load(scratch, result.collection, result)
    return result
