"""One RabbitMQ consumer connection, owned by one I/O thread.

pika connections are not thread safe, and a ``BlockingConnection`` only answers
heartbeats while someone calls it. Beam calls the source from its own thread and
finalizes bundles from whichever thread it likes, and a warehouse write may block
for a while (retrying an outage). So the connection lives in a thread of its own
that does nothing but pump pika: deliveries land in a local queue (bounded by the
prefetch), acks and dead-letter publishes are handed over with
``add_callback_threadsafe`` and run on the I/O thread.

Delivery tags are only valid on the channel that delivered them (Beam's Java
``RabbitMqIO`` bug #20602 is acking on another). Each delivery remembers the
*epoch* (connection generation) it came from; an ack for an older epoch is
dropped (the broker has already requeued those messages) instead of acking
whatever now wears that tag.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential_jitter
from tenacity.stop import stop_when_event_set

from cdcflow import broker, metrics
from cdcflow.config import QueueSettings
from cdcflow.errors import CdcflowError
from cdcflow.packing import declared_changes, is_batch

log = logging.getLogger(__name__)

_PUMP_SECONDS = 0.05
IDLE_WAIT_S = 1.0  # how long a bundle waits for a first message before deferring
_MAX_BACKOFF_S = 10.0
_CONNECTION_ERRORS = (pika.exceptions.AMQPError, CdcflowError, OSError)


@dataclass(frozen=True)
class Delivery:
    """One message as delivered: everything needed to process, dead-letter or ack it."""

    epoch: int
    tag: int
    body: bytes
    properties: BasicProperties
    routing_key: str
    exchange: str
    redelivered: bool
    changes: int = 1  # changes the message carries (batch messages: x-cdcflow-changes)


class AckLedger:
    """Decides how to ack a set of delivery tags of one channel.

    ``basic_ack(tag, multiple=True)`` acks *every* outstanding tag up to ``tag``,
    including ones from a bundle that is not durable yet. So a batch is acked with
    one multiple-ack only when it directly follows everything already acked;
    otherwise tag by tag.
    """

    def __init__(self) -> None:
        self.acked_upto = 0
        self._acked_above: set[int] = set()

    def plan(self, tags: Sequence[int]) -> list[tuple[int, bool]]:
        """(tag, multiple) pairs to send for ``tags``; updates the ledger."""
        ordered = sorted(set(tags) - self._acked_above)
        ordered = [tag for tag in ordered if tag > self.acked_upto]
        if not ordered:
            return []
        contiguous = ordered[-1] - ordered[0] + 1 == len(ordered)
        if contiguous and ordered[0] == self.acked_upto + 1:
            self.acked_upto = ordered[-1]
            plan = [(ordered[-1], True)]
        else:
            self._acked_above.update(ordered)
            plan = [(tag, False) for tag in ordered]
        while self.acked_upto + 1 in self._acked_above:
            self.acked_upto += 1
            self._acked_above.discard(self.acked_upto)
        return plan


@dataclass(frozen=True)
class OutgoingMessage:
    exchange: str
    routing_key: str
    body: bytes
    properties: BasicProperties


class RabbitConsumer:
    """Consumes ``queues.queue_name`` with prefetch; acks and publishes on request.

    Holds only the broker's sections and queue names (:class:`QueueSettings`), not
    the whole settings: the read DoFn that opens it is pickled by Beam.
    """

    def __init__(self, queues: QueueSettings, *, prefetch: int, name: str = "consumer") -> None:
        self.queues = queues
        self.prefetch = prefetch
        self.name = name
        self._deliveries: queue.Queue[Delivery] = queue.Queue()  # bounded by the prefetch
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._epoch = 0
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._publish_channel: BlockingChannel | None = None
        self._thread = threading.Thread(target=self._run, name=f"rabbitmq-{name}", daemon=True)
        self._ledger = AckLedger()

    # --- lifecycle ------------------------------------------------------------------

    def start(self, timeout: float | None = None) -> RabbitConsumer:
        """Connect (raising ``ServiceUnavailable`` if the first attempt fails), then pump."""
        self._open()  # first connection on the caller's thread: errors reach the caller
        self._thread.start()
        return self

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def epoch(self) -> int:
        return self._epoch

    def close(self, timeout: float = 5.0) -> None:
        """Run pending acks, then close. Unacked deliveries go back to the queue."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._close_connection()

    # --- consuming ------------------------------------------------------------------

    def take(
        self, max_changes: int, fill_s: float, idle_wait_s: float = IDLE_WAIT_S
    ) -> list[Delivery]:
        """Deliveries until they hold ``max_changes`` changes (a batch message counts
        its ``x-cdcflow-changes``; the last one may go past): wait at most
        ``idle_wait_s`` for the first, then at most ``fill_s`` more for the rest. A
        backlog fills a batch at once; a trickle closes it after ``fill_s``, which
        bounds what a batch adds to freshness."""
        batch: list[Delivery] = []
        changes = 0
        deadline = time.monotonic() + idle_wait_s
        while changes < max_changes:
            try:
                delivery = self._deliveries.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    break
                try:
                    delivery = self._deliveries.get(timeout=min(remaining, 0.1))
                except queue.Empty:
                    continue
            if delivery.epoch != self._epoch:
                continue  # its channel is gone: the broker delivers it again
            if not batch:
                deadline = time.monotonic() + fill_s
            batch.append(delivery)
            changes += delivery.changes
        return batch

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge (thread safe). Deliveries of an older connection are skipped."""
        if not deliveries:
            return
        tags_by_epoch: dict[int, list[int]] = {}
        changes: dict[int, int] = {}
        for delivery in deliveries:
            tags_by_epoch.setdefault(delivery.epoch, []).append(delivery.tag)
            changes[delivery.epoch] = changes.get(delivery.epoch, 0) + delivery.changes
        self._call_on_io_thread(lambda: self._ack_now(tags_by_epoch, changes=changes))

    def requeue(self, deliveries: Sequence[Delivery]) -> None:
        """Hand deliveries back to the broker unacknowledged (thread safe): it delivers
        them again, marked redelivered (the quorum queue's delivery limit counts it)."""
        if not deliveries:
            return
        tags_by_epoch: dict[int, list[int]] = {}
        for delivery in deliveries:
            tags_by_epoch.setdefault(delivery.epoch, []).append(delivery.tag)
        self._call_on_io_thread(lambda: self._ack_now(tags_by_epoch, requeue=True))

    def _ack_now(
        self,
        tags_by_epoch: dict[int, list[int]],
        *,
        requeue: bool = False,
        changes: dict[int, int] | None = None,
    ) -> None:
        changes = changes or {}
        channel = self._channel
        for epoch, tags in tags_by_epoch.items():
            if epoch != self._epoch or channel is None or not channel.is_open:
                if not requeue:  # a closed channel has requeued them already
                    log.warning(
                        "skipping ack of %d messages from a closed channel: the broker "
                        "redelivers them (duplicates collapse in the warehouse)",
                        len(tags),
                        extra={"stage": "consumer", "count": len(tags)},
                    )
                continue
            # The ledger tracks settled tags (acked or requeued): either way a later
            # multiple-ack must not reach past what is still outstanding.
            for tag, multiple in self._ledger.plan(tags):
                if requeue:
                    channel.basic_nack(tag, multiple=multiple, requeue=True)
                else:
                    channel.basic_ack(tag, multiple=multiple)
            if not requeue:
                metrics.MESSAGES_ACKED.inc(len(tags))
                metrics.CHANGES_ACKED.inc(changes.get(epoch, len(tags)))

    def publish(self, messages: Sequence[OutgoingMessage], timeout: float = 30.0) -> None:
        """Publish with confirms on the I/O thread; returns once the broker has them all.

        Raises if the broker refused one or the connection dropped: the caller's
        bundle then fails and nothing of it is acked.
        """
        if not messages:
            return
        done: Future[None] = Future()

        def run() -> None:
            try:
                channel = self._publish_channel
                if channel is None or not channel.is_open:
                    raise pika.exceptions.ChannelWrongStateError("publish channel is closed")
                for message in messages:
                    channel.basic_publish(
                        message.exchange,
                        message.routing_key,
                        message.body,
                        message.properties,
                        mandatory=True,
                    )
                done.set_result(None)
            except Exception as error:  # handed to the waiting thread
                done.set_exception(error)

        self._call_on_io_thread(run)
        done.result(timeout)

    # --- the I/O thread -------------------------------------------------------------

    def _call_on_io_thread(self, callback: Callable[[], None]) -> None:
        connection = self._connection
        if connection is None or not connection.is_open:
            raise pika.exceptions.ConnectionWrongStateError("RabbitMQ connection is not open")
        connection.add_callback_threadsafe(callback)

    def _open(self) -> None:
        connection = broker.connect(self.queues)
        channel = connection.channel()
        channel.basic_qos(prefetch_count=self.prefetch)
        publish_channel = connection.channel()
        publish_channel.confirm_delivery()
        self._epoch += 1
        self._ledger = AckLedger()
        epoch = self._epoch

        def on_message(
            ch: BlockingChannel, method: Basic.Deliver, properties: BasicProperties, body: bytes
        ) -> None:
            changes = 1
            if is_batch(properties.content_type):
                changes = declared_changes(properties.headers)
            self._deliveries.put(
                Delivery(
                    epoch=epoch,
                    tag=int(method.delivery_tag or 0),
                    body=body,
                    properties=properties,
                    routing_key=str(method.routing_key or ""),
                    exchange=str(method.exchange or ""),
                    redelivered=bool(method.redelivered),
                    changes=changes,
                )
            )

        # Declaring is idempotent: a queue deleted while we were away (or never
        # created, if the consumer starts first) comes back instead of failing us.
        broker.declare_topology(channel, self.queues)
        channel.basic_consume(self.queues.queue_name, on_message)
        self._connection, self._channel, self._publish_channel = (
            connection,
            channel,
            publish_channel,
        )
        self._drain_stale()
        self._connected.set()

    def _drain_stale(self) -> None:
        """Drop buffered deliveries of older epochs: their tags died with their channel."""
        kept: list[Delivery] = []
        while True:
            try:
                delivery = self._deliveries.get_nowait()
            except queue.Empty:
                break
            if delivery.epoch == self._epoch:
                kept.append(delivery)
        for delivery in kept:
            self._deliveries.put(delivery)

    def _close_connection(self) -> None:
        connection, self._connection = self._connection, None
        self._channel = self._publish_channel = None
        self._connected.clear()
        if connection is not None and connection.is_open:
            with contextlib.suppress(Exception):
                connection.process_data_events(0)  # run acks already handed over
                connection.close()

    def _run(self) -> None:
        """Pump the connection; when it drops, reconnect with tenacity's backoff
        (0.5 s doubling to 10 s, with jitter; one log line per retry) until it is
        back or :meth:`close` is called."""
        while not self._stop.is_set():
            try:
                if self._connection is None and not self._reconnect():
                    break  # stopped while the broker was away
                assert self._connection is not None
                self._connection.process_data_events(time_limit=_PUMP_SECONDS)
            except _CONNECTION_ERRORS as error:
                self._connected.clear()
                self._connection = self._channel = self._publish_channel = None
                log.warning(
                    "RabbitMQ connection lost (%s); reconnecting; unacked messages will be "
                    "redelivered",
                    type(error).__name__,
                    extra={"stage": "consumer", "where": self.queues.amqp_url.where},
                )
        self._close_connection()

    def _reconnect(self) -> bool:
        """Open a new connection (True), retrying until it opens or the consumer stops
        (False). Each outage starts its backoff afresh."""
        where = self.queues.amqp_url.where

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            log.warning(
                "RabbitMQ still unreachable (%s); retrying in %.1f s",
                type(error).__name__,
                state.upcoming_sleep,
                extra={"stage": "consumer", "where": where, "attempt": state.attempt_number},
            )

        def pause(seconds: float) -> None:
            self._stop.wait(seconds)  # close() cuts the wait short

        retrying = Retrying(
            retry=retry_if_exception_type(_CONNECTION_ERRORS),
            wait=wait_exponential_jitter(multiplier=0.5, max=_MAX_BACKOFF_S, jitter=0.25),
            stop=stop_when_event_set(self._stop),
            sleep=pause,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            retrying(self._open)
        except _CONNECTION_ERRORS:
            return False  # stop is set: tenacity gave up instead of waiting again
        metrics.RECONNECTS.labels(service="rabbitmq").inc()
        log.info("reconnected to RabbitMQ", extra={"stage": "consumer", "where": where})
        return True


def properties_dict(properties: BasicProperties) -> dict[str, Any]:
    """The AMQP properties worth keeping when a message is dead-lettered or replayed."""
    return {
        "content_type": properties.content_type,
        "message_id": properties.message_id,
        "headers": dict(properties.headers or {}),
        "timestamp": properties.timestamp,
    }
