"""A corpus of bad input: every kind of broken message or document we know of.

Each case is one message body (plus content type) and what the consumer must do
with it: dead-letter it with a specific reason, load it with a specific fix, or
acknowledge it without a row. Used by a unit test (the batch function alone) and
an integration test (the real broker and consumer, with good messages around).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import orjson

from cdcflow.events import CONTENT_TYPE, encode_change

COLLECTION = "corpus_views"


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    outcome: str  # "dead" | "fixed" | "loaded" | "ignored"
    reason: str = ""  # dead-letter reason, fix rule, or ignore reason
    content_type: str | None = CONTENT_TYPE
    doc_id: str = ""


_GOOD: dict[str, Any] = {
    "video_id": "vid_0007",
    "user_id": "user_9",
    "device": "web",
    "country": "FR",
    "started_at": dt.datetime(2026, 11, 25, 9, 30),
    "watched_time": 60,
    "total_video_time": 240,
}


def change(
    seq: int, doc_id: str, op: str = "insert", collection: str = COLLECTION, **fields: Any
) -> bytes:
    raw: dict[str, Any] = {
        "_id": {"_data": f"nx:{seq}"},
        "operationType": op,
        "clusterTime": dt.datetime(2026, 11, 25, 10, 0),
        "ns": {"db": "media", "coll": collection},
        "documentKey": {"_id": doc_id},
        "fullDocument": {"_id": doc_id, **_GOOD, **fields},
    }
    return encode_change(raw).body


def _envelope(seq: int, doc_id: str, **changes: Any) -> bytes:
    payload = orjson.loads(change(seq, doc_id))
    payload.update(changes)
    return orjson.dumps(payload)


def _without(seq: int, doc_id: str, key: str) -> bytes:
    payload = orjson.loads(change(seq, doc_id))
    payload.pop(key)
    return orjson.dumps(payload)


def _doc_without(seq: int, doc_id: str, field: str) -> bytes:
    payload = orjson.loads(change(seq, doc_id))
    payload["doc"].pop(field)
    return orjson.dumps(payload)


def _raw_doc(seq: int, doc_id: str, fragment: bytes) -> bytes:
    """An envelope whose doc is spliced in as raw JSON text (NaN literals, nesting)."""
    payload = orjson.loads(change(seq, doc_id))
    payload["doc"] = "__DOC__"
    return orjson.dumps(payload).replace(b'"__DOC__"', fragment)


def build() -> list[Case]:
    deep = (
        b'{"video_id":"v","user_id":"u","watched_time":1,"total_video_time":2,"x":'
        + (b'{"a":' * 5000 + b"1" + b"}" * 5000)
        + b"}"
    )
    huge = _envelope(
        90, "huge", doc={**orjson.loads(change(90, "huge"))["doc"], "pad": "x" * (18 << 20)}
    )
    cases = [
        # --- the message itself --------------------------------------------------------
        Case("truncated json", change(1, "c01")[:40], "dead", "malformed_json"),
        Case("empty body", b"", "dead", "malformed_json"),
        Case("not json at all", b"hello world", "dead", "malformed_json"),
        Case("latin-1 bytes", '{"café": "olé"}'.encode("latin-1"), "dead", "invalid_encoding"),
        Case(
            "utf-16 with bom",
            change(2, "c02").decode().encode("utf-16"),
            "dead",
            "invalid_encoding",
        ),
        Case("json array", b"[1, 2, 3]", "dead", "invalid_envelope"),
        Case("json string", b'"an event"', "dead", "invalid_envelope"),
        Case("deeply nested document", _raw_doc(3, "c03", deep), "dead", "malformed_json"),
        Case("oversized message", huge, "dead", "message_too_large"),
        Case("wrong content type", change(4, "c04"), "dead", "wrong_content_type", "text/plain"),
        Case("xml content type", change(5, "c05"), "dead", "wrong_content_type", "application/xml"),
        Case("unknown operation", _envelope(6, "c06", op="truncate"), "dead", "unknown_operation"),
        Case(
            "future envelope version",
            _envelope(7, "c07", v=3),
            "dead",
            "unsupported_envelope_version",
        ),
        Case("missing document id", _envelope(8, "c08", id=None), "dead", "missing_document_id"),
        Case(
            "event of another collection",
            change(9, "c09", collection="other"),
            "dead",
            "wrong_collection",
        ),
        Case("missing version", _without(10, "c10", "version"), "dead", "invalid_envelope"),
        Case(
            "version not a number",
            _envelope(11, "c11", version="latest"),
            "dead",
            "invalid_envelope",
        ),
        Case("negative version", _envelope(12, "c12", version="-3"), "dead", "invalid_envelope"),
        Case(
            "version over 128 bits",
            _envelope(13, "c13", version=str(1 << 129)),
            "dead",
            "invalid_envelope",
        ),
        Case(
            "unknown envelope field",
            _envelope(14, "c14", priority="high"),
            "dead",
            "invalid_envelope",
        ),
        Case("insert without document", _envelope(15, "c15", doc=None), "dead", "invalid_envelope"),
        Case("document is a list", _envelope(16, "c16", doc=[1, 2]), "dead", "invalid_envelope"),
        Case(
            "cluster time garbage",
            _envelope(17, "c17", cluster_time="yesterday"),
            "dead",
            "invalid_envelope",
        ),
        # --- the document --------------------------------------------------------------
        Case("missing video_id", _doc_without(20, "c20", "video_id"), "dead", "missing_field"),
        Case(
            "missing total_video_time",
            _doc_without(21, "c21", "total_video_time"),
            "dead",
            "missing_field",
        ),
        Case("null watched_time", change(22, "c22", watched_time=None), "dead", "missing_field"),
        Case(
            "text that is not a number",
            change(23, "c23", watched_time="two minutes"),
            "dead",
            "number_not_numeric",
        ),
        Case(
            "number as boolean",
            change(24, "c24", total_video_time=True),
            "dead",
            "number_is_boolean",
        ),
        Case(
            "NaN watched_time",
            change(25, "c25", watched_time=float("nan")),
            "dead",
            "number_not_finite",
        ),
        Case(
            "Infinity total",
            change(26, "c26", total_video_time=float("inf")),
            "dead",
            "number_not_finite",
        ),
        Case(
            "NaN literal in JSON",
            _raw_doc(
                27, "c27", b'{"video_id":"v","user_id":"u","watched_time":NaN,"total_video_time":9}'
            ),
            "dead",
            "number_not_finite",
        ),
        Case(
            "zero total_video_time",
            change(28, "c28", total_video_time=0),
            "dead",
            "total_video_time_not_positive",
        ),
        Case(
            "negative total_video_time",
            change(29, "c29", total_video_time=-240),
            "dead",
            "total_video_time_not_positive",
        ),
        Case(
            "negative watched_time",
            change(30, "c30", watched_time=-1),
            "dead",
            "watched_time_negative",
        ),
        Case("blank user_id", change(31, "c31", user_id="  "), "dead", "blank_key"),
        Case("object as video_id", change(32, "c32", video_id={"id": 7}), "dead", "key_wrong_type"),
        Case("video_id too long", change(33, "c33", video_id="v" * 1000), "dead", "key_too_long"),
        Case(
            "number written as text",
            change(40, "c40", watched_time=" 75 "),
            "fixed",
            "number_as_text",
            doc_id="c40",
        ),
        Case(
            "watched longer than the video",
            change(41, "c41", watched_time=999),
            "fixed",
            "watched_time_exceeds_total",
            doc_id="c41",
        ),
        Case(
            "numeric video_id",
            change(42, "c42", video_id=1234),
            "fixed",
            "key_not_string",
            doc_id="c42",
        ),
        Case(
            "padded ids",
            change(43, "c43", user_id=" user_9 "),
            "fixed",
            "padded_text",
            doc_id="c43",
        ),
        Case(
            "unknown device",
            change(44, "c44", device="fridge"),
            "fixed",
            "device_unknown",
            doc_id="c44",
        ),
        Case(
            "country name instead of code",
            change(45, "c45", country="France"),
            "fixed",
            "country_invalid",
            doc_id="c45",
        ),
        Case(
            "unparseable timestamp",
            change(46, "c46", started_at="last tuesday"),
            "fixed",
            "timestamp_invalid",
            doc_id="c46",
        ),
        Case(
            "update whose document was deleted",
            _envelope(47, "c47", op="update", doc=None, update={"updated": ["x"], "removed": []}),
            "ignored",
            "update_document_gone",
        ),
    ]
    return cases


CASES = build()
