"""Results: the derived ratios, the targets, the machine, the table and the JSON.

Every figure is a rate or a duration measured in the same run on the same
machine; the ratios (``e2e_vs_slowest_raw``, ``speedup_vs_naive``) are what
stays meaningful on a shared 2-core machine whose absolute speed varies with
whatever else runs on it (the CPU the run did not account for is in the notes).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# The raw stages of the issue; the slowest of them is what the pipeline is held to.
RAW_STAGES = {
    "raw_write_events_per_s": "MongoDB write",
    "raw_capture_events_per_s": "change-stream capture",
    "raw_publish_msgs_per_s": "RabbitMQ publish",
    "raw_consume_msgs_per_s": "RabbitMQ consume",
    "raw_load_rows_per_s": "ClickHouse load",
}

REQUIRED_KEYS = (
    *RAW_STAGES,
    "e2e_events_per_s",
    "e2e_vs_slowest_raw",
    "raw_write_captured_events_per_s",
    "captured_vs_raw_write",
    "e2e_vs_captured_write",
    "freshness_p50_s",
    "freshness_p99_s",
    "naive_events_per_s",
    "speedup_vs_naive",
    "producer_peak_rss_mb",
    "consumer_peak_rss_mb",
    "pipeline_cpu_us_per_event",
    "source_cpu_us_per_event",
    "pipeline_vs_source_cpu",
    "changes_per_message",
)


@dataclass(frozen=True)
class Target:
    key: str
    op: str  # ">=" or "<="
    bound: float

    def met(self, figures: dict[str, float]) -> bool:
        value = figures[self.key]
        return value >= self.bound if self.op == ">=" else value <= self.bound

    def text(self) -> str:
        return f"{'≥' if self.op == '>=' else '≤'} {self.bound:g}"


TARGETS = (  # issue 18's
    Target("pipeline_vs_source_cpu", "<=", 0.5),
    Target("e2e_vs_slowest_raw", ">=", 0.75),
    Target("speedup_vs_naive", ">=", 400),
    Target("freshness_p99_s", "<=", 1.0),
    Target("consumer_peak_rss_mb", "<=", 600),
)

# (key, what it measures, unit) in the order the table shows them.
ROWS: tuple[tuple[str, str, str], ...] = (
    ("raw_write_events_per_s", "raw: MongoDB write (simulator, bulk 500, unordered)", "events/s"),
    ("raw_capture_events_per_s", "raw: change-stream read (batch 1000)", "events/s"),
    ("raw_write_captured_events_per_s", "raw: MongoDB write, a bare reader on", "events/s"),
    ("captured_vs_raw_write", "source: write while captured ÷ write alone", "ratio"),
    ("raw_encode_events_per_s", "cpu: producer envelope encode", "events/s"),
    ("raw_publish_msgs_per_s", "raw: pika publish, 1000 in flight, confirms", "msgs/s"),
    ("raw_consume_msgs_per_s", "raw: pika consume, prefetch 1000, multi-ack 500", "msgs/s"),
    ("raw_transform_rows_per_s", "cpu: consumer transform (1000/batch)", "rows/s"),
    ("raw_load_rows_per_s", "raw: chdb insert_arrow, 1000-row batches", "rows/s"),
    ("raw_load_10k_rows_per_s", "raw: chdb insert_arrow, 10k-row batches", "rows/s"),
    ("e2e_events_per_s", "pipeline: first write → last row loaded", "events/s"),
    ("e2e_vs_slowest_raw", "pipeline ÷ slowest raw stage", "ratio"),
    ("e2e_vs_captured_write", "pipeline ÷ MongoDB write while captured", "ratio"),
    ("changes_per_message", "end to end: changes per AMQP message", "ratio"),
    ("pipeline_cpu_us_per_event", "cpu: producer + broker + consumer, per event", "µs"),
    ("source_cpu_us_per_event", "cpu: MongoDB + writer, per event", "µs"),
    ("pipeline_vs_source_cpu", "cpu: pipeline ÷ source", "ratio"),
    ("freshness_rate_events_per_s", "freshness run: write rate achieved", "events/s"),
    ("freshness_p50_s", "freshness p50: source write → warehouse", "s"),
    ("freshness_p99_s", "freshness p99: source write → warehouse", "s"),
    ("freshness_cluster_p50_s", "freshness p50: cluster time → warehouse", "s"),
    ("freshness_cluster_p99_s", "freshness p99: cluster time → warehouse", "s"),
    ("naive_publish_msgs_per_s", "naive: connection per publish", "msgs/s"),
    ("naive_pipeline_msgs_per_s", "naive: Beam pipeline per message", "msgs/s"),
    ("naive_events_per_s", "naive design (slower half)", "events/s"),
    ("speedup_vs_naive", "pipeline ÷ naive design", "ratio"),
    ("producer_peak_rss_mb", "producer peak RSS, publishing the backlog", "MB"),
    ("consumer_peak_rss_mb", "consumer peak RSS, draining the backlog", "MB"),
    ("flink_e2e_events_per_s", "Flink: first write → last row loaded (checkpoint 1 s)", "events/s"),
    ("flink_e2e_vs_inprocess", "Flink ÷ in-process, end to end", "ratio"),
    ("flink_freshness_p50_s_ckpt1s", "Flink freshness p50, checkpoint 1 s", "s"),
    ("flink_freshness_p99_s_ckpt1s", "Flink freshness p99, checkpoint 1 s", "s"),
    ("flink_freshness_p99_ckpt1s_vs_inprocess", "Flink ÷ in-process, p99, checkpoint 1 s", "ratio"),
    ("flink_freshness_p50_s_ckpt5s", "Flink freshness p50, checkpoint 5 s", "s"),
    ("flink_freshness_p99_s_ckpt5s", "Flink freshness p99, checkpoint 5 s", "s"),
    ("flink_freshness_p99_ckpt5s_vs_inprocess", "Flink ÷ in-process, p99, checkpoint 5 s", "ratio"),
    ("flink_consumer_peak_rss_mb", "Flink consumer peak RSS (Python + JVM), backlog", "MB"),
    ("flink_consumer_rss_vs_inprocess", "Flink ÷ in-process, consumer peak RSS", "ratio"),
)

FLINK_KEYS = tuple(key for key, _, _ in ROWS if key.startswith("flink_"))


def derive(figures: dict[str, float], notes: dict[str, Any]) -> None:
    """Add the ratios: e2e over the slowest raw stage, and over the naive design.

    And what the source itself gives up to be captured: the writes' rate while a
    bare change stream reads them, over their rate alone. On a source that serves
    its change stream on the writer's time (nx-27017, one Python process), no
    pipeline can be faster than that, so it bounds ``e2e_vs_slowest_raw`` whenever
    the write is the slowest stage; ``e2e_vs_captured_write`` is the share of that
    bound the pipeline reaches.
    """
    slowest = min(RAW_STAGES, key=lambda key: figures[key])
    notes["slowest_raw_stage"] = RAW_STAGES[slowest]
    figures["e2e_vs_slowest_raw"] = figures["e2e_events_per_s"] / figures[slowest]
    captured = figures["raw_write_captured_events_per_s"]
    figures["captured_vs_raw_write"] = captured / figures["raw_write_events_per_s"]
    figures["e2e_vs_captured_write"] = figures["e2e_events_per_s"] / captured
    figures["speedup_vs_naive"] = figures["e2e_events_per_s"] / figures["naive_events_per_s"]


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
    except OSError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine(rabbitmq: str) -> dict[str, Any]:
    """What the figures were measured on (they only compare within one machine)."""
    versions: dict[str, str] = {"rabbitmq": rabbitmq}
    for package in (
        "apache-beam",
        "chdb",
        "clickhouse-connect",
        "nx-27017",
        "pika",
        "pymongo",
        "pyarrow",
        "pydantic",
        "orjson",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "?"
    memory_kb = 0
    try:
        memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gb": round(memory_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "commit": commit + ("+dirty" if dirty and commit else ""),
    }


def document(
    figures: dict[str, float],
    notes: dict[str, Any],
    *,
    workload: dict[str, Any],
    machine_info: dict[str, Any],
    started: dt.datetime,
    elapsed_s: float,
) -> dict[str, Any]:
    """The JSON written to ``bench/results/``: flat figures first, then context."""
    required = (*REQUIRED_KEYS, *(FLINK_KEYS if workload.get("flink") else ()))
    missing = [key for key in required if key not in figures]
    if missing:
        raise KeyError(f"figures missing: {', '.join(missing)}")
    doc: dict[str, Any] = {key: round(value, 4) for key, value in figures.items()}
    doc["targets"] = {
        target.key: {"target": target.text(), "met": target.met(figures)} for target in TARGETS
    }
    doc["workload"] = workload
    doc["notes"] = notes
    doc["machine"] = machine_info
    doc["date"] = started.isoformat(timespec="seconds")
    doc["elapsed_s"] = round(elapsed_s, 1)
    return doc


def write(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def _format(value: float, unit: str) -> str:
    if unit in ("events/s", "msgs/s", "rows/s"):
        return f"{value:,.0f}"
    if unit == "ratio":
        return f"{value:,.2f}"
    if unit == "s":
        return f"{value:.3f}"
    return f"{value:,.0f}"


def table(doc: dict[str, Any]) -> Table:
    """The run as a table: figure, value, unit, target, met?"""
    targets = {target.key: target for target in TARGETS}
    out = Table(title=f"cdcflow benchmark ({doc['date']}, {doc['machine']['cores']} cores)")
    for column, justify in (
        ("figure", "left"),
        ("key", "left"),
        ("value", "right"),
        ("unit", "left"),
        ("target", "right"),
        ("met?", "center"),
    ):
        out.add_column(column, justify=justify)  # type: ignore[arg-type]
    for key, label, unit in ROWS:
        if key not in doc:
            continue
        target = targets.get(key)
        met = ""
        if target is not None:
            met = "[green]yes" if doc["targets"][key]["met"] else "[red]no"
        if key == "e2e_vs_slowest_raw":
            label = f"{label} ({doc['notes'].get('slowest_raw_stage', '?')})"
        out.add_row(label, key, _format(doc[key], unit), unit, target.text() if target else "", met)
    return out


def show(doc: dict[str, Any], console: Console) -> None:
    console.print(table(doc))
    cpu = doc["notes"].get("e2e_cpu_us_per_event")
    if cpu:
        parts = ", ".join(f"{name} {value:,.0f}" for name, value in cpu.items())
        console.print(f"CPU per event during the end-to-end run (µs): {parts}")
    captured = doc["notes"].get("captured_write_cpu_us_per_event")
    if captured:
        parts = ", ".join(f"{name} {value:,.0f}" for name, value in captured.items())
        console.print(f"CPU per event, writes with only a bare reader on (µs): {parts}")
