"""Resume tokens and the version of a change: source order, stable under replay.

The warehouse keeps, per document, the row with the highest
``version`` (ClickHouse ``ReplacingMergeTree``), so the version must follow the
source's own order and be the same every time an event is replayed::

    version = position << 32 | slot

``position`` is ``t << 32 | i`` of the bson ``Timestamp`` on MongoDB, or N on
nx-27017. ``slot`` orders what shares a position: an event's index inside its
transaction plus one (read from the resume token, so the two updates of one
transaction stay ordered). A worker's clock is never used.

The snapshot boundary. A snapshot starts from a fresh stream's start token and
reads the collection after it. What that token promises differs by source:

* real MongoDB: a **high-water mark** at cluster time P. "Everything before P
  was returned" is all it says: the next event may carry P itself (a stream
  opens one tick after the last write, and all events of one transaction share
  one cluster time);
* nx-27017: ``nx:<N>``, the last change already made; the next one is N + 1;
* an event's own token (not used by the producer, accepted for completeness):
  the next event is the same transaction's next operation, or later.

:func:`first_event_version` is the lowest version any event delivered after
the token can have. The snapshot's documents get that minus one and its sweep
(tombstones for documents the snapshot did not see) minus two: strictly below
every event the stream can still deliver, so a change at P always beats the
snapshot's possibly older read of that document and is never swept, and
strictly above every state before the token (event slots stop two below the
top of the slot range, so ``position << 32`` minus one or two is still above
every event of the position before).

Tokens come in three shapes, each decoded by its own layout:
real MongoDB's hex KeyString, version 1 (MongoDB 4.2 to 6.0) and version 2 (7.0
on), both ``clusterTime, version, tokenType, txnOpIndex, fromInvalidate, uuid,
eventIdentifier``; the pre-4.2 version 0 (``clusterTime, version,
applyOpsIndex, fromInvalidate, uuid, documentKey``, no tokenType); and
nx-27017's ``{"_data": "nx:<N>"}`` with N rising and gapless.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SLOT_BITS = 32
SLOT_MASK = (1 << SLOT_BITS) - 1
MAX_EVENT_SLOT = (1 << SLOT_BITS) - 3  # two slots above it stay free (see the module doc)
# The highest version a row can hold: the consumer's Arrow column is decimal128(38, 0)
# (the table's UInt128 goes higher). Events use 96 bits at most; anything above this
# is rejected when the message is parsed, never left to fail a whole batch's rows.
MAX_VERSION = 10**38 - 1
KNOWN_TOKEN_VERSIONS = (0, 1, 2)
HIGH_WATER_MARK = 0  # tokenType of a post-batch / start token
EVENT_TOKEN = 128  # tokenType of an event's own token
_NX_PREFIX = "nx:"

Token = dict[str, Any]
"""A resume token as the server gives it (``{"_data": ...}``): the one alias the producer's
stream, outbox and offsets share."""


class InvalidEvent(ValueError):
    """A change event that cannot become a message; ``reason`` is its failed-queue code."""

    def __init__(self, message: str, *, reason: str = "invalid_event") -> None:
        super().__init__(message)
        self.reason = reason


def token_data(token: Any) -> str:
    """The ``_data`` string of a resume token."""
    if isinstance(token, dict) and isinstance(token.get("_data"), str):
        return str(token["_data"])
    raise InvalidEvent(f"resume token without _data: {token!r}", reason="missing_resume_token")


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
_KS_BOOL_FALSE = 0x6E
_KS_BOOL_TRUE = 0x6F
_KS_TIMESTAMP = 0x82


class _KeyStringReader:
    """Reads the leading fields of a MongoDB resume token (KeyString-encoded)."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.at = 0

    def _byte(self) -> int:
        if self.at >= len(self.raw):
            raise InvalidEvent("resume token ends early")
        return self.raw[self.at]

    def timestamp(self) -> tuple[int, int]:
        if self._byte() != _KS_TIMESTAMP or len(self.raw) < self.at + 9:
            raise InvalidEvent("resume token does not start with a cluster time")
        t = int.from_bytes(self.raw[self.at + 1 : self.at + 5], "big")
        i = int.from_bytes(self.raw[self.at + 5 : self.at + 9], "big")
        self.at += 9
        return t, i

    def small_int(self, what: str) -> int:
        kind = self._byte()
        if kind == _KS_NUMERIC_ZERO:
            self.at += 1
            return 0
        if _KS_POSITIVE_1_BYTE_INT <= kind <= _KS_POSITIVE_8_BYTE_INT:
            size = kind - _KS_POSITIVE_1_BYTE_INT + 1
            if len(self.raw) < self.at + 1 + size:
                raise InvalidEvent(f"resume token ends inside {what}")
            value = int.from_bytes(self.raw[self.at + 1 : self.at + 1 + size], "big") >> 1
            self.at += 1 + size
            return value
        raise InvalidEvent(f"resume token: {what} is not a small integer (type 0x{kind:02x})")

    def boolean(self, what: str) -> bool:
        kind = self._byte()
        if kind not in (_KS_BOOL_FALSE, _KS_BOOL_TRUE):
            raise InvalidEvent(f"resume token: {what} is not a boolean (type 0x{kind:02x})")
        self.at += 1
        return kind == _KS_BOOL_TRUE


@dataclass(frozen=True)
class MongoToken:
    """The ordering fields of a real MongoDB resume token."""

    t: int
    i: int
    version: int  # token layout: 0 (before 4.2), 1 (4.2 to 6.0), 2 (7.0 on)
    token_type: int  # HIGH_WATER_MARK or EVENT_TOKEN (version 0: always an event)
    txn_op_index: int  # the operation's index inside its transaction
    from_invalidate: bool

    @property
    def position(self) -> int:
        return self.t << 32 | self.i

    @property
    def is_high_water_mark(self) -> bool:
        return self.token_type == HIGH_WATER_MARK


def decode_mongo_token(token: Any) -> MongoToken:
    """Decode a real MongoDB resume token by the layout its version field names.

    Raises :class:`InvalidEvent` for a token that is not hex KeyString, that ends
    early, whose fields do not have their layout's types, or whose version this
    code does not know: ordering by a misread field would silently reorder
    states, so an unknown layout is an error, never a guess.
    """
    data = token_data(token)
    try:
        raw = bytes.fromhex(data)
    except ValueError:
        raise InvalidEvent(f"resume token is not hex KeyString: {data[:40]!r}") from None
    reader = _KeyStringReader(raw)
    t, i = reader.timestamp()
    version = reader.small_int("the token version")
    if version not in KNOWN_TOKEN_VERSIONS:
        raise InvalidEvent(
            f"resume token version {version} is not one cdcflow reads "
            f"({', '.join(map(str, KNOWN_TOKEN_VERSIONS))}): upgrade cdcflow",
            reason="unknown_token_version",
        )
    if version == 0:
        token_type = EVENT_TOKEN
    else:
        token_type = reader.small_int("the token type")
        if token_type not in (HIGH_WATER_MARK, EVENT_TOKEN):
            raise InvalidEvent(f"resume token type {token_type} is neither 0 nor 128")
    txn_op_index = reader.small_int("txnOpIndex")
    from_invalidate = reader.boolean("fromInvalidate")
    return MongoToken(t, i, version, token_type, txn_op_index, from_invalidate)


def parse_mongo_token(token: Any) -> tuple[int, int, int]:
    """(t, i, txnOpIndex) of a real MongoDB resume token (see :func:`decode_mongo_token`)."""
    decoded = decode_mongo_token(token)
    return decoded.t, decoded.i, decoded.txn_op_index


def token_position(token: Any) -> int:
    """The source-order position of a token: N on nx-27017, t << 32 | i on MongoDB."""
    if is_nx_token(token):
        return nx_sequence(token)
    return decode_mongo_token(token).position


def _event_slot(txn_op_index: int) -> int:
    if txn_op_index + 1 > MAX_EVENT_SLOT:
        raise InvalidEvent(f"txnOpIndex {txn_op_index} is beyond what a version can order")
    return txn_op_index + 1


def event_version(token: Any) -> int:
    """Version of the change event the token belongs to."""
    if is_nx_token(token):
        return nx_sequence(token) << SLOT_BITS | 1
    decoded = decode_mongo_token(token)
    if decoded.is_high_water_mark:
        raise InvalidEvent("a high-water-mark token is not the token of an event")
    return decoded.position << SLOT_BITS | _event_slot(decoded.txn_op_index)


def first_event_version(token: Any) -> int:
    """The lowest version an event delivered after ``token`` can have (module doc)."""
    if is_nx_token(token):
        return (nx_sequence(token) + 1) << SLOT_BITS | 1
    decoded = decode_mongo_token(token)
    if decoded.is_high_water_mark:
        return decoded.position << SLOT_BITS | _event_slot(0)
    return decoded.position << SLOT_BITS | _event_slot(decoded.txn_op_index + 1)


def snapshot_version(token: Any) -> int:
    """Version of documents read by a snapshot that began at ``token``."""
    return first_event_version(token) - 1


def sweep_version(token: Any) -> int:
    """Version of the tombstones a snapshot that began at ``token`` writes."""
    return first_event_version(token) - 2
