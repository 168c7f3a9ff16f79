"""The batch envelope: packing bounds and order, unpacking whole, bad and cut-short messages,
and the consumer's per-change outcomes inside one message (no broker needed)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import orjson
import pika
import pytest

from cdcflow.config import Settings
from cdcflow.consumer.batches import process_batch
from cdcflow.consumer.deadletter import H_BATCH_MESSAGE_ID, H_BATCH_POSITION, H_REASON, dead_letter
from cdcflow.consumer.rabbitmq import Delivery
from cdcflow.events import CONTENT_TYPE, decode_envelope, encode_change, fast_envelope
from cdcflow.packing import (
    BATCH_CONTENT_TYPE,
    H_CHANGES,
    Packer,
    bulk_parse,
    declared_changes,
    is_batch,
    pack,
    packed_size,
    unpack,
)
from cdcflow.producer.amqp import batch_content_header, batch_entry

from .test_rules import GOOD

COLLECTION = "viewing_logs"


def change(n: int, op: str = "update", doc_id: str = "d1", **fields: Any) -> bytes:
    raw: dict[str, Any] = {
        "_id": {"_data": f"nx:{n}"},
        "operationType": op,
        "clusterTime": dt.datetime(2026, 11, 25, 10, 0, 0),
        "ns": {"db": "media", "coll": COLLECTION},
        "documentKey": {"_id": doc_id},
        "fullDocument": {"_id": doc_id, **GOOD, **fields},
    }
    return encode_change(raw).body


# --- packing: bounds and order -------------------------------------------------------


@pytest.mark.parametrize(
    ("max_changes", "max_bytes", "sizes", "expected"),
    [
        (3, 10_000, [10] * 7, [[0, 1, 2], [3, 4, 5]]),  # count bound; 6 stays open
        (1, 10_000, [10] * 3, [[0], [1], [2]]),  # one change per message
        (100, packed_size(30, 3), [10] * 7, [[0, 1, 2], [3, 4, 5]]),  # byte bound, exact fit
        (100, packed_size(30, 3) - 1, [10] * 5, [[0, 1], [2, 3]]),  # one byte short of three
        (100, 100, [10, 500, 10], [[0], [1]]),  # an oversize change travels alone
    ],
)
def test_packer_closes_batches_at_count_and_byte_bounds_in_order(
    max_changes: int, max_bytes: int, sizes: list[int], expected: list[list[int]]
) -> None:
    packer: Packer[int] = Packer(max_changes, max_bytes, linger_s=1.0)
    closed: list[list[int]] = []
    for index, size in enumerate(sizes):
        for bodies, payloads in packer.add(b"x" * size, index, now=0.0):
            assert [len(body) for body in bodies] == [sizes[i] for i in payloads]
            closed.append(payloads)
            assert len(pack(bodies)) <= max_bytes or len(payloads) == 1
    assert closed == expected
    left = [payloads for _bodies, payloads in packer.flush()]
    everything = [i for group in closed + left for i in group]
    assert everything == list(range(len(sizes)))  # nothing lost, nothing reordered
    assert packer.pending == 0 and packer.flush() == []


def test_packer_linger_is_measured_from_the_first_change() -> None:
    packer: Packer[int] = Packer(100, 100_000, linger_s=0.5)
    assert not packer.due(10.0) and packer.wait_s(10.0) == 0.0  # nothing open
    packer.add(b"a", 0, now=10.0)
    packer.add(b"b", 1, now=10.4)
    assert not packer.due(10.49) and packer.wait_s(10.25) == pytest.approx(0.25)
    assert packer.due(10.5)
    assert [payloads for _b, payloads in packer.flush()] == [[0, 1]]
    packer.add(b"c", 2, now=20.0)  # a new batch: a new clock
    assert not packer.due(20.4)


def test_packer_rejects_bounds_that_cannot_hold_a_change() -> None:
    with pytest.raises(ValueError, match="max_changes"):
        Packer(0, 100, 0.0)


# --- unpacking -------------------------------------------------------------------------


def test_pack_then_unpack_gives_the_same_changes_in_order() -> None:
    bodies = [change(n) for n in range(1, 6)]
    body = pack(bodies)
    assert body.count(b"\n") == 5  # one header line, a line per change
    assert orjson.loads(body.split(b"\n")[0]) == {
        "v": 1,
        "kind": "changes",
        "count": 5,
        "bytes": sum(map(len, bodies)) + 4,
    }
    unpacked = unpack(body, declared_header=b"5")
    assert unpacked.changes == bodies and unpacked.declared == 5 and unpacked.problem is None
    assert bulk_parse(unpacked.changes) == [orjson.loads(b) for b in bodies]


@pytest.mark.parametrize(
    ("body", "header", "reason"),
    [
        (b"not json\n{}", None, "malformed_batch"),
        (b'{"v":2,"kind":"changes","count":1,"bytes":2}\n{}', None, "unsupported_batch_version"),
        (b'{"kind":"changes","count":1,"bytes":2}\n{}', None, "unsupported_batch_version"),
        (b'{"v":1,"kind":"changes","count":0,"bytes":0}\n', None, "malformed_batch"),
        (b'{"v":1,"kind":"rows","count":1,"bytes":2}\n{}', None, "malformed_batch"),
        (b'{"v":1,"kind":"changes","count":1}\n{}', None, "malformed_batch"),  # no bytes
        (b'{"v":1,"kind":"changes","count":1,"bytes":5}\n{}\n{}', None, "malformed_batch"),
        (b'{"v":1,"kind":"changes","count":1,"bytes":1}\n{}', None, "malformed_batch"),
        (b'{"v":1,"kind":"changes","count":2,"bytes":5}\n{}\n{}', b"3", "batch_count_mismatch"),
    ],
)
def test_a_message_that_cannot_be_unpacked_is_one_problem_for_the_whole(
    body: bytes, header: bytes | None, reason: str
) -> None:
    unpacked = unpack(body, header)
    assert unpacked.changes == []
    assert unpacked.problem is not None and unpacked.problem.reason == reason
    assert unpacked.problem.body is body  # dead-lettered as it came


@pytest.mark.parametrize("cut", ["mid_line", "at_line_end", "only_header"])
def test_a_message_cut_short_keeps_its_whole_changes_and_names_the_rest(cut: str) -> None:
    bodies = [change(n) for n in range(1, 5)]
    body = pack(bodies)
    if cut == "mid_line":
        short = body[: len(body) - len(bodies[-1]) // 2]
        whole, fragment = bodies[:3], bodies[3][: len(bodies[3]) - len(bodies[3]) // 2]
    elif cut == "at_line_end":
        short = body[: len(body) - len(bodies[-1]) - 1]
        whole, fragment = bodies[:3], b""
    else:
        short = body.split(b"\n")[0]
        whole, fragment = [], b""
    unpacked = unpack(short)
    assert unpacked.changes == whole
    assert unpacked.problem is not None and unpacked.problem.reason == "batch_truncated"
    assert unpacked.problem.body == fragment
    assert f"declares 4 changes, {len(whole)} arrived whole" in unpacked.problem.detail


def test_a_bad_last_change_is_not_taken_for_a_cut() -> None:
    bodies = [change(1), b'{"v":2,"op":']
    unpacked = unpack(pack(bodies))
    assert unpacked.changes == bodies and unpacked.problem is None


def test_bulk_parse_gives_up_on_any_bad_line_so_the_fallback_can_name_it() -> None:
    assert bulk_parse([b'{"a":1}', b"{broken", b'{"b":2}']) is None
    assert bulk_parse([b"1,2"]) is None  # one line may not pass as two values
    assert bulk_parse([]) == []


def test_content_type_and_declared_count_headers() -> None:
    assert is_batch(BATCH_CONTENT_TYPE) and not is_batch(CONTENT_TYPE) and not is_batch(None)
    assert declared_changes({H_CHANGES: b"7"}) == 7
    assert declared_changes({H_CHANGES: "x"}) == 1 and declared_changes(None) == 1


# --- the fast path accepts exactly what the schema accepts ---------------------------


def _variants() -> list[bytes]:
    good = orjson.loads(change(1))
    bad_values: list[tuple[str, Any]] = [
        ("v", 3),
        ("v", True),
        ("v", "2"),
        ("op", "upsert"),
        ("id", 5),
        ("version", "-1"),
        ("version", "1e3"),
        ("version", str(1 << 130)),
        ("version", 7),
        ("cluster_time", "yesterday"),
        ("cluster_time", "2026-11-25T10:00:00"),  # no zone
        ("cluster_time", None),
        ("captured_at", None),
        ("ns", {"db": "media"}),
        ("ns", {"db": "media", "coll": 1}),
        ("doc", []),
        ("doc", None),
        ("token", "nx:1"),
        ("source", "postgres"),
        ("update", {"updated": ["a"], "removed": []}),
        ("update", {"updated": [1], "removed": []}),
        ("extra", 1),
    ]
    variants = [orjson.dumps(good)]
    for key, value in bad_values:
        variants.append(orjson.dumps({**good, key: value}))
    missing = dict(good)
    del missing["source"]
    variants.append(orjson.dumps(missing))
    return variants


@pytest.mark.parametrize("body", _variants())
def test_fast_envelope_never_accepts_what_the_schema_rejects(body: bytes) -> None:
    fast = fast_envelope(orjson.loads(body))
    try:
        strict = decode_envelope(body)
    except Exception:
        assert fast is None
        return
    if fast is not None:
        assert fast == strict and fast.model_dump() == strict.model_dump()


# --- the consumer: one outcome per change, dead letters per change -------------------


def _batch(bodies: list[bytes]) -> tuple[bytes, dict[str, Any]]:
    return pack(bodies), {H_CHANGES: str(len(bodies))}


def test_a_poison_change_in_the_middle_is_rejected_alone() -> None:
    bodies = [change(1, "insert", "a"), change(2, "insert", "b", total_video_time=-5)]
    bodies += [b'{"v":2,"op":"insert"', change(4, "delete", "a"), change(5, "insert", "c")]
    body, headers = _batch(bodies)
    batch = process_batch(
        [change(9, "insert", "z"), body],
        [CONTENT_TYPE, BATCH_CONTENT_TYPE],
        collection=COLLECTION,
        headers=[None, headers],
    )
    assert batch.messages == 2 and batch.changes == 6 and batch.accounted == 6
    assert sorted(row["doc_id"] for row in batch.rows.to_pylist()) == ["a", "a", "c", "z"]
    assert [(r.index, r.position, r.reason) for r in batch.rejections] == [
        (1, 1, "total_video_time_not_positive"),
        (1, 2, "malformed_json"),
    ]
    clean, parse = batch.rejections
    assert clean.body == bodies[1] and clean.message_id == "nx:2" and clean.doc_id == "b"
    assert parse.body == bodies[2] and parse.message_id is None


def test_a_cut_short_message_loads_what_arrived_and_records_the_rest_once() -> None:
    bodies = [change(n, "insert", f"d{n}") for n in range(1, 5)]
    body = pack(bodies)
    short = body[: len(body) - 10]
    batch = process_batch([short], [BATCH_CONTENT_TYPE], collection=COLLECTION)
    assert [row["doc_id"] for row in batch.rows.to_pylist()] == ["d1", "d2", "d3"]
    assert [(r.position, r.reason) for r in batch.rejections] == [(3, "batch_truncated")]
    assert batch.rejections[0].body == bodies[3][:-10]
    assert batch.accounted == batch.changes == 4


def test_an_unreadable_batch_message_is_one_rejection_for_the_message() -> None:
    batch = process_batch(
        [b'{"v":9,"kind":"changes","count":2,"bytes":5}\n{}\n{}'],
        [BATCH_CONTENT_TYPE],
        collection=COLLECTION,
    )
    assert [(r.position, r.body, r.reason) for r in batch.rejections] == [
        (None, None, "unsupported_batch_version")
    ]
    assert batch.accounted == batch.changes == 1


def _delivery(body: bytes, headers: dict[str, Any]) -> Delivery:
    properties = pika.BasicProperties(
        content_type=BATCH_CONTENT_TYPE, message_id="changes:nx:1..nx:5", headers=headers
    )
    return Delivery(1, 1, body, properties, COLLECTION, "cdcflow", False, changes=5)


def test_a_change_dead_lettered_out_of_a_batch_is_a_one_change_message() -> None:
    bodies = [change(1, "insert", "a"), change(2, "insert", "b", total_video_time=-5)]
    body, headers = _batch(bodies)
    batch = process_batch([body], [BATCH_CONTENT_TYPE], collection=COLLECTION, headers=[headers])
    settings = Settings(mongo_collection=COLLECTION)
    (rejection,) = batch.rejections
    record = dead_letter(_delivery(body, headers), rejection, settings.failed_queue_name)
    assert record.routing_key == settings.failed_queue_name
    assert record.body == bodies[1]
    assert record.properties.content_type == CONTENT_TYPE
    assert record.properties.message_id == "nx:2"
    recorded = record.properties.headers or {}
    assert recorded[H_REASON] == "total_video_time_not_positive"
    assert recorded[H_BATCH_MESSAGE_ID] == "changes:nx:1..nx:5"
    assert recorded[H_BATCH_POSITION] == 1 and H_CHANGES not in recorded
    # Replayed, it is read like any one-change message (and fails again the same way).
    again = process_batch([record.body], [record.properties.content_type], collection=COLLECTION)
    assert [r.reason for r in again.rejections] == ["total_video_time_not_positive"]


def test_batch_entry_carries_every_change_and_the_newest_checkpoint() -> None:
    encoded = [
        encode_change(
            {
                "_id": {"_data": f"nx:{n}"},
                "operationType": "insert",
                "ns": {"db": "media", "coll": COLLECTION},
                "documentKey": {"_id": f"d{n}"},
                "fullDocument": {"_id": f"d{n}", **GOOD},
            }
        )
        for n in (1, 2, 3)
    ]
    entry = batch_entry(encoded, [{"_data": "nx:1"}, {"_data": "nx:2"}, None])
    assert entry.changes == 3 and entry.checkpoint == {"_data": "nx:2"}
    assert entry.message_id == "changes:nx:1..nx:3"
    assert entry.body is not None and unpack(entry.body).changes == [e.body for e in encoded]
    assert entry.header is not None and BATCH_CONTENT_TYPE.encode() in entry.header


def test_batch_content_header_decodes_as_pika_would() -> None:
    header = batch_content_header(1234, message_id="changes:nx:1..nx:9", changes=9, timestamp=7)
    decoded = pika.frame.decode_frame(
        b"\x02\x00\x01" + len(header).to_bytes(4, "big") + header + b"\xce"
    )[1]
    assert isinstance(decoded, pika.frame.Header) and decoded.body_size == 1234
    properties = decoded.properties
    assert properties.content_type == BATCH_CONTENT_TYPE
    assert properties.message_id == "changes:nx:1..nx:9" and properties.delivery_mode == 2
    assert declared_changes(properties.headers) == 9 and properties.timestamp == 7


def test_the_fast_path_takes_what_the_producer_writes() -> None:
    body = change(1)
    fast = fast_envelope(orjson.loads(body))
    assert fast is not None and fast == decode_envelope(body)


def test_chunks_slices_lazily_with_a_short_last_chunk() -> None:
    from cdcflow.packing import chunks

    assert list(chunks(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(chunks([], 3)) == []
    assert list(chunks("ab", 5)) == [["a", "b"]]
    read: list[int] = []

    def cursor() -> Iterator[int]:
        for number in range(10):
            read.append(number)
            yield number

    first = next(chunks(cursor(), 4))
    assert first == [0, 1, 2, 3] and read == [0, 1, 2, 3], "a cursor is read as it goes"
    with pytest.raises(ValueError):
        list(chunks([1], 0))
