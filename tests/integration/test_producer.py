"""The producer against real services: nx-27017 (own server per test) and the local RabbitMQ.

Each test reads back what reached the queue and checks outcomes, never timings:
snapshot then stream, resume after a clean stop, SIGKILL and restart, a broker
connection closed under load, and history really lost on nx-27017 (pruned by
another stream while the producer was down) answered by a re-snapshot.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymongo
import pytest
from bson import ObjectId
from pymongo import DeleteOne, InsertOne, UpdateOne

from cdcflow import broker, metrics
from cdcflow.config import Settings
from cdcflow.errors import ServiceUnavailable
from cdcflow.events import ChangeEnvelope, canonical_id, decode_envelope, to_json_safe
from cdcflow.localbroker import RabbitNode
from cdcflow.localstack import free_port, start_worker
from cdcflow.mongo import open_mongo_client
from cdcflow.packing import BATCH_CONTENT_TYPE, H_CHANGES, is_batch, unpack
from cdcflow.producer.main import ProducerStats, run_producer
from cdcflow.producer.offsets import OffsetStore
from cdcflow.versions import nx_sequence

WAIT_S = 90.0  # an upper bound for the services to catch up, not a performance claim


# --- helpers --------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def queue_depth(settings: Settings) -> int:
    """Ready messages in the test's queue (0 until the producer has declared it)."""
    connection = broker.connect(settings)
    try:
        depth = broker.queue_depth(connection.channel(), settings.queue_name)
    finally:
        connection.close()
    return depth.messages or 0


@dataclass
class Received:
    properties: Any  # of the AMQP message that carried the change (maybe a batch)
    envelope: ChangeEnvelope
    batch_size: int = 1  # changes in that message


def consume_all(settings: Settings) -> list[Received]:
    """Every message in the test's queue, in queue order (acked: the queue ends empty)."""
    queue = settings.queue_name
    connection = broker.connect(settings)
    received = []
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=1000)
        for method, properties, body in channel.consume(queue, inactivity_timeout=2.0):
            if method is None:
                break
            if is_batch(properties.content_type):
                changes = unpack(body, (properties.headers or {}).get(H_CHANGES)).changes
                assert changes, f"an unreadable batch message: {body[:200]!r}"
                for part in changes:
                    received.append(Received(properties, decode_envelope(part), len(changes)))
            else:
                received.append(Received(properties, decode_envelope(body)))
            channel.basic_ack(method.delivery_tag)
        channel.cancel()
    finally:
        connection.close()
    return received


def latest_by_id(received: list[Received]) -> dict[str, ChangeEnvelope]:
    """Per document, the envelope with the highest version (what the warehouse keeps)."""
    latest: dict[str, ChangeEnvelope] = {}
    for item in received:
        envelope = item.envelope
        if envelope.id is not None and (
            envelope.id not in latest or envelope.version > latest[envelope.id].version
        ):
            latest[envelope.id] = envelope
    return latest


def assert_latest_states_arrived(
    collection: pymongo.collection.Collection[dict[str, Any]],
    received: list[Received],
    deleted: set[str],
) -> None:
    latest = latest_by_id(received)
    documents = {canonical_id(doc["_id"]): doc for doc in collection.find()}
    missing = [i for i in documents if i not in latest]
    assert not missing, f"{len(missing)} documents never arrived, e.g. {missing[:5]}"
    stale = [i for i, doc in documents.items() if latest[i].doc != to_json_safe(doc)]
    assert not stale, f"{len(stale)} documents arrived without their latest state: {stale[:5]}"
    undeleted = [i for i in deleted if i in latest and latest[i].op.value != "delete"]
    assert not undeleted, f"deletes lost: {undeleted[:5]}"


class ProducerThread:
    """run_producer in a thread, stopped the way the CLI's SIGTERM handler stops it."""

    def __init__(self, settings: Settings) -> None:
        self.stop_event = threading.Event()
        self.stats: ProducerStats | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(settings,), daemon=True)
        self._thread.start()

    def _run(self, settings: Settings) -> None:
        try:
            self.stats = run_producer(settings, stop=self.stop_event)
        except BaseException as error:  # surfaced by stop()
            self.error = error

    def stop(self) -> ProducerStats:
        self.stop_event.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "the producer did not stop"
        if self.error is not None:
            raise self.error
        assert self.stats is not None
        return self.stats


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """One change per message: these tests wait on the queue's depth, which then counts
    changes (batching on is covered by the batched variant below, the end-to-end and the
    chaos suites)."""
    return make_settings(
        offset_flush_s=0.2, snapshot_batch=100, stream_batch=500, pack_max_changes=1
    )


def published_changes() -> float:
    """Changes this process's producers had confirmed (a producer thread's counter)."""
    return metrics.REGISTRY.get_sample_value(metrics.sample_name(metrics.EVENTS_PUBLISHED)) or 0.0


@pytest.fixture
def source(
    settings: Settings,
) -> Iterator[pymongo.collection.Collection[dict[str, Any]]]:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(settings.mongo_uri.reveal())
    yield client[settings.mongo_db][settings.mongo_collection]
    client.close()


def saved_token(settings: Settings) -> dict[str, Any] | None:
    client = open_mongo_client(settings)
    try:
        return OffsetStore(client, settings).load()
    finally:
        client.close()


def mixed_writes(start: int, count: int) -> list[Any]:
    """Inserts of ``count`` new docs, then updates of half of them and deletes of a tenth."""
    ids = [f"w{n:06d}" for n in range(start, start + count)]
    writes: list[Any] = [InsertOne({"_id": i, "n": 0, "video_id": "v1"}) for i in ids]
    writes += [UpdateOne({"_id": i}, {"$set": {"n": 1}}) for i in ids[::2]]
    writes += [DeleteOne({"_id": i}) for i in ids[::10]]
    return writes


def deleted_ids(start: int, count: int) -> set[str]:
    return {f"w{n:06d}" for n in range(start, start + count)[::10]}


# --- tests ----------------------------------------------------------------------------


def test_offsets_are_read_back_on_nx(settings: Settings):
    """update_one(upsert) keyed by namespace: nx-27017's replace_one(upsert) would not be."""
    client = open_mongo_client(settings)
    try:
        store = OffsetStore(client, settings)
        assert store.load() is None
        store.save({"_data": "nx:9"})
        store.save({"_data": "nx:10"})
        assert store.load() == {"_data": "nx:10"}
        offsets = client[settings.mongo_db][settings.offsets_collection]
        assert offsets.count_documents({}) == 1
        store.clear("history_lost")
        assert store.load() is None
    finally:
        client.close()


@pytest.mark.parametrize("packed", [False, True], ids=["one_change_each", "batch_messages"])
def test_snapshot_then_stream(settings: Settings, source, packed: bool):
    if packed:
        settings = settings.with_overrides(pack_max_changes=50)
    oid = ObjectId()
    source.insert_many([{"_id": f"pre{n:03d}", "n": n} for n in range(250)])
    source.insert_one({"_id": oid, "n": -1})
    source.insert_one({"_id": 7, "n": 7})
    base = published_changes()
    producer = ProducerThread(settings)
    wait_until(lambda: published_changes() - base >= 253, "the snapshot")
    source.bulk_write(mixed_writes(0, 300), ordered=True)
    source.update_one({"_id": "pre001"}, {"$set": {"n": 1001}})
    source.replace_one({"_id": "pre002"}, {"n": 1002})
    source.delete_one({"_id": "pre003"})
    expected = 252 + 1 + 300 + 150 + 30 + 3
    wait_until(lambda: published_changes() - base >= expected, "the stream")
    stats = producer.stop()

    received = consume_all(settings)
    ops = [item.envelope.op.value for item in received]
    assert ops[:252] == ["snapshot"] * 252 and ops[252] == "snapshot_end"
    end = received[252].envelope
    assert end.doc == {"documents": 252}
    assert all(item.envelope.version == end.version + 1 for item in received[:252])
    assert {item.envelope.id for item in received[:252]} == (
        {f"pre{n:03d}" for n in range(250)} | {str(oid), "~n:7"}  # the number 7
    )
    assert ops.count("insert") == 300 and ops.count("delete") == 31
    assert ops.count("update") == 152  # replace_one arrives as update on nx-27017
    for item in received:  # AMQP properties as the consumer expects them
        assert item.properties.delivery_mode == 2
        if item.batch_size > 1:
            assert item.properties.content_type == BATCH_CONTENT_TYPE
            assert item.properties.headers[H_CHANGES] == str(item.batch_size)
            assert item.properties.message_id.startswith("changes:")
            continue
        assert item.properties.message_id == item.envelope.message_id
        assert item.properties.headers["x-cdcflow-op"] == item.envelope.op.value
        assert item.properties.headers["x-cdcflow-version"] == str(item.envelope.version)
    sizes = [item.batch_size for item in received]
    assert max(sizes) == (50 if packed else 1)  # the snapshot fills whole batches
    assert stats.messages < len(received) / 5 if packed else stats.messages == len(received)
    per_doc: dict[str | None, list[int]] = {}
    for item in received:
        per_doc.setdefault(item.envelope.id, []).append(item.envelope.version)
    assert all(v == sorted(v) and len(set(v)) == len(v) for v in per_doc.values())
    assert_latest_states_arrived(source, received, deleted_ids(0, 300) | {"pre003"})

    assert stats.snapshots == 1 and stats.history_lost == 0
    assert stats.captured["snapshot"] == 252 and stats.confirmed == len(received)
    token = saved_token(settings)
    assert token is not None
    assert token == received[-1].envelope.token  # the newest confirmed event


def test_clean_stop_saves_the_token_and_resume_misses_nothing(settings: Settings, source):
    source.insert_many([{"_id": f"pre{n}", "n": n} for n in range(40)])
    first = ProducerThread(settings)
    wait_until(lambda: queue_depth(settings) >= 41, "the snapshot")
    source.bulk_write(mixed_writes(0, 100))
    wait_until(lambda: queue_depth(settings) >= 41 + 160, "the first run")
    assert first.stop().snapshots == 1
    token = saved_token(settings)
    assert token is not None

    source.bulk_write(mixed_writes(100, 100))  # while the producer is down
    second = ProducerThread(settings)
    source.bulk_write(mixed_writes(200, 50))
    wait_until(lambda: queue_depth(settings) >= 41 + 160 * 2 + 80, "the second run")
    stats = second.stop()
    assert (stats.snapshots, stats.history_lost) == (0, 0)

    received = consume_all(settings)
    resumed = received[41 + 160 :]
    assert all(item.envelope.op.value not in ("snapshot", "snapshot_end") for item in resumed)
    assert nx_sequence(resumed[0].envelope.token) == nx_sequence(token) + 1
    assert_latest_states_arrived(source, received, deleted_ids(0, 250))


def test_sigkill_mid_stream_then_restart_loses_nothing(settings: Settings, source, tmp_path):
    def start(log: Path) -> subprocess.Popen[bytes]:
        return start_worker("produce", settings, log).process

    source.insert_many([{"_id": f"pre{n}", "n": n} for n in range(100)])
    producer = start(tmp_path / "first.log")
    try:
        wait_until(lambda: queue_depth(settings) >= 101, "the snapshot")
        for batch in range(8):
            source.bulk_write(mixed_writes(batch * 100, 100))
        wait_until(
            lambda: queue_depth(settings) > 400 and saved_token(settings) is not None,
            "messages and a saved token before the kill",
        )
        producer.send_signal(signal.SIGKILL)
        producer.wait(10)
        for batch in range(8, 12):  # written while no producer runs
            source.bulk_write(mixed_writes(batch * 100, 100))
        producer = start(tmp_path / "second.log")
        for batch in range(12, 16):
            source.bulk_write(mixed_writes(batch * 100, 100))
        wait_until(lambda: queue_depth(settings) >= 101 + 16 * 160, "the restarted producer")
        producer.send_signal(signal.SIGTERM)
        assert producer.wait(30) == 0, (tmp_path / "second.log").read_text()[-2000:]
    finally:
        if producer.poll() is None:
            producer.kill()
    received = consume_all(settings)
    assert_latest_states_arrived(source, received, deleted_ids(0, 1600))
    assert "snapshot" not in [item.envelope.op.value for item in received[101:]]


def _close_producer_connection(node: RabbitNode, settings: Settings) -> bool:
    """Close this test's producer connection only (others share the broker)."""
    name = f"cdcflow-producer {settings.source_namespace}"
    listing = node.ctl("list_connections", "pid", "client_properties", "-q")
    closed = False
    for line in listing.splitlines():
        if f'"{name}"' in line:
            pid = line.split("\t", 1)[0]
            node.ctl("close_connection", pid, "test")
            closed = True
    return closed


def test_broker_closing_the_connection_mid_stream_loses_nothing(
    settings: Settings, source, rabbitmq_node: RabbitNode
):
    reconnects = metrics.REGISTRY.get_sample_value(
        "cdcflow_reconnects_total", {"service": "rabbitmq"}
    )
    producer = ProducerThread(settings)
    wait_until(lambda: queue_depth(settings) >= 1, "the (empty) snapshot")
    stop_writing = threading.Event()
    written = []

    def write() -> None:
        batch = 0
        while not stop_writing.is_set() and batch < 200:
            source.insert_many([{"_id": f"b{batch:03d}-{n:03d}"} for n in range(250)])
            written.append(batch)
            batch += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        wait_until(lambda: queue_depth(settings) >= 2000, "messages under load")
        assert _close_producer_connection(rabbitmq_node, settings)
        wait_until(lambda: len(written) >= 60, "writes after the close")
    finally:
        stop_writing.set()
        writer.join()
    expected = 1 + 250 * len(written)
    wait_until(lambda: queue_depth(settings) >= expected, "every insert")
    stats = producer.stop()
    assert stats.reconnects >= 1
    after = metrics.REGISTRY.get_sample_value("cdcflow_reconnects_total", {"service": "rabbitmq"})
    assert (after or 0) > (reconnects or 0)
    ids = {item.envelope.id for item in consume_all(settings)}
    missing = [
        f"b{b:03d}-{n:03d}" for b in written for n in range(250) if f"b{b:03d}-{n:03d}" not in ids
    ]
    assert not missing, f"{len(missing)} inserts lost, e.g. {missing[:5]}"


def test_deleted_queue_is_declared_again_and_returned_messages_republished(
    settings: Settings, source
):
    """mandatory=True: what the broker cannot route comes back and is sent again."""
    producer = ProducerThread(settings)
    wait_until(lambda: queue_depth(settings) >= 1, "the (empty) snapshot")
    source.insert_many([{"_id": f"a{n}"} for n in range(500)])
    wait_until(lambda: queue_depth(settings) >= 501, "the first inserts")
    connection = broker.connect(settings)
    connection.channel().queue_delete(settings.queue_name)
    connection.close()
    source.insert_many([{"_id": f"b{n}"} for n in range(2000)])
    wait_until(lambda: queue_depth(settings) >= 2000, "the inserts after the delete")
    producer.stop()
    ids = {item.envelope.id for item in consume_all(settings)}
    missing = [f"b{n}" for n in range(2000) if f"b{n}" not in ids]
    assert not missing, f"{len(missing)} messages lost with the queue gone, e.g. {missing[:5]}"


def test_history_lost_on_nx_triggers_a_resnapshot(settings: Settings, source):
    source.insert_many([{"_id": f"pre{n}", "n": n} for n in range(50)])
    first = ProducerThread(settings)
    wait_until(lambda: queue_depth(settings) >= 51, "the snapshot")
    source.bulk_write(mixed_writes(0, 20))
    wait_until(lambda: queue_depth(settings) >= 51 + 32, "the first run")
    first.stop()
    before = saved_token(settings)
    assert before is not None
    lost_before = metrics.REGISTRY.get_sample_value("cdcflow_history_lost_total") or 0.0

    # While the producer is down another stream reads well over 1000 changes, so
    # nx-27017 prunes the changelog behind it: the saved token's history is gone.
    holder = source.watch()
    for batch in range(1, 11):
        source.bulk_write(mixed_writes(batch * 100, 100))
    read = 0
    while holder.try_next() is not None:
        read += 1
    holder.close()
    assert read == 1600

    second = ProducerThread(settings)
    live = source.count_documents({})
    wait_until(
        lambda: metrics.REGISTRY.get_sample_value("cdcflow_history_lost_total") == lost_before + 1,
        "the history loss",
    )
    wait_until(lambda: queue_depth(settings) >= 51 + 32 + live + 1, "the re-snapshot")
    stats = second.stop()
    assert (stats.history_lost, stats.snapshots) == (1, 1)

    received = consume_all(settings)
    again = received[51 + 32 :]
    ops = [item.envelope.op.value for item in again]
    end = ops.index("snapshot_end")
    assert ops[:end] == ["snapshot"] * end and end == live
    assert again[end].envelope.doc == {"documents": live}
    assert_latest_states_arrived(source, received, set())
    token = saved_token(settings)
    assert token is not None and nx_sequence(token) > nx_sequence(before) + 1000


def test_unreachable_services_fail_fast_with_one_line(make_settings: Callable[..., Settings]):
    dead_port = free_port()
    mongo_down = make_settings(
        mongo_uri=f"mongodb://127.0.0.1:{dead_port}/?directConnection=true", server_timeout_s=0.5
    )
    with pytest.raises(ServiceUnavailable) as mongo_error:
        run_producer(mongo_down)
    assert str(mongo_error.value).startswith(f"MongoDB at 127.0.0.1:{dead_port}:")
    assert "\n" not in str(mongo_error.value)

    rabbit_down = make_settings(
        amqp_url=f"amqp://guest:s3cretpw@127.0.0.1:{dead_port}/%2F", server_timeout_s=0.5
    )
    with pytest.raises(ServiceUnavailable) as rabbit_error:
        run_producer(rabbit_down)
    message = str(rabbit_error.value)
    assert message.startswith(f"RabbitMQ at 127.0.0.1:{dead_port}:")
    assert "s3cretpw" not in message and "\n" not in message
