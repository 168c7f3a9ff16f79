"""``ReadFromRabbitMQ``: an unbounded splittable DoFn over one RabbitMQ queue.

Beam has no RabbitMQ IO for Python. This one follows what works on both the
in-process runner and the portable Flink runner:

* one input element = one restriction = one competing consumer
  (``Create(range(parallelism))``), each with its own connection
  (:class:`~cdcflow.consumer.rabbitmq.RabbitConsumer`), opened lazily;
* each bundle takes one batch (messages until they hold ``batch_max_messages``
  changes, or ``batch_max_s``) and emits it as ONE element, so everything
  downstream works on batches; a batch message (many changes) is unpacked by
  the transform;
* the source checkpoints itself after every batch (``defer_remainder``):
  portable runners never split an SDF, and a bundle must end for its
  finalization (the ack) to run;
* messages are acked in the **bundle finalizer**, which a runner calls only
  after the bundle (read → transform → warehouse insert → dead letters) has
  committed, and on Flink only after a checkpoint; a lost finalization means a
  redelivery, never a loss;
* stop conditions for demos and tests (idle seconds, message count) and
  :data:`~cdcflow.consumer.runtime.STOP` end the restriction instead of
  deferring it.
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.coders.typecoders import registry as coder_registry
from apache_beam.io.iobase import RestrictionProgress, RestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from cdcflow import metrics
from cdcflow.config import ConsumerSettings, QueueSettings
from cdcflow.consumer import runtime
from cdcflow.consumer.rabbitmq import Delivery, RabbitConsumer

log = logging.getLogger(__name__)

IDLE_DEFER_S = 1  # whole seconds: Flink truncates sub-second defers into a busy loop


@dataclass(frozen=True)
class ConsumedBatch:
    """One bundle's messages and the key of the connection that delivered them."""

    consumer_key: str
    deliveries: list[Delivery] = field(default_factory=list)

    @property
    def size_bytes(self) -> int:
        return sum(len(delivery.body) for delivery in self.deliveries)


class BatchCoder(beam.coders.Coder):
    """Coder of batch elements (they never leave the fused stage, so pickle will do).

    Beam samples every PCollection's element sizes with the coder; pickling a batch
    of a thousand deliveries to learn its size cost more than transforming it. The
    size is estimated from the message bodies instead.
    """

    def encode(self, value: Any) -> bytes:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded: bytes) -> Any:
        return pickle.loads(encoded)

    def estimate_size(self, value: Any) -> int:
        return int(getattr(value, "size_bytes", 0))

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self) -> Any:
        return Any


coder_registry.register_coder(ConsumedBatch, BatchCoder)


@dataclass(frozen=True)
class _Lease:
    """The restriction: a consumer's right to keep reading. ``done`` ends it."""

    batches: int = 0
    done: bool = False


class _LeaseTracker(RestrictionTracker):
    """Claims one batch per bundle; ``try_split(0)`` hands the rest to a new bundle."""

    def __init__(self, lease: _Lease) -> None:
        self._lease = lease
        self._split = False

    def current_restriction(self) -> _Lease:
        return self._lease

    def try_claim(self, position: Any) -> bool:
        return not (self._lease.done or self._split)

    def try_split(self, fraction_of_remainder: float) -> tuple[_Lease, _Lease] | None:
        if fraction_of_remainder != 0 or self._lease.done or self._split:
            return None  # only self-checkpoints: a queue cannot be split by position
        primary = _Lease(self._lease.batches, done=True)
        residual = _Lease(self._lease.batches + 1, done=False)
        self._lease, self._split = primary, True
        return primary, residual

    def finish(self) -> None:
        self._lease = _Lease(self._lease.batches, done=True)

    def check_done(self) -> None:
        if not (self._lease.done or self._split):
            raise ValueError("queue lease neither finished nor deferred")

    def current_progress(self) -> RestrictionProgress:
        return RestrictionProgress(completed=0.0 if not self._lease.done else 1.0, remaining=1.0)

    def is_bounded(self) -> bool:
        return False


class _LeaseProvider(RestrictionProvider):
    def initial_restriction(self, element: Any) -> _Lease:
        return _Lease()

    def create_tracker(self, restriction: _Lease) -> _LeaseTracker:
        return _LeaseTracker(restriction)

    def restriction_size(self, element: Any, restriction: _Lease) -> int:
        return 1

    def truncate(self, element: Any, restriction: _Lease) -> None:
        return None  # on drain: stop reading; unacked messages stay in the queue


class _ReadQueueFn(beam.DoFn):
    """Reads one batch per bundle for the restriction of each input element.

    The connection and the stop-condition counters live in the element's
    :class:`~cdcflow.consumer.runtime.Slot`, not in this instance: the SDK worker
    runs the next bundle of a restriction on other instances while this one
    awaits its finalization (on Flink, until the next checkpoint).

    Beam pickles this instance with what it holds, so it holds the broker's sections
    and queue names and the consumer section, never the whole settings.
    """

    def __init__(
        self,
        queues: QueueSettings,
        consumer: ConsumerSettings,
        run: str,
        *,
        prefetch: int,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._queues = queues
        self._consumer = consumer
        self._prefetch = prefetch
        self._run = run
        self._now = now
        self._unfinalized: list[_AckOnFinalize] = []

    def setup(self) -> None:
        self._unfinalized = []

    def _slot(self, element: Any) -> runtime.Slot:
        return runtime.slot(f"rabbitmq-{self._run}-{element}")

    def _open(self, slot: runtime.Slot) -> RabbitConsumer:
        if slot.consumer is None:
            slot.consumer = RabbitConsumer(
                self._queues, prefetch=self._prefetch, name=slot.key
            ).start()
            runtime.register(slot.key, slot.consumer)
        return slot.consumer

    def _should_stop(self, slot: runtime.Slot) -> bool:
        settings = self._consumer
        if runtime.STOP.is_set():
            return True
        if settings.max_messages is not None and slot.taken >= settings.max_messages:
            log.info("read %d changes: stopping (--max-messages)", slot.taken)
            return True
        idle = self._now() - slot.last_message_at
        if settings.idle_exit_s is not None and idle >= settings.idle_exit_s:
            log.info("no message for %.1f s: stopping (--idle-exit)", idle)
            return True
        return False

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        element: Any,
        bundle_finalizer: Any = beam.DoFn.BundleFinalizerParam,
        tracker: Any = beam.DoFn.RestrictionParam(_LeaseProvider()),
        watermark: Any = beam.DoFn.WatermarkEstimatorParam(
            ManualWatermarkEstimator.default_provider()
        ),
    ) -> Iterator[Any]:
        # The finalizer param comes before the restriction params: Beam's SDF
        # invoker requires that order.
        slot = self._slot(element)
        self._unfinalized = [ack for ack in self._unfinalized if ack.pending]
        if self._should_stop(slot) or not tracker.try_claim(0):
            _finish(tracker, slot)
            return
        consumer = self._open(slot)
        settings = self._consumer
        limit = settings.batch_max_messages
        if settings.max_messages is not None:
            limit = max(1, min(limit, settings.max_messages - slot.taken))
        deliveries = consumer.take(limit, settings.batch_max_s)
        now = Timestamp.now()
        watermark.set_watermark(now)
        if deliveries:
            slot.taken += sum(delivery.changes for delivery in deliveries)
            slot.last_message_at = self._now()
            metrics.MESSAGES_CONSUMED.inc(len(deliveries))
            metrics.BATCH_SIZE.observe(len(deliveries))
            observe = metrics.CHANGES_PER_MESSAGE.observe
            for delivery in deliveries:
                observe(delivery.changes)
            ack = _AckOnFinalize(consumer, deliveries)
            self._unfinalized.append(ack)
            bundle_finalizer.register(ack)
            yield TimestampedValue(ConsumedBatch(slot.key, deliveries), now)
        if self._should_stop(slot):
            _finish(tracker, slot)
        else:
            tracker.defer_remainder(Duration(seconds=0 if deliveries else IDLE_DEFER_S))

    def teardown(self) -> None:
        """The SDK worker tears an instance down when its bundle failed (or at the end):
        hand back what it read and never acked, so the broker delivers it again now
        rather than when the connection closes (on Flink the job restarts in this
        process, and the connection lives on)."""
        for ack in self._unfinalized:
            ack.requeue()
        self._unfinalized = []


def _finish(tracker: Any, slot: runtime.Slot) -> None:
    slot.finished = True
    inner = tracker
    for attribute in ("_threadsafe_restriction_tracker", "_restriction_tracker"):
        inner = getattr(inner, attribute, inner)
    if isinstance(inner, _LeaseTracker):
        inner.finish()
    else:  # an unknown wrapper: deferring is always allowed, the runner stops anyway
        tracker.defer_remainder(Duration(seconds=IDLE_DEFER_S))


class _AckOnFinalize:
    """Bundle finalization callback: the batch is durable, ack it (idempotent).

    Counted in :func:`runtime.pending_acks` from registration until it runs, so a
    stopping consumer can wait for the acks of its last bundles (on Flink they
    come with the next completed checkpoint).
    """

    def __init__(self, consumer: RabbitConsumer, deliveries: list[Delivery]) -> None:
        self._consumer = consumer
        self._deliveries: list[Delivery] | None = deliveries
        self._lock = threading.Lock()
        runtime.ack_registered()

    @property
    def pending(self) -> bool:
        return self._deliveries is not None

    def _take(self) -> list[Delivery] | None:
        with self._lock:
            deliveries, self._deliveries = self._deliveries, None
        if deliveries is not None:
            runtime.ack_done()
        return deliveries

    def __call__(self) -> None:
        deliveries = self._take()
        if deliveries:
            try:
                self._consumer.ack(deliveries)
            except Exception:  # the connection is gone: the broker redelivers them
                log.warning("could not ack %d messages; they will be redelivered", len(deliveries))

    def requeue(self) -> None:
        """The bundle will never be finalized: give its messages back (never acked)."""
        deliveries = self._take()
        if deliveries:
            try:
                self._consumer.requeue(deliveries)
                log.info(
                    "bundle not finalized: %d messages handed back for redelivery",
                    len(deliveries),
                    extra={"stage": "consumer", "count": len(deliveries)},
                )
            except Exception:  # the connection is gone: the broker redelivers them anyway
                pass


class ReadFromRabbitMQ(beam.PTransform[Any, Any]):
    """Read ``queues.queue_name`` as batches of deliveries, acked on finalization."""

    def __init__(
        self,
        queues: QueueSettings,
        consumer: ConsumerSettings,
        *,
        prefetch: int,
        consumers: int = 1,
    ) -> None:
        super().__init__()
        if consumers < 1:
            raise ValueError("consumers must be at least 1")
        self._queues = queues
        self._consumer = consumer
        self._consumers = consumers
        self._prefetch = prefetch
        self._run = uuid.uuid4().hex[:12]  # names this pipeline's slots in runtime

    def expand(self, pbegin: Any) -> Any:
        return (
            pbegin
            | "Consumers" >> beam.Create(list(range(self._consumers)))
            | "Read"
            >> beam.ParDo(
                _ReadQueueFn(self._queues, self._consumer, self._run, prefetch=self._prefetch)
            ).with_output_types(ConsumedBatch)
        )
