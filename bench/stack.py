"""The real parts the benchmarks run on, each fresh per measurement, and cleaned up.

Every measurement gets its own folder under one temporary root (nx-27017's data
file, the chdb warehouse, worker logs), its own collection and queue names under
one exchange unique to the run, on one broker for the whole run (the configured
one, or a private node the run starts), and its workers are started the way production
starts them: ``python -m cdcflow produce|consume`` configured by ``CDCFLOW_*``
variables, observed through ``/metrics``. Nothing is shared with other runs, the
demo or the tests.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pika.exceptions

from cdcflow import broker, localstack
from cdcflow.config import Settings, load_settings

log = logging.getLogger(__name__)


class BenchError(RuntimeError):
    """A measurement could not be completed (a worker died, a wait timed out)."""


def wait_until(
    condition: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05
) -> float:
    """Poll ``condition`` until true; returns the wall time it became true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.time()


@dataclass
class Scratch:
    """The run's temporary root and unique names; :meth:`close` removes them all."""

    root: Path
    token: str
    keep: bool = False
    generation: int = 0  # raised when a phase is retried: fresh names, no leftovers
    amqp_url: str | None = None  # the run's broker (None: CDCFLOW_AMQP_URL or the default)
    broker_pid: int | None = None  # its Erlang VM, when this run started it
    _settings: list[Settings] = field(default_factory=list)

    @classmethod
    def create(cls, keep: bool = False) -> Scratch:
        root = Path(tempfile.mkdtemp(prefix="cdcflow-bench-"))
        return cls(root=root, token=uuid.uuid4().hex[:8], keep=keep)

    @property
    def exchange(self) -> str:
        return f"cdcflow_bench_{self.token}"

    def folder(self, name: str) -> Path:
        """The measurement's folder (a retried phase gets a new one)."""
        path = self.root / f"{name}{self.generation or ''}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def settings(self, name: str, *, mongo_uri: str | None = None, **overrides: Any) -> Settings:
        """Settings for measurement ``name``: its own collection, queue and warehouse,
        on the run's broker. Everything that names a resource is set here, so the
        run is isolated.
        """
        folder = self.folder(name)
        unique = f"bench_{self.token}{self.generation or ''}_{name}"
        values: dict[str, Any] = {
            "mongo_db": "bench",
            "mongo_collection": unique,
            "exchange": self.exchange,
            "queue": unique,
            "clickhouse_url": f"chdb://{folder / 'warehouse'}",
            "clickhouse_database": "cdcflow",
            "clickhouse_table": "views",
            "metrics_port": 0,
            "data_dir": folder / "state",
            "log_level": "WARNING",
            "bad_ratio": 0.0,
        }
        if mongo_uri is not None:
            values["mongo_uri"] = mongo_uri
        if self.amqp_url is not None:
            values["amqp_url"] = self.amqp_url
        values.update(overrides)
        settings = load_settings().with_overrides(**values)
        self._settings.append(settings)
        return settings

    def close(self) -> None:
        """Delete every queue and the exchange this run declared, then the folder."""
        with contextlib.suppress(Exception):
            delete_topology(self._settings)
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)


def use_broker(
    scratch: Scratch,
    cleanup: contextlib.ExitStack,
    amqp_url: str | None,
    *,
    say: Callable[[str], None],
) -> None:
    """Put the run on one broker: ``amqp_url``, else ``CDCFLOW_AMQP_URL``, else a
    private node under the run's folder, stopped when ``cleanup`` closes."""
    configured = amqp_url or os.environ.get("CDCFLOW_AMQP_URL")
    base = load_settings(amqp_url=configured)
    node_root = Path(tempfile.mkdtemp(prefix="cdcflow-bench-rabbitmq-"))
    cleanup.callback(shutil.rmtree, node_root, ignore_errors=True)  # after the node stopped
    local = cleanup.enter_context(
        localstack.local_broker(
            base, node_root, configured=bool(configured), reuse_default=False, say=say
        )
    )
    scratch.amqp_url = local.settings.amqp_url.reveal()
    scratch.broker_pid = local.pid


def delete_topology(all_settings: list[Settings]) -> None:
    if not all_settings:
        return
    connection = broker.connect(all_settings[0])
    try:
        channel = connection.channel()
        for settings in all_settings:
            for queue in (settings.queue_name, settings.failed_queue_name):
                channel.queue_delete(queue)
        for exchange in {settings.exchange for settings in all_settings}:
            channel.exchange_delete(exchange)
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError):
            connection.close()


@contextlib.contextmanager
def mongo(folder: Path) -> Iterator[localstack.MongoServer]:
    """A fresh nx-27017 whose data file lives in ``folder``."""
    server = localstack.start_mongo(folder / "mongo")
    try:
        yield server
    finally:
        server.kill()


class RssSampler:
    """Samples a process's resident memory from /proc in a thread; keeps the peak.

    ``tree``: the process and its descendants together (a consumer and the Flink
    job server it runs), summed per sample; ``peak_by_process`` keeps each one's.
    """

    def __init__(self, pid: int, interval_s: float = 0.05, *, tree: bool = False) -> None:
        self.pid = pid
        self.tree = tree
        self.peak_by_process: dict[str, float] = {}
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = localstack.process_rss_mb(self.pid)
            if self.tree and rss > 0:
                for child in descendants(self.pid):
                    child_rss = localstack.process_rss_mb(child)
                    name = _command_name(child)
                    self.peak_by_process[name] = max(self.peak_by_process.get(name, 0), child_rss)
                    rss += child_rss
            if rss > 0:
                self.samples += 1
                self.peak_mb = max(self.peak_mb, rss)
            self._stop.wait(self.interval_s)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(2.0)
        return self.peak_mb


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children ...), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            parents.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found.extend(children)
        todo.extend(children)
    return found


def _command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14, 15)


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (from /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values[:8]) - idle) / _TICKS


def rabbitmq_pid() -> int | None:
    """A local broker's Erlang VM, to account its CPU (None if not on this machine).

    Only a guess for a broker this run did not start (there may be several);
    :attr:`Scratch.broker_pid` is exact."""
    for stat in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if stat.read_text().strip() == "beam.smp":
                return int(stat.parent.name)
    return None


class CpuMeter:
    """CPU seconds used by named processes, and by the whole machine, over a window."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self._machine = machine_busy_seconds()
        self._wall = time.monotonic()

    def stop(self) -> dict[str, float]:
        """{name: CPU seconds, "machine": busy CPU seconds, "wall": seconds}."""
        used = {name: cpu_seconds(pid) - self._start[name] for name, pid in self.pids.items()}
        used["machine"] = machine_busy_seconds() - self._machine
        used["wall"] = time.monotonic() - self._wall
        return used


Worker = localstack.WorkerProcess


def start_worker(
    name: str, command: str, settings: Settings, logs: Path, **extra: str | int | float | None
) -> Worker:
    """Start a worker as production does: configured by environment, own session."""
    return localstack.start_worker(
        command, settings, logs / f"{name}.log", name=name, log_level="INFO", **extra
    )


@contextlib.contextmanager
def workers() -> Iterator[list[Worker]]:
    """A list to put started workers in; every one still running is stopped on exit."""
    started: list[Worker] = []
    try:
        yield started
    finally:
        for worker in reversed(started):
            if worker.alive():
                worker.terminate(timeout=30.0)


def queue_ready(settings: Settings) -> int:
    """Ready messages in the main queue (passive declare: no management plugin)."""
    with broker.channel(settings) as ch:
        return broker.queue_depth(ch, settings.queue_name).messages or 0


def rabbitmq_version(settings: Settings) -> str:
    connection = broker.connect(settings)
    try:
        properties = connection._impl.server_properties or {}
        version = properties.get("version", b"?")
        return version.decode() if isinstance(version, bytes) else str(version)
    finally:
        connection.close()
