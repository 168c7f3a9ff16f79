"""The same pipeline on Beam's portable Flink runner (embedded Flink, LOOPBACK).

Measured in the same run as the in-process figures, with the same harness
(:mod:`bench.pipeline`), so the ratios compare like with like:

* ``flink_e2e_events_per_s``: the end-to-end burst (checkpoint every 1 s);
* ``flink_freshness_p50/p99_s_ckpt1s`` and ``..._ckpt5s``: source write →
  warehouse at the steady rate (2,000 events/s), one consumer per checkpoint
  interval (the interval is a job option);
* ``flink_consumer_peak_rss_mb``: the consumer draining the backlog, its process
  tree (Python with the SDK harness, plus the job server's JVM and its Flink);
* ``flink_*_vs_inprocess``: each over the in-process figure of the same run.

A Flink consumer's start (a JVM, a Flink mini cluster, the job) is not in any
figure: each measurement begins once the consumer has loaded the initial
snapshot's marker. It is reported in the notes (``flink_start_s``).
"""

from __future__ import annotations

from typing import Any

from bench import pipeline
from bench.pipeline import Attach, PipelineResult, no_profile
from bench.stack import Scratch
from cdcflow.config import Runner

START_TIMEOUT_S = 240.0
INTERVALS_MS = (1000, 5000)


def _flink(interval_ms: int) -> dict[str, Any]:
    return {"runner": Runner.flink, "checkpointing_interval_ms": interval_ms}


def run(
    scratch: Scratch,
    *,
    events: int,
    rate: float,
    freshness_s: float,
    backlog: int,
    attach: Attach = no_profile,
) -> PipelineResult:
    """Every Flink figure (see the module docstring)."""
    result = PipelineResult()
    for interval_ms in INTERVALS_MS:
        seconds = interval_ms // 1000
        measured = pipeline.throughput_and_freshness(
            scratch,
            events=events,
            rate=rate,
            freshness_s=freshness_s,
            attach=attach,
            name=f"flink_{seconds}s",
            overrides=_flink(interval_ms),
            burst=interval_ms == INTERVALS_MS[0],
            start_timeout=START_TIMEOUT_S,
        )
        figures = measured.figures
        if "e2e_events_per_s" in figures:
            result.figures["flink_e2e_events_per_s"] = figures["e2e_events_per_s"]
            result.notes["flink_e2e_mean_batch"] = measured.notes.get("e2e_mean_batch")
            result.notes["flink_e2e_cpu_us_per_event"] = measured.notes.get("e2e_cpu_us_per_event")
        for key in ("freshness_p50_s", "freshness_p99_s", "freshness_rate_events_per_s"):
            result.figures[f"flink_{key}_ckpt{seconds}s"] = figures[key]
        result.notes[f"flink_freshness_mean_batch_ckpt{seconds}s"] = measured.notes.get(
            "freshness_mean_batch"
        )
        result.notes[f"flink_start_s_ckpt{seconds}s"] = measured.notes.get("start_s")
    memory = pipeline.backlog_memory(
        scratch,
        backlog=backlog,
        attach=attach,
        name="flink_backlog",
        overrides=_flink(INTERVALS_MS[0]),
    )
    result.figures["flink_consumer_peak_rss_mb"] = memory.figures["consumer_peak_rss_mb"]
    result.notes["flink_consumer_peak_rss_by_process_mb"] = memory.notes.get(
        "consumer_peak_rss_by_process_mb"
    )
    result.notes["flink_backlog_msgs_per_s"] = memory.notes.get("consumer_backlog_msgs_per_s")
    return result


RATIOS = {
    "flink_e2e_vs_inprocess": ("flink_e2e_events_per_s", "e2e_events_per_s"),
    "flink_freshness_p99_ckpt1s_vs_inprocess": ("flink_freshness_p99_s_ckpt1s", "freshness_p99_s"),
    "flink_freshness_p99_ckpt5s_vs_inprocess": ("flink_freshness_p99_s_ckpt5s", "freshness_p99_s"),
    "flink_consumer_rss_vs_inprocess": ("flink_consumer_peak_rss_mb", "consumer_peak_rss_mb"),
}


def derive(figures: dict[str, float]) -> None:
    """Each Flink figure over the in-process one of the same run."""
    for key, (flink, inprocess) in RATIOS.items():
        if flink in figures and figures.get(inprocess):
            figures[key] = figures[flink] / figures[inprocess]
