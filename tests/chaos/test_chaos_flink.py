"""Chaos on the Flink runner: the consumer SIGKILLed mid-stream (twice) and restarted,
its broker connections dropped, the producer killed once; nothing lost, nothing
duplicated in what analysts read.

Smaller than the in-process suite (tests/chaos/test_chaos.py, whose supervisor and
fault helpers it reuses): a Flink consumer needs tens of seconds to come back (a
JVM, an embedded Flink, the job), so faults follow progress instead of a clock:
each waits until the consumer loads rows again. At the end the pipeline drains,
``verify`` must find the warehouse equal to the source, and one line reports::

    chaos-flink: events=<n> lost=0 duplicates=0 dead_lettered=<n> consumer_kills=2 ...
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from cdcflow.config import Runner, Settings
from cdcflow.localbroker import RabbitNode
from cdcflow.simulator import SimulationStats, Simulator
from cdcflow.verify import verify
from tests.chaos.test_chaos import (
    AckAudit,
    Fault,
    Supervisor,
    chaos_vhost,
    ensure_broker_running,
    inject,
)
from tests.pipeline_support import Pipeline, wait_for
from tests.support import depths

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.flink]
__all__ = ["chaos_vhost"]  # a fixture, used by name

SEED = 20261203
EVENTS = 9000
RATE = 100.0  # ~90 s of writes: room for four faults, each after a Flink restart
FAULTS = ["consumer_kill", "connections_closed", "producer_kill", "consumer_kill"]


def _loaded(pipeline: Pipeline) -> float:
    if not pipeline.consumer.alive():
        return -1.0
    scrape = pipeline.consumer.metrics()
    return scrape.value("cdcflow_rows_loaded_total") if scrape.ok else -1.0


def test_chaos_on_flink(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    capsys: pytest.CaptureFixture[str],
    rabbitmq_node: RabbitNode,
    chaos_vhost: str,
) -> None:
    """With batch messages (the default packing; the in-process suite also runs one
    change per message)."""
    settings = make_settings(
        amqp_url=rabbitmq_node.vhost_url(chaos_vhost),
        runner=Runner.flink,
        checkpointing_interval_ms=1000,
        events=EVENTS,
        rate=RATE,
        bad_ratio=0.02,
        seed=SEED,
        batch_max_messages=300,
        write_batch=100,
    )
    started = time.monotonic()
    pipeline = Pipeline(settings, tmp_path / "run")
    pipeline.start()
    injected: Counter[str] = Counter()
    stats: list[SimulationStats] = []
    writer = threading.Thread(
        target=lambda: stats.append(Simulator(settings, run_tag="chaos-flink").run()),
        name="simulator",
        daemon=True,
    )
    audit = AckAudit(pipeline.consumer)
    try:
        with audit, Supervisor([pipeline.producer, pipeline.consumer]) as supervisor:
            writer.start()
            for kind in FAULTS:
                # Strike a consumer that is up and loading: the fault lands mid-stream.
                floor = max(_loaded(pipeline), 0.0)

                def loading(floor: float = floor) -> bool:
                    return _loaded(pipeline) > floor + 200

                wait_for(
                    loading,
                    240,
                    f"the Flink consumer to load rows before {kind}",
                    every=0.5,
                )
                fault = Fault(time.monotonic() - started, kind)
                inject(fault, pipeline, rabbitmq_node, chaos_vhost)
                injected[kind] += 1
            writer.join(600)
            assert stats, "the simulator did not finish"
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
    line = (
        f"chaos-flink: pack_max_changes={settings.pack_max_changes} "
        f"changes_per_message={max(audit.changes_per_message, default=0.0):.1f} "
        f"events={stats[0].events} lost={report.lost} "
        f"duplicates={report.duplicates} dead_lettered={dead_lettered} "
        f"consumer_kills={injected['consumer_kill']} producer_kills={injected['producer_kill']} "
        f"broker_faults={injected['connections_closed']} "
        f"seconds={round(time.monotonic() - started)}"
    )
    with capsys.disabled():  # shown in `make test`'s log too, not only with -s
        print(f"\n{line}", flush=True)
    (tmp_path / "chaos-flink.txt").write_text(line + "\n")
    assert stats[0].events == EVENTS
    assert injected == Counter(FAULTS)
    assert report.lost == 0, report.summary() + str(report.examples)
    assert report.duplicates == 0, report.summary()
    assert report.equal, report.summary() + str(report.examples)
    assert audit.scrapes > 0 and audit.acked > 0, "the consumer's acks were never audited"
    assert not audit.violations, audit.violations[:5]
    audit.check_packing(settings.pack_max_changes)
