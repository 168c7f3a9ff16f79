"""The warehouse on chdb: DDL once and idempotent, versions decide, deletes hide, sweeps."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from cdcflow.config import Settings
from cdcflow.consumer.batches import ROW_SCHEMA, process_batch
from cdcflow.events import CONTENT_TYPE, encode_envelope, snapshot_envelope
from cdcflow.versions import sweep_version
from cdcflow.warehouse.client import Warehouse
from cdcflow.warehouse.ddl import schema_statements
from tests.support import VIEWING, nx_change

COLLECTION = "viewing_logs"


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[Warehouse]:
    settings = Settings(clickhouse_url=f"chdb://{tmp_path / 'wh'}", mongo_collection=COLLECTION)
    with Warehouse(settings) as store:
        store.init_schema()
        yield store


def load(warehouse: Warehouse, *bodies: bytes) -> None:
    batch = process_batch(list(bodies), [CONTENT_TYPE] * len(bodies), collection=COLLECTION)
    loaded_at = dt.datetime.now(dt.UTC)
    warehouse.insert(
        batch.rows.append_column(
            "loaded_at", pa.array([loaded_at] * batch.rows.num_rows, pa.timestamp("us", tz="UTC"))
        )
    )
    for version in batch.sweeps:
        warehouse.sweep(version)


def current(warehouse: Warehouse) -> dict[str, tuple[float, str]]:
    rows = warehouse.rows(f"SELECT doc_id, watched_time, op FROM {warehouse.qualified}_current")
    return {str(doc_id): (float(watched), str(op)) for doc_id, watched, op in rows}


def test_schema_is_idempotent_and_matches_what_the_consumer_writes(warehouse: Warehouse) -> None:
    assert warehouse.init_schema() == len(schema_statements("cdcflow", COLLECTION))
    described = {
        str(name): str(kind)
        for name, kind, *_ in warehouse.rows(f"DESCRIBE TABLE {warehouse.qualified}")
    }
    assert set(described) == set(ROW_SCHEMA.names) | {"loaded_at"}
    assert described["version"] == "UInt128"
    engine = warehouse.scalar(
        "SELECT engine_full FROM system.tables WHERE database = 'cdcflow' AND name = {t:String}",
        {"t": COLLECTION},
    )
    assert "ReplacingMergeTree(version, is_deleted)" in engine
    assert "ORDER BY doc_id" in engine
    assert "PARTITION BY" not in engine  # a delete must meet its rows: no key beyond doc_id


def test_newest_version_wins_whatever_the_load_order(warehouse: Warehouse) -> None:
    newer, older = (
        nx_change(20, COLLECTION, "a", watched_time=200),
        nx_change(10, COLLECTION, "a", watched_time=100),
    )
    load(warehouse, newer.body)
    load(warehouse, older.body)  # a replay of an old event arrives late
    load(warehouse, newer.body)  # and the newer one again (at-least-once)
    assert current(warehouse) == {"a": (200.0, "update")}
    assert warehouse.scalar(f"SELECT count() FROM {warehouse.qualified} FINAL") == 1


def test_delete_hides_the_document_and_an_older_replay_does_not_bring_it_back(
    warehouse: Warehouse,
) -> None:
    load(
        warehouse,
        nx_change(1, COLLECTION, "a", "insert").body,
        nx_change(2, COLLECTION, "b", "insert").body,
    )
    load(warehouse, nx_change(3, COLLECTION, "a", "delete").body)
    load(warehouse, nx_change(1, COLLECTION, "a", "insert").body)
    assert set(current(warehouse)) == {"b"}
    views = warehouse.rows(f"SELECT views FROM {warehouse.qualified}_by_video")
    assert views == [(1,)]


def test_sweep_tombstones_what_a_snapshot_missed_but_keeps_what_it_read(
    warehouse: Warehouse,
) -> None:
    load(
        warehouse, *(nx_change(n, COLLECTION, doc, "insert").body for n, doc in enumerate("abc", 1))
    )
    token = {"_data": "nx:10"}  # snapshot after history was lost: "b" was deleted unseen
    document = {"_id": "a", **VIEWING, "watched_time": 5, "total_video_time": 10}
    snapshot_a = encode_envelope(
        snapshot_envelope(document, start_token=token, db="media", coll=COLLECTION)
    ).body
    load(
        warehouse, nx_change(12, COLLECTION, "c", watched_time=250).body
    )  # a change after the snapshot point
    load(warehouse, snapshot_a)
    swept = warehouse.sweep(sweep_version(token))
    assert swept == 1
    assert current(warehouse) == {"a": (5.0, "snapshot"), "c": (250.0, "update")}
    assert warehouse.sweep(sweep_version(token)) == 0  # repeating it changes nothing
