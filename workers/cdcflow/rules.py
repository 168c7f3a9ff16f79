"""The cleaning rules, as data.

This table is the single source of the rules: :mod:`cdcflow.transforms` applies
them, ``docs/cleaning.md`` is generated from them (a test keeps the file equal to
:func:`render_markdown`), and the rule tests are driven by their examples.

A rule either **fixes** a value (the row is loaded with the fixed value and the
fix is counted) or **rejects** the document (the message goes to the failed queue
with the rule's code as its reason and is never loaded).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cdcflow import metrics
from cdcflow.docids import MAPPING as DOC_ID_MAPPING


class Action(StrEnum):
    fixed = "fixed"
    rejected = "rejected"


class Kind(StrEnum):
    """What a field holds; decides which type rules apply to it."""

    key = "key"  # an identifier: non-blank string, at most MAX_KEY_LENGTH chars
    number = "number"  # a finite number of seconds
    category = "category"  # a small set of known values
    country = "country"  # ISO 3166-1 alpha-2
    timestamp = "timestamp"  # a date-time


@dataclass(frozen=True)
class Field:
    name: str
    kind: Kind
    required: bool
    description: str


MAX_KEY_LENGTH = 256
DEVICES = ("android", "ios", "web", "tv", "desktop", "console")
UNKNOWN_DEVICE = "unknown"
UNKNOWN_COUNTRY = "ZZ"  # ISO 3166 user-assigned code for "unknown"

FIELDS: tuple[Field, ...] = (
    Field("video_id", Kind.key, True, "the video watched"),
    Field("user_id", Kind.key, True, "the viewer"),
    Field("device", Kind.category, False, f"one of {', '.join(DEVICES)}"),
    Field("country", Kind.country, False, "ISO 3166-1 alpha-2 code"),
    Field("started_at", Kind.timestamp, False, "when the viewing started"),
    Field("updated_at", Kind.timestamp, False, "when the source last changed the document"),
    Field("watched_time", Kind.number, True, "seconds watched"),
    Field("total_video_time", Kind.number, True, "length of the video in seconds"),
)
FIELD_NAMES = tuple(field.name for field in FIELDS)


@dataclass(frozen=True)
class Rule:
    code: str  # the reason written to the failed queue and to metrics labels
    applies_to: str  # a field kind, a field name, or "document"
    rule: str
    example: dict[str, Any]  # fields of a document that breaks the rule
    action: Action
    result: str  # what happens: the fixed value, or why it cannot be loaded

    @property
    def example_text(self) -> str:
        return ", ".join(f"{key}: {_show(value)}" for key, value in self.example.items())


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if value is None:
        return "null"
    if isinstance(value, float) and value != value:
        return "NaN"
    return str(value)


# Order matters: a document is rejected by the first rejecting rule that matches.
RULES: tuple[Rule, ...] = (
    Rule(
        "document_not_object",
        "document",
        "the document is a JSON object",
        {"doc": "[1, 2]"},
        Action.rejected,
        "nothing to load",
    ),
    Rule(
        "missing_field",
        "required fields",
        "video_id, user_id, watched_time and total_video_time are present and not null",
        {"watched_time": None},
        Action.rejected,
        "a required value is unknown",
    ),
    Rule(
        "blank_key",
        Kind.key,
        "an identifier is not empty or only spaces",
        {"user_id": "   "},
        Action.rejected,
        "the row could not be attributed",
    ),
    Rule(
        "key_too_long",
        Kind.key,
        f"an identifier has at most {MAX_KEY_LENGTH} characters",
        {"video_id": "v" * 300},
        Action.rejected,
        "not an identifier",
    ),
    Rule(
        "key_not_string",
        Kind.key,
        "an identifier is a string",
        {"video_id": 42},
        Action.fixed,
        'converted to text: "42"',
    ),
    Rule(
        "key_wrong_type",
        Kind.key,
        "an identifier is a string or a number",
        {"user_id": {"name": "x"}},
        Action.rejected,
        "not an identifier",
    ),
    Rule(
        "padded_text",
        "text fields",
        "text has no leading or trailing spaces",
        {"video_id": " vid_1 "},
        Action.fixed,
        'trimmed: "vid_1"',
    ),
    Rule(
        "number_as_text",
        Kind.number,
        "a number is not written as text",
        {"watched_time": "120"},
        Action.fixed,
        "parsed: 120",
    ),
    Rule(
        "number_not_numeric",
        Kind.number,
        "a number is a number",
        {"watched_time": "two minutes"},
        Action.rejected,
        "the value is not a number",
    ),
    Rule(
        "number_is_boolean",
        Kind.number,
        "a number is not true/false",
        {"total_video_time": True},
        Action.rejected,
        "the value is not a number",
    ),
    Rule(
        "number_not_finite",
        Kind.number,
        "a number is finite",
        {"watched_time": float("nan")},
        Action.rejected,
        "NaN and Infinity cannot be measured",
    ),
    Rule(
        "total_video_time_not_positive",
        "total_video_time",
        "the video length is above 0",
        {"total_video_time": 0},
        Action.rejected,
        "completion rate would divide by zero",
    ),
    Rule(
        "watched_time_negative",
        "watched_time",
        "watched time is 0 or more",
        {"watched_time": -5},
        Action.rejected,
        "negative time is impossible",
    ),
    Rule(
        "watched_time_exceeds_total",
        "watched_time",
        "watched time is at most the video length",
        {"watched_time": 400, "total_video_time": 312},
        Action.fixed,
        "clamped to the video length (completion 100%)",
    ),
    Rule(
        "device_unknown",
        "device",
        "device is one of the known devices, in lower case",
        {"device": "smart-fridge"},
        Action.fixed,
        f'"{UNKNOWN_DEVICE}" (a known device in other case, such as "iOS", becomes "ios")',
    ),
    Rule(
        "country_invalid",
        "country",
        "country is a two-letter code in upper case",
        {"country": "Portugal"},
        Action.fixed,
        f'"{UNKNOWN_COUNTRY}" (a valid code in lower case, such as "pt", becomes "PT")',
    ),
    Rule(
        "timestamp_epoch_number",
        Kind.timestamp,
        "a timestamp is a date-time, not a number",
        {"started_at": 1732551150},
        Action.fixed,
        "read as epoch time, the unit decided by size: below 10^11 seconds, below 10^14 "
        "milliseconds, below 10^17 microseconds, else nanoseconds (1732551150 and "
        "1732551150000 are both 2024-11-25T16:12:30Z)",
    ),
    Rule(
        "timestamp_bad_extended_json",
        Kind.timestamp,
        'a value shaped as Extended JSON {"$date": ...} holds an ISO-8601 text, '
        '{"$numberLong": "<milliseconds>"} or a whole number of milliseconds',
        {"started_at": {"$date": {"$numberLong": "x"}}},
        Action.fixed,
        "null (unknown): the row loads, the rule is counted",
    ),
    Rule(
        "timestamp_out_of_range",
        Kind.timestamp,
        "a timestamp lies between 1900-01-01 and 9999-12-31",
        {"started_at": {"$date": 1e17}},
        Action.fixed,
        "null (unknown): the row loads, the rule is counted",
    ),
    Rule(
        "timestamp_invalid",
        Kind.timestamp,
        "a timestamp is a date-time (ISO-8601 text, a BSON date, or an epoch number)",
        {"started_at": "yesterday"},
        Action.fixed,
        "null (unknown): the row loads, the rule is counted",
    ),
)

RULES_BY_CODE = {rule.code: rule for rule in RULES}

# Reasons given before cleaning, when the message itself cannot be read. They are
# listed in docs/cleaning.md too, so every reason in the failed queue is explained.
MESSAGE_REASONS: tuple[tuple[str, str], ...] = (
    ("invalid_encoding", "the body is not UTF-8"),
    ("malformed_json", "the body is not JSON"),
    ("message_too_large", "the body is larger than the consumer accepts"),
    ("wrong_content_type", "the content type is not the cdcflow change envelope"),
    ("unsupported_envelope_version", "the envelope's v is not one this consumer reads"),
    (
        "unknown_operation",
        "op is not insert, update, replace, delete, snapshot, snapshot_end or drop",
    ),
    ("missing_document_id", "a document change has no id"),
    ("invalid_envelope", "the envelope breaks its schema (a field missing or of the wrong type)"),
    ("wrong_collection", "the event belongs to another collection than this pipeline's"),
    ("missing_envelope_version", "the envelope has no v: a version is never guessed"),
    (
        "operation_mismatch",
        "the operation contradicts the message: a delete that carries a document, or an "
        "x-cdcflow-op header that differs from the body's op",
    ),
    ("version_mismatch", "the x-cdcflow-version header differs from the body's version"),
    ("replace_without_document", "a replace without its document (MongoDB always sends it)"),
    (
        "update_without_document",
        "an update with neither a document nor its update description: nothing to load "
        "and no sign the document is gone",
    ),
    (
        "transform_error",
        "converting this one document failed in an unexpected way (the detail has the "
        "error); the rest of its batch loads",
    ),
    # A batch message (many changes, cdcflow.packing) that cannot be unpacked at all is
    # dead-lettered whole; a bad change inside one is dead-lettered alone, with the
    # reasons above.
    (
        "malformed_batch",
        "a batch message whose header line is not a batch header, or "
        "whose changes do not add up to its declared count and size",
    ),
    ("unsupported_batch_version", "the batch envelope's v is not one this consumer reads"),
    ("batch_count_mismatch", "the x-cdcflow-changes header differs from the batch's count"),
    (
        "batch_truncated",
        "a batch message cut short: the changes that arrived whole load; one record "
        "(the fragment) stands for the rest, which must be read from MongoDB again",
    ),
)

# Events the producer cannot publish as changes. Each goes to `<collection>.failed` as a
# failed-event record (stage `producer`) with its resume token and documentKey, is counted
# in cdcflow_events_failed_total{reason}, and capture continues after it.
PRODUCER_REASONS: tuple[tuple[str, str], ...] = (
    ("missing_resume_token", "the event has no resume token (_id._data)"),
    ("missing_document_key", "the event has no documentKey._id"),
    ("document_key_mismatch", "documentKey._id is not the fullDocument's _id"),
    ("forbidden_document_id", "the _id is of a type MongoDB forbids (array, regex)"),
    ("document_not_object", "fullDocument is not a document"),
    ("insert_without_document", "an insert without its document"),
    ("replace_without_document", "a replace without its document"),
    ("update_without_document", "an update with neither a document nor an update description"),
    (
        "event_too_large",
        "the event is over 16 MB and the server cannot split it (before 6.0.9): the server "
        "left its document out, the record keeps its key and token",
    ),
    ("unknown_token_version", "the resume token has a layout this cdcflow does not know"),
    ("invalid_event", "any other event that cannot be read"),
)

# Messages acknowledged without a row and without a failed-queue record, each counted in
# cdcflow_messages_ignored_total{reason}. No other message is acknowledged without a trace.
IGNORED_REASONS: tuple[tuple[str, str], ...] = (
    (
        "update_document_gone",
        "an update whose lookup found the document already deleted (fullDocument null); "
        "its delete event follows and tombstones it",
    ),
    ("snapshot_end", "the end-of-snapshot marker: runs the sweep, has no row of its own"),
    ("drop_mirrored", "a drop mirrored as deletes (opt-in): runs the sweep, has no row"),
)


def render_markdown() -> str:
    """docs/cleaning.md, generated from the tables above (metric names from
    :mod:`cdcflow.metrics`, so a renamed counter cannot leave the docs behind)."""
    fixed = metrics.sample_name(metrics.ROWS_FIXED)
    failed = metrics.sample_name(metrics.EVENTS_FAILED)
    ignored = metrics.sample_name(metrics.MESSAGES_IGNORED)
    lines = [
        "# Cleaning rules",
        "",
        "<!-- generated from workers/cdcflow/rules.py by `cdcflow rules --markdown`;"
        " tests/unit/test_rules.py keeps it in sync -->",
        "",
        "Every document the consumer loads passes these rules, in this order. A **fixed**",
        f"value is loaded as fixed (and counted in `{fixed}{{rule}}`); a",
        "**rejected** document is not loaded: its message goes to `<collection>.failed`",
        "with the rule's code as `x-cdcflow-reason`. `cdcflow verify` applies the same",
        "rules to the source, so a rejected document is expected to be absent.",
        "",
        "## Fields",
        "",
        "| field | kind | required | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for field in FIELDS:
        lines.append(
            f"| `{field.name}` | {field.kind.value} | {'yes' if field.required else 'no'} "
            f"| {field.description} |"
        )
    lines += [
        "",
        "## Rules",
        "",
        "| code | applies to | rule | example | action | result |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for rule in RULES:
        example = rule.example_text
        if len(example) > 60:
            example = example[:57] + "..."
        lines.append(
            f"| `{rule.code}` | {rule.applies_to} | {rule.rule} | `{example}` "
            f"| {rule.action.value} | {rule.result} |"
        )
    lines += [
        "",
        "`completion_rate = watched_time / total_video_time * 100` is computed after",
        "cleaning, so it is always between 0 and 100.",
        "",
        "## Messages that cannot be read",
        "",
        "These are rejected before cleaning, with the code as the reason. The producer",
        "packs many changes into one message (a batch message, see docs/performance.md):",
        "each change inside is read, cleaned and rejected on its own, and a rejected one",
        "goes to the failed queue alone, as a one-change message with its own body and",
        "message_id (headers `x-cdcflow-batch-message-id` and `x-cdcflow-batch-position`",
        "say where it came from), so `cdcflow dlq replay` puts back just that change. Only",
        "a batch message that cannot be unpacked at all is dead-lettered whole:",
        "",
        "| code | meaning |",
        "| --- | --- |",
    ]
    for code, meaning in MESSAGE_REASONS:
        lines.append(f"| `{code}` | {meaning} |")
    lines += [
        "",
        "## Events the producer cannot publish",
        "",
        "The producer never stops on one event. An event it cannot turn into a change",
        "message goes to `<collection>.failed` as a failed-event record (content type",
        "`application/vnd.cdcflow.failed-event+json`, stage `producer`) with the reason,",
        "its resume token and its documentKey, is counted in",
        f"`{failed}{{reason}}` (alert `CdcflowEventsSkippedOrFailed`), and",
        "capture continues after it. `cdcflow dlq replay` leaves these records in place:",
        "the change they stand for must be read from MongoDB again (fix the document, or",
        "touch it so a new event is made).",
        "",
        "| code | meaning |",
        "| --- | --- |",
    ]
    for code, meaning in PRODUCER_REASONS:
        lines.append(f"| `{code}` | {meaning} |")
    lines += [
        "",
        "## Messages acknowledged without a row",
        "",
        "Every acknowledged message leaves a warehouse row, a failed-queue record, or one",
        f"of these reasons, counted in `{ignored}{{reason}}`:",
        "",
        "| reason | meaning |",
        "| --- | --- |",
    ]
    for code, meaning in IGNORED_REASONS:
        lines.append(f"| `{code}` | {meaning} |")
    lines += [
        "",
        "## Document ids",
        "",
        "`doc_id` is one canonical text per MongoDB `_id`, equal exactly when MongoDB",
        "calls two ids equal: numbers by value across types, strings apart from numbers,",
        "embedded documents field by field in order. Readable forms stay bare; every",
        "other type is `~<tag>:<value>`, and a string that could be mistaken for another",
        "form is written `~s:<string>`, so no two ids share a text.",
        "",
        "| `_id` type | example | `doc_id` |",
        "| --- | --- | --- |",
    ]
    for kind, example, text in DOC_ID_MAPPING:
        shown = text if text.startswith("rejected") else f"`{text}`"
        lines.append(f"| {kind} | `{example}` | {shown} |")
    lines += [
        "",
        "On nx-27017 (the local stand-in) `documentKey._id` is a string for every",
        'non-ObjectId id (1 arrives as "1"): the id is taken from the typed',
        "`fullDocument._id`, which nx-27017 always sends (the pre-image on delete), and the",
        "key must be its text. A `documentKey._id` that is not the `fullDocument._id` is",
        "rejected (`document_key_mismatch`). nx-27017 stores a UUID as subtype 0 binary, so",
        "there it becomes `~bin0:...`.",
        "",
        "## Values that look like Extended JSON",
        "",
        'A document field that is a one-key object `{"$date": ...}` is read as an',
        'Extended JSON date; `{"$numberLong": ...}`, `{"$numberInt": ...}`,',
        '`{"$numberDouble": ...}` and `{"$numberDecimal": ...}` as numbers. One that is',
        "shaped so but holds no valid value follows the rules above",
        "(`timestamp_bad_extended_json`, `number_not_numeric`); it never fails its batch.",
        "",
    ]
    return "\n".join(lines)
