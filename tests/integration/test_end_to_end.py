"""The whole pipeline, as production runs it: simulator → nx-27017 → producer →
RabbitMQ → Beam consumer → chdb, then verify. Also what a real Prometheus and
``cdcflow status`` see of that run."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cdcflow.config import Settings
from cdcflow.localstack import MongoServer, start_mongo, worker_env
from cdcflow.simulator import Simulator
from cdcflow.verify import verify
from tests.pipeline_support import Pipeline, wait_for
from tests.prometheus_support import requires_prometheus, running_prometheus
from tests.support import depths


@pytest.fixture(params=[None, 1], ids=["batch_messages", "one_change_each"])
def settings(make_settings: Callable[..., Settings], request: pytest.FixtureRequest) -> Settings:
    """With batch messages (the default packing) and with one change per message."""
    packing = {} if request.param is None else {"pack_max_changes": request.param}
    return make_settings(
        **packing,
        rate=4000,
        events=4000,
        bad_ratio=0.03,
        seed=7,
        write_batch=200,
        batch_max_messages=300,
    )


def _status_json(settings: Settings, pipeline: Pipeline) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-m", "cdcflow", "status", "--json", "--interval", "0.5"],
        env=worker_env(
            settings,
            producer_metrics_url=f"{pipeline.producer.base_url}/metrics",
            consumer_metrics_url=f"{pipeline.consumer.base_url}/metrics",
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    payload: dict[str, object] = json.loads(result.stdout)
    return payload


@requires_prometheus
def test_mixed_workload_end_to_end_is_verified_and_observed(
    settings: Settings, tmp_path: Path
) -> None:
    with Pipeline(settings, tmp_path / "run") as pipeline:
        pipeline.start()
        targets = {
            "cdcflow-producer": [f"127.0.0.1:{pipeline.producer.port}"],
            "cdcflow-consumer": [f"127.0.0.1:{pipeline.consumer.port}"],
        }
        with running_prometheus(tmp_path / "prometheus", targets) as prometheus:
            stats = Simulator(settings, run_tag="e2e").run()
            assert stats.events == 4000 and stats.bad > 0
            pipeline.wait_producer_caught_up()
            wait_for(lambda: depths(settings)[0] == 0, 120, "the queue to drain")
            consumer = pipeline.consumer.metrics()
            producer = pipeline.producer.metrics()
            wait_for(
                lambda: (
                    pipeline.consumer.metrics().value("cdcflow_changes_acked_total")
                    >= producer.value("cdcflow_events_published_total")
                ),
                60,
                "every change to be acked",
            )
            consumer = pipeline.consumer.metrics()
            published = producer.value("cdcflow_events_published_total")
            loaded = consumer.value("cdcflow_rows_loaded_total")
            dead = consumer.value("cdcflow_messages_dead_lettered_total")
            ignored = consumer.value("cdcflow_messages_ignored_total")
            # Every change was captured and published once (plus the initial snapshot's end).
            assert producer.value("cdcflow_events_captured_total") == stats.events
            assert published == stats.events + 1
            assert consumer.value("cdcflow_changes_acked_total") == published
            messages = consumer.value("cdcflow_messages_consumed_total")
            assert consumer.value("cdcflow_messages_acked_total") == messages
            per_message = consumer.value("cdcflow_changes_per_message_sum") / messages
            assert consumer.value("cdcflow_changes_per_message_sum") == published
            if settings.pack_max_changes == 1:
                assert messages == published and per_message == 1.0
            else:  # a burst of 4,000 changes travels in far fewer messages
                assert messages < published / 5 and per_message > 5
            # Every acked change has one outcome (the snapshot's end is an ignored reason).
            assert loaded + dead + ignored == published
            assert dead == depths(settings)[1] > 0

            # A real Prometheus scraped the same counters.
            def scraped(expr: str) -> float:
                result = prometheus.query(expr)
                return float(result[0]["value"][1]) if result else -1.0

            prometheus.wait_for(
                "the final loaded count",
                lambda: scraped("sum(cdcflow_rows_loaded_total)") == loaded,
                timeout_s=30,
            )
            prometheus.wait_for(
                "the final published count",
                lambda: scraped("sum(cdcflow_events_published_total)") == published,
                timeout_s=30,
            )
            assert scraped("sum(cdcflow_messages_dead_lettered_total)") == dead
            assert scraped('up{job="cdcflow-consumer"}') == 1.0

            status = _status_json(settings, pipeline)
            stages = {stage["name"]: stage for stage in status["stages"]}  # type: ignore[attr-defined]
            assert stages["loaded"]["total"] == loaded
            assert stages["dead-lettered"]["total"] == dead
            assert status["queue_depth"] == 0
            assert status["changes_per_message"] == round(per_message, 2)
            assert status["failed_queue_depth"] == dead

        exits = pipeline.drain_and_stop()
        for name, (code, seconds) in exits.items():
            assert code == 0, f"{name} exited {code}"
            assert seconds < 10, f"{name} took {seconds:.1f} s to stop"

        report = verify(settings)
        assert report.equal, report.summary() + str(report.examples)
        assert report.source_documents == stats.inserts - stats.deletes
        assert report.expected_live + report.rejected_by_rules == report.source_documents
        # A document whose latest change was rejected keeps its last valid state.
        assert report.expected_live <= report.warehouse_live <= report.source_documents


def test_producer_killed_mid_stream_and_restarted_loses_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    with Pipeline(settings, tmp_path / "run") as pipeline:
        pipeline.start()
        slow = settings.with_overrides(rate=800, events=6000)
        done = threading.Event()

        def simulate() -> None:
            Simulator(slow, run_tag="kill").run()
            done.set()

        thread = threading.Thread(target=simulate, daemon=True)
        thread.start()
        wait_for(
            lambda: pipeline.producer.metrics().value("cdcflow_events_published_total") > 1500,
            120,
            "the producer to publish",
        )
        pipeline.producer.kill()
        pipeline.producer.start()
        thread.join(120)
        assert done.is_set()
        pipeline.drain_and_stop()
        report = verify(settings)
        assert report.equal, report.summary() + str(report.examples)


def test_mongodb_killed_mid_stream_and_restarted_loses_nothing(
    settings: Settings, tmp_path: Path, mongo: MongoServer
) -> None:
    """SIGKILL of the MongoDB server: the producer waits for it, resumes from its last
    token and misses nothing (writes during the outage simply wait)."""
    with Pipeline(settings, tmp_path / "run") as pipeline:
        pipeline.start()
        Simulator(settings.with_overrides(events=2000), run_tag="before").run()
        wait_for(
            lambda: pipeline.producer.metrics().value("cdcflow_events_published_total") >= 2000,
            120,
            "the first changes to be published",
        )
        mongo.kill()
        time.sleep(8)  # longer than the driver's own server-selection wait
        restarted = start_mongo(mongo.data_dir, port=mongo.port)
        try:
            Simulator(settings.with_overrides(events=2000), run_tag="after").run()
            assert pipeline.producer.alive(), pipeline.producer.tail()
            pipeline.drain_and_stop()
            report = verify(settings)
            assert report.equal, report.summary() + str(report.examples)
            assert report.source_documents > 0
        finally:
            restarted.kill()
