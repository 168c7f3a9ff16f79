"""Clean, transform and enrich a batch of documents, column by column.

Pure functions over a list of documents (relaxed Extended JSON dicts, as the
envelope carries them) that return Arrow columns: no Beam, no I/O, so the rules
are tested alone and reused by ``cdcflow verify`` on the source side.

Each field is converted as a whole column when its values already have the right
type (the common case: one pyarrow call for a thousand rows) and value by value
only when the column mixes types, which is where the fixes and rejections live.
The rules themselves are data in :mod:`cdcflow.rules`.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from cdcflow.rules import (
    DEVICES,
    FIELDS,
    MAX_KEY_LENGTH,
    UNKNOWN_COUNTRY,
    UNKNOWN_DEVICE,
    Field,
    Kind,
)

TIMESTAMP_TYPE = pa.timestamp("ms", tz="UTC")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_DEVICE_SET = pa.array(DEVICES)


@dataclass
class CleanBatch:
    """The outcome of cleaning one batch.

    ``columns`` hold only the kept rows, in input order; ``kept`` are their input
    positions. ``rejected`` maps an input position to (rule code, detail).
    """

    columns: dict[str, pa.Array]
    kept: list[int]
    rejected: dict[int, tuple[str, str]]
    fixes: Counter[str] = field(default_factory=Counter)

    @property
    def size(self) -> int:
        return len(self.kept)


class _Batch:
    """Per-row state shared by the column converters: first rejection wins."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.rejected: dict[int, tuple[str, str]] = {}
        self.fixes: Counter[str] = Counter()

    def reject(self, row: int, code: str, detail: str) -> None:
        self.rejected.setdefault(row, (code, detail))

    def reject_where(self, mask: pa.Array, code: str, detail: Callable[[int], str]) -> None:
        if pc.any(mask).as_py():
            for row in pc.indices_nonzero(mask).to_pylist():
                self.reject(row, code, detail(row))

    def fix(self, code: str, count: int = 1) -> None:
        if count:
            self.fixes[code] += count


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _types(values: list[Any]) -> set[type]:
    return {type(value) for value in values}


# -------------------------------------------------------------------------------------
# Column converters: (field, values, batch) -> Arrow array of len(values)
# -------------------------------------------------------------------------------------


def _missing(spec: Field, values: list[Any], batch: _Batch) -> None:
    if spec.required:
        for row, value in enumerate(values):
            if value is None:
                batch.reject(row, "missing_field", f"{spec.name} is missing or null")


def _key_column(spec: Field, values: list[Any], batch: _Batch) -> pa.Array:
    _missing(spec, values, batch)
    if not _types(values) <= {str, type(None)}:
        converted: list[str | None] = []
        for row, value in enumerate(values):
            if value is None or isinstance(value, str):
                converted.append(value)
            elif (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and (not isinstance(value, float) or value.is_integer())
            ):
                batch.fix("key_not_string")
                converted.append(str(int(value)))
            else:
                batch.reject(row, "key_wrong_type", f"{spec.name}={_short(value)} is not an id")
                converted.append(None)
        values = converted
    raw = pa.array(values, pa.string())
    trimmed = pc.utf8_trim_whitespace(raw)
    batch.fix("padded_text", pc.sum(pc.not_equal(trimmed, raw)).as_py() or 0)
    batch.reject_where(
        pc.fill_null(pc.equal(trimmed, ""), False),
        "blank_key",
        lambda row: f"{spec.name} is blank",
    )
    batch.reject_where(
        pc.fill_null(pc.greater(pc.utf8_length(trimmed), MAX_KEY_LENGTH), False),
        "key_too_long",
        lambda row: f"{spec.name} is longer than {MAX_KEY_LENGTH} characters",
    )
    return trimmed


_EXTENDED_NUMBERS = ("$numberDouble", "$numberDecimal", "$numberLong", "$numberInt")


def _number(spec: Field, row: int, value: Any, batch: _Batch) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        batch.reject(row, "number_is_boolean", f"{spec.name}={value} is not a number")
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _EXTENDED_NUMBERS:
        value = next(iter(value.values()))
        extended = True
    else:
        extended = False
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            batch.reject(row, "number_not_numeric", f"{spec.name}={_short(value)} is not a number")
            return None
        if not extended and math.isfinite(number):
            batch.fix("number_as_text")
        return number
    batch.reject(row, "number_not_numeric", f"{spec.name}={_short(value)} is not a number")
    return None


def _number_column(spec: Field, values: list[Any], batch: _Batch) -> pa.Array:
    _missing(spec, values, batch)
    if _types(values) <= {int, float, type(None)}:
        try:
            array = pa.array(values, pa.float64())
        except (pa.ArrowInvalid, OverflowError):
            array = None
    else:
        array = None
    if array is None:
        array = pa.array(
            [_number(spec, row, value, batch) for row, value in enumerate(values)], pa.float64()
        )
    batch.reject_where(
        pc.invert(pc.fill_null(pc.is_finite(array), True)),
        "number_not_finite",
        lambda row: f"{spec.name} is not finite",
    )
    return array


def _category_column(spec: Field, values: list[Any], batch: _Batch) -> pa.Array:
    raw = pa.array([value if isinstance(value, str) else None for value in values], pa.string())
    lowered = pc.utf8_lower(pc.utf8_trim_whitespace(raw))
    known = pc.fill_null(pc.is_in(lowered, value_set=_DEVICE_SET), False)
    result = pc.if_else(known, lowered, UNKNOWN_DEVICE)
    unchanged = pc.sum(pc.fill_null(pc.equal(raw, result), False)).as_py() or 0
    batch.fix("device_unknown", len(values) - unchanged)
    return result


def _country_column(spec: Field, values: list[Any], batch: _Batch) -> pa.Array:
    raw = pa.array([value if isinstance(value, str) else None for value in values], pa.string())
    upper = pc.utf8_upper(pc.utf8_trim_whitespace(raw))
    valid = pc.fill_null(pc.match_substring_regex(upper, _COUNTRY.pattern), False)
    exact = pc.fill_null(pc.equal(raw, upper), False)
    batch.fix("country_invalid", len(values) - (pc.sum(pc.and_(valid, exact)).as_py() or 0))
    return pc.if_else(valid, upper, UNKNOWN_COUNTRY)


_EPOCH_UNITS = ((1e11, 1.0), (1e14, 1e3), (1e17, 1e6))  # below: seconds, ms, µs; else ns
_EARLIEST = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)


def epoch_seconds(number: float) -> float:
    """Seconds since 1970 of an epoch number whose unit is decided by its magnitude.

    Below 10^11 it is seconds (10^11 s is the year 5138; 10^11 ms only March
    1973), below 10^14 milliseconds, below 10^17 microseconds, else nanoseconds:
    each unit's range starts where the one before stops being a plausible date.
    """
    magnitude = abs(number)
    for limit, per_second in _EPOCH_UNITS:
        if magnitude < limit:
            return number / per_second
    return number / 1e9


def _from_epoch(seconds: float) -> tuple[dt.datetime | None, str | None]:
    try:
        moment = dt.datetime.fromtimestamp(seconds, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None, "timestamp_out_of_range"
    return _in_range(moment)


def _in_range(moment: dt.datetime) -> tuple[dt.datetime | None, str | None]:
    moment = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    if moment < _EARLIEST:
        return None, "timestamp_out_of_range"
    return moment, None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_extended_date(inner: Any) -> tuple[dt.datetime | None, str | None]:
    """``{"$date": inner}``: ISO text, ``{"$numberLong": "<ms>"}`` or a number of ms."""
    if isinstance(inner, str):
        moment, _code = _parse_text(inner)
        return (moment, None) if moment is not None else (None, "timestamp_bad_extended_json")
    if isinstance(inner, dict) and len(inner) == 1 and isinstance(inner.get("$numberLong"), str):
        try:
            millis = int(inner["$numberLong"])
        except ValueError:
            return None, "timestamp_bad_extended_json"
        return _from_epoch(millis / 1000)
    if _is_number(inner) and math.isfinite(inner) and float(inner).is_integer():
        return _from_epoch(inner / 1000)
    return None, "timestamp_bad_extended_json"


def _parse_text(text: str) -> tuple[dt.datetime | None, str | None]:
    text = text.strip()
    try:
        return _in_range(dt.datetime.fromisoformat(text))
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return None, "timestamp_invalid"
    if not math.isfinite(number):
        return None, "timestamp_invalid"
    moment, code = _from_epoch(epoch_seconds(number))
    return moment, code or "timestamp_epoch_number"


def parse_moment(value: Any) -> tuple[dt.datetime | None, str | None]:
    """A date-time from any value a document may hold, and the rule that applied.

    Returns (moment, None) for a date taken as is, (moment, "timestamp_epoch_number")
    for an epoch number converted by :func:`epoch_seconds`, and (None, code) for a
    value that is no date, with the code of the rule that says why.
    """
    if isinstance(value, dt.datetime):
        return _in_range(value)
    if isinstance(value, dict):
        if len(value) == 1 and "$date" in value:
            return _parse_extended_date(value["$date"])
        return None, "timestamp_invalid"
    if isinstance(value, str):
        return _parse_text(value)
    if _is_number(value):
        if not math.isfinite(value):
            return None, "timestamp_invalid"
        moment, code = _from_epoch(epoch_seconds(value))
        return moment, code or "timestamp_epoch_number"
    return None, "timestamp_invalid"


def _extended_dates(values: list[Any]) -> list[str | None] | None:
    """The ISO strings of ``{"$date": "..."}`` values (how the envelope carries
    dates), or None if any value has another shape."""
    texts: list[str | None] = []
    for value in values:
        if value is None:
            texts.append(None)
        elif type(value) is dict and len(value) == 1 and type(value.get("$date")) is str:
            texts.append(value["$date"])
        else:
            return None
    return texts


_NAIVE_MICROS = pa.timestamp("us")
_EPOCH = pa.scalar(0, _NAIVE_MICROS)


def _cast_dates(texts: pa.Array) -> pa.Array | None:
    """ISO 8601 texts parsed by one Arrow cast for the whole column, or None when any
    value needs the value-by-value rules.

    Texts with a zone are cast as they are. Texts without one (nx-27017 writes its
    dates so) are naive UTC, as :func:`parse_moment` reads them: parsed to
    microseconds, then truncated to milliseconds as ``pa.array`` truncates a
    datetime; only from 1970 on, so the rounding of earlier values and the 1900
    bound stay the value-by-value path's. Arrow accepts no text that
    ``datetime.fromisoformat`` rejects, and reads those it accepts the same.
    """
    try:
        return texts.cast(TIMESTAMP_TYPE)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass  # a value without a zone, or not a date
    try:
        naive = texts.cast(_NAIVE_MICROS)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None  # a value with a zone beside ones without, or not a date
    earliest = pc.min(naive)
    if earliest.is_valid and pc.less(earliest, _EPOCH).as_py():
        return None
    return naive.cast(pa.timestamp("ms"), safe=False).cast(TIMESTAMP_TYPE)


def _timestamp_column(spec: Field, values: list[Any], batch: _Batch) -> pa.Array:
    texts = _extended_dates(values)
    if texts is not None:
        column = _cast_dates(pa.array(texts, pa.string()))
        if column is not None:
            return column
    moments: list[dt.datetime | None] = []
    for value in values:
        moment, code = parse_moment(value) if value is not None else (None, None)
        if code is not None:
            batch.fix(code)
        moments.append(moment)
    return pa.array(moments, TIMESTAMP_TYPE)


_CONVERTERS: dict[Kind, Callable[[Field, list[Any], _Batch], pa.Array]] = {
    Kind.key: _key_column,
    Kind.number: _number_column,
    Kind.category: _category_column,
    Kind.country: _country_column,
    Kind.timestamp: _timestamp_column,
}


def clean_documents(documents: Sequence[Any]) -> CleanBatch:
    """Apply every rule of :mod:`cdcflow.rules` to a batch and enrich what is kept.

    Adds ``completion_rate = watched_time / total_video_time * 100``.
    """
    batch = _Batch(len(documents))
    for row, document in enumerate(documents):
        if not isinstance(document, dict):
            batch.reject(row, "document_not_object", f"document is {type(document).__name__}")
    rows = [document if isinstance(document, dict) else {} for document in documents]
    columns: dict[str, pa.Array] = {}
    for spec in FIELDS:
        values = [row.get(spec.name) for row in rows]
        columns[spec.name] = _CONVERTERS[spec.kind](spec, values, batch)

    watched, total = columns["watched_time"], columns["total_video_time"]
    batch.reject_where(
        pc.fill_null(pc.less_equal(total, 0.0), False),
        "total_video_time_not_positive",
        lambda row: f"total_video_time={total[row].as_py()} is not above 0",
    )
    batch.reject_where(
        pc.fill_null(pc.less(watched, 0.0), False),
        "watched_time_negative",
        lambda row: f"watched_time={watched[row].as_py()} is negative",
    )
    exceeds = pc.fill_null(pc.greater(watched, total), False)
    valid_rows = _keep_mask(batch)
    batch.fix("watched_time_exceeds_total", pc.sum(pc.and_(exceeds, valid_rows)).as_py() or 0)
    columns["watched_time"] = watched = pc.if_else(exceeds, total, watched)
    columns["completion_rate"] = pc.multiply(pc.divide(watched, total), 100.0)

    kept = [row for row in range(batch.size) if row not in batch.rejected]
    if len(kept) != batch.size:
        columns = {name: column.filter(valid_rows) for name, column in columns.items()}
    return CleanBatch(columns=columns, kept=kept, rejected=batch.rejected, fixes=batch.fixes)


def _keep_mask(batch: _Batch) -> pa.Array:
    return pa.array([row not in batch.rejected for row in range(batch.size)], pa.bool_())


def clean_one(document: Any) -> tuple[dict[str, Any] | None, str | None]:
    """Clean a single document: (row values, None) or (None, rejecting rule code)."""
    result = clean_documents([document])
    if result.rejected:
        return None, result.rejected[0][0]
    return {name: column[0].as_py() for name, column in result.columns.items()}, None
