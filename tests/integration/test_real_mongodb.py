"""Issue 12 through the real producer and consumer (nx-27017, RabbitMQ, chdb).

Each of these failed on main dd6cffb. Two cases need events only a real replica set
makes (a high-water mark and an event at the same cluster time; a malformed event):
MongoDB itself cannot run here, so there the change stream alone is scripted with
real-shaped events (:mod:`tests.mongo_shapes`); the snapshot still reads nx-27017,
the producer's real publisher confirms into RabbitMQ, and the real consumer loads chdb.
The poison document and the drop run on nx-27017 end to end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient

from cdcflow import broker, status
from cdcflow.config import Settings
from cdcflow.consumer import deadletter
from cdcflow.consumer.pipeline import run_consumer
from cdcflow.health import Health
from cdcflow.localstack import start_worker
from cdcflow.mongo import open_mongo_client
from cdcflow.producer.changestream import ChangeReader
from cdcflow.producer.main import Producer
from cdcflow.producer.publishing import Publisher
from cdcflow.warehouse.client import Warehouse
from tests.mongo_shapes import change, load
from tests.pipeline_support import Pipeline, wait_for
from tests.support import depths
from tests.unit.test_changestream import FakeStream

BOUNDARY = load("mongodb-start-boundary-and-v1-tokens.jsonl")
HWM = next(e for label, e in BOUNDARY.items() if label.startswith("stream opened"))[
    "postBatchResumeToken"
]
AT_P = next(e for label, e in BOUNDARY.items() if label.startswith("the first write"))
OID_A, OID_B = "6744a1f0c3b2a90f1e2d3c4b", "6744a1f5c3b2a90f1e2d3c4c"
VIEW: dict[str, Any] = {
    "video_id": "vid_42",
    "user_id": "user_7",
    "device": "ios",
    "country": "PT",
    "watched_time": 0,
    "total_video_time": 312,
}


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(offset_flush_s=0.2, idle_exit_s=2.0, batch_max_messages=1000)


class ScriptedSource:
    """The source collection's change stream, scripted with real-MongoDB-shaped events."""

    def __init__(self, events: list[dict[str, Any]], start: dict[str, Any], stop: threading.Event):
        self.events, self.start, self.stop = events, start, stop
        self.watches: list[dict[str, Any]] = []

    def watch(self, **options: Any) -> FakeStream:
        self.watches.append(options)
        remaining = list(self.events)
        resume_after = options.get("resume_after")
        if resume_after is not None:  # resume: what comes after the token
            tokens = [event.get("_id") for event in remaining]
            remaining = remaining[tokens.index(resume_after) + 1 :]
        return FakeStream(remaining, resume_after or self.start, stop=self.stop)


def produce_scripted(
    settings: Settings, events: list[dict[str, Any]], start: dict[str, Any]
) -> Producer:
    """The real producer (nx-27017 snapshot and offsets, RabbitMQ publisher) over a script."""
    client = open_mongo_client(settings)
    broker.ensure_topology(settings)
    publisher = Publisher(settings).start()
    stop = threading.Event()
    producer = Producer(settings, client, publisher, Health("producer"), stop)
    source = ScriptedSource(events, start, stop)
    producer.reader = ChangeReader(source, batch_size=100)  # type: ignore[arg-type]
    try:
        producer.run()
    finally:
        producer.close()
    return producer


def in_collection(event: dict[str, Any], settings: Settings) -> dict[str, Any]:
    return {**event, "ns": {"db": settings.mongo_db, "coll": settings.mongo_collection}}


def current(settings: Settings) -> dict[str, dict[str, Any]]:
    with Warehouse(settings) as warehouse:
        table = warehouse.arrow(
            f"SELECT doc_id, watched_time, started_at FROM {warehouse.qualified}_current"
        )
    return {row["doc_id"]: row for row in table.to_pylist()}


def insert_source(settings: Settings, *documents: dict[str, Any]) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(settings.mongo_uri.reveal())
    try:
        client[settings.mongo_db][settings.mongo_collection].insert_many(list(documents))
    finally:
        client.close()


def test_snapshot_boundary_keeps_changes_at_the_high_water_mark(settings: Settings) -> None:
    """main: the insert at P was swept away, the update at P lost to the stale snapshot."""
    insert_source(settings, {"_id": ObjectId(OID_A), **VIEW})  # the snapshot reads A
    update_a = change(
        "update",
        1732551242,
        1,
        OID_A,
        txn_op_index=1,
        full={"_id": ObjectId(OID_A), **VIEW, "watched_time": 200},
        updateDescription={"updatedFields": {"watched_time": 200}, "removedFields": []},
    )
    events = [in_collection(AT_P, settings), in_collection(update_a, settings)]
    producer = produce_scripted(settings, events, HWM)
    assert producer.stats.snapshots == 1 and producer.stats.confirmed == 4

    result = run_consumer(settings)  # one batch: snapshot A, its end, insert B, update A
    assert not result.abandoned
    rows = current(settings)
    assert set(rows) == {OID_A, OID_B}, "the insert at the high-water mark was swept away"
    assert rows[OID_A]["watched_time"] == 200, "the update at P lost to the snapshot row"
    assert depths(settings) == (0, 0)


def test_a_poison_event_no_longer_halts_capture(settings: Settings) -> None:
    """main: the producer crashed on the event, and again after every restart."""
    good = [
        in_collection(change("insert", 1732551300 + n, 1, f"{n:024x}",
                             full={"_id": ObjectId(f"{n:024x}"), **VIEW}), settings)
        for n in (1, 3)
    ]  # fmt: skip
    poison = {
        **in_collection(change("insert", 1732551302, 1, f"{2:024x}"), settings),
        "fullDocument": "not a document",
    }
    events = [good[0], poison, good[1]]
    producer = produce_scripted(settings, events, HWM)
    assert producer.stats.failed == 1 and producer.stats.confirmed >= 3

    inspection = deadletter.inspect(settings)
    assert inspection.reasons == {"document_not_object": 1}
    (sample,) = inspection.samples["document_not_object"]
    assert (
        sample["stage"] == "producer" and sample["message_id"] == "failed:" + poison["_id"]["_data"]
    )
    assert sample["body"].startswith('{"v":1,"kind":"failed_event","reason":"document_not_object"')

    # A restart resumes after the poison: the saved token is past it.
    again = produce_scripted(settings, events, HWM)
    assert again.stats.failed == 0 and again.stats.snapshots == 0
    result = run_consumer(settings)
    assert not result.abandoned
    assert set(current(settings)) == {f"{1:024x}", f"{3:024x}"}
    assert depths(settings) == (0, 1)  # only the record of the poison event


def test_a_poison_document_no_longer_sinks_its_batch(settings: Settings, tmp_path: Path) -> None:
    """main: the transform raised, the batch was redelivered until the broker dead-lettered
    all of it (good messages included) as delivery_limit_exceeded."""
    with Pipeline(settings, tmp_path / "run") as pipeline:
        pipeline.producer.start()
        insert_source(
            settings,
            *({"_id": f"good-{n}", **VIEW, "watched_time": n} for n in range(20)),
            {"_id": "bad-long", **VIEW, "started_at": {"$date": {"$numberLong": "x"}}},
            {"_id": "bad-range", **VIEW, "started_at": {"$date": 1e17}},
            {"_id": "epoch", **VIEW, "started_at": 1732551150},
        )
        pipeline.wait_producer_caught_up()
        pipeline.producer.terminate()
    result = run_consumer(settings)
    assert not result.abandoned
    rows = current(settings)
    assert set(rows) == {f"good-{n}" for n in range(20)} | {"bad-long", "bad-range", "epoch"}
    assert rows["bad-long"]["started_at"] is None and rows["bad-range"]["started_at"] is None
    assert rows["epoch"]["started_at"].isoformat().startswith("2024-11-25T16:12:30")
    assert depths(settings) == (0, 0)


def test_dropping_the_source_collection_stops_capture_and_keeps_the_warehouse(
    settings: Settings, tmp_path: Path
) -> None:
    """main: nothing noticed (nx-27017) or the emptied collection was re-snapshotted and
    every warehouse row swept (real MongoDB's drop event, see the unit tests)."""
    worker = start_worker("produce", settings, tmp_path / "producer.log")
    try:
        worker.wait_ready(timeout=90)
        insert_source(settings, *({"_id": f"doc-{n}", **VIEW} for n in range(30)))
        pipeline = Pipeline(settings, tmp_path / "run")
        pipeline.wait_producer_caught_up()
        time.sleep(6)  # one presence check sees the collection while it exists
        client: MongoClient[dict[str, Any]] = MongoClient(settings.mongo_uri.reveal())
        try:
            client[settings.mongo_db].drop_collection(settings.mongo_collection)
            offsets = client[settings.mongo_db][settings.offsets_collection]

            def stopped() -> bool:
                scrape = worker.scrape()
                return scrape.ok and scrape.value("cdcflow_capture_stopped", reason="drop") == 1

            wait_for(stopped, 60, "the producer to report capture stopped")
            marker = (offsets.find_one({"_id": settings.source_namespace}) or {})["stopped"]
            assert marker["reason"] == "drop"
            report = status.collect(
                settings.model_copy(
                    update={"producer_metrics_url": worker.metrics_url + "/metrics"}
                ),
                interval=0.2,
                warehouse=False,
            )
            assert report.capture_stopped == "drop"
            assert any("deleteOne" in problem for problem in report.problems)
            assert "capture of" in worker.log_tail(200) and "deleteOne" in worker.log_tail(200)
        finally:
            client.close()
    finally:
        worker.kill()
    result = run_consumer(settings)
    assert not result.abandoned
    assert len(current(settings)) == 30, "the warehouse must keep the dropped collection's rows"


def test_a_mirrored_drop_on_nx_deletes_every_row_the_last_changed_one_too(
    settings: Settings, tmp_path: Path
) -> None:
    """Opt-in mirror_drop_as_deletes on nx-27017, which sends no drop event: the drop is
    inferred from the last event read. main versioned it as that event, and the sweep
    (strictly older rows) kept the last-inserted document alive."""
    mirrored = settings.model_copy(update={"mirror_drop_as_deletes": True})
    worker = start_worker("produce", mirrored, tmp_path / "producer.log")
    try:
        worker.wait_ready(timeout=90)
        insert_source(mirrored, *({"_id": f"doc-{n}", **VIEW} for n in range(10)))
        Pipeline(mirrored, tmp_path / "run").wait_producer_caught_up()
        time.sleep(6)  # one presence check sees the collection while it exists
        client: MongoClient[dict[str, Any]] = MongoClient(mirrored.mongo_uri.reveal())
        try:
            client[mirrored.mongo_db].drop_collection(mirrored.mongo_collection)

            def stopped() -> bool:
                scrape = worker.scrape()
                return scrape.ok and scrape.value("cdcflow_capture_stopped", reason="drop") == 1

            wait_for(stopped, 60, "the producer to report capture stopped")
        finally:
            client.close()
    finally:
        worker.kill()
    result = run_consumer(mirrored)
    assert not result.abandoned
    assert current(mirrored) == {}, "every row, the last-inserted one too, must be deleted"
    assert depths(mirrored) == (0, 0)
