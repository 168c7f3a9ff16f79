"""The consumer on Beam's portable Flink runner (embedded Flink, LOOPBACK), for real.

Real RabbitMQ, nx-27017 and chdb; the job server is the one ``make flink`` fetched.
Each Flink start costs tens of seconds (a JVM, a Flink mini cluster, the job), so
these are slow tests; CI runs them (``make test``).
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from apache_beam.runners.worker.bundle_processor import BundleProcessor
from rich.console import Console

from cdcflow import broker, naming
from cdcflow.config import Runner, Settings
from cdcflow.consumer import flink
from cdcflow.consumer.pipeline import counters, run_consumer
from cdcflow.consumer.rabbitmq import Delivery, RabbitConsumer
from cdcflow.demo import DEMO_EXCHANGE, DEMO_QUEUE, run_demo
from cdcflow.simulator import Simulator
from cdcflow.verify import verify
from cdcflow.warehouse.client import Warehouse
from tests.pipeline_support import Pipeline, wait_for
from tests.support import depths, nx_change, publish, publish_packed

pytestmark = [pytest.mark.slow, pytest.mark.flink]


@pytest.fixture(autouse=True)
def _job_server_fetched() -> None:
    jar = flink.cache_dir() / flink.JAR_NAME
    if not jar.is_file():
        pytest.fail(f"{jar} missing: run `make flink` first (make test does)")


@pytest.fixture
def flink_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(
        runner=Runner.flink,
        checkpointing_interval_ms=1000,
        idle_exit_s=4,
        batch_max_messages=250,
    )


def _current(settings: Settings) -> dict[str, dict[str, Any]]:
    with Warehouse(settings) as warehouse:
        table = warehouse.arrow(f"SELECT doc_id, watched_time FROM {warehouse.qualified}_current")
    return {row["doc_id"]: row for row in table.to_pylist()}


def _java_children(pid: int) -> list[int]:
    """Java processes whose parent is ``pid`` (the consumer's job server)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid and command and command[0].endswith(b"java"):
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


@pytest.mark.parametrize("packed", [False, True], ids=["one_change_each", "batch_messages"])
def test_poison_is_dead_lettered_and_its_batch_loads_on_flink(
    flink_settings: Settings, packed: bool
) -> None:
    settings = flink_settings
    collection = settings.mongo_collection
    good = [nx_change(n, collection, f"doc-{n}", "insert", watched_time=n) for n in range(1, 201)]
    poison: list[Any] = [
        b"{broken json",
        nx_change(300, collection, "bad-1", "insert", total_video_time=0),
    ]
    # One batch holds good and poison messages together (packed: inside one message).
    changes = good[:100] + poison + good[100:]
    messages = publish_packed(settings, changes, 40) if packed else publish(settings, changes)
    before = counters()  # this process's counters: earlier tests count in them too
    result = run_consumer(settings)
    assert not result.abandoned
    assert set(_current(settings)) == {f"doc-{n}" for n in range(1, 201)}
    assert depths(settings) == (0, 2)  # one failed-queue record per bad change
    delta = {key: result.counters[key] - before[key] for key in before}
    assert delta["dead_lettered"] == 2
    assert delta["acked"] == delta["consumed"] == messages == (6 if packed else 202)
    assert delta["changes_acked"] == 202


def _checkpoints(log_file: Path) -> list[float]:
    """Epoch seconds of every 'Completed checkpoint' line of the job server's log."""
    times = []
    for line in log_file.read_text(errors="replace").splitlines():
        match = re.match(r"(\S+) .*Completed checkpoint \d+ for job", line)
        if match:
            times.append(dt.datetime.fromisoformat(match.group(1)).timestamp())
    return times


def _unexplained_acks(
    acks: list[tuple[float, list[str]]],
    free_at: dict[str, float],
    loaded_at: dict[str, float],
    checkpoints: list[float],
) -> list[str]:
    """Acks that no completed checkpoint explains. Each must come after its rows were
    loaded, and after a checkpoint that completed once the task was free to start the
    bundle that loaded them (``free_at``: the end of the SDK bundle before it)."""
    wrong = []
    for acked_at, docs in acks:
        free = max(free_at[doc] for doc in docs)
        loaded = max(loaded_at[doc] for doc in docs)
        if not loaded < acked_at:
            wrong.append(f"acked at {acked_at:.3f} before its load at {loaded:.3f}")
        elif not any(free <= done <= acked_at for done in checkpoints):
            wrong.append(
                f"bundle from {free:.3f}, loaded at {loaded:.3f}, acked at {acked_at:.3f}: "
                f"no checkpoint completed in between ({[f'{c:.3f}' for c in checkpoints]})"
            )
    return wrong


def test_nothing_is_acked_before_a_checkpoint_completed(
    flink_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every ack comes after its rows were loaded and after a checkpoint that completed
    once the bundle that loaded them could start; acking at the end of the bundle fails.

    Spies (the real methods still run) note when each SDK bundle ran, when each
    document was read and loaded, and when each message was acked; the job server's
    log says when checkpoints completed (Flink logs "Completed checkpoint" before it
    notifies the tasks). Flink schedules the first checkpoint at a random delay, so
    nothing here depends on when checkpoints come, only on their order with the rest.

    Why not "a checkpoint that completed after the load": Beam's portable Flink runner
    finalizes, on each checkpoint notification, every bundle finished before the
    notification reached the task (docs/runners.md), and the task handles the
    notification only between bundles. A checkpoint that completes while a bundle runs
    acks that bundle when it ends: after its load, but the completion preceded it (seen
    here: completed, 166 ms later the batch read, 100 ms later loaded, 18 ms later
    acked). The task could not have started that bundle before the previous SDK bundle
    ended, so the completion follows that end.

    Acks at the end of the bundle would come milliseconds after the load: each of the
    five batches would need a checkpoint to complete during its own bundle (a few
    hundred ms of a 2 s interval); the test checks that such acks would be caught.
    """
    settings = flink_settings.with_overrides(
        checkpointing_interval_ms=2000, batch_max_messages=100, idle_exit_s=5
    )
    bundle_ends: list[float] = []
    free_at: dict[str, float] = {}
    loaded_at: dict[str, float] = {}
    acks: list[tuple[float, list[str]]] = []
    real_bundle = BundleProcessor.process_bundle
    real_take, real_insert, real_ack = RabbitConsumer.take, Warehouse.insert, RabbitConsumer.ack
    bundle = threading.local()

    def process_bundle(self: BundleProcessor, *args: Any, **kwargs: Any) -> Any:
        # The stage runs one bundle at a time: this one began after the last one ended.
        bundle.free = max(bundle_ends, default=0.0)
        try:
            return real_bundle(self, *args, **kwargs)
        finally:
            bundle_ends.append(time.time())

    def take(self: RabbitConsumer, *args: Any, **kwargs: Any) -> list[Delivery]:
        deliveries = real_take(self, *args, **kwargs)
        for delivery in deliveries:
            free_at[orjson.loads(delivery.body)["id"]] = bundle.free
        return deliveries

    def insert(self: Warehouse, rows: Any) -> None:
        real_insert(self, rows)
        now = time.time()
        for doc_id in rows.column("doc_id").to_pylist():
            loaded_at[doc_id] = now

    def ack(self: RabbitConsumer, deliveries: list[Delivery]) -> None:
        acks.append((time.time(), [orjson.loads(d.body)["id"] for d in deliveries]))
        real_ack(self, deliveries)

    monkeypatch.setattr(BundleProcessor, "process_bundle", process_bundle)
    monkeypatch.setattr(RabbitConsumer, "take", take)
    monkeypatch.setattr(Warehouse, "insert", insert)
    monkeypatch.setattr(RabbitConsumer, "ack", ack)
    collection = settings.mongo_collection
    publish(settings, [nx_change(n, collection, f"d{n}", "insert") for n in range(1, 501)])
    acked_before = counters()["acked"]
    result = run_consumer(settings)

    logs = list((settings.data_dir / "logs").glob("flink-job-server-*.log"))
    assert len(logs) == 1
    checkpoints = _checkpoints(logs[0])
    assert checkpoints, logs[0].read_text()[-2000:]
    assert len(loaded_at) == 500 and result.counters["acked"] - acked_before == 500
    assert sorted(doc for _, docs in acks for doc in docs) == sorted(loaded_at)
    assert len(acks) >= 5  # one ack per batch of 100, each on its own finalization
    assert _unexplained_acks(acks, free_at, loaded_at, checkpoints) == []
    # The same check catches acks at the end of the bundle (right after the load).
    at_bundle_end = [(max(loaded_at[d] for d in docs) + 0.001, docs) for _, docs in acks]
    assert _unexplained_acks(at_bundle_end, free_at, loaded_at, checkpoints)
    assert depths(settings) == (0, 0)


def test_the_demo_runs_on_flink_and_verifies_equal(tmp_path: Path, amqp_url: str) -> None:
    """``cdcflow demo --runner flink``, in process, on the session's broker."""
    settings = Settings(
        data_dir=tmp_path / ".cdcflow",
        amqp_url=amqp_url,
        runner=Runner.flink,
        checkpointing_interval_ms=1000,
        events=600,
        rate=600.0,
        bad_ratio=0.02,
        seed=7,
    )
    output = io.StringIO()
    console = Console(file=output, width=200, force_terminal=False)
    try:
        equal = run_demo(settings, console, broker_configured=True)
    finally:
        with broker.channel(settings) as channel:
            for queue in (DEMO_QUEUE, naming.failed_queue_name(DEMO_QUEUE)):
                channel.queue_delete(queue)
            channel.exchange_delete(DEMO_EXCHANGE)
    text = output.getvalue()
    assert equal, text
    assert "verify: equal" in text and "simulated 600 events" in text, text
    consumer_log = tmp_path / ".cdcflow" / "demo" / "logs" / "consumer.log"
    assert "runner flink" in consumer_log.read_text()
    assert "Flink job server stopped" in consumer_log.read_text()


@pytest.fixture
def pipeline_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(
        runner=Runner.flink,
        checkpointing_interval_ms=1000,
        rate=600,
        events=4000,
        bad_ratio=0.02,
        seed=17,
        write_batch=200,
        batch_max_messages=300,
    )


@pytest.fixture
def pipeline(pipeline_settings: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    with Pipeline(pipeline_settings, tmp_path / "run") as running:
        yield running


def _no_duplicates(settings: Settings) -> int:
    """Documents with more than one row in what analysts read (FINAL)."""
    with Warehouse(settings) as warehouse:
        table = warehouse.arrow(
            f"SELECT doc_id, count() AS n FROM {warehouse.qualified} FINAL "
            "GROUP BY doc_id HAVING n > 1"
        )
    return int(table.num_rows)


def _java_tmpdir(pid: int) -> Path:
    """The ``java.io.tmpdir`` a JVM was started with."""
    for argument in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
        if argument.startswith(b"-Djava.io.tmpdir="):
            return Path(argument.split(b"=", 1)[1].decode())
    raise AssertionError(f"the JVM {pid} was started without -Djava.io.tmpdir")


def test_end_to_end_on_flink_verifies_equal_and_stops_cleanly(
    pipeline: Pipeline, pipeline_settings: Settings
) -> None:
    settings = pipeline_settings
    pipeline.start()
    consumer_pid = pipeline.consumer.process.process.pid
    wait_for(lambda: bool(_java_children(consumer_pid)), 60, "the job server to start")
    (job_server,) = _java_children(consumer_pid)
    java_tmp = _java_tmpdir(job_server)
    stats = Simulator(settings, run_tag="flink-e2e").run()
    assert stats.bad > 0
    pipeline.wait_producer_caught_up()
    wait_for(lambda: depths(settings)[0] == 0, 180, "the queue to drain")
    published = pipeline.producer.metrics().value("cdcflow_events_published_total")
    wait_for(
        lambda: pipeline.consumer.metrics().value("cdcflow_changes_acked_total") >= published,
        60,
        "every change to be acked (after checkpoints)",
    )
    # Flink's own temporary files (mini cluster, RPC jar) are in the job server's folder.
    assert any(path.name.startswith("minicluster") for path in java_tmp.iterdir())
    # SIGTERM: the consumer stops its job and its job server, and exits 0.
    code, _ = pipeline.consumer.terminate(timeout=60)
    assert code == 0, pipeline.consumer.tail()
    assert not _alive(job_server), "the Flink job server outlived its consumer"
    assert not java_tmp.parent.exists(), "the job server's temporary folder was left behind"
    exits = pipeline.drain_and_stop()
    assert exits["producer"][0] == 0
    report = verify(settings)
    assert report.equal, report.summary() + str(report.examples)
    assert report.duplicates == 0 and _no_duplicates(settings) == 0
    assert depths(settings)[1] > 0  # the bad share was dead-lettered, not lost


def test_consumer_killed_mid_stream_on_flink_loses_nothing_and_duplicates_nothing(
    pipeline: Pipeline, pipeline_settings: Settings
) -> None:
    settings = pipeline_settings.with_overrides(events=6000, rate=700)
    pipeline.start()
    done = threading.Event()

    def simulate() -> None:
        Simulator(settings, run_tag="flink-kill").run()
        done.set()

    writer = threading.Thread(target=simulate, daemon=True)
    writer.start()
    wait_for(
        lambda: pipeline.consumer.metrics().value("cdcflow_rows_loaded_total") > 1000,
        180,
        "the Flink consumer to load rows",
    )
    consumer_pid = pipeline.consumer.process.process.pid
    (job_server,) = _java_children(consumer_pid)
    pipeline.consumer.process.process.send_signal(signal.SIGKILL)
    pipeline.consumer.process.process.wait(10)
    # The job server dies with its consumer (PR_SET_PDEATHSIG), even on SIGKILL.
    wait_for(lambda: not _alive(job_server), 30, "the orphaned job server to exit")
    pipeline.consumer.start()
    writer.join(300)
    assert done.is_set()
    pipeline.drain_and_stop()
    report = verify(settings)
    assert report.lost == 0, report.summary() + str(report.examples)
    assert report.duplicates == 0 and _no_duplicates(settings) == 0
    assert report.equal, report.summary() + str(report.examples)
