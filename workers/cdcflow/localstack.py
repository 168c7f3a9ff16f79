"""The embedded local stack: nx-27017 as MongoDB, a private RabbitMQ node, chdb.

Used by ``cdcflow demo``, the benchmarks and the integration tests, so all three
start MongoDB the same way. Nothing here is used in Kubernetes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdcflow import broker, naming
from cdcflow.config import Settings, settings_env
from cdcflow.errors import ServiceUnavailable
from cdcflow.localbroker import PASSWORD as BROKER_PASSWORD
from cdcflow.localbroker import USER as BROKER_USER
from cdcflow.localbroker import RabbitNode, start_node
from cdcflow.localbroker import free_port as free_port  # re-exported: tests and bench use it
from cdcflow.localbroker import port_open as port_open
from cdcflow.scrape import Scrape, ready, scrape
from cdcflow.urls import ServiceUrl

log = logging.getLogger(__name__)


def _nx_executable() -> list[str]:
    found = shutil.which("nx-27017", path=str(Path(sys.executable).parent)) or shutil.which(
        "nx-27017"
    )
    return [found] if found else [sys.executable, "-m", "nx_27017"]


@dataclass
class MongoServer:
    """A running nx-27017 process."""

    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def start_mongo(data_dir: Path, port: int | None = None, timeout: float = 20.0) -> MongoServer:
    """Start nx-27017 with its database file under ``data_dir``; wait until it listens."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_file = data_dir / "nx-27017.log"
    command = _nx_executable() + [
        "--db",
        str(data_dir / "mongo.db"),
        "-p",
        str(port),
        "--log-file",
        str(log_file),
        "--pid-file",
        str(data_dir / "nx-27017.pid"),
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C meant for the demo is handled by the demo
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_file.read_text(errors="replace")[-400:] if log_file.exists() else ""
            raise ServiceUnavailable(
                "MongoDB (nx-27017)",
                f"127.0.0.1:{port}",
                f"the server exited with code {process.returncode}: {tail.strip()}",
                f"see {log_file}",
            )
        if port_open("127.0.0.1", port):
            return MongoServer(process, port, data_dir)
        time.sleep(0.05)
    process.kill()
    raise ServiceUnavailable(
        "MongoDB (nx-27017)",
        f"127.0.0.1:{port}",
        f"not listening after {timeout:.0f} s",
        f"see {log_file}",
    )


@contextlib.contextmanager
def mongo_server(data_dir: Path, port: int | None = None) -> Iterator[MongoServer]:
    server = start_mongo(data_dir, port)
    try:
        yield server
    finally:
        server.stop()


DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def _answers(settings: Settings) -> None:
    """Raise :class:`ServiceUnavailable` (saying what to do) unless the broker answers."""
    broker.connect(settings).close()


def _default_broker_answers(settings: Settings) -> bool:
    default = settings.with_overrides(amqp_url=DEFAULT_AMQP_URL, server_timeout_s=3.0)
    if not port_open(default.amqp_url.host, default.amqp_url.port or 5672):
        return False
    try:
        _answers(default)
    except ServiceUnavailable:
        return False
    return True


@dataclass(frozen=True)
class LocalBroker:
    """The broker a local run uses, and the node cdcflow started for it (if any)."""

    settings: Settings  # with ``amqp_url`` pointing at that broker
    node: RabbitNode | None

    @property
    def pid(self) -> int | None:
        return self.node.pid if self.node is not None else None


@contextlib.contextmanager
def local_broker(
    settings: Settings,
    root: Path,
    *,
    configured: bool,
    reuse_default: bool,
    say: Callable[[str], None] = log.info,
) -> Iterator[LocalBroker]:
    """The broker for a local run: the configured one, else (``reuse_default``) one
    answering at 127.0.0.1:5672, else a private node under ``root``, stopped on exit
    (also on Ctrl-C: the node runs in its own session and is stopped here).
    """
    if configured:
        _answers(settings)
        yield LocalBroker(settings, None)
        return
    if reuse_default and _default_broker_answers(settings):
        where = ServiceUrl.parse(DEFAULT_AMQP_URL).where
        say(f"RabbitMQ: using the broker that answers at {where}")
        yield LocalBroker(settings.with_overrides(amqp_url=DEFAULT_AMQP_URL), None)
        return
    say(f"RabbitMQ: starting a private node in {root} (about 20 s) ...")
    node = start_node(root, say=say)
    try:
        say(
            f"RabbitMQ: ready in {node.started_in_s or 0:.0f} s; management UI "
            f"{node.management_url} (user {BROKER_USER}, password {BROKER_PASSWORD}); "
            f"AMQP 127.0.0.1:{node.ports.amqp}"
        )
        yield LocalBroker(settings.with_overrides(amqp_url=node.amqp_url), node)
    finally:
        node.stop()


def process_rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (Linux), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def terminate(process: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM, wait, SIGKILL if it did not stop; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait(timeout)


def worker_env(settings: Settings, **overrides: Any) -> dict[str, str]:
    """This process's environment plus the ``CDCFLOW_*`` variables of ``settings``
    (with ``overrides`` applied): a child started with it loads the same settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CDCFLOW_")}
    env.update(settings_env(settings.with_overrides(**overrides) if overrides else settings))
    return env


@dataclass
class WorkerProcess:
    """A ``python -m cdcflow <command>`` child, run as Kubernetes runs a worker:
    configured by environment, watched through ``/metrics`` and ``/readyz``,
    stopped with SIGTERM."""

    name: str
    process: subprocess.Popen[bytes]
    metrics_url: str  # http://host:port, without a path
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def exited(self) -> ServiceUnavailable:
        """The error to raise when this worker stopped on its own."""
        return ServiceUnavailable(
            f"cdcflow {self.name}",
            self.metrics_url,
            f"exited with code {self.process.returncode}:\n{self.log_tail()}",
            f"see {self.log_path}",
        )

    def check(self) -> None:
        if not self.alive():
            raise self.exited()

    def scrape(self) -> Scrape:
        """Its metrics now (``ok`` is False if it does not answer)."""
        return scrape(f"{self.metrics_url}{naming.METRICS_PATH}")

    def value(self, name: str, **labels: str) -> float:
        """One metric, summed over labels; raises if the worker died or does not answer."""
        self.check()
        result = self.scrape()
        if not result.ok:
            raise ServiceUnavailable(
                f"cdcflow {self.name}", self.metrics_url, result.error, f"see {self.log_path}"
            )
        return result.value(name, **labels)

    def ready(self) -> bool:
        return ready(self.metrics_url)

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            self.check()
            if time.monotonic() > deadline:
                raise ServiceUnavailable(
                    f"cdcflow {self.name}",
                    self.metrics_url,
                    f"not ready after {timeout:.0f} s",
                    f"see {self.log_path}",
                )
            time.sleep(0.1)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM (SIGKILL after ``timeout``); the exit code."""
        return terminate(self.process, timeout)

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
        self.process.wait(10)


def start_worker(
    command: str,
    settings: Settings,
    log_path: Path,
    *,
    name: str | None = None,
    **overrides: Any,
) -> WorkerProcess:
    """Start ``cdcflow <command>`` on a free metrics port, logging to ``log_path``.

    ``overrides`` are settings for this worker only (``idle_exit_s=3`` ...). It runs
    in its own session, so a Ctrl-C meant for the caller reaches it only as the
    caller's SIGTERM.
    """
    port = overrides.pop("metrics_port", None) or free_port()
    overrides.setdefault("metrics_host", "127.0.0.1")
    env = worker_env(settings, metrics_port=port, **overrides)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "cdcflow", command],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return WorkerProcess(name or command, process, f"http://127.0.0.1:{port}", log_path)
