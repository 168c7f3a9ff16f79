"""One batch of messages → rows, rejections with reasons, sweeps (no broker needed)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

from cdcflow.consumer.batches import MAX_MESSAGE_BYTES, ROW_SCHEMA, process_batch
from cdcflow.events import (
    CONTENT_TYPE,
    encode_change,
    encode_envelope,
    snapshot_end_envelope,
    snapshot_envelope,
)
from cdcflow.versions import sweep_version

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


def run(*bodies: bytes, content_type: str | None = CONTENT_TYPE) -> Any:
    return process_batch(list(bodies), [content_type] * len(bodies), collection=COLLECTION)


def test_changes_become_rows_with_version_and_delete_flag() -> None:
    batch = run(change(1, "insert"), change(2, "update", watched_time=200), change(3, "delete"))
    assert batch.rows.schema == ROW_SCHEMA
    rows = batch.rows.to_pylist()
    assert [row["op"] for row in rows] == ["insert", "update", "delete"]
    assert [row["is_deleted"] for row in rows] == [0, 0, 1]
    assert [int(row["version"]) for row in rows] == [1 << 32 | 1, 2 << 32 | 1, 3 << 32 | 1]
    assert rows[1]["completion_rate"] == 200 / 300 * 100
    assert rows[2]["doc_id"] == "d1" and rows[2]["video_id"] == ""
    assert batch.rejections == []


def test_update_whose_document_is_gone_is_ignored_not_resurrected() -> None:
    raw = {
        "_id": {"_data": "nx:5"},
        "operationType": "update",
        "ns": {"db": "media", "coll": COLLECTION},
        "documentKey": {"_id": "d9"},
        "fullDocument": None,
    }
    batch = run(encode_change(raw).body)
    assert batch.rows.num_rows == 0
    assert batch.ignored == {"update_document_gone": 1}


def test_snapshot_rows_and_sweep() -> None:
    token = {"_data": "nx:40"}
    snap = encode_envelope(
        snapshot_envelope({"_id": "s1", **GOOD}, start_token=token, db="media", coll=COLLECTION)
    ).body
    end = encode_envelope(
        snapshot_end_envelope(start_token=token, db="media", coll=COLLECTION, documents=1)
    ).body
    batch = run(snap, end)
    assert batch.rows.column("op").to_pylist() == ["snapshot"]
    assert batch.sweeps == [sweep_version(token)]


def test_poison_messages_are_rejected_with_reasons_and_good_ones_kept() -> None:
    good_before, good_after = change(1, doc_id="a"), change(9, doc_id="b")
    envelope = orjson.loads(change(2))
    bodies = [
        good_before,
        b"{not json",
        b"\xff\xfe\x00garbage",
        orjson.dumps({**envelope, "v": 3}),
        orjson.dumps({**envelope, "op": "truncate"}),
        orjson.dumps({**envelope, "id": None}),
        orjson.dumps({**envelope, "ns": {"db": "media", "coll": "other"}}),
        orjson.dumps({k: v for k, v in envelope.items() if k != "version"}),
        change(3, watched_time="two minutes"),
        b"x" * (MAX_MESSAGE_BYTES + 1),
        good_after,
    ]
    batch = run(*bodies)
    reasons = {rejection.index: rejection.reason for rejection in batch.rejections}
    assert reasons == {
        1: "malformed_json",
        2: "invalid_encoding",
        3: "unsupported_envelope_version",
        4: "unknown_operation",
        5: "missing_document_id",
        6: "wrong_collection",
        7: "invalid_envelope",
        8: "number_not_numeric",
        9: "message_too_large",
    }
    assert {r.stage for r in batch.rejections if r.index == 8} == {"clean"}
    assert batch.rows.column("doc_id").to_pylist() == ["a", "b"]


def test_wrong_content_type_is_rejected() -> None:
    batch = run(change(1), content_type="text/plain")
    assert [r.reason for r in batch.rejections] == ["wrong_content_type"]


def test_plain_json_content_type_and_missing_content_type_are_accepted() -> None:
    assert run(change(1), content_type="application/json").rows.num_rows == 1
    assert run(change(1), content_type=None).rows.num_rows == 1
