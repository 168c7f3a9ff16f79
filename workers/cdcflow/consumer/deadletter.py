"""The failed queue: what goes in, with which headers, and how it comes back out.

A message that can never load (unreadable, or its document breaks a rejecting
cleaning rule) is published to ``<collection>.failed`` unchanged, with headers
that say why, and only then acknowledged on the main queue. A bad change inside a
batch message goes there alone, as a one-change message of its own (its headers
name the batch message and its position); the rest of the batch loads. A message that
crashed consumers ``x-delivery-limit`` times is moved there by the broker itself
(its ``x-death`` header says so). ``cdcflow dlq`` reads, replays and purges it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import BasicProperties

from cdcflow import broker
from cdcflow.config import Settings
from cdcflow.consumer.batches import Rejection
from cdcflow.consumer.rabbitmq import Delivery, OutgoingMessage
from cdcflow.events import CONTENT_TYPE
from cdcflow.packing import H_CHANGES, amqp_message_id, declared_changes, is_batch

log = logging.getLogger(__name__)

H_REASON = "x-cdcflow-reason"
H_STAGE = "x-cdcflow-stage"
H_DETAIL = "x-cdcflow-detail"
H_FIRST_FAILURE = "x-cdcflow-first-failure"
H_LAST_FAILURE = "x-cdcflow-last-failure"
H_ATTEMPTS = "x-cdcflow-attempts"
H_ROUTING_KEY = "x-cdcflow-original-routing-key"
H_EXCHANGE = "x-cdcflow-original-exchange"
H_DOC_ID = "x-cdcflow-doc-id"
H_BATCH_MESSAGE_ID = "x-cdcflow-batch-message-id"  # a change dead-lettered out of a batch
H_BATCH_POSITION = "x-cdcflow-batch-position"
DELIVERY_LIMIT_REASON = "delivery_limit_exceeded"


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dead_letter(delivery: Delivery, rejection: Rejection, failed_queue: str) -> OutgoingMessage:
    """The failed-queue record of a rejection, for ``failed_queue``: reason in headers.

    Takes the queue's name, not the settings: the dead-letter DoFn that calls this is
    pickled by Beam and holds nothing else.

    A rejection of a whole message copies it (same body and message_id). A change
    rejected inside a batch message becomes a one-change message of its own: its
    envelope as the body (or, for a message cut short, the fragment that arrived),
    its own message_id, and headers naming the batch message it came from, so
    ``cdcflow dlq replay`` puts back just that change.
    """
    original = delivery.properties
    headers: dict[str, Any] = dict(original.headers or {})
    body, content_type, message_id = delivery.body, original.content_type, original.message_id
    if rejection.position is not None:
        headers.pop(H_CHANGES, None)
        headers[H_BATCH_MESSAGE_ID] = original.message_id or ""
        headers[H_BATCH_POSITION] = rejection.position
        body = rejection.body if rejection.body is not None else b""
        content_type = CONTENT_TYPE
        message_id = rejection.message_id or f"{original.message_id}#{rejection.position}"
    attempts = int(headers.get(H_ATTEMPTS, 0) or 0) + 1
    now = _now_iso()
    headers.update(
        {
            H_REASON: rejection.reason,
            H_STAGE: rejection.stage,
            H_DETAIL: rejection.detail[:500],
            H_FIRST_FAILURE: headers.get(H_FIRST_FAILURE) or now,
            H_LAST_FAILURE: now,
            H_ATTEMPTS: attempts,
            H_ROUTING_KEY: headers.get(H_ROUTING_KEY) or delivery.routing_key,
            H_EXCHANGE: headers.get(H_EXCHANGE) or delivery.exchange,
        }
    )
    if rejection.doc_id is not None:
        headers[H_DOC_ID] = rejection.doc_id
    properties = BasicProperties(
        content_type=content_type,
        message_id=amqp_message_id(message_id) if message_id else None,
        timestamp=original.timestamp,
        delivery_mode=pika.DeliveryMode.Persistent,
        headers=headers,
    )
    return OutgoingMessage("", failed_queue, body, properties)


def reason_of(properties: BasicProperties) -> str:
    """Why a failed-queue message is there: our header, or the broker's x-death."""
    headers = properties.headers or {}
    if H_REASON in headers:
        return str(headers[H_REASON])
    if "x-death" in headers or "x-first-death-reason" in headers:
        return DELIVERY_LIMIT_REASON
    return "unknown"


# -------------------------------------------------------------------------------------
# Reading the failed queue (cdcflow dlq ...)
# -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FailedMessage:
    tag: int
    reason: str
    stage: str
    detail: str
    attempts: int
    first_failure: str
    routing_key: str
    message_id: str | None
    body: bytes
    properties: BasicProperties
    # Changes the message carries: 1, or a whole batch message's count (the broker
    # moves a batch message that crashed consumers x-delivery-limit times as it is).
    changes: int = 1

    def summary(self, max_body: int = 200) -> dict[str, Any]:
        text = self.body[:max_body].decode("utf-8", errors="replace")
        headers = self.properties.headers or {}
        summary = {
            "reason": self.reason,
            "stage": self.stage,
            "detail": self.detail,
            "attempts": self.attempts,
            "first_failure": self.first_failure,
            "message_id": self.message_id,
            "routing_key": self.routing_key,
            "changes": self.changes,
            "body": text + ("…" if len(self.body) > max_body else ""),
        }
        if H_BATCH_MESSAGE_ID in headers:  # one change dead-lettered out of a batch
            summary["batch_message_id"] = str(headers[H_BATCH_MESSAGE_ID])
            summary["batch_position"] = int(headers.get(H_BATCH_POSITION, 0) or 0)
        return summary


def _failed_message(
    tag: int, properties: BasicProperties, body: bytes, settings: Settings
) -> FailedMessage:
    headers = properties.headers or {}
    return FailedMessage(
        tag=tag,
        reason=reason_of(properties),
        stage=str(headers.get(H_STAGE, "broker")),
        detail=str(headers.get(H_DETAIL, "")),
        attempts=int(headers.get(H_ATTEMPTS, 0) or 0),
        first_failure=str(headers.get(H_FIRST_FAILURE, "")),
        routing_key=str(headers.get(H_ROUTING_KEY) or settings.routing_key),
        message_id=properties.message_id,
        body=body,
        properties=properties,
        changes=declared_changes(headers) if is_batch(properties.content_type) else 1,
    )


def _browse(ch: BlockingChannel, settings: Settings, limit: int | None) -> Iterator[FailedMessage]:
    """Messages of the failed queue, left unacked on ``ch`` (closing it requeues them)."""
    seen = 0
    while limit is None or seen < limit:
        method, properties, body = ch.basic_get(settings.failed_queue_name, auto_ack=False)
        if method is None:
            return
        seen += 1
        yield _failed_message(int(method.delivery_tag), properties, body, settings)


@dataclass
class Inspection:
    total: int  # messages
    reasons: Counter[str]
    samples: dict[str, list[dict[str, Any]]]
    changes: int = 0  # the changes those messages carry (more than total: batch messages)


def inspect(settings: Settings, *, samples: int = 3, limit: int | None = None) -> Inspection:
    """Count the failed queue by reason with a few samples each; changes nothing."""
    reasons: Counter[str] = Counter()
    kept: dict[str, list[dict[str, Any]]] = {}
    changes = 0
    with broker.channel(settings) as ch:
        broker.declare_topology(ch, settings)
        for message in _browse(ch, settings, limit):
            reasons[message.reason] += 1
            changes += message.changes
            bucket = kept.setdefault(message.reason, [])
            if len(bucket) < samples:
                bucket.append(message.summary())
        # Closing the channel without acking puts every browsed message back.
    return Inspection(sum(reasons.values()), reasons, kept, changes)


@dataclass
class ReplayResult:
    replayed: int  # messages
    kept: int
    by_reason: Counter[str]
    changes: int = 0  # the changes in the replayed messages


def replay(
    settings: Settings,
    *,
    reasons: Sequence[str] = (),
    dry_run: bool = False,
    limit: int | None = None,
) -> ReplayResult:
    """Republish failed messages to the main exchange, keeping ``message_id``.

    Only messages whose reason is in ``reasons`` (all if empty). Failed-event
    records of the producer (stage ``producer``) stay in place: they are not change
    messages, and the change they stand for must be read from MongoDB again (see
    docs/cleaning.md). Each other message is published
    with confirms before it is removed from the failed queue, so a crash replays
    it twice at worst, never zero times. The failure headers stay (attempts
    count up if it fails again); the reason header is dropped.
    """
    replayed = kept = changes = 0
    by_reason: Counter[str] = Counter()
    with broker.channel(settings) as ch:
        broker.declare_topology(ch, settings)
        ch.confirm_delivery()
        for message in _browse(ch, settings, limit):
            if (reasons and message.reason not in reasons) or message.stage == "producer":
                kept += 1
                continue
            by_reason[message.reason] += 1
            replayed += 1
            changes += message.changes
            if dry_run:
                continue
            headers = {
                key: value
                for key, value in (message.properties.headers or {}).items()
                if key not in (H_REASON, H_STAGE, H_DETAIL)
                and not key.startswith("x-death")
                and not key.startswith("x-first-death")
                and not key.startswith("x-last-death")
            }
            properties = BasicProperties(
                content_type=message.properties.content_type,
                message_id=message.message_id,
                timestamp=message.properties.timestamp,
                delivery_mode=pika.DeliveryMode.Persistent,
                headers=headers,
            )
            ch.basic_publish(
                settings.exchange, message.routing_key, message.body, properties, mandatory=True
            )
            ch.basic_ack(message.tag)
    return ReplayResult(replayed, kept, by_reason, changes)


def purge(settings: Settings) -> int:
    """Delete every message of the failed queue; returns how many."""
    with broker.channel(settings) as ch:
        broker.declare_topology(ch, settings)
        frame = ch.queue_purge(settings.failed_queue_name)
        return int(frame.method.message_count)
