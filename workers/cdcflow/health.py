"""``/metrics``, ``/healthz`` and ``/readyz`` on one port, for Prometheus and Kubernetes.

* ``/healthz`` (liveness): 200 while the worker's main loop keeps beating; 503 once
  it has not beaten for ``stall_after_s`` (a stuck loop, so a restart helps).
* ``/readyz`` (readiness): 200 only while every dependency the worker declared is
  connected; the body lists each one, so ``curl`` tells what is missing.
* ``/metrics``: the registry of :mod:`cdcflow.metrics`.
"""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cdcflow import metrics
from cdcflow.naming import LIVENESS_PATH, METRICS_PATH, READINESS_PATH

log = logging.getLogger(__name__)

_PATHS = (METRICS_PATH, LIVENESS_PATH, READINESS_PATH)


class Health:
    """Liveness and readiness state of one worker process (thread safe)."""

    def __init__(self, component: str, stall_after_s: float = 120.0) -> None:
        self.component = component
        self.stall_after_s = stall_after_s
        self._lock = threading.Lock()
        self._ready: dict[str, bool] = {}
        self._last_beat = time.monotonic()

    def beat(self) -> None:
        self._last_beat = time.monotonic()

    def set_ready(self, dependency: str, ready: bool) -> None:
        with self._lock:
            self._ready[dependency] = ready

    @property
    def alive(self) -> bool:
        return time.monotonic() - self._last_beat < self.stall_after_s

    @property
    def ready(self) -> bool:
        with self._lock:
            return bool(self._ready) and all(self._ready.values())

    def report(self) -> dict[str, object]:
        with self._lock:
            dependencies = dict(self._ready)
        return {
            "component": self.component,
            "alive": self.alive,
            "ready": bool(dependencies) and all(dependencies.values()),
            "dependencies": dependencies,
            "seconds_since_beat": round(time.monotonic() - self._last_beat, 3),
        }


def _handler(health: Health) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == METRICS_PATH:
                self._send(200, generate_latest(metrics.REGISTRY), CONTENT_TYPE_LATEST)
            elif path == LIVENESS_PATH:
                report = health.report()
                self._send(200 if report["alive"] else 503, orjson.dumps(report))
            elif path == READINESS_PATH:
                report = health.report()
                self._send(200 if report["ready"] else 503, orjson.dumps(report))
            else:
                self._send(404, orjson.dumps({"error": f"try {', '.join(_PATHS)}"}))

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            return  # scrapes every few seconds would drown the worker's own log

    return Handler


class HealthServer:
    """Serves a :class:`Health` and the metrics registry from a daemon thread."""

    def __init__(self, health: Health, host: str, port: int) -> None:
        self.health = health
        self._server = ThreadingHTTPServer((host, port), _handler(health))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"{health.component}-health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve(health: Health, host: str, port: int) -> HealthServer | None:
    """Start the server unless ``port`` is 0; a busy port is logged, not fatal.

    Also where a worker records its build (role = ``health.component``)."""
    metrics.record_build(health.component)
    if port == 0:
        return None
    try:
        server = HealthServer(health, host, port).start()
    except OSError as error:
        log.warning(
            "metrics server not started: port %s is not free (%s); set CDCFLOW_METRICS_PORT",
            port,
            error.strerror,
            extra={"stage": health.component},
        )
        return None
    log.info("serving %s on http://%s:%s", ", ".join(_PATHS), host, server.port)
    return server
