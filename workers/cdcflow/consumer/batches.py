"""Parse, clean, transform and enrich one batch of messages into warehouse rows.

Pure: bytes in, an Arrow table and a list of rejections out. Beam calls it once
per bundle (a bundle is one batch of up to ``batch_max_messages`` deliveries), so
the per-message work is only parsing the envelope; cleaning and enrichment run
column-wise in :mod:`cdcflow.transforms`.

What happens to each message:

* it cannot be read (encoding, JSON, schema, version, operation, collection) →
  rejected at stage ``parse`` with a reason from ``rules.MESSAGE_REASONS``;
* insert / update / replace / snapshot with a document → cleaned; a document that
  breaks a rejecting rule is rejected at stage ``clean``; the rest become rows;
* update / replace without a document (MongoDB's update lookup found it already
  deleted; its delete event follows) → acknowledged without a row, counted;
* delete → a tombstone row (``is_deleted = 1``) at the delete's version;
* snapshot_end → a sweep version for the sink (tombstones what the snapshot missed).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from pydantic import ValidationError

from cdcflow.events import ENVELOPE_VERSION, ChangeEnvelope, Operation, decode_envelope
from cdcflow.transforms import TIMESTAMP_TYPE, clean_documents

MAX_MESSAGE_BYTES = 17 * 1024 * 1024  # a 16 MB MongoDB document plus its envelope
ACCEPTED_CONTENT_TYPES = ("application/vnd.cdcflow.change+json", "application/json")
_MICROS = pa.timestamp("us", tz="UTC")
_VERSION_TYPE = pa.decimal128(38, 0)

ROW_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("video_id", pa.string()),
        ("user_id", pa.string()),
        ("device", pa.string()),
        ("country", pa.string()),
        ("started_at", TIMESTAMP_TYPE),
        ("updated_at", TIMESTAMP_TYPE),
        ("watched_time", pa.float64()),
        ("total_video_time", pa.float64()),
        ("completion_rate", pa.float64()),
        ("op", pa.string()),
        ("version", _VERSION_TYPE),
        ("is_deleted", pa.uint8()),
        ("cluster_time", _MICROS),
        ("captured_at", _MICROS),
    ]
)
"""Columns the consumer writes; ``loaded_at`` is added by the sink at insert time.
A test holds this equal to the table in ``warehouse/sql``."""


@dataclass(frozen=True)
class Rejection:
    index: int  # position of the message in its batch
    reason: str  # a rule code (cdcflow.rules) or a message reason code
    stage: str  # "parse" or "clean"
    detail: str
    doc_id: str | None = None  # known once the envelope was read
    version: int | None = None


@dataclass
class ProcessedBatch:
    rows: pa.Table
    rejections: list[Rejection] = field(default_factory=list)
    sweeps: list[int] = field(default_factory=list)
    ignored: Counter[str] = field(default_factory=Counter)
    fixes: Counter[str] = field(default_factory=Counter)
    messages: int = 0

    @property
    def rows_by_op(self) -> Counter[str]:
        return Counter(self.rows.column("op").to_pylist()) if self.rows.num_rows else Counter()


def _parse_error(error: ValidationError) -> tuple[str, str]:
    first = error.errors(include_url=False)[0]
    location = ".".join(str(part) for part in first.get("loc", ()))
    message = str(first.get("msg", "invalid"))
    if first.get("type") in ("json_invalid", "json_type"):
        return "malformed_json", message
    if location == "v":
        return (
            "unsupported_envelope_version",
            f"v={first.get('input')!r}, expected {ENVELOPE_VERSION}",
        )
    if location == "op":
        return "unknown_operation", f"op={first.get('input')!r}"
    return "invalid_envelope", f"{location or 'envelope'}: {message}"


def parse_message(
    body: bytes, content_type: str | None, collection: str
) -> ChangeEnvelope | Rejection:
    """The envelope of one message, or why it cannot be used (index filled by caller)."""
    if len(body) > MAX_MESSAGE_BYTES:
        return Rejection(-1, "message_too_large", "parse", f"{len(body)} bytes")
    if content_type and not content_type.startswith(ACCEPTED_CONTENT_TYPES):
        return Rejection(-1, "wrong_content_type", "parse", f"content type {content_type!r}")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as error:
        return Rejection(-1, "invalid_encoding", "parse", f"not UTF-8 at byte {error.start}")
    try:
        envelope = decode_envelope(body)
    except ValidationError as error:
        reason, detail = _parse_error(error)
        return Rejection(-1, reason, "parse", detail)
    if envelope.op is not Operation.SNAPSHOT_END and not envelope.id:
        return Rejection(-1, "missing_document_id", "parse", f"{envelope.op.value} without id")
    if envelope.ns.coll != collection:
        detail = f"event of {envelope.ns.db}.{envelope.ns.coll}"
        return Rejection(-1, "wrong_collection", "parse", detail, envelope.id, envelope.version)
    if envelope.op in (Operation.INSERT, Operation.SNAPSHOT) and envelope.doc is None:
        detail = f"{envelope.op.value} without doc"
        return Rejection(-1, "invalid_envelope", "parse", detail, envelope.id, envelope.version)
    return envelope


def _versions(values: Sequence[int]) -> pa.Array:
    return pa.array([decimal.Decimal(value) for value in values], _VERSION_TYPE)


def process_batch(
    bodies: Sequence[bytes], content_types: Sequence[str | None], *, collection: str
) -> ProcessedBatch:
    """Turn one batch of message bodies into rows, rejections, sweeps (see module doc)."""
    rejections: list[Rejection] = []
    ignored: Counter[str] = Counter()
    sweeps: list[int] = []
    documents: list[ChangeEnvelope] = []
    tombstones: list[ChangeEnvelope] = []
    doc_positions: list[int] = []
    for index, (body, content_type) in enumerate(zip(bodies, content_types, strict=True)):
        parsed = parse_message(body, content_type, collection)
        if isinstance(parsed, Rejection):
            rejections.append(dataclasses.replace(parsed, index=index))
        elif parsed.op is Operation.DELETE:
            tombstones.append(parsed)
        elif parsed.op is Operation.SNAPSHOT_END:
            sweeps.append(parsed.version)
        elif parsed.doc is None:
            ignored["update_without_document"] += 1
        else:
            documents.append(parsed)
            doc_positions.append(index)

    cleaned = clean_documents([envelope.doc for envelope in documents])
    for position, (reason, detail) in sorted(cleaned.rejected.items()):
        envelope = documents[position]
        rejections.append(
            Rejection(
                doc_positions[position], reason, "clean", detail, envelope.id, envelope.version
            )
        )
    kept = [documents[position] for position in cleaned.kept]

    rows = _rows(kept, cleaned.columns, tombstones)
    rejections.sort(key=lambda rejection: rejection.index)
    return ProcessedBatch(
        rows=rows,
        rejections=rejections,
        sweeps=sweeps,
        ignored=ignored,
        fixes=cleaned.fixes,
        messages=len(bodies),
    )


def _rows(
    kept: Sequence[ChangeEnvelope],
    columns: dict[str, pa.Array],
    tombstones: Sequence[ChangeEnvelope],
) -> pa.Table:
    envelopes = list(kept) + list(tombstones)
    deleted = len(tombstones)

    def padded(name: str, array: pa.Array, fill: Any) -> pa.Array:
        tail = pa.array([fill] * deleted, ROW_SCHEMA.field(name).type)
        return pa.concat_arrays([array.cast(ROW_SCHEMA.field(name).type), tail])

    data: dict[str, pa.Array] = {
        "doc_id": pa.array([envelope.id for envelope in envelopes], pa.string()),
        "video_id": padded("video_id", columns["video_id"], ""),
        "user_id": padded("user_id", columns["user_id"], ""),
        "device": padded("device", columns["device"], ""),
        "country": padded("country", columns["country"], ""),
        "started_at": padded("started_at", columns["started_at"], None),
        "updated_at": padded("updated_at", columns["updated_at"], None),
        "watched_time": padded("watched_time", columns["watched_time"], 0.0),
        "total_video_time": padded("total_video_time", columns["total_video_time"], 0.0),
        "completion_rate": padded("completion_rate", columns["completion_rate"], 0.0),
        "op": pa.array([envelope.op.value for envelope in envelopes], pa.string()),
        "version": _versions([envelope.version for envelope in envelopes]),
        "is_deleted": pa.array([0] * len(kept) + [1] * deleted, pa.uint8()),
        "cluster_time": pa.array([envelope.cluster_time for envelope in envelopes], _MICROS),
        "captured_at": pa.array([envelope.captured_at for envelope in envelopes], _MICROS),
    }
    return pa.Table.from_pydict(data, schema=ROW_SCHEMA)


def loaded_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
