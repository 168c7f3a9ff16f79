"""SIGTERM stops a worker within 10 s even when what it depends on is gone."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from cdcflow import broker
from cdcflow.config import Settings
from cdcflow.localstack import MongoServer
from tests.pipeline_support import Pipeline


def test_sigterm_with_mongodb_and_queues_gone(
    make_settings: Callable[..., Settings], mongo: MongoServer, tmp_path: Path
) -> None:
    settings = make_settings()
    with Pipeline(settings, tmp_path / "run") as pipeline:
        pipeline.start()
        mongo.kill()
        with broker.channel(settings) as ch:
            for queue in (settings.queue_name, settings.failed_queue_name):
                ch.queue_delete(queue)
        time.sleep(3)  # both notice: the producer retries MongoDB, the consumer the queue
        for worker in (pipeline.producer, pipeline.consumer):
            code, seconds = worker.terminate(timeout=10)
            assert code == 0, f"{worker.command} exited {code}:\n{worker.tail()}"
            assert seconds < 10, f"{worker.command} took {seconds:.1f} s"
    assert "resume token was not saved at shutdown" in pipeline.producer.log.read_text()
