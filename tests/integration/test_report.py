"""The analytics report against a real chdb warehouse filled with synthetic rows.

The rows include superseded versions and deleted documents chosen so that
counting them would change the answers: the numbers are checked against an
independent calculation over the newest, non-deleted rows. chdb opens one data
folder per process, so every test closes its warehouse (``with``) before the
next test opens another folder.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import random
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from rich.console import Console

from cdcflow import report
from cdcflow.config import Settings
from cdcflow.warehouse.client import Warehouse

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
START = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
DEVICES = ("android", "ios", "web", "tv")
COUNTRIES = ("PT", "US", "DE", "BR", "IN", "JP")
_MS = pa.timestamp("ms", tz="UTC")
_US = pa.timestamp("us", tz="UTC")
SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("video_id", pa.string()),
        ("user_id", pa.string()),
        ("device", pa.string()),
        ("country", pa.string()),
        ("started_at", _MS),
        ("updated_at", _MS),
        ("watched_time", pa.float64()),
        ("total_video_time", pa.float64()),
        ("completion_rate", pa.float64()),
        ("op", pa.string()),
        ("version", pa.uint64()),
        ("is_deleted", pa.uint8()),
        ("cluster_time", _US),
        ("captured_at", _US),
        ("loaded_at", _US),
    ]
)


def open_warehouse(tmp_path: Path) -> Warehouse:
    return Warehouse(Settings(clickhouse_url=f"chdb://{tmp_path}/wh", mongo_collection="views"))


def load(warehouse: Warehouse, rows: list[dict[str, Any]]) -> None:
    """Insert rows as the sink would: one Arrow batch, columns named like the table's."""
    warehouse.insert(pa.Table.from_pylist(rows, schema=SCHEMA))


def synthetic_batches(
    docs: int, *, videos: int = 40, span_s: float = 600.0, seed: int = 7
) -> list[list[dict[str, Any]]]:
    """Inserts, then updates (newer versions), then deletes, as three batches.

    Separate batches matter: ClickHouse collapses same-key rows within one insert,
    and the test needs the superseded rows to really be in the raw table. Old
    states have low completion and deleted documents high completion, so counting
    either would move the averages.
    """
    rng = random.Random(seed)
    inserts, updates, deletes = [], [], []
    for n in range(docs):
        loaded = START + dt.timedelta(seconds=span_s * n / docs)
        video = f"vid_{min(int(rng.paretovariate(1.2)) - 1, videos - 1):03d}"
        row = {
            "doc_id": f"doc_{n:06d}",
            "video_id": video,
            "user_id": f"user_{rng.randrange(500)}",
            "device": rng.choice(DEVICES),
            "country": rng.choice(COUNTRIES),
            "started_at": loaded - dt.timedelta(seconds=30),
            "updated_at": loaded - dt.timedelta(seconds=rng.uniform(0.5, 3)),
            "watched_time": 0.0,
            "total_video_time": 600.0,
            "completion_rate": 0.0,
            "op": "insert",
            "version": 1,
            "is_deleted": 0,
            "cluster_time": loaded - dt.timedelta(seconds=rng.uniform(0.05, 0.5)),
            "captured_at": loaded - dt.timedelta(seconds=0.05),
            "loaded_at": loaded,
        }
        rate = rng.uniform(0, 60) + int(video[-3:]) % 7 * 6
        inserts.append({**row, "completion_rate": rate / 3, "watched_time": rate * 2})
        kind = rng.random()
        if kind < 0.5:
            later = loaded + dt.timedelta(seconds=rng.uniform(1, 20))
            updates.append(
                {
                    **row,
                    "op": "update",
                    "version": 2,
                    "completion_rate": rate,
                    "watched_time": rate * 6,
                    "updated_at": later,
                    "cluster_time": later,
                    "loaded_at": later + dt.timedelta(seconds=rng.uniform(0.1, 2)),
                }
            )
        elif kind < 0.6:
            gone = loaded + dt.timedelta(seconds=rng.uniform(1, 20))
            deletes.append(
                {
                    **row,
                    "op": "delete",
                    "version": 3,
                    "is_deleted": 1,
                    "completion_rate": 100.0,
                    "cluster_time": gone,
                    "loaded_at": gone + dt.timedelta(seconds=0.3),
                }
            )
    return [inserts, updates, deletes]


def current_rows(batches: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The independent answer: per doc_id the highest version, unless it is a delete."""
    newest: dict[str, dict[str, Any]] = {}
    for row in (row for batch in batches for row in batch):
        if row["doc_id"] not in newest or row["version"] > newest[row["doc_id"]]["version"]:
            newest[row["doc_id"]] = row
    return [row for row in newest.values() if not row["is_deleted"]]


def expected_groups(rows: list[dict[str, Any]], key: str) -> dict[str, tuple[int, float]]:
    rates: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        rates[row[key]].append(row["completion_rate"])
    return {name: (len(values), sum(values) / len(values)) for name, values in rates.items()}


def expected_ranking(rows: list[dict[str, Any]], *, best: bool) -> list[tuple[str, int]]:
    """Videos with MIN_VIEWS or more, ordered as the view rounds (2 decimals), ties by views."""
    groups = expected_groups(rows, "video_id")
    eligible = [(v, n, round(avg, 2)) for v, (n, avg) in groups.items() if n >= report.MIN_VIEWS]
    eligible.sort(key=lambda g: (-g[2] if best else g[2], -g[1], g[0]))
    return [(video, views) for video, views, _ in eligible[:10]]


def test_report_numbers_count_only_the_current_state(tmp_path: Path) -> None:
    batches = synthetic_batches(2000)
    live = current_rows(batches)
    every_row = [row for batch in batches for row in batch]
    # The check must be able to fail: counting every row would rank differently.
    assert expected_ranking(every_row, best=True) != expected_ranking(live, best=True)
    with open_warehouse(tmp_path) as warehouse:
        warehouse.init_schema()
        for batch in batches:
            load(warehouse, batch)
        assert warehouse.scalar(f"SELECT count() FROM {warehouse.qualified}") > len(live)

        facts = report.summary(warehouse)
        assert facts.live == len(live)
        assert facts.deleted == len(batches[2])
        # The newest load is a current row (nothing supersedes it), so merges keep it.
        assert facts.last_load == max(row["loaded_at"] for row in every_row)
        assert facts.first_load is not None and facts.first_load >= START

        groups = expected_groups(live, "video_id")
        for best in (True, False):
            ranked = report.top_videos(warehouse, 10, best=best)
            assert [(g.key, g.views) for g in ranked] == expected_ranking(live, best=best)
            for group in ranked:
                assert group.avg_completion == pytest.approx(groups[group.key][1], abs=0.006)

        devices = expected_groups(live, "device")
        assert {g.key: g.views for g in report.by_device(warehouse)} == {
            name: views for name, (views, _) in devices.items()
        }
        for group in report.by_device(warehouse):
            assert group.avg_completion == pytest.approx(devices[group.key][1], abs=0.006)
        countries = expected_groups(live, "country")
        for group in report.by_country(warehouse):
            assert group.views == countries[group.key][0]

        histogram = report.completion_histogram(warehouse)
        assert sum(histogram) == len(live)
        assert histogram[19] == sum(1 for row in live if row["completion_rate"] >= 95)


def test_report_writes_valid_pngs_embedded_in_one_html_page(tmp_path: Path) -> None:
    batches = synthetic_batches(3000)
    with open_warehouse(tmp_path) as warehouse:
        warehouse.init_schema()
        for batch in batches:
            load(warehouse, batch)
        files = report.write_report(warehouse, tmp_path / "out", title="test run")

    names = {path.name for path in files.pngs}
    assert names == {
        "completion_histogram.png",
        "top_videos.png",
        "bottom_videos.png",
        "by_device.png",
        "by_country.png",
        "events.png",
        "freshness.png",
    }
    for path in files.pngs:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC), path
        assert len(data) > 10_000, path
    page = files.html.read_text("utf-8")
    assert files.html.name == "index.html"
    assert files.paths == (files.html, *files.pngs)
    embedded = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert sorted(base64.b64decode(data) for data in embedded) == sorted(
        path.read_bytes() for path in files.pngs
    )
    for heading in report.SECTIONS:
        assert f"<h2>{heading}</h2>" in page
    assert "<script" not in page
    assert "http://" not in page and "https://" not in page
    assert "<h1>test run</h1>" in page


def test_report_of_an_empty_warehouse_says_so(tmp_path: Path) -> None:
    with open_warehouse(tmp_path) as warehouse:
        warehouse.init_schema()
        files = report.write_report(warehouse, tmp_path / "out")
        tables = report.analytics_tables(warehouse)
    assert files.pngs == ()
    page = files.html.read_text("utf-8")
    assert "No data yet" in page
    assert "<h2>Summary</h2>" in page
    assert all(table.row_count == 0 for table in tables)


def test_report_before_the_schema_exists_says_so(tmp_path: Path) -> None:
    with open_warehouse(tmp_path) as warehouse:
        assert report.summary(warehouse) == report.Summary(0, 0, 0, None, None)
        files = report.write_report(warehouse, tmp_path / "out")
        assert all(table.row_count == 0 for table in report.analytics_tables(warehouse))
    assert "No data yet" in files.html.read_text("utf-8")


def test_report_with_every_document_deleted_still_shows_the_load_history(
    tmp_path: Path,
) -> None:
    inserts, _, _ = synthetic_batches(50)
    deletes = [{**row, "op": "delete", "version": 9, "is_deleted": 1} for row in inserts]
    out = tmp_path / "out"
    with open_warehouse(tmp_path) as warehouse:
        warehouse.init_schema()
        load(warehouse, inserts)
        before = report.write_report(warehouse, out)
        load(warehouse, deletes)
        files = report.write_report(warehouse, out)
        facts = report.summary(warehouse)
    assert (facts.live, facts.deleted) == (0, 50)
    assert (out / "by_device.png") in before.pngs
    assert {path.name for path in files.pngs} == {"events.png", "freshness.png"}
    # Charts of the earlier run that no longer have data are gone, not left stale.
    assert sorted(out.glob("*.png")) == sorted(files.pngs)
    assert "No live documents yet." in files.html.read_text("utf-8")


def test_events_over_time_counts_every_load_even_after_merges(tmp_path: Path) -> None:
    batches = synthetic_batches(400)
    ops = ("insert", "update", "delete")
    loaded = {op: len(batch) for op, batch in zip(ops, batches, strict=True)}
    with open_warehouse(tmp_path) as warehouse:
        warehouse.init_schema()
        for batch in batches:
            load(warehouse, batch)
        # Merge now, as ClickHouse eventually would: superseded inserts disappear.
        warehouse.client.command(f"OPTIMIZE TABLE {warehouse.qualified} FINAL")
        surviving = {
            str(op): int(count)
            for op, count in warehouse.rows(
                f"SELECT op, count() FROM {warehouse.qualified} GROUP BY op"
            )
        }
        series = report.events_over_time(warehouse, 1)
        warehouse.init_schema()  # applying the schema again neither resets nor doubles it
        again = report.events_over_time(warehouse, 1)
    assert surviving["insert"] < loaded["insert"], "the merge must have dropped rows"
    assert {op: sum(counts.values()) for op, counts in series.items()} == loaded
    assert again == series
    # Each insert is counted in the second it was loaded.
    expected: dict[int, int] = defaultdict(int)
    for row in batches[0]:
        expected[int(row["loaded_at"].timestamp())] += 1
    assert series["insert"] == expected


def test_analytics_tables_rank_videos_with_enough_views(tmp_path: Path) -> None:
    batches = synthetic_batches(2000)
    # An id that is rich markup and matplotlib mathtext, at 100% with enough views:
    # it must rank first and show verbatim, and the charts must still draw.
    odd = "[/]odd$id$"
    batches.append(
        [
            {**row, "doc_id": f"odd_{n}", "video_id": odd, "completion_rate": 100.0}
            for n, row in enumerate(batches[0][: report.MIN_VIEWS])
        ]
    )
    with open_warehouse(tmp_path) as warehouse:
        warehouse.init_schema()
        for batch in batches:
            load(warehouse, batch)
        top, bottom, devices = report.analytics_tables(warehouse, top=5)
        files = report.write_report(warehouse, tmp_path / "out")
    assert f"≥ {report.MIN_VIEWS} views" in str(top.title)
    assert (top.row_count, bottom.row_count) == (5, 5)
    assert devices.row_count == len(DEVICES)
    shown = io.StringIO()
    Console(file=shown, width=120).print(top)
    assert odd in shown.getvalue()
    assert len(files.pngs) == len(report.CHARTS)


@pytest.mark.parametrize(
    ("span_s", "bucket_s"), [(0, 1), (90, 1), (121, 2), (600, 5), (3600, 30), (86400, 900)]
)
def test_time_buckets_follow_the_run_length(span_s: float, bucket_s: int) -> None:
    assert report.bucket_seconds(span_s) == bucket_s
