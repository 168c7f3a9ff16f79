"""Helpers shared by integration tests: publish envelopes, read queues, build changes."""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pika

from cdcflow import broker
from cdcflow.config import Settings
from cdcflow.events import CONTENT_TYPE, EncodedChange, encode_change
from cdcflow.localstack import start_worker
from cdcflow.packing import BATCH_CONTENT_TYPE, H_CHANGES, pack

REPO = Path(__file__).resolve().parents[1]

VIEWING: dict[str, Any] = {
    "video_id": "vid_0001",
    "user_id": "user_1",
    "device": "ios",
    "country": "PT",
    "started_at": dt.datetime(2026, 11, 25, 10, 0),
    "watched_time": 120,
    "total_video_time": 300,
}


def nx_change(
    seq: int, collection: str, doc_id: str, op: str = "update", **fields: Any
) -> EncodedChange:
    """An nx-27017-shaped change event, encoded as the producer would."""
    raw: dict[str, Any] = {
        "_id": {"_data": f"nx:{seq}"},
        "operationType": op,
        "clusterTime": dt.datetime.now(dt.UTC).replace(tzinfo=None),
        "ns": {"db": "media", "coll": collection},
        "documentKey": {"_id": doc_id},
        "fullDocument": {"_id": doc_id, **VIEWING, **fields},
    }
    return encode_change(raw)


def publish(
    settings: Settings,
    messages: Iterable[EncodedChange | bytes],
    *,
    content_type: str | None = CONTENT_TYPE,
    headers: dict[str, Any] | None = None,
) -> int:
    """Publish with confirms to the pipeline's exchange; returns how many."""
    count = 0
    with broker.channel(settings) as ch:
        broker.declare_topology(ch, settings)
        ch.confirm_delivery()
        for message in messages:
            body = message.body if isinstance(message, EncodedChange) else message
            message_id = message.message_id if isinstance(message, EncodedChange) else None
            ch.basic_publish(
                settings.exchange,
                settings.routing_key,
                body,
                pika.BasicProperties(
                    content_type=content_type,
                    message_id=message_id,
                    delivery_mode=2,
                    headers=headers,
                ),
            )
            count += 1
    return count


def publish_packed(
    settings: Settings, messages: Sequence[EncodedChange | bytes], per_message: int
) -> int:
    """Publish the changes packed ``per_message`` to a batch message, as the producer
    packs them; returns how many messages."""
    bodies = [m.body if isinstance(m, EncodedChange) else m for m in messages]
    count = 0
    for start in range(0, len(bodies), per_message):
        chunk = bodies[start : start + per_message]
        count += publish(
            settings,
            [pack(chunk)],
            content_type=BATCH_CONTENT_TYPE,
            headers={H_CHANGES: str(len(chunk))},
        )
    return count


def depths(settings: Settings) -> tuple[int, int]:
    """(main, failed) ready messages."""
    connection = broker.connect(settings)
    try:
        main, failed = broker.queue_depths(
            connection, settings.queue_name, settings.failed_queue_name
        )
    finally:
        connection.close()
    return main.messages or 0, failed.messages or 0


def cdcflow_process(
    command: Sequence[str], settings: Settings, log_path: Path, **overrides: Any
) -> subprocess.Popen[bytes]:
    """Start ``python -m cdcflow <command>`` configured by environment, logging to a file."""
    (name,) = command
    return start_worker(name, settings, log_path, **overrides).process
