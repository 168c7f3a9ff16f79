"""The workload simulator: viewing logs written to MongoDB as a real product would.

One document per viewing: an insert starts it, updates move ``watched_time`` on (the
viewer keeps watching), a delete removes it; every write sets ``updated_at``, from
which the pipeline measures freshness. ``bad_ratio`` of the writes break a cleaning
rule on purpose (:data:`BAD_KINDS`). The pure half (:class:`Workload` and what it
uses, :func:`pace`) takes seeded ``random.Random`` instances and the clock as
arguments: same seed, same operations and values (ids differ by the run tag only,
which keeps two runs from colliding). :class:`Simulator` paces and writes them.

**Batches and order.** Single writes top out near 1.4k ops/s on nx-27017, so writes go
out as ``bulk_write`` batches of up to ``write_batch`` ops, *unordered*. That is
correct because :class:`Workload` puts each ``_id`` at most once in a batch (a
document written in a batch is held out of the pick set until the next), so no
update can race its own insert or delete, whatever order the server applies.
Ordered batches need no such rule, but pymongo sends one command per run of
same-type ops. Measured (60k mixed events, batch 500, nx-27017 on 2 shared CPUs):
unordered ~4.0-4.5k events/s, ordered 1.3-1.7k. nx-27017 spends ~200 µs of CPU per
op and the client ~25, so the server is the limit: building the next batch during
a write, or two writes in flight, gained nothing that held up under load. No
transactions: nx-27017 does not isolate them.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import logging
import math
import random
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import pymongo
from pymongo import DeleteOne, InsertOne, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, ConnectionFailure

from cdcflow import metrics
from cdcflow.config import Settings
from cdcflow.errors import ServiceUnavailable
from cdcflow.mongo import HINT, open_mongo_client
from cdcflow.rules import DEVICES, FIELD_NAMES, FIELDS, MAX_KEY_LENGTH, RULES_BY_CODE, Action

log = logging.getLogger(__name__)

WRITES_PER_SECOND = 15.0  # at low rates: small batches, about this many writes a second
ZIPF_EXPONENT = 1.1
DEVICE_WEIGHTS = dict(zip(DEVICES, (36, 26, 16, 12, 7, 3), strict=True))
COUNTRY_WEIGHTS = {
    "US": 22, "IN": 14, "BR": 9, "GB": 6, "DE": 6, "FR": 5, "JP": 5, "MX": 4, "ID": 4, "PT": 3,
    "ES": 3, "CA": 3, "IT": 3, "KR": 3, "NG": 2, "AU": 2, "PL": 2, "TR": 2, "NL": 1, "SE": 1,
}  # fmt: skip
_RUN_TAG = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")


def _draw(cum_weights: tuple[float, ...], rng: random.Random) -> int:
    """An index drawn with the weights whose running sums are given: O(log n)."""
    return bisect.bisect(cum_weights, rng.random() * cum_weights[-1], 0, len(cum_weights) - 1)


_DEVICES, _COUNTRIES = tuple(DEVICE_WEIGHTS), tuple(COUNTRY_WEIGHTS)
_DEVICE_CUM = tuple(itertools.accumulate(DEVICE_WEIGHTS.values()))
_COUNTRY_CUM = tuple(itertools.accumulate(COUNTRY_WEIGHTS.values()))


def utc_now() -> dt.datetime:
    """Now, truncated to the millisecond BSON stores, so kept values equal stored ones."""
    now = dt.datetime.now(dt.UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


# --- documents ------------------------------------------------------------------------


@dataclass(frozen=True)
class Catalog:
    """Videos ``vid_0000``…: a fixed length each, popularity falling with rank (Zipf)."""

    video_ids: tuple[str, ...]
    lengths: tuple[int, ...]  # seconds, same index as video_ids
    cum_weights: tuple[float, ...]  # running sums of 1 / rank ** exponent

    @classmethod
    def build(cls, size: int, seed: int, exponent: float = ZIPF_EXPONENT) -> Catalog:
        rng = random.Random(f"catalog:{seed}")
        width = max(4, len(str(size - 1)))
        # Log-normal lengths around 8 minutes: many clips, some films (15 s to 3 h).
        lengths = [round(rng.lognormvariate(math.log(480), 0.9)) for _ in range(size)]
        return cls(
            tuple(f"vid_{index:0{width}d}" for index in range(size)),
            tuple(min(10_800, max(15, length)) for length in lengths),
            tuple(itertools.accumulate(1 / rank**exponent for rank in range(1, size + 1))),
        )


class Viewing(NamedTuple):
    """The state of one viewing: a tuple, because the simulator keeps every live one."""

    video_id: str
    user_id: str
    device: str
    country: str
    started_at: dt.datetime
    watched_time: float
    total_video_time: int

    def document(self, doc_id: str, updated_at: dt.datetime) -> dict[str, Any]:
        """The MongoDB document: ``_id`` and exactly the fields of ``rules.FIELDS``."""
        return {"_id": doc_id, **self._asdict(), "updated_at": updated_at}

    def advance(self, rng: random.Random) -> Viewing:
        """The viewer kept watching: 5-35 % of the video more, never past its end."""
        watched = self.watched_time + rng.uniform(0.05, 0.35) * self.total_video_time
        return self._replace(watched_time=min(float(self.total_video_time), round(watched, 1)))


def new_viewing(rng: random.Random, catalog: Catalog, *, users: int, now: dt.datetime) -> Viewing:
    """A viewing that started up to 90 s before ``now``."""
    video = _draw(catalog.cum_weights, rng)
    total = catalog.lengths[video]
    watched = round(rng.uniform(0.0, min(total, 90)), 1)
    started = now - dt.timedelta(milliseconds=round(watched * 1000))
    user = f"user_{rng.randrange(users):0{max(5, len(str(users - 1)))}d}"
    device, country = _DEVICES[_draw(_DEVICE_CUM, rng)], _COUNTRIES[_draw(_COUNTRY_CUM, rng)]
    return Viewing(catalog.video_ids[video], user, device, country, started, watched, total)


def make_viewing(
    doc_id: str, rng: random.Random, catalog: Catalog, *, users: int, now: dt.datetime
) -> dict[str, Any]:
    """A good viewing document: every cleaning rule passes it unchanged."""
    return new_viewing(rng, catalog, users=users, now=now).document(doc_id, now)


# --- bad documents --------------------------------------------------------------------

_MISSING: Any = object()  # a value that means "remove the field"
_KEYS = ("video_id", "user_id")
_NUMBERS = ("watched_time", "total_video_time")
_REQUIRED = tuple(spec.name for spec in FIELDS if spec.required)
ValueMaker = Callable[[dict[str, Any], str, random.Random], Any]  # (good doc, field, rng)


@dataclass(frozen=True)
class BadKind:
    """One way a writer gets a document wrong, and the cleaning rule that catches it."""

    name: str
    rule: str  # the code in cdcflow.rules.RULES that fixes or rejects it
    fields: tuple[str, ...]  # one of them, drawn, is broken
    value: ValueMaker = field(repr=False, compare=False)

    @property
    def action(self) -> Action:
        return RULES_BY_CODE[self.rule].action


def _one_of(*choices: Any) -> ValueMaker:
    return lambda doc, name, rng: rng.choice(choices)


# NaN and Infinity are written as text: nx-27017 refuses non-finite doubles in an
# insert and stores null for them in a $set; as text they are rejected all the same.
BAD_KINDS: tuple[BadKind, ...] = (
    BadKind("missing_field", "missing_field", _REQUIRED, _one_of(_MISSING)),
    BadKind("null_field", "missing_field", _REQUIRED, _one_of(None)),
    BadKind("blank_key", "blank_key", _KEYS, _one_of("", "   ")),
    BadKind("key_too_long", "key_too_long", _KEYS, lambda d, n, r: f"{d[n]}{'x' * MAX_KEY_LENGTH}"),
    BadKind("key_as_number", "key_not_string", _KEYS,
            lambda d, n, r: int("0" + "".join(c for c in str(d[n]) if c.isdigit()))),
    BadKind("key_wrong_type", "key_wrong_type", _KEYS,
            lambda d, n, r: r.choice(({"id": d[n]}, [d[n]], True))),
    BadKind("padded_key", "padded_text", _KEYS, lambda d, n, r: f" {d[n]} "),
    BadKind("number_as_text", "number_as_text", _NUMBERS, lambda d, n, r: str(d[n])),
    BadKind("number_as_words", "number_not_numeric", _NUMBERS,
            _one_of("two minutes", "n/a", "1:30", "")),
    BadKind("number_as_boolean", "number_is_boolean", _NUMBERS, _one_of(True, False)),
    BadKind("number_not_finite", "number_not_finite", _NUMBERS,
            _one_of("NaN", "Infinity", "-Infinity", "1e999")),
    BadKind("total_not_positive", "total_video_time_not_positive", ("total_video_time",),
            lambda d, n, r: r.choice((0, -1, -d[n]))),
    BadKind("watched_negative", "watched_time_negative", ("watched_time",),
            lambda d, n, r: -round(r.uniform(1, 600), 1)),
    BadKind("watched_past_end", "watched_time_exceeds_total", ("watched_time",),
            lambda d, n, r: d["total_video_time"] + r.randint(1, 600)),
    BadKind("unknown_device", "device_unknown", ("device",),
            _one_of("smart-fridge", "vr-headset", "car", 7)),
    BadKind("bad_country", "country_invalid", ("country",),
            _one_of("Portugal", "pt", "USA", "", 351)),
    BadKind("bad_timestamp", "timestamp_invalid", ("started_at",),
            _one_of("yesterday", "2025-13-45T99:00", "", 1_700_000_000)),
)  # fmt: skip
BAD_KINDS_BY_NAME = {kind.name: kind for kind in BAD_KINDS}


def make_bad_document(
    kind: BadKind | str, document: Mapping[str, Any], rng: random.Random | None = None
) -> dict[str, Any]:
    """A copy of a good ``document`` (as :func:`make_viewing` makes) with one field
    broken the way ``kind`` says; which field and value are drawn from ``rng``."""
    kind = BAD_KINDS_BY_NAME[kind] if isinstance(kind, str) else kind
    rng = rng or random.Random(0)
    bad = dict(document)
    name = rng.choice(kind.fields)
    value = kind.value(bad, name, rng)
    if value is _MISSING:
        del bad[name]
    else:
        bad[name] = value
    return bad


# --- the workload (pure) --------------------------------------------------------------


class Op(NamedTuple):
    """One write: insert (``fields`` = the document), update (``$set``, ``$unset``), delete.

    Updates set ``updated_at`` with ``$currentDate``: nx-27017 stores a datetime given
    to ``$set`` as a *string* (inserts and ``$currentDate`` keep real dates).
    """

    op: str
    doc_id: str
    fields: dict[str, Any] | None = None
    unset: tuple[str, ...] = ()
    bad: str | None = None  # the BadKind name when this write breaks a rule

    def request(self) -> InsertOne[Any] | UpdateOne | DeleteOne:
        if self.op == "insert":
            return InsertOne(self.fields)
        if self.op == "delete":
            return DeleteOne({"_id": self.doc_id})
        change: dict[str, Any] = {"$currentDate": {"updated_at": True}}
        if self.fields:
            change["$set"] = self.fields
        if self.unset:
            change["$unset"] = dict.fromkeys(self.unset, "")
        return UpdateOne({"_id": self.doc_id}, change)


def new_run_tag() -> str:
    """Unique per run (seconds since 1970 in hex, then random), so runs never share ids."""
    return f"{int(time.time()):x}{secrets.token_hex(2)}"


class Workload:
    """The operations of one run: same seed and run tag, same operations.

    Live documents sit in a list for O(1) random picks (swap with the last, pop).
    One written in the current batch is held out of it until the next batch, so an
    ``_id`` appears at most once per batch. An update or delete with nothing to
    pick becomes an insert.
    """

    def __init__(self, settings: Settings, run_tag: str) -> None:
        if not _RUN_TAG.match(run_tag):
            raise ValueError(f"run tag {run_tag!r}: use 1-40 letters, digits, '_', '.', '-'")
        self.run_tag = run_tag
        self.catalog = Catalog.build(settings.catalog_size, settings.seed)
        self._rng = random.Random(f"ops:{settings.seed}")
        self._users = settings.users
        self._insert_below = settings.insert_ratio
        self._update_below = settings.insert_ratio + settings.update_ratio
        self._bad_ratio = settings.bad_ratio
        self._sequence = 0
        self._live: dict[str, Viewing] = {}
        self._pickable: list[str] = []
        self._held: list[str] = []

    @property
    def live(self) -> int:
        """Documents this run inserted and has not deleted."""
        return len(self._live)

    def next_batch(self, size: int, now: dt.datetime) -> list[Op]:
        """The next ``size`` operations, stamped ``now``; no ``_id`` twice."""
        self._pickable.extend(self._held)
        self._held.clear()
        return [self._next(now) for _ in range(size)]

    def _take(self) -> str:
        index = self._rng.randrange(len(self._pickable))
        last = self._pickable.pop()
        if index == len(self._pickable):
            return last
        doc_id, self._pickable[index] = self._pickable[index], last
        return doc_id

    def _next(self, now: dt.datetime) -> Op:
        rng = self._rng
        draw, bad_draw = rng.random(), rng.random()
        bad = rng.choice(BAD_KINDS) if bad_draw < self._bad_ratio else None
        if draw < self._insert_below or not self._pickable:
            self._sequence += 1
            doc_id = f"{self.run_tag}-{self._sequence:08d}"
            viewing = new_viewing(rng, self.catalog, users=self._users, now=now)
            self._live[doc_id] = viewing
            self._held.append(doc_id)
            document = viewing.document(doc_id, now)
            if bad is None:
                return Op("insert", doc_id, document)
            return Op("insert", doc_id, make_bad_document(bad, document, rng), bad=bad.name)
        doc_id = self._take()
        if draw >= self._update_below:
            del self._live[doc_id]
            return Op("delete", doc_id)
        viewing = self._live[doc_id] = self._live[doc_id].advance(rng)
        self._held.append(doc_id)
        if bad is None:
            return Op("update", doc_id, {"watched_time": viewing.watched_time})
        good = viewing.document(doc_id, now)
        document = make_bad_document(bad, good, rng)
        changed = {  # only the broken field (and the progress): see Op
            name: value
            for name, value in document.items()
            if name == "watched_time" or type(value) is not type(good[name]) or value != good[name]
        }
        unset = tuple(name for name in FIELD_NAMES if name not in document)
        return Op("update", doc_id, changed, unset, bad.name)


def batch_size(rate: float, write_batch: int, writes_per_s: float = WRITES_PER_SECOND) -> int:
    """Ops per write: about ``writes_per_s`` writes a second, at most ``write_batch`` ops."""
    if not math.isfinite(rate):
        return write_batch
    return max(1, min(write_batch, math.ceil(rate / writes_per_s)))


def pace(rate: float, elapsed: float, done: int, batch: int, write_batch: int) -> tuple[int, float]:
    """(ops to write now, 0.0) or (0, seconds to wait first): a pure function of the clock.

    What is due is ``rate × elapsed`` since the start, so sleeps never add drift, and
    a writer that fell behind writes up to ``write_batch`` ops a time, back to back,
    without sleeping, until it has caught up.
    """
    if not math.isfinite(rate):
        return write_batch, 0.0
    due = math.floor(rate * elapsed + 1e-9) - done
    if due >= batch:
        return min(due, write_batch), 0.0
    return 0, max(0.0, (done + batch) / rate - elapsed)


# --- I/O ------------------------------------------------------------------------------


@dataclass
class SimulationStats:
    """Writes MongoDB acknowledged; ``bad`` counts bad writes sent, ``failed`` refused ones."""

    inserts: int = 0
    updates: int = 0
    deletes: int = 0
    bad: int = 0
    failed: int = 0
    seconds: float = 0.0

    @property
    def events(self) -> int:
        return self.inserts + self.updates + self.deletes

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


class Simulator:
    """Writes a :class:`Workload` to MongoDB at ``settings.rate`` events/s."""

    def __init__(
        self,
        settings: Settings,
        *,
        run_tag: str | None = None,
        client: pymongo.MongoClient[dict[str, Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.workload = Workload(settings, run_tag or new_run_tag())
        self.run_tag = self.workload.run_tag
        self._client = client
        self._ordered = False  # True: the measured alternative (see the module docstring)
        self._warned = False  # the first refused write is a warning, later ones debug

    def run(
        self,
        *,
        stop: threading.Event | None = None,
        on_progress: Callable[[SimulationStats], None] | None = None,
        progress_every_s: float = 0.5,
    ) -> SimulationStats:
        """Write until ``duration_s`` or ``events`` is reached (first wins) or ``stop`` is set.

        ``on_progress`` gets a copy of the stats every ``progress_every_s`` and at the end.
        A client passed to the constructor is used and left open; else one is opened
        (and closed) here, with :func:`cdcflow.mongo.open_mongo_client`, which raises
        :class:`ServiceUnavailable` when MongoDB cannot be reached.
        """
        s = self.settings
        client = self._client or open_mongo_client(s)
        try:
            log.info("simulating %s at %g events/s, run tag %s, seed %d, bad ratio %g",
                     s.source_namespace, s.rate, self.run_tag, s.seed, s.bad_ratio)  # fmt: skip
            collection = client[s.mongo_db][s.mongo_collection]
            stats = self._loop(collection, stop or threading.Event(), on_progress, progress_every_s)
        except ConnectionFailure as error:
            text = (str(error) or type(error).__name__).splitlines()[0].split(" (configured")[0]
            detail = f"connection lost ({text[:200]})"
            raise ServiceUnavailable("MongoDB", s.mongo_uri.where, detail, HINT) from None
        finally:
            if self._client is None:
                client.close()
        log.info("simulated %d events in %.1f s (%.0f/s): %d inserts, %d updates, %d deletes, "
                 "%d bad", stats.events, stats.seconds, stats.rate, stats.inserts, stats.updates,
                 stats.deletes, stats.bad)  # fmt: skip
        return stats

    def _loop(
        self,
        collection: Collection[dict[str, Any]],
        stop: threading.Event,
        on_progress: Callable[[SimulationStats], None] | None,
        progress_every_s: float,
    ) -> SimulationStats:
        s, stats = self.settings, SimulationStats()
        batch = batch_size(s.rate, s.write_batch)
        start = time.monotonic()
        next_progress, sent = start + progress_every_s, 0
        while not stop.is_set():
            elapsed = time.monotonic() - start
            if s.duration_s is not None and elapsed >= s.duration_s:
                break
            if s.events is not None and sent >= s.events:
                break
            count, wait = pace(s.rate, elapsed, sent, batch, s.write_batch)
            if s.events is not None:
                count = min(count, s.events - sent)
            if count:
                self._write(collection, self.workload.next_batch(count, utc_now()), stats)
                sent += count
            else:
                if s.duration_s is not None:
                    wait = min(wait, s.duration_s - elapsed)
                if on_progress is not None:
                    wait = min(wait, next_progress - start - elapsed)
                stop.wait(max(0.0, wait))
            if on_progress is not None and time.monotonic() >= next_progress:
                stats.seconds = time.monotonic() - start
                on_progress(replace(stats))
                next_progress = time.monotonic() + progress_every_s
        stats.seconds = time.monotonic() - start
        if on_progress is not None:
            on_progress(replace(stats))
        return stats

    def _write(
        self, collection: Collection[dict[str, Any]], ops: list[Op], stats: SimulationStats
    ) -> None:
        """One bulk_write; counts what MongoDB says it did (a refused write is logged)."""
        try:
            counts = collection.bulk_write(
                [op.request() for op in ops], ordered=self._ordered
            ).bulk_api_result
        except BulkWriteError as error:
            counts, errors = dict(error.details), error.details.get("writeErrors", [])
            stats.failed += len(errors)
            first = errors[0].get("errmsg", "") if errors else ""
            report = log.debug if self._warned else log.warning
            report("MongoDB refused %d of %d writes (first: %s)", len(errors), len(ops), first)
            self._warned = True
        done = {"insert": counts["nInserted"], "update": counts["nMatched"]}
        done["delete"] = counts["nRemoved"]
        stats.inserts += done["insert"]
        stats.updates += done["update"]
        stats.deletes += done["delete"]
        stats.bad += sum(op.bad is not None for op in ops)
        for op, count in done.items():
            metrics.SIMULATOR_WRITES.labels(op=op).inc(count)
