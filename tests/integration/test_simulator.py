"""The simulator against a real nx-27017: what it says it wrote is what is there.

No timing assertions: the machines are shared. Throughput is measured apart (see
the module docstring of :mod:`cdcflow.simulator`).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest

from cdcflow import metrics
from cdcflow.config import Settings
from cdcflow.errors import ServiceUnavailable
from cdcflow.localstack import MongoServer, free_port
from cdcflow.simulator import SimulationStats, Simulator
from cdcflow.transforms import clean_documents

FAST = 1_000_000.0  # events/s: as fast as the server goes


@pytest.fixture
def settings(mongo: MongoServer, tmp_path: Path) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "mongo_uri": mongo.uri,
            "mongo_db": "media",
            "mongo_collection": "viewing_logs",
            "metrics_port": 0,
            "data_dir": tmp_path / "state",
            "write_batch": 200,
        }
        return Settings(**{**values, **overrides})

    return build


@pytest.fixture
def client(mongo: MongoServer) -> Iterator[pymongo.MongoClient[dict[str, Any]]]:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo.uri)
    with client:
        yield client


def writes(op: str) -> float:
    value = metrics.REGISTRY.get_sample_value("cdcflow_simulator_writes_total", {"op": op})
    return value or 0.0


def test_a_run_writes_what_its_stats_say(settings: Callable[..., Settings], client: Any) -> None:
    before = {op: writes(op) for op in ("insert", "update", "delete")}
    seen: list[SimulationStats] = []
    stats = Simulator(settings(rate=FAST, events=3000), run_tag="run1").run(
        on_progress=seen.append, progress_every_s=0.01
    )
    assert stats.events == 3000
    assert stats.inserts > stats.updates > stats.deletes > 0
    assert (stats.bad, stats.failed) == (0, 0)
    collection = client.media.viewing_logs
    assert collection.count_documents({}) == stats.inserts - stats.deletes
    assert (
        collection.count_documents({"_id": {"$regex": "^run1-"}}) == stats.inserts - stats.deletes
    )
    assert seen[-1] == stats
    assert writes("insert") - before["insert"] == stats.inserts
    assert writes("update") - before["update"] == stats.updates
    assert writes("delete") - before["delete"] == stats.deletes
    documents = list(collection.find())
    result = clean_documents(documents)
    assert (result.rejected, dict(result.fixes)) == ({}, {})
    # dates stay dates (nx-27017 turns a datetime in $set into text: updates use $currentDate)
    assert all(isinstance(doc["updated_at"], dt.datetime) for doc in documents)
    assert all(isinstance(doc["started_at"], dt.datetime) for doc in documents)
    assert any(doc["updated_at"] > doc["started_at"] for doc in documents)


def test_two_runs_on_the_same_collection_do_not_collide(
    settings: Callable[..., Settings], client: Any
) -> None:
    config = settings(rate=FAST, events=1500)  # same seed: same documents but for the tag
    first = Simulator(config).run()
    second = Simulator(config).run()
    assert first.failed == second.failed == 0
    live = first.inserts - first.deletes + second.inserts - second.deletes
    assert client.media.viewing_logs.count_documents({}) == live


def test_bad_ratio_writes_documents_the_rules_fix_or_reject(
    settings: Callable[..., Settings], client: Any
) -> None:
    stats = Simulator(settings(rate=FAST, events=3000, bad_ratio=0.2), run_tag="mix").run()
    assert stats.failed == 0
    assert stats.bad > 400 and stats.updates > 0
    documents = list(client.media.viewing_logs.find())
    assert len(documents) == stats.inserts - stats.deletes
    result = clean_documents(documents)
    assert result.rejected and result.fixes
    codes = set(result.fixes) | {code for code, _ in result.rejected.values()}
    assert len(codes) >= 10


def test_each_bad_insert_is_exactly_one_bad_document(
    settings: Callable[..., Settings], client: Any
) -> None:
    config = settings(rate=FAST, events=1000, bad_ratio=0.3)
    config = config.with_overrides(insert_ratio=1.0, update_ratio=0.0, delete_ratio=0.0)
    stats = Simulator(config).run()
    documents = list(client.media.viewing_logs.find())
    bad = 0
    for document in documents:
        result = clean_documents([document])
        bad += bool(result.rejected or result.fixes)
    assert bad == stats.bad


def test_the_stop_event_ends_an_unbounded_run(
    settings: Callable[..., Settings], client: Any
) -> None:
    stop = threading.Event()

    def stop_after_some(stats: SimulationStats) -> None:
        if stats.events >= 100:
            stop.set()

    stats = Simulator(settings(rate=2000.0)).run(
        stop=stop, on_progress=stop_after_some, progress_every_s=0.01
    )
    assert stop.is_set() and stats.events >= 100
    assert client.media.viewing_logs.count_documents({}) == stats.inserts - stats.deletes


def test_a_stop_from_another_thread(settings: Callable[..., Settings], client: Any) -> None:
    stop = threading.Event()
    result: list[SimulationStats] = []
    thread = threading.Thread(
        target=lambda: result.append(Simulator(settings(rate=500.0)).run(stop=stop))
    )
    thread.start()
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert client.media.viewing_logs.count_documents({}) == result[0].inserts - result[0].deletes


def test_duration_ends_a_run(settings: Callable[..., Settings], client: Any) -> None:
    stats = Simulator(settings(rate=200.0, duration_s=0.3)).run()
    assert stats.seconds >= 0.3
    assert client.media.viewing_logs.count_documents({}) == stats.inserts - stats.deletes


def test_an_unreachable_server_is_one_line_with_what_to_do(tmp_path: Path) -> None:
    config = Settings(
        mongo_uri=f"mongodb://127.0.0.1:{free_port()}/?directConnection=true",
        server_timeout_s=0.3,
        metrics_port=0,
        data_dir=tmp_path,
    )
    with pytest.raises(ServiceUnavailable) as caught:
        Simulator(config).run()
    message = str(caught.value)
    assert message.startswith("MongoDB at 127.0.0.1:")
    assert "\n" not in message
    assert "CDCFLOW_MONGO_URI" in message


def test_losing_the_server_mid_run_is_one_line(
    settings: Callable[..., Settings], mongo: MongoServer
) -> None:
    def kill_server(stats: SimulationStats) -> None:
        if stats.events:
            mongo.kill()

    simulator = Simulator(settings(rate=500.0, server_timeout_s=0.5))
    with pytest.raises(ServiceUnavailable) as caught:
        simulator.run(on_progress=kill_server, progress_every_s=0.01)
    assert str(caught.value).startswith("MongoDB at 127.0.0.1:")
    assert "\n" not in str(caught.value)


def test_a_given_client_is_used_and_left_open(
    settings: Callable[..., Settings], client: Any
) -> None:
    stats = Simulator(settings(rate=FAST, events=300), client=client).run()
    assert client.media.viewing_logs.count_documents({}) == stats.inserts - stats.deletes
