"""Failed-event records: what the producer publishes instead of an event it cannot read.

A change stream is a single ordered cursor: an event that crashes the producer
is read again after every restart (the saved token is before it), and nothing
after it is ever published. So an event that cannot become a change message
(no token, no key, a key that is not the document's, a forbidden ``_id``, a
``fullDocument`` that is not a document, an event over 16 MB...) is recorded in
``<collection>.failed`` instead, with enough to find the document again, and
its token is checkpointed behind that record like any published event.

The record is JSON (content type :data:`FAILED_EVENT_CONTENT_TYPE`)::

    {"v": 1, "kind": "failed_event", "reason": ..., "detail": ..., "operation": ...,
     "ns": {...}, "document_key": {...}, "doc_id": ..., "token": {...},
     "cluster_time": ..., "captured_at": ..., "event": {...} | null}

``event`` is the whole event as relaxed Extended JSON when it is under
:data:`MAX_EVENT_BYTES` (a too-large event's document is not there at all).
The headers say the same as a consumer's dead letter (``x-cdcflow-reason``,
``x-cdcflow-stage`` = ``producer``, ``x-cdcflow-detail``, ``x-cdcflow-doc-id``),
so ``cdcflow dlq inspect`` counts both kinds together.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
import time
from typing import Any

import orjson
import pika
from pika import spec

from cdcflow.events import canonical_id, cluster_time_of, to_json_safe
from cdcflow.packing import amqp_message_id
from cdcflow.producer.outbox import Entry
from cdcflow.versions import InvalidEvent, Token

FAILED_EVENT_CONTENT_TYPE = "application/vnd.cdcflow.failed-event+json; v=1"
PRODUCER_STAGE = "producer"
MAX_EVENT_BYTES = 1024 * 1024
_HEADER_HEAD = struct.Struct(">HHQ")


def _safe(value: Any) -> Any:
    try:
        return to_json_safe(value)
    except Exception:  # a record must be written whatever the event holds
        return repr(value)[:1000]


def failed_event_record(
    event: Any, reason: str, detail: str, *, captured_at: dt.datetime | None = None
) -> dict[str, Any]:
    """The JSON-ready record of one event the producer could not publish."""
    raw = event if isinstance(event, dict) else {}
    key = raw.get("documentKey")
    doc_id: str | None = None
    if isinstance(key, dict) and "_id" in key:
        try:
            doc_id = canonical_id(key["_id"])
        except Exception:  # a record must be written whatever the key holds
            doc_id = None
    token = raw.get("_id")
    whole = orjson.dumps(_safe(raw), option=orjson.OPT_NON_STR_KEYS | orjson.OPT_NAIVE_UTC)
    cluster_time = cluster_time_of(raw.get("clusterTime"))
    return {
        "v": 1,
        "kind": "failed_event",
        "reason": reason,
        "detail": detail[:1000],
        "operation": raw.get("operationType"),
        "ns": _safe(raw.get("ns")),
        "document_key": _safe(key),
        "doc_id": doc_id,
        "token": _safe(token),
        "cluster_time": cluster_time.isoformat() if cluster_time else None,
        "captured_at": (captured_at or dt.datetime.now(dt.UTC)).isoformat(),
        "event": orjson.Fragment(whole) if len(whole) <= MAX_EVENT_BYTES else None,
    }


def _message_id(record: dict[str, Any], body: bytes) -> str:
    token = record.get("token")
    if isinstance(token, dict) and isinstance(token.get("_data"), str):
        return amqp_message_id("failed:" + token["_data"])
    return "failed:sha256:" + hashlib.sha256(body).hexdigest()


def failed_entry(
    event: Any,
    error: InvalidEvent | str,
    *,
    failed_queue: str,
    checkpoint: Token | None,
    reason: str | None = None,
) -> Entry:
    """An outbox entry that publishes the record to ``failed_queue`` (default exchange).

    ``checkpoint`` is the event's token when it has one: the watermark moves past
    the poison event only once its record is confirmed, so it is never lost.
    """
    code = reason or (error.reason if isinstance(error, InvalidEvent) else "invalid_event")
    record = failed_event_record(event, code, str(error))
    body = orjson.dumps(record)
    headers: dict[str, Any] = {
        "x-cdcflow-reason": code,
        "x-cdcflow-stage": PRODUCER_STAGE,
        "x-cdcflow-detail": str(error)[:500],
        "x-cdcflow-first-failure": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "x-cdcflow-attempts": 1,
    }
    if record["doc_id"] is not None:
        headers["x-cdcflow-doc-id"] = record["doc_id"]
    message_id = _message_id(record, body)
    properties = pika.BasicProperties(
        content_type=FAILED_EVENT_CONTENT_TYPE,
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=message_id,
        timestamp=int(time.time()),
        headers=headers,
    )
    header = _HEADER_HEAD.pack(spec.Basic.INDEX, 0, len(body)) + b"".join(properties.encode())
    entry = Entry(body, header, message_id, checkpoint)
    entry.routing_key = failed_queue
    return entry
