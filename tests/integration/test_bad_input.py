"""The bad-input corpus through the real broker and consumer: nothing crashes, nothing
blocks, each bad message is dead-lettered with its reason, good ones load around it,
and late or replayed versions never overwrite a newer state."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pika
import pytest

from cdcflow import broker
from cdcflow.config import Settings
from cdcflow.consumer import deadletter
from cdcflow.consumer.pipeline import run_consumer
from cdcflow.packing import BATCH_CONTENT_TYPE, H_CHANGES, pack
from cdcflow.warehouse.client import Warehouse
from tests.conftest import BrokerNames
from tests.corpus import CASES, COLLECTION, change
from tests.support import depths
from tests.unit.test_bad_input import packable


@pytest.mark.parametrize("packed", [True, False], ids=["batch_messages", "one_change_each"])
def test_corpus_through_the_pipeline(
    tmp_path: Path, broker_names: BrokerNames, packed: bool
) -> None:
    """``packed``: each good change and the bad case after it travel in one batch message
    (as the producer packs them), else one message each."""
    settings = Settings(
        mongo_collection=COLLECTION,
        queue=broker_names.queue,
        exchange=broker_names.exchange,
        clickhouse_url=f"chdb://{tmp_path / 'wh'}",
        metrics_port=0,
        idle_exit_s=1.5,
        batch_max_messages=7,  # bad messages land in many different batches
    )
    good = [change(1000 + n, f"good-{n}", watched_time=n) for n in range(40)]
    with broker.channel(settings) as ch:
        broker.declare_topology(ch, settings)
        ch.confirm_delivery()
        for index, case in enumerate(CASES):
            pair: tuple[tuple[bytes, str | None], ...] = (
                (good[index % 40], None),
                (case.body, case.content_type),
            )
            if packed and packable(case):
                pair = ((pack([good[index % 40], case.body]), BATCH_CONTENT_TYPE),)
            for body, content_type in pair:
                ch.basic_publish(
                    settings.exchange,
                    settings.routing_key,
                    body,
                    pika.BasicProperties(
                        content_type=content_type,
                        delivery_mode=2,
                        headers={H_CHANGES: "2"} if content_type == BATCH_CONTENT_TYPE else None,
                    ),
                )
        # Versions out of order: the newest state arrives first, then older ones.
        for body in (
            change(5000, "late", "update", watched_time=200),
            change(4000, "late", "update", watched_time=100),
            change(3000, "late", "insert", watched_time=50),
            change(6000, "gone", "insert"),
            change(6001, "gone", "delete"),
            change(6000, "gone", "insert"),  # a replay after the delete
        ):
            ch.basic_publish(settings.exchange, settings.routing_key, body)

    result = run_consumer(settings)
    assert not result.abandoned

    dead = Counter(case.reason for case in CASES if case.outcome == "dead")
    assert depths(settings) == (0, sum(dead.values()))
    assert deadletter.inspect(settings).reasons == dead

    with Warehouse(settings) as warehouse:
        rows = {
            str(doc_id): float(watched)
            for doc_id, watched in warehouse.rows(
                f"SELECT doc_id, watched_time FROM {warehouse.qualified}_current"
            )
        }
    fixed = {case.doc_id for case in CASES if case.outcome == "fixed"}
    assert set(rows) == {f"good-{n}" for n in range(40)} | fixed | {"late"}
    assert rows["late"] == 200.0
    assert "gone" not in rows
