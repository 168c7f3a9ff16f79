"""Issue 12: real-MongoDB correctness on real-shaped events (each case failed on main dd6cffb).

1. snapshot boundary, 2. version-1 tokens, 3. poison events, 4. poison documents,
5. acked without a trace, 6. document identity, 7. envelope integrity, 8. dates,
9. invisible faults, 10. drop (see also tests/unit/test_changestream.py).
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections import deque
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson
import pytest
from bson import Decimal128, Int64, ObjectId, Timestamp
from bson.binary import Binary
from bson.regex import Regex
from pymongo.errors import InvalidOperation, OperationFailure

from cdcflow import metrics
from cdcflow.config import Settings
from cdcflow.consumer import batches
from cdcflow.consumer.batches import process_batch
from cdcflow.docids import MAPPING, doc_id
from cdcflow.events import (
    OVERSIZE_MARK,
    decode_envelope,
    encode_change,
    encode_envelope,
    from_change,
    snapshot_end_envelope,
    snapshot_envelope,
    to_json_safe,
)
from cdcflow.health import Health
from cdcflow.producer.changestream import (
    ONE_EVENT_STRIPPED,
    OVERSIZE_GUARD,
    SPLIT_STAGE,
    ChangeReader,
    measures_sizes,
    supports_split_events,
)
from cdcflow.producer.failures import FAILED_EVENT_CONTENT_TYPE
from cdcflow.producer.main import Producer
from cdcflow.transforms import clean_documents, epoch_seconds
from cdcflow.versions import (
    InvalidEvent,
    decode_mongo_token,
    event_version,
    first_event_version,
    snapshot_version,
    sweep_version,
)
from tests.mongo_shapes import change, load
from tests.unit.test_changestream import FakeClient, FakeCollection, FakePublisher, FakeStream

COLL = "viewing_logs"
BOUNDARY = load("mongodb-start-boundary-and-v1-tokens.jsonl")
EVENTS = load("mongodb-change-events.jsonl")
HWM = BOUNDARY[
    "stream opened on a quiet collection: the token it starts from is a high-water mark at time P"
]["postBatchResumeToken"]
AT_P = next(event for label, event in BOUNDARY.items() if label.startswith("the first write"))
V1_FIRST = BOUNDARY["v1 token (MongoDB 4.2 to 6.0): first of two updates in one transaction"]
V1_SECOND = BOUNDARY["v1 token (MongoDB 4.2 to 6.0): second of two updates in one transaction"]
OID_A = "6744a1f0c3b2a90f1e2d3c4b"
OID_B = "6744a1f5c3b2a90f1e2d3c4c"
VIEW = {
    "video_id": "vid_42",
    "user_id": "user_7",
    "device": "ios",
    "country": "PT",
    "watched_time": 0,
    "total_video_time": 312,
}


def run(*bodies: bytes, headers: list[Any] | None = None) -> batches.ProcessedBatch:
    return process_batch(list(bodies), [None] * len(bodies), collection=COLL, headers=headers)


# --- 1. snapshot boundary -------------------------------------------------------------


def test_an_event_at_the_high_water_mark_outranks_the_snapshot_and_its_sweep():
    """main: snapshot and sweep at P were above the insert at P (swept, or stale wins)."""
    assert decode_mongo_token(HWM).is_high_water_mark
    at_p = event_version(AT_P["_id"])
    assert decode_mongo_token(AT_P["_id"]).position == decode_mongo_token(HWM).position
    assert sweep_version(HWM) < snapshot_version(HWM) < at_p == first_event_version(HWM)
    # ... and above every state before P (the last event before the quiet period).
    before = [event_version(event["_id"]) for event in (V1_FIRST, V1_SECOND)]
    assert max(before) < sweep_version(HWM)


def test_the_boundary_batch_keeps_the_insert_and_the_update_at_p():
    """Snapshot of A, its end, then an insert of B and an update of A at P: one batch."""
    snapshot = snapshot_envelope(
        {"_id": ObjectId(OID_A), **VIEW}, start_token=HWM, db="media", coll=COLL
    )
    end = snapshot_end_envelope(start_token=HWM, db="media", coll=COLL, documents=1)
    update_a = change(
        "update",
        1732551242,
        1,
        OID_A,
        txn_op_index=1,
        full={"_id": ObjectId(OID_A), **VIEW, "watched_time": 200},
        updateDescription={"updatedFields": {"watched_time": 200}, "removedFields": []},
    )
    batch = run(
        encode_envelope(snapshot).body,
        encode_envelope(end).body,
        encode_change(AT_P).body,
        encode_change(update_a).body,
    )
    rows = batch.rows.to_pylist()
    (sweep,) = batch.sweeps
    insert_b = next(row for row in rows if row["doc_id"] == OID_B)
    assert insert_b["version"] > sweep  # the sweep (version < sweep) cannot touch it
    a_rows = sorted((row for row in rows if row["doc_id"] == OID_A), key=lambda r: r["version"])
    assert [row["watched_time"] for row in a_rows] == [0, 200]  # the update at P wins


def test_nx_snapshot_boundary_is_unchanged_in_effect():
    point = {"_data": "nx:5"}
    assert event_version({"_data": "nx:5"}) < sweep_version(point) < snapshot_version(point)
    assert snapshot_version(point) < event_version({"_data": "nx:6"})


# --- 2. version-1 tokens --------------------------------------------------------------


def test_v1_tokens_are_decoded_by_their_own_layout():
    """main read v1's tokenType (128) as the txnOpIndex: both updates got one version."""
    first, second = decode_mongo_token(V1_FIRST["_id"]), decode_mongo_token(V1_SECOND["_id"])
    assert (first.version, first.token_type, first.txn_op_index) == (1, 128, 0)
    assert (second.version, second.token_type, second.txn_op_index) == (1, 128, 1)
    assert event_version(V1_FIRST["_id"]) < event_version(V1_SECOND["_id"])
    rows = run(
        *(
            encode_change(
                {**e, "fullDocument": {"_id": ObjectId(OID_B), **VIEW, "watched_time": w}}
            ).body
            for e, w in ((V1_SECOND, 51), (V1_FIRST, 50))
        )
    ).rows.to_pylist()
    assert max(rows, key=lambda r: r["version"])["watched_time"] == 51


def test_an_unknown_token_version_is_an_error_not_a_guess():
    data = V1_FIRST["_id"]["_data"]
    future = data[:18] + "2B06" + data[22:]  # version 3
    with pytest.raises(InvalidEvent, match="version 3") as caught:
        event_version({"_data": future})
    assert caught.value.reason == "unknown_token_version"


# --- the producer loop over fake streams (real MongoDB cannot run here) ----------------


def producer_run(
    collection: FakeCollection,
    saved: dict[str, Any] | None = None,
    client: type[FakeClient] = FakeClient,
) -> tuple[Producer, FakePublisher, FakeCollection]:
    settings = Settings(mongo_collection="views", mongo_db="media", metrics_port=0)
    offsets = FakeCollection()
    if saved is not None:
        offsets.offsets["media.views"] = {"_id": "media.views", "token": saved}
    publisher, stop = FakePublisher(), threading.Event()
    producer = Producer(
        settings,
        client(collection, offsets),  # type: ignore[arg-type]
        publisher,  # type: ignore[arg-type]
        Health("producer"),
        stop,
    )
    collection.stop = stop  # type: ignore[attr-defined]
    producer.run()
    producer.close()
    return producer, publisher, offsets


def failed_records(publisher: FakePublisher) -> list[dict[str, Any]]:
    return [
        orjson.loads(entry.body or b"")
        for entry in publisher.entries
        if entry.routing_key == "views.failed"
    ]


def good_insert(n: int) -> dict[str, Any]:
    oid = f"{n:024x}"
    return change(
        "insert", 1732551300 + n, 1, oid, full={"_id": ObjectId(oid), **VIEW}, coll="views"
    )


# --- 3. poison events -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("poison", "reason"),
    [
        ({k: v for k, v in good_insert(2).items() if k != "_id"}, "missing_resume_token"),
        ({**good_insert(2), "fullDocument": ["not", "a", "document"]}, "document_not_object"),
        ({**good_insert(2), "fullDocument": None, OVERSIZE_MARK: True}, "event_too_large"),
        ({**good_insert(2), "documentKey": {"_id": ObjectId(OID_B)}}, "document_key_mismatch"),
        ({**good_insert(2), "documentKey": {"_id": [1, 2]}}, "forbidden_document_id"),
        (
            {**good_insert(2), "operationType": "replace", "fullDocument": None},
            "replace_without_document",
        ),
    ],
)
def test_a_poison_event_is_recorded_and_capture_continues(poison, reason):
    """main: the producer crashed here (KeyError / InvalidEvent), on every restart."""
    collection = FakeCollection()
    stream = [good_insert(1), poison, good_insert(3)]
    collection.on_watch = lambda options: FakeStream(
        stream,
        options["resume_after"],
        stop=collection.stop,  # type: ignore[attr-defined]
    )
    start = good_insert(0)["_id"]
    before = metrics.REGISTRY.get_sample_value("cdcflow_events_failed_total", {"reason": reason})
    producer, publisher, offsets = producer_run(collection, saved=start)
    assert publisher.ops() == ["insert", "insert"]
    (record,) = failed_records(publisher)
    assert record["reason"] == reason and record["kind"] == "failed_event"
    assert record["document_key"] == to_json_safe(poison["documentKey"])
    if "_id" in poison:
        assert record["token"] == poison["_id"]
    failed = next(e for e in publisher.entries if e.routing_key == "views.failed")
    assert FAILED_EVENT_CONTENT_TYPE.encode() in (failed.header or b"")
    assert b"x-cdcflow-reason" in (failed.header or b"") and reason.encode() in (
        failed.header or b""
    )
    assert producer.stats.failed == 1
    after = metrics.REGISTRY.get_sample_value("cdcflow_events_failed_total", {"reason": reason})
    assert after == (before or 0) + 1
    assert offsets.offsets["media.views"]["token"] == good_insert(3)["_id"]  # past the poison


class TooLargeStream(FakeStream):
    """The first getMore fails with BSONObjectTooLarge, as a server before 6.0.9 does."""

    def try_next(self) -> dict[str, Any] | None:
        raise OperationFailure("BSONObj size: 17000000 is invalid", 10334, {"code": 10334})


def test_too_large_event_reopens_with_the_guard_and_is_recorded():
    collection = FakeCollection()
    oversize = {**good_insert(2), "fullDocument": None, OVERSIZE_MARK: True}
    streams: deque[Callable[[dict[str, Any]], FakeStream]] = deque(
        [
            lambda o: TooLargeStream([], o["resume_after"]),
            lambda o: FakeStream(
                [oversize, good_insert(3)],
                o["resume_after"],
                stop=collection.stop,  # type: ignore[attr-defined]
            ),
        ]
    )
    collection.on_watch = lambda options: streams.popleft()(options)
    _, publisher, _ = producer_run(collection, saved=good_insert(1)["_id"])
    assert [w["pipeline"] for w in collection.watches] == [None, OVERSIZE_GUARD]
    assert [w["resume_after"] for w in collection.watches] == [good_insert(1)["_id"]] * 2
    assert [r["reason"] for r in failed_records(publisher)] == ["event_too_large"]
    assert publisher.ops() == ["insert"]


class ServerBefore44Stream(FakeStream):
    """A MongoDB 4.2 stream: a getMore holding a too-large event fails whole (10334),
    with the ordinary events before it; with ONE_EVENT_STRIPPED the event comes bare."""

    def __init__(
        self, events: list[dict[str, Any]], options: dict[str, Any], large: set[str], stop
    ) -> None:
        after = options["resume_after"]
        ids = [e["_id"] for e in events]
        start = ids.index(after) + 1 if after in ids else 0
        super().__init__(events[start:], after, stop=stop)
        self._batch = options["batch_size"]
        self._stripped = (options["pipeline"] or [])[:2] == ONE_EVENT_STRIPPED
        self._large = large
        self._buffer: deque[dict[str, Any]] = deque()

    def try_next(self) -> dict[str, Any] | None:
        if not self._buffer:  # a getMore
            batch = list(self._events)[: self._batch]
            if self._stripped:
                batch = [
                    {**{k: v for k, v in e.items() if k != "fullDocument"}, OVERSIZE_MARK: True}
                    for e in batch
                ]
            elif any(e["_id"]["_data"] in self._large for e in batch):
                raise OperationFailure("BSONObj size: 17000000 is invalid", 10334, {"code": 10334})
            for _ in batch:
                self._events.popleft()
            self._buffer.extend(batch)
        if not self._buffer:
            if self._stop is not None:
                self._stop.set()
            return None
        event = self._buffer.popleft()
        self._token = event["_id"]
        return event


def test_before_4_4_the_large_event_alone_loses_its_document():
    """4.2 has no $bsonSize for the guard: the getMore that failed also held ordinary events,
    so the reader reads one event per getMore until the large one fails alone, reads that
    one bare (recorded), and goes back to normal batches after it: nothing else is lost."""
    assert not measures_sizes("4.2.24") and measures_sizes("4.4.0") and measures_sizes(None)
    events = [good_insert(n) for n in range(1, 7)]
    large = {events[3]["_id"]["_data"]}  # the 4th: events 1-3 share its failed getMore
    collection = FakeCollection()
    collection.on_watch = lambda options: ServerBefore44Stream(
        events,
        options,
        large,
        collection.stop,  # type: ignore[attr-defined]
    )

    class Server42(FakeClient):
        def server_info(self) -> dict[str, Any]:
            return {"version": "4.2.24"}

    producer, publisher, _ = producer_run(collection, saved=good_insert(0)["_id"], client=Server42)
    watched = [(w["pipeline"], w["batch_size"]) for w in collection.watches]
    normal = producer.settings.stream_batch
    assert watched == [(None, normal), (None, 1), (ONE_EVENT_STRIPPED, 1), (None, normal)]
    assert [r["reason"] for r in failed_records(publisher)] == ["event_too_large"]
    (record,) = failed_records(publisher)
    assert record["token"] == events[3]["_id"]
    assert publisher.ops() == ["insert"] * 5  # 1-3 read one by one, 5-6 in a batch again


@pytest.mark.parametrize(
    ("version", "splits"),
    [("7.0.2", True), ("8.0.0", True), ("6.0.9", True), ("6.0.8", False), ("6.3.1", False),
     ("5.0.20", False), (None, False)],
)  # fmt: skip
def test_split_large_events_is_asked_for_where_the_server_has_it(version, splits):
    assert supports_split_events(version) is splits
    collection = FakeCollection()
    collection.on_watch = lambda options: FakeStream([], {"_data": "nx:0"})
    ChangeReader(collection, batch_size=5, split_events=splits).open()  # type: ignore[arg-type]
    assert collection.watches[0]["pipeline"] == ([SPLIT_STAGE] if splits else None)


class RefusingStream(FakeStream):
    def try_next(self) -> dict[str, Any] | None:
        raise InvalidOperation(
            "Cannot provide resume functionality when the resume token is missing."
        )


def test_pymongo_refusing_a_tokenless_event_is_recorded_and_resnapshots():
    collection = FakeCollection([{"_id": "a", **VIEW}])
    streams: deque[Callable[[dict[str, Any]], FakeStream]] = deque(
        [
            lambda o: RefusingStream([], o["resume_after"]),
            lambda o: FakeStream([], good_insert(5)["_id"], stop=collection.stop),  # type: ignore[attr-defined]
        ]
    )
    collection.on_watch = lambda options: streams.popleft()(options)
    _, publisher, _ = producer_run(collection, saved=good_insert(1)["_id"])
    assert [r["reason"] for r in failed_records(publisher)] == ["missing_resume_token"]
    assert publisher.ops() == ["snapshot", "snapshot_end"]


# --- 4. poison documents --------------------------------------------------------------


def nx_insert(n: int, doc_id_text: str, **fields: Any) -> bytes:
    raw = {
        "_id": {"_data": f"nx:{n}"},
        "operationType": "insert",
        "clusterTime": dt.datetime(2026, 11, 25, 10, 0),
        "ns": {"db": "media", "coll": COLL},
        "documentKey": {"_id": doc_id_text},
        "fullDocument": {"_id": doc_id_text, **VIEW, **fields},
    }
    return encode_change(raw).body


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ({"$date": {"$numberLong": "x"}}, "timestamp_bad_extended_json"),
        ({"$date": 1e17}, "timestamp_out_of_range"),
        ({"$date": [1]}, "timestamp_bad_extended_json"),
    ],
)
def test_extended_json_lookalikes_load_with_a_rule_not_a_failed_batch(value, rule):
    """main: these raised inside the batch transform and sank every message with them."""
    batch = run(nx_insert(1, "a"), nx_insert(2, "poison", started_at=value), nx_insert(3, "b"))
    assert batch.rows.column("doc_id").to_pylist() == ["a", "poison", "b"]
    assert batch.rows.column("started_at")[1].as_py() is None
    assert batch.fixes[rule] == 1 and not batch.rejections


def test_any_exception_of_one_document_is_contained_to_it(monkeypatch):
    real = clean_documents

    def explode_on_marker(documents: list[Any]) -> Any:
        if any(isinstance(d, dict) and d.get("explode") for d in documents):
            raise ZeroDivisionError("a bug nobody foresaw")
        return real(documents)

    monkeypatch.setattr("cdcflow.consumer.batches.clean_documents", explode_on_marker)
    batch = run(nx_insert(1, "a"), nx_insert(2, "poison", explode=True), nx_insert(3, "b"))
    assert batch.rows.column("doc_id").to_pylist() == ["a", "b"]
    (rejection,) = batch.rejections
    assert (rejection.index, rejection.reason, rejection.stage) == (
        1,
        "transform_error",
        "transform",
    )
    assert "ZeroDivisionError" in rejection.detail and rejection.doc_id == "poison"
    assert batch.accounted == batch.messages == 3


# --- 5. acked without a trace ---------------------------------------------------------


def envelope_of(body: bytes, **changes: Any) -> bytes:
    payload = orjson.loads(body)
    payload.update(changes)
    return orjson.dumps(payload)


def test_every_message_has_exactly_one_outcome():
    """main acked a replace without a document, and a bare update, with no trace."""
    update_gone = EVENTS["update whose updateLookup found the document already deleted"]
    gone = envelope_of(encode_change(update_gone).body, ns={"db": "media", "coll": COLL})
    bodies = [
        nx_insert(1, "a"),
        envelope_of(nx_insert(2, "r"), op="replace", doc=None),
        envelope_of(nx_insert(3, "u"), op="update", doc=None),
        gone,
        encode_envelope(
            snapshot_end_envelope(start_token=HWM, db="m", coll=COLL, documents=0)
        ).body,
    ]
    batch = run(*bodies)
    assert [(r.index, r.reason) for r in batch.rejections] == [
        (1, "replace_without_document"),
        (2, "update_without_document"),
    ]
    assert batch.ignored == {"update_document_gone": 1, "snapshot_end": 1}
    assert batch.rows.num_rows == 1
    assert batch.accounted == batch.messages == len(bodies)


def test_the_producer_refuses_replace_and_bare_update_without_documents():
    base = EVENTS["replace"]
    with pytest.raises(InvalidEvent) as replace:
        encode_change({k: v for k, v in base.items() if k != "fullDocument"})
    assert replace.value.reason == "replace_without_document"
    bare = {
        k: v
        for k, v in EVENTS["update with updateLookup"].items()
        if k not in ("fullDocument", "updateDescription")
    }
    with pytest.raises(InvalidEvent) as update:
        encode_change(bare)
    assert update.value.reason == "update_without_document"
    gone = from_change(EVENTS["update whose updateLookup found the document already deleted"])
    assert gone.doc is None and gone.update is not None and gone.update.updated == ["watched_time"]


# --- 6. document identity -------------------------------------------------------------


@pytest.mark.parametrize(
    ("same", "value"),
    [
        ("~n:42", 42), ("~n:42", 42.0), ("~n:42", Int64(42)), ("~n:42", Decimal128("42")),
        ("~n:42", Decimal128("42.000")), ("~n:0", -0.0), ("~n:2.5", Decimal128("2.5")),
        ("42", "42"), ("~null", None), ("null", "null"), ("~bool:true", True),
        ("0b7c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3", uuid.UUID("0b7c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3")),
        ("0b7c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3",
         Binary(uuid.UUID("0b7c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3").bytes, 4)),
        ("~s:0b7c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3", "0b7c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3"),
        (OID_A, ObjectId(OID_A)), ("~s:" + OID_A, OID_A),
        (OID_A, {"__neosqlite_objectid__": True, "id": OID_A}),
        ('~doc:{"a":"~n:1","b":"~n:2"}', {"a": 1, "b": 2}),
        ('~doc:{"b":"~n:2","a":"~n:1"}', {"b": 2, "a": 1.0}),
        ("~date:2026-01-01T00:00:00.000Z", dt.datetime(2026, 1, 1)),
        ("~ts:1732551152:1", Timestamp(1732551152, 1)),
    ],
)  # fmt: skip
def test_doc_ids_are_equal_exactly_when_mongodb_calls_ids_equal(same, value):
    assert doc_id(value) == same


def test_the_documented_mapping_table_is_what_the_code_does():
    examples = {
        "ObjectId": ObjectId(OID_A), "string": "vid-1",
        "string that looks like another form": OID_A,
        "string starting with ~": "~x", "non-integral number (exact value)": 2.5,
        "NaN, ±Infinity": float("nan"), "other binary": Binary(b"\x01\x02", 0), "null": None,
        "boolean": True, "date": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        "timestamp": Timestamp(1732551152, 1),
        "embedded document (fields in order)": {"b": 2, "a": 1},
        "int32, int64, double, decimal (by value)": Int64(42),
        "UUID (Binary subtype 4)": uuid.UUID("0b7c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3"),
    }  # fmt: skip
    from bson.min_key import MinKey

    examples["MinKey / MaxKey"] = MinKey()
    for kind, _example, expected in MAPPING:
        if kind in examples:
            assert doc_id(examples[kind]) == expected, kind
    assert {kind for kind, _, _ in MAPPING} - set(examples) == {
        "array, regex",
        "undefined (MongoDB refuses it as _id)",
    }


def test_all_distinct_ids_stay_distinct():
    values = [42, "42", None, "null", "~n:42", True, 1, {"a": 1, "b": 2}, {"b": 2, "a": 1},
              ObjectId(OID_A), OID_A, 2.5, Decimal128("2.5000000000000001"), "", "~"]  # fmt: skip
    texts = [doc_id(value) for value in values]
    assert len(set(texts)) == len(texts)


@pytest.mark.parametrize("forbidden", [[1, 2], Regex("^a"), ()])  # () is an empty array
def test_ids_mongodb_forbids_are_rejected(forbidden):
    event = {**EVENTS["insert"], "documentKey": {"_id": forbidden}, "fullDocument": None}
    with pytest.raises(InvalidEvent) as caught:
        encode_change({**event, "operationType": "delete"})
    assert caught.value.reason == "forbidden_document_id"


def test_a_key_that_is_not_the_document_id_is_rejected_on_both_shapes():
    real = {**EVENTS["insert"], "documentKey": {"_id": ObjectId(OID_B)}}
    with pytest.raises(InvalidEvent, match="documentKey"):
        encode_change(real)
    nx = {
        "_id": {"_data": "nx:9"}, "operationType": "insert", "ns": {"db": "m", "coll": COLL},
        "documentKey": {"_id": "8"}, "fullDocument": {"_id": 7},
    }  # fmt: skip
    with pytest.raises(InvalidEvent) as caught:
        encode_change(nx)
    assert caught.value.reason == "document_key_mismatch"


@pytest.mark.parametrize(
    ("key", "typed", "expected"),
    [
        ("1", 1, "~n:1"),
        ("42.5", 42.5, "~n:42.5"),
        ("{'b': 2, 'a': 1}", {"b": 2, "a": 1}, '~doc:{"b":"~n:2","a":"~n:1"}'),
        ("b'\\x01\\x02'", {"__neosqlite_binary__": True, "data": "AQI=", "subtype": 0},
         "~bin0:AQI="),
        ("vid-1", "vid-1", "vid-1"),
    ],
)  # fmt: skip
def test_nx_string_document_keys_map_to_the_typed_id(key, typed, expected):
    """Shapes measured on nx-27017 0.8.1 (documentKey stringified, fullDocument typed)."""
    event = {
        "_id": {"_data": "nx:3"}, "operationType": "insert", "ns": {"db": "m", "coll": COLL},
        "documentKey": {"_id": key}, "fullDocument": {"_id": typed, **VIEW},
    }  # fmt: skip
    assert from_change(event).id == expected


# --- 7. envelope integrity ------------------------------------------------------------


def test_envelope_version_is_required_and_operation_must_agree():
    """main read a missing v as 1 and tombstoned a live document on a delete with a doc."""
    good = nx_insert(1, "a")
    without_v = orjson.dumps({k: v for k, v in orjson.loads(good).items() if k != "v"})
    delete_with_doc = envelope_of(good, op="delete")
    header_says_delete = nx_insert(2, "b")
    version = str(orjson.loads(header_says_delete)["version"])
    batch = run(
        without_v,
        delete_with_doc,
        header_says_delete,
        nx_insert(3, "c"),
        nx_insert(4, "d"),
        headers=[
            None,
            None,
            {"x-cdcflow-op": "delete", "x-cdcflow-version": version},
            {"x-cdcflow-op": b"insert", "x-cdcflow-version": "12345"},
            {
                "x-cdcflow-op": "insert",
                "x-cdcflow-version": str(orjson.loads(nx_insert(4, "d"))["version"]),
            },
        ],
    )
    assert [(r.index, r.reason) for r in batch.rejections] == [
        (0, "missing_envelope_version"),
        (1, "operation_mismatch"),
        (2, "operation_mismatch"),
        (3, "version_mismatch"),
    ]
    assert batch.rows.column("doc_id").to_pylist() == ["d"]
    assert decode_envelope(good).v == 2


# --- 8. dates -------------------------------------------------------------------------

MOMENT = dt.datetime(2024, 11, 25, 16, 12, 30, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    "value",
    [1732551150, 1732551150.0, 1732551150000, 1732551150000000, 1732551150000000000, "1732551150"],
)
def test_epoch_numbers_are_parsed_by_magnitude(value):
    """main: an epoch number became NULL."""
    batch = clean_documents([{**VIEW, "started_at": value}])
    assert batch.columns["started_at"][0].as_py() == MOMENT
    assert batch.fixes == {"timestamp_epoch_number": 1}


def test_epoch_unit_boundaries():
    assert epoch_seconds(99_999_999_999) == 99_999_999_999  # seconds below 10^11
    assert epoch_seconds(100_000_000_000) == 100_000_000  # milliseconds from 10^11
    assert epoch_seconds(-1_000) == -1_000


@pytest.mark.parametrize(
    ("value", "rule"),
    [("yesterday", "timestamp_invalid"), (True, "timestamp_invalid"),
     (dt.datetime(1850, 1, 1), "timestamp_out_of_range"), (1e30, "timestamp_out_of_range")],
)  # fmt: skip
def test_an_unparseable_date_is_a_rule_with_a_reason(value, rule):
    batch = clean_documents([{**VIEW, "started_at": value}])
    assert batch.columns["started_at"][0].as_py() is None
    assert batch.fixes == {rule: 1}


# --- 9. invisible faults --------------------------------------------------------------


class ResumingStream(FakeStream):
    """Swaps its cursor on the second call, as pymongo does when it resumes in try_next."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cursor = object()
        self.calls = 0

    def try_next(self) -> dict[str, Any] | None:
        self.calls += 1
        if self.calls == 2:
            self._cursor = object()
        return super().try_next()


def test_a_resume_inside_try_next_is_logged_and_counted(caplog):
    """main: nothing logged, cdcflow_reconnects_total{service="mongodb"} stayed 0."""
    collection = FakeCollection()
    collection.on_watch = lambda options: ResumingStream(
        [good_insert(1), good_insert(2)], {"_data": "nx:0"}
    )
    reader = ChangeReader(collection, batch_size=5)  # type: ignore[arg-type]
    reader.open()
    labels = {"service": "mongodb"}
    before = metrics.REGISTRY.get_sample_value("cdcflow_reconnects_total", labels) or 0
    with caplog.at_level("WARNING"):
        assert reader.next() is not None and reader.next() is not None
    assert reader.resumes == 1
    assert metrics.REGISTRY.get_sample_value("cdcflow_reconnects_total", labels) == before + 1
    assert any("resumed" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


# --- 10. drop mirrored as deletes (opt-in) ---------------------------------------------


def test_a_mirrored_drop_sweeps_every_row_older_than_the_drop():
    from cdcflow.events import drop_envelope

    drop_token = {"_data": "nx:50"}
    body = encode_envelope(drop_envelope(drop_token, db="media", coll=COLL)).body
    batch = run(body)
    assert batch.sweeps == [first_event_version(drop_token)]  # the event at the token too
    assert batch.ignored == {"drop_mirrored": 1}
    assert event_version({"_data": "nx:49"}) < batch.sweeps[0]


def test_decimal_ids_compare_by_exact_value():
    assert doc_id(0.1) != doc_id(Decimal128("0.1"))  # a double 0.1 is not the decimal 0.1
    assert doc_id(Decimal128(Decimal("1E+2"))) == doc_id(100)
