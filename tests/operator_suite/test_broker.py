"""The depth reader against a real (tiny) HTTP server on 127.0.0.1, not a mocked client:
the request it sends, 404 as "not declared yet", timeouts, errors without passwords,
and malformed URLs from Secrets reported as failed reads instead of crashes."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from cdcflow_operator import broker, observation
from cdcflow_operator.models import Pipeline
from tests.operator_suite.specs import MONGO, body

PASSWORD = "s3cr3t-Pa55"
QUEUE_BODY = {
    "messages_ready": 120,
    "messages_unacknowledged": 30,
    "message_stats": {"ack_details": {"rate": 12.5}},
}


class Management(BaseHTTPRequestHandler):
    """A RabbitMQ management API with one queue, ``views`` in vhost ``/``; ``slow``
    answers after a second, ``broken`` with a 500."""

    seen: ClassVar[list[tuple[str, str | None]]] = []

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization")))
        if self.path == "/api/queues/%2F/views":
            self._send(200, QUEUE_BODY)
        elif self.path == "/api/queues/%2F/slow":
            time.sleep(1.0)
            self._send(200, QUEUE_BODY)
        elif self.path == "/api/queues/%2F/broken":
            self._send(500, {"error": f"internal, password {PASSWORD}"})
        else:
            self._send(404, {"error": "Object Not Found", "reason": "Not Found"})

    def _send(self, code: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the timeout test)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def management() -> Iterator[str]:
    """The server's management URL, with a login whose password must never leak."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Management)
    server.daemon_threads = True
    server.block_on_close = False
    Management.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://guest:{PASSWORD}@127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_reads_ready_plus_unacked_and_the_ack_rate(management: str) -> None:
    reading = broker.read_depth(management, "/", "views", timeout=2)
    assert (reading.ready, reading.unacked, reading.depth) == (120, 30, 150)
    assert reading.ack_rate == 12.5
    assert reading.source.startswith("rabbitmq-management http://127.0.0.1:")
    assert PASSWORD not in reading.source
    path, auth = Management.seen[-1]
    assert path == "/api/queues/%2F/views"  # the vhost "/" percent-encoded
    assert auth is not None and auth.startswith("Basic ")


def test_a_queue_not_declared_yet_has_depth_zero(management: str) -> None:
    reading = broker.read_depth(management, "/", "nobody-declared-me", timeout=2)
    assert reading.depth == 0
    assert "queue not declared yet" in reading.source


def test_a_slow_broker_is_a_failed_read_after_the_timeout(management: str) -> None:
    started = time.monotonic()
    with pytest.raises(broker.DepthReadError) as raised:
        broker.read_depth(management, "/", "slow", timeout=0.2)
    assert time.monotonic() - started < 0.9
    assert "rabbitmq-management http://127.0.0.1:" in str(raised.value)
    assert PASSWORD not in str(raised.value)


def test_server_errors_and_refusals_never_carry_the_password(management: str) -> None:
    with pytest.raises(broker.DepthReadError) as raised:
        broker.read_depth(management, "/", "broken", timeout=2)
    assert "HTTP 500" in str(raised.value)
    assert PASSWORD not in str(raised.value)
    closed = management.rsplit(":", 1)[0] + ":1/"  # nothing listens on port 1
    with pytest.raises(broker.DepthReadError) as refused:
        broker.read_depth(closed, "/", "views", timeout=2)
    assert PASSWORD not in str(refused.value)


@pytest.mark.parametrize(
    "url", ["guest:pw@no-scheme:15672/", "http://[::1:15672/", "//rabbit:15672/", "http:///"]
)
def test_a_malformed_management_url_is_a_failed_read(url: str) -> None:
    with pytest.raises(broker.DepthReadError, match="management URL is malformed"):
        broker.read_depth(url, "/", "views", timeout=1)


@pytest.mark.parametrize(
    ("amqp", "management", "vhost"),
    [
        ("amqp://guest:guest@rabbit:5672/%2F", "http://guest:guest@rabbit:15672/", "/"),
        ("amqp://rabbit", "http://rabbit:15672/", "/"),
        (
            "amqps://u%40x:p%2Fw@mq.example.com:5671/prod",
            "https://u%40x:p%2Fw@mq.example.com:15672/",
            "prod",
        ),
        ("amqp://u:p@rabbit:5672/team%2Fa", "http://u:p@rabbit:15672/", "team/a"),
    ],
)
def test_management_url_and_vhost_from_an_amqp_url(amqp: str, management: str, vhost: str) -> None:
    assert broker.management_url_from_amqp(amqp) == management
    assert broker.vhost_of(amqp) == vhost


class Secrets:
    """The one Cluster call the depth observer makes: Secret values."""

    def __init__(self, values: dict[tuple[str, str], str]) -> None:
        self.values = values

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        return self.values.get((name, key))


def test_a_malformed_url_in_a_secret_is_reported_not_raised() -> None:
    spec = {
        "source": MONGO,
        "broker": {"external": {"urlSecret": {"name": "amqp", "key": "url"}}},
        "warehouse": {"external": {"urlSecret": {"name": "ch", "key": "url"}}},
    }
    pipeline = Pipeline.from_body(body("p", spec))
    for bad in (f"guest:{PASSWORD}@rabbit:5672/", f"amqp://guest:{PASSWORD}@[rabbit:5672/"):
        seen = observation.Observed()
        cluster = Secrets({("amqp", "url"): bad})
        observation._observe_depth(pipeline, cluster, seen, broker.read_depth)  # type: ignore[arg-type]
        assert seen.reading is None
        assert seen.read_error is not None and "malformed" in seen.read_error
        assert PASSWORD not in seen.read_error
