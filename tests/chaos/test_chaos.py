"""Chaos: 20,000+ changes while processes die and the broker fails; nothing lost,
nothing duplicated in what analysts read.

At random but seeded moments the suite SIGKILLs the producer (3×) and the
consumer (3×), closes every connection of the suite's own vhost (2×) and restarts
the broker application once (``rabbitmqctl stop_app`` / ``start_app``). The broker
is the test run's private node, controlled through its own ``rabbitmqctl -n``
(never a system service). A supervisor thread
restarts dead workers the way Kubernetes would. At the end the pipeline drains,
``verify`` must find the warehouse equal to the source, and one line reports::

    chaos: events=<n> lost=0 duplicates=0 dead_lettered=<n> producer_kills=<n> ...

``lost`` counts source documents missing or stale in the warehouse,
``duplicates`` documents that appear more than once in the current (FINAL) view.
The broker is left running and healthy.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cdcflow.config import Settings
from cdcflow.localbroker import BrokerSetupError, RabbitNode
from cdcflow.localstack import port_open
from cdcflow.metrics import CHANGES_ACKED, CHANGES_PER_MESSAGE, sample_name
from cdcflow.simulator import SimulationStats, Simulator
from cdcflow.verify import verify
from tests.pipeline_support import Pipeline, Worker
from tests.support import depths

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

SEED = 20261125
EVENTS = 21000
RATE = 420.0  # ~50 s of writes: room for nine faults a few seconds apart


@dataclass(frozen=True)
class Fault:
    at_s: float
    kind: str  # producer_kill | consumer_kill | connections_closed | broker_restart


def schedule(seed: int, duration_s: float) -> list[Fault]:
    """Nine faults at seeded moments, at least 3.5 s apart, inside the write phase."""
    kinds = ["producer_kill"] * 3 + ["consumer_kill"] * 3 + ["connections_closed"] * 2
    kinds.append("broker_restart")
    rng = random.Random(seed)
    rng.shuffle(kinds)
    slots = len(kinds)
    span = (duration_s - 8.0) / slots
    return [
        Fault(round(4.0 + index * span + rng.uniform(0, span - 3.5), 2), kind)
        for index, kind in enumerate(kinds)
    ]


@pytest.fixture
def chaos_vhost(rabbitmq_node: RabbitNode) -> Iterator[str]:
    """A vhost of the suite's own: closing its connections touches nobody else's."""
    vhost = f"chaos_{uuid.uuid4().hex[:8]}"
    rabbitmq_node.add_vhost(vhost)
    yield vhost
    rabbitmq_node.delete_vhost(vhost)


def ensure_broker_running(node: RabbitNode) -> None:
    """Leave the broker as we found it: application started and accepting connections."""
    with contextlib.suppress(BrokerSetupError, subprocess.TimeoutExpired):
        node.start_app()
    deadline = time.monotonic() + 60
    while not port_open("127.0.0.1", node.ports.amqp) and time.monotonic() < deadline:
        time.sleep(0.5)


class Supervisor:
    """Restarts a worker that died, like a Deployment would (after a short back-off)."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers
        self.stop = threading.Event()
        self.restarts: Counter[str] = Counter()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, name="supervisor", daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            for worker in self.workers:
                if not worker.alive() and not self.stop.is_set():
                    time.sleep(1.0)
                    try:
                        worker.start(wait_ready=False)
                        self.restarts[worker.command] += 1
                    except Exception as error:  # keep supervising; reported at the end
                        self.errors.append(f"{worker.command}: {error!r}")

    def __enter__(self) -> Supervisor:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def inject(fault: Fault, pipeline: Pipeline, node: RabbitNode, vhost: str) -> None:
    if fault.kind == "producer_kill":
        if pipeline.producer.alive():
            pipeline.producer.kill()
    elif fault.kind == "consumer_kill":
        if pipeline.consumer.alive():
            pipeline.consumer.kill()
    elif fault.kind == "connections_closed":
        node.ctl("close_all_connections", "--vhost", vhost, "cdcflow chaos suite")
    elif fault.kind == "broker_restart":
        node.stop_app()
        time.sleep(5.0)
        node.start_app()


ACKED = sample_name(CHANGES_ACKED)  # changes, not messages: outcomes are per change
PER_MESSAGE_SUM = sample_name(CHANGES_PER_MESSAGE, "_sum")
PER_MESSAGE_COUNT = sample_name(CHANGES_PER_MESSAGE, "_count")
OUTCOMES = (
    "cdcflow_rows_loaded_total",
    "cdcflow_messages_dead_lettered_total",
    "cdcflow_messages_ignored_total",
)


class AckAudit:
    """Checks, on every scrape of every consumer process, that no change was acknowledged
    without a row, a failed-queue record or a counted ignored reason (a batch message
    counts as all of its changes).

    Counters restart with each process, so the check is per scrape of one process:
    ``acked <= rows + dead-lettered + ignored`` (an outcome is counted before its ack, and
    ``acked`` is exposed before the outcome counters, so a scrape can only lag the other way).
    """

    def __init__(self, worker: Worker) -> None:
        self.worker, self.stop = worker, threading.Event()
        self.scrapes = 0
        self.acked = 0.0
        self.violations: list[str] = []
        # Mean changes per consumed message, per scrape of a process that consumed any.
        self.changes_per_message: list[float] = []
        self.thread = threading.Thread(target=self._run, name="ack-audit", daemon=True)

    def check(self) -> None:
        if not self.worker.alive():
            return
        scrape = self.worker.metrics()
        if not scrape.ok:
            return
        acked = scrape.value(ACKED)
        outcomes = sum(scrape.value(name) for name in OUTCOMES)
        self.scrapes += 1
        self.acked = max(self.acked, acked)
        messages = scrape.value(PER_MESSAGE_COUNT)
        if messages > 0:
            self.changes_per_message.append(scrape.value(PER_MESSAGE_SUM) / messages)
        if acked > outcomes:
            self.violations.append(f"acked {acked:.0f} > rows+failed+ignored {outcomes:.0f}")

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            with contextlib.suppress(Exception):  # a worker killed mid-scrape: next time
                self.check()

    def __enter__(self) -> AckAudit:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def check_packing(self, pack_max_changes: int) -> None:
        """The changes per message the consumer saw match the producer's packing: exactly
        one with ``pack_max_changes=1``, more than one (on average) with batch messages."""
        seen = self.changes_per_message
        assert seen, "the consumer's changes per message were never scraped"
        if pack_max_changes == 1:
            assert set(seen) == {1.0}, f"one change per message expected, saw means {seen}"
        else:
            assert max(seen) > 1, f"batch messages expected, saw means {seen}"
            assert max(seen) <= pack_max_changes


@pytest.mark.parametrize("pack_max_changes", [None, 1], ids=["batch_messages", "one_change_each"])
def test_chaos(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    capsys: pytest.CaptureFixture[str],
    rabbitmq_node: RabbitNode,
    chaos_vhost: str,
    pack_max_changes: int | None,
) -> None:
    """With batch messages (the default packing) and with one change per message."""
    packing = {} if pack_max_changes is None else {"pack_max_changes": pack_max_changes}
    settings = make_settings(
        **packing,
        amqp_url=rabbitmq_node.vhost_url(chaos_vhost),
        events=EVENTS,
        rate=RATE,
        bad_ratio=0.02,
        seed=SEED,
        batch_max_messages=500,
        write_batch=100,
    )
    faults = schedule(SEED, EVENTS / RATE)
    started = time.monotonic()
    pipeline = Pipeline(settings, tmp_path / "run")
    pipeline.start()
    injected: Counter[str] = Counter()
    stats: list[SimulationStats] = []
    writer = threading.Thread(
        target=lambda: stats.append(Simulator(settings, run_tag="chaos").run()),
        name="simulator",
        daemon=True,
    )
    audit = AckAudit(pipeline.consumer)
    try:
        with audit, Supervisor([pipeline.producer, pipeline.consumer]) as supervisor:
            writer.start()
            for fault in faults:
                delay = fault.at_s - (time.monotonic() - started)
                if delay > 0:
                    time.sleep(delay)
                inject(fault, pipeline, rabbitmq_node, chaos_vhost)
                injected[fault.kind] += 1
            writer.join(600)
            assert stats, "the simulator did not finish"
            # Give the restarted workers time to come back before draining.
            time.sleep(3)
        assert not supervisor.errors, supervisor.errors
        for worker in (pipeline.producer, pipeline.consumer):
            if not worker.alive():
                worker.start()
        pipeline.wait_producer_caught_up(600)
        audit.check()  # the last consumer, caught up, before it stops
        pipeline.drain_and_stop(timeout=600)
    finally:
        ensure_broker_running(rabbitmq_node)
        for worker in (pipeline.producer, pipeline.consumer):
            if worker.alive():
                worker.kill()

    report = verify(settings)
    dead_lettered = depths(settings)[1]
    per_message = f"{max(audit.changes_per_message, default=0.0):.1f}"
    seconds = round(time.monotonic() - started)
    line = (
        f"chaos: pack_max_changes={settings.pack_max_changes} "
        f"changes_per_message={per_message} "
        f"events={stats[0].events} lost={report.lost} duplicates={report.duplicates} "
        f"dead_lettered={dead_lettered} producer_kills={injected['producer_kill']} "
        f"consumer_kills={injected['consumer_kill']} "
        f"broker_faults={injected['connections_closed'] + injected['broker_restart']} "
        f"seconds={seconds}"
    )
    with capsys.disabled():  # shown in `make test`'s log too, not only with -s
        print(f"\n{line}", flush=True)
    (tmp_path / "chaos.txt").write_text(line + "\n")
    assert stats[0].events >= 20000
    assert injected["producer_kill"] >= 3 and injected["consumer_kill"] >= 3
    assert injected["connections_closed"] >= 2 and injected["broker_restart"] >= 1
    assert report.lost == 0, report.summary() + str(report.examples)
    assert report.duplicates == 0, report.summary()
    assert report.equal, report.summary() + str(report.examples)
    assert audit.scrapes > 0 and audit.acked > 0, "the consumer's acks were never audited"
    assert not audit.violations, audit.violations[:5]
    audit.check_packing(settings.pack_max_changes)
    assert port_open("127.0.0.1", rabbitmq_node.ports.amqp), "the broker must be left running"


def test_schedule_is_seeded_and_spaced() -> None:
    first, again = schedule(SEED, EVENTS / RATE), schedule(SEED, EVENTS / RATE)
    assert first == again
    assert Counter(fault.kind for fault in first) == {
        "producer_kill": 3,
        "consumer_kill": 3,
        "connections_closed": 2,
        "broker_restart": 1,
    }
    times = [fault.at_s for fault in first]
    assert times == sorted(times)
    assert all(later - earlier >= 3.5 for earlier, later in itertools.pairwise(times))
    assert times[-1] < EVENTS / RATE
