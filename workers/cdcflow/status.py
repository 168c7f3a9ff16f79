"""``cdcflow status``: how far behind am I, and is anything stuck?

One screen from three sources, each allowed to be down:

* the producer's and the consumer's ``/metrics`` (rates come from two scrapes
  ``interval`` seconds apart, so they are current, not lifetime averages);
* RabbitMQ itself (a passive declare gives each queue's depth);
* the warehouse (current-view row count) when it can be opened: an embedded chdb
  folder held by a running consumer cannot, and then the consumer's counters say
  what was loaded.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from cdcflow import broker
from cdcflow.config import Settings
from cdcflow.errors import CdcflowError
from cdcflow.metrics import (
    CAPTURE_LAG_SECONDS,
    CAPTURE_STOPPED,
    CHANGES_PER_MESSAGE,
    EVENTS_CAPTURED,
    EVENTS_FAILED,
    EVENTS_PUBLISHED,
    EVENTS_SKIPPED,
    FRESHNESS_SECONDS,
    MESSAGES_DEAD_LETTERED,
    RESUME_TOKEN_AGE_SECONDS,
    ROWS_LOADED,
    sample_name,
)
from cdcflow.scrape import Scrape, scrape


@dataclass
class Stage:
    name: str
    up: bool
    detail: str = ""
    rate_per_s: float | None = None
    total: float | None = None


@dataclass
class StatusReport:
    at: float
    stages: list[Stage] = field(default_factory=list)
    queue_depth: int | None = None  # messages: a batch message carries many changes
    changes_per_message: float | None = None  # mean, as the consumer has seen them
    failed_queue_depth: int | None = None
    queue_consumers: int | None = None
    capture_lag_s: float | None = None
    resume_token_age_s: float | None = None
    freshness_p50_s: float | None = None
    freshness_p99_s: float | None = None
    warehouse_rows: int | None = None
    warehouse_detail: str = ""
    dead_letters_by_reason: dict[str, float] = field(default_factory=dict)
    capture_stopped: str | None = None  # drop, rename, dropDatabase, invalidate
    events_failed_by_reason: dict[str, float] = field(default_factory=dict)
    events_skipped: float | None = None
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rate(before: Scrape, after: Scrape, name: str, seconds: float) -> float | None:
    if not (before.ok and after.ok) or seconds <= 0:
        return None
    return max(0.0, (after.value(name) - before.value(name)) / seconds)


def _queues(settings: Settings, report: StatusReport) -> None:
    try:
        connection = broker.connect(settings)
    except CdcflowError as error:
        report.problems.append(str(error))
        return
    try:
        main, failed = broker.queue_depths(
            connection, settings.queue_name, settings.failed_queue_name
        )
    finally:
        connection.close()
    report.queue_depth, report.queue_consumers = main.messages, main.consumers
    report.failed_queue_depth = failed.messages
    if main.messages is None:
        report.problems.append(f"queue {settings.queue_name} does not exist (start the producer)")


def _warehouse(settings: Settings, report: StatusReport) -> None:
    from cdcflow.warehouse.client import Warehouse

    try:
        with Warehouse(settings) as warehouse:
            report.warehouse_rows = warehouse.count_current()
    except CdcflowError as error:
        report.warehouse_detail = (
            "held by the running consumer (chdb: one process at a time)"
            if settings.clickhouse_url.scheme == "chdb"
            else str(error)
        )
    except Exception as error:  # e.g. the table does not exist yet
        text = str(error).splitlines()[0][:200]
        missing = "UNKNOWN_DATABASE" in text or "UNKNOWN_TABLE" in text
        report.warehouse_detail = "no table yet (cdcflow init-warehouse)" if missing else text


def collect(settings: Settings, *, interval: float = 1.0, warehouse: bool = True) -> StatusReport:
    """Gather one status report (takes ``interval`` seconds for the rates)."""
    producer_before = scrape(settings.producer_metrics_url)
    consumer_before = scrape(settings.consumer_metrics_url)
    started = time.monotonic()
    time.sleep(interval)
    producer = scrape(settings.producer_metrics_url)
    consumer = scrape(settings.consumer_metrics_url)
    seconds = time.monotonic() - started
    report = StatusReport(at=time.time())

    def stage(name: str, source: Scrape, metric: str, before: Scrape) -> None:
        report.stages.append(
            Stage(
                name=name,
                up=source.ok,
                detail="" if source.ok else "down",
                rate_per_s=_rate(before, source, metric, seconds),
                total=source.value(metric) if source.ok else None,
            )
        )

    for name, metric, after, before in (
        ("captured", sample_name(EVENTS_CAPTURED), producer, producer_before),
        ("published", sample_name(EVENTS_PUBLISHED), producer, producer_before),
        # Changes, as the stages before and after count (a message may carry many).
        ("consumed", sample_name(CHANGES_PER_MESSAGE, "_sum"), consumer, consumer_before),
        ("loaded", sample_name(ROWS_LOADED), consumer, consumer_before),
        ("dead-lettered", sample_name(MESSAGES_DEAD_LETTERED), consumer, consumer_before),
    ):
        stage(name, after, metric, before)
    if producer.ok:
        report.capture_lag_s = producer.value(sample_name(CAPTURE_LAG_SECONDS))
        report.resume_token_age_s = producer.value(sample_name(RESUME_TOKEN_AGE_SECONDS))
        _capture(settings, producer, report)
    else:
        report.problems.append(
            f"producer metrics unreachable at {settings.producer_metrics_url} ({producer.error})"
        )
    if consumer.ok:
        report.freshness_p50_s = consumer.quantile(sample_name(FRESHNESS_SECONDS), 0.5)
        report.freshness_p99_s = consumer.quantile(sample_name(FRESHNESS_SECONDS), 0.99)
        report.dead_letters_by_reason = consumer.by_label(
            sample_name(MESSAGES_DEAD_LETTERED), "reason"
        )
        messages = consumer.value(sample_name(CHANGES_PER_MESSAGE, "_count"))
        if messages:
            changes = consumer.value(sample_name(CHANGES_PER_MESSAGE, "_sum"))
            report.changes_per_message = round(changes / messages, 2)
    else:
        report.problems.append(
            f"consumer metrics unreachable at {settings.consumer_metrics_url} ({consumer.error})"
        )
    _queues(settings, report)
    if warehouse:
        _warehouse(settings, report)
    return report


def _capture(settings: Settings, producer: Scrape, report: StatusReport) -> None:
    """Stopped capture, skipped and failed events: what the producer did not publish."""
    stopped = [
        reason
        for reason, value in producer.by_label(sample_name(CAPTURE_STOPPED), "reason").items()
        if value > 0
    ]
    if stopped:
        report.capture_stopped = ", ".join(sorted(stopped))
        report.problems.append(
            f"capture of {settings.source_namespace} is STOPPED ({report.capture_stopped}): the "
            "warehouse keeps its rows as they were. To capture again, delete the offsets "
            f'document: db.{settings.offsets_collection}.deleteOne({{_id: "'
            f'{settings.source_namespace}"}})'
        )
    report.events_failed_by_reason = {
        reason: value
        for reason, value in producer.by_label(sample_name(EVENTS_FAILED), "reason").items()
        if value > 0
    }
    report.events_skipped = producer.value(sample_name(EVENTS_SKIPPED))


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.2f} s"
    return f"{value / 60:.1f} min" if value < 7200 else f"{value / 3600:.1f} h"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def render(report: StatusReport, settings: Settings) -> Group:
    stages = Table(title=f"cdcflow status: {settings.source_namespace} → {settings.queue_name}")
    for column in ("stage", "state", "rate /s", "total"):
        stages.add_column(column, justify="left" if column in ("stage", "state") else "right")
    for stage in report.stages:
        state = Text("up", style="green") if stage.up else Text(stage.detail, style="red")
        rate = "-" if stage.rate_per_s is None else f"{stage.rate_per_s:,.1f}"
        stages.add_row(stage.name, state, rate, _count(stage.total))

    health = Table(show_header=False, box=None)
    health.add_column(style="bold")
    health.add_column()
    health.add_row("queue depth (messages)", _count(report.queue_depth))
    if report.changes_per_message is not None:
        health.add_row("changes per message", f"{report.changes_per_message:,.1f}")
    failed = _count(report.failed_queue_depth)
    health.add_row(
        "failed queue", Text(failed, style="yellow" if report.failed_queue_depth else "")
    )
    health.add_row("queue consumers", _count(report.queue_consumers))
    health.add_row(
        "capture",
        Text(f"STOPPED ({report.capture_stopped})", style="red")
        if report.capture_stopped
        else Text("running"),
    )
    health.add_row("capture lag", _seconds(report.capture_lag_s))
    health.add_row("events skipped", _count(report.events_skipped))
    for reason, count in sorted(report.events_failed_by_reason.items(), key=lambda kv: -kv[1]):
        health.add_row(f"  failed events: {reason}", _count(count))
    health.add_row("resume token age", _seconds(report.resume_token_age_s))
    health.add_row(
        "freshness p50 / p99",
        f"{_seconds(report.freshness_p50_s)} / {_seconds(report.freshness_p99_s)}",
    )
    health.add_row(
        "warehouse rows (current)",
        _count(report.warehouse_rows)
        if report.warehouse_rows is not None
        else report.warehouse_detail,
    )
    for reason, count in sorted(report.dead_letters_by_reason.items(), key=lambda kv: -kv[1]):
        health.add_row(f"  dead letters: {reason}", _count(count))
    parts: list[Any] = [stages, health]
    for problem in report.problems:
        parts.append(Text(f"! {problem}", style="red"))
    return Group(*parts)
