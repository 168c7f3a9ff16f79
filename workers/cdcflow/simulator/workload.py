"""The operations of one run, as a pure function of the seed and the clock.

Also the pacing arithmetic: how many operations to write now, and how long to
wait, for a target rate.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import re
import secrets
import time
from typing import Any, NamedTuple

from pymongo import DeleteOne, InsertOne, UpdateOne

from cdcflow.config import Settings
from cdcflow.rules import FIELD_NAMES
from cdcflow.simulator.documents import (
    BAD_KINDS,
    Catalog,
    Viewing,
    make_bad_document,
    new_viewing,
)

WRITES_PER_SECOND = 15.0  # at low rates: small batches, about this many writes a second
_RUN_TAG = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")


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
