"""``cdcflow``: one command line for every worker and tool.

Each option maps to a field of :class:`cdcflow.config.Settings`, so anything
set here can also come from a ``CDCFLOW_*`` environment variable or ``.env``
(the flag wins). Expected failures (a service down, a bad setting) print one
line that says what to do and exit non-zero, without a traceback.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

from cdcflow import gctuning, logs, naming
from cdcflow.config import Runner, Settings, load_settings
from cdcflow.errors import CdcflowError, ConfigError
from cdcflow.urls import scrub

app = typer.Typer(
    name="cdcflow",
    help="Change-data-capture from MongoDB to ClickHouse through RabbitMQ and Apache Beam.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
dlq_app = typer.Typer(help="Inspect, replay or purge the failed queue.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")

CONSUMER_METRICS_PORT = naming.LOCAL_CONSUMER_METRICS_PORT
DEMO_EVENTS = 20000
DEMO_BAD_RATIO = 0.02
out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def _help(field: str) -> str:
    description = Settings.model_fields[field].description or ""
    return f"{description} (env CDCFLOW_{field.upper()})"


def _opt(field: str, *flags: str) -> Any:
    return typer.Option(*flags, help=_help(field), show_default=False)


# Options shared by several commands; every one is a Settings field.
MongoUri = Annotated[str | None, _opt("mongo_uri", "--mongo-uri")]
MongoDb = Annotated[str | None, _opt("mongo_db", "--mongo-db")]
Collection = Annotated[str | None, _opt("mongo_collection", "--collection")]
AmqpUrl = Annotated[str | None, _opt("amqp_url", "--amqp-url")]
Exchange = Annotated[str | None, _opt("exchange", "--exchange")]
Queue = Annotated[str | None, _opt("queue", "--queue")]
ClickhouseUrl = Annotated[str | None, _opt("clickhouse_url", "--clickhouse-url")]
MetricsPort = Annotated[int | None, _opt("metrics_port", "--metrics-port")]
LogLevel = Annotated[str | None, _opt("log_level", "--log-level")]
LogFormat = Annotated[str | None, _opt("log_format", "--log-format")]
Rate = Annotated[float | None, _opt("rate", "--rate")]
Events = Annotated[int | None, _opt("events", "--events")]
Duration = Annotated[float | None, _opt("duration_s", "--duration")]
BadRatio = Annotated[float | None, _opt("bad_ratio", "--bad-ratio")]
Seed = Annotated[int | None, _opt("seed", "--seed")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _settings(**overrides: Any) -> Settings:
    try:
        settings = load_settings(**overrides)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'settings'}: {item['msg']}"
            for item in error.errors(include_url=False)
        )
        raise ConfigError(f"invalid configuration: {scrub(problems)}") from None
    settings.check_files()  # here, where the worker runs and its files are mounted
    logs.configure(settings.log_level, settings.log_format.value)
    return settings


def _expected_errors(function: F) -> F:
    """Print CdcflowErrors as one line and exit with their code; no traceback."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except CdcflowError as error:
            err.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _on_stop_signals(callback: Callable[[], None]) -> None:
    """SIGTERM (Kubernetes) and SIGINT (Ctrl-C) ask for a graceful stop; a second
    SIGINT exits at once."""

    def handler(signum: int, frame: object) -> None:
        callback()
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _print_json(payload: Any) -> None:
    sys.stdout.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")


# -------------------------------------------------------------------------------------
# Workers
# -------------------------------------------------------------------------------------


@app.command()
@_expected_errors
def simulate(
    rate: Rate = None,
    events: Events = None,
    duration: Duration = None,
    bad_ratio: BadRatio = None,
    seed: Seed = None,
    insert_ratio: Annotated[float | None, _opt("insert_ratio", "--insert-ratio")] = None,
    update_ratio: Annotated[float | None, _opt("update_ratio", "--update-ratio")] = None,
    delete_ratio: Annotated[float | None, _opt("delete_ratio", "--delete-ratio")] = None,
    mongo_uri: MongoUri = None,
    mongo_db: MongoDb = None,
    collection: Collection = None,
    log_level: LogLevel = None,
    log_format: LogFormat = None,
) -> None:
    """Write a realistic viewing workload (inserts, updates, deletes) into MongoDB."""
    from cdcflow.simulator import Simulator

    settings = _settings(
        rate=rate,
        events=events,
        duration_s=duration,
        bad_ratio=bad_ratio,
        seed=seed,
        insert_ratio=insert_ratio,
        update_ratio=update_ratio,
        delete_ratio=delete_ratio,
        mongo_uri=mongo_uri,
        mongo_db=mongo_db,
        mongo_collection=collection,
        log_level=log_level,
        log_format=log_format,
    )
    stop = threading.Event()
    _on_stop_signals(stop.set)
    with err.status("simulating…") as status:
        stats = Simulator(settings).run(
            stop=stop,
            on_progress=lambda s: status.update(
                f"simulating: {s.events:,} events ({s.inserts:,} ins, {s.updates:,} upd, "
                f"{s.deletes:,} del, {s.bad:,} bad) at {s.rate:,.0f}/s"
            ),
        )
    out.print(
        f"simulate: {stats.events:,} events in {stats.seconds:.1f} s ({stats.rate:,.0f}/s): "
        f"{stats.inserts:,} inserts, {stats.updates:,} updates, {stats.deletes:,} deletes, "
        f"{stats.bad:,} bad"
    )


@app.command()
@_expected_errors
def produce(
    mongo_uri: MongoUri = None,
    mongo_db: MongoDb = None,
    collection: Collection = None,
    amqp_url: AmqpUrl = None,
    exchange: Exchange = None,
    queue: Queue = None,
    metrics_port: MetricsPort = None,
    log_level: LogLevel = None,
    log_format: LogFormat = None,
) -> None:
    """Capture changes with a change stream and publish them to RabbitMQ (runs until stopped)."""
    from cdcflow.health import Health, serve
    from cdcflow.producer.main import run_producer

    settings = _settings(
        mongo_uri=mongo_uri,
        mongo_db=mongo_db,
        mongo_collection=collection,
        amqp_url=amqp_url,
        exchange=exchange,
        queue=queue,
        metrics_port=metrics_port,
        log_level=log_level,
        log_format=log_format,
    )
    stop = threading.Event()
    _on_stop_signals(stop.set)
    health = Health(naming.PRODUCER)
    server = serve(health, settings.metrics_host, settings.metrics_port)
    gctuning.tune()
    try:
        run_producer(settings, stop=stop, health=health)
    finally:
        if server is not None:
            server.stop()


@app.command()
@_expected_errors
def consume(
    runner: Annotated[Runner | None, _opt("runner", "--runner")] = None,
    idle_exit: Annotated[float | None, _opt("idle_exit_s", "--idle-exit")] = None,
    max_messages: Annotated[int | None, _opt("max_messages", "--max-messages")] = None,
    batch_size: Annotated[int | None, _opt("batch_max_messages", "--batch-size")] = None,
    prefetch: Annotated[int | None, _opt("prefetch", "--prefetch")] = None,
    checkpoint_ms: Annotated[
        int | None, _opt("checkpointing_interval_ms", "--checkpoint-interval-ms")
    ] = None,
    collection: Collection = None,
    amqp_url: AmqpUrl = None,
    exchange: Exchange = None,
    queue: Queue = None,
    clickhouse_url: ClickhouseUrl = None,
    metrics_port: MetricsPort = None,
    log_level: LogLevel = None,
    log_format: LogFormat = None,
) -> None:
    """Run the Beam pipeline: RabbitMQ → clean/transform/enrich → ClickHouse."""
    settings = _settings(
        runner=runner,
        idle_exit_s=idle_exit,
        max_messages=max_messages,
        batch_max_messages=batch_size,
        prefetch=prefetch,
        checkpointing_interval_ms=checkpoint_ms,
        mongo_collection=collection,
        amqp_url=amqp_url,
        exchange=exchange,
        queue=queue,
        clickhouse_url=clickhouse_url,
        metrics_port=metrics_port,
        log_level=log_level,
        log_format=log_format,
    )
    # Imported once logging is configured: Beam logs at import time.
    from cdcflow.consumer import runtime
    from cdcflow.consumer.pipeline import run_consumer
    from cdcflow.health import Health, serve

    if "metrics_port" not in settings.model_fields_set:
        # The producer defaults to 9464; both may run on one host (the demo, a laptop).
        settings = settings.with_overrides(metrics_port=CONSUMER_METRICS_PORT)
    _on_stop_signals(runtime.STOP.set)
    health = Health(naming.CONSUMER)
    server = serve(health, settings.metrics_host, settings.metrics_port)
    gctuning.tune()
    try:
        result = run_consumer(settings, health=health)
    finally:
        if server is not None:
            server.stop()
    counts = result.counters
    out.print(
        f"consume: {counts['consumed']:,.0f} messages, {counts['loaded']:,.0f} rows loaded, "
        f"{counts['dead_lettered']:,.0f} dead-lettered in {result.seconds:.1f} s"
        + (" (stopped mid-batch: it will be redelivered)" if result.abandoned else "")
    )


@app.command("init-warehouse")
@_expected_errors
def init_warehouse(
    clickhouse_url: ClickhouseUrl = None,
    collection: Collection = None,
    log_level: LogLevel = None,
) -> None:
    """Create the warehouse database, table, views and load log (idempotent)."""
    from cdcflow.warehouse.client import Warehouse

    settings = _settings(
        clickhouse_url=clickhouse_url, mongo_collection=collection, log_level=log_level
    )
    with Warehouse(settings) as warehouse:
        statements = warehouse.init_schema()
    out.print(f"init-warehouse: {warehouse.qualified} ready ({statements} statements applied)")


@app.command()
@_expected_errors
def verify(
    mongo_uri: MongoUri = None,
    mongo_db: MongoDb = None,
    collection: Collection = None,
    clickhouse_url: ClickhouseUrl = None,
    as_json: JsonOut = False,
    log_level: LogLevel = None,
) -> None:
    """Compare the source collection with the warehouse; exit 0 only when equal."""
    from cdcflow.verify import verify as run_verify

    settings = _settings(
        mongo_uri=mongo_uri,
        mongo_db=mongo_db,
        mongo_collection=collection,
        clickhouse_url=clickhouse_url,
        log_level=log_level,
    )
    report = run_verify(settings)
    if as_json:
        _print_json(report.as_dict())
    else:
        out.print(report.summary(), highlight=False)
        for example in report.examples:
            out.print(f"  {example.kind:9} {example.doc_id}: {example.detail}", highlight=False)
    if not report.equal:
        raise typer.Exit(1)


@app.command()
@_expected_errors
def demo(
    events: Events = None,
    rate: Rate = None,
    bad_ratio: BadRatio = None,
    seed: Seed = None,
    data_dir: Annotated[Path | None, _opt("data_dir", "--data-dir")] = None,
    amqp_url: AmqpUrl = None,
    runner: Annotated[Runner | None, _opt("runner", "--runner")] = None,
    log_level: LogLevel = None,
) -> None:
    """Run everything locally: nx-27017, RabbitMQ, producer, Beam consumer, chdb; verify; report.

    Unless set by flag or environment: 20,000 events, 2% bad, warnings only (the
    workers log at INFO to their own files).
    """
    from cdcflow.demo import run_demo

    signal.signal(signal.SIGTERM, _interrupt)  # stop the private broker as on Ctrl-C
    settings = _settings(
        events=events,
        rate=rate,
        bad_ratio=bad_ratio,
        seed=seed,
        data_dir=data_dir,
        amqp_url=amqp_url,
        runner=runner,
        log_level=log_level,
    )
    broker_configured = "amqp_url" in settings.model_fields_set
    demo_defaults = {"events": DEMO_EVENTS, "bad_ratio": DEMO_BAD_RATIO, "log_level": "WARNING"}
    unset = {
        key: value for key, value in demo_defaults.items() if key not in settings.model_fields_set
    }
    if unset:
        settings = settings.with_overrides(**unset)
        logs.configure(settings.log_level, settings.log_format.value)
    if not run_demo(settings, out, broker_configured=broker_configured):
        raise typer.Exit(1)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@app.command()
@_expected_errors
def broker(
    data_dir: Annotated[Path | None, _opt("data_dir", "--data-dir")] = None,
    log_level: LogLevel = None,
) -> None:
    """Run the demo's private RabbitMQ node (data in <data dir>/rabbitmq) until Ctrl-C.

    For looking at what a demo left behind (the failed queue) or running workers by
    hand: prints the AMQP URL to export as CDCFLOW_AMQP_URL and the management UI.
    """
    from cdcflow.localbroker import PASSWORD, USER, start_node

    settings = _settings(data_dir=data_dir, log_level=log_level)
    signal.signal(signal.SIGTERM, _interrupt)
    root = settings.data_dir.resolve() / "rabbitmq"
    out.print(f"starting a private RabbitMQ node in {root} ...", highlight=False)
    node = start_node(root, say=lambda line: out.print(line, highlight=False))
    try:
        out.print(
            f"RabbitMQ ready in {node.started_in_s or 0:.0f} s\n"
            f"  export CDCFLOW_AMQP_URL='{node.amqp_url}'\n"
            f"  management UI: {node.management_url} (user {USER}, password {PASSWORD})\n"
            f"  rabbitmqctl: {node.ctl_command()} list_queues\n"
            "Ctrl-C stops it.",
            highlight=False,
        )
        while node.running():
            time.sleep(1.0)
        out.print(f"[red]the node exited: see {node.log_file}")
        raise typer.Exit(1)
    finally:
        node.stop()


@app.command()
@_expected_errors
def status(
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.2, help="Seconds between the samples of a rate.")
    ] = 2.0,
    as_json: JsonOut = False,
    producer_metrics_url: Annotated[
        str | None, _opt("producer_metrics_url", "--producer-metrics-url")
    ] = None,
    consumer_metrics_url: Annotated[
        str | None, _opt("consumer_metrics_url", "--consumer-metrics-url")
    ] = None,
    collection: Collection = None,
    amqp_url: AmqpUrl = None,
    queue: Queue = None,
    clickhouse_url: ClickhouseUrl = None,
) -> None:
    """One screen: rate per stage, queue depths, capture lag, token age, freshness, rows."""
    from rich.live import Live

    from cdcflow.status import collect, render

    settings = _settings(
        producer_metrics_url=producer_metrics_url,
        consumer_metrics_url=consumer_metrics_url,
        mongo_collection=collection,
        amqp_url=amqp_url,
        queue=queue,
        clickhouse_url=clickhouse_url,
        log_level="ERROR",
    )
    if as_json:
        _print_json(collect(settings, interval=interval).as_dict())
        return
    if not watch:
        out.print(render(collect(settings, interval=interval), settings))
        return
    with Live(console=out, auto_refresh=False) as live:
        while True:
            live.update(render(collect(settings, interval=interval), settings), refresh=True)


@app.command()
@_expected_errors
def report(
    output: Annotated[
        Path, typer.Option("--out", help="Folder for index.html and the PNG charts.")
    ] = Path(".cdcflow/report"),
    clickhouse_url: ClickhouseUrl = None,
    collection: Collection = None,
) -> None:
    """Write the analytics report (PNG charts + one self-contained HTML page)."""
    from cdcflow.report import analytics_tables, write_report
    from cdcflow.warehouse.client import Warehouse

    settings = _settings(clickhouse_url=clickhouse_url, mongo_collection=collection)
    with Warehouse(settings) as warehouse:
        for table in analytics_tables(warehouse):
            out.print(table)
        files = write_report(warehouse, output)
    out.print(f"report: {files.html}")
    for png in files.pngs:
        out.print(f"  chart: {png}")


# -------------------------------------------------------------------------------------
# Dead letters
# -------------------------------------------------------------------------------------


def _broker_settings(
    collection: str | None, amqp_url: str | None, exchange: str | None, queue: str | None
) -> Settings:
    """Settings of the dlq commands: only the broker side matters to them."""
    return _settings(
        mongo_collection=collection,
        amqp_url=amqp_url,
        exchange=exchange,
        queue=queue,
        log_level="ERROR",
    )


@dlq_app.command("inspect")
@_expected_errors
def dlq_inspect(
    samples: Annotated[int, typer.Option(help="Sample payloads per reason.")] = 3,
    limit: Annotated[int, typer.Option(help="Read at most this many messages.")] = 10000,
    as_json: JsonOut = False,
    collection: Collection = None,
    amqp_url: AmqpUrl = None,
    exchange: Exchange = None,
    queue: Queue = None,
) -> None:
    """Count failed messages by reason, with sample payloads. Changes nothing."""
    from rich.table import Table

    from cdcflow.consumer import deadletter

    settings = _broker_settings(collection, amqp_url, exchange, queue)
    inspection = deadletter.inspect(settings, samples=samples, limit=limit)
    if as_json:
        _print_json(
            {
                "queue": settings.failed_queue_name,
                "total": inspection.total,
                "changes": inspection.changes,
                "reasons": dict(inspection.reasons),
                "samples": inspection.samples,
            }
        )
        return
    table = Table(
        "reason",
        "messages",
        "stage",
        "example",
        title=f"{settings.failed_queue_name}: {inspection.total:,} messages"
        + (
            f" ({inspection.changes:,} changes: batch messages moved by the delivery limit)"
            if inspection.changes != inspection.total
            else ""
        ),
    )
    for reason, count in inspection.reasons.most_common():
        sample = inspection.samples.get(reason, [{}])[0]
        table.add_row(
            Text(reason),
            f"{count:,}",
            Text(str(sample.get("stage", ""))),
            Text(str(sample.get("detail", "")) or str(sample.get("body", ""))[:80]),
        )
    out.print(table)
    for reason, items in inspection.samples.items():
        for item in items:
            # Payloads are untrusted text: never let rich read them as markup.
            line = Text.assemble((reason, "bold"), f" {item['message_id'] or '-'}: {item['body']}")
            out.print(line, highlight=False)


@dlq_app.command("replay")
@_expected_errors
def dlq_replay(
    reason: Annotated[
        list[str] | None, typer.Option("--reason", help="Only this reason (repeatable).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count, change nothing.")] = False,
    limit: Annotated[int | None, typer.Option(help="Replay at most this many.")] = None,
    collection: Collection = None,
    amqp_url: AmqpUrl = None,
    exchange: Exchange = None,
    queue: Queue = None,
) -> None:
    """Republish failed messages to the main exchange, keeping their message_id."""
    from cdcflow.consumer import deadletter

    settings = _broker_settings(collection, amqp_url, exchange, queue)
    result = deadletter.replay(settings, reasons=reason or (), dry_run=dry_run, limit=limit)
    verb = "would replay" if dry_run else "replayed"
    detail = ", ".join(f"{name}: {count:,}" for name, count in result.by_reason.most_common())
    out.print(
        f"dlq: {verb} {result.replayed:,} messages"
        + (f" holding {result.changes:,} changes" if result.changes != result.replayed else "")
        + f" ({detail or 'none'}); "
        f"{result.kept:,} left in {settings.failed_queue_name}"
    )


@dlq_app.command("purge")
@_expected_errors
def dlq_purge(
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    collection: Collection = None,
    amqp_url: AmqpUrl = None,
    exchange: Exchange = None,
    queue: Queue = None,
) -> None:
    """Delete every message of the failed queue (asks first)."""
    from cdcflow.consumer import deadletter

    settings = _broker_settings(collection, amqp_url, exchange, queue)
    if not yes and not typer.confirm(
        f"Delete every message in {settings.failed_queue_name}? They cannot be replayed after."
    ):
        out.print("dlq: nothing purged")
        raise typer.Exit(1)
    out.print(
        f"dlq: purged {deadletter.purge(settings):,} messages from {settings.failed_queue_name}"
    )


@app.command()
def rules(
    markdown: Annotated[bool, typer.Option("--markdown", help="Print docs/cleaning.md.")] = False,
) -> None:
    """Show the cleaning rules (the same table as docs/cleaning.md)."""
    from rich.table import Table

    from cdcflow.rules import RULES, render_markdown

    if markdown:
        sys.stdout.write(render_markdown())
        return
    table = Table("code", "applies to", "rule", "action", "result", title="cleaning rules")
    for rule in RULES:
        table.add_row(rule.code, str(rule.applies_to), rule.rule, rule.action.value, rule.result)
    out.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
