"""Reading the change stream: open, resume, detect lost history, reassemble split events.

Both sources are read the same way, but lose history differently:

* real MongoDB refuses to resume from a token older than the oplog with
  ``OperationFailure`` code 286 (``ChangeStreamHistoryLost``), at ``watch()``
  or on a later ``getMore``;
* nx-27017 keeps ~1000 changelog rows per collection and resumes *silently*
  past the missing ones. Its tokens ``nx:<N>`` are gapless across the watched
  collections of a server, so with one watched collection a first event whose N
  is above the resume token's N + 1 proves the loss (:func:`history_gap`).

Either way :class:`~cdcflow.errors.HistoryLost` is raised and the producer
re-snapshots.

Events over 16 MB. Where the server supports it (7.0, and 6.0.9 on) the stream
asks for ``$changeStreamSplitLargeEvent`` and :class:`SplitEventAssembler` joins
the fragments, so the rest of the producer sees one event. Where it does not,
the server fails the getMore with BSONObjectTooLarge (10334) on that event, and
again on every resume: the reader then reopens the stream after the last event
it read with :data:`OVERSIZE_GUARD`, a stage that drops the document and the
update description of an event too large to send and marks it, so the event
still arrives with its token and documentKey; the producer records it in the
failed queue and goes on.

pymongo resumes a stream inside ``try_next()`` after a dropped connection
without telling anyone; the reader notices the new cursor, logs it at WARNING
and counts it in ``cdcflow_reconnects_total{service="mongodb"}``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pymongo.change_stream import CollectionChangeStream
from pymongo.collection import Collection
from pymongo.errors import InvalidOperation, OperationFailure

from cdcflow import metrics
from cdcflow.errors import HistoryLost
from cdcflow.events import OVERSIZE_MARK
from cdcflow.packing import chunks
from cdcflow.versions import InvalidEvent, Token, is_nx_token, nx_sequence, token_data

log = logging.getLogger(__name__)

Event = dict[str, Any]

HISTORY_LOST_CODE = 286  # ChangeStreamHistoryLost
TOO_LARGE_CODE = 10334  # BSONObjectTooLarge: an event over 16 MB
_MAX_AWAIT_MS = 500  # real MongoDB parks an idle getMore this long; nx-27017 answers at once
_OVERSIZE_BYTES = 15 * 1024 * 1024  # leaves room for the rest of the event under 16 MB
SPLIT_STAGE: dict[str, Any] = {"$changeStreamSplitLargeEvent": {}}
OVERSIZE_GUARD: list[dict[str, Any]] = [
    {
        "$addFields": {
            OVERSIZE_MARK: {
                "$gt": [
                    {
                        "$add": [
                            {"$bsonSize": {"$ifNull": ["$fullDocument", {}]}},
                            {"$bsonSize": {"$ifNull": ["$updateDescription", {}]}},
                        ]
                    },
                    _OVERSIZE_BYTES,
                ]
            }
        }
    },
    {
        "$addFields": {
            "fullDocument": {"$cond": [f"${OVERSIZE_MARK}", "$$REMOVE", "$fullDocument"]},
            "updateDescription": {"$cond": [f"${OVERSIZE_MARK}", "$$REMOVE", "$updateDescription"]},
        }
    },
]


ONE_EVENT_STRIPPED: list[dict[str, Any]] = [
    {"$addFields": {OVERSIZE_MARK: True}},
    {"$project": {"fullDocument": 0, "updateDescription": 0}},
]
"""For a server without ``$bsonSize`` (before 4.4): opened with a batch of one, right
before the event known to be too large, so that only that event loses its document."""


class PoisonStream(HistoryLost):
    """The stream cannot go on past an event (pymongo refused an event without a token).

    The event itself is not available: the producer records the failure and
    re-snapshots from a fresh stream, which starts after it.
    """

    reason = "missing_resume_token"


def supports_split_events(version: str | None) -> bool:
    """True for servers with ``$changeStreamSplitLargeEvent``: 7.0 on, and 6.0.9 on 6.0."""
    if not version:
        return False  # nx-27017 reports no version
    parts: list[int] = []
    for piece in version.split("-")[0].split(".")[:3]:
        if not piece.isdigit():
            return False
        parts.append(int(piece))
    numbers = (parts + [0, 0, 0])[:3]
    major, minor, patch = numbers
    return major >= 7 or ((major, minor) == (6, 0) and patch >= 9)


def measures_sizes(version: str | None) -> bool:
    """True for servers with ``$bsonSize`` (4.4 on), which :data:`OVERSIZE_GUARD` needs.

    Unknown versions (nx-27017, which never sends an event too large) count as having it.
    """
    if not version:
        return True
    pieces = version.split("-")[0].split(".")[:2]
    if len(pieces) < 2 or not all(piece.isdigit() for piece in pieces):
        return True
    return (int(pieces[0]), int(pieces[1])) >= (4, 4)


def is_history_lost(error: BaseException) -> bool:
    """True for MongoDB's "resume point no longer in the oplog" (code 286)."""
    if not isinstance(error, OperationFailure):
        return False
    details = error.details or {}
    return error.code == HISTORY_LOST_CODE or details.get("codeName") == "ChangeStreamHistoryLost"


def history_gap(resumed_from: Token | None, first: Token) -> bool:
    """True if nx-27017 skipped events between ``resumed_from`` and the first event read.

    Pure: compares N of ``nx:<N>`` as integers ("nx:9" sorts after "nx:10" as text).
    Real MongoDB tokens never show a gap here (MongoDB reports the loss itself).
    """
    if resumed_from is None or not (is_nx_token(resumed_from) and is_nx_token(first)):
        return False
    return nx_sequence(first) > nx_sequence(resumed_from) + 1


class SplitEventAssembler:
    """Joins ``$changeStreamSplitLargeEvent`` fragments into the original event.

    Fragments of one event arrive consecutively, numbered ``1..of``; each carries
    some of the top-level fields. The merged event keeps the *last* fragment's
    ``_id``: resuming after it must not replay part of the event.
    """

    def __init__(self) -> None:
        self._parts: list[Event] = []

    @property
    def pending(self) -> bool:
        """True while fragments of an unfinished event are held."""
        return bool(self._parts)

    def feed(self, event: Event) -> Event | None:
        """The whole event once its last fragment arrives; None before that."""
        split = event.get("splitEvent")
        if split is None:
            if self._parts:
                self._parts = []
                raise InvalidEvent("a split event ended before its last fragment")
            return event
        fragment, total = int(split["fragment"]), int(split["of"])
        if fragment != len(self._parts) + 1:
            self._parts = []
            raise InvalidEvent(f"split event fragment {fragment} of {total} out of order")
        self._parts.append(event)
        if fragment < total:
            return None
        merged: Event = {}
        for part in self._parts:
            merged.update(part)
        del merged["splitEvent"]
        merged["_id"] = self._parts[-1]["_id"]
        self._parts = []
        return merged


class ChangeReader:
    """One change stream on the source collection, with ``fullDocument: updateLookup``.

    :meth:`open` starts it (fresh, or after a token); :meth:`next` returns whole
    events or None when the server had nothing. Both raise :class:`HistoryLost`.
    Other errors (server gone) propagate: pymongo already retried once.
    """

    def __init__(
        self,
        collection: Collection[Event],
        *,
        batch_size: int,
        split_events: bool = False,
        measures_sizes: bool = True,
    ) -> None:
        self._collection = collection
        self._batch_size = batch_size
        self._split_events = split_events  # the server has $changeStreamSplitLargeEvent
        self._measures_sizes = measures_sizes  # the server has $bsonSize (OVERSIZE_GUARD)
        self._guard = False  # OVERSIZE_GUARD on, after a BSONObjectTooLarge
        # Before 4.4, after a BSONObjectTooLarge: events one per getMore until the large one
        # fails alone (_one_by_one), then that one event read without its document (_strip).
        self._one_by_one = 0  # events left to read one by one; 0: normal batches
        self._strip = False
        self._reopen_after_strip = False
        self._stream: CollectionChangeStream[Event] | None = None
        self._cursor: Any = None  # pymongo's cursor under the stream: replaced on a resume
        self._resumed_from: Token | None = None
        self._assembler = SplitEventAssembler()
        self.resumes = 0  # resumes pymongo did on its own inside try_next()

    def open(self, resume_after: Token | None = None) -> Token:
        """Open the stream; returns its start token (exists before any event).

        Fresh, that token is the snapshot point: nx-27017 gives ``nx:<last N>``,
        MongoDB the post-batch high-water mark.
        """
        self.close()
        if resume_after is None:
            # Resuming after a fragment (server lost mid-event) continues the same event.
            self._assembler = SplitEventAssembler()
        try:
            self._stream = self._collection.watch(
                pipeline=self.pipeline() or None,
                full_document="updateLookup",
                resume_after=resume_after,
                batch_size=1 if self._one_by_one else self._batch_size,
                max_await_time_ms=_MAX_AWAIT_MS,
            )
        except OperationFailure as error:
            if is_history_lost(error):
                raise HistoryLost(_lost_message(resume_after, error)) from error
            raise
        self._resumed_from = resume_after
        self._cursor = getattr(self._stream, "_cursor", None)
        token = self._stream.resume_token
        if token is None:  # MongoDB before 4.0.7 gives no initial token
            raise InvalidEvent("the change stream did not report a start token")
        return dict(token)

    def pipeline(self) -> list[dict[str, Any]]:
        """The stages the stream is opened with (split must be the last one)."""
        stages: list[dict[str, Any]] = []
        if self._strip:
            stages += ONE_EVENT_STRIPPED
        if self._guard:
            stages += OVERSIZE_GUARD
        if self._split_events:
            stages.append(SPLIT_STAGE)
        return stages

    @property
    def resume_token(self) -> Token | None:
        """Position after the last event read (or the server's post-batch mark)."""
        if self._stream is None:
            return None
        token = self._stream.resume_token
        return None if token is None else dict(token)

    @property
    def mid_event(self) -> bool:
        """True while a split event is half read (its token must not be saved)."""
        return self._assembler.pending

    def batch_done(self) -> bool:
        """True when the next :meth:`next` needs a round trip to the server."""
        stream = self._stream
        if stream is None:
            return True
        has_next = getattr(getattr(stream, "_cursor", None), "_has_next", None)
        return True if has_next is None else not has_next()

    def next(self) -> Event | None:
        """The next whole event, or None if the server had none right now."""
        if self._reopen_after_strip:
            # The large event went out without its document: back to normal batches after it.
            self._reopen_after_strip = False
            self._reopen(self.resume_token)
        stream = self._stream
        if stream is None:
            raise RuntimeError("ChangeReader.next() before open()")
        while True:
            try:
                event = stream.try_next()
            except OperationFailure as error:
                if is_history_lost(error):
                    raise HistoryLost(_lost_message(self._resumed_from, error)) from error
                if error.code == TOO_LARGE_CODE:
                    stream = self._reopen_guarded(error)
                    continue
                raise
            except InvalidOperation as error:
                # pymongo refuses an event without a resume token and closes the stream.
                raise PoisonStream(f"the change stream cannot go on: {error}") from error
            self._notice_resume(stream)
            if event is None:
                return None
            if self._strip:
                self._strip, self._one_by_one, self._reopen_after_strip = False, 0, True
            elif self._one_by_one:
                self._one_by_one -= 1
                if not self._one_by_one:  # no event failed alone (it may have shrunk since)
                    self._reopen_after_strip = True
            if self._resumed_from is not None:
                resumed_from, self._resumed_from = self._resumed_from, None
                first = event.get("_id")
                if (
                    isinstance(first, dict)
                    and is_nx_token(first)
                    and history_gap(resumed_from, first)
                ):
                    raise HistoryLost(
                        f"nx-27017 resumed after {token_data(resumed_from)} at "
                        f"{token_data(first)}: the events between were pruned"
                    )
            if "splitEvent" in event or self._assembler.pending:
                try:
                    merged = self._assembler.feed(event)
                except InvalidEvent as error:
                    # Part of an event is missing: only a snapshot can restore its document.
                    raise HistoryLost(
                        f"a split change event cannot be reassembled: {error}"
                    ) from error
                if merged is None:
                    continue
                return merged
            return event

    def _notice_resume(self, stream: Any) -> None:
        cursor = getattr(stream, "_cursor", None)
        if cursor is not None and cursor is not self._cursor:
            if self._cursor is not None:
                self.resumes += 1
                metrics.RECONNECTS.labels(service="mongodb").inc()
                log.warning(
                    "the MongoDB change stream was resumed after a lost connection or "
                    "cursor (pymongo did it inside try_next); nothing is lost",
                    extra={"stage": "producer", "service": "mongodb"},
                )
            self._cursor = cursor

    def _reopen_guarded(self, error: OperationFailure) -> CollectionChangeStream[Event]:
        """After BSONObjectTooLarge: reopen after the last event read, with the guard."""
        if self._guard or self._split_events or self._strip:
            # Even trimmed (or split) the event cannot be sent: only a snapshot helps.
            raise HistoryLost(f"a change event cannot be read even without its document: {error}")
        token = self.resume_token
        if not self._measures_sizes:
            return self._reopen_before_4_4(token)
        log.warning(
            "a change event is over MongoDB's 16 MB limit and this server cannot split it "
            "(needs 6.0.9 or 7.0+): reopening the stream after %s with a stage that leaves "
            "such documents out; the event is recorded in the failed queue",
            token_data(token) if token else "the stream start",
            extra={"stage": "producer", "service": "mongodb", "reason": "event_too_large"},
        )
        self._guard = True
        return self._reopen(token)

    def _reopen_before_4_4(self, token: Token | None) -> CollectionChangeStream[Event]:
        """No ``$bsonSize``: the failed getMore may also have held ordinary events before
        the large one, so read one event per getMore until the large one fails alone, then
        read just that one without its document (recorded, like the guard's)."""
        if not self._one_by_one:
            log.warning(
                "a change event is over MongoDB's 16 MB limit and this server (before 4.4) "
                "can neither split nor measure it: reading events one by one after %s to "
                "find it; it is recorded in the failed queue without its document",
                token_data(token) if token else "the stream start",
                extra={"stage": "producer", "service": "mongodb", "reason": "event_too_large"},
            )
            self._one_by_one = max(1, self._batch_size)
        else:
            self._strip = True
        return self._reopen(token)

    def _reopen(self, token: Token | None) -> CollectionChangeStream[Event]:
        """Open again after ``token``, keeping the history-gap check of the first open."""
        resumed_from = self._resumed_from
        self.open(resume_after=token)
        self._resumed_from = resumed_from
        assert self._stream is not None
        return self._stream

    def close(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            try:
                stream.close()
            except Exception:  # closing a stream on a dead connection: nothing to keep
                log.debug("closing the change stream failed", exc_info=True)


def _lost_message(token: Token | None, error: OperationFailure) -> str:
    where = token_data(token) if token else "the stream start"
    reason = (error.details or {}).get("errmsg") or str(error)
    return f"MongoDB cannot resume after {where} (error {error.code}: {reason})"


def snapshot_batches(collection: Collection[Event], batch_size: int) -> Iterator[list[Event]]:
    """Every document of ``collection``, ``batch_size`` at a time (natural order)."""
    with collection.find({}, batch_size=batch_size) as cursor:
        yield from chunks(cursor, batch_size)
