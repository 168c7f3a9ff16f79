"""Reading the change stream: lost history (both kinds), split events, and the loop's answer.

MongoDB's error 286 is taken from the real reply in the fixtures; nx-27017's
silent loss is the token gap. Fakes stand in for pymongo's collection and stream
so the producer loop's reaction (warn, count, re-snapshot, save only confirmed
tokens) is checked without a server; the integration tests do it for real.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo.errors import AutoReconnect, OperationFailure

from cdcflow import metrics
from cdcflow.config import Settings
from cdcflow.errors import HistoryLost
from cdcflow.events import decode_envelope, encode_change
from cdcflow.health import Health
from cdcflow.packing import unpack
from cdcflow.producer.changestream import (
    ChangeReader,
    SplitEventAssembler,
    history_gap,
    is_history_lost,
)
from cdcflow.producer.main import Producer
from cdcflow.producer.outbox import Entry
from cdcflow.versions import InvalidEvent


def nx(n: int) -> dict[str, str]:
    return {"_data": f"nx:{n}"}


def events_by_label(fixture_events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {line["label"]: line["event"] for line in fixture_events}


@pytest.fixture
def lost_reply(fixture_events: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(fixture_events[-1]["event"])


def history_lost_error(reply: dict[str, Any]) -> OperationFailure:
    """What pymongo raises for that reply (message, code, the reply as details)."""
    return OperationFailure(reply["errmsg"], reply["code"], reply)


# --- pure checks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("saved", "first", "lost"),
    [
        (nx(5), nx(6), False),
        (nx(5), nx(7), True),
        (nx(9), nx(10), False),  # numeric: "nx:9" > "nx:10" as text
        (nx(9), nx(100), True),
        (nx(1000), nx(1001), False),
        (None, nx(50), False),  # a fresh stream has nothing to compare with
        (nx(5), nx(5), False),
    ],
)
def test_history_gap_on_nx_tokens(saved, first, lost):
    assert history_gap(saved, first) is lost


def test_history_gap_never_fires_on_real_tokens(fixture_events):
    events = events_by_label(fixture_events)
    early = events["insert"]["_id"]
    late = events["delete (documentKey only, no fullDocument)"]["_id"]
    assert history_gap(early, late) is False
    assert history_gap(nx(1), late) is False


def test_the_fixture_error_reply_is_history_lost(lost_reply):
    assert lost_reply["code"] == 286
    assert is_history_lost(history_lost_error(lost_reply))
    assert not is_history_lost(OperationFailure("cursor not found", 43, {"code": 43}))
    assert not is_history_lost(AutoReconnect("connection reset"))


# --- split events ---------------------------------------------------------------------


def split(event: dict[str, Any], groups: list[list[str]]) -> list[dict[str, Any]]:
    """Fragments as $changeStreamSplitLargeEvent makes them: each with its own _id."""
    data = event["_id"]["_data"]
    fragments = []
    for number, fields in enumerate(groups, start=1):
        fragment = {key: event[key] for key in fields}
        fragment["_id"] = {"_data": f"{data}{number:02X}"}
        fragment["splitEvent"] = {"fragment": number, "of": len(groups)}
        fragments.append(fragment)
    return fragments


def test_split_fragments_are_reassembled(fixture_events):
    event = events_by_label(fixture_events)["update with updateLookup"]
    parts = split(
        event,
        [
            ["operationType", "clusterTime", "wallTime", "ns", "documentKey"],
            ["updateDescription"],
            ["fullDocument"],
        ],
    )
    assembler = SplitEventAssembler()
    assert assembler.feed(parts[0]) is None and assembler.pending
    assert assembler.feed(parts[1]) is None
    merged = assembler.feed(parts[2])
    assert merged is not None and not assembler.pending
    assert "splitEvent" not in merged
    assert merged["_id"] == parts[-1]["_id"]  # resume after the whole event
    assert {k: v for k, v in merged.items() if k != "_id"} == {
        k: v for k, v in event.items() if k != "_id"
    }
    encoded = encode_change(merged)
    assert encoded.message_id == parts[-1]["_id"]["_data"]
    assert decode_envelope(encoded.body).doc is not None


def test_split_fragments_out_of_order_are_refused(fixture_events):
    event = events_by_label(fixture_events)["insert"]
    parts = split(event, [["operationType", "ns"], ["documentKey", "fullDocument"]])
    with pytest.raises(InvalidEvent):
        SplitEventAssembler().feed(parts[1])
    assembler = SplitEventAssembler()
    assembler.feed(parts[0])
    with pytest.raises(InvalidEvent):
        assembler.feed(event)  # a whole event before the last fragment


# --- the reader over fake pymongo objects ---------------------------------------------


class FakeStream:
    """pymongo's ChangeStream as the reader uses it; sets ``stop`` when it runs dry."""

    def __init__(
        self,
        events: list[dict[str, Any]],
        start: dict[str, Any],
        *,
        error: Exception | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self._events = deque(events)
        self._token = start
        self._error = error
        self._stop = stop
        self.closed = False

    @property
    def resume_token(self) -> dict[str, Any]:
        return self._token

    def try_next(self) -> dict[str, Any] | None:
        if self._error is not None:
            raise self._error
        if not self._events:
            if self._stop is not None:
                self._stop.set()
            return None
        event = self._events.popleft()
        self._token = event.get("_id", self._token)
        return event

    def close(self) -> None:
        self.closed = True


class FakeCursor:
    def __init__(self, documents: list[dict[str, Any]]) -> None:
        self._documents = documents

    def __enter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._documents)

    def __exit__(self, *exc: object) -> None:
        return None


class FakeCollection:
    """A source collection: ``watch`` answers through ``on_watch``, ``find`` lists documents."""

    def __init__(self, documents: list[dict[str, Any]] | None = None) -> None:
        self.documents = documents or []
        self.watches: list[dict[str, Any]] = []
        self.on_watch: Any = None
        self.offsets: dict[str, dict[str, Any]] = {}
        self.writes: list[dict[str, Any]] = []

    def watch(self, **options: Any) -> FakeStream:
        self.watches.append(options)
        stream: FakeStream = self.on_watch(options)
        return stream

    def find(self, *args: Any, **kwargs: Any) -> FakeCursor:
        return FakeCursor(self.documents)

    # the offsets collection
    def find_one(self, query: dict[str, Any]) -> dict[str, Any] | None:
        return self.offsets.get(query["_id"])

    def update_one(self, query: dict[str, Any], update: dict[str, Any], upsert: bool) -> None:
        assert upsert and set(update) == {"$set"}
        self.writes.append(dict(update["$set"]))
        self.offsets.setdefault(query["_id"], {"_id": query["_id"]}).update(update["$set"])


class FakeClient:
    def __init__(self, source: FakeCollection, offsets: FakeCollection) -> None:
        self._collections = {"views": source, "cdcflow_offsets": offsets}

    def __getitem__(self, db: str) -> dict[str, FakeCollection]:
        assert db == "media"
        return self._collections

    def close(self) -> None:
        return None


class FakePublisher:
    """Confirms everything at once: the watermark is the newest checkpoint submitted."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.confirmed_token: dict[str, Any] | None = None
        self.watermark_at = 1.0
        self.unconfirmed = 0
        self.reconnects = 0

    def submit(self, entries: list[Entry], stop: threading.Event | None = None) -> bool:
        self.entries.extend(entries)
        for entry in entries:
            if entry.checkpoint is not None:
                self.confirmed_token = entry.checkpoint
        return True

    def drain(self, timeout: float, stop: threading.Event | None = None) -> bool:
        return True

    @property
    def published(self) -> int:
        return sum(entry.changes for entry in self.entries)

    confirmed = published

    @property
    def messages_confirmed(self) -> int:
        return sum(1 for entry in self.entries if entry.body is not None)

    def stop(self, timeout: float = 5.0) -> None:
        return None

    def bodies(self) -> list[bytes]:
        """Every change message's body, batch messages unpacked, in order."""
        bodies: list[bytes] = []
        for entry in self.entries:
            if entry.body is None or entry.routing_key is not None:  # a failed-event record
                continue
            if entry.changes > 1:
                bodies += unpack(entry.body).changes
            else:
                bodies.append(entry.body)
        return bodies

    def ops(self) -> list[str]:
        return [decode_envelope(body).op.value for body in self.bodies()]


def test_reader_raises_history_lost_at_watch(lost_reply):
    collection = FakeCollection()

    def refuse(options: dict[str, Any]) -> FakeStream:
        raise history_lost_error(lost_reply)

    collection.on_watch = refuse
    with pytest.raises(HistoryLost, match="286"):
        ChangeReader(collection, batch_size=10).open(resume_after=nx(3))  # type: ignore[arg-type]


def test_reader_raises_history_lost_on_get_more(lost_reply):
    collection = FakeCollection()
    collection.on_watch = lambda options: FakeStream(
        [], options["resume_after"], error=history_lost_error(lost_reply)
    )
    reader = ChangeReader(collection, batch_size=10)  # type: ignore[arg-type]
    reader.open(resume_after=nx(3))
    with pytest.raises(HistoryLost, match="oplog"):
        reader.next()


def test_reader_checks_only_the_first_event_after_resuming():
    collection = FakeCollection()
    events = [{"_id": nx(n), "operationType": "insert"} for n in (4, 5, 9)]
    collection.on_watch = lambda options: FakeStream(events, options["resume_after"])
    reader = ChangeReader(collection, batch_size=10)  # type: ignore[arg-type]
    reader.open(resume_after=nx(3))
    assert [reader.next()["_id"] for _ in range(3)] == [nx(4), nx(5), nx(9)]  # type: ignore[index]
    assert reader.next() is None
    assert collection.watches[0]["full_document"] == "updateLookup"
    assert collection.watches[0]["batch_size"] == 10


def test_reader_reports_a_gap_after_resuming():
    collection = FakeCollection()
    collection.on_watch = lambda options: FakeStream([{"_id": nx(1200)}], options["resume_after"])
    reader = ChangeReader(collection, batch_size=10)  # type: ignore[arg-type]
    reader.open(resume_after=nx(7))
    with pytest.raises(HistoryLost, match="nx:7"):
        reader.next()


def test_reader_reassembles_split_events_even_across_a_reconnect(fixture_events):
    event = events_by_label(fixture_events)["replace"]
    parts = split(
        event, [["operationType", "ns", "documentKey"], ["clusterTime"], ["fullDocument"]]
    )
    collection = FakeCollection()
    streams = deque([FakeStream(parts[:2], nx(0)), FakeStream(parts[2:], parts[1]["_id"])])
    collection.on_watch = lambda options: streams.popleft()
    reader = ChangeReader(collection, batch_size=10)  # type: ignore[arg-type]
    reader.open()
    assert reader.next() is None and reader.mid_event  # two fragments, then the server is gone
    reader.open(resume_after=reader.resume_token)  # resumes after fragment 2
    merged = reader.next()
    assert merged is not None and merged["_id"] == parts[2]["_id"]
    assert merged["fullDocument"] == event["fullDocument"] and not reader.mid_event


def test_reader_turns_a_broken_split_into_history_lost(fixture_events):
    event = events_by_label(fixture_events)["insert"]
    parts = split(event, [["operationType"], ["documentKey"], ["fullDocument"]])
    collection = FakeCollection()
    collection.on_watch = lambda options: FakeStream([parts[0], parts[2]], nx(0))
    reader = ChangeReader(collection, batch_size=10)  # type: ignore[arg-type]
    reader.open()
    with pytest.raises(HistoryLost, match="split"):
        reader.next()


# --- the producer loop's answer -------------------------------------------------------


def run_loop(
    collection: FakeCollection, saved: dict[str, Any] | None
) -> tuple[Producer, FakePublisher, FakeCollection]:
    settings = Settings(mongo_collection="views", mongo_db="media", metrics_port=0)
    offsets = FakeCollection()
    if saved is not None:
        offsets.offsets["media.views"] = {"_id": "media.views", "token": saved}
    publisher = FakePublisher()
    stop = threading.Event()
    producer = Producer(
        settings,
        FakeClient(collection, offsets),  # type: ignore[arg-type]
        publisher,  # type: ignore[arg-type]
        Health("producer"),
        stop,
    )
    collection.stop = stop  # type: ignore[attr-defined]
    producer.run()
    producer.close()
    return producer, publisher, offsets


def lost(name: str) -> float:
    return metrics.REGISTRY.get_sample_value(name) or 0.0


@pytest.mark.parametrize("where", ["watch", "getMore"])
def test_error_286_makes_the_producer_resnapshot(fixture_events, lost_reply, where):
    events = events_by_label(fixture_events)
    old = events["insert"]["_id"]
    point = events["update with updateLookup"]["_id"]
    later = events["delete (documentKey only, no fullDocument)"]
    collection = FakeCollection([{"_id": "a", "x": 1}, {"_id": "b", "x": 2}])

    def watch(options: dict[str, Any]) -> FakeStream:
        if options["resume_after"] is not None:
            if where == "watch":
                raise history_lost_error(lost_reply)
            return FakeStream([], old, error=history_lost_error(lost_reply))
        return FakeStream([later], point, stop=collection.stop)  # type: ignore[attr-defined]

    collection.on_watch = watch
    before = lost("cdcflow_history_lost_total")
    producer, publisher, offsets = run_loop(collection, saved=old)

    assert lost("cdcflow_history_lost_total") == before + 1
    assert (producer.stats.history_lost, producer.stats.snapshots) == (1, 1)
    assert publisher.ops() == ["snapshot", "snapshot", "snapshot_end", "delete"]
    assert [w["resume_after"] for w in collection.watches] == [old, None]
    # The lost token is cleared first, then only confirmed tokens are saved.
    assert offsets.writes[0]["token"] is None and offsets.writes[0]["snapshot"] == "history_lost"
    assert offsets.offsets["media.views"]["token"] == later["_id"]


def test_nx_gap_makes_the_producer_resnapshot():
    collection = FakeCollection([{"_id": "a"}])

    def watch(options: dict[str, Any]) -> FakeStream:
        if options["resume_after"] is not None:
            return FakeStream([{"_id": nx(2500), "operationType": "insert"}], nx(10))
        stop = collection.stop  # type: ignore[attr-defined]
        return FakeStream(
            [
                {
                    "_id": nx(2501),
                    "operationType": "update",
                    "documentKey": {"_id": "a"},
                    "fullDocument": None,  # deleted before the lookup: published as doc null
                }
            ],
            nx(2500),
            stop=stop,
        )

    collection.on_watch = watch
    producer, publisher, offsets = run_loop(collection, saved=nx(10))
    assert producer.stats.history_lost == 1
    assert publisher.ops() == ["snapshot", "snapshot_end", "update"]
    assert decode_envelope(publisher.entries[-1].body or b"").doc is None
    assert offsets.offsets["media.views"]["token"] == nx(2501)


class StoppingOffsets(FakeCollection):
    """The offsets collection; once capture is marked stopped, the test stops the loop."""

    def update_one(self, query: dict[str, Any], update: dict[str, Any], upsert: bool) -> None:
        super().update_one(query, update, upsert)
        if "stopped" in update["$set"]:
            self.stop.set()  # type: ignore[attr-defined]


@pytest.mark.parametrize("ending", ["drop", "rename", "dropDatabase", "invalidate"])
def test_stream_end_stops_capture_and_unsupported_events_are_skipped(ending, caplog):
    """Today's main re-snapshotted the emptied collection here (and swept the warehouse)."""
    collection = FakeCollection([{"_id": "a"}])
    events = [
        {"_id": nx(4), "operationType": "createIndexes"},
        {"_id": nx(5), "operationType": ending},
    ]
    collection.on_watch = lambda options: FakeStream(events, nx(3))
    settings = Settings(mongo_collection="views", mongo_db="media", metrics_port=0)
    offsets = StoppingOffsets()
    offsets.offsets["media.views"] = {"_id": "media.views", "token": nx(3)}
    publisher, stop = FakePublisher(), threading.Event()
    offsets.stop = stop  # type: ignore[attr-defined]
    producer = Producer(
        settings,
        FakeClient(collection, offsets),  # type: ignore[arg-type]
        publisher,  # type: ignore[arg-type]
        Health("producer"),
        stop,
    )

    def skipped() -> float:
        labels = {"reason": "unsupported_operation"}
        return metrics.REGISTRY.get_sample_value("cdcflow_events_skipped_total", labels) or 0.0

    before = skipped()
    with caplog.at_level("WARNING"):
        producer.run()
    producer.close()
    assert producer.stats.skipped == 1 and producer.stats.snapshots == 0
    assert skipped() == before + 1
    assert any(
        r.levelname == "WARNING" and "createIndexes" in r.getMessage() for r in caplog.records
    )
    assert publisher.ops() == []  # no re-snapshot, no sweep: the warehouse stays as it is
    assert [w["resume_after"] for w in collection.watches] == [nx(3)]
    marker = offsets.offsets["media.views"]["stopped"]
    assert (marker["reason"], marker["token"]) == (ending, nx(5))
    assert offsets.offsets["media.views"]["token"] == nx(5)  # saved past the event
    assert producer.stats.stopped == ending
    stopped = metrics.REGISTRY.get_sample_value("cdcflow_capture_stopped", {"reason": ending})
    assert stopped == 1.0
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors and "deleteOne" in errors[0] and "keeps every row" in errors[0]


def test_changes_are_packed_in_order_and_tokens_never_run_ahead_of_their_message():
    """pack_max_changes 3: a full batch closes at three; a skipped event closes the open
    batch before its own checkpoint; the tail is published when the stream runs dry."""

    def insert(n: int) -> dict[str, Any]:
        return {
            "_id": nx(n),
            "operationType": "insert",
            "ns": {"db": "media", "coll": "views"},
            "documentKey": {"_id": f"d{n}"},
            "fullDocument": {"_id": f"d{n}", "n": n},
        }

    events = [insert(n) for n in range(11, 16)]
    events += [{"_id": nx(16), "operationType": "createIndexes"}, insert(17), insert(18)]
    collection = FakeCollection()
    stop = threading.Event()
    collection.on_watch = lambda options: FakeStream(events, nx(10), stop=stop)
    settings = Settings(
        mongo_collection="views", mongo_db="media", metrics_port=0, pack_max_changes=3
    )
    offsets = FakeCollection()
    offsets.offsets["media.views"] = {"_id": "media.views", "token": nx(10)}
    publisher = FakePublisher()
    producer = Producer(
        settings,
        FakeClient(collection, offsets),  # type: ignore[arg-type]
        publisher,  # type: ignore[arg-type]
        Health("producer"),
        stop,
    )
    producer.run()
    producer.close()
    shape = [(entry.changes, entry.checkpoint) for entry in publisher.entries]
    assert shape == [(3, nx(13)), (2, nx(15)), (0, nx(16)), (2, nx(18))]
    assert [decode_envelope(body).id for body in publisher.bodies()] == [
        f"d{n}" for n in (11, 12, 13, 14, 15, 17, 18)
    ]
    # Each message's checkpoint is the token of its own last change: never one ahead.
    for entry in publisher.entries:
        if entry.changes > 1:
            assert entry.body is not None
            last = decode_envelope(unpack(entry.body).changes[-1])
            assert last.token == entry.checkpoint
    assert offsets.offsets["media.views"]["token"] == nx(18)
    assert producer.stats.confirmed == 7
