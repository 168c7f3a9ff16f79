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
re-snapshots. Events over 16 MB arrive from MongoDB as ``splitEvent`` fragments
(``$changeStreamSplitLargeEvent``); :class:`SplitEventAssembler` joins them so
the rest of the producer sees one event.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pymongo.change_stream import CollectionChangeStream
from pymongo.collection import Collection
from pymongo.errors import OperationFailure

from cdcflow.errors import HistoryLost
from cdcflow.versions import InvalidEvent, is_nx_token, nx_sequence, token_data

log = logging.getLogger(__name__)

Token = dict[str, Any]
Event = dict[str, Any]

HISTORY_LOST_CODE = 286  # ChangeStreamHistoryLost
_MAX_AWAIT_MS = 500  # real MongoDB parks an idle getMore this long; nx-27017 answers at once


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

    def __init__(self, collection: Collection[Event], *, batch_size: int) -> None:
        self._collection = collection
        self._batch_size = batch_size
        self._stream: CollectionChangeStream[Event] | None = None
        self._resumed_from: Token | None = None
        self._assembler = SplitEventAssembler()

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
                full_document="updateLookup",
                resume_after=resume_after,
                batch_size=self._batch_size,
                max_await_time_ms=_MAX_AWAIT_MS,
            )
        except OperationFailure as error:
            if is_history_lost(error):
                raise HistoryLost(_lost_message(resume_after, error)) from error
            raise
        self._resumed_from = resume_after
        token = self._stream.resume_token
        if token is None:  # MongoDB before 4.0.7 gives no initial token
            raise InvalidEvent("the change stream did not report a start token")
        return dict(token)

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
        stream = self._stream
        if stream is None:
            raise RuntimeError("ChangeReader.next() before open()")
        while True:
            try:
                event = stream.try_next()
            except OperationFailure as error:
                if is_history_lost(error):
                    raise HistoryLost(_lost_message(self._resumed_from, error)) from error
                raise
            if event is None:
                return None
            if self._resumed_from is not None:
                resumed_from, self._resumed_from = self._resumed_from, None
                if history_gap(resumed_from, event["_id"]):
                    raise HistoryLost(
                        f"nx-27017 resumed after {token_data(resumed_from)} at "
                        f"{token_data(event['_id'])}: the events between were pruned"
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
    batch: list[Event] = []
    with collection.find({}, batch_size=batch_size) as cursor:
        for document in cursor:
            batch.append(document)
            if len(batch) >= batch_size:
                yield batch
                batch = []
    if batch:
        yield batch
