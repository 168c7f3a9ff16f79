"""One canonical, collision-free ``doc_id`` for every ``_id`` MongoDB allows.

The warehouse keys every document state by ``doc_id`` (a ClickHouse String), so
two ids must map to the same text exactly when MongoDB calls them the same
``_id``:

* numbers compare by value across types (42, 42.0, NumberLong(42) and
  NumberDecimal("42") are one ``_id``), but never equal a string ("42");
* embedded documents compare field by field *in order* ({a: 1, b: 2} is not
  {b: 2, a: 1});
* every other type is apart from every other (null is not "null", true is not 1).

The form is readable where it can be: an ObjectId is its 24 hex digits, a UUID
(Binary subtype 4) its 8-4-4-4-12 text, a string itself. Every other type is
``~<tag>:<value>``. A string that could be mistaken for one of those forms (24
lowercase hex digits, a lowercase UUID, or a leading ``~``) is written
``~s:<string>``, so no two ids share a text. The full table is in
docs/cleaning.md (rendered from :data:`MAPPING`).

Arrays and regular expressions are not allowed as ``_id`` by MongoDB: they
raise :class:`ForbiddenDocumentId`. Undefined is not allowed either, but the
server itself refuses to store it as ``_id``, and pymongo decodes BSON undefined
as None, which cannot be told from null afterwards: were one ever met, it would
read as null (``~null``).

nx-27017 (the local stand-in) hands over its own shapes, normalized here: an
ObjectId in ``fullDocument`` as ``{"__neosqlite_objectid__": true, "id": ...}``,
binary as ``{"__neosqlite_binary__": true, "data": <base64>, "subtype": n}``, and
every non-ObjectId ``documentKey._id`` as a string (see :func:`nx_key_text`).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import math
import re
import uuid
from typing import Any

import orjson
from bson import Decimal128, ObjectId, Timestamp
from bson.binary import Binary
from bson.code import Code
from bson.datetime_ms import DatetimeMS
from bson.dbref import DBRef
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.regex import Regex

NX_OID = "__neosqlite_objectid__"
NX_BINARY = "__neosqlite_binary__"
_HEX24 = re.compile(r"^[0-9a-f]{24}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_UUID_SUBTYPE = 4


class ForbiddenDocumentId(ValueError):
    """An ``_id`` MongoDB does not allow (array, regex) or cannot be keyed."""


# (BSON type, example, doc_id) rows for docs/cleaning.md; tests check each row.
MAPPING: tuple[tuple[str, str, str], ...] = (
    ("ObjectId", 'ObjectId("6744a1f0c3b2a90f1e2d3c4b")', "6744a1f0c3b2a90f1e2d3c4b"),
    ("string", '"vid-1"', "vid-1"),
    (
        "string that looks like another form",
        '"6744a1f0c3b2a90f1e2d3c4b"',
        "~s:6744a1f0c3b2a90f1e2d3c4b",
    ),
    ("string starting with ~", '"~x"', "~s:~x"),
    ("int32, int64, double, decimal (by value)", "42, NumberLong(42), 42.0", "~n:42"),
    ("non-integral number (exact value)", "2.5", "~n:2.5"),
    ("NaN, ±Infinity", "NaN", "~n:NaN"),
    (
        "UUID (Binary subtype 4)",
        'UUID("0b7c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3")',
        "0b7c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3",
    ),
    ("other binary", 'BinData(0, "AQI=")', "~bin0:AQI="),
    ("null", "null", "~null"),
    ("boolean", "true", "~bool:true"),
    ("date", 'ISODate("2026-01-01T00:00:00Z")', "~date:2026-01-01T00:00:00.000Z"),
    ("timestamp", "Timestamp(1732551152, 1)", "~ts:1732551152:1"),
    ("embedded document (fields in order)", "{b: 2, a: 1}", '~doc:{"b":"~n:2","a":"~n:1"}'),
    ("MinKey / MaxKey", "MinKey()", "~minkey"),
    ("array, regex", "[1, 2]", "rejected: forbidden_document_id"),
    (
        "undefined (MongoDB refuses it as _id)",
        "undefined",
        "never stored; pymongo would read it as null: ~null",
    ),
)


def _number_text(value: Any) -> str:
    """Exact decimal text of a number, equal for equal values of any numeric type."""
    if isinstance(value, Decimal128):
        number = value.to_decimal()
    elif isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        number = decimal.Decimal(value)  # exact: the double's own binary value
    else:
        return str(int(value))
    if number.is_nan():
        return "NaN"
    if number.is_infinite():
        return "Infinity" if number > 0 else "-Infinity"
    if number == number.to_integral_value():
        return str(int(number))
    # Not normalize(): it rounds to the context's 28 digits, so two doubles (exact values
    # of up to ~770 digits) or two 34-digit Decimal128s could share one text.
    return format(number, "f").rstrip("0")


def _iso_millis(moment: dt.datetime) -> str:
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="milliseconds") + "Z"


def _binary(data: bytes, subtype: int) -> str:
    if subtype == _UUID_SUBTYPE and len(data) == 16:
        return str(uuid.UUID(bytes=data))
    return f"~bin{subtype}:{base64.b64encode(data).decode()}"


def nx_unwrap(value: Any) -> Any:
    """nx-27017's wrapped ObjectId / binary as the bson value it stands for."""
    if isinstance(value, dict):
        if value.get(NX_OID) is True and isinstance(value.get("id"), str):
            return ObjectId(value["id"])
        if value.get(NX_BINARY) is True and isinstance(value.get("data"), str):
            return Binary(base64.b64decode(value["data"]), int(value.get("subtype", 0)))
        if len(value) == 1 and isinstance(value.get("$oid"), str):
            return ObjectId(value["$oid"])
    return value


def _scalar(value: Any, *, nested: bool) -> str:
    value = nx_unwrap(value)
    if isinstance(value, str):
        if value.startswith("~") or _HEX24.match(value) or _UUID.match(value):
            return "~s:" + value
        return value
    if isinstance(value, ObjectId):
        return str(value)
    if value is None:
        return "~null"
    if isinstance(value, bool):
        return "~bool:" + ("true" if value else "false")
    if isinstance(value, (int, float, Decimal128)):
        return "~n:" + _number_text(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Binary):
        return _binary(bytes(value), value.subtype)
    if isinstance(value, bytes):
        return _binary(value, 0)
    if isinstance(value, dt.datetime):
        return "~date:" + _iso_millis(value)
    if isinstance(value, DatetimeMS):
        return f"~date:{int(value)}ms"
    if isinstance(value, Timestamp):
        return f"~ts:{value.time}:{value.inc}"
    if isinstance(value, MinKey):
        return "~minkey"
    if isinstance(value, MaxKey):
        return "~maxkey"
    if isinstance(value, Code):
        return "~code:" + str(value)
    if isinstance(value, DBRef):
        return _document(value.as_doc())
    if isinstance(value, dict):
        return _document(value)
    if isinstance(value, (list, tuple)):
        if not nested:
            raise ForbiddenDocumentId("an array is not allowed as _id (MongoDB forbids it)")
        return "~arr:" + orjson.dumps([_scalar(item, nested=True) for item in value]).decode()
    if isinstance(value, (Regex, re.Pattern)):
        if not nested:
            raise ForbiddenDocumentId("a regular expression is not allowed as _id")
        pattern = value.pattern if isinstance(value.pattern, str) else repr(value.pattern)
        return f"~re:/{pattern}/{getattr(value, 'flags', '')}"
    raise ForbiddenDocumentId(f"_id of type {type(value).__name__} has no canonical form")


def _document(value: dict[Any, Any]) -> str:
    fields = {str(key): _scalar(item, nested=True) for key, item in value.items()}
    return "~doc:" + orjson.dumps(fields).decode()  # orjson keeps insertion (field) order


def doc_id(value: Any) -> str:
    """The canonical ``doc_id`` of an ``_id`` value (see the module doc)."""
    return _scalar(value, nested=False)


def nx_key_text(value: Any) -> str:
    """How nx-27017 stringifies a non-ObjectId ``_id`` in ``documentKey``.

    Measured with nx-27017 0.8.1: 1 → "1", 42.5 → "42.5", {b: 2, a: 1} →
    "{'b': 2, 'a': 1}" (Python's repr), binary → "b'...'" (bytes repr).
    """
    value = nx_unwrap(value)
    if isinstance(value, Binary):
        return str(bytes(value))
    return str(value)
