"""The original design, rebuilt faithfully on a small sample, as the baseline.

The prototype cdcflow replaced opened a RabbitMQ connection for every publish
and built and ran an Apache Beam pipeline for every message. Both halves are
measured here on the same envelopes the pipeline carries:

* publish: per message, a new ``BlockingConnection``, one persistent publish
  (with a confirm, so the figure counts messages the broker has), close;
* process: per message, ``basic_get`` it, build a pipeline ``Create([body]) →
  transform → insert`` on the in-process runner (FnApiRunner), run it (the
  row goes into chdb through the same transform and client the consumer uses),
  then ack.

The design's throughput is that of its slower half: the two halves ran in
different processes, so the benchmark credits the prototype with perfect
overlap (``min`` of the two rates), which favours it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import apache_beam as beam
import pika
import pyarrow as pa
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pipeline import Pipeline
from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

from bench import raw_amqp
from bench.stack import BenchError, Scratch
from cdcflow import broker
from cdcflow.config import Settings
from cdcflow.consumer.batches import process_batch
from cdcflow.events import CONTENT_TYPE, EncodedChange
from cdcflow.warehouse.client import Warehouse

# The warehouse the per-message pipelines insert into. FnApiRunner runs DoFns in
# this process, so they find it here (one chdb folder per process: see warehouse).
_WAREHOUSES: dict[str, Warehouse] = {}
_INSERTED: dict[str, int] = {}


@dataclass
class NaiveResult:
    figures: dict[str, float] = field(default_factory=dict)


class _InsertRow(beam.DoFn):
    def __init__(self, key: str, collection: str) -> None:
        self._key = key
        self._collection = collection

    def process(self, body: bytes) -> Iterator[int]:
        rows = process_batch([body], [CONTENT_TYPE], collection=self._collection).rows
        loaded_at = pa.array([time.time() * 1e6] * rows.num_rows, pa.int64())
        table = rows.append_column("loaded_at", loaded_at.cast(pa.timestamp("us", tz="UTC")))
        _WAREHOUSES[self._key].insert(table)
        _INSERTED[self._key] = _INSERTED.get(self._key, 0) + rows.num_rows
        yield rows.num_rows


def _run_pipeline(key: str, collection: str, body: bytes) -> None:
    options = PipelineOptions(flags=[], save_main_session=False)
    with Pipeline(runner=FnApiRunner(), options=options) as pipeline:
        _ = (
            pipeline
            | "Create" >> beam.Create([body])  # type: ignore[no-untyped-call]
            | "TransformAndLoad" >> beam.ParDo(_InsertRow(key, collection))  # type: ignore[no-untyped-call]
        )


def publish_per_connection(settings: Settings, changes: Sequence[EncodedChange]) -> float:
    """A connection per publish (confirmed); returns messages per second."""
    params = broker.connection_parameters(settings)
    started = time.perf_counter()
    for change in changes:
        connection = pika.BlockingConnection(params)
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            settings.exchange, settings.routing_key, change.body, raw_amqp.properties(change)
        )
        connection.close()
    return len(changes) / (time.perf_counter() - started)


def pipeline_per_message(settings: Settings, collection: str, count: int) -> float:
    """Take each message, run a whole Beam pipeline for it, ack; messages per second."""
    key = settings.mongo_collection
    connection = broker.connect(settings)
    try:
        channel = connection.channel()
        with Warehouse(settings) as warehouse:
            warehouse.init_schema()
            _WAREHOUSES[key] = warehouse
            started = time.perf_counter()
            for _ in range(count):
                method, _props, body = channel.basic_get(settings.queue_name)
                if method is None:
                    raise BenchError("naive: the queue ran dry before the sample was done")
                _run_pipeline(key, collection, body)
                channel.basic_ack(method.delivery_tag)
            seconds = time.perf_counter() - started
            _WAREHOUSES.pop(key, None)
        loaded = _INSERTED.pop(key, 0)
        if loaded != count:
            raise BenchError(f"naive: {loaded} rows loaded for {count} messages")
        return count / seconds
    finally:
        connection.close()


def run(scratch: Scratch, changes: Sequence[EncodedChange], collection: str) -> NaiveResult:
    """Both halves of the original design on ``changes`` (a small sample)."""
    settings = scratch.settings("naive")
    with broker.channel(settings) as ch:
        broker.declare_topology(ch, settings)
    result = NaiveResult()
    publish_rate = publish_per_connection(settings, changes)
    process_rate = pipeline_per_message(settings, collection, len(changes))
    result.figures["naive_publish_msgs_per_s"] = publish_rate
    result.figures["naive_pipeline_msgs_per_s"] = process_rate
    result.figures["naive_events_per_s"] = min(publish_rate, process_rate)
    return result
