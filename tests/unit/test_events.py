"""The change envelope over both source shapes: real MongoDB (fixtures) and nx-27017.

What the warehouse relies on: one canonical id per document, the right operation,
and a version that follows source order and is the same when an event is replayed.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import pytest
from bson import ObjectId, Timestamp

from cdcflow.events import (
    CONTENT_TYPE,
    ChangeEnvelope,
    Operation,
    UnsupportedEvent,
    decode_envelope,
    encode_change,
    encode_document,
    encode_envelope,
    from_change,
    snapshot_end_envelope,
    snapshot_envelope,
    to_json_safe,
)
from cdcflow.versions import (
    SLOT_BITS,
    InvalidEvent,
    event_version,
    nx_sequence,
    parse_mongo_token,
    snapshot_version,
    sweep_version,
    token_position,
)

OID = "6744a1f0c3b2a90f1e2d3c4b"
DELETED_OID = "6744a1f5c3b2a90f1e2d3c4c"


@pytest.fixture
def real(fixture_events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Real-MongoDB fixture events by a short name."""
    labels = {
        "insert": "insert",
        "update": "update with updateLookup",
        "update_no_doc": "update without fullDocument option",
        "update_null": "update whose updateLookup found the document already deleted",
        "replace": "replace",
        "txn1": "two updates in one transaction: same clusterTime, token breaks the tie",
        "txn2": "two updates in one transaction: same clusterTime, token breaks the tie (second)",
        "delete": "delete (documentKey only, no fullDocument)",
        "idle": "postBatchResumeToken of an idle stream (high-water mark)",
        "error": "error reply when resuming from a token the oplog no longer holds",
    }
    events = {line["label"]: line["event"] for line in fixture_events}
    return {name: dict(events[label]) for name, label in labels.items()}


def nx_event(
    n: int,
    op: str,
    key: Any,
    full: dict[str, Any] | None,
    *,
    read_at: dt.datetime | None = None,
) -> dict[str, Any]:
    """An event shaped as nx-27017 0.8.1 sends it (checked against a live server)."""
    read_at = read_at or dt.datetime(2026, 11, 25, 22, 0, 56, 708000)
    return {
        "_id": {"_data": f"nx:{n}"},
        "operationType": op,
        "clusterTime": read_at,  # naive, stamped when read
        "wallTime": read_at,
        "fullDocument": full,
        "ns": {"db": "media", "coll": "viewing_logs"},
        "documentKey": {"_id": key},
        "updateDescription": None,
    }


# --- real MongoDB shape ---------------------------------------------------------------


def test_every_fixture_line_parses_or_is_refused_as_not_a_change(fixture_events):
    """All DML lines give envelopes; the idle mark and the 286 reply are not changes."""
    envelopes, refused = [], []
    for line in fixture_events:
        event = line["event"]
        try:
            envelopes.append(from_change(event))
        except UnsupportedEvent:
            refused.append(line["label"])
    assert len(envelopes) == 8
    assert refused == [
        "postBatchResumeToken of an idle stream (high-water mark)",
        "error reply when resuming from a token the oplog no longer holds",
    ]
    assert all(envelope.source == "mongodb" for envelope in envelopes)
    assert all(envelope.ns.db == "media" for envelope in envelopes)


def test_real_insert(real):
    envelope = from_change(real["insert"])
    assert envelope.op is Operation.INSERT
    assert envelope.id == OID  # ObjectId → 24 hex chars
    t, i, index = parse_mongo_token(real["insert"]["_id"])
    assert isinstance(real["insert"]["clusterTime"], Timestamp)
    assert (t, i) == (real["insert"]["clusterTime"].time, real["insert"]["clusterTime"].inc)
    assert envelope.version == (t << 32 | i) << SLOT_BITS | (index + 1)
    assert envelope.cluster_time == dt.datetime.fromtimestamp(t, dt.UTC)
    assert envelope.doc is not None
    assert envelope.doc["_id"] == {"$oid": OID}
    assert envelope.doc["started_at"] == {"$date": "2024-11-25T16:12:30.000Z"}
    assert envelope.token == real["insert"]["_id"]


def test_real_update_with_lookup_carries_the_document(real):
    envelope = from_change(real["update"])
    assert envelope.op is Operation.UPDATE
    assert envelope.id == OID
    assert envelope.doc is not None and envelope.doc["_id"] == {"$oid": OID}


def test_real_update_without_full_document_has_no_doc(real):
    envelope = from_change(real["update_no_doc"])
    assert (envelope.op, envelope.id, envelope.doc) == (Operation.UPDATE, OID, None)


def test_real_update_whose_lookup_found_nothing_publishes_null_doc(real):
    assert real["update_null"]["fullDocument"] is None
    envelope = from_change(real["update_null"])
    assert (envelope.op, envelope.id, envelope.doc) == (Operation.UPDATE, DELETED_OID, None)


def test_real_replace(real):
    envelope = from_change(real["replace"])
    assert envelope.op is Operation.REPLACE
    assert envelope.doc is not None and envelope.doc["device"] == "web"


def test_real_delete_has_only_the_key(real):
    assert "fullDocument" not in real["delete"]
    envelope = from_change(real["delete"])
    assert (envelope.op, envelope.id, envelope.doc) == (Operation.DELETE, OID, None)


def test_transaction_events_share_cluster_time_and_keep_their_order(real):
    first, second = real["txn1"], real["txn2"]
    assert first["clusterTime"] == second["clusterTime"]
    assert parse_mongo_token(first["_id"])[2] == 0
    assert parse_mongo_token(second["_id"])[2] == 1
    assert from_change(first).version < from_change(second).version
    assert token_position(first["_id"]) == token_position(second["_id"])


def test_real_versions_follow_fixture_order(fixture_events):
    """The fixture lines are in server order; so must the versions be."""
    versions = [
        from_change(line["event"]).version
        for line in fixture_events
        if line["event"].get("operationType")
    ]
    assert versions == sorted(versions)
    assert len(set(versions)) == len(versions)


def test_snapshot_at_the_idle_mark_outranks_earlier_events(real, fixture_events):
    """A snapshot taken at a later high-water mark beats every event before it."""
    mark = real["idle"]["postBatchResumeToken"]
    events = [line["event"] for line in fixture_events if line["event"].get("operationType")]
    assert all(event_version(e["_id"]) < snapshot_version(mark) for e in events)
    assert all(event_version(e["_id"]) < sweep_version(mark) for e in events)


def test_a_snapshot_after_an_event_token_ranks_below_the_transaction_s_next_operation(real):
    first, second = real["txn1"]["_id"], real["txn2"]["_id"]
    assert sweep_version(first) < snapshot_version(first) < event_version(second)
    assert sweep_version(first) == snapshot_version(first) - 1
    assert snapshot_version(first) == event_version(first)  # the same state or a later read


def test_body_properties_and_schema_agree(real):
    encoded = encode_change(real["update"])
    envelope = decode_envelope(encoded.body)
    assert isinstance(envelope, ChangeEnvelope)
    assert encoded.message_id == real["update"]["_id"]["_data"] == envelope.message_id
    assert (encoded.op, encoded.version, encoded.doc_id) == ("update", envelope.version, OID)
    assert b'"version":"' in encoded.body  # 96-bit versions travel as decimal strings
    assert CONTENT_TYPE.startswith("application/vnd.cdcflow.change+json")


def test_replayed_real_event_gets_the_same_version(real):
    again = dict(real["update"])
    assert from_change(again).version == from_change(real["update"]).version


def test_invalid_events_are_refused():
    with pytest.raises(InvalidEvent):
        encode_change({"operationType": "insert", "documentKey": {"_id": 1}})
    with pytest.raises(InvalidEvent):
        encode_change({"operationType": "insert", "_id": {"_data": "nx:1"}})
    with pytest.raises(UnsupportedEvent):
        encode_change({"operationType": "createIndexes", "_id": {"_data": "nx:2"}})


# --- nx-27017 shape -------------------------------------------------------------------


def test_nx_insert_with_string_id():
    envelope = from_change(nx_event(1, "insert", "new1", {"_id": "new1", "a": 1}))
    assert (envelope.op, envelope.id, envelope.source) == (Operation.INSERT, "new1", "nx-27017")
    assert envelope.version == 1 << SLOT_BITS | 1
    assert envelope.doc == {"_id": "new1", "a": 1}
    assert envelope.cluster_time == dt.datetime(2026, 11, 25, 22, 0, 56, 708000, tzinfo=dt.UTC)


def test_nx_stringified_int_id_matches_the_document_id():
    """documentKey carries "7" where the document has 7: one canonical id for both."""
    envelope = from_change(nx_event(5, "insert", "7", {"_id": 7}))
    assert envelope.id == "~n:7"  # the number 7, apart from the string "7"
    assert from_change(nx_event(6, "delete", "7", {"_id": 7})).id == "~n:7"
    assert from_change(nx_event(7, "insert", "7", {"_id": "7"})).id == "7"


def test_nx_objectid_in_both_wrappings():
    oid = ObjectId("6b075a986ad432aee153e91d")
    wrapped = {"__neosqlite_objectid__": True, "id": str(oid)}
    envelope = from_change(nx_event(6, "insert", oid, {"_id": wrapped, "x": 1}))
    assert envelope.id == str(oid)
    assert envelope.doc == {"_id": {"$oid": str(oid)}, "x": 1}


def test_nx_delete_drops_the_pre_image():
    envelope = from_change(nx_event(4, "delete", "3", {"_id": "3", "a": 3}))
    assert (envelope.op, envelope.id, envelope.doc) == (Operation.DELETE, "3", None)


def test_nx_replace_arrives_as_update():
    envelope = from_change(nx_event(3, "update", "2", {"a": 200, "_id": "2"}))
    assert (envelope.op, envelope.doc) == (Operation.UPDATE, {"a": 200, "_id": "2"})


def test_nx_update_with_null_document_does_not_crash():
    envelope = from_change(nx_event(8, "update", "gone", None))
    assert (envelope.op, envelope.doc) == (Operation.UPDATE, None)


def test_nx_tokens_compare_as_numbers():
    assert "nx:9" > "nx:10"  # as text they do not sort
    assert nx_sequence({"_data": "nx:9"}) < nx_sequence({"_data": "nx:10"})
    assert event_version({"_data": "nx:9"}) < event_version({"_data": "nx:10"})


def test_nx_events_sharing_a_read_time_keep_token_order():
    same = dt.datetime(2026, 11, 25, 22, 0, 0)
    versions = [
        from_change(nx_event(n, "update", "d", {"_id": "d", "n": n}, read_at=same)).version
        for n in (9, 10, 11)
    ]
    assert versions == sorted(versions) and len(set(versions)) == 3


def test_nx_replayed_event_gets_the_same_version_despite_a_later_read_time():
    first = from_change(nx_event(42, "update", "d", {"_id": "d"}))
    later = dt.datetime(2026, 11, 26, 8, 0, 0)
    replayed = from_change(nx_event(42, "update", "d", {"_id": "d"}, read_at=later))
    assert replayed.cluster_time != first.cluster_time
    assert replayed.version == first.version


def test_nx_snapshot_sits_between_events_before_and_after_its_point():
    point = {"_data": "nx:5"}
    before = [event_version({"_data": f"nx:{n}"}) for n in range(1, 6)]
    after = event_version({"_data": "nx:6"})
    assert max(before) < sweep_version(point) < snapshot_version(point) < after
    assert sweep_version(point) == snapshot_version(point) - 1


def test_snapshot_envelopes_round_trip():
    point = {"_data": "nx:5"}
    document = {"_id": ObjectId(OID), "watched_time": 12.5, "at": dt.datetime(2026, 1, 1)}
    envelope = snapshot_envelope(document, start_token=point, db="media", coll="views")
    encoded = encode_envelope(envelope)
    decoded = decode_envelope(encoded.body)
    assert (decoded.op, decoded.id, decoded.version) == (
        Operation.SNAPSHOT,
        OID,
        snapshot_version(point),
    )
    assert encoded.message_id == f"snapshot:{snapshot_version(point)}:{OID}"
    end = encode_envelope(
        snapshot_end_envelope(start_token=point, db="media", coll="views", documents=1)
    )
    closing = decode_envelope(end.body)
    assert (closing.op, closing.id, closing.version) == (
        Operation.SNAPSHOT_END,
        None,
        sweep_version(point),
    )
    assert closing.doc == {"documents": 1}


@pytest.mark.parametrize(
    "document",
    [
        {"_id": "a", "at": {"$date": "2026-12-04T18:04:00.444000"}, "n": 1.5},  # nx-27017 date
        {"_id": "a", "marker": {"__neosqlite_objectid__": "yes", "id": "x"}},  # not a text map
        {"_id": "a", "at": {"$date": "2026-12-04T18:04:00Z"}, "bad": float("nan")},
        {"_id": "a", "keys": {1: "x"}, "nested": {"a": {"b": "c"}}},
        {"_id": ObjectId(OID), "when": dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "list": [1]},
    ],
)
def test_encoded_document_is_its_extended_json(document: dict[str, Any]) -> None:
    """The fast path (flat documents, text-only maps) writes what ``to_json_safe`` gives."""
    expected = orjson.dumps(to_json_safe(document), option=orjson.OPT_NON_STR_KEYS)
    assert orjson.dumps(encode_document(document)) == expected
