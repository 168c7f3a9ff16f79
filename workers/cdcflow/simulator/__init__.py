"""The workload simulator: viewing logs written to MongoDB as a real product would.

One document per viewing: an insert starts it, updates move ``watched_time`` on (the
viewer keeps watching), a delete removes it; every write sets ``updated_at``, from
which the pipeline measures freshness. ``bad_ratio`` of the writes break a cleaning
rule on purpose (:data:`BAD_KINDS`). The pure half (:mod:`.documents` and
:mod:`.workload`) takes seeded ``random.Random`` instances and the clock as arguments:
same seed, same operations and values (ids differ by the run tag only, which keeps two
runs from colliding). :class:`Simulator` (:mod:`.writer`) paces and writes them.

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

from cdcflow.simulator.documents import (
    BAD_KINDS,
    BAD_KINDS_BY_NAME,
    COUNTRY_WEIGHTS,
    DEVICE_WEIGHTS,
    ZIPF_EXPONENT,
    BadKind,
    Catalog,
    Viewing,
    make_bad_document,
    make_viewing,
    new_viewing,
    utc_now,
)
from cdcflow.simulator.workload import (
    WRITES_PER_SECOND,
    Op,
    Workload,
    batch_size,
    new_run_tag,
    pace,
)
from cdcflow.simulator.writer import SimulationStats, Simulator

__all__ = [
    "BAD_KINDS",
    "BAD_KINDS_BY_NAME",
    "COUNTRY_WEIGHTS",
    "DEVICE_WEIGHTS",
    "WRITES_PER_SECOND",
    "ZIPF_EXPONENT",
    "BadKind",
    "Catalog",
    "Op",
    "SimulationStats",
    "Simulator",
    "Viewing",
    "Workload",
    "batch_size",
    "make_bad_document",
    "make_viewing",
    "new_run_tag",
    "new_viewing",
    "pace",
    "utc_now",
]
