"""The benchmark harness (``python -m bench``) on a tiny workload, against the real parts.

Figures are never compared with a bound here: the machine is shared and
timing assertions would be flaky. What is checked is that the harness runs
every phase end to end, writes every key the issue asks for, and that each
figure is a positive number; plus the pure pieces (ratios, targets, profile
summaries) on made-up inputs.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import pytest
from bench import pipeline, profiling, report, run
from rich.console import Console


def _figures(**changes: float) -> dict[str, float]:
    figures = {
        "raw_write_events_per_s": 4000.0,
        "raw_capture_events_per_s": 13000.0,
        "raw_write_captured_events_per_s": 3000.0,
        "raw_publish_msgs_per_s": 11000.0,
        "raw_consume_msgs_per_s": 20000.0,
        "raw_load_rows_per_s": 15000.0,
        "e2e_events_per_s": 2400.0,
        "freshness_p50_s": 0.5,
        "freshness_p99_s": 1.1,
        "naive_events_per_s": 8.0,
        "producer_peak_rss_mb": 65.0,
        "consumer_peak_rss_mb": 460.0,
        "pipeline_cpu_us_per_event": 150.0,
        "source_cpu_us_per_event": 400.0,
        "pipeline_vs_source_cpu": 0.375,
        "changes_per_message": 80.0,
    }
    figures.update(changes)
    return figures


def test_ratios_use_the_slowest_raw_stage_and_the_naive_design() -> None:
    figures = _figures(raw_load_rows_per_s=3000.0)
    notes: dict[str, object] = {}
    report.derive(figures, notes)
    assert notes["slowest_raw_stage"] == "ClickHouse load"
    assert figures["e2e_vs_slowest_raw"] == pytest.approx(0.8)
    assert figures["speedup_vs_naive"] == pytest.approx(300.0)
    assert figures["captured_vs_raw_write"] == pytest.approx(0.75)
    assert figures["e2e_vs_captured_write"] == pytest.approx(0.8)


def test_cpu_splits_into_the_pipeline_and_the_source() -> None:
    split = pipeline.split_cpu(
        {"producer": 30.0, "consumer": 60.0, "rabbitmq": 10.0, "mongodb": 150.0,
         "simulator+bench": 50.0, "machine": 300.0}
    )  # fmt: skip
    assert split == {
        "pipeline_cpu_us_per_event": 100.0,
        "source_cpu_us_per_event": 200.0,
        "pipeline_vs_source_cpu": 0.5,
    }


def test_document_refuses_missing_figures_and_records_targets() -> None:
    figures = _figures(e2e_events_per_s=3200.0)  # 400x naive, 0.8x the MongoDB write
    notes: dict[str, object] = {}
    report.derive(figures, notes)
    started = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)
    doc = report.document(
        figures, notes, workload={}, machine_info={}, started=started, elapsed_s=1.0
    )
    assert doc["targets"]["consumer_peak_rss_mb"] == {"target": "≤ 600", "met": True}
    assert doc["targets"]["speedup_vs_naive"]["met"] is True
    assert doc["targets"]["e2e_vs_slowest_raw"]["met"] is True
    assert doc["targets"]["pipeline_vs_source_cpu"] == {"target": "≤ 0.5", "met": True}
    del figures["freshness_p99_s"]
    with pytest.raises(KeyError, match="freshness_p99_s"):
        report.document(
            figures, notes, workload={}, machine_info={}, started=started, elapsed_s=1.0
        )


def test_quick_workload_is_smaller_and_flags_override_it() -> None:
    quick = run.workload_of(run.parse_args(["--quick"]))
    full = run.workload_of(run.parse_args([]))
    assert quick.events < full.events and quick.backlog < full.backlog
    tiny = run.workload_of(run.parse_args(["--quick", "--events", "300", "--rate", "100"]))
    assert (tiny.events, tiny.rate, tiny.naive_events) == (300, 100.0, quick.naive_events)


def test_profile_summary_and_thread_names_from_collapsed_stacks(tmp_path: Path) -> None:
    collapsed = tmp_path / "e2e-consumer.txt"
    collapsed.write_text(
        "thread (11): MainThread;run (cdcflow/consumer/pipeline.py:171);"
        "process_batch (cdcflow/consumer/batches.py:147) 30\n"
        "thread (12): rabbitmq-abc;_run (cdcflow/consumer/rabbitmq.py:303) 10\n"
        "thread (13): queue-watch;_watch_queue (cdcflow/consumer/pipeline.py:140);"
        "Event.wait (threading.py:629) 7\n"
    )
    names = profiling.python_thread_names(collapsed)
    assert names == {11: "MainThread", 12: "rabbitmq-abc", 13: "queue-watch"}
    summary = profiling.summarize(collapsed)
    assert "40 samples of work (7 of threads waiting left out)" in summary
    assert "75.0%  process_batch (cdcflow/consumer/batches.py:147)" in summary
    used = profiling.cpu_by_thread(
        {11: ("python", 1.0), 13: ("ThreadPool", 0.5)},
        {11: ("python", 3.0), 13: ("ThreadPool", 1.5), 14: ("python", 0.25)},
        {11: "MainThread", 14: "Thread-7 (run)"},
    )
    assert used == {"MainThread": 2.0, "ThreadPool": 1.0, "beam bundle threads (run)": 0.25}


@pytest.mark.slow
def test_harness_writes_every_key_with_positive_figures(tmp_path: Path, amqp_url: str) -> None:
    output = tmp_path / "results" / "latest.json"
    args = run.parse_args(
        [
            "--events", "300",
            "--rate", "200",
            "--freshness-s", "2",
            "--naive-events", "3",
            "--backlog", "300",
            "--output", str(output),
            "--amqp-url", amqp_url,
        ]
    )  # fmt: skip
    run.run(args, Console(file=io.StringIO()))
    doc = json.loads(output.read_text())
    for key in report.REQUIRED_KEYS:
        assert key in doc, key
        assert isinstance(doc[key], float | int) and doc[key] > 0, (key, doc[key])
    for key, _label, _unit in report.ROWS:
        assert doc[key] > 0, key
    machine = doc["machine"]
    assert machine["cores"] >= 1 and machine["python"].startswith("3.")
    assert machine["versions"]["rabbitmq"] not in ("", "?")
    assert doc["date"] and doc["workload"]["events"] == 300
    assert set(doc["targets"]) == {target.key for target in report.TARGETS}
