"""The producer: MongoDB change stream → RabbitMQ, resumable, at least once.

:func:`run_producer` is the whole worker; the CLI (``cdcflow produce``) installs
the signal handlers (they set ``stop``) and serves ``/metrics``.

Order of work, and why:

1. Open the stream *before* reading anything else (nx-27017 captures a collection
   only from its first ``watch()``). With a saved token, resume after it.
2. Without one, or when history was lost, or the stream ended (drop, rename,
   invalidate): the fresh stream's start token P is the snapshot point; every
   document is published as a ``snapshot`` at a version just above P, then one
   ``snapshot_end`` (the consumer tombstones rows the snapshot did not see),
   then the same cursor is streamed. Duplicates collapse downstream; gaps cannot.
3. A token is saved only once the broker confirmed it and everything before it
   (the publisher's watermark), at most every ``offset_flush_s`` and at shutdown.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pymongo import MongoClient
from pymongo.errors import ConnectionFailure, PyMongoError

from cdcflow import broker, metrics
from cdcflow.config import Settings
from cdcflow.errors import HistoryLost
from cdcflow.events import (
    DML_OPERATIONS,
    STREAM_ENDING_OPERATIONS,
    encode_change,
    encode_envelope,
    snapshot_end_envelope,
    snapshot_envelope,
)
from cdcflow.health import Health
from cdcflow.mongo import open_mongo_client, wait_for_mongo
from cdcflow.producer.amqp import message_entry
from cdcflow.producer.changestream import ChangeReader, snapshot_batches
from cdcflow.producer.offsets import OffsetStore
from cdcflow.producer.outbox import Entry, Token, checkpoint_entry
from cdcflow.producer.publishing import Publisher
from cdcflow.versions import InvalidEvent, token_data

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 10.0  # at shutdown: how long to wait for outstanding confirms
IDLE_SLEEP_S = 0.05  # after an empty getMore (nx-27017 does not park idle getMores)
TICK_S = 0.25  # metrics, health beat and the offset-flush check, at most this often
PROGRESS_LOG_S = 5.0
_STAGE = {"stage": "producer"}


@dataclass
class ProducerStats:
    """What one :func:`run_producer` call did."""

    captured: dict[str, int] = field(default_factory=dict)  # per op, snapshot reads included
    skipped: int = 0  # events not published (DDL and other non-document changes)
    published: int = 0  # messages handed to the broker
    confirmed: int = 0  # messages the broker confirmed
    snapshots: int = 0
    history_lost: int = 0
    reconnects: int = 0  # RabbitMQ and MongoDB connections re-established
    token_saves: int = 0
    seconds: float = 0.0

    @property
    def events_per_second(self) -> float:
        return self.confirmed / self.seconds if self.seconds > 0 else 0.0


class _StreamEnded(Exception):
    """A drop, rename, dropDatabase or invalidate event: the stream is over."""


def run_producer(
    settings: Settings,
    *,
    stop: threading.Event | None = None,
    health: Health | None = None,
) -> ProducerStats:
    """Capture until ``stop`` is set, then drain confirms, save the token and return.

    Raises :class:`~cdcflow.errors.ServiceUnavailable` if MongoDB or RabbitMQ is
    unreachable at start (after ``server_timeout_s``), and
    :class:`~cdcflow.errors.ConfigError` if the broker refuses the topology.
    """
    stop = stop or threading.Event()
    health = health or Health("producer")
    started = time.monotonic()
    client = open_mongo_client(settings)
    try:
        health.set_ready("mongodb", True)
        broker.ensure_topology(settings)
        publisher = Publisher(
            settings,
            on_connected=lambda ready: health.set_ready("rabbitmq", ready),
            while_waiting=health.beat,
        ).start()
    except BaseException:
        client.close()
        raise
    producer = Producer(settings, client, publisher, health, stop)
    try:
        producer.run()
    finally:
        producer.close()
        producer.stats.seconds = time.monotonic() - started
    return producer.stats


class Producer:
    """The capture loop over one open MongoDB client and one :class:`Publisher`."""

    def __init__(
        self,
        settings: Settings,
        client: MongoClient[dict[str, Any]],
        publisher: Publisher,
        health: Health,
        stop: threading.Event,
    ) -> None:
        self.settings = settings
        self.client = client
        self.publisher = publisher
        self.health = health
        self.stop = stop
        self.collection = client[settings.mongo_db][settings.mongo_collection]
        self.offsets = OffsetStore(client, settings)
        self.reader = ChangeReader(self.collection, batch_size=settings.stream_batch)
        self.stats = ProducerStats()
        self._chunk = max(1, min(500, settings.publish_window // 4))
        self._captured = dict.fromkeys(("insert", "update", "replace", "delete", "snapshot"), 0)
        self._reported = dict(self._captured)
        self._last_token: Token | None = None  # checkpoint of the newest submitted entry
        self._last_cluster_time: Any = None
        self._saved: Token | None = None  # the token in the offsets collection
        self._saved_ref: Token | None = None  # the watermark object last saved (or cleared)
        self._current_at = time.monotonic()  # when the saved token was last known current
        self._next_tick = 0.0
        self._next_flush = 0.0
        self._save_failing = False
        self._mongo_reconnects = 0
        self._mongo_down = False

    # --- the loop --------------------------------------------------------------------
    def run(self) -> None:
        token = self.offsets.load()
        self._saved = token
        reason: str | None = "initial" if token is None else None
        while not self.stop.is_set():
            try:
                if reason is not None:
                    if not self._snapshot(reason):
                        return
                    reason = None
                else:
                    assert token is not None
                    self.reader.open(resume_after=token)
                    log.info("change stream resumed after %s", token_data(token), extra=_STAGE)
                self._stream()
            except HistoryLost as lost:
                log.warning("history lost, re-snapshotting: %s", lost, extra=_STAGE)
                metrics.HISTORY_LOST.inc()
                self.stats.history_lost += 1
                reason = "history_lost"
            except _StreamEnded as ended:
                log.warning(
                    "the change stream ended (%s event): re-snapshotting", ended, extra=_STAGE
                )
                reason = "stream_invalidated"
            except ConnectionFailure as error:
                if reason is None:  # resume from the last event *read*: it is in the outbox
                    token = self.reader.resume_token or token
                self.reader.close()
                if not self._wait_for_mongo(error):
                    return

    def _stream(self) -> None:
        """Read and publish until ``stop``; raises on lost history, end or lost server."""
        reader, submit, stop = self.reader, self.publisher.submit, self.stop
        captured, chunk = self._captured, self._chunk
        buffer: list[Entry] = []
        try:
            while True:
                event = reader.next()
                if event is None:
                    if buffer:
                        submit(buffer, stop)
                        self._last_token, buffer = buffer[-1].checkpoint, []
                    if not self._idle():
                        return
                    continue
                op = event.get("operationType")
                if op in DML_OPERATIONS:
                    try:
                        encoded = encode_change(event)
                    except InvalidEvent as error:
                        self._skip("invalid_event", error)
                        buffer.append(checkpoint_entry(event["_id"]))
                    else:
                        buffer.append(message_entry(encoded, event["_id"]))
                        captured[op] += 1
                        self._last_cluster_time = encoded.cluster_time
                elif op in STREAM_ENDING_OPERATIONS:
                    raise _StreamEnded(op)
                else:
                    self._skip("unsupported_operation", op)
                    buffer.append(checkpoint_entry(event["_id"]))
                if len(buffer) >= chunk or reader.batch_done():
                    if not submit(buffer, stop):
                        buffer = []
                        return
                    self._last_token, buffer = buffer[-1].checkpoint, []
                    if stop.is_set():
                        return
                    now = time.monotonic()
                    if now >= self._next_tick:
                        self._tick(now)
        finally:
            if buffer:  # read before an error: publish, the stream resumes after them
                submit(buffer, stop)

    def _idle(self) -> bool:
        """Nothing new: keep the high-water mark, report, nap. False once stopping."""
        token = self.reader.resume_token
        if token is not None and token != self._last_token and not self.reader.mid_event:
            # MongoDB advances the post-batch token on a quiet collection: saving it
            # keeps the saved token inside the oplog window.
            self.publisher.submit([checkpoint_entry(token)], self.stop)
            self._last_token = token
        self._last_cluster_time = None
        metrics.CAPTURE_LAG_SECONDS.set(0)
        if self.publisher.unconfirmed == 0 and token is not None and token == self._saved:
            self._current_at = time.monotonic()
        now = time.monotonic()
        if now >= self._next_tick:
            self._tick(now)
        return not self.stop.wait(IDLE_SLEEP_S)

    def _skip(self, reason: str, what: object) -> None:
        self.stats.skipped += 1
        metrics.EVENTS_SKIPPED.labels(reason=reason).inc()
        log.debug("event skipped: %s", what, extra={**_STAGE, "reason": reason})

    # --- snapshot --------------------------------------------------------------------
    def _snapshot(self, reason: str) -> bool:
        """Fresh stream, every document, ``snapshot_end``. False if stopped midway."""
        publisher, stop, settings = self.publisher, self.stop, self.settings
        metrics.SNAPSHOTS.labels(reason=reason).inc()
        self.stats.snapshots += 1
        if reason != "initial":
            # Nothing older may be saved after the clear: wait for what is in flight.
            if not publisher.drain(math.inf, stop):
                return False
            self.offsets.clear(reason)
            self._saved, self._saved_ref = None, publisher.confirmed_token
        start = self.reader.open(resume_after=None)
        db, coll = settings.mongo_db, settings.mongo_collection
        log.info(
            "snapshot of %s.%s started at %s",
            db,
            coll,
            token_data(start),
            extra={**_STAGE, "reason": reason},
        )
        metrics.SNAPSHOT_RUNNING.set(1)
        documents = 0
        next_log = time.monotonic() + PROGRESS_LOG_S
        try:
            for batch in snapshot_batches(self.collection, settings.snapshot_batch):
                entries = [
                    message_entry(
                        encode_envelope(
                            snapshot_envelope(document, start_token=start, db=db, coll=coll)
                        ),
                        None,
                    )
                    for document in batch
                ]
                for at in range(0, len(entries), self._chunk):
                    if not publisher.submit(entries[at : at + self._chunk], stop):
                        return False
                documents += len(batch)
                self._captured["snapshot"] += len(batch)
                metrics.SNAPSHOT_DOCUMENTS.inc(len(batch))
                now = time.monotonic()
                if now >= self._next_tick:
                    self._tick(now)
                if now >= next_log:
                    next_log = now + PROGRESS_LOG_S
                    log.info(
                        "snapshot: %d documents read",
                        documents,
                        extra={**_STAGE, "count": documents},
                    )
                if stop.is_set():
                    log.info("snapshot interrupted: the next start snapshots again", extra=_STAGE)
                    return False
            end = snapshot_end_envelope(start_token=start, db=db, coll=coll, documents=documents)
            if not publisher.submit([message_entry(encode_envelope(end), start)], stop):
                return False
            self._last_token = start
        finally:
            metrics.SNAPSHOT_RUNNING.set(0)
        log.info(
            "snapshot done: %d documents; streaming changes after %s",
            documents,
            token_data(start),
            extra={**_STAGE, "count": documents},
        )
        return True

    # --- offsets, metrics, health ----------------------------------------------------
    def _tick(self, now: float) -> None:
        self._next_tick = now + TICK_S
        self.health.beat()
        if now >= self._next_flush:
            self._next_flush = now + self.settings.offset_flush_s
            self._save()
        self._report()

    def _save(self) -> None:
        """Save the confirmed watermark if it moved (never a token ahead of confirms)."""
        token = self.publisher.confirmed_token
        if token is None or token is self._saved_ref or token == self._saved:
            return
        try:
            self.offsets.save(token)
        except PyMongoError as error:
            if not self._save_failing:
                log.warning("cannot save the resume token yet: %s", error, extra=_STAGE)
            self._save_failing = True
            return
        self._save_failing = False
        self._saved = self._saved_ref = token
        self._current_at = self.publisher.watermark_at or time.monotonic()
        self.stats.token_saves += 1

    def _report(self) -> None:
        captured_any = False
        for op, count in self._captured.items():
            delta = count - self._reported[op]
            if delta:
                metrics.EVENTS_CAPTURED.labels(op=op).inc(delta)
                self._reported[op] = count
                captured_any = True
        wall = time.time()
        if captured_any:
            metrics.LAST_CAPTURE_TIMESTAMP.set(wall)
        cluster_time = self._last_cluster_time
        if cluster_time is not None:
            metrics.CAPTURE_LAG_SECONDS.set(max(0.0, wall - cluster_time.timestamp()))
        if self._saved is not None:
            metrics.RESUME_TOKEN_AGE_SECONDS.set(time.monotonic() - self._current_at)

    def _wait_for_mongo(self, error: BaseException) -> bool:
        """Back off until MongoDB answers again (True) or ``stop`` is set (False)."""
        self.health.set_ready("mongodb", False)
        self._mongo_down = True
        if not wait_for_mongo(self.client, self.settings, self.stop, error, self.health.beat):
            return False
        self._mongo_down = False
        self.health.set_ready("mongodb", True)
        metrics.RECONNECTS.labels(service="mongodb").inc()
        self._mongo_reconnects += 1
        return True

    # --- shutdown --------------------------------------------------------------------
    def close(self) -> None:
        """Wait (bounded) for outstanding confirms, save the confirmed token, close."""
        try:
            if not self.publisher.drain(DRAIN_TIMEOUT_S):
                log.warning(
                    "%d messages still unconfirmed after %.0f s: they are re-read on restart",
                    self.publisher.unconfirmed,
                    DRAIN_TIMEOUT_S,
                    extra=_STAGE,
                )
        except Exception as error:  # a failed publisher: still save what was confirmed
            log.warning("publisher failed: %s", error, extra=_STAGE)
        if self._mongo_down:
            # Saving would wait out the server-selection timeout and overrun the
            # shutdown budget; the last saved token is behind every confirm anyway.
            log.warning(
                "MongoDB is unreachable: the resume token was not saved at shutdown; the "
                "next start resumes from the last saved one (replays are harmless)",
                extra=_STAGE,
            )
        else:
            self._save()
        self._report()
        self.publisher.stop()
        if not self._mongo_down:
            # Closing the cursor and the client talks to the server (killCursors,
            # endSessions): on a dead server each waits out a timeout, and the process
            # is exiting anyway.
            self.reader.close()
            self.client.close()
        self.stats.captured = {op: n for op, n in self._captured.items() if n}
        self.stats.published = self.publisher.published
        self.stats.confirmed = self.publisher.confirmed
        self.stats.reconnects = self.publisher.reconnects + self._mongo_reconnects
        log.info(
            "producer stopped: %d published, %d confirmed, %d snapshots, %d token saves",
            self.stats.published,
            self.stats.confirmed,
            self.stats.snapshots,
            self.stats.token_saves,
            extra=_STAGE,
        )
