"""A real Prometheus (and promtool) for tests: start, scrape, query, stop.

Why a real one: a rule file or a scrape that only a mock has seen proves little. Debian's
``prometheus`` package (``scripts/install-prometheus.sh``) gives both binaries; tests that
need them are marked with :data:`requires_promtool` / :data:`requires_prometheus` and skip,
saying how to install them, only when the binary is missing (and fail instead when
``CDCFLOW_REQUIRE_PROMETHEUS=1``, as CI should set after running the install script).

:func:`running_prometheus` starts a server on a free loopback port with its own storage
directory, scraping the given targets every second, and stops it afterwards. Other tests
(e.g. one scraping a real pipeline run) reuse it with their own targets.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

ROOT = Path(__file__).resolve().parents[1]
INSTALL_HINT = "run scripts/install-prometheus.sh (Debian's prometheus package) first"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
# CI sets CDCFLOW_REQUIRE_PROMETHEUS=1 so that a failed install fails these tests instead of
# skipping them.
REQUIRED = os.environ.get("CDCFLOW_REQUIRE_PROMETHEUS") == "1"
requires_promtool = pytest.mark.skipif(
    PROMTOOL is None and not REQUIRED, reason=f"promtool missing: {INSTALL_HINT}"
)
requires_prometheus = pytest.mark.skipif(
    PROMETHEUS is None and not REQUIRED, reason=f"prometheus missing: {INSTALL_HINT}"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool from the repository root (it resolves relative rule paths from there)."""
    assert PROMTOOL is not None, INSTALL_HINT
    return subprocess.run(
        [PROMTOOL, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


@contextmanager
def serving_registry(registry: CollectorRegistry) -> Iterator[str]:
    """Serve ``generate_latest(registry)`` at ``/metrics``; yield the ``host:port`` target."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="test-metrics", daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Prometheus:
    """A running ``prometheus`` process and a small client for its HTTP API."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def get(self, path: str, **params: str) -> Any:
        """GET an API path and return its ``data`` (raises on an API error)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as response:
            payload = json.loads(response.read())
        if payload.get("status") != "success":
            raise RuntimeError(f"Prometheus {path}: {payload}")
        return payload["data"]

    def ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
            return bool(response.status == 200)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        data = self.get("/api/v1/query", query=expr)
        return list(data["result"])

    def wait_for(
        self, what: str, probe: Callable[[], Any], timeout_s: float = 30.0, every_s: float = 0.25
    ) -> Any:
        """Call ``probe`` until it returns something truthy; fail with the server log if not."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                result = probe()
            except (urllib.error.URLError, ConnectionError, RuntimeError):
                result = None
            if result:
                return result
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"Prometheus: {what} not seen in {timeout_s} s\n{self.tail()}")
            time.sleep(every_s)

    def wait_for_series(self, expr: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.wait_for(expr, lambda: self.query(expr), timeout_s)
        return result

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _config(
    jobs: Mapping[str, Sequence[str]], rule_files: Sequence[Path], interval: str
) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(targets)}]}
            for job, targets in jobs.items()
        ],
    }


@contextmanager
def running_prometheus(
    directory: Path,
    targets: Sequence[str] | Mapping[str, Sequence[str]],
    *,
    rule_files: Sequence[Path] = (),
    interval: str = "1s",
) -> Iterator[Prometheus]:
    """Start Prometheus scraping ``targets`` (``host:port`` list, job ``cdcflow``, or a
    ``{job: [targets]}`` mapping) every ``interval``; stop it on exit.

    Storage, config and log live under ``directory`` (a test's ``tmp_path``). The config
    is JSON, which Prometheus reads as YAML.
    """
    assert PROMETHEUS is not None, INSTALL_HINT
    jobs = dict(targets) if isinstance(targets, Mapping) else {"cdcflow": list(targets)}
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "prometheus.yml"
    config.write_text(json.dumps(_config(jobs, rule_files, interval), indent=2))
    log = directory / "prometheus.log"
    server: Prometheus | None = None
    for _attempt in range(3):  # a free port can be taken between probe and bind
        port = free_port()
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=info",
                ],
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        candidate = Prometheus(process, port, log)
        try:
            candidate.wait_for("readiness", candidate.ready, timeout_s=30)
        except AssertionError:
            candidate.stop()
            if "address already in use" in candidate.tail():
                continue
            raise
        server = candidate
        break
    if server is None:
        raise AssertionError(f"Prometheus did not start on a free port\n{log.read_text()}")
    try:
        yield server
    finally:
        server.stop()
