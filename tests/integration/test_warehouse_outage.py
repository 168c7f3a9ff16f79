"""The warehouse goes away for 30 s mid-run: the consumer waits, loses nothing,
dead-letters nothing, and catches up by itself.

chdb is embedded, so "unavailable" is made real at the file system: the table's
data directory is made immutable (``chattr +i``, which stops root too), so every
insert fails until it is lifted.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cdcflow.config import Settings
from cdcflow.localstack import free_port
from cdcflow.scrape import scrape
from cdcflow.warehouse.client import Warehouse
from tests.conftest import BrokerNames
from tests.support import cdcflow_process, depths, nx_change, publish

OUTAGE_S = 30.0


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _chattr(flag: str, path: Path) -> None:
    subprocess.run(["chattr", flag, str(path)], check=True, capture_output=True)


@pytest.fixture
def immutable_supported(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    probe.mkdir()
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed: cannot make the warehouse unavailable")
    try:
        _chattr("+i", probe)
    except subprocess.CalledProcessError as error:
        pytest.skip(f"this file system does not support immutable directories: {error.stderr!r}")
    _chattr("-i", probe)


@pytest.mark.slow
def test_warehouse_outage_of_30_seconds(
    tmp_path: Path, broker_names: BrokerNames, immutable_supported: None
) -> None:
    port = free_port()
    settings = Settings(
        mongo_collection=broker_names.collection,
        exchange=broker_names.exchange,
        clickhouse_url=f"chdb://{tmp_path / 'wh'}",
        metrics_port=port,
        batch_max_messages=100,
    )
    with Warehouse(settings) as warehouse:
        warehouse.init_schema()
        (data_path,) = warehouse.scalar(
            "SELECT data_paths FROM system.tables WHERE database = 'cdcflow' AND name = {t:String}",
            {"t": settings.table_name},
        )
    table_dir = Path(data_path)
    collection = settings.mongo_collection
    publish(settings, [nx_change(n, collection, f"d{n}", "insert") for n in range(1, 501)])

    log = tmp_path / "consumer.log"
    consumer = cdcflow_process(["consume"], settings, log, metrics_port=port)
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    try:

        def loaded() -> float:
            return scrape(metrics_url).value("cdcflow_rows_loaded_total")

        _wait_for(lambda: loaded() >= 500, 120, "the first 500 rows")

        _chattr("+i", table_dir)
        try:
            publish(
                settings, [nx_change(n, collection, f"d{n}", "insert") for n in range(501, 1501)]
            )
            outage_started = time.monotonic()
            _wait_for(
                lambda: scrape(metrics_url).value("cdcflow_warehouse_retries_total") >= 2,
                60,
                "the consumer to retry the warehouse",
            )
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - outage_started)))
            during = scrape(metrics_url)
            assert during.value("cdcflow_rows_loaded_total") == 500
            assert during.value("cdcflow_messages_dead_lettered_total") == 0
            assert depths(settings)[1] == 0, "a good message was dead-lettered"
            assert consumer.poll() is None, "the consumer gave up:\n" + log.read_text()[-2000:]
        finally:
            _chattr("-i", table_dir)

        _wait_for(lambda: loaded() >= 1500, 120, "the consumer to catch up")
        _wait_for(lambda: depths(settings) == (0, 0), 30, "the queue to drain")
    finally:
        consumer.send_signal(signal.SIGTERM)
        assert consumer.wait(15) == 0, log.read_text()[-2000:]

    with Warehouse(settings) as warehouse:
        assert warehouse.count_current() == 1500
    assert "warehouse insert of" in log.read_text()
