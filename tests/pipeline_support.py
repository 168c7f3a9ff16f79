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
from typing import Any

from pymongo import MongoClient

from cdcflow.config import Settings
from cdcflow.localstack import WorkerProcess, start_worker
from cdcflow.scrape import Scrape
from cdcflow.versions import nx_sequence


def wait_for(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Worker:
    """One restartable worker (``produce`` or ``consume``): a new process, on a new
    metrics port, each time it is started, like a pod a Deployment replaces."""

    command: str
    settings: Settings
    log: Path
    extra: dict[str, Any] = field(default_factory=dict)
    current: WorkerProcess | None = None
    starts: int = 0

    @property
    def process(self) -> WorkerProcess:
        assert self.current is not None, f"{self.command} was never started"
        return self.current

    @property
    def port(self) -> int:
        return int(self.process.metrics_url.rsplit(":", 1)[1])

    @property
    def base_url(self) -> str:
        return self.process.metrics_url

    def start(self, wait_ready: bool = True) -> None:
        self.current = start_worker(self.command, self.settings, self.log, **self.extra)
        self.starts += 1
        if wait_ready:
            self.current.wait_ready(timeout=90)

    def alive(self) -> bool:
        return self.current is not None and self.current.alive()

    def metrics(self) -> Scrape:
        return self.process.scrape()

    def kill(self) -> None:
        self.process.kill()

    def terminate(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds it took). Killed (-9) after ``timeout``."""
        started = time.monotonic()
        self.process.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return -9, time.monotonic() - started
        return code, time.monotonic() - started

    def tail(self, lines: int = 40) -> str:
        return self.process.log_tail(lines) if self.current is not None else ""


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
        code = final.process.process.wait(timeout)
        assert code == 0, final.tail()
        return exits
