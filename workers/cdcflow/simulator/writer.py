"""The simulator's I/O: pace the workload and write it to MongoDB in batches."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pymongo
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, ConnectionFailure

from cdcflow import metrics
from cdcflow.config import Settings
from cdcflow.errors import ServiceUnavailable
from cdcflow.mongo import HINT, open_mongo_client
from cdcflow.simulator.documents import utc_now
from cdcflow.simulator.workload import Op, Workload, batch_size, new_run_tag, pace

log = logging.getLogger(__name__)


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
