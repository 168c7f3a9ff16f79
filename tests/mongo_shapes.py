"""Real-MongoDB-shaped events beyond the fixtures: tokens and events built byte-exact.

MongoDB itself cannot run on this machine (no server binary is installable), so the
cases the fixtures do not hold (an update in the same transaction as the fixture's
insert at the high-water mark, a drop) are built here in the fixtures' own layout. A
test checks the builder against the fixture's tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bson import ObjectId, Timestamp, json_util

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
COLLECTION_UUID = bytes.fromhex("3B5F6D0E9C1A4E2B8F472D9A61C0B7E4")


def load(name: str) -> dict[str, dict[str, Any]]:
    """Fixture events of one file by label."""
    lines = (FIXTURES / name).read_text().splitlines()
    return {
        line["label"]: line["event"] for line in (json_util.loads(text) for text in lines if text)
    }


def _small_int(value: int) -> bytes:
    if value == 0:
        return b"\x29"
    encoded = value << 1
    size = max(1, (encoded.bit_length() + 7) // 8)
    return bytes((0x2B + size - 1,)) + encoded.to_bytes(size, "big")


def v2_event_token(
    t: int, i: int, operation: str, oid: str, txn_op_index: int = 0
) -> dict[str, str]:
    """A version-2 event token (MongoDB 7.0+) with an ObjectId documentKey."""
    return {"_data": _v2_data(t, i, operation, oid, txn_op_index)}


def _v2_data(t: int, i: int, operation: str, oid: str, txn_op_index: int) -> str:
    raw = b"".join(
        (
            b"\x82",
            t.to_bytes(4, "big"),
            i.to_bytes(4, "big"),
            _small_int(2),
            _small_int(128),
            _small_int(txn_op_index),
            b"\x6e",  # fromInvalidate false
            b"\x5a\x10\x04",
            COLLECTION_UUID,
            b"\x46",  # eventIdentifier {operationType, documentKey: {_id}}
            b"\x3c", b"operationType\x00", b"\x3c", operation.encode(), b"\x00",
            b"\x46", b"documentKey\x00", b"\x46", b"\x64", b"_id\x00", b"\x64", bytes.fromhex(oid),
            b"\x00\x00\x04",
        )
    )  # fmt: skip
    return raw.hex().upper()


def change(
    operation: str,
    t: int,
    i: int,
    oid: str,
    *,
    txn_op_index: int = 0,
    full: dict[str, Any] | None = None,
    coll: str = "viewing_logs",
    **extra: Any,
) -> dict[str, Any]:
    """A real-MongoDB-shaped change event (bson types, as pymongo hands it over)."""
    event: dict[str, Any] = {
        "_id": {"_data": _v2_data(t, i, operation, oid, txn_op_index)},
        "operationType": operation,
        "clusterTime": Timestamp(t, i),
        "ns": {"db": "media", "coll": coll},
        "documentKey": {"_id": ObjectId(oid)},
    }
    if full is not None:
        event["fullDocument"] = full
    event.update(extra)
    return event
