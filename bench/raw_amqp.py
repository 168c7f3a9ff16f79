"""Raw RabbitMQ limits with plain pika: the best a Python client does on this broker.

Publish: one ``SelectConnection``, publisher confirms, ``window`` messages in
flight (pipelined confirms), persistent messages with the properties cdcflow
sets, into a quorum queue declared exactly like the pipeline's. Consume: one
``BlockingConnection``, prefetch ``prefetch``, ``basic_ack(multiple=True)`` every
``ack_every`` messages. No cdcflow code is on these paths: they are the
reference the producer's publisher and the consumer's source are held against.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from bench.stack import BenchError
from cdcflow import broker
from cdcflow.config import Settings
from cdcflow.events import CONTENT_TYPE, EncodedChange


def properties(change: EncodedChange) -> BasicProperties:
    """The AMQP properties the producer sets on every message."""
    return BasicProperties(
        content_type=CONTENT_TYPE,
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=change.message_id,
        timestamp=int(time.time()),
        headers={"x-cdcflow-op": change.op, "x-cdcflow-version": str(change.version)},
    )


class _PipelinedPublisher:
    """Publishes a list of messages keeping ``window`` unconfirmed; times the burst."""

    def __init__(
        self,
        settings: Settings,
        messages: Sequence[tuple[bytes, BasicProperties]],
        window: int,
    ) -> None:
        self._settings = settings
        self._messages = messages
        self._window = window
        self._sent = 0
        self._outstanding: deque[int] = deque()
        self._acked_alone: set[int] = set()
        self._confirmed = 0
        self._channel: Any = None
        self._connection: pika.SelectConnection | None = None
        self._error: str | None = None
        self.started = 0.0
        self.finished = 0.0

    def run(self) -> float:
        """Seconds from the first publish to the last confirm."""
        self._connection = pika.SelectConnection(
            broker.connection_parameters(self._settings),
            on_open_callback=lambda connection: connection.channel(
                on_open_callback=self._on_channel
            ),
            on_open_error_callback=lambda _c, error: self._fail(f"connect: {error}"),
            on_close_callback=lambda _c, reason: self._closed(reason),
        )
        self._connection.ioloop.start()
        if self._error is not None:
            raise BenchError(f"raw publish: {self._error}")
        return self.finished - self.started

    def _fail(self, error: str) -> None:
        self._error = self._error or error
        connection = self._connection
        if connection is not None and connection.is_open:
            connection.close()
        elif connection is not None:
            connection.ioloop.stop()

    def _closed(self, reason: Any) -> None:
        if self._confirmed < len(self._messages):
            self._error = self._error or f"connection closed: {reason}"
        assert self._connection is not None
        self._connection.ioloop.stop()

    def _on_channel(self, channel: Any) -> None:
        self._channel = channel
        channel.add_on_return_callback(lambda *_: self._fail("a message came back unroutable"))
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=self._on_ready)

    def _on_ready(self, _frame: Any) -> None:
        self.started = time.perf_counter()
        self._fill()

    def _fill(self) -> None:
        exchange, key = self._settings.exchange, self._settings.routing_key
        publish, total = self._channel.basic_publish, len(self._messages)
        while self._sent < total and len(self._outstanding) < self._window:
            body, props = self._messages[self._sent]
            publish(exchange, key, body, props, mandatory=True)
            self._sent += 1
            self._outstanding.append(self._sent)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        if not isinstance(method, Basic.Ack):
            self._fail(f"the broker nacked delivery {method.delivery_tag}")
            return
        tag, outstanding = method.delivery_tag, self._outstanding
        if method.multiple:
            while outstanding and outstanding[0] <= tag:
                outstanding.popleft()
                self._confirmed += 1
        else:
            self._acked_alone.add(tag)
        while outstanding and outstanding[0] in self._acked_alone:
            self._acked_alone.discard(outstanding.popleft())
            self._confirmed += 1
        if self._confirmed == len(self._messages):
            self.finished = time.perf_counter()
            assert self._connection is not None
            self._connection.close()
        else:
            self._fill()


def publish(settings: Settings, changes: Sequence[EncodedChange], *, window: int = 1000) -> float:
    """Publish every change with pipelined confirms; returns messages per second."""
    with broker.channel(settings) as ch:
        broker.declare_topology(ch, settings)
    messages = [(change.body, properties(change)) for change in changes]
    seconds = _PipelinedPublisher(settings, messages, window).run()
    return len(messages) / seconds


def consume(
    settings: Settings, expected: int, *, prefetch: int = 1000, ack_every: int = 500
) -> float:
    """Consume ``expected`` messages, acking ``multiple`` every ``ack_every``; msgs/s."""
    connection = broker.connect(settings)
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=prefetch)
        state = {"received": 0, "last_tag": 0, "acked_tag": 0}

        def on_message(
            ch: BlockingChannel, method: Basic.Deliver, _props: BasicProperties, _body: bytes
        ) -> None:
            state["received"] += 1
            state["last_tag"] = int(method.delivery_tag or 0)
            if state["received"] % ack_every == 0 or state["received"] == expected:
                ch.basic_ack(state["last_tag"], multiple=True)
                state["acked_tag"] = state["last_tag"]

        started = time.perf_counter()
        tag = channel.basic_consume(settings.queue_name, on_message)
        deadline = time.monotonic() + 120.0
        while state["received"] < expected:
            connection.process_data_events(time_limit=0.1)
            if time.monotonic() > deadline:
                raise BenchError(f"raw consume: {state['received']} of {expected} after 120 s")
        channel.basic_cancel(tag)  # a round trip: the acks before it have reached the broker
        seconds = time.perf_counter() - started
        return expected / seconds
    finally:
        connection.close()
