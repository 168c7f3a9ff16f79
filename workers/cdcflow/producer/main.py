"""The producer: MongoDB change stream → RabbitMQ, resumable, at least once.

:func:`run_producer` is the whole worker; the CLI (``cdcflow produce``) installs
the signal handlers (they set ``stop``) and serves ``/metrics``.

Order of work, and why:

1. Open the stream *before* reading anything else (nx-27017 captures a collection
   only from its first ``watch()``). With a saved token, resume after it.
2. Without one, or when history was lost: the fresh stream's start token P is
   the snapshot point; every document is published as a ``snapshot`` at a
   version just below the first event the stream can deliver after P (see
   :mod:`cdcflow.versions`), then one ``snapshot_end`` (the consumer tombstones
   rows the snapshot did not see), then the same cursor is streamed. Duplicates
   collapse downstream; gaps cannot.
3. A token is saved only once the broker confirmed it and everything before it
   (the publisher's watermark), at most every ``offset_flush_s`` and at shutdown.
4. An event that cannot be published never stops capture: it is recorded in the
   failed queue (:mod:`cdcflow.producer.failures`) and its token checkpointed
   behind that record. Events that are no document change are skipped, logged
   at WARNING and counted.
5. A drop, rename, dropDatabase or invalidate (or, on nx-27017, which sends none,
   the collection disappearing) stops capture of the collection: the warehouse is
   left as it is (``mirror_drop_as_deletes`` tombstones it on a drop instead),
   the stop is remembered in the offsets document, logged with what to do,
   exported as ``cdcflow_capture_stopped`` and shown by ``cdcflow status``. The
   process stays up and resumes with a fresh snapshot once the offsets document
   is deleted.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pymongo
from pymongo import MongoClient
from pymongo.errors import ConnectionFailure, PyMongoError

from cdcflow import broker, metrics, naming
from cdcflow.config import Settings
from cdcflow.errors import HistoryLost
from cdcflow.events import (
    DML_OPERATIONS,
    STREAM_ENDING_OPERATIONS,
    EncodedChange,
    drop_envelope,
    encode_change,
    encode_envelope,
    snapshot_end_envelope,
    snapshot_envelope,
)
from cdcflow.health import Health
from cdcflow.mongo import open_mongo_client, wait_for_mongo
from cdcflow.packing import Packer, chunks
from cdcflow.producer.amqp import batch_entry, message_entry
from cdcflow.producer.changestream import (
    ChangeReader,
    PoisonStream,
    measures_sizes,
    snapshot_batches,
    supports_split_events,
)
from cdcflow.producer.failures import failed_entry
from cdcflow.producer.offsets import OffsetStore
from cdcflow.producer.outbox import Entry, checkpoint_entry
from cdcflow.producer.publishing import Publisher
from cdcflow.rules import PRODUCER_REASONS
from cdcflow.versions import InvalidEvent, Token, token_data

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 10.0  # at shutdown: how long to wait for outstanding confirms
IDLE_SLEEP_S = 0.05  # after an empty getMore (nx-27017 does not park idle getMores)
TICK_S = 0.25  # metrics, health beat and the offset-flush check, at most this often
PROGRESS_LOG_S = 5.0
STOPPED_POLL_S = 5.0  # while capture is stopped: how often the offsets document is checked
PRESENCE_CHECK_S = 5.0  # while idle: how often the collection is checked to still exist
PRESENCE_TIMEOUT_S = 1.0
MIRRORED_DROPS = frozenset({"drop", "dropDatabase"})
SKIP_REASONS = ("unsupported_operation",)  # every reason _skip is called with
_STAGE = {"stage": "producer"}


@dataclass
class ProducerStats:
    """What one :func:`run_producer` call did."""

    captured: dict[str, int] = field(default_factory=dict)  # per op, snapshot reads included
    skipped: int = 0  # events not published (DDL and other non-document changes)
    failed: int = 0  # events recorded in the failed queue instead of published
    stopped: str | None = None  # why capture stopped (drop, rename ...), if it did
    published: int = 0  # changes handed to the broker (a batch message holds many)
    confirmed: int = 0  # changes the broker confirmed
    messages: int = 0  # AMQP messages the broker confirmed
    snapshots: int = 0
    history_lost: int = 0
    reconnects: int = 0  # RabbitMQ and MongoDB connections re-established
    token_saves: int = 0
    seconds: float = 0.0

    @property
    def events_per_second(self) -> float:
        return self.confirmed / self.seconds if self.seconds > 0 else 0.0


def invalid_event(error: Exception) -> InvalidEvent:
    """``error`` as the failed-queue error of one event: its own reason if it has one,
    else ``invalid_event``. Any exception counts (a ValueError from an ``_id`` whose
    text is too long, a pydantic error, ...): one event that cannot be encoded must
    never crash the producer, which would read it again on every restart."""
    if isinstance(error, InvalidEvent):
        return error
    return InvalidEvent(
        f"the event cannot be encoded: {type(error).__name__}: {error}"[:1000],
        reason="invalid_event",
    )


class _StreamEnded(Exception):
    """A drop, rename, dropDatabase or invalidate event: the stream is over."""

    def __init__(self, operation: str, event: dict[str, Any] | None) -> None:
        super().__init__(operation)
        self.operation = operation
        self.event = event


def export_reason_series() -> None:
    """Every skip and failure reason exported at 0 from the start.

    The alert on skipped or failed events uses ``increase()``, which sees nothing
    when a labelled series is born at 1: without these zeros the first poison
    event of a reason would never fire it.
    """
    for reason, _meaning in PRODUCER_REASONS:
        metrics.EVENTS_FAILED.labels(reason=reason)
    for reason in SKIP_REASONS:
        metrics.EVENTS_SKIPPED.labels(reason=reason)


def _server_version(client: Any) -> str | None:
    try:
        version = client.server_info().get("version")
    except Exception:  # nx-27017 answers without one; a test double may not answer
        return None
    return str(version) if version else None


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
    health = health or Health(naming.PRODUCER)
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
        version = _server_version(client)
        self.reader = ChangeReader(
            self.collection,
            batch_size=settings.stream_batch,
            split_events=supports_split_events(version),
            measures_sizes=measures_sizes(version),
        )
        self.stats = ProducerStats()
        export_reason_series()
        self._chunk = max(1, min(500, settings.publish_window // 4))
        self._packer: Packer[tuple[EncodedChange, Token | None]] = Packer(
            settings.pack_max_changes, settings.pack_max_bytes, settings.pack_linger_s
        )
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
        self._collection_seen = False  # the collection existed while we captured it
        self._next_presence_check = 0.0

    # --- the loop --------------------------------------------------------------------
    def run(self) -> None:
        if not self._wait_while_stopped():
            return
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
            except PoisonStream as poison:
                self._record_failure(None, str(poison), reason=poison.reason)
                log.warning("re-snapshotting: %s", poison, extra=_STAGE)
                reason = "poison_event"
            except HistoryLost as lost:
                log.warning("history lost, re-snapshotting: %s", lost, extra=_STAGE)
                metrics.HISTORY_LOST.inc()
                self.stats.history_lost += 1
                reason = "history_lost"
            except _StreamEnded as ended:
                self._stop_capture(ended)
                if not self._wait_while_stopped():
                    return
                token, reason = None, "initial"
            except ConnectionFailure as error:
                if reason is None:  # resume from the last event *read*: it is in the outbox
                    token = self.reader.resume_token or token
                self.reader.close()
                if not self._wait_for_mongo(error):
                    return

    # --- capture stopped (drop, rename, dropDatabase, invalidate) -------------------
    def _stop_capture(self, ended: _StreamEnded) -> None:
        """Stop capturing: checkpoint past the event, remember why, say what to do."""
        settings, operation, event = self.settings, ended.operation, ended.event
        token = event.get("_id") if isinstance(event, dict) else None
        entries = []
        mirrored = settings.mirror_drop_as_deletes and operation in MIRRORED_DROPS
        if isinstance(token, dict) and "_data" in token:
            if mirrored:
                envelope = drop_envelope(
                    token, db=settings.mongo_db, coll=settings.mongo_collection
                )
                entries.append(message_entry(encode_envelope(envelope), token))
            else:
                entries.append(checkpoint_entry(token))
        if entries and self.publisher.submit(entries, self.stop):
            self._last_token = token
        self.publisher.drain(DRAIN_TIMEOUT_S, self.stop)
        self._save()
        namespace = settings.source_namespace
        kept = (
            "every warehouse row of it is being marked deleted (mirror_drop_as_deletes)"
            if mirrored
            else "the warehouse keeps every row as it was"
        )
        detail = (
            f"capture of {namespace} stopped: {operation} "
            f"{'at ' + token_data(token) if isinstance(token, dict) else ''}".strip()
        )
        self.offsets.stop(operation, token if isinstance(token, dict) else None, detail)
        self.reader.close()
        self.stats.stopped = operation
        metrics.CAPTURE_STOPPED.labels(reason=operation).set(1)
        log.error(
            "%s; %s. To capture the collection again (recreated, or under its new name "
            "with CDCFLOW_MONGO_COLLECTION), delete the offsets document: "
            'db.%s.deleteOne({_id: "%s"}); this producer then snapshots it afresh',
            detail,
            kept,
            settings.offsets_collection,
            namespace,
            extra={**_STAGE, "reason": operation},
        )

    def _wait_while_stopped(self) -> bool:
        """Idle while the offsets document says capture is stopped. False once stopping."""
        marker = self.offsets.stopped()
        if marker is None:
            return True
        reason = str(marker.get("reason", "stopped"))
        self.stats.stopped = reason
        metrics.CAPTURE_STOPPED.labels(reason=reason).set(1)
        log.warning(
            "capture is stopped (%s); delete the offsets document "
            'db.%s.deleteOne({_id: "%s"}) to snapshot the collection again',
            marker.get("detail") or reason,
            self.settings.offsets_collection,
            self.settings.source_namespace,
            extra={**_STAGE, "reason": reason},
        )
        while not self.stop.wait(STOPPED_POLL_S):
            self._tick(time.monotonic())
            if self.offsets.stopped() is None:
                metrics.CAPTURE_STOPPED.labels(reason=reason).set(0)
                self.stats.stopped = None
                log.info("the stop marker is gone: capture starts again", extra=_STAGE)
                return True
        return False

    def _check_presence(self, now: float) -> None:
        """nx-27017 sends no drop event: notice the collection is gone while idle."""
        if now < self._next_presence_check:
            return
        self._next_presence_check = now + PRESENCE_CHECK_S
        database = self.client[self.settings.mongo_db]
        try:
            # Bounded: a dead server must not stall the loop (or a SIGTERM) for the
            # server-selection timeout; a lost connection goes to the usual back-off.
            with pymongo.timeout(PRESENCE_TIMEOUT_S):
                names = database.list_collection_names(
                    filter={"name": self.settings.mongo_collection}
                )
        except ConnectionFailure:
            raise
        except (PyMongoError, AttributeError, TypeError):
            return  # a failure here is no evidence of a drop
        if self.settings.mongo_collection in names:
            self._collection_seen = True
        elif self._collection_seen:
            token = self.reader.resume_token
            raise _StreamEnded("drop", {"_id": token, "operationType": "drop"} if token else None)

    def _stream(self) -> None:
        """Read and publish until ``stop``; raises on lost history, end or lost server.

        Changes are packed into batch messages (:mod:`cdcflow.packing`); a partly
        filled one waits up to ``pack_linger_s`` for more. Anything that is not a
        change (a checkpoint, a failed-event record, the end of the stream) first
        closes the open batch, so tokens reach the outbox in stream order and none
        is saved before the message holding its change is confirmed.
        """
        reader, submit, stop, packer = self.reader, self.publisher.submit, self.stop, self._packer
        captured, chunk = self._captured, self._chunk
        buffer: list[Entry] = []
        try:
            while True:
                event = reader.next()
                if event is None:
                    if packer.pending:
                        now = time.monotonic()
                        if not packer.due(now):
                            if stop.wait(min(packer.wait_s(now), IDLE_SLEEP_S)):
                                return
                            continue
                        buffer += self._packed(packer.flush())
                    if buffer:
                        submit(buffer, stop)
                        self._last_token = buffer[-1].checkpoint or self._last_token
                        buffer = []
                    if not self._idle():
                        return
                    self._check_presence(time.monotonic())
                    continue
                op = event.get("operationType")
                token = event.get("_id")
                checkpoint = token if isinstance(token, dict) and "_data" in token else None
                if op in DML_OPERATIONS:
                    if op == "update" and "fullDocument" not in event:
                        self._look_up(event)
                    try:
                        encoded = encode_change(event)
                    except Exception as error:  # whatever breaks on one event: record it
                        buffer += self._packed(packer.flush())
                        buffer.append(self._failed(event, invalid_event(error), checkpoint))
                    else:
                        closed = packer.add(encoded.body, (encoded, checkpoint), time.monotonic())
                        if closed:
                            buffer += self._packed(closed)
                        captured[op] += 1
                        self._last_cluster_time = encoded.cluster_time
                elif op in STREAM_ENDING_OPERATIONS:
                    buffer += self._packed(packer.flush())
                    if buffer:
                        submit(buffer, stop)
                        self._last_token, buffer = buffer[-1].checkpoint, []
                    raise _StreamEnded(str(op), event)
                else:
                    self._skip("unsupported_operation", op, checkpoint)
                    if checkpoint is not None:
                        buffer += self._packed(packer.flush())
                        buffer.append(checkpoint_entry(checkpoint))
                if packer.pending and reader.batch_done() and packer.due(time.monotonic()):
                    buffer += self._packed(packer.flush())
                if not buffer:
                    continue
                if len(buffer) >= chunk or reader.batch_done():
                    if not submit(buffer, stop):
                        buffer = []
                        return
                    self._last_token = buffer[-1].checkpoint or self._last_token
                    buffer = []
                    if stop.is_set():
                        return
                    now = time.monotonic()
                    if now >= self._next_tick:
                        self._tick(now)
        finally:
            buffer += self._packed(packer.flush())
            if buffer:  # read before an error: publish, the stream resumes after them
                submit(buffer, stop)

    def _packed(
        self, groups: list[tuple[list[bytes], list[tuple[EncodedChange, Token | None]]]]
    ) -> list[Entry]:
        """Outbox entries for closed batches: a lone change travels as a one-change message."""
        entries = []
        for _bodies, payloads in groups:
            if len(payloads) == 1:
                encoded, checkpoint = payloads[0]
                entries.append(message_entry(encoded, checkpoint))
            else:
                entries.append(batch_entry([p[0] for p in payloads], [p[1] for p in payloads]))
        return entries

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

    def _skip(self, reason: str, what: object, token: Token | None) -> None:
        self.stats.skipped += 1
        metrics.EVENTS_SKIPPED.labels(reason=reason).inc()
        log.warning(
            "event skipped (%s): operationType %r at %s carries no document change",
            reason,
            what,
            token_data(token) if token else "?",
            extra={**_STAGE, "reason": reason},
        )

    def _failed(self, event: Any, error: InvalidEvent, checkpoint: Token | None) -> Entry:
        """The failed-queue entry for an event that cannot be published (counted, logged)."""
        self.stats.failed += 1
        metrics.EVENTS_FAILED.labels(reason=error.reason).inc()
        key = event.get("documentKey") if isinstance(event, dict) else None
        log.warning(
            "event recorded in %s and skipped (%s): %s; documentKey %r, token %s",
            self.settings.failed_queue_name,
            error.reason,
            error,
            key,
            token_data(checkpoint) if checkpoint else "none",
            extra={**_STAGE, "reason": error.reason},
        )
        return failed_entry(
            event, error, failed_queue=self.settings.failed_queue_name, checkpoint=checkpoint
        )

    def _record_failure(self, event: Any, detail: str, *, reason: str) -> None:
        entry = self._failed(event, InvalidEvent(detail, reason=reason), None)
        self.publisher.submit([entry], self.stop)

    def _look_up(self, event: dict[str, Any]) -> None:
        """An update that came without the lookup's result: look the document up here."""
        key = event.get("documentKey")
        if not isinstance(key, dict) or "_id" not in key:
            return
        try:
            event["fullDocument"] = self.collection.find_one({"_id": key["_id"]})
        except (PyMongoError, AttributeError, TypeError) as error:
            log.warning("looking up an updated document failed: %s", error, extra=_STAGE)

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
            packer = self._packer
            for batch in snapshot_batches(self.collection, settings.snapshot_batch):
                entries = []
                for document in batch:
                    try:
                        envelope = snapshot_envelope(document, start_token=start, db=db, coll=coll)
                        encoded = encode_envelope(envelope)
                    except Exception as error:  # whatever breaks on one document: record it
                        key = {"_id": document.get("_id")} if isinstance(document, dict) else None
                        read = {"operationType": "snapshot", "documentKey": key}
                        entries += self._packed(packer.flush())
                        entries.append(self._failed(read, invalid_event(error), None))
                        continue
                    entries += self._packed(packer.add(encoded.body, (encoded, None), 0.0))
                entries += self._packed(packer.flush())
                for chunk in chunks(entries, self._chunk):
                    if not publisher.submit(chunk, stop):
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
        self.stats.messages = self.publisher.messages_confirmed
        self.stats.reconnects = self.publisher.reconnects + self._mongo_reconnects
        log.info(
            "producer stopped: %d published, %d confirmed, %d snapshots, %d token saves",
            self.stats.published,
            self.stats.confirmed,
            self.stats.snapshots,
            self.stats.token_saves,
            extra=_STAGE,
        )
