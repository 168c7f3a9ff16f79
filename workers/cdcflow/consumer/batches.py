"""Parse, clean, transform and enrich one batch of messages into warehouse rows.

Pure: bytes in, an Arrow table and a list of rejections out. Beam calls it once
per bundle (a bundle is one batch of up to ``batch_max_messages`` deliveries), so
the per-message work is only parsing the envelope; cleaning and enrichment run
column-wise in :mod:`cdcflow.transforms`.

What happens to each message (every message has exactly one outcome: a row, a
rejection for the failed queue, or an ignored reason from ``rules.IGNORED_REASONS``;
:attr:`ProcessedBatch.accounted` checks it):

* it cannot be read (encoding, JSON, schema, version, operation, collection), or
  its operation contradicts its document or its AMQP headers → rejected at stage
  ``parse`` with a reason from ``rules.MESSAGE_REASONS``;
* insert / update / replace / snapshot with a document → cleaned; a document that
  breaks a rejecting rule is rejected at stage ``clean``; the rest become rows;
* a document whose cleaning or conversion fails in any other way (any exception),
  or a delete whose tombstone row cannot be built → rejected alone at stage
  ``transform`` (``transform_error``), the rest of the batch loads; an exception
  while parsing one message likewise rejects only it (``invalid_envelope``);
* update without a document whose update description says it happened (MongoDB's
  update lookup found it already deleted; its delete event follows) → acknowledged
  without a row, counted as ``update_document_gone``;
* delete → a tombstone row (``is_deleted = 1``) at the delete's version;
* snapshot_end, drop → a sweep version for the sink (tombstones what the snapshot
  missed, or every row older than the drop), counted as ignored (no row of its own).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ValidationError

from cdcflow.events import (
    READABLE_ENVELOPE_VERSIONS,
    ChangeEnvelope,
    Operation,
    decode_envelope,
    fast_envelope,
)
from cdcflow.packing import H_CHANGES, bulk_parse, is_batch, unpack
from cdcflow.transforms import TIMESTAMP_TYPE, CleanBatch, clean_documents

log = logging.getLogger(__name__)

H_OP = "x-cdcflow-op"
H_VERSION = "x-cdcflow-version"

MAX_MESSAGE_BYTES = 17 * 1024 * 1024  # a 16 MB MongoDB document plus its envelope
ACCEPTED_CONTENT_TYPES = ("application/vnd.cdcflow.change+json", "application/json")
"""Content types of a one-change message (a batch message is recognized by
:func:`cdcflow.packing.is_batch` and unpacked first)."""
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
    index: int  # position of the message in its bundle
    reason: str  # a rule code (cdcflow.rules) or a message reason code
    stage: str  # "parse", "clean" or "transform"
    detail: str
    doc_id: str | None = None  # known once the envelope was read
    version: int | None = None
    # Inside a batch message: the change's position, and the bytes that stand for it
    # in the failed queue (its own envelope, or the fragment of a message cut short).
    # None: the rejection is about the whole message, which is dead-lettered as is.
    position: int | None = None
    body: bytes | None = None
    message_id: str | None = None  # the change's own id, when it could be read


@dataclass
class ProcessedBatch:
    rows: pa.Table
    rejections: list[Rejection] = field(default_factory=list)
    sweeps: list[int] = field(default_factory=list)
    ignored: Counter[str] = field(default_factory=Counter)
    fixes: Counter[str] = field(default_factory=Counter)
    messages: int = 0
    # Outcomes owed: one per change read, plus one per message (or cut-short tail of
    # one) that could not be read at all. Equals ``messages`` without batching.
    changes: int = 0

    @property
    def accounted(self) -> int:
        """Outcomes: rows + rejections + ignored (equals ``changes``)."""
        return int(self.rows.num_rows) + len(self.rejections) + sum(self.ignored.values())

    @property
    def rows_by_op(self) -> Counter[str]:
        if not self.rows.num_rows:
            return Counter()
        counts = pc.value_counts(self.rows.column("op"))  # column-wise: no Python per row
        return Counter(
            dict(
                zip(
                    counts.field("values").to_pylist(),
                    counts.field("counts").to_pylist(),
                    strict=True,
                )
            )
        )


def _parse_error(error: ValidationError) -> tuple[str, str]:
    first = error.errors(include_url=False)[0]
    location = ".".join(str(part) for part in first.get("loc", ()))
    message = str(first.get("msg", "invalid"))
    if first.get("type") in ("json_invalid", "json_type"):
        return "malformed_json", message
    if location == "v":
        if first.get("type") == "missing":
            return "missing_envelope_version", "the envelope has no v (schema version)"
        readable = " or ".join(map(str, READABLE_ENVELOPE_VERSIONS))
        return "unsupported_envelope_version", f"v={first.get('input')!r}, expected {readable}"
    if location == "op":
        return "unknown_operation", f"op={first.get('input')!r}"
    return "invalid_envelope", f"{location or 'envelope'}: {message}"


_UNPARSED = object()


def _read_envelope(body: bytes, parsed: Any = _UNPARSED) -> ChangeEnvelope | Rejection:
    """The envelope of one change's JSON; ``parsed`` is that JSON already parsed (the
    bulk parse), when it is. Only what the fast check does not accept outright is
    validated by the schema, which accepts it or names what is wrong."""
    if parsed is _UNPARSED:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = _UNPARSED
    if parsed is not _UNPARSED:
        envelope = fast_envelope(parsed)
        if envelope is not None:
            return envelope
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as error:
        return Rejection(-1, "invalid_encoding", "parse", f"not UTF-8 at byte {error.start}")
    try:
        return decode_envelope(body)
    except ValidationError as error:
        reason, detail = _parse_error(error)
        return Rejection(-1, reason, "parse", detail)
    except Exception as error:  # whatever the parser raises, it is this message's fault
        return Rejection(-1, "invalid_envelope", "parse", f"{type(error).__name__}: {error}"[:300])


def parse_message(
    body: bytes,
    content_type: str | None,
    collection: str,
    headers: Mapping[str, Any] | None = None,
    parsed: Any = _UNPARSED,
) -> ChangeEnvelope | Rejection:
    """The envelope of one change, or why it cannot be used (index filled by caller).

    ``headers`` are the AMQP headers of a one-change message: when they carry the
    operation or the version (the producer always sets both), they must agree with
    the body. A change inside a batch message has none of its own.
    """
    if len(body) > MAX_MESSAGE_BYTES:
        return Rejection(-1, "message_too_large", "parse", f"{len(body)} bytes")
    if content_type and not content_type.startswith(ACCEPTED_CONTENT_TYPES):
        return Rejection(-1, "wrong_content_type", "parse", f"content type {content_type!r}")
    envelope = _read_envelope(body, parsed)
    if isinstance(envelope, Rejection):
        return envelope
    op, doc_id, version = envelope.op, envelope.id, envelope.version

    def reject(reason: str, detail: str) -> Rejection:
        return Rejection(-1, reason, "parse", detail, doc_id, version)

    if op not in (Operation.SNAPSHOT_END, Operation.DROP) and not doc_id:
        return Rejection(-1, "missing_document_id", "parse", f"{op.value} without id")
    if envelope.ns.coll != collection:
        return reject("wrong_collection", f"event of {envelope.ns.db}.{envelope.ns.coll}")
    if headers:
        header_op = headers.get(H_OP)
        if header_op is not None and _text(header_op) != op.value:
            return reject("operation_mismatch", f"header op {_text(header_op)!r}, body op {op}")
        header_version = headers.get(H_VERSION)
        if header_version is not None and _text(header_version) != str(version):
            return reject(
                "version_mismatch", f"header version {_text(header_version)}, body {version}"
            )
    if op in (Operation.INSERT, Operation.SNAPSHOT) and envelope.doc is None:
        return reject("invalid_envelope", f"{op.value} without doc")
    if op is Operation.DELETE and envelope.doc is not None:
        return reject("operation_mismatch", "a delete that carries a document")
    if op is Operation.REPLACE and envelope.doc is None:
        return reject("replace_without_document", "a replace without its document")
    if op is Operation.UPDATE and envelope.doc is None and envelope.v >= 2 and not envelope.update:
        return reject("update_without_document", "an update with neither a document nor its fields")
    return envelope


def _parse_contained(
    body: bytes,
    content_type: str | None,
    collection: str,
    headers: Mapping[str, Any] | None = None,
    parsed: Any = _UNPARSED,
) -> ChangeEnvelope | Rejection:
    """:func:`parse_message`, with whatever it raises made this message's rejection:
    an exception out of parsing would fail the bundle, and the broker would in the end
    dead-letter every message of it, the valid ones too."""
    try:
        return parse_message(body, content_type, collection, headers, parsed)
    except Exception as error:
        detail = f"{type(error).__name__}: {error}"[:300]
        return Rejection(-1, "invalid_envelope", "parse", detail)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _versions(values: Sequence[int]) -> pa.Array:
    return pa.array([decimal.Decimal(value) for value in values], _VERSION_TYPE)


def process_batch(
    bodies: Sequence[bytes],
    content_types: Sequence[str | None],
    *,
    collection: str,
    headers: Sequence[Mapping[str, Any] | None] | None = None,
) -> ProcessedBatch:
    """Turn one bundle of message bodies into rows, rejections, sweeps (see module doc).

    A batch message (:mod:`cdcflow.packing`) is unpacked into its changes first;
    every later step, and every rejection, is per change.
    """
    rejections: list[Rejection] = []
    ignored: Counter[str] = Counter()
    sweeps: list[int] = []
    documents: list[ChangeEnvelope] = []
    tombstones: list[ChangeEnvelope] = []
    doc_positions: list[tuple[int, int | None, bytes | None]] = []
    tombstone_positions: list[tuple[int, int | None, bytes | None]] = []
    all_headers = headers if headers is not None else [None] * len(bodies)
    changes = 0
    for index, position, raw, parsed in _changes(bodies, content_types, all_headers, collection):
        changes += 1
        if isinstance(parsed, Rejection):
            rejections.append(
                dataclasses.replace(
                    parsed, index=index, position=parsed.position if position is None else position
                )
            )
        elif parsed.op is Operation.DELETE:
            tombstones.append(parsed)
            tombstone_positions.append((index, position, raw))
        elif parsed.op is Operation.SNAPSHOT_END:
            sweeps.append(parsed.version)
            ignored["snapshot_end"] += 1
        elif parsed.op is Operation.DROP:
            sweeps.append(parsed.version)
            ignored["drop_mirrored"] += 1
        elif parsed.doc is None:
            ignored["update_document_gone"] += 1
        else:
            documents.append(parsed)
            doc_positions.append((index, position, raw))

    try:
        rows, cleaned = _load(documents, tombstones)
    except Exception:  # one bad change must not sink the batch: find it alone
        rows, cleaned, failed, failed_tombstones = _load_one_by_one(documents, tombstones)
        for group, where, failures in (
            (documents, doc_positions, failed),
            (tombstones, tombstone_positions, failed_tombstones),
        ):
            for at, error in failures:
                rejections.append(
                    _document_rejection(
                        group[at],
                        where[at],
                        "transform_error",
                        "transform",
                        f"{type(error).__name__}: {error}"[:300],
                    )
                )
    for at, (reason, detail) in sorted(cleaned.rejected.items()):
        rejections.append(
            _document_rejection(documents[at], doc_positions[at], reason, "clean", detail)
        )
    rejections.sort(key=lambda rejection: (rejection.index, rejection.position or 0))
    return ProcessedBatch(
        rows=rows,
        rejections=rejections,
        sweeps=sweeps,
        ignored=ignored,
        fixes=cleaned.fixes,
        messages=len(bodies),
        changes=changes,
    )


def _document_rejection(
    envelope: ChangeEnvelope,
    where: tuple[int, int | None, bytes | None],
    reason: str,
    stage: str,
    detail: str,
) -> Rejection:
    index, position, body = where
    return Rejection(
        index,
        reason,
        stage,
        detail,
        envelope.id,
        envelope.version,
        position=position,
        body=body,
        message_id=envelope.message_id if position is not None else None,
    )


Parsed = tuple[int, int | None, bytes | None, ChangeEnvelope | Rejection]


def _changes(
    bodies: Sequence[bytes],
    content_types: Sequence[str | None],
    headers: Sequence[Mapping[str, Any] | None],
    collection: str,
) -> Iterator[Parsed]:
    """(message index, position in a batch or None, the change's bytes inside a batch,
    envelope or rejection), in order."""
    for index, (body, content_type, message_headers) in enumerate(
        zip(bodies, content_types, headers, strict=True)
    ):
        if not is_batch(content_type):
            yield (
                index,
                None,
                None,
                _parse_contained(body, content_type, collection, message_headers),
            )
            continue
        if len(body) > MAX_MESSAGE_BYTES:
            too_large = Rejection(-1, "message_too_large", "parse", f"{len(body)} bytes")
            yield index, None, None, too_large
            continue
        declared = message_headers.get(H_CHANGES) if message_headers else None
        unpacked = unpack(body, declared)
        parsed_all = bulk_parse(unpacked.changes)
        for position, part in enumerate(unpacked.changes):
            parsed = _parse_contained(
                part,
                None,
                collection,
                None,
                parsed_all[position] if parsed_all is not None else _UNPARSED,
            )
            if isinstance(parsed, Rejection):
                parsed = dataclasses.replace(parsed, body=part)
            yield index, position, part, parsed
        problem = unpacked.problem
        if problem is not None:
            whole = not unpacked.changes and problem.body is body
            yield (
                index,
                None if whole else len(unpacked.changes),
                None,
                Rejection(
                    -1,
                    problem.reason,
                    "parse",
                    problem.detail,
                    body=None if whole else problem.body,
                ),
            )


def _load(
    documents: Sequence[ChangeEnvelope], tombstones: Sequence[ChangeEnvelope]
) -> tuple[pa.Table, CleanBatch]:
    cleaned = clean_documents([envelope.doc for envelope in documents])
    kept = [documents[position] for position in cleaned.kept]
    return _rows(kept, cleaned.columns, tombstones), cleaned


def _load_one_by_one(
    documents: Sequence[ChangeEnvelope], tombstones: Sequence[ChangeEnvelope]
) -> tuple[pa.Table, CleanBatch, list[tuple[int, Exception]], list[tuple[int, Exception]]]:
    """The slow path after a batch failed: each document and each delete alone, the
    failures of each kept apart (positions in ``documents`` and in ``tombstones``).

    Positions in the returned ``CleanBatch`` refer to ``documents``, as the fast
    path's do.
    """
    tables: list[pa.Table] = []
    merged = CleanBatch(columns={}, kept=[], rejected={})
    failed: list[tuple[int, Exception]] = []
    for position, envelope in enumerate(documents):
        try:
            table, cleaned = _load([envelope], ())
        except Exception as error:
            failed.append((position, error))
            log.warning(
                "document rejected: its transform failed (%s: %s)",
                type(error).__name__,
                error,
                extra={"stage": "consumer.transform", "doc_id": envelope.id or "-"},
            )
            continue
        tables.append(table)
        merged.fixes.update(cleaned.fixes)
        if cleaned.rejected:
            merged.rejected[position] = cleaned.rejected[0]
        else:
            merged.kept.append(position)
    empty = _empty_columns()
    failed_tombstones: list[tuple[int, Exception]] = []
    for position, envelope in enumerate(tombstones):
        try:
            tables.append(_rows([], empty, [envelope]))
        except Exception as error:
            failed_tombstones.append((position, error))
            log.warning(
                "delete rejected: its row could not be built (%s: %s)",
                type(error).__name__,
                error,
                extra={"stage": "consumer.transform", "doc_id": envelope.id or "-"},
            )
    tables.append(_rows([], empty, ()))  # the schema, even when nothing loaded
    return pa.concat_tables(tables), merged, failed, failed_tombstones


def _empty_columns() -> dict[str, pa.Array]:
    return clean_documents([]).columns


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
