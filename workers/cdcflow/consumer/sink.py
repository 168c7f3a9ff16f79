"""``WriteToClickHouse`` and ``PublishDeadLetters``: the two ends of a batch.

Both run synchronously inside the bundle that read the batch and raise rather
than return on a failure they cannot retry, so a bundle that finishes has put
every row in the warehouse and every rejected message in the failed queue; only
then does the source's finalizer ack.

Warehouse writes are idempotent (ReplacingMergeTree collapses equal
``(doc_id, version)``), so retrying an insert that may have landed is safe.
Transient failures (warehouse down, chdb folder locked by another process) are
retried with backoff for as long as it takes; a good message is never
dead-lettered because the warehouse was away.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.coders.typecoders import registry as coder_registry

from cdcflow import gctuning, metrics
from cdcflow.config import TableSettings
from cdcflow.consumer import runtime
from cdcflow.consumer.batches import ProcessedBatch, loaded_now, process_batch
from cdcflow.consumer.deadletter import dead_letter
from cdcflow.consumer.source import BatchCoder, ConsumedBatch
from cdcflow.warehouse.client import Warehouse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransformedBatch:
    consumed: ConsumedBatch
    processed: ProcessedBatch

    @property
    def size_bytes(self) -> int:
        return self.consumed.size_bytes


coder_registry.register_coder(TransformedBatch, BatchCoder)


class TransformBatch(beam.PTransform[Any, Any]):
    """Parse, clean, transform and enrich each batch (pure, see ``batches``)."""

    def __init__(self, collection: str) -> None:
        super().__init__()
        self._collection = collection

    def expand(self, batches: Any) -> Any:
        collection = self._collection

        def transform(batch: ConsumedBatch) -> TransformedBatch:
            processed = process_batch(
                [delivery.body for delivery in batch.deliveries],
                [delivery.properties.content_type for delivery in batch.deliveries],
                collection=collection,
                headers=[delivery.properties.headers for delivery in batch.deliveries],
            )
            return TransformedBatch(batch, processed)

        return batches | "Transform" >> beam.Map(transform).with_output_types(TransformedBatch)


class _WriteFn(beam.DoFn):
    """Holds the warehouse's sections and table name only: Beam pickles it."""

    def __init__(self, table: TableSettings) -> None:
        self._table = table
        self._warehouse: Warehouse | None = None

    def setup(self) -> None:
        self._warehouse = None
        gctuning.refreeze()  # the pipeline is built: keep its state out of collections

    def _open(self) -> Warehouse:
        if self._warehouse is None:
            self._warehouse = warehouse = Warehouse(self._table)
            runtime.on_close(warehouse.close)  # also when Flink never tears this down
        return self._warehouse

    def _drop(self, error: Exception) -> None:
        """After a failure, reconnect next time (a chdb folder lock, a dead socket)."""
        metrics.WAREHOUSE_RETRIES.inc()
        if self._warehouse is not None:
            self._warehouse.close()
            self._warehouse = None

    def process(self, batch: TransformedBatch) -> Iterator[TransformedBatch]:
        processed = batch.processed
        if processed.accounted != processed.changes:
            # Acking now would acknowledge a change with no row, no failed-queue record
            # and no counted reason: fail the bundle instead (nothing is acked).
            raise RuntimeError(
                f"batch of {processed.messages} messages owes {processed.changes} outcomes "
                f"and accounts for {processed.accounted}: refusing to acknowledge it"
            )
        rows = processed.rows
        if rows.num_rows:
            loaded_at = loaded_now()
            table = rows.append_column(
                "loaded_at", pa.array([loaded_at] * rows.num_rows, pa.timestamp("us", tz="UTC"))
            )
            started = time.perf_counter()
            runtime.retry_until_done(
                lambda: self._open().insert(table),
                what=f"warehouse insert of {rows.num_rows} rows",
                on_failure=self._drop,
            )
            metrics.LOAD_SECONDS.observe(time.perf_counter() - started)
            metrics.LAST_LOAD_TIMESTAMP.set(loaded_at.timestamp())
            for op, count in processed.rows_by_op.items():
                metrics.ROWS_LOADED.labels(op=op).inc(count)
            _observe_freshness(rows.column("cluster_time"), loaded_at.timestamp())
        for sweep_version in processed.sweeps:
            swept = runtime.retry_until_done(
                functools.partial(self._sweep, sweep_version),
                what="snapshot sweep",
                on_failure=self._drop,
            )
            metrics.ROWS_SWEPT.inc(swept)
            log.info(
                "snapshot complete: %d documents it did not see marked deleted",
                swept,
                extra={"stage": "consumer", "version": sweep_version, "count": swept},
            )
        for rule, count in processed.fixes.items():
            metrics.ROWS_FIXED.labels(rule=rule).inc(count)
        for reason, count in processed.ignored.items():
            metrics.MESSAGES_IGNORED.labels(reason=reason).inc(count)
        yield batch

    def _sweep(self, version: int) -> int:
        return self._open().sweep(version)

    def teardown(self) -> None:
        if self._warehouse is not None:
            self._warehouse.close()
            self._warehouse = None


_FRESHNESS_BOUNDS = metrics.upper_bounds(metrics.FRESHNESS_SECONDS)


def _observe_freshness(cluster_times: pa.ChunkedArray, loaded_at: float) -> None:
    """Load time minus source time per row (snapshot rows have no source time), counted
    per bucket column-wise: one step per bucket, not one observation per row."""
    seconds = pc.divide(pc.cast(cluster_times, pa.int64()), 1_000_000.0)
    ages = pc.max_element_wise(pc.subtract(loaded_at, seconds), 0.0, skip_nulls=False)
    ages = ages.combine_chunks() if isinstance(ages, pa.ChunkedArray) else ages
    if ages.null_count:
        ages = ages.drop_null()
    if not len(ages):
        return
    cumulative = [
        len(ages) if math.isinf(bound) else pc.sum(pc.less_equal(ages, bound)).as_py() or 0
        for bound in _FRESHNESS_BOUNDS
    ]
    metrics.observe_cumulative(metrics.FRESHNESS_SECONDS, cumulative, pc.sum(ages).as_py())


class WriteToClickHouse(beam.PTransform[Any, Any]):
    """Insert each batch's rows (and run its sweeps) before the bundle may commit."""

    def __init__(self, table: TableSettings) -> None:
        super().__init__()
        self._table = table

    def expand(self, batches: Any) -> Any:
        return batches | "Write" >> beam.ParDo(_WriteFn(self._table)).with_output_types(
            TransformedBatch
        )


class _DeadLetterFn(beam.DoFn):
    """Holds the failed queue's name only: it publishes on the connection that
    delivered the batch (:func:`runtime.lookup`), and Beam pickles it."""

    def __init__(self, failed_queue: str) -> None:
        self._failed_queue = failed_queue

    def process(self, batch: TransformedBatch) -> Iterator[int]:
        rejections = batch.processed.rejections
        if not rejections:
            return
        deliveries = batch.consumed.deliveries
        messages = [
            dead_letter(deliveries[rejection.index], rejection, self._failed_queue)
            for rejection in rejections
        ]
        consumer = runtime.lookup(batch.consumed.consumer_key)
        epoch = deliveries[0].epoch

        def publish() -> bool:
            if consumer.epoch != epoch:
                # The connection that delivered this batch is gone: the broker delivers
                # every message again, and they are dead-lettered then. Publishing now
                # would only put a second copy in the failed queue.
                return False
            consumer.publish(messages)
            return True

        published = runtime.retry_until_done(
            publish,
            what=f"publishing {len(messages)} messages to {self._failed_queue}",
            max_s=5.0,
        )
        if not published:
            return
        for rejection in rejections:
            metrics.MESSAGES_DEAD_LETTERED.labels(reason=rejection.reason).inc()
            log.warning(
                "dead-lettered: %s",
                rejection.detail,
                extra={
                    "stage": f"consumer.{rejection.stage}",
                    "reason": rejection.reason,
                    "doc_id": rejection.doc_id or "-",
                    "version": rejection.version if rejection.version is not None else "-",
                    "message_id": deliveries[rejection.index].properties.message_id or "-",
                },
            )
        yield len(rejections)


class PublishDeadLetters(beam.PTransform[Any, Any]):
    """Send each batch's rejected messages to ``failed_queue`` with confirms."""

    def __init__(self, failed_queue: str) -> None:
        super().__init__()
        self._failed_queue = failed_queue

    def expand(self, batches: Any) -> Any:
        return batches | "DeadLetter" >> beam.ParDo(_DeadLetterFn(self._failed_queue))
