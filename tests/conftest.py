"""Fixtures over real services: nx-27017 on a free port, a RabbitMQ node, chdb.

One broker per test run: the one ``CDCFLOW_AMQP_URL`` names, or else a private
RabbitMQ node started once for the session (on free ports, in a temporary folder)
and stopped at its end. Every test gets its own MongoDB server (its own data file),
its own exchange and queues (deleted afterwards) and its own chdb folder under
``tmp_path``. Tests that control the broker (close connections, restart it) ask for
``rabbitmq_node``, which only a private node can give.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pytest

from cdcflow.config import Settings
from cdcflow.localbroker import RabbitNode, start_node
from cdcflow.localstack import MongoServer, start_mongo

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


@dataclass(frozen=True)
class TestBroker:
    """The run's broker: its URL, and the node when cdcflow started it."""

    amqp_url: str
    node: RabbitNode | None


@pytest.fixture(scope="session")
def test_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestBroker]:
    configured = os.environ.get("CDCFLOW_AMQP_URL")
    if configured:
        yield TestBroker(configured, None)
        return
    node = start_node(tmp_path_factory.mktemp("rabbitmq"))
    try:
        yield TestBroker(node.amqp_url, node)
    finally:
        node.stop()


@pytest.fixture(scope="session")
def amqp_url(test_broker: TestBroker) -> str:
    return test_broker.amqp_url


@pytest.fixture(scope="session")
def rabbitmq_node(test_broker: TestBroker) -> RabbitNode:
    """The private node, for tests that stop, restart or cut the broker."""
    if test_broker.node is None:
        pytest.skip("needs the private RabbitMQ node: unset CDCFLOW_AMQP_URL")
    return test_broker.node


def _delete_topology(amqp_url: str, names: BrokerNames) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        for queue in (names.queue, names.failed_queue):
            channel.queue_delete(queue)
        channel.exchange_delete(names.exchange)
    finally:
        connection.close()


@pytest.fixture
def broker_names(amqp_url: str) -> Iterator[BrokerNames]:
    token = uuid.uuid4().hex[:10]
    names = BrokerNames(exchange=f"cdcflow_test_{token}", collection=f"views_{token}")
    try:
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        connection.close()
    except pika.exceptions.AMQPError as error:
        pytest.fail(f"RabbitMQ is not reachable at {amqp_url} ({error!r})")
    yield names
    _delete_topology(amqp_url, names)


@pytest.fixture
def mongo(tmp_path: Path) -> Iterator[MongoServer]:
    server = start_mongo(tmp_path / "mongo")
    yield server
    server.kill()


@pytest.fixture
def make_settings(
    tmp_path: Path, mongo: MongoServer, broker_names: BrokerNames, amqp_url: str
) -> Callable[..., Settings]:
    """Settings pointing at this test's MongoDB, exchange, queue and chdb folder."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "mongo_uri": mongo.uri,
            "mongo_db": "media",
            "mongo_collection": broker_names.collection,
            "amqp_url": amqp_url,
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
