"""The change-event envelope: what the producer publishes and the consumer reads.

One envelope describes one change. It is a typed schema whose version ``v``
every change must carry (one without it is rejected, never guessed); this module
writes ``v`` = 2 and the consumer also reads ``v`` = 1 (the same fields, written
before ``doc_id`` became type-tagged, see :mod:`cdcflow.docids`). A message carries
one envelope (content type :data:`CONTENT_TYPE`) or, packed by the producer, many
of them in a batch envelope of its own content type and version
(:mod:`cdcflow.packing`). It is built from
either shape a change stream can deliver:

* real MongoDB: bson ``Timestamp`` cluster time, hex KeyString resume tokens,
  deletes with only ``documentKey``, updates whose ``fullDocument`` is null
  (the document was deleted before the lookup), ``replace`` events;
* nx-27017 (the local stand-in): tokens ``{"_data": "nx:<N>"}`` with N gapless
  and rising, a ``clusterTime`` stamped when the event is *read* (so useless for
  ordering), ``_id`` stringified in ``documentKey`` and ObjectIds wrapped as
  ``{"__neosqlite_objectid__": true, "id": ...}``.

The version that orders the states of one document is derived from the resume
token in :mod:`cdcflow.versions`.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import uuid
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal, NamedTuple, TypeVar

import orjson
from bson import Decimal128, ObjectId, Timestamp
from bson.binary import Binary
from bson.datetime_ms import DatetimeMS
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from cdcflow.docids import NX_OID, ForbiddenDocumentId, doc_id, nx_key_text, nx_unwrap
from cdcflow.versions import (
    MAX_VERSION,
    InvalidEvent,
    event_version,
    first_event_version,
    is_nx_token,
    snapshot_version,
    sweep_version,
    token_data,
)

ENVELOPE_VERSION: Literal[2] = 2
READABLE_ENVELOPE_VERSIONS = (1, 2)
CONTENT_TYPE = "application/vnd.cdcflow.change+json; v=2"
OVERSIZE_MARK = "cdcflowOversize"  # set by the producer's guard stage (producer.changestream)

_NEOSQLITE_OID = NX_OID


class Operation(StrEnum):
    INSERT = "insert"
    UPDATE = "update"
    REPLACE = "replace"
    DELETE = "delete"
    SNAPSHOT = "snapshot"  # a document read by the initial (or recovery) snapshot
    SNAPSHOT_END = "snapshot_end"  # end of a snapshot: tombstone what it did not see
    DROP = "drop"  # the collection was dropped, mirrored as deletes (opt-in)


DML_OPERATIONS = frozenset({"insert", "update", "replace", "delete"})
# Events that end a stream on real MongoDB: the collection as we knew it is gone.
STREAM_ENDING_OPERATIONS = frozenset({"drop", "rename", "dropDatabase", "invalidate"})


class UnsupportedEvent(ValueError):
    """A change event cdcflow does not turn into a row (DDL and the like)."""


# --------------------------------------------------------------------------------------
# Values: one canonical id, JSON-safe documents
# --------------------------------------------------------------------------------------


def canonical_id(value: Any) -> str:
    """The canonical ``doc_id`` of an ``_id`` (:func:`cdcflow.docids.doc_id`).

    Raises :class:`InvalidEvent` (reason ``forbidden_document_id``) for ids MongoDB
    does not allow, so a caller that turns events into messages records it.
    """
    try:
        return doc_id(value)
    except ForbiddenDocumentId as error:
        raise InvalidEvent(str(error), reason="forbidden_document_id") from None


def _iso_millis(moment: dt.datetime) -> str:
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="milliseconds") + "Z"


def to_json_safe(value: Any) -> Any:
    """A BSON value as relaxed Extended JSON (lossless for the types cdcflow meets)."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        return int(value)  # Int64 too
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {
            "$numberDouble": "NaN"
            if math.isnan(value)
            else ("Infinity" if value > 0 else "-Infinity")
        }
    if isinstance(value, dict):
        if value.get(_NEOSQLITE_OID) and isinstance(value.get("id"), str):
            return {"$oid": value["id"]}
        return {str(key): to_json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_safe(item) for item in value]
    if isinstance(value, ObjectId):
        return {"$oid": str(value)}
    if isinstance(value, dt.datetime):
        return {"$date": _iso_millis(value)}
    if isinstance(value, DatetimeMS):  # a date Python cannot hold (past 9999): epoch ms
        return {"$date": {"$numberLong": str(int(value))}}
    if isinstance(value, Decimal128):
        return {"$numberDecimal": str(value)}
    if isinstance(value, Timestamp):
        return {"$timestamp": {"t": value.time, "i": value.inc}}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    if isinstance(value, (bytes, Binary)):
        subtype = value.subtype if isinstance(value, Binary) else 0
        return {
            "$binary": {
                "base64": base64.b64encode(bytes(value)).decode(),
                "subType": f"{subtype:02x}",
            }
        }
    return str(value)


def cluster_time_of(raw: Any) -> dt.datetime | None:
    """The event's cluster time as an aware UTC datetime (naive = UTC on nx-27017)."""
    if isinstance(raw, Timestamp):
        return raw.as_datetime().astimezone(dt.UTC)
    if isinstance(raw, dt.datetime):
        return raw if raw.tzinfo else raw.replace(tzinfo=dt.UTC)
    return None


# --------------------------------------------------------------------------------------
# The envelope
# --------------------------------------------------------------------------------------


Version = Annotated[
    int,
    Field(ge=0, le=MAX_VERSION, strict=False),
    PlainSerializer(str, return_type=str),
]
"""Versions are up to 96 bits (at most 38 digits are read, see ``MAX_VERSION``): sent as
decimal strings so no JSON reader rounds them
(pydantic parses the string to an int natively, without a Python validator)."""


class Namespace(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    db: str
    coll: str


class UpdateFields(BaseModel):
    """Names of the fields an update changed (MongoDB's ``updateDescription``).

    Carried only when the update has no document: it says the update was real and
    its lookup found the document gone (a delete follows), as opposed to a message
    that lost its document.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    updated: list[str]
    removed: list[str]


class ChangeEnvelope(BaseModel):
    """One change, as published to the queue (schema ``v`` = 2, ``v`` required).

    ``doc`` is the full document after the change in relaxed Extended JSON, or
    None for deletes, sweeps, and updates whose document was gone at lookup time
    (those carry ``update``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1, 2]
    op: Operation
    id: str | None
    version: Version
    cluster_time: dt.datetime | None
    ns: Namespace
    doc: dict[str, Any] | None
    token: dict[str, Any] | None
    captured_at: dt.datetime
    source: Literal["mongodb", "nx-27017"]
    update: UpdateFields | None = None

    @property
    def message_id(self) -> str:
        """Unique per change and stable under replay: the AMQP ``message_id``."""
        if self.op is Operation.SNAPSHOT:
            return f"snapshot:{self.version}:{self.id}"
        if self.op is Operation.SNAPSHOT_END:
            return f"snapshot_end:{self.version}"
        if self.op is Operation.DROP:
            return f"drop:{self.version}"
        return token_data(self.token)

    def to_json(self) -> bytes:
        return _encode(self.model_dump(mode="json"))


_ENVELOPE_VALIDATOR = ChangeEnvelope.__pydantic_validator__


def decode_envelope(body: bytes) -> ChangeEnvelope:
    """Parse and validate one message body; raises ``pydantic.ValidationError``.

    Calls the compiled validator directly: ``model_validate_json``'s Python wrapper
    cost a fifth of the parse, once per message.
    """
    envelope: ChangeEnvelope = _ENVELOPE_VALIDATOR.validate_json(body)
    return envelope


_REQUIRED_KEYS = frozenset(
    ("v", "op", "id", "version", "cluster_time", "ns", "doc", "token", "captured_at", "source")
)
_ALL_KEYS = _REQUIRED_KEYS | {"update"}
_OPERATIONS = {operation.value: operation for operation in Operation}
_SOURCES = frozenset(("mongodb", "nx-27017"))


_NOT_FAST: Any = object()


def _fast_moment(value: Any) -> Any:
    """A JSON date-time string as pydantic reads it (aware), None for null, or
    ``_NOT_FAST`` if the value is not in the shape the producer writes (pydantic
    decides then)."""
    if value is None:
        return None
    if type(value) is not str or len(value) < 20 or value[10] != "T":
        return _NOT_FAST
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return _NOT_FAST
    return moment if moment.tzinfo is not None else _NOT_FAST


def fast_envelope(parsed: Any) -> ChangeEnvelope | None:
    """The envelope of an already-parsed JSON object, when it is plainly valid; else None.

    The consumer's hot path: type checks of the shape the producer writes, then the
    model built without validation, so one ``orjson`` parse per message replaces a
    pydantic validation per change. Anything this does not accept outright (None)
    goes through :func:`decode_envelope`, which accepts it or says exactly what is
    wrong: this function never accepts what the schema rejects (a test holds the
    two together over valid and invalid envelopes).
    """
    if type(parsed) is not dict or not _REQUIRED_KEYS <= parsed.keys() <= _ALL_KEYS:
        return None
    get = parsed.__getitem__
    v, op, doc_id, version = get("v"), get("op"), get("id"), get("version")
    if type(v) is not int or v not in READABLE_ENVELOPE_VERSIONS:
        return None
    operation = _OPERATIONS.get(op) if type(op) is str else None
    if operation is None or (doc_id is not None and type(doc_id) is not str):
        return None
    if type(version) is str and version.isascii() and version.isdigit() and len(version) < 40:
        number = int(version)  # short: int() refuses over 4300 digits (the schema decides)
    elif type(version) is int:
        number = version
    else:
        return None
    if not 0 <= number <= MAX_VERSION:
        return None
    cluster_time, captured_at = _fast_moment(get("cluster_time")), _fast_moment(get("captured_at"))
    if cluster_time is _NOT_FAST or captured_at is _NOT_FAST or captured_at is None:
        return None
    ns, doc, token, source = get("ns"), get("doc"), get("token"), get("source")
    if (
        type(ns) is not dict
        or ns.keys() != {"db", "coll"}
        or type(ns["db"]) is not str
        or type(ns["coll"]) is not str
        or (doc is not None and type(doc) is not dict)
        or (token is not None and type(token) is not dict)
        or source not in _SOURCES
    ):
        return None
    update = parsed.get("update")
    fields: UpdateFields | None = None
    if update is not None:
        if type(update) is not dict or update.keys() != {"updated", "removed"}:
            return None
        updated, removed = update["updated"], update["removed"]
        if type(updated) is not list or type(removed) is not list:
            return None
        if not all(type(name) is str for name in (*updated, *removed)):
            return None
        fields = _built(UpdateFields, {"updated": updated, "removed": removed})
    key = (ns["db"], ns["coll"])
    namespace = _NAMESPACES.get(key)
    if namespace is None:
        if len(_NAMESPACES) > 64:
            _NAMESPACES.clear()
        namespace = _NAMESPACES[key] = _built(Namespace, {"db": key[0], "coll": key[1]})
    return _built(
        ChangeEnvelope,
        {
            "v": v,
            "op": operation,
            "id": doc_id,
            "version": number,
            "cluster_time": cluster_time,
            "ns": namespace,
            "doc": doc,
            "token": token,
            "captured_at": captured_at,
            "source": source,
            "update": fields,
        },
    )


_NAMESPACES: dict[tuple[str, str], Namespace] = {}  # frozen: one object per namespace seen
_M = TypeVar("_M", bound=BaseModel)
_set = object.__setattr__


def _built(cls: type[_M], values: dict[str, Any]) -> _M:
    """A model from values already checked, as ``model_construct`` builds it without its
    per-call overhead (defaults, aliases: none apply here), a third of the consumer's
    parse: every field is given, so all are set."""
    model = cls.__new__(cls)
    _set(model, "__dict__", values)
    _set(model, "__pydantic_fields_set__", set(values))
    _set(model, "__pydantic_extra__", None)
    _set(model, "__pydantic_private__", None)
    return model


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class EncodedChange(NamedTuple):
    """A change ready to publish: the message body and what goes in its AMQP properties."""

    body: bytes
    message_id: str
    op: str
    version: int
    doc_id: str | None
    cluster_time: dt.datetime | None


_DOC_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS
_ENVELOPE_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z


def _bson_default(value: Any) -> Any:
    converted = to_json_safe(value)
    if converted is value:
        raise TypeError(f"cannot encode {type(value).__name__}")
    return converted


def _is_flat_and_finite(document: dict[str, Any]) -> bool:
    for value in document.values():
        kind = type(value)
        if kind is float:
            if not math.isfinite(value):
                return False
        elif kind is dict:
            if not _is_text_map(value):
                return False
        elif kind is list or kind is tuple:
            return False
    return True


def _is_text_map(value: dict[Any, Any]) -> bool:
    """Text keys to text values, such as nx-27017's dates ``{"$date": "..."}``: a value
    :func:`to_json_safe` returns unchanged (unless it is nx-27017's ObjectId marker)."""
    if _NEOSQLITE_OID in value:
        return False
    return all(type(key) is str and type(item) is str for key, item in value.items())


def encode_document(document: dict[str, Any]) -> orjson.Fragment:
    """A document as relaxed Extended JSON, pre-serialized.

    Flat documents with finite numbers (the common case; values may be text-only
    maps such as nx-27017's ``{"$date": "..."}``) go through orjson in C,
    converting only datetimes and ObjectIds in Python; anything nested, or with
    NaN/Infinity (which orjson would turn into null), takes :func:`to_json_safe`.
    """
    if _is_flat_and_finite(document):
        return orjson.Fragment(orjson.dumps(document, default=_bson_default, option=_DOC_OPTIONS))
    return orjson.Fragment(orjson.dumps(to_json_safe(document), option=orjson.OPT_NON_STR_KEYS))


def _encode(payload: dict[str, Any]) -> bytes:
    return orjson.dumps(payload, option=_ENVELOPE_OPTIONS)


def _document_id(raw: Mapping[str, Any], full: Any, nx: bool) -> str:
    """The canonical id of an event's document, with the key checked against the document.

    Real MongoDB: ``documentKey._id`` is typed; a ``fullDocument._id`` must be the
    same id. nx-27017: ``documentKey._id`` is a string for every non-ObjectId id,
    so the typed ``fullDocument._id`` (always there: post-image, or pre-image on
    delete) gives the id, and the key must be its nx-27017 text.
    """
    key = raw.get("documentKey")
    if not isinstance(key, dict) or "_id" not in key:
        raise InvalidEvent("change event without documentKey._id", reason="missing_document_key")
    key_id = key["_id"]
    full_id = full.get("_id", key_id) if isinstance(full, dict) else key_id
    if full_id is key_id or (
        type(full_id) is type(key_id) and type(key_id) in (str, ObjectId) and full_id == key_id
    ):
        return canonical_id(key_id)
    typed = canonical_id(full_id)
    if nx and isinstance(key_id, str) and not isinstance(nx_unwrap(full_id), str):
        if key_id == nx_key_text(full_id):
            return typed
    elif canonical_id(key_id) == typed:
        return typed
    raise InvalidEvent(
        f"documentKey._id {_short(key_id)} is not fullDocument._id {_short(full_id)}",
        reason="document_key_mismatch",
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _update_fields(raw: Mapping[str, Any]) -> dict[str, list[str]]:
    description = raw.get("updateDescription")
    if not isinstance(description, dict):
        return {"updated": [], "removed": []}  # nx-27017 sends none
    updated = description.get("updatedFields")
    removed = description.get("removedFields")
    return {
        "updated": [str(name) for name in updated] if isinstance(updated, dict) else [],
        "removed": [str(name) for name in removed] if isinstance(removed, list) else [],
    }


def encode_change(raw: dict[str, Any], *, captured_at: dt.datetime | None = None) -> EncodedChange:
    """Encode one change-stream event (either shape) as an envelope message.

    This is the producer's hot path, so it writes JSON directly rather than via
    the model; :func:`decode_envelope` of the body is the schema check, and the
    tests hold the two together.

    Raises :class:`UnsupportedEvent` for non-DML events and :class:`InvalidEvent`
    (with a failed-queue ``reason``) for an event that cannot be a message: no
    token, no document key, a key that is not the document's ``_id``, an id
    MongoDB forbids, a ``fullDocument`` that is not a document, a replace without
    its document, an update with neither a document nor a lookup that found it
    gone, an event the server had to trim because it was over 16 MB.
    """
    operation = raw.get("operationType")
    if operation not in DML_OPERATIONS:
        raise UnsupportedEvent(f"operationType {operation!r} carries no document change")
    token = raw.get("_id")
    if not isinstance(token, dict) or not isinstance(token.get("_data"), str):
        raise InvalidEvent(
            "change event without a resume token (_id._data)", reason="missing_resume_token"
        )
    if raw.get(OVERSIZE_MARK):
        raise InvalidEvent(
            "the change event is over MongoDB's 16 MB limit and this server cannot split "
            "it ($changeStreamSplitLargeEvent needs 6.0.9 or 7.0+): its document was "
            "left out by the server",
            reason="event_too_large",
        )
    full = raw.get("fullDocument")
    if full is not None and not isinstance(full, dict):
        raise InvalidEvent(
            f"fullDocument is {type(full).__name__}, not a document", reason="document_not_object"
        )
    nx = is_nx_token(token)
    doc_id_text = _document_id(raw, full, nx)
    update: dict[str, list[str]] | None = None
    if full is None and operation != "delete":
        if operation == "replace":
            raise InvalidEvent("replace without its document", reason="replace_without_document")
        if operation == "insert":
            raise InvalidEvent("insert without its document", reason="insert_without_document")
        if "fullDocument" not in raw and not isinstance(raw.get("updateDescription"), dict):
            raise InvalidEvent(
                "update with neither a document nor an update description",
                reason="update_without_document",
            )
        update = _update_fields(raw)  # the lookup found nothing: the document is gone
    version = event_version(token)
    cluster_time = cluster_time_of(raw.get("clusterTime"))
    payload: dict[str, Any] = {
        "v": ENVELOPE_VERSION,
        "op": operation,
        "id": doc_id_text,
        "version": str(version),
        "cluster_time": cluster_time,
        "ns": {"db": str((raw.get("ns") or {}).get("db", "")), "coll": _coll(raw)},
        "doc": None if operation == "delete" or full is None else encode_document(full),
        "token": token if len(token) == 1 else to_json_safe(token),
        "captured_at": captured_at or _now(),
        "source": "nx-27017" if nx else "mongodb",
    }
    if update is not None:
        payload["update"] = update
    body = _encode(payload)
    return EncodedChange(body, token["_data"], operation, version, doc_id_text, cluster_time)


def _coll(raw: Mapping[str, Any]) -> str:
    ns = raw.get("ns")
    return str(ns.get("coll", "")) if isinstance(ns, dict) else ""


def from_change(raw: dict[str, Any], *, captured_at: dt.datetime | None = None) -> ChangeEnvelope:
    """The validated envelope of one change-stream event (see :func:`encode_change`)."""
    return decode_envelope(encode_change(raw, captured_at=captured_at).body)


def encode_envelope(envelope: ChangeEnvelope) -> EncodedChange:
    """Encode an envelope built as a model (snapshots, sweeps, tests)."""
    body = _encode(envelope.model_dump(mode="json"))
    return EncodedChange(
        body,
        envelope.message_id,
        envelope.op.value,
        envelope.version,
        envelope.id,
        envelope.cluster_time,
    )


def snapshot_envelope(
    document: dict[str, Any],
    *,
    start_token: Any,
    db: str,
    coll: str,
    captured_at: dt.datetime | None = None,
) -> ChangeEnvelope:
    """A document read by a snapshot that began at ``start_token``."""
    if "_id" not in document:
        raise InvalidEvent("snapshot document without _id", reason="missing_document_key")
    return ChangeEnvelope(
        v=ENVELOPE_VERSION,
        op=Operation.SNAPSHOT,
        id=canonical_id(document["_id"]),
        version=snapshot_version(start_token),
        cluster_time=None,
        ns=Namespace(db=db, coll=coll),
        doc=to_json_safe(document),
        token=to_json_safe(start_token),
        captured_at=captured_at or _now(),
        source="nx-27017" if is_nx_token(start_token) else "mongodb",
    )


def snapshot_end_envelope(
    *, start_token: Any, db: str, coll: str, documents: int, captured_at: dt.datetime | None = None
) -> ChangeEnvelope:
    """Closes a snapshot: rows older than it that it did not read are deleted at source."""
    return ChangeEnvelope(
        v=ENVELOPE_VERSION,
        op=Operation.SNAPSHOT_END,
        id=None,
        version=sweep_version(start_token),
        cluster_time=None,
        ns=Namespace(db=db, coll=coll),
        doc={"documents": documents},
        token=to_json_safe(start_token),
        captured_at=captured_at or _now(),
        source="nx-27017" if is_nx_token(start_token) else "mongodb",
    )


def drop_envelope(
    token: Any, *, db: str, coll: str, captured_at: dt.datetime | None = None
) -> ChangeEnvelope:
    """A drop mirrored as deletes (opt-in): every row up to ``token`` is tombstoned.

    Its version is the first an event after ``token`` can have, not the token's own
    event version: on nx-27017 (no drop event) the token is the last event read,
    whose row a sweep at that event's own version would keep (it deletes only older
    rows), and on MongoDB it may be a high-water mark, which has no event version.
    """
    return ChangeEnvelope(
        v=ENVELOPE_VERSION,
        op=Operation.DROP,
        id=None,
        version=first_event_version(token),
        cluster_time=None,
        ns=Namespace(db=db, coll=coll),
        doc=None,
        token=to_json_safe(token),
        captured_at=captured_at or _now(),
        source="nx-27017" if is_nx_token(token) else "mongodb",
    )
