"""``python -m bench``: every measurement in one go, a table, ``bench/results/latest.json``.

Order: raw stages first (they also make the corpus of envelopes the naive
design reuses), then the pipeline end to end and its freshness, then the
naive design, then the backlog memory. ``--quick`` shrinks the workload to
finish in under two minutes; the figures that matter are ratios, so a quick run
is comparable in kind, only noisier.

A phase that fails on a broker or timing hiccup (another session may restart
the broker app or close its connections) is run once more with fresh names.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pika.exceptions
from rich.console import Console

from bench import flink, naive, pipeline, raw, report, stack
from bench.profiling import Profiler, find_py_spy
from bench.stack import BenchError, Scratch
from cdcflow.errors import ServiceUnavailable

T = TypeVar("T")
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Workload:
    events: int  # raw stages and the end-to-end run
    rate: float  # steady rate of the freshness run
    freshness_s: float
    naive_events: int
    backlog: int

    @classmethod
    def full(cls) -> Workload:
        return cls(events=100_000, rate=2000.0, freshness_s=30.0, naive_events=200, backlog=100_000)

    @classmethod
    def quick(cls) -> Workload:
        return cls(events=20_000, rate=2000.0, freshness_s=10.0, naive_events=20, backlog=10_000)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a run under two minutes")
    parser.add_argument("--events", type=int, help="events per raw stage and end-to-end run")
    parser.add_argument("--rate", type=float, help="events/s of the freshness run (2000)")
    parser.add_argument("--freshness-s", type=float, help="seconds of the freshness run")
    parser.add_argument("--naive-events", type=int, help="messages through the naive design")
    parser.add_argument("--backlog", type=int, help="messages of the memory backlog")
    parser.add_argument(
        "--output", type=Path, default=RESULTS / "latest.json", help="where to write the JSON"
    )
    parser.add_argument("--profile", type=Path, help="attach py-spy; write stacks to this folder")
    parser.add_argument("--py-spy", help="the py-spy executable (default: from PATH)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data and logs")
    parser.add_argument(
        "--no-flink", action="store_true", help="skip the Flink runner's figures (no Java here)"
    )
    parser.add_argument(
        "--amqp-url",
        help="a running broker to measure on (default: CDCFLOW_AMQP_URL, else a private "
        "RabbitMQ node started for the run)",
    )
    return parser.parse_args(argv)


def workload_of(args: argparse.Namespace) -> Workload:
    base = Workload.quick() if args.quick else Workload.full()
    return Workload(
        events=args.events or base.events,
        rate=args.rate or base.rate,
        freshness_s=args.freshness_s or base.freshness_s,
        naive_events=args.naive_events or base.naive_events,
        backlog=args.backlog or base.backlog,
    )


_RETRIED = (pika.exceptions.AMQPError, ServiceUnavailable, BenchError, ConnectionError)


def _phase(console: Console, scratch: Scratch, name: str, action: Callable[[], T]) -> T:
    started = time.monotonic()
    console.print(f"[bold]{name}[/bold] …")
    try:
        result = action()
    except _RETRIED as error:
        console.print(f"[yellow]{name} failed ({error}); once more with fresh names")
        scratch.generation += 1
        result = action()
    console.print(f"  done in {time.monotonic() - started:.1f} s")
    return result


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Every measurement; returns the JSON document (also written to ``args.output``)."""
    load = workload_of(args)
    started_at = dt.datetime.now(dt.UTC)
    started = time.monotonic()
    figures: dict[str, float] = {}
    notes: dict[str, Any] = {"loadavg_start": _loadavg()}
    profiler = None
    if args.profile is not None:
        py_spy = find_py_spy(args.py_spy)
        if py_spy is None:
            console.print("[yellow]py-spy not found: profiling per-thread CPU only")
        profiler = Profiler(args.profile, py_spy)
    attach = profiler.attach if profiler is not None else pipeline.no_profile
    scratch = Scratch.create(keep=args.keep)
    with contextlib.ExitStack() as cleanup:
        # Exits run last-in first-out: the run's queues go before its broker stops.
        stack.use_broker(scratch, cleanup, args.amqp_url, say=console.print)
        cleanup.callback(scratch.close)
        settings = scratch.settings("probe")
        rabbitmq = stack.rabbitmq_version(settings)
        raw_result = _phase(
            console,
            scratch,
            f"raw stages ({load.events:,} events)",
            lambda: raw.run(scratch, load.events),
        )
        figures.update(raw_result.figures)
        notes.update(raw_result.notes)
        notes["envelope_bytes_mean"] = round(raw_result.body_bytes_mean, 1)
        e2e = _phase(
            console,
            scratch,
            f"end to end ({load.events:,} events), then {load.freshness_s:g} s at {load.rate:g}/s",
            lambda: pipeline.throughput_and_freshness(
                scratch,
                events=load.events,
                rate=load.rate,
                freshness_s=load.freshness_s,
                attach=attach,
            ),
        )
        figures.update(e2e.figures)
        notes.update(e2e.notes)
        sample = raw_result.changes[: load.naive_events]
        naive_result = _phase(
            console,
            scratch,
            f"naive design ({len(sample)} messages)",
            lambda: naive.run(scratch, sample, raw_result.collection),
        )
        figures.update(naive_result.figures)
        backlog = _phase(
            console,
            scratch,
            f"memory with a {load.backlog:,}-message backlog",
            lambda: pipeline.backlog_memory(scratch, backlog=load.backlog, attach=attach),
        )
        figures.update(backlog.figures)
        notes.update(backlog.notes)
        if not args.no_flink:
            on_flink = _phase(
                console,
                scratch,
                "the same on Flink (checkpoints every 1 s, then 5 s)",
                lambda: flink.run(
                    scratch,
                    events=load.events,
                    rate=load.rate,
                    freshness_s=load.freshness_s,
                    backlog=load.backlog,
                    attach=attach,
                ),
            )
            figures.update(on_flink.figures)
            notes.update(on_flink.notes)
    notes["loadavg_end"] = _loadavg()
    report.derive(figures, notes)
    flink.derive(figures)
    doc = report.document(
        figures,
        notes,
        workload={**load.__dict__, "quick": bool(args.quick), "flink": not args.no_flink},
        machine_info=report.machine(rabbitmq),
        started=started_at,
        elapsed_s=time.monotonic() - started,
    )
    report.write(doc, args.output)
    return doc


def _loadavg() -> list[float]:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return []


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    # Piped (make, CI logs), rich would wrap the table at 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=140)
    try:
        doc = run(args, console)
    except (BenchError, ServiceUnavailable) as error:
        console.print(f"[red]benchmark failed: {error}")
        sys.exit(1)
    report.show(doc, console)
    console.print(f"written: {args.output}")
    if args.profile is not None:
        console.print(f"profiles: {args.profile}")
