"""The consumer against the real RabbitMQ and chdb: loads, rejects, survives kills."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pika
import pytest

from cdcflow import broker
from cdcflow.config import Settings
from cdcflow.consumer import deadletter
from cdcflow.consumer.pipeline import run_consumer
from cdcflow.events import EncodedChange
from cdcflow.packing import BATCH_CONTENT_TYPE, H_CHANGES, pack
from cdcflow.warehouse.client import Warehouse
from tests.conftest import BrokerNames
from tests.support import cdcflow_process, depths, nx_change, publish


@pytest.fixture
def settings(tmp_path: Path, broker_names: BrokerNames) -> Settings:
    return Settings(
        mongo_collection=broker_names.collection,
        exchange=broker_names.exchange,
        clickhouse_url=f"chdb://{tmp_path / 'warehouse'}",
        metrics_port=0,
        idle_exit_s=1.5,
        batch_max_messages=200,
    )


def current(settings: Settings) -> dict[str, dict[str, Any]]:
    with Warehouse(settings) as warehouse:
        table = warehouse.arrow(
            f"SELECT doc_id, watched_time, op, toString(version) AS version "
            f"FROM {warehouse.qualified}_current"
        )
    return {row["doc_id"]: row for row in table.to_pylist()}


def test_good_messages_load_and_poison_goes_to_the_failed_queue_with_a_reason(
    settings: Settings,
) -> None:
    collection = settings.mongo_collection
    good = [nx_change(n, collection, f"doc-{n}", "insert", watched_time=n) for n in range(1, 301)]
    poison: list[EncodedChange | bytes] = [
        b"{broken json",
        orjson.dumps({"v": 1, "op": "explode"}),
        nx_change(400, collection, "bad-1", "insert", total_video_time=0),
        nx_change(401, collection, "bad-2", "insert", watched_time="a while"),
    ]
    publish(settings, good[:150])
    publish(settings, poison)
    publish(settings, good[150:])
    result = run_consumer(settings)
    assert not result.abandoned
    rows = current(settings)
    assert set(rows) == {f"doc-{n}" for n in range(1, 301)}
    assert depths(settings) == (0, 4)
    inspection = deadletter.inspect(settings)
    assert inspection.total == 4
    assert inspection.reasons == {
        "malformed_json": 1,
        "unknown_operation": 1,
        "total_video_time_not_positive": 1,
        "number_not_numeric": 1,
    }
    sample = inspection.samples["total_video_time_not_positive"][0]
    assert sample["stage"] == "clean" and sample["attempts"] == 1
    assert sample["message_id"] == "nx:400"
    assert depths(settings) == (0, 4), "inspect must not consume the failed queue"


def test_the_same_event_twice_and_an_old_replay_leave_one_row_at_the_newest_version(
    settings: Settings,
) -> None:
    collection = settings.mongo_collection
    first = nx_change(1, collection, "a", "insert", watched_time=10)
    newest = nx_change(5, collection, "a", "update", watched_time=50)
    publish(settings, [first, newest, newest, first])
    run_consumer(settings)
    publish(settings, [newest, first])  # a replay in a later batch too
    run_consumer(settings)
    rows = current(settings)
    assert list(rows) == ["a"]
    assert rows["a"]["watched_time"] == 50.0
    assert int(rows["a"]["version"]) == 5 << 32 | 1


def test_replay_from_the_failed_queue_round_trips(settings: Settings) -> None:
    collection = settings.mongo_collection
    publish(settings, [nx_change(1, collection, "x", "insert", watched_time="soon")])
    run_consumer(settings)
    assert depths(settings) == (0, 1)
    preview = deadletter.replay(settings, reasons=["number_not_numeric"], dry_run=True)
    assert preview.replayed == 1 and depths(settings) == (0, 1)
    assert deadletter.replay(settings, reasons=["other_reason"]).replayed == 0
    result = deadletter.replay(settings)
    assert result.replayed == 1 and depths(settings) == (1, 0)
    run_consumer(settings)  # fails again: back in the failed queue, attempts counted
    inspection = deadletter.inspect(settings)
    assert inspection.samples["number_not_numeric"][0]["attempts"] == 2
    assert deadletter.purge(settings) == 1
    assert depths(settings) == (0, 0)


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_consumer_killed_mid_batch_loses_nothing(settings: Settings, tmp_path: Path) -> None:
    collection = settings.mongo_collection
    total = 6000
    changes = [
        nx_change(n, collection, f"doc-{n % 1500}", "update", watched_time=n % 290)
        for n in range(1, total + 1)
    ]
    publish(settings, changes)
    log = tmp_path / "consumer.log"
    consumer = cdcflow_process(["consume"], settings, log, batch_max_messages=500)
    _wait_for(lambda: depths(settings)[0] < total - 1000, 120, "the consumer to take messages")
    consumer.send_signal(signal.SIGKILL)
    consumer.wait(10)
    assert depths(settings)[0] > 0, "killed too late to prove anything"
    restarted = cdcflow_process(["consume"], settings, log, idle_exit_s=2)
    assert restarted.wait(180) == 0, log.read_text()[-2000:]
    rows = current(settings)
    latest: dict[str, int] = {}
    for n in range(1, total + 1):
        latest[f"doc-{n % 1500}"] = n
    assert len(rows) == 1500
    for doc_id, n in latest.items():
        assert int(rows[doc_id]["version"]) == n << 32 | 1, doc_id
        assert rows[doc_id]["watched_time"] == float(n % 290)
    assert depths(settings) == (0, 0)


def test_sigterm_stops_within_ten_seconds_and_loses_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    collection = settings.mongo_collection
    total = 5000
    publish(settings, [nx_change(n, collection, f"doc-{n}", "insert") for n in range(1, total + 1)])
    log = tmp_path / "consumer.log"
    consumer = cdcflow_process(["consume"], settings, log, batch_max_messages=250)
    _wait_for(lambda: depths(settings)[0] < total, 120, "the consumer to start")
    consumer.send_signal(signal.SIGTERM)
    started = time.monotonic()
    try:
        code = consumer.wait(10)
    except subprocess.TimeoutExpired:
        consumer.kill()
        pytest.fail("consumer did not stop within 10 s of SIGTERM")
    assert code == 0, log.read_text()[-2000:]
    assert time.monotonic() - started < 10
    loaded = current(settings)
    remaining, failed = depths(settings)
    # Everything acked is in the warehouse; everything else is still queued.
    assert failed == 0
    assert len(loaded) + remaining >= total
    run_consumer(settings)
    assert len(current(settings)) == total


def test_a_message_that_keeps_failing_is_dead_lettered_by_the_broker(settings: Settings) -> None:
    """A message that crashes every consumer (requeued each time) must not block the queue
    forever: after x-delivery-limit deliveries the broker moves it to the failed queue."""
    limited = settings.with_overrides(delivery_limit=2)
    publish(limited, [nx_change(1, limited.mongo_collection, "crashy", "insert")])
    with broker.channel(limited) as ch:
        for _ in range(3):
            method, _properties, _body = ch.basic_get(limited.queue_name)
            if method is None:
                break
            ch.basic_nack(method.delivery_tag, requeue=True)  # what a crash amounts to
        assert ch.basic_get(limited.queue_name)[0] is None
    _wait_for(lambda: depths(limited) == (0, 1), 10, "the broker to dead-letter it")
    inspection = deadletter.inspect(limited)
    assert inspection.reasons == {deadletter.DELIVERY_LIMIT_REASON: 1}


def _publish_batch(
    settings: Settings, bodies: list[bytes], *, queue: str | None = None, headers=None
) -> None:
    """One batch message (as the producer packs it), to the pipeline or straight to a queue."""
    with broker.channel(settings) as ch:
        broker.declare_topology(ch, settings)
        ch.confirm_delivery()
        ch.basic_publish(
            "" if queue else settings.exchange,
            queue or settings.routing_key,
            pack(bodies),
            pika.BasicProperties(
                content_type=BATCH_CONTENT_TYPE,
                delivery_mode=2,
                message_id="changes:test",
                headers={H_CHANGES: str(len(bodies)), **(headers or {})},
            ),
        )


def test_a_batch_message_dead_letters_its_bad_changes_alone_and_they_replay_alone(
    settings: Settings,
) -> None:
    collection = settings.mongo_collection
    bodies = [
        nx_change(1, collection, "a", "insert").body,
        nx_change(2, collection, "b", "insert", watched_time="soon").body,
        nx_change(3, collection, "c", "insert").body,
        b'{"v":2,"op":"insert"',  # not even JSON
        nx_change(5, collection, "e", "insert").body,
    ]
    _publish_batch(settings, bodies)
    run_consumer(settings)
    assert set(current(settings)) == {"a", "c", "e"}
    assert depths(settings) == (0, 2)  # one failed-queue record per bad change
    inspection = deadletter.inspect(settings)
    assert inspection.reasons == {"number_not_numeric": 1, "malformed_json": 1}
    assert inspection.total == inspection.changes == 2
    sample = inspection.samples["number_not_numeric"][0]
    assert sample["message_id"] == "nx:2" and sample["changes"] == 1
    assert sample["batch_message_id"] == "changes:test" and sample["batch_position"] == 1
    assert sample["body"].startswith(bodies[1][:190].decode())  # its own envelope
    # Replayed, each is a one-change message of its own, and fails again on its own.
    assert deadletter.replay(settings).replayed == 2
    run_consumer(settings)
    assert depths(settings) == (0, 2) and set(current(settings)) == {"a", "c", "e"}
    assert deadletter.inspect(settings).samples["number_not_numeric"][0]["attempts"] == 2


def test_a_whole_batch_message_in_the_failed_queue_is_counted_and_replayed_whole(
    settings: Settings,
) -> None:
    """What the broker does with a batch message that crashed consumers x-delivery-limit
    times: it moves the message as it is."""
    collection = settings.mongo_collection
    bodies = [nx_change(n, collection, f"d{n}", "insert").body for n in range(1, 8)]
    _publish_batch(
        settings,
        bodies,
        queue=settings.failed_queue_name,
        headers={"x-first-death-reason": "delivery_limit"},
    )
    inspection = deadletter.inspect(settings)
    assert inspection.total == 1 and inspection.changes == 7
    assert inspection.reasons == {deadletter.DELIVERY_LIMIT_REASON: 1}
    result = deadletter.replay(settings)
    assert result.replayed == 1 and result.changes == 7
    run_consumer(settings)
    assert set(current(settings)) == {f"d{n}" for n in range(1, 8)}
    assert depths(settings) == (0, 0)
