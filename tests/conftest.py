"""Fixtures over real services: nx-27017 on a free port, the local RabbitMQ, chdb.

Every test gets its own MongoDB server (its own data file), its own exchange and
queues (deleted afterwards) and its own chdb folder under ``tmp_path``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pytest

from cdcflow.config import Settings
from cdcflow.localstack import MongoServer, start_mongo

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"

# The `control_plane` (session) and `k8s_namespace` fixtures: a real Kubernetes API
# server for any test that asks for one (started lazily, once per session).
pytest_plugins = ["tests.control_plane"]


@dataclass(frozen=True)
class BrokerNames:
    """Unique exchange, collection (= queue) names for one test."""

    exchange: str
    collection: str

    @property
    def queue(self) -> str:
        return self.collection

    @property
    def failed_queue(self) -> str:
        return f"{self.collection}.failed"


def _delete_topology(names: BrokerNames) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        for queue in (names.queue, names.failed_queue):
            channel.queue_delete(queue)
        channel.exchange_delete(names.exchange)
    finally:
        connection.close()


@pytest.fixture
def broker_names() -> Iterator[BrokerNames]:
    token = uuid.uuid4().hex[:10]
    names = BrokerNames(exchange=f"cdcflow_test_{token}", collection=f"views_{token}")
    try:
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        connection.close()
    except pika.exceptions.AMQPError as error:
        pytest.fail(
            f"RabbitMQ is not reachable at 127.0.0.1:5672 ({error!r}): "
            "start it with rabbitmq-server -detached"
        )
    yield names
    _delete_topology(names)


@pytest.fixture
def mongo(tmp_path: Path) -> Iterator[MongoServer]:
    server = start_mongo(tmp_path / "mongo")
    yield server
    server.kill()


@pytest.fixture
def make_settings(
    tmp_path: Path, mongo: MongoServer, broker_names: BrokerNames
) -> Callable[..., Settings]:
    """Settings pointing at this test's MongoDB, exchange, queue and chdb folder."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "mongo_uri": mongo.uri,
            "mongo_db": "media",
            "mongo_collection": broker_names.collection,
            "amqp_url": AMQP_URL,
            "exchange": broker_names.exchange,
            "clickhouse_url": f"chdb://{tmp_path / 'warehouse'}",
            "metrics_port": 0,
            "data_dir": tmp_path / "state",
        }
        values.update(overrides)
        return Settings(**values)

    return build


@pytest.fixture
def fixture_events() -> list[dict[str, Any]]:
    """The real-MongoDB-shaped change events from ../shared/fixtures."""
    from bson import json_util

    path = FIXTURES / "mongodb-change-events.jsonl"
    return [json_util.loads(line) for line in path.read_text().splitlines() if line.strip()]
