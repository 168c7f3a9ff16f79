"""Run the whole pipeline as production does, for end-to-end and chaos tests.

Producer and consumer are ``python -m cdcflow`` child processes configured by
environment, each with its own ``/metrics`` port, restartable like a supervisor
would. Draining does not trust counters (they restart with their process): the
producer has caught up when its saved token reaches the head of the change
stream, and the queue is empty when a final consumer with ``--idle-exit`` stops.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pymongo import MongoClient

from cdcflow.config import Settings
from cdcflow.events import nx_sequence
from cdcflow.localstack import free_port
from cdcflow.scrape import Scrape, ready, scrape
from tests.support import cdcflow_process


def wait_for(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Worker:
    """One restartable worker process (``produce`` or ``consume``)."""

    command: str
    settings: Settings
    log: Path
    extra: dict[str, object] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    starts: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True) -> None:
        self.port = free_port()
        self.process = cdcflow_process(
            [self.command], self.settings, self.log, metrics_port=self.port, **self.extra
        )
        self.starts += 1
        if wait_ready:
            wait_for(self.ready_or_dead, 90, f"{self.command} to be ready")
            assert self.alive(), f"{self.command} died at start:\n{self.tail()}"

    def ready_or_dead(self) -> bool:
        return not self.alive() or ready(self.base_url)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def metrics(self) -> Scrape:
        return scrape(f"{self.base_url}/metrics")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds it took). Kills after ``timeout``."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            return -9, time.monotonic() - started
        return code, time.monotonic() - started

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class Pipeline:
    """Producer + consumer for one test, over its own MongoDB, queues and warehouse."""

    def __init__(self, settings: Settings, directory: Path) -> None:
        self.settings = settings
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.producer = Worker("produce", settings, directory / "producer.log")
        self.consumer = Worker("consume", settings, directory / "consumer.log")

    def start(self) -> None:
        self.producer.start()  # opens the stream before anything is written
        self.consumer.start()

    def close(self) -> None:
        """Kill whatever still runs: a failed test must not leave workers behind."""
        for worker in (self.producer, self.consumer):
            if worker.alive():
                worker.kill()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def head_sequence(self) -> int:
        """N of the newest change of the collection (nx-27017): a fresh stream starts there."""
        client: MongoClient[dict[str, object]] = MongoClient(
            self.settings.mongo_uri.reveal(), serverSelectionTimeoutMS=5000
        )
        try:
            collection = client[self.settings.mongo_db][self.settings.mongo_collection]
            with collection.watch() as stream:
                return nx_sequence(stream.resume_token)
        finally:
            client.close()

    def saved_sequence(self) -> int:
        client: MongoClient[dict[str, object]] = MongoClient(
            self.settings.mongo_uri.reveal(), serverSelectionTimeoutMS=5000
        )
        try:
            document = client[self.settings.mongo_db][self.settings.offsets_collection].find_one(
                {"_id": self.settings.source_namespace}
            )
        finally:
            client.close()
        token = (document or {}).get("token")
        return nx_sequence(token) if isinstance(token, dict) else -1

    def wait_producer_caught_up(self, timeout: float = 180) -> None:
        head = self.head_sequence()
        wait_for(
            lambda: self.saved_sequence() >= head,
            timeout,
            f"the producer's saved token to reach nx:{head}",
            every=0.5,
        )

    def drain_and_stop(self, timeout: float = 300) -> dict[str, tuple[int, float]]:
        """Producer caught up and stopped, consumer stopped, then a final consumer
        drains the queue and exits on idle. Returns each SIGTERM's (code, seconds)."""
        self.wait_producer_caught_up(timeout)
        exits = {"producer": self.producer.terminate()}
        if self.consumer.alive():
            exits["consumer"] = self.consumer.terminate()
        final = Worker(
            "consume", self.settings, self.directory / "consumer.log", extra={"idle_exit_s": 3}
        )
        final.start(wait_ready=False)
        assert final.process is not None
        code = final.process.wait(timeout)
        assert code == 0, final.tail()
        return exits
