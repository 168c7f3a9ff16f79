"""The batch envelope: many changes in one AMQP message, and how it is packed and unpacked.

The broker and both workers pay mostly per *message* (a persistent, confirmed
quorum-queue message, a pika delivery, a Beam element), not per byte. So the
producer packs consecutive changes into one message of content type
:data:`BATCH_CONTENT_TYPE`, a typed, versioned envelope in JSON Lines::

    {"v":1,"kind":"changes","count":3,"bytes":1517}   <- the header line (BatchHeader)
    {"v":2,"op":"insert",...}               <- change 1: a ChangeEnvelope, byte for byte
    {"v":2,"op":"update",...}               <-   what a one-change message's body is
    {"v":2,"op":"delete",...}

Why lines and not one JSON array: each change stays its own self-contained
envelope, so the consumer can dead-letter a bad change *alone* (its line, as a
one-change message that ``cdcflow dlq replay`` puts back like any other), and a
message cut short still yields every change that arrived whole, while the header's
``count`` and ``bytes`` say that, and how many did not, arrive (orjson never writes
a raw newline inside a value, so a newline always ends a change; a bad last change
is not mistaken for a cut, since ``bytes`` tells them apart). The consumer still parses a whole
message in one call (:func:`bulk_parse`); it looks at the lines one by one only
to name what is wrong.

Everything here is pure: bytes and numbers in, bytes and values out. The AMQP
header ``x-cdcflow-changes`` carries ``count`` too, so a consumer can bound its
bundles in changes without parsing.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

BATCH_ENVELOPE_VERSION: Literal[1] = 1
BATCH_CONTENT_TYPE = "application/vnd.cdcflow.changes+json; v=1"
BATCH_CONTENT_TYPE_BASE = "application/vnd.cdcflow.changes+json"
H_CHANGES = "x-cdcflow-changes"
LINE = b"\n"
MAX_SHORTSTR = 255


def amqp_message_id(message_id: str) -> str:
    """``message_id`` itself, or a stable digest when it exceeds AMQP's 255-byte limit.

    Real MongoDB resume tokens embed the document key, so a long ``_id`` makes a
    token longer than a short string may be; the digest is as stable under replay.
    """
    if len(message_id.encode()) <= MAX_SHORTSTR:
        return message_id
    return "sha256:" + hashlib.sha256(message_id.encode()).hexdigest()


class BatchHeader(BaseModel):
    """The first line of a batch message (schema ``v`` = 1, ``v`` required)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1]
    kind: Literal["changes"]
    count: int = Field(ge=1)
    bytes: int = Field(ge=0)  # of everything after the header line: a cut is always seen


_HEADER_VALIDATOR = BatchHeader.__pydantic_validator__


def is_batch(content_type: str | None) -> bool:
    """Whether a message's content type says it is a batch envelope."""
    return bool(content_type) and str(content_type).startswith(BATCH_CONTENT_TYPE_BASE)


def declared_changes(headers: Any) -> int:
    """The change count a batch message's AMQP headers declare (1 if none or unreadable:
    the count only bounds bundles; the envelope's own count is what is checked)."""
    value = headers.get(H_CHANGES) if isinstance(headers, dict) else None
    try:
        count = int(_text(value)) if value is not None else 1
    except ValueError:
        return 1
    return max(1, count)


def pack(changes: Sequence[bytes]) -> bytes:
    """One batch body from change bodies (each one ``ChangeEnvelope`` JSON, no newline)."""
    if not changes:
        raise ValueError("a batch holds at least one change")
    rest = LINE.join(changes)
    return _HEADER % (len(changes), len(rest)) + LINE + rest


_HEADER = b'{"v":1,"kind":"changes","count":%d,"bytes":%d}'
_HEADER_FIXED = len(_HEADER) - 4  # without the two %d


def packed_size(change_bytes: int, changes: int) -> int:
    """The body size of a batch of ``changes`` changes totalling ``change_bytes`` bytes."""
    rest = change_bytes + changes - 1
    return _HEADER_FIXED + len(str(changes)) + len(str(rest)) + 1 + rest


@dataclass(frozen=True)
class Problem:
    """Why (part of) a batch message cannot be read: a failed-queue reason and detail."""

    reason: str
    detail: str
    body: bytes  # what goes to the failed queue for it: the whole message or the fragment


@dataclass(frozen=True)
class Unpacked:
    """A batch body split into its changes' bodies, and what was wrong with it.

    ``problem`` set and ``changes`` empty: nothing could be read (the header is bad).
    ``problem`` set and ``changes`` not empty: the message was cut short; the
    changes that arrived whole are in ``changes`` and the problem stands for the rest.
    """

    changes: list[bytes]
    declared: int
    problem: Problem | None = None


def _header_problem(first: bytes, body: bytes) -> Problem | None:
    try:
        header = _HEADER_VALIDATOR.validate_json(first)
    except ValidationError as error:
        issue = error.errors(include_url=False)[0]
        location = ".".join(str(part) for part in issue.get("loc", ()))
        if issue.get("type") in ("json_invalid", "json_type"):
            return Problem("malformed_batch", f"batch header is not JSON: {issue['msg']}", body)
        if location == "v":
            return Problem(
                "unsupported_batch_version",
                f"batch envelope v={issue.get('input')!r}, expected {BATCH_ENVELOPE_VERSION}",
                body,
            )
        return Problem("malformed_batch", f"batch header {location}: {issue['msg']}", body)
    del header
    return None


def unpack(body: bytes, declared_header: Any = None) -> Unpacked:
    """Split a batch body (see the module doc); never raises.

    ``declared_header``: the AMQP ``x-cdcflow-changes`` header, if the message had
    one; it must agree with the envelope's ``count``.
    """
    first, _, rest = body.partition(LINE)
    problem = _header_problem(first, body)
    if problem is not None:
        return Unpacked([], 0, problem)
    header = orjson.loads(first)
    count, size = int(header["count"]), int(header["bytes"])
    if declared_header is not None and str(_text(declared_header)) != str(count):
        return Unpacked(
            [],
            count,
            Problem(
                "batch_count_mismatch",
                f"header {H_CHANGES}={_text(declared_header)}, envelope count {count}",
                body,
            ),
        )
    lines = rest.split(LINE) if rest else []
    if len(rest) > size or len(lines) > count:
        return Unpacked(
            [],
            count,
            Problem(
                "malformed_batch",
                f"batch declares {count} changes in {size} bytes and holds {len(lines)} "
                f"in {len(rest)}",
                body,
            ),
        )
    if len(rest) == size:
        if len(lines) == count:
            return Unpacked(lines, count)
        return Unpacked(
            [],
            count,
            Problem(
                "malformed_batch", f"batch declares {count} changes and holds {len(lines)}", body
            ),
        )
    # Cut short: every line but the last arrived whole; the last is a fragment, unless
    # the cut fell exactly on its end.
    whole, fragment = lines, b""
    if lines and not _complete(lines[-1]):
        whole, fragment = lines[:-1], lines[-1]
    missing = count - len(whole)
    return Unpacked(
        whole,
        count,
        Problem(
            "batch_truncated",
            f"message cut short ({len(rest)} of {size} bytes): it declares {count} changes, "
            f"{len(whole)} arrived whole; the other {missing} are lost from this message "
            "(read them from MongoDB again: delete the producer's offsets document to "
            "re-snapshot)",
            fragment,
        ),
    )


def _complete(line: bytes) -> bool:
    try:
        return isinstance(orjson.loads(line), dict)
    except orjson.JSONDecodeError:
        return False


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def bulk_parse(changes: Sequence[bytes]) -> list[Any] | None:
    """Every change of a batch parsed in one orjson call, or None if any is not JSON.

    The caller falls back to one parse per change only then, to name the bad one.
    """
    if not changes:
        return []
    try:
        parsed = orjson.loads(b"[" + b",".join(changes) + b"]")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, list) or len(parsed) != len(changes):
        return None  # a line that held two values ("1,2") must not pass as two changes
    return parsed


# -------------------------------------------------------------------------------------
# Packing on the producer side: bounds by count, bytes and linger
# -------------------------------------------------------------------------------------

T = TypeVar("T")


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last may be shorter), read lazily.

    The one chunking helper (snapshot reads, verify's source scan, publishing in
    slices, the benchmarks): a cursor is consumed as it goes, never held whole.
    ``itertools.batched`` does this from Python 3.12; cdcflow runs on 3.11.
    """
    if size < 1:
        raise ValueError("chunk size must be at least 1")
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


@dataclass
class Packer(Generic[T]):
    """Collects consecutive changes into batches bounded by count, bytes and linger.

    Pure: the caller passes the time (``now``, monotonic seconds) and gets back
    closed batches; each item is ``(body, payload)``, where ``payload`` is whatever
    the caller needs back for that change (its checkpoint, its id). A batch closes
    when it holds ``max_changes``, when the next change would take it past
    ``max_bytes`` (a single change larger than that travels alone), or, through
    :meth:`due`, ``linger_s`` after its first change. ``max_changes`` = 1 is one
    change per message.
    """

    max_changes: int
    max_bytes: int
    linger_s: float
    _bodies: list[bytes] = field(default_factory=list)
    _payloads: list[T] = field(default_factory=list)
    _bytes: int = 0
    _opened_at: float = 0.0

    def __post_init__(self) -> None:
        if self.max_changes < 1 or self.max_bytes < 1 or self.linger_s < 0:
            raise ValueError("max_changes and max_bytes must be >= 1, linger_s >= 0")

    @property
    def pending(self) -> int:
        return len(self._bodies)

    def add(self, body: bytes, payload: T, now: float) -> list[tuple[list[bytes], list[T]]]:
        """Add one change; returns the batches this closed (zero, one or two)."""
        closed = []
        if self._bodies and packed_size(self._bytes + len(body), len(self._bodies) + 1) > (
            self.max_bytes
        ):
            closed.append(self._take())
        if not self._bodies:
            self._opened_at = now
        self._bodies.append(body)
        self._payloads.append(payload)
        self._bytes += len(body)
        if len(self._bodies) >= self.max_changes:
            closed.append(self._take())
        return closed

    def due(self, now: float) -> bool:
        """The open batch has lingered long enough: :meth:`flush` it."""
        return bool(self._bodies) and now - self._opened_at >= self.linger_s

    def wait_s(self, now: float) -> float:
        """Seconds until the open batch is due (0 if none is open or it is due)."""
        if not self._bodies:
            return 0.0
        return max(0.0, self.linger_s - (now - self._opened_at))

    def flush(self) -> list[tuple[list[bytes], list[T]]]:
        """Close the open batch, if any."""
        return [self._take()] if self._bodies else []

    def _take(self) -> tuple[list[bytes], list[T]]:
        taken = (self._bodies, self._payloads)
        self._bodies, self._payloads, self._bytes = [], [], 0
        return taken
