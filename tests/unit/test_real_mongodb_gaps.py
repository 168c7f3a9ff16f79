"""Issue 12, the gaps an audit of main found after the first fix (each failed on 7ac9ca3).

Kept apart from tests/unit/test_real_mongodb.py (whose fakes and helpers it reuses)
so each gap's proof is in one place.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bson
import orjson
import pytest
from bson import Decimal128, ObjectId
from bson.codec_options import CodecOptions
from bson.datetime_ms import DatetimeMS

from cdcflow import metrics
from cdcflow.config import Settings
from cdcflow.consumer import batches
from cdcflow.consumer.batches import process_batch
from cdcflow.docids import MAPPING, doc_id
from cdcflow.events import Operation, decode_envelope, encode_change
from cdcflow.health import Health
from cdcflow.mongo import client_options
from cdcflow.producer.main import Producer
from cdcflow.rules import MESSAGE_REASONS, PRODUCER_REASONS
from cdcflow.versions import event_version, first_event_version
from tests.unit.test_changestream import (
    FakeClient,
    FakeCollection,
    FakePublisher,
    FakeStream,
    StoppingOffsets,
)
from tests.unit.test_real_mongodb import (
    COLL,
    HWM,
    V1_FIRST,
    V1_SECOND,
    VIEW,
    envelope_of,
    failed_records,
    good_insert,
    nx_insert,
    producer_run,
    run,
)

HUGE = Decimal128("1E+6000")  # a valid _id whose integer text is over Python's 4300 digits
YEAR_10000_MS = 253_402_300_800_000  # 10000-01-01T00:00:00Z: past Python's datetime


def failed(reason: str) -> float:
    labels = {"reason": reason}
    return metrics.REGISTRY.get_sample_value("cdcflow_events_failed_total", labels) or 0.0


# --- 1. events the producer cannot decode or encode -----------------------------------


def test_a_date_past_9999_is_decoded_not_raised_and_travels_as_epoch_millis():
    """main: no datetime_conversion, so pymongo raised InvalidBSON inside try_next()."""
    options = client_options(Settings())
    codec: CodecOptions[dict[str, Any]] = CodecOptions(
        tz_aware=options["tz_aware"], datetime_conversion=options["datetime_conversion"]
    )
    raw = bson.encode({"started_at": DatetimeMS(YEAR_10000_MS), "at": dt.datetime(2026, 1, 1)})
    with pytest.raises(bson.errors.InvalidBSON):
        bson.decode(raw)  # pymongo's default: what crashed the producer
    document = bson.decode(raw, codec)
    assert document["started_at"] == DatetimeMS(YEAR_10000_MS)
    assert isinstance(document["at"], dt.datetime)  # dates in range stay datetimes

    event = {
        **good_insert(1),
        "ns": {"db": "media", "coll": COLL},
        "fullDocument": {**good_insert(1)["fullDocument"], **document},
    }
    envelope = decode_envelope(encode_change(event).body)
    assert envelope.doc is not None
    assert envelope.doc["started_at"] == {"$date": {"$numberLong": str(YEAR_10000_MS)}}
    # The consumer's date rule NULLs it with its reason; the row loads.
    batch = run(encode_change(event).body)
    assert batch.rows.column("started_at")[0].as_py() is None
    assert batch.fixes == {"timestamp_out_of_range": 1} and not batch.rejections


@pytest.mark.parametrize(
    "poison",
    [
        {**good_insert(2), "documentKey": {"_id": HUGE}, "fullDocument": {"_id": HUGE, **VIEW}},
        {**good_insert(2), "operationType": "delete", "documentKey": {"_id": HUGE},
         "fullDocument": None},
    ],
    ids=["insert", "delete"],
)  # fmt: skip
def test_any_exception_encoding_one_event_is_a_failed_record(poison):
    """main: the ValueError from the _id's text escaped the producer, on every restart."""
    collection = FakeCollection()
    stream = [good_insert(1), poison, good_insert(3)]
    collection.on_watch = lambda options: FakeStream(
        stream,
        options["resume_after"],
        stop=collection.stop,  # type: ignore[attr-defined]
    )
    before = failed("invalid_event")
    producer, publisher, offsets = producer_run(collection, saved=good_insert(0)["_id"])
    assert publisher.ops() == ["insert", "insert"]
    (record,) = failed_records(publisher)
    assert record["reason"] == "invalid_event" and "ValueError" in record["detail"]
    assert record["token"] == poison["_id"]
    assert record["document_key"] == {"_id": {"$numberDecimal": "1E+6000"}}
    assert record["doc_id"] is None  # the record itself survives the id
    assert failed("invalid_event") == before + 1 and producer.stats.failed == 1
    assert offsets.offsets["media.views"]["token"] == good_insert(3)["_id"]


def test_a_snapshot_document_that_cannot_be_encoded_is_a_failed_record():
    """main: snapshot_envelope's ValueError stopped the snapshot, and every retry of it."""
    documents = [{"_id": "a", **VIEW}, {"_id": HUGE, **VIEW}, {"_id": "b", **VIEW}]
    collection = FakeCollection(documents)
    streams: deque[Callable[[dict[str, Any]], FakeStream]] = deque(
        [lambda o: FakeStream([], {"_data": "nx:7"}, stop=collection.stop)]  # type: ignore[attr-defined]
    )
    collection.on_watch = lambda options: streams.popleft()(options)
    before = failed("invalid_event")
    _, publisher, _ = producer_run(collection)
    assert publisher.ops() == ["snapshot", "snapshot", "snapshot_end"]
    (record,) = failed_records(publisher)
    assert record["reason"] == "invalid_event"
    assert record["document_key"] == {"_id": {"$numberDecimal": "1E+6000"}}
    assert failed("invalid_event") == before + 1


def test_the_fast_document_path_encodes_an_out_of_range_date_too():
    """Flat documents go through orjson with a default hook: it must know DatetimeMS."""
    oid = ObjectId(f"{5:024x}")
    event = {
        **good_insert(5),
        "fullDocument": {"_id": oid, "started_at": DatetimeMS(-YEAR_10000_MS)},
    }
    doc = decode_envelope(encode_change(event).body).doc
    assert doc is not None and doc["_id"] == {"$oid": str(oid)}
    assert doc["started_at"] == {"$date": {"$numberLong": str(-YEAR_10000_MS)}}


# --- 2. the alert on skipped or failed events fires on the first one -------------------


def test_every_skip_and_failure_reason_is_exported_at_zero_from_the_start():
    """main: only some labelled series existed before their first event, and increase()
    of a series born at 1 is nothing, so CdcflowEventsSkippedOrFailed missed the first."""
    metrics.EVENTS_FAILED.clear()
    metrics.EVENTS_SKIPPED.clear()
    collection = FakeCollection()
    collection.on_watch = lambda options: FakeStream(
        [],
        options["resume_after"],
        stop=collection.stop,  # type: ignore[attr-defined]
    )
    producer_run(collection, saved=good_insert(0)["_id"])
    for reason, _meaning in PRODUCER_REASONS:
        labels = {"reason": reason}
        assert metrics.REGISTRY.get_sample_value("cdcflow_events_failed_total", labels) == 0
    labels = {"reason": "unsupported_operation"}
    assert metrics.REGISTRY.get_sample_value("cdcflow_events_skipped_total", labels) == 0


def test_every_failure_reason_the_producer_can_give_is_a_documented_one():
    """A reason raised in the code but missing from PRODUCER_REASONS would be neither
    pre-created (so not alerted on at once) nor explained in docs/cleaning.md."""
    root = Path(__file__).parents[2] / "workers" / "cdcflow"
    sources = [root / "events.py", root / "versions.py", *sorted((root / "producer").glob("*.py"))]
    given = set()
    for source in sources:
        text = source.read_text()
        given |= set(re.findall(r'reason="([a-z_]+)"', text))
        given |= set(re.findall(r'^    reason = "([a-z_]+)"', text, re.MULTILINE))
    given -= {"poison_event", "history_lost", "initial"}  # snapshot reasons, not failures
    assert given and given <= {reason for reason, _ in PRODUCER_REASONS}


# --- 3. one bad change no longer sinks a consumer batch --------------------------------


def nx_delete(n: int, doc: str, **changes: Any) -> bytes:
    raw = {
        "_id": {"_data": f"nx:{n}"},
        "operationType": "delete",
        "ns": {"db": "media", "coll": COLL},
        "documentKey": {"_id": doc},
        "fullDocument": {"_id": doc, **VIEW},  # nx-27017's pre-image
    }
    return envelope_of(encode_change(raw).body, **changes)


def test_a_version_above_what_the_row_column_holds_is_rejected_at_parse():
    """main: a delete at version 10^38 passed the 2^128 bound, then raised ArrowInvalid
    building the tombstone rows outside the per-document fallback: the batch failed."""
    top = 10**38 - 1
    batch = run(
        nx_insert(1, "a"),
        nx_delete(2, "big", version=str(10**38)),
        nx_insert(3, "b"),
        nx_delete(4, "top", version=str(top)),
        envelope_of(nx_insert(5, "i"), version=str((1 << 128) - 1)),
    )
    assert [(r.index, r.reason, r.stage) for r in batch.rejections] == [
        (1, "invalid_envelope", "parse"),
        (4, "invalid_envelope", "parse"),
    ]
    assert "version" in batch.rejections[0].detail
    assert batch.rows.column("doc_id").to_pylist() == ["a", "b", "top"]
    assert batch.rows.column("version").to_pylist()[-1] == top
    assert batch.accounted == batch.messages == 5


def test_a_version_of_thousands_of_digits_is_this_message_s_rejection():
    """main: int() of a >4300-digit version raised in the fast parse, outside any try."""
    huge = "9" * 5000
    bodies = [nx_insert(1, "a"), envelope_of(nx_insert(2, "x"), version=huge), nx_insert(3, "b")]
    batch = run(*bodies)
    assert [(r.index, r.reason) for r in batch.rejections] == [(1, "invalid_envelope")]
    assert batch.rows.column("doc_id").to_pylist() == ["a", "b"]


def test_any_exception_while_parsing_one_message_is_contained_to_it(monkeypatch):
    real = batches.parse_message

    def explode_on_marker(body: bytes, *args: Any) -> Any:
        if b'"boom"' in body:
            raise RecursionError("a parser bug nobody foresaw")
        return real(body, *args)

    monkeypatch.setattr(batches, "parse_message", explode_on_marker)
    batch = run(nx_insert(1, "a"), nx_insert(2, "boom"), nx_insert(3, "b"))
    (rejection,) = batch.rejections
    assert (rejection.index, rejection.reason, rejection.stage) == (1, "invalid_envelope", "parse")
    assert "RecursionError" in rejection.detail
    assert batch.rows.column("doc_id").to_pylist() == ["a", "b"]


def test_a_delete_whose_row_cannot_be_built_is_rejected_alone(monkeypatch):
    """Deletes now go through the same per-change containment as documents."""
    real = batches._versions
    poison = orjson.loads(nx_delete(4, "poison"))["version"]

    def explode_on_poison(values: Any) -> Any:
        if any(str(value) == poison for value in values):
            raise ValueError("a version the column cannot hold")
        return real(values)

    monkeypatch.setattr(batches, "_versions", explode_on_poison)
    batch = run(nx_insert(1, "a"), nx_delete(2, "d1"), nx_delete(4, "poison"), nx_delete(5, "d2"))
    (rejection,) = batch.rejections
    assert (rejection.index, rejection.reason, rejection.stage) == (
        2,
        "transform_error",
        "transform",
    )
    assert rejection.doc_id == "poison" and "ValueError" in rejection.detail
    rows = batch.rows.to_pylist()
    assert [(row["doc_id"], row["is_deleted"]) for row in rows] == [("a", 0), ("d1", 1), ("d2", 1)]
    assert batch.accounted == batch.messages == 4


# --- 4. a drop mirrored as deletes, through the producer -------------------------------


class Database(dict[str, FakeCollection]):
    """A database whose collection list the test scripts (the presence check reads it)."""

    def __init__(self, collections: dict[str, FakeCollection], answers: list[bool]) -> None:
        super().__init__(collections)
        self.answers = deque(answers)

    def list_collection_names(self, **options: Any) -> list[str]:
        present = self.answers.popleft() if len(self.answers) > 1 else self.answers[0]
        return [options["filter"]["name"]] if present else []


class DroppingClient(FakeClient):
    def __init__(self, source: FakeCollection, offsets: FakeCollection, answers: list[bool]):
        super().__init__(source, offsets)
        self.database = Database(self._collections, answers)

    def __getitem__(self, db: str) -> Any:
        return self.database


def nx_event(n: int, op: str, doc: str) -> dict[str, Any]:
    return {
        "_id": {"_data": f"nx:{n}"},
        "operationType": op,
        "ns": {"db": "media", "coll": "views"},
        "documentKey": {"_id": doc},
        "fullDocument": {"_id": doc, **VIEW},
    }


def mirror_run(
    events: list[dict[str, Any]], start: dict[str, Any], answers: list[bool]
) -> tuple[Producer, FakePublisher, StoppingOffsets]:
    settings = Settings(
        mongo_collection="views", mongo_db="media", metrics_port=0, mirror_drop_as_deletes=True
    )
    collection = FakeCollection()
    collection.on_watch = lambda options: FakeStream(events, options["resume_after"] or start)
    offsets = StoppingOffsets()
    offsets.offsets["media.views"] = {"_id": "media.views", "token": start}
    publisher, stop = FakePublisher(), threading.Event()
    offsets.stop = stop  # type: ignore[attr-defined]
    producer = Producer(
        settings,
        DroppingClient(collection, offsets, answers),  # type: ignore[arg-type]
        publisher,  # type: ignore[arg-type]
        Health("producer"),
        stop,
    )
    producer.run()
    producer.close()
    return producer, publisher, offsets


def warehouse_after(publisher: FakePublisher) -> tuple[list[dict[str, Any]], list[int]]:
    """Rows and sweeps as the consumer makes them from what the producer published."""
    bodies = publisher.bodies()
    batch = process_batch(bodies, [None] * len(bodies), collection="views")
    assert not batch.rejections
    return batch.rows.to_pylist(), batch.sweeps


def test_a_drop_event_mirrored_through_the_producer_deletes_every_row():
    events = [nx_event(11, "insert", "a"), nx_event(12, "update", "a"), nx_event(13, "insert", "b")]
    events.append({"_id": {"_data": "nx:14"}, "operationType": "drop"})
    producer, publisher, offsets = mirror_run(events, {"_data": "nx:10"}, [True])
    assert publisher.ops() == ["insert", "update", "insert", "drop"]
    rows, sweeps = warehouse_after(publisher)
    (sweep,) = sweeps
    assert all(row["version"] < sweep for row in rows)  # sweep.sql: version < sweep
    assert offsets.offsets["media.views"]["stopped"]["reason"] == "drop"
    assert offsets.offsets["media.views"]["token"] == {"_data": "nx:14"}
    assert producer.stats.stopped == "drop"


def test_an_inferred_drop_on_nx_deletes_the_last_changed_document_too(monkeypatch):
    """main: the inferred drop took the last event's own version, and the sweep (strictly
    older rows) kept that event's document alive in the warehouse."""
    monkeypatch.setattr("cdcflow.producer.main.PRESENCE_CHECK_S", 0.0)
    events = [nx_event(11, "insert", "a"), nx_event(12, "insert", "b")]
    _, publisher, offsets = mirror_run(events, {"_data": "nx:10"}, [True, False])
    assert publisher.ops() == ["insert", "insert", "drop"]
    rows, (sweep,) = warehouse_after(publisher)
    assert {row["doc_id"] for row in rows if row["version"] < sweep} == {"a", "b"}
    assert offsets.offsets["media.views"]["stopped"]["reason"] == "drop"


def test_an_inferred_drop_at_a_high_water_mark_is_mirrored_not_a_crash(monkeypatch):
    """main: event_version refused the high-water mark and the producer crashed."""
    monkeypatch.setattr("cdcflow.producer.main.PRESENCE_CHECK_S", 0.0)
    before = [event_version(V1_FIRST["_id"]), event_version(V1_SECOND["_id"])]
    _, publisher, offsets = mirror_run([], HWM, [True, False])
    assert publisher.ops() == ["drop"]
    (drop,) = [decode_envelope(body) for body in publisher.bodies()]
    assert drop.version == first_event_version(HWM) > max(before)
    assert offsets.offsets["media.views"]["stopped"]["token"] == HWM


# --- 5. BSON undefined as _id: what pymongo hands over, told truthfully -----------------


def test_bson_undefined_reads_as_null_and_the_docs_say_so():
    """The docs claimed undefined was rejected; a test passed () (an array) for it.
    pymongo decodes BSON undefined (type 0x06) as None: no code can tell it from null."""
    raw = b"\x0a\x00\x00\x00\x06_id\x00\x00"  # {_id: undefined}
    assert bson.decode(raw) == {"_id": None}
    assert doc_id(bson.decode(raw)["_id"]) == "~null"
    (row,) = [row for row in MAPPING if row[0].startswith("undefined")]
    assert "MongoDB refuses" in row[0] and "~null" in row[2]
    assert all("undefined" not in row[0] for row in MAPPING if row[2].startswith("rejected"))


# --- 7. the documented meaning of unknown_operation lists every operation -------------


def test_unknown_operation_names_every_operation_the_envelope_has():
    """main's meaning omitted drop, which the consumer reads (a mirrored drop)."""
    (meaning,) = [text for code, text in MESSAGE_REASONS if code == "unknown_operation"]
    named = set(re.findall(r"[a-z_]+", meaning.split("op is not", 1)[1])) - {"or"}
    assert named == {operation.value for operation in Operation}


def test_ids_that_differ_past_28_digits_keep_their_own_doc_id() -> None:
    """MongoDB keeps 34-digit Decimal128s and neighbouring doubles apart; so must doc_id
    (a default-precision normalize() rounded both to 28 digits)."""
    low = Decimal128("0.1234567890123456789012345678901234")
    high = Decimal128("0.1234567890123456789012345678901235")
    assert doc_id(low) != doc_id(high)
    assert doc_id(0.1) != doc_id(math.nextafter(0.1, 1.0))
    # Equal values still meet, whatever their type.
    assert doc_id(0.5) == doc_id(Decimal128("0.50")) == doc_id(Decimal128("5E-1"))
    assert doc_id(2.0) == doc_id(2) == doc_id(Decimal128("2.000"))
