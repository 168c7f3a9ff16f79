"""Resume tokens and the version of a change: source order, stable under replay.

The warehouse keeps, per document, the row with the highest
``version`` (ClickHouse ``ReplacingMergeTree``), so the version must follow the
source's own order and be the same every time an event is replayed::

    version = position << 32 | slot

``position`` is ``t << 32 | i`` of the bson ``Timestamp`` on MongoDB, or N on
nx-27017. ``slot`` orders things that share a position: an event's index inside
its transaction plus one (read from the resume token, so the two updates of one
transaction stay ordered), and two slots above every event for a snapshot taken
at that position: ``SWEEP_SLOT`` for the tombstones that remove documents
deleted while the stream was not looking, then ``SNAPSHOT_SLOT`` for the
documents the snapshot read. Events after the snapshot point have a higher
position, so they win; everything before it loses. A worker's clock is never used.

Tokens come in two shapes: real MongoDB's hex KeyString (its leading fields read
here: cluster time, token version, type, index in the transaction) and
nx-27017's ``{"_data": "nx:<N>"}`` with N rising and gapless.
"""

from __future__ import annotations

from typing import Any

SLOT_BITS = 32
SWEEP_SLOT = (1 << SLOT_BITS) - 2
SNAPSHOT_SLOT = (1 << SLOT_BITS) - 1
MAX_VERSION = (1 << 128) - 1
_NX_PREFIX = "nx:"


class InvalidEvent(ValueError):
    """A change event that lacks what every event must have (token, key ...)."""


def token_data(token: Any) -> str:
    """The ``_data`` string of a resume token."""
    if isinstance(token, dict) and isinstance(token.get("_data"), str):
        return str(token["_data"])
    raise InvalidEvent(f"resume token without _data: {token!r}")


def is_nx_token(token: Any) -> bool:
    return isinstance(token, dict) and str(token.get("_data", "")).startswith(_NX_PREFIX)


def nx_sequence(token: Any) -> int:
    """N of an nx-27017 token ``nx:<N>`` (compare as int: "nx:9" > "nx:10" as text)."""
    data = token_data(token)
    if not data.startswith(_NX_PREFIX) or not data[len(_NX_PREFIX) :].isdigit():
        raise InvalidEvent(f"not an nx-27017 token: {data!r}")
    return int(data[len(_NX_PREFIX) :])


# KeyString type bytes (mongo/src/mongo/db/storage/key_string.cpp, CType).
_KS_NUMERIC_ZERO = 0x29
_KS_POSITIVE_1_BYTE_INT = 0x2B
_KS_POSITIVE_8_BYTE_INT = 0x32
_KS_TIMESTAMP = 0x82


class _KeyStringReader:
    """Reads the leading fields of a MongoDB resume token (KeyString-encoded)."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.at = 0

    def timestamp(self) -> tuple[int, int]:
        if self.raw[self.at] != _KS_TIMESTAMP:
            raise InvalidEvent("resume token does not start with a cluster time")
        t = int.from_bytes(self.raw[self.at + 1 : self.at + 5], "big")
        i = int.from_bytes(self.raw[self.at + 5 : self.at + 9], "big")
        self.at += 9
        return t, i

    def small_int(self) -> int:
        kind = self.raw[self.at]
        if kind == _KS_NUMERIC_ZERO:
            self.at += 1
            return 0
        if _KS_POSITIVE_1_BYTE_INT <= kind <= _KS_POSITIVE_8_BYTE_INT:
            size = kind - _KS_POSITIVE_1_BYTE_INT + 1
            value = int.from_bytes(self.raw[self.at + 1 : self.at + 1 + size], "big") >> 1
            self.at += 1 + size
            return value
        raise InvalidEvent(f"unexpected KeyString type 0x{kind:02x} in resume token")


def parse_mongo_token(token: Any) -> tuple[int, int, int]:
    """(t, i, txnOpIndex) from a real MongoDB resume token.

    Token layout (v2, MongoDB 4.2+): clusterTime, version, tokenType, txnOpIndex,
    fromInvalidate, uuid, eventIdentifier. Version-1 tokens have no tokenType.
    The timestamp alone is reliable on every version; if the rest cannot be read
    the index counts as 0.
    """
    raw = bytes.fromhex(token_data(token))
    reader = _KeyStringReader(raw)
    t, i = reader.timestamp()
    try:
        version = reader.small_int()
        if version >= 2:
            reader.small_int()  # tokenType: 0 high-water mark, 128 event
        return t, i, reader.small_int()
    except (InvalidEvent, IndexError):
        return t, i, 0


def token_position(token: Any) -> int:
    """The source-order position of a token: N on nx-27017, t << 32 | i on MongoDB."""
    if is_nx_token(token):
        return nx_sequence(token)
    t, i, _ = parse_mongo_token(token)
    return t << 32 | i


def event_version(token: Any) -> int:
    """Version of the change event the token belongs to."""
    if is_nx_token(token):
        return nx_sequence(token) << SLOT_BITS | 1
    t, i, txn_op_index = parse_mongo_token(token)
    slot = min(txn_op_index + 1, SWEEP_SLOT - 1)
    return (t << 32 | i) << SLOT_BITS | slot


def snapshot_version(token: Any) -> int:
    """Version of documents read by a snapshot that began at ``token``."""
    return token_position(token) << SLOT_BITS | SNAPSHOT_SLOT


def sweep_version(token: Any) -> int:
    """Version of the tombstones a snapshot that began at ``token`` writes."""
    return token_position(token) << SLOT_BITS | SWEEP_SLOT
